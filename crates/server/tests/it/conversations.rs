//! Conversations as chat UIs hold them (issue #13), on SQLite and PostgreSQL: every message
//! carrying the head checkpoint, regenerate and edit as forks, the step −1 state, the
//! human-in-the-loop loop (interrupt, resume with `command`, breakpoints), updates of an older
//! checkpoint, and the races between forks, resumes and new input.
//!
//! The requests are the ones agent-chat-ui (`useStream` of `@langchain/langgraph-sdk`) sends;
//! `docs/langgraph-checkpoints.md` records LangGraph's answers to them.

use crate::harness::TestApp;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

store::on_both_backends!(TestApp =>
    history_starts_before_the_first_input,
    regenerate_makes_a_second_branch_and_shows_it,
    editing_a_message_replaces_it_in_a_new_branch,
    an_interrupt_stops_the_run_and_a_command_resumes_it,
    human_in_the_loop_decisions_reach_the_agent,
    a_resume_that_does_not_fit_is_refused_and_stores_nothing,
    a_breakpoint_before_the_agent_waits_for_a_resume,
    plain_input_on_an_interrupted_thread_abandons_the_interrupt,
    goto_end_resolves_an_interrupt_without_the_agent,
    updating_an_older_checkpoint_starts_a_branch,
    two_forks_from_one_checkpoint_at_once_make_two_branches,
    a_resume_racing_new_input_follows_each_multitask_strategy,
    a_resume_queued_behind_an_answer_finds_nothing_to_resume,
    editing_the_first_message_while_its_answer_runs_survives_a_rollback,
    the_threads_status_follows_what_its_newest_checkpoint_waits_for,
    every_answer_about_an_interrupted_thread_shows_its_interrupt,
    odd_commands_and_values_are_refused_before_anything_is_stored,
);

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

async fn history_starts_before_the_first_input(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    assert_eq!(state(app, &key, &t).await["checkpoint"], Value::Null, "no state yet");
    let values = wait(app, &key, &t, echo("hello")).await;
    assert_eq!(texts(&values), ["hello", "echo: hello"]);
    let history = history(app, &key, &t).await;
    assert_one_tree(&history);
    let first = history.last().unwrap();
    assert_eq!(first["values"], json!({"messages": []}));
    assert_eq!(first["next"], json!(["__start__"]));
    assert_eq!(first["metadata"]["step"], -1);
    assert_eq!(first["metadata"]["source"], "input");
    assert_eq!(first["parent_checkpoint"], Value::Null);
    assert_eq!(first["tasks"][0]["name"], "__start__");
    // The input applied waits for the agent; the answer waits for nothing.
    assert_eq!(history[1]["next"], json!(["echo"]));
    assert_eq!(history[1]["tasks"][0]["name"], "echo");
    assert_eq!(texts(&history[1]["values"]), ["hello"]);
    assert_eq!(history[0]["next"], json!([]));
    // GET state and the thread's values are the newest state, as before.
    let current = state(app, &key, &t).await;
    assert_eq!(current, history[0]);
    assert_eq!(thread(app, &key, &t).await["values"], values);
    // A second run adds no state before its input: its first state's parent is the head.
    let head = id_of(&history[0]);
    let mut body = echo("again");
    body["checkpoint"] = json!({"checkpoint_id": head, "checkpoint_ns": "", "checkpoint_map": {}});
    wait(app, &key, &t, body).await;
    let later = self::history(app, &key, &t).await;
    assert_one_tree(&later);
    assert_eq!(later.len(), history.len() + 2);
    assert_eq!(later[1]["parent_checkpoint"]["checkpoint_id"], head);
}

