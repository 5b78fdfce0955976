//! One authenticated connection: its client frames run as commands (subscribe, run, cancel,
//! ...), and its subscriptions' events go out exactly once per thread.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use domain::CancelAction;
use engine::{Ended, Live, Notice, Published};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use ids::{RequestId, RunId, ThreadId, UserId};
use protocol::wire::RunOut;
use protocol::ws::{
    Cancel, ClientFrame, FrameError, ServerFrame, StartRun, Subscribe, TYPES, Unsubscribe, close,
};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tracing::field::{Empty, display};
use tracing::{Instrument, Span};

use super::{Closing, GAP_PAGE, MAX_CONSECUTIVE_ERRORS, Outbound, too_big};
use crate::AppState;
use crate::auth::{Caller, Credential};
use crate::context::RequestContext;
use crate::error::{ApiError, REQUEST_ID, current_request_id};
use crate::metrics::{self, LookupFailure, Transport};

/// A command that failed: an `error` frame (the connection stays open).
struct Failure {
    code: &'static str,
    detail: String,
}

impl Failure {
    pub(super) fn new(code: &'static str, detail: impl Into<String>) -> Failure {
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
pub(super) struct Conn {
    state: AppState,
    pub(super) user: UserId,
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
    pub(super) fn new(state: AppState, caller: Caller, out: Outbound) -> Conn {
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
    pub(super) fn send(&mut self, frame: &ServerFrame<'_>) {
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
    pub(super) async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) -> Closing {
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
            ClientFrame::Auth => {
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
