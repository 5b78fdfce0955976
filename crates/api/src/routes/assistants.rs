//! Assistants: the built-in agents as system assistants, found by id or by graph name.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use domain::{Assistant, SortOrder, json_contains};
use protocol::wire::{ASSISTANT_FIELDS, AssistantOut, check_select, select_fields};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::context::RequestContext;
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search_assistants))
        .routes(routes!(count_assistants))
        .routes(routes!(get_assistant))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SearchAssistants {
    graph_id: Option<String>,
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    limit: Option<i64>,
    offset: Option<i64>,
    /// assistant_id, graph_id, name, created_at or updated_at
    sort_by: Option<String>,
    #[schema(value_type = Option<String>)]
    sort_order: Option<SortOrder>,
    /// Only these fields of each assistant.
    select: Option<Vec<String>>,
}

fn matches(a: &Assistant, q: &SearchAssistants) -> bool {
    q.graph_id.as_ref().is_none_or(|g| *g == a.graph_id)
        && q.name.as_ref().is_none_or(|n| a.name.contains(n.as_str()))
        && q.metadata.as_ref().is_none_or(|m| {
            json_contains(&Value::Object(a.metadata.clone()), &Value::Object(m.clone()))
        })
}

async fn matching(
    state: &AppState,
    context: &RequestContext,
    q: &SearchAssistants,
) -> ApiResult<Vec<Assistant>> {
    let all = state.engine.list_assistants(context.user).await?;
    Ok(all.into_iter().filter(|a| matches(a, q)).collect())
}

/// Search assistants; the total before paging is in `X-Pagination-Total`.
#[utoipa::path(post, path = "/assistants/search", tag = "assistants", request_body = SearchAssistants,
    responses((status = 200, body = Vec<AssistantOut>), (status = 422, body = ErrorBody)))]
async fn search_assistants(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(q): ApiJson<SearchAssistants>,
) -> ApiResult<impl IntoResponse> {
    let select = q.select.clone().unwrap_or_default();
    check_select(&select, ASSISTANT_FIELDS).map_err(ApiError::invalid)?;
    let limit = super::limit(q.limit, 10)? as usize;
    let offset = super::offset(q.offset)? as usize;
    let mut found = matching(&state, &context, &q).await?;
    let key = q.sort_by.as_deref().unwrap_or("created_at");
    let sort: fn(&Assistant, &Assistant) -> std::cmp::Ordering = match key {
        "assistant_id" => |a, b| a.assistant_id.cmp(&b.assistant_id),
        "graph_id" => |a, b| a.graph_id.cmp(&b.graph_id),
        "name" => |a, b| a.name.cmp(&b.name),
        "created_at" => |a, b| a.created_at.cmp(&b.created_at),
        "updated_at" => |a, b| a.updated_at.cmp(&b.updated_at),
        other => {
            return Err(ApiError::invalid(format!(
                "sort_by: expected assistant_id, graph_id, name, created_at or updated_at, got `{other}`"
            )));
        }
    };
    found.sort_by(|a, b| sort(a, b).then(a.assistant_id.cmp(&b.assistant_id)));
    if q.sort_order.unwrap_or(SortOrder::Desc) == SortOrder::Desc {
        found.reverse();
    }
    let mut headers = HeaderMap::new();
    headers.insert("x-pagination-total", found.len().into());
    let page: Vec<Value> = found
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|a| select_fields(AssistantOut::from(a), &select))
        .collect();
    Ok((headers, Json(page)))
}

/// Count assistants matching a filter.
#[utoipa::path(post, path = "/assistants/count", tag = "assistants", request_body = SearchAssistants,
    responses((status = 200, body = i64)))]
async fn count_assistants(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(q): ApiJson<SearchAssistants>,
) -> ApiResult<Json<usize>> {
    Ok(Json(matching(&state, &context, &q).await?.len()))
}

/// One assistant, by id or graph name.
#[utoipa::path(get, path = "/assistants/{assistant_id}", tag = "assistants",
    params(("assistant_id" = String, Path, description = "an assistant id, or a graph name such as `echo`")),
    responses((status = 200, body = AssistantOut), (status = 404, body = ErrorBody)))]
async fn get_assistant(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
) -> ApiResult<Json<AssistantOut>> {
    Ok(Json(crate::refs::assistant(&state, &context, &assistant_id).await?.into()))
}
