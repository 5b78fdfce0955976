//! How a run is answered over HTTP: waiting (a newline every [`HEARTBEAT`], then the final
//! body: the thread's values, with `__interrupt__` or `__error__`) and streaming (the run's
//! events as SSE frames of the requested modes, from the log and then live, with heartbeats,
//! a bounded outbox, and the end of a stream whose credential lapsed).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use domain::{CancelAction, Pending, Run, RunStatus, ThreadStatus, is_terminal};
use engine::{EndWatch, Finished, Live};
use futures_util::stream;
use ids::UserId;
use protocol::run_create::OnDisconnect;
use protocol::sse::{Cursor, Framer, StreamMode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::AppState;
use crate::auth::Credential;
use crate::metrics::{self, Transport};
use crate::stream::{Outbox, credential_lapsed, unauthorized_data};

fn location(run: &Run) -> String {
    format!("/threads/{}/runs/{}", run.thread_id, run.run_id)
}

/// A run's `Content-Location` (and, for a stream, `Location`) headers.
pub fn headers(run: &Run, stream: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&location(run)) {
        headers.insert(header::CONTENT_LOCATION, v);
    }
    if stream && let Ok(v) = HeaderValue::from_str(&format!("{}/stream", location(run))) {
        headers.insert(header::LOCATION, v);
    }
    headers
}

