//! A run's life on a thread: wait, the multitask strategies under concurrency, cancel,
//! stateless runs, validation and isolation.

use super::*;

store::on_both_backends!(TestApp =>
    wait_returns_the_final_values_and_records_everything,
    fifty_concurrent_enqueued_runs_on_a_new_thread_keep_every_message,
    fifty_concurrent_rejecting_runs_let_exactly_one_in,
    a_run_on_a_missing_thread_is_404_and_creates_nothing,
    cancel_interrupts_a_running_run,
    interrupt_and_rollback_strategies,
    stateless_runs_delete_their_thread_unless_kept,
    invalid_run_requests_are_422_and_create_nothing,
    another_users_runs_are_404,
    every_message_carrying_the_head_checkpoint_continues_the_thread,
);

/// agent-chat-ui (`useStream` with `fetchStateHistory`) sends the thread's head checkpoint with
/// every message after the first: that continues the thread (forks from older checkpoints are
/// tested in `conversations.rs`); another thread's or user's checkpoint is a 404.
async fn every_message_carrying_the_head_checkpoint_continues_the_thread(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    app.post(&key, &format!("/threads/{t}/runs/wait"), hi("m0")).await.ok();
    for (i, form) in ["object", "id", "object", "id"].iter().enumerate() {
        let history =
            app.post(&key, &format!("/threads/{t}/history"), json!({"limit": 10})).await.ok();
        let head = history[0]["checkpoint"].clone();
        let mut body = hi(&format!("m{}", i + 1));
        match *form {
            "object" => {
                body["checkpoint"] = json!({"checkpoint_id": head["checkpoint_id"], "checkpoint_ns": "", "checkpoint_map": {}})
            }
            _ => body["checkpoint_id"] = head["checkpoint_id"].clone(),
        }
        app.post(&key, &format!("/threads/{t}/runs/wait"), body).await.ok();
    }
    let state = app.get(&key, &format!("/threads/{t}/state")).await.ok();
    let texts: Vec<_> = state["values"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 10, "{texts:?}");
    assert_eq!(texts[8], "m4");
    assert_eq!(texts[9], "echo: m4");
    let runs_before = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    // Another thread's checkpoint, and another user's: 404 like any foreign id.
    let other = new_thread(app, &key).await;
    app.post(&key, &format!("/threads/{other}/runs/wait"), hi("x")).await.ok();
    let foreign =
        app.get(&key, &format!("/threads/{other}/state")).await.ok()["checkpoint"]["checkpoint_id"]
            .clone();
    let mut body = hi("foreign");
    body["checkpoint"] = json!({"checkpoint_id": foreign, "checkpoint_ns": ""});
    app.post(&key, &format!("/threads/{t}/runs"), body.clone()).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found in thread",
    );
    let bob = app.key("bob").await;
    let bobs = new_thread(app, &bob).await;
    app.post(&bob, &format!("/threads/{bobs}/runs"), body.clone()).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found in thread",
    );
    app.post(&key, "/runs", body).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found in thread",
    );
    let mut malformed = hi("bad");
    malformed["checkpoint_id"] = json!("nope");
    app.post(&key, &format!("/threads/{t}/runs"), malformed).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "checkpoint_id",
    );
    // Nothing was stored by the refusals.
    assert_eq!(app.get(&key, &format!("/threads/{t}/runs")).await.ok(), runs_before);
    assert_eq!(app.get(&key, &format!("/threads/{t}/state")).await.ok(), state);
}

async fn wait_returns_the_final_values_and_records_everything(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let done = app.post(&key, &format!("/threads/{t}/runs/wait"), hi("hello there")).await;
    let location = done.headers["content-location"].to_str().unwrap().to_owned();
    let values = done.ok();
    let messages = values["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["type"], "human");
    assert_eq!(messages[1]["type"], "ai");
    assert_eq!(messages[1]["content"], "echo: hello there");

    let run_id = location.rsplit('/').next().unwrap();
    assert!(location.starts_with(&format!("/threads/{t}/runs/")));
    let run = app.get(&key, &location).await.ok();
    assert_eq!(run["status"], "success");
    assert_eq!(run["run_id"], run_id);
    assert_eq!(run["assistant_id"], "046b5dc7-2108-582c-9c6c-31d556d138f0");
    let thread = app.get(&key, &format!("/threads/{t}")).await.ok();
    assert_eq!(thread["status"], "idle");
    assert_eq!(thread["values"], values);
    assert_eq!(thread["metadata"]["graph_id"], "echo");
    assert_eq!(thread["metadata"]["assistant_id"], "046b5dc7-2108-582c-9c6c-31d556d138f0");
    // The state before the input (a new thread's), one when the input is applied, one when
    // the run ends.
    let history = app.post(&key, &format!("/threads/{t}/history"), json!({})).await.ok();
    assert_eq!(history.as_array().unwrap().len(), 3);
    assert_eq!(history[0]["metadata"]["source"], "loop");
    assert_eq!(history[1]["metadata"]["source"], "loop");
    assert_eq!(history[2]["metadata"]["source"], "input");
    let state = app.get(&key, &format!("/threads/{t}/state")).await.ok();
    assert_eq!(state["next"], json!([]));
    // Listing, then joining a finished run, answers at once.
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(app.get(&key, &format!("{location}/join")).await.ok(), values);
    let ok = app.get(&key, &format!("/threads/{t}/runs?status=success")).await.ok();
    assert_eq!(ok.as_array().unwrap().len(), 1);
    let none = app.get(&key, &format!("/threads/{t}/runs?status=error")).await.ok();
    assert_eq!(none, json!([]));
    // A second run appends to the same conversation.
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), hi("again")).await.ok();
    assert_eq!(values["messages"].as_array().unwrap().len(), 4);
}

