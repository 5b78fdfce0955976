//! A connection's sending half: the outbound queue, bounded in bytes, and the writer task
//! that drains it into the socket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use ids::RequestId;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, Span};

use protocol::ws::{ServerFrame, close};

use super::{Closing, FLUSH_BYTES, WsConfig};

/// The sending half: a queue bounded in bytes, drained by the writer task.
#[derive(Clone, Debug)]
pub(super) struct Outbound {
    tx: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
    pub(super) limit: usize,
    close: Arc<Mutex<Option<oneshot::Sender<CloseFrame>>>>,
}

/// The outbound queue is over its limit.
#[derive(Debug)]
pub(super) struct Overflow;

impl Outbound {
    pub(super) fn start(
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

    pub(super) fn send(&self, message: Message) -> Result<(), Overflow> {
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

    pub(super) fn text(&self, text: impl Into<Utf8Bytes>) -> Result<(), Overflow> {
        self.send(Message::Text(text.into()))
    }

    pub(super) fn error(
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
    pub(super) fn close(&self, closing: Closing) {
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
    pub(super) async fn closed(&self) {
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
