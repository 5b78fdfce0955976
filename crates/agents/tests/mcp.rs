//! The MCP client against testkit's MCP server over real sockets: tools listed and called, a
//! tool's error, a server that is down, a restarted server, a timeout and a cancelled call.
//! Tests wait on the server's counters, never on the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use agents::mcp::{McpError, McpServerConfig, McpServers, Timeouts, ToolResult};
use serde_json::json;
use testkit::mcp::McpServer;

fn servers(url: String) -> McpServers {
    servers_with(url, Timeouts::default())
}

fn servers_with(url: String, timeouts: Timeouts) -> McpServers {
    McpServers::with_timeouts(
        BTreeMap::from([("tools".to_owned(), McpServerConfig::Http { url })]),
        timeouts,
    )
}

#[track_caller]
fn text(result: Result<ToolResult, McpError>) -> String {
    let result = result.expect("the call is answered");
    assert!(!result.is_error, "the tool succeeded: {result:?}");
    result.content
}

#[tokio::test]
async fn lists_the_servers_tools_with_their_schemas() {
    let server = McpServer::start().await;
    let mcp = servers(server.url());
    assert_eq!(mcp.names().collect::<Vec<_>>(), ["tools"]);
    assert!(mcp.contains("tools") && !mcp.contains("other"));

    let tools = mcp.list_tools("tools").await.unwrap();

    let names: Vec<_> = tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["add", "echo", "fail", "slow"]);
    assert_eq!(tools[0].description.as_deref(), Some("Adds two numbers"));
    assert_eq!(tools[0].input_schema["properties"]["a"], json!({"type": "number"}));
    assert_eq!(tools[0].input_schema["required"], json!(["a", "b"]));
}

#[tokio::test]
async fn calls_each_tool_on_one_session() {
    let server = McpServer::start().await;
    let mcp = servers(server.url());

    assert_eq!(text(mcp.call_tool("tools", "add", json!({"a": 2, "b": 3.5})).await), "5.5");
    assert_eq!(text(mcp.call_tool("tools", "echo", json!({"text": "héllo"})).await), "héllo");
    assert_eq!(text(mcp.call_tool("tools", "slow", json!({"ms": 1})).await), "waited 1 ms");
    mcp.list_tools("tools").await.unwrap();

    assert_eq!(server.calls(), 3);
    assert_eq!(server.sessions(), 1, "the session is opened once and kept");
}

#[tokio::test]
async fn concurrent_first_calls_open_one_session() {
    let server = McpServer::start().await;
    let mcp = servers(server.url());

    let (a, b) = tokio::join!(
        mcp.call_tool("tools", "echo", json!({"text": "a"})),
        mcp.call_tool("tools", "echo", json!({"text": "b"})),
    );

    assert_eq!((text(a), text(b)), ("a".to_owned(), "b".to_owned()));
    assert_eq!(server.sessions(), 1);
}

#[tokio::test]
async fn a_tool_that_fails_is_a_result_with_is_error() {
    let server = McpServer::start().await;
    let mcp = servers(server.url());

    let failed = mcp.call_tool("tools", "fail", json!({})).await.unwrap();
    assert_eq!(failed, ToolResult { content: "the tool failed, as asked".into(), is_error: true });

    let bad_arguments = mcp.call_tool("tools", "add", json!({"a": "two"})).await.unwrap();
    assert!(bad_arguments.is_error, "{bad_arguments:?}");
}

