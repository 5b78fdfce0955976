//! A graph run's life around its worker: cancel, timeout, a worker killed mid-run (the run is
//! sent again, then fails after three attempts; nothing stays `running` or `busy`), the worker
//! route's credentials, and a start with a graph that does not load.

use std::process::Command;

use serde_json::{Value, json};
use store::Backend;
use store::testing::{TempDir, TestDb};

use super::{GraphServer, http, python, workspace};
use crate::harness::spindle;

fn sqlite() -> (tokio::runtime::Runtime, TestDb) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let db = runtime.block_on(TestDb::new(Backend::Sqlite)).unwrap();
    (runtime, db)
}

fn start_slow(s: &GraphServer, thread: &str) -> (super::Stream, String) {
    let mut stream = s.open_stream(
        &format!("/threads/{thread}/runs/stream"),
        &json!({"assistant_id": "slow", "input": {"n": 1}, "stream_mode": ["custom"]}),
    );
    assert_eq!(stream.head, 200);
    stream.until("\"waiting\"", 1);
    let runs = s.ok("GET", &format!("/threads/{thread}/runs"), None);
    (stream, runs[0]["run_id"].as_str().unwrap().to_owned())
}

fn status_of(s: &GraphServer, thread: &str, run: &str) -> Value {
    s.ok("GET", &format!("/threads/{thread}/runs/{run}"), None)["status"].clone()
}

#[test]
fn cancel_stops_the_graph() {
    let (_rt, db) = sqlite();
    let s = GraphServer::on(&db, &[]);
    let thread = s.new_thread();
    let (stream, run) = start_slow(&s, &thread);
    let (status, _) = s.call("POST", &format!("/threads/{thread}/runs/{run}/cancel"), None);
    assert_eq!(status, 202);
    let frames = stream.frames();
    assert_eq!(frames.last().unwrap().0, "end", "{frames:?}");
    let joined = s.ok("GET", &format!("/threads/{thread}/runs/{run}/join"), None);
    let _ = joined;
    assert_eq!(status_of(&s, &thread, &run), "interrupted");
    assert_eq!(s.ok("GET", &format!("/threads/{thread}"), None)["status"], "idle");
}

#[test]
fn a_run_out_of_time_ends_timeout() {
    let (_rt, db) = sqlite();
    let s = GraphServer::on(&db, &["--run-timeout", "2"]);
    let thread = s.new_thread();
    let (stream, run) = start_slow(&s, &thread);
    let frames = stream.frames();
    let error = frames.iter().find(|(e, _)| e == "error").expect("an error frame");
    assert_eq!(error.1["error"], "TimeoutError");
    assert_eq!(status_of(&s, &thread, &run), "timeout");
    assert_eq!(s.ok("GET", &format!("/threads/{thread}"), None)["status"], "error");
}

fn kill_workers(s: &GraphServer) {
    let pids = s.worker_pids();
    assert!(!pids.is_empty(), "no worker to kill");
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// kill -9 of the worker mid-run: the run is sent again to the restarted worker (attempt 2,
/// 3), and after the third loss ends `error`; the thread is not left busy and the next run
/// works.
#[test]
fn a_killed_worker_loses_the_run_to_a_retry_then_to_an_error() {
    let (_rt, db) = sqlite();
    let s = GraphServer::on(&db, &[]);
    let thread = s.new_thread();
    let (mut stream, run) = start_slow(&s, &thread);
    for attempt in 1..=3 {
        kill_workers(&s);
        if attempt < 3 {
            // The supervisor starts a new worker; the run is sent to it and starts again.
            stream.until("\"waiting\"", attempt + 1);
            assert_eq!(status_of(&s, &thread, &run), "running");
        }
    }
    let frames = stream.frames();
    let error = frames.iter().find(|(e, _)| e == "error").expect("an error frame");
    assert_eq!(error.1["error"], "WorkerLost");
    assert!(
        error.1["message"].as_str().unwrap().contains("exceeded max attempts (3)"),
        "{error:?}"
    );
    assert_eq!(status_of(&s, &thread, &run), "error");
    assert_eq!(s.ok("GET", &format!("/threads/{thread}"), None)["status"], "error");
    // The next run goes to the next worker.
    s.wait_for_workers(4);
    let out = s.ok("POST", &format!("/threads/{thread}/runs/wait"), Some(&json!({"assistant_id": "chat", "input": {"messages": [{"role": "user", "content": "after"}]}})));
    assert_eq!(out["messages"].as_array().unwrap().last().unwrap()["content"], "you said: after");
}

fn upgrade(addr: &str, authorization: &str) -> u16 {
    let request = format!(
        "GET /workers/connect HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{authorization}\r\n"
    );
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// Only the worker token opens the worker route: not nothing, not a wrong token, not a user's
/// API key; and a user's key never needs it (the users' routes are unchanged).
#[test]
fn the_worker_route_takes_the_worker_token_only() {
    let (_rt, db) = sqlite();
    let url = crate::harness::database_url(&db);
    let out = spindle()
        .args(["keys", "create", "--user", "alice", "--database-url", &url])
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("spindle_"))
        .map(str::to_owned);
    let key = key.unwrap_or_else(|| panic!("no key in {}", String::from_utf8_lossy(&out.stdout)));
    let s = GraphServer::on(&db, &["--auth", "keys"]);
    let addr = s.server.addr.clone();
    assert_eq!(upgrade(&addr, ""), 401);
    assert_eq!(upgrade(&addr, "authorization: Bearer wrong\r\n"), 401);
    assert_eq!(upgrade(&addr, &format!("authorization: Bearer {key}\r\n")), 401);
    assert_eq!(upgrade(&addr, &format!("x-api-key: {key}\r\n")), 401);
    // A server without --graphs has no worker route.
    let plain = crate::harness::Server::on(&db, &[]);
    let (status, body) = http(&plain.addr, "GET", "/workers/connect", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--graphs"), "{body}");
}

/// A graph that does not load stops the start with the graph and the reason, as does an
/// interpreter that cannot run the graphs.
#[test]
fn a_graph_that_does_not_load_stops_the_start() {
    let (_rt, db) = sqlite();
    let url = crate::harness::database_url(&db);
    let project = TempDir::new("bad-graphs");
    std::fs::write(
        project.0.join("langgraph.json"),
        r#"{"graphs": {"broken": "./broken.py:graph"}}"#,
    )
    .unwrap();
    std::fs::write(project.0.join("broken.py"), "raise RuntimeError('cannot import me')\n")
        .unwrap();
    let config = project.0.join("langgraph.json");
    let python = python();
    let out = spindle()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url, "--graphs"])
        .arg(&config)
        .arg("--python")
        .arg(&python)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken") && stderr.contains("RuntimeError: cannot import me"),
        "{stderr}"
    );
    let out = spindle()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url, "--graphs"])
        .arg(workspace().join("tests/graphs/langgraph.json"))
        .args(["--python", "/nonexistent/python3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot run the Python interpreter `/nonexistent/python3`"),
        "{stderr}"
    );
}

