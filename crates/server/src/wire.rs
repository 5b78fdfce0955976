//! The API's JSON objects (Thread, Assistant, ThreadState, ...) as the `langgraph-sdk` clients
//! read them, converted explicitly from the store's rows; and the chat-state rules: message
//! normalisation and the `messages` reducer.

use chrono::{DateTime, Utc};
use ids::{AssistantId, CheckpointId, MessageId, RunId, TaskId, ThreadId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use store::{Assistant, Checkpoint, MultitaskStrategy, Run, RunStatus, Thread, ThreadStatus};
use utoipa::ToSchema;

/// A thread (conversation).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ThreadOut {
    #[schema(value_type = String, format = Uuid)]
    pub thread_id: ThreadId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_updated_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[schema(value_type = Object)]
    pub config: Value,
    #[schema(value_type = Object)]
    pub context: Value,
    #[schema(value_type = String, example = "idle")]
    pub status: ThreadStatus,
    /// The current state, `{"messages": [...]}` for chat agents; `{}` before the first.
    #[schema(value_type = Object)]
    pub values: Value,
    /// Pending interrupts by task id, while the thread is `interrupted`:
    /// `{"<task id>": [{"id": "<interrupt id>", "value": ...}]}`.
    #[schema(value_type = Object)]
    pub interrupts: Value,
}

impl From<Thread> for ThreadOut {
    fn from(t: Thread) -> Self {
        ThreadOut {
            thread_id: t.thread_id,
            created_at: t.created_at,
            updated_at: t.updated_at,
            state_updated_at: t.state_updated_at,
            metadata: t.metadata,
            config: json!({}),
            context: json!({}),
            status: t.status,
            values: t.values.unwrap_or_else(|| json!({})),
            interrupts: json!({}),
        }
    }
}

impl ThreadOut {
    /// The thread with the interrupts of its newest checkpoint (`head`), shown while the
    /// thread is `interrupted`.
    pub fn with_head(thread: Thread, head: Option<&Checkpoint>) -> Self {
        let interrupted = thread.status == ThreadStatus::Interrupted;
        let mut out = ThreadOut::from(thread);
        if let Some(head) = head.filter(|_| interrupted)
            && let Some(pending) = Pending::of(&head.metadata)
            && !pending.interrupts.is_empty()
        {
            let task = TaskId::of(head.checkpoint_id);
            out.interrupts = json!({ task.to_string(): pending.interrupts });
        }
        out
    }
}

/// The key of a checkpoint's metadata under which Spindle keeps what is still to run from
/// the checkpoint ([`Pending`]). Clients never see it: it is shown as the state's `next`,
/// `tasks` and `interrupts`.
pub const PENDING: &str = "__pending__";

/// What a checkpoint has still to run: the nodes next and the interrupts it stopped on
/// (values asked of a human). Their task's id is the checkpoint's (`TaskId::of`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub next: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interrupts: Vec<Interrupt>,
}

/// One interrupt, as LangGraph shows it in a state: its id (32 hex digits) and value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interrupt {
    pub id: String,
    pub value: Value,
}

impl Pending {
    /// `node` is to run next.
    pub fn next(node: &str) -> Pending {
        Pending { next: vec![node.to_owned()], interrupts: Vec::new() }
    }

    /// The interrupts as LangGraph shows them beside a state's values (`__interrupt__` of a
    /// stream's `values`, of `runs/wait` and `join`): `[{"value", "id"}]`.
    pub fn shown(&self) -> Value {
        self.interrupts.iter().map(|i| json!({ "value": i.value, "id": i.id })).collect()
    }

    /// The pending part of a checkpoint's metadata, if it has one.
    pub fn of(metadata: &Map<String, Value>) -> Option<Pending> {
        serde_json::from_value(metadata.get(PENDING)?.clone()).ok()
    }

    /// Puts it in a checkpoint's metadata.
    pub fn into_metadata(self, metadata: &mut Map<String, Value>) {
        metadata.insert(PENDING.into(), serde_json::to_value(self).unwrap_or(Value::Null));
    }
}

