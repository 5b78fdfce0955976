//! The WebSocket channel over real sockets, on SQLite and PostgreSQL: authentication (headers,
//! subprotocol, first frame), runs and their events, resume with `after_seq` at random cut
//! points and across a restart, isolation between users, errors that keep the connection,
//! limits, slow consumers, heartbeats and graceful shutdown.

mod limits;
mod resume;
mod sessions;

use std::time::Duration;

use crate::harness::HttpConfig;
use crate::harness::WsConfig;
use crate::harness::{self, SocketApp};
use crate::harness::{Auth, AuthMode, JwtConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use store::testing::TestDb;
use store::{Backend, Store, StoreOptions};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Every wait in these tests is bounded by this: a hang is a failure, not a stuck CI.
const BOUND: Duration = Duration::from_secs(20);

impl SocketApp {
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
        server: &SocketApp,
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
    async fn connect(server: &SocketApp, auth: Auth2<'_>) -> Client {
        Client::try_connect(server, auth).await.unwrap()
    }

    async fn try_connect(server: &SocketApp, auth: Auth2<'_>) -> Result<Client, WsError> {
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
    async fn connect_small_buffer(server: &SocketApp, key: &str) -> Client {
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
