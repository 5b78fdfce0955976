//! The run-create body of the Agent Protocol (`POST /threads/{thread_id}/runs...`, `POST
//! /runs...`, and the WebSocket channel's `run` frame), as the SDKs send it.

use domain::MultitaskStrategy;
pub use domain::{OnCompletion, OnDisconnect};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IfNotExistsField {
    #[default]
    Reject,
    Create,
}

/// A string or a list of strings.
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The run-create body of the Agent Protocol. Fields outside the protocol are ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct RunCreate {
    /// An assistant id, or a graph name such as `echo`.
    pub assistant_id: Option<String>,
    /// The input, e.g. `{"messages": [{"role": "user", "content": "hi"}]}`.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
    /// `values` (default), `updates`, `messages-tuple`, `messages`, `custom`, `events`, `debug`.
    #[schema(value_type = Option<Vec<String>>)]
    pub stream_mode: Option<OneOrMany>,
    pub stream_subgraphs: Option<bool>,
    pub stream_resumable: Option<bool>,
    #[schema(value_type = Option<String>)]
    pub multitask_strategy: Option<MultitaskStrategy>,
    pub if_not_exists: Option<IfNotExistsField>,
    pub on_disconnect: Option<OnDisconnect>,
    /// Stateless runs only: delete the temporary thread when the run ends (default) or keep it.
    pub on_completion: Option<OnCompletion>,
    pub durability: Option<String>,
    pub feedback_keys: Option<Vec<String>>,
    pub checkpoint_during: Option<bool>,
    /// Resumes an interrupted thread: `{"resume": value}` (or a map of interrupt id to value),
    /// `update` (applied first), `goto` (`"__end__"` to answer without running the agent).
    #[schema(value_type = Option<Object>)]
    pub command: Option<Value>,
    pub webhook: Option<String>,
    pub after_seconds: Option<f64>,
    #[schema(value_type = Option<Object>)]
    pub interrupt_before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub interrupt_after: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub checkpoint: Option<Value>,
    pub checkpoint_id: Option<String>,
}
