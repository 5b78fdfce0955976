//! Threads: create (with `if_exists`), get, patch metadata, delete (cascading), search and
//! count, all scoped to the caller.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use domain::{SortOrder, ThreadFilter, ThreadPage, ThreadSortBy, ThreadStatus};
use ids::ThreadId;
use protocol::wire::{THREAD_FIELDS, ThreadOut, check_select, select_fields};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::context::{OwnedThread, RequestContext, ThreadKey};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_thread))
        .routes(routes!(search_threads))
        .routes(routes!(count_threads))
        .routes(routes!(get_thread, patch_thread, delete_thread))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IfExists {
    /// 409 when the id is taken.
    #[default]
    Raise,
    /// Return the existing thread.
    DoNothing,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateThread {
    /// Choose the id (any UUID); a new UUIDv7 when absent.
    #[schema(value_type = Option<String>, format = Uuid)]
    thread_id: Option<ThreadId>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    if_exists: Option<IfExists>,
    /// Stored in `metadata.graph_id`, as the LangGraph server does.
    graph_id: Option<String>,
    /// Not supported yet: a request that sets it is refused rather than half-honoured.
    #[schema(value_type = Option<Object>)]
    supersteps: Option<Value>,
    /// Not supported yet: a request that sets it is refused rather than half-honoured.
    #[schema(value_type = Option<Object>)]
    ttl: Option<Value>,
}

/// Refuses a field whose value Spindle cannot honour yet, instead of dropping it silently.
fn unsupported(field: &str, value: &Option<Value>) -> ApiResult<()> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::unsupported(field)),
    }
}

