//! Service routes: liveness (`/ok`) and readiness with a database round trip (`/healthz`).
//! The Agent Protocol routes join this router as their own modules.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/ok", get(ok)).route("/healthz", get(healthz))
}

/// Liveness, as the LangGraph server answers it.
async fn ok() -> Json<Value> {
    Json(json!({ "ok": true }))
}

/// Readiness: 200 when the database answers, 503 (with the reason) when it does not.
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = state.store.backend().as_str();
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok", "database": database }))),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            let body =
                json!({ "status": "unavailable", "database": database, "detail": e.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
