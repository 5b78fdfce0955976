//! Runs of the test graphs, on SQLite and PostgreSQL: what a client of LangGraph's server sees.

use serde_json::{Value, json};
use store::Backend;
use store::testing::TestDb;

use super::GraphServer;

fn on(backend: Backend, test: impl FnOnce(&GraphServer)) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let Some(db) = runtime.block_on(TestDb::new(backend)) else { return };
    let server = GraphServer::on(&db, &[]);
    test(&server);
    drop(server);
    runtime.block_on(async move { drop(db) });
}

fn texts(values: &Value) -> Vec<String> {
    values["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m["type"].as_str().unwrap_or("?"),
                        m["content"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A conversation of two turns with the message graph: values, state, history as LangGraph's
/// server shows them (one state per checkpoint of the graph: step −1 input, 0, 1 ...).
fn conversation(s: &GraphServer) {
    let thread = s.new_thread();
    let path = format!("/threads/{thread}/runs/wait");
    let first = s.ok("POST", &path, Some(&json!({"assistant_id": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}})));
    assert_eq!(texts(&first), ["human: hi", "ai: you said: hi"]);
    let second = s.ok("POST", &path, Some(&json!({"assistant_id": "chat", "input": {"messages": [{"role": "user", "content": "again"}]}})));
    assert_eq!(
        texts(&second),
        ["human: hi", "ai: you said: hi", "human: again", "ai: you said: again"]
    );

    let state = s.ok("GET", &format!("/threads/{thread}/state"), None);
    assert_eq!(texts(&state["values"]), texts(&second));
    assert_eq!(state["next"], json!([]));
    assert_eq!(state["metadata"]["graph_id"], "chat");
    assert_eq!(state["metadata"]["source"], "loop");
    let history = s.ok("POST", &format!("/threads/{thread}/history"), Some(&json!({})));
    let steps: Vec<(i64, String, Value)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["metadata"]["step"].as_i64().unwrap(),
                h["metadata"]["source"].as_str().unwrap().to_owned(),
                h["next"].clone(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (4, "loop".into(), json!([])),
            (3, "loop".into(), json!(["reply"])),
            (2, "input".into(), json!(["__start__"])),
            (1, "loop".into(), json!([])),
            (0, "loop".into(), json!(["reply"])),
            (-1, "input".into(), json!(["__start__"])),
        ],
        "{history}"
    );
    // Each state's parent is the one before it.
    let all = history.as_array().unwrap();
    for pair in all.windows(2) {
        assert_eq!(
            pair[0]["parent_checkpoint"]["checkpoint_id"],
            pair[1]["checkpoint"]["checkpoint_id"]
        );
    }
    // The thread is the graph's, idle, with the values.
    let t = s.ok("GET", &format!("/threads/{thread}"), None);
    assert_eq!(t["status"], "idle");
    assert_eq!(t["metadata"]["graph_id"], "chat");
    assert_eq!(texts(&t["values"]), texts(&second));

    // Regenerate: a run from the state before the last answer forks there.
    let before_answer = &all[1]["checkpoint"];
    let forked =
        s.ok("POST", &path, Some(&json!({"assistant_id": "chat", "checkpoint": before_answer})));
    assert_eq!(texts(&forked), texts(&second), "the same answer again, on a branch");
    let history = s.ok("POST", &format!("/threads/{thread}/history"), Some(&json!({})));
    let newest = &history[0];
    let parent_of_fork = history
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["checkpoint"] == newest["parent_checkpoint"])
        .unwrap();
    assert_ne!(parent_of_fork["parent_checkpoint"], json!(null));

    // A state update is the graph's (its reducer appends the message), and the next run sees it.
    let updated = s.ok("POST", &format!("/threads/{thread}/state"), Some(&json!({"values": {"messages": [{"role": "user", "content": "noted"}]}, "as_node": "reply"})));
    let state = s.ok("GET", &format!("/threads/{thread}/state"), None);
    assert_eq!(state["checkpoint"]["checkpoint_id"], updated["checkpoint"]["checkpoint_id"]);
    assert_eq!(state["metadata"]["source"], "update");
    assert_eq!(texts(&state["values"]).last().unwrap(), "human: noted");
    assert_eq!(state["next"], json!([]));
    let after = s.ok("POST", &path, Some(&json!({"assistant_id": "chat", "input": {"messages": [{"role": "user", "content": "and now"}]}})));
    let all = texts(&after);
    assert_eq!(&all[all.len() - 3..], ["human: noted", "human: and now", "ai: you said: and now"]);
    // A bad update is the graph's error, and changes nothing.
    let (status, body) = s.call(
        "POST",
        &format!("/threads/{thread}/state"),
        Some(&json!({"values": {"messages": 3}, "as_node": "nowhere"})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("nowhere"), "{body}");
    let still = s.ok("GET", &format!("/threads/{thread}/state"), None);
    assert_eq!(texts(&still["values"]), all);
}

/// A streamed run: the graph's own parts by mode (custom events, the model's tokens as
/// messages-tuple chunks, updates, values), then `end`.
fn streaming(s: &GraphServer) {
    let thread = s.new_thread();
    let frames = s.stream(
        &format!("/threads/{thread}/runs/stream"),
        &json!({"assistant_id": "stream", "input": {"messages": [{"role": "user", "content": "hi"}]}, "stream_mode": ["values", "updates", "messages-tuple", "custom"]}),
    );
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"metadata"));
    assert_eq!(names.last(), Some(&"end"));
    let custom: Vec<&Value> =
        frames.iter().filter(|(e, _)| e == "custom").map(|(_, d)| d).collect();
    assert_eq!(custom, [&json!({"progress": "thinking"}), &json!({"progress": "done"})]);
    let tokens: String = frames
        .iter()
        .filter(|(e, _)| e == "messages")
        .map(|(_, d)| {
            assert_eq!(d[1]["langgraph_node"], "model", "{d}");
            d[0]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens, "one two three");
    let update = frames.iter().find(|(e, _)| e == "updates").unwrap();
    assert_eq!(update.1["model"]["messages"][0]["content"], "one two three");
    let values: Vec<&Value> =
        frames.iter().filter(|(e, _)| e == "values").map(|(_, d)| d).collect();
    assert_eq!(values.len(), 2, "after the input, after the model: {frames:?}");
    assert_eq!(texts(values[1]), ["human: hi", "ai: one two three"]);
    // Modes not asked for are not sent.
    assert!(!names.contains(&"debug") && !names.contains(&"events"));
}