#[tokio::test]
async fn an_unknown_tool_or_server_is_an_error_that_names_it() {
    let server = McpServer::start().await;
    let mcp = servers(server.url());

    let unknown_tool = mcp.call_tool("tools", "nope", json!({})).await.unwrap_err();
    assert!(matches!(unknown_tool, McpError::Protocol { .. }), "{unknown_tool:?}");
    assert!(unknown_tool.to_string().contains("unknown tool: nope"), "{unknown_tool}");

    let unknown_server = mcp.list_tools("elsewhere").await.unwrap_err();
    assert_eq!(unknown_server, McpError::UnknownServer("elsewhere".into()));
    assert_eq!(unknown_server.to_string(), r#"no MCP server named "elsewhere" is configured"#);

    let not_an_object = mcp.call_tool("tools", "echo", json!(["text"])).await.unwrap_err();
    assert!(matches!(not_an_object, McpError::Protocol { .. }), "{not_an_object:?}");
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable_not_a_hang() {
    let refused = testkit::RefusedPort::new();
    let url = format!("http://{}/mcp", refused.addr());
    // Timeouts far beyond the test's bound: the answer must come from the refused connection.
    let long = Duration::from_secs(600);
    let mcp = servers_with(url.clone(), Timeouts { connect: long, list: long, call: long });

    let bound = Duration::from_secs(60);
    let error = tokio::time::timeout(bound, mcp.call_tool("tools", "echo", json!({"text": "x"})))
        .await
        .expect("a refused connection is answered, not waited on")
        .unwrap_err();

    assert!(matches!(error, McpError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().starts_with(r#"MCP server "tools" is unavailable"#), "{error}");
    assert!(error.to_string().contains("cannot connect"), "{error}");
    assert!(!error.to_string().contains(&url), "the URL is not in the message: {error}");
    let listed = tokio::time::timeout(bound, mcp.list_tools("tools")).await.unwrap().unwrap_err();
    assert!(matches!(listed, McpError::Unavailable { .. }), "{listed:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_at_initialize() {
    // Connections are queued by the kernel but never accepted: the TCP connect succeeds and
    // `initialize` is never answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let connect = Duration::from_millis(200);
    let mcp = servers_with(url, Timeouts { connect, ..Timeouts::default() });

    let error = mcp.list_tools("tools").await.unwrap_err();

    assert_eq!(
        error,
        McpError::Timeout { server: "tools".into(), what: "initialize", after: connect }
    );
    drop(listener);
}

#[tokio::test]
async fn a_restarted_server_gets_a_new_session() {
    let mut server = McpServer::start().await;
    let mcp = servers(server.url());
    assert_eq!(text(mcp.call_tool("tools", "echo", json!({"text": "before"})).await), "before");

    server.restart().await;
    let after = mcp.call_tool("tools", "echo", json!({"text": "after"})).await;

    assert_eq!(text(after), "after");
    let counters = server.counters();
    assert_eq!(counters.unknown_sessions, 1, "the old session was refused once: {counters:?}");
    assert_eq!(counters.sessions, 2, "and a new one opened: {counters:?}");
    assert_eq!(counters.calls, 2, "the call was sent once to the new session: {counters:?}");
}

#[tokio::test]
async fn a_call_past_its_timeout_fails_and_is_abandoned() {
    let server = McpServer::start().await;
    let call = Duration::from_millis(200);
    let mcp = servers_with(server.url(), Timeouts { call, ..Timeouts::default() });

    let error = mcp.call_tool("tools", "slow", json!({"ms": 600_000})).await.unwrap_err();

    assert_eq!(
        error,
        McpError::Timeout { server: "tools".into(), what: "tools/call", after: call }
    );
    assert_eq!(error.to_string(), r#"MCP server "tools" did not answer tools/call within 0.2s"#);
    server.until(|c| c.abandoned == 1 && c.cancelled == 1 && c.slow_waiting == 0).await;
    // The session is still good.
    assert_eq!(text(mcp.call_tool("tools", "echo", json!({"text": "next"})).await), "next");
    assert_eq!(server.sessions(), 1);
}

#[tokio::test]
async fn dropping_a_call_cancels_it_and_aborts_its_request() {
    let server = McpServer::start().await;
    let mcp = servers(server.url());
    let caller = mcp.clone();
    let call =
        tokio::spawn(
            async move { caller.call_tool("tools", "slow", json!({"ms": 600_000})).await },
        );
    server.until(|c| c.slow_waiting == 1).await;

    call.abort();

    let counters = server.until(|c| c.abandoned == 1 && c.slow_waiting == 0).await;
    server.until(|c| c.cancelled == 1).await;
    assert_eq!(counters.calls, 1);
    assert!(call.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn debug_shows_names_not_urls() {
    let mcp = servers("http://user:secret@127.0.0.1:1/mcp?token=secret".into());
    let shown = format!("{mcp:?}");
    assert!(shown.contains("\"tools\": Http"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}
