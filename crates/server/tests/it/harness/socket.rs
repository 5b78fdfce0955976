//! [`SocketApp`]: the server library served in-process on a real socket (port 0), for tests of
//! the listener, streams and WebSockets; stopped gracefully by [`SocketApp::stop`].

use std::net::SocketAddr;

use api::auth::{Auth, AuthMode, JwtConfig};
use api::ws::WsConfig;
use api::{AppState, HttpConfig};
use store::testing::TestDb;
use store::{Backend, Store};
use tokio::sync::oneshot;

use super::BOUND;

/// `api::serve` on `127.0.0.1:0`, bound before it is used (no wait for it to start).
pub struct SocketApp {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The store it serves (the test's, not read through `state`).
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The database it was made on, if it made one.
    _db: Option<TestDb>,
}

impl SocketApp {
    /// Serves `store` with `--auth mode` and the WebSocket configuration `ws`.
    pub async fn start(store: Store, mode: AuthMode, ws: WsConfig) -> SocketApp {
        SocketApp::start_with(store, Auth::new(mode, &JwtConfig::default()).unwrap(), ws).await
    }

    pub async fn start_with(store: Store, auth: Auth, ws: WsConfig) -> SocketApp {
        SocketApp::start_http(store, auth, HttpConfig { ws, ..HttpConfig::default() }).await
    }

    pub async fn start_http(store: Store, auth: Auth, http: HttpConfig) -> SocketApp {
        let state = AppState::new(
            engine::Engine::new(store.clone(), Default::default()).await.unwrap(),
            auth,
            http,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(api::serve(listener, state.clone(), shutdown));
        SocketApp { addr, state, store, stop: Some(stop), task, _db: None }
    }

    /// Serves a fresh database of `backend`; `None` only when PostgreSQL is skipped.
    pub async fn on_fresh_db(
        backend: Backend,
        mode: AuthMode,
        http: HttpConfig,
    ) -> Option<SocketApp> {
        let db = TestDb::new(backend).await?;
        let auth = Auth::new(mode, &JwtConfig::default()).unwrap();
        let served = SocketApp::start_http(db.store.clone(), auth, http).await;
        Some(SocketApp { _db: Some(db), ..served })
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(BOUND, self.task).await.unwrap().unwrap().unwrap();
    }

    /// A new API key for `user`.
    pub async fn key(&self, user: &str) -> String {
        super::app::new_key(&self.store, user).await
    }

    /// The WebSocket endpoint.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}
