//! Python workers running users' LangGraph graphs (#16; the protocol is `docs/workers.md`).
//! [`Workers`] knows the graphs this server serves (from `spindle-worker describe` at start),
//! the connected workers and the jobs leased to each. A transport (the `api` crate's
//! `/workers/connect`) hands it a connection's frames ([`Workers::connect`],
//! [`Workers::handle`], [`Workers::disconnect`]); the run's step (`remote`) leases a job to a
//! worker and reads what the worker sends about it. A job is leased to one connection: when
//! the connection goes, its jobs are told (`JobMsg::Lost`), and nothing of theirs can arrive
//! any more (the lease is the connection).
//!
//! The checkpointer's calls (`saver` frames) are done here against the store, for the run's
//! owner and on the run's thread only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ids::{CheckpointId, ConnectionId, RunId, ThreadId, UserId};
use serde_json::{Map, Value, json};
use store::{
    ChannelWrite, GraphBlob, GraphCheckpoint, GraphCheckpointFilter, GraphWrites,
    NewGraphCheckpoint, Run, Serialized, Store,
};
use tokio::sync::{Notify, mpsc};

/// A graph this server serves, as `spindle-worker describe` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphSpec {
    pub graph_id: String,
    pub description: Option<String>,
    /// `{input_schema, output_schema, state_schema, config_schema, context_schema, graph_id}`.
    pub schemas: Value,
    /// `aget_graph().to_json()`, and with `xray`.
    pub graph: Value,
    pub graph_xray: Value,
}

impl GraphSpec {
    /// The graphs of a `describe` document (`{"graphs": [...]}`).
    pub fn from_describe(document: &Value) -> Result<Vec<GraphSpec>, String> {
        let graphs =
            document["graphs"].as_array().ok_or("the describe document has no `graphs` list")?;
        graphs
            .iter()
            .map(|g| {
                let graph_id = g["graph_id"].as_str().ok_or("a graph without `graph_id`")?;
                Ok(GraphSpec {
                    graph_id: graph_id.to_owned(),
                    description: g["description"].as_str().map(str::to_owned),
                    schemas: g["schemas"].clone(),
                    graph: g["graph"].clone(),
                    graph_xray: g["graph_xray"].clone(),
                })
            })
            .collect()
    }
}

/// What a worker said about one job, in the order it said it.
#[derive(Debug)]
pub(crate) enum JobMsg {
    /// Stream parts: `[name, data]`.
    Events(Vec<(String, Value)>),
    /// A root checkpoint of the graph, as a state.
    State(Value),
    /// The job's end (the whole `done` frame).
    Done(Value),
    /// The connection holding the job went away.
    Lost,
}

/// The heartbeat: a ping this often, and a connection silent for [`SILENT`] is closed.
pub const PING: Duration = Duration::from_secs(10);
pub const SILENT: Duration = Duration::from_secs(30);

/// The workers of this node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Workers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    graphs: BTreeMap<String, Arc<GraphSpec>>,
    token: Option<String>,
    state: Mutex<State>,
    /// A worker connected (a lease may find one now).
    connected: Notify,
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<ConnectionId, Conn>,
    jobs: HashMap<RunId, Job>,
}

#[derive(Debug)]
struct Conn {
    name: String,
    graphs: HashSet<String>,
    tx: mpsc::UnboundedSender<String>,
    jobs: usize,
    concurrency: usize,
}

#[derive(Debug)]
struct Job {
    conn: ConnectionId,
    attempt: u32,
    owner: UserId,
    thread: ThreadId,
    tx: mpsc::UnboundedSender<JobMsg>,
}

/// A job to lease: its id (a run's, or one minted for a state update), whose it is, and the
/// thread its checkpointer calls may touch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobOf {
    pub(crate) job: RunId,
    pub(crate) owner: UserId,
    pub(crate) thread: ThreadId,
}