async fn fifty_concurrent_enqueued_runs_on_a_new_thread_keep_every_message(app: &TestApp) {
    let key = app.key("alice").await;
    let t = ThreadId::new().to_string();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (app_state, key, t) = (app.state.clone(), key.clone(), t.clone());
            tokio::spawn(async move {
                let body = json!({"assistant_id": "echo", "if_not_exists": "create", "multitask_strategy": "enqueue",
                    "input": {"messages": [{"role": "user", "content": format!("m{i}")}]}});
                let request = Request::post(format!("/threads/{t}/runs/wait"))
                    .header("x-api-key", key)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let response = tower::ServiceExt::oneshot(harness::app(app_state), request).await.unwrap();
                let status = response.status();
                let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
                (status, serde_json::from_slice::<Value>(String::from_utf8_lossy(&bytes).trim().as_bytes()).unwrap())
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("__error__").is_none(), "{body}");
    }
    let id: ThreadId = t.parse().unwrap();
    assert_eq!(app.store().admin_count_threads(id).await.unwrap(), 1);
    let runs = app.get(&key, &format!("/threads/{t}/runs?limit=100")).await.ok();
    assert_eq!(runs.as_array().unwrap().len(), 50);
    assert!(runs.as_array().unwrap().iter().all(|r| r["status"] == "success"));
    let values = app.get(&key, &format!("/threads/{t}")).await.ok()["values"].clone();
    let messages = values["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 100, "2 messages per run, none lost");
    // Runs executed one at a time: every reply directly follows its own question.
    for pair in messages.chunks(2) {
        assert_eq!(pair[1]["content"], format!("echo: {}", pair[0]["content"].as_str().unwrap()));
    }
    let asked: HashSet<_> =
        messages.iter().step_by(2).map(|m| m["content"].as_str().unwrap().to_owned()).collect();
    assert_eq!(asked.len(), 50);
    assert_eq!(app.get(&key, &format!("/threads/{t}")).await.ok()["status"], "idle");
}

async fn fifty_concurrent_rejecting_runs_let_exactly_one_in(app: &TestApp) {
    let key = app.key("alice").await;
    let t = ThreadId::new().to_string();
    // A run that lasts until it is cancelled, so "busy" holds for the whole race.
    let body = json!({"assistant_id": "synthetic", "if_not_exists": "create", "multitask_strategy": "reject",
        "input": {"n": 100000, "delay_ms": 5, "messages": [{"role": "user", "content": "x"}]}});
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app_state, key, t, body) =
                (app.state.clone(), key.clone(), t.clone(), body.clone());
            tokio::spawn(async move {
                let request = Request::post(format!("/threads/{t}/runs"))
                    .header("x-api-key", key)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                tower::ServiceExt::oneshot(harness::app(app_state), request).await.unwrap().status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 49, "{statuses:?}");
    let id: ThreadId = t.parse().unwrap();
    assert_eq!(app.store().admin_count_threads(id).await.unwrap(), 1);
    let busy = app
        .post(
            &key,
            &format!("/threads/{t}/runs"),
            json!({"assistant_id": "echo", "multitask_strategy": "reject"}),
        )
        .await;
    if busy.status == StatusCode::CONFLICT {
        busy.error(StatusCode::CONFLICT, "conflict", "Thread is already running a task");
    }
}

async fn a_run_on_a_missing_thread_is_404_and_creates_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let t = ThreadId::new().to_string();
    for path in ["runs", "runs/wait", "runs/stream"] {
        app.post(&key, &format!("/threads/{t}/{path}"), hi("x")).await.error(
            StatusCode::NOT_FOUND,
            "not_found",
            "not found",
        );
    }
    assert_eq!(app.store().admin_count_threads(t.parse().unwrap()).await.unwrap(), 0);
}

