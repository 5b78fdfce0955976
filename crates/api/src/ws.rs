//! The WebSocket channel, `GET /ws`: one authenticated connection per client carries the
//! events of many threads, resumable from the durable log. The protocol is documented in
//! `docs/websocket.md`; this module is its only implementation.
//!
//! Each connection is two tasks: the connection task reads the client's frames, runs its
//! commands and moves events from its subscriptions into the outbound queue; the writer task
//! owns the socket's sending half. The outbound queue is bounded in bytes: a client that
//! cannot keep up is closed (4008) instead of slowing anyone else, and resumes from the log.
//! Subscriptions are [`Hub::events`](engine::Hub::events) streams (log, then live, no
//! gap at the switch); `subscribe_user` follows the user's live channel and fills any gap in a
//! thread it has already seen from the log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ids::{ConnectionId, RequestId, RunId, ThreadId, UserId};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tracing::field::{Empty, display};
use tracing::{Instrument, Span};

use crate::AppState;
use crate::auth::{AuthMode, Caller, Credential};
use crate::context::RequestContext;
use crate::error::{ApiError, REQUEST_ID, current_request_id};
use crate::metrics::{self, LookupFailure, Transport};
use domain::CancelAction;
use engine::{Ended, Live, Notice, Published};
use protocol::wire::RunOut;
use protocol::ws::{
    Authenticate, BEARER_PROTOCOL, Cancel, ClientFrame, FrameError, PROTOCOL, ServerFrame,
    StartRun, Subscribe, TYPES, Unsubscribe, close,
};

/// Consecutive frames answered with an error before the connection is closed (1008).
const MAX_CONSECUTIVE_ERRORS: u32 = 50;
/// The writer sends what is queued in batches of about this many bytes per flush.
const FLUSH_BYTES: usize = 64 * 1024;
/// Events of one thread read from the log at a time when filling a gap.
const GAP_PAGE: i64 = 500;

/// Settings of the WebSocket channel (`serve --ws-*`).
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// How often the server pings; a connection that sends nothing back for a whole interval
    /// after a ping is closed (4009).
    pub ping_interval: Duration,
    /// Largest frame the client may send; a larger one is answered with `too_large` (and one
    /// over [`WsConfig::hard_limit`] closes the connection, 1009).
    pub max_message: usize,
    /// Bytes queued for a client before it is closed as a slow consumer (4008).
    pub max_outbound: usize,
    pub max_connections_per_user: usize,
    pub max_subscriptions: usize,
    /// How long a connection without credentials in its handshake has to send `auth`.
    pub auth_timeout: Duration,
    /// How long the writer tries to deliver a closing frame before dropping the connection.
    pub close_timeout: Duration,
    /// The socket's read buffer (tungstenite's default is 128 KiB per connection).
    pub read_buffer: usize,
    /// Bytes the socket buffers before writing (0 writes every frame at once).
    pub write_buffer: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_interval: Duration::from_secs(25),
            max_message: 64 * 1024,
            max_outbound: 1024 * 1024,
            max_connections_per_user: 100,
            max_subscriptions: 100,
            auth_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            read_buffer: 4 * 1024,
            write_buffer: 8 * 1024,
        }
    }
}

impl WsConfig {
    /// Frames above this are not read at all: the connection closes with 1009.
    pub fn hard_limit(&self) -> usize {
        (self.max_message * 4).max(1024 * 1024)
    }
}

/// The open connections: per-user counts, the shutdown signal, and how many are open.
#[derive(Debug)]
pub struct Connections {
    pub config: WsConfig,
    per_user: Mutex<HashMap<UserId, usize>>,
    shutdown: watch::Sender<bool>,
    open: watch::Sender<usize>,
}

