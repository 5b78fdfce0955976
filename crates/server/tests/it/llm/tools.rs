//! Tools over MCP (`testkit::mcp`, Streamable HTTP on a socket) and a human's approval
//! through interrupts: listed at the run's start, passed to the model, called, their results
//! sent back, until the model answers; approve, edit, reject and respond as agent-chat-ui and
//! LangChain's middleware send them.

use axum::http::StatusCode;
use testkit::model::Reply;

use super::*;

store::on_both_backends!(LlmApp =>
    tools_are_listed_called_and_their_results_sent_back_until_the_model_answers,
    a_server_or_tool_that_fails_is_reported_and_the_thread_stays_usable,
    max_steps_bounds_the_tool_rounds,
    an_approval_stops_the_run_and_approve_runs_the_call,
    edit_runs_the_call_with_the_new_arguments_and_reject_tells_the_model,
    a_resume_that_does_not_fit_the_request_fails_and_the_approval_still_waits,
    cancel_during_a_tool_call_abandons_it,
    a_server_that_repeats_a_calls_id_and_name_in_every_fragment_makes_one_call,
    an_edit_may_name_another_tool,
    a_run_without_a_decision_on_a_waiting_approval_does_not_run_the_calls,
    approve_names_tools_as_tools_does_and_a_name_that_fits_no_tool_is_refused,
    respond_answers_in_the_tools_place,
);

fn call(id: &str, name: &str, args: Value) -> (String, String, String) {
    (id.to_owned(), name.to_owned(), args.to_string())
}

fn with_tools(text: &str, extra: Value) -> Value {
    let mut context = json!({"model": "m", "tools": ["math"]});
    for (k, v) in extra.as_object().unwrap() {
        context[k] = v.clone();
    }
    llm(text, context)
}

