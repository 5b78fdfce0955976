//! The SSE views of the event log: the stream modes the SDKs ask for (`values`, `updates`,
//! `messages-tuple`, `messages`, `custom`, `events`, `debug`) are each a mapping from stored
//! events to frames. Every frame carries an id `SEQ-K` (the event's seq and the frame's index
//! among that event's frames), so a client that reconnects with its last id resumes exactly
//! after the last frame it received.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use ids::{RunId, ThreadId};
use serde_json::{Value, json};
use store::{Event, EventKind, Store};
use tokio::sync::Notify;

use crate::auth::{Auth, Credential};

/// Settings of SSE streams (`serve --sse-*`).
#[derive(Clone, Debug)]
pub struct SseConfig {
    /// Bytes of frames queued for one stream before its producer waits (a single larger frame
    /// still goes to a client that has taken everything else).
    pub max_buffer: usize,
    /// How long a stream may stay over `max_buffer` (its client not reading) before it is
    /// dropped.
    pub slow_timeout: Duration,
    /// A `: heartbeat` comment after this long without frames.
    pub heartbeat: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            max_buffer: 1024 * 1024,
            slow_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// What SSE streams hold, process-wide for one server (tests and metrics read it).
#[derive(Debug, Default)]
pub struct SseStats {
    buffered: AtomicUsize,
    dropped: AtomicU64,
}

impl SseStats {
    /// Bytes of frames queued in SSE streams now, not yet taken by the response body.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Streams dropped because their client did not read.
    pub fn slow_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Why a frame could not be queued: the stream must end.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The client went away.
    Gone,
    /// The client stopped reading: over the byte budget past the deadline.
    Slow,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<String>,
    bytes: usize,
    /// The response body was dropped (the client went away).
    reader_gone: bool,
    /// The producer has finished (or was dropped as slow).
    ended: bool,
    slow: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    readable: Notify,
    writable: Notify,
    stats: Arc<SseStats>,
    config: SseConfig,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every queued frame.
    fn clear(&self, queue: &mut Queue) {
        self.stats.buffered.fetch_sub(queue.bytes, Ordering::Relaxed);
        queue.frames.clear();
        queue.bytes = 0;
    }
}

/// The producing side of an SSE response: a queue bounded in bytes (see [`SseConfig`]).
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// An SSE response body fed by an [`Outbox`].
pub fn outbox(
    config: &SseConfig,
    stats: Arc<SseStats>,
) -> (Outbox, impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + use<>) {
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        readable: Notify::new(),
        writable: Notify::new(),
        stats,
        config: config.clone(),
    });
    let reader = Reader(shared.clone());
    let body = futures_util::stream::unfold(reader, |reader| async move {
        let chunk = reader.next().await?;
        Some((chunk, reader))
    });
    (Outbox { shared }, body)
}

impl Outbox {
    /// Queues a frame; waits while the queue is over its budget, up to the slow deadline.
    pub async fn send(&self, frame: String) -> Result<(), Stop> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.config.slow_timeout;
        loop {
            let writable = shared.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            {
                let mut queue = shared.lock();
                if queue.reader_gone {
                    return Err(Stop::Gone);
                }
                if queue.bytes == 0 || queue.bytes + frame.len() <= shared.config.max_buffer {
                    queue.bytes += frame.len();
                    shared.stats.buffered.fetch_add(frame.len(), Ordering::Relaxed);
                    queue.frames.push_back(frame);
                    drop(queue);
                    shared.readable.notify_one();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, writable).await.is_err() {
                let mut queue = shared.lock();
                queue.slow = true;
                shared.clear(&mut queue);
                drop(queue);
                // The reader ends the response now, not at its next heartbeat.
                shared.readable.notify_one();
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::sse_slow_consumer_dropped();
                tracing::warn!(
                    limit = shared.config.max_buffer,
                    "dropping an SSE stream whose client does not read"
                );
                return Err(Stop::Slow);
            }
        }
    }

    /// Whether the client went away.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().reader_gone
    }

    /// Completes when the client goes away.
    pub async fn closed(&self) {
        loop {
            let writable = self.shared.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            if self.is_closed() {
                return;
            }
            writable.await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.lock().ended = true;
        self.shared.readable.notify_one();
    }
}

struct Reader(Arc<Shared>);

