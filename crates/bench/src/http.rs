//! The server under test: its base URL, credentials and a pooled HTTP/1.1 client.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How requests authenticate (none for `--auth local` servers and LangGraph's dev server).
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    /// `x-api-key: KEY`
    ApiKey(String),
    /// `Authorization: Bearer TOKEN`
    Bearer(String),
}

impl Auth {
    /// The header this credential travels in.
    pub fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        let (name, value) = match self {
            Auth::None => return None,
            Auth::ApiKey(key) => (HeaderName::from_static("x-api-key"), key.clone()),
            Auth::Bearer(token) => (hyper::header::AUTHORIZATION, format!("Bearer {token}")),
        };
        HeaderValue::from_str(&value).ok().map(|v| (name, v))
    }
}

/// The outcome of one request that did not go as expected, as counted in "errors by status".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with this status.
    Status(u16, String),
    /// Connection refused or reset, or a body that did not arrive.
    Io(String),
    /// No answer within the request timeout.
    Timeout,
    /// A 2xx whose body is not what the workload expects.
    BadReply(String),
}

impl Failure {
    /// The key errors are counted under: the status code, `io`, `timeout` or `bad-reply`.
    pub fn key(&self) -> String {
        match self {
            Failure::Status(status, _) => status.to_string(),
            Failure::Io(_) => "io".into(),
            Failure::Timeout => "timeout".into(),
            Failure::BadReply(_) => "bad-reply".into(),
        }
    }

    pub fn is_5xx(&self) -> bool {
        matches!(self, Failure::Status(s, _) if *s >= 500)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status, body) => write!(f, "HTTP {status}: {body}"),
            Failure::Io(e) => write!(f, "I/O: {e}"),
            Failure::Timeout => write!(f, "timed out"),
            Failure::BadReply(why) => write!(f, "unexpected reply: {why}"),
        }
    }
}

/// A reply read in full.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON if the status is 2xx, else a [`Failure::Status`].
    pub fn json(&self) -> Result<Value, Failure> {
        if !(200..300).contains(&self.status) {
            return Err(Failure::Status(self.status, self.text(300)));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::BadReply(format!("not JSON ({e}): {}", self.text(200))))
    }

    /// The start of the body as text, for error messages.
    pub fn text(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(max).collect()
    }
}

/// An Agent Protocol server: base URL, credentials, one connection pool.
#[derive(Clone, Debug)]
pub struct Target {
    base: String,
    auth: Auth,
    client: HttpClient,
    timeout: Duration,
}

/// The input every `echo` run of the workloads sends.
pub fn echo_input() -> Value {
    json!({"messages": [{"role": "human", "content": "hi"}]})
}

impl Target {
    /// `base_url` like `http://127.0.0.1:2031` (a trailing slash is dropped); `timeout` bounds
    /// each request (a `runs/wait` included).
    pub fn new(base_url: &str, auth: Auth, timeout: Duration) -> Result<Target> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("--base-url must start with http:// (got {base_url:?})");
        }
        let mut connector = HttpConnector::new();
        // A streamed body written in parts must not wait for a delayed ACK.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(4096)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Target { base, auth, client, timeout })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The same server with another credential (another user), sharing the pool.
    pub fn with_auth(&self, auth: Auth) -> Target {
        Target { auth, ..self.clone() }
    }

    /// `ws://host:port/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws{}/ws", &self.base["http".len()..])
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some((name, value)) = self.auth.header() {
            builder = builder.header(name, value);
        }
        let body = match body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        builder.body(body).expect("a request built from a valid base URL")
    }

    /// Sends a request and reads its whole body, within the timeout.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let request = self.request(method, path, body);
        let exchange = async {
            let response = self.client.request(request).await.map_err(io_failure)?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Io(e.to_string()))?
                .to_bytes();
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or(Err(Failure::Timeout))
    }

    pub async fn get(&self, path: &str) -> Result<Reply, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Sends a request and returns the response with its body unread (SSE).
    pub async fn open(&self, path: &str, body: &Value) -> Result<Response<Incoming>, Failure> {
        let request = self.request(Method::POST, path, Some(body));
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(result) => result.map_err(io_failure),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// `POST /threads` → the new thread's id.
    pub async fn create_thread(&self) -> Result<String, Failure> {
        let reply = self.post("/threads", &json!({})).await?.json()?;
        reply["thread_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::BadReply(format!("no thread_id in {reply}")))
    }

    /// `POST /threads/{id}/runs/wait` on `echo` with [`echo_input`]; checks that the final
    /// state ends with the reply `echo: hi`.
    pub async fn echo_wait(&self, thread_id: &str) -> Result<Value, Failure> {
        let body = json!({"assistant_id": "echo", "input": echo_input()});
        let values = self.post(&format!("/threads/{thread_id}/runs/wait"), &body).await?.json()?;
        check_echo(&values)?;
        Ok(values)
    }

    /// One create thread + `runs/wait`.
    pub async fn one_run(&self) -> Result<(), Failure> {
        let thread = self.create_thread().await?;
        self.echo_wait(&thread).await.map(drop)
    }

    /// Whether the server answers at all (`GET /ok`, falling back to `/info`).
    pub async fn check_reachable(&self) -> Result<()> {
        for path in ["/ok", "/info"] {
            if let Ok(reply) = self.get(path).await
                && reply.status == 200
            {
                return Ok(());
            }
        }
        let reply = self.get("/ok").await.map_err(|e| anyhow::anyhow!("{e}"));
        reply.with_context(|| format!("{} does not answer", self.base))?;
        bail!("{} answers but neither /ok nor /info is 200", self.base)
    }
}

fn io_failure(e: hyper_util::client::legacy::Error) -> Failure {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    Failure::Io(text)
}

/// The last message of a `runs/wait` reply must be the echo of "hi".
pub fn check_echo(values: &Value) -> Result<(), Failure> {
    let last = values["messages"].as_array().and_then(|m| m.last());
    match last.and_then(|m| m["content"].as_str()) {
        Some("echo: hi") => Ok(()),
        _ => {
            let text: String = values.to_string().chars().take(200).collect();
            Err(Failure::BadReply(format!("the last message is not \"echo: hi\": {text}")))
        }
    }
}
