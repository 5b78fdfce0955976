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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use ids::{ConnectionId, RequestId, UserId};
use protocol::ws::{Authenticate, BEARER_PROTOCOL, PROTOCOL, ServerFrame, close};
use tokio::sync::watch;
use tracing::field::{Empty, display};
use tracing::{Instrument, Span};

use crate::AppState;
use crate::auth::{AuthMode, Caller};
use crate::error::{ApiError, REQUEST_ID, current_request_id};
use crate::metrics::{self, Transport};

mod conn;
mod outbound;

use conn::Conn;
use outbound::Outbound;

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
        return match Authenticate::parse(&text) {
            Some(auth) => authenticate_token(state, &auth.token).await.map_err(|e| {
                let (_, _, detail) = e.into_parts(RequestId::new());
                fail(detail)
            }),
            _ => Err(fail(
                "the first frame must be {\"type\": \"auth\", \"token\": \"<API key or JWT>\"}"
                    .into(),
            )),
        };
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
