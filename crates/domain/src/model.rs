//! The rows the store returns and the closed sets (statuses, strategies, event kinds) stored
//! as text. These are storage types; the API converts them into its wire types.

use chrono::{DateTime, Utc};
use ids::{ApiKeyId, AssistantId, CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;

/// A JSON object (thread, run and assistant metadata).
pub type Metadata = serde_json::Map<String, Value>;

/// Declares an enum stored as text, with its one spelling in both directions.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("invalid ", stringify!($name), " `{}`: expected one of {}"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// A thread is `busy` exactly while it has a pending or running run.
    ThreadStatus { Idle = "idle", Busy = "busy", Interrupted = "interrupted", Error = "error" }
);

text_enum!(
    /// A run is pending, then running, then ends in exactly one of the four final states.
    RunStatus {
        Pending = "pending",
        Running = "running",
        Success = "success",
        Error = "error",
        Timeout = "timeout",
        Interrupted = "interrupted",
    }
);

impl RunStatus {
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

text_enum!(
    /// What a new run does when its thread already has an active run.
    MultitaskStrategy {
        Reject = "reject",
        Enqueue = "enqueue",
        Interrupt = "interrupt",
        Rollback = "rollback",
    }
);

text_enum!(
    /// The kinds of event in a thread's log (DESIGN.md, "Event model"). `stream` is a part of
    /// a user's LangGraph graph's own stream (#16): `{"event": "updates" | "messages" |
    /// "values|<namespace>" | ..., "data": ...}`, shown as it is.
    EventKind {
        RunCreated = "run_created",
        AgentStarted = "agent_started",
        AgentThinking = "agent_thinking",
        ToolExecuting = "tool_executing",
        ToolCompleted = "tool_completed",
        MessageDelta = "message_delta",
        MessageCompleted = "message_completed",
        Values = "values",
        AgentCompleted = "agent_completed",
        RunError = "run_error",
        RunCancelled = "run_cancelled",
        Custom = "custom",
        Interrupt = "interrupt",
        Stream = "stream",
    }
);

text_enum!(
    /// The orders `threads/search` can sort by (each a column of its own name).
    ThreadSortBy { ThreadId = "thread_id", Status = "status", CreatedAt = "created_at", UpdatedAt = "updated_at" }
);

text_enum!(
    /// Ascending or descending.
    SortOrder { Asc = "asc", Desc = "desc" }
);

/// Which of the caller's threads a search or count selects. `None` selects all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadFilter {
    /// JSON containment (`@>`) on the thread's metadata.
    pub metadata: Option<Value>,
    /// JSON containment on the thread's current values.
    pub values: Option<Value>,
    pub ids: Option<Vec<ThreadId>>,
    pub status: Option<ThreadStatus>,
}

/// One page of a search, in a stable order (ties broken by id).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThreadPage {
    pub limit: u32,
    pub offset: u32,
    pub sort_by: ThreadSortBy,
    pub sort_order: SortOrder,
}

/// An API key as operators see it: never the key itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub key_id: ApiKeyId,
    pub user_id: UserId,
    pub subject: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Computes a thread's new values from its current ones (`None` before the first state).
/// PostgreSQL may call it again when the state it was given turned out stale.
pub type StateUpdate = Box<dyn FnMut(Option<Value>) -> Result<Value, String> + Send>;

/// PostgreSQL's `jsonb @>`: objects contain every key of `needle` with a contained value,
/// arrays contain every element of `needle` somewhere, scalars are equal. Used by the SQLite
/// backend (as the SQL function `json_contains`) and for in-memory filters, so both backends
/// filter alike.
pub fn json_contains(haystack: &Value, needle: &Value) -> bool {
    // As in PostgreSQL, a top-level array contains a primitive equal to one of its elements.
    if let (Value::Array(h), n) = (haystack, needle)
        && !n.is_object()
        && !n.is_array()
    {
        return h.contains(n);
    }
    contains(haystack, needle)
}

fn contains(haystack: &Value, needle: &Value) -> bool {
    match (haystack, needle) {
        (Value::Object(h), Value::Object(n)) => {
            n.iter().all(|(k, nv)| h.get(k).is_some_and(|hv| contains(hv, nv)))
        }
        (Value::Array(h), Value::Array(n)) => {
            n.iter().all(|nv| h.iter().any(|hv| contains(hv, nv)))
        }
        (h, n) => h == n,
    }
}

