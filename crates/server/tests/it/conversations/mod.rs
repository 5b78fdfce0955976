//! Conversations as chat UIs hold them (issue #13), on SQLite and PostgreSQL: every message
//! carrying the head checkpoint, regenerate and edit as forks, the step −1 state, the
//! human-in-the-loop loop (interrupt, resume with `command`, breakpoints), updates of an older
//! checkpoint, and the races between forks, resumes and new input.
//!
//! The requests are the ones agent-chat-ui (`useStream` of `@langchain/langgraph-sdk`) sends;
//! `docs/langgraph-checkpoints.md` records LangGraph's answers to them.

mod branches;
mod interrupts;
mod races;

use crate::harness::TestApp;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

fn human(text: &str) -> Value {
    json!({"messages": [{"type": "human", "content": text}]})
}

fn echo(text: &str) -> Value {
    json!({"assistant_id": "echo", "input": human(text)})
}

/// A `synthetic` run that asks a human `value` before it answers.
fn asking(text: &str, value: Value) -> Value {
    let mut input = human(text);
    input["n"] = json!(0);
    input["interrupt"] = value;
    json!({"assistant_id": "synthetic", "input": input})
}

fn resume(value: Value) -> Value {
    json!({"assistant_id": "synthetic", "command": {"resume": value}})
}

/// LangChain's HumanInTheLoopMiddleware interrupt, as agent-chat-ui renders it.
fn hitl() -> Value {
    json!({
        "action_requests": [{"name": "send_email", "args": {"to": "a@b.c"}, "description": "Please review"}],
        "review_configs": [{"action_name": "send_email", "allowed_decisions": ["approve", "edit", "reject"]}],
    })
}

async fn new_thread(app: &TestApp, key: &str) -> String {
    app.post(key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned()
}

async fn wait(app: &TestApp, key: &str, t: &str, body: Value) -> Value {
    app.post(key, &format!("/threads/{t}/runs/wait"), body).await.ok()
}

async fn history(app: &TestApp, key: &str, t: &str) -> Vec<Value> {
    let h = app.post(key, &format!("/threads/{t}/history"), json!({"limit": 1000})).await.ok();
    h.as_array().unwrap().clone()
}

async fn state(app: &TestApp, key: &str, t: &str) -> Value {
    app.get(key, &format!("/threads/{t}/state")).await.ok()
}

async fn thread(app: &TestApp, key: &str, t: &str) -> Value {
    app.get(key, &format!("/threads/{t}")).await.ok()
}

fn texts(values: &Value) -> Vec<String> {
    values["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

fn id_of(state: &Value) -> String {
    state["checkpoint"]["checkpoint_id"].as_str().unwrap().to_owned()
}

/// The checkpoint agent-chat-ui sends for a message: the parent of the oldest state that
/// holds it (`getMessagesMetadata(...).firstSeenState.parent_checkpoint`).
fn parent_of_first_seen(history: &[Value], text: &str) -> Value {
    let first_seen = history
        .iter()
        .rev()
        .find(|s| texts(&s["values"]).iter().any(|t| t == text))
        .unwrap_or_else(|| panic!("no state holds {text:?}"));
    let parent = first_seen["parent_checkpoint"].clone();
    assert!(parent.is_object(), "the first state holding {text:?} has no parent: {first_seen}");
    json!({"checkpoint_id": parent["checkpoint_id"], "checkpoint_ns": "", "checkpoint_map": {}})
}

/// Every history entry's parent is an entry of the same history, but the first one's; ids
/// increase with creation, and history is newest first.
fn assert_one_tree(history: &[Value]) {
    let ids: Vec<&str> =
        history.iter().map(|s| s["checkpoint"]["checkpoint_id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "history is newest first");
    let roots: Vec<_> = history.iter().filter(|s| s["parent_checkpoint"].is_null()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    for s in history {
        if let Some(parent) = s["parent_checkpoint"]["checkpoint_id"].as_str() {
            assert!(ids.contains(&parent), "parent {parent} of {} is not in history", id_of(s));
            assert!(parent < id_of(s).as_str(), "a parent is older than its child");
            let parent_step =
                history.iter().find(|p| id_of(p) == parent).unwrap()["metadata"]["step"]
                    .as_i64()
                    .unwrap();
            assert_eq!(s["metadata"]["step"].as_i64().unwrap(), parent_step + 1, "{s}");
        }
        assert!(s["metadata"].get("__pending__").is_none(), "internal metadata shown: {s}");
    }
}

/// A slow `synthetic` run (until cancelled, or two minutes at most).
fn slow(text: &str) -> Value {
    let mut input = human(text);
    input["n"] = json!(100_000);
    input["delay_ms"] = json!(1000);
    json!({"assistant_id": "synthetic", "input": input})
}

async fn start_slow(app: &TestApp, key: &str, t: &str, text: &str) -> String {
    let run = app.post(key, &format!("/threads/{t}/runs"), slow(text)).await.ok();
    let id = run["run_id"].as_str().unwrap().to_owned();
    app.wait_for_status(key, t, &id, |s| s == "running").await;
    id
}
