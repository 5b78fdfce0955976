//! Runs on SQLite and PostgreSQL: lifecycle, the races and multitask strategies, streaming
//! and lossless resume, cancel, stateless runs, validation and isolation.

mod executor;
mod lifecycle;
mod streams;

use std::collections::HashSet;

use crate::harness;
use crate::harness::{Frame, TestApp};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ids::ThreadId;
use serde_json::{Value, json};

fn hi(text: &str) -> Value {
    json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": text}]}})
}

async fn new_thread(app: &TestApp, key: &str) -> String {
    app.post(key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned()
}

async fn start_slow_run(app: &TestApp, key: &str, t: &str, extra: Value) -> String {
    let mut body = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5, "messages": [{"role": "user", "content": "slow"}]}});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let run = app.post(key, &format!("/threads/{t}/runs"), body).await.ok();
    run["run_id"].as_str().unwrap().to_owned()
}

/// A started app (local auth) on `backend` with an executor of its own configuration; `None`
/// without PostgreSQL.
async fn app_with_executor(
    backend: store::Backend,
    config: harness::ExecutorConfig,
) -> Option<(store::testing::TestDb, harness::AppState)> {
    use crate::harness::{Auth, AuthMode, JwtConfig};
    let db = store::testing::TestDb::new(backend).await?;
    let auth = Auth::new(AuthMode::Local, &JwtConfig::default()).unwrap();
    let http = harness::HttpConfig::default();
    let state = harness::AppState::new(
        engine::Engine::new(db.store.clone(), config).await.unwrap(),
        auth,
        http,
    );
    state.start(std::future::pending()).await.unwrap();
    Some((db, state))
}

/// One request to `state`'s app; the JSON body (`null` if there is none).
async fn call(state: &harness::AppState, method: Method, uri: String, body: Value) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(harness::app(state.clone()), request).await.unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    serde_json::from_str::<Value>(std::str::from_utf8(&bytes).unwrap().trim())
        .unwrap_or(Value::Null)
}