/// A connection the server accepted: its id, its outbound frames, and the `welcome` to send.
#[derive(Debug)]
pub struct Connected {
    pub id: ConnectionId,
    pub outbound: mpsc::UnboundedReceiver<String>,
    pub welcome: String,
}

/// A job leased to a connection (see [`Workers::lease`]); released when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    workers: Workers,
    run: RunId,
    pub(crate) conn: ConnectionId,
    pub(crate) rx: mpsc::UnboundedReceiver<JobMsg>,
}

impl Lease {
    /// Sends a frame to the worker holding the job (lost if it has gone: its jobs are told).
    pub(crate) fn send(&self, frame: &Value) {
        self.workers.send(self.conn, frame);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.workers.state();
        if state.jobs.get(&self.run).is_some_and(|j| j.conn == self.conn) {
            state.jobs.remove(&self.run);
            if let Some(conn) = state.conns.get_mut(&self.conn) {
                conn.jobs = conn.jobs.saturating_sub(1);
            }
        }
    }
}

impl Workers {
    /// The workers of a server that serves `graphs`; workers authenticate with `token`
    /// (`None`: no worker can connect).
    pub fn new(store: Store, graphs: Vec<GraphSpec>, token: Option<String>) -> Workers {
        let graphs = graphs.into_iter().map(|g| (g.graph_id.clone(), Arc::new(g))).collect();
        let inner =
            Inner { store, graphs, token, state: Mutex::default(), connected: Notify::new() };
        Workers { inner: Arc::new(inner) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The graphs this server serves, by id.
    pub fn graphs(&self) -> impl Iterator<Item = &Arc<GraphSpec>> {
        self.inner.graphs.values()
    }

    pub fn graph(&self, graph_id: &str) -> Option<&Arc<GraphSpec>> {
        self.inner.graphs.get(graph_id)
    }

    /// Whether `given` is the worker token (compared in constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        let Some(token) = self.inner.token.as_deref() else { return false };
        let (a, b) = (token.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Accepts a worker's `hello`: the graphs it serves must be this server's (others are
    /// ignored, named in the log); a worker serving none of them is refused with the reason.
    pub fn connect(&self, hello: &Value) -> Result<Connected, String> {
        if hello["type"] != "hello" {
            return Err("the first frame must be `hello`".into());
        }
        let name = hello["worker"].as_str().unwrap_or("worker").chars().take(128).collect();
        let offered: Vec<String> = hello["graphs"]
            .as_array()
            .map(|graphs| {
                graphs
                    .iter()
                    .filter_map(|g| g.as_str().or_else(|| g["graph_id"].as_str()))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let (graphs, unknown): (Vec<String>, Vec<String>) =
            offered.into_iter().partition(|g| self.inner.graphs.contains_key(g));
        let graphs: HashSet<String> = graphs.into_iter().collect();
        if !unknown.is_empty() {
            tracing::warn!(worker = %name, ?unknown, "a worker offers graphs this server does not serve");
        }
        if graphs.is_empty() {
            let ours: Vec<&str> = self.inner.graphs.keys().map(String::as_str).collect();
            return Err(format!(
                "the worker serves none of this server's graphs ({})",
                ours.join(", ")
            ));
        }
        let concurrency =
            hello["concurrency"].as_u64().filter(|&n| n > 0).unwrap_or(64).min(10_000) as usize;
        let id = ConnectionId::new();
        let (tx, outbound) = mpsc::unbounded_channel();
        tracing::info!(worker = %name, worker_id = %id, graphs = ?graphs, versions = %hello["versions"], "worker connected");
        self.state().conns.insert(id, Conn { name, graphs, tx, jobs: 0, concurrency });
        self.inner.connected.notify_waiters();
        let welcome = json!({ "type": "welcome", "worker_id": id, "heartbeat_s": PING.as_secs() });
        Ok(Connected { id, outbound, welcome: welcome.to_string() })
    }

    /// The connection went away: its jobs are lost (their runs try again elsewhere).
    pub fn disconnect(&self, conn: ConnectionId) {
        let mut state = self.state();
        let name = state.conns.remove(&conn).map(|c| c.name).unwrap_or_default();
        let lost: Vec<RunId> =
            state.jobs.iter().filter(|(_, j)| j.conn == conn).map(|(r, _)| *r).collect();
        for run in &lost {
            if let Some(job) = state.jobs.remove(run) {
                let _ = job.tx.send(JobMsg::Lost);
            }
        }
        tracing::info!(worker = %name, worker_id = %conn, lost = lost.len(), "worker disconnected");
    }

    fn send(&self, conn: ConnectionId, frame: &Value) {
        if let Some(c) = self.state().conns.get(&conn) {
            let _ = c.tx.send(frame.to_string());
        }
    }

    /// Leases `run` to the least busy worker serving `graph_id` with a free place, waiting up
    /// to `wait` for one; the reason when none came.
    pub(crate) async fn lease(
        &self,
        run: &Run,
        graph_id: &str,
        attempt: u32,
        wait: Duration,
    ) -> Result<Lease, String> {
        let job = JobOf { job: run.run_id, owner: run.owner_id, thread: run.thread_id };
        self.lease_job(job, graph_id, attempt, wait).await
    }

    /// As [`Workers::lease`], for a job that is not a run (a state update).
    pub(crate) async fn lease_job(
        &self,
        job: JobOf,
        graph_id: &str,
        attempt: u32,
        wait: Duration,
    ) -> Result<Lease, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inner.connected.notified();
            if let Some(lease) = self.try_lease(job, graph_id, attempt) {
                return Ok(lease);
            }
            tokio::select! {
                () = notified => {}
                // Places free as jobs end: look again now and then.
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "no worker serving graph `{graph_id}` is connected (waited {} s)",
                        wait.as_secs()
                    ));
                }
            }
        }
    }

    fn try_lease(&self, job: JobOf, graph_id: &str, attempt: u32) -> Option<Lease> {
        let mut state = self.state();
        let (id, conn) = state
            .conns
            .iter_mut()
            .filter(|(_, c)| c.graphs.contains(graph_id) && c.jobs < c.concurrency)
            .min_by_key(|(_, c)| c.jobs)?;
        conn.jobs += 1;
        let id = *id;
        let (tx, rx) = mpsc::unbounded_channel();
        let run = job.job;
        let job = Job { conn: id, attempt, owner: job.owner, thread: job.thread, tx };
        state.jobs.insert(run, job);
        Some(Lease { workers: self.clone(), run, conn: id, rx })
    }

    /// One frame of a connection. An error is a protocol violation: the caller closes the
    /// connection with it.
    pub fn handle(&self, conn: ConnectionId, frame: Value) -> Result<(), String> {
        let kind = frame["type"].as_str().unwrap_or_default().to_owned();
        tracing::trace!(worker_id = %conn, kind, job = %frame["job"], "worker frame");
        let job = || -> Result<RunId, String> {
            frame["job"]
                .as_str()
                .and_then(|j| j.parse().ok())
                .ok_or_else(|| format!("`{kind}`: `job` must be a run id this server sent"))
        };
        match kind.as_str() {
            "events" | "state" | "done" => {
                let run = job()?;
                let attempt = frame["attempt"].as_u64().unwrap_or(0);
                let msg = match kind.as_str() {
                    "events" => JobMsg::Events(parts(&frame["events"])?),
                    "state" => JobMsg::State(frame["snapshot"].clone()),
                    _ => JobMsg::Done(frame),
                };
                let state = self.state();
                match state.jobs.get(&run) {
                    Some(j) if j.conn == conn && u64::from(j.attempt) == attempt => {
                        let _ = j.tx.send(msg);
                    }
                    // A job that ended (cancelled, timed out) may still send its last frames.
                    _ => {
                        tracing::debug!(run_id = %run, kind, "a frame of a job not leased to this worker")
                    }
                }
                Ok(())
            }
            "saver" => {
                let run = job()?;
                let id = frame["id"].clone();
                let leased = {
                    let state = self.state();
                    state.jobs.get(&run).filter(|j| j.conn == conn).map(|j| (j.owner, j.thread))
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let answer = match leased {
                        None => {
                            Err(("conflict", format!("run {run} is not leased to this worker")))
                        }
                        Some((owner, thread)) => {
                            saver(&this.inner.store, owner, thread, &frame["op"], &frame["args"])
                                .await
                        }
                    };
                    let reply = match answer {
                        Ok(result) => json!({ "type": "saver_result", "id": id, "result": result }),
                        Err((code, message)) => {
                            json!({ "type": "saver_result", "id": id, "error": { "code": code, "message": message } })
                        }
                    };
                    this.send(conn, &reply);
                });
                Ok(())
            }
            "hello" => Err("`hello` is sent once, first".into()),
            other => {
                Err(format!("unknown frame type `{other}`: expected events, state, done or saver"))
            }
        }
    }
}

