//! The engine's [`agents::Sink`]: where a run's agent emits its events, and the run's steps
//! (its first step, a state update, an interrupt, the last step with the run's end), each one
//! transaction written through the [`EventLog`]. Cancellation is cooperative: the sink refuses
//! to write once its run is cancelled or out of time, so a stopped run never leaves an event
//! committed but unpublished.

use std::future::Future;
use std::time::Duration;

use agents::{Agent, Sink as _, Stop};
use domain::{CancelAction, Interrupt, Pending, apply_update};
use serde_json::{Map, Value, json};
use store::{EventKind, FirstStep, NewEvent, Run, RunEnd, RunStatus, StateUpdate, Store};
use tokio::sync::watch;

use crate::log::EventLog;

/// Events a sink appends in one transaction at most.
pub const BATCH: usize = 256;

impl agents::Sink for Sink {
    fn push(&mut self, kind: EventKind, data: Value) {
        self.buffer.push(NewEvent { run_id: Some(self.run.run_id), kind, data });
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        self.flush_now().await
    }

    /// Flushes when enough events wait: 64 at first, so the first events reach the client at
    /// once, then twice as many each time up to [`BATCH`], so a long stream is appended in
    /// large transactions.
    async fn flush_if_full(&mut self) -> Result<(), Stop> {
        if self.buffer.len() < self.batch {
            return Ok(());
        }
        self.batch = (self.batch * 2).min(BATCH);
        self.flush_now().await
    }

    fn stopped(&self) -> impl Future<Output = Stop> + Send + 'static {
        let (mut cancel, deadline, timeout) = (self.cancel.clone(), self.deadline, self.timeout);
        async move {
            let cancelled = async {
                loop {
                    if let Some(action) = *cancel.borrow_and_update() {
                        return Stop::Cancelled(action);
                    }
                    if cancel.changed().await.is_err() {
                        // No one can cancel the run any more: only its time can run out.
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                stop = cancelled => stop,
                () = tokio::time::sleep_until(deadline) => timed_out(timeout),
            }
        }
    }

    async fn pause(&mut self, delay: Duration) -> Result<(), Stop> {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tokio::time::sleep_until(self.deadline) => {}
            _ = self.cancel.changed() => {}
        }
        self.check()
    }
}

/// Where an agent's events go: appended in the store (numbered there), then published.
#[derive(Debug)]
pub struct Sink {
    /// Reads of the run's thread (its newest checkpoint, for a `command`).
    pub(crate) store: Store,
    log: EventLog,
    run: Run,
    buffer: Vec<NewEvent>,
    cancel: watch::Receiver<Option<CancelAction>>,
    /// When the run's time is up.
    deadline: tokio::time::Instant,
    /// The size of the next flush (see `flush_if_full`).
    batch: usize,
    timeout: Duration,
}

impl Sink {
    pub(crate) fn new(
        store: Store,
        log: EventLog,
        run: Run,
        cancel: watch::Receiver<Option<CancelAction>>,
        timeout: Duration,
    ) -> Sink {
        Sink {
            store,
            log,
            run,
            buffer: Vec::new(),
            cancel,
            deadline: tokio::time::Instant::now() + timeout,
            batch: 64,
            timeout,
        }
    }

    fn check(&self) -> Result<(), Stop> {
        if let Some(action) = *self.cancel.borrow() {
            return Err(Stop::Cancelled(action));
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Err(timed_out(self.timeout));
        }
        Ok(())
    }

    /// Appends buffered events in one transaction and publishes them.
    async fn flush_now(&mut self) -> Result<(), Stop> {
        self.check()?;
        while !self.buffer.is_empty() {
            let rest = self.buffer.split_off(self.buffer.len().min(BATCH));
            let batch = std::mem::replace(&mut self.buffer, rest);
            self.log.append(self.run.owner_id, self.run.thread_id, &batch).await?;
        }
        Ok(())
    }

    /// Commits the run's first step (in one transaction with the buffered events and the
    /// `values` event of the new state); returns the thread's new values.
    pub(crate) async fn commit_first(&mut self, mut first: FirstStep) -> Result<Value, Stop> {
        self.check()?;
        let mut events = std::mem::take(&mut self.buffer);
        events.append(&mut first.events);
        first.events = events;
        let (owner, thread, run) = (self.run.owner_id, self.run.thread_id, self.run.run_id);
        let step = self.log.commit_first_step(owner, thread, run, first).await.map_err(refused)?;
        step.checkpoint.map(|c| c.values).ok_or_else(no_checkpoint)
    }

    /// A state update as a step of the run (a command's `update`); returns the new values.
    pub(crate) async fn commit_update(
        &mut self,
        update: Value,
        metadata: Value,
    ) -> Result<Value, Stop> {
        self.check()?;
        let metadata = metadata.as_object().cloned().unwrap_or_default();
        let apply = Box::new(move |current| apply_update(current, update.clone()));
        self.commit(Some(apply), &metadata, None).await
    }

