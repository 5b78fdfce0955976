//! Runs on SQLite and PostgreSQL: lifecycle, the races and multitask strategies, streaming
//! and lossless resume, cancel, stateless runs, validation and isolation.

mod common;

use std::collections::HashSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Frame, TestApp};
use ids::ThreadId;
use serde_json::{Value, json};

both_backends!(
    wait_returns_the_final_values_and_records_everything,
    fifty_concurrent_enqueued_runs_on_a_new_thread_keep_every_message,
    fifty_concurrent_rejecting_runs_let_exactly_one_in,
    a_run_on_a_missing_thread_is_404_and_creates_nothing,
    streams_have_increasing_ids_metadata_first_and_end_last,
    joining_at_every_cut_point_resumes_without_loss_or_duplicates,
    cancel_interrupts_a_running_run,
    interrupt_and_rollback_strategies,
    stateless_runs_delete_their_thread_unless_kept,
    invalid_run_requests_are_422_and_create_nothing,
    another_users_runs_are_404,
    a_thread_stream_follows_every_run_of_the_thread,
    a_stream_with_on_disconnect_cancel_cancels_its_run_when_the_client_leaves,
    a_queued_run_replaced_by_interrupt_ends_its_streams_at_once,
    finished_and_refused_streams_leave_no_channel_behind,
    every_message_carrying_the_head_checkpoint_continues_the_thread,
);

fn hi(text: &str) -> Value {
    json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": text}]}})
}

