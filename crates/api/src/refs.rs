//! References a client sends that name stored things, read the same way by every route and
//! by run requests: an assistant (an id, or a graph name as LangGraph accepts), a checkpoint
//! (an id, `{"checkpoint_id"}` or `{"configurable": {"checkpoint_id"}}`) and its namespace.

use domain::Assistant;
use ids::{AssistantId, CheckpointId};
use serde_json::Value;

use crate::AppState;
use crate::context::RequestContext;
use crate::error::{ApiError, ApiResult};

/// An assistant by id or, as LangGraph accepts too, by graph name.
pub async fn assistant(
    state: &AppState,
    context: &RequestContext,
    id_or_graph: &str,
) -> ApiResult<Assistant> {
    let id = match id_or_graph.parse::<AssistantId>() {
        Ok(id) => id,
        Err(_) if !id_or_graph.is_empty() && id_or_graph.len() <= 256 => {
            AssistantId::for_graph(id_or_graph)
        }
        Err(e) => {
            crate::metrics::id_parse_failed(&e);
            return Err(ApiError::Invalid { code: "invalid_id", detail: e.to_string() });
        }
    };
    if let Some(assistant) = state.engine.system_assistant(id) {
        return Ok(assistant.clone());
    }
    state.engine.get_assistant(context.user, id).await.map_err(|e| match e {
        domain::Error::NotFound { .. } => {
            ApiError::NotFound(format!("assistant {id_or_graph} not found"))
        }
        other => other.into(),
    })
}

/// A checkpoint id given as a string, `{"checkpoint_id": ...}` or
/// `{"configurable": {"checkpoint_id": ...}}`, as the SDKs send them.
pub fn checkpoint_id(field: &str, value: Option<&Value>) -> ApiResult<Option<CheckpointId>> {
    let id = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Object(o)) => o
            .get("checkpoint_id")
            .or_else(|| o.get("configurable").and_then(|c| c.get("checkpoint_id")))
            .and_then(Value::as_str),
        Some(_) => None,
    };
    let id = id.ok_or_else(|| {
        ApiError::invalid(format!(
            "{field}: expected a checkpoint id or an object with `checkpoint_id`"
        ))
    })?;
    id.parse().map(Some).map_err(|e: ids::ParseIdError| {
        crate::metrics::id_parse_failed(&e);
        ApiError::Invalid { code: "invalid_id", detail: format!("{field}: {e}") }
    })
}

/// A `checkpoint` object's `checkpoint_ns` must be empty: this server's graphs have no
/// subgraphs.
pub fn check_namespace(checkpoint: Option<&Value>) -> ApiResult<()> {
    match checkpoint.and_then(|c| c.get("checkpoint_ns")) {
        Some(ns) if !(ns.is_null() || ns.as_str() == Some("")) => Err(ApiError::invalid(format!(
            "checkpoint.checkpoint_ns: expected \"\" (this server's graphs have no subgraphs), got {ns}"
        ))),
        _ => Ok(()),
    }
}