impl Reader {
    /// The next chunk: the frames waiting go out together (one write, not one per frame), a
    /// `: heartbeat` comment after the heartbeat interval without frames; an error for a
    /// dropped slow stream (so the connection is closed), `None` at the end.
    async fn next(&self) -> Option<Result<Bytes, std::io::Error>> {
        let shared = &self.0;
        loop {
            let readable = shared.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut queue = shared.lock();
                if queue.slow {
                    return Some(Err(std::io::Error::other("slow SSE client dropped")));
                }
                if let Some(mut chunk) = queue.frames.pop_front() {
                    while chunk.len() < 64 * 1024 {
                        match queue.frames.pop_front() {
                            Some(frame) => chunk.push_str(&frame),
                            None => break,
                        }
                    }
                    queue.bytes -= chunk.len();
                    shared.stats.buffered.fetch_sub(chunk.len(), Ordering::Relaxed);
                    drop(queue);
                    shared.writable.notify_waiters();
                    return Some(Ok(Bytes::from(chunk)));
                }
                if queue.ended {
                    return None;
                }
            }
            if tokio::time::timeout(shared.config.heartbeat, readable).await.is_err() {
                return Some(Ok(Bytes::from_static(b": heartbeat\n\n")));
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.reader_gone = true;
        self.0.clear(&mut queue);
        drop(queue);
        self.0.writable.notify_waiters();
    }
}

/// Completes, with the reason, when a long-lived stream's credential stops being valid: at a
/// JWT's `exp`, or when a check of its API key (every `--auth-key-recheck`, at least 1 s)
/// finds it revoked. Never, for `--auth local`.
pub async fn credential_lapsed(
    auth: &Auth,
    store: &Store,
    credential: &Credential,
    every: Duration,
) -> String {
    if let Some(left) = credential.expires_in() {
        tokio::time::sleep(left).await;
        return "the JWT has expired".into();
    }
    if !matches!(credential, Credential::Key { .. }) {
        return std::future::pending().await;
    }
    let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(why) = auth.recheck(store, credential).await {
            return why;
        }
    }
}

/// The `data` of the SSE `error` event that ends a stream whose credential lapsed.
pub fn unauthorized_data(why: &str) -> Value {
    json!({ "error": "Unauthorized", "message": format!("{why}: this stream has ended") })
}

/// A stream mode, as clients name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    Values,
    Updates,
    MessagesTuple,
    Messages,
    Custom,
    Events,
    Debug,
}

impl StreamMode {
    pub fn parse(name: &str) -> Result<StreamMode, String> {
        match name {
            "values" => Ok(StreamMode::Values),
            "updates" => Ok(StreamMode::Updates),
            "messages-tuple" => Ok(StreamMode::MessagesTuple),
            "messages" => Ok(StreamMode::Messages),
            "custom" => Ok(StreamMode::Custom),
            "events" => Ok(StreamMode::Events),
            "debug" => Ok(StreamMode::Debug),
            "tasks" | "checkpoints" => {
                Err(format!("stream_mode `{name}` is not supported by this server yet"))
            }
            other => Err(format!(
                "invalid stream_mode `{other}`: expected values, updates, messages-tuple, messages, custom, events or debug"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamMode::Values => "values",
            StreamMode::Updates => "updates",
            StreamMode::MessagesTuple => "messages-tuple",
            StreamMode::Messages => "messages",
            StreamMode::Custom => "custom",
            StreamMode::Events => "events",
            StreamMode::Debug => "debug",
        }
    }
}

/// Where a reconnecting client left off: after frame `frame` of event `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub seq: i64,
    pub frame: u32,
}

impl Cursor {
    /// Before everything, the opening `metadata` frame included.
    pub const START: Cursor = Cursor { seq: 0, frame: 0 };

    /// Parses a `Last-Event-ID`: `SEQ-K`, `SEQ` (after all of event SEQ; `0` is the opening
    /// `metadata` frame's id), or `-1` (from the start).
    pub fn parse(text: &str) -> Result<Cursor, String> {
        let text = text.trim();
        if text == "-1" || text.is_empty() {
            return Ok(Cursor::START);
        }
        let bad =
            || format!("invalid Last-Event-ID `{text}`: expected an id this server sent, or -1");
        match text.split_once('-') {
            Some((seq, frame)) => Ok(Cursor {
                seq: seq.parse().map_err(|_| bad())?,
                frame: frame.parse().map_err(|_| bad())?,
            }),
            None => Ok(Cursor { seq: text.parse().map_err(|_| bad())?, frame: u32::MAX }),
        }
    }
}

/// One SSE frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub event: String,
    pub data: Value,
    pub id: String,
}

