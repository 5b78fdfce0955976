//! Runs: create (background, streaming, waiting; on a thread or stateless), list, get,
//! delete, cancel, join and join-stream with `Last-Event-ID`.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{CancelAction, Run, RunStatus, is_terminal};
use engine::EndWatch;
use ids::{RunId, ThreadId, UserId};
use protocol::run_create::{OnDisconnect, OneOrMany, RunCreate};
use protocol::sse::{Cursor, Framer, StreamMode};
use protocol::wire::RunOut;
use serde::Deserialize;
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Credential;
use crate::context::{OwnedThread, RequestContext, ThreadKey, path_id};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody};
use crate::metrics::{self, Transport};
use crate::run_request::parse_modes;
use crate::run_responses::{headers, sse, sse_frame, wait};
use crate::stream::{credential_lapsed, unauthorized_data};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_run, list_runs))
        .routes(routes!(stream_run))
        .routes(routes!(wait_run))
        .routes(routes!(get_run, delete_run))
        .routes(routes!(cancel_run))
        .routes(routes!(join_run))
        .routes(routes!(join_stream))
        .routes(routes!(join_thread_stream))
        .routes(routes!(create_stateless))
        .routes(routes!(stream_stateless))
        .routes(routes!(wait_stateless))
}

/// Creates a run in the background; answers with the run.
async fn background(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    body: RunCreate,
    stateless: bool,
) -> ApiResult<Response> {
    let v = crate::run_request::validate(state, context, thread, body, stateless).await?;
    let run = crate::run_request::create(state, context, &v).await?;
    Ok((headers(&run, false), Json(RunOut::from(run))).into_response())
}

/// Creates a run and streams it. The live subscription is taken before the run exists, so
/// even a stateless run's thread, deleted when the run ends, loses nothing.
async fn streaming(
    state: &AppState,
    context: &RequestContext,
    credential: Option<Credential>,
    thread: ThreadId,
    body: RunCreate,
    stateless: bool,
) -> ApiResult<Response> {
    let v = crate::run_request::validate(state, context, thread, body, stateless).await?;
    let live = state.engine.hub().subscribe(thread);
    let run = crate::run_request::create(state, context, &v).await?;
    let credential = credential.unwrap_or(Credential::Local);
    Ok(sse(
        state,
        context.user,
        credential,
        run,
        v.modes,
        Cursor::START,
        v.on_disconnect,
        Some(live),
    ))
}

/// Creates a run and answers when it ends (subscribed to run ends before it exists).
async fn waiting(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    body: RunCreate,
    stateless: bool,
) -> ApiResult<Response> {
    let v = crate::run_request::validate(state, context, thread, body, stateless).await?;
    let end = state.engine.watch_end(v.start.new_run.run_id);
    let run = crate::run_request::create(state, context, &v).await?;
    Ok(wait(state, context.user, run, end, true))
}

/// The `{thread_id}` of the path, parsed (the thread may not exist yet: `if_not_exists`).
struct ThreadParam(ThreadId);

impl FromRequestParts<AppState> for ThreadParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let id: ThreadId = path_id(parts, "thread_id").await?;
        tracing::Span::current().record("thread_id", tracing::field::display(id));
        Ok(ThreadParam(id))
    }
}

/// The run `{run_id}` of the thread `{thread_id}`, loaded for its owner.
pub struct OwnedRun(pub Run);

impl FromRequestParts<AppState> for OwnedRun {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let OwnedThread(thread) = OwnedThread::from_request_parts(parts, state).await?;
        let context = RequestContext::from_request_parts(parts, state).await?;
        let run: RunId = path_id(parts, "run_id").await?;
        tracing::Span::current().record("run_id", tracing::field::display(run));
        Ok(OwnedRun(state.engine.get_run(context.user, thread.thread_id, run).await?))
    }
}

