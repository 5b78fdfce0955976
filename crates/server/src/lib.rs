//! The Spindle server as a library: configuration, authentication, the request context, the
//! routes and `serve`, so tests drive exactly what the `spindle` binary runs. `main.rs` only
//! parses the command line.

/// The process's allocator. Measured here under the runs benchmark, glibc's malloc and free
/// took a quarter of all CPU time (arena locks contended between the SQLite writer thread and
/// the tokio workers); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod agents;
pub mod auth;
pub mod config;
pub mod context;
pub mod doctor;
pub mod error;
pub mod hub;
pub mod inspect;
pub mod metrics;
pub mod routes;
pub mod runs;
pub mod stream;
pub mod wire;
pub mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use ids::AssistantId;
use store::{Assistant, Store, SystemAssistant};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::agents::Agent;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::runs::{Executor, ExecutorConfig};

/// HTTP settings that are not authentication.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted (413 above it).
    pub body_limit: usize,
    /// Origins allowed by CORS; `None` allows any origin.
    pub cors_origins: Option<Vec<HeaderValue>>,
    /// The WebSocket channel's limits and heartbeat.
    pub ws: ws::WsConfig,
    /// SSE streams' byte budget and slow-client deadline.
    pub sse: stream::SseConfig,
    /// Whether `/metrics` is on this router, and who may read it.
    pub metrics: metrics::Exposure,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 10 * 1024 * 1024,
            cors_origins: None,
            metrics: metrics::Exposure::Public,
            ws: ws::WsConfig::default(),
            sse: stream::SseConfig::default(),
        }
    }
}

/// Everything a handler may need; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub auth: Auth,
    pub http: Arc<HttpConfig>,
    pub hub: Hub,
    pub executor: Executor,
    /// The open WebSocket connections.
    pub ws: Arc<ws::Connections>,
    /// The built-in agents' assistants, which never change while serving: a run names one,
    /// so they are read here rather than from the store on every run.
    pub system_assistants: Arc<HashMap<AssistantId, Assistant>>,
}

impl AppState {
    /// Prepares a migrated store for serving: registers the built-in agents as system
    /// assistants (ids: the LangGraph-compatible UUIDv5 of the name).
    pub async fn new(store: Store, auth: Auth, http: HttpConfig) -> store::Result<AppState> {
        AppState::with_executor(store, auth, http, ExecutorConfig::default()).await
    }

    pub async fn with_executor(
        store: Store,
        auth: Auth,
        http: HttpConfig,
        executor: ExecutorConfig,
    ) -> store::Result<AppState> {
        metrics::install();
        let mut system_assistants = HashMap::new();
        for (_, graph_id, description) in Agent::ALL {
            let spec = SystemAssistant {
                graph_id: graph_id.into(),
                description: Some(description.into()),
            };
            let assistant = store.upsert_system_assistant(&spec).await?;
            system_assistants.insert(assistant.assistant_id, assistant);
        }
        let system_assistants = Arc::new(system_assistants);
        let hub = Hub::default();
        let executor = Executor::new(store.clone(), hub.clone(), executor);
        let ws = Arc::new(ws::Connections::new(http.ws.clone()));
        Ok(AppState { store, auth, http: Arc::new(http), hub, executor, ws, system_assistants })
    }

    /// Ends runs a crash left running, then starts the executor; it stops when `stop` fires.
    pub async fn start(
        &self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> store::Result<()> {
        let recovered = self.executor.recover().await?;
        if recovered > 0 {
            tracing::warn!(recovered, "ended runs left running by a previous process");
        }
        tokio::spawn(self.executor.clone().run(stop));
        Ok(())
    }
}

/// The whole HTTP surface: the routes, `/openapi.json`, `/metrics` (unless configured off),
/// JSON errors for unknown routes and methods, the request context on everything, the body
/// limit and CORS.
pub fn app(state: AppState) -> Router {
    let (routes, openapi) = routes::router();
    let openapi = Arc::new(openapi);
    let mut routes =
        routes.route("/openapi.json", get(move || std::future::ready(Json(openapi.clone()))));
    if state.http.metrics != metrics::Exposure::Off {
        routes = routes.route(
            metrics::PATH,
            get(|State(state): State<AppState>| metrics::handler(State(state.store))),
        );
    }
    routes
        .route("/ws", get(ws::upgrade))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.http.body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), context::middleware))
        .layer(cors(&state.http))
        .with_state(state)
}

fn cors(http: &HttpConfig) -> CorsLayer {
    let origins = match &http.cors_origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.clone()),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::CONTENT_LOCATION,
            HeaderName::from_static("x-pagination-total"),
            HeaderName::from_static("x-request-id"),
        ])
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let executor_stop = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    state.start(executor_stop).await.map_err(std::io::Error::other)?;
    // Without TCP_NODELAY, a response written in parts (a streamed body) waits out the
    // client's delayed ACK: 40 ms per request on Linux.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    // Upgraded connections outlive the HTTP server's graceful shutdown: tell them to close
    // (1001) when it starts, and give them a moment to say so to their clients.
    let connections = state.ws.clone();
    let closing = connections.clone();
    let shutdown = async move {
        shutdown.await;
        closing.shut_down();
    };
    let result = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.all_closed()).await;
    let _ = stop.send(true);
    result
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
