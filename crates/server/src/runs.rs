//! The run executor: claims pending runs from the store (so several nodes can share one
//! PostgreSQL), runs each as a tokio task within a concurrency limit, and brings every run to
//! exactly one end: `success`, `error`, `timeout` or `interrupted` (or, for a rollback, gone).
//!
//! Events reach subscribers through [`Sink`]: appended to the store (which numbers them in
//! the transaction) and published to the hub after commit. Cancellation is cooperative: the
//! sink refuses to append once a run is cancelled, so a stopped run never leaves an event
//! committed but unpublished.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ids::{AssistantId, RunId, ThreadId, UserId};
use serde_json::{Map, Value, json};
use store::{EventKind, FirstStep, NewEvent, Run, RunEnd, RunStatus, StateUpdate, Store};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::Instrument;

use crate::hub::Hub;
use crate::metrics;
use crate::wire::{Interrupt, Pending, apply_update};
use agents::Agent;
use agents::Sink as _;

/// How often the executor looks for claimable runs when nothing woke it (runs created on
/// other nodes, runs freed by a crash).
const POLL: Duration = Duration::from_millis(500);
/// The `status` label of `spindle_runs_finished_total` for a run undone by a rollback.
const ROLLED_BACK: &str = "rolled_back";
/// Events a sink appends in one transaction at most.
pub const BATCH: usize = 256;

pub use agents::Stop;
pub use domain::CancelAction;

/// A place in this node's executor, reserved for a run about to be created claimed (see
/// [`Executor::try_reserve`]). Dropped without being handed to
/// [`Executor::spawn_claimed`] (the run was created pending, or not at all), it frees the
/// place and unregisters the run.
#[derive(Debug)]
pub struct Place {
    executor: Executor,
    run: RunId,
    owner: UserId,
    permit: Option<OwnedSemaphorePermit>,
    cancel: Option<watch::Receiver<Option<CancelAction>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.cancel.take().is_some() {
            self.executor.running().runs.remove(&self.run);
            self.executor.user_left(self.owner);
        }
    }
}

/// A waiter for one run's end, from [`Executor::watch_end`]; dropping it unregisters it.
#[derive(Debug)]
pub struct EndWatch {
    executor: Executor,
    run: RunId,
    rx: Option<oneshot::Receiver<Finished>>,
}

impl EndWatch {
    /// Waits for the end; `None` once if it cannot come any more (the executor is gone), and
    /// never returns after that.
    pub async fn ended(&mut self) -> Option<Finished> {
        let Some(rx) = self.rx.as_mut() else { return std::future::pending().await };
        let ended = rx.await.ok();
        self.rx = None;
        ended
    }

    /// The end, if it was announced already (without waiting).
    pub fn try_ended(&mut self) -> Option<Finished> {
        let ended = self.rx.as_mut()?.try_recv().ok();
        if ended.is_some() {
            self.rx = None;
        }
        ended
    }
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        if self.rx.take().is_some() {
            let mut ends = self.executor.ends();
            if let Some(waiters) = ends.get_mut(&self.run) {
                waiters.retain(|w| !w.is_closed());
                if waiters.is_empty() {
                    ends.remove(&self.run);
                }
            }
        }
    }
}

/// How runs end, for waiters that must not miss it (a deleted thread takes its log along).
#[derive(Clone, Debug)]
pub struct Finished {
    pub run_id: RunId,
    pub status: Option<RunStatus>,
    /// The thread's values when the run ended (`None` after a rollback).
    pub values: Option<Value>,
    pub error: Option<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Runs executing at once on this node.
    pub concurrency: usize,
    /// Runs of one user executing at once; more wait `pending`, and waiting runs are taken in
    /// turns between users, so one user cannot take every place. Counted in the store by the
    /// claim (every node's running runs) and on this node for runs claimed as they are created.
    pub per_user: usize,
    /// Longest a run may execute before it ends `timeout`.
    pub run_timeout: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig { concurrency: 64, per_user: 64, run_timeout: Duration::from_secs(600) }
    }
}

