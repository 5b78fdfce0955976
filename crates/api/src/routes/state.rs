//! Thread state: the current values, updates to them (each a checkpoint), one checkpoint by
//! id, and the history of checkpoints, newest first.

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use domain::{apply_update, json_contains};
use ids::{CheckpointId, ThreadId};
use protocol::wire::{
    CheckpointRef, STATE_FIELDS, StateUpdated, ThreadStateOut, check_select, select_fields,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::context::{OwnedThread, RequestContext, ThreadKey, path_id};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_state, update_state))
        .routes(routes!(get_state_at))
        .routes(routes!(post_state_at))
        .routes(routes!(history_post, history_get))
}

async fn latest(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
) -> ApiResult<ThreadStateOut> {
    let newest = state.engine.list_checkpoints(context.user, thread, 1, None).await?;
    Ok(newest.into_iter().next().map_or_else(ThreadStateOut::empty, Into::into))
}

/// The thread's current state.
#[utoipa::path(get, path = "/threads/{thread_id}/state", tag = "state", params(("thread_id" = String, Path, format = Uuid)),
    responses((status = 200, body = ThreadStateOut), (status = 404, body = ErrorBody)))]
async fn get_state(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    // `select` may repeat (`?select=values&select=checkpoint`).
    let select: Vec<String> =
        query.into_iter().filter(|(k, _)| k == "select").map(|(_, v)| v).collect();
    check_select(&select, STATE_FIELDS).map_err(ApiError::invalid)?;
    Ok(Json(select_fields(latest(&state, &context, thread).await?, &select)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct UpdateState {
    /// Merged into the state: `messages` are appended (or replace the message with the same
    /// id); other keys are replaced.
    #[schema(value_type = Object)]
    values: Value,
    /// The node the update is attributed to (recorded in the checkpoint's metadata).
    as_node: Option<String>,
    /// The checkpoint to update (`{"checkpoint_id": ...}`): the result is a new checkpoint
    /// whose parent it is, the thread's newest (a new branch when it was not the newest).
    #[schema(value_type = Option<Object>)]
    checkpoint: Option<Value>,
    #[schema(value_type = Option<String>)]
    checkpoint_id: Option<Value>,
}

/// Update the thread's state; the result is a new checkpoint.
#[utoipa::path(post, path = "/threads/{thread_id}/state", tag = "state", params(("thread_id" = String, Path, format = Uuid)),
    request_body = UpdateState,
    responses((status = 200, body = StateUpdated), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_state(
    State(state): State<AppState>,
    context: RequestContext,
    OwnedThread(thread): OwnedThread,
    ApiJson(body): ApiJson<UpdateState>,
) -> ApiResult<Json<StateUpdated>> {
    crate::refs::check_namespace(body.checkpoint.as_ref())?;
    let from = match crate::refs::checkpoint_id("checkpoint", body.checkpoint.as_ref())? {
        Some(id) => Some(id),
        None => crate::refs::checkpoint_id("checkpoint_id", body.checkpoint_id.as_ref())?,
    };
    // The newest checkpoint is updated as without one; an older one gets a new branch.
    let from = match from {
        Some(from) => {
            let head = latest(&state, &context, thread.thread_id)
                .await?
                .checkpoint
                .and_then(|c| c.checkpoint_id);
            (head != Some(from)).then_some(from)
        }
        None => None,
    };
    // A user's graph updates its own state (its reducers, `as_node`), on a worker.
    if let Some(graph_id) = thread.metadata.get("graph_id").and_then(|g| g.as_str())
        && state.engine.graph(graph_id).is_some()
    {
        let checkpoint = state
            .engine
            .update_graph_state(
                context.user,
                thread.thread_id,
                graph_id,
                from,
                body.values,
                body.as_node,
            )
            .await?;
        return Ok(Json(StateUpdated {
            checkpoint: CheckpointRef::new(thread.thread_id, Some(checkpoint.checkpoint_id)),
        }));
    }
    // Validate before writing so a bad update is a 422 that changes nothing.
    let base = match from {
        Some(from) => {
            match state.engine.get_checkpoint(context.user, thread.thread_id, from).await {
                Ok(checkpoint) => Some(checkpoint.values),
                Err(domain::Error::NotFound { .. }) => {
                    return Err(ApiError::NotFound(format!(
                        "checkpoint {from} not found in thread {}",
                        thread.thread_id
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => thread.values.clone(),
    };
    apply_update(base, body.values.clone()).map_err(ApiError::invalid)?;
    let node = body.as_node.unwrap_or_else(|| "__input__".to_owned());
    let metadata =
        json!({ "source": "update", "writes": { node: body.values.clone() }, "parents": {} });
    let metadata = metadata.as_object().cloned().unwrap_or_default();
    let update = body.values;
    let checkpoint = state
        .engine
        .update_state(
            context.user,
            thread.thread_id,
            None,
            from,
            Box::new(move |current| apply_update(current, update.clone())),
            &metadata,
        )
        .await?;
    Ok(Json(StateUpdated {
        checkpoint: CheckpointRef::new(thread.thread_id, Some(checkpoint.checkpoint_id)),
    }))
}

/// The `{checkpoint_id}` path parameter.
struct CheckpointParam(CheckpointId);

impl axum::extract::FromRequestParts<AppState> for CheckpointParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        path_id(parts, "checkpoint_id").await.map(CheckpointParam)
    }
}

/// The thread's state at one checkpoint.
#[utoipa::path(get, path = "/threads/{thread_id}/state/{checkpoint_id}", tag = "state",
    params(("thread_id" = String, Path, format = Uuid), ("checkpoint_id" = String, Path, format = Uuid)),
    responses((status = 200, body = ThreadStateOut), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_state_at(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
    CheckpointParam(id): CheckpointParam,
) -> ApiResult<Json<ThreadStateOut>> {
    Ok(Json(state.engine.get_checkpoint(context.user, thread, id).await?.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct StateAt {
    /// `{"checkpoint_id": ...}`
    #[schema(value_type = Object)]
    checkpoint: Option<Value>,
}

/// The thread's state at the checkpoint in the body.
#[utoipa::path(post, path = "/threads/{thread_id}/state/checkpoint", tag = "state",
    params(("thread_id" = String, Path, format = Uuid)), request_body = StateAt,
    responses((status = 200, body = ThreadStateOut), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn post_state_at(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
    ApiJson(body): ApiJson<StateAt>,
) -> ApiResult<Json<ThreadStateOut>> {
    match crate::refs::checkpoint_id("checkpoint", body.checkpoint.as_ref())? {
        Some(id) => Ok(Json(state.engine.get_checkpoint(context.user, thread, id).await?.into())),
        None => Ok(Json(latest(&state, &context, thread).await?)),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct History {
    /// 1 to 1000; 10 by default.
    limit: Option<i64>,
    /// Only checkpoints older than this one (an id, or an object with `checkpoint_id`).
    #[schema(value_type = Option<Object>)]
    before: Option<Value>,
    /// Only checkpoints whose metadata contains this object.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// A subgraph namespace; Spindle's agents have none, so a non-empty one yields nothing.
    #[schema(value_type = Option<Object>)]
    checkpoint: Option<Value>,
    /// Only these fields of each state (`values.<key>` for one key of the values).
    select: Option<Vec<String>>,
}

async fn history(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    query: History,
) -> ApiResult<Vec<ThreadStateOut>> {
    let limit = super::limit(query.limit, 10)?;
    let mut before = crate::refs::checkpoint_id("before", query.before.as_ref())?;
    let namespace =
        query.checkpoint.as_ref().and_then(|c| c.get("checkpoint_ns")).and_then(Value::as_str);
    if namespace.is_some_and(|ns| !ns.is_empty()) {
        return Ok(Vec::new());
    }
    let Some(filter) = query.metadata.map(Value::Object) else {
        let page = state.engine.list_checkpoints(context.user, thread, limit, before).await?;
        return Ok(page.into_iter().map(Into::into).collect());
    };
    // A metadata filter: walk back through the history a chunk at a time.
    let mut out = Vec::new();
    loop {
        let chunk = state.engine.list_checkpoints(context.user, thread, 200, before).await?;
        let Some(last) = chunk.last() else { return Ok(out) };
        before = Some(last.checkpoint_id);
        for c in chunk {
            // What is pending is not metadata clients see (nor can filter on).
            let mut shown = c.metadata.clone();
            shown.remove(domain::PENDING);
            if json_contains(&Value::Object(shown), &filter) {
                out.push(c.into());
                if out.len() == limit as usize {
                    return Ok(out);
                }
            }
        }
    }
}

/// The thread's checkpoints, newest first.
#[utoipa::path(post, path = "/threads/{thread_id}/history", tag = "state", params(("thread_id" = String, Path, format = Uuid)),
    request_body = History,
    responses((status = 200, body = Vec<ThreadStateOut>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn history_post(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
    ApiJson(query): ApiJson<History>,
) -> ApiResult<Json<Vec<Value>>> {
    let select = query.select.clone().unwrap_or_default();
    check_select(&select, STATE_FIELDS).map_err(ApiError::invalid)?;
    let states = history(&state, &context, thread, query).await?;
    Ok(Json(states.into_iter().map(|s| select_fields(s, &select)).collect()))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// 1 to 1000; 10 by default.
    limit: Option<i64>,
    /// A checkpoint id: only older checkpoints.
    before: Option<String>,
}

/// The thread's checkpoints, newest first.
#[utoipa::path(get, path = "/threads/{thread_id}/history", tag = "state",
    params(("thread_id" = String, Path, format = Uuid), HistoryQuery),
    responses((status = 200, body = Vec<ThreadStateOut>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn history_get(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Vec<ThreadStateOut>>> {
    let query = History {
        limit: query.limit,
        before: query.before.map(Value::String),
        ..History::default()
    };
    Ok(Json(history(&state, &context, thread, query).await?))
}
