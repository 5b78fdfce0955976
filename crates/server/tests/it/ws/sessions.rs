//! WebSocket sessions: the browser's path, authentication, errors that keep the connection,
//! isolation between users, and credentials that lapse.

use super::*;

store::on_each_backend!(
    browser_flow,
    authentication,
    errors_keep_the_connection,
    isolation,
    foreign_events_are_not_delivered,
    revoked_key_closes_the_socket,
    jwt_socket_closes_at_exp,
);

/// The browser's path: subprotocol credential, a run on a new thread watched live, a drop, a
/// reconnect authenticated by the first frame, resume with `after_seq`, then live again.
async fn browser_flow(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;

    let mut c = Client::connect(&server, Auth2::Protocol(&key)).await;
    let welcome = c.welcome().await;
    assert!(welcome["connection_id"].as_str().unwrap().parse::<ids::ConnectionId>().is_ok());
    c.send(json!({"type": "run", "assistant_id": "echo", "input": hi("hello there"), "ref": 7}))
        .await;
    let subscribed = c.expect("subscribed").await;
    assert_eq!(subscribed["from_seq"], 1);
    assert_eq!(subscribed["ref"], 7);
    let run = c.expect("run").await;
    assert_eq!(run["ref"], 7);
    let thread = run["run"]["thread_id"].as_str().unwrap().to_owned();
    let run_id = run["run"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(subscribed["thread_id"], thread.as_str());
    let events = c.events_until_end(&run_id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in
        ["agent_started", "agent_thinking", "message_delta", "message_completed", "agent_completed"]
    {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let got = seqs(&events);
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "gapless from 1");
    let text: String = events
        .iter()
        .filter(|e| e["kind"] == "message_delta")
        .map(|e| e["data"]["delta"].as_str().or(e["data"]["content"].as_str()).unwrap_or(""))
        .collect();
    assert!(text.contains("echo") || !text.is_empty(), "deltas carry text: {events:?}");
    let last = *got.last().unwrap();
    drop(c);

    // While disconnected, another run on the thread.
    let (status, _) = server
        .http(
            &key,
            "POST",
            &format!("/threads/{thread}/runs/wait"),
            Some(json!({"assistant_id": "echo", "input": hi("second")})),
        )
        .await;
    assert_eq!(status, 200);

    // Reconnect, authenticated by the first frame, and resume.
    let mut c = Client::connect(&server, Auth2::None).await;
    c.send(json!({"type": "auth", "token": key})).await;
    c.welcome().await;
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": last})).await;
    let subscribed = c.expect("subscribed").await;
    assert_eq!(subscribed["from_seq"], last + 1);
    assert_eq!(subscribed["recovered"], true);
    let mut missed = Vec::new();
    while missed.last().is_none_or(|e: &Value| !is_terminal(e)) {
        let frame = c.frame().await;
        assert_eq!(frame["type"], "event", "{frame}");
        missed.push(frame);
    }
    assert_eq!(seqs(&missed), (last + 1..=last + missed.len() as i64).collect::<Vec<_>>());
    let last = *seqs(&missed).last().unwrap();

    // Live again: a third run, started on the socket on the subscribed thread.
    c.send(
        json!({"type": "run", "thread_id": thread, "assistant_id": "echo", "input": hi("third")}),
    )
    .await;
    let run = c.expect("run").await;
    let run_id = run["run"]["run_id"].as_str().unwrap().to_owned();
    let live = c.events_until_end(&run_id).await;
    assert_eq!(seqs(&live)[0], last + 1, "no gap, no duplicate at the switch");
    let state = server.http(&key, "GET", &format!("/threads/{thread}/state"), None).await.1;
    assert_eq!(state["values"]["messages"].as_array().unwrap().len(), 6);
    server.stop().await;
}

/// Credentials: headers and subprotocol checked before the upgrade (401), the first frame
/// within its deadline (4001 otherwise); a plain GET is a JSON 400.
async fn authentication(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let key = server.key("alice").await;

    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    match Client::try_connect(&server, Auth2::Header("spindle_nope")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    match Client::try_connect(&server, Auth2::Protocol("spindle_nope")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    // Nothing sent: closed when the deadline passes.
    let mut c = Client::connect(&server, Auth2::None).await;
    let error = c.expect("error").await;
    assert_eq!(error["code"], "unauthenticated");
    assert_eq!(c.close_code().await, 4001);
    // A wrong token in the first frame.
    let mut c = Client::connect(&server, Auth2::None).await;
    c.send(json!({"type": "auth", "token": "spindle_wrong"})).await;
    let error = c.expect("error").await;
    assert!(error["detail"].as_str().unwrap().contains("API key"), "{error}");
    assert_eq!(c.close_code().await, 4001);
    // Something else first.
    let mut c = Client::connect(&server, Auth2::None).await;
    c.send(json!({"type": "subscribe", "thread_id": ids::ThreadId::new()})).await;
    assert_eq!(c.expect("error").await["code"], "unauthenticated");
    assert_eq!(c.close_code().await, 4001);
    // Not an upgrade at all.
    let (status, body) = server.http(&key, "GET", "/ws", None).await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("WebSocket"), "{body}");
    assert!(body["request_id"].is_string());
    server.stop().await;
}

/// Bad frames get an error frame naming what was expected, with the ref and a request id;
/// the connection stays usable. Abuse closes it.
async fn errors_keep_the_connection(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let config = WsConfig { max_message: 1024, ..fast() };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, config).await;
    let alice = server.key("alice").await;
    let bob = server.key("bob").await;
    let (_, thread) = server.http(&bob, "POST", "/threads", Some(json!({}))).await;
    let bobs = thread["thread_id"].as_str().unwrap().to_owned();

    let mut c = Client::connect(&server, Auth2::Header(&alice)).await;
    c.welcome().await;
    let cases: Vec<(Message, &str, &str)> = vec![
        (Message::text("{not json"), "invalid_json", "not JSON"),
        (Message::text("[1, 2]"), "invalid_message", "type"),
        (Message::text(r#"{"type": "dance", "ref": "r1"}"#), "unknown_type", "subscribe"),
        (
            Message::text(r#"{"type": "subscribe", "thread_id": "abc", "ref": 3}"#),
            "invalid_id",
            "thread_id",
        ),
        (
            Message::text(r#"{"type": "subscribe", "thread_id": 12}"#),
            "invalid_message",
            "thread_id",
        ),
        (Message::text(r#"{"type": "subscribe"}"#), "invalid_message", "thread_id"),
        (
            Message::text(format!(
                r#"{{"type": "subscribe", "thread_id": "{bobs}", "after_seq": -1}}"#
            )),
            "invalid_message",
            "after_seq",
        ),
        (
            Message::text(format!(r#"{{"type": "subscribe", "thread_id": "{bobs}"}}"#)),
            "not_found",
            "not found",
        ),
        (
            Message::text(format!(
                r#"{{"type": "run", "thread_id": "{bobs}", "assistant_id": "echo"}}"#
            )),
            "not_found",
            "not found",
        ),
        (Message::text(r#"{"type": "run", "assistant_id": "nope"}"#), "not_found", "nope"),
        (Message::text(r#"{"type": "run"}"#), "missing_field", "assistant_id"),
        (
            Message::text(r#"{"type": "run", "assistant_id": "echo", "webhook": "http://x"}"#),
            "unsupported",
            "webhook",
        ),
        (
            Message::text(format!(
                r#"{{"type": "cancel", "thread_id": "{bobs}", "run_id": "{}"}}"#,
                ids::RunId::new()
            )),
            "not_found",
            "not found",
        ),
        (Message::binary(vec![1, 2, 3]), "unsupported_frame", "JSON text"),
        (
            Message::text(format!(r#"{{"type": "ping", "pad": "{}"}}"#, "x".repeat(2000))),
            "too_large",
            "1024",
        ),
        (
            Message::text(r#"{"type": "auth", "token": "x"}"#),
            "already_authenticated",
            "authenticated",
        ),
    ];
    for (message, code, detail) in cases {
        let shown = format!("{message:?}");
        c.ws.send(message).await.unwrap();
        let error = c.expect("error").await;
        assert_eq!(error["code"], code, "{shown}: {error}");
        assert!(error["detail"].as_str().unwrap().contains(detail), "{shown}: {error}");
        assert!(error["request_id"].as_str().unwrap().parse::<ids::RequestId>().is_ok());
    }
    // A foreign thread looks exactly like a missing one.
    let missing = ids::ThreadId::new().to_string();
    let mut details = Vec::new();
    for thread in [&bobs, &missing] {
        c.send(json!({"type": "subscribe", "thread_id": thread, "ref": "x"})).await;
        let error = c.expect("error").await;
        assert_eq!(error["ref"], "x");
        details.push(error["detail"].as_str().unwrap().replace(thread.as_str(), "ID"));
    }
    assert_eq!(details[0], details[1]);
    c.send(json!({"type": "ping", "ref": {"n": 1}})).await;
    assert_eq!(c.expect("pong").await["ref"], json!({"n": 1}));
    // Nothing of bob's changed.
    let (_, runs) = server.http(&bob, "GET", &format!("/threads/{bobs}/runs"), None).await;
    assert_eq!(runs, json!([]));

    // A frame over the hard cap closes with 1009.
    let big = "x".repeat(server.state.ws.config.hard_limit() + 10);
    c.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(c.close_code().await, 1009);

    // Fifty errors in a row close with 1008.
    let mut c = Client::connect(&server, Auth2::Header(&alice)).await;
    c.welcome().await;
    for _ in 0..50 {
        c.ws.send(Message::text("nope")).await.unwrap();
    }
    assert_eq!(c.close_code().await, 1008);
    server.stop().await;
}

/// Many users subscribe at random to their own and others' threads and follow themselves:
/// nobody ever receives an event of another user's thread.
async fn isolation(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let mut rng = Lcg(42);
    let mut users = Vec::new();
    for name in ["u0", "u1", "u2", "u3"] {
        let key = server.key(name).await;
        let mut threads = Vec::new();
        for _ in 0..3 {
            let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
            threads.push(t["thread_id"].as_str().unwrap().to_owned());
        }
        users.push((key, threads));
    }
    let all: Vec<String> = users.iter().flat_map(|(_, t)| t.clone()).collect();
    let mut clients = Vec::new();
    for (key, own) in &users {
        let mut c = Client::connect(&server, Auth2::Header(key)).await;
        c.welcome().await;
        c.send(json!({"type": "subscribe_user"})).await;
        c.expect("subscribed").await;
        for _ in 0..8 {
            let thread = &all[rng.below(all.len() as u64) as usize];
            c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": 0})).await;
            let reply = c.frame().await;
            if own.contains(thread) {
                assert_eq!(reply["type"], "subscribed", "{reply}");
            } else {
                assert_eq!(reply["code"], "not_found", "{reply}");
            }
        }
        clients.push(c);
    }
    // Every thread gets a run; each user then waits for the ends of their own runs.
    let mut runs = Vec::new();
    for (key, own) in &users {
        let mut mine = Vec::new();
        for thread in own {
            let body = json!({"assistant_id": "echo", "input": hi("secret")});
            let (status, run) =
                server.http(key, "POST", &format!("/threads/{thread}/runs"), Some(body)).await;
            assert_eq!(status, 200, "{run}");
            mine.push(run["run_id"].as_str().unwrap().to_owned());
        }
        runs.push(mine);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let own = &users[i].1;
        let mut ended = 0;
        while ended < runs[i].len() {
            let frame = c.frame().await;
            if frame["type"] != "event" {
                continue;
            }
            assert!(
                own.contains(&frame["thread_id"].as_str().unwrap().to_owned()),
                "user {i} got {frame}"
            );
            if is_terminal(&frame) {
                ended += 1;
            }
        }
        // Nothing else is on its way: a ping's pong comes next.
        c.send(json!({"type": "ping"})).await;
        loop {
            let frame = c.frame().await;
            if frame["type"] == "pong" {
                break;
            }
            assert!(
                own.contains(&frame["thread_id"].as_str().unwrap_or("").to_owned()),
                "user {i} got {frame}"
            );
        }
    }
    server.stop().await;
}

/// Issue #12, finding 2 (defence in depth): an event published to the hub for another owner
/// of the thread id is not delivered to the subscriber, on WebSocket or SSE.
async fn foreign_events_are_not_delivered(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, fast()).await;
    let alice = server.key("alice").await;
    server.key("bob").await;
    let bob_id = server.store.ensure_user("bob").await.unwrap().user_id;
    let (_, t) = server.http(&alice, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let thread_id: ids::ThreadId = thread.parse().unwrap();
    let body = json!({"assistant_id": "echo", "input": hi("one")});
    let (status, _) =
        server.http(&alice, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    let mut ws = Client::connect(&server, Auth2::Header(&alice)).await;
    ws.welcome().await;
    ws.send(json!({"type": "subscribe", "thread_id": thread})).await;
    let last = ws.expect("subscribed").await["from_seq"].as_i64().unwrap() - 1;
    let mut user = Client::connect(&server, Auth2::Header(&alice)).await;
    user.welcome().await;
    user.send(json!({"type": "subscribe_user"})).await;
    user.expect("subscribed").await;
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

    // Bob's event, for the same thread id, straight to the hub.
    let forged = store::Event {
        thread_id,
        seq: last + 1,
        run_id: None,
        kind: store::EventKind::Values,
        data: json!({"messages": [], "forged": true}),
        created_at: chrono::Utc::now(),
    };
    server.state.engine.hub().publish(bob_id, std::slice::from_ref(&forged));
    server.state.engine.hub().publish(bob_id, &[store::Event { seq: 1, ..forged }]);

    let body = json!({"assistant_id": "echo", "input": hi("two")});
    let (status, _) =
        server.http(&alice, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    let events = ws.events_until_end_any().await;
    assert_eq!(events[0]["seq"], last + 1, "{events:?}");
    assert!(events.iter().all(|e| e["data"].get("forged").is_none()), "{events:?}");
    until_pong(&mut ws, |_| false).await;
    until_pong(&mut user, |f| f["type"] == "event" && f["data"].get("forged").is_none()).await;
    loop {
        let frame = join.frame().await.unwrap();
        assert!(frame.data.get("forged").is_none(), "{frame:?}");
        if frame.data["messages"].as_array().is_some_and(|m| m.len() == 4) {
            break;
        }
    }
    drop(join);
    server.stop().await;
}

/// Issue #12, finding 6: a socket whose API key is revoked is refused its next command
/// (`unauthenticated`) and closed with 4001; its subscriptions go with it.
async fn revoked_key_closes_the_socket(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let auth =
        Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap().with_key_recheck(Duration::ZERO);
    let server = SocketApp::start_with(db.store.clone(), auth, fast()).await;
    let key = server.key("alice").await;
    let other = server.key("bob").await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    let mut b = Client::connect(&server, Auth2::Header(&other)).await;
    b.welcome().await;
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    let keys = server.store.list_api_keys().await.unwrap();
    let alices = keys.iter().find(|k| key.starts_with(&k.prefix)).unwrap();
    server.store.revoke_api_key(alices.key_id).await.unwrap();
    c.send(json!({"type": "run", "assistant_id": "echo", "input": hi("after revoke")})).await;
    let refused = c.expect("error").await;
    assert_eq!(refused["code"], "unauthenticated", "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("revoked"), "{refused}");
    assert_eq!(c.close_code().await, 4001);
    // Bob's key still works.
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    server.stop().await;
}

/// Issue #12, finding 6: a socket authenticated with a JWT is closed with 4001 at the
/// token's `exp` (a real exp two seconds ahead; the wait is on the close, bounded).
async fn jwt_socket_closes_at_exp(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let jwt = JwtConfig { secret: Some(secret.into()), ..JwtConfig::default() };
    let auth = Auth::new(AuthMode::Jwt, &jwt).unwrap();
    let server = SocketApp::start_with(db.store.clone(), auth, fast()).await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "dave", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut c = Client::connect(&server, Auth2::Protocol(&token)).await;
    c.welcome().await;
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    let expired = c.expect("error").await;
    assert_eq!(expired["code"], "unauthenticated", "{expired}");
    assert!(expired["detail"].as_str().unwrap().contains("expired"), "{expired}");
    assert!(chrono::Utc::now().timestamp() >= exp, "closed before exp");
    assert_eq!(c.close_code().await, 4001);
    server.stop().await;
}