/// The executor of this node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    hub: Hub,
    config: ExecutorConfig,
    wake: Notify,
    /// Whether a run may be waiting to be claimed. While false, a run's end does not make the
    /// executor try to claim (a write for nothing); the poll still does.
    maybe_pending: AtomicBool,
    /// Whether a run was created pending for want of a place and may still wait for one:
    /// while true, new runs do not take places ahead of it (they are created pending too, and
    /// claimed in creation order).
    starved: AtomicBool,
    permits: Arc<Semaphore>,
    /// Runs executing here, with the channel that cancels them.
    running: Mutex<Running>,
    /// How many places each user holds here (reserved or executing); a user at
    /// `config.per_user` gets no place for a new run, which waits `pending` for its turn.
    users: Mutex<HashMap<UserId, usize>>,
    /// Who waits for which run's end (see [`Executor::watch_end`]).
    ends: Mutex<HashMap<RunId, Vec<oneshot::Sender<Finished>>>>,
}

#[derive(Debug, Default)]
struct Running {
    runs: HashMap<RunId, (ThreadId, watch::Sender<Option<CancelAction>>)>,
    /// Cancels that arrived between a run's claim and its registration.
    early: HashMap<RunId, CancelAction>,
}

impl Executor {
    pub fn new(store: Store, hub: Hub, config: ExecutorConfig) -> Executor {
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let inner = Inner {
            store,
            hub,
            config,
            wake: Notify::new(),
            maybe_pending: AtomicBool::new(true),
            starved: AtomicBool::new(false),
            permits,
            running: Mutex::default(),
            users: Mutex::default(),
            ends: Mutex::default(),
        };
        Executor { inner: Arc::new(inner) }
    }

