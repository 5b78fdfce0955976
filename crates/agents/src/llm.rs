//! The `llm` agent: a model on an OpenAI-compatible server (`POST {base_url}/chat/completions`,
//! streamed), with tools from MCP servers and a human's approval before the tools it names.
//!
//! Where models and tools are is server configuration ([`Models`], [`McpServers`]); the
//! assistant's settings ([`Settings`]) only name a provider, a model and MCP servers, so an
//! assistant can never make the server call an address of its choosing.
//!
//! The agent keeps no state of its own: each run reads the thread's messages, so a run resumed
//! after an approval finds the tool calls it stopped on in the last AI message.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::EventKind;
use ids::MessageId;
use serde_json::{Map, Value, json};

use crate::mcp::{McpServers, ToolSpec};
use crate::{Sink, Stop};

/// The node name of the model's steps in events and state writes.
pub const NODE: &str = "llm";
/// The node name of tool calls.
pub const TOOLS_NODE: &str = "tools";
/// Tool-calling rounds of one run unless the assistant says otherwise.
pub const DEFAULT_MAX_STEPS: u32 = 8;
/// Most rounds an assistant may ask for.
pub const MAX_STEPS_LIMIT: u32 = 100;

/// A model server: its base URL and the key sent as `Authorization: Bearer`.
#[derive(Clone)]
pub struct Provider {
    pub base_url: String,
    /// The base URL without what may be a secret (user, password, query), for messages.
    shown: String,
    /// `{base_url}/chat/completions`, the base URL's query kept after the path.
    completions: String,
    api_key: Option<String>,
}

impl Provider {
    /// A provider at an `http(s)` base URL (a trailing `/` is dropped).
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Provider, String> {
        let url = reqwest::Url::parse(base_url).map_err(|e| {
            format!(
                "expected an http(s) URL such as http://127.0.0.1:11434/v1, got `{base_url}` ({e})"
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "expected an http(s) URL such as http://127.0.0.1:11434/v1, got `{base_url}`"
            ));
        }
        let base_url = base_url.trim_end_matches('/').to_owned();
        let mut completions = url.clone();
        completions.set_path(&format!("{}/chat/completions", url.path().trim_end_matches('/')));
        let completions = completions.to_string();
        let mut shown = url;
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        let shown = shown.as_str().trim_end_matches('/').to_owned();
        Ok(Provider { base_url, shown, completions, api_key: api_key.filter(|k| !k.is_empty()) })
    }
}

/// The key is a secret: never printed.
impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.api_key.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("Provider").field("base_url", &self.shown).field("api_key", &key).finish()
    }
}

/// Retries of a request that failed before its first token (429, 5xx, a refused connection).
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first wait; each next one doubles. A `Retry-After` of the server's is taken
    /// instead, up to [`Retry::MAX_WAIT`].
    pub first_wait: Duration,
}

impl Retry {
    pub const MAX_WAIT: Duration = Duration::from_secs(10);
}

impl Default for Retry {
    fn default() -> Self {
        Retry { retries: 3, first_wait: Duration::from_millis(500) }
    }
}

/// The model servers this Spindle may call, by name, and how it calls them.
#[derive(Clone, Debug)]
pub struct Models {
    providers: Arc<BTreeMap<String, Provider>>,
    default: Option<String>,
    http: reqwest::Client,
    pub retry: Retry,
    /// Longest wait for the next piece of a stream before the run fails.
    pub idle_timeout: Duration,
}

impl Default for Models {
    fn default() -> Self {
        Models::new(BTreeMap::new(), None)
    }
}

/// The name of the provider given by `--llm-base-url`.
pub const DEFAULT_PROVIDER: &str = "default";

impl Models {
    /// `default`: the provider an assistant without `provider` uses (else the one named
    /// [`DEFAULT_PROVIDER`], else the only one).
    pub fn new(providers: BTreeMap<String, Provider>, default: Option<String>) -> Models {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Models {
            providers: Arc::new(providers),
            default,
            http,
            retry: Retry::default(),
            idle_timeout: Duration::from_secs(120),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    fn provider(&self, name: Option<&str>) -> Result<&Provider, String> {
        let configured = || self.names().collect::<Vec<_>>().join(", ");
        match name {
            Some(name) => self.providers.get(name).ok_or_else(|| {
                format!("no model provider named `{name}` is configured on this server (configured: {})", configured())
            }),
            None => {
                let only = (self.providers.len() == 1).then(|| self.providers.values().next());
                self.default
                    .as_deref()
                    .and_then(|d| self.providers.get(d))
                    .or_else(|| self.providers.get(DEFAULT_PROVIDER))
                    .or(only.flatten())
                    .ok_or_else(|| {
                        if self.providers.is_empty() {
                            "no model provider is configured on this server: start it with --llm-base-url (SPINDLE_LLM_BASE_URL)".to_owned()
                        } else {
                            format!("the assistant names no provider and this server has no default (configured: {})", configured())
                        }
                    })
            }
        }
    }
}

/// What the `llm` agent runs with: the models and the MCP servers of this server.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub models: Models,
    pub mcp: McpServers,
}

/// An assistant's settings for the `llm` graph, read from its `context` (LangGraph ≥ 0.6) or
/// `config.configurable`; a run's own values override the assistant's.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub model: String,
    pub provider: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    /// MCP server names, or `server/tool`.
    pub tools: Vec<String>,
    /// Tool names a human approves before they run.
    pub approve: Vec<String>,
    pub max_steps: u32,
}

