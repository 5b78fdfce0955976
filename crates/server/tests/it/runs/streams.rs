//! Streaming runs: event ids and order, lossless resume at every cut point, thread streams,
//! disconnects, and streams that end with their run.

use super::*;

store::on_both_backends!(TestApp =>
    streams_have_increasing_ids_metadata_first_and_end_last,
    joining_at_every_cut_point_resumes_without_loss_or_duplicates,
    a_thread_stream_follows_every_run_of_the_thread,
    a_stream_with_on_disconnect_cancel_cancels_its_run_when_the_client_leaves,
    a_queued_run_replaced_by_interrupt_ends_its_streams_at_once,
    finished_and_refused_streams_leave_no_channel_behind,
);

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

async fn a_thread_stream_follows_every_run_of_the_thread(app: &TestApp) {
    use http_body_util::BodyExt;
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let request =
        Request::get(format!("/threads/{t}/stream?stream_mode=values&stream_mode=updates"))
            .header("x-api-key", key.as_str())
            .body(Body::empty())
            .unwrap();
    let response =
        tower::ServiceExt::oneshot(harness::app(app.state.clone()), request).await.unwrap();
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
    let response =
        tower::ServiceExt::oneshot(harness::app(app.state.clone()), request).await.unwrap();
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
            tower::ServiceExt::oneshot(harness::app(app.state.clone()), request).await.unwrap();
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
    let none_left = async || (app.state.engine.hub().channels() == 0).then_some(());
    harness::eventually("no hub channel is left", harness::BOUND, none_left).await;
}
