//! Both test servers as one process, for tests that are not Rust (the browser test,
//! `tests/e2e/agent-chat-ui`): the OpenAI-compatible model server and the MCP server (Streamable
//! HTTP), each on 127.0.0.1 port 0. Prints one line per server on stdout, then serves until
//! killed (SIGINT or SIGTERM):
//!
//! ```text
//! model http://127.0.0.1:PORT/v1
//! mcp http://127.0.0.1:PORT/mcp
//! ```

use std::io::Write;

use testkit::{mcp::McpServer, model::ModelServer};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let model = ModelServer::start().await;
    let mcp = McpServer::start().await;
    {
        let mut stdout = std::io::stdout().lock();
        let printed = writeln!(stdout, "model {}", model.base_url())
            .and_then(|()| writeln!(stdout, "mcp {}", mcp.url()))
            .and_then(|()| stdout.flush());
        if printed.is_err() {
            std::process::exit(1);
        }
    }
    shutdown().await;
    drop(mcp);
    drop(model);
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