/// An `events` frame's parts.
fn parts(events: &Value) -> Result<Vec<(String, Value)>, String> {
    let events = events.as_array().ok_or("`events`: expected a list of [name, data]")?;
    events
        .iter()
        .map(|part| match part.as_array().map(Vec::as_slice) {
            Some([Value::String(name), data]) => Ok((name.clone(), data.clone())),
            _ => Err(format!("`events`: expected [name, data], got {part}")),
        })
        .collect()
}

type SaverResult = Result<Value, (&'static str, String)>;

fn invalid(message: impl Into<String>) -> (&'static str, String) {
    ("invalid", message.into())
}

/// One checkpointer call, for `owner` on `thread` (the job's).
async fn saver(
    store: &Store,
    owner: UserId,
    thread: ThreadId,
    op: &Value,
    args: &Value,
) -> SaverResult {
    let op = op.as_str().unwrap_or_default();
    if op != "delete_for_runs" {
        let asked = args["thread_id"].as_str().unwrap_or_default();
        if asked != thread.to_string() {
            return Err(invalid(format!(
                "the run's thread is {thread}, not {asked:?} (the thread_id asked)"
            )));
        }
    }
    let ns = || args["checkpoint_ns"].as_str().unwrap_or_default().to_owned();
    let result = match op {
        "get_tuple" => {
            let id = checkpoint_id(&args["checkpoint_id"])?;
            let found = store.get_graph_checkpoint(owner, thread, &ns(), id).await;
            found.map(|c| json!({ "tuple": c.map(|c| tuple(&c)) }))
        }
        "list" => {
            let filter = GraphCheckpointFilter {
                checkpoint_ns: args["checkpoint_ns"].as_str().map(str::to_owned),
                metadata: args["filter"].as_object().cloned(),
                before: checkpoint_id(&args["before"])?,
                limit: args["limit"].as_u64().map(|l| l.min(u64::from(u32::MAX)) as u32),
            };
            let found = store.list_graph_checkpoints(owner, thread, &filter).await;
            found.map(|all| json!({ "tuples": all.iter().map(tuple).collect::<Vec<_>>() }))
        }
        "put" => {
            let blobs = args["blobs"]
                .as_array()
                .ok_or_else(|| invalid("blobs: expected a list"))?
                .iter()
                .map(|b| {
                    Ok(GraphBlob {
                        channel: text(&b["channel"], "blobs[].channel")?,
                        version: match &b["version"] {
                            Value::Number(n) => n.to_string(),
                            v => text(v, "blobs[].version")?,
                        },
                        value: match &b["value"] {
                            Value::Null => None,
                            v => Some(typed(v)?),
                        },
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let new = NewGraphCheckpoint {
                checkpoint_ns: ns(),
                checkpoint_id: checkpoint_id(&args["checkpoint_id"])?
                    .ok_or_else(|| invalid("checkpoint_id is required"))?,
                parent_checkpoint_id: checkpoint_id(&args["parent_checkpoint_id"])?,
                checkpoint: args["checkpoint"].clone(),
                metadata: args["metadata"].as_object().cloned().unwrap_or_default(),
                blobs,
            };
            store.put_graph_checkpoint(owner, thread, &new).await.map(|()| json!({}))
        }
        "put_writes" => {
            let writes = args["writes"]
                .as_array()
                .ok_or_else(|| invalid("writes: expected a list"))?
                .iter()
                .map(|w| {
                    Ok(ChannelWrite {
                        idx: w["idx"]
                            .as_i64()
                            .and_then(|i| i32::try_from(i).ok())
                            .ok_or_else(|| invalid("writes[].idx: expected an integer"))?,
                        channel: text(&w["channel"], "writes[].channel")?,
                        value: typed(&w["value"])?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let writes = GraphWrites {
                checkpoint_ns: ns(),
                checkpoint_id: checkpoint_id(&args["checkpoint_id"])?
                    .ok_or_else(|| invalid("checkpoint_id is required"))?,
                task_id: text(&args["task_id"], "task_id")?,
                task_path: args["task_path"].as_str().unwrap_or_default().to_owned(),
                writes,
            };
            store.put_graph_writes(owner, thread, &writes).await.map(|()| json!({}))
        }
        "delete_for_runs" => {
            let runs = args["run_ids"]
                .as_array()
                .ok_or_else(|| invalid("run_ids: expected a list"))?
                .iter()
                .map(|r| r.as_str().and_then(|r| r.parse::<RunId>().ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("run_ids: expected run ids"))?;
            let deleted = store.delete_graph_checkpoints_of_runs(owner, &runs).await;
            deleted.map(|n| json!({ "deleted": n }))
        }
        other => {
            return Err(invalid(format!(
                "unknown op `{other}`: expected get_tuple, list, put, put_writes or delete_for_runs"
            )));
        }
    };
    result.map_err(|e| match e {
        store::Error::NotFound { .. } => ("not_found", e.to_string()),
        store::Error::Invalid(m) => ("invalid", m),
        store::Error::Conflict(m) => ("conflict", m),
        other => {
            tracing::warn!(error = %other, op, "a checkpointer call failed");
            ("unavailable", other.to_string())
        }
    })
}

fn text(value: &Value, field: &str) -> Result<String, (&'static str, String)> {
    value.as_str().map(str::to_owned).ok_or_else(|| invalid(format!("{field}: expected a string")))
}

fn checkpoint_id(value: &Value) -> Result<Option<CheckpointId>, (&'static str, String)> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            s.parse().map(Some).map_err(|e: ids::ParseIdError| invalid(e.to_string()))
        }
        other => Err(invalid(format!("expected a checkpoint id, got {other}"))),
    }
}

/// `{"type", "data": base64}` → the serializer's `(type, bytes)`.
fn typed(value: &Value) -> Result<Serialized, (&'static str, String)> {
    let tag = text(&value["type"], "type")?;
    let data = value["data"].as_str().unwrap_or_default();
    let bytes = B64.decode(data).map_err(|e| invalid(format!("data: not base64: {e}")))?;
    Ok(Serialized { tag, bytes })
}

fn typed_out(value: &Serialized) -> Value {
    json!({ "type": value.tag, "data": B64.encode(&value.bytes) })
}

/// A checkpoint as the saver rebuilds a `CheckpointTuple` from it.
fn tuple(c: &GraphCheckpoint) -> Value {
    let channel_values: Map<String, Value> =
        c.channel_values.iter().map(|(k, v)| (k.clone(), typed_out(v))).collect();
    let writes: Vec<Value> = c
        .pending_writes
        .iter()
        .map(|w| json!([w.task_id, w.channel, typed_out(&w.value)]))
        .collect();
    json!({
        "checkpoint_ns": c.checkpoint_ns,
        "checkpoint_id": c.checkpoint_id,
        "parent_checkpoint_id": c.parent_checkpoint_id,
        "checkpoint": c.checkpoint,
        "metadata": c.metadata,
        "channel_values": channel_values,
        "pending_writes": writes,
    })
}