impl Connections {
    pub fn new(config: WsConfig) -> Connections {
        Connections {
            config,
            per_user: Mutex::default(),
            shutdown: watch::channel(false).0,
            open: watch::channel(0).0,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Tells every connection to close with 1001 (graceful shutdown).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes when no connection is open.
    pub async fn all_closed(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }
}

/// A connection's place in [`Connections`], given back on drop.
struct Slot {
    connections: Arc<Connections>,
    user: Option<UserId>,
}

impl Slot {
    fn open(connections: Arc<Connections>) -> Slot {
        connections.open.send_modify(|n| *n += 1);
        metrics::ws_connection_opened();
        Slot { connections, user: None }
    }

    /// Counts the connection against its user's limit; false when the user is at the limit.
    fn claim(&mut self, user: UserId) -> bool {
        let max = self.connections.config.max_connections_per_user;
        let mut per_user = self.connections.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.entry(user).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        self.user = Some(user);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(user) = self.user {
            let mut per_user = self.connections.per_user.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_user.get_mut(&user) {
                *count -= 1;
                if *count == 0 {
                    per_user.remove(&user);
                }
            }
        }
        self.connections.open.send_modify(|n| *n -= 1);
        metrics::ws_connection_closed();
    }
}

/// Open the WebSocket channel (see docs/websocket.md).
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!(
            "GET /ws opens a WebSocket: send Connection: upgrade, Upgrade: websocket and \
             Sec-WebSocket-Version: 13 ({})",
            e.body_text()
        ))
    })?;
    let request_id = current_request_id();
    let caller = handshake_caller(&state, &headers).await?;
    let config = &state.ws.config;
    let upgrade = upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(config.read_buffer)
        .write_buffer_size(config.write_buffer)
        .max_message_size(config.hard_limit())
        .max_frame_size(config.hard_limit());
    Ok(upgrade.on_upgrade(move |socket| {
        let span = tracing::info_span!(
            "ws",
            connection_id = Empty,
            request_id = %request_id,
            user_id = Empty,
        );
        connection(state, socket, caller).instrument(span)
    }))
}

/// The caller, if the handshake carries credentials (headers, or the bearer subprotocol);
/// `None` when it carries none and the first frame must authenticate. Bad credentials are a
/// 401 before any upgrade.
async fn handshake_caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Caller>, ApiError> {
    let has_header =
        headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key");
    if has_header || state.auth.mode() == AuthMode::Local {
        return state.auth.authenticate(&state.engine, headers).await.map(Some);
    }
    match protocol_token(headers) {
        Some(token) => authenticate_token(state, token).await.map(Some),
        None => Ok(None),
    }
}

/// The token of a `spindle.bearer.<token>` subprotocol.
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL))
}

async fn authenticate_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ApiError::Unauthorized("the token is not valid header text".into()))?;
    headers.insert(header::AUTHORIZATION, value);
    state.auth.authenticate(&state.engine, &headers).await
}

/// Why the connection task stopped: a close frame to send, or none (the client left).
type Closing = Option<(u16, String)>;

async fn connection(state: AppState, socket: WebSocket, caller: Option<Caller>) {
    let id = ConnectionId::new();
    Span::current().record("connection_id", display(id));
    let mut slot = Slot::open(state.ws.clone());
    let config = state.ws.config.clone();
    let (sink, mut stream) = socket.split();
    let (out, writer) = Outbound::start(sink, &config);
    let caller = match caller {
        Some(caller) => Ok(caller),
        None => Box::pin(first_frame_auth(&state, &mut stream, &out, config.auth_timeout)).await,
    };
    let closing = match caller {
        Err(closing) => closing,
        Ok(caller) => {
            Span::current().record("user_id", display(caller.user));
            if slot.claim(caller.user) {
                metrics::session_opened(Transport::Ws);
                tracing::info!("websocket connected");
                let mut conn = Conn::new(state, caller, out.clone());
                conn.send(&ServerFrame::Welcome {
                    connection_id: id,
                    user_id: conn.user,
                    request_id: current_request_id_or_new(),
                });
                conn.serve(&mut stream).await
            } else {
                let detail = format!(
                    "this user already has {} WebSocket connections open, the most allowed",
                    config.max_connections_per_user
                );
                let _ = out.error("too_many_connections", &detail, None, RequestId::new());
                Some((close::TOO_MANY_CONNECTIONS, detail))
            }
        }
    };
    match &closing {
        Some((code, reason)) => {
            tracing::info!(code, reason = %reason, "websocket closed by the server")
        }
        None => tracing::info!("websocket closed by the client"),
    }
    out.close(closing);
    drop(stream);
    // The writer delivers the close frame, unless the client takes nothing more.
    let mut writer = writer;
    if tokio::time::timeout(config.close_timeout, &mut writer).await.is_err() {
        tracing::debug!("the client did not take the close frame in time");
        writer.abort();
    }
}