/// The fields `threads/search` can `select`.
pub const THREAD_FIELDS: &[&str] = &[
    "thread_id",
    "created_at",
    "updated_at",
    "state_updated_at",
    "metadata",
    "config",
    "context",
    "status",
    "values",
    "interrupts",
];

/// The fields `assistants/search` can `select`.
pub const ASSISTANT_FIELDS: &[&str] = &[
    "assistant_id",
    "graph_id",
    "name",
    "description",
    "config",
    "context",
    "created_at",
    "updated_at",
    "metadata",
    "version",
];

/// The fields of a thread state that `state` and `history` can `select` (and `values.<key>`).
pub const STATE_FIELDS: &[&str] = &[
    "values",
    "next",
    "tasks",
    "checkpoint",
    "metadata",
    "created_at",
    "parent_checkpoint",
    "interrupts",
];

/// Checks a `select` list against the fields of an object (`values.<key>` allowed when
/// `values` is one of them).
pub fn check_select(select: &[String], fields: &[&str]) -> Result<(), String> {
    for field in select {
        let top = field.split_once('.').map_or(field.as_str(), |(top, _)| top);
        if !fields.contains(&top) || (top != field && top != "values") {
            return Err(format!(
                "select: unknown field `{field}`; expected some of {}",
                fields.join(", ")
            ));
        }
    }
    Ok(())
}

/// Keeps only the selected fields of a serialized object; `values.<key>` keeps one key of
/// `values`. An empty selection keeps everything.
pub fn select_fields(value: impl Serialize, select: &[String]) -> Value {
    let value = serde_json::to_value(value).unwrap_or(Value::Null);
    let Value::Object(all) = value else { return value };
    if select.is_empty() {
        return Value::Object(all);
    }
    let mut out = Map::new();
    for field in select {
        match field.split_once('.') {
            None => {
                if let Some(v) = all.get(field) {
                    out.insert(field.clone(), v.clone());
                }
            }
            Some((top, key)) => {
                let picked = all.get(top).and_then(|v| v.get(key)).cloned();
                let entry = out.entry(top.to_owned()).or_insert_with(|| json!({}));
                if let (Some(v), Value::Object(inner)) = (picked, entry) {
                    inner.insert(key.to_owned(), v);
                }
            }
        }
    }
    Value::Object(out)
}

