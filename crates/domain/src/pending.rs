//! What a checkpoint has still to run, kept in its metadata: the nodes next and the
//! interrupts it stopped on.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The key of a checkpoint's metadata under which Spindle keeps what is still to run from
/// the checkpoint ([`Pending`]). Clients never see it: it is shown as the state's `next`,
/// `tasks` and `interrupts`.
pub const PENDING: &str = "__pending__";

/// What a checkpoint has still to run: the nodes next and the interrupts it stopped on
/// (values asked of a human). Their task's id is the checkpoint's (`TaskId::of`).
///
/// A checkpoint that mirrors a LangGraph graph's (a graph assistant's run, #16) also keeps the
/// graph's own `tasks` as LangGraph showed them, and `graph`: the id of the graph's checkpoint
/// it mirrors (a fork from it is a fork of that one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub next: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interrupts: Vec<Interrupt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
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
        Pending { next: vec![node.to_owned()], ..Pending::default() }
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

    /// Whether a step with this metadata writes a graph's state: its `values` event is then
    /// not appended with it, since the graph streams its own `values` parts (LangGraph decides
    /// when a step's values are streamed, and with what).
    pub fn is_graph_state(metadata: &Map<String, Value>) -> bool {
        metadata.get(PENDING).and_then(|p| p.get("graph")).is_some_and(|g| !g.is_null())
    }

    /// Puts it in a checkpoint's metadata.
    pub fn into_metadata(self, metadata: &mut Map<String, Value>) {
        metadata.insert(PENDING.into(), serde_json::to_value(self).unwrap_or(Value::Null));
    }
}
