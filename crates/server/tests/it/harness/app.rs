//! [`TestApp`]: the router driven in-process (`app(state).oneshot`) on a fresh database, with
//! API keys for the users asked for, and assertions on our error shape.

use api::auth::{self, Auth, AuthMode, JwtConfig};
use api::{AppState, HttpConfig, app};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use store::testing::TestDb;
use store::{Backend, Store};
use tower::ServiceExt;

use super::BOUND;

/// An app on a fresh database, with API keys for the users it was asked for.
pub struct TestApp {
    pub state: AppState,
    db: TestDb,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestApp {
    /// `--auth keys` with the default configuration; `None` only when PostgreSQL is skipped
    /// (the shape `store::on_both_backends!(TestApp => ...)` needs).
    pub async fn new(backend: Backend) -> Option<TestApp> {
        TestApp::with(backend, AuthMode::Keys, &JwtConfig::default(), HttpConfig::default()).await
    }

    pub async fn with(
        backend: Backend,
        mode: AuthMode,
        jwt: &JwtConfig,
        http: HttpConfig,
    ) -> Option<TestApp> {
        let db = TestDb::new(backend).await?;
        let auth = Auth::new(mode, jwt).unwrap();
        Some(TestApp::on(db, auth, http).await)
    }

    /// An app on `db` (a test's own database, perhaps with its rows written first).
    pub async fn on(db: TestDb, auth: Auth, http: HttpConfig) -> TestApp {
        TestApp::running(db, auth, http, Default::default()).await
    }

    /// An app on `db` whose executor runs with `executor` (its places, the `llm` agent's
    /// model and MCP servers).
    pub async fn running(
        db: TestDb,
        auth: Auth,
        http: HttpConfig,
        executor: engine::ExecutorConfig,
    ) -> TestApp {
        let state = AppState::new(
            engine::Engine::new(db.store.clone(), executor).await.unwrap(),
            auth,
            http,
        );
        // The executor runs until the test's runtime ends.
        state.start(std::future::pending()).await.unwrap();
        TestApp { state, db }
    }

    /// The test's store (its database's, not the app's).
    pub fn store(&self) -> &Store {
        &self.db.store
    }

    /// The test's database (for tests that break it on purpose).
    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// The app's router, for a request driven by hand.
    pub fn router(&self) -> axum::Router {
        app(self.state.clone())
    }

    /// A new API key for `user`.
    pub async fn key(&self, user: &str) -> String {
        new_key(self.store(), user).await
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Reply { status, headers, body }
    }

    pub async fn call(&self, key: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri).header("x-api-key", key);
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    pub async fn get(&self, key: &str, uri: &str) -> Reply {
        self.call(key, Method::GET, uri, None).await
    }

    pub async fn post(&self, key: &str, uri: &str, body: Value) -> Reply {
        self.call(key, Method::POST, uri, Some(body)).await
    }

    /// Sends a request and reads its whole SSE body (the stream ends with the run).
    pub async fn sse(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<Frame>) {
        let response = self.router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, parse_sse(std::str::from_utf8(&bytes).unwrap()))
    }

    pub async fn post_sse(
        &self,
        key: &str,
        uri: &str,
        body: Value,
    ) -> (StatusCode, HeaderMap, Vec<Frame>) {
        let request = Request::post(uri)
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.sse(request).await
    }

    /// Waits (bounded) until the run's status satisfies `done`; returns the run.
    pub async fn wait_for_status(
        &self,
        key: &str,
        thread: &str,
        run: &str,
        done: impl Fn(&str) -> bool,
    ) -> Value {
        let uri = format!("/threads/{thread}/runs/{run}");
        super::eventually(&format!("run {run} reaches the status awaited"), BOUND, async || {
            let r = self.get(key, &uri).await.ok();
            done(r["status"].as_str().unwrap()).then_some(r)
        })
        .await
    }
}

/// A new API key for `user`, written straight into `store`.
pub(super) async fn new_key(store: &Store, user: &str) -> String {
    let key = auth::generate_key().unwrap();
    store.create_api_key(user, &auth::hash_key(&key), &auth::key_prefix(&key)).await.unwrap();
    key
}

impl Reply {
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        self.body
    }

    /// Asserts an error of our shape: status, code, a detail containing `detail`, and the
    /// request id of the `x-request-id` header.
    #[track_caller]
    pub fn error(self, status: StatusCode, code: &str, detail: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        let text = self.body["detail"].as_str().unwrap();
        assert!(text.contains(detail), "detail {text:?} lacks {detail:?}");
        let header = self.headers.get("x-request-id").unwrap().to_str().unwrap();
        assert_eq!(self.body["request_id"], header);
        assert!(header.parse::<ids::RequestId>().is_ok());
        self.body
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub event: String,
    pub data: Value,
    pub id: Option<String>,
}

/// Parses a whole SSE body (comments skipped).
pub fn parse_sse(text: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        let (mut event, mut data, mut id) = (String::new(), String::new(), None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            }
        }
        if !event.is_empty() {
            let data =
                if data.is_empty() { Value::Null } else { serde_json::from_str(&data).unwrap() };
            frames.push(Frame { event, data, id });
        }
    }
    frames
}