async fn regenerate_makes_a_second_branch_and_shows_it(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, echo("one")).await;
    wait(app, &key, &t, echo("two")).await;
    let before = history(app, &key, &t).await;
    let old_answer = state(app, &key, &t).await["values"]["messages"][3].clone();
    // Regenerate: no input, the parent checkpoint of the state where the answer appeared.
    let checkpoint = parent_of_first_seen(&before, "echo: two");
    let body = json!({"assistant_id": "echo", "checkpoint": checkpoint, "stream_mode": ["values"]});
    let (status, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(status, StatusCode::OK);
    let values: Vec<&Value> =
        frames.iter().filter(|f| f.event == "values").map(|f| &f.data).collect();
    assert_eq!(texts(values[0]), ["one", "echo: one", "two"], "the fork's copy first");
    assert_eq!(texts(values.last().unwrap()), ["one", "echo: one", "two", "echo: two"]);
    let after = history(app, &key, &t).await;
    assert_one_tree(&after);
    // Both answers are in history, the new one is the state now, with a new id.
    let current = state(app, &key, &t).await;
    let new_answer = current["values"]["messages"][3].clone();
    assert_ne!(new_answer["id"], old_answer["id"]);
    assert_eq!(new_answer["content"], "echo: two");
    assert!(after.iter().any(|s| s["values"]["messages"][3]["id"] == old_answer["id"]));
    assert_eq!(current, after[0]);
    // The fork point has two children: the old branch's answer and the fork's copy.
    let fork_point = checkpoint["checkpoint_id"].as_str().unwrap();
    let children: Vec<&Value> =
        after.iter().filter(|s| s["parent_checkpoint"]["checkpoint_id"] == fork_point).collect();
    assert_eq!(children.len(), 2, "{children:?}");
    assert!(children.iter().any(|s| s["metadata"]["source"] == "fork"));
    let copy = children.iter().find(|s| s["metadata"]["source"] == "fork").unwrap();
    assert_eq!(copy["values"], after.iter().find(|s| id_of(s) == fork_point).unwrap()["values"]);
    assert_eq!(copy["next"], json!(["echo"]));
}

async fn editing_a_message_replaces_it_in_a_new_branch(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    for text in ["one", "two", "three"] {
        wait(app, &key, &t, echo(text)).await;
    }
    // The first message: its parent is the state before the input (step −1).
    let h = history(app, &key, &t).await;
    let body = json!({"assistant_id": "echo", "input": human("ONE edited"), "checkpoint": parent_of_first_seen(&h, "one")});
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["ONE edited", "echo: ONE edited"]);
    assert_eq!(texts(&state(app, &key, &t).await["values"]), ["ONE edited", "echo: ONE edited"]);
    // A middle message of the old branch: what came before it stays, what followed goes.
    let h = history(app, &key, &t).await;
    let body = json!({"assistant_id": "echo", "input": human("TWO edited"), "checkpoint": parent_of_first_seen(&h, "two")});
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["one", "echo: one", "TWO edited", "echo: TWO edited"]);
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    // The old branch is untouched in history.
    let longest = h.iter().map(|s| texts(&s["values"])).max_by_key(Vec::len).unwrap();
    assert_eq!(longest, ["one", "echo: one", "two", "echo: two", "three", "echo: three"]);
}