async fn tools_are_listed_called_and_their_results_sent_back_until_the_model_answers(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::ToolCalls(vec![
        call("call_a", "add", json!({"a": 2, "b": 3})),
        call("call_b", "echo", json!({"text": "two calls at once"})),
    ]));
    fx.model.push(Reply::Text("2 + 3 is 5".into()));
    let mut body = with_tools("add 2 and 3", json!({}));
    body["stream_mode"] = json!(["messages-tuple", "values", "events"]);
    let (status, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(status, StatusCode::OK);
    // The tools reached the model with their schemas.
    let sent = fx.model.requests();
    assert_eq!(sent.len(), 2);
    let names: Vec<&str> = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["add", "echo", "fail", "slow"]);
    let add = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "add")
        .unwrap();
    assert_eq!(add["type"], "function");
    assert_eq!(add["function"]["description"], "Adds two numbers");
    assert_eq!(add["function"]["parameters"]["required"], json!(["a", "b"]));
    // The fragments were streamed as tool_call_chunks, by index, interleaved.
    let chunks: Vec<&Value> = frames
        .iter()
        .filter(|f| f.event == "messages")
        .flat_map(|f| {
            f.data[0]["tool_call_chunks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|_| &f.data[0])
        })
        .collect();
    let indexes: Vec<u64> = chunks
        .iter()
        .flat_map(|c| {
            c["tool_call_chunks"].as_array().unwrap().iter().map(|t| t["index"].as_u64().unwrap())
        })
        .collect();
    assert!(indexes.contains(&0) && indexes.contains(&1), "{indexes:?}");
    let first_one = indexes.iter().position(|i| *i == 1).unwrap();
    assert!(indexes[first_one..].contains(&0), "the calls' fragments interleave: {indexes:?}");
    // Tool events, then the tool messages as tuples of their own.
    let kinds: Vec<&str> = frames
        .iter()
        .filter(|f| f.event == "events")
        .map(|f| f.data["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "tool_executing").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "tool_completed").count(), 2);
    let tool_tuples: Vec<&Value> = frames
        .iter()
        .filter(|f| f.event == "messages" && f.data[0]["type"] == "tool")
        .map(|f| &f.data[0])
        .collect();
    assert_eq!(tool_tuples.len(), 2);
    // The state: the question, the calls, the results, the answer.
    let values = &frames.iter().rev().find(|f| f.event == "values").unwrap().data;
    let messages = values["messages"].as_array().unwrap();
    let types: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["human", "ai", "tool", "tool", "ai"]);
    assert_eq!(
        messages[1]["tool_calls"][0],
        json!({"id": "call_a", "name": "add", "args": {"a": 2, "b": 3}, "type": "tool_call"})
    );
    assert_eq!(messages[1]["tool_calls"][1]["args"], json!({"text": "two calls at once"}));
    assert_eq!(messages[2]["tool_call_id"], "call_a");
    assert_eq!(messages[2]["content"], "5");
    assert_eq!(messages[2]["status"], "success");
    assert_eq!(messages[3]["content"], "two calls at once");
    assert_eq!(messages[4]["content"], "2 + 3 is 5");
    assert_eq!(messages[4]["response_metadata"]["model_provider"], "openai");
    assert_eq!(fx.mcp.calls(), 2);
    // A `values` after each step, as LangGraph streams them: the input, the model's calls, the
    // tools' results, the answer.
    let steps: Vec<Vec<&str>> = frames
        .iter()
        .filter(|f| f.event == "values")
        .map(|f| {
            f.data["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["type"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        steps,
        [
            vec!["human"],
            vec!["human", "ai"],
            vec!["human", "ai", "tool", "tool"],
            vec!["human", "ai", "tool", "tool", "ai"]
        ]
    );
    // The second request carried the calls and their results, in OpenAI's shape.
    let conversation = sent[1]["messages"].as_array().unwrap();
    let roles: Vec<&str> = conversation.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool"]);
    assert_eq!(
        conversation[1]["tool_calls"][0]["function"],
        json!({"name": "add", "arguments": "{\"a\":2,\"b\":3}"})
    );
    assert_eq!(conversation[2], json!({"role": "tool", "tool_call_id": "call_a", "content": "5"}));
    // `server/tool` names one tool of a server.
    fx.model.push(Reply::Text("ok".into()));
    app.post(
        &key,
        &format!("/threads/{t}/runs/wait"),
        llm("x", json!({"model": "m", "tools": ["math/add"]})),
    )
    .await
    .ok();
    let last = fx.model.requests().pop().unwrap();
    assert_eq!(last["tools"].as_array().unwrap().len(), 1);
    assert_eq!(last["tools"][0]["function"]["name"], "add");
}

async fn a_server_or_tool_that_fails_is_reported_and_the_thread_stays_usable(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // A tool's own failure is its result: the model reads it and goes on.
    fx.model.push(Reply::ToolCalls(vec![call("c1", "fail", json!({}))]));
    fx.model.push(Reply::Text("sorry, it failed".into()));
    let values =
        app.post(&key, &format!("/threads/{t}/runs/wait"), with_tools("try", json!({}))).await.ok();
    let messages = values["messages"].as_array().unwrap();
    assert_eq!(messages[2]["status"], "error");
    assert_eq!(messages[2]["content"], "the tool failed, as asked");
    assert_eq!(messages[3]["content"], "sorry, it failed");
    // A tool the model made up is an error result too, without an MCP call.
    let calls = fx.mcp.calls();
    fx.model.push(Reply::ToolCalls(vec![call("c2", "teleport", json!({}))]));
    fx.model.push(Reply::Text("no such tool".into()));
    let values =
        app.post(&key, &format!("/threads/{t}/runs/wait"), with_tools("go", json!({}))).await.ok();
    let tool = values["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["type"] == "tool")
        .unwrap()
        .clone();
    assert!(tool["content"].as_str().unwrap().contains("no tool named `teleport`"), "{tool}");
    assert_eq!(fx.mcp.calls(), calls);
    // An MCP server that is down at the run's start: the run errors saying so.
    let body = llm("hi", json!({"model": "m", "tools": ["gone"]}));
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ToolError");
    assert!(message.contains("gone") && message.contains("unavailable"), "{message}");
    // The thread is usable again.
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), llm("plain", json!({"model": "m"})))
        .await
        .ok();
    assert_eq!(texts(&values).last().unwrap(), "echo: plain");
}

async fn max_steps_bounds_the_tool_rounds(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    for i in 0..2 {
        fx.model.push(Reply::ToolCalls(vec![call(
            &format!("c{i}"),
            "add",
            json!({"a": i, "b": 1}),
        )]));
    }
    let (_, _, frames) = app
        .post_sse(
            &key,
            &format!("/threads/{t}/runs/stream"),
            with_tools("loop", json!({"max_steps": 2})),
        )
        .await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "GraphRecursionError");
    assert!(message.contains("max_steps (2)"), "{message}");
    assert_eq!(fx.model.requests().len(), 2);
    assert_eq!(fx.mcp.calls(), 2);
}

/// Runs until the model calls `add` (which needs approval); returns the interrupted state.
async fn asked(fx: &LlmApp, key: &str, t: &str, args: Value) -> Value {
    fx.model.push(Reply::ToolCalls(vec![call("call_x", "add", args)]));
    let mut body = with_tools("add please", json!({"approve": ["add"]}));
    body["stream_mode"] = json!(["values", "updates"]);
    let (_, _, frames) = fx.app.post_sse(key, &format!("/threads/{t}/runs/stream"), body).await;
    assert!(!frames.iter().any(|f| f.event == "error"), "{frames:?}");
    let last = frames.iter().rev().find(|f| f.event == "values").unwrap().data.clone();
    assert!(last.get("__interrupt__").is_some(), "{last}");
    last
}

fn decide(decisions: Value) -> Value {
    json!({"assistant_id": "llm", "context": {"model": "m", "tools": ["math"], "approve": ["add"]},
        "command": {"resume": {"decisions": decisions}}})
}

async fn an_approval_stops_the_run_and_approve_runs_the_call(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let values = asked(fx, &key, &t, json!({"a": 2, "b": 2})).await;
    let value = &values["__interrupt__"][0]["value"];
    assert_eq!(value["action_requests"][0]["name"], "add");
    assert_eq!(value["action_requests"][0]["args"], json!({"a": 2, "b": 2}));
    assert_eq!(
        value["review_configs"][0],
        json!({"action_name": "add", "allowed_decisions": ["approve", "edit", "reject", "respond"]})
    );
    assert_eq!(fx.mcp.calls(), 0, "nothing ran before the approval");
    let th = app.get(&key, &format!("/threads/{t}")).await.ok();
    assert_eq!(th["status"], "interrupted");
    let state = app.get(&key, &format!("/threads/{t}/state")).await.ok();
    assert_eq!(state["next"], json!(["llm"]));
    let types: Vec<&str> = state["values"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["human", "ai"], "the calls are kept while the human decides");
    fx.model.push(Reply::Text("it is 4".into()));
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), decide(json!([{"type": "approve"}])))
        .await
        .ok();
    let messages = values["messages"].as_array().unwrap();
    let types: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["human", "ai", "tool", "ai"]);
    assert_eq!(messages[2]["content"], "4");
    assert_eq!(messages[3]["content"], "it is 4");
    assert_eq!(fx.mcp.calls(), 1);
    let th = app.get(&key, &format!("/threads/{t}")).await.ok();
    assert_eq!(th["status"], "idle");
}

