//! The stdio transport: Spindle's MCP client starts `mcp-stdio` (the operator's command) and
//! talks to it over its stdin and stdout.

use std::collections::BTreeMap;

use agents::mcp::{McpError, McpServerConfig, McpServers, ToolResult};
use serde_json::json;

fn stdio(command: &str) -> McpServers {
    let config =
        McpServerConfig::Stdio { command: command.into(), args: vec![], env: BTreeMap::new() };
    McpServers::new(BTreeMap::from([("local".to_owned(), config)]))
}

#[tokio::test]
async fn lists_and_calls_tools_over_stdio() {
    let mcp = stdio(env!("CARGO_BIN_EXE_mcp-stdio"));

    let tools = mcp.list_tools("local").await.unwrap();
    let names: Vec<_> = tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["add", "echo", "fail", "slow", "env"]);

    let sum = mcp.call_tool("local", "add", json!({"a": 40, "b": 2})).await.unwrap();
    assert_eq!(sum, ToolResult { content: "42".into(), is_error: false });
    let failed = mcp.call_tool("local", "fail", json!({})).await.unwrap();
    assert!(failed.is_error, "{failed:?}");
}

#[tokio::test]
async fn the_server_gets_its_configured_environment_not_spindles() {
    let config = McpServerConfig::Stdio {
        command: env!("CARGO_BIN_EXE_mcp-stdio").into(),
        args: vec![],
        env: BTreeMap::from([("GIVEN".to_owned(), "to the server".to_owned())]),
    };
    let mcp = McpServers::new(BTreeMap::from([("local".to_owned(), config)]));
    let env = async |name: &str| {
        mcp.call_tool("local", "env", json!({"name": name})).await.unwrap().content
    };

    assert_eq!(env("GIVEN").await, "to the server");
    assert_eq!(env("PATH").await, std::env::var("PATH").unwrap());
    // Cargo sets this for the test, so Spindle's process has it; the server must not.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    assert_eq!(env("CARGO_PKG_NAME").await, "");
}

#[tokio::test]
async fn a_command_that_cannot_start_is_unavailable() {
    let mcp = stdio("/nonexistent/spindle-mcp-server");

    let error = mcp.list_tools("local").await.unwrap_err();

    assert!(matches!(error, McpError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("cannot start"), "{error}");
}

#[tokio::test]
async fn the_server_process_is_killed_when_the_servers_are_dropped() {
    // A tag in the command line (the server ignores its arguments) finds this test's process.
    let tag = format!("spindle-kill-test-{}", std::process::id());
    let config = McpServerConfig::Stdio {
        command: env!("CARGO_BIN_EXE_mcp-stdio").into(),
        args: vec![tag.clone()],
        env: BTreeMap::from([("SPINDLE_TEST".to_owned(), "1".to_owned())]),
    };
    let mcp = McpServers::new(BTreeMap::from([("local".to_owned(), config)]));
    mcp.list_tools("local").await.unwrap();
    assert_eq!(running(&tag), 1, "one process started, on first use");

    drop(mcp);

    let gone = async {
        while running(&tag) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), gone)
        .await
        .expect("the process is killed");
}

/// Live processes whose command line holds `tag` (a killed, unreaped one has none).
fn running(tag: &str) -> usize {
    let processes = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok);
    let cmdlines = processes.filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok());
    cmdlines.filter(|cmdline| String::from_utf8_lossy(cmdline).contains(tag)).count()
}