async fn an_interrupt_stops_the_run_and_a_command_resumes_it(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let question = json!({"question": "send it?", "n": [1, 2.5, null]});
    let mut body = asking("please send", question.clone());
    body["stream_mode"] = json!(["values", "updates"]);
    let (status, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(status, StatusCode::OK);
    let updates: Vec<&Value> =
        frames.iter().filter(|f| f.event == "updates").map(|f| &f.data).collect();
    let shown = updates.last().unwrap()["__interrupt__"].clone();
    assert_eq!(shown[0]["value"], question, "{frames:?}");
    let interrupt_id = shown[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(interrupt_id.len(), 32);
    assert!(interrupt_id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let last_values = frames.iter().rev().find(|f| f.event == "values").unwrap();
    assert_eq!(last_values.data["__interrupt__"], shown);
    assert_eq!(texts(&last_values.data), ["please send"]);
    // The run succeeded; the thread waits for a human.
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert_eq!(runs[0]["status"], "success");
    let th = thread(app, &key, &t).await;
    assert_eq!(th["status"], "interrupted");
    let current = state(app, &key, &t).await;
    assert_eq!(current["next"], json!(["synthetic"]));
    let task = &current["tasks"][0];
    let expected = json!([{"id": interrupt_id, "value": question}]);
    assert_eq!(task["interrupts"], expected);
    assert_eq!(current["interrupts"], expected);
    assert_eq!(th["interrupts"], json!({ task["id"].as_str().unwrap(): expected }));
    assert!(th["values"].get("__interrupt__").is_none());
    // Resume with a map of the interrupt's id: the answer says the value.
    let values = wait(app, &key, &t, resume(json!({ interrupt_id.clone(): "yes please" }))).await;
    let answer = texts(&values).pop().unwrap();
    assert_eq!(answer, "echo: please send\nresumed with: \"yes please\"");
    let th = thread(app, &key, &t).await;
    assert_eq!(th["status"], "idle");
    assert_eq!(th["interrupts"], json!({}));
    let current = state(app, &key, &t).await;
    assert_eq!(current["next"], json!([]));
    assert_eq!(current["interrupts"], json!([]));
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    // The interrupted state stays in history with its interrupt.
    assert!(h.iter().any(|s| s["tasks"][0]["interrupts"] == expected));
    // runs/wait of an interrupted run answers `__interrupt__` beside the values.
    let values = wait(app, &key, &t, asking("again", json!("ok?"))).await;
    assert_eq!(values["__interrupt__"][0]["value"], "ok?");
    assert_eq!(texts(&values).last().unwrap(), "again");
    let values = wait(app, &key, &t, resume(json!(["any", {"json": true}]))).await;
    assert_eq!(
        texts(&values).pop().unwrap(),
        "echo: again\nresumed with: [\"any\",{\"json\":true}]"
    );
}

async fn human_in_the_loop_decisions_reach_the_agent(app: &TestApp) {
    let key = app.key("alice").await;
    for decision in [
        json!({"type": "approve"}),
        json!({"type": "edit", "edited_action": {"name": "send_email", "args": {"to": "x@y.z"}}}),
        json!({"type": "reject", "message": "no"}),
    ] {
        let t = new_thread(app, &key).await;
        wait(app, &key, &t, asking("mail a@b.c", hitl())).await;
        let th = thread(app, &key, &t).await;
        let pending = th["interrupts"].as_object().unwrap().values().next().unwrap().clone();
        assert_eq!(pending[0]["value"], hitl());
        // agent-chat-ui's Approve: an empty input, the command and the head checkpoint.
        let head = id_of(&state(app, &key, &t).await);
        let resume_value = json!({"decisions": [decision]});
        let body = json!({
            "assistant_id": "synthetic", "input": {}, "command": {"resume": resume_value},
            "checkpoint": {"checkpoint_id": head, "checkpoint_ns": ""},
            "stream_mode": ["values"], "stream_subgraphs": true, "stream_resumable": true,
            "on_disconnect": "continue",
        });
        let (status, _, frames) =
            app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
        assert_eq!(status, StatusCode::OK);
        // The stream starts with the interrupted state, without the interrupt.
        let first = frames.iter().find(|f| f.event == "values").unwrap();
        assert_eq!(texts(&first.data), ["mail a@b.c"]);
        assert!(first.data.get("__interrupt__").is_none(), "{first:?}");
        let last = frames.iter().rev().find(|f| f.event == "values").unwrap();
        let answer = texts(&last.data).pop().unwrap();
        assert_eq!(answer, format!("echo: mail a@b.c\nresumed with: {resume_value}"));
        assert_eq!(thread(app, &key, &t).await["status"], "idle");
    }
}

async fn a_resume_that_does_not_fit_is_refused_and_stores_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // A thread that never ran, and one that is idle: nothing to resume.
    app.post(&key, &format!("/threads/{t}/runs"), resume(json!("x"))).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "is not interrupted",
    );
    wait(app, &key, &t, echo("hi")).await;
    let before = (history(app, &key, &t).await, thread(app, &key, &t).await);
    let runs_before = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    app.post(&key, &format!("/threads/{t}/runs"), resume(json!("x"))).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "nothing to resume",
    );
    // An interrupted thread: a map naming an interrupt that is not pending.
    let asked = new_thread(app, &key).await;
    wait(app, &key, &asked, asking("q", json!("?"))).await;
    let asked_before = (history(app, &key, &asked).await, thread(app, &key, &asked).await);
    let wrong = "deadbeefdeadbeefdeadbeefdeadbeef";
    app.post(&key, &format!("/threads/{asked}/runs"), resume(json!({ wrong: "x" }))).await.error(
        StatusCode::CONFLICT,
        "conflict",
        wrong,
    );
    // A command with a goto the agent does not have, an invalid update: 422.
    let body =
        json!({"assistant_id": "synthetic", "command": {"resume": "x", "goto": "elsewhere"}});
    app.post(&key, &format!("/threads/{asked}/runs"), body).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "command.goto",
    );
    let body = json!({"assistant_id": "synthetic", "command": {"resume": "x", "update": 7}});
    app.post(&key, &format!("/threads/{asked}/runs"), body).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "command.update",
    );
    // Resuming from an older checkpoint than the newest is not supported.
    let mut body = resume(json!("x"));
    body["checkpoint_id"] = asked_before.0.last().unwrap()["checkpoint"]["checkpoint_id"].clone();
    app.post(&key, &format!("/threads/{asked}/runs"), body).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        "command",
    );
    // A stateless run has no state to resume.
    app.post(&key, "/runs/wait", resume(json!("x"))).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "thread_required",
        "thread_id",
    );
    // Another user's interrupted thread: 404.
    let bob = app.key("bob").await;
    app.post(&bob, &format!("/threads/{asked}/runs"), resume(json!("x"))).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    assert_eq!((history(app, &key, &t).await, thread(app, &key, &t).await), before);
    assert_eq!(app.get(&key, &format!("/threads/{t}/runs")).await.ok(), runs_before);
    assert_eq!((history(app, &key, &asked).await, thread(app, &key, &asked).await), asked_before);
    assert_eq!(
        app.get(&key, &format!("/threads/{asked}/runs")).await.ok().as_array().unwrap().len(),
        1
    );
}

