//! The WebSocket channel's wire format (`docs/websocket.md`): the subprotocol names, the
//! close codes, the client's frames (a serde-tagged enum: [`ClientFrame`]) and the server's
//! ([`ServerFrame`]). Ids in client frames are text, parsed by the channel with the ids
//! crate's parser, so a malformed id is told apart (`invalid_id`, counted by kind) from a field
//! of the wrong shape (`invalid_message`).

use chrono::{DateTime, Utc};
use domain::Event;
use ids::{ConnectionId, RequestId, RunId, ThreadId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::run_create::RunCreate;
use crate::wire::RunOut;

/// The subprotocol a browser offers (and the server selects) beside its credential.
pub const PROTOCOL: &str = "spindle.v1";
/// Prefix of the subprotocol that carries a browser's credential: `spindle.bearer.<token>`.
pub const BEARER_PROTOCOL: &str = "spindle.bearer.";

/// Close codes (the table in docs/websocket.md).
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client kept sending frames that were all errors.
    pub const POLICY: u16 = 1008;
    /// A frame over the hard size cap.
    pub const TOO_BIG: u16 = 1009;
    /// No valid credential (in the handshake or the first `auth` frame, within its deadline), or
    /// no longer: the API key was revoked or the JWT reached its `exp`.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// The outbound queue went over its limit: the client reads too slowly.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Nothing came back for a whole heartbeat interval after a ping.
    pub const HEARTBEAT: u16 = 4009;
    /// The user already has the most connections allowed.
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
}

/// The client frames, by `type`.
pub const TYPES: &str =
    "subscribe, unsubscribe, subscribe_user, unsubscribe_user, run, cancel, ping";

#[derive(Debug, Deserialize)]
pub struct Subscribe {
    pub thread_id: String,
    #[serde(default)]
    pub after_seq: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct Unsubscribe {
    pub thread_id: String,
}

#[derive(Debug, Deserialize)]
pub struct StartRun {
    #[serde(default)]
    pub thread_id: Option<String>,
    #[serde(default)]
    pub subscribe: Option<bool>,
    #[serde(flatten)]
    pub body: RunCreate,
}

#[derive(Debug, Deserialize)]
pub struct Cancel {
    pub thread_id: String,
    pub run_id: String,
    #[serde(default)]
    pub action: Option<String>,
}

/// The `auth` frame, `{"type": "auth", "token": ...}`: a connection's first frame when the
/// handshake carried no credential (read with [`Authenticate::parse`]). Afterwards it is
/// refused whatever its fields (`already_authenticated`).
#[derive(Debug, Deserialize)]
pub struct Authenticate {
    pub r#type: String,
    pub token: String,
}

impl Authenticate {
    /// The first frame as an `auth` frame, if it is one.
    pub fn parse(text: &str) -> Option<Authenticate> {
        serde_json::from_str::<Authenticate>(text).ok().filter(|auth| auth.r#type == "auth")
    }
}

/// A client frame, by its `type` (see [`TYPES`]).
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    SubscribeUser,
    UnsubscribeUser,
    /// Boxed: a run request is large, the other frames small.
    Run(Box<StartRun>),
    Cancel(Cancel),
    Ping,
    /// `auth` on an authenticated connection (its fields are not read).
    Auth,
}

/// Why a text frame is not a client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not an object with a string `type`.
    NoType,
    /// A `type` that is not one of [`TYPES`].
    UnknownType(String),
    /// A field of the wrong shape: its path (`.` for the frame itself) and what was wrong.
    Field { path: String, message: String },
}

impl ClientFrame {
    /// Decodes a client frame from its JSON, naming the field at fault.
    pub fn decode(frame: Value) -> Result<ClientFrame, FrameError> {
        let Some(kind) = frame.get("type").and_then(Value::as_str) else {
            return Err(FrameError::NoType);
        };
        Ok(match kind {
            "subscribe" => ClientFrame::Subscribe(fields(frame)?),
            "unsubscribe" => ClientFrame::Unsubscribe(fields(frame)?),
            "subscribe_user" => ClientFrame::SubscribeUser,
            "unsubscribe_user" => ClientFrame::UnsubscribeUser,
            "run" => ClientFrame::Run(Box::new(fields(frame)?)),
            "cancel" => ClientFrame::Cancel(fields(frame)?),
            "ping" => ClientFrame::Ping,
            "auth" => ClientFrame::Auth,
            other => return Err(FrameError::UnknownType(other.to_owned())),
        })
    }
}

/// A frame's fields as `T`, with the path of a field at fault.
fn fields<T: serde::de::DeserializeOwned>(frame: Value) -> Result<T, FrameError> {
    serde_path_to_error::deserialize(frame).map_err(|e| FrameError::Field {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// A server frame. `ref`: the client's `ref` of the frame answered, echoed as sent.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The connection is authenticated.
    Welcome {
        connection_id: ConnectionId,
        user_id: UserId,
        request_id: RequestId,
    },
    /// A subscription to a thread (or, with no thread, to the user's threads) started.
    Subscribed {
        thread_id: Option<ThreadId>,
        from_seq: Option<i64>,
        recovered: bool,
        r#ref: Option<&'a Value>,
    },
    Unsubscribed {
        thread_id: Option<ThreadId>,
        r#ref: Option<&'a Value>,
    },
    /// A run, as `run` and `cancel` answer.
    Run {
        run: RunOut,
        r#ref: Option<&'a Value>,
    },
    Pong {
        r#ref: Option<&'a Value>,
    },
    /// A subscribed thread was deleted: its subscription has ended.
    ThreadDeleted {
        thread_id: ThreadId,
        detail: String,
    },
    /// An event of a subscribed thread.
    Event {
        thread_id: ThreadId,
        seq: i64,
        run_id: Option<RunId>,
        kind: &'a str,
        data: &'a Value,
        created_at: DateTime<Utc>,
    },
    /// A frame refused, or a subscription that failed (then with its `thread_id`).
    Error {
        code: &'a str,
        detail: &'a str,
        r#ref: Option<&'a Value>,
        request_id: RequestId,
        #[serde(skip_serializing_if = "Option::is_none")]
        thread_id: Option<ThreadId>,
    },
}

impl<'a> ServerFrame<'a> {
    /// The `event` frame of an event.
    pub fn event(event: &'a Event) -> ServerFrame<'a> {
        ServerFrame::Event {
            thread_id: event.thread_id,
            seq: event.seq,
            run_id: event.run_id,
            kind: event.kind.as_str(),
            data: &event.data,
            created_at: event.created_at,
        }
    }

    /// The frame that ends a subscription to a deleted thread.
    pub fn thread_deleted(thread: ThreadId) -> ServerFrame<'static> {
        let detail = format!("thread {thread} was deleted: this subscription has ended");
        ServerFrame::ThreadDeleted { thread_id: thread, detail }
    }

    /// The frame as text.
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