/// How often a waiting response writes a newline, and a stream a heartbeat comment.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The body of `/wait` and `/join`: a newline every [`HEARTBEAT`] while the run is active, then
/// the thread's values (or `{"__error__": ...}`). `just_created`: `end` was watched before the run was
/// created, so its end cannot have passed unseen and the store need not be asked first.
pub fn wait(
    state: &AppState,
    owner: UserId,
    run: Run,
    mut end: EndWatch,
    just_created: bool,
) -> Response {
    let state = state.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let response_headers = headers(&run, false);
    tokio::spawn(async move {
        let mut ask_store = !just_created;
        let result = loop {
            // The run may have ended before this waiter watched it, or on another node: the
            // store knows (at the start of a join, and after every heartbeat).
            if ask_store {
                match state.engine.get_run(owner, run.thread_id, run.run_id).await {
                    Ok(r) if !r.status.is_active() => break final_body(&state, owner, &r).await,
                    Ok(_) => {}
                    // Gone: a stateless run whose thread was deleted when it ended (its end is
                    // waiting in `end`), or a rolled-back run.
                    Err(domain::Error::NotFound { .. }) => {
                        break ended_body(end.try_ended()).unwrap_or(json!({}));
                    }
                    Err(e) => {
                        break json!({ "__error__": { "error": "StoreError", "message": e.to_string() } });
                    }
                }
            }
            ask_store = true;
            let ended = tokio::select! {
                f = end.ended() => f,
                () = tokio::time::sleep(HEARTBEAT) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                    None
                }
            };
            if let Some(body) = ended_body(ended) {
                break body;
            }
        };
        let _ = tx.send(Bytes::from(result.to_string())).await;
    }.in_current_span());
    let body = Body::from_stream(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut response = (response_headers, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer for a run's announced end.
fn ended_body(ended: Option<Finished>) -> Option<Value> {
    let f = ended?;
    Some(match (f.error, f.values) {
        (Some((error, message)), _) => {
            json!({ "__error__": { "error": error, "message": message } })
        }
        (None, values) => values.unwrap_or_else(|| json!({})),
    })
}

/// The answer for a run that has ended, read from the store.
async fn final_body(state: &AppState, owner: UserId, run: &Run) -> Value {
    if matches!(run.status, RunStatus::Error | RunStatus::Timeout) {
        let error = if run.status == RunStatus::Timeout { "TimeoutError" } else { "RunError" };
        return json!({ "__error__": { "error": error, "message": run.error.clone().unwrap_or_default() } });
    }
    let Ok(thread) = state.engine.get_thread(owner, run.thread_id).await else { return json!({}) };
    let interrupted = thread.status == ThreadStatus::Interrupted;
    let mut values = thread.values.unwrap_or_else(|| json!({}));
    // As `runs/wait` answers a run that stopped on an interrupt: `__interrupt__` beside them.
    if interrupted
        && let Ok(head) = state.engine.list_checkpoints(owner, run.thread_id, 1, None).await
        && let Some(pending) = head.first().and_then(|c| Pending::of(&c.metadata))
        && !pending.interrupts.is_empty()
        && let Some(map) = values.as_object_mut()
    {
        map.insert("__interrupt__".into(), pending.shown());
    }
    values
}

/// An SSE response with the run's events in `modes`, after `cursor`: `metadata` first, then
/// the frames, heartbeats every [`HEARTBEAT`], and `end` when the run ends.
#[allow(clippy::too_many_arguments, reason = "the stream's whole description")]
pub fn sse(
    state: &AppState,
    owner: UserId,
    credential: Credential,
    run: Run,
    modes: Vec<StreamMode>,
    cursor: Cursor,
    on_disconnect: OnDisconnect,
    early: Option<Live>,
) -> Response {
    let response_headers = headers(&run, true);
    let (tx, body) = crate::stream::outbox(&state.http.sse, state.sse.clone());
    let state = state.clone();
    tokio::spawn(async move {
        // `metadata` opens a stream; a resumed stream goes on after the client's last frame.
        let metadata = json!({ "run_id": run.run_id, "thread_id": run.thread_id, "attempt": 1 });
        let first = sse_frame("metadata", &metadata.to_string(), Some("0"));
        let delivered = (cursor != Cursor::START || tx.send(first).await.is_ok())
            && follow(&state, owner, &credential, &run, modes, cursor, &tx, early).await;
        if !delivered && on_disconnect == OnDisconnect::Cancel {
            tracing::info!(run_id = %run.run_id, "client went away: cancelling the run (on_disconnect=cancel)");
            if let Err(e) = state.engine.cancel_run(owner, &run, CancelAction::Interrupt).await {
                tracing::warn!(error = %e, "could not cancel the run");
            }
        }
    }.in_current_span());
    let mut response = (response_headers, Body::from_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One SSE frame as text. Data is compact JSON, which has no newline to split.
pub fn sse_frame(event: &str, data: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("event: {event}\ndata: {data}\nid: {id}\n\n"),
        None => format!("event: {event}\ndata: {data}\n\n"),
    }
}

/// Join a thread's stream (SSE): the events of every run of the thread, live, in the
/// requested modes (`values` by default), resuming after `Last-Event-ID`. It stays open until
/// the client leaves; runs ending do not end it.
/// Sends the run's frames after `cursor` until the run ends. False if the client went away.
#[allow(clippy::too_many_arguments, reason = "the stream's whole description")]
pub async fn follow(
    state: &AppState,
    owner: UserId,
    credential: &Credential,
    run: &Run,
    modes: Vec<StreamMode>,
    cursor: Cursor,
    tx: &Outbox,
    early: Option<Live>,
) -> bool {
    let mut framer = Framer::new(modes, run.run_id, run.thread_id);
    // From the run's first event, so the framer's message state is complete on a resume.
    let mut events = state.engine.events(owner, run.thread_id, Some(run.run_id), 0, early);
    let mut quiet_checks = 0;
    let every = state.auth.key_recheck();
    let lapsed = credential_lapsed(&state.auth, &state.engine, credential, every);
    tokio::pin!(lapsed);
    loop {
        let next = tokio::select! {
            e = events.recv() => e,
            // The credential is no longer valid: the stream ends (the run goes on).
            why = &mut lapsed => {
                let data = unauthorized_data(&why);
                let _ = tx.send(sse_frame("error", &data.to_string(), None)).await;
                return true;
            }
            () = tokio::time::sleep(HEARTBEAT) => {
                // No event for a while: make sure the run has not ended unseen (a rollback
                // deletes the run's events; another node may have ended it).
                match state.engine.get_run(owner, run.thread_id, run.run_id).await {
                    Ok(r) if r.status.is_active() => quiet_checks = 0,
                    _ => quiet_checks += 1,
                }
                if quiet_checks >= 2 {
                    let end = sse_frame("end", "null", None);
                    return tx.send(end).await.is_ok();
                }
                if tx.is_closed() {
                    return false;
                }
                continue;
            }
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                let data = crate::stream::ended_data(&e);
                return tx.send(sse_frame("error", &data.to_string(), None)).await.is_ok();
            }
            None => return true,
        };
        let mut sent = false;
        for (k, frame) in framer.frames(&event).into_iter().enumerate() {
            if !Framer::after(cursor, event.seq, k as u32) {
                continue;
            }
            let data =
                if frame.data.is_null() { "null".to_owned() } else { frame.data.to_string() };
            if tx.send(sse_frame(&frame.event, &data, Some(&frame.id))).await.is_err() {
                return false;
            }
            sent = true;
        }
        // Handed to the response body, which writes it to the socket next (the channel holds
        // frames only while the socket is slower than the run).
        if sent {
            metrics::event_delivered(Transport::Sse, event.created_at);
        }
        if is_terminal(&event) {
            return true;
        }
    }
}
