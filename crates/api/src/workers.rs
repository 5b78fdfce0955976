//! `GET /workers/connect`: the WebSocket of a Python worker running users' LangGraph graphs
//! (`docs/workers.md`). Opened with the worker token only (user credentials cannot open it;
//! the route is outside the users' authentication); the frames are the engine's
//! ([`engine::Workers`]), this module only moves them: `hello` first, then every text frame
//! in order, a ping every [`engine::workers::PING`], and a connection silent for
//! [`engine::workers::SILENT`] closed.

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use engine::Workers;
use engine::workers::{PING, SILENT};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tracing::Instrument;

use crate::AppState;
use crate::error::ApiError;

/// The largest frame a worker may send (a state with a long conversation, a batch of parts).
const MAX_FRAME: usize = 64 << 20;

/// The close code of a worker that broke the protocol (the reason says how).
const PROTOCOL_ERROR: u16 = 4400;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let workers = state.engine.workers().cloned().ok_or_else(|| {
        ApiError::NotFound(
            "this server runs no graphs: start it with --graphs langgraph.json".into(),
        )
    })?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !workers.token_matches(token.trim()) {
        return Err(ApiError::Unauthorized(
            "a worker connects with the worker token: Authorization: Bearer <SPINDLE_WORKER_TOKEN>"
                .into(),
        ));
    }
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!(
            "GET /workers/connect opens a WebSocket: send Connection: upgrade, Upgrade: websocket ({})",
            e.body_text()
        ))
    })?;
    let upgrade = upgrade.max_message_size(MAX_FRAME).max_frame_size(MAX_FRAME);
    Ok(upgrade.on_upgrade(move |socket| {
        connection(workers, socket).instrument(tracing::info_span!("worker"))
    }))
}

async fn connection(workers: Workers, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let close = |reason: String| {
        Message::Close(Some(CloseFrame { code: PROTOCOL_ERROR, reason: reason.into() }))
    };
    let hello = match tokio::time::timeout(SILENT, rx.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("the first frame must be a `hello` JSON object: {e}")),
        Ok(_) => Err("the first frame must be a `hello` JSON object".into()),
        Err(_) => Err(format!("no `hello` within {} s", SILENT.as_secs())),
    };
    let connected = match hello.and_then(|hello| workers.connect(&hello)) {
        Ok(connected) => connected,
        Err(reason) => {
            tracing::warn!(reason, "a worker was refused");
            let _ = tx.send(close(reason)).await;
            return;
        }
    };
    let id = connected.id;
    let mut outbound = connected.outbound;
    // The writer: the engine's frames, and a ping now and then.
    let writer = tokio::spawn(async move {
        if tx.send(Message::Text(connected.welcome.into())).await.is_err() {
            return tx;
        }
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        loop {
            tokio::select! {
                frame = outbound.recv() => match frame {
                    Some(frame) => {
                        if tx.send(Message::Text(frame.into())).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    if tx.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
        tx
    });
    let mut reason = None;
    loop {
        let frame = match tokio::time::timeout(SILENT, rx.next()).await {
            Err(_) => {
                reason = Some(format!("silent for {} s", SILENT.as_secs()));
                break;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(text) => text,
            // Pongs (and pings, which the socket answers) keep the connection alive.
            _ => continue,
        };
        let handled = serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("a frame must be a JSON object: {e}"))
            .and_then(|frame| workers.handle(id, frame));
        if let Err(e) = handled {
            reason = Some(e);
            break;
        }
    }
    // Its outbound queue goes with it, which ends the writer.
    workers.disconnect(id);
    let writer = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    if let Ok(Ok(mut tx)) = writer
        && let Some(reason) = &reason
    {
        let _ = tx.send(close(reason.clone())).await;
    }
    if let Some(reason) = reason {
        tracing::warn!(worker_id = %id, reason, "closed a worker's connection");
    }
}