async fn a_breakpoint_before_the_agent_waits_for_a_resume(app: &TestApp) {
    let key = app.key("alice").await;
    for nodes in [json!(["echo"]), json!("*")] {
        let t = new_thread(app, &key).await;
        let mut body = echo("stop first");
        body["interrupt_before"] = nodes;
        body["stream_mode"] = json!(["values", "updates"]);
        let (status, _, frames) =
            app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
        assert_eq!(status, StatusCode::OK);
        let updates: Vec<&Value> =
            frames.iter().filter(|f| f.event == "updates").map(|f| &f.data).collect();
        assert_eq!(updates, [&json!({"__interrupt__": []})], "{frames:?}");
        let th = thread(app, &key, &t).await;
        assert_eq!(th["status"], "interrupted");
        assert_eq!(th["interrupts"], json!({}));
        let current = state(app, &key, &t).await;
        assert_eq!(current["next"], json!(["echo"]));
        assert_eq!(current["interrupts"], json!([]));
        assert_eq!(texts(&current["values"]), ["stop first"]);
        let body = json!({"assistant_id": "echo", "command": {"resume": "go"}});
        let values = wait(app, &key, &t, body).await;
        // A breakpoint asked nothing: the resume value is not the agent's (as in LangGraph).
        assert_eq!(texts(&values), ["stop first", "echo: stop first"]);
        assert_eq!(thread(app, &key, &t).await["status"], "idle");
    }
    // A node the agent does not have is never met (as in LangGraph); a bad value is a 422.
    let t = new_thread(app, &key).await;
    let mut body = echo("no stop");
    body["interrupt_before"] = json!(["nosuchnode"]);
    body["interrupt_after"] = json!(["echo"]);
    assert_eq!(texts(&wait(app, &key, &t, body).await), ["no stop", "echo: no stop"]);
    let mut body = echo("bad");
    body["interrupt_before"] = json!(7);
    app.post(&key, &format!("/threads/{t}/runs"), body).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "interrupt_before",
    );
}

