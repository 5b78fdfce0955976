//! What the API test files share: an app on a fresh database, requests with API keys, and
//! assertions on our error shape.

#![allow(dead_code, reason = "each test file uses part of this")]

use api::auth::{self, Auth, AuthMode, JwtConfig};
use api::{AppState, HttpConfig, app};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use store::testing::TestDb;
use store::{Backend, Store};
use tower::ServiceExt;

/// An app on a fresh database, with API keys for the users it was asked for.
pub struct TestApp {
    pub state: AppState,
    _db: TestDb,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestApp {
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
        let state = AppState::new(
            engine::Engine::new(db.store.clone(), Default::default()).await.unwrap(),
            auth,
            http,
        );
        // The executor runs until the test's runtime ends.
        state.start(std::future::pending()).await.unwrap();
        Some(TestApp { state, _db: db })
    }

    pub fn store(&self) -> &Store {
        &self._db.store
    }

    /// The test's database (for tests that break it on purpose).
    pub fn db(&self) -> &TestDb {
        &self._db
    }

    /// A new API key for `user`.
    pub async fn key(&self, user: &str) -> String {
        let key = auth::generate_key().unwrap();
        self.store()
            .create_api_key(user, &auth::hash_key(&key), &auth::key_prefix(&key))
            .await
            .unwrap();
        key
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
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

/// Runs each named test body on both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = super::TestApp::new(store::Backend::Sqlite).await.unwrap();
                    super::$name(&app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(app) = super::TestApp::new(store::Backend::Postgres).await else { return };
                    super::$name(&app).await;
                }
            )*
        }
    };
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

impl TestApp {
    /// Sends a request and reads its whole SSE body (the stream ends with the run).
    pub async fn sse(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<Frame>) {
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let r = self.get(key, &format!("/threads/{thread}/runs/{run}")).await.ok();
            if done(r["status"].as_str().unwrap()) {
                return r;
            }
            assert!(std::time::Instant::now() < deadline, "run {run} stayed {}", r["status"]);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
