//! One node's runtime: the use cases every transport calls. HTTP and the WebSocket channel
//! (the `api` crate, which has no store of its own) reach Spindle's data only through
//! [`Engine`]: its reads and writes take the caller's `UserId`, its run use cases
//! ([`Engine::start_run`], [`Engine::cancel_run`], [`Engine::watch_end`], [`Engine::events`])
//! are the same for every transport.
//!
//! Inside: the [`Executor`] (claims and executes runs), a run's steps (`step`), the sink an
//! agent emits through (`sink`), the [`EventLog`] (the only code that appends events and
//! publishes them) and the [`Hub`] (live fan-out; it names no wire format). The seam where a
//! bus to other nodes will go is the hub: today it fans out this node's commits only.

mod executor;
pub mod hub;
mod log;
pub mod metrics;
mod remote;
mod runs;
mod sink;
mod step;
pub mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use agents::Agent;
use ids::{AssistantId, CheckpointId, RunId, ThreadId, UserId};
use store::{
    Assistant, AssistantPatch, AssistantVersion, Checkpoint, Event, Metadata, NewAssistant, Run,
    RunStatus, SortOrder, StateUpdate, Stats, Store, SystemAssistant, Thread, ThreadFilter,
    ThreadPage, ThreadSortBy, User,
};
use tokio::sync::mpsc;

pub use executor::{EndWatch, Executor, ExecutorConfig, Finished};
pub use hub::{Ended, Hub, Live, Notice, Published};
pub use log::EventLog;
pub use runs::RunStart;
pub use sink::BATCH;
pub use step::{first_step, resume_value};
pub use workers::{GraphSpec, Workers};

/// This node's runtime over one store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    store: Store,
    log: EventLog,
    executor: Executor,
    /// The built-in agents' assistants, which never change while serving: a run names one,
    /// so they are read here rather than from the store on every run.
    system_assistants: Arc<HashMap<AssistantId, Assistant>>,
    /// The users' graphs and their workers, when this server serves graphs.
    workers: Option<Workers>,
}

impl Engine {
    /// Prepares a migrated store for serving: registers the built-in agents as system
    /// assistants (ids: the LangGraph-compatible UUIDv5 of the name).
    pub async fn new(store: Store, config: ExecutorConfig) -> store::Result<Engine> {
        let mut system_assistants = HashMap::new();
        for (_, graph_id, description) in Agent::ALL {
            // A user's graph of the same name takes the name (and the assistant id) over.
            if config.workers.as_ref().is_some_and(|w| w.graph(graph_id).is_some()) {
                tracing::warn!(graph_id, "a graph of --graphs takes the name of a built-in agent");
                continue;
            }
            let spec = SystemAssistant {
                graph_id: graph_id.into(),
                description: Some(description.into()),
            };
            let assistant = store.upsert_system_assistant(&spec).await?;
            system_assistants.insert(assistant.assistant_id, assistant);
        }
        // The users' graphs (`--graphs`), as LangGraph's server registers them.
        for graph in config.workers.iter().flat_map(Workers::graphs) {
            let spec = SystemAssistant {
                graph_id: graph.graph_id.clone(),
                description: graph.description.clone(),
            };
            let assistant = store.upsert_system_assistant(&spec).await?;
            system_assistants.insert(assistant.assistant_id, assistant);
        }
        let workers = config.workers.clone();
        let hub = Hub::default();
        let executor = Executor::new(store.clone(), hub.clone(), config);
        let log = EventLog::new(store.clone(), hub);
        Ok(Engine { store, log, executor, system_assistants: Arc::new(system_assistants), workers })
    }

    /// Ends runs a crash left running, then starts the executor; it stops when `stop` fires.
    pub async fn start(
        &self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> store::Result<()> {
        let recovered = self.executor.recover().await?;
        if recovered > 0 {
            tracing::warn!(recovered, "ended runs left running by a previous process");
        }
        tokio::spawn(self.executor.clone().run(stop));
        Ok(())
    }

    /// This node's executor (its places and running runs), for tests and tools that drive
    /// runs by hand; transports use the run use cases above.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The live fan-out (subscriptions to threads and users).
    pub fn hub(&self) -> &Hub {
        self.log.hub()
    }

    /// The database this node runs on (`sqlite`, `postgres`).
    pub fn backend(&self) -> &'static str {
        self.store.backend().as_str()
    }

    /// The workers of the users' graphs, when this server serves graphs (`--graphs`).
    pub fn workers(&self) -> Option<&Workers> {
        self.workers.as_ref()
    }

    /// A user's graph this server serves, by graph id.
    pub fn graph(&self, graph_id: &str) -> Option<&Arc<GraphSpec>> {
        self.workers.as_ref()?.graph(graph_id)
    }