async fn plain_input_on_an_interrupted_thread_abandons_the_interrupt(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, asking("first", json!("?"))).await;
    let values = wait(app, &key, &t, echo("never mind")).await;
    assert_eq!(texts(&values), ["first", "never mind", "echo: never mind"]);
    let th = thread(app, &key, &t).await;
    assert_eq!(th["status"], "idle");
    assert_eq!(th["interrupts"], json!({}));
    assert_eq!(state(app, &key, &t).await["next"], json!([]));
}

async fn goto_end_resolves_an_interrupt_without_the_agent(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, asking("first", json!("?"))).await;
    let head = id_of(&state(app, &key, &t).await);
    let body = json!({"assistant_id": "synthetic", "input": {}, "command": {"goto": "__end__"},
        "checkpoint": {"checkpoint_id": head, "checkpoint_ns": ""}});
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["first"]);
    assert_eq!(thread(app, &key, &t).await["status"], "idle");
    let current = state(app, &key, &t).await;
    assert_eq!(current["next"], json!([]));
    assert_eq!(current["interrupts"], json!([]));
    // An update with the resume is applied before the agent answers.
    wait(app, &key, &t, asking("second", json!("?"))).await;
    let update = json!({"messages": [{"type": "ai", "content": "injected"}]});
    let body = json!({"assistant_id": "synthetic", "command": {"resume": "ok", "update": update}});
    let values = wait(app, &key, &t, body).await;
    let texts = texts(&values);
    assert_eq!(texts[texts.len() - 2..], ["injected", "echo: second\nresumed with: \"ok\""]);
}

async fn updating_an_older_checkpoint_starts_a_branch(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, echo("one")).await;
    let old_head = id_of(&state(app, &key, &t).await);
    wait(app, &key, &t, echo("two")).await;
    let update = json!({"messages": [{"type": "ai", "content": "patched"}]});
    for form in ["checkpoint", "checkpoint_id"] {
        let body = match form {
            "checkpoint" => {
                json!({"values": update, "checkpoint": {"checkpoint_id": old_head, "checkpoint_ns": "", "checkpoint_map": {}}})
            }
            _ => json!({"values": update, "checkpoint_id": old_head}),
        };
        let written = app.post(&key, &format!("/threads/{t}/state"), body).await.ok();
        let current = state(app, &key, &t).await;
        assert_eq!(current["checkpoint"]["checkpoint_id"], written["checkpoint"]["checkpoint_id"]);
        assert_eq!(current["parent_checkpoint"]["checkpoint_id"], old_head);
        assert_eq!(texts(&current["values"]), ["one", "echo: one", "patched"]);
        assert_eq!(current["metadata"]["source"], "update");
    }
    assert_one_tree(&history(app, &key, &t).await);
    // Another thread's checkpoint: 404, nothing written.
    let other = new_thread(app, &key).await;
    let before = history(app, &key, &other).await;
    let body = json!({"values": update, "checkpoint_id": old_head});
    app.post(&key, &format!("/threads/{other}/state"), body).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found in thread",
    );
    assert_eq!(history(app, &key, &other).await, before);
}

async fn two_forks_from_one_checkpoint_at_once_make_two_branches(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, echo("one")).await;
    let h = history(app, &key, &t).await;
    let checkpoint = parent_of_first_seen(&h, "one");
    let fork = |text: &str| {
        let mut input = human(text);
        input["n"] = json!(50);
        input["delay_ms"] = json!(2);
        json!({"assistant_id": "synthetic", "input": input, "checkpoint": checkpoint})
    };
    let uri = format!("/threads/{t}/runs/wait");
    let (a, b) = tokio::join!(app.post(&key, &uri, fork("A")), app.post(&key, &uri, fork("B")));
    assert_eq!(texts(&a.ok()), ["A", "echo: A"]);
    assert_eq!(texts(&b.ok()), ["B", "echo: B"]);
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    let fork_point = checkpoint["checkpoint_id"].as_str().unwrap();
    let children: Vec<Vec<String>> = h
        .iter()
        .filter(|s| s["parent_checkpoint"]["checkpoint_id"] == fork_point)
        .map(|s| texts(&s["values"]))
        .collect();
    assert_eq!(children.len(), 3, "{children:?}");
    for text in ["one", "A", "B"] {
        assert!(children.contains(&vec![text.to_owned()]), "{children:?}");
    }
    // Each branch's answer follows its own input: the runs did not interleave.
    for text in ["A", "B"] {
        let input = h.iter().find(|s| texts(&s["values"]) == [text]).unwrap();
        let answer = h.iter().find(|s| texts(&s["values"]) == [text, &format!("echo: {text}")]);
        assert_eq!(
            answer.unwrap()["parent_checkpoint"]["checkpoint_id"],
            input["checkpoint"]["checkpoint_id"]
        );
    }
    assert_eq!(thread(app, &key, &t).await["status"], "idle");
}