    /// Something may be claimable: a run was created pending, or one was cancelled.
    pub fn wake(&self) {
        self.inner.maybe_pending.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// A run ended here: its place is free for a pending run, if there is one.
    fn place_freed(&self) {
        if self.inner.maybe_pending.load(Ordering::Acquire) {
            self.inner.wake.notify_one();
        }
    }

    /// The end of `run`, when it ends on this node. Watch before creating a run to be sure to
    /// see its end. Only the run's own waiters are woken (not every waiter at every run's end).
    pub fn watch_end(&self, run: RunId) -> EndWatch {
        let (tx, rx) = oneshot::channel();
        self.ends().entry(run).or_default().push(tx);
        EndWatch { executor: self.clone(), run, rx: Some(rx) }
    }

    fn ends(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Vec<oneshot::Sender<Finished>>>> {
        self.inner.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the run's waiters how it ended.
    fn announce(&self, finished: Finished) {
        let waiters = self.ends().remove(&finished.run_id).unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(finished.clone());
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        self.inner.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place of `owner`'s here, unless the user holds `per_user` already.
    fn user_enters(&self, owner: UserId, force: bool) -> bool {
        let mut users = self.users();
        let held = users.entry(owner).or_default();
        if *held >= self.inner.config.per_user.max(1) && !force {
            return false;
        }
        *held += 1;
        true
    }

    /// Gives back a place of `owner`'s.
    fn user_left(&self, owner: UserId) {
        let mut users = self.users();
        if let Some(held) = users.get_mut(&owner) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                users.remove(&owner);
            }
        }
    }

    /// Asks a run executing (or about to execute) on this node to stop.
    pub fn cancel(&self, run: RunId, action: CancelAction) {
        let mut running = self.running();
        match running.runs.get(&run) {
            Some((_, cancel)) => {
                let _ = cancel.send(Some(action));
            }
            None => {
                running.early.insert(run, action);
            }
        }
    }

    /// Cancels a run of `owner`'s: a pending run ends at once (`interrupted`, or deleted for a
    /// rollback) with a `run_cancelled` event; a running one is asked to stop.
    pub async fn cancel_run(
        &self,
        owner: UserId,
        run: &Run,
        action: CancelAction,
    ) -> store::Result<()> {
        let rollback = action == CancelAction::Rollback;
        if self.inner.store.cancel_pending_run(owner, run.thread_id, run.run_id, rollback).await? {
            self.announce_cancelled(owner, run.thread_id, run.run_id, action).await?;
            // A stateless run's thread goes with it, even when it never started.
            if run.kwargs.get("on_completion").and_then(Value::as_str) == Some("delete") {
                self.inner.store.delete_thread(owner, run.thread_id).await?;
                self.inner.hub.thread_deleted(owner, run.thread_id);
            }
            return Ok(());
        }
        // Not pending: stop it if it is still running (an ended run needs nothing, and leaves
        // no early-cancel entry behind).
        match self.inner.store.get_run(owner, run.thread_id, run.run_id).await {
            Ok(current) if current.status == RunStatus::Running => self.cancel(run.run_id, action),
            Ok(_) | Err(store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Tells a pending run's streams and waiters that it was cancelled before it started
    /// (by `cancel`, or by another run's `interrupt`/`rollback` strategy).
    pub async fn announce_cancelled(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        action: CancelAction,
    ) -> store::Result<()> {
        let rollback = action == CancelAction::Rollback;
        // A rolled-back run is gone: its last event outlives it, naming it in its data.
        let (run_id, action_name) =
            if rollback { (None, "rollback") } else { (Some(run), "interrupt") };
        let event = NewEvent {
            run_id,
            kind: EventKind::RunCancelled,
            data: json!({ "action": action_name, "run_id": run }),
        };
        let events = self.inner.store.append_events(owner, thread, &[event]).await?;
        self.inner.hub.publish(owner, &events);
        let status = if rollback { None } else { Some(RunStatus::Interrupted) };
        metrics::run_finished(status.map_or(ROLLED_BACK, RunStatus::as_str));
        let values = self.inner.store.get_thread(owner, thread).await.ok().and_then(|t| t.values);
        self.announce(Finished { run_id: run, status, values, error: None });
        self.wake();
        Ok(())
    }

    /// Asks every run of `thread` executing on this node to stop (multitask `interrupt` and
    /// `rollback`), except `keep`.
    pub fn cancel_thread(&self, thread: ThreadId, keep: RunId, action: CancelAction) {
        let running = self.running();
        for (run, (t, cancel)) in &running.runs {
            if *t == thread && *run != keep {
                let _ = cancel.send(Some(action));
            }
        }
    }

    /// At start-up: runs a crash left `running` end `error`, each with a `run_error` event.
    pub async fn recover(&self) -> store::Result<usize> {
        let runs = self.inner.store.recover_runs().await?;
        for run in &runs {
            let event = NewEvent {
                run_id: Some(run.run_id),
                kind: EventKind::RunError,
                data: json!({ "error": "ServerRestarted", "message": "server restarted while the run was running" }),
            };
            metrics::run_finished(RunStatus::Error.as_str());
            // A stateless run's temporary thread was deleted with it: no event to tell.
            if run.kwargs.get("on_completion").and_then(Value::as_str) == Some("delete") {
                tracing::warn!(run_id = %run.run_id, thread_id = %run.thread_id, "run ended by restart; its temporary thread is deleted");
                continue;
            }
            // One run's event that cannot be stored fails neither start-up nor the others.
            match self.inner.store.append_events(run.owner_id, run.thread_id, &[event]).await {
                Ok(events) => self.inner.hub.publish(run.owner_id, &events),
                Err(e) => {
                    tracing::error!(run_id = %run.run_id, error = %e, "could not record a recovered run's end event");
                }
            }
            tracing::warn!(run_id = %run.run_id, thread_id = %run.thread_id, "run ended by restart");
        }
        Ok(runs.len())
    }

    /// Claims and executes runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            // Places are taken before the claim, so every claimed run has one at once (a run
            // created meanwhile cannot take it and leave a claimed run waiting).
            let limit = self.inner.permits.available_permits().min(32);
            // Places are held only while there is something to claim: asked of the store first
            // when nothing here says runs wait (a poll, for runs created elsewhere).
            let wanted = limit > 0
                && (self.inner.maybe_pending.load(Ordering::Acquire)
                    || self.inner.store.any_pending_runs().await.unwrap_or(true));
            let mut places = match limit {
                n if wanted => self.inner.permits.clone().try_acquire_many_owned(n as u32).ok(),
                _ => None,
            };
            let claimed = if places.is_none() {
                Vec::new()
            } else {
                // Cleared before the claim, so a run created pending meanwhile sets it again.
                self.inner.maybe_pending.store(false, Ordering::Release);
                let per_user = u32::try_from(self.inner.config.per_user).unwrap_or(u32::MAX);
                match self.inner.store.claim_runs_fairly(limit as u32, per_user).await {
                    Ok(runs) => runs,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming runs failed");
                        self.inner.maybe_pending.store(true, Ordering::Release);
                        Vec::new()
                    }
                }
            };
            if limit > 0 && !wanted {
                // Free places and no pending run: nothing waits for a place.
                self.inner.starved.store(false, Ordering::Release);
            } else if places.is_some() && claimed.len() < limit {
                // Fewer than asked: every claimable run has a place now (runs may still wait
                // behind their threads' running runs).
                self.inner.starved.store(false, Ordering::Release);
                if self.inner.store.any_pending_runs().await.unwrap_or(true) {
                    self.inner.maybe_pending.store(true, Ordering::Release);
                }
                // Otherwise nothing waits; a run created since then has set the flag again.
            } else if wanted || limit == 0 {
                self.inner.maybe_pending.store(true, Ordering::Release);
            }
            let idle = claimed.is_empty();
            for run in claimed {
                let Some(place) = places.as_mut().and_then(|p| p.split(1)) else { break };
                // The store counted the user's running runs: this place is theirs.
                self.user_enters(run.owner_id, true);
                let cancel = self.register(run.run_id, run.thread_id);
                self.spawn(run, place, cancel, None);
            }
            drop(places);
            if idle {
                tokio::select! {
                    () = self.inner.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                    () = &mut shutdown => return,
                }
            }
        }
    }

    /// A place to execute `run` (of `thread`, of `owner`) now, if this node has one free, no
    /// run created earlier waits for one, and `owner` holds fewer than `per_user` places. The
    /// run is registered from now on, so a cancel (or another run's `interrupt`) reaches it
    /// even before it is handed over.
    pub fn try_reserve(&self, run: RunId, thread: ThreadId, owner: UserId) -> Option<Place> {
        if self.inner.starved.load(Ordering::Acquire) {
            return None;
        }
        if !self.user_enters(owner, false) {
            // The run waits its turn among the user's runs (the claim takes it); other
            // users' new runs go on taking free places.
            return None;
        }
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            self.user_left(owner);
            self.inner.starved.store(true, Ordering::Release);
            return None;
        };
        let cancel = self.register(run, thread);
        Some(Place {
            executor: self.clone(),
            run,
            owner,
            permit: Some(permit),
            cancel: Some(cancel),
        })
    }

    /// Executes a run created claimed (by `create_run_claiming`) in the place reserved for
    /// it. `started`: the thread's values after the run's first step, when that was committed
    /// with the run.
    pub fn spawn_claimed(&self, run: Run, mut place: Place, started: Option<Value>) {
        let (Some(permit), Some(cancel)) = (place.permit.take(), place.cancel.take()) else {
            return;
        };
        self.spawn(run, permit, cancel, started);
    }

    /// Registers a run executing (or about to) on this node, with a cancel sent before.
    fn register(&self, run: RunId, thread: ThreadId) -> watch::Receiver<Option<CancelAction>> {
        let (cancel_tx, cancel_rx) = watch::channel(None);
        let mut running = self.running();
        if let Some(action) = running.early.remove(&run) {
            let _ = cancel_tx.send(Some(action));
        }
        running.runs.insert(run, (thread, cancel_tx));
        cancel_rx
    }

    fn spawn(
        &self,
        run: Run,
        place: OwnedSemaphorePermit,
        cancel: watch::Receiver<Option<CancelAction>>,
        started: Option<Value>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            /// Gives the user's place back however the run's task ends (a panic included).
            struct Held(Executor, UserId);
            impl Drop for Held {
                fn drop(&mut self) {
                    self.0.user_left(self.1);
                }
            }
            let held = Held(this.clone(), run.owner_id);
            this.execute(run, cancel, started).await;
            drop(held);
            drop(place);
            this.place_freed();
        });
    }

    async fn execute(
        &self,
        run: Run,
        cancel: watch::Receiver<Option<CancelAction>>,
        started: Option<Value>,
    ) {
        let span = tracing::info_span!("run", run_id = %run.run_id, thread_id = %run.thread_id, user_id = %run.owner_id);
        self.execute_in(run, cancel, started).instrument(span).await;
    }

    async fn execute_in(
        &self,
        run: Run,
        cancel_rx: watch::Receiver<Option<CancelAction>>,
        started: Option<Value>,
    ) {
        let mut sink = Sink {
            store: self.inner.store.clone(),
            hub: self.inner.hub.clone(),
            run: run.clone(),
            buffer: Vec::new(),
            cancel: cancel_rx,
            deadline: tokio::time::Instant::now() + self.inner.config.run_timeout,
            batch: 64,
            timeout: self.inner.config.run_timeout,
        };
        // The time limit is checked by the sink, like a cancel, so a run is never dropped in
        // the middle of a write (which could commit an event nobody is told about).
        let outcome = drive(&run, &mut sink, started).await;
        let finished = self.finish(&run, &mut sink, outcome).await;
        self.running().runs.remove(&run.run_id);
        self.announce(finished);
        if run.kwargs.get("on_completion").and_then(Value::as_str) == Some("delete") {
            match self.inner.store.delete_thread(run.owner_id, run.thread_id).await {
                Ok(()) => self.inner.hub.thread_deleted(run.owner_id, run.thread_id),
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete the thread of a stateless run")
                }
            }
        }
    }

    /// Records how a run ended: its status, then its last event (so a client that sees the
    /// event and reads the run sees the final status).
    async fn finish(&self, run: &Run, sink: &mut Sink, outcome: Result<Value, Stop>) -> Finished {
        let store = &self.inner.store;
        let (status, error, event) = match &outcome {
            // `drive` ended the run itself, with its last step.
            Ok(values) => {
                metrics::run_finished(RunStatus::Success.as_str());
                tracing::info!(status = "success", "run ended");
                let values = Some(values.clone());
                return Finished {
                    run_id: run.run_id,
                    status: Some(RunStatus::Success),
                    values,
                    error: None,
                };
            }
            Err(Stop::Cancelled(CancelAction::Interrupt)) => (
                RunStatus::Interrupted,
                None,
                (EventKind::RunCancelled, json!({ "action": "interrupt" })),
            ),
            Err(Stop::Cancelled(CancelAction::Rollback)) => {
                if let Err(e) = store.rollback_run(run.owner_id, run.thread_id, run.run_id).await {
                    tracing::error!(error = %e, "rollback failed");
                }
                // The run and its events are gone; this event outlives them (no run_id).
                let data = json!({ "action": "rollback", "run_id": run.run_id });
                // Kept with the interrupt's data shape, so streams of the run see their end.
                sink.publish_unowned(EventKind::RunCancelled, data).await;
                metrics::run_finished(ROLLED_BACK);
                tracing::info!(status = ROLLED_BACK, "run ended");
                return Finished { run_id: run.run_id, status: None, values: None, error: None };
            }
            Err(Stop::Failed { error, message }) => {
                let status =
                    if error == "TimeoutError" { RunStatus::Timeout } else { RunStatus::Error };
                (
                    status,
                    Some((error.clone(), message.clone())),
                    (EventKind::RunError, json!({ "error": error, "message": message })),
                )
            }
        };
        let message = error.as_ref().map(|(_, m)| m.as_str());
        let last = NewEvent { run_id: Some(run.run_id), kind: event.0, data: event.1 };
        match store
            .finish_run(run.owner_id, run.thread_id, run.run_id, status, message, &last)
            .await
        {
            Ok((_, event)) => {
                self.inner.hub.publish(run.owner_id, std::slice::from_ref(&event));
                metrics::run_finished(status.as_str());
            }
            Err(e) => tracing::error!(error = %e, "could not record the end of the run"),
        }
        tracing::info!(status = %status, "run ended");
        let values =
            store.get_thread(run.owner_id, run.thread_id).await.ok().and_then(|t| t.values);
        Finished { run_id: run.run_id, status: Some(status), values, error }
    }
}