/// What to do when a run names a thread that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfNotExists {
    /// 404: the thread must exist and be the caller's.
    Reject,
    /// Create the thread in the same transaction as the run.
    Create,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub user_id: UserId,
    pub subject: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Assistant {
    pub assistant_id: AssistantId,
    pub graph_id: String,
    pub name: String,
    pub description: Option<String>,
    pub config: Value,
    pub context: Value,
    pub metadata: Metadata,
    pub version: i64,
    /// `None` for the built-in system assistants every user sees.
    pub owner_id: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One immutable version of an assistant, as `POST /assistants/{id}/versions` lists them; the
/// `assistants` row holds a copy of its current one.
#[derive(Clone, Debug, PartialEq)]
pub struct AssistantVersion {
    pub assistant_id: AssistantId,
    pub version: i64,
    pub graph_id: String,
    pub name: String,
    pub description: Option<String>,
    pub config: Value,
    pub context: Value,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
}

impl From<&Assistant> for AssistantVersion {
    /// The version an assistant row is a copy of.
    fn from(a: &Assistant) -> Self {
        AssistantVersion {
            assistant_id: a.assistant_id,
            version: a.version,
            graph_id: a.graph_id.clone(),
            name: a.name.clone(),
            description: a.description.clone(),
            config: a.config.clone(),
            context: a.context.clone(),
            metadata: a.metadata.clone(),
            created_at: a.updated_at,
        }
    }
}

/// A user's assistant to create (its version 1).
#[derive(Clone, Debug, PartialEq)]
pub struct NewAssistant {
    pub assistant_id: AssistantId,
    pub graph_id: String,
    pub name: String,
    pub description: Option<String>,
    pub config: Value,
    pub context: Value,
    pub metadata: Metadata,
}

/// A change to an assistant, which becomes its next version: each field given replaces the
/// current one, but `metadata`, which is merged key by key into it (as LangGraph does).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AssistantPatch {
    pub graph_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub config: Option<Value>,
    pub context: Option<Value>,
    pub metadata: Option<Metadata>,
}

impl AssistantPatch {
    /// The next version this patch makes of `current`.
    pub fn apply(&self, current: &Assistant) -> NewAssistant {
        let mut metadata = current.metadata.clone();
        metadata.extend(self.metadata.clone().unwrap_or_default());
        NewAssistant {
            assistant_id: current.assistant_id,
            graph_id: self.graph_id.clone().unwrap_or_else(|| current.graph_id.clone()),
            name: self.name.clone().unwrap_or_else(|| current.name.clone()),
            description: self.description.clone().or_else(|| current.description.clone()),
            config: self.config.clone().unwrap_or_else(|| current.config.clone()),
            context: self.context.clone().unwrap_or_else(|| current.context.clone()),
            metadata,
        }
    }
}

/// A built-in assistant to register at start-up.
#[derive(Clone, Debug)]
pub struct SystemAssistant {
    pub graph_id: String,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Thread {
    pub thread_id: ThreadId,
    pub owner_id: UserId,
    pub metadata: Metadata,
    pub status: ThreadStatus,
    /// The current state (`{"messages": [...]}`); `None` until the first write.
    pub values: Option<Value>,
    /// The seq of the thread's newest event (0 before the first).
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub owner_id: UserId,
    pub assistant_id: AssistantId,
    pub status: RunStatus,
    pub input: Option<Value>,
    pub kwargs: Value,
    pub metadata: Metadata,
    pub multitask_strategy: MultitaskStrategy,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Counts an operator watches (`/metrics`), database-wide.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub threads_busy: i64,
    /// Busy threads with no pending or running run (a broken invariant).
    pub threads_busy_without_run: i64,
    pub runs_pending: i64,
    pub runs_running: i64,
    /// When the oldest running run was claimed.
    pub oldest_running_since: Option<DateTime<Utc>>,
}

/// A run to create. The run id is minted by the caller (from the ids crate) so it can be
/// logged before the insert.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub assistant_id: AssistantId,
    pub input: Option<Value>,
    pub kwargs: Value,
    pub metadata: Metadata,
    pub multitask_strategy: MultitaskStrategy,
    /// Merged into the thread's metadata in the run's transaction (`graph_id`,
    /// `assistant_id`: chat UIs search threads by them).
    pub thread_metadata: Metadata,
}