    /// The built-in agents' assistants.
    pub fn system_assistant(&self, id: AssistantId) -> Option<&Assistant> {
        self.system_assistants.get(&id)
    }

    /// The database gauges of `/metrics` (the same on every node of one database).
    pub async fn stats(&self) -> store::Result<Stats> {
        self.store.admin_stats().await
    }

    /// Whether a run waits to be claimed (for the readiness of a node).
    pub async fn any_pending_runs(&self) -> store::Result<bool> {
        self.store.any_pending_runs().await
    }

    /// Deletes the caller's thread with its log; its subscriptions end.
    pub async fn delete_thread(&self, owner: UserId, id: ThreadId) -> store::Result<()> {
        self.log.delete_thread(owner, id).await
    }

    /// The caller's thread `id`. When it is not found, says why in the metrics and the log
    /// (missing, or another user's), then fails exactly as the store does: the client sees
    /// the same 404 either way.
    pub async fn owned_thread(&self, owner: UserId, id: ThreadId) -> store::Result<Thread> {
        let result = self.store.get_thread(owner, id).await;
        if let Err(store::Error::NotFound { .. }) = &result {
            self.thread_not_found(owner, id).await;
        }
        result
    }

    /// [`Engine::check_thread`], with a missing thread counted as [`Engine::owned_thread`]
    /// counts it.
    pub async fn owned_thread_key(&self, owner: UserId, id: ThreadId) -> store::Result<()> {
        let result = self.store.check_thread(owner, id).await;
        if let Err(store::Error::NotFound { .. }) = &result {
            self.thread_not_found(owner, id).await;
        }
        result
    }

    /// Records a thread the store reported missing for `owner`: another user's thread
    /// (`not_owner`) or no thread at all (`not_found`). Call it on that failure path only: it
    /// reads the thread's owner (only: never the thread's data) without an owner check.
    pub async fn thread_not_found(&self, owner: UserId, id: ThreadId) {
        let reason = match self.store.admin_thread_owner(id).await {
            Ok(Some(holder)) if holder != owner => metrics::LookupFailure::NotOwner,
            Ok(_) => metrics::LookupFailure::NotFound,
            Err(e) => {
                tracing::warn!(error = %e, "could not classify a thread lookup failure");
                metrics::LookupFailure::NotFound
            }
        };
        metrics::thread_lookup_failed(reason);
        tracing::info!(reason = reason.as_str(), "thread not found for this user");
    }

    /// Every event of `owner`'s `thread` (only `run`'s, if given) with `seq > after`, from the
    /// log and then live (see [`Hub::events`]).
    pub fn events(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        early: Option<Live>,
    ) -> mpsc::Receiver<Result<Arc<Published>, Ended>> {
        self.hub().events(self.store.clone(), owner, thread, run, after, early)
    }

    /// The end of `run`, when it ends on this node (watch before creating the run).
    pub fn watch_end(&self, run: RunId) -> EndWatch {
        self.executor.watch_end(run)
    }

    // ---- the store's reads and writes, for the caller (`owner`) ----

    pub async fn get_assistant(&self, owner: UserId, id: AssistantId) -> store::Result<Assistant> {
        self.store.get_assistant(owner, id).await
    }

    pub async fn list_assistants(&self, owner: UserId) -> store::Result<Vec<Assistant>> {
        self.store.list_assistants(owner).await
    }

    /// Creates the caller's assistant; with `existing`, an id the caller already has gives
    /// that assistant back unchanged (and `false`).
    pub async fn create_assistant(
        &self,
        owner: UserId,
        new: &NewAssistant,
        existing: bool,
    ) -> store::Result<(Assistant, bool)> {
        self.store.create_assistant(owner, new, existing).await
    }

    /// A new version of the caller's assistant (system assistants are nobody's: not found).
    pub async fn patch_assistant(
        &self,
        owner: UserId,
        id: AssistantId,
        patch: &AssistantPatch,
    ) -> store::Result<Assistant> {
        self.store.patch_assistant(owner, id, patch).await
    }