/// Executes one run: applies its input to the thread's state (or, for a `command`, resumes
/// the interrupted state), runs the agent, appends the agent's message and ends the run
/// `success` (in one transaction). An agent that stops on an interrupt, or a breakpoint
/// before it (`interrupt_before`), ends the run `success` and leaves the thread
/// `interrupted`. Returns the thread's values after the run (with `__interrupt__` when it
/// stopped on one); on an error the run has not ended yet (`finish` ends it).
async fn drive(run: &Run, sink: &mut Sink, started: Option<Value>) -> Result<Value, Stop> {
    let agent = agent_of(&run.kwargs)?;
    let input = run.input.clone().unwrap_or(Value::Null);
    let command = run.kwargs.get("command").filter(|c| c.is_object());
    let (state, resumed) = match command {
        Some(command) => match resume(run, sink, agent, command).await? {
            Resumed::Run { state, value } => (state, value),
            Resumed::Ended(values) => return Ok(values),
        },
        None => {
            // The first step may have been committed with the run already
            // (`create_run_claiming`).
            let state = match started {
                Some(state) => state,
                None => {
                    let first =
                        first_step(run.run_id, run.assistant_id, &run.kwargs, run.input.as_ref())?;
                    sink.commit_first(first).await?
                }
            };
            if stops_before(&run.kwargs, agent) {
                // A static breakpoint: the state's pending task is the agent's.
                sink.push(EventKind::Interrupt, json!({ "node": agent.name(), "interrupts": [] }));
                sink.end_interrupted().await?;
                return Ok(state);
            }
            (state, None)
        }
    };
    if command.is_none()
        && let Some(value) = agent.interrupt_value(&input)
    {
        return sink.interrupt(agent, value).await;
    }
    let message = agent.run(&state, &input, resumed.as_ref(), sink).await?;
    let writes = json!({ agent.name(): { "messages": [message.clone()] } });
    let metadata =
        json!({ "source": "loop", "run_id": run.run_id, "writes": writes, "parents": {} });
    // The last step and the run's end, in one transaction.
    sink.commit_final(json!({ "messages": [message] }), metadata).await
}

