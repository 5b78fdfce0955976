//! A run request as both transports receive it (`POST .../runs...` and the WebSocket
//! channel's `run` frame): validated against the caller's data, refused with a 4xx that says
//! why before anything is stored, then started through the engine ([`engine::Engine::start_run`]).

use agents::Agent;
use domain::{
    Assistant, IfNotExists, MultitaskStrategy, NewRun, Pending, Run, RunSpec, ThreadStatus,
};
use engine::RunStart;
use ids::{CheckpointId, RunId, ThreadId};
use protocol::run_create::{IfNotExistsField, OnDisconnect, OneOrMany, RunCreate};
use protocol::sse::StreamMode;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::AppState;
use crate::context::RequestContext;
use crate::error::{ApiError, ApiResult, REQUEST_ID};

/// A run request that passed validation.
#[derive(Clone, Debug)]
pub struct Validated {
    pub start: RunStart,
    pub modes: Vec<StreamMode>,
    pub on_disconnect: OnDisconnect,
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
    let id = match crate::refs::checkpoint_id("checkpoint", body.checkpoint.as_ref())? {
        Some(id) => Some(id),
        None => match body.checkpoint_id.as_deref() {
            None | Some("") => None,
            Some(text) => crate::refs::checkpoint_id("checkpoint_id", Some(&json!(text)))?,
        },
    };
    let Some(id) = id else { return Ok(None) };
    crate::refs::check_namespace(body.checkpoint.as_ref())?;
    let not_found = || ApiError::NotFound(format!("checkpoint {id} not found in thread {thread}"));
    if stateless {
        return Err(not_found());
    }
    let head = match state.engine.list_checkpoints(context.user, thread, 1, None).await {
        Ok(head) => head,
        Err(domain::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if head.first().is_some_and(|c| c.checkpoint_id == id) {
        return Ok(None);
    }
    match state.engine.get_checkpoint(context.user, thread, id).await {
        Ok(_) => Ok(Some(id)),
        Err(domain::Error::NotFound { .. }) => Err(not_found()),
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
        domain::apply_update(None, update.clone())
            .map_err(|e| ApiError::invalid(format!("command.update: {e}")))?;
    }
    let found = match state.engine.get_thread(context.user, thread).await {
        Ok(found) => found,
        Err(domain::Error::NotFound { .. }) => {
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
    let head = state.engine.list_checkpoints(context.user, thread, 1, None).await?;
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
    engine::resume_value(resume, &pending)
        .map(drop)
        .map_err(|why| ApiError::Conflict(format!("command.resume: {why} (thread {thread})")))
}

/// A run's own `config` or `context`: an object, or absent.
fn run_object(field: &str, value: Option<Value>) -> ApiResult<Map<String, Value>> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(fields)) => Ok(fields),
        Some(other) => Err(ApiError::invalid(format!("{field}: expected an object, got {other}"))),
    }
}

fn fields(value: Option<&Value>) -> Map<String, Value> {
    value.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// The run's `config` and `context` laid over its assistant's, as LangGraph's `Runs.put`
/// merges them: key by key at the top of `context`, of `config` and of
/// `config.configurable`, the run's own values winning. As in LangGraph, the run's `context`
/// and `config.configurable` are one set of values (given one, the other mirrors it; given
/// both, the run is refused), so the agent finds them in either (`RunSpec.context`,
/// `RunSpec.config["configurable"]`).
fn with_assistant(
    assistant: &Assistant,
    config: Option<Value>,
    context: Option<Value>,
) -> ApiResult<(Value, Value)> {
    let config = run_object("config", config)?;
    let mut own_configurable = match config.get("configurable") {
        None | Some(Value::Null) | Some(Value::Object(_)) => fields(config.get("configurable")),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "config.configurable: expected an object, got {other}"
            )));
        }
    };
    let mut own_context = run_object("context", context)?;
    match (own_configurable.is_empty(), own_context.is_empty()) {
        (false, false) => {
            return Err(ApiError::invalid(
                "config.configurable and context: expected one of them, not both (prefer context)",
            ));
        }
        (true, false) => own_configurable = own_context.clone(),
        (false, true) => own_context = own_configurable.clone(),
        (true, true) => {}
    }
    let mut configurable = fields(assistant.config.get("configurable"));
    configurable.extend(own_configurable);
    let mut merged = fields(Some(&assistant.config));
    merged.extend(config);
    merged.remove("configurable");
    if !configurable.is_empty() {
        merged.insert("configurable".into(), Value::Object(configurable));
    }
    let mut merged_context = fields(Some(&assistant.context));
    merged_context.extend(own_context);
    Ok((Value::Object(merged), Value::Object(merged_context)))
}

/// The run's metadata with the version of the user's assistant it runs with
/// (`assistant_version`, which LangGraph does not record: a run's behaviour depends on it once
/// the assistant changes). A system assistant never changes, so its runs' metadata is theirs.
fn with_version(mut metadata: Map<String, Value>, assistant: &Assistant) -> Map<String, Value> {
    if assistant.owner_id.is_some() {
        metadata.insert("assistant_version".into(), assistant.version.into());
    }
    metadata
}