impl Settings {
    /// The settings from `configurable` overlaid with `context` (a run's values are merged
    /// into both before the run starts). Each field is checked; the error names it.
    pub fn of(context: &Value, configurable: &Value) -> Result<Settings, String> {
        let mut fields = configurable.as_object().cloned().unwrap_or_default();
        for (k, v) in context.as_object().into_iter().flatten() {
            fields.insert(k.clone(), v.clone());
        }
        let get = |k: &str| fields.get(k).filter(|v| !v.is_null());
        let string = |k: &str| -> Result<Option<String>, String> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("context.{k}: expected a string, got {other}")),
            }
        };
        let strings = |k: &str| -> Result<Vec<String>, String> {
            match get(k) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str().map(String::from).ok_or_else(|| {
                            format!("context.{k}: expected a list of strings, got {i} in it")
                        })
                    })
                    .collect(),
                Some(other) => Err(format!("context.{k}: expected a list of strings, got {other}")),
            }
        };
        let model = string("model")?.filter(|m| !m.is_empty()).ok_or(
            "context.model: the llm graph needs a model name (e.g. `llama3.2` or `gpt-4o-mini`) in the assistant's context",
        )?;
        let temperature = match get("temperature") {
            None => None,
            Some(v) => Some(v.as_f64().filter(|t| (0.0..=2.0).contains(t)).ok_or_else(|| {
                format!("context.temperature: expected a number from 0 to 2, got {v}")
            })?),
        };
        let positive =
            |k: &str| -> Result<Option<u64>, String> {
                match get(k) {
                    None => Ok(None),
                    Some(v) => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| {
                        format!("context.{k}: expected a positive integer, got {v}")
                    }),
                }
            };
        let max_steps = match positive("max_steps")? {
            None => DEFAULT_MAX_STEPS,
            Some(n) if n <= u64::from(MAX_STEPS_LIMIT) => n as u32,
            Some(n) => {
                return Err(format!("context.max_steps: at most {MAX_STEPS_LIMIT}, got {n}"));
            }
        };
        Ok(Settings {
            model,
            provider: string("provider")?,
            system_prompt: string("system_prompt")?,
            temperature,
            max_tokens: positive("max_tokens")?,
            tools: strings("tools")?,
            approve: strings("approve")?,
            max_steps,
        })
    }
}

/// How an `llm` run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The model answered: the messages the run adds (AI messages, tool messages).
    Answered(Vec<Value>),
    /// It called tools a human must approve first: the messages so far (the last one the AI
    /// message with the calls) and the interrupt's value (LangChain's HITL request).
    Asks { messages: Vec<Value>, value: Value },
}

fn failed(error: &str, message: impl Into<String>) -> Stop {
    Stop::Failed { error: error.into(), message: message.into() }
}

/// Runs the agent on the thread's state. `resumed`: a human's answer to the approval the
/// previous run asked (`{decisions: [...]}`).
pub async fn run(
    runtime: &Runtime,
    settings: &Settings,
    state: &Value,
    resumed: Option<&Value>,
    sink: &mut impl Sink,
) -> Result<Outcome, Stop> {
    let provider = runtime
        .models
        .provider(settings.provider.as_deref())
        .map_err(|m| failed("ValueError", m))?;
    let mut stopped: Stopped = Box::pin(sink.stopped());
    let tools = Tools::list(&runtime.mcp, &settings.tools, &mut stopped).await?;
    let settings = &tools.approving(settings)?;
    let history: Vec<Value> =
        state.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut added: Vec<Value> = Vec::new();
    // A run resumed after an approval runs the calls it stopped on first.
    if let Some(pending) = pending_calls(&history) {
        let calls = pending["tool_calls"].as_array().cloned().unwrap_or_default();
        let decisions = match resumed {
            Some(value) => Some(decisions(value, &pending, settings)?),
            // No human decided (a run without input, a command without `resume`): the calls
            // that need a decision are asked again, as LangGraph's interrupt asks again.
            None if calls.iter().any(|c| needs_approval(settings, c)) => {
                let value = approval_request(settings, &calls);
                return Ok(Outcome::Asks { messages: Vec::new(), value });
            }
            None => None,
        };
        let (ai, results) =
            run_calls(&tools, settings, &pending, decisions, &mut stopped, sink).await?;
        added.extend(ai);
        added.extend(results);
        step_values(state, &added, sink);
    }
    for round in 0..=settings.max_steps {
        let conversation = conversation(settings, history.iter().chain(added.iter()));
        if round == settings.max_steps {
            return Err(failed(
                "GraphRecursionError",
                format!(
                    "max_steps ({}) reached: the model was still calling tools",
                    settings.max_steps
                ),
            ));
        }
        let message =
            complete(&runtime.models, provider, settings, &tools, conversation, &mut stopped, sink)
                .await?;
        let calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
        sink.push(EventKind::MessageCompleted, json!({ "node": NODE, "message": message }));
        added.push(message.clone());
        if calls.is_empty() {
            return Ok(Outcome::Answered(added));
        }
        if calls.iter().any(|c| needs_approval(settings, c)) {
            return Ok(Outcome::Asks {
                messages: added,
                value: approval_request(settings, &calls),
            });
        }
        step_values(state, &added, sink);
        let (_, results) = run_calls(&tools, settings, &message, None, &mut stopped, sink).await?;
        added.extend(results);
        step_values(state, &added, sink);
    }
    unreachable!("the loop returns at max_steps")
}