/// `interrupt()`: the run ends, the thread is `interrupted` with the question in its state;
/// a `Command(resume=...)` answers it and the graph goes on.
fn interrupt_and_resume(s: &GraphServer) {
    let thread = s.new_thread();
    let frames = s.stream(
        &format!("/threads/{thread}/runs/stream"),
        &json!({"assistant_id": "hitl", "input": {"draft": "a post"}, "stream_mode": ["values", "updates"]}),
    );
    let interrupt = frames
        .iter()
        .find(|(e, d)| e == "updates" && d.get("__interrupt__").is_some())
        .expect("an interrupt update");
    assert_eq!(
        interrupt.1["__interrupt__"][0]["value"],
        json!({"question": "publish?", "draft": "draft of a post"})
    );
    let t = s.ok("GET", &format!("/threads/{thread}"), None);
    assert_eq!(t["status"], "interrupted");
    let state = s.ok("GET", &format!("/threads/{thread}/state"), None);
    assert_eq!(state["next"], json!(["review"]));
    assert_eq!(state["interrupts"][0]["value"]["question"], "publish?");
    assert_eq!(state["tasks"][0]["name"], "review");
    assert_eq!(state["tasks"][0]["interrupts"][0]["value"]["question"], "publish?");

    let resumed = s.ok(
        "POST",
        &format!("/threads/{thread}/runs/wait"),
        Some(&json!({"assistant_id": "hitl", "command": {"resume": "yes"}})),
    );
    assert_eq!(resumed["verdict"], "yes");
    assert_eq!(resumed["draft"], "draft of a post");
    let t = s.ok("GET", &format!("/threads/{thread}"), None);
    assert_eq!(t["status"], "idle");
    let state = s.ok("GET", &format!("/threads/{thread}/state"), None);
    assert_eq!(state["next"], json!([]));
    assert_eq!(state["interrupts"], json!([]));
    // One state per checkpoint of the graph: the resumed one is not written again.
    let (steps, history) = s.history_steps(&thread);
    assert_eq!(steps, [2, 1, 0, -1], "{history}");
}

