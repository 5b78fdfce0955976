//! Resume with `after_seq` (random cut points, across a restart, its bounds), user
//! subscriptions, and subscriptions of a deleted thread.

use super::*;

store::on_each_backend!(
    resume_at_random_points,
    resume_across_restart,
    user_subscription_and_cancel,
    deleted_thread_ends_subscriptions,
    after_seq_bounds,
);

/// A long run watched through random disconnects: each reconnection resumes with the last
/// seq seen; across all of them every event arrives exactly once, in order. Then replays from
/// random cut points of the finished log.
async fn resume_at_random_points(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let (_, thread) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = thread["thread_id"].as_str().unwrap().to_owned();
    let mut rng = Lcg(7);

    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let input = json!({"messages": [{"role": "human", "content": "go"}], "n": 300, "mode": "tokens", "delay_ms": 1});
    c.send(
        json!({"type": "run", "thread_id": thread, "assistant_id": "synthetic", "input": input}),
    )
    .await;
    c.expect("subscribed").await;
    let run = c.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    let mut seen: Vec<Value> = Vec::new();
    let mut reconnects = 0;
    'outer: loop {
        let take = 1 + rng.below(120);
        for _ in 0..take {
            let frame = c.frame().await;
            assert_eq!(frame["type"], "event", "{frame}");
            let done = frame["run_id"] == run.as_str() && is_terminal(&frame);
            seen.push(frame);
            if done {
                break 'outer;
            }
        }
        drop(c);
        reconnects += 1;
        c = Client::connect(&server, Auth2::Header(&key)).await;
        c.welcome().await;
        let after = seen.last().map_or(0, |e| e["seq"].as_i64().unwrap());
        c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
        c.expect("subscribed").await;
    }
    assert!(reconnects >= 2, "the run outlasted several disconnects ({reconnects})");
    let got = seqs(&seen);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "exactly once, in order");
    let tokens: usize = seen.iter().filter(|e| e["kind"] == "message_delta").count();
    assert!(tokens > 0);

    // Replays of the finished log from random points end exactly at the last event.
    let last = *got.last().unwrap();
    for _ in 0..5 {
        let cut = rng.below(last as u64) as i64;
        c.send(json!({"type": "unsubscribe", "thread_id": thread})).await;
        c.expect("unsubscribed").await;
        c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": cut})).await;
        c.expect("subscribed").await;
        let mut replay = Vec::new();
        while replay.len() < (last - cut) as usize {
            replay.push(c.frame().await);
        }
        assert_eq!(seqs(&replay), (cut + 1..=last).collect::<Vec<_>>());
        assert_eq!(replay, seen[cut as usize..].to_vec(), "the same events, byte for byte");
        c.send(json!({"type": "ping"})).await;
        c.expect("pong").await;
    }
    server.stop().await;
}

/// A graceful shutdown closes connections with 1001; a run cut by the restart ends `error`
/// on the next server, and a client resuming there gets every event exactly once.
async fn resume_across_restart(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let input = json!({"messages": [{"role": "human", "content": "go"}], "n": 100000, "mode": "custom", "delay_ms": 5});
    c.send(json!({"type": "run", "assistant_id": "synthetic", "input": input})).await;
    c.expect("subscribed").await;
    let run = c.expect("run").await["run"].clone();
    let thread = run["thread_id"].as_str().unwrap().to_owned();
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = c.frame().await;
        seen.push(frame);
    }
    server.stop().await;
    // The rest of what was queued, then 1001.
    loop {
        match c.message().await {
            Some(Message::Text(t)) => seen.push(serde_json::from_str(&t).unwrap()),
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                break;
            }
            Some(_) => {}
            None => panic!("closed without 1001"),
        }
    }

    // A new server on the same database (a new store handle, hub and executor).
    let options = StoreOptions { max_connections: 4, migrate: true };
    let store = Store::open(&db.url, &options).await.unwrap();
    let server = SocketApp::start(store, AuthMode::Keys, fast()).await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let after = seen.last().unwrap()["seq"].as_i64().unwrap();
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
    c.expect("subscribed").await;
    let rest = c.events_until_end(&run_id).await;
    let last = rest.last().unwrap();
    assert_eq!(last["kind"], "run_error", "{last}");
    assert_eq!(last["data"]["error"], "ServerRestarted");
    seen.extend(rest);
    let got = seqs(&seen);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "exactly once across the restart");
    let (_, run) =
        server.http(&key, "GET", &format!("/threads/{thread}/runs/{run_id}"), None).await;
    assert_eq!(run["status"], "error");
    let (_, t) = server.http(&key, "GET", &format!("/threads/{thread}"), None).await;
    assert_ne!(t["status"], "busy");
    server.stop().await;
}

