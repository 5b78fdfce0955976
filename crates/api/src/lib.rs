//! Spindle's HTTP and WebSocket surface over axum: authentication, the request context and
//! errors, the routes, SSE responses, the WebSocket channel, metrics and the listener, and
//! `serve`. It has no store: every route reaches data through the engine
//! ([`engine::Engine`]), and the wire formats are `protocol`'s. Tests drive exactly what the
//! `spindle` binary (`crates/server`) serves.

pub mod auth;
pub mod context;
pub mod error;
pub mod metrics;
pub mod net;
pub mod refs;
pub mod routes;
pub mod run_request;
pub mod run_responses;
pub mod stream;
mod workers;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use axum::{Json, Router};
use engine::Engine;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::auth::{Auth, AuthMode};
use crate::error::ApiError;

/// Which origins browsers may call from (`--cors-origins`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Unset: any origin with credentials (`keys`, `jwt`); with `--auth local`, loopback
    /// origins only (http(s)://localhost, 127.0.0.0/8 or [::1], any port).
    #[default]
    Default,
    /// `*`: any origin, in every mode.
    Any,
    /// These origins (and, with `--auth local`, loopback ones).
    List(Vec<HeaderValue>),
}

/// HTTP settings that are not authentication.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request body accepted (413 above it).
    pub body_limit: usize,
    /// A request body must arrive whole within this once its head is in (408 otherwise).
    pub body_timeout: Duration,
    /// Bodies at least this large are parsed at most `large_body_parses` at once.
    pub large_body: usize,
    pub large_body_parses: usize,
    /// Origins allowed by CORS (and, with `--auth local`, at all).
    pub cors_origins: CorsOrigins,
    /// The listener's deadlines and connection caps.
    pub net: net::NetConfig,
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
            body_timeout: Duration::from_secs(30),
            large_body: 1024 * 1024,
            large_body_parses: 2,
            cors_origins: CorsOrigins::Default,
            net: net::NetConfig::default(),
            metrics: metrics::Exposure::Public,
            ws: ws::WsConfig::default(),
            sse: stream::SseConfig::default(),
        }
    }
}

/// The places for large request bodies (`--large-body-parses`).
#[derive(Debug)]
pub struct LargeBodies {
    places: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl LargeBodies {
    fn new(places: usize) -> LargeBodies {
        LargeBodies { places: Arc::new(Semaphore::new(places.max(1))), waiting: 0.into() }
    }

    /// Waits for a place; the body keeps it until its handler has answered.
    pub async fn place(&self) -> tokio::sync::OwnedSemaphorePermit {
        use std::sync::atomic::Ordering;
        /// Counts a waiter until it has a place or gives up (its request went away).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.waiting);
        let permit = self.places.clone().acquire_owned().await;
        drop(waiting);
        match permit {
            Ok(permit) => permit,
            Err(_) => unreachable!("the large-body semaphore is never closed"),
        }
    }

    /// Large bodies waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Places free now.
    pub fn free(&self) -> usize {
        self.places.available_permits()
    }
}

/// Everything a handler may need; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Spindle's data and runs: every route and the WebSocket channel go through it.
    pub engine: Engine,
    pub auth: Auth,
    pub http: Arc<HttpConfig>,
    /// The open WebSocket connections.
    pub ws: Arc<ws::Connections>,
    /// Places for large request bodies (`HttpConfig::large_body_parses`): parsing JSON takes
    /// many times a body's size in memory, so only so many large ones are read and parsed at
    /// once.
    pub large_bodies: Arc<LargeBodies>,
    /// What this server's SSE streams hold (their queues are [`stream::Outbox`]es).
    pub sse: Arc<stream::SseStats>,
}

impl AppState {
    /// The HTTP and WebSocket surface of `engine`.
    pub fn new(engine: Engine, auth: Auth, http: HttpConfig) -> AppState {
        metrics::install();
        let ws = Arc::new(ws::Connections::new(http.ws.clone()));
        let large_bodies = Arc::new(LargeBodies::new(http.large_body_parses));
        AppState { engine, auth, http: Arc::new(http), ws, large_bodies, sse: Arc::default() }
    }

    /// Ends runs a crash left running, then starts the executor; it stops when `stop` fires.
    pub async fn start(
        &self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> domain::Result<()> {
        self.engine.start(stop).await
    }
}

/// The whole HTTP surface: the routes, `/openapi.json`, `/metrics` (unless configured off),
/// JSON errors for unknown routes and methods, the request context on everything (outermost,
/// so CORS preflights are logged and `--auth local`'s Host and Origin checks come first),
/// CORS, then authentication and the body's limits.
pub fn app(state: AppState) -> Router {
    let (routes, openapi) = routes::router();
    let openapi = Arc::new(openapi);
    let mut routes =
        routes.route("/openapi.json", get(move || std::future::ready(Json(openapi.clone()))));
    if state.http.metrics != metrics::Exposure::Off {
        routes = routes.route(
            metrics::PATH,
            get(|State(state): State<AppState>| metrics::handler(State(state.engine))),
        );
    }
    let users = routes
        .route("/ws", get(ws::upgrade))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.http.body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), context::authenticate));
    // Workers authenticate with the worker token, not as users.
    Router::new()
        .route("/workers/connect", get(workers::upgrade))
        .merge(users)
        .layer(cors(&state.http, state.auth.mode()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), context::middleware))
        .with_state(state)
}

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS. A preflight may ask for any request header (agent-chat-ui sends `x-auth-scheme`,
/// and others their own): the answer allows the ones asked for, as LangGraph's server does.
fn cors(http: &HttpConfig, mode: AuthMode) -> CorsLayer {
    let origins = match (&http.cors_origins, mode) {
        (CorsOrigins::Any, _) => AllowOrigin::any(),
        (CorsOrigins::Default, AuthMode::Local) => {
            AllowOrigin::predicate(|origin, _| context::is_loopback_origin(origin))
        }
        (CorsOrigins::Default, _) => AllowOrigin::any(),
        (CorsOrigins::List(list), AuthMode::Local) => {
            let list = list.clone();
            AllowOrigin::predicate(move |origin, _| {
                list.contains(origin) || context::is_loopback_origin(origin)
            })
        }
        (CorsOrigins::List(list), _) => AllowOrigin::list(list.clone()),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(PREFLIGHT_MAX_AGE)
        .expose_headers([
            header::LOCATION,
            header::CONTENT_LOCATION,
            HeaderName::from_static("x-pagination-total"),
            HeaderName::from_static("x-request-id"),
        ])
}

/// Serves `app(state)` on `listener` (with the listener's limits, `net`) until `shutdown`
/// completes, then lets in-flight requests finish.
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
    // A signal during start-up (recovering runs a crash left) stops the server at once.
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        started = state.start(executor_stop) => started.map_err(std::io::Error::other)?,
        () = &mut shutdown => return Ok(()),
    }
    // Upgraded connections outlive the HTTP server's graceful shutdown: tell them to close
    // (1001) when it starts, and give them a moment to say so to their clients.
    let connections = state.ws.clone();
    let closing = connections.clone();
    let shutdown = async move {
        shutdown.await;
        closing.shut_down();
    };
    let net = state.http.net.clone();
    let result = net::serve(listener, app(state), net, shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.all_closed()).await;
    let _ = stop.send(true);
    result
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: call it before telling anyone the server is up, so a
/// signal sent right after the "listening" line stops the server gracefully instead of
/// killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let (mut int, mut term) = signals;
            let int = async {
                match int.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = int => {},
                () = term => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}
