//! The API's JSON objects (Thread, Assistant, ThreadState, ...) as the `langgraph-sdk` clients
//! read them, converted explicitly from the domain's rows.

use chrono::{DateTime, Utc};
use domain::{
    Assistant, AssistantVersion, Checkpoint, MultitaskStrategy, Pending, Run, RunStatus, Thread,
    ThreadStatus,
};
use ids::{AssistantId, CheckpointId, RunId, TaskId, ThreadId};
use serde::Serialize;
use serde_json::{Map, Value, json};
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

/// One immutable version of an assistant (`POST /assistants/{id}/versions`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AssistantVersionOut {
    #[schema(value_type = String, format = Uuid)]
    pub assistant_id: AssistantId,
    pub version: i64,
    pub graph_id: String,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub config: Value,
    #[schema(value_type = Object)]
    pub context: Value,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
}

impl From<AssistantVersion> for AssistantVersionOut {
    fn from(v: AssistantVersion) -> Self {
        AssistantVersionOut {
            assistant_id: v.assistant_id,
            version: v.version,
            graph_id: v.graph_id,
            name: v.name,
            description: v.description,
            config: v.config,
            context: v.context,
            metadata: v.metadata,
            created_at: v.created_at,
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
        c.metadata.remove(domain::PENDING);
        let interrupts: Vec<Value> =
            pending.interrupts.iter().map(|i| json!({ "id": i.id, "value": i.value })).collect();
        let task = TaskId::of(c.checkpoint_id);
        // A graph's state shows the graph's own tasks, as LangGraph computed them.
        let tasks = pending.tasks.clone().unwrap_or_else(|| {
            pending
                .next
                .iter()
                .map(|name| {
                    json!({
                        "id": task, "name": name, "path": ["__pregel_pull", name],
                        "error": null, "interrupts": interrupts, "checkpoint": null, "state": null,
                        "result": null,
                    })
                })
                .collect()
        });
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
