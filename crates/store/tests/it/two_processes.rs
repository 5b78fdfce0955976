//! Two stores on one database, as two server processes: a run's steps and first steps over a
//! state the other one changed meanwhile lose nothing.

use ids::ThreadId;
use serde_json::json;
use store::testing::TestDb;
use store::{Backend, EventKind, IfNotExists, Metadata, NewEvent, RunStatus, Store, ThreadStatus};

use crate::rows::*;

store::on_both_backends!(
    steps_over_a_state_changed_elsewhere_lose_nothing,
    a_state_remembered_for_a_deleted_thread_is_not_reused,
    a_first_step_over_a_state_changed_elsewhere_loses_nothing,
);

/// A run's steps over a state another process changed meanwhile lose nothing: PostgreSQL
/// computes a step from the state it wrote last and writes it only if the thread is still at
/// that version (else it reads and tries again, or leaves the first step to the executor);
/// SQLite reads the state under its single writer.
async fn steps_over_a_state_changed_elsewhere_lose_nothing(db: &TestDb) {
    let here = &db.store;
    let options = store::StoreOptions { migrate: false, ..store::StoreOptions::default() };
    let elsewhere = Store::open(&db.url, &options).await.unwrap();
    let owner = here.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    here.get_or_create_thread(owner, thread, &Metadata::new()).await.unwrap();
    let none = Metadata::new();
    // Changed elsewhere after this process created the thread, before the run's first step.
    elsewhere.update_state(owner, thread, None, None, push("elsewhere 1"), &none).await.unwrap();
    let run = new_run(thread);
    let first = store::FirstStep {
        events: Vec::new(),
        update: push("input"),
        metadata: none.clone(),
        from: None,
        initial: None,
    };
    let (created, _, step) =
        here.create_run_claiming(owner, &run, IfNotExists::Reject, first).await.unwrap();
    assert_eq!(created.status, RunStatus::Running);
    match db.store.backend() {
        // Stale: the run is created claimed, its first step left to the executor.
        Backend::Postgres => assert!(step.is_none(), "a stale first step was written"),
        Backend::Sqlite => assert!(step.is_some()),
    }
    if step.is_none() {
        here.commit_step(owner, thread, run.run_id, &[], Some(push("input")), &none, None)
            .await
            .unwrap();
    }
    // Changed elsewhere between two steps.
    elsewhere.update_state(owner, thread, None, None, push("elsewhere 2"), &none).await.unwrap();
    let end = store::RunEnd {
        status: RunStatus::Success,
        error: None,
        interrupted: false,
        event: NewEvent {
            run_id: Some(run.run_id),
            kind: EventKind::AgentCompleted,
            data: json!({}),
        },
    };
    let last = here
        .commit_step(owner, thread, run.run_id, &[], Some(push("reply")), &none, Some(&end))
        .await
        .unwrap();
    assert_eq!(last.ended.unwrap().status, RunStatus::Success);
    assert_eq!(last.checkpoint.unwrap().values["messages"].as_array().unwrap().len(), 4);
    let after = here.get_thread(owner, thread).await.unwrap();
    assert_eq!(
        after.values.unwrap()["messages"],
        json!(["elsewhere 1", "input", "elsewhere 2", "reply"])
    );
    assert_eq!(after.status, ThreadStatus::Idle);
    // The run's events: each step's `values`, then its end, numbered without gaps.
    let events = here.events_after(owner, thread, Some(run.run_id), 0, 100).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Values, EventKind::Values, EventKind::AgentCompleted]);
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

/// A thread deleted and created again under the same id elsewhere, its state written there
/// as many times as here: a state this process remembers for the old thread is never taken for
/// the new one's (PostgreSQL's versions come from one sequence, never reused).
async fn a_state_remembered_for_a_deleted_thread_is_not_reused(db: &TestDb) {
    let here = &db.store;
    let options = store::StoreOptions { migrate: false, ..store::StoreOptions::default() };
    let elsewhere = Store::open(&db.url, &options).await.unwrap();
    let owner = here.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    let none = Metadata::new();
    here.get_or_create_thread(owner, thread, &none).await.unwrap();
    let first = store::FirstStep {
        events: Vec::new(),
        update: push("old"),
        metadata: none.clone(),
        from: None,
        initial: None,
    };
    let (_, _, step) = here
        .create_run_claiming(owner, &new_run(thread), IfNotExists::Reject, first)
        .await
        .unwrap();
    assert!(step.is_some());
    // Elsewhere: the thread deleted, created again, its state written once (as here).
    elsewhere.delete_thread(owner, thread).await.unwrap();
    elsewhere.get_or_create_thread(owner, thread, &none).await.unwrap();
    elsewhere.update_state(owner, thread, None, None, push("new"), &none).await.unwrap();
    let run = new_run(thread);
    elsewhere.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    // Here: a step of the new thread's run.
    here.commit_step(owner, thread, run.run_id, &[], Some(push("reply")), &none, None)
        .await
        .unwrap();
    let values = here.get_thread(owner, thread).await.unwrap().values.unwrap();
    assert_eq!(values["messages"], json!(["new", "reply"]));
}

/// A pending run's first step over a state another process changed since this one wrote it
/// loses nothing (PostgreSQL: stale, read again), and a fork from a checkpoint written
/// elsewhere needs no state of this process.
async fn a_first_step_over_a_state_changed_elsewhere_loses_nothing(db: &TestDb) {
    let here = &db.store;
    let options = store::StoreOptions { migrate: false, ..store::StoreOptions::default() };
    let elsewhere = Store::open(&db.url, &options).await.unwrap();
    let owner = here.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    let none = Metadata::new();
    // Here: a running run's step (this process remembers the state it wrote).
    let running = new_run(thread);
    let first = first_step(push("first"), None, before_input());
    let (_, _, step) =
        here.create_run_claiming(owner, &running, IfNotExists::Create, first).await.unwrap();
    let first = step.unwrap().checkpoint.unwrap();
    // Elsewhere: the state written, and a run queued.
    let written =
        elsewhere.update_state(owner, thread, None, None, push("elsewhere"), &none).await.unwrap();
    let run = new_run(thread);
    elsewhere.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    // Here: the queued run's first step (its thread's state is not the one remembered).
    let step = here
        .commit_first_step(owner, thread, run.run_id, first_step(push("queued"), None, None))
        .await
        .unwrap();
    let queued = step.checkpoint.unwrap();
    assert_eq!(queued.values, json!({"messages": ["first", "elsewhere", "queued"]}));
    assert_eq!(queued.parent_checkpoint_id, Some(written.checkpoint_id));
    assert_eq!(queued.metadata["step"], json!(2));
    // Elsewhere again; here a fork from the first step's checkpoint.
    elsewhere.update_state(owner, thread, None, None, push("again"), &none).await.unwrap();
    let from = Some(first.checkpoint_id);
    let step = here
        .commit_first_step(owner, thread, run.run_id, first_step(push("fork"), from, None))
        .await
        .unwrap();
    let fork = step.checkpoint.unwrap();
    assert_eq!(fork.values, json!({"messages": ["first", "fork"]}));
    assert_eq!(fork.metadata["step"], json!(1));
    // The next step goes on from the fork, though the state changed elsewhere after it.
    elsewhere.update_state(owner, thread, None, None, push("late"), &none).await.unwrap();
    let next = here
        .commit_step(owner, thread, run.run_id, &[], Some(push("next")), &none, None)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(next.values, json!({"messages": ["first", "fork", "late", "next"]}));
    assert_eq!(here.get_checkpoint(owner, thread, next.checkpoint_id).await.unwrap(), next);
}