/// Create a run in the background.
#[utoipa::path(post, path = "/threads/{thread_id}/runs", tag = "runs", params(("thread_id" = String, Path, format = Uuid)),
    request_body = RunCreate,
    responses((status = 200, body = RunOut), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_run(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadParam(thread): ThreadParam,
    ApiJson(body): ApiJson<RunCreate>,
) -> ApiResult<Response> {
    background(&state, &context, thread, body, false).await
}

/// Create a run and stream its events (SSE).
#[utoipa::path(post, path = "/threads/{thread_id}/runs/stream", tag = "runs", params(("thread_id" = String, Path, format = Uuid)),
    request_body = RunCreate,
    responses((status = 200, content_type = "text/event-stream"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn stream_run(
    State(state): State<AppState>,
    context: RequestContext,
    credential: Option<Extension<Credential>>,
    ThreadParam(thread): ThreadParam,
    ApiJson(body): ApiJson<RunCreate>,
) -> ApiResult<Response> {
    streaming(&state, &context, credential.map(|c| c.0), thread, body, false).await
}

/// Create a run and answer with the thread's values when it ends.
#[utoipa::path(post, path = "/threads/{thread_id}/runs/wait", tag = "runs", params(("thread_id" = String, Path, format = Uuid)),
    request_body = RunCreate,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn wait_run(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadParam(thread): ThreadParam,
    ApiJson(body): ApiJson<RunCreate>,
) -> ApiResult<Response> {
    waiting(&state, &context, thread, body, false).await
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct ListRuns {
    /// 1 to 1000; 10 by default.
    limit: Option<i64>,
    offset: Option<i64>,
    #[param(value_type = Option<String>)]
    status: Option<RunStatus>,
}

/// The thread's runs, newest first.
#[utoipa::path(get, path = "/threads/{thread_id}/runs", tag = "runs", params(("thread_id" = String, Path, format = Uuid), ListRuns),
    responses((status = 200, body = Vec<RunOut>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list_runs(
    State(state): State<AppState>,
    context: RequestContext,
    ThreadKey(thread): ThreadKey,
    ApiQuery(q): ApiQuery<ListRuns>,
) -> ApiResult<Json<Vec<RunOut>>> {
    let limit = super::limit(q.limit, 10)?;
    let offset = super::offset(q.offset)?;
    let runs = state.engine.list_runs(context.user, thread, limit, offset, q.status).await?;
    Ok(Json(runs.into_iter().map(Into::into).collect()))
}

/// One run.
#[utoipa::path(get, path = "/threads/{thread_id}/runs/{run_id}", tag = "runs",
    params(("thread_id" = String, Path, format = Uuid), ("run_id" = String, Path, format = Uuid)),
    responses((status = 200, body = RunOut), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_run(OwnedRun(run): OwnedRun) -> Json<RunOut> {
    Json(run.into())
}

/// Delete a finished run.
#[utoipa::path(delete, path = "/threads/{thread_id}/runs/{run_id}", tag = "runs",
    params(("thread_id" = String, Path, format = Uuid), ("run_id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_run(
    State(state): State<AppState>,
    context: RequestContext,
    OwnedRun(run): OwnedRun,
) -> ApiResult<StatusCode> {
    state.engine.delete_run(context.user, run.thread_id, run.run_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct CancelQuery {
    /// 1 (or true): answer only once the run has ended.
    wait: Option<String>,
    /// `interrupt` (default: keep what the run wrote) or `rollback` (delete the run and undo it).
    action: Option<String>,
}

/// Cancel a run.
#[utoipa::path(post, path = "/threads/{thread_id}/runs/{run_id}/cancel", tag = "runs",
    params(("thread_id" = String, Path, format = Uuid), ("run_id" = String, Path, format = Uuid), CancelQuery),
    responses((status = 202), (status = 200), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn cancel_run(
    State(state): State<AppState>,
    context: RequestContext,
    OwnedRun(run): OwnedRun,
    ApiQuery(q): ApiQuery<CancelQuery>,
) -> ApiResult<Response> {
    let action = match q.action.as_deref() {
        None | Some("interrupt") => CancelAction::Interrupt,
        Some("rollback") => CancelAction::Rollback,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "action: expected interrupt or rollback, got `{other}`"
            )));
        }
    };
    let wait = match q.wait.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!("wait: expected 0 or 1, got `{other}`")));
        }
    };
    let mut end = state.engine.watch_end(run.run_id);
    if run.status.is_active() {
        state.engine.cancel_run(context.user, &run, action).await?;
    }
    if wait {
        wait_until_ended(&state, context.user, &run, &mut end).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Waits until `run` is no longer active (or gone).
async fn wait_until_ended(
    state: &AppState,
    owner: UserId,
    run: &Run,
    end: &mut EndWatch,
) -> ApiResult<()> {
    loop {
        match state.engine.get_run(owner, run.thread_id, run.run_id).await {
            Ok(r) if r.status.is_active() => {}
            Ok(_) | Err(domain::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Woken by the run's end here; polled for an end on another node.
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), end.ended()).await {
            return Ok(());
        }
    }
}

/// Wait for a run to end; answer with the thread's values.
#[utoipa::path(get, path = "/threads/{thread_id}/runs/{run_id}/join", tag = "runs",
    params(("thread_id" = String, Path, format = Uuid), ("run_id" = String, Path, format = Uuid)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn join_run(
    State(state): State<AppState>,
    context: RequestContext,
    OwnedRun(run): OwnedRun,
) -> Response {
    let end = state.engine.watch_end(run.run_id);
    wait(&state, context.user, run, end, false)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct JoinStreamQuery {
    /// The modes to stream; the run's own by default.
    #[param(value_type = Option<Vec<String>>)]
    stream_mode: Option<OneOrMany>,
    #[param(value_type = Option<String>)]
    cancel_on_disconnect: Option<bool>,
    /// Alternative to the `Last-Event-ID` header.
    last_event_id: Option<String>,
}

/// Join a run's event stream (SSE), resuming after `Last-Event-ID` (`-1`: from the start).
#[utoipa::path(get, path = "/threads/{thread_id}/runs/{run_id}/stream", tag = "runs",
    params(("thread_id" = String, Path, format = Uuid), ("run_id" = String, Path, format = Uuid), JoinStreamQuery),
    responses((status = 200, content_type = "text/event-stream"), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn join_stream(
    State(state): State<AppState>,
    context: RequestContext,
    credential: Option<Extension<Credential>>,
    OwnedRun(run): OwnedRun,
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
    request_headers: HeaderMap,
) -> ApiResult<Response> {
    // The SDKs repeat `stream_mode` for a list and send it empty for "the run's own".
    let values = |key: &str| query_values(&query, key);
    let modes = query_modes(&query)?.unwrap_or_else(|| run_modes(&run));
    let last = request_headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| values("last_event_id").pop());
    let cancel_on_disconnect = values("cancel_on_disconnect").pop();
    let cursor = match last {
        Some(text) => Cursor::parse(&text).map_err(ApiError::invalid)?,
        None => Cursor::START,
    };
    let on_disconnect = if matches!(cancel_on_disconnect.as_deref(), Some("true" | "1")) {
        OnDisconnect::Cancel
    } else {
        OnDisconnect::Continue
    };
    let credential = credential.map_or(Credential::Local, |c| c.0);
    Ok(sse(&state, context.user, credential, run, modes, cursor, on_disconnect, None))
}

/// The non-empty values of a query key, in order (the SDKs repeat a key for a list).
fn query_values(query: &[(String, String)], key: &str) -> Vec<String> {
    query.iter().filter(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.clone()).collect()
}

/// The `stream_mode`s a join asks for; `None` when it asks for none (an empty value included).
fn query_modes(query: &[(String, String)]) -> ApiResult<Option<Vec<StreamMode>>> {
    let requested = query_values(query, "stream_mode");
    if requested.is_empty() {
        return Ok(None);
    }
    parse_modes(Some(OneOrMany::Many(requested))).map(Some)
}

fn run_modes(run: &Run) -> Vec<StreamMode> {
    let spec = domain::RunSpec::of(&run.kwargs);
    let modes: Vec<StreamMode> =
        spec.stream_mode.iter().filter_map(|n| StreamMode::parse(n).ok()).collect();
    if modes.is_empty() { vec![StreamMode::Values] } else { modes }
}

/// Create a run on a new temporary thread, in the background.
#[utoipa::path(post, path = "/runs", tag = "stateless runs", request_body = RunCreate,
    responses((status = 200, body = RunOut), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_stateless(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<RunCreate>,
) -> ApiResult<Response> {
    background(&state, &context, ThreadId::new(), body, true).await
}

/// Create a run on a new temporary thread and stream it (SSE).
#[utoipa::path(post, path = "/runs/stream", tag = "stateless runs", request_body = RunCreate,
    responses((status = 200, content_type = "text/event-stream"), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn stream_stateless(
    State(state): State<AppState>,
    context: RequestContext,
    credential: Option<Extension<Credential>>,
    ApiJson(body): ApiJson<RunCreate>,
) -> ApiResult<Response> {
    streaming(&state, &context, credential.map(|c| c.0), ThreadId::new(), body, true).await
}

/// Create a run on a new temporary thread and answer with its final values.
#[utoipa::path(post, path = "/runs/wait", tag = "stateless runs", request_body = RunCreate,
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn wait_stateless(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<RunCreate>,
) -> ApiResult<Response> {
    waiting(&state, &context, ThreadId::new(), body, true).await
}

/// Join a thread's stream (SSE): the events of every run of the thread, live, in the
/// requested modes (`values` by default), resuming after `Last-Event-ID`. It stays open until
/// the client leaves; runs ending do not end it.
#[utoipa::path(get, path = "/threads/{thread_id}/stream", tag = "runs",
    params(("thread_id" = String, Path, format = Uuid), JoinStreamQuery),
    responses((status = 200, content_type = "text/event-stream"), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn join_thread_stream(
    State(state): State<AppState>,
    context: RequestContext,
    credential: Option<Extension<Credential>>,
    OwnedThread(thread): OwnedThread,
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
    request_headers: HeaderMap,
) -> ApiResult<Response> {
    let modes = query_modes(&query)?.unwrap_or_else(|| vec![StreamMode::Values]);
    let last = request_headers.get("last-event-id").and_then(|v| v.to_str().ok());
    // Without a cursor, from now on; with one, after it.
    let cursor = match last {
        Some(text) => Cursor::parse(text).map_err(ApiError::invalid)?,
        None => Cursor { seq: thread.last_seq, frame: u32::MAX },
    };
    let (tx, body) = crate::stream::outbox(&state.http.sse, state.sse.clone());
    let (state, owner, thread_id) = (state.clone(), context.user, thread.thread_id);
    let credential = credential.map_or(Credential::Local, |c| c.0);
    tokio::spawn(
        async move {
            let mut events =
                state.engine.events(owner, thread_id, None, 0.max(cursor.seq - 1), None);
            let mut framers: std::collections::HashMap<Option<RunId>, Framer> =
                std::collections::HashMap::new();
            let every = state.auth.key_recheck();
            let lapsed = credential_lapsed(&state.auth, &state.engine, &credential, every);
            tokio::pin!(lapsed);
            loop {
                let next = tokio::select! {
                    e = events.recv() => e,
                    () = tx.closed() => return,
                    why = &mut lapsed => {
                        let data = unauthorized_data(&why);
                        let _ = tx.send(sse_frame("error", &data.to_string(), None)).await;
                        return;
                    }
                };
                let event = match next {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        let data = crate::stream::ended_data(&e);
                        let _ = tx.send(sse_frame("error", &data.to_string(), None)).await;
                        return;
                    }
                    None => return,
                };
                let run_id = event.run_id.unwrap_or_else(RunId::new);
                let framer = framers
                    .entry(event.run_id)
                    .or_insert_with(|| Framer::new(modes.clone(), run_id, thread_id));
                let mut sent = false;
                for (k, frame) in framer.frames(&event).into_iter().enumerate() {
                    if frame.event == "end" || !Framer::after(cursor, event.seq, k as u32) {
                        continue;
                    }
                    let data = if frame.data.is_null() {
                        "null".to_owned()
                    } else {
                        frame.data.to_string()
                    };
                    if tx.send(sse_frame(&frame.event, &data, Some(&frame.id))).await.is_err() {
                        return;
                    }
                    sent = true;
                }
                if sent {
                    metrics::event_delivered(Transport::Sse, event.created_at);
                }
                if is_terminal(&event) {
                    framers.remove(&event.run_id);
                }
            }
        }
        .in_current_span(),
    );
    let mut response = Body::from_stream(body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(response)
}
