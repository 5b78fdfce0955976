//! The listener and the request context against slow, idle, numerous and cross-site clients,
//! over real sockets on a real server (port 0), on SQLite and PostgreSQL (issue #12, findings
//! 3, 4, 7 and 10; issue #13's CORS preflight): deadlines on heads, bodies and idle keep-alive
//! connections (never on an established WebSocket or SSE stream), the connection caps,
//! `--auth local`'s Host and Origin checks, preflights, and the large-body places.

use std::time::Duration;

use crate::harness::NetConfig;
use crate::harness::{self, SocketApp};
use crate::harness::{AuthMode, auth};
use crate::harness::{CorsOrigins, HttpConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use store::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Every wait is bounded by this: a hang is a failure, not a stuck CI.
const BOUND: Duration = Duration::from_secs(10);

impl SocketApp {
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// One request on a new connection (`connection: close`): `head` is the request line and
    /// headers after `host`, without the blank line.
    async fn send(&self, head: &str, body: &str) -> Response {
        let mut stream = self.connect().await;
        let host = format!("127.0.0.1:{}", self.addr.port());
        write_request(&mut stream, &host, head, body, true).await;
        read_response(&mut stream).await.expect("a response")
    }
}

async fn write_request(stream: &mut TcpStream, host: &str, head: &str, body: &str, close: bool) {
    let (line, rest) = head.split_once("\r\n").unwrap_or((head, ""));
    let mut request = format!("{line}\r\nhost: {host}\r\n");
    if !rest.is_empty() {
        request.push_str(rest);
        request.push_str("\r\n");
    }
    if close {
        request.push_str("connection: close\r\n");
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
}

#[derive(Debug)]
struct Response {
    status: u16,
    /// The head, lowercased.
    head: String,
    body: Value,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    #[track_caller]
    fn error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{self:?}");
        assert_eq!(self.body["request_id"].as_str(), self.header("x-request-id"), "{self:?}");
    }
}

/// Reads one response with a `content-length` body (bounded); `None` when the connection
/// closes (or is reset) first.
async fn read_response(stream: &mut TcpStream) -> Option<Response> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if bytes.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = serde_json::from_slice(&bytes[end + 4..end + 4 + length])
                        .unwrap_or(Value::Null);
                    return Some(Response { status, head, body });
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.expect("a response or a close in time")
}

/// Waits (bounded) until the server closes `stream` (a socket or its read half); returns what
/// it sent before.
async fn closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.expect("the server closes the connection in time");
    bytes
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, condition: impl Fn() -> bool) {
    harness::eventually(what, BOUND, async || condition().then_some(())).await;
}

fn hi(text: &str) -> Value {
    json!({"messages": [{"role": "human", "content": text}]})
}

const HEADER: Duration = Duration::from_millis(200);
const IDLE: Duration = Duration::from_millis(300);
const BODY: Duration = Duration::from_millis(300);

fn short_deadlines() -> HttpConfig {
    HttpConfig {
        body_timeout: BODY,
        net: NetConfig {
            header_timeout: HEADER,
            idle_timeout: IDLE,
            max_connections: 1000,
            max_connections_per_address: 1000,
        },
        ..HttpConfig::default()
    }
}

