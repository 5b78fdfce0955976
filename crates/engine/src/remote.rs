//! A graph assistant's run (#16): its steps are executed by a Python worker running the
//! user's LangGraph graph (`docs/workers.md`). The run is leased to a worker; the worker's
//! stream parts are appended as `stream` events in the order it sent them; each root
//! checkpoint of the graph is committed as a state of the thread (its values the graph's, the
//! graph's checkpoint id remembered in its hidden metadata); the worker's `done` ends the run
//! with its last state in one transaction. A lost worker's run is sent again (`attempt + 1`),
//! up to [`MAX_ATTEMPTS`].

use std::time::Duration;

use agents::{Sink as _, Stop};
use domain::{Interrupt, Pending, RunSpec};
use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde_json::{Map, Value, json};
use store::{Checkpoint, EventKind, FirstStep, Run, Store};

use crate::sink::Sink;
use crate::workers::{JobMsg, JobOf, Lease, Workers};

/// Attempts of a run whose worker went away, as LangGraph's server allows.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long a run waits for a worker serving its graph to connect.
const WORKER_WAIT: Duration = Duration::from_secs(30);
/// How long a cancelled job's worker has to say it stopped.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Executes a graph assistant's run on a worker; returns the thread's values after it (with
/// `__interrupt__` when the graph stopped on interrupts).
pub(crate) async fn run_graph(
    workers: &Workers,
    run: &Run,
    spec: &RunSpec,
    sink: &mut Sink,
) -> Result<Value, Stop> {
    let fork = match spec.checkpoint_id {
        None => None,
        Some(id) => Some(graph_checkpoint_of(sink, run, id).await?),
    };
    // The thread's newest state, if it is the graph's: a resumed run streams that checkpoint
    // again, and it is not a new state.
    let newest = sink.store.list_checkpoints(run.owner_id, run.thread_id, 1, None).await?;
    let known = newest.first().and_then(|c| Pending::of(&c.metadata));
    let mut mirror = Mirror { held: None, from: spec.checkpoint_id, committed: false, known };
    for attempt in 1..=MAX_ATTEMPTS {
        let stopped = sink.stopped();
        let mut lease = tokio::select! {
            lease = workers.lease(run, &spec.graph_id, attempt, WORKER_WAIT) => lease
                .map_err(|message| Stop::Failed { error: "WorkerUnavailable".into(), message })?,
            stop = stopped => return Err(stop),
        };
        tracing::debug!(attempt, worker_id = %lease.conn, "run leased to a worker");
        lease.send(&run_frame(run, spec, attempt, fork.as_deref()));
        loop {
            let stopped = sink.stopped();
            let msg = tokio::select! {
                biased;
                msg = lease.rx.recv() => msg,
                stop = stopped => return Err(cancel(&mut lease, run, stop).await),
            };
            match msg {
                Some(JobMsg::Events(parts)) => {
                    let mut next = None;
                    push_parts(sink, parts);
                    // What else has arrived goes in the same transaction.
                    while let Ok(msg) = lease.rx.try_recv() {
                        match msg {
                            JobMsg::Events(parts) => push_parts(sink, parts),
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                    }
                    sink.flush().await?;
                    match next {
                        None => {}
                        Some(JobMsg::State(snapshot)) => mirror.state(sink, snapshot).await?,
                        Some(JobMsg::Done(done)) => return mirror.done(sink, run, &done).await,
                        Some(JobMsg::Lost) => break,
                        Some(JobMsg::Events(_)) => unreachable!("events were drained above"),
                    }
                }
                Some(JobMsg::State(snapshot)) => mirror.state(sink, snapshot).await?,
                Some(JobMsg::Done(done)) => return mirror.done(sink, run, &done).await,
                Some(JobMsg::Lost) | None => break,
            }
        }
        tracing::warn!(attempt, "the worker running the run went away");
    }
    Err(Stop::Failed {
        error: "WorkerLost".into(),
        message: format!(
            "run {} exceeded max attempts ({MAX_ATTEMPTS}): the worker running it went away each time",
            run.run_id
        ),
    })
}

fn push_parts(sink: &mut Sink, parts: Vec<(String, Value)>) {
    for (name, data) in parts {
        sink.push(EventKind::Stream, json!({ "event": name, "data": data }));
    }
}

/// Tells the worker to stop the job and waits (a little) for it to say it has.
async fn cancel(lease: &mut Lease, run: &Run, stop: Stop) -> Stop {
    let action = match &stop {
        Stop::Cancelled(domain::CancelAction::Rollback) => "rollback",
        Stop::Cancelled(_) | Stop::Failed { .. } => "interrupt",
    };
    lease.send(&json!({ "type": "cancel", "job": run.run_id, "action": action }));
    let ended = async {
        while let Some(msg) = lease.rx.recv().await {
            if matches!(msg, JobMsg::Done(_) | JobMsg::Lost) {
                return;
            }
        }
    };
    if tokio::time::timeout(CANCEL_WAIT, ended).await.is_err() {
        tracing::warn!("the worker did not say it stopped the cancelled run");
    }
    stop
}

/// The graph's checkpoint a state of the thread mirrors (a fork's starting point).
async fn graph_checkpoint_of(sink: &Sink, run: &Run, id: CheckpointId) -> Result<String, Stop> {
    let checkpoint = sink.store.get_checkpoint(run.owner_id, run.thread_id, id).await?;
    Pending::of(&checkpoint.metadata).and_then(|p| p.graph).ok_or_else(|| Stop::Failed {
        error: "ValueError".into(),
        message: format!("checkpoint {id} is not a state of a graph: it cannot be forked by one"),
    })
}

/// The `run` frame a worker executes.
fn run_frame(run: &Run, spec: &RunSpec, attempt: u32, fork: Option<&str>) -> Value {
    let mut config = spec.config.as_object().cloned().unwrap_or_default();
    let configurable = config.entry("configurable").or_insert_with(|| json!({}));
    if !configurable.is_object() {
        *configurable = json!({});
    }
    configurable["thread_id"] = json!(run.thread_id);
    configurable["checkpoint_ns"] = json!("");
    match fork {
        Some(id) => configurable["checkpoint_id"] = json!(id),
        None => {
            if let Some(c) = configurable.as_object_mut() {
                c.remove("checkpoint_id");
            }
        }
    }
    configurable["run_id"] = json!(run.run_id);
    configurable["assistant_id"] = json!(run.assistant_id);
    configurable["graph_id"] = json!(spec.graph_id);
    let mut metadata: Map<String, Value> = run.metadata.clone();
    for (key, value) in [
        ("run_id", json!(run.run_id)),
        ("thread_id", json!(run.thread_id)),
        ("assistant_id", json!(run.assistant_id)),
        ("graph_id", json!(spec.graph_id)),
        ("run_attempt", json!(attempt)),
    ] {
        metadata.insert(key.into(), value);
    }
    let modes: Vec<&str> = spec
        .stream_mode
        .iter()
        .map(|m| if m == "messages-tuple" { "messages" } else { m.as_str() })
        .collect();
    json!({
        "type": "run",
        "job": run.run_id,
        "attempt": attempt,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "graph_id": spec.graph_id,
        "input": run.input,
        "command": spec.command,
        "config": config,
        "context": spec.context,
        "stream_mode": modes,
        "subgraphs": spec.stream_subgraphs,
        "interrupt_before": spec.interrupt_before,
        "interrupt_after": spec.interrupt_after,
        "checkpoint_id": fork,
        "metadata": metadata,
    })
}

/// The graph's root checkpoints, committed as the thread's states. The newest is held until
/// the next one (or the end) comes, so the last is committed with the run's end, in its final
/// form (the interrupts it stopped on are known only then).
struct Mirror {
    held: Option<Value>,
    /// A fork's starting point: the parent of the run's first state.
    from: Option<CheckpointId>,
    committed: bool,
    /// What the thread's newest state holds (the graph's checkpoint id among it), when it is
    /// the graph's: a snapshot that says the same is not committed again.
    known: Option<Pending>,
}

fn id_of(snapshot: &Value) -> &str {
    snapshot["checkpoint_id"].as_str().unwrap_or_default()
}

impl Mirror {
    async fn state(&mut self, sink: &mut Sink, snapshot: Value) -> Result<(), Stop> {
        if let Some(held) = self.held.take()
            && id_of(&held) != id_of(&snapshot)
        {
            self.commit(sink, held, None).await?;
        }
        self.held = Some(snapshot);
        Ok(())
    }

    async fn done(mut self, sink: &mut Sink, run: &Run, done: &Value) -> Result<Value, Stop> {
        match done["status"].as_str().unwrap_or_default() {
            "success" | "interrupted" => {}
            "error" => {
                // The state the failure left (the failed task's error on it) is the thread's,
                // as on LangGraph's server; the run's end is the executor's.
                if done["snapshot"].is_object() {
                    self.state(sink, done["snapshot"].clone()).await?;
                }
                if let Some(held) = self.held.take() {
                    self.commit(sink, held, None).await?;
                }
                let error = &done["error"];
                return Err(Stop::Failed {
                    error: error["error"].as_str().unwrap_or("Error").to_owned(),
                    message: error["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            other => {
                return Err(Stop::Failed {
                    error: "WorkerError".into(),
                    message: format!("the worker ended the run `{other}` unasked"),
                });
            }
        }
        let last = &done["snapshot"];
        if last.is_object() {
            if let Some(held) = self.held.take()
                && id_of(&held) != id_of(last)
            {
                self.commit(sink, held, None).await?;
            }
            self.held = Some(last.clone());
        }
        let Some(last) = self.held.take() else {
            // No checkpoint at all (nothing ran): the run ends with the thread as it was.
            sink.end_here(false).await?;
            let thread = sink.store.get_thread(run.owner_id, run.thread_id).await?;
            return Ok(thread.values.unwrap_or_else(|| json!({})));
        };
        let pending = pending_of(&last);
        let interrupted = !pending.next.is_empty() || !pending.interrupts.is_empty();
        let shown = pending.shown();
        let mut values = self.commit(sink, last, Some(interrupted)).await?;
        if !shown.as_array().is_none_or(Vec::is_empty)
            && let Some(map) = values.as_object_mut()
        {
            map.insert("__interrupt__".into(), shown);
        }
        Ok(values)
    }

    /// Commits one state (and, with `end`, the run's end: `Some(interrupted)`).
    async fn commit(
        &mut self,
        sink: &mut Sink,
        snapshot: Value,
        end: Option<bool>,
    ) -> Result<Value, Stop> {
        let values = match &snapshot["values"] {
            Value::Object(v) => Value::Object(v.clone()),
            _ => json!({}),
        };
        let pending = pending_of(&snapshot);
        if self.known.as_ref().is_some_and(|known| same_state(known, &pending)) {
            // The thread's newest state already (a resumed run streams it again).
            if let Some(interrupted) = end {
                sink.end_here(interrupted).await?;
            }
            return Ok(values);
        }
        self.known = Some(pending.clone());
        let mut metadata = snapshot["metadata"].as_object().cloned().unwrap_or_default();
        pending.into_metadata(&mut metadata);
        let fork = self.from.filter(|_| !self.committed);
        self.committed = true;
        let update = {
            let values = values.clone();
            Box::new(move |_: Option<Value>| Ok(values.clone()))
        };
        match fork {
            Some(from) => {
                let first = FirstStep {
                    events: Vec::new(),
                    update,
                    metadata,
                    from: Some(from),
                    initial: None,
                };
                let values = sink.commit_first(first).await?;
                if let Some(interrupted) = end {
                    sink.end_here(interrupted).await?;
                }
                Ok(values)
            }
            None => {
                let end = end.map(|interrupted| sink.end(interrupted));
                sink.commit(Some(update), &metadata, end.as_ref()).await
            }
        }
    }
}

/// Whether two states of a graph are one: the same checkpoint of the graph, waiting for the
/// same nodes and interrupts (a checkpoint resumed and interrupted again is a new state).
fn same_state(a: &Pending, b: &Pending) -> bool {
    a.graph.is_some() && a.graph == b.graph && a.next == b.next && a.interrupts == b.interrupts
}

/// What a graph's state has still to run, as Spindle keeps it: its next nodes, its
/// interrupts, the graph's own tasks, and the graph's checkpoint id.
fn pending_of(snapshot: &Value) -> Pending {
    let next = snapshot["next"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let interrupts = snapshot["interrupts"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|i| Interrupt {
                    id: i["id"].as_str().unwrap_or_default().to_owned(),
                    value: i["value"].clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Pending {
        next,
        interrupts,
        tasks: snapshot["tasks"].as_array().cloned(),
        graph: Some(id_of(snapshot).to_owned()).filter(|id| !id.is_empty()),
    }
}

/// A state update of a graph's thread (`POST /threads/{id}/state`): LangGraph's
/// `update_state(config, values, as_node)`, run by a worker on the graph's checkpoints (from
/// `from`, a state of the thread, or the newest), its new state committed as the thread's.
#[allow(clippy::too_many_arguments, reason = "one state update, as the route gives it")]
pub(crate) async fn update_graph_state(
    workers: &Workers,
    store: &Store,
    owner: UserId,
    thread: ThreadId,
    graph_id: &str,
    from: Option<CheckpointId>,
    values: Value,
    as_node: Option<String>,
) -> store::Result<Checkpoint> {
    let fork = match from {
        None => None,
        Some(id) => {
            let checkpoint = store.get_checkpoint(owner, thread, id).await?;
            let graph = Pending::of(&checkpoint.metadata).and_then(|p| p.graph);
            Some(graph.ok_or_else(|| {
                store::Error::Invalid(format!("checkpoint {id} is not a state of graph {graph_id}"))
            })?)
        }
    };
    let job = JobOf { job: RunId::new(), owner, thread };
    let mut lease = workers
        .lease_job(job, graph_id, 1, WORKER_WAIT)
        .await
        .map_err(store::Error::Unavailable)?;
    let mut configurable = json!({ "thread_id": thread, "checkpoint_ns": "" });
    if let Some(id) = &fork {
        configurable["checkpoint_id"] = json!(id);
    }
    lease.send(&json!({
        "type": "update_state",
        "job": job.job,
        "attempt": 1,
        "thread_id": thread,
        "graph_id": graph_id,
        "config": { "configurable": configurable },
        "values": values,
        "as_node": as_node,
    }));
    let done = loop {
        match tokio::time::timeout(UPDATE_WAIT, lease.rx.recv()).await {
            Ok(Some(JobMsg::Done(done))) => break done,
            Ok(Some(JobMsg::Lost) | None) => {
                return Err(store::Error::Unavailable(
                    "the worker updating the state went away: try again".into(),
                ));
            }
            Ok(Some(_)) => {}
            Err(_) => {
                return Err(store::Error::Unavailable(format!(
                    "the worker did not update the state within {} s",
                    UPDATE_WAIT.as_secs()
                )));
            }
        }
    };
    drop(lease);
    if done["status"] != "success" {
        let error = &done["error"];
        return Err(store::Error::Invalid(format!(
            "{}: {}",
            error["error"].as_str().unwrap_or("Error"),
            error["message"].as_str().unwrap_or_default()
        )));
    }
    let snapshot = &done["snapshot"];
    let values = match &snapshot["values"] {
        Value::Object(v) => Value::Object(v.clone()),
        _ => json!({}),
    };
    let mut metadata = snapshot["metadata"].as_object().cloned().unwrap_or_default();
    pending_of(snapshot).into_metadata(&mut metadata);
    let update = Box::new(move |_: Option<Value>| Ok(values.clone()));
    store.update_state(owner, thread, None, from, update, &metadata).await
}

/// How long a worker may take to update a state.
const UPDATE_WAIT: Duration = Duration::from_secs(60);