/// `after_seq` beyond the thread's last seq (up to i64::MAX) is refused, and the connection
/// stays usable.
async fn after_seq_bounds(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    for after in [i64::MAX, i64::MAX - 1, 1] {
        c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
        let reply = c.expect("error").await;
        assert_eq!(reply["code"], "invalid_message", "{reply}");
        assert!(reply["detail"].as_str().unwrap().contains("after_seq"), "{reply}");
    }
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": 0})).await;
    assert_eq!(c.expect("subscribed").await["from_seq"], 1);
    server.stop().await;
}

/// `subscribe_user` follows threads created after it; a thread also subscribed by itself is
/// delivered once; `cancel` stops a run.
async fn user_subscription_and_cancel(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    c.send(json!({"type": "subscribe_user", "ref": 1})).await;
    let subscribed = c.expect("subscribed").await;
    assert_eq!(subscribed["thread_id"], Value::Null);
    // A thread created afterwards, by HTTP.
    let (_, thread) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = thread["thread_id"].as_str().unwrap().to_owned();
    let body = json!({"assistant_id": "echo", "input": hi("one")});
    let (_, run) = server.http(&key, "POST", &format!("/threads/{thread}/runs"), Some(body)).await;
    let events = c.events_until_end(run["run_id"].as_str().unwrap()).await;
    let got = seqs(&events);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>());
    // Also subscribed to the thread itself: still once each.
    c.send(json!({"type": "run", "thread_id": thread, "assistant_id": "echo", "input": hi("two")}))
        .await;
    c.expect("subscribed").await;
    let run = c.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    let events = c.events_until_end(&run).await;
    let more = seqs(&events);
    assert_eq!(
        more,
        (got.len() as i64 + 1..=got.len() as i64 + more.len() as i64).collect::<Vec<_>>()
    );

    // Cancel a slow run from the socket.
    let input = json!({"messages": [{"role": "human", "content": "go"}], "n": 100000, "mode": "custom", "delay_ms": 5});
    c.send(
        json!({"type": "run", "thread_id": thread, "assistant_id": "synthetic", "input": input}),
    )
    .await;
    let run = c.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    c.send(json!({"type": "cancel", "thread_id": thread, "run_id": run, "ref": "c"})).await;
    loop {
        let frame = c.frame().await;
        if frame["type"] == "run" {
            assert_eq!(frame["ref"], "c");
            break;
        }
    }
    let events = c.events_until_end(&run).await;
    assert_eq!(events.last().unwrap()["kind"], "run_cancelled");
    let (_, r) = server.http(&key, "GET", &format!("/threads/{thread}/runs/{run}"), None).await;
    assert_eq!(r["status"], "interrupted");
    server.stop().await;
}

