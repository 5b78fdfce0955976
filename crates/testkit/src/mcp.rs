//! An MCP server over Streamable HTTP (protocol 2025-06-18, also 2025-03-26), for tests. Written
//! by hand from the specification so that a client under test meets the real framing: JSON-RPC
//! 2.0 on `POST /mcp`; `initialize` and `tools/list` answered as `application/json`,
//! `tools/call` as a `text/event-stream` of one `message` event; `Mcp-Session-Id` issued at
//! `initialize` and required after it (400 without one, 404 for one it does not know, as after a
//! restart); notifications answered 202. Tools: `add`, `echo`, `fail`, `slow` ([`call_tool`],
//! which the stdio server `mcp-stdio` shares).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The protocol versions this server speaks; the first is the one it offers a client asking
/// for another.
pub const PROTOCOL_VERSIONS: [&str; 2] = ["2025-06-18", "2025-03-26"];

/// What the server has served so far; tests wait on it with [`McpServer::until`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sessions issued (`initialize` requests answered).
    pub sessions: usize,
    /// `tools/call` requests received (with a known session).
    pub calls: usize,
    /// `slow` calls waiting now.
    pub slow_waiting: usize,
    /// Calls whose HTTP request the client abandoned before the answer (the handler was dropped).
    pub abandoned: usize,
    /// `notifications/cancelled` received.
    pub cancelled: usize,
    /// Requests refused with 404 for a session the server does not know.
    pub unknown_sessions: usize,
}

/// A running MCP server on 127.0.0.1; it stops when dropped.
#[derive(Debug)]
pub struct McpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    sessions: Mutex<HashSet<String>>,
    counters: watch::Sender<Counters>,
}

impl Shared {
    fn count(&self, change: impl FnOnce(&mut Counters)) {
        self.counters.send_modify(change);
    }
}

impl McpServer {
    /// Binds 127.0.0.1 port 0 and serves.
    pub async fn start() -> McpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            sessions: Mutex::new(HashSet::new()),
            counters: watch::channel(Counters::default()).0,
        });
        let task = serve(listener, shared.clone());
        McpServer { addr, shared, task }
    }

    /// The endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Stops and starts again on the same port, as a restarted server: every connection is
    /// closed and every session forgotten (the counters stay).
    pub async fn restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.shared.sessions.lock().unwrap().clear();
        let listener = TcpListener::bind(self.addr).await.expect("bind the same port again");
        self.task = serve(listener, self.shared.clone());
    }

    pub fn counters(&self) -> Counters {
        *self.shared.counters.borrow()
    }

    /// The number of `tools/call` requests served.
    pub fn calls(&self) -> usize {
        self.counters().calls
    }

    /// The number of sessions issued.
    pub fn sessions(&self) -> usize {
        self.counters().sessions
    }

    /// Waits until the counters satisfy `condition` (bounded: panics after 10 s, so a broken
    /// test fails instead of hanging).
    pub async fn until(&self, condition: impl Fn(&Counters) -> bool) -> Counters {
        let mut counters = self.shared.counters.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(10), counters.wait_for(condition));
        let seen = waited.await.expect("the MCP server's counters never met the condition");
        *seen.expect("the server's counters are kept while it exists")
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let app = Router::new()
        .route("/mcp", post(handle).get(no_stream).delete(end_session))
        .with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// No server-initiated stream: the specification lets a server answer the GET with 405.
async fn no_stream() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

async fn end_session(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> StatusCode {
    let Some(id) = session_id(&headers) else { return StatusCode::BAD_REQUEST };
    match shared.sessions.lock().unwrap().remove(&id) {
        true => StatusCode::OK,
        false => StatusCode::NOT_FOUND,
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers.get("mcp-session-id")?.to_str().ok().map(str::to_owned)
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !(accept.contains("application/json") && accept.contains("text/event-stream")) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "accept must list application/json and text/event-stream",
        )
            .into_response();
    }
    let Ok(message) = serde_json::from_str::<Value>(&body) else {
        return json_response(StatusCode::BAD_REQUEST, error(Value::Null, -32700, "parse error"));
    };
    let method = message.get("method").and_then(Value::as_str).map(str::to_owned);
    let id = message.get("id").cloned();
    if method.as_deref() == Some("initialize") {
        return initialize(&shared, id.unwrap_or(Value::Null), &message["params"]);
    }
    let Some(session) = session_id(&headers) else {
        return (StatusCode::BAD_REQUEST, "missing Mcp-Session-Id").into_response();
    };
    if !shared.sessions.lock().unwrap().contains(&session) {
        shared.count(|c| c.unknown_sessions += 1);
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    }
    if let Some(version) = headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok())
        && !PROTOCOL_VERSIONS.contains(&version)
    {
        return (StatusCode::BAD_REQUEST, "unsupported MCP-Protocol-Version").into_response();
    }
    match (method, id) {
        // A notification, or the client's response to a request of ours: accepted, no body.
        (Some(method), None) => {
            if method == "notifications/cancelled" {
                shared.count(|c| c.cancelled += 1);
            }
            StatusCode::ACCEPTED.into_response()
        }
        (None, _) => StatusCode::ACCEPTED.into_response(),
        (Some(method), Some(id)) => request(&shared, &method, id, &message["params"]).await,
    }
}

