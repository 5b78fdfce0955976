//! What a run is asked to do: [`RunSpec`], built once by the transport that validated the
//! request, stored as the run's `kwargs` (which clients read back in the run object, key for
//! key as before it was typed), and read back typed by the engine.

use ids::CheckpointId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// Whether a streaming run is cancelled when its client goes away. (Plain comments on the two
// request enums: a doc comment would become their OpenAPI description.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    Cancel,
    #[default]
    Continue,
}

// What a stateless run does with its temporary thread when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnCompletion {
    #[default]
    Delete,
    Keep,
}

/// A run's request, validated: the agent, its input and options, and how it starts (a fork,
/// a command, breakpoints).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSpec {
    /// The agent the run executes (a built-in graph's name).
    pub graph_id: String,
    /// The input as sent (also the run's `input`).
    pub input: Option<Value>,
    pub config: Value,
    pub context: Value,
    /// The stream modes asked for (`values` when none was).
    pub stream_mode: Vec<String>,
    pub stream_subgraphs: bool,
    pub stream_resumable: bool,
    pub on_disconnect: OnDisconnect,
    /// A stateless run's: `delete` its temporary thread at its end (the default), or `keep`;
    /// `None` for a run on a thread.
    pub on_completion: Option<OnCompletion>,
    pub durability: Option<String>,
    pub feedback_keys: Option<Vec<String>>,
    /// `{resume, update, goto}`: the run resumes the thread's interrupted state (kept as sent:
    /// a `resume` of `null` is a resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Value>,
    /// An older checkpoint of the thread the run forks from (regenerate, edit); `None`
    /// continues from the newest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<CheckpointId>,
    /// Breakpoints: `"*"` or a list of node names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupt_before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupt_after: Option<Value>,
}

fn echo() -> String {
    "echo".into()
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            graph_id: echo(),
            input: None,
            config: empty_object(),
            context: empty_object(),
            stream_mode: Vec::new(),
            stream_subgraphs: false,
            stream_resumable: false,
            on_disconnect: OnDisconnect::default(),
            on_completion: None,
            durability: None,
            feedback_keys: None,
            command: None,
            checkpoint_id: None,
            interrupt_before: None,
            interrupt_after: None,
        }
    }
}

impl RunSpec {
    /// The spec of a run's stored `kwargs`, field by field: a field this build cannot read
    /// (stored by hand) takes its default alone, as the readers before `RunSpec` did, and
    /// `on_completion` is read as the store's SQL reads it (`kwargs ->> 'on_completion'`).
    pub fn of(kwargs: &Value) -> RunSpec {
        let field = |key: &str| kwargs.get(key).filter(|v| !v.is_null());
        let text = |key: &str| field(key).and_then(Value::as_str);
        let strings = |key: &str| {
            field(key).and_then(Value::as_array).map(|items| {
                items.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>()
            })
        };
        RunSpec {
            graph_id: text("graph_id").unwrap_or("echo").to_owned(),
            input: field("input").cloned(),
            config: field("config").cloned().unwrap_or_else(empty_object),
            context: field("context").cloned().unwrap_or_else(empty_object),
            stream_mode: strings("stream_mode").unwrap_or_default(),
            stream_subgraphs: field("stream_subgraphs").and_then(Value::as_bool).unwrap_or(false),
            stream_resumable: field("stream_resumable").and_then(Value::as_bool).unwrap_or(false),
            on_disconnect: match text("on_disconnect") {
                Some("cancel") => OnDisconnect::Cancel,
                _ => OnDisconnect::Continue,
            },
            on_completion: match text("on_completion") {
                Some("delete") => Some(OnCompletion::Delete),
                Some("keep") => Some(OnCompletion::Keep),
                _ => None,
            },
            durability: text("durability").map(str::to_owned),
            feedback_keys: strings("feedback_keys"),
            // Kept as stored: a `command` whose `resume` is `null` is a resume.
            command: kwargs.get("command").cloned(),
            checkpoint_id: text("checkpoint_id").and_then(|id| id.parse().ok()),
            interrupt_before: field("interrupt_before").cloned(),
            interrupt_after: field("interrupt_after").cloned(),
        }
    }

    /// The `kwargs` to store.
    pub fn to_kwargs(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The command, when the run resumes (an object `{resume, update, goto}`).
    pub fn command(&self) -> Option<&Map<String, Value>> {
        self.command.as_ref().and_then(Value::as_object)
    }

    /// Whether the run's thread is deleted at its end (a stateless run's, by default).
    pub fn deletes_thread(&self) -> bool {
        self.on_completion == Some(OnCompletion::Delete)
    }

    /// Whether `interrupt_before` names `node`, or is `*`.
    pub fn stops_before(&self, node: &str) -> bool {
        match &self.interrupt_before {
            Some(Value::String(all)) => all == "*",
            Some(Value::Array(nodes)) => {
                nodes.iter().any(|n| n.as_str() == Some(node) || n.as_str() == Some("*"))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kwargs_keep_their_shape() {
        let kwargs = json!({
            "graph_id": "synthetic", "input": {"n": 1}, "config": {}, "context": {},
            "stream_mode": ["values"], "stream_subgraphs": false, "stream_resumable": false,
            "on_disconnect": "continue", "on_completion": null, "durability": null,
            "feedback_keys": null, "interrupt_before": "*",
        });
        let spec = RunSpec::of(&kwargs);
        assert_eq!(spec.graph_id, "synthetic");
        assert!(spec.stops_before("synthetic"));
        assert!(!spec.deletes_thread());
        assert_eq!(spec.to_kwargs(), kwargs);
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let spec = RunSpec::of(&json!({}));
        assert_eq!(spec, RunSpec::default());
        assert!(RunSpec::of(&json!({"on_completion": "delete"})).deletes_thread());
        assert_eq!(RunSpec::of(&json!([1])), RunSpec::default());
    }

    #[test]
    fn a_field_that_cannot_be_read_takes_its_default_alone() {
        let spec = RunSpec::of(&json!({
            "graph_id": "synthetic", "on_completion": "delete", "checkpoint_id": "not-an-id",
            "stream_mode": ["updates", 1],
        }));
        assert_eq!(spec.graph_id, "synthetic");
        assert!(spec.deletes_thread());
        assert_eq!(spec.checkpoint_id, None);
        assert_eq!(spec.stream_mode, ["updates"]);
        let spec = RunSpec::of(&json!({"graph_id": null, "on_completion": "delete"}));
        assert_eq!(spec.graph_id, "echo");
        assert!(spec.deletes_thread());
    }
}