/// Whether an event ends its run's stream.
pub fn is_terminal(event: &Event) -> bool {
    matches!(event.kind, EventKind::AgentCompleted | EventKind::RunError | EventKind::RunCancelled)
}

/// Turns one run's events into frames for the requested modes.
#[derive(Debug)]
pub struct Framer {
    modes: Vec<StreamMode>,
    run_id: RunId,
    thread_id: ThreadId,
    /// Text so far of each message being streamed (for `messages/partial`).
    partial: HashMap<String, String>,
    announced: HashSet<String>,
    /// The interrupts of an `interrupt` event, shown with the `values` of its step.
    interrupts: Option<Value>,
}

impl Framer {
    pub fn new(modes: Vec<StreamMode>, run_id: RunId, thread_id: ThreadId) -> Framer {
        Framer {
            modes,
            run_id,
            thread_id,
            partial: HashMap::new(),
            announced: HashSet::new(),
            interrupts: None,
        }
    }

    fn wants(&self, mode: StreamMode) -> bool {
        self.modes.contains(&mode)
    }

    fn metadata(&self, node: &Value) -> Value {
        json!({
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "langgraph_node": node,
            "langgraph_step": 1,
            "langgraph_path": ["__pregel_pull", node],
            "langgraph_triggers": ["branch:to:".to_owned() + node.as_str().unwrap_or_default()],
        })
    }

