//! One request, one context (DESIGN.md invariant 5), built in one place: the middleware here
//! gives every request a `RequestId`, authenticates it, opens the tracing span every log line
//! of the request is in, and sets `x-request-id` on the response. Extractors resolve the ids
//! a path names to rows the caller owns before a handler runs, so handlers never parse ids
//! or check owners themselves.

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ids::{RequestId, ThreadId, UserId};
use store::Thread;
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::error::{ApiError, REQUEST_ID};
use crate::metrics::{self, LookupFailure, Transport};
use crate::{AppState, HttpConfig};

/// What every handler knows about its request.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: RequestId,
    pub user: UserId,
    pub subject: String,
}

/// Routes anyone may call: liveness, version, health and the API description, `/metrics`
/// when it is configured public, and `/ws`, which authenticates itself (a browser may send
/// its credential in the first frame).
fn is_public(path: &str, http: &HttpConfig) -> bool {
    matches!(path, "/ok" | "/info" | "/healthz" | "/openapi.json" | "/ws")
        || (path == metrics::PATH && http.metrics == metrics::Exposure::Public)
}

/// The client's `x-request-id` if it is one of our ids' canonical form; otherwise a new one
/// (and the client's value, to log).
fn request_id(headers: &HeaderMap) -> (RequestId, Option<String>) {
    let Some(value) = headers.get("x-request-id") else { return (RequestId::new(), None) };
    let text = String::from_utf8_lossy(value.as_bytes());
    match text.parse() {
        Ok(id) => (id, None),
        Err(_) => (RequestId::new(), Some(text.chars().take(64).collect())),
    }
}

/// The request-context middleware; see the module documentation.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (request_id, replaced) = request_id(req.headers());
    // The route template, never the raw path, labels the metrics (no id in a label).
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        path = %req.uri().path(),
        route = %route,
        user_id = Empty,
        thread_id = Empty,
        run_id = Empty,
    );
    if let Some(client_value) = replaced {
        span.in_scope(|| tracing::info!(client_request_id = %client_value, "replaced an x-request-id that is not a UUID"));
    }
    let started = Instant::now();
    let handle = async move {
        // Read the whole body before anything can answer: a response sent while the client is
        // still sending would leave unread bytes on a keep-alive connection, and the server
        // would then close it under the client's next request.
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, state.http.body_limit).await {
            Ok(bytes) => bytes,
            Err(e) => return body_error(&e).into_response(),
        };
        let mut req = Request::from_parts(parts, axum::body::Body::from(bytes));
        if !is_public(req.uri().path(), &state.http) {
            match state.auth.authenticate(&state.store, req.headers()).await {
                Ok(caller) => {
                    tracing::Span::current().record("user_id", display(caller.user));
                    if req.uri().path() != metrics::PATH {
                        metrics::session_opened(Transport::Http);
                    }
                    // Long-lived responses (SSE streams) re-check it.
                    req.extensions_mut().insert(caller.credential);
                    let context =
                        RequestContext { request_id, user: caller.user, subject: caller.subject };
                    req.extensions_mut().insert(context);
                }
                Err(e) => return e.into_response(),
            }
        }
        next.run(req).await
    };
    let mut response = REQUEST_ID.scope(request_id, handle.instrument(span.clone())).await;
    if let Ok(value) = HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::http_request(method.as_str(), &route, status, elapsed);
    span.in_scope(|| tracing::info!(status, micros = elapsed.as_micros() as u64, "request"));
    response
}

fn body_error(e: &axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge(
                "request body is larger than the configured limit".into(),
            );
        }
        source = err.source();
    }
    ApiError::BadRequest(format!("could not read the request body: {e}"))
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("this route needs credentials".into()))
    }
}

/// Parses the path parameter `name` as an id of type `T` (422 naming the field otherwise).
pub async fn path_id<T>(parts: &mut Parts, name: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr<Err = ids::ParseIdError>,
{
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::invalid(e.body_text()))?;
    let raw = params
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .ok_or_else(|| ApiError::Internal(format!("route has no {name} parameter")))?;
    raw.parse().map_err(|e: ids::ParseIdError| {
        metrics::id_parse_failed(&e);
        if e.kind == ids::IdKind::Thread {
            metrics::thread_lookup_failed(LookupFailure::MalformedId);
        }
        ApiError::Invalid { code: "invalid_id", detail: e.to_string() }
    })
}

/// The thread `{thread_id}` names, loaded for its owner: another user's thread is a 404 like a
/// missing one.
#[derive(Clone, Debug)]
pub struct OwnedThread(pub Thread);

impl FromRequestParts<AppState> for OwnedThread {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let context = RequestContext::from_request_parts(parts, state).await?;
        let id: ThreadId = path_id(parts, "thread_id").await?;
        tracing::Span::current().record("thread_id", display(id));
        Ok(OwnedThread(owned_thread(&state.store, context.user, id).await?))
    }
}

/// The caller's thread `id`. When it is not found, says why in the metrics and the log
/// (missing, or another user's), then fails exactly as the store does: the client sees the
/// same 404 either way.
pub async fn owned_thread(
    store: &store::Store,
    user: UserId,
    id: ThreadId,
) -> Result<Thread, store::Error> {
    let result = store.get_thread(user, id).await;
    if let Err(store::Error::NotFound { .. }) = &result {
        thread_not_found(store, user, id).await;
    }
    result
}

/// Records a thread the store reported missing for `user`: another user's thread
/// (`not_owner`) or no thread at all (`not_found`). Call it on that failure path only: it
/// reads the thread without an owner.
pub async fn thread_not_found(store: &store::Store, user: UserId, id: ThreadId) {
    let reason = match store.admin_find_thread(id).await {
        Ok(Some(thread)) if thread.owner_id != user => LookupFailure::NotOwner,
        Ok(_) => LookupFailure::NotFound,
        Err(e) => {
            tracing::warn!(error = %e, "could not classify a thread lookup failure");
            LookupFailure::NotFound
        }
    };
    metrics::thread_lookup_failed(reason);
    tracing::info!(reason = reason.as_str(), "thread not found for this user");
}