/// Whether `interrupt_before` (in the run's kwargs) names the agent's node, or is `*`.
fn stops_before(kwargs: &Value, agent: Agent) -> bool {
    match kwargs.get("interrupt_before") {
        Some(Value::String(all)) => all == "*",
        Some(Value::Array(nodes)) => {
            nodes.iter().any(|n| n.as_str() == Some(agent.name()) || n.as_str() == Some("*"))
        }
        _ => false,
    }
}

/// How a `command` run goes on.
enum Resumed {
    /// The agent runs on `state`, given the resume `value` when it had asked something (an
    /// interrupt; a breakpoint asks nothing, and the value is not the agent's, as in
    /// LangGraph).
    Run { state: Value, value: Option<Value> },
    /// Nothing more to run (`goto: "__end__"`): the run has ended with these values.
    Ended(Value),
}

/// A `command` run (`{resume, update, goto}`): the thread's newest checkpoint must be waiting
/// (on an interrupt or a breakpoint) when a `resume` is given: a resume queued behind a run
/// that answered the interrupt finds nothing to resume and fails. `update` is applied first,
/// as a step of its own; `goto: "__end__"` ends the run without running the agent.
async fn resume(
    run: &Run,
    sink: &mut Sink,
    agent: Agent,
    command: &Value,
) -> Result<Resumed, Stop> {
    let (owner, thread) = (run.owner_id, run.thread_id);
    let head = sink.store.list_checkpoints(owner, thread, 1, None).await?.into_iter().next();
    let pending = head.as_ref().and_then(|c| Pending::of(&c.metadata)).unwrap_or_default();
    let waiting = pending.next.iter().any(|n| n == agent.name());
    let asked = !pending.interrupts.is_empty();
    let value = match command.get("resume") {
        None => None,
        Some(_) if !waiting => {
            return Err(Stop::Failed {
                error: "InvalidUpdateError".into(),
                message: format!("thread {thread} is not interrupted: nothing to resume"),
            });
        }
        Some(value) => {
            let value = resume_value(value, &pending)
                .map_err(|message| Stop::Failed { error: "InvalidUpdateError".into(), message })?;
            asked.then_some(value)
        }
    };
    sink.push(EventKind::AgentStarted, started_event(agent, run.assistant_id));
    let mut state = head.map(|c| c.values).unwrap_or_else(|| json!({}));
    let update = command.get("update").filter(|u| !u.is_null()).cloned();
    if update.is_none() {
        // As LangGraph's resume stream starts: the interrupted state, without the interrupt
        // (clients clear the interrupt they show at a new run's first `values`).
        sink.push(EventKind::Values, state.clone());
    }
    if let Some(update) = update {
        let mut metadata = json!({ "source": "update", "run_id": run.run_id, "writes": { "__input__": update.clone() }, "parents": {} });
        if waiting && let Some(map) = metadata.as_object_mut() {
            // Still waiting for the agent (now with the update applied).
            Pending::next(agent.name()).into_metadata(map);
        }
        state = sink.commit_update(update, metadata).await?;
    }
    // `goto: "__end__"`, or an update alone on a thread that waits for nothing: nothing to run.
    let run_agent = match goto(command) {
        Some(node) => node != "__end__",
        None => waiting || command.get("resume").is_some(),
    };
    if run_agent {
        return Ok(Resumed::Run { state, value });
    }
    // Answered without running the agent: a state that waits for nothing.
    let metadata = json!({ "source": "update", "run_id": run.run_id, "writes": {}, "parents": {} });
    Ok(Resumed::Ended(sink.commit_final(json!({}), metadata).await?))
}