    /// The frames of one event, with their ids. Every event is fed, in order, even those
    /// before a resume cursor (they rebuild the partial-message state); [`Frame`]s at or
    /// before the cursor are then dropped by the caller.
    pub fn frames(&mut self, event: &Event) -> Vec<Frame> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let node = event.data.get("node").cloned().unwrap_or(Value::Null);
        match event.kind {
            EventKind::Values => {
                // As LangGraph shows a state that stopped on an interrupt: `__interrupt__`
                // beside the values.
                let interrupts = self.interrupts.take();
                if self.wants(StreamMode::Values) {
                    let mut data = event.data.clone();
                    if let (Some(interrupts), Some(map)) = (interrupts, data.as_object_mut()) {
                        map.insert("__interrupt__".into(), interrupts);
                    }
                    out.push(("values".into(), data));
                }
            }
            EventKind::Interrupt => {
                let interrupts = event.data.get("interrupts").cloned().unwrap_or(json!([]));
                if self.wants(StreamMode::Updates) {
                    out.push(("updates".into(), json!({ "__interrupt__": interrupts.clone() })));
                }
                if interrupts.as_array().is_some_and(|i| !i.is_empty()) {
                    self.interrupts = Some(interrupts);
                }
            }
            EventKind::MessageDelta => {
                let id = event.data["message_id"].as_str().unwrap_or_default().to_owned();
                let delta = event.data["delta"].as_str().unwrap_or_default();
                let text = self.partial.entry(id.clone()).or_default();
                text.push_str(delta);
                let so_far = text.clone();
                let chunk = json!({
                    "type": "AIMessageChunk", "id": id, "content": delta, "name": node,
                    "additional_kwargs": {}, "response_metadata": {},
                    "tool_calls": [], "tool_call_chunks": [], "invalid_tool_calls": [],
                });
                if self.wants(StreamMode::MessagesTuple) {
                    out.push(("messages".into(), json!([chunk, self.metadata(&node)])));
                }
                if self.wants(StreamMode::Messages) {
                    if self.announced.insert(id.clone()) {
                        out.push((
                            "messages/metadata".into(),
                            json!({ id.clone(): { "metadata": self.metadata(&node) } }),
                        ));
                    }
                    let message =
                        json!({ "type": "ai", "id": id, "content": so_far, "name": node });
                    out.push(("messages/partial".into(), json!([message])));
                }
            }
            EventKind::MessageCompleted => {
                let message = event.data["message"].clone();
                let transient = event.data["transient"].as_bool().unwrap_or(false);
                if self.wants(StreamMode::Updates) && !transient {
                    let key = node.as_str().unwrap_or("agent").to_owned();
                    out.push(("updates".into(), json!({ key: { "messages": [message.clone()] } })));
                }
                if self.wants(StreamMode::Messages) {
                    out.push(("messages/complete".into(), json!([message])));
                }
            }
            EventKind::Custom if self.wants(StreamMode::Custom) => {
                out.push(("custom".into(), event.data["payload"].clone()))
            }
            EventKind::RunError => out.push((
                "error".into(),
                json!({ "error": event.data["error"], "message": event.data["message"] }),
            )),
            _ => {}
        }
        if self.wants(StreamMode::Events) {
            let data = json!({ "event": event.kind.as_str(), "name": node, "run_id": self.run_id, "data": event.data, "metadata": self.metadata(&node) });
            out.push(("events".into(), data));
        }
        if self.wants(StreamMode::Debug) {
            let data = json!({ "type": event.kind.as_str(), "step": event.seq, "timestamp": event.created_at, "payload": event.data });
            out.push(("debug".into(), data));
        }
        if is_terminal(event) {
            out.push(("end".into(), Value::Null));
        }
        out.into_iter()
            .enumerate()
            .map(|(k, (event_name, data))| Frame {
                event: event_name,
                data,
                id: format!("{}-{k}", event.seq),
            })
            .collect()
    }

    /// Whether a frame of `event` with index `k` comes after `cursor`.
    pub fn after(cursor: Cursor, seq: i64, k: u32) -> bool {
        (seq, k) > (cursor.seq, cursor.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, kind: EventKind, data: Value) -> Event {
        Event {
            thread_id: ThreadId::new(),
            seq,
            run_id: None,
            kind,
            data,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn cursors_parse_and_order() {
        assert_eq!(Cursor::parse("-1").unwrap(), Cursor::START);
        assert_eq!(Cursor::parse("12-3").unwrap(), Cursor { seq: 12, frame: 3 });
        assert_eq!(Cursor::parse("12").unwrap(), Cursor { seq: 12, frame: u32::MAX });
        assert_ne!(Cursor::parse("0").unwrap(), Cursor::START, "after the metadata frame");
        assert!(Framer::after(Cursor::parse("0").unwrap(), 1, 0));
        assert!(Cursor::parse("abc").is_err());
        let c = Cursor { seq: 5, frame: 1 };
        assert!(!Framer::after(c, 5, 1));
        assert!(Framer::after(c, 5, 2));
        assert!(Framer::after(c, 6, 0));
        assert!(!Framer::after(Cursor::parse("5").unwrap(), 5, 9));
        assert!(Framer::after(Cursor::START, 1, 0));
    }

    #[test]
    fn modes_map_events_to_the_frames_the_sdks_expect() {
        let modes = ["values", "updates", "messages-tuple", "messages", "custom"]
            .map(|m| StreamMode::parse(m).unwrap());
        let mut framer = Framer::new(modes.to_vec(), RunId::new(), ThreadId::new());
        let names = |frames: Vec<Frame>| frames.into_iter().map(|f| f.event).collect::<Vec<_>>();
        assert_eq!(
            names(framer.frames(&event(1, EventKind::Values, json!({"messages": []})))),
            ["values"]
        );
        let delta = json!({"node": "echo", "message_id": "m", "delta": "Hel"});
        assert_eq!(
            names(framer.frames(&event(2, EventKind::MessageDelta, delta))),
            ["messages", "messages/metadata", "messages/partial"]
        );
        let delta = json!({"node": "echo", "message_id": "m", "delta": "lo"});
        let frames = framer.frames(&event(3, EventKind::MessageDelta, delta));
        assert_eq!(frames[1].data[0]["content"], "Hello");
        assert_eq!(frames[0].data[0]["content"], "lo");
        assert_eq!(frames[0].data[1]["langgraph_node"], "echo");
        assert_eq!(frames[1].id, "3-1");
        let done =
            json!({"node": "echo", "message": {"type": "ai", "content": "Hello", "id": "m"}});
        let frames = framer.frames(&event(4, EventKind::MessageCompleted, done));
        assert_eq!(
            frames[0].data,
            json!({"echo": {"messages": [{"type": "ai", "content": "Hello", "id": "m"}]}})
        );
        assert_eq!(
            names(framer.frames(&event(5, EventKind::Custom, json!({"payload": {"i": 0}})))),
            ["custom"]
        );
        assert_eq!(names(framer.frames(&event(6, EventKind::AgentCompleted, json!({})))), ["end"]);
        let err =
            framer.frames(&event(7, EventKind::RunError, json!({"error": "E", "message": "m"})));
        assert_eq!(names(err), ["error", "end"]);
    }

    #[test]
    fn unknown_modes_are_named_in_the_error() {
        assert!(StreamMode::parse("bogus").unwrap_err().contains("invalid stream_mode `bogus`"));
        assert!(StreamMode::parse("tasks").unwrap_err().contains("not supported"));
    }
}
