//! An OpenAI-compatible model server for tests and benchmarks: `POST /v1/chat/completions`
//! with `stream: true`, framed as OpenAI frames it (a role-only first delta, content deltas,
//! tool-call fragments joined by `index`, a usage chunk with empty `choices`, `data: [DONE]`).
//!
//! What it answers is a queue of [`Reply`]s a test sets ([`ModelServer::push`]); with the
//! queue empty it follows rules a chat UI can drive by typing:
//! - after a tool's result, `the tool said: <result>`;
//! - `use NAME {json}` calls tool NAME with those arguments;
//! - `tokens N` streams N tokens (`t0`, ` `, `t1`, ...);
//! - `timed N` streams N tokens `"{i}:{unix_nanos} "`, each stamped with the wall clock when
//!   the HTTP layer takes it, as fast as the connection takes them ([`Reply::Timed`]); `timed
//!   N per K` writes K tokens' events in each HTTP chunk (as a server that batches its writes),
//!   `timed N every US` waits US microseconds between writes (a model's pace);
//! - anything else: `echo: <text>`, word by word.
//!
//! It records every request body and `Authorization` header, and counts the streams a client
//! abandoned (the connection closed before the stream's end).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// One answer of the model server.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Streams the text, a chunk per word and per space.
    Text(String),
    /// Streams `reasoning_content` deltas, then the answer.
    Reasoning { thinking: String, answer: String },
    /// Tool calls `(id, name, arguments as JSON text)`, streamed in fragments, the calls'
    /// fragments interleaved when there are several.
    ToolCalls(Vec<(String, String, String)>),
    /// `n` tokens as fast as the connection takes them.
    Tokens(usize),
    /// `tokens` tokens `"{i}:{unix_nanos} "` (see [`timed_token`]), `per_chunk` to an HTTP
    /// chunk (one write), each stamped when the HTTP layer polls for it, so a client in
    /// another process can measure each token's latency against its own clock
    /// (`SystemTime`). As fast as the connection takes them; not counted in
    /// [`ModelServer::abandoned`].
    /// `interval` between writes (zero: none).
    Timed { tokens: usize, per_chunk: usize, interval: Duration },
    /// An HTTP error before any token (429, 500, ...), with this body.
    Status(u16, String),
    /// One token, then the connection closes without `[DONE]`.
    CutAfterFirstToken,
    /// One token, then an `error` object in the stream, as OpenAI reports a failure mid-stream.
    ErrorAfterFirstToken(String),
    /// A data line that is not JSON.
    Malformed,
    /// The role chunk and one token, then nothing until the client goes away.
    Hang,
    /// No status line, no headers: nothing until the client goes away (counted abandoned).
    StallBeforeHeaders,
    /// These bytes as the response body, as they are (no role chunk, no `[DONE]` unless
    /// given), then the end of the body.
    Raw(Vec<Vec<u8>>),
}

/// Counts a request abandoned when its handler is dropped before it answered.
struct Abandoned(Arc<Inner>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        *self.0.abandoned.lock().expect("abandoned") += 1;
        self.0.changed.notify_waiters();
    }
}

#[derive(Debug, Default)]
struct Inner {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    abandoned: Mutex<usize>,
    changed: Notify,
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct ModelServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ModelServer {
    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start() -> ModelServer {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the model server");
        ModelServer::serve(listener)
    }

    /// Serves on a listener the caller bound (the `spindle-testkit model` binary).
    pub fn serve(listener: tokio::net::TcpListener) -> ModelServer {
        let addr = listener.local_addr().expect("the model server's address");
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(inner.clone());
        // Each write goes out at once (a stream's last small write must not wait for the
        // client's delayed ACK: 40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ModelServer { addr, inner, task }
    }

    /// The base URL a client is configured with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues the answer to a later request (in order).
    pub fn push(&self, reply: Reply) {
        self.inner.replies.lock().expect("replies").push_back(reply);
    }

    /// The bodies of the requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.requests.lock().expect("requests").clone()
    }

    /// The `Authorization` headers received so far.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.inner.authorizations.lock().expect("authorizations").clone()
    }

    /// Streams whose client went away before their end.
    pub fn abandoned(&self) -> usize {
        *self.inner.abandoned.lock().expect("abandoned")
    }

    /// Waits until `check` holds of the server (re-checked at each request and each
    /// abandoned stream), at most `limit`.
    pub async fn wait_for(&self, limit: Duration, check: impl Fn(&ModelServer) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.inner.changed.notified();
            if check(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return check(self);
            }
        }
    }
}