/// The node a command's `goto` names (a name, or a list of one).
pub fn goto(command: &Value) -> Option<&str> {
    match command.get("goto")? {
        Value::String(node) => Some(node),
        Value::Array(nodes) => nodes.first().and_then(Value::as_str),
        _ => None,
    }
}

/// The value a `resume` gives the pending interrupt: a map of interrupt ids (every key 32 hex
/// digits, as LangGraph tells a map from a value) gives the value of the pending one's id;
/// any other value is the value. A map naming an interrupt that is not pending is refused.
pub fn resume_value(resume: &Value, pending: &Pending) -> Result<Value, String> {
    let Some(map) = resume
        .as_object()
        .filter(|m| !m.is_empty() && m.keys().all(|k| ids::InterruptId::is_simple_form(k)))
    else {
        return Ok(resume.clone());
    };
    let ids: Vec<&str> = pending.interrupts.iter().map(|i| i.id.as_str()).collect();
    if let Some(unknown) = map.keys().find(|k| !ids.contains(&k.as_str())) {
        return Err(format!("interrupt {unknown} is not pending; pending: [{}]", ids.join(", ")));
    }
    Ok(ids.iter().find_map(|id| map.get(*id)).cloned().unwrap_or(Value::Null))
}

fn started_event(agent: Agent, assistant: AssistantId) -> Value {
    json!({ "node": agent.name(), "assistant_id": assistant, "graph_id": agent.name() })
}