/// Issue #12, finding 2: Alice's live subscriptions to a thread (WebSocket `subscribe` and
/// `subscribe_user`, SSE join, a run's SSE stream) end when she deletes it, each with a final
/// frame that says so; Bob then creates a thread with the same id and runs on it, and none
/// of his events reaches Alice.
async fn deleted_thread_ends_subscriptions(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let alice = server.key("alice").await;
    let bob = server.key("bob").await;
    let thread = ids::ThreadId::new().to_string();
    let (status, _) =
        server.http(&alice, "POST", "/threads", Some(json!({"thread_id": thread}))).await;
    assert_eq!(status, 200);

    let mut ws = Client::connect(&server, Auth2::Header(&alice)).await;
    ws.welcome().await;
    ws.send(json!({"type": "subscribe", "thread_id": thread})).await;
    ws.expect("subscribed").await;
    let mut user = Client::connect(&server, Auth2::Header(&alice)).await;
    user.welcome().await;
    user.send(json!({"type": "subscribe_user"})).await;
    user.expect("subscribed").await;
    let body = json!({"assistant_id": "echo", "input": hi("alice's secret")});
    let (status, _) =
        server.http(&alice, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    for c in [&mut ws, &mut user] {
        while !is_terminal(&c.expect("event").await) {}
    }
    // The join replays from the start: once a frame came, it follows live.
    let mut join = SseClient::open(
        &server,
        &alice,
        "GET",
        &format!("/threads/{thread}/stream"),
        None,
        Some("-1"),
    )
    .await;
    assert_eq!(join.frame().await.unwrap().event, "values");
    // A long run streamed over SSE, deleted with its thread while it runs.
    let slow = json!({"assistant_id": "synthetic", "input": {"n": 10000, "delay_ms": 20}, "stream_mode": ["custom"]});
    let mut run_stream = SseClient::open(
        &server,
        &alice,
        "POST",
        &format!("/threads/{thread}/runs/stream"),
        Some(slow),
        None,
    )
    .await;
    assert_eq!(run_stream.frame().await.unwrap().event, "metadata");
    assert_eq!(run_stream.frame().await.unwrap().event, "custom");

    let (status, _) = server.http(&alice, "DELETE", &format!("/threads/{thread}"), None).await;
    assert_eq!(status, 204);

    // Each subscription ends with a frame that says why.
    let deleted = |frame: &Value| frame["type"] == "event" && frame["thread_id"] == thread.as_str();
    loop {
        let frame = ws.frame().await;
        if frame["type"] == "thread_deleted" {
            assert_eq!(frame["thread_id"], thread.as_str());
            break;
        }
        assert!(deleted(&frame), "{frame}");
    }
    loop {
        let frame = user.frame().await;
        if frame["type"] == "thread_deleted" {
            assert_eq!(frame["thread_id"], thread.as_str());
            break;
        }
        assert!(deleted(&frame), "{frame}");
    }
    for stream in [&mut join, &mut run_stream] {
        let rest = stream.rest().await;
        let last = rest.last().expect("a final frame");
        assert_eq!(last.event, "error", "{rest:?}");
        assert_eq!(last.data["error"], "ThreadDeleted", "{rest:?}");
    }

    // Bob takes the id and runs on it, watched by his own socket.
    let (status, t) =
        server.http(&bob, "POST", "/threads", Some(json!({"thread_id": thread}))).await;
    assert_eq!(status, 200, "{t}");
    let mut bob_ws = Client::connect(&server, Auth2::Header(&bob)).await;
    bob_ws.welcome().await;
    bob_ws.send(json!({"type": "subscribe", "thread_id": thread})).await;
    bob_ws.expect("subscribed").await;
    let body = json!({"assistant_id": "echo", "input": hi("bob's secret")});
    let (status, run) =
        server.http(&bob, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200, "{run}");
    let bobs = bob_ws.events_until_end_any().await;
    assert_eq!(bobs[0]["seq"], 1, "the new thread's seq starts again");

    // Nothing of Bob's reached Alice.
    until_pong(&mut ws, |_| false).await;
    until_pong(&mut user, |_| false).await;
    // And Alice cannot follow Bob's thread again.
    ws.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": 0})).await;
    assert_eq!(ws.frame().await["code"], "not_found");
    server.stop().await;
}
