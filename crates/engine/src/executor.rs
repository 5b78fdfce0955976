//! The run executor: claims pending runs from the store (so several nodes can share one
//! PostgreSQL), runs each as a tokio task within a concurrency limit, and brings every run to
//! exactly one end: `success`, `error`, `timeout` or `interrupted` (or, for a rollback, gone).
//! A run's steps are [`crate::step`]'s; its events go out through [`crate::sink::Sink`] and
//! the [`EventLog`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agents::Stop;
use domain::{CancelAction, RunSpec};
use ids::{RunId, ThreadId, UserId};
use serde_json::{Value, json};
use store::{EventKind, NewEvent, Run, RunStatus, Store};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::Instrument;

use crate::hub::Hub;
use crate::log::EventLog;
use crate::metrics;
use crate::sink::Sink;
use crate::step::run_steps;
use crate::workers::Workers;

/// How often the executor looks for claimable runs when nothing woke it (runs created on
/// other nodes, runs freed by a crash).
const POLL: Duration = Duration::from_millis(500);
/// The `status` label of `spindle_runs_finished_total` for a run undone by a rollback.
const ROLLED_BACK: &str = "rolled_back";

/// A place in this node's executor, reserved for a run about to be created claimed (see
/// [`Executor::try_reserve`]). Dropped without being handed to
/// [`Executor::spawn_claimed`] (the run was created pending, or not at all), it frees the
/// place and unregisters the run.
#[derive(Debug)]
pub struct Reservation {
    executor: Executor,
    run: RunId,
    owner: UserId,
    permit: Option<OwnedSemaphorePermit>,
    cancel: Option<watch::Receiver<Option<CancelAction>>>,
}

impl Drop for Reservation {
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
    /// The model servers and MCP servers the `llm` agent may use (server configuration).
    pub agents: agents::Runtime,
    /// The users' LangGraph graphs this server serves, and their workers (`--graphs`).
    pub workers: Option<Workers>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            concurrency: 64,
            per_user: 64,
            run_timeout: Duration::from_secs(600),
            agents: agents::Runtime::default(),
            workers: None,
        }
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
    log: EventLog,
    config: ExecutorConfig,
    wake: Notify,
    /// Whether a run may be waiting to be claimed. While false, a run's end does not make the
    /// executor try to claim (a write for nothing); the poll still does.
    pending_may_wait: AtomicBool,
    /// Whether a run was created pending for want of a place and may still wait for one:
    /// while true, new runs do not take places ahead of it (they are created pending too, and
    /// claimed in creation order).
    place_owed: AtomicBool,
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
    /// Threads with a run (`keep`) whose `interrupt`/`rollback` strategy asked the thread's
    /// other runs to stop (`cancel_thread`), while `keep` is active: a run of the thread that
    /// registers meanwhile is one the claim took before `keep` was created (while `keep` is
    /// active no other run of its thread can be claimed), so it is cancelled as it registers.
    /// Removed when `keep` registers (the run it replaced has ended) or ends.
    early_threads: HashMap<ThreadId, (RunId, CancelAction)>,
}

impl Executor {
    pub fn new(store: Store, hub: Hub, config: ExecutorConfig) -> Executor {
        let log = EventLog::new(store.clone(), hub);
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let inner = Inner {
            store,
            log,
            config,
            wake: Notify::new(),
            pending_may_wait: AtomicBool::new(true),
            place_owed: AtomicBool::new(false),
            permits,
            running: Mutex::default(),
            users: Mutex::default(),
            ends: Mutex::default(),
        };
        Executor { inner: Arc::new(inner) }
    }

