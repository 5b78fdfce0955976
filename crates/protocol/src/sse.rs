//! The SSE views of the event log: the stream modes the SDKs ask for (`values`, `updates`,
//! `messages-tuple`, `messages`, `custom`, `events`, `debug`) are each a mapping from stored
//! events to frames. Every frame carries an id `SEQ-K` (the event's seq and the frame's index
//! among that event's frames), so a client that reconnects with its last id resumes exactly
//! after the last frame it received.

use std::collections::{HashMap, HashSet};

use domain::{Event, EventKind, is_terminal};
use ids::{RunId, ThreadId};
use serde_json::{Value, json};

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
    Tasks,
    Checkpoints,
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
            "tasks" => Ok(StreamMode::Tasks),
            "checkpoints" => Ok(StreamMode::Checkpoints),
            other => Err(format!(
                "invalid stream_mode `{other}`: expected values, updates, messages-tuple, messages, custom, events, debug, tasks or checkpoints"
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
            StreamMode::Tasks => "tasks",
            StreamMode::Checkpoints => "checkpoints",
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

    /// Whether a graph's stream part named `name` (`updates`, `messages`, `values|<ns>`, ...)
    /// is one of the requested modes: `messages` parts are the `messages-tuple` mode's.
    fn wants_part(&self, name: &str) -> bool {
        let mode = name.split('|').next().unwrap_or_default();
        let mode = if mode == "messages" { "messages-tuple" } else { mode };
        StreamMode::parse(mode).is_ok_and(|mode| self.wants(mode))
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
            EventKind::Stream => {
                // A graph's own part, streamed as LangGraph's server streams it, and nothing
                // else (not the `events`/`debug` views below, which the graph streams itself).
                let name = event.data["event"].as_str().unwrap_or_default();
                let mut out = Vec::new();
                if self.wants_part(name) {
                    out.push(Frame {
                        event: name.to_owned(),
                        data: event.data["data"].clone(),
                        id: format!("{}-0", event.seq),
                    });
                }
                return out;
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
                // A model's tool-call fragments and reasoning ride in the chunk as LangChain's
                // ChatOpenAI streams them.
                let tool_call_chunks = event.data.get("tool_call_chunks").cloned();
                let mut additional = json!({});
                if let Some(reasoning) = event.data.get("reasoning") {
                    additional["reasoning_content"] = reasoning.clone();
                }
                let chunk = json!({
                    "type": "AIMessageChunk", "id": id, "content": delta, "name": node,
                    "additional_kwargs": additional, "response_metadata": {},
                    "tool_calls": [], "tool_call_chunks": tool_call_chunks.unwrap_or(json!([])),
                    "invalid_tool_calls": [],
                });
                let mut chunk = chunk;
                for key in ["usage_metadata", "response_metadata"] {
                    if let Some(value) = event.data.get(key) {
                        chunk[key] = value.clone();
                    }
                }
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
                // A message that was not streamed (a tool's result, an edited call) is one
                // tuple of its own, as LangGraph sends the messages a node returns; a streamed
                // one was sent as its chunks.
                if self.wants(StreamMode::MessagesTuple) && !transient {
                    let id = message["id"].as_str().unwrap_or_default();
                    if message["type"] == "tool" || !self.partial.contains_key(id) {
                        out.push(("messages".into(), json!([message, self.metadata(&node)])));
                    }
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
        assert_eq!(StreamMode::parse("tasks"), Ok(StreamMode::Tasks));
        assert_eq!(StreamMode::parse("checkpoints"), Ok(StreamMode::Checkpoints));
    }

    #[test]
    fn a_graphs_parts_are_shown_as_they_are_when_their_mode_was_asked() {
        let modes = vec![StreamMode::MessagesTuple, StreamMode::Updates];
        let mut framer = Framer::new(modes, RunId::new(), ThreadId::new());
        let part = |seq, name: &str| {
            event(seq, EventKind::Stream, json!({"event": name, "data": {"k": seq}}))
        };
        let shown: Vec<(String, Value)> =
            [part(1, "messages"), part(2, "values"), part(3, "updates|sub:1"), part(4, "custom")]
                .iter()
                .flat_map(|e| framer.frames(e))
                .map(|f| (f.event, f.data))
                .collect();
        assert_eq!(
            shown,
            [("messages".into(), json!({"k": 1})), ("updates|sub:1".into(), json!({"k": 3}))]
        );
    }
}