    /// Stops the run on an interrupt with `value`: a checkpoint of the same values whose
    /// pending task (the agent's) holds the interrupt, and the run's end (`success`, the
    /// thread `interrupted`), in one transaction. Returns the values with `__interrupt__`.
    pub(crate) async fn interrupt(&mut self, agent: Agent, value: Value) -> Result<Value, Stop> {
        self.interrupt_with(agent, Value::Null, value).await
    }

    /// As [`Sink::interrupt`], with the agent's `update` (what it wrote before it asked)
    /// applied in the same step.
    pub(crate) async fn interrupt_with(
        &mut self,
        agent: Agent,
        update: Value,
        value: Value,
    ) -> Result<Value, Stop> {
        self.check()?;
        let id = ids::InterruptId::new().simple();
        let mut pending = Pending::next(agent.name());
        pending.interrupts.push(Interrupt { id, value });
        let shown = pending.shown();
        let writes = if update.is_null() { json!({}) } else { json!({ agent.name(): update }) };
        let mut metadata =
            json!({ "source": "loop", "run_id": self.run.run_id, "writes": writes, "parents": {} })
                .as_object()
                .cloned()
                .unwrap_or_default();
        pending.into_metadata(&mut metadata);
        self.push(EventKind::Interrupt, json!({ "node": agent.name(), "interrupts": shown }));
        let end = self.end(true);
        let mut values = self
            .commit(
                Some(Box::new(move |current| apply_update(current, update.clone()))),
                &metadata,
                Some(&end),
            )
            .await?;
        if let Some(map) = values.as_object_mut() {
            map.insert("__interrupt__".into(), shown);
        }
        Ok(values)
    }

    /// Ends the run `success`, its thread `interrupted`, with the buffered events and no new
    /// state (a breakpoint: the newest checkpoint waits for the agent already).
    pub(crate) async fn end_interrupted(&mut self) -> Result<(), Stop> {
        self.end_here(true).await
    }

    /// Ends the run `success` with the buffered events and no new state, its thread left
    /// `interrupted` or not (a graph's run whose last state is committed already).
    pub(crate) async fn end_here(&mut self, interrupted: bool) -> Result<(), Stop> {
        self.check()?;
        let end = self.end(interrupted);
        let events = std::mem::take(&mut self.buffer);
        let (owner, thread, run) = (self.run.owner_id, self.run.thread_id, self.run.run_id);
        self.log
            .commit_step(owner, thread, run, &events, None, &Map::new(), Some(&end))
            .await
            .map_err(refused)?;
        Ok(())
    }

    /// A `success` end, its thread left `interrupted` or not.
    pub(crate) fn end(&self, interrupted: bool) -> RunEnd {
        let event = NewEvent {
            run_id: Some(self.run.run_id),
            kind: EventKind::AgentCompleted,
            data: json!({ "status": "success" }),
        };
        RunEnd { status: RunStatus::Success, error: None, event, interrupted }
    }

    /// The run's last step and its end (`success`) in one transaction.
    pub(crate) async fn commit_final(
        &mut self,
        update: Value,
        metadata: Value,
    ) -> Result<Value, Stop> {
        self.check()?;
        let metadata = metadata.as_object().cloned().unwrap_or_default();
        let apply = Box::new(move |current| apply_update(current, update.clone()));
        let end = self.end(false);
        self.commit(Some(apply), &metadata, Some(&end)).await
    }

    /// Commits the buffered events with a state update (and an end), publishes what was
    /// committed, and returns the thread's new values.
    pub(crate) async fn commit(
        &mut self,
        update: Option<StateUpdate>,
        metadata: &Map<String, Value>,
        end: Option<&RunEnd>,
    ) -> Result<Value, Stop> {
        let events = std::mem::take(&mut self.buffer);
        let step = self
            .log
            .commit_step(
                self.run.owner_id,
                self.run.thread_id,
                self.run.run_id,
                &events,
                update,
                metadata,
                end,
            )
            .await
            .map_err(refused)?;
        step.checkpoint.map(|c| c.values).ok_or_else(no_checkpoint)
    }

    /// An event about a run that no longer exists (after a rollback).
    pub(crate) async fn publish_unowned(&mut self, kind: EventKind, data: Value) {
        let event = NewEvent { run_id: None, kind, data };
        if let Err(e) = self.log.append(self.run.owner_id, self.run.thread_id, &[event]).await {
            tracing::warn!(error = %e, "could not append the rollback event");
        }
    }
}

fn timed_out(timeout: Duration) -> Stop {
    let message = format!("the run exceeded {} s", timeout.as_secs_f64());
    Stop::Failed { error: "TimeoutError".into(), message }
}

/// A step the store refused: an invalid update fails the run as LangGraph's does.
fn refused(e: store::Error) -> Stop {
    match e {
        store::Error::Invalid(message) => {
            Stop::Failed { error: "InvalidUpdateError".into(), message }
        }
        other => other.into(),
    }
}

fn no_checkpoint() -> Stop {
    Stop::Failed { error: "StoreError".into(), message: "no checkpoint".into() }
}