async fn cancel_interrupts_a_running_run(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let run = start_slow_run(app, &key, &t, json!({})).await;
    app.wait_for_status(&key, &t, &run, |s| s == "running").await;
    let cancel =
        app.call(&key, Method::POST, &format!("/threads/{t}/runs/{run}/cancel?wait=1"), None).await;
    assert_eq!(cancel.status, StatusCode::NO_CONTENT);
    let ended = app.get(&key, &format!("/threads/{t}/runs/{run}")).await.ok();
    assert_eq!(ended["status"], "interrupted");
    assert_eq!(app.get(&key, &format!("/threads/{t}")).await.ok()["status"], "idle");
    // Its output so far is kept: the input message is in the state.
    let values = app.get(&key, &format!("/threads/{t}/state")).await.ok()["values"].clone();
    assert_eq!(values["messages"][0]["content"], "slow");
    // Joining it ends at once, with the run's last event.
    let request = Request::get(format!("/threads/{t}/runs/{run}/stream"))
        .header("x-api-key", key.as_str())
        .header("last-event-id", "-1");
    let (_, _, frames) = app.sse(request.body(Body::empty()).unwrap()).await;
    assert_eq!(frames.last().unwrap().event, "end");
    // A pending run is cancelled without ever running; a finished one stays as it was.
    let first = start_slow_run(app, &key, &t, json!({})).await;
    let queued = app.post(&key, &format!("/threads/{t}/runs"), hi("queued")).await.ok()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = app.call(&key, Method::POST, &format!("/threads/{t}/runs/{queued}/cancel"), None).await;
    assert_eq!(c.status, StatusCode::ACCEPTED);
    assert_eq!(
        app.get(&key, &format!("/threads/{t}/runs/{queued}")).await.ok()["status"],
        "interrupted"
    );
    app.call(
        &key,
        Method::POST,
        &format!("/threads/{t}/runs/{first}/cancel?wait=1&action=rollback"),
        None,
    )
    .await;
    app.get(&key, &format!("/threads/{t}/runs/{first}")).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    let c = app
        .call(&key, Method::POST, &format!("/threads/{t}/runs/{run}/cancel?action=explode"), None)
        .await;
    c.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "action: expected interrupt or rollback",
    );
    assert_eq!(app.get(&key, &format!("/threads/{t}")).await.ok()["status"], "idle");
}

async fn interrupt_and_rollback_strategies(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    app.post(&key, &format!("/threads/{t}/runs/wait"), hi("before")).await.ok();
    let slow = start_slow_run(app, &key, &t, json!({})).await;
    app.wait_for_status(&key, &t, &slow, |s| s == "running").await;
    let mut interrupting = hi("interrupting");
    interrupting["multitask_strategy"] = json!("interrupt");
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), interrupting).await.ok();
    assert_eq!(
        app.get(&key, &format!("/threads/{t}/runs/{slow}")).await.ok()["status"],
        "interrupted"
    );
    let contents: Vec<&str> = values["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["before", "echo: before", "slow", "interrupting", "echo: interrupting"],
        "the interrupted run's input is kept"
    );

    let slow = start_slow_run(app, &key, &t, json!({})).await;
    app.wait_for_status(&key, &t, &slow, |s| s == "running").await;
    let mut rolling = hi("rolling");
    rolling["multitask_strategy"] = json!("rollback");
    let values = app.post(&key, &format!("/threads/{t}/runs/wait"), rolling).await.ok();
    app.get(&key, &format!("/threads/{t}/runs/{slow}")).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    let contents: Vec<&str> = values["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 7, "the rolled-back run left nothing: {contents:?}");
    assert_eq!(contents[5..], ["rolling", "echo: rolling"]);
}

async fn stateless_runs_delete_their_thread_unless_kept(app: &TestApp) {
    let key = app.key("alice").await;
    let values = app.post(&key, "/runs/wait", hi("stateless")).await.ok();
    assert_eq!(values["messages"][1]["content"], "echo: stateless");
    let mut kept = hi("kept");
    kept["on_completion"] = json!("keep");
    let done = app.post(&key, "/runs/wait", kept).await;
    let location = done.headers["content-location"].to_str().unwrap().to_owned();
    done.ok();
    let thread = location.split('/').nth(2).unwrap().to_owned();
    assert_eq!(
        app.get(&key, &format!("/threads/{thread}")).await.ok()["values"]["messages"][1]["content"],
        "echo: kept"
    );
    let (_, headers, frames) = app.post_sse(&key, "/runs/stream", hi("streamed")).await;
    assert_eq!(frames.last().unwrap().event, "end");
    let deleted =
        headers["content-location"].to_str().unwrap().split('/').nth(2).unwrap().to_owned();
    // The deleted thread goes once its run has ended.
    let gone = async || {
        (app.get(&key, &format!("/threads/{deleted}")).await.status == StatusCode::NOT_FOUND)
            .then_some(())
    };
    harness::eventually("the temporary thread is deleted", harness::BOUND, gone).await;
    // A new thread has no run before this one and the executor has room: claimed as created.
    let background = app.post(&key, "/runs", hi("bg")).await.ok();
    assert_eq!(background["status"], "running");
}