    /// Deletes the caller's assistant and its versions; with `threads`, then also the caller's
    /// threads whose `metadata.assistant_id` names it (with their runs and logs), as
    /// LangGraph's `delete_threads` does. A failed delete deletes no thread.
    pub async fn delete_assistant(
        &self,
        owner: UserId,
        id: AssistantId,
        threads: bool,
    ) -> store::Result<()> {
        self.store.delete_assistant(owner, id).await?;
        if !threads {
            return Ok(());
        }
        let filter = ThreadFilter {
            metadata: Some(serde_json::json!({ "assistant_id": id.to_string() })),
            ..ThreadFilter::default()
        };
        let page = ThreadPage {
            limit: 100,
            offset: 0,
            sort_by: ThreadSortBy::ThreadId,
            sort_order: SortOrder::Asc,
        };
        loop {
            let found = self.store.search_threads(owner, &filter, &page).await?;
            if found.is_empty() {
                return Ok(());
            }
            for thread in found {
                match self.delete_thread(owner, thread.thread_id).await {
                    Ok(()) | Err(store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    pub async fn assistant_versions(
        &self,
        owner: UserId,
        id: AssistantId,
    ) -> store::Result<Vec<AssistantVersion>> {
        self.store.assistant_versions(owner, id).await
    }

    pub async fn set_latest_assistant_version(
        &self,
        owner: UserId,
        id: AssistantId,
        version: i64,
    ) -> store::Result<Assistant> {
        self.store.set_latest_assistant_version(owner, id, version).await
    }

    pub async fn create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> store::Result<Thread> {
        self.store.create_thread(owner, id, metadata).await
    }

    pub async fn get_or_create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> store::Result<(Thread, bool)> {
        self.store.get_or_create_thread(owner, id, metadata).await
    }

    pub async fn get_thread(&self, owner: UserId, id: ThreadId) -> store::Result<Thread> {
        self.store.get_thread(owner, id).await
    }

    pub async fn check_thread(&self, owner: UserId, id: ThreadId) -> store::Result<()> {
        self.store.check_thread(owner, id).await
    }

    pub async fn search_threads(
        &self,
        owner: UserId,
        filter: &ThreadFilter,
        page: &ThreadPage,
    ) -> store::Result<Vec<Thread>> {
        self.store.search_threads(owner, filter, page).await
    }

    pub async fn count_threads(&self, owner: UserId, filter: &ThreadFilter) -> store::Result<i64> {
        self.store.count_threads(owner, filter).await
    }

    pub async fn update_thread_metadata(
        &self,
        owner: UserId,
        id: ThreadId,
        patch: &Metadata,
    ) -> store::Result<Thread> {
        self.store.update_thread_metadata(owner, id, patch).await
    }

    pub async fn get_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> store::Result<Run> {
        self.store.get_run(owner, thread, id).await
    }

    pub async fn list_runs(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        offset: u32,
        status: Option<RunStatus>,
    ) -> store::Result<Vec<Run>> {
        self.store.list_runs(owner, thread, limit, offset, status).await
    }

    pub async fn delete_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
    ) -> store::Result<()> {
        self.store.delete_run(owner, thread, id).await
    }

    pub async fn get_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: CheckpointId,
    ) -> store::Result<Checkpoint> {
        self.store.get_checkpoint(owner, thread, id).await
    }

    pub async fn list_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        before: Option<CheckpointId>,
    ) -> store::Result<Vec<Checkpoint>> {
        self.store.list_checkpoints(owner, thread, limit, before).await
    }

    /// A state update of a thread of `graph_id`, a user's graph (`--graphs`): run by a worker
    /// on the graph's own checkpoints (LangGraph's `update_state`), then committed as the
    /// thread's state. Without a worker serving the graph: `Unavailable`.
    #[allow(clippy::too_many_arguments, reason = "the route's fields")]
    pub async fn update_graph_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        graph_id: &str,
        from: Option<CheckpointId>,
        values: serde_json::Value,
        as_node: Option<String>,
    ) -> store::Result<Checkpoint> {
        let Some(workers) = self.workers.as_ref().filter(|w| w.graph(graph_id).is_some()) else {
            return Err(store::Error::Invalid(format!("graph {graph_id} is not served here")));
        };
        remote::update_graph_state(
            workers,
            &self.store,
            owner,
            thread,
            graph_id,
            from,
            values,
            as_node,
        )
        .await
    }

    pub async fn update_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        from: Option<CheckpointId>,
        update: StateUpdate,
        metadata: &Metadata,
    ) -> store::Result<Checkpoint> {
        self.store.update_state(owner, thread, run, from, update, metadata).await
    }

    pub async fn events_after(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        limit: u32,
    ) -> store::Result<Vec<Event>> {
        self.store.events_after(owner, thread, run, after, limit).await
    }

    pub async fn ping(&self) -> store::Result<()> {
        self.store.ping().await
    }

    pub async fn ensure_user(&self, subject: &str) -> store::Result<User> {
        self.store.ensure_user(subject).await
    }

    pub async fn user_for_api_key(&self, key_hash: &str) -> store::Result<Option<User>> {
        self.store.user_for_api_key(key_hash).await
    }
}
