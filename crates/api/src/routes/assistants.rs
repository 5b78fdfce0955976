//! Assistants: the built-in agents as system assistants (found by id or by graph name, seen by
//! everyone, changed by no one) and users' own, versioned assistants of those graphs.

use std::sync::Arc;

use agents::Agent;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use domain::{Assistant, AssistantPatch, NewAssistant, SortOrder, json_contains};
use engine::GraphSpec;
use ids::AssistantId;
use protocol::wire::{
    ASSISTANT_FIELDS, AssistantOut, AssistantVersionOut, check_select, select_fields,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::threads::IfExists;
use crate::AppState;
use crate::context::RequestContext;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_assistant))
        .routes(routes!(search_assistants))
        .routes(routes!(count_assistants))
        .routes(routes!(get_assistant, patch_assistant, delete_assistant))
        .routes(routes!(list_versions))
        .routes(routes!(set_latest))
        .routes(routes!(get_schemas))
        .routes(routes!(get_graph))
        .routes(routes!(get_subgraphs))
        .routes(routes!(get_subgraphs_in))
}

/// A graph name this server runs (a built-in agent's, or a user's graph of `--graphs`), or
/// LangGraph's 404 for an unknown graph.
fn graph_of(state: &AppState, graph_id: &str) -> ApiResult<String> {
    if state.engine.graph(graph_id).is_some() {
        return Ok(graph_id.to_owned());
    }
    match Agent::from_graph(graph_id) {
        Some(agent) => Ok(agent.name().to_owned()),
        None => {
            let mut known: Vec<String> =
                Agent::ALL.iter().map(|(_, name, _)| (*name).to_owned()).collect();
            if let Some(workers) = state.engine.workers() {
                known.extend(workers.graphs().map(|g| g.graph_id.clone()));
            }
            Err(ApiError::NotFound(format!(
                "Graph '{graph_id}' not found. Expected one of: {}",
                known.join(", ")
            )))
        }
    }
}

/// What draws an assistant: a built-in agent, or a user's graph as its worker described it.
enum Drawn {
    Agent(Agent),
    Graph(Arc<GraphSpec>),
}

impl Drawn {
    fn schemas(&self) -> Value {
        match self {
            Drawn::Agent(agent) => agent.schemas(),
            Drawn::Graph(graph) => graph.schemas.clone(),
        }
    }

    fn graph(&self, xray: bool) -> Value {
        match self {
            Drawn::Agent(agent) => agent.graph(),
            Drawn::Graph(graph) if xray => graph.graph_xray.clone(),
            Drawn::Graph(graph) => graph.graph.clone(),
        }
    }
}

/// An assistant's `config` and `context`, checked and kept in step as LangGraph keeps them:
/// `config.configurable` and `context` are the same values, so a client that reads either
/// finds them; giving both is refused. `None` for a field not given.
fn configured(
    config: Option<Value>,
    context: Option<Value>,
) -> ApiResult<(Option<Value>, Option<Value>)> {
    let config = object_or_absent("config", config)?;
    let context = object_or_absent("context", context)?;
    let configurable = match config.as_ref().and_then(|c| c.get("configurable")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) if c.is_empty() => None,
        Some(Value::Object(c)) => Some(Value::Object(c.clone())),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "config.configurable: expected an object, got {other}"
            )));
        }
    };
    let context_given = context.as_ref().and_then(Value::as_object).is_some_and(|c| !c.is_empty());
    match (configurable, context_given) {
        (Some(_), true) => Err(ApiError::invalid(
            "config.configurable and context: expected one of them, not both (prefer context)",
        )),
        (Some(values), false) => Ok((config, Some(values))),
        (None, true) => {
            let mut config = config.unwrap_or_else(|| Value::Object(Map::new()));
            config["configurable"] = context.clone().unwrap_or_default();
            Ok((Some(config), context))
        }
        (None, false) => Ok((config, context)),
    }
}