async fn invalid_run_requests_are_422_and_create_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let runs = format!("/threads/{t}/runs");
    let cases = [
        (json!({"input": {}}), "missing_field", "assistant_id is required"),
        (
            json!({"assistant_id": "echo", "stream_mode": "bogus"}),
            "invalid_stream_mode",
            "stream_mode: invalid stream_mode `bogus`",
        ),
        (
            json!({"assistant_id": "echo", "stream_mode": ["values", 3]}),
            "invalid_body",
            "at `stream_mode`",
        ),
        (
            json!({"assistant_id": "echo", "webhook": "http://example.invalid/hook"}),
            "unsupported",
            "webhook is not supported",
        ),
        (json!({"assistant_id": "echo", "after_seconds": 5}), "unsupported", "after_seconds"),
        (
            json!({"assistant_id": "echo", "interrupt_before": {"node": "echo"}}),
            "invalid_request",
            "interrupt_before: expected",
        ),
        (
            json!({"assistant_id": "echo", "command": "resume"}),
            "invalid_request",
            "command: expected an object",
        ),
        (
            json!({"assistant_id": "echo", "multitask_strategy": "sometimes"}),
            "invalid_body",
            "at `multitask_strategy`",
        ),
        (
            json!({"assistant_id": "echo", "input": [1]}),
            "invalid_request",
            "input: expected an object",
        ),
        (
            json!({"assistant_id": "echo", "input": {"messages": [{"role": "robot"}]}}),
            "invalid_request",
            "input.values.messages[0]",
        ),
        (
            json!({"assistant_id": "echo", "if_not_exists": "maybe"}),
            "invalid_body",
            "at `if_not_exists`",
        ),
    ];
    for (body, code, detail) in cases {
        app.post(&key, &runs, body).await.error(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
    }
    app.post(&key, &runs, json!({"assistant_id": "nope"})).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "assistant nope not found",
    );
    // Fields a client sends that Spindle honours trivially, or does not know, are accepted.
    let chat_ui = json!({"assistant_id": "echo", "stream_mode": ["values", "messages-tuple", "custom"], "stream_subgraphs": true,
        "stream_resumable": true, "interrupt_before": [], "durability": "async", "on_disconnect": "continue",
        "config": {"configurable": {}}, "some_future_field": 1, "input": {"messages": [{"type": "human", "content": [{"type": "text", "text": "ok"}]}]}});
    let (status, _, frames) =
        app.post_sse(&key, &format!("/threads/{t}/runs/stream"), chat_ui).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames.last().unwrap().event, "end");
    let runs_listed = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert_eq!(runs_listed.as_array().unwrap().len(), 1, "only the valid run was created");
    app.get(&key, &format!("/threads/{t}/runs?limit=0")).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "limit",
    );
    app.get(&key, &format!("/threads/{t}/runs/nope")).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "invalid run_id `nope`",
    );
}

async fn another_users_runs_are_404(app: &TestApp) {
    let alice = app.key("alice").await;
    let bob = app.key("bob").await;
    let t = new_thread(app, &alice).await;
    let done = app.post(&alice, &format!("/threads/{t}/runs/wait"), hi("mine")).await;
    let run = done.headers["content-location"].to_str().unwrap().to_owned();
    for (method, uri) in [
        (Method::GET, run.clone()),
        (Method::DELETE, run.clone()),
        (Method::POST, format!("{run}/cancel")),
        (Method::GET, format!("{run}/join")),
        (Method::GET, format!("{run}/stream")),
        (Method::GET, format!("/threads/{t}/runs")),
    ] {
        let r = app.call(&bob, method.clone(), &uri, None).await;
        r.error(StatusCode::NOT_FOUND, "not_found", &format!("thread {t} not found"));
    }
    for path in ["runs", "runs/wait", "runs/stream"] {
        let r = app.post(&bob, &format!("/threads/{t}/{path}"), hi("theirs")).await;
        r.error(StatusCode::NOT_FOUND, "not_found", "not found");
        let mut create = hi("theirs");
        create["if_not_exists"] = json!("create");
        app.post(&bob, &format!("/threads/{t}/{path}"), create).await.error(
            StatusCode::CONFLICT,
            "conflict",
            "already exists",
        );
    }
    let values = app.get(&alice, &format!("/threads/{t}/state")).await.ok()["values"].clone();
    assert_eq!(values["messages"].as_array().unwrap().len(), 2, "bob changed nothing");
}