async fn edit_runs_the_call_with_the_new_arguments_and_reject_tells_the_model(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    asked(fx, &key, &t, json!({"a": 1, "b": 1})).await;
    fx.model.push(Reply::Text("edited: 11".into()));
    let edit =
        json!([{"type": "edit", "edited_action": {"name": "add", "args": {"a": 10, "b": 1}}}]);
    let mut body = decide(edit);
    body["stream_mode"] = json!(["messages-tuple", "values"]);
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    // The rewritten call is streamed before its result, so a client showing messages as they
    // come shows the call first.
    let tuples: Vec<&str> = frames
        .iter()
        .filter(|f| f.event == "messages")
        .map(|f| f.data[0]["type"].as_str().unwrap())
        .collect();
    let (ai, tool) = (
        tuples.iter().position(|t| *t == "ai").unwrap(),
        tuples.iter().position(|t| *t == "tool").unwrap(),
    );
    assert!(ai < tool, "{tuples:?}");
    let values = frames.iter().rev().find(|f| f.event == "values").unwrap().data.clone();
    let messages = values["messages"].as_array().unwrap();
    assert_eq!(
        messages[1]["tool_calls"][0]["args"],
        json!({"a": 10, "b": 1}),
        "the call shows what ran"
    );
    assert_eq!(messages[2]["content"], "11");
    assert_eq!(messages.len(), 4, "the edited call replaced the asked one: {messages:?}");
    // Reject: nothing runs; the model is told why.
    let calls = fx.mcp.calls();
    asked(fx, &key, &t, json!({"a": 5, "b": 5})).await;
    fx.model.push(Reply::Text("understood".into()));
    let reject = json!([{"type": "reject", "message": "too risky"}]);
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), decide(reject)).await.ok();
    assert_eq!(fx.mcp.calls(), calls);
    let tool = values["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["type"] == "tool")
        .unwrap()
        .clone();
    assert_eq!(tool["status"], "error");
    assert!(tool["content"].as_str().unwrap().contains("too risky"));
    let told = fx.model.requests().pop().unwrap();
    let last = told["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "tool");
    assert_eq!(last["content"], "User rejected the tool call for `add` with reason: too risky");
}

async fn respond_answers_in_the_tools_place(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    asked(fx, &key, &t, json!({"a": 1, "b": 2})).await;
    // Without its message, a respond is refused and the approval still waits.
    let bad = json!([{"type": "respond"}]);
    let (_, _, frames) =
        app.post_sse(&key, &format!("/threads/{t}/runs/stream"), decide(bad)).await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ValueError");
    assert!(message.contains("a respond without a message"), "{message}");
    let state = app.get(&key, &format!("/threads/{t}/state")).await.ok();
    assert_eq!(state["next"], json!(["llm"]));
    fx.model.push(Reply::Text("so it is 3".into()));
    let respond = json!([{"type": "respond", "message": "it is 3"}]);
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), decide(respond)).await.ok();
    assert_eq!(fx.mcp.calls(), 0, "the tool did not run");
    let messages = values["messages"].as_array().unwrap();
    let types: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["human", "ai", "tool", "ai"]);
    assert_eq!(messages[2]["content"], "it is 3");
    assert_eq!(messages[2]["status"], "success");
    assert_eq!(messages[2]["tool_call_id"], messages[1]["tool_calls"][0]["id"]);
    let told = fx.model.requests().pop().unwrap();
    let last = told["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["role"].as_str(), last["content"].as_str()), (Some("tool"), Some("it is 3")));
}