pub async fn validate(
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
    let assistant = crate::refs::assistant(state, context, &assistant_ref).await?;
    let command = body.command.filter(|c| !c.is_null());
    // A user's LangGraph graph checks its own input and command (its run's `error` says what
    // it refused), as on LangGraph's server.
    let agent = match state.engine.graph(&assistant.graph_id) {
        Some(_) => None,
        None => Some(Agent::from_graph(&assistant.graph_id).ok_or_else(|| {
            ApiError::invalid(format!("assistant {assistant_ref} has no agent on this server"))
        })?),
    };
    if let (Some(command), Some(agent)) = (&command, agent) {
        check_command(state, context, thread_id, command, stateless, agent).await?;
    }
    if command.is_some() && fork.is_some() {
        return Err(unsupported(
            "a command with an older checkpoint than the thread's newest (resume from the newest)",
        ));
    }
    // An interrupt value is stored a few levels deeper than the input (in the checkpoint's
    // pending task): one the store could not keep is refused now, not by a failed run.
    if let Some(value) = body.input.as_ref().zip(agent).and_then(|(i, a)| a.interrupt_value(i))
        && depth(&value) > MAX_INTERRUPT_DEPTH
    {
        return Err(ApiError::invalid(format!(
            "input.interrupt: nested deeper than {MAX_INTERRUPT_DEPTH} levels"
        )));
    }
    // Check the messages now so a bad input is a 422, not a failed run.
    if let Some(input) = body.input.as_ref().filter(|_| agent.is_some()) {
        domain::apply_update(None, input.clone())
            .map_err(|e| ApiError::invalid(format!("input.{e}")))?;
    }
    let on_completion = if stateless { Some(body.on_completion.unwrap_or_default()) } else { None };
    let on_disconnect = body.on_disconnect.unwrap_or_default();
    let (config, run_context) = with_assistant(&assistant, body.config, body.context)?;
    let spec = RunSpec {
        graph_id: assistant.graph_id.clone(),
        input: body.input.clone(),
        config,
        context: run_context,
        stream_mode: modes.iter().map(|m| m.name().to_owned()).collect(),
        stream_subgraphs: body.stream_subgraphs.unwrap_or(false),
        stream_resumable: body.stream_resumable.unwrap_or(false),
        on_disconnect,
        on_completion,
        durability: body.durability,
        feedback_keys: body.feedback_keys,
        command,
        checkpoint_id: fork,
        interrupt_before,
        interrupt_after,
    };
    let mut thread_metadata = Map::new();
    thread_metadata.insert("graph_id".into(), assistant.graph_id.clone().into());
    thread_metadata.insert("assistant_id".into(), assistant.assistant_id.to_string().into());
    let new_run = NewRun {
        run_id: RunId::new(),
        thread_id,
        assistant_id: assistant.assistant_id,
        input: body.input,
        kwargs: spec.to_kwargs(),
        metadata: with_version(body.metadata.unwrap_or_default(), &assistant),
        multitask_strategy: body.multitask_strategy.unwrap_or(MultitaskStrategy::Enqueue),
        thread_metadata,
    };
    let if_not_exists = match (stateless, body.if_not_exists.unwrap_or_default()) {
        (true, _) | (false, IfNotExistsField::Create) => IfNotExists::Create,
        (false, IfNotExistsField::Reject) => IfNotExists::Reject,
    };
    Ok(Validated {
        start: RunStart { new_run, spec, if_not_exists, stateless },
        modes,
        on_disconnect,
    })
}

/// Creates the run and tells the executor (and, for `interrupt`/`rollback`, the runs it
/// replaces).
pub async fn create(state: &AppState, context: &RequestContext, v: &Validated) -> ApiResult<Run> {
    let span = tracing::Span::current();
    span.record("run_id", tracing::field::display(v.start.new_run.run_id));
    span.record("thread_id", tracing::field::display(v.start.new_run.thread_id));
    // In a task of its own: a run committed claimed must reach the executor even if the client
    // goes away meanwhile (dropping this request's future).
    let (engine, owner, start) = (state.engine.clone(), context.user, v.start.clone());
    let task =
        REQUEST_ID.scope(context.request_id, async move { engine.start_run(owner, &start).await });
    tokio::spawn(task.in_current_span())
        .await
        .map_err(|e| ApiError::Internal(format!("creating the run failed: {e}")))?
        .map_err(ApiError::from)
}

/// Starts a run for the WebSocket channel exactly as `POST /threads/{thread_id}/runs` does;
/// `new_thread` creates the thread with the run (the channel's `run` without a thread id).
pub async fn start_for_ws(
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
        v.start.if_not_exists = IfNotExists::Create;
    }
    create(state, context, &v).await
}
