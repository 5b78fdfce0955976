//! The MCP servers an agent may call tools on: the operator's configuration (`--mcp name=URL`,
//! or stdio servers with a command), reached with the official Rust SDK (`rmcp`) over
//! Streamable HTTP or a child process's stdin and stdout. An assistant names servers only by
//! name. Sessions open on first use and are kept; every request is bounded (`Timeouts`);
//! dropping a call's future cancels it (`notifications/cancelled`, and its HTTP request is
//! aborted). `docs/mcp.md` has the decisions.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{ClientInitializeError, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::sync::Mutex;

/// Where one MCP server is; only the operator's configuration says.
#[derive(Clone, PartialEq, Eq)]
pub enum McpServerConfig {
    /// Streamable HTTP at this endpoint (`http://host:port/mcp`).
    Http { url: String },
    /// A child process speaking MCP on its stdin and stdout, started on first use and killed
    /// when the [`McpServers`] are dropped. Its environment is `env` over a few of Spindle's
    /// variables (`PATH`, `HOME`, ...), never all of them.
    Stdio { command: String, args: Vec<String>, env: BTreeMap<String, String> },
}

impl McpServerConfig {
    /// An operator's `--mcp NAME=URL`: a name of letters, digits, `_` and `-`, and an
    /// `http://` or `https://` URL.
    pub fn parse_flag(value: &str) -> Result<(String, McpServerConfig), String> {
        let Some((name, url)) = value.split_once('=') else {
            return Err("expected NAME=URL, e.g. search=http://127.0.0.1:8931/mcp".into());
        };
        let name_is_valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_is_valid {
            return Err(format!("the MCP server name {name:?} must be letters, digits, _ or -"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "the URL of MCP server {name:?} must start with http:// or https://"
            ));
        }
        Ok((name.to_owned(), McpServerConfig::Http { url: url.to_owned() }))
    }
}

/// Neither a URL (it may carry a token) nor an environment value is ever printed.
impl fmt::Debug for McpServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpServerConfig::Http { .. } => f.write_str("Http"),
            McpServerConfig::Stdio { command, .. } => write!(f, "Stdio({command})"),
        }
    }
}

/// How long each request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a session (TCP connect, `initialize`, or starting a process).
    pub connect: Duration,
    /// `tools/list`.
    pub list: Duration,
    /// `tools/call`.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            list: Duration::from_secs(10),
            call: Duration::from_secs(30),
        }
    }
}

/// A tool a server offers.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object.
    pub input_schema: Value,
}

/// What a tool answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    /// The text content blocks joined by newlines, then the structured content (JSON) if any.
    pub content: String,
    /// The server said the tool failed (the content says why).
    pub is_error: bool,
}

/// Why a server could not answer. Its `Display` is meant for a run's error event: it names the
/// server and says what happened, never a URL or a secret.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum McpError {
    #[error("no MCP server named {0:?} is configured")]
    UnknownServer(String),
    #[error("MCP server {server:?} is unavailable: {message}")]
    Unavailable { server: String, message: String },
    #[error("MCP server {server:?} answered with an error: {message}")]
    Protocol { server: String, message: String },
    #[error("MCP server {server:?} did not answer {what} within {}s", after.as_secs_f64())]
    Timeout { server: String, what: &'static str, after: Duration },
}

type Session = RunningService<RoleClient, ()>;

/// What a stdio server inherits of Spindle's environment; the rest (database URLs, keys) stays
/// with Spindle, and the operator's configuration gives the server what else it needs.
const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "USER", "LANG", "TMPDIR", "TZ"];

/// The configured MCP servers, each with its session once opened. Cheap to clone: clones share
/// the sessions; the last one dropped closes them (and kills stdio servers).
#[derive(Clone)]
pub struct McpServers {
    inner: Arc<Inner>,
}

struct Inner {
    servers: BTreeMap<String, Server>,
    timeouts: Timeouts,
}

struct Server {
    config: McpServerConfig,
    /// Locked while a session opens, so concurrent first calls open one.
    session: Mutex<Option<Arc<Session>>>,
}

impl fmt::Debug for McpServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: BTreeMap<_, _> =
            self.inner.servers.iter().map(|(name, server)| (name, &server.config)).collect();
        f.debug_struct("McpServers")
            .field("servers", &servers)
            .field("timeouts", &self.inner.timeouts)
            .finish()
    }
}

/// No MCP servers.
impl Default for McpServers {
    fn default() -> Self {
        McpServers::new(BTreeMap::new())
    }
}