/// The thread's values after a step that is not the run's last (the model's call, the
/// tools' results), as LangGraph streams `values` after each of its steps; the run's end
/// streams the last. The messages so far go through the same reducer as the commit
/// (`domain::apply_update`), so a rewritten message replaces the earlier one.
fn step_values(state: &Value, added: &[Value], sink: &mut impl Sink) {
    // The run's end commits the same update and reports a state that does not fit.
    if let Ok(values) = domain::apply_update(Some(state.clone()), json!({ "messages": added })) {
        sink.push(EventKind::Values, values);
    }
}

type Stopped = Pin<Box<dyn Future<Output = Stop> + Send>>;

/// Runs `f` unless the run stops first (cancel, interrupt, timeout): then `f` is dropped, which
/// aborts its request.
async fn unless_stopped<T>(stopped: &mut Stopped, f: impl Future<Output = T>) -> Result<T, Stop> {
    tokio::select! {
        biased;
        stop = stopped.as_mut() => Err(stop),
        out = f => Ok(out),
    }
}

/// The tools of the assistant's MCP servers, listed at the run's start.
struct Tools<'a> {
    mcp: &'a McpServers,
    /// By the name the model sees: the server and the tool.
    by_name: BTreeMap<String, (String, ToolSpec)>,
}

impl<'a> Tools<'a> {
    async fn list(
        mcp: &'a McpServers,
        wanted: &[String],
        stopped: &mut Stopped,
    ) -> Result<Tools<'a>, Stop> {
        let mut by_name = BTreeMap::new();
        for entry in wanted {
            let (server, only) = match entry.split_once('/') {
                Some((server, tool)) => (server, Some(tool)),
                None => (entry.as_str(), None),
            };
            if !mcp.contains(server) {
                let configured = mcp.names().collect::<Vec<_>>().join(", ");
                return Err(failed(
                    "ValueError",
                    format!(
                        "context.tools: no MCP server named `{server}` is configured on this server (configured: {configured})"
                    ),
                ));
            }
            let listed = unless_stopped(stopped, mcp.list_tools(server))
                .await?
                .map_err(|e| failed("ToolError", e.to_string()))?;
            let mut found = false;
            for tool in listed {
                if only.is_none_or(|t| t == tool.name) {
                    found = true;
                    by_name.entry(tool.name.clone()).or_insert_with(|| (server.to_owned(), tool));
                }
            }
            if let (Some(tool), false) = (only, found) {
                return Err(failed(
                    "ValueError",
                    format!("context.tools: the MCP server `{server}` has no tool `{tool}`"),
                ));
            }
        }
        Ok(Tools { mcp, by_name })
    }

    /// `settings` with `approve` as tool names: each entry a tool's name or `server/tool`, as
    /// in `tools`. An entry that fits none of the listed tools is refused: it would approve
    /// nothing, and the call it meant would run unasked.
    fn approving(&self, settings: &Settings) -> Result<Settings, Stop> {
        let mut out = settings.clone();
        out.approve = settings
            .approve
            .iter()
            .map(|entry| {
                let (server, name) = match entry.split_once('/') {
                    Some((server, tool)) => (Some(server), tool),
                    None => (None, entry.as_str()),
                };
                let fits = self
                    .by_name
                    .get(name)
                    .is_some_and(|(s, _)| server.is_none_or(|server| server == s));
                if fits {
                    return Ok(name.to_owned());
                }
                let known = self.by_name.keys().cloned().collect::<Vec<_>>().join(", ");
                Err(failed(
                    "ValueError",
                    format!(
                        "context.approve: `{entry}` is none of the assistant's tools (from context.tools: {known})"
                    ),
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// The `tools` of a chat completion request.
    fn specs(&self) -> Vec<Value> {
        self.by_name
            .iter()
            .map(|(name, (_, tool))| {
                let mut parameters = tool.input_schema.clone();
                if !parameters.is_object() {
                    parameters = json!({ "type": "object", "properties": {} });
                }
                json!({ "type": "function", "function": {
                    "name": name,
                    "description": tool.description.clone().unwrap_or_default(),
                    "parameters": parameters,
                } })
            })
            .collect()
    }
}

fn needs_approval(settings: &Settings, call: &Value) -> bool {
    call["name"].as_str().is_some_and(|n| settings.approve.iter().any(|a| a == n))
}

/// LangChain's HumanInTheLoopMiddleware request, which agent-chat-ui renders: one action per
/// call that needs approval.
fn approval_request(settings: &Settings, calls: &[Value]) -> Value {
    let asked: Vec<&Value> = calls.iter().filter(|c| needs_approval(settings, c)).collect();
    let actions: Vec<Value> = asked
        .iter()
        .map(|c| {
            let description = format!(
                "Tool execution requires approval\n\nTool: {}\nArgs: {}",
                c["name"].as_str().unwrap_or_default(),
                c["args"]
            );
            json!({ "name": c["name"], "args": c["args"], "description": description })
        })
        .collect();
    let reviews: Vec<Value> = asked
        .iter()
        .map(|c| json!({ "action_name": c["name"], "allowed_decisions": ["approve", "edit", "reject", "respond"] }))
        .collect();
    json!({ "action_requests": actions, "review_configs": reviews })
}

/// What a human decided of one call.
#[derive(Clone, Debug)]
enum Decision {
    Approve,
    /// The call with these arguments, and this tool when the human named another.
    Edit {
        name: Option<String>,
        args: Value,
    },
    Reject {
        message: Option<String>,
    },
    /// The human answers in the tool's place: this is the call's result (LangChain's
    /// `respond`).
    Respond {
        message: String,
    },
}

/// The newest AI message, when it has tool calls no tool message answers yet.
fn pending_calls(history: &[Value]) -> Option<Value> {
    let last = history.last()?;
    let has_calls =
        last["type"] == "ai" && last["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
    has_calls.then(|| last.clone())
}

/// A resume's decisions, one per call that needed approval, in order; as LangChain's
/// middleware takes them (`approve`, `edit` with `edited_action.args`, `reject` with a
/// `message`, `respond` with a `message`), and the older `accept` / `response` / `ignore` of
/// agent inbox.
fn decisions(value: &Value, ai: &Value, settings: &Settings) -> Result<Vec<Decision>, Stop> {
    let calls = ai["tool_calls"].as_array().cloned().unwrap_or_default();
    let asked = calls.iter().filter(|c| needs_approval(settings, c)).count();
    let invalid = |detail: String| {
        failed(
            "ValueError",
            format!(
                "resume: expected {{\"decisions\": [...]}} with {asked} decision(s) of type approve, edit (with edited_action.args), reject or respond (with a message); {detail}"
            ),
        )
    };
    let list = value
        .get("decisions")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("got {value}")))?;
    if list.len() != asked {
        return Err(invalid(format!("got {} decision(s)", list.len())));
    }
    list.iter()
        .map(|d| match d["type"].as_str() {
            Some("approve" | "accept") => Ok(Decision::Approve),
            Some("edit") => {
                let args = d["edited_action"]["args"].clone();
                let args = if args.is_object() { args } else { d["args"]["args"].clone() };
                let name = d["edited_action"]["name"].as_str().map(String::from);
                if args.is_object() {
                    Ok(Decision::Edit { name, args })
                } else {
                    Err(invalid(format!("an edit without edited_action.args: {d}")))
                }
            }
            Some("respond") => match d["message"].as_str() {
                Some(message) => Ok(Decision::Respond { message: message.to_owned() }),
                None => Err(invalid(format!("a respond without a message: {d}"))),
            },
            Some("reject" | "response" | "ignore") => {
                let message =
                    d["message"].as_str().or_else(|| d["args"].as_str()).map(String::from);
                Ok(Decision::Reject { message })
            }
            _ => Err(invalid(format!("got the decision {d}"))),
        })
        .collect()
}

/// Runs the calls of an AI message: approved or not asked as they are, edited with the new
/// arguments (the AI message is then rewritten with them, streamed and returned first),
/// rejected ones and those the human answered (`respond`) not at all. Returns the rewritten
/// AI message, if any, and a tool message per call.
async fn run_calls(
    tools: &Tools<'_>,
    settings: &Settings,
    ai: &Value,
    decisions: Option<Vec<Decision>>,
    stopped: &mut Stopped,
    sink: &mut impl Sink,
) -> Result<(Option<Value>, Vec<Value>), Stop> {
    let mut calls = ai["tool_calls"].as_array().cloned().unwrap_or_default();
    let mut decisions = decisions.map(Vec::into_iter);
    let mut decided = Vec::with_capacity(calls.len());
    for call in &mut calls {
        let asked = decisions.is_some() && needs_approval(settings, call);
        let decision = if asked { decisions.as_mut().and_then(Iterator::next) } else { None };
        let decision = decision.unwrap_or(Decision::Approve);
        if let Decision::Edit { name, args } = &decision {
            call["args"] = args.clone();
            if let Some(name) = name {
                call["name"] = Value::String(name.clone());
            }
        }
        decided.push(decision);
    }
    // An edited call rewrites the AI message (same id) before any result is streamed, so a
    // client that shows messages as they come shows the call before its result.
    let edited = decided.iter().any(|d| matches!(d, Decision::Edit { .. }));
    let rewritten = edited.then(|| {
        let mut ai = ai.clone();
        ai["tool_calls"] = Value::Array(calls.clone());
        sink.push(EventKind::MessageCompleted, json!({ "node": NODE, "message": ai }));
        ai
    });
    let mut results = Vec::new();
    for (call, decision) in calls.iter().zip(decided) {
        let id = call["id"].as_str().unwrap_or_default().to_owned();
        let name = call["name"].as_str().unwrap_or_default().to_owned();
        let (content, status) = match decision {
            // LangChain's HumanInTheLoopMiddleware's words, so a model reads what it would
            // read there.
            Decision::Reject { message: Some(why) } => {
                (format!("User rejected the tool call for `{name}` with reason: {why}"), "error")
            }
            Decision::Reject { message: None } => (
                format!(
                    "User rejected the tool call for `{name}` with id {id}. The tool was not executed. Do not retry this tool call unless the user explicitly requests it."
                ),
                "error",
            ),
            Decision::Respond { message } => (message, "success"),
            Decision::Approve | Decision::Edit { .. } => {
                sink.push(
                    EventKind::ToolExecuting,
                    json!({ "node": TOOLS_NODE, "tool": name, "tool_call_id": id, "input": call["args"] }),
                );
                sink.flush().await?;
                let (content, status) = call_tool(tools, &name, &call["args"], stopped).await?;
                sink.push(
                    EventKind::ToolCompleted,
                    json!({ "node": TOOLS_NODE, "tool": name, "tool_call_id": id, "output": content, "status": status }),
                );
                (content, status)
            }
        };
        let message = json!({
            "type": "tool", "id": MessageId::new().to_string(), "tool_call_id": id, "name": name,
            "content": content, "status": status, "additional_kwargs": {}, "response_metadata": {},
        });
        sink.push(EventKind::MessageCompleted, json!({ "node": TOOLS_NODE, "message": message }));
        results.push(message);
    }
    sink.flush().await?;
    Ok((rewritten, results))
}

/// Calls one tool; a failure (the tool's own error, an MCP server that is down or slow) is
/// the call's result, which the model reads, as LangGraph's ToolNode reports tool errors.
async fn call_tool(
    tools: &Tools<'_>,
    name: &str,
    args: &Value,
    stopped: &mut Stopped,
) -> Result<(String, &'static str), Stop> {
    let Some((server, tool)) = tools.by_name.get(name) else {
        return Ok((format!("Error: there is no tool named `{name}`"), "error"));
    };
    if !args.is_object() {
        return Ok((
            format!("Error: the arguments of `{name}` must be a JSON object, got {args}"),
            "error",
        ));
    }
    match unless_stopped(stopped, tools.mcp.call_tool(server, &tool.name, args.clone())).await? {
        Ok(result) if result.is_error => Ok((result.content, "error")),
        Ok(result) => Ok((result.content, "success")),
        Err(e) => Ok((format!("Error: {e}"), "error")),
    }
}

/// The conversation sent to the model: the system prompt, then the thread's messages
/// converted from LangChain's types. A tool call that no tool message answers (the thread
/// moved on from an approval) gets one saying so, as chat servers require.
fn conversation<'a>(settings: &Settings, messages: impl Iterator<Item = &'a Value>) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(prompt) = settings.system_prompt.as_deref().filter(|p| !p.is_empty()) {
        out.push(json!({ "role": "system", "content": prompt }));
    }
    let messages: Vec<&Value> = messages.collect();
    // A rewritten message (same id) replaces the earlier one.
    let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(id) = m["id"].as_str() {
            latest.insert(id, i);
        }
    }
    let mut unanswered: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m["id"].as_str().is_some_and(|id| latest.get(id) != Some(&i)) {
            continue;
        }
        let kind = m["type"].as_str().unwrap_or_default();
        if kind != "tool" {
            for id in unanswered.drain(..) {
                out.push(json!({ "role": "tool", "tool_call_id": id, "content": "Not run: the conversation went on without it." }));
            }
        }
        match kind {
            "human" => out.push(json!({ "role": "user", "content": content_parts(&m["content"]) })),
            "system" => out.push(json!({ "role": "system", "content": text(&m["content"]) })),
            "ai" => {
                let calls: Vec<Value> = m["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let args = serde_json::to_string(&c["args"]).unwrap_or_else(|_| "{}".into());
                        json!({ "id": c["id"], "type": "function", "function": { "name": c["name"], "arguments": args } })
                    })
                    .collect();
                unanswered =
                    calls.iter().filter_map(|c| c["id"].as_str().map(String::from)).collect();
                let mut message = json!({ "role": "assistant", "content": text(&m["content"]) });
                if !calls.is_empty() {
                    message["tool_calls"] = Value::Array(calls);
                }
                out.push(message);
            }
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                unanswered.retain(|u| u != id);
                out.push(
                    json!({ "role": "tool", "tool_call_id": id, "content": text(&m["content"]) }),
                );
            }
            _ => {}
        }
    }
    for id in unanswered {
        out.push(json!({ "role": "tool", "tool_call_id": id, "content": "Not run: the conversation went on without it." }));
    }
    out
}