/// A long input run on an interrupted thread, and a resume arriving while it runs, with each
/// multitask strategy (LangGraph's "setup B", docs/langgraph-checkpoints.md §14).
async fn a_resume_racing_new_input_follows_each_multitask_strategy(app: &TestApp) {
    let key = app.key("alice").await;
    for strategy in ["reject", "enqueue", "interrupt", "rollback"] {
        let t = new_thread(app, &key).await;
        wait(app, &key, &t, asking("first", json!("?"))).await;
        let interrupted = history(app, &key, &t).await;
        // Long enough to still run when the resume arrives: it is cancelled or waited for.
        let mut input = human("slow input");
        input["n"] = json!(100_000);
        input["delay_ms"] = json!(1000);
        let body = json!({"assistant_id": "synthetic", "input": input});
        let slow = app.post(&key, &format!("/threads/{t}/runs"), body).await.ok();
        let slow_id = slow["run_id"].as_str().unwrap().to_owned();
        app.wait_for_status(&key, &t, &slow_id, |s| s == "running").await;
        let mut body = resume(json!("R"));
        body["multitask_strategy"] = json!(strategy);
        let reply = app.post(&key, &format!("/threads/{t}/runs"), body).await;
        if strategy == "reject" {
            reply.error(StatusCode::CONFLICT, "conflict", "already running");
            let cancel = format!("/threads/{t}/runs/{slow_id}/cancel");
            app.post(&key, &cancel, json!({})).await;
            app.wait_for_status(&key, &t, &slow_id, |s| s != "running").await;
            assert_eq!(
                app.get(&key, &format!("/threads/{t}/runs")).await.ok().as_array().unwrap().len(),
                2
            );
            continue;
        }
        let resumed = reply.ok();
        let resumed_id = resumed["run_id"].as_str().unwrap().to_owned();
        if strategy == "enqueue" {
            // Queued behind the slow run, which abandons the interrupt when it ends.
            let cancel = format!("/threads/{t}/runs/{slow_id}/cancel");
            app.post(&key, &cancel, json!({})).await;
        }
        let done = app
            .wait_for_status(&key, &t, &resumed_id, |s| !matches!(s, "pending" | "running"))
            .await;
        let slow_now = app.get(&key, &format!("/threads/{t}/runs/{slow_id}")).await;
        let values = state(app, &key, &t).await["values"].clone();
        match strategy {
            "enqueue" => {
                // The slow run was cancelled after its input was applied: the thread was no
                // longer interrupted when the resume started.
                assert_eq!(slow_now.ok()["status"], "interrupted");
                assert_eq!(done["status"], "success", "{done}");
            }
            "interrupt" => {
                // The cut-off run's input was applied: its pending answer is what the resume
                // completes (it asked nothing, so the value is unused).
                assert_eq!(slow_now.ok()["status"], "interrupted");
                assert_eq!(done["status"], "success", "{done}");
                assert_eq!(texts(&values).last().unwrap(), "echo: slow input");
            }
            _ => {
                // Rolled back: the slow run and what it wrote are gone; the interrupt stands
                // and the resume answers it.
                assert_eq!(slow_now.status, StatusCode::NOT_FOUND);
                assert_eq!(done["status"], "success", "{done}");
                assert_eq!(texts(&values), ["first", "echo: first\nresumed with: \"R\""]);
                let h = history(app, &key, &t).await;
                assert_eq!(h[h.len() - interrupted.len()..], interrupted[..]);
            }
        }
        let th = thread(app, &key, &t).await;
        assert_eq!(th["status"], "idle", "{strategy}: {th}");
        assert_one_tree(&history(app, &key, &t).await);
    }
}