fn initialize(shared: &Shared, id: Value, params: &Value) -> Response {
    let asked = params["protocolVersion"].as_str().unwrap_or("");
    let version = PROTOCOL_VERSIONS.iter().find(|v| **v == asked).unwrap_or(&PROTOCOL_VERSIONS[0]);
    let mut number = 0;
    shared.count(|c| {
        c.sessions += 1;
        number = c.sessions;
    });
    // Unique for this server's lifetime, which is all a test needs (the specification asks
    // production servers for a cryptographically secure id).
    let session = format!("testkit-{number:08}");
    shared.sessions.lock().unwrap().insert(session.clone());
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "spindle-testkit", "version": env!("CARGO_PKG_VERSION")},
    });
    let mut response = json_response(StatusCode::OK, success(id, result));
    response.headers_mut().insert("mcp-session-id", session.parse().expect("an ascii header"));
    response
}

async fn request(shared: &Shared, method: &str, id: Value, params: &Value) -> Response {
    match method {
        "ping" => json_response(StatusCode::OK, success(id, json!({}))),
        "tools/list" => json_response(StatusCode::OK, success(id, json!({"tools": tools()}))),
        "tools/call" => {
            shared.count(|c| c.calls += 1);
            let name = params["name"].as_str().unwrap_or("");
            let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
            let mut watch = Abandoned { shared, done: false };
            let answer = match call_watched(shared, name, &arguments).await {
                Ok(result) => success(id, result),
                Err((code, message)) => error(id, code, &message),
            };
            watch.done = true;
            event_stream(answer)
        }
        _ => {
            json_response(StatusCode::OK, error(id, -32601, &format!("method not found: {method}")))
        }
    }
}

/// `slow` is counted while it waits, so a test can wait for the call to be under way.
async fn call_watched(
    shared: &Shared,
    name: &str,
    arguments: &Value,
) -> Result<Value, (i64, String)> {
    if name != "slow" {
        return call_tool(name, arguments).await;
    }
    shared.count(|c| c.slow_waiting += 1);
    let _waiting = Waiting(shared);
    call_tool(name, arguments).await
}

struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.count(|c| c.slow_waiting -= 1);
    }
}

/// Counts a call whose handler was dropped before it answered: hyper drops it when the client
/// closes the connection.
struct Abandoned<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.count(|c| c.abandoned += 1);
        }
    }
}

/// The tools, as `tools/list` describes them.
pub fn tools() -> Value {
    json!([
        {
            "name": "add",
            "description": "Adds two numbers",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]},
        },
        {
            "name": "echo",
            "description": "Answers with the text it is given",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
        {
            "name": "fail",
            "description": "Always fails (a result with isError true)",
            "inputSchema": {"type": "object", "properties": {}},
        },
        {
            "name": "slow",
            "description": "Waits ms milliseconds, then answers",
            "inputSchema": {"type": "object", "properties": {"ms": {"type": "integer", "minimum": 0}}, "required": ["ms"]},
        },
    ])
}

/// Runs a tool: `Ok` is a `tools/call` result, `Err` a JSON-RPC error (an unknown tool).
pub async fn call_tool(name: &str, arguments: &Value) -> Result<Value, (i64, String)> {
    let text = |text: String, is_error: bool| json!({"content": [{"type": "text", "text": text}], "isError": is_error});
    match name {
        "add" => match (arguments["a"].as_f64(), arguments["b"].as_f64()) {
            (Some(a), Some(b)) => Ok(text(number(a + b), false)),
            _ => Ok(text("add expects numbers a and b".into(), true)),
        },
        "echo" => match arguments["text"].as_str() {
            Some(said) => Ok(text(said.into(), false)),
            None => Ok(text("echo expects a string text".into(), true)),
        },
        "fail" => Ok(text("the tool failed, as asked".into(), true)),
        "slow" => match arguments["ms"].as_u64() {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(text(format!("waited {ms} ms"), false))
            }
            None => Ok(text("slow expects an integer ms".into(), true)),
        },
        _ => Err((-32602, format!("unknown tool: {name}"))),
    }
}

/// A sum as people write it: `5`, not `5.0`.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { n.to_string() }
}

pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn json_response(status: StatusCode, message: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], message.to_string()).into_response()
}

fn event_stream(message: Value) -> Response {
    let body = format!("event: message\nid: 1\ndata: {message}\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}
