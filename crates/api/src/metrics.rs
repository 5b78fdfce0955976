//! Prometheus metrics: the series an operator watches to see whether threads, sessions and
//! runs agree (`GET /metrics`, text format), and the small functions the code calls to count.
//!
//! The recorder (`metrics-exporter-prometheus`) is global to the process and installed once
//! ([`install`]); every `AppState` of the process reports into it, so tests that run several
//! servers in one process see the sum of their traffic. Counters and histograms are counted
//! where things happen; the gauges about the database (`spindle_threads_busy`,
//! `spindle_runs_active`, `spindle_runs_running`, `spindle_runs_oldest_running_seconds`,
//! `spindle_threads_busy_without_run`) are read from the store at each scrape
//! ([`Engine::stats`]), so they are the same on every node of one database: aggregate
//! them with `max`, not `sum`. `spindle_ws_connections` is this node's.
//!
//! Labels never carry an id: routes are axum's route templates (`/threads/{thread_id}`), and
//! a request that matched no route is `unmatched`.
//!
//! The WebSocket channel (`ws.rs`) reports through the same functions: `session_opened(Ws)`
//! once a connection is authenticated, `ws_connection_opened` / `ws_connection_closed` around
//! a connection's life, `ws_slow_consumer_closed` when it closes with 4008,
//! `event_delivered(Ws, event.created_at)` per event frame, `id_parse_failed` for a malformed
//! id in a frame (and `thread_lookup_failed(MalformedId)` for a thread id), and
//! `context::owned_thread` to load a subscribed thread so that `not_found` and `not_owner`
//! are counted as for HTTP.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use engine::Engine;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use engine::metrics::{
    LookupFailure, events_appended, run_created, run_finished, thread_created, thread_lookup_failed,
};

/// Where `/metrics` is served on the main listener (a separate listener, `--metrics-listen`,
/// is always without authentication).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Exposure {
    /// Anyone who reaches the port may read it (no id or user is in any series).
    #[default]
    Public,
    /// Only authenticated callers (an API key or JWT, as for the API).
    Auth,
    /// Not on the main listener (an unknown route there).
    Off,
}

/// The path of the metrics endpoint.
pub const PATH: &str = "/metrics";

/// How a client reaches the server: labels of `spindle_sessions_opened_total` (`http`, `ws`)
/// and `spindle_events_delivered_total` (`sse`, `ws`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A plain HTTP request (one session per request context).
    Http,
    /// A server-sent-events response.
    Sse,
    /// A WebSocket connection.
    Ws,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle). If another
/// recorder was installed first (an embedding program's), ours renders nothing but zeros and
/// a warning is logged.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed: /metrics shows only store gauges");
        }
        describe();
        handle
    })
}

/// Help texts, and every unlabelled series (and each known label value) at zero, so that
/// `rate()` and the alert rules see a series from the first scrape on.
fn describe() {
    describe_counter!("spindle_threads_created_total", "Threads created (by any route).");
    describe_counter!(
        "spindle_sessions_opened_total",
        "Request contexts (transport=http, one per authenticated request) and WebSocket connections (transport=ws)."
    );
    describe_counter!("spindle_runs_created_total", "Runs created.");
    describe_counter!(
        "spindle_runs_finished_total",
        "Runs ended, by final status (success, error, timeout, interrupted, rolled_back)."
    );
    describe_counter!(
        "spindle_thread_lookup_failures_total",
        "Requests naming a thread they could not use: not_found, not_owner (another user's; the client sees the same 404), malformed_id."
    );
    describe_counter!(
        "spindle_id_rejections_total",
        "Ids refused as malformed, by kind of id (thread, run, assistant, checkpoint, ...)."
    );
    describe_counter!("spindle_events_appended_total", "Events committed to the event log.");
    describe_counter!(
        "spindle_events_delivered_total",
        "Events written to clients, by transport (sse, ws)."
    );
    describe_histogram!(
        "spindle_event_delivery_seconds",
        metrics::Unit::Seconds,
        "From an event's commit (its created_at) to its write to a client; replays of old events after a reconnect land in the tail."
    );
    describe_gauge!("spindle_ws_connections", "Open WebSocket connections on this node.");
    describe_counter!(
        "spindle_ws_slow_consumer_closes_total",
        "WebSocket connections closed with 4008 because the client read too slowly."
    );
    describe_counter!(
        "spindle_sse_slow_consumer_drops_total",
        "SSE streams dropped because the client stopped reading (over --sse-max-buffer past --sse-slow-timeout)."
    );
    describe_histogram!(
        "spindle_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP requests by method, route template and status, until the response head (a stream's body is not included)."
    );
    describe_gauge!(
        "spindle_threads_busy",
        "Threads whose status is busy (database-wide, read at scrape time)."
    );
    describe_gauge!(
        "spindle_threads_busy_without_run",
        "Busy threads with no pending or running run: a broken invariant (database-wide, read at scrape time)."
    );
    describe_gauge!(
        "spindle_runs_active",
        "Runs pending or running (database-wide, read at scrape time)."
    );
    describe_gauge!("spindle_runs_running", "Runs running (database-wide, read at scrape time).");
    describe_gauge!(
        "spindle_runs_oldest_running_seconds",
        "How long the oldest running run has been running; 0 when none is (database-wide, read at scrape time)."
    );
    for name in [
        "spindle_threads_created_total",
        "spindle_runs_created_total",
        "spindle_events_appended_total",
        "spindle_ws_slow_consumer_closes_total",
        "spindle_sse_slow_consumer_drops_total",
    ] {
        counter!(name).increment(0);
    }
    for transport in [Transport::Http, Transport::Ws] {
        counter!("spindle_sessions_opened_total", "transport" => transport.as_str()).increment(0);
    }
    for transport in [Transport::Sse, Transport::Ws] {
        counter!("spindle_events_delivered_total", "transport" => transport.as_str()).increment(0);
    }
    for reason in [LookupFailure::NotFound, LookupFailure::NotOwner, LookupFailure::MalformedId] {
        counter!("spindle_thread_lookup_failures_total", "reason" => reason.as_str()).increment(0);
    }
    gauge!("spindle_ws_connections").increment(0.0);
}