    /// Something may be claimable: a run was created pending, or one was cancelled.
    pub fn wake(&self) {
        self.inner.pending_may_wait.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// A run ended here: its place is free for a pending run, if there is one.
    fn place_freed(&self) {
        if self.inner.pending_may_wait.load(Ordering::Acquire) {
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
        let mut running = self.running();
        if !running.early_threads.is_empty() {
            running.early_threads.retain(|_, (keep, _)| *keep != finished.run_id);
        }
        drop(running);
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
            if RunSpec::of(&run.kwargs).deletes_thread() {
                self.inner.log.delete_thread(owner, run.thread_id).await?;
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
        self.inner.log.append(owner, thread, &[event]).await?;
        let status = if rollback { None } else { Some(RunStatus::Interrupted) };
        metrics::run_finished(status.map_or(ROLLED_BACK, RunStatus::as_str));
        let values = self.inner.store.get_thread(owner, thread).await.ok().and_then(|t| t.values);
        self.announce(Finished { run_id: run, status, values, error: None });
        self.wake();
        Ok(())
    }

    /// Asks every run of `thread` executing on this node to stop (multitask `interrupt` and
    /// `rollback`), except `keep`, the run that replaces them; a run of the thread that the
    /// claim has taken but not registered yet stops as it registers (see `early_threads`).
    pub fn cancel_thread(&self, thread: ThreadId, keep: RunId, action: CancelAction) {
        let mut running = self.running();
        for (run, (t, cancel)) in &running.runs {
            if *t == thread && *run != keep {
                let _ = cancel.send(Some(action));
            }
        }
        // `keep` registered already (claimed as it was created): its thread had no other
        // active run, so none can register before `keep` ends.
        if !running.runs.contains_key(&keep) {
            running.early_threads.insert(thread, (keep, action));
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
            if RunSpec::of(&run.kwargs).deletes_thread() {
                tracing::warn!(run_id = %run.run_id, thread_id = %run.thread_id, "run ended by restart; its temporary thread is deleted");
                continue;
            }
            // One run's event that cannot be stored fails neither start-up nor the others.
            match self.inner.log.append(run.owner_id, run.thread_id, &[event]).await {
                Ok(_) => {}
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
                && (self.inner.pending_may_wait.load(Ordering::Acquire)
                    || self.inner.store.any_pending_runs().await.unwrap_or(true));
            let mut places = match limit {
                n if wanted => self.inner.permits.clone().try_acquire_many_owned(n as u32).ok(),
                _ => None,
            };
            let claimed = if places.is_none() {
                Vec::new()
            } else {
                // Cleared before the claim, so a run created pending meanwhile sets it again.
                self.inner.pending_may_wait.store(false, Ordering::Release);
                let per_user = u32::try_from(self.inner.config.per_user).unwrap_or(u32::MAX);
                match self.inner.store.claim_runs_fairly(limit as u32, per_user).await {
                    Ok(runs) => runs,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming runs failed");
                        self.inner.pending_may_wait.store(true, Ordering::Release);
                        Vec::new()
                    }
                }
            };
            if limit > 0 && !wanted {
                // Free places and no pending run: nothing waits for a place.
                self.inner.place_owed.store(false, Ordering::Release);
            } else if places.is_some() && claimed.len() < limit {
                // Fewer than asked: every claimable run has a place now (runs may still wait
                // behind their threads' running runs).
                self.inner.place_owed.store(false, Ordering::Release);
                if self.inner.store.any_pending_runs().await.unwrap_or(true) {
                    self.inner.pending_may_wait.store(true, Ordering::Release);
                }
                // Otherwise nothing waits; a run created since then has set the flag again.
            } else if wanted || limit == 0 {
                self.inner.pending_may_wait.store(true, Ordering::Release);
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
    pub fn try_reserve(&self, run: RunId, thread: ThreadId, owner: UserId) -> Option<Reservation> {
        if self.inner.place_owed.load(Ordering::Acquire) {
            return None;
        }
        if !self.user_enters(owner, false) {
            // The run waits its turn among the user's runs (the claim takes it); other
            // users' new runs go on taking free places.
            return None;
        }
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            self.user_left(owner);
            self.inner.place_owed.store(true, Ordering::Release);
            return None;
        };
        let cancel = self.register(run, thread);
        Some(Reservation {
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
    pub fn spawn_claimed(&self, run: Run, mut place: Reservation, started: Option<Value>) {
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
        match running.early_threads.get(&thread) {
            // `keep` starts: the run it replaced has ended.
            Some(&(keep, _)) if keep == run => {
                running.early_threads.remove(&thread);
            }
            Some(&(_, action)) => {
                let _ = cancel_tx.send(Some(action));
            }
            None => {}
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

    /// Executes one run to its end (in the run's tracing span): its steps, then how it ended
    /// recorded and announced, then a stateless run's thread deleted.
    async fn execute(
        &self,
        run: Run,
        cancel: watch::Receiver<Option<CancelAction>>,
        started: Option<Value>,
    ) {
        let span = tracing::info_span!("run", run_id = %run.run_id, thread_id = %run.thread_id, user_id = %run.owner_id);
        async move {
            let (store, log) = (self.inner.store.clone(), self.inner.log.clone());
            let mut sink =
                Sink::new(store, log, run.clone(), cancel, self.inner.config.run_timeout);
            // The time limit is checked by the sink, like a cancel, so a run is never dropped
            // in the middle of a write (which could commit an event nobody is told about).
            let spec = RunSpec::of(&run.kwargs);
            let runtime = &self.inner.config.agents;
            let workers = self.inner.config.workers.as_ref();
            let outcome = run_steps(&run, &spec, runtime, &mut sink, started, workers).await;
            let finished = self.finish(&run, &mut sink, outcome).await;
            self.running().runs.remove(&run.run_id);
            self.announce(finished);
            if spec.deletes_thread()
                && let Err(e) = self.inner.log.delete_thread(run.owner_id, run.thread_id).await
            {
                tracing::warn!(error = %e, "could not delete the thread of a stateless run");
            }
        }
        .instrument(span)
        .await;
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
                // A graph's own checkpoints of the run go with it (none for built-in agents).
                if let Err(e) =
                    store.delete_graph_checkpoints_of_runs(run.owner_id, &[run.run_id]).await
                {
                    tracing::error!(error = %e, "rollback of the graph's checkpoints failed");
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
        match self
            .inner
            .log
            .finish_run(run.owner_id, run.thread_id, run.run_id, status, message, &last)
            .await
        {
            Ok(_) => metrics::run_finished(status.as_str()),
            Err(e) => tracing::error!(error = %e, "could not record the end of the run"),
        }
        tracing::info!(status = %status, "run ended");
        let values =
            store.get_thread(run.owner_id, run.thread_id).await.ok().and_then(|t| t.values);
        Finished { run_id: run.run_id, status: Some(status), values, error }
    }
}