async fn new_thread(app: &TestApp, key: &str) -> String {
    app.post(key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned()
}

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
                let response = tower::ServiceExt::oneshot(api::app(app_state), request).await.unwrap();
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
                tower::ServiceExt::oneshot(api::app(app_state), request).await.unwrap().status()
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

async fn streams_have_increasing_ids_metadata_first_and_end_last(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let body = json!({"assistant_id": "echo", "stream_mode": ["values", "messages-tuple", "updates", "custom", "events"],
        "input": {"messages": [{"role": "user", "content": "hi you"}]}});
    let (status, headers, frames) =
        app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let location = headers["location"].to_str().unwrap();
    let content_location = headers["content-location"].to_str().unwrap();
    assert_eq!(location, format!("{content_location}/stream"));
    assert_eq!(frames[0].event, "metadata");
    assert_eq!(
        frames[0].data["run_id"].as_str().unwrap(),
        content_location.rsplit('/').next().unwrap()
    );
    assert_eq!(frames.last().unwrap().event, "end");
    let ids: Vec<(i64, u32)> = frames[1..]
        .iter()
        .map(|f| {
            let (seq, k) = f.id.as_deref().unwrap().split_once('-').unwrap();
            (seq.parse().unwrap(), k.parse().unwrap())
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase: {ids:?}");
    let text: String = frames
        .iter()
        .filter(|f| f.event == "messages")
        .map(|f| f.data[0]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "echo: hi you");
    let values: Vec<&Frame> = frames.iter().filter(|f| f.event == "values").collect();
    assert_eq!(values.len(), 2);
    assert_eq!(values[1].data["messages"][1]["content"], "echo: hi you");
    let updates: Vec<&Frame> = frames.iter().filter(|f| f.event == "updates").collect();
    assert_eq!(updates[0].data["echo"]["messages"][0]["content"], "echo: hi you");
    let kinds: Vec<&str> = frames
        .iter()
        .filter(|f| f.event == "events")
        .map(|f| f.data["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"agent_started"));
    assert!(kinds.contains(&"agent_thinking") && kinds.contains(&"message_completed"));
    assert_eq!(kinds.last(), Some(&"agent_completed"));

    // The synthetic agent's custom events, and every lifecycle kind.
    let body = json!({"assistant_id": "synthetic", "stream_mode": ["custom", "events"], "input": {"n": 30, "mode": "custom"}});
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let custom: Vec<i64> = frames
        .iter()
        .filter(|f| f.event == "custom")
        .map(|f| f.data["i"].as_i64().unwrap())
        .collect();
    assert_eq!(custom, (0..30).collect::<Vec<_>>());
    let kinds: HashSet<&str> = frames
        .iter()
        .filter(|f| f.event == "events")
        .map(|f| f.data["event"].as_str().unwrap())
        .collect();
    for kind in [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "message_delta",
        "message_completed",
        "values",
        "agent_completed",
    ] {
        assert!(kinds.contains(kind), "no {kind} event");
    }
    let body = json!({"assistant_id": "synthetic", "stream_mode": "messages-tuple", "input": {"n": 11, "mode": "tokens"}});
    let (_, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let text: String = frames
        .iter()
        .filter(|f| f.event == "messages")
        .map(|f| f.data[0]["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.starts_with("t0 t1 t2 t3 t4 t5"), "{text}");
}

async fn joining_at_every_cut_point_resumes_without_loss_or_duplicates(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let body = json!({"assistant_id": "synthetic", "stream_mode": ["values", "messages", "custom"],
        "input": {"n": 12, "mode": "tokens", "messages": [{"role": "user", "content": "a b c"}]}});
    let (_, headers, full) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    let stream_path = headers["location"].to_str().unwrap().to_owned();
    let after_metadata = &full[1..];
    let join = |last: Option<String>| {
        let mut r = Request::get(&stream_path).header("x-api-key", key.as_str());
        if let Some(last) = last {
            r = r.header("last-event-id", last);
        }
        app.sse(r.body(Body::empty()).unwrap())
    };
    // From the start: the same frames.
    let (_, _, again) = join(Some("-1".into())).await;
    assert_eq!(&again[1..], after_metadata);
    // From every frame: exactly the frames after it, even mid-message (partials rebuilt),
    // and no second `metadata`.
    for (i, frame) in after_metadata.iter().enumerate() {
        let (status, _, rest) = join(frame.id.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&rest[..], &after_metadata[i + 1..], "resuming after {:?}", frame.id);
    }
    // The SDKs' way of asking for a list of modes, or for the run's own.
    let modes = format!(
        "{stream_path}?stream_mode=values&stream_mode=custom&stream_mode=&cancel_on_disconnect=false"
    );
    let (status, _, listed) = app
        .sse(Request::get(modes).header("x-api-key", key.as_str()).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed.iter().all(|f| ["metadata", "values", "end"].contains(&f.event.as_str())),
        "{listed:?}"
    );
    let (_, _, own) = app
        .sse(
            Request::get(format!("{stream_path}?stream_mode="))
                .header("x-api-key", key.as_str())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(own, full, "an empty stream_mode means the run's own modes");
    app.get(&key, &format!("{stream_path}?last_event_id=x")).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "Last-Event-ID",
    );
}

async fn start_slow_run(app: &TestApp, key: &str, t: &str, extra: Value) -> String {
    let mut body = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5, "messages": [{"role": "user", "content": "slow"}]}});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let run = app.post(key, &format!("/threads/{t}/runs"), body).await.ok();
    run["run_id"].as_str().unwrap().to_owned()
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get(&key, &format!("/threads/{deleted}")).await.status != StatusCode::NOT_FOUND {
        assert!(std::time::Instant::now() < deadline, "temporary thread not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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

/// A started app (local auth) on `backend` with an executor of its own configuration; `None`
/// without PostgreSQL.
async fn app_with_executor(
    backend: store::Backend,
    config: engine::ExecutorConfig,
) -> Option<(store::testing::TestDb, api::AppState)> {
    use api::auth::{Auth, AuthMode, JwtConfig};
    let db = store::testing::TestDb::new(backend).await?;
    let auth = Auth::new(AuthMode::Local, &JwtConfig::default()).unwrap();
    let http = api::HttpConfig::default();
    let state = api::AppState::new(
        engine::Engine::new(db.store.clone(), config).await.unwrap(),
        auth,
        http,
    );
    state.start(std::future::pending()).await.unwrap();
    Some((db, state))
}

/// One request to `state`'s app; the JSON body (`null` if there is none).
async fn call(state: &api::AppState, method: Method, uri: String, body: Value) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(api::app(state.clone()), request).await.unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    serde_json::from_str::<Value>(std::str::from_utf8(&bytes).unwrap().trim())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_run_past_its_timeout_ends_timeout_and_wait_says_so() {
    let config = engine::ExecutorConfig {
        concurrency: 2,
        run_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let (db, state) = app_with_executor(store::Backend::Sqlite, config).await.unwrap();
    let call = |uri: String, body: Value| call(&state, Method::POST, uri, body);
    let t = call("/threads".into(), json!({})).await["thread_id"].as_str().unwrap().to_owned();
    let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
    let answer = call(format!("/threads/{t}/runs/wait"), slow).await;
    assert_eq!(answer["__error__"]["error"], "TimeoutError", "{answer}");
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let runs = db.store.list_runs(owner, t.parse().unwrap(), 10, 0, None).await.unwrap();
    assert_eq!(runs[0].status, store::RunStatus::Timeout);
    assert_eq!(
        db.store.get_thread(owner, t.parse().unwrap()).await.unwrap().status,
        store::ThreadStatus::Error
    );
}

async fn a_thread_stream_follows_every_run_of_the_thread(app: &TestApp) {
    use http_body_util::BodyExt;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let request =
        Request::get(format!("/threads/{t}/stream?stream_mode=values&stream_mode=updates"))
            .header("x-api-key", key.as_str())
            .body(Body::empty())
            .unwrap();
    let response = tower::ServiceExt::oneshot(api::app(app.state.clone()), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    for text in ["one", "two"] {
        app.post(&key, &format!("/threads/{t}/runs/wait"), hi(text)).await.ok();
    }
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.matches("event: values").count() < 4 {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("frames in time")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert_eq!(seen.matches("event: updates").count(), 2, "{seen}");
    assert!(seen.contains("echo: one") && seen.contains("echo: two"));
    assert!(!seen.contains("event: end"), "a thread stream outlives its runs");
    let bob = app.key("bob").await;
    app.get(&bob, &format!("/threads/{t}/stream")).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

async fn a_stream_with_on_disconnect_cancel_cancels_its_run_when_the_client_leaves(app: &TestApp) {
    use http_body_util::BodyExt;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let slow = json!({"assistant_id": "synthetic", "on_disconnect": "cancel", "stream_mode": "custom",
        "input": {"n": 100000, "delay_ms": 5}});
    let request = Request::post(format!("/threads/{t}/runs/stream"))
        .header("x-api-key", key.as_str())
        .header("content-type", "application/json")
        .body(Body::from(slow.to_string()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(api::app(app.state.clone()), request).await.unwrap();
    let run = response.headers()["content-location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let mut body = response.into_body();
    // Read until the run is really streaming, then leave.
    let mut seen = String::new();
    while !seen.contains("event: custom") {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    drop(body);
    let ended = app.wait_for_status(&key, &t, &run, |s| s != "running" && s != "pending").await;
    assert_eq!(ended["status"], "interrupted");
    // The default (continue) keeps the run going after the client leaves.
    let mut keep = slow.clone();
    keep["on_disconnect"] = json!("continue");
    let (status, headers, _) = {
        let request = Request::post(format!("/threads/{t}/runs/stream"))
            .header("x-api-key", key.as_str())
            .header("content-type", "application/json")
            .body(Body::from(keep.to_string()))
            .unwrap();
        let response =
            tower::ServiceExt::oneshot(api::app(app.state.clone()), request).await.unwrap();
        (response.status(), response.headers().clone(), ())
    };
    assert_eq!(status, StatusCode::OK);
    let kept = headers["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    app.wait_for_status(&key, &t, &kept, |s| s == "running").await;
    let cancel = app
        .call(&key, Method::POST, &format!("/threads/{t}/runs/{kept}/cancel?wait=1"), None)
        .await;
    assert_eq!(cancel.status, StatusCode::NO_CONTENT);
}

async fn a_queued_run_replaced_by_interrupt_ends_its_streams_at_once(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let slow = start_slow_run(app, &key, &t, json!({})).await;
    app.wait_for_status(&key, &t, &slow, |s| s == "running").await;
    let queued = app.post(&key, &format!("/threads/{t}/runs"), hi("queued")).await.ok()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut interrupting = hi("now");
    interrupting["multitask_strategy"] = json!("interrupt");
    app.post(&key, &format!("/threads/{t}/runs/wait"), interrupting).await.ok();
    assert_eq!(
        app.get(&key, &format!("/threads/{t}/runs/{queued}")).await.ok()["status"],
        "interrupted"
    );
    // Its stream ends with its own last event, not after a quiet time-out.
    let request = Request::get(format!("/threads/{t}/runs/{queued}/stream?stream_mode=events"))
        .header("x-api-key", key.as_str())
        .header("last-event-id", "-1");
    let (_, _, frames) = tokio::time::timeout(
        std::time::Duration::from_secs(4),
        app.sse(request.body(Body::empty()).unwrap()),
    )
    .await
    .expect("the stream ends at once");
    let kinds: Vec<&str> = frames
        .iter()
        .filter(|f| f.event == "events")
        .map(|f| f.data["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["run_cancelled"]);
    assert_eq!(frames.last().unwrap().event, "end");
    assert_eq!(
        app.get(&key, &format!("{}/join", format_args!("/threads/{t}/runs/{queued}"))).await.status,
        StatusCode::OK
    );
}

async fn finished_and_refused_streams_leave_no_channel_behind(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    for text in ["a", "b", "c"] {
        let (_, _, frames) =
            app.post_sse(&key, &format!("/threads/{t}/runs/stream"), hi(text)).await;
        assert_eq!(frames.last().unwrap().event, "end");
    }
    for _ in 0..20 {
        let missing = ThreadId::new();
        app.post(&key, &format!("/threads/{missing}/runs/stream"), hi("x")).await.error(
            StatusCode::NOT_FOUND,
            "not_found",
            "not found",
        );
    }
    // Stream tasks end with their run, and drop their subscription as they go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.state.engine.hub().channels() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} channels left",
            app.state.engine.hub().channels()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// With no free place in the executor, a run is created `pending` and starts as soon as a
/// place frees up (the run holding it ends).
#[tokio::test]
async fn a_run_waiting_for_a_place_starts_when_one_frees_up() {
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let config = engine::ExecutorConfig { concurrency: 1, ..Default::default() };
        let Some((_db, state)) = app_with_executor(backend, config).await else { continue };
        let call = |method: &str, uri: String, body: Value| {
            call(&state, Method::from_bytes(method.as_bytes()).unwrap(), uri, body)
        };
        let thread = |_: ()| call("POST", "/threads".into(), json!({}));
        let (a, b) = (thread(()).await, thread(()).await);
        let (a, b) = (a["thread_id"].as_str().unwrap(), b["thread_id"].as_str().unwrap());
        // The one place: a run that lasts until it is cancelled.
        let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
        let first = call("POST", format!("/threads/{a}/runs"), slow).await;
        // Running at once, or (if the claim loop held the place at that moment) once claimed.
        let get_first = format!("/threads/{a}/runs/{}", first["run_id"].as_str().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while call("GET", get_first.clone(), Value::Null).await["status"] != "running" {
            assert!(std::time::Instant::now() < deadline, "{backend:?}: the first run never ran");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let echo = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}});
        let second = call("POST", format!("/threads/{b}/runs"), echo).await;
        assert_eq!(second["status"], "pending", "{backend:?}: no place, so it waits: {second}");
        // Freeing the place starts the waiting run; joining it answers with its reply.
        let cancel =
            format!("/threads/{a}/runs/{}/cancel?wait=1", first["run_id"].as_str().unwrap());
        call("POST", cancel, json!({})).await;
        let join = format!("/threads/{b}/runs/{}/join", second["run_id"].as_str().unwrap());
        let values = call("GET", join, Value::Null).await;
        assert_eq!(values["messages"][1]["content"], "echo: hi", "{backend:?}: {values}");
    }
}

/// A request that creates a run, polled by hand (as a server drives a handler) only until its
/// run is in the store: the request, and its answer if it came that soon.
struct RunRequestInFlight {
    owner: ids::UserId,
    thread: ThreadId,
    request: std::pin::Pin<Box<tower::util::Oneshot<axum::Router, Request<Body>>>>,
    answered: Option<axum::response::Response>,
}

async fn post_run_until_stored(
    db: &store::testing::TestDb,
    state: &api::AppState,
    body: Value,
) -> RunRequestInFlight {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let created = call(state, Method::POST, "/threads".into(), json!({})).await;
    let thread: ThreadId = created["thread_id"].as_str().unwrap().parse().unwrap();
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let request = Request::post(format!("/threads/{thread}/runs"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let mut request = Box::pin(tower::ServiceExt::oneshot(api::app(state.clone()), request));
    let mut cx = Context::from_waker(Waker::noop());
    let mut answered = None;
    while db.store.list_runs(owner, thread, 10, 0, None).await.unwrap().is_empty() {
        if let Poll::Ready(response) = request.as_mut().poll(&mut cx) {
            answered = Some(response.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    RunRequestInFlight { owner, thread, request, answered }
}

/// A create request whose future is dropped (the client hung up) after the store committed
/// its run claimed still has the run executed (it is created in a task of its own): no run is
/// left `running` with no executor, and no thread `busy`, until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_request_dropped_after_its_commit_still_runs_its_run() {
    let mut failures = Vec::new();
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let config = engine::ExecutorConfig::default();
        let Some((db, state)) = app_with_executor(backend, config).await else { continue };
        // Driven until the run is in the store, then dropped (as hyper does when the client's
        // connection closes).
        let RunRequestInFlight { owner, thread, request, .. } =
            post_run_until_stored(&db, &state, hi("hello")).await;
        drop(request);
        // The run must still execute and end: wait for it (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let runs = db.store.list_runs(owner, thread, 10, 0, None).await.unwrap();
            let t_status = db.store.get_thread(owner, thread).await.unwrap().status;
            if runs[0].status == store::RunStatus::Success {
                assert_eq!(t_status, store::ThreadStatus::Idle, "{backend:?}");
                break;
            }
            if std::time::Instant::now() > deadline {
                failures.push(format!(
                    "{backend:?}: run left {:?}, thread {t_status:?}",
                    runs[0].status
                ));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// `interrupt` reaches a run claimed as created even before its request hands it to the
/// executor: the run is registered when its place is reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_reaches_a_run_claimed_as_created_before_it_is_handed_over() {
    let mut failures = Vec::new();
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let config = engine::ExecutorConfig::default();
        let Some((db, state)) = app_with_executor(backend, config).await else { continue };
        let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
        let RunRequestInFlight { owner, thread, request: first, answered } =
            post_run_until_stored(&db, &state, slow).await;
        // The interrupting run arrives now.
        let mut interrupting = hi("interrupting");
        interrupting["multitask_strategy"] = json!("interrupt");
        let second =
            call(&state, Method::POST, format!("/threads/{thread}/runs"), interrupting).await;
        // The first request completes (the run is handed to the executor).
        let first = match answered {
            Some(response) => response,
            None => first.await.unwrap(),
        };
        let bytes = http_body_util::BodyExt::collect(first.into_body()).await.unwrap().to_bytes();
        let first: Value = serde_json::from_slice(&bytes).unwrap();
        let run = |id: &Value| {
            let id = id.as_str().unwrap().to_owned();
            let (store, thread) = (db.store.clone(), thread);
            async move { store.get_run(owner, thread, id.parse().unwrap()).await.unwrap().status }
        };
        // The endless first run must end interrupted, and the second then run: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (a, b) = (run(&first["run_id"]).await, run(&second["run_id"]).await);
            if a == store::RunStatus::Interrupted && b == store::RunStatus::Success {
                break;
            }
            if std::time::Instant::now() > deadline {
                failures.push(format!(
                    "{backend:?}: interrupted run is {a:?}, interrupting run is {b:?}"
                ));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Clean up the endless run.
        let cancel =
            format!("/threads/{thread}/runs/{}/cancel?wait=1", first["run_id"].as_str().unwrap());
        call(&state, Method::POST, cancel, json!({})).await;
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// The window the previous test cannot force: a run whose place is reserved but which is not
/// yet created, let alone handed over, is already registered, so another run's `interrupt`
/// (`cancel_thread`) reaches it and it ends `interrupted` once it runs.
#[tokio::test]
async fn a_reserved_run_is_registered_before_it_is_created() {
    use domain::CancelAction;
    use engine::first_step;
    let config = engine::ExecutorConfig::default();
    let (db, state) = app_with_executor(store::Backend::Sqlite, config).await.unwrap();
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let thread = ThreadId::new();
    db.store.get_or_create_thread(owner, thread, &store::Metadata::new()).await.unwrap();
    let kwargs = json!({"graph_id": "synthetic"});
    let input = json!({"n": 100000, "delay_ms": 5, "messages": [{"role": "user", "content": "x"}]});
    let new_run = store::NewRun {
        assistant_id: ids::AssistantId::for_graph("synthetic"),
        input: Some(input.clone()),
        kwargs: kwargs.clone(),
        ..store::testing::new_run(thread)
    };
    let place =
        state.engine.executor().try_reserve(new_run.run_id, thread, owner).expect("a free place");
    // Another run's `interrupt` arrives between the reservation and the creation.
    state.engine.executor().cancel_thread(thread, ids::RunId::new(), CancelAction::Interrupt);
    let first = first_step(new_run.run_id, new_run.assistant_id, &kwargs, Some(&input)).unwrap();
    let (run, _, step) = db
        .store
        .create_run_claiming(owner, &new_run, store::IfNotExists::Reject, first)
        .await
        .unwrap();
    assert_eq!(run.status, store::RunStatus::Running);
    let started = step.and_then(|s| s.checkpoint).map(|c| c.values);
    let mut end = state.engine.executor().watch_end(run.run_id);
    state.engine.executor().spawn_claimed(run.clone(), place, started);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), end.ended()).await;
    let ended = ended.expect("the run ended").expect("its end was announced");
    assert_eq!(ended.status, Some(store::RunStatus::Interrupted));
}

/// The claim's window: a run the claim has taken but not registered yet when a newer run's
/// `interrupt` or `rollback` comes (`cancel_thread`) is cancelled as it registers (found by
/// the SDK suite's `race_resume_then_input_rollback` on a loaded machine: the resume, claimed
/// but unregistered, ran to its end).
#[tokio::test]
async fn a_run_registered_after_a_newer_runs_interrupt_stops() {
    use domain::CancelAction;
    use engine::first_step;
    let config = engine::ExecutorConfig::default();
    let (db, state) = app_with_executor(store::Backend::Sqlite, config).await.unwrap();
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let thread = ThreadId::new();
    db.store.get_or_create_thread(owner, thread, &store::Metadata::new()).await.unwrap();
    let kwargs = json!({"graph_id": "synthetic"});
    let input = json!({"n": 100000, "delay_ms": 5, "messages": [{"role": "user", "content": "x"}]});
    let new_run = store::NewRun {
        assistant_id: ids::AssistantId::for_graph("synthetic"),
        input: Some(input.clone()),
        kwargs: kwargs.clone(),
        ..store::testing::new_run(thread)
    };
    let executor = state.engine.executor();
    // A newer run's `interrupt` arrives before the older run is registered...
    executor.cancel_thread(thread, ids::RunId::new(), CancelAction::Interrupt);
    // ... which it is only now (as the claim loop registers what it claimed).
    let place = executor.try_reserve(new_run.run_id, thread, owner).expect("a free place");
    let first = first_step(new_run.run_id, new_run.assistant_id, &kwargs, Some(&input)).unwrap();
    let (run, _, step) = db
        .store
        .create_run_claiming(owner, &new_run, store::IfNotExists::Reject, first)
        .await
        .unwrap();
    let started = step.and_then(|s| s.checkpoint).map(|c| c.values);
    let mut end = executor.watch_end(run.run_id);
    executor.spawn_claimed(run.clone(), place, started);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), end.ended()).await;
    let ended = ended.expect("the run ended").expect("its end was announced");
    assert_eq!(ended.status, Some(store::RunStatus::Interrupted));
}

/// One user's runs cannot take every place: past `per_user` they wait their turn, while
/// another user's run starts at once (finding 8 of #12: 64 sleeping runs of one user made
/// another user's `echo` wait for the whole run timeout).
#[tokio::test]
async fn one_user_cannot_take_every_place() {
    use api::auth::{self, Auth, AuthMode, JwtConfig};
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let Some(db) = store::testing::TestDb::new(backend).await else { continue };
        let auth = Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap();
        let config = engine::ExecutorConfig { concurrency: 4, per_user: 2, ..Default::default() };
        let engine = engine::Engine::new(db.store.clone(), config).await.unwrap();
        let state = api::AppState::new(engine, auth, api::HttpConfig::default());
        state.start(std::future::pending()).await.unwrap();
        let mut keys = Vec::new();
        for user in ["mallory", "alice"] {
            let key = auth::generate_key().unwrap();
            db.store
                .create_api_key(user, &auth::hash_key(&key), &auth::key_prefix(&key))
                .await
                .unwrap();
            keys.push(key);
        }
        let call = |key: &str, method: Method, uri: String, body: Value| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let app = api::app(state.clone());
            async move {
                let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
                let bytes = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)
            }
        };
        let (mallory, alice) = (keys[0].as_str(), keys[1].as_str());
        let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
        let mut hers = Vec::new();
        for _ in 0..4 {
            let t = call(mallory, Method::POST, "/threads".into(), json!({})).await;
            let t = t["thread_id"].as_str().unwrap().to_owned();
            let run = call(mallory, Method::POST, format!("/threads/{t}/runs"), slow.clone()).await;
            hers.push((t, run["run_id"].as_str().unwrap().to_owned()));
        }
        // Her first two run (at once, or once claimed if the claim loop held the places at that
        // moment); the others wait.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut statuses = Vec::new();
            for (t, run) in &hers {
                let got =
                    call(mallory, Method::GET, format!("/threads/{t}/runs/{run}"), Value::Null)
                        .await;
                statuses.push(got["status"].as_str().unwrap().to_owned());
            }
            if statuses == ["running", "running", "pending", "pending"] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{backend:?}: {statuses:?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Two places are free, but not for her: Alice's run takes one at once.
        let echo = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}});
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            call(alice, Method::POST, "/runs/wait".into(), echo),
        )
        .await
        .expect("alice's run does not wait for mallory's");
        assert_eq!(answer["messages"][1]["content"], "echo: hi", "{backend:?}: {answer}");
        // One of hers ends: her oldest waiting run takes its place.
        let (t, run) = &hers[0];
        call(mallory, Method::POST, format!("/threads/{t}/runs/{run}/cancel?wait=1"), json!({}))
            .await;
        let (t, run) = &hers[2];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while call(mallory, Method::GET, format!("/threads/{t}/runs/{run}"), Value::Null).await["status"]
            != "running"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: her next run never started"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (t, run) = &hers[3];
        let fourth =
            call(mallory, Method::GET, format!("/threads/{t}/runs/{run}"), Value::Null).await;
        assert_eq!(fourth["status"], "pending", "{backend:?}: still at her limit");
        for (t, run) in &hers[1..] {
            call(
                mallory,
                Method::POST,
                format!("/threads/{t}/runs/{run}/cancel?wait=1"),
                json!({}),
            )
            .await;
        }
    }
}