impl McpServers {
    pub fn new(servers: BTreeMap<String, McpServerConfig>) -> McpServers {
        McpServers::with_timeouts(servers, Timeouts::default())
    }

    pub fn with_timeouts(
        servers: BTreeMap<String, McpServerConfig>,
        timeouts: Timeouts,
    ) -> McpServers {
        let servers = servers
            .into_iter()
            .map(|(name, config)| (name, Server { config, session: Mutex::new(None) }))
            .collect();
        McpServers { inner: Arc::new(Inner { servers, timeouts }) }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.servers.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.inner.servers.contains_key(name)
    }

    /// The server's tools (every page): name, description, input schema.
    pub async fn list_tools(&self, server: &str) -> Result<Vec<ToolSpec>, McpError> {
        let after = self.inner.timeouts.list;
        // Listing is idempotent: a session found dead is replaced and the list asked again.
        let tools = self
            .request(server, "tools/list", after, true, |session| async move {
                session.peer().list_all_tools().await
            })
            .await?;
        Ok(tools.into_iter().map(tool_spec).collect())
    }

    /// Calls a tool with `arguments` (a JSON object, or null for none). A tool that failed is
    /// `Ok` with `is_error`; `Err` is a server that could not answer. Dropping the future
    /// cancels the call.
    pub async fn call_tool(
        &self,
        server: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<ToolResult, McpError> {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        match arguments {
            Value::Object(arguments) => params = params.with_arguments(arguments),
            Value::Null => {}
            other => {
                return Err(McpError::Protocol {
                    server: server.into(),
                    message: format!("tool arguments must be a JSON object, not {other}"),
                });
            }
        }
        let after = self.inner.timeouts.call;
        // A call is never sent twice: the server may have run it before the session broke.
        let result = self
            .request(server, "tools/call", after, false, |session| {
                let params = params.clone();
                async move { session.peer().call_tool(params).await }
            })
            .await?;
        Ok(tool_result(result))
    }

    /// Runs `send` on the server's session (opened if needed) within `after`. A session that is
    /// closed (its process exited, its transport gave up) is replaced before use; with `retry`,
    /// a request that found the transport closed is sent once more on a new session.
    async fn request<T, F, Fut>(
        &self,
        name: &str,
        what: &'static str,
        after: Duration,
        retry: bool,
        send: F,
    ) -> Result<T, McpError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let server =
            self.inner.servers.get(name).ok_or_else(|| McpError::UnknownServer(name.into()))?;
        let timeout = |what| McpError::Timeout { server: name.into(), what, after };
        let session = self.session(name, server).await?;
        let first =
            tokio::time::timeout(after, send(session.clone())).await.map_err(|_| timeout(what))?;
        match first {
            Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) if retry => {
                server.forget(&session).await;
                let session = self.session(name, server).await?;
                let again =
                    tokio::time::timeout(after, send(session)).await.map_err(|_| timeout(what))?;
                again.map_err(|e| service_error(name, e))
            }
            Err(error @ (ServiceError::TransportClosed | ServiceError::TransportSend(_))) => {
                server.forget(&session).await;
                Err(service_error(name, error))
            }
            other => other.map_err(|e| service_error(name, e)),
        }
    }

    /// The server's open session, or a new one.
    async fn session(&self, name: &str, server: &Server) -> Result<Arc<Session>, McpError> {
        let mut slot = server.session.lock().await;
        if let Some(session) = slot.as_ref().filter(|session| !session.is_closed()) {
            return Ok(session.clone());
        }
        let after = self.inner.timeouts.connect;
        let connecting = connect(name, &server.config, after);
        let session = tokio::time::timeout(after, connecting)
            .await
            .map_err(|_| McpError::Timeout { server: name.into(), what: "initialize", after })??;
        tracing::debug!(target: "spindle::mcp", server = name, "MCP session opened");
        let session = Arc::new(session);
        *slot = Some(session.clone());
        Ok(session)
    }
}

impl Server {
    /// Drops `session` if it is still the one kept (another request may have replaced it).
    async fn forget(&self, session: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|kept| Arc::ptr_eq(kept, session)) {
            *slot = None;
        }
    }
}

