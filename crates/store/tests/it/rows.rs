//! Rows and steps the store tests build, and their assertions.

use ids::{AssistantId, CheckpointId, RunId, ThreadId, UserId};
use serde_json::json;
use store::{Error, EventKind, Metadata, MultitaskStrategy, NewEvent, NewRun, RunStatus, Store};

pub(crate) fn meta(value: serde_json::Value) -> Metadata {
    value.as_object().cloned().unwrap()
}

pub(crate) fn new_run(thread: ThreadId) -> NewRun {
    NewRun {
        run_id: RunId::new(),
        thread_id: thread,
        assistant_id: AssistantId::for_graph("echo"),
        input: Some(json!({"messages": [{"role": "user", "content": "hi"}]})),
        kwargs: json!({"stream_mode": ["values"]}),
        metadata: Metadata::new(),
        multitask_strategy: MultitaskStrategy::Enqueue,
        thread_metadata: Metadata::new(),
    }
}

pub(crate) fn event(kind: EventKind, n: i64) -> NewEvent {
    NewEvent { run_id: None, kind, data: json!({ "n": n }) }
}

#[track_caller]
pub(crate) fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

pub(crate) fn run_with(thread: ThreadId, strategy: MultitaskStrategy) -> NewRun {
    NewRun { multitask_strategy: strategy, ..new_run(thread) }
}

/// A first step that applies nothing (the state stays as it is).
pub(crate) fn no_first_step() -> store::FirstStep {
    store::FirstStep {
        events: Vec::new(),
        update: Box::new(|current: Option<serde_json::Value>| Ok(current.unwrap_or(json!({})))),
        metadata: Metadata::new(),
        from: None,
        initial: None,
    }
}

/// An update that appends `text` to the thread's `messages`.
pub(crate) fn push(text: &'static str) -> store::StateUpdate {
    Box::new(move |current: Option<serde_json::Value>| {
        let mut values = current.unwrap_or_else(|| json!({"messages": []}));
        values["messages"].as_array_mut().ok_or("messages is not a list")?.push(json!(text));
        Ok(values)
    })
}

/// A run's first step: `update` over the values it starts from, forking from `from`, with the
/// state before the input `initial` for a thread without a checkpoint.
pub(crate) fn first_step(
    update: store::StateUpdate,
    from: Option<CheckpointId>,
    initial: Option<(serde_json::Value, Metadata)>,
) -> store::FirstStep {
    store::FirstStep {
        events: Vec::new(),
        update,
        metadata: meta(json!({"source": "input"})),
        from,
        initial,
    }
}

/// The state before the input LangGraph writes as a thread's step −1.
pub(crate) fn before_input() -> Option<(serde_json::Value, Metadata)> {
    Some((json!({"messages": []}), meta(json!({"source": "input", "writes": null}))))
}

pub(crate) fn run_end(run: RunId, status: RunStatus, interrupted: bool) -> store::RunEnd {
    store::RunEnd {
        status,
        error: None,
        interrupted,
        event: NewEvent { run_id: Some(run), kind: EventKind::AgentCompleted, data: json!({}) },
    }
}

/// `metadata` with the step the store writes.
pub(crate) fn stepped(metadata: &Metadata, step: i64) -> Metadata {
    let mut metadata = metadata.clone();
    metadata.insert("step".into(), json!(step));
    metadata
}

/// The thread's checkpoints, newest first.
pub(crate) async fn history(
    store: &Store,
    owner: UserId,
    thread: ThreadId,
) -> Vec<store::Checkpoint> {
    store.list_checkpoints(owner, thread, 100, None).await.unwrap()
}

/// Asserts that each checkpoint reads back exactly as its write returned it.
pub(crate) async fn reads_back(store: &Store, owner: UserId, written: &[&store::Checkpoint]) {
    for checkpoint in written {
        let read = store.get_checkpoint(owner, checkpoint.thread_id, checkpoint.checkpoint_id);
        assert_eq!(&read.await.unwrap(), *checkpoint, "a checkpoint as written and as read");
    }
}

/// Claims the one pending run of the database.
pub(crate) async fn claim_one(store: &Store, run: RunId) {
    let claimed = store.claim_runs(1).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.run_id).collect::<Vec<_>>(), [run]);
}

/// A checkpoint's metadata whose pending task holds an interrupt, as the server writes it.
pub(crate) fn waiting_for_a_human() -> Metadata {
    meta(
        json!({"source": "loop", "__pending__": {"next": ["synthetic"], "interrupts": [{"id": "0".repeat(32), "value": "?"}]}}),
    )
}