async fn completions(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    };
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
    inner.authorizations.lock().expect("authorizations").push(auth);
    inner.requests.lock().expect("requests").push(request.clone());
    inner.changed.notify_waiters();
    let reply = inner.replies.lock().expect("replies").pop_front();
    let served = inner.requests.lock().expect("requests").len();
    let reply = reply.unwrap_or_else(|| by_rules(&request, served));
    let model = request["model"].as_str().unwrap_or("test-model").to_owned();
    if let Reply::Status(status, body) = &reply {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = json!({ "error": { "message": body, "type": "test_error" } });
        return (status, [(header::CONTENT_TYPE, "application/json")], error.to_string())
            .into_response();
    }
    if let Reply::StallBeforeHeaders = &reply {
        let _abandoned = Abandoned(inner.clone());
        std::future::pending::<()>().await;
    }
    if let Reply::Raw(parts) = reply {
        let parts: Vec<Result<Vec<u8>, std::io::Error>> = parts.into_iter().map(Ok).collect();
        let body = Body::from_stream(tokio_stream::iter(parts));
        return ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
    }
    if request["stream"] != true {
        return (StatusCode::BAD_REQUEST, "this test server streams only").into_response();
    }
    if let Reply::Timed { tokens, per_chunk, interval } = reply {
        let body = timed(tokens, per_chunk, interval, model);
        return ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
    }
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(stream(reply, model, tx, inner));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// The rules the server answers by when no reply is queued.
/// `served`: requests so far, which makes each tool call's id unique on this server.
fn by_rules(request: &Value, served: usize) -> Reply {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let Some(last) = messages.last() else { return Reply::Text("echo: ".into()) };
    if last["role"] == "tool" {
        return Reply::Text(format!("the tool said: {}", text_of(&last["content"])));
    }
    let text = text_of(&last["content"]);
    if let Some(rest) = text.strip_prefix("use ") {
        let (name, args) = rest.split_once(' ').unwrap_or((rest, "{}"));
        return Reply::ToolCalls(vec![(format!("call_{served}"), name.into(), args.trim().into())]);
    }
    if let Some(n) = text.strip_prefix("tokens ").and_then(|n| n.trim().parse().ok()) {
        return Reply::Tokens(n);
    }
    if let Some(reply) = text.strip_prefix("timed ").and_then(timed_rule) {
        return reply;
    }
    Reply::Text(format!("echo: {text}"))
}

/// `N [per K] [every US]`.
fn timed_rule(rest: &str) -> Option<Reply> {
    let mut words = rest.split_whitespace();
    let tokens = words.next()?.parse().ok()?;
    let (mut per_chunk, mut interval) = (1, Duration::ZERO);
    while let Some(word) = words.next() {
        let value: u64 = words.next()?.parse().ok()?;
        match word {
            "per" => per_chunk = usize::try_from(value).ok()?,
            "every" => interval = Duration::from_micros(value),
            _ => return None,
        }
    }
    Some(Reply::Timed { tokens, per_chunk, interval })
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    }
}

/// Token `i` of a [`Reply::Timed`] stream, sent at `unix_nanos`.
pub fn timed_token(i: usize, unix_nanos: u128) -> String {
    format!("{i}:{unix_nanos} ")
}

/// Parses a [`timed_token`]: `(i, unix_nanos)`.
pub fn parse_timed_token(token: &str) -> Option<(usize, u128)> {
    let (i, nanos) = token.trim_end().split_once(':')?;
    Some((i.parse().ok()?, nanos.parse().ok()?))
}

/// The wall clock in nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A [`Reply::Timed`] body: a lazy stream, so each write is stamped when hyper asks for it
/// (not when a producer task queued it, which would count the queue's wait as the client's
/// latency); each write (one HTTP chunk) carries `per_chunk` tokens' events, `interval`
/// apart.
fn timed(n: usize, per_chunk: usize, interval: Duration, model: String) -> Body {
    let per_chunk = per_chunk.max(1);
    let writes = n.div_ceil(per_chunk);
    let frames = (0..writes + 2).map(move |k| {
        let frame = match k {
            0 => chunk(&model, json!({ "role": "assistant", "content": "" }), None),
            k if k <= writes => {
                let sent = unix_nanos();
                let first = (k - 1) * per_chunk;
                (first..n.min(first + per_chunk))
                    .map(|i| chunk(&model, json!({ "content": timed_token(i, sent) }), None))
                    .collect()
            }
            _ => {
                let end = chunk(&model, json!({}), Some("stop"));
                format!("{end}{}data: [DONE]\n\n", usage(&model, n))
            }
        };
        Ok::<_, std::io::Error>(frame)
    });
    let frames = tokio_stream::iter(frames);
    if interval.is_zero() {
        return Body::from_stream(frames);
    }
    // The throttle polls the next write when the interval is over: it is stamped then.
    Body::from_stream(tokio_stream::StreamExt::throttle(frames, interval))
}

type Tx = mpsc::Sender<Result<String, std::io::Error>>;

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    format!("data: {chunk}\n\n")
}

fn usage(model: &str, completion: usize) -> String {
    let chunk = json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [],
        "usage": { "prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion },
    });
    format!("data: {chunk}\n\n")
}

fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(" ".to_owned());
        }
        if !word.is_empty() {
            out.push(word.to_owned());
        }
    }
    out
}