/// The request id of the upgrade, if this runs inside it; a new one otherwise.
fn current_request_id_or_new() -> RequestId {
    REQUEST_ID.try_with(|id| *id).unwrap_or_else(|_| RequestId::new())
}

/// Waits for the first frame to be `{"type": "auth", "token": ...}`.
async fn first_frame_auth(
    state: &AppState,
    stream: &mut SplitStream<WebSocket>,
    out: &Outbound,
    timeout: Duration,
) -> Result<Caller, Closing> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let fail = |detail: String| {
        let _ = out.error("unauthenticated", &detail, None, RequestId::new());
        Some((close::UNAUTHENTICATED, detail))
    };
    loop {
        let frame = tokio::select! {
            () = &mut deadline => {
                return Err(fail(format!(
                    "no credentials: send {{\"type\": \"auth\", \"token\": ...}} within {:?}, or \
                     credentials in the handshake (see docs/websocket.md)",
                    timeout
                )));
            }
            frame = stream.next() => frame,
        };
        let text = match frame {
            None | Some(Err(_)) => return Err(None),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) => return Err(None),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                return Err(fail(
                    "the first frame must be a text frame {\"type\": \"auth\", ...}".into(),
                ));
            }
        };
        let frame = serde_json::from_str(&text).map(ClientFrame::decode);
        return match frame {
            Ok(Ok(ClientFrame::Auth(Authenticate { token: Some(token) }))) => {
                authenticate_token(state, &token).await.map_err(|e| {
                    let (_, _, detail) = e.into_parts(RequestId::new());
                    fail(detail)
                })
            }
            _ => Err(fail(
                "the first frame must be {\"type\": \"auth\", \"token\": \"<API key or JWT>\"}"
                    .into(),
            )),
        };
    }
}

/// The sending half: a queue bounded in bytes, drained by the writer task.
#[derive(Clone, Debug)]
struct Outbound {
    tx: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    close: Arc<Mutex<Option<oneshot::Sender<CloseFrame>>>>,
}

/// The outbound queue is over its limit.
#[derive(Debug)]
struct Overflow;

impl Outbound {
    fn start(
        sink: SplitSink<WebSocket, Message>,
        config: &WsConfig,
    ) -> (Outbound, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(
            write_loop(sink, rx, queued.clone(), close_rx).instrument(Span::current()),
        );
        let out = Outbound {
            tx,
            queued,
            limit: config.max_outbound,
            close: Arc::new(Mutex::new(Some(close_tx))),
        };
        (out, writer)
    }

    fn send(&self, message: Message) -> Result<(), Overflow> {
        let size = message_size(&message);
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        // A frame larger than the limit still goes to a client that has taken everything
        // else (a long conversation's `values`); the limit is on what piles up.
        if before > 0 && before + size > self.limit {
            return Err(Overflow);
        }
        // An error means the writer has stopped (the socket failed); the connection task
        // notices through `closed`.
        let _ = self.tx.send(message);
        Ok(())
    }

    fn text(&self, text: impl Into<Utf8Bytes>) -> Result<(), Overflow> {
        self.send(Message::Text(text.into()))
    }

