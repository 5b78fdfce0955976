//! One request, one context (DESIGN.md invariant 5), built in one place: the middleware here
//! gives every request a `RequestId`, opens the tracing span every log line of the request is
//! in, logs it and sets `x-request-id` on the response; with `--auth local` it refuses a
//! foreign `Host` or `Origin` first. Inside CORS, [`authenticate`] authenticates the request
//! from its headers, then reads its body (size limit, deadline, large-body places).
//! Extractors resolve the ids a path names to rows the caller owns before a handler runs, so
//! handlers never parse ids or check owners themselves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::Thread;
use http_body_util::BodyExt;
use ids::{RequestId, ThreadId, UserId};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::auth::AuthMode;
use crate::error::{ApiError, REQUEST_ID, current_request_id};
use crate::metrics::{self, LookupFailure, Transport};
use crate::{AppState, CorsOrigins, HttpConfig};

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
        if let Some(refusal) = local_guard(&state, req.headers()) {
            return refusal;
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

/// Authenticates the request from its headers, then reads its body; see the module
/// documentation. A request refused before its body is read is answered with
/// `Connection: close`: its unread bytes must not be taken for the connection's next request.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if !is_public(parts.uri.path(), &state.http) {
        match state.auth.authenticate(&state.engine, &parts.headers).await {
            Ok(caller) => {
                tracing::Span::current().record("user_id", display(caller.user));
                if parts.uri.path() != metrics::PATH {
                    metrics::session_opened(Transport::Http);
                }
                let request_id = current_request_id();
                // Long-lived responses (SSE streams) re-check it.
                parts.extensions.insert(caller.credential);
                let context =
                    RequestContext { request_id, user: caller.user, subject: caller.subject };
                parts.extensions.insert(context);
            }
            Err(e) => {
                let unread = !body.is_end_stream();
                return close_if(unread, e.into_response());
            }
        }
    } else if !body.is_end_stream() {
        // The routes anyone may call take no body: a stranger's body is never read (nor can
        // it wait for a large-body place).
        let refusal = ApiError::BadRequest(format!(
            "{} takes no request body (it answers without credentials)",
            parts.uri.path()
        ));
        return close_if(true, refusal.into_response());
    }
    let (bytes, _place) = match read_body(&state, &parts.headers, body).await {
        Ok(read) => read,
        Err(refusal) => return close_if(true, refusal),
    };
    // The place for a large body is held until the handler has answered (it has parsed the
    // body by then); a streamed response's body is not waited for.
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Reads a whole body within `--body-limit` and `--body-timeout`. A large body (declared, or
/// once that many bytes are in) first waits for one of the large-body places, which it keeps;
/// the wait does not count against its deadline.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Response> {
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let http = &state.http;
    let declared = body
        .size_hint()
        .exact()
        .or_else(|| headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n| n > http.body_limit as u64) {
        return Err(too_large().into_response());
    }
    let mut place = None;
    if declared.is_some_and(|n| n >= http.large_body as u64) {
        place = Some(large_body_place(state).await?);
    }
    let mut deadline = tokio::time::Instant::now() + http.body_timeout;
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)).min(http.body_limit);
    let mut bytes = Vec::with_capacity(capacity);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                tracing::info!(received = bytes.len(), "request body not received in time");
                return Err(body_timeout(http).into_response());
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(body_error(&e).into_response()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > http.body_limit {
            return Err(too_large().into_response());
        }
        bytes.extend_from_slice(&data);
        if place.is_none() && bytes.len() >= http.large_body {
            let waiting = tokio::time::Instant::now();
            place = Some(large_body_place(state).await?);
            deadline += waiting.elapsed();
        }
    }
    Ok((Bytes::from(bytes), place))
}

/// A large-body place, waited for at most `--body-timeout` (then 503: the server is busy with
/// other large bodies), so a queue of them cannot hold a request for ever.
async fn large_body_place(state: &AppState) -> Result<OwnedSemaphorePermit, Response> {
    match tokio::time::timeout(state.http.body_timeout, state.large_bodies.place()).await {
        Ok(place) => Ok(place),
        Err(_) => Err(ApiError::Unavailable(format!(
            "too many large request bodies at once (--large-body-parses {}): try again",
            state.http.large_body_parses
        ))
        .into_response()),
    }
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
}

fn body_timeout(http: &HttpConfig) -> Response {
    error_response(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} ms (--body-timeout)",
            http.body_timeout.as_millis()
        ),
    )
}