/// An assistant: a configured agent. Built-ins have `metadata.created_by = "system"`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AssistantOut {
    #[schema(value_type = String, format = Uuid)]
    pub assistant_id: AssistantId,
    pub graph_id: String,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub config: Value,
    #[schema(value_type = Object)]
    pub context: Value,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Assistant> for AssistantOut {
    fn from(a: Assistant) -> Self {
        AssistantOut {
            assistant_id: a.assistant_id,
            graph_id: a.graph_id,
            name: a.name,
            description: a.description,
            config: a.config,
            context: a.context,
            metadata: a.metadata,
            version: a.version,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A run: one agent execution in a thread.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RunOut {
    #[schema(value_type = String, format = Uuid)]
    pub run_id: RunId,
    #[schema(value_type = String, format = Uuid)]
    pub thread_id: ThreadId,
    #[schema(value_type = String, format = Uuid)]
    pub assistant_id: AssistantId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// pending, running, success, error, timeout or interrupted
    #[schema(value_type = String)]
    pub status: RunStatus,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[schema(value_type = Object)]
    pub kwargs: Value,
    #[schema(value_type = String)]
    pub multitask_strategy: MultitaskStrategy,
}

impl From<Run> for RunOut {
    fn from(r: Run) -> Self {
        RunOut {
            run_id: r.run_id,
            thread_id: r.thread_id,
            assistant_id: r.assistant_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            status: r.status,
            metadata: r.metadata,
            kwargs: r.kwargs,
            multitask_strategy: r.multitask_strategy,
        }
    }
}

/// Points at one checkpoint of a thread (LangGraph's checkpoint config).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CheckpointRef {
    #[schema(value_type = String, format = Uuid)]
    pub thread_id: ThreadId,
    pub checkpoint_ns: String,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub checkpoint_id: Option<CheckpointId>,
    #[schema(value_type = Option<Object>)]
    pub checkpoint_map: Option<Value>,
}

impl CheckpointRef {
    pub fn new(thread_id: ThreadId, checkpoint_id: Option<CheckpointId>) -> Self {
        CheckpointRef {
            thread_id,
            checkpoint_ns: String::new(),
            checkpoint_id,
            checkpoint_map: None,
        }
    }
}

/// A thread's state at one checkpoint, as `GET .../state` and `history` return it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ThreadStateOut {
    #[schema(value_type = Object)]
    pub values: Value,
    /// Nodes to run next from this state (the agent's, or `__start__` before a thread's first
    /// input); none once a run has answered.
    pub next: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub tasks: Vec<Value>,
    /// `null` before the thread's first state (`useStream` without history tests that).
    pub checkpoint: Option<CheckpointRef>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: Option<DateTime<Utc>>,
    pub parent_checkpoint: Option<CheckpointRef>,
    #[schema(value_type = Vec<Object>)]
    pub interrupts: Vec<Value>,
}

impl ThreadStateOut {
    /// The state of a thread that has no checkpoint yet.
    pub fn empty() -> Self {
        ThreadStateOut {
            values: json!({}),
            next: Vec::new(),
            tasks: Vec::new(),
            checkpoint: None,
            metadata: Map::new(),
            created_at: None,
            parent_checkpoint: None,
            interrupts: Vec::new(),
        }
    }
}

impl From<Checkpoint> for ThreadStateOut {
    fn from(mut c: Checkpoint) -> Self {
        let pending = Pending::of(&c.metadata).unwrap_or_default();
        c.metadata.remove(PENDING);
        let interrupts: Vec<Value> =
            pending.interrupts.iter().map(|i| json!({ "id": i.id, "value": i.value })).collect();
        let task = TaskId::of(c.checkpoint_id);
        let tasks = pending
            .next
            .iter()
            .map(|name| {
                json!({
                    "id": task, "name": name, "path": ["__pregel_pull", name],
                    "error": null, "interrupts": interrupts, "checkpoint": null, "state": null,
                    "result": null,
                })
            })
            .collect();
        ThreadStateOut {
            values: c.values,
            next: pending.next,
            tasks,
            checkpoint: Some(CheckpointRef::new(c.thread_id, Some(c.checkpoint_id))),
            metadata: c.metadata,
            created_at: Some(c.created_at),
            parent_checkpoint: c
                .parent_checkpoint_id
                .map(|p| CheckpointRef::new(c.thread_id, Some(p))),
            interrupts,
        }
    }
}

/// The answer to a state update.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StateUpdated {
    pub checkpoint: CheckpointRef,
}

/// Message types of the chat convention, and the roles clients may send instead.
fn message_type(message: &Map<String, Value>) -> Option<&'static str> {
    let text = message.get("type").or_else(|| message.get("role"))?.as_str()?;
    match text {
        "human" | "user" => Some("human"),
        "ai" | "assistant" => Some("ai"),
        "system" | "developer" => Some("system"),
        "tool" => Some("tool"),
        _ => None,
    }
}

/// One message in the chat convention: `type`, `content` (a string or a list of parts),
/// `id` (minted when missing), `additional_kwargs`, `response_metadata`; `role` becomes `type`.
pub fn normalize_message(message: Value, at: &str) -> Result<Value, String> {
    let mut m = match message {
        Value::String(text) => {
            let mut m = Map::new();
            m.insert("content".into(), Value::String(text));
            m.insert("type".into(), "human".into());
            m
        }
        Value::Object(m) => m,
        other => return Err(format!("{at}: expected a message object or a string, got {other}")),
    };
    let kind = message_type(&m).ok_or_else(|| {
        format!("{at}: expected `type` human, ai, system or tool (or `role` user, assistant, system or tool)")
    })?;
    m.remove("role");
    m.insert("type".into(), kind.into());
    match m.get("content") {
        None | Some(Value::Null) => {
            m.insert("content".into(), "".into());
        }
        Some(Value::String(_) | Value::Array(_)) => {}
        Some(_) => {
            return Err(format!("{at}.content: expected a string or a list of content parts"));
        }
    }
    if kind == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
        return Err(format!("{at}: a tool message needs a string `tool_call_id`"));
    }
    if m.get("id").and_then(Value::as_str).is_none_or(str::is_empty) {
        m.insert("id".into(), MessageId::new().to_string().into());
    }
    for key in ["additional_kwargs", "response_metadata"] {
        if !m.get(key).is_some_and(Value::is_object) {
            m.insert(key.into(), json!({}));
        }
    }
    Ok(Value::Object(m))
}