/// Spindle's WebSocket carries a graph's run as any run: its parts as `stream` events, in
/// order, then the run's end.
#[test]
fn the_websocket_carries_a_graphs_run() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (runtime, db) = sqlite();
    let s = GraphServer::on(&db, &[]);
    let url = format!("ws://{}/ws", s.server.addr);
    runtime.block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let run = json!({"type": "run", "assistant_id": "stream", "input": {"messages": [{"role": "user", "content": "hi"}]}, "stream_mode": ["custom", "messages-tuple"]});
        ws.send(Message::text(run.to_string())).await.unwrap();
        let mut frames = Vec::new();
        loop {
            let message = tokio::time::timeout(super::TIMEOUT, ws.next()).await.unwrap();
            let Some(Ok(Message::Text(text))) = message else {
                assert!(matches!(message, Some(Ok(_))), "the connection ended: {message:?}");
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] != "event" {
                continue;
            }
            let end = frame["kind"] == "agent_completed" || frame["kind"] == "run_error";
            frames.push(frame);
            if end {
                break;
            }
        }
        let custom: Vec<&Value> = frames
            .iter()
            .filter(|f| f["kind"] == "stream" && f["data"]["event"] == "custom")
            .map(|f| &f["data"]["data"])
            .collect();
        assert_eq!(custom, [&json!({"progress": "thinking"}), &json!({"progress": "done"})]);
        assert_eq!(frames.last().unwrap()["kind"], "agent_completed", "{frames:?}");
        let seqs: Vec<i64> = frames.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    });
}

/// A graph may take a built-in agent's name: a run of `echo` is then the graph's, on its worker,
/// with its input applied by the graph only (no step of Spindle's own before it).
#[test]
fn a_graph_named_like_a_built_in_agent_is_the_graphs() {
    let (_rt, db) = sqlite();
    let project = TempDir::new("shadow");
    std::fs::write(project.0.join("langgraph.json"), r#"{"graphs": {"echo": "./graphs.py:chat"}}"#)
        .unwrap();
    std::fs::copy(workspace().join("tests/graphs/graphs.py"), project.0.join("graphs.py")).unwrap();
    let s = GraphServer::serving(&db, project, &[]);
    let thread = s.new_thread();
    let frames = s.stream(
        &format!("/threads/{thread}/runs/stream"),
        &json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}, "stream_mode": ["values"]}),
    );
    let values: Vec<&Value> =
        frames.iter().filter(|(e, _)| e == "values").map(|(_, d)| d).collect();
    assert_eq!(values.len(), 2, "{frames:?}");
    assert_eq!(
        values[1]["messages"][1]["content"], "you said: hi",
        "the graph answered, not the built-in"
    );
    let (steps, history) = s.history_steps(&thread);
    assert_eq!(steps, [1, 0, -1], "{history}");
}
