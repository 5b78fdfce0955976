//! An MCP server over stdio, for tests: newline-delimited JSON-RPC on stdin and stdout, the same
//! tools as the HTTP server (`testkit::mcp::call_tool`), and `env` {name}, the value of one of
//! its environment variables (empty if unset), to test what a stdio server is given. One request
//! at a time.

use serde_json::{Value, json};
use testkit::mcp::{PROTOCOL_VERSIONS, call_tool, error, success, tools};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(answer) = answer(&line).await else { continue };
        let mut out = answer.to_string();
        out.push('\n');
        if stdout.write_all(out.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
            return;
        }
    }
}

/// The response to one line; none for a notification or a response.
async fn answer(line: &str) -> Option<Value> {
    let Ok(message) = serde_json::from_str::<Value>(line) else {
        return Some(error(Value::Null, -32700, "parse error"));
    };
    let id = message.get("id")?.clone();
    let method = message.get("method")?.as_str()?;
    let params = &message["params"];
    Some(match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or("");
            let version =
                PROTOCOL_VERSIONS.iter().find(|v| **v == asked).unwrap_or(&PROTOCOL_VERSIONS[0]);
            success(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "spindle-testkit-stdio", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
        }
        "ping" => success(id, json!({})),
        "tools/list" => {
            let mut tools = tools();
            tools.as_array_mut().expect("a list").push(json!({
                "name": "env",
                "description": "The value of an environment variable",
                "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
            }));
            success(id, json!({"tools": tools}))
        }
        "tools/call" if params["name"] == "env" => {
            let value = std::env::var(params["arguments"]["name"].as_str().unwrap_or(""))
                .unwrap_or_default();
            success(id, json!({"content": [{"type": "text", "text": value}], "isError": false}))
        }
        "tools/call" => {
            let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
            match call_tool(params["name"].as_str().unwrap_or(""), &arguments).await {
                Ok(result) => success(id, result),
                Err((code, message)) => error(id, code, &message),
            }
        }
        _ => error(id, -32601, &format!("method not found: {method}")),
    })
}