/// Create a thread.
#[utoipa::path(post, path = "/threads", tag = "threads", request_body = CreateThread,
    responses((status = 200, body = ThreadOut), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_thread(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<CreateThread>,
) -> ApiResult<Json<ThreadOut>> {
    unsupported("supersteps", &body.supersteps)?;
    unsupported("ttl", &body.ttl)?;
    let id = body.thread_id.unwrap_or_else(ThreadId::new);
    let mut metadata = body.metadata.unwrap_or_default();
    if let Some(graph_id) = body.graph_id {
        metadata.insert("graph_id".into(), graph_id.into());
    }
    tracing::Span::current().record("thread_id", tracing::field::display(id));
    let (thread, created) = match body.if_exists.unwrap_or_default() {
        IfExists::Raise => (state.engine.create_thread(context.user, id, &metadata).await?, true),
        IfExists::DoNothing => {
            state.engine.get_or_create_thread(context.user, id, &metadata).await?
        }
    };
    if created {
        crate::metrics::thread_created();
    }
    Ok(Json(thread_out(&state, &context, thread).await?))
}

/// Get a thread.
#[utoipa::path(get, path = "/threads/{thread_id}", tag = "threads", params(("thread_id" = String, Path, format = Uuid)),
    responses((status = 200, body = ThreadOut), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_thread(
    State(state): State<AppState>,
    context: RequestContext,
    OwnedThread(thread): OwnedThread,
) -> ApiResult<Json<ThreadOut>> {
    Ok(Json(thread_out(&state, &context, thread).await?))
}

/// A thread as clients see it: while it is `interrupted`, with its newest checkpoint's
/// interrupts.
pub(crate) async fn thread_out(
    state: &AppState,
    context: &RequestContext,
    thread: domain::Thread,
) -> ApiResult<ThreadOut> {
    if thread.status != ThreadStatus::Interrupted {
        return Ok(thread.into());
    }
    let head = state.engine.list_checkpoints(context.user, thread.thread_id, 1, None).await?;
    Ok(ThreadOut::with_head(thread, head.first()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct PatchThread {
    /// Shallow-merged into the thread's metadata.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    ttl: Option<Value>,
}

/// Update a thread's metadata (shallow merge).
#[utoipa::path(patch, path = "/threads/{thread_id}", tag = "threads", params(("thread_id" = String, Path, format = Uuid)),
    request_body = PatchThread,
    responses((status = 200, body = ThreadOut), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn patch_thread(
    State(state): State<AppState>,
    context: RequestContext,
    OwnedThread(thread): OwnedThread,
    ApiJson(body): ApiJson<PatchThread>,
) -> ApiResult<Json<ThreadOut>> {
    unsupported("ttl", &body.ttl)?;
    let patch = body.metadata.unwrap_or_default();
    let updated =
        state.engine.update_thread_metadata(context.user, thread.thread_id, &patch).await?;
    Ok(Json(thread_out(&state, &context, updated).await?))
}

/// Delete a thread with its runs, checkpoints and events.
#[utoipa::path(delete, path = "/threads/{thread_id}", tag = "threads", params(("thread_id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_thread(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
) -> ApiResult<StatusCode> {
    // Ends every live subscription to it too (a thread with this id may be created again).
    state.engine.delete_thread(context.user, thread).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SearchThreads {
    /// Threads whose metadata contains this object.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// Threads whose current values contain this object.
    #[schema(value_type = Option<Object>)]
    values: Option<Map<String, Value>>,
    #[schema(value_type = Option<Vec<String>>)]
    ids: Option<Vec<ThreadId>>,
    #[schema(value_type = Option<String>)]
    status: Option<ThreadStatus>,
    /// 1 to 1000; 10 by default.
    limit: Option<i64>,
    offset: Option<i64>,
    #[schema(value_type = Option<String>)]
    sort_by: Option<ThreadSortBy>,
    #[schema(value_type = Option<String>)]
    sort_order: Option<SortOrder>,
    /// Only these fields of each thread.
    select: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    extract: Option<Value>,
}

fn filter(
    metadata: Option<Map<String, Value>>,
    values: Option<Map<String, Value>>,
    ids: Option<Vec<ThreadId>>,
    status: Option<ThreadStatus>,
) -> ThreadFilter {
    ThreadFilter {
        metadata: metadata.map(Value::Object),
        values: values.map(Value::Object),
        ids,
        status,
    }
}

fn check_ids(ids: Option<&[ThreadId]>) -> ApiResult<()> {
    if ids.is_some_and(|ids| ids.len() > 1000) {
        return Err(ApiError::invalid("ids: expected at most 1000 thread ids"));
    }
    Ok(())
}

/// Search the caller's threads; the total before paging is in `X-Pagination-Total`.
#[utoipa::path(post, path = "/threads/search", tag = "threads", request_body = SearchThreads,
    responses((status = 200, body = Vec<ThreadOut>), (status = 422, body = ErrorBody)))]
async fn search_threads(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<SearchThreads>,
) -> ApiResult<impl IntoResponse> {
    unsupported("extract", &body.extract)?;
    let select = body.select.unwrap_or_default();
    check_select(&select, THREAD_FIELDS).map_err(ApiError::invalid)?;
    check_ids(body.ids.as_deref())?;
    let page = ThreadPage {
        limit: super::limit(body.limit, 10)?,
        offset: super::offset(body.offset)?,
        sort_by: body.sort_by.unwrap_or(ThreadSortBy::CreatedAt),
        sort_order: body.sort_order.unwrap_or(SortOrder::Desc),
    };
    let filter = filter(body.metadata, body.values, body.ids, body.status);
    let threads = state.engine.search_threads(context.user, &filter, &page).await?;
    let total = state.engine.count_threads(context.user, &filter).await?;
    let mut out: Vec<Value> = Vec::with_capacity(threads.len());
    for thread in threads {
        out.push(select_fields(thread_out(&state, &context, thread).await?, &select));
    }
    let mut headers = HeaderMap::new();
    headers.insert("x-pagination-total", total.into());
    Ok((headers, Json(out)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CountThreads {
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    values: Option<Map<String, Value>>,
    /// Only threads with these ids (at most 1000), as in `/threads/search`.
    #[schema(value_type = Option<Vec<String>>)]
    ids: Option<Vec<ThreadId>>,
    #[schema(value_type = Option<String>)]
    status: Option<ThreadStatus>,
}

/// Count the caller's threads matching a filter.
#[utoipa::path(post, path = "/threads/count", tag = "threads", request_body = CountThreads,
    responses((status = 200, body = i64), (status = 422, body = ErrorBody)))]
async fn count_threads(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<CountThreads>,
) -> ApiResult<Json<i64>> {
    check_ids(body.ids.as_deref())?;
    let filter = filter(body.metadata, body.values, body.ids, body.status);
    Ok(Json(state.engine.count_threads(context.user, &filter).await?))
}
