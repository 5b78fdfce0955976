//! The WebSocket channel over real sockets, on SQLite and PostgreSQL: authentication (headers,
//! subprotocol, first frame), runs and their events, resume with `after_seq` at random cut
//! points and across a restart, isolation between users, errors that keep the connection,
//! limits, slow consumers, heartbeats and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use api::auth::{self, Auth, AuthMode, JwtConfig};
use api::ws::WsConfig;
use api::{AppState, HttpConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use store::testing::TestDb;
use store::{Backend, Store, StoreOptions};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Every wait in these tests is bounded by this: a hang is a failure, not a stuck CI.
const BOUND: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    state: AppState,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(store: Store, mode: AuthMode, ws: WsConfig) -> Server {
        Server::start_with(store, Auth::new(mode, &JwtConfig::default()).unwrap(), ws).await
    }

    async fn start_with(store: Store, auth: Auth, ws: WsConfig) -> Server {
        Server::start_http(store, auth, HttpConfig { ws, ..HttpConfig::default() }).await
    }

    async fn start_http(store: Store, auth: Auth, http: HttpConfig) -> Server {
        let state = AppState::new(
            engine::Engine::new(store.clone(), Default::default()).await.unwrap(),
            auth,
            http,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(api::serve(listener, state.clone(), shutdown));
        Server { addr, state, store, stop: Some(stop), task }
    }

    /// Graceful shutdown; returns once the server has stopped.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(BOUND, self.task).await.unwrap().unwrap().unwrap();
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn key(&self, user: &str) -> String {
        let key = auth::generate_key().unwrap();
        let (hash, prefix) = (auth::hash_key(&key), auth::key_prefix(&key));
        self.store.create_api_key(user, &hash, &prefix).await.unwrap();
        key
    }

    /// A JSON request over HTTP/1.1 on a new connection.
    async fn http(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(BOUND, stream.read_to_end(&mut response)).await.unwrap().unwrap();
        let text = String::from_utf8(response).unwrap();
        let status = text[9..12].parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else { return out };
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// An SSE response read as it arrives, over a real socket (HTTP/1.0: the body ends with the
/// connection, no chunking).
struct SseClient {
    stream: TcpStream,
    buf: String,
    head_done: bool,
    /// Bytes read so far (headers included).
    read: usize,
    /// How much of `buf` holds no frame end.
    scanned: usize,
}

impl SseClient {
    async fn open(
        server: &Server,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        last_event_id: Option<&str>,
    ) -> SseClient {
        use tokio::io::AsyncWriteExt;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let last = last_event_id.map(|id| format!("last-event-id: {id}\r\n")).unwrap_or_default();
        // A JWT goes in Authorization, an API key in x-api-key.
        let credential = if key.starts_with("ey") {
            format!("authorization: Bearer {key}")
        } else {
            format!("x-api-key: {key}")
        };
        let request = format!(
            "{method} {path} HTTP/1.0\r\nhost: test\r\n{credential}\r\n{last}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        SseClient { stream, buf: String::new(), head_done: false, read: 0, scanned: 0 }
    }

    /// The next frame (comments skipped); `None` when the response has ended.
    async fn frame(&mut self) -> Option<common_sse::Frame> {
        use tokio::io::AsyncReadExt;
        loop {
            if !self.head_done
                && let Some(end) = self.buf.find("\r\n\r\n")
            {
                assert!(
                    self.buf.starts_with("HTTP/1.0 200") || self.buf.starts_with("HTTP/1.1 200"),
                    "{}",
                    self.buf
                );
                self.buf.drain(..end + 4);
                self.head_done = true;
            }
            // Searched from where the last search stopped (frames can be megabytes).
            let from = self.scanned.min(self.buf.len());
            if self.head_done
                && let Some(end) = self.buf[from..].find("\n\n").map(|i| i + from)
            {
                self.scanned = 0;
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(frame) = common_sse::parse(&block) {
                    return Some(frame);
                }
                continue;
            }
            let mut chunk = vec![0; 64 * 1024];
            let n = tokio::time::timeout(BOUND, self.stream.read(&mut chunk))
                .await
                .expect("no SSE data in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.read += n;
            if self.head_done {
                self.scanned = self.buf.len().saturating_sub(1);
            }
            self.buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    }

    /// Frames until the response ends.
    async fn rest(&mut self) -> Vec<common_sse::Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.frame().await {
            frames.push(frame);
        }
        frames
    }
}

/// Parsing one SSE block.
mod common_sse {
    use serde_json::Value;

    #[derive(Debug)]
    pub struct Frame {
        pub event: String,
        pub data: Value,
    }

    pub fn parse(block: &str) -> Option<Frame> {
        let (mut event, mut data) = (String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if event.is_empty() {
            return None;
        }
        let data = if data.is_empty() { Value::Null } else { serde_json::from_str(&data).unwrap() };
        Some(Frame { event, data })
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Client {
    ws: Socket,
}

enum Auth2<'a> {
    None,
    Header(&'a str),
    Protocol(&'a str),
}

impl Client {
    async fn connect(server: &Server, auth: Auth2<'_>) -> Client {
        Client::try_connect(server, auth).await.unwrap()
    }

    async fn try_connect(server: &Server, auth: Auth2<'_>) -> Result<Client, WsError> {
        let mut request = server.url().into_client_request().unwrap();
        match auth {
            Auth2::None => {}
            Auth2::Header(key) => {
                request.headers_mut().insert("x-api-key", HeaderValue::from_str(key).unwrap());
            }
            Auth2::Protocol(key) => {
                let value = format!("spindle.v1, spindle.bearer.{key}");
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_str(&value).unwrap());
            }
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client { ws })
    }

    /// A connection whose socket has a tiny receive buffer (a client that reads slowly).
    async fn connect_small_buffer(server: &Server, key: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(server.addr).await.unwrap();
        let mut request = server.url().into_client_request().unwrap();
        request.headers_mut().insert("x-api-key", HeaderValue::from_str(key).unwrap());
        let (ws, _) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
        Client { ws }
    }

    fn set_recv_buffer(&self, bytes: usize) {
        let MaybeTlsStream::Plain(stream) = self.ws.get_ref() else { unreachable!() };
        socket2::SockRef::from(stream).set_recv_buffer_size(bytes).unwrap();
    }

    async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    /// The next message (bounded wait); `None` when the connection ended.
    async fn message(&mut self) -> Option<Message> {
        match tokio::time::timeout(BOUND, self.ws.next()).await.expect("no frame in time") {
            Some(Ok(m)) => Some(m),
            _ => None,
        }
    }

    /// The next JSON frame (pings skipped); panics on a close.
    async fn frame(&mut self) -> Value {
        loop {
            match self.message().await {
                Some(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.frame().await;
        assert_eq!(frame["type"], kind, "{frame}");
        frame
    }

    async fn welcome(&mut self) -> Value {
        self.expect("welcome").await
    }

    /// Reads until the connection closes; the close code (1006 if none was sent).
    async fn close_code(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(BOUND, self.ws.next()).await.expect("no close in time") {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return 1006,
            }
        }
    }

    /// Event frames until one ends any run, in order.
    async fn events_until_end_any(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let frame = self.expect("event").await;
            let ends = is_terminal(&frame);
            events.push(frame);
            if ends {
                return events;
            }
        }
    }

    /// Event frames until one ends `run` (ending it), in order.
    async fn events_until_end(&mut self, run: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let frame = self.frame().await;
            if frame["type"] != "event" {
                continue;
            }
            let ends = frame["run_id"] == run && is_terminal(&frame);
            events.push(frame);
            if ends {
                return events;
            }
        }
    }
}

fn is_terminal(frame: &Value) -> bool {
    matches!(frame["kind"].as_str(), Some("agent_completed" | "run_error" | "run_cancelled"))
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

fn hi(text: &str) -> Value {
    json!({"messages": [{"role": "human", "content": text}]})
}

async fn db(backend: Backend) -> Option<TestDb> {
    TestDb::new(backend).await
}

fn fast() -> WsConfig {
    WsConfig { auth_timeout: Duration::from_millis(300), ..WsConfig::default() }
}

/// A deterministic pseudo-random sequence (seeded; no dependency for it).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// The browser's path: subprotocol credential, a run on a new thread watched live, a drop, a
/// reconnect authenticated by the first frame, resume with `after_seq`, then live again.
async fn browser_flow(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;

    let mut c = Client::connect(&server, Auth2::Protocol(&key)).await;
    let welcome = c.welcome().await;
    assert!(welcome["connection_id"].as_str().unwrap().parse::<ids::ConnectionId>().is_ok());
    c.send(json!({"type": "run", "assistant_id": "echo", "input": hi("hello there"), "ref": 7}))
        .await;
    let subscribed = c.expect("subscribed").await;
    assert_eq!(subscribed["from_seq"], 1);
    assert_eq!(subscribed["ref"], 7);
    let run = c.expect("run").await;
    assert_eq!(run["ref"], 7);
    let thread = run["run"]["thread_id"].as_str().unwrap().to_owned();
    let run_id = run["run"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(subscribed["thread_id"], thread.as_str());
    let events = c.events_until_end(&run_id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in
        ["agent_started", "agent_thinking", "message_delta", "message_completed", "agent_completed"]
    {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let got = seqs(&events);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "gapless from 1");
    let text: String = events
        .iter()
        .filter(|e| e["kind"] == "message_delta")
        .map(|e| e["data"]["delta"].as_str().or(e["data"]["content"].as_str()).unwrap_or(""))
        .collect();
    assert!(text.contains("echo") || !text.is_empty(), "deltas carry text: {events:?}");
    let last = *got.last().unwrap();
    drop(c);

    // While disconnected, another run on the thread.
    let (status, _) = server
        .http(
            &key,
            "POST",
            &format!("/threads/{thread}/runs/wait"),
            Some(json!({"assistant_id": "echo", "input": hi("second")})),
        )
        .await;
    assert_eq!(status, 200);

    // Reconnect, authenticated by the first frame, and resume.
    let mut c = Client::connect(&server, Auth2::None).await;
    c.send(json!({"type": "auth", "token": key})).await;
    c.welcome().await;
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": last})).await;
    let subscribed = c.expect("subscribed").await;
    assert_eq!(subscribed["from_seq"], last + 1);
    assert_eq!(subscribed["recovered"], true);
    let mut missed = Vec::new();
    while missed.last().is_none_or(|e: &Value| !is_terminal(e)) {
        let frame = c.frame().await;
        assert_eq!(frame["type"], "event", "{frame}");
        missed.push(frame);
    }
    assert_eq!(seqs(&missed), (last + 1..=last + missed.len() as i64).collect::<Vec<_>>());
    let last = *seqs(&missed).last().unwrap();

    // Live again: a third run, started on the socket on the subscribed thread.
    c.send(
        json!({"type": "run", "thread_id": thread, "assistant_id": "echo", "input": hi("third")}),
    )
    .await;
    let run = c.expect("run").await;
    let run_id = run["run"]["run_id"].as_str().unwrap().to_owned();
    let live = c.events_until_end(&run_id).await;
    assert_eq!(seqs(&live)[0], last + 1, "no gap, no duplicate at the switch");
    let state = server.http(&key, "GET", &format!("/threads/{thread}/state"), None).await.1;
    assert_eq!(state["values"]["messages"].as_array().unwrap().len(), 6);
    server.stop().await;
}

/// Credentials: headers and subprotocol checked before the upgrade (401), the first frame
/// within its deadline (4001 otherwise); a plain GET is a JSON 400.
async fn authentication(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;

    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    match Client::try_connect(&server, Auth2::Header("spindle_nope")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    match Client::try_connect(&server, Auth2::Protocol("spindle_nope")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    // Nothing sent: closed when the deadline passes.
    let mut c = Client::connect(&server, Auth2::None).await;
    let error = c.expect("error").await;
    assert_eq!(error["code"], "unauthenticated");
    assert_eq!(c.close_code().await, 4001);
    // A wrong token in the first frame.
    let mut c = Client::connect(&server, Auth2::None).await;
    c.send(json!({"type": "auth", "token": "spindle_wrong"})).await;
    let error = c.expect("error").await;
    assert!(error["detail"].as_str().unwrap().contains("API key"), "{error}");
    assert_eq!(c.close_code().await, 4001);
    // Something else first.
    let mut c = Client::connect(&server, Auth2::None).await;
    c.send(json!({"type": "subscribe", "thread_id": ids::ThreadId::new()})).await;
    assert_eq!(c.expect("error").await["code"], "unauthenticated");
    assert_eq!(c.close_code().await, 4001);
    // Not an upgrade at all.
    let (status, body) = server.http(&key, "GET", "/ws", None).await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("WebSocket"), "{body}");
    assert!(body["request_id"].is_string());
    server.stop().await;
}

/// Bad frames get an error frame naming what was expected, with the ref and a request id;
/// the connection stays usable. Abuse closes it.
async fn errors_keep_the_connection(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let config = WsConfig { max_message: 1024, ..fast() };
    let server = Server::start(db.store.clone(), AuthMode::Keys, config).await;
    let alice = server.key("alice").await;
    let bob = server.key("bob").await;
    let (_, thread) = server.http(&bob, "POST", "/threads", Some(json!({}))).await;
    let bobs = thread["thread_id"].as_str().unwrap().to_owned();

    let mut c = Client::connect(&server, Auth2::Header(&alice)).await;
    c.welcome().await;
    let cases: Vec<(Message, &str, &str)> = vec![
        (Message::text("{not json"), "invalid_json", "not JSON"),
        (Message::text("[1, 2]"), "invalid_message", "type"),
        (Message::text(r#"{"type": "dance", "ref": "r1"}"#), "unknown_type", "subscribe"),
        (
            Message::text(r#"{"type": "subscribe", "thread_id": "abc", "ref": 3}"#),
            "invalid_id",
            "thread_id",
        ),
        (
            Message::text(r#"{"type": "subscribe", "thread_id": 12}"#),
            "invalid_message",
            "thread_id",
        ),
        (Message::text(r#"{"type": "subscribe"}"#), "invalid_message", "thread_id"),
        (
            Message::text(format!(
                r#"{{"type": "subscribe", "thread_id": "{bobs}", "after_seq": -1}}"#
            )),
            "invalid_message",
            "after_seq",
        ),
        (
            Message::text(format!(r#"{{"type": "subscribe", "thread_id": "{bobs}"}}"#)),
            "not_found",
            "not found",
        ),
        (
            Message::text(format!(
                r#"{{"type": "run", "thread_id": "{bobs}", "assistant_id": "echo"}}"#
            )),
            "not_found",
            "not found",
        ),
        (Message::text(r#"{"type": "run", "assistant_id": "nope"}"#), "not_found", "nope"),
        (Message::text(r#"{"type": "run"}"#), "missing_field", "assistant_id"),
        (
            Message::text(r#"{"type": "run", "assistant_id": "echo", "webhook": "http://x"}"#),
            "unsupported",
            "webhook",
        ),
        (
            Message::text(format!(
                r#"{{"type": "cancel", "thread_id": "{bobs}", "run_id": "{}"}}"#,
                ids::RunId::new()
            )),
            "not_found",
            "not found",
        ),
        (Message::binary(vec![1, 2, 3]), "unsupported_frame", "JSON text"),
        (
            Message::text(format!(r#"{{"type": "ping", "pad": "{}"}}"#, "x".repeat(2000))),
            "too_large",
            "1024",
        ),
        (
            Message::text(r#"{"type": "auth", "token": "x"}"#),
            "already_authenticated",
            "authenticated",
        ),
    ];
    for (message, code, detail) in cases {
        let shown = format!("{message:?}");
        c.ws.send(message).await.unwrap();
        let error = c.expect("error").await;
        assert_eq!(error["code"], code, "{shown}: {error}");
        assert!(error["detail"].as_str().unwrap().contains(detail), "{shown}: {error}");
        assert!(error["request_id"].as_str().unwrap().parse::<ids::RequestId>().is_ok());
    }
    // A foreign thread looks exactly like a missing one.
    let missing = ids::ThreadId::new().to_string();
    let mut details = Vec::new();
    for thread in [&bobs, &missing] {
        c.send(json!({"type": "subscribe", "thread_id": thread, "ref": "x"})).await;
        let error = c.expect("error").await;
        assert_eq!(error["ref"], "x");
        details.push(error["detail"].as_str().unwrap().replace(thread.as_str(), "ID"));
    }
    assert_eq!(details[0], details[1]);
    c.send(json!({"type": "ping", "ref": {"n": 1}})).await;
    assert_eq!(c.expect("pong").await["ref"], json!({"n": 1}));
    // Nothing of bob's changed.
    let (_, runs) = server.http(&bob, "GET", &format!("/threads/{bobs}/runs"), None).await;
    assert_eq!(runs, json!([]));

    // A frame over the hard cap closes with 1009.
    let big = "x".repeat(server.state.ws.config.hard_limit() + 10);
    c.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(c.close_code().await, 1009);

    // Fifty errors in a row close with 1008.
    let mut c = Client::connect(&server, Auth2::Header(&alice)).await;
    c.welcome().await;
    for _ in 0..50 {
        c.ws.send(Message::text("nope")).await.unwrap();
    }
    assert_eq!(c.close_code().await, 1008);
    server.stop().await;
}

/// Many users subscribe at random to their own and others' threads and follow themselves:
/// nobody ever receives an event of another user's thread.
async fn isolation(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let mut rng = Lcg(42);
    let mut users = Vec::new();
    for name in ["u0", "u1", "u2", "u3"] {
        let key = server.key(name).await;
        let mut threads = Vec::new();
        for _ in 0..3 {
            let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
            threads.push(t["thread_id"].as_str().unwrap().to_owned());
        }
        users.push((key, threads));
    }
    let all: Vec<String> = users.iter().flat_map(|(_, t)| t.clone()).collect();
    let mut clients = Vec::new();
    for (key, own) in &users {
        let mut c = Client::connect(&server, Auth2::Header(key)).await;
        c.welcome().await;
        c.send(json!({"type": "subscribe_user"})).await;
        c.expect("subscribed").await;
        for _ in 0..8 {
            let thread = &all[rng.below(all.len() as u64) as usize];
            c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": 0})).await;
            let reply = c.frame().await;
            if own.contains(thread) {
                assert_eq!(reply["type"], "subscribed", "{reply}");
            } else {
                assert_eq!(reply["code"], "not_found", "{reply}");
            }
        }
        clients.push(c);
    }
    // Every thread gets a run; each user then waits for the ends of their own runs.
    let mut runs = Vec::new();
    for (key, own) in &users {
        let mut mine = Vec::new();
        for thread in own {
            let body = json!({"assistant_id": "echo", "input": hi("secret")});
            let (status, run) =
                server.http(key, "POST", &format!("/threads/{thread}/runs"), Some(body)).await;
            assert_eq!(status, 200, "{run}");
            mine.push(run["run_id"].as_str().unwrap().to_owned());
        }
        runs.push(mine);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let own = &users[i].1;
        let mut ended = 0;
        while ended < runs[i].len() {
            let frame = c.frame().await;
            if frame["type"] != "event" {
                continue;
            }
            assert!(
                own.contains(&frame["thread_id"].as_str().unwrap().to_owned()),
                "user {i} got {frame}"
            );
            if is_terminal(&frame) {
                ended += 1;
            }
        }
        // Nothing else is on its way: a ping's pong comes next.
        c.send(json!({"type": "ping"})).await;
        loop {
            let frame = c.frame().await;
            if frame["type"] == "pong" {
                break;
            }
            assert!(
                own.contains(&frame["thread_id"].as_str().unwrap_or("").to_owned()),
                "user {i} got {frame}"
            );
        }
    }
    server.stop().await;
}

/// A long run watched through random disconnects: each reconnection resumes with the last
/// seq seen; across all of them every event arrives exactly once, in order. Then replays from
/// random cut points of the finished log.
async fn resume_at_random_points(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let (_, thread) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = thread["thread_id"].as_str().unwrap().to_owned();
    let mut rng = Lcg(7);

    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let input = json!({"messages": [{"role": "human", "content": "go"}], "n": 300, "mode": "tokens", "delay_ms": 1});
    c.send(
        json!({"type": "run", "thread_id": thread, "assistant_id": "synthetic", "input": input}),
    )
    .await;
    c.expect("subscribed").await;
    let run = c.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    let mut seen: Vec<Value> = Vec::new();
    let mut reconnects = 0;
    'outer: loop {
        let take = 1 + rng.below(120);
        for _ in 0..take {
            let frame = c.frame().await;
            assert_eq!(frame["type"], "event", "{frame}");
            let done = frame["run_id"] == run.as_str() && is_terminal(&frame);
            seen.push(frame);
            if done {
                break 'outer;
            }
        }
        drop(c);
        reconnects += 1;
        c = Client::connect(&server, Auth2::Header(&key)).await;
        c.welcome().await;
        let after = seen.last().map_or(0, |e| e["seq"].as_i64().unwrap());
        c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
        c.expect("subscribed").await;
    }
    assert!(reconnects >= 2, "the run outlasted several disconnects ({reconnects})");
    let got = seqs(&seen);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "exactly once, in order");
    let tokens: usize = seen.iter().filter(|e| e["kind"] == "message_delta").count();
    assert!(tokens > 0);

    // Replays of the finished log from random points end exactly at the last event.
    let last = *got.last().unwrap();
    for _ in 0..5 {
        let cut = rng.below(last as u64) as i64;
        c.send(json!({"type": "unsubscribe", "thread_id": thread})).await;
        c.expect("unsubscribed").await;
        c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": cut})).await;
        c.expect("subscribed").await;
        let mut replay = Vec::new();
        while replay.len() < (last - cut) as usize {
            replay.push(c.frame().await);
        }
        assert_eq!(seqs(&replay), (cut + 1..=last).collect::<Vec<_>>());
        assert_eq!(replay, seen[cut as usize..].to_vec(), "the same events, byte for byte");
        c.send(json!({"type": "ping"})).await;
        c.expect("pong").await;
    }
    server.stop().await;
}

/// A graceful shutdown closes connections with 1001; a run cut by the restart ends `error`
/// on the next server, and a client resuming there gets every event exactly once.
async fn resume_across_restart(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let input = json!({"messages": [{"role": "human", "content": "go"}], "n": 100000, "mode": "custom", "delay_ms": 5});
    c.send(json!({"type": "run", "assistant_id": "synthetic", "input": input})).await;
    c.expect("subscribed").await;
    let run = c.expect("run").await["run"].clone();
    let thread = run["thread_id"].as_str().unwrap().to_owned();
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = c.frame().await;
        seen.push(frame);
    }
    server.stop().await;
    // The rest of what was queued, then 1001.
    loop {
        match c.message().await {
            Some(Message::Text(t)) => seen.push(serde_json::from_str(&t).unwrap()),
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                break;
            }
            Some(_) => {}
            None => panic!("closed without 1001"),
        }
    }

    // A new server on the same database (a new store handle, hub and executor).
    let options = StoreOptions { max_connections: 4, migrate: true };
    let store = Store::open(&db.url, &options).await.unwrap();
    let server = Server::start(store, AuthMode::Keys, fast()).await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let after = seen.last().unwrap()["seq"].as_i64().unwrap();
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
    c.expect("subscribed").await;
    let rest = c.events_until_end(&run_id).await;
    let last = rest.last().unwrap();
    assert_eq!(last["kind"], "run_error", "{last}");
    assert_eq!(last["data"]["error"], "ServerRestarted");
    seen.extend(rest);
    let got = seqs(&seen);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "exactly once across the restart");
    let (_, run) =
        server.http(&key, "GET", &format!("/threads/{thread}/runs/{run_id}"), None).await;
    assert_eq!(run["status"], "error");
    let (_, t) = server.http(&key, "GET", &format!("/threads/{thread}"), None).await;
    assert_ne!(t["status"], "busy");
    server.stop().await;
}

/// A client that stops reading is closed with 4008 once its queue is over the limit; a
/// healthy client on the same thread gets every event meanwhile and the run is not slowed.
/// The closed client resumes from the log.
async fn slow_consumer(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    // The slow client must still be there to take its close frame when it reads again.
    let close_timeout = Duration::from_secs(120);
    let config = WsConfig { max_outbound: 256 * 1024, close_timeout, ..fast() };
    let server = Server::start(db.store.clone(), AuthMode::Keys, config).await;
    let key = server.key("alice").await;
    let (_, thread) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = thread["thread_id"].as_str().unwrap().to_owned();

    let mut slow = Client::connect_small_buffer(&server, &key).await;
    slow.welcome().await;
    slow.send(json!({"type": "subscribe", "thread_id": thread})).await;
    slow.expect("subscribed").await;
    let mut fast_client = Client::connect(&server, Auth2::Header(&key)).await;
    fast_client.welcome().await;
    let input =
        json!({"messages": [{"role": "human", "content": "go"}], "n": 30000, "mode": "custom"});
    fast_client
        .send(json!({"type": "run", "thread_id": thread, "assistant_id": "synthetic", "input": input}))
        .await;
    fast_client.expect("subscribed").await;
    let run = fast_client.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    let events = fast_client.events_until_end(&run).await;
    assert!(events.len() > 30000);
    // Over 4 MB of events: more than the kernel's socket buffers (4 MiB at most for the
    // server's send buffer here, 8 KiB for the client's receive buffer) and the queue hold.
    // Now the slow client reads, with a normal receive buffer.
    slow.set_recv_buffer(4 << 20);
    // Now the slow client reads: what was queued, then 4008.
    let mut got = Vec::new();
    let code = loop {
        match slow.message().await {
            Some(Message::Text(t)) => got.push(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Message::Close(Some(frame))) => break u16::from(frame.code),
            Some(_) => {}
            None => break 1006,
        }
    };
    assert_eq!(code, 4008);
    assert!(got.len() < events.len(), "closed before the end");
    // It resumes from the log and misses nothing.
    let after = got.last().map_or(0, |e| e["seq"].as_i64().unwrap());
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
    c.expect("subscribed").await;
    let rest = c.events_until_end(&run).await;
    got.extend(rest);
    assert_eq!(seqs(&got), seqs(&events));
    server.stop().await;
}

/// A client that answers no ping is closed with 4009; one that reads stays.
async fn heartbeat(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let config = WsConfig { ping_interval: Duration::from_millis(100), ..fast() };
    let server = Server::start(db.store.clone(), AuthMode::Keys, config).await;
    let key = server.key("alice").await;
    let mut reader = Client::connect(&server, Auth2::Header(&key)).await;
    reader.welcome().await;
    let mut silent = Client::connect(&server, Auth2::Header(&key)).await;
    silent.welcome().await;
    // The reader answers pings by reading; the silent one reads nothing until it is closed.
    let mut pings = 0;
    while pings < 5 {
        if let Some(Message::Ping(_)) = reader.message().await {
            pings += 1;
        }
    }
    assert_eq!(silent.close_code().await, 4009);
    reader.send(json!({"type": "ping"})).await;
    reader.expect("pong").await;
    server.stop().await;
}

/// Connections per user and subscriptions per connection are limited, with clear errors.
async fn limits(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let config = WsConfig { max_connections_per_user: 2, max_subscriptions: 2, ..fast() };
    let server = Server::start(db.store.clone(), AuthMode::Keys, config).await;
    let key = server.key("alice").await;
    let other = server.key("bob").await;
    let mut a = Client::connect(&server, Auth2::Header(&key)).await;
    a.welcome().await;
    let mut b = Client::connect(&server, Auth2::Header(&key)).await;
    b.welcome().await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    let error = c.expect("error").await;
    assert_eq!(error["code"], "too_many_connections");
    assert_eq!(c.close_code().await, 4029);
    // Another user is not affected; a closed connection frees its place.
    let mut d = Client::connect(&server, Auth2::Header(&other)).await;
    d.welcome().await;
    drop(b);
    let mut opened = false;
    for _ in 0..200 {
        let mut c = Client::connect(&server, Auth2::Header(&key)).await;
        if c.frame().await["type"] == "welcome" {
            opened = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(opened, "the dropped connection's place was given back");

    let mut threads = Vec::new();
    for _ in 0..3 {
        let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
        threads.push(t["thread_id"].as_str().unwrap().to_owned());
    }
    for t in &threads[..2] {
        a.send(json!({"type": "subscribe", "thread_id": t})).await;
        a.expect("subscribed").await;
    }
    a.send(json!({"type": "subscribe", "thread_id": threads[2]})).await;
    assert_eq!(a.expect("error").await["code"], "too_many_subscriptions");
    // Subscribing again to a subscribed thread is not a new subscription.
    a.send(json!({"type": "subscribe", "thread_id": threads[0], "after_seq": 0})).await;
    a.expect("subscribed").await;
    a.send(json!({"type": "unsubscribe", "thread_id": threads[1]})).await;
    a.expect("unsubscribed").await;
    a.send(json!({"type": "subscribe", "thread_id": threads[2]})).await;
    a.expect("subscribed").await;
    server.stop().await;
}

/// `subscribe_user` follows threads created after it; a thread also subscribed by itself is
/// delivered once; `cancel` stops a run.
async fn user_subscription_and_cancel(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    c.send(json!({"type": "subscribe_user", "ref": 1})).await;
    let subscribed = c.expect("subscribed").await;
    assert_eq!(subscribed["thread_id"], Value::Null);
    // A thread created afterwards, by HTTP.
    let (_, thread) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = thread["thread_id"].as_str().unwrap().to_owned();
    let body = json!({"assistant_id": "echo", "input": hi("one")});
    let (_, run) = server.http(&key, "POST", &format!("/threads/{thread}/runs"), Some(body)).await;
    let events = c.events_until_end(run["run_id"].as_str().unwrap()).await;
    let got = seqs(&events);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>());
    // Also subscribed to the thread itself: still once each.
    c.send(json!({"type": "run", "thread_id": thread, "assistant_id": "echo", "input": hi("two")}))
        .await;
    c.expect("subscribed").await;
    let run = c.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    let events = c.events_until_end(&run).await;
    let more = seqs(&events);
    assert_eq!(
        more,
        (got.len() as i64 + 1..=got.len() as i64 + more.len() as i64).collect::<Vec<_>>()
    );

    // Cancel a slow run from the socket.
    let input = json!({"messages": [{"role": "human", "content": "go"}], "n": 100000, "mode": "custom", "delay_ms": 5});
    c.send(
        json!({"type": "run", "thread_id": thread, "assistant_id": "synthetic", "input": input}),
    )
    .await;
    let run = c.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    c.send(json!({"type": "cancel", "thread_id": thread, "run_id": run, "ref": "c"})).await;
    loop {
        let frame = c.frame().await;
        if frame["type"] == "run" {
            assert_eq!(frame["ref"], "c");
            break;
        }
    }
    let events = c.events_until_end(&run).await;
    assert_eq!(events.last().unwrap()["kind"], "run_cancelled");
    let (_, r) = server.http(&key, "GET", &format!("/threads/{thread}/runs/{run}"), None).await;
    assert_eq!(r["status"], "interrupted");
    server.stop().await;
}

/// Reads frames until a pong: every frame before it must pass `ok`.
async fn until_pong(c: &mut Client, ok: impl Fn(&Value) -> bool) {
    c.send(json!({"type": "ping"})).await;
    loop {
        let frame = c.frame().await;
        if frame["type"] == "pong" {
            return;
        }
        assert!(ok(&frame), "unexpected frame {frame}");
    }
}

/// Issue #12, finding 2: Alice's live subscriptions to a thread (WebSocket `subscribe` and
/// `subscribe_user`, SSE join, a run's SSE stream) end when she deletes it, each with a final
/// frame that says so; Bob then creates a thread with the same id and runs on it, and none
/// of his events reaches Alice.
async fn deleted_thread_ends_subscriptions(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let alice = server.key("alice").await;
    let bob = server.key("bob").await;
    let thread = ids::ThreadId::new().to_string();
    let (status, _) =
        server.http(&alice, "POST", "/threads", Some(json!({"thread_id": thread}))).await;
    assert_eq!(status, 200);

    let mut ws = Client::connect(&server, Auth2::Header(&alice)).await;
    ws.welcome().await;
    ws.send(json!({"type": "subscribe", "thread_id": thread})).await;
    ws.expect("subscribed").await;
    let mut user = Client::connect(&server, Auth2::Header(&alice)).await;
    user.welcome().await;
    user.send(json!({"type": "subscribe_user"})).await;
    user.expect("subscribed").await;
    let body = json!({"assistant_id": "echo", "input": hi("alice's secret")});
    let (status, _) =
        server.http(&alice, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    for c in [&mut ws, &mut user] {
        while !is_terminal(&c.expect("event").await) {}
    }
    // The join replays from the start: once a frame came, it follows live.
    let mut join = SseClient::open(
        &server,
        &alice,
        "GET",
        &format!("/threads/{thread}/stream"),
        None,
        Some("-1"),
    )
    .await;
    assert_eq!(join.frame().await.unwrap().event, "values");
    // A long run streamed over SSE, deleted with its thread while it runs.
    let slow = json!({"assistant_id": "synthetic", "input": {"n": 10000, "delay_ms": 20}, "stream_mode": ["custom"]});
    let mut run_stream = SseClient::open(
        &server,
        &alice,
        "POST",
        &format!("/threads/{thread}/runs/stream"),
        Some(slow),
        None,
    )
    .await;
    assert_eq!(run_stream.frame().await.unwrap().event, "metadata");
    assert_eq!(run_stream.frame().await.unwrap().event, "custom");

    let (status, _) = server.http(&alice, "DELETE", &format!("/threads/{thread}"), None).await;
    assert_eq!(status, 204);

    // Each subscription ends with a frame that says why.
    let deleted = |frame: &Value| frame["type"] == "event" && frame["thread_id"] == thread.as_str();
    loop {
        let frame = ws.frame().await;
        if frame["type"] == "thread_deleted" {
            assert_eq!(frame["thread_id"], thread.as_str());
            break;
        }
        assert!(deleted(&frame), "{frame}");
    }
    loop {
        let frame = user.frame().await;
        if frame["type"] == "thread_deleted" {
            assert_eq!(frame["thread_id"], thread.as_str());
            break;
        }
        assert!(deleted(&frame), "{frame}");
    }
    for stream in [&mut join, &mut run_stream] {
        let rest = stream.rest().await;
        let last = rest.last().expect("a final frame");
        assert_eq!(last.event, "error", "{rest:?}");
        assert_eq!(last.data["error"], "ThreadDeleted", "{rest:?}");
    }

    // Bob takes the id and runs on it, watched by his own socket.
    let (status, t) =
        server.http(&bob, "POST", "/threads", Some(json!({"thread_id": thread}))).await;
    assert_eq!(status, 200, "{t}");
    let mut bob_ws = Client::connect(&server, Auth2::Header(&bob)).await;
    bob_ws.welcome().await;
    bob_ws.send(json!({"type": "subscribe", "thread_id": thread})).await;
    bob_ws.expect("subscribed").await;
    let body = json!({"assistant_id": "echo", "input": hi("bob's secret")});
    let (status, run) =
        server.http(&bob, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200, "{run}");
    let bobs = bob_ws.events_until_end_any().await;
    assert_eq!(bobs[0]["seq"], 1, "the new thread's seq starts again");

    // Nothing of Bob's reached Alice.
    until_pong(&mut ws, |_| false).await;
    until_pong(&mut user, |_| false).await;
    // And Alice cannot follow Bob's thread again.
    ws.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": 0})).await;
    assert_eq!(ws.frame().await["code"], "not_found");
    server.stop().await;
}

/// Issue #12, finding 2 (defence in depth): an event published to the hub for another owner
/// of the thread id is not delivered to the subscriber, on WebSocket or SSE.
async fn foreign_events_are_not_delivered(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let alice = server.key("alice").await;
    server.key("bob").await;
    let bob_id = server.store.ensure_user("bob").await.unwrap().user_id;
    let (_, t) = server.http(&alice, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let thread_id: ids::ThreadId = thread.parse().unwrap();
    let body = json!({"assistant_id": "echo", "input": hi("one")});
    let (status, _) =
        server.http(&alice, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    let mut ws = Client::connect(&server, Auth2::Header(&alice)).await;
    ws.welcome().await;
    ws.send(json!({"type": "subscribe", "thread_id": thread})).await;
    let last = ws.expect("subscribed").await["from_seq"].as_i64().unwrap() - 1;
    let mut user = Client::connect(&server, Auth2::Header(&alice)).await;
    user.welcome().await;
    user.send(json!({"type": "subscribe_user"})).await;
    user.expect("subscribed").await;
    let mut join = SseClient::open(
        &server,
        &alice,
        "GET",
        &format!("/threads/{thread}/stream"),
        None,
        Some("-1"),
    )
    .await;
    assert_eq!(join.frame().await.unwrap().event, "values");

    // Bob's event, for the same thread id, straight to the hub.
    let forged = store::Event {
        thread_id,
        seq: last + 1,
        run_id: None,
        kind: store::EventKind::Values,
        data: json!({"messages": [], "forged": true}),
        created_at: chrono::Utc::now(),
    };
    server.state.engine.hub().publish(bob_id, std::slice::from_ref(&forged));
    server.state.engine.hub().publish(bob_id, &[store::Event { seq: 1, ..forged }]);

    let body = json!({"assistant_id": "echo", "input": hi("two")});
    let (status, _) =
        server.http(&alice, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    let events = ws.events_until_end_any().await;
    assert_eq!(events[0]["seq"], last + 1, "{events:?}");
    assert!(events.iter().all(|e| e["data"].get("forged").is_none()), "{events:?}");
    until_pong(&mut ws, |_| false).await;
    until_pong(&mut user, |f| f["type"] == "event" && f["data"].get("forged").is_none()).await;
    loop {
        let frame = join.frame().await.unwrap();
        assert!(frame.data.get("forged").is_none(), "{frame:?}");
        if frame.data["messages"].as_array().is_some_and(|m| m.len() == 4) {
            break;
        }
    }
    drop(join);
    server.stop().await;
}

/// `after_seq` beyond the thread's last seq (up to i64::MAX) is refused, and the connection
/// stays usable.
async fn after_seq_bounds(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = Server::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    for after in [i64::MAX, i64::MAX - 1, 1] {
        c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
        let reply = c.expect("error").await;
        assert_eq!(reply["code"], "invalid_message", "{reply}");
        assert!(reply["detail"].as_str().unwrap().contains("after_seq"), "{reply}");
    }
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": 0})).await;
    assert_eq!(c.expect("subscribed").await["from_seq"], 1);
    server.stop().await;
}

/// Issue #12, finding 6: a socket whose API key is revoked is refused its next command
/// (`unauthenticated`) and closed with 4001; its subscriptions go with it.
async fn revoked_key_closes_the_socket(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let auth =
        Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap().with_key_recheck(Duration::ZERO);
    let server = Server::start_with(db.store.clone(), auth, fast()).await;
    let key = server.key("alice").await;
    let other = server.key("bob").await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let mut b = Client::connect(&server, Auth2::Header(&other)).await;
    b.welcome().await;
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    let keys = server.store.list_api_keys().await.unwrap();
    let alices = keys.iter().find(|k| key.starts_with(&k.prefix)).unwrap();
    server.store.revoke_api_key(alices.key_id).await.unwrap();
    c.send(json!({"type": "run", "assistant_id": "echo", "input": hi("after revoke")})).await;
    let refused = c.expect("error").await;
    assert_eq!(refused["code"], "unauthenticated", "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("revoked"), "{refused}");
    assert_eq!(c.close_code().await, 4001);
    // Bob's key still works.
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    server.stop().await;
}

/// Issue #12, finding 6: a socket authenticated with a JWT is closed with 4001 at the
/// token's `exp` (a real exp two seconds ahead; the wait is on the close, bounded).
async fn jwt_socket_closes_at_exp(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let jwt = JwtConfig { secret: Some(secret.into()), ..JwtConfig::default() };
    let auth = Auth::new(AuthMode::Jwt, &jwt).unwrap();
    let server = Server::start_with(db.store.clone(), auth, fast()).await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "dave", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut c = Client::connect(&server, Auth2::Protocol(&token)).await;
    c.welcome().await;
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    let expired = c.expect("error").await;
    assert_eq!(expired["code"], "unauthenticated", "{expired}");
    assert!(expired["detail"].as_str().unwrap().contains("expired"), "{expired}");
    assert!(chrono::Utc::now().timestamp() >= exp, "closed before exp");
    assert_eq!(c.close_code().await, 4001);
    server.stop().await;
}

/// Issue #12, finding 9: an SSE client that never reads, on a thread with large `values`
/// events, is dropped once its queue is over the byte budget past the deadline, and what the
/// server buffers for SSE stays bounded meanwhile; a client that reads gets everything.
async fn slow_sse_client_is_dropped(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let budget = 256 * 1024;
    let sse = api::stream::SseConfig {
        max_buffer: budget,
        slow_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let auth = Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap();
    let http = HttpConfig { ws: fast(), sse, ..HttpConfig::default() };
    let server = Server::start_http(db.store.clone(), auth, http).await;
    let key = server.key("alice").await;
    let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let big = "x".repeat(500 * 1024);
    let runs = 6;
    for _ in 0..runs {
        let body = json!({"assistant_id": "echo", "input": hi(&big)});
        let (status, _) =
            server.http(&key, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
        assert_eq!(status, 200);
    }
    let largest = 2 * runs * (big.len() + 200);

    // A client with a tiny receive buffer that never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(server.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let request = format!(
            "GET /threads/{thread}/stream HTTP/1.1\r\nhost: test\r\nx-api-key: {key}\r\nlast-event-id: -1\r\n\r\n"
        );
        slow.write_all(request.as_bytes()).await.unwrap();
    }
    // A client that reads everything.
    let mut reader = SseClient::open(
        &server,
        &key,
        "GET",
        &format!("/threads/{thread}/stream"),
        None,
        Some("-1"),
    )
    .await;
    loop {
        let frame = reader.frame().await.expect("the reading client's stream ended");
        assert_eq!(frame.event, "values");
        if frame.data["messages"].as_array().unwrap().len() == 2 * runs {
            break;
        }
    }

    let stats = server.state.sse.clone();
    let deadline = std::time::Instant::now() + BOUND;
    let mut most = 0;
    while stats.slow_dropped() == 0 {
        most = most.max(stats.buffered_bytes());
        assert!(std::time::Instant::now() < deadline, "the slow client was never dropped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most <= budget + largest, "buffered {most} bytes for SSE (budget {budget})");
    // Dropped: nothing is held for it any more.
    drop(reader);
    let deadline = std::time::Instant::now() + BOUND;
    while stats.buffered_bytes() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes still buffered",
            stats.buffered_bytes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(slow);
    server.stop().await;
}

/// Issue #12, finding 6 on SSE: a thread's stream joined with an API key ends (an `error`
/// event) once the key is revoked; one joined with a JWT ends at the token's `exp`.
async fn sse_streams_end_when_the_credential_lapses(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let jwt = JwtConfig { secret: Some(secret.into()), ..JwtConfig::default() };
    let auth = Auth::new(AuthMode::KeysAndJwt, &jwt).unwrap().with_key_recheck(Duration::ZERO);
    let server = Server::start_with(db.store.clone(), auth, fast()).await;
    let key = server.key("alice").await;
    let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let body = json!({"assistant_id": "echo", "input": hi("one")});
    let (status, _) =
        server.http(&key, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    let path = format!("/threads/{thread}/stream");

    let mut joined = SseClient::open(&server, &key, "GET", &path, None, Some("-1")).await;
    assert_eq!(joined.frame().await.unwrap().event, "values");
    let keys = server.store.list_api_keys().await.unwrap();
    server.store.revoke_api_key(keys[0].key_id).await.unwrap();
    let rest = tokio::time::timeout(BOUND, joined.rest()).await.expect("the stream did not end");
    let last = rest.last().expect("a final frame");
    assert_eq!((last.event.as_str(), &last.data["error"]), ("error", &json!("Unauthorized")));
    assert!(last.data["message"].as_str().unwrap().contains("revoked"), "{rest:?}");

    let exp = chrono::Utc::now().timestamp() + 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "erin", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let (_, auth_header_thread) = {
        let mut stream =
            SseClient::open(&server, &token, "POST", "/threads", Some(json!({})), None).await;
        let mut text = String::new();
        use tokio::io::AsyncReadExt;
        stream.stream.read_to_string(&mut text).await.unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
        ((), serde_json::from_str::<Value>(&body).unwrap())
    };
    let erins = auth_header_thread["thread_id"].as_str().unwrap().to_owned();
    let mut joined =
        SseClient::open(&server, &token, "GET", &format!("/threads/{erins}/stream"), None, None)
            .await;
    let rest = tokio::time::timeout(BOUND, joined.rest()).await.expect("the stream did not end");
    let last = rest.last().expect("a final frame");
    assert_eq!(last.event, "error", "{rest:?}");
    assert!(last.data["message"].as_str().unwrap().contains("expired"), "{rest:?}");
    assert!(chrono::Utc::now().timestamp() >= exp, "ended before exp");
    server.stop().await;
}

store::on_each_backend!(
    browser_flow,
    authentication,
    errors_keep_the_connection,
    isolation,
    resume_at_random_points,
    resume_across_restart,
    slow_consumer,
    heartbeat,
    limits,
    user_subscription_and_cancel,
    deleted_thread_ends_subscriptions,
    foreign_events_are_not_delivered,
    after_seq_bounds,
    revoked_key_closes_the_socket,
    jwt_socket_closes_at_exp,
    slow_sse_client_is_dropped,
    sse_streams_end_when_the_credential_lapses,
);
