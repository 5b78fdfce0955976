//! A client of Spindle's WebSocket protocol v1 (`GET /ws`, JSON text frames with a `type`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

use crate::http::Target;

/// Why a connection could not be opened or used.
#[derive(Debug)]
pub enum WsError {
    /// The server has no `/ws` (it answered the upgrade with this HTTP status).
    Unsupported(u16),
    /// The server closed the connection (with this close code, if any).
    Closed(Option<u16>, String),
    /// An `{"type":"error"}` frame.
    Protocol(String),
    Io(String),
    Timeout,
}

impl WsError {
    /// The key failures are counted under.
    pub fn key(&self) -> String {
        match self {
            WsError::Unsupported(status) => format!("upgrade-{status}"),
            WsError::Closed(Some(code), _) => format!("close-{code}"),
            WsError::Closed(None, _) => "closed".into(),
            WsError::Protocol(_) => "error-frame".into(),
            WsError::Io(_) => "io".into(),
            WsError::Timeout => "timeout".into(),
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Unsupported(status) => {
                write!(f, "not supported by this server (GET /ws answered HTTP {status})")
            }
            WsError::Closed(code, reason) => write!(f, "closed by the server ({code:?} {reason})"),
            WsError::Protocol(frame) => write!(f, "error frame: {frame}"),
            WsError::Io(e) => write!(f, "I/O: {e}"),
            WsError::Timeout => write!(f, "timed out"),
        }
    }
}

/// One authenticated connection (the `welcome` frame has arrived).
#[derive(Debug)]
pub struct WsConn {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl WsConn {
    /// Connects to `target`'s `/ws` with its credential in the headers and waits for
    /// `welcome`.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<WsConn, WsError> {
        let mut request = target
            .ws_url()
            .into_client_request()
            .map_err(|e| WsError::Io(format!("bad URL: {e}")))?;
        if let Some((name, value)) = target.auth().header() {
            request.headers_mut().insert(name, value);
        }
        let connect = async {
            // Small buffers: an idle connection should cost the client little (the default
            // read buffer is 128 KiB).
            let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
            let (stream, _) =
                tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                    .await
                    .map_err(|e| match e {
                        tungstenite::Error::Http(response) => {
                            WsError::Unsupported(response.status().as_u16())
                        }
                        other => WsError::Io(other.to_string()),
                    })?;
            let mut conn = WsConn { stream, welcome: Value::Null };
            let first = conn.next().await?;
            if first["type"] != "welcome" {
                return Err(WsError::Protocol(format!("expected welcome, got {first}")));
            }
            conn.welcome = first;
            Ok(conn)
        };
        tokio::time::timeout(timeout, connect).await.unwrap_or(Err(WsError::Timeout))
    }

    pub async fn send(&mut self, frame: &Value) -> Result<(), WsError> {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| WsError::Io(e.to_string()))
    }

    /// The next JSON frame (control frames skipped). An `error` frame is returned as a value;
    /// callers decide.
    pub async fn next(&mut self) -> Result<Value, WsError> {
        let text = self.next_text().await?;
        serde_json::from_str(&text)
            .map_err(|e| WsError::Protocol(format!("not JSON ({e}): {text}")))
    }

    /// The next text frame, unparsed (control frames skipped).
    pub async fn next_text(&mut self) -> Result<String, WsError> {
        loop {
            let message = match self.stream.next().await {
                None => return Err(WsError::Closed(None, String::new())),
                Some(Err(e)) => return Err(WsError::Io(e.to_string())),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Binary(_) => return Err(WsError::Protocol("a binary frame".into())),
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    return Err(WsError::Closed(code, reason));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Sends a frame with a `ref` and returns the reply of type `expect` carrying that `ref`
    /// (an `error` with it fails; other frames, e.g. the `subscribed` a `run` frame sends
    /// first, or events, are handed to `on_other`).
    pub async fn request(
        &mut self,
        mut frame: Value,
        reference: &str,
        expect: &str,
        mut on_other: impl FnMut(Value),
    ) -> Result<Value, WsError> {
        frame["ref"] = Value::from(reference);
        self.send(&frame).await?;
        loop {
            let reply = self.next().await?;
            if reply["ref"] == reference {
                if reply["type"] == "error" {
                    return Err(WsError::Protocol(reply.to_string()));
                }
                if reply["type"] == expect {
                    return Ok(reply);
                }
            }
            on_other(reply);
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Whether an event frame ends its run.
pub fn ends_run(frame: &Value) -> bool {
    frame["type"] == "event"
        && matches!(frame["kind"].as_str(), Some("agent_completed" | "run_error" | "run_cancelled"))
}