/// A resume accepted while the thread was busy, queued behind a run that answers (and so
/// abandons the interrupt): when it starts there is nothing to resume, and it ends `error`
/// saying so; the thread's state is the other run's. If the other run has ended before the
/// resume is created, the resume is refused at once (409) instead: either way nothing is lost.
async fn a_resume_queued_behind_an_answer_finds_nothing_to_resume(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, asking("first", json!("?"))).await;
    let mut input = human("answer this");
    input["n"] = json!(20);
    input["delay_ms"] = json!(50);
    let body = json!({"assistant_id": "synthetic", "input": input});
    let slow = app.post(&key, &format!("/threads/{t}/runs"), body).await.ok();
    let slow_id = slow["run_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&key, &t, &slow_id, |s| s == "running").await;
    let reply = app.post(&key, &format!("/threads/{t}/runs"), resume(json!("late"))).await;
    // The thread's status follows its last run: `error` for a resume that failed.
    let mut status = "idle";
    if reply.status == StatusCode::CONFLICT {
        reply.error(StatusCode::CONFLICT, "conflict", "nothing to resume");
    } else {
        let resumed = reply.ok();
        let id = resumed["run_id"].as_str().unwrap();
        let done = app.wait_for_status(&key, &t, id, |s| !matches!(s, "pending" | "running")).await;
        assert_eq!(done["status"], "error", "{done}");
        let owner = app.store().ensure_user("alice").await.unwrap().user_id;
        let run = app.store().get_run(owner, t.parse().unwrap(), id.parse().unwrap()).await;
        let error = run.unwrap().error.unwrap_or_default();
        assert!(error.contains("is not interrupted: nothing to resume"), "{error}");
        status = "error";
    }
    let slow = app.wait_for_status(&key, &t, &slow_id, |s| s != "running").await;
    assert_eq!(slow["status"], "success");
    let values = state(app, &key, &t).await["values"].clone();
    assert_eq!(texts(&values), ["first", "answer this", "echo: answer this"]);
    assert_eq!(thread(app, &key, &t).await["status"], status);
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

/// Edit the first message while its answer is still streaming, replacing the run (rollback):
/// the state before the first input belongs to no run, so the fork point survives.
async fn editing_the_first_message_while_its_answer_runs_survives_a_rollback(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let first = start_slow(app, &key, &t, "first").await;
    let h = history(app, &key, &t).await;
    let mut body = json!({"assistant_id": "echo", "input": human("edited first"), "multitask_strategy": "rollback"});
    body["checkpoint"] = parent_of_first_seen(&h, "first");
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["edited first", "echo: edited first"]);
    assert_eq!(
        app.get(&key, &format!("/threads/{t}/runs/{first}")).await.status,
        StatusCode::NOT_FOUND
    );
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    assert_eq!(h.len(), 3, "the state before the input, the edit, its answer");
    // The first run rolled back alone: the state before its input stays.
    let t2 = new_thread(app, &key).await;
    let run = start_slow(app, &key, &t2, "gone").await;
    app.post(
        &key,
        &format!("/threads/{t2}/runs/{run}/cancel?action=rollback&wait=true"),
        json!({}),
    )
    .await;
    let h = history(app, &key, &t2).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["values"], json!({"messages": []}));
    assert_eq!(thread(app, &key, &t2).await["status"], "idle");
}