/// Adds `Connection: close` to `response` when `close` holds.
fn close_if(close: bool, mut response: Response) -> Response {
    if close {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// An error of our shape for statuses `ApiError` has no variant for.
fn error_response(status: StatusCode, code: &'static str, detail: String) -> Response {
    let request_id = current_request_id();
    let body = serde_json::json!({ "detail": detail, "code": code, "request_id": request_id });
    (status, axum::Json(body)).into_response()
}

/// With `--auth local`, the one local user's data must not be reachable from a web page: a
/// `Host` that is not a loopback name (DNS rebinding) and an `Origin` that is neither loopback
/// nor in `--cors-origins` are refused (403), whatever the method or content type, so a
/// "simple" cross-site POST cannot write either. `None` lets the request through. A request
/// without these headers (a non-browser client) is not refused.
fn local_guard(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if state.auth.mode() != AuthMode::Local {
        return None;
    }
    if let Some(host) = headers.get(header::HOST) {
        let loopback = host.to_str().ok().is_some_and(is_loopback_authority);
        if !loopback {
            let shown = shown(host);
            tracing::info!(host = %shown, "refused a request for a host that is not loopback");
            return Some(forbidden(
                "forbidden_host",
                format!(
                    "Host `{shown}` is not this server: with --auth local, Spindle answers only \
                     to loopback names (localhost, 127.0.0.1, [::1], any port)"
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = match &state.http.cors_origins {
            CorsOrigins::Any => true,
            CorsOrigins::Default => is_loopback_origin(origin),
            CorsOrigins::List(list) => list.contains(origin) || is_loopback_origin(origin),
        };
        if !allowed {
            let shown = shown(origin);
            tracing::info!(origin = %shown, "refused a request from a foreign origin");
            return Some(forbidden(
                "forbidden_origin",
                format!(
                    "Origin `{shown}` may not call this server: with --auth local, only \
                     loopback origins (http://localhost, http://127.0.0.1, http://[::1], any \
                     port) and those of --cors-origins may"
                ),
            ));
        }
    }
    None
}

/// A header's value as a log line and an error message may show it (lossy, at most 100
/// characters).
fn shown(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).chars().take(100).collect()
}

/// A 403 that closes the connection (its body, if any, is not read).
fn forbidden(code: &'static str, detail: String) -> Response {
    close_if(true, error_response(StatusCode::FORBIDDEN, code, detail))
}

/// Whether `origin` is `http(s)://` a loopback host, with any port.
pub fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else { return false };
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|authority| !authority.contains('/') && is_loopback_authority(authority))
}

/// Whether `authority` (`host[:port]`) names a loopback host: `localhost` (or a name under
/// `.localhost`, which browsers resolve to loopback themselves), 127.0.0.0/8 or `[::1]`.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if !(after.is_empty() || port_ok(after)) {
            return false;
        }
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port_ok(&format!(":{port}")) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| IpAddr::V4(ip).is_loopback())
}

/// `:PORT`, digits only.
fn port_ok(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
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
        Ok(OwnedThread(state.engine.owned_thread(context.user, id).await?))
    }
}

/// The thread `{thread_id}` names, checked to be the caller's (a 404 like a missing one
/// otherwise) from its owner alone: for routes that need none of its data, so they work even
/// on a thread whose stored data cannot be read.
#[derive(Clone, Copy, Debug)]
pub struct ThreadKey(pub ThreadId);

impl FromRequestParts<AppState> for ThreadKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let context = RequestContext::from_request_parts(parts, state).await?;
        let id: ThreadId = path_id(parts, "thread_id").await?;
        tracing::Span::current().record("thread_id", display(id));
        state.engine.owned_thread_key(context.user, id).await?;
        Ok(ThreadKey(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_origins() {
        for host in [
            "localhost",
            "localhost:8123",
            "LOCALHOST.:1",
            "app.localhost:3000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8123",
        ] {
            assert!(is_loopback_authority(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:8123",
            "[::2]:1",
            "[::1]x",
            "localhost:",
            "localhost:80:80",
            "127.0.0.1:http",
        ] {
            assert!(!is_loopback_authority(host), "{host}");
        }
        for origin in ["http://localhost:3000", "https://127.0.0.1", "http://[::1]:5173"] {
            assert!(is_loopback_origin(&HeaderValue::from_static(origin)), "{origin}");
        }
        for origin in
            ["null", "file://", "http://localhost/x", "ftp://localhost", "https://evil.example"]
        {
            assert!(!is_loopback_origin(&HeaderValue::from_static(origin)), "{origin}");
        }
    }
}
