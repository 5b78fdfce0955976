//! Service routes: liveness (`/ok`), version and capabilities (`/info`), readiness with a
//! database round trip (`/healthz`) and the OpenAPI document (`/openapi.json`, served by
//! `crate::app`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ok)).routes(routes!(info)).routes(routes!(healthz))
}

/// Liveness, as the LangGraph server answers it.
#[utoipa::path(get, path = "/ok", tag = "service", responses((status = 200, body = Object, example = json!({"ok": true}))))]
async fn ok() -> Json<Value> {
    Json(json!({ "ok": true }))
}

/// Server version and the optional features it has.
#[utoipa::path(get, path = "/info", tag = "service", responses((status = 200, body = Object)))]
async fn info() -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "server": "spindle",
        "flags": { "assistants": true, "crons": false, "langsmith": false, "langsmith_tracing_replicas": false },
    }))
}

/// Readiness: 200 when the database answers, 503 (with the reason) when it does not.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Object), (status = 503, body = Object)))]
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = state.engine.backend();
    match state.engine.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok", "database": database }))),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            let body =
                json!({ "status": "unavailable", "database": database, "detail": e.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