/// Whether a thread is `interrupted` follows its newest checkpoint: a run rolled back or a
/// pending run cancelled on an interrupted thread leaves it interrupted (and resumable); a
/// state update answers the interrupt (nothing waits any more).
async fn the_threads_status_follows_what_its_newest_checkpoint_waits_for(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, asking("q", json!("?"))).await;
    let interrupted = thread(app, &key, &t).await;
    let run = start_slow(app, &key, &t, "cut off").await;
    app.post(&key, &format!("/threads/{t}/runs/{run}/cancel?action=rollback&wait=true"), json!({}))
        .await;
    let th = thread(app, &key, &t).await;
    assert_eq!(th["status"], "interrupted", "{th}");
    assert_eq!(th["interrupts"], interrupted["interrupts"]);
    let found =
        app.post(&key, "/threads/search", json!({"status": "interrupted", "ids": [t]})).await.ok();
    assert_eq!(found.as_array().unwrap().len(), 1);
    // A state update answers it: the thread is idle, and a resume finds nothing.
    let update = json!({"values": {"messages": [{"type": "ai", "content": "answered by hand"}]}});
    app.post(&key, &format!("/threads/{t}/state"), update).await.ok();
    assert_eq!(thread(app, &key, &t).await["status"], "idle");
    assert_eq!(state(app, &key, &t).await["next"], json!([]));
    app.post(&key, &format!("/threads/{t}/runs"), resume(json!("x"))).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "nothing to resume",
    );
    // A resume with an assistant whose agent did not ask: refused, the interrupt kept.
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, asking("q", json!("?"))).await;
    let body = json!({"assistant_id": "echo", "command": {"resume": "yes"}});
    app.post(&key, &format!("/threads/{t}/runs"), body).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "nothing to resume",
    );
    assert_eq!(thread(app, &key, &t).await["status"], "interrupted");
}

/// `runs/wait`, `join`, GET, PATCH, create-or-get and search all show a thread's interrupt
/// alike; history's metadata filter does not see what is pending.
async fn every_answer_about_an_interrupted_thread_shows_its_interrupt(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let waited = wait(app, &key, &t, asking("q", json!({"ask": 1}))).await;
    let run = app.get(&key, &format!("/threads/{t}/runs")).await.ok()[0]["run_id"].clone();
    let run = run.as_str().unwrap();
    let joined = app.get(&key, &format!("/threads/{t}/runs/{run}/join")).await.ok();
    assert_eq!(joined, waited);
    assert_eq!(joined["__interrupt__"][0]["value"], json!({"ask": 1}));
    let got = thread(app, &key, &t).await;
    assert_ne!(got["interrupts"], json!({}));
    let patched = app
        .call(&key, Method::PATCH, &format!("/threads/{t}"), Some(json!({"metadata": {"x": 1}})))
        .await
        .ok();
    assert_eq!(patched["interrupts"], got["interrupts"]);
    let again =
        app.post(&key, "/threads", json!({"thread_id": t, "if_exists": "do_nothing"})).await.ok();
    assert_eq!(again["interrupts"], got["interrupts"]);
    let filter = json!({"limit": 100, "metadata": {"__pending__": {"next": ["synthetic"]}}});
    let found = app.post(&key, &format!("/threads/{t}/history"), filter).await.ok();
    assert_eq!(found, json!([]));
}

async fn odd_commands_and_values_are_refused_before_anything_is_stored(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // A command on a thread with no state: nothing to resume or go to.
    let body = json!({"assistant_id": "echo", "command": {"goto": "echo"}});
    app.post(&key, &format!("/threads/{t}/runs"), body).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "has no state yet",
    );
    wait(app, &key, &t, asking("q", json!("?"))).await;
    let before = (history(app, &key, &t).await, thread(app, &key, &t).await);
    let body = json!({"assistant_id": "synthetic", "command": {"goto": ["__end__", "bogus"]}});
    app.post(&key, &format!("/threads/{t}/runs"), body).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "command.goto",
    );
    // An interrupt value too deep to be kept with its checkpoint.
    let mut deep = json!("bottom");
    for _ in 0..121 {
        deep = json!([deep]);
    }
    app.post(&key, &format!("/threads/{t}/runs"), asking("deep", deep)).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "input.interrupt: nested deeper",
    );
    let body = json!({"values": {"k": 1}, "checkpoint": {"checkpoint_id": id_of(&before.0[0]), "checkpoint_ns": "x"}});
    app.post(&key, &format!("/threads/{t}/state"), body).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "checkpoint_ns",
    );
    assert_eq!((history(app, &key, &t).await, thread(app, &key, &t).await), before);
}