/// Writes one reply's stream; a send that fails means the client went away.
async fn stream(reply: Reply, model: String, tx: Tx, inner: Arc<Inner>) {
    let finished = write(&reply, &model, &tx).await;
    if finished.is_err() || matches!(reply, Reply::Hang) {
        if matches!(reply, Reply::Hang) {
            tx.closed().await;
        }
        *inner.abandoned.lock().expect("abandoned") += 1;
        inner.changed.notify_waiters();
    }
}

async fn send(tx: &Tx, frame: String) -> Result<(), ()> {
    tx.send(Ok(frame)).await.map_err(|_| ())
}

async fn write(reply: &Reply, model: &str, tx: &Tx) -> Result<(), ()> {
    send(tx, chunk(model, json!({ "role": "assistant", "content": "" }), None)).await?;
    let mut count = 0;
    match reply {
        Reply::Text(text) => {
            for word in words(text) {
                count += 1;
                send(tx, chunk(model, json!({ "content": word }), None)).await?;
            }
        }
        Reply::Reasoning { thinking, answer } => {
            for word in words(thinking) {
                send(tx, chunk(model, json!({ "reasoning_content": word }), None)).await?;
            }
            for word in words(answer) {
                count += 1;
                send(tx, chunk(model, json!({ "content": word }), None)).await?;
            }
        }
        Reply::Tokens(n) => {
            for i in 0..*n {
                let token = if i % 2 == 1 { " ".to_owned() } else { format!("t{}", i / 2) };
                count += 1;
                send(tx, chunk(model, json!({ "content": token }), None)).await?;
            }
        }
        Reply::ToolCalls(calls) => {
            // First each call's id and name, then the arguments in pieces, the calls' pieces
            // interleaved (as OpenAI streams parallel calls).
            for (index, (id, name, _)) in calls.iter().enumerate() {
                let call = json!({ "index": index, "id": id, "type": "function", "function": { "name": name, "arguments": "" } });
                send(tx, chunk(model, json!({ "tool_calls": [call] }), None)).await?;
            }
            let pieces: Vec<Vec<String>> = calls
                .iter()
                .map(|(_, _, args)| {
                    let chars: Vec<char> = args.chars().collect();
                    chars.chunks(4).map(|c| c.iter().collect()).collect()
                })
                .collect();
            let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
            for k in 0..longest {
                for (index, parts) in pieces.iter().enumerate() {
                    if let Some(part) = parts.get(k) {
                        let call = json!({ "index": index, "function": { "arguments": part } });
                        send(tx, chunk(model, json!({ "tool_calls": [call] }), None)).await?;
                    }
                }
            }
            send(tx, chunk(model, json!({}), Some("tool_calls"))).await?;
            send(tx, usage(model, 5)).await?;
            return send(tx, "data: [DONE]\n\n".into()).await;
        }
        Reply::CutAfterFirstToken => {
            send(tx, chunk(model, json!({ "content": "partial" }), None)).await?;
            let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
            return tx.send(Err(cut)).await.map_err(|_| ());
        }
        Reply::ErrorAfterFirstToken(message) => {
            send(tx, chunk(model, json!({ "content": "partial" }), None)).await?;
            let error = json!({ "error": { "message": message, "type": "server_error" } });
            return send(tx, format!("data: {error}\n\n")).await;
        }
        Reply::Malformed => {
            return send(tx, "data: {not json\n\n".into()).await;
        }
        Reply::Hang => {
            return send(tx, chunk(model, json!({ "content": "thinking" }), None)).await;
        }
        Reply::Status(..) | Reply::StallBeforeHeaders | Reply::Raw(_) | Reply::Timed { .. } => {
            return Ok(());
        }
    }
    send(tx, chunk(model, json!({}), Some("stop"))).await?;
    send(tx, usage(model, count)).await?;
    send(tx, "data: [DONE]\n\n".into()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_token_reads_back() {
        assert_eq!(
            parse_timed_token(&timed_token(7, 1_796_152_217_070_931_782)),
            Some((7, 1_796_152_217_070_931_782))
        );
        assert_eq!(parse_timed_token("t0"), None);
        assert_eq!(parse_timed_token("x:1 "), None);
    }

    #[tokio::test]
    async fn timed_streams_n_tokens_in_order_then_done() {
        let body = timed(3, 2, Duration::from_millis(1), "m".into());
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("the body");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        let tokens: Vec<(usize, u128)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"].as_str().and_then(parse_timed_token)
            })
            .collect();
        assert_eq!(tokens.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(tokens.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn the_timed_rule() {
        let timed = |tokens, per_chunk, micros| {
            Some(Reply::Timed { tokens, per_chunk, interval: Duration::from_micros(micros) })
        };
        let check = |text: &str, expected: Option<Reply>| {
            assert_eq!(format!("{:?}", timed_rule(text)), format!("{expected:?}"), "{text}");
        };
        check("1000", timed(1000, 1, 0));
        check("1000 per 32", timed(1000, 32, 0));
        check("1000 every 500 per 4", timed(1000, 4, 500));
        check("1000 every", None);
        check("many", None);
        check("10 per x", None);
    }
}
