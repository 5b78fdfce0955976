//! The API's one error shape, `{"detail", "code", "request_id"}`, for every 4xx and 5xx
//! (extractor rejections included), and the extractors that produce it from bad input.
//!
//! The request id comes from a task-local set by the request-context middleware, so an error
//! built anywhere inside a request carries the id of that request.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ids::RequestId;
use serde::de::DeserializeOwned;
use serde_json::json;

tokio::task_local! {
    /// The id of the request being served on this task.
    pub static REQUEST_ID: RequestId;
}

/// The id of the current request (a fresh one outside any request).
pub fn current_request_id() -> RequestId {
    REQUEST_ID.try_with(|id| *id).unwrap_or_else(|_| RequestId::new())
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Every way a request can fail, as HTTP outcomes.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not JSON at all.
    BadRequest(String),
    /// 401: missing or bad credentials.
    Unauthorized(String),
    /// 403: visible to the caller but not theirs to change (a system assistant).
    Forbidden(String),
    /// 404: missing, or another user's (never told apart).
    NotFound(String),
    /// 405
    MethodNotAllowed,
    /// 409
    Conflict(String),
    /// 413
    PayloadTooLarge(String),
    /// 415
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid; `code` is machine-readable (`invalid_id`, ...).
    Invalid { code: &'static str, detail: String },
    /// 503: the database did not answer; the cause is logged.
    Unavailable(String),
    /// 500: a bug; the cause is logged, never sent.
    Internal(String),
}

impl ApiError {
    pub fn invalid(detail: impl Into<String>) -> Self {
        ApiError::Invalid { code: "invalid_request", detail: detail.into() }
    }

    /// 422 for a value Spindle cannot honour yet: refused, never silently dropped.
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        ApiError::Invalid {
            code: "unsupported",
            detail: format!("{what} is not supported by this server yet"),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "malformed_json",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Invalid { code, .. } => code,
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The status, code and detail a client is told (the cause of a 5xx is logged instead).
    pub fn into_parts(self, request_id: RequestId) -> (StatusCode, &'static str, String) {
        let status = self.status();
        let code = self.code();
        let detail = match self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                format!("internal error; quote request id {request_id} to an operator")
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                format!("service unavailable; quote request id {request_id} to an operator")
            }
            ApiError::MethodNotAllowed => "method not allowed on this route".to_owned(),
            ApiError::BadRequest(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::NotFound(d)
            | ApiError::Conflict(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::Invalid { detail: d, .. } => d,
        };
        (status, code, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        let (status, code, detail) = self.into_parts(request_id);
        let body = json!({ "detail": detail, "code": code, "request_id": request_id });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="spindle""#),
            );
        }
        response
    }
}

impl From<domain::Error> for ApiError {
    fn from(e: domain::Error) -> Self {
        match e {
            domain::Error::NotFound { kind, id } => {
                ApiError::NotFound(format!("{kind} {id} not found"))
            }
            domain::Error::Conflict(m) => ApiError::Conflict(m),
            domain::Error::Invalid(m) => ApiError::invalid(m),
            domain::Error::Unavailable(m) => ApiError::Unavailable(m),
            e @ (domain::Error::Database(_) | domain::Error::Unreadable { .. }) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

/// A JSON body, read with our error shape: not JSON → 400, wrong content type → 415, too
/// large → 413, valid JSON of the wrong shape → 422 naming the field. An empty body reads as
/// `{}` so that `curl -X POST /threads` works.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        if !json && bytes != b"{}" {
            return Err(ApiError::UnsupportedMediaType(
                "expected a JSON body with content-type application/json".into(),
            ));
        }
        parse_json(bytes).map(ApiJson)
    }
}

/// Deserializes a JSON document, naming the path of a field that has the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest(format!("malformed JSON body: {inner}"));
        }
        // A shape error may be met before a syntax error later in the text: check the syntax
        // (on this error path only) so malformed JSON is always a 400.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return ApiError::BadRequest(format!("malformed JSON body: {syntax}"));
        }
        if let Some(kind) = rejected_id(&inner.to_string()) {
            crate::metrics::id_rejected(crate::metrics::id_kind(kind));
        }
        let detail = if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body at `{path}`: {inner}")
        };
        ApiError::Invalid { code: "invalid_body", detail }
    })
}

/// The kind of id a deserialization error refused, read from the message the ids crate
/// writes (`invalid thread_id `...`: ...`): serde keeps only the text of a field's error.
fn rejected_id(message: &str) -> Option<ids::IdKind> {
    let rest = message.strip_prefix("invalid ")?;
    ids::IdKind::ALL
        .into_iter()
        .find(|kind| rest.strip_prefix(kind.field()).is_some_and(|after| after.starts_with(" `")))
}

/// Query parameters, with rejections in our error shape (422).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::Invalid { code: "invalid_query", detail: e.body_text() })
    }
}

/// The body of every error response (for the OpenAPI document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what was expected (what the SDKs show).
    pub detail: String,
    /// A machine-readable code, e.g. `not_found`, `invalid_id`, `invalid_body`.
    pub code: String,
    /// The request's id, also in the `x-request-id` header and the server's logs.
    pub request_id: String,
}