/// A graph that raises: the run's `error` event names the exception; the run and the thread
/// are `error` (as on LangGraph's server), and the thread takes the next run.
fn a_graph_that_raises(s: &GraphServer) {
    let thread = s.new_thread();
    let frames = s.stream(
        &format!("/threads/{thread}/runs/stream"),
        &json!({"assistant_id": "boom", "input": {"n": 7}, "stream_mode": ["updates"]}),
    );
    let error = frames.iter().find(|(e, _)| e == "error").expect("an error frame");
    assert_eq!(error.1["error"], "ValueError");
    assert_eq!(error.1["message"], "boom at n=7");
    let runs = s.ok("GET", &format!("/threads/{thread}/runs"), None);
    assert_eq!(runs[0]["status"], "error");
    let t = s.ok("GET", &format!("/threads/{thread}"), None);
    assert_eq!(t["status"], "error");
    // The state is the one the failure left: the failed node still next, its error on its task.
    let state = s.ok("GET", &format!("/threads/{thread}/state"), None);
    assert_eq!(state["values"], json!({"n": 7}));
    assert_eq!(state["next"], json!(["boom"]));
    assert!(state["tasks"][0]["error"].as_str().unwrap().contains("boom at n=7"), "{state}");
    let again = s.ok("POST", &format!("/threads/{thread}/runs/wait"), Some(&json!({"assistant_id": "chat", "input": {"messages": [{"role": "user", "content": "still here?"}]}})));
    assert_eq!(texts(&again).last().unwrap(), "ai: you said: still here?");
}

/// A subgraph's parts carry its namespace when `stream_subgraphs` is asked.
fn subgraphs(s: &GraphServer) {
    let thread = s.new_thread();
    let frames = s.stream(
        &format!("/threads/{thread}/runs/stream"),
        &json!({"assistant_id": "nested", "input": {"messages": [{"role": "user", "content": "hi"}]}, "stream_mode": ["updates"], "stream_subgraphs": true}),
    );
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("updates|outer:")), "{names:?}");
    assert!(names.contains(&"updates"), "{names:?}");
}

/// The graphs are system assistants with LangGraph's ids, schemas and drawings.
fn assistants(s: &GraphServer) {
    let found = s.ok("POST", "/assistants/search", Some(&json!({"graph_id": "chat"})));
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    // uuid5(6ba7b821-9dad-11d1-80b4-00c04fd430c8, "chat"), as LangGraph names it.
    let id = found[0]["assistant_id"].as_str().unwrap().to_owned();
    assert_eq!(id, ids::AssistantId::for_graph("chat").to_string());
    let schemas = s.ok("GET", &format!("/assistants/{id}/schemas"), None);
    assert_eq!(schemas["graph_id"], "chat");
    assert!(schemas["state_schema"]["properties"].get("messages").is_some(), "{schemas}");
    let graph = s.ok("GET", "/assistants/hitl/graph", None);
    let nodes: Vec<&str> =
        graph["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["__start__", "write", "review", "__end__"]);
    // A user's assistant on a graph runs it with its config.
    let mine = s.ok("POST", "/assistants", Some(&json!({"graph_id": "chat", "name": "mine"})));
    let thread = s.new_thread();
    let out = s.ok("POST", &format!("/threads/{thread}/runs/wait"), Some(&json!({"assistant_id": mine["assistant_id"], "input": {"messages": [{"role": "user", "content": "x"}]}})));
    assert_eq!(texts(&out).last().unwrap(), "ai: you said: x");
}

fn all(s: &GraphServer) {
    conversation(s);
    streaming(s);
    interrupt_and_resume(s);
    a_graph_that_raises(s);
    subgraphs(s);
    assistants(s);
}

#[test]
fn graphs_on_sqlite() {
    on(Backend::Sqlite, all);
}

#[test]
fn graphs_on_postgres() {
    on(Backend::Postgres, all);
}