async fn connect(
    name: &str,
    config: &McpServerConfig,
    after: Duration,
) -> Result<Session, McpError> {
    let unavailable = |message: String| McpError::Unavailable { server: name.into(), message };
    match config {
        McpServerConfig::Http { url } => {
            let client = reqwest::Client::builder()
                .connect_timeout(after)
                .build()
                .map_err(|e| unavailable(format!("cannot build an HTTP client: {e}")))?;
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            let transport = StreamableHttpClientTransport::with_client(client, config);
            ().serve(transport).await.map_err(|e| unavailable(initialize_error(&e)))
        }
        McpServerConfig::Stdio { command, args, env } => {
            let mut child = tokio::process::Command::new(command);
            child.args(args).env_clear().kill_on_drop(true);
            for key in INHERITED_ENV {
                if let Some(value) = std::env::var_os(key) {
                    child.env(key, value);
                }
            }
            child.envs(env);
            let (transport, _) = TokioChildProcess::builder(child)
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| unavailable(format!("cannot start {command:?}: {e}")))?;
            ().serve(transport).await.map_err(|e| unavailable(initialize_error(&e)))
        }
    }
}

/// A failed `initialize`: what its cause says.
fn initialize_error(error: &(dyn std::error::Error + 'static)) -> String {
    format!("initialize failed: {}", cause(error))
}

/// What went wrong, for an operator: the deepest cause ("Connection refused (os error 111)"),
/// after what reqwest was doing. The layers between name rmcp's types, and reqwest's `Display`
/// carries the URL, which may hold a secret.
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    let mut doing = None;
    loop {
        if let Some(http) = deepest.downcast_ref::<reqwest::Error>() {
            doing = Some(match () {
                _ if http.is_connect() => "cannot connect",
                _ if http.is_timeout() => "timed out",
                _ if http.is_body() || http.is_decode() => "cannot read the response",
                _ => "the HTTP request failed",
            });
        }
        match source(deepest) {
            Some(source) => deepest = source,
            None => break,
        }
    }
    match doing {
        Some(doing) if deepest.is::<reqwest::Error>() => doing.to_owned(),
        Some(doing) => format!("{doing}: {deepest}"),
        None => deepest.to_string(),
    }
}

/// An error's source, also through the two rmcp errors that do not name theirs.
fn source<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(ClientInitializeError::TransportError { error, .. }) = error.downcast_ref() {
        return Some(error);
    }
    match error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
        Some(StreamableHttpError::Client(http)) => Some(http),
        _ => error.source(),
    }
}

fn service_error(server: &str, error: ServiceError) -> McpError {
    let server = server.to_owned();
    match error {
        ServiceError::McpError(error) => {
            McpError::Protocol { server, message: error.message.into_owned() }
        }
        ServiceError::Timeout { timeout } => {
            McpError::Timeout { server, what: "a request", after: timeout }
        }
        error @ (ServiceError::TransportClosed | ServiceError::TransportSend(_)) => {
            McpError::Unavailable { server, message: cause(&error) }
        }
        other => McpError::Protocol { server, message: other.to_string() },
    }
}

fn tool_spec(tool: rmcp::model::Tool) -> ToolSpec {
    ToolSpec {
        name: tool.name.into_owned(),
        description: tool.description.map(|d| d.into_owned()),
        input_schema: Value::Object(Arc::unwrap_or_clone(tool.input_schema)),
    }
}

fn tool_result(result: CallToolResult) -> ToolResult {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .filter_map(|block| block.as_text())
        .map(|text| text.text.clone())
        .collect();
    if let Some(structured) = result.structured_content {
        parts.push(structured.to_string());
    }
    ToolResult { content: parts.join("\n"), is_error: result.is_error.unwrap_or(false) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(flag: &str, expected: Result<(&str, &str), &str>) {
        let parsed = McpServerConfig::parse_flag(flag);
        let expected = expected
            .map(|(name, url)| (name.to_owned(), McpServerConfig::Http { url: url.to_owned() }))
            .map_err(str::to_owned);
        assert_eq!(parsed, expected, "{flag}");
    }

    #[test]
    fn parses_the_mcp_flag() {
        check("search=http://127.0.0.1:8931/mcp", Ok(("search", "http://127.0.0.1:8931/mcp")));
        check("a_b-1=https://h/mcp?k=v", Ok(("a_b-1", "https://h/mcp?k=v")));
        check("search", Err("expected NAME=URL, e.g. search=http://127.0.0.1:8931/mcp"));
        check("=http://h/mcp", Err(r#"the MCP server name "" must be letters, digits, _ or -"#));
        check(
            "a b=http://h/mcp",
            Err(r#"the MCP server name "a b" must be letters, digits, _ or -"#),
        );
        check("s=ftp://h", Err(r#"the URL of MCP server "s" must start with http:// or https://"#));
    }
}
