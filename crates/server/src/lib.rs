//! The Spindle server as a library: configuration, the router and `serve`, so tests drive
//! exactly what the `spindle` binary runs. `main.rs` only parses the command line.

pub mod config;
pub mod routes;

use std::future::Future;

use axum::Router;
use store::{Store, SystemAssistant};
use tokio::net::TcpListener;

/// The built-in agents, registered as system assistants at start-up. The runs issue gives
/// them behaviour; their ids are the LangGraph-compatible UUIDv5 of the name.
pub const BUILTIN_AGENTS: &[(&str, &str)] =
    &[("echo", "Replies with the user's last message; deterministic, no network")];

/// Everything a handler may need; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
}

impl AppState {
    /// Prepares a migrated store for serving: registers the built-in assistants.
    pub async fn new(store: Store) -> store::Result<AppState> {
        for (graph_id, description) in BUILTIN_AGENTS {
            let spec = SystemAssistant {
                graph_id: (*graph_id).into(),
                description: Some((*description).into()),
            };
            store.upsert_system_assistant(&spec).await?;
        }
        Ok(AppState { store })
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    routes::router().with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
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
