//! The human-in-the-loop loop: interrupts, resumes with `command`, breakpoints, and what the
//! thread shows while it waits.

use super::*;

store::on_both_backends!(TestApp =>
    an_interrupt_stops_the_run_and_a_command_resumes_it,
    human_in_the_loop_decisions_reach_the_agent,
    a_resume_that_does_not_fit_is_refused_and_stores_nothing,
    a_breakpoint_before_the_agent_waits_for_a_resume,
    plain_input_on_an_interrupted_thread_abandons_the_interrupt,
    goto_end_resolves_an_interrupt_without_the_agent,
    the_threads_status_follows_what_its_newest_checkpoint_waits_for,
    every_answer_about_an_interrupted_thread_shows_its_interrupt,
    odd_commands_and_values_are_refused_before_anything_is_stored,
);

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