/// Slow and idle strangers are dropped at their deadlines; an established WebSocket and an SSE
/// stream are not; authenticated requests are served throughout.
async fn slow_clients_are_dropped_at_their_deadlines(backend: Backend) {
    let Some(server) = SocketApp::on_fresh_db(backend, AuthMode::Keys, short_deadlines()).await
    else {
        return;
    };
    let key = server.key("alice").await;
    let host = format!("127.0.0.1:{}", server.addr.port());
    let create = format!("POST /threads HTTP/1.1\r\nx-api-key: {key}");

    // A WebSocket and a join stream, established before every deadline below starts.
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("x-api-key", HeaderValue::from_str(&key).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
    let thread = server.send(&create, "{}").await.body["thread_id"].as_str().unwrap().to_owned();
    let mut sse = server.connect().await;
    let join = format!("GET /threads/{thread}/stream HTTP/1.1\r\nx-api-key: {key}");
    write_request(&mut sse, &host, &join, "", false).await;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(BOUND, sse.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));

    let started = Instant::now();
    // Sends nothing at all.
    let mut silent = server.connect().await;
    // Trickles its head, a header line every 50 ms, never ending it.
    let trickle = server.connect().await;
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let trickler = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        if trickle_write.write_all(b"GET /ok HTTP/1.1\r\n").await.is_err() {
            return;
        }
        loop {
            every.tick().await;
            if trickle_write.write_all(b"x-slow: 1\r\n").await.is_err() {
                return;
            }
        }
    });
    // No credentials, a 10 MiB body announced and barely started: refused from its headers.
    let mut stranger = server.connect().await;
    let stranger_head = format!(
        "POST /threads HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{{\"metadata\": {{\"x\": \"",
        10 * 1024 * 1024
    );
    stranger.write_all(stranger_head.as_bytes()).await.unwrap();
    // Credentials, and all but the last byte of its body.
    let mut slow_body = server.connect().await;
    let body = json!({"metadata": {"x": "y".repeat(100)}}).to_string();
    let slow_head = format!(
        "POST /threads HTTP/1.1\r\nhost: {host}\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() - 1]
    );
    slow_body.write_all(slow_head.as_bytes()).await.unwrap();
    // One request, then silence on the kept-alive connection.
    let mut kept = server.connect().await;
    write_request(&mut kept, &host, "GET /ok HTTP/1.1", "", false).await;
    assert_eq!(read_response(&mut kept).await.unwrap().status, 200);
    let kept_idle_from = Instant::now();

    // Meanwhile, authenticated requests are served.
    assert_eq!(server.send(&create, "{}").await.status, 200);

    let refused = closed(&mut stranger).await;
    let refused = String::from_utf8_lossy(&refused).to_ascii_lowercase();
    assert!(refused.starts_with("http/1.1 401"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    // The routes anyone may call never read a stranger's body (nor queue it for a large-body
    // place): refused at once.
    for path in ["/ok", "/healthz", "/openapi.json"] {
        let mut public = server.connect().await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\r\nxx",
            10 * 1024 * 1024
        );
        public.write_all(head.as_bytes()).await.unwrap();
        let answer = closed(&mut public).await;
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("takes no request body"), "{path}: {answer}");
        assert!(answer.contains("connection: close"), "{path}: {answer}");
    }

    let timed_out = closed(&mut slow_body).await;
    let timed_out = String::from_utf8_lossy(&timed_out).to_ascii_lowercase();
    assert!(timed_out.starts_with("http/1.1 408"), "{timed_out}");
    assert!(timed_out.contains("connection: close"), "{timed_out}");
    assert!(timed_out.contains(r#""code":"request_timeout""#), "{timed_out}");

    assert!(closed(&mut silent).await.is_empty());
    assert!(started.elapsed() >= HEADER);
    assert!(closed(&mut trickle_read).await.is_empty());
    assert!(started.elapsed() >= HEADER);
    trickler.abort();
    assert!(closed(&mut kept).await.is_empty());
    assert!(kept_idle_from.elapsed() >= IDLE);

    // Every deadline has passed: the WebSocket and the stream are still served.
    ws.send(Message::text(r#"{"type": "ping", "ref": 1}"#)).await.unwrap();
    let pong = tokio::time::timeout(BOUND, ws.next()).await.unwrap().unwrap().unwrap();
    assert!(pong.to_text().unwrap().contains("pong"), "{pong:?}");
    let run = json!({"assistant_id": "echo", "input": hi("still there?")}).to_string();
    let start_run = format!(
        "POST /threads/{thread}/runs HTTP/1.1\r\nx-api-key: {key}\r\ncontent-type: application/json"
    );
    assert_eq!(server.send(&start_run, &run).await.status, 200);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("still there?") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(BOUND, sse.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the join stream was closed");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(server.send(&create, "{}").await.status, 200);
    // A join stream lasts until its client leaves, shutdown or not.
    drop((ws, sse));
    server.stop().await;
}

/// Open connections are capped in total and per client address: one over a cap is closed at
/// once; once one closes, an authenticated request is served again.
async fn connections_are_capped(backend: Backend) {
    for (total, per_address) in [(1000, 3), (3, 1000)] {
        let http = HttpConfig {
            net: NetConfig {
                header_timeout: Duration::from_secs(600),
                idle_timeout: Duration::from_secs(600),
                max_connections: total,
                max_connections_per_address: per_address,
            },
            ..HttpConfig::default()
        };
        let Some(server) = SocketApp::on_fresh_db(backend, AuthMode::Keys, http).await else {
            return;
        };
        let key = server.key("alice").await;
        let mut open = Vec::new();
        for _ in 0..3 {
            let mut stream = server.connect().await;
            let host = format!("127.0.0.1:{}", server.addr.port());
            write_request(&mut stream, &host, "GET /ok HTTP/1.1", "", false).await;
            assert_eq!(read_response(&mut stream).await.unwrap().status, 200);
            open.push(stream);
        }
        let mut extra = server.connect().await;
        assert!(closed(&mut extra).await.is_empty(), "the extra connection is closed unanswered");
        drop(open.pop());
        let create = format!("POST /threads HTTP/1.1\r\nx-api-key: {key}");
        let started = Instant::now();
        loop {
            // The server frees the place when it sees the close: until then, refused.
            let mut stream = server.connect().await;
            let host = format!("127.0.0.1:{}", server.addr.port());
            write_request(&mut stream, &host, &create, "{}", true).await;
            if let Some(response) = read_response(&mut stream).await {
                assert_eq!(response.status, 200, "{response:?}");
                break;
            }
            assert!(started.elapsed() < BOUND, "a place never came free");
        }
        drop(open);
        server.stop().await;
    }
    // An upgraded WebSocket keeps its place for as long as it is open (hyper hands the socket
    // over to the upgrade; the place must go with it).
    let http = HttpConfig {
        net: NetConfig {
            // Only the cap may close the extra connection.
            header_timeout: Duration::from_secs(600),
            max_connections_per_address: 2,
            ..NetConfig::default()
        },
        ..HttpConfig::default()
    };
    let Some(server) = SocketApp::on_fresh_db(backend, AuthMode::Keys, http).await else { return };
    let key = server.key("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
        request.headers_mut().insert("x-api-key", HeaderValue::from_str(&key).unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        // Upgraded and served by the channel (the HTTP connection has handed the socket over).
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
        sockets.push(ws);
    }
    let mut extra = server.connect().await;
    assert!(closed(&mut extra).await.is_empty(), "two WebSockets hold both places");
    drop(sockets);
    server.stop().await;
}

/// With `--auth local`, a foreign Host or Origin is refused (even a "simple" text/plain POST,
/// and a WebSocket handshake); loopback ones and `--cors-origins` are allowed. With keys, any
/// origin may call (credentials protect), and a preflight allows the headers it asks for.
async fn local_mode_refuses_foreign_hosts_and_origins(backend: Backend) {
    let Some(server) =
        SocketApp::on_fresh_db(backend, AuthMode::Local, HttpConfig::default()).await
    else {
        return;
    };
    let port = server.addr.port();
    let post = |host: String, origin: Option<&str>| {
        let mut head = "POST /threads HTTP/1.1\r\ncontent-type: text/plain".to_owned();
        if let Some(origin) = origin {
            head.push_str(&format!("\r\norigin: {origin}"));
        }
        (host, head)
    };
    let send = |host: String, head: String| {
        let addr = server.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            write_request(&mut stream, &host, &head, "{}", true).await;
            read_response(&mut stream).await.expect("a response")
        }
    };
    let (host, head) = post("evil.example".into(), None);
    send(host, head).await.error(403, "forbidden_host");
    let (host, head) = post(format!("rebind.evil.example:{port}"), None);
    send(host, head).await.error(403, "forbidden_host");
    let (host, head) = post(format!("127.0.0.1:{port}"), Some("https://evil.example"));
    send(host, head).await.error(403, "forbidden_origin");
    let (host, head) = post(format!("localhost:{port}"), Some("null"));
    send(host, head).await.error(403, "forbidden_origin");
    let (host, head) = post(format!("localhost:{port}"), Some("http://localhost.evil.example"));
    send(host, head).await.error(403, "forbidden_origin");
    for (host, origin) in [
        (format!("localhost:{port}"), Some("http://localhost:3000")),
        (format!("127.0.0.1:{port}"), Some("http://127.0.0.1:5173")),
        (format!("[::1]:{port}"), Some("https://[::1]")),
        (format!("127.0.0.1:{port}"), None),
    ] {
        let (host, head) = post(host, origin);
        let r = send(host, head).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), origin, "{r:?}");
    }
    let local = server.store.ensure_user(auth::LOCAL_SUBJECT).await.unwrap().user_id;
    let threads = server.store.list_threads(local, 100, 0).await.unwrap();
    assert_eq!(threads.len(), 4, "only the allowed requests wrote");

    // A preflight from a foreign origin is refused; from a loopback one, answered.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /threads HTTP/1.1\r\norigin: {origin}\r\naccess-control-request-method: POST\r\n\
             access-control-request-headers: content-type,x-auth-scheme"
        )
    };
    send(format!("127.0.0.1:{port}"), preflight("https://evil.example"))
        .await
        .error(403, "forbidden_origin");
    let r = send(format!("127.0.0.1:{port}"), preflight("http://localhost:3000")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("http://localhost:3000"));

    // The WebSocket handshake: a foreign Origin is refused before any upgrade.
    let ws = |origin: &'static str| {
        let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
        request.headers_mut().insert("origin", HeaderValue::from_static(origin));
        tokio_tungstenite::connect_async(request)
    };
    match ws("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("a foreign origin's WebSocket must be refused: {other:?}"),
    }
    let (mut socket, _) = ws("http://localhost:8080").await.unwrap();
    let welcome = socket.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
    drop(socket);
    server.stop().await;

    // --cors-origins adds origins to loopback ones in local mode.
    let http = HttpConfig {
        cors_origins: CorsOrigins::List(vec![HeaderValue::from_static("https://app.example")]),
        ..HttpConfig::default()
    };
    let Some(server) = SocketApp::on_fresh_db(backend, AuthMode::Local, http).await else { return };
    let port = server.addr.port();
    let send = |host: String, head: String| {
        let addr = server.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            write_request(&mut stream, &host, &head, "{}", true).await;
            read_response(&mut stream).await.expect("a response")
        }
    };
    let (host, head) = post(format!("127.0.0.1:{port}"), Some("https://app.example"));
    assert_eq!(send(host, head).await.status, 200);
    let (host, head) = post(format!("127.0.0.1:{port}"), Some("https://evil.example"));
    send(host, head).await.error(403, "forbidden_origin");
    server.stop().await;

    // With credentials, any origin and host: as before. A preflight (agent-chat-ui's headers)
    // is allowed, cached for 600 s, and goes through the request context (its log line).
    let Some(server) = SocketApp::on_fresh_db(backend, AuthMode::Keys, HttpConfig::default()).await
    else {
        return;
    };
    let key = server.key("alice").await;
    let head = format!(
        "POST /threads HTTP/1.1\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n\
         origin: https://evil.example"
    );
    let r = server.send(&head, "{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = server.send(&preflight("https://chat.example"), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let allowed = r.header("access-control-allow-headers").unwrap_or_default();
    assert!(allowed.contains("x-auth-scheme") && allowed.contains("content-type"), "{r:?}");
    assert_eq!(r.header("access-control-max-age"), Some("600"), "{r:?}");
    assert!(r.header("x-request-id").is_some_and(|id| id.parse::<ids::RequestId>().is_ok()));
    server.stop().await;
}