async fn a_resume_that_does_not_fit_the_request_fails_and_the_approval_still_waits(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    asked(fx, &key, &t, json!({"a": 1, "b": 2})).await;
    for bad in [json!("yes"), json!({"decisions": []}), json!({"decisions": [{"type": "maybe"}]})] {
        let body = json!({"assistant_id": "llm", "context": {"model": "m", "tools": ["math"], "approve": ["add"]},
            "command": {"resume": bad.clone()}, "stream_mode": ["values"]});
        let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
        let (error, message) = error_of(&frames);
        assert_eq!(error, "ValueError", "{bad}");
        assert!(message.contains("decisions"), "{message}");
    }
    assert_eq!(fx.mcp.calls(), 0);
    let state = app.get(&key, &format!("/threads/{t}/state")).await.ok();
    assert_eq!(state["next"], json!(["llm"]), "still waiting for the approval");
    fx.model.push(Reply::Text("3".into()));
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), decide(json!([{"type": "approve"}])))
        .await
        .ok();
    assert_eq!(texts(&values).last().unwrap(), "3");
}

async fn cancel_during_a_tool_call_abandons_it(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    fx.model.push(Reply::ToolCalls(vec![call("c", "slow", json!({"ms": 60_000}))]));
    let run =
        app.post(&key, &format!("/threads/{t}/runs"), with_tools("wait", json!({}))).await.ok();
    let run_id = run["run_id"].as_str().unwrap();
    fx.mcp.until(|c| c.slow_waiting == 1).await;
    let reply = app
        .post(
            &key,
            &format!("/threads/{t}/runs/{run_id}/cancel?wait=true&action=interrupt"),
            json!({}),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    fx.mcp.until(|c| c.abandoned == 1 || c.cancelled == 1).await;
    let ended = app.wait_for_status(&key, &t, run_id, |s| s != "running" && s != "pending").await;
    assert_eq!(ended["status"], "interrupted");
}

async fn a_run_without_a_decision_on_a_waiting_approval_does_not_run_the_calls(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    asked(fx, &key, &t, json!({"a": 2, "b": 2})).await;
    let context = json!({"model": "m", "tools": ["math"], "approve": ["add"]});
    // A run with no input (a client's "continue"), and a command with only an update: neither
    // is a human's decision, so the call that needs one must not run (LangGraph asks again).
    let no_input = json!({"assistant_id": "llm", "context": context, "stream_mode": ["values"]});
    let update_only = json!({"assistant_id": "llm", "context": context, "stream_mode": ["values"],
        "command": {"update": {"messages": []}}});
    for body in [no_input, update_only] {
        let (_, _, frames) =
            app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body.clone()).await;
        assert_eq!(fx.mcp.calls(), 0, "the call ran without a decision: {body}\n{frames:?}");
        let state = app.get(&key, &format!("/threads/{t}/state")).await.ok();
        assert_eq!(state["next"], json!(["llm"]), "the approval still waits: {body}");
    }
    fx.model.push(Reply::Text("it is 4".into()));
    let values = app
        .post(&key, &format!("/threads/{t}/runs/wait"), decide(json!([{"type": "approve"}])))
        .await
        .ok();
    assert_eq!(texts(&values).last().unwrap(), "it is 4");
    assert_eq!(fx.mcp.calls(), 1);
}

