//! The service routes, driven in-process on both backends.

use crate::harness::{AppState, HttpConfig, app};
use crate::harness::{Auth, AuthMode, JwtConfig};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::testing::TestDb;
use store::{Backend, Store};
use tower::ServiceExt;

async fn state(store: &Store) -> AppState {
    let auth = Auth::new(AuthMode::Local, &JwtConfig::default()).unwrap();
    AppState::new(
        engine::Engine::new(store.clone(), Default::default()).await.unwrap(),
        auth,
        HttpConfig::default(),
    )
}

async fn get(store: &Store, uri: &str) -> (StatusCode, Value) {
    let state = state(store).await;
    let response =
        app(state).oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn check_service_routes(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    assert_eq!(get(&db.store, "/ok").await, (StatusCode::OK, json!({"ok": true})));
    assert_eq!(
        get(&db.store, "/healthz").await,
        (StatusCode::OK, json!({"status": "ok", "database": backend.as_str()}))
    );
}

#[tokio::test]
async fn service_routes_on_sqlite() {
    check_service_routes(Backend::Sqlite).await;
}

#[tokio::test]
async fn service_routes_on_postgres() {
    check_service_routes(Backend::Postgres).await;
}

#[tokio::test]
async fn builtin_assistants_are_registered_at_start() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    state(&db.store).await;
    // Registering twice (a restart) keeps one row per agent.
    state(&db.store).await;
    let user = db.store.ensure_user("u").await.unwrap().user_id;
    let names: Vec<_> =
        db.store.list_assistants(user).await.unwrap().into_iter().map(|a| a.graph_id).collect();
    assert_eq!(names, ["echo", "synthetic", "llm"]);
}
