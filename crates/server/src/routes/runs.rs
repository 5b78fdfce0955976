//! Runs: create (background, streaming, waiting; on a thread or stateless), list, get,
//! delete, cancel, join and join-stream with `Last-Event-ID`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use store::{IfNotExists, MultitaskStrategy, NewRun, Run, RunStatus, ThreadStatus};
use tokio::sync::mpsc;
use tracing::Instrument;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Credential;
use crate::context::{OwnedThread, RequestContext, ThreadKey, path_id};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody, REQUEST_ID};
use crate::hub::Live;
use crate::metrics::{self, LookupFailure, Transport};
use crate::runs::{CancelAction, EndWatch, Finished};
use crate::stream::{
    Cursor, Framer, Outbox, StreamMode, credential_lapsed, is_terminal, unauthorized_data,
};
use crate::wire::{Pending, RunOut};
use agents::Agent;

/// How often a waiting response writes a newline, and a stream a heartbeat comment.
const HEARTBEAT: Duration = Duration::from_secs(5);

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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IfNotExistsField {
    #[default]
    Reject,
    Create,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    Cancel,
    #[default]
    Continue,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnCompletion {
    #[default]
    Delete,
    Keep,
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
    assistant_id: Option<String>,
    /// The input, e.g. `{"messages": [{"role": "user", "content": "hi"}]}`.
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// `values` (default), `updates`, `messages-tuple`, `messages`, `custom`, `events`, `debug`.
    #[schema(value_type = Option<Vec<String>>)]
    stream_mode: Option<OneOrMany>,
    stream_subgraphs: Option<bool>,
    stream_resumable: Option<bool>,
    #[schema(value_type = Option<String>)]
    multitask_strategy: Option<MultitaskStrategy>,
    if_not_exists: Option<IfNotExistsField>,
    on_disconnect: Option<OnDisconnect>,
    /// Stateless runs only: delete the temporary thread when the run ends (default) or keep it.
    on_completion: Option<OnCompletion>,
    durability: Option<String>,
    feedback_keys: Option<Vec<String>>,
    checkpoint_during: Option<bool>,
    /// Resumes an interrupted thread: `{"resume": value}` (or a map of interrupt id to value),
    /// `update` (applied first), `goto` (`"__end__"` to answer without running the agent).
    #[schema(value_type = Option<Object>)]
    command: Option<Value>,
    webhook: Option<String>,
    after_seconds: Option<f64>,
    #[schema(value_type = Option<Object>)]
    interrupt_before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    interrupt_after: Option<Value>,
    #[schema(value_type = Option<Object>)]
    checkpoint: Option<Value>,
    checkpoint_id: Option<String>,
}

/// A run request that passed validation.
#[derive(Clone)]
struct Validated {
    new_run: NewRun,
    if_not_exists: IfNotExists,
    modes: Vec<StreamMode>,
    on_disconnect: OnDisconnect,
    /// A run on a new temporary thread (`/runs...`).
    stateless: bool,
}

fn unsupported(field: &str) -> ApiError {
    ApiError::unsupported(field)
}

pub fn parse_modes(field: Option<OneOrMany>) -> ApiResult<Vec<StreamMode>> {
    let names = match field {
        None => vec!["values".to_owned()],
        Some(OneOrMany::One(name)) => vec![name],
        Some(OneOrMany::Many(names)) => names,
    };
    let mut modes = Vec::new();
    for name in &names {
        let mode = StreamMode::parse(name).map_err(|detail| ApiError::Invalid {
            code: "invalid_stream_mode",
            detail: format!("stream_mode: {detail}"),
        })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    Ok(modes)
}

/// A run from a checkpoint (`checkpoint: {checkpoint_id, checkpoint_ns, checkpoint_map}` or
/// `checkpoint_id`, as the SDKs send them): the thread's head checkpoint continues the thread,
/// as a run without one does (chat UIs send the head with every message after the first), and
/// gives `None`; an older checkpoint of the thread is a fork (regenerate, edit), given back;
/// a checkpoint of another thread or user, or of a thread that does not exist yet, is a 404
/// like any foreign id.
async fn check_checkpoint(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    body: &RunCreate,
    stateless: bool,
) -> ApiResult<Option<CheckpointId>> {
    let id = match super::state::checkpoint_id("checkpoint", body.checkpoint.as_ref())? {
        Some(id) => Some(id),
        None => match body.checkpoint_id.as_deref() {
            None | Some("") => None,
            Some(text) => super::state::checkpoint_id("checkpoint_id", Some(&json!(text)))?,
        },
    };
    let Some(id) = id else { return Ok(None) };
    super::state::check_namespace(body.checkpoint.as_ref())?;
    let not_found = || ApiError::NotFound(format!("checkpoint {id} not found in thread {thread}"));
    if stateless {
        return Err(not_found());
    }
    let head = match state.store.list_checkpoints(context.user, thread, 1, None).await {
        Ok(head) => head,
        Err(store::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if head.first().is_some_and(|c| c.checkpoint_id == id) {
        return Ok(None);
    }
    match state.store.get_checkpoint(context.user, thread, id).await {
        Ok(_) => Ok(Some(id)),
        Err(store::Error::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// `interrupt_before` / `interrupt_after`: `"*"` or a list of node names (the built-in agents
/// have one node each, named like the agent; other names are accepted and never met, as in
/// LangGraph).
fn check_nodes(field: &str, value: &Option<Value>) -> ApiResult<Option<Value>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(all)) if all == "*" => Ok(Some(json!("*"))),
        Some(Value::Array(nodes)) if nodes.iter().all(Value::is_string) => {
            Ok((!nodes.is_empty()).then(|| Value::Array(nodes.clone())))
        }
        Some(other) => Err(ApiError::invalid(format!(
            "{field}: expected \"*\" or a list of node names such as [\"echo\"], got {other}"
        ))),
    }
}

/// The deepest an interrupt value may nest: the store keeps at most 127 levels, and the value
/// sits 4 levels down in a checkpoint's metadata and in its event.
const MAX_INTERRUPT_DEPTH: usize = 120;

/// How deeply a JSON value nests (a scalar is 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// A `command` (`{resume, update, goto}`): resumes an interrupted thread. Refused with a 4xx
/// that says why, before anything is stored: on a stateless run (422; LangGraph says 400), a
/// resume of a thread that is not interrupted (409; LangGraph accepts it and does nothing), a
/// resume map naming an interrupt that is not pending (409), a `goto` to a node the agent does
/// not have, an `update` that is not a valid state update (422). A thread that is busy is
/// checked when the run starts (it may be interrupted by then).
async fn check_command(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    command: &Value,
    stateless: bool,
    agent: Agent,
) -> ApiResult<()> {
    let Some(fields) = command.as_object() else {
        return Err(ApiError::invalid(format!(
            "command: expected an object with resume, update or goto, got {command}"
        )));
    };
    if stateless {
        return Err(ApiError::Invalid {
            code: "thread_required",
            detail: "You must provide a thread_id when resuming: a stateless run has no interrupted state".into(),
        });
    }
    if let Some(goto) = fields.get("goto").filter(|g| !g.is_null()) {
        let known = |node: &Value| node == "__end__" || node.as_str() == Some(agent.name());
        let fine = match goto {
            Value::Array(nodes) => nodes.len() == 1 && known(&nodes[0]),
            node => known(node),
        };
        match fine {
            true => {}
            false => {
                return Err(ApiError::invalid(format!(
                    "command.goto: expected \"{}\" or \"__end__\" (the nodes of agent {}), got {}",
                    agent.name(),
                    agent.name(),
                    fields["goto"]
                )));
            }
        }
    }
    if let Some(update) = fields.get("update").filter(|u| !u.is_null()) {
        crate::wire::apply_update(None, update.clone())
            .map_err(|e| ApiError::invalid(format!("command.update: {e}")))?;
    }
    let found = match state.store.get_thread(context.user, thread).await {
        Ok(found) => found,
        Err(store::Error::NotFound { .. }) => {
            return Err(ApiError::NotFound(format!(
                "thread {thread} not found: nothing to resume"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if found.status == ThreadStatus::Busy {
        return Ok(());
    }
    // Waiting is the newest checkpoint's: an interrupt, a breakpoint, or a run that stopped
    // before its agent answered (cancelled, failed) has a pending task to resume.
    let head = state.store.list_checkpoints(context.user, thread, 1, None).await?;
    if head.is_empty() {
        return Err(ApiError::Conflict(format!(
            "thread {thread} is not interrupted: it has no state yet, nothing to resume (send input first)"
        )));
    }
    let Some(resume) = fields.get("resume") else { return Ok(()) };
    let pending = head.first().and_then(|c| Pending::of(&c.metadata)).unwrap_or_default();
    if !pending.next.iter().any(|n| n == agent.name()) {
        return Err(ApiError::Conflict(format!(
            "thread {thread} is not interrupted (it is {}): nothing to resume",
            found.status
        )));
    }
    crate::runs::resume_value(resume, &pending)
        .map(drop)
        .map_err(|why| ApiError::Conflict(format!("command.resume: {why} (thread {thread})")))
}

async fn validate(
    state: &AppState,
    context: &RequestContext,
    thread_id: ThreadId,
    body: RunCreate,
    stateless: bool,
) -> ApiResult<Validated> {
    if body.webhook.as_deref().is_some_and(|w| !w.is_empty()) {
        return Err(unsupported("webhook"));
    }
    if body.after_seconds.is_some_and(|s| s > 0.0) {
        return Err(unsupported("after_seconds"));
    }
    let interrupt_before = check_nodes("interrupt_before", &body.interrupt_before)?;
    let interrupt_after = check_nodes("interrupt_after", &body.interrupt_after)?;
    let fork = check_checkpoint(state, context, thread_id, &body, stateless).await?;
    if let Some(durability) = body.durability.as_deref()
        && !matches!(durability, "sync" | "async" | "exit")
    {
        return Err(ApiError::invalid(format!(
            "durability: expected sync, async or exit, got `{durability}`"
        )));
    }
    if let Some(input) = &body.input
        && !input.is_object()
        && !input.is_null()
    {
        return Err(ApiError::invalid("input: expected an object such as {\"messages\": [...]}"));
    }
    let modes = parse_modes(body.stream_mode)?;
    let assistant_ref =
        body.assistant_id.filter(|a| !a.is_empty()).ok_or_else(|| ApiError::Invalid {
            code: "missing_field",
            detail: "assistant_id is required: an assistant id or a graph name such as `echo`"
                .into(),
        })?;
    let assistant = super::assistants::resolve(state, context, &assistant_ref).await?;
    let agent = Agent::from_graph(&assistant.graph_id).ok_or_else(|| {
        ApiError::invalid(format!("assistant {assistant_ref} has no agent on this server"))
    })?;
    let command = body.command.filter(|c| !c.is_null());
    if let Some(command) = &command {
        check_command(state, context, thread_id, command, stateless, agent).await?;
        if fork.is_some() {
            return Err(unsupported(
                "a command with an older checkpoint than the thread's newest (resume from the newest)",
            ));
        }
    }
    // An interrupt value is stored a few levels deeper than the input (in the checkpoint's
    // pending task): one the store could not keep is refused now, not by a failed run.
    if let Some(value) = body.input.as_ref().and_then(|i| agent.interrupt_value(i))
        && depth(&value) > MAX_INTERRUPT_DEPTH
    {
        return Err(ApiError::invalid(format!(
            "input.interrupt: nested deeper than {MAX_INTERRUPT_DEPTH} levels"
        )));
    }
    // Check the messages now so a bad input is a 422, not a failed run.
    if let Some(input) = &body.input {
        crate::wire::apply_update(None, input.clone())
            .map_err(|e| ApiError::invalid(format!("input.{e}")))?;
    }
    let on_completion = if stateless { Some(body.on_completion.unwrap_or_default()) } else { None };
    let on_disconnect = body.on_disconnect.unwrap_or_default();
    let mut kwargs = json!({
        "graph_id": agent.name(),
        "input": body.input,
        "config": body.config.unwrap_or_else(|| json!({})),
        "context": body.context.unwrap_or_else(|| json!({})),
        "stream_mode": modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "stream_subgraphs": body.stream_subgraphs.unwrap_or(false),
        "stream_resumable": body.stream_resumable.unwrap_or(false),
        "on_disconnect": on_disconnect,
        "on_completion": on_completion,
        "durability": body.durability,
        "feedback_keys": body.feedback_keys,
    });
    // What the executor reads besides the input (see `runs::drive`).
    if let Some(fields) = kwargs.as_object_mut() {
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                fields.insert(key.into(), value);
            }
        };
        set("command", command);
        set("checkpoint_id", fork.map(|id| json!(id)));
        set("interrupt_before", interrupt_before);
        set("interrupt_after", interrupt_after);
    }
    let mut thread_metadata = Map::new();
    thread_metadata.insert("graph_id".into(), agent.name().into());
    thread_metadata.insert("assistant_id".into(), assistant.assistant_id.to_string().into());
    let new_run = NewRun {
        run_id: RunId::new(),
        thread_id,
        assistant_id: assistant.assistant_id,
        input: body.input,
        kwargs,
        metadata: body.metadata.unwrap_or_default(),
        multitask_strategy: body.multitask_strategy.unwrap_or(MultitaskStrategy::Enqueue),
        thread_metadata,
    };
    let if_not_exists = match (stateless, body.if_not_exists.unwrap_or_default()) {
        (true, _) | (false, IfNotExistsField::Create) => IfNotExists::Create,
        (false, IfNotExistsField::Reject) => IfNotExists::Reject,
    };
    Ok(Validated { new_run, if_not_exists, modes, on_disconnect, stateless })
}

/// Creates the run and tells the executor (and, for `interrupt`/`rollback`, the runs it
/// replaces).
async fn create(state: &AppState, context: &RequestContext, v: &Validated) -> ApiResult<Run> {
    let span = tracing::Span::current();
    span.record("run_id", tracing::field::display(v.new_run.run_id));
    span.record("thread_id", tracing::field::display(v.new_run.thread_id));
    // In a task of its own: a run committed claimed must reach the executor even if the client
    // goes away meanwhile (dropping this request's future).
    let (state, context, v) = (state.clone(), context.clone(), v.clone());
    let request_id = context.request_id;
    let task = REQUEST_ID.scope(request_id, async move { create_now(&state, &context, &v).await });
    tokio::spawn(task.in_current_span())
        .await
        .map_err(|e| ApiError::Internal(format!("creating the run failed: {e}")))?
}

async fn create_now(state: &AppState, context: &RequestContext, v: &Validated) -> ApiResult<Run> {
    let thread = v.new_run.thread_id;
    // Whether this creates the thread (for the metrics): a stateless run's always; with
    // `if_not_exists=create`, when the caller has no such thread yet (asked on that path only).
    let new_thread = match v.if_not_exists {
        IfNotExists::Create if v.stateless => true,
        IfNotExists::Create => matches!(
            state.store.get_thread(context.user, thread).await,
            Err(store::Error::NotFound { .. })
        ),
        IfNotExists::Reject => false,
    };
    // With a free place on this node, the run is claimed as it is created and starts at once
    // (if its thread has no run before it); otherwise the executor claims it in turn.
    // Its first step (the input applied) then commits with it, in the same transaction.
    let new_run = &v.new_run;
    let place = state.executor.try_reserve(new_run.run_id, thread, context.user);
    // A `command` resumes the thread's state: the executor reads it first (no first step).
    let resumes = new_run.kwargs.get("command").is_some();
    let first = place.as_ref().filter(|_| !resumes).and_then(|_| {
        crate::runs::first_step(
            new_run.run_id,
            new_run.assistant_id,
            &new_run.kwargs,
            new_run.input.as_ref(),
        )
        .ok()
    });
    let created = match first {
        Some(first) => {
            state.store.create_run_claiming(context.user, new_run, v.if_not_exists, first).await
        }
        None => state
            .store
            .create_run_replacing(context.user, new_run, v.if_not_exists)
            .await
            .map(|(run, replaced)| (run, replaced, None)),
    };
    let (run, replaced, step) = match created {
        Ok(created) => created,
        Err(e) => {
            thread_failure(state, context, v, &e).await;
            return Err(e.into());
        }
    };
    // A claimed run goes to the executor first thing.
    match place {
        Some(place) if run.status == RunStatus::Running => {
            // Published before the executor can emit anything after them.
            let started = step.and_then(|step| {
                state.hub.publish(context.user, &step.events);
                step.checkpoint.map(|c| c.values)
            });
            state.executor.spawn_claimed(run.clone(), place, started);
        }
        _ => state.executor.wake(),
    }
    if new_thread {
        metrics::thread_created();
    }
    metrics::run_created();
    let action = match run.multitask_strategy {
        MultitaskStrategy::Interrupt => Some(CancelAction::Interrupt),
        MultitaskStrategy::Rollback => Some(CancelAction::Rollback),
        _ => None,
    };
    if let Some(action) = action {
        state.executor.cancel_thread(run.thread_id, run.run_id, action);
        for old in replaced {
            if let Err(e) =
                state.executor.announce_cancelled(context.user, run.thread_id, old, action).await
            {
                tracing::warn!(error = %e, run_id = %old, "could not announce a replaced run's end");
            }
        }
    }
    Ok(run)
}

/// Starts a run for the WebSocket channel exactly as `POST /threads/{thread_id}/runs` does;
/// `new_thread` creates the thread with the run (the channel's `run` without a thread id).
pub async fn start(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    new_thread: bool,
    body: RunCreate,
) -> ApiResult<Run> {
    let mut v = validate(state, context, thread, body, false).await?;
    if v.on_disconnect == OnDisconnect::Cancel {
        return Err(unsupported("on_disconnect `cancel` over the WebSocket channel"));
    }
    if new_thread {
        v.if_not_exists = IfNotExists::Create;
    }
    create(state, context, &v).await
}

/// Counts a run refused because its thread is missing or another user's (the client's answer
/// is unchanged: 404, or 409 for `if_not_exists=create` on another user's id).
async fn thread_failure(
    state: &AppState,
    context: &RequestContext,
    v: &Validated,
    e: &store::Error,
) {
    let thread = v.new_run.thread_id;
    match e {
        store::Error::NotFound { .. } => {
            crate::context::thread_not_found(&state.store, context.user, thread).await;
        }
        store::Error::Conflict(_) if v.if_not_exists == IfNotExists::Create => {
            if let Ok(Some(owner)) = state.store.admin_thread_owner(thread).await
                && owner != context.user
            {
                metrics::thread_lookup_failed(LookupFailure::NotOwner);
                tracing::info!(reason = "not_owner", "thread id taken by another user");
            }
        }
        _ => {}
    }
}

/// Creates a run in the background; answers with the run.
async fn background(
    state: &AppState,
    context: &RequestContext,
    thread: ThreadId,
    body: RunCreate,
    stateless: bool,
) -> ApiResult<Response> {
    let v = validate(state, context, thread, body, stateless).await?;
    let run = create(state, context, &v).await?;
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
    let v = validate(state, context, thread, body, stateless).await?;
    let live = state.hub.subscribe(thread);
    let run = create(state, context, &v).await?;
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
    let v = validate(state, context, thread, body, stateless).await?;
    let end = state.executor.watch_end(v.new_run.run_id);
    let run = create(state, context, &v).await?;
    Ok(wait(state, context.user, run, end, true))
}

fn location(run: &Run) -> String {
    format!("/threads/{}/runs/{}", run.thread_id, run.run_id)
}

fn headers(run: &Run, stream: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&location(run)) {
        headers.insert(header::CONTENT_LOCATION, v);
    }
    if stream && let Ok(v) = HeaderValue::from_str(&format!("{}/stream", location(run))) {
        headers.insert(header::LOCATION, v);
    }
    headers
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
        Ok(OwnedRun(state.store.get_run(context.user, thread.thread_id, run).await?))
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
    let runs = state.store.list_runs(context.user, thread, limit, offset, q.status).await?;
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
    state.store.delete_run(context.user, run.thread_id, run.run_id).await?;
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
    let mut end = state.executor.watch_end(run.run_id);
    if run.status.is_active() {
        state.executor.cancel_run(context.user, &run, action).await?;
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
        match state.store.get_run(owner, run.thread_id, run.run_id).await {
            Ok(r) if r.status.is_active() => {}
            Ok(_) | Err(store::Error::NotFound { .. }) => return Ok(()),
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
    let end = state.executor.watch_end(run.run_id);
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
    let names = run.kwargs.get("stream_mode").and_then(Value::as_array);
    let modes: Vec<StreamMode> = names
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .filter_map(|n| StreamMode::parse(n).ok())
        .collect();
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

/// The body of `/wait` and `/join`: a newline every [`HEARTBEAT`] while the run is active, then
/// the thread's values (or `{"__error__": ...}`). `fresh`: `end` was watched before the run was
/// created, so its end cannot have passed unseen and the store need not be asked first.
fn wait(state: &AppState, owner: UserId, run: Run, mut end: EndWatch, fresh: bool) -> Response {
    let state = state.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let response_headers = headers(&run, false);
    tokio::spawn(async move {
        let mut ask_store = !fresh;
        let result = loop {
            // The run may have ended before this waiter watched it, or on another node: the
            // store knows (at the start of a join, and after every heartbeat).
            if ask_store {
                match state.store.get_run(owner, run.thread_id, run.run_id).await {
                    Ok(r) if !r.status.is_active() => break final_body(&state, owner, &r).await,
                    Ok(_) => {}
                    // Gone: a stateless run whose thread was deleted when it ended (its end is
                    // waiting in `end`), or a rolled-back run.
                    Err(store::Error::NotFound { .. }) => {
                        break ended_body(end.try_ended()).unwrap_or(json!({}));
                    }
                    Err(e) => {
                        break json!({ "__error__": { "error": "StoreError", "message": e.to_string() } });
                    }
                }
            }
            ask_store = true;
            let ended = tokio::select! {
                f = end.ended() => f,
                () = tokio::time::sleep(HEARTBEAT) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                    None
                }
            };
            if let Some(body) = ended_body(ended) {
                break body;
            }
        };
        let _ = tx.send(Bytes::from(result.to_string())).await;
    }.in_current_span());
    let body = Body::from_stream(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut response = (response_headers, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer for a run's announced end.
fn ended_body(ended: Option<Finished>) -> Option<Value> {
    let f = ended?;
    Some(match (f.error, f.values) {
        (Some((error, message)), _) => {
            json!({ "__error__": { "error": error, "message": message } })
        }
        (None, values) => values.unwrap_or_else(|| json!({})),
    })
}

/// The answer for a run that has ended, read from the store.
async fn final_body(state: &AppState, owner: UserId, run: &Run) -> Value {
    if matches!(run.status, RunStatus::Error | RunStatus::Timeout) {
        let error = if run.status == RunStatus::Timeout { "TimeoutError" } else { "RunError" };
        return json!({ "__error__": { "error": error, "message": run.error.clone().unwrap_or_default() } });
    }
    let Ok(thread) = state.store.get_thread(owner, run.thread_id).await else { return json!({}) };
    let interrupted = thread.status == ThreadStatus::Interrupted;
    let mut values = thread.values.unwrap_or_else(|| json!({}));
    // As `runs/wait` answers a run that stopped on an interrupt: `__interrupt__` beside them.
    if interrupted
        && let Ok(head) = state.store.list_checkpoints(owner, run.thread_id, 1, None).await
        && let Some(pending) = head.first().and_then(|c| Pending::of(&c.metadata))
        && !pending.interrupts.is_empty()
        && let Some(map) = values.as_object_mut()
    {
        map.insert("__interrupt__".into(), pending.shown());
    }
    values
}

/// An SSE response with the run's events in `modes`, after `cursor`: `metadata` first, then
/// the frames, heartbeats every [`HEARTBEAT`], and `end` when the run ends.
#[allow(clippy::too_many_arguments, reason = "the stream's whole description")]
fn sse(
    state: &AppState,
    owner: UserId,
    credential: Credential,
    run: Run,
    modes: Vec<StreamMode>,
    cursor: Cursor,
    on_disconnect: OnDisconnect,
    early: Option<Live>,
) -> Response {
    let response_headers = headers(&run, true);
    let (tx, body) = crate::stream::outbox(&state.http.sse, state.hub.sse_stats());
    let state = state.clone();
    tokio::spawn(async move {
        // `metadata` opens a stream; a resumed stream goes on after the client's last frame.
        let metadata = json!({ "run_id": run.run_id, "thread_id": run.thread_id, "attempt": 1 });
        let first = sse_frame("metadata", &metadata.to_string(), Some("0"));
        let delivered = (cursor != Cursor::START || tx.send(first).await.is_ok())
            && follow(&state, owner, &credential, &run, modes, cursor, &tx, early).await;
        if !delivered && on_disconnect == OnDisconnect::Cancel {
            tracing::info!(run_id = %run.run_id, "client went away: cancelling the run (on_disconnect=cancel)");
            if let Err(e) = state.executor.cancel_run(owner, &run, CancelAction::Interrupt).await {
                tracing::warn!(error = %e, "could not cancel the run");
            }
        }
    }.in_current_span());
    let mut response = (response_headers, Body::from_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One SSE frame as text. Data is compact JSON, which has no newline to split.
fn sse_frame(event: &str, data: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("event: {event}\ndata: {data}\nid: {id}\n\n"),
        None => format!("event: {event}\ndata: {data}\n\n"),
    }
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
    let (tx, body) = crate::stream::outbox(&state.http.sse, state.hub.sse_stats());
    let (state, owner, thread_id) = (state.clone(), context.user, thread.thread_id);
    let credential = credential.map_or(Credential::Local, |c| c.0);
    tokio::spawn(
        async move {
            let mut events = state.hub.events(
                state.store.clone(),
                owner,
                thread_id,
                None,
                0.max(cursor.seq - 1),
                None,
            );
            let mut framers: std::collections::HashMap<Option<RunId>, Framer> =
                std::collections::HashMap::new();
            let every = state.auth.key_recheck();
            let lapsed = credential_lapsed(&state.auth, &state.store, &credential, every);
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
                        let data = e.sse_data();
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

/// Sends the run's frames after `cursor` until the run ends. False if the client went away.
#[allow(clippy::too_many_arguments, reason = "the stream's whole description")]
async fn follow(
    state: &AppState,
    owner: UserId,
    credential: &Credential,
    run: &Run,
    modes: Vec<StreamMode>,
    cursor: Cursor,
    tx: &Outbox,
    early: Option<Live>,
) -> bool {
    let mut framer = Framer::new(modes, run.run_id, run.thread_id);
    // From the run's first event, so the framer's message state is complete on a resume.
    let mut events =
        state.hub.events(state.store.clone(), owner, run.thread_id, Some(run.run_id), 0, early);
    let mut quiet_checks = 0;
    let every = state.auth.key_recheck();
    let lapsed = credential_lapsed(&state.auth, &state.store, credential, every);
    tokio::pin!(lapsed);
    loop {
        let next = tokio::select! {
            e = events.recv() => e,
            // The credential is no longer valid: the stream ends (the run goes on).
            why = &mut lapsed => {
                let data = unauthorized_data(&why);
                let _ = tx.send(sse_frame("error", &data.to_string(), None)).await;
                return true;
            }
            () = tokio::time::sleep(HEARTBEAT) => {
                // No event for a while: make sure the run has not ended unseen (a rollback
                // deletes the run's events; another node may have ended it).
                match state.store.get_run(owner, run.thread_id, run.run_id).await {
                    Ok(r) if r.status.is_active() => quiet_checks = 0,
                    _ => quiet_checks += 1,
                }
                if quiet_checks >= 2 {
                    let end = sse_frame("end", "null", None);
                    return tx.send(end).await.is_ok();
                }
                if tx.is_closed() {
                    return false;
                }
                continue;
            }
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                let data = e.sse_data();
                return tx.send(sse_frame("error", &data.to_string(), None)).await.is_ok();
            }
            None => return true,
        };
        let mut sent = false;
        for (k, frame) in framer.frames(&event).into_iter().enumerate() {
            if !Framer::after(cursor, event.seq, k as u32) {
                continue;
            }
            let data =
                if frame.data.is_null() { "null".to_owned() } else { frame.data.to_string() };
            if tx.send(sse_frame(&frame.event, &data, Some(&frame.id))).await.is_err() {
                return false;
            }
            sent = true;
        }
        // Handed to the response body, which writes it to the socket next (the channel holds
        // frames only while the socket is slower than the run).
        if sent {
            metrics::event_delivered(Transport::Sse, event.created_at);
        }
        if is_terminal(&event) {
            return true;
        }
    }
}