/// The agent a run's `graph_id` names.
fn agent_of(kwargs: &Value) -> Result<Agent, Stop> {
    let graph_id = kwargs.get("graph_id").and_then(Value::as_str).unwrap_or("echo");
    Agent::from_graph(graph_id).ok_or_else(|| Stop::Failed {
        error: "ValueError".into(),
        message: format!("no agent named {graph_id}"),
    })
}

/// A run's first step: `agent_started`, and its input applied to the thread's state as a
/// checkpoint (committed by the executor, or with the run by `create_run_claiming`) whose
/// pending task is the agent's. On a thread without a checkpoint, the state before the input
/// (`{"messages": []}`, waiting for `__start__`) is written first, as LangGraph's step −1:
/// the first message then has a parent to fork from. A run from an older checkpoint
/// (`checkpoint_id` in its kwargs) forks there; without input it copies that checkpoint
/// (`source: "fork"`) and the agent answers again (regenerate).
pub fn first_step(
    run: RunId,
    assistant: AssistantId,
    kwargs: &Value,
    input: Option<&Value>,
) -> Result<FirstStep, Stop> {
    let agent = agent_of(kwargs)?;
    let started = NewEvent {
        run_id: Some(run),
        kind: EventKind::AgentStarted,
        data: started_event(agent, assistant),
    };
    let state_input = match input {
        Some(Value::Object(fields)) => {
            // The agent's own options (synthetic's n, mode, delay_ms, interrupt) are not state.
            let state: Map<String, Value> = fields
                .iter()
                .filter(|(k, _)| !agent.is_option(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(state)
        }
        _ => Value::Null,
    };
    let from = kwargs.get("checkpoint_id").and_then(Value::as_str).and_then(|id| id.parse().ok());
    let source = if from.is_some() && state_input.is_null() { "fork" } else { "loop" };
    let mut metadata = json!({ "source": source, "run_id": run, "parents": {} })
        .as_object()
        .cloned()
        .unwrap_or_default();
    Pending::next(agent.name()).into_metadata(&mut metadata);
    let mut before = json!({ "source": "input", "run_id": run, "parents": {} })
        .as_object()
        .cloned()
        .unwrap_or_default();
    Pending::next("__start__").into_metadata(&mut before);
    Ok(FirstStep {
        events: vec![started],
        update: Box::new(move |current| apply_update(current, state_input.clone())),
        metadata,
        from,
        initial: Some((json!({ "messages": [] }), before)),
    })
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
    store: Store,
    hub: Hub,
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
    fn check(&self) -> Result<(), Stop> {
        if let Some(action) = *self.cancel.borrow() {
            return Err(Stop::Cancelled(action));
        }
        if tokio::time::Instant::now() >= self.deadline {
            let message = format!("the run exceeded {} s", self.timeout.as_secs_f64());
            return Err(Stop::Failed { error: "TimeoutError".into(), message });
        }
        Ok(())
    }

    /// Appends buffered events in one transaction and publishes them.
    async fn flush_now(&mut self) -> Result<(), Stop> {
        self.check()?;
        while !self.buffer.is_empty() {
            let rest = self.buffer.split_off(self.buffer.len().min(BATCH));
            let batch = std::mem::replace(&mut self.buffer, rest);
            let events =
                self.store.append_events(self.run.owner_id, self.run.thread_id, &batch).await?;
            self.hub.publish(self.run.owner_id, &events);
        }
        Ok(())
    }

    /// Commits the run's first step (in one transaction with the buffered events and the
    /// `values` event of the new state); returns the thread's new values.
    async fn commit_first(&mut self, mut first: FirstStep) -> Result<Value, Stop> {
        self.check()?;
        let mut events = std::mem::take(&mut self.buffer);
        events.append(&mut first.events);
        first.events = events;
        let (owner, thread, run) = (self.run.owner_id, self.run.thread_id, self.run.run_id);
        let step =
            self.store.commit_first_step(owner, thread, run, first).await.map_err(refused)?;
        self.hub.publish(owner, &step.events);
        step.checkpoint.map(|c| c.values).ok_or_else(no_checkpoint)
    }

    /// A state update as a step of the run (a command's `update`); returns the new values.
    async fn commit_update(&mut self, update: Value, metadata: Value) -> Result<Value, Stop> {
        self.check()?;
        let metadata = metadata.as_object().cloned().unwrap_or_default();
        let apply = Box::new(move |current| apply_update(current, update.clone()));
        self.commit(Some(apply), &metadata, None).await
    }

    /// Stops the run on an interrupt with `value`: a checkpoint of the same values whose
    /// pending task (the agent's) holds the interrupt, and the run's end (`success`, the
    /// thread `interrupted`), in one transaction. Returns the values with `__interrupt__`.
    async fn interrupt(&mut self, agent: Agent, value: Value) -> Result<Value, Stop> {
        self.check()?;
        let id = ids::InterruptId::new().simple();
        let mut pending = Pending::next(agent.name());
        pending.interrupts.push(Interrupt { id, value });
        let shown = pending.shown();
        let mut metadata =
            json!({ "source": "loop", "run_id": self.run.run_id, "writes": {}, "parents": {} })
                .as_object()
                .cloned()
                .unwrap_or_default();
        pending.into_metadata(&mut metadata);
        self.push(EventKind::Interrupt, json!({ "node": agent.name(), "interrupts": shown }));
        let end = self.end(true);
        let mut values = self
            .commit(
                Some(Box::new(|current| apply_update(current, Value::Null))),
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
    async fn end_interrupted(&mut self) -> Result<(), Stop> {
        self.check()?;
        let end = self.end(true);
        let events = std::mem::take(&mut self.buffer);
        let (owner, thread, run) = (self.run.owner_id, self.run.thread_id, self.run.run_id);
        let step = self
            .store
            .commit_step(owner, thread, run, &events, None, &Map::new(), Some(&end))
            .await
            .map_err(refused)?;
        self.hub.publish(owner, &step.events);
        Ok(())
    }

    /// A `success` end, its thread left `interrupted` or not.
    fn end(&self, interrupted: bool) -> RunEnd {
        let event = NewEvent {
            run_id: Some(self.run.run_id),
            kind: EventKind::AgentCompleted,
            data: json!({ "status": "success" }),
        };
        RunEnd { status: RunStatus::Success, error: None, event, interrupted }
    }

    /// The run's last step and its end (`success`) in one transaction.
    async fn commit_final(&mut self, update: Value, metadata: Value) -> Result<Value, Stop> {
        self.check()?;
        let metadata = metadata.as_object().cloned().unwrap_or_default();
        let apply = Box::new(move |current| apply_update(current, update.clone()));
        let end = self.end(false);
        self.commit(Some(apply), &metadata, Some(&end)).await
    }

    /// Commits the buffered events with a state update (and an end), publishes what was
    /// committed, and returns the thread's new values.
    async fn commit(
        &mut self,
        update: Option<StateUpdate>,
        metadata: &Map<String, Value>,
        end: Option<&RunEnd>,
    ) -> Result<Value, Stop> {
        let events = std::mem::take(&mut self.buffer);
        let step = self
            .store
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
        self.hub.publish(self.run.owner_id, &step.events);
        step.checkpoint.map(|c| c.values).ok_or_else(no_checkpoint)
    }

    /// An event about a run that no longer exists (after a rollback).
    async fn publish_unowned(&mut self, kind: EventKind, data: Value) {
        let event = NewEvent { run_id: None, kind, data };
        match self.store.append_events(self.run.owner_id, self.run.thread_id, &[event]).await {
            Ok(events) => self.hub.publish(self.run.owner_id, &events),
            Err(e) => tracing::warn!(error = %e, "could not append the rollback event"),
        }
    }
}