/// The `messages` reducer (LangGraph's `add_messages`): a message whose id is already in the
/// list replaces it in place; any other is appended.
fn add_messages(current: Option<Value>, update: Value) -> Result<Value, String> {
    let mut list = match current {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err("the thread's `messages` is not a list".into()),
    };
    let incoming = match update {
        Value::Array(items) => items,
        single => vec![single],
    };
    // Index the ids once, so an update of n messages costs O(n), not O(n²).
    let mut index: std::collections::HashMap<String, usize> = list
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.get("id").and_then(Value::as_str).map(|id| (id.to_owned(), i)))
        .collect();
    for (i, message) in incoming.into_iter().enumerate() {
        let message = normalize_message(message, &format!("values.messages[{i}]"))?;
        let id = message.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        match index.get(&id) {
            Some(&at) => list[at] = message,
            None => {
                index.insert(id, list.len());
                list.push(message);
            }
        }
    }
    Ok(Value::Array(list))
}

/// Applies a state update to the current values: `messages` through the reducer, every other
/// key replaced. `null` changes nothing.
pub fn apply_update(current: Option<Value>, update: Value) -> Result<Value, String> {
    let mut values = match current {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("the thread's values are not an object".into()),
    };
    let update = match update {
        Value::Null => return Ok(Value::Object(values)),
        Value::Object(update) => update,
        other => return Err(format!("values: expected an object, got {other}")),
    };
    for (key, value) in update {
        if key == "messages" {
            let merged = add_messages(values.remove("messages"), value)?;
            values.insert(key, merged);
        } else {
            values.insert(key, value);
        }
    }
    Ok(Value::Object(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_become_types_and_ids_are_minted() {
        let values = apply_update(
            None,
            json!({"messages": [{"role": "user", "content": "hi"}, "plain", {"type": "ai", "content": [{"type": "text", "text": "yo"}], "id": "m1"}]}),
        )
        .unwrap();
        let messages = values["messages"].as_array().unwrap();
        assert_eq!(messages[0]["type"], "human");
        assert_eq!(messages[0].get("role"), None);
        assert_eq!(messages[0]["additional_kwargs"], json!({}));
        assert!(messages[0]["id"].as_str().unwrap().parse::<MessageId>().is_ok());
        assert_eq!(messages[1]["content"], "plain");
        assert_eq!(messages[2]["id"], "m1");
    }

    #[test]
    fn same_id_replaces_and_other_keys_overwrite() {
        let first = apply_update(
            None,
            json!({"messages": [{"type": "human", "content": "a", "id": "x"}], "k": 1}),
        )
        .unwrap();
        let second = apply_update(
            Some(first),
            json!({"messages": {"type": "human", "content": "b", "id": "x"}, "k": 2}),
        )
        .unwrap();
        assert_eq!(second["messages"].as_array().unwrap().len(), 1);
        assert_eq!(second["messages"][0]["content"], "b");
        assert_eq!(second["k"], 2);
    }

    #[test]
    fn bad_messages_say_where() {
        let err = apply_update(None, json!({"messages": [{"role": "robot", "content": "x"}]}))
            .unwrap_err();
        assert!(err.starts_with("values.messages[0]: expected `type` human"), "{err}");
        let err = apply_update(None, json!({"messages": [{"type": "tool", "content": "x"}]}))
            .unwrap_err();
        assert!(err.contains("tool_call_id"), "{err}");
        assert!(apply_update(None, json!([1])).is_err());
    }
}