/// A run's first step (its input applied to the thread's state, with the events before it),
/// committed by [`crate::Store::create_run_claiming`] with the run when it claims it, or by
/// [`crate::Store::commit_first_step`].
pub struct FirstStep {
    pub events: Vec<NewEvent>,
    /// The step's values from the values it starts from: the thread's newest checkpoint's,
    /// or `from`'s.
    pub update: StateUpdate,
    pub metadata: Metadata,
    /// A fork: the step starts from this checkpoint of the thread rather than from the
    /// newest: the update is given its values and the new checkpoint has it as parent. A
    /// checkpoint the thread does not have is [`crate::Error::NotFound`], nothing written.
    pub from: Option<CheckpointId>,
    /// The state before the input, written first (as the step's parent) when the thread has
    /// no checkpoint yet and `from` is `None`: LangGraph's step −1 state, so the first
    /// message of a thread has a parent to fork from (edit it). Its values and metadata.
    pub initial: Option<(Value, Metadata)>,
}

impl std::fmt::Debug for FirstStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstStep")
            .field("events", &self.events)
            .field("metadata", &self.metadata)
            .field("from", &self.from)
            .field("initial", &self.initial)
            .finish_non_exhaustive()
    }
}

/// How a run ends, recorded in the transaction of its last step: its status (the thread's
/// follows), an error message, and its last event.
#[derive(Clone, Debug)]
pub struct RunEnd {
    pub status: RunStatus,
    pub error: Option<String>,
    pub event: NewEvent,
    /// The run stopped to ask a human (an interrupt, or a breakpoint): its thread becomes
    /// `interrupted` rather than `idle`, unless another of its runs is active.
    pub interrupted: bool,
}

/// What one step of a run committed.
#[derive(Clone, Debug)]
pub struct Step {
    pub checkpoint: Option<Checkpoint>,
    /// Every event appended, in order (publish them).
    pub events: Vec<Event>,
    /// The run as it ended, when the step ended it.
    pub ended: Option<Run>,
}

/// What `create_run` answers when the thread is busy and the strategy is `reject`.
pub const THREAD_BUSY: &str = "Thread is already running a task. Wait for it to finish or choose a different multitask strategy.";

#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub checkpoint_id: CheckpointId,
    pub thread_id: ThreadId,
    pub run_id: Option<RunId>,
    pub parent_checkpoint_id: Option<CheckpointId>,
    pub values: Value,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
}

/// An event to append; the store assigns its `seq`.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub run_id: Option<RunId>,
    pub kind: EventKind,
    pub data: Value,
}

impl NewEvent {
    /// The `values` event of a run's step: the thread's values after it.
    pub fn values(run: RunId, values: &Value) -> NewEvent {
        NewEvent { run_id: Some(run), kind: EventKind::Values, data: values.clone() }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub thread_id: ThreadId,
    /// 1, 2, 3, ... within the thread: no gaps, no duplicates.
    pub seq: i64,
    pub run_id: Option<RunId>,
    pub kind: EventKind,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// The thread's status once a run has moved to `status` and `active` runs remain active;
/// `interrupted`: the run stopped to ask a human (`RunEnd::interrupted`). The one definition of
/// the rule: the PostgreSQL run functions are given its answer, and the store's table tests
/// hold every backend path to it.
pub fn thread_status_after(status: RunStatus, active: i64, interrupted: bool) -> ThreadStatus {
    if active > 0 {
        return ThreadStatus::Busy;
    }
    match status {
        RunStatus::Success if interrupted => ThreadStatus::Interrupted,
        RunStatus::Pending | RunStatus::Running => ThreadStatus::Busy,
        RunStatus::Success | RunStatus::Interrupted => ThreadStatus::Idle,
        RunStatus::Error | RunStatus::Timeout => ThreadStatus::Error,
    }
}

/// The thread's status once a run was undone without ending it (a pending run cancelled, a
/// run rolled back) and `active` runs remain active: its newest checkpoint says whether it
/// still waits for a human (`head_interrupted`: the checkpoint's pending task holds
/// interrupts). The SQL of `cancel_pending_run` and `rollback_run` on both backends is this
/// rule (the store's table tests hold every copy to it).
pub fn thread_status_after_undo(active: i64, head_interrupted: bool) -> ThreadStatus {
    match (active > 0, head_interrupted) {
        (true, _) => ThreadStatus::Busy,
        (false, true) => ThreadStatus::Interrupted,
        (false, false) => ThreadStatus::Idle,
    }
}

/// What cancelling a run asks for (`POST .../cancel`'s `action`, and the `interrupt` and
/// `rollback` multitask strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelAction {
    /// Stop; keep what the run already wrote; the run ends `interrupted`.
    Interrupt,
    /// Stop and undo: the run and what it wrote are deleted.
    Rollback,
}

/// Whether an event ends its run's stream (`agent_completed`, `run_error`, `run_cancelled`).
pub fn is_terminal(event: &Event) -> bool {
    matches!(event.kind, EventKind::AgentCompleted | EventKind::RunError | EventKind::RunCancelled)
}