/// Large bodies wait for one of `--large-body-parses` places (finding 10): with one place, a
/// second large body waits until the first has been answered, then both are served.
async fn large_bodies_take_turns(backend: Backend) {
    let http = HttpConfig { large_body: 1024, large_body_parses: 1, ..HttpConfig::default() };
    let Some(server) = SocketApp::on_fresh_db(backend, AuthMode::Keys, http).await else { return };
    let key = server.key("alice").await;
    let host = format!("127.0.0.1:{}", server.addr.port());
    let body = |size: usize| {
        let mut text = json!({"metadata": {"x": ""}}).to_string();
        text.insert_str(text.len() - 3, &"a".repeat(size - text.len()));
        assert_eq!(text.len(), size);
        text
    };
    let head = |length: usize| {
        format!(
            "POST /threads HTTP/1.1\r\nhost: {host}\r\nx-api-key: {key}\r\n\
             content-type: application/json\r\nconnection: close\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    let first_body = body(4096);
    let mut first = server.connect().await;
    first.write_all(head(4096).as_bytes()).await.unwrap();
    first.write_all(&first_body.as_bytes()[..100]).await.unwrap();
    let large = server.state.large_bodies.clone();
    until("the first large body holds the place", || large.free() == 0).await;
    let mut second = server.connect().await;
    second.write_all((head(2048) + &body(2048)).as_bytes()).await.unwrap();
    until("the second large body waits", || large.waiting() == 1).await;
    first.write_all(&first_body.as_bytes()[100..]).await.unwrap();
    assert_eq!(read_response(&mut first).await.unwrap().status, 200);
    assert_eq!(read_response(&mut second).await.unwrap().status, 200);
    until("the place is given back", || large.free() == 1).await;
    server.stop().await;
}

store::on_each_backend!(
    slow_clients_are_dropped_at_their_deadlines,
    connections_are_capped,
    local_mode_refuses_foreign_hosts_and_origins,
    large_bodies_take_turns,
);