// ---- what the code calls ----

/// A request context (HTTP) or a connection (WebSocket) was opened for an authenticated
/// caller.
pub fn session_opened(transport: Transport) {
    counter!("spindle_sessions_opened_total", "transport" => transport.as_str()).increment(1);
}

/// An event was written to a client; `created_at` is when it was stored.
pub fn event_delivered(transport: Transport, created_at: DateTime<Utc>) {
    counter!("spindle_events_delivered_total", "transport" => transport.as_str()).increment(1);
    let seconds = (Utc::now() - created_at).to_std().unwrap_or(Duration::ZERO).as_secs_f64();
    histogram!("spindle_event_delivery_seconds", "transport" => transport.as_str()).record(seconds);
}

/// A WebSocket connection was opened (pair with [`ws_connection_closed`]).
pub fn ws_connection_opened() {
    gauge!("spindle_ws_connections").increment(1.0);
}

/// A WebSocket connection was closed.
pub fn ws_connection_closed() {
    gauge!("spindle_ws_connections").decrement(1.0);
}

/// A WebSocket connection was closed with 4008 (slow consumer).
pub fn ws_slow_consumer_closed() {
    counter!("spindle_ws_slow_consumer_closes_total").increment(1);
}

pub fn sse_slow_consumer_dropped() {
    counter!("spindle_sse_slow_consumer_drops_total").increment(1);
}

/// A malformed id was refused; `kind` is the kind of id (`thread`, `run`, `assistant`, ...).
pub fn id_rejected(kind: &'static str) {
    counter!("spindle_id_rejections_total", "kind" => kind).increment(1);
}

/// [`id_rejected`] for an id that failed to parse.
pub fn id_parse_failed(e: &ids::ParseIdError) {
    id_rejected(id_kind(e.kind));
}

/// The kind of an id as a label: its field name without `_id` (`thread`, `run`, `key`, ...).
pub fn id_kind(kind: ids::IdKind) -> &'static str {
    let field = kind.field();
    field.strip_suffix("_id").unwrap_or(field)
}

/// An HTTP request was answered (`route`: the route template, or `unmatched`).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    // A client may send any method name: only the standard ones become label values.
    let method = match method {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
        _ => "other",
    };
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    histogram!("spindle_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

// ---- the endpoint ----

/// The text exposition: the store gauges read now, then every series of the process.
pub async fn render(engine: &Engine) -> String {
    let handle = install();
    match engine.stats().await {
        Ok(stats) => {
            gauge!("spindle_threads_busy").set(stats.threads_busy as f64);
            gauge!("spindle_threads_busy_without_run").set(stats.threads_busy_without_run as f64);
            gauge!("spindle_runs_active").set((stats.runs_pending + stats.runs_running) as f64);
            gauge!("spindle_runs_running").set(stats.runs_running as f64);
            let oldest = stats.oldest_running_since.map_or(0.0, |since| {
                (Utc::now() - since).to_std().unwrap_or(Duration::ZERO).as_secs_f64()
            });
            gauge!("spindle_runs_oldest_running_seconds").set(oldest);
        }
        // The gauges keep their last values; the scrape still answers.
        Err(e) => tracing::warn!(error = %e, "could not read the store gauges for /metrics"),
    }
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics`.
pub async fn handler(State(engine): State<Engine>) -> Response {
    let body = render(&engine).await;
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The router of a metrics-only listener (`--metrics-listen`): `/metrics` and nothing else,
/// without authentication.
pub fn router(engine: Engine) -> Router {
    Router::new().route(PATH, get(handler)).with_state(engine)
}
