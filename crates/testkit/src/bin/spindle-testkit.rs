//! The tests' servers as processes of their own, for what is not a Rust test:
//! - `spindle-testkit model [--listen ADDR]`: the model server alone (`bench/llm.sh`), printing
//!   `model http://ADDR/v1`;
//! - `spindle-testkit servers`: the model server and the MCP server, each on 127.0.0.1 port 0
//!   (the browser test, `tests/e2e/agent-chat-ui`), printing `model http://…/v1` and
//!   `mcp http://…/mcp`.
//!
//! The lines are printed once the servers accept connections; they serve until SIGINT or
//! SIGTERM.

use std::io::Write;

use testkit::mcp::McpServer;
use testkit::model::ModelServer;

const USAGE: &str = "usage: spindle-testkit model [--listen 127.0.0.1:0] | spindle-testkit servers";

enum Command {
    Model { listen: String },
    Servers,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = parse(&args).unwrap_or_else(|why| {
        eprintln!("error: {why}\n{USAGE}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let runtime = runtime.unwrap_or_else(|e| {
        eprintln!("error: start the runtime: {e}");
        std::process::exit(1);
    });
    runtime.block_on(async {
        let mut lines = Vec::new();
        let mut servers = (None, None);
        match command {
            Command::Model { listen } => {
                let listener = tokio::net::TcpListener::bind(&listen).await.unwrap_or_else(|e| {
                    eprintln!("error: bind {listen}: {e}");
                    std::process::exit(1);
                });
                let model = ModelServer::serve(listener);
                lines.push(format!("model {}", model.base_url()));
                servers.0 = Some(model);
            }
            Command::Servers => {
                let (model, mcp) = (ModelServer::start().await, McpServer::start().await);
                lines.push(format!("model {}", model.base_url()));
                lines.push(format!("mcp {}", mcp.url()));
                servers = (Some(model), Some(mcp));
            }
        }
        let mut stdout = std::io::stdout().lock();
        for line in lines {
            if writeln!(stdout, "{line}").is_err() {
                std::process::exit(1);
            }
        }
        let _ = stdout.flush();
        drop(stdout);
        shutdown().await;
        drop(servers);
    });
}

fn parse(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Err("expected a command".into()),
        [c] if c == "servers" => Ok(Command::Servers),
        [c] if c == "model" => Ok(Command::Model { listen: "127.0.0.1:0".into() }),
        [c, flag, addr] if c == "model" && flag == "--listen" => {
            Ok(Command::Model { listen: addr.clone() })
        }
        [c, ..] if c == "model" || c == "servers" => {
            Err(format!("unexpected arguments: `{}`", args[1..].join(" ")))
        }
        [c, ..] => Err(format!("expected the command `model` or `servers`, got `{c}`")),
    }
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
