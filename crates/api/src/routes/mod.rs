//! The HTTP surface: each resource module owns its routes (`router()`); this module merges
//! them, with their OpenAPI description built from the same registrations (utoipa-axum), so a
//! route cannot be served without being documented.

mod assistants;
pub(crate) mod runs;
mod service;
mod state;
mod threads;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spindle",
        description = "The Agent Protocol, as served by the LangGraph Platform"
    ),
    components(schemas(crate::error::ErrorBody))
)]
struct ApiDoc;

/// Every route, and the OpenAPI document describing them.
pub fn router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(service::router())
        .merge(assistants::router())
        .merge(threads::router())
        .merge(state::router())
        .merge(runs::router())
        .split_for_parts()
}

/// Checks a page size: 1 to 1000.
pub(crate) fn limit(value: Option<i64>, default: u32) -> crate::error::ApiResult<u32> {
    match value {
        None => Ok(default),
        Some(n @ 1..=1000) => Ok(n as u32),
        Some(n) => {
            Err(crate::error::ApiError::invalid(format!("limit: expected 1 to 1000, got {n}")))
        }
    }
}

/// Checks an offset: 0 or more.
pub(crate) fn offset(value: Option<i64>) -> crate::error::ApiResult<u32> {
    match value {
        None => Ok(0),
        Some(n @ 0..=0xFFFF_FFFF) => Ok(n as u32),
        Some(n) => {
            Err(crate::error::ApiError::invalid(format!("offset: expected 0 or more, got {n}")))
        }
    }
}
