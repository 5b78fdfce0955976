//! The `llm` agent against a real OpenAI-compatible server (`testkit::model`, on a socket),
//! on SQLite and PostgreSQL: streamed tokens as `messages-tuple` chunks, the conversation the
//! model is sent, usage and reasoning, and every failure of the model server (retried before
//! the first token, a clear run error after it; never a hang, the thread usable again), cancel
//! mid-stream closing the upstream request.

mod model;
mod tools;

use std::collections::BTreeMap;
use std::time::Duration;

use agents::llm::{Models, Provider, Retry};
use agents::mcp::{McpServerConfig, McpServers};
use serde_json::{Value, json};
use testkit::RefusedPort;
use testkit::mcp::McpServer;
use testkit::model::ModelServer;

use crate::harness::{self, Auth, AuthMode, ExecutorConfig, HttpConfig, JwtConfig, TestApp};

/// An app whose `llm` agent talks to a model server of its own, with the MCP servers `math`
/// (the test server's tools: add, echo, fail, slow) and `gone` (a port nothing listens on).
pub struct LlmApp {
    pub app: TestApp,
    pub model: ModelServer,
    pub mcp: McpServer,
    /// The port of `leaky` and `gone`, held so that no other test's server gets it.
    _refused: RefusedPort,
}

impl LlmApp {
    pub async fn new(backend: store::Backend) -> Option<LlmApp> {
        LlmApp::with_run_timeout(backend, ExecutorConfig::default().run_timeout).await
    }

    /// As `new`, with runs ending `timeout` after `run_timeout`.
    pub async fn with_run_timeout(
        backend: store::Backend,
        run_timeout: Duration,
    ) -> Option<LlmApp> {
        let db = harness::TestDb::new(backend).await?;
        let model = ModelServer::start().await;
        let mut providers = BTreeMap::new();
        let provider = Provider::new(&model.base_url(), Some("sk-test-secret".into())).unwrap();
        providers.insert("default".to_owned(), provider);
        // An operator's URL with credentials in it, at a port nothing listens on.
        let refused = RefusedPort::new();
        let leaky = format!("http://user:{URL_SECRET}@{}/v1?api-key={URL_SECRET}", refused.addr());
        providers.insert("leaky".to_owned(), Provider::new(&leaky, None).unwrap());
        let mut models = Models::new(providers, None);
        // Retries wait a millisecond here: what is tested is that they happen.
        models.retry = Retry { retries: 2, first_wait: Duration::from_millis(1) };
        // A model server that goes quiet fails the run within seconds here.
        models.idle_timeout = IDLE;
        let mcp = McpServer::start().await;
        let gone = format!("http://{}/mcp", refused.addr());
        let servers = BTreeMap::from([
            ("math".to_owned(), McpServerConfig::Http { url: mcp.url() }),
            ("gone".to_owned(), McpServerConfig::Http { url: gone }),
        ]);
        let agents = agents::Runtime { models, mcp: McpServers::new(servers) };
        let executor = ExecutorConfig { agents, run_timeout, ..Default::default() };
        let auth = Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap();
        let app = TestApp::running(db, auth, HttpConfig::default(), executor).await;
        Some(LlmApp { app, model, mcp, _refused: refused })
    }
}

/// The secret in the `leaky` provider's URL.
pub const URL_SECRET: &str = "url-secret-9f2";
/// The `llm` agent's idle timeout in these tests.
pub const IDLE: Duration = Duration::from_secs(3);

fn human(text: &str) -> Value {
    json!({"messages": [{"type": "human", "content": text}]})
}

/// A run of the built-in `llm` assistant with `context` (the model and its settings).
fn llm(text: &str, context: Value) -> Value {
    json!({"assistant_id": "llm", "input": human(text), "context": context})
}

async fn new_thread(app: &TestApp, key: &str) -> String {
    app.post(key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned()
}

fn texts(values: &Value) -> Vec<String> {
    values["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

/// The `error` frame of a stream: (error, message).
fn error_of(frames: &[harness::Frame]) -> (String, String) {
    let f = frames
        .iter()
        .find(|f| f.event == "error")
        .unwrap_or_else(|| panic!("no error frame in {frames:?}"));
    (f.data["error"].as_str().unwrap().to_owned(), f.data["message"].as_str().unwrap().to_owned())
}