fn text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.as_str().or_else(|| p["text"].as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A human message's content: text as text; parts as OpenAI's (`text`, `image_url`), with
/// LangChain's `image` parts (a URL or base64 data) as `image_url`.
fn content_parts(content: &Value) -> Value {
    let Value::Array(parts) = content else { return Value::String(text(content)) };
    let parts: Vec<Value> = parts
        .iter()
        .filter_map(|p| match p["type"].as_str() {
            _ if p.is_string() => Some(json!({ "type": "text", "text": p })),
            Some("text") => Some(json!({ "type": "text", "text": p["text"] })),
            Some("image_url") => Some(json!({ "type": "image_url", "image_url": p["image_url"] })),
            Some("image") => {
                let url = match (p["url"].as_str(), p["data"].as_str().or(p["base64"].as_str())) {
                    (Some(url), _) => url.to_owned(),
                    (None, Some(data)) => {
                        let mime = p["mime_type"].as_str().unwrap_or("image/png");
                        format!("data:{mime};base64,{data}")
                    }
                    (None, None) => return None,
                };
                Some(json!({ "type": "image_url", "image_url": { "url": url } }))
            }
            _ => None,
        })
        .collect();
    Value::Array(parts)
}

/// One chat completion, streamed: each content delta a `message_delta`, tool-call fragments
/// joined by `index`; returns the AI message (with `tool_calls` and `usage_metadata`).
async fn complete(
    models: &Models,
    provider: &Provider,
    settings: &Settings,
    tools: &Tools<'_>,
    conversation: Vec<Value>,
    stopped: &mut Stopped,
    sink: &mut impl Sink,
) -> Result<Value, Stop> {
    let mut body = json!({
        "model": settings.model,
        "messages": conversation,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if let Some(t) = settings.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = settings.max_tokens {
        body["max_tokens"] = json!(n);
    }
    let specs = tools.specs();
    if !specs.is_empty() {
        body["tools"] = Value::Array(specs);
    }
    sink.push(
        EventKind::AgentThinking,
        json!({ "node": NODE, "text": format!("asking {}", settings.model) }),
    );
    sink.flush().await?;
    let response = connect(models, provider, &body, stopped).await?;
    let mut chunks = Chunks::read(response);
    let id = MessageId::new().to_string();
    let mut reply = Reply::default();
    let mut events = EventStream::default();
    loop {
        // What has arrived already is taken at once; the events so far are flushed only
        // before waiting for more. A model slower than Spindle sees each token go out alone, a
        // faster one in batches (one transaction per batch, not per token: BENCHMARKS.md).
        let next = match chunks.ready() {
            Some(next) => Ok(next),
            None => {
                sink.flush().await?;
                unless_stopped(stopped, tokio::time::timeout(models.idle_timeout, chunks.next()))
                    .await?
            }
        };
        let bytes = match next {
            Err(_) => {
                return Err(failed(
                    "ModelError",
                    format!(
                        "the model server sent nothing for {} s",
                        models.idle_timeout.as_secs()
                    ),
                ));
            }
            Ok(Err(e)) => {
                return Err(failed("ModelError", format!("the model server's stream broke: {e}")));
            }
            Ok(Ok(None)) => {
                // A server that ends the stream after its finish reason without `[DONE]` has
                // still said everything.
                if reply.done || reply.finish_reason.is_some() {
                    break;
                }
                return Err(failed(
                    "ModelError",
                    "the model server closed the stream before its end ([DONE])",
                ));
            }
            Ok(Ok(Some(bytes))) => bytes,
        };
        for data in events.feed(&bytes).map_err(|m| failed("ModelError", m))? {
            if data == "[DONE]" {
                reply.done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(&data).map_err(|e| {
                failed(
                    "ModelError",
                    format!(
                        "the model server sent a chunk that is not JSON ({e}): {}",
                        clip(&data)
                    ),
                )
            })?;
            reply.take(&chunk, &id, sink)?;
        }
        sink.flush_if_full().await?;
        if reply.done {
            break;
        }
    }
    let message = reply.into_message(id.clone(), &settings.model);
    // The last chunk: the usage and why the model stopped, as ChatOpenAI's last chunk.
    sink.push(
        EventKind::MessageDelta,
        json!({ "node": NODE, "message_id": id, "delta": "", "usage_metadata": message["usage_metadata"], "response_metadata": message["response_metadata"] }),
    );
    Ok(message)
}

/// The response body, read by a task of its own as fast as the model server sends it, so that
/// what has arrived while the agent was persisting the last batch is there to be taken at once
/// (hyper reads the socket only when its body is polled: polling it once finds nothing ready).
/// Dropped, it aborts the task, which drops the response and closes the connection.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<reqwest::Result<bytes::Bytes>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Chunks {
    /// Up to this many chunks wait for the agent; then the reader waits (backpressure).
    const WAITING: usize = 256;

    fn read(mut response: reqwest::Response) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::WAITING);
        let reader = tokio::spawn(async move {
            loop {
                let chunk = response.chunk().await;
                let last = !matches!(chunk, Ok(Some(_)));
                let Some(chunk) = chunk.transpose() else { break };
                if tx.send(chunk).await.is_err() || last {
                    break;
                }
            }
        });
        Self { rx, reader }
    }

    /// The next chunk if it has arrived: `Some(Ok(None))` is the end of the body.
    fn ready(&mut self) -> Option<reqwest::Result<Option<bytes::Bytes>>> {
        match self.rx.try_recv() {
            Ok(chunk) => Some(chunk.map(Some)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(Ok(None)),
        }
    }

    /// The next chunk, waiting for it: `Ok(None)` is the end of the body.
    async fn next(&mut self) -> reqwest::Result<Option<bytes::Bytes>> {
        self.rx.recv().await.transpose()
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A chunk's text, cut for an error message.
fn clip(text: &str) -> String {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Sends the request; retries 429, 5xx and connection failures (nothing was streamed yet).
async fn connect(
    models: &Models,
    provider: &Provider,
    body: &Value,
    stopped: &mut Stopped,
) -> Result<reqwest::Response, Stop> {
    let url = &provider.completions;
    let mut wait = models.retry.first_wait;
    let mut attempt = 0;
    loop {
        let mut request =
            models.http.post(url).header("content-type", "application/json").body(body.to_string());
        if let Some(key) = &provider.api_key {
            request = request.bearer_auth(key);
        }
        let idle = models.idle_timeout;
        let outcome = unless_stopped(stopped, tokio::time::timeout(idle, request.send())).await?;
        let (retryable, message, retry_after) = match outcome {
            Err(_) => {
                (true, format!("the model server sent nothing for {} s", idle.as_secs()), None)
            }
            Ok(Ok(response)) if response.status().is_success() => return Ok(response),
            Ok(Ok(response)) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let said = unless_stopped(stopped, tokio::time::timeout(idle, response.text()))
                    .await?
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let said = serde_json::from_str::<Value>(&said)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(String::from))
                    .unwrap_or(said);
                // A server may quote the key it refused: it is never shown.
                let said = match &provider.api_key {
                    Some(key) => said.replace(key.as_str(), "[redacted]"),
                    None => said,
                };
                let retryable = status.as_u16() == 429 || status.is_server_error();
                (
                    retryable,
                    format!("the model server answered {status}: {}", clip(&said)),
                    retry_after,
                )
            }
            Ok(Err(e)) => (
                true,
                format!(
                    "could not reach the model server at {}: {}",
                    provider.shown,
                    source_chain(&e.without_url())
                ),
                None,
            ),
        };
        if !retryable || attempt >= models.retry.retries {
            let tries = if attempt > 0 {
                format!(" (after {} attempts)", attempt + 1)
            } else {
                String::new()
            };
            return Err(failed("ModelError", format!("{message}{tries}")));
        }
        attempt += 1;
        let delay = retry_after.unwrap_or(wait).min(Retry::MAX_WAIT);
        unless_stopped(stopped, tokio::time::sleep(delay)).await?;
        wait *= 2;
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The longest event of a model server's stream (one chunk is a few hundred bytes).
const MAX_EVENT: usize = 8 << 20;

/// Server-sent events from a byte stream: the `data` of each event, lines joined.
#[derive(Default)]
struct EventStream {
    buffer: Vec<u8>,
    /// How much of `buffer` was searched for an event's end already.
    scanned: usize,
}

impl EventStream {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            // A separator (at most 4 bytes) may straddle what was searched and what is new.
            let from = self.scanned.saturating_sub(3);
            let Some((end, skip)) = event_end(&self.buffer[from..]) else {
                self.scanned = self.buffer.len();
                break;
            };
            let end = from + end;
            self.scanned = 0;
            let event: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        if self.buffer.len() > MAX_EVENT {
            return Err(format!(
                "the model server sent an event of more than {} MiB",
                MAX_EVENT >> 20
            ));
        }
        Ok(out)
    }
}

/// Where the first event ends (a blank line) and the separator's length.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    (0..buffer.len()).find_map(|i| {
        if buffer[i..].starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else if buffer[i..].starts_with(b"\n\n") {
            Some((i, 2))
        } else {
            None
        }
    })
}

/// A tool call being streamed.
#[derive(Default, Debug)]
struct CallParts {
    id: String,
    name: String,
    args: String,
}

/// The model's reply as its chunks arrive.
#[derive(Default, Debug)]
struct Reply {
    content: String,
    reasoning: String,
    calls: BTreeMap<u64, CallParts>,
    usage: Option<Value>,
    finish_reason: Option<String>,
    done: bool,
}

impl Reply {
    /// Takes one chunk: its deltas joined into the reply and pushed as events.
    fn take(&mut self, chunk: &Value, id: &str, sink: &mut impl Sink) -> Result<(), Stop> {
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message =
                error["message"].as_str().map(String::from).unwrap_or_else(|| error.to_string());
            return Err(failed(
                "ModelError",
                format!("the model server failed mid-stream: {message}"),
            ));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) else {
            return Ok(());
        };
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        let delta = &choice["delta"];
        let reasoning = delta["reasoning_content"].as_str().or(delta["reasoning"].as_str());
        if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
            self.reasoning.push_str(r);
            sink.push(
                EventKind::MessageDelta,
                json!({ "node": NODE, "message_id": id, "delta": "", "reasoning": r }),
            );
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.content.push_str(text);
            sink.push(
                EventKind::MessageDelta,
                json!({ "node": NODE, "message_id": id, "delta": text }),
            );
        }
        let mut chunks = Vec::new();
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or(0);
            let parts = self.calls.entry(index).or_default();
            let (call_id, name) = (call["id"].as_str(), call["function"]["name"].as_str());
            let args = call["function"]["arguments"].as_str().unwrap_or_default();
            // The id and name come once (OpenAI); a server that repeats them in every
            // fragment is not asking for them to be joined.
            if let Some(call_id) = call_id.filter(|_| parts.id.is_empty()) {
                parts.id.push_str(call_id);
            }
            if let Some(name) = name.filter(|n| *n != parts.name) {
                parts.name.push_str(name);
            }
            parts.args.push_str(args);
            chunks.push(json!({ "type": "tool_call_chunk", "index": index, "id": call_id, "name": name, "args": args }));
        }
        if !chunks.is_empty() {
            sink.push(
                EventKind::MessageDelta,
                json!({ "node": NODE, "message_id": id, "delta": "", "tool_call_chunks": chunks }),
            );
        }
        Ok(())
    }

    /// The AI message, as LangChain's ChatOpenAI makes it.
    fn into_message(self, id: String, model: &str) -> Value {
        let mut tool_calls = Vec::new();
        let mut invalid = Vec::new();
        for (index, call) in self.calls {
            let call_id = if call.id.is_empty() { format!("call_{index}") } else { call.id };
            let args = if call.args.trim().is_empty() {
                Ok(json!({}))
            } else {
                serde_json::from_str::<Value>(&call.args)
            };
            match args {
                Ok(args) if args.is_object() => tool_calls.push(json!({ "id": call_id, "name": call.name, "args": args, "type": "tool_call" })),
                _ => invalid.push(json!({ "id": call_id, "name": call.name, "args": call.args, "error": "the arguments are not a JSON object", "type": "invalid_tool_call" })),
            }
        }
        let mut additional = Map::new();
        if !self.reasoning.is_empty() {
            additional.insert("reasoning_content".into(), Value::String(self.reasoning));
        }
        let usage = self.usage.map(|u| {
            let input = u["prompt_tokens"].as_u64().unwrap_or(0);
            let output = u["completion_tokens"].as_u64().unwrap_or(0);
            json!({ "input_tokens": input, "output_tokens": output, "total_tokens": u["total_tokens"].as_u64().unwrap_or(input + output) })
        });
        json!({
            "type": "ai",
            "id": id,
            "name": NODE,
            "content": self.content,
            "tool_calls": tool_calls,
            "invalid_tool_calls": invalid,
            "usage_metadata": usage,
            "additional_kwargs": additional,
            "response_metadata": { "finish_reason": self.finish_reason, "model_name": model, "model_provider": "openai" },
        })
    }
}