    fn error(
        &self,
        code: &str,
        detail: &str,
        r#ref: Option<&Value>,
        request_id: RequestId,
    ) -> Result<(), Overflow> {
        self.text(ServerFrame::Error { code, detail, r#ref, request_id, thread_id: None }.text())
    }

    /// Ends the connection. A slow consumer's close frame goes before everything still queued
    /// (the queue is what it could not take); any other close frame after it, so that an
    /// `error` frame explaining the close arrives first. `None` (the client left) just stops
    /// the writer.
    fn close(&self, closing: Closing) {
        let sender = self.close.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(sender) = sender else { return };
        match closing {
            Some((code, reason)) if code != close::SLOW_CONSUMER => {
                let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
                let _ = self.tx.send(Message::Close(Some(frame)));
            }
            Some((code, reason)) => {
                let _ = sender.send(CloseFrame { code, reason: Utf8Bytes::from(reason) });
            }
            None => {
                let _ = sender.send(CloseFrame { code: 1000, reason: Utf8Bytes::default() });
            }
        }
    }

    /// Completes when the writer has stopped.
    async fn closed(&self) {
        self.tx.closed().await;
    }
}

fn message_size(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 2,
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
    mut close: oneshot::Receiver<CloseFrame>,
) {
    // Without a signal (its sender dropped), the writer drains the queue to its end.
    let mut signalled = true;
    let frame = loop {
        tokio::select! {
            biased;
            frame = &mut close, if signalled => match frame {
                Ok(frame) => break frame,
                Err(_) => signalled = false,
            },
            written = write_batch(&mut sink, &mut rx, &queued) => match written {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket write failed");
                    return;
                }
            },
        }
    };
    drop(rx);
    // A normal end by the client needs no frame; a slow consumer is told why.
    if frame.code != 1000 {
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// Writes what is queued (about [`FLUSH_BYTES`] at most) and flushes; false when the queue
/// is closed or a close frame was written.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    queued: &AtomicUsize,
) -> Result<bool, axum::Error> {
    let Some(mut next) = rx.recv().await else { return Ok(false) };
    let mut bytes = 0;
    loop {
        let closing = matches!(next, Message::Close(_));
        bytes += message_size(&next);
        sink.feed(next).await?;
        if closing {
            sink.flush().await?;
            return Ok(false);
        }
        if bytes >= FLUSH_BYTES {
            break;
        }
        match rx.try_recv() {
            Ok(message) => next = message,
            Err(_) => break,
        }
    }
    sink.flush().await?;
    queued.fetch_sub(bytes, Ordering::Relaxed);
    Ok(true)
}

/// A command that failed: an `error` frame (the connection stays open).
struct Failure {
    code: &'static str,
    detail: String,
}

impl Failure {
    fn new(code: &'static str, detail: impl Into<String>) -> Failure {
        Failure { code, detail: detail.into() }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        let (_, code, detail) = e.into_parts(current_request_id());
        Failure { code, detail }
    }
}

impl From<domain::Error> for Failure {
    fn from(e: domain::Error) -> Failure {
        ApiError::from(e).into()
    }
}

impl From<ids::ParseIdError> for Failure {
    fn from(e: ids::ParseIdError) -> Failure {
        metrics::id_parse_failed(&e);
        if e.kind == ids::IdKind::Thread {
            metrics::thread_lookup_failed(LookupFailure::MalformedId);
        }
        Failure::new("invalid_id", e.to_string())
    }
}

/// One authenticated connection's state.
struct Conn {
    state: AppState,
    user: UserId,
    subject: String,
    /// Re-checked before every command, and at a JWT's `exp` (closed 4001 when invalid).
    credential: Credential,
    out: Outbound,
    /// Per-thread subscriptions: the log, then live.
    subs: StreamMap<ThreadId, ReceiverStream<Result<Arc<Published>, Ended>>>,
    /// The user's live channel, after `subscribe_user`.
    user_live: Option<Live>,
    /// The seq of the last event delivered per thread (no duplicates across subscriptions).
    delivered: HashMap<ThreadId, i64>,
    /// Deleted threads whose delete the user's channel has not announced yet.
    deleting: HashSet<ThreadId>,
    /// Frames answered with an error in a row.
    errors: u32,
    /// Set when the connection must close (slow consumer).
    closing: Closing,
}

impl Conn {
    fn new(state: AppState, caller: Caller, out: Outbound) -> Conn {
        Conn {
            state,
            user: caller.user,
            subject: caller.subject,
            credential: caller.credential,
            out,
            subs: StreamMap::new(),
            user_live: None,
            delivered: HashMap::new(),
            deleting: HashSet::new(),
            errors: 0,
            closing: None,
        }
    }

    /// Queues a frame; over the queue's limit, marks the connection for closing.
    fn send(&mut self, frame: &ServerFrame<'_>) {
        self.send_text(frame.text());
    }

    fn send_text(&mut self, text: impl Into<Utf8Bytes>) {
        if self.closing.is_none() && self.out.text(text).is_err() {
            self.slow_consumer();
        }
    }

    fn slow_consumer(&mut self) {
        tracing::warn!(limit = self.out.limit, "closing a slow consumer");
        metrics::ws_slow_consumer_closed();
        self.closing = Some((
            close::SLOW_CONSUMER,
            "slow consumer: the outbound queue is full; reconnect and resume with after_seq".into(),
        ));
    }

    /// Serves the connection until it must close.
    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) -> Closing {
        let ping_interval = self.state.ws.config.ping_interval;
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        let mut shutdown = self.state.ws.shutdown.subscribe();
        let mut heard = true;
        // A JWT's connection ends at its `exp`.
        let expiry = self.credential.expires_in();
        let expired = async move {
            match expiry {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => {
                    return Some((close::GOING_AWAY, "the server is shutting down".into()));
                }
                () = &mut expired => {
                    return self.unauthenticated("the JWT has expired".into(), RequestId::new());
                }
                () = self.out.closed() => return None,
                frame = stream.next() => {
                    heard = true;
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Err(e)) => return too_big(&e),
                        // Boxed: an idle connection's task keeps only the size of its waiting
                        // state, not that of the largest command.
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(&text)).await,
                        Some(Ok(Message::Binary(_))) => {
                            let failure = Failure::new(
                                "unsupported_frame",
                                "binary frames are not part of the protocol: send JSON text",
                            );
                            self.fail(failure, None, RequestId::new());
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                Some((thread, item)) = self.subs.next(), if !self.subs.is_empty() => {
                    self.on_thread_event(thread, item);
                }
                item = recv_user(&mut self.user_live), if self.user_live.is_some() => {
                    Box::pin(self.on_user_event(item)).await;
                }
                _ = heartbeat.tick() => {
                    if !heard {
                        return Some((close::HEARTBEAT, "no pong to the last ping".into()));
                    }
                    heard = false;
                    if self.out.send(Message::Ping(Default::default())).is_err() {
                        self.slow_consumer();
                    }
                }
            }
            if self.errors >= MAX_CONSECUTIVE_ERRORS {
                return Some((
                    close::POLICY,
                    format!("{MAX_CONSECUTIVE_ERRORS} invalid frames in a row"),
                ));
            }
            if self.closing.is_some() {
                return self.closing.take();
            }
        }
    }

    /// Tells the client its credential is no longer valid; the connection closes with 4001.
    fn unauthenticated(&mut self, why: String, request_id: RequestId) -> Closing {
        tracing::info!(reason = %why, "websocket credential no longer valid");
        let detail = format!("{why}: authenticate again on a new connection");
        let _ = self.out.error("unauthenticated", &detail, None, request_id);
        Some((close::UNAUTHENTICATED, detail))
    }

    async fn on_text(&mut self, text: &str) {
        let request_id = RequestId::new();
        // Every command runs with a credential that is valid now (a key revoked since the
        // connection opened, or a JWT past its `exp`, ends it).
        if let Err(why) = self.state.auth.recheck(&self.state.engine, &self.credential).await {
            self.closing = self.unauthenticated(why, request_id);
            return;
        }
        let span = tracing::info_span!(
            "message",
            request_id = %request_id,
            r#type = Empty,
            thread_id = Empty,
            run_id = Empty,
        );
        REQUEST_ID.scope(request_id, self.on_frame(text, request_id).instrument(span)).await;
    }

    async fn on_frame(&mut self, text: &str, request_id: RequestId) {
        let max = self.state.ws.config.max_message;
        if text.len() > max {
            let failure = Failure::new(
                "too_large",
                format!("frames are limited to {max} bytes; this one has {}", text.len()),
            );
            return self.fail(failure, None, request_id);
        }
        let frame: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let failure = Failure::new("invalid_json", format!("the frame is not JSON: {e}"));
                return self.fail(failure, None, request_id);
            }
        };
        let r#ref = frame.get("ref").cloned();
        if let Some(kind) = frame.get("type").and_then(Value::as_str) {
            Span::current().record("type", kind);
        }
        let frame = match ClientFrame::decode(frame) {
            Ok(frame) => frame,
            Err(e) => return self.fail(refused(e), r#ref.as_ref(), request_id),
        };
        let result = match frame {
            ClientFrame::Subscribe(m) => self.subscribe(m, r#ref.as_ref()).await,
            ClientFrame::Unsubscribe(m) => self.unsubscribe(m, r#ref.as_ref()),
            ClientFrame::SubscribeUser => self.subscribe_user(r#ref.as_ref()),
            ClientFrame::UnsubscribeUser => {
                self.user_live = None;
                self.deleting.clear();
                self.send(&ServerFrame::Unsubscribed { thread_id: None, r#ref: r#ref.as_ref() });
                Ok(())
            }
            ClientFrame::Run(m) => self.run(*m, r#ref.as_ref(), request_id).await,
            ClientFrame::Cancel(m) => self.cancel(m, r#ref.as_ref()).await,
            ClientFrame::Ping => {
                self.send(&ServerFrame::Pong { r#ref: r#ref.as_ref() });
                Ok(())
            }
            ClientFrame::Auth(_) => {
                Err(Failure::new("already_authenticated", "this connection is authenticated"))
            }
        };
        match result {
            Ok(()) => self.errors = 0,
            Err(failure) => self.fail(failure, r#ref.as_ref(), request_id),
        }
    }

    fn fail(&mut self, failure: Failure, r#ref: Option<&Value>, request_id: RequestId) {
        self.errors += 1;
        tracing::info!(code = failure.code, detail = %failure.detail, "websocket frame refused");
        if self.closing.is_none()
            && self.out.error(failure.code, &failure.detail, r#ref, request_id).is_err()
        {
            self.slow_consumer();
        }
    }

    fn subscriptions(&self) -> usize {
        self.subs.len() + usize::from(self.user_live.is_some())
    }

    fn check_room(&self) -> Result<(), Failure> {
        let max = self.state.ws.config.max_subscriptions;
        if self.subscriptions() >= max {
            return Err(Failure::new(
                "too_many_subscriptions",
                format!("a connection may hold {max} subscriptions; unsubscribe from one first"),
            ));
        }
        Ok(())
    }

    async fn subscribe(&mut self, m: Subscribe, r#ref: Option<&Value>) -> Result<(), Failure> {
        let thread: ThreadId = m.thread_id.parse()?;
        Span::current().record("thread_id", display(thread));
        if !self.subs.contains_key(&thread) {
            self.check_room()?;
        }
        if m.after_seq.is_some_and(|n| n < 0) {
            return Err(Failure::new("invalid_message", "after_seq: expected 0 or more"));
        }
        let current = self.state.engine.owned_thread(self.user, thread).await?;
        // No event after the thread's last was ever sent (and `after_seq + 1` must not wrap).
        if let Some(n) = m.after_seq.filter(|n| *n > current.last_seq) {
            return Err(Failure::new(
                "invalid_message",
                format!(
                    "after_seq: expected at most {}, the thread's last seq (got {n})",
                    current.last_seq
                ),
            ));
        }
        let after = m.after_seq.unwrap_or(current.last_seq);
        self.follow(thread, after, None, m.after_seq.is_some(), r#ref);
        Ok(())
    }

    /// Subscribes to `thread`'s events after `after` (replacing any subscription to it) and
    /// says so; `early`, a live subscription taken before a run was created, loses nothing of
    /// that run.
    fn follow(
        &mut self,
        thread: ThreadId,
        after: i64,
        early: Option<Live>,
        recovered: bool,
        r#ref: Option<&Value>,
    ) {
        let events = self.state.engine.events(self.user, thread, None, after, early);
        self.subs.insert(thread, ReceiverStream::new(events));
        self.delivered.insert(thread, after);
        self.deleting.remove(&thread);
        self.send(&ServerFrame::Subscribed {
            thread_id: Some(thread),
            from_seq: Some(after + 1),
            recovered,
            r#ref,
        });
    }

    fn unsubscribe(&mut self, m: Unsubscribe, r#ref: Option<&Value>) -> Result<(), Failure> {
        let thread: ThreadId = m.thread_id.parse()?;
        self.subs.remove(&thread);
        self.delivered.remove(&thread);
        self.send(&ServerFrame::Unsubscribed { thread_id: Some(thread), r#ref });
        Ok(())
    }

    fn subscribe_user(&mut self, r#ref: Option<&Value>) -> Result<(), Failure> {
        if self.user_live.is_none() {
            self.check_room()?;
            self.user_live = Some(self.state.engine.hub().subscribe_user(self.user));
        }
        self.send(&ServerFrame::Subscribed {
            thread_id: None,
            from_seq: None,
            recovered: false,
            r#ref,
        });
        Ok(())
    }

    async fn run(
        &mut self,
        m: StartRun,
        r#ref: Option<&Value>,
        request_id: RequestId,
    ) -> Result<(), Failure> {
        let (thread, new_thread) = match &m.thread_id {
            Some(t) => (t.parse::<ThreadId>()?, false),
            None => (ThreadId::new(), true),
        };
        Span::current().record("thread_id", display(thread));
        let subscribe = m.subscribe.unwrap_or(true) && !self.subs.contains_key(&thread);
        if subscribe {
            self.check_room()?;
        }
        // Subscribed before the run exists, from the thread's current end: every event of
        // the run arrives.
        let early = if subscribe {
            let live = self.state.engine.hub().subscribe(thread);
            let before = if new_thread {
                0
            } else {
                match self.state.engine.get_thread(self.user, thread).await {
                    Ok(t) => t.last_seq,
                    Err(domain::Error::NotFound { .. }) => 0,
                    Err(e) => return Err(e.into()),
                }
            };
            Some((live, before))
        } else {
            None
        };
        let context = RequestContext { request_id, user: self.user, subject: self.subject.clone() };
        let run =
            crate::run_request::start_for_ws(&self.state, &context, thread, new_thread, m.body)
                .await?;
        Span::current().record("run_id", display(run.run_id));
        if let Some((live, before)) = early {
            self.follow(thread, before, Some(live), false, r#ref);
        }
        self.send(&ServerFrame::Run { run: RunOut::from(run), r#ref });
        Ok(())
    }

    async fn cancel(&mut self, m: Cancel, r#ref: Option<&Value>) -> Result<(), Failure> {
        let thread: ThreadId = m.thread_id.parse()?;
        let run_id: RunId = m.run_id.parse()?;
        Span::current().record("thread_id", display(thread));
        Span::current().record("run_id", display(run_id));
        let action = match m.action.as_deref() {
            None | Some("interrupt") => CancelAction::Interrupt,
            Some("rollback") => CancelAction::Rollback,
            Some(other) => {
                return Err(Failure::new(
                    "invalid_message",
                    format!("action: expected interrupt or rollback, got `{other}`"),
                ));
            }
        };
        let run = self.state.engine.get_run(self.user, thread, run_id).await?;
        if run.status.is_active() {
            self.state.engine.cancel_run(self.user, &run, action).await?;
        }
        let now = match self.state.engine.get_run(self.user, thread, run_id).await {
            Ok(now) => now,
            Err(domain::Error::NotFound { .. }) => run,
            Err(e) => return Err(e.into()),
        };
        self.send(&ServerFrame::Run { run: RunOut::from(now), r#ref });
        Ok(())
    }

    /// An event (or error) from a per-thread subscription.
    fn on_thread_event(&mut self, thread: ThreadId, item: Result<Arc<Published>, Ended>) {
        match item {
            Ok(event) => self.deliver(&event),
            Err(Ended::ThreadDeleted(_)) => {
                self.subs.remove(&thread);
                self.delivered.remove(&thread);
                // The old thread's events may still be queued on the user's channel before its
                // own notice of the delete: skip them until it comes.
                if self.user_live.is_some() {
                    self.deleting.insert(thread);
                }
                self.send(&ServerFrame::thread_deleted(thread));
            }
            Err(Ended::Store(e)) => {
                self.subs.remove(&thread);
                self.delivered.remove(&thread);
                let failure = Failure::from(e);
                self.send(&ServerFrame::Error {
                    code: failure.code,
                    detail: &failure.detail,
                    r#ref: None,
                    request_id: RequestId::new(),
                    thread_id: Some(thread),
                });
            }
        }
    }

    /// An event from the user's live channel: threads with their own subscription get their
    /// events from it; for others, a gap after an event already delivered is read from the log.
    /// A deleted thread's last seq is forgotten (the id may be created again, from seq 1).
    async fn on_user_event(&mut self, item: Result<Notice, broadcast::error::RecvError>) {
        let event = match item {
            Ok(Notice::Event(event)) => event,
            Ok(Notice::Deleted { thread, owner }) => {
                if owner == self.user
                    && !self.deleting.remove(&thread)
                    && !self.subs.contains_key(&thread)
                    && self.delivered.remove(&thread).is_some()
                {
                    self.send(&ServerFrame::thread_deleted(thread));
                }
                return;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return self.slow_consumer(),
            Err(broadcast::error::RecvError::Closed) => {
                self.user_live = None;
                return;
            }
        };
        // Defence in depth: never another user's event.
        if event.owner() != self.user
            || self.subs.contains_key(&event.thread_id)
            || self.deleting.contains(&event.thread_id)
        {
            return;
        }
        let thread = event.thread_id;
        while let Some(&last) = self.delivered.get(&thread) {
            if event.seq <= last + 1 {
                break;
            }
            let limit = (event.seq - last - 1).min(GAP_PAGE) as u32;
            match self.state.engine.events_after(self.user, thread, None, last, limit).await {
                Ok(page) if !page.is_empty() => {
                    for missed in page {
                        self.deliver(&Published::new(self.user, missed));
                    }
                }
                // The thread is gone or the log has nothing: deliver what came live.
                Ok(_) | Err(_) => break,
            }
            if self.closing.is_some() {
                return;
            }
        }
        self.deliver(&event);
    }

    fn deliver(&mut self, event: &Published) {
        let last = self.delivered.entry(event.thread_id).or_insert(0);
        if event.seq <= *last {
            return;
        }
        *last = event.seq;
        // Serialized once for every connection the event goes to.
        self.send_text(event.encoded(|e| Utf8Bytes::from(ServerFrame::event(e).text())));
        metrics::event_delivered(Transport::Ws, event.created_at);
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn recv_user(live: &mut Option<Live>) -> Result<Notice, broadcast::error::RecvError> {
    match live {
        Some(live) => live.recv().await,
        None => std::future::pending().await,
    }
}

/// The error frame's code and detail for a frame that is not a client frame.
fn refused(e: FrameError) -> Failure {
    match e {
        FrameError::NoType => Failure::new(
            "invalid_message",
            format!("expected a JSON object with a string `type`, one of {TYPES}"),
        ),
        FrameError::UnknownType(kind) => Failure::new(
            "unknown_type",
            format!("unknown frame type `{kind}`: expected one of {TYPES}"),
        ),
        FrameError::Field { path, message } if path == "." => {
            Failure::new("invalid_message", message)
        }
        FrameError::Field { path, message } => {
            Failure::new("invalid_message", format!("`{path}`: {message}"))
        }
    }
}

/// The close for a read error: 1009 for a frame over the hard cap; otherwise the socket is
/// broken and there is nobody to tell.
fn too_big(e: &axum::Error) -> Closing {
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
    {
        return Some((close::TOO_BIG, "frame over the size limit".into()));
    }
    tracing::debug!(error = %text, "websocket read failed");
    None
}