async fn approve_names_tools_as_tools_does_and_a_name_that_fits_no_tool_is_refused(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    // `tools` takes `server/tool`; so must `approve`, or the call runs unapproved.
    fx.model.push(Reply::ToolCalls(vec![call("c1", "add", json!({"a": 1, "b": 1}))]));
    fx.model.push(Reply::Text("done".into()));
    let mut body = with_tools("add", json!({"approve": ["math/add"]}));
    body["stream_mode"] = json!(["values"]);
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(fx.mcp.calls(), 0, "`math/add` in approve was ignored: the call ran unapproved");
    let last = frames.iter().rev().find(|f| f.event == "values").unwrap().data.clone();
    assert_eq!(last["__interrupt__"][0]["value"]["action_requests"][0]["name"], "add", "{last}");
    // A name that fits none of the assistant's tools (a typo) approves nothing: refused.
    let t = new_thread(app, &key).await;
    let requests = fx.model.requests().len();
    let body = with_tools("add", json!({"approve": ["ad"]}));
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let (error, message) = error_of(&frames);
    assert_eq!(error, "ValueError");
    assert!(message.contains("context.approve") && message.contains("`ad`"), "{message}");
    assert_eq!(fx.model.requests().len(), requests, "nothing reached the model");
}

async fn a_server_that_repeats_a_calls_id_and_name_in_every_fragment_makes_one_call(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let frame = |delta: Value, finish: Value| {
        let chunk = json!({"id": "x", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n").into_bytes()
    };
    let piece = |args: &str| json!({"tool_calls": [{"index": 0, "id": "call_r", "type": "function", "function": {"name": "add", "arguments": args}}]});
    let parts = vec![
        frame(json!({"role": "assistant"}), Value::Null),
        frame(piece("{\"a\": 4,"), Value::Null),
        frame(piece(" \"b\": 4}"), Value::Null),
        frame(json!({}), json!("tool_calls")),
        b"data: [DONE]\n\n".to_vec(),
    ];
    fx.model.push(Reply::Raw(parts));
    fx.model.push(Reply::Text("8".into()));
    let values =
        app.post(&key, &format!("/threads/{t}/runs/wait"), with_tools("add", json!({}))).await.ok();
    let messages = values["messages"].as_array().unwrap();
    assert_eq!(
        messages[1]["tool_calls"],
        json!([{"id": "call_r", "name": "add", "args": {"a": 4, "b": 4}, "type": "tool_call"}])
    );
    assert_eq!(messages[2]["content"], "8");
}

async fn an_edit_may_name_another_tool(fx: &LlmApp) {
    let app = &fx.app;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    asked(fx, &key, &t, json!({"a": 1, "b": 1})).await;
    fx.model.push(Reply::Text("echoed".into()));
    let edit =
        json!([{"type": "edit", "edited_action": {"name": "echo", "args": {"text": "instead"}}}]);
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), decide(edit)).await.ok();
    let messages = values["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["name"], "echo", "the call shows what ran");
    assert_eq!(messages[2]["name"], "echo");
    assert_eq!(messages[2]["content"], "instead");
}