/// A `name` or `description`: any text but the NUL character, which PostgreSQL cannot store.
fn text(field: &str, value: Option<String>) -> ApiResult<Option<String>> {
    match value {
        Some(text) if text.contains('\0') => Err(ApiError::invalid(format!(
            "{field}: expected text without the NUL character (\\u0000)"
        ))),
        other => Ok(other),
    }
}

fn object_or_absent(field: &str, value: Option<Value>) -> ApiResult<Option<Value>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value)),
        Some(other) => Err(ApiError::invalid(format!("{field}: expected an object, got {other}"))),
    }
}

/// The caller's own assistant, to change: a system assistant is seen by everyone but changed
/// by no one (403); another user's is not found, exactly like a missing one (404).
async fn own(
    state: &AppState,
    context: &RequestContext,
    id_or_graph: &str,
) -> ApiResult<AssistantId> {
    Ok(own_assistant(state, context, id_or_graph).await?.assistant_id)
}

/// As [`own`], the assistant itself.
async fn own_assistant(
    state: &AppState,
    context: &RequestContext,
    id_or_graph: &str,
) -> ApiResult<Assistant> {
    let assistant = crate::refs::assistant(state, context, id_or_graph).await?;
    if assistant.owner_id.is_none() {
        return Err(ApiError::Forbidden(format!(
            "assistant {id_or_graph} is a built-in system assistant and cannot be changed or deleted; create your own with POST /assistants"
        )));
    }
    Ok(assistant)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CreateAssistant {
    /// A built-in graph: echo, synthetic or llm.
    graph_id: Option<String>,
    /// Choose the id (any UUID); a new UUIDv7 when absent.
    #[schema(value_type = Option<String>, format = Uuid)]
    assistant_id: Option<AssistantId>,
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    /// The graph's context (for llm: model, provider, system_prompt, ...).
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// `Untitled` when absent, as in LangGraph.
    name: Option<String>,
    description: Option<String>,
    if_exists: Option<IfExists>,
}

/// Create an assistant of a built-in graph; `if_exists: do_nothing` gives back the caller's
/// assistant of that id unchanged.
#[utoipa::path(post, path = "/assistants", tag = "assistants", request_body = CreateAssistant,
    responses((status = 200, body = AssistantOut), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_assistant(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<CreateAssistant>,
) -> ApiResult<Json<AssistantOut>> {
    let graph_id = body.graph_id.filter(|g| !g.is_empty()).ok_or_else(|| ApiError::Invalid {
        code: "missing_field",
        detail: "graph_id is required: a built-in graph such as `echo` or `llm`".into(),
    })?;
    let graph_id = graph_of(&state, &graph_id)?;
    let (config, run_context) = configured(body.config, body.context)?;
    let empty = || Value::Object(Map::new());
    let new = NewAssistant {
        assistant_id: body.assistant_id.unwrap_or_else(AssistantId::new),
        graph_id,
        name: text("name", body.name)?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Untitled".into()),
        description: text("description", body.description)?,
        config: config.unwrap_or_else(empty),
        context: run_context.unwrap_or_else(empty),
        metadata: body.metadata.unwrap_or_default(),
    };
    if state.engine.system_assistant(new.assistant_id).is_some() {
        return Err(ApiError::Conflict(format!("assistant {} already exists", new.assistant_id)));
    }
    let existing = body.if_exists.unwrap_or_default() == IfExists::DoNothing;
    let (assistant, _) = state.engine.create_assistant(context.user, &new, existing).await?;
    Ok(Json(assistant.into()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct PatchAssistant {
    graph_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// Merged into the current metadata, key by key.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    name: Option<String>,
    description: Option<String>,
}

/// Change an assistant: a new version, now the current one. Fields given replace the current
/// ones (an empty `config` keeps it); `metadata` is merged.
#[utoipa::path(patch, path = "/assistants/{assistant_id}", tag = "assistants", request_body = PatchAssistant,
    params(("assistant_id" = String, Path, format = Uuid)),
    responses((status = 200, body = AssistantOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn patch_assistant(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
    ApiJson(body): ApiJson<PatchAssistant>,
) -> ApiResult<Json<AssistantOut>> {
    let current = own_assistant(&state, &context, &assistant_id).await?;
    let id = current.assistant_id;
    let graph_id = match body.graph_id.filter(|g| !g.is_empty()) {
        Some(graph_id) => Some(graph_of(&state, &graph_id)?),
        None => None,
    };
    let context_only = body.config.is_none() && body.context.as_ref().is_some_and(Value::is_object);
    let (config, new_context) = configured(body.config, body.context)?;
    // The context alone: the current config stays, its `configurable` now the new context
    // (none when the context is emptied), so the two stay in step.
    let config = if context_only {
        let mut config = current.config.as_object().cloned().unwrap_or_default();
        match new_context.as_ref().and_then(Value::as_object).filter(|c| !c.is_empty()) {
            Some(values) => config.insert("configurable".into(), Value::Object(values.clone())),
            None => config.remove("configurable"),
        };
        Some(Value::Object(config))
    } else {
        // An empty config keeps the current one, as LangGraph does.
        config.filter(|c| c.as_object().is_some_and(|c| !c.is_empty()))
    };
    let patch = AssistantPatch {
        graph_id,
        name: text("name", body.name)?,
        description: text("description", body.description)?,
        config,
        context: new_context,
        metadata: body.metadata,
    };
    Ok(Json(state.engine.patch_assistant(context.user, id, &patch).await?.into()))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also delete the caller's threads whose `metadata.assistant_id` is this assistant.
    delete_threads: Option<bool>,
}

/// Delete an assistant and its versions; its threads and runs stay unless `delete_threads`.
#[utoipa::path(delete, path = "/assistants/{assistant_id}", tag = "assistants",
    params(("assistant_id" = String, Path, format = Uuid), DeleteQuery),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_assistant(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let id = own(&state, &context, &assistant_id).await?;
    let threads = q.delete_threads.unwrap_or(false);
    state.engine.delete_assistant(context.user, id, threads).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct ListVersions {
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// 1 to 1000; 10 by default.
    limit: Option<i64>,
    offset: Option<i64>,
}

/// An assistant's versions, newest first.
#[utoipa::path(post, path = "/assistants/{assistant_id}/versions", tag = "assistants", request_body = ListVersions,
    params(("assistant_id" = String, Path, format = Uuid)),
    responses((status = 200, body = Vec<AssistantVersionOut>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list_versions(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
    ApiJson(q): ApiJson<ListVersions>,
) -> ApiResult<Json<Vec<AssistantVersionOut>>> {
    let limit = super::limit(q.limit, 10)? as usize;
    let offset = super::offset(q.offset)? as usize;
    let assistant = crate::refs::assistant(&state, &context, &assistant_id).await?;
    let versions = state.engine.assistant_versions(context.user, assistant.assistant_id).await?;
    let wanted = Value::Object(q.metadata.unwrap_or_default());
    let page = versions
        .into_iter()
        .filter(|v| json_contains(&Value::Object(v.metadata.clone()), &wanted))
        .skip(offset)
        .take(limit)
        .map(AssistantVersionOut::from)
        .collect();
    Ok(Json(page))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SetLatest {
    /// The version to make current (from `/versions`).
    version: Option<i64>,
}

/// Make one of the assistant's versions the current one.
#[utoipa::path(post, path = "/assistants/{assistant_id}/latest", tag = "assistants", request_body = SetLatest,
    params(("assistant_id" = String, Path, format = Uuid)),
    responses((status = 200, body = AssistantOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_latest(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
    ApiJson(body): ApiJson<SetLatest>,
) -> ApiResult<Json<AssistantOut>> {
    let version = body.version.ok_or_else(|| ApiError::Invalid {
        code: "missing_field",
        detail: "version is required: one of the assistant's versions, such as 1".into(),
    })?;
    let id = own(&state, &context, &assistant_id).await?;
    let latest =
        state.engine.set_latest_assistant_version(context.user, id, version).await.map_err(
            |e| match e {
                domain::Error::NotFound { kind: "assistant version", .. } => ApiError::NotFound(
                    format!("version {version} not found for assistant {assistant_id}"),
                ),
                other => other.into(),
            },
        )?;
    Ok(Json(latest.into()))
}

/// What an assistant runs: a built-in agent or a user's graph.
async fn agent(state: &AppState, context: &RequestContext, id_or_graph: &str) -> ApiResult<Drawn> {
    let assistant = crate::refs::assistant(state, context, id_or_graph).await?;
    if let Some(graph) = state.engine.graph(&assistant.graph_id) {
        return Ok(Drawn::Graph(graph.clone()));
    }
    Agent::from_graph(&assistant.graph_id).map(Drawn::Agent).ok_or_else(|| {
        ApiError::invalid(format!("assistant {id_or_graph} has no agent on this server"))
    })
}

/// The JSON schemas of the assistant's graph: input, output, state, config and context.
#[utoipa::path(get, path = "/assistants/{assistant_id}/schemas", tag = "assistants",
    params(("assistant_id" = String, Path, description = "an assistant id, or a graph name such as `llm`")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_schemas(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(agent(&state, &context, &assistant_id).await?.schemas()))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct GraphQuery {
    /// true, false or a depth: how deep to draw subgraphs (the built-in graphs have none).
    xray: Option<String>,
}

/// The assistant's graph: its nodes and edges.
#[utoipa::path(get, path = "/assistants/{assistant_id}/graph", tag = "assistants",
    params(("assistant_id" = String, Path, description = "an assistant id, or a graph name"), GraphQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_graph(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
    ApiQuery(q): ApiQuery<GraphQuery>,
) -> ApiResult<Json<Value>> {
    if let Some(xray) = q.xray.as_deref()
        && !(matches!(xray, "true" | "false") || xray.parse::<u32>().is_ok())
    {
        return Err(ApiError::invalid(format!(
            "xray: expected true, false or a depth (0 or more), got `{xray}`"
        )));
    }
    let xray = q.xray.as_deref().is_some_and(|x| x != "false" && x != "0");
    Ok(Json(agent(&state, &context, &assistant_id).await?.graph(xray)))
}

/// The assistant's subgraphs by namespace (`recurse` changes nothing): none for the
/// built-in graphs.
#[utoipa::path(get, path = "/assistants/{assistant_id}/subgraphs", tag = "assistants",
    params(("assistant_id" = String, Path, description = "an assistant id, or a graph name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_subgraphs(
    State(state): State<AppState>,
    context: RequestContext,
    Path(assistant_id): Path<String>,
) -> ApiResult<Json<Value>> {
    agent(&state, &context, &assistant_id).await?;
    Ok(Json(Value::Object(Map::new())))
}

/// The assistant's subgraphs under a namespace: none for the built-in graphs.
#[utoipa::path(get, path = "/assistants/{assistant_id}/subgraphs/{namespace}", tag = "assistants",
    params(("assistant_id" = String, Path, description = "an assistant id, or a graph name"), ("namespace" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_subgraphs_in(
    State(state): State<AppState>,
    context: RequestContext,
    Path(path): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    agent(&state, &context, &path.0).await?;
    Ok(Json(Value::Object(Map::new())))
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
    /// assistant_id, graph_id, name (both without case), created_at or updated_at
    sort_by: Option<String>,
    #[schema(value_type = Option<String>)]
    sort_order: Option<SortOrder>,
    /// Only these fields of each assistant.
    select: Option<Vec<String>>,
}

fn matches(a: &Assistant, q: &SearchAssistants) -> bool {
    q.graph_id.as_ref().is_none_or(|g| *g == a.graph_id)
        && q.name.as_ref().is_none_or(|n| a.name.to_lowercase().contains(&n.to_lowercase()))
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
        "graph_id" => |a, b| a.graph_id.to_lowercase().cmp(&b.graph_id.to_lowercase()),
        "name" => |a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()),
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

/// One assistant (a system one or the caller's), by id or graph name.
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
