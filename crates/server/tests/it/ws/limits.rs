//! Limits: slow WebSocket and SSE consumers, heartbeats, frame and subscription limits.

use super::*;

store::on_each_backend!(
    slow_consumer,
    heartbeat,
    limits,
    slow_sse_client_is_dropped,
    sse_streams_end_when_the_credential_lapses,
);

/// A client that stops reading is closed with 4008 once its queue is over the limit; a
/// healthy client on the same thread gets every event meanwhile and the run is not slowed.
/// The closed client resumes from the log.
async fn slow_consumer(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    // The slow client must still be there to take its close frame when it reads again.
    let close_timeout = Duration::from_secs(120);
    let config = WsConfig { max_outbound: 256 * 1024, close_timeout, ..fast() };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, config).await;
    let key = server.key("alice").await;
    let (_, thread) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = thread["thread_id"].as_str().unwrap().to_owned();

    let mut slow = Client::connect_small_buffer(&server, &key).await;
    slow.welcome().await;
    slow.send(json!({"type": "subscribe", "thread_id": thread})).await;
    slow.expect("subscribed").await;
    let mut fast_client = Client::connect(&server, Auth2::Header(&key)).await;
    fast_client.welcome().await;
    let input =
        json!({"messages": [{"role": "human", "content": "go"}], "n": 30000, "mode": "custom"});
    fast_client
        .send(json!({"type": "run", "thread_id": thread, "assistant_id": "synthetic", "input": input}))
        .await;
    fast_client.expect("subscribed").await;
    let run = fast_client.expect("run").await["run"]["run_id"].as_str().unwrap().to_owned();
    let events = fast_client.events_until_end(&run).await;
    assert!(events.len() > 30000);
    // Over 4 MB of events: more than the kernel's socket buffers (4 MiB at most for the
    // server's send buffer here, 8 KiB for the client's receive buffer) and the queue hold.
    // Now the slow client reads, with a normal receive buffer.
    slow.set_recv_buffer(4 << 20);
    // Now the slow client reads: what was queued, then 4008.
    let mut got = Vec::new();
    let code = loop {
        match slow.message().await {
            Some(Message::Text(t)) => got.push(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Message::Close(Some(frame))) => break u16::from(frame.code),
            Some(_) => {}
            None => break 1006,
        }
    };
    assert_eq!(code, 4008);
    assert!(got.len() < events.len(), "closed before the end");
    // It resumes from the log and misses nothing.
    let after = got.last().map_or(0, |e| e["seq"].as_i64().unwrap());
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    c.welcome().await;
    c.send(json!({"type": "subscribe", "thread_id": thread, "after_seq": after})).await;
    c.expect("subscribed").await;
    let rest = c.events_until_end(&run).await;
    got.extend(rest);
    assert_eq!(seqs(&got), seqs(&events));
    server.stop().await;
}

/// A client that answers no ping is closed with 4009; one that reads stays.
async fn heartbeat(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let config = WsConfig { ping_interval: Duration::from_millis(100), ..fast() };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, config).await;
    let key = server.key("alice").await;
    let mut reader = Client::connect(&server, Auth2::Header(&key)).await;
    reader.welcome().await;
    let mut silent = Client::connect(&server, Auth2::Header(&key)).await;
    silent.welcome().await;
    // The reader answers pings by reading; the silent one reads nothing until it is closed.
    let mut pings = 0;
    while pings < 5 {
        if let Some(Message::Ping(_)) = reader.message().await {
            pings += 1;
        }
    }
    assert_eq!(silent.close_code().await, 4009);
    reader.send(json!({"type": "ping"})).await;
    reader.expect("pong").await;
    server.stop().await;
}

/// Connections per user and subscriptions per connection are limited, with clear errors.
async fn limits(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let config = WsConfig { max_connections_per_user: 2, max_subscriptions: 2, ..fast() };
    let server = SocketApp::start(db.store.clone(), AuthMode::Keys, config).await;
    let key = server.key("alice").await;
    let other = server.key("bob").await;
    let mut a = Client::connect(&server, Auth2::Header(&key)).await;
    a.welcome().await;
    let mut b = Client::connect(&server, Auth2::Header(&key)).await;
    b.welcome().await;
    let mut c = Client::connect(&server, Auth2::Header(&key)).await;
    let error = c.expect("error").await;
    assert_eq!(error["code"], "too_many_connections");
    assert_eq!(c.close_code().await, 4029);
    // Another user is not affected; a closed connection frees its place.
    let mut d = Client::connect(&server, Auth2::Header(&other)).await;
    d.welcome().await;
    drop(b);
    let mut opened = false;
    for _ in 0..200 {
        let mut c = Client::connect(&server, Auth2::Header(&key)).await;
        if c.frame().await["type"] == "welcome" {
            opened = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(opened, "the dropped connection's place was given back");

    let mut threads = Vec::new();
    for _ in 0..3 {
        let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
        threads.push(t["thread_id"].as_str().unwrap().to_owned());
    }
    for t in &threads[..2] {
        a.send(json!({"type": "subscribe", "thread_id": t})).await;
        a.expect("subscribed").await;
    }
    a.send(json!({"type": "subscribe", "thread_id": threads[2]})).await;
    assert_eq!(a.expect("error").await["code"], "too_many_subscriptions");
    // Subscribing again to a subscribed thread is not a new subscription.
    a.send(json!({"type": "subscribe", "thread_id": threads[0], "after_seq": 0})).await;
    a.expect("subscribed").await;
    a.send(json!({"type": "unsubscribe", "thread_id": threads[1]})).await;
    a.expect("unsubscribed").await;
    a.send(json!({"type": "subscribe", "thread_id": threads[2]})).await;
    a.expect("subscribed").await;
    server.stop().await;
}

/// Issue #12, finding 9: an SSE client that never reads, on a thread with large `values`
/// events, is dropped once its queue is over the byte budget past the deadline, and what the
/// server buffers for SSE stays bounded meanwhile; a client that reads gets everything.
async fn slow_sse_client_is_dropped(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let budget = 256 * 1024;
    let sse = api::stream::SseConfig {
        max_buffer: budget,
        slow_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let auth = Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap();
    let http = HttpConfig { ws: fast(), sse, ..HttpConfig::default() };
    let server = SocketApp::start_http(db.store.clone(), auth, http).await;
    let key = server.key("alice").await;
    let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let big = "x".repeat(500 * 1024);
    let runs = 6;
    for _ in 0..runs {
        let body = json!({"assistant_id": "echo", "input": hi(&big)});
        let (status, _) =
            server.http(&key, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
        assert_eq!(status, 200);
    }
    let largest = 2 * runs * (big.len() + 200);

    // A client with a tiny receive buffer that never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(server.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let request = format!(
            "GET /threads/{thread}/stream HTTP/1.1\r\nhost: test\r\nx-api-key: {key}\r\nlast-event-id: -1\r\n\r\n"
        );
        slow.write_all(request.as_bytes()).await.unwrap();
    }
    // A client that reads everything.
    let mut reader = SseClient::open(
        &server,
        &key,
        "GET",
        &format!("/threads/{thread}/stream"),
        None,
        Some("-1"),
    )
    .await;
    loop {
        let frame = reader.frame().await.expect("the reading client's stream ended");
        assert_eq!(frame.event, "values");
        if frame.data["messages"].as_array().unwrap().len() == 2 * runs {
            break;
        }
    }

    let stats = server.state.sse.clone();
    let mut most = 0;
    let dropped = async || {
        if stats.slow_dropped() != 0 {
            return Some(());
        }
        most = most.max(stats.buffered_bytes());
        None
    };
    harness::eventually("the slow client is dropped", BOUND, dropped).await;
    assert!(most <= budget + largest, "buffered {most} bytes for SSE (budget {budget})");
    // Dropped: nothing is held for it any more.
    drop(reader);
    let released = async || (stats.buffered_bytes() == 0).then_some(());
    harness::eventually("nothing is buffered for the dropped client", BOUND, released).await;
    drop(slow);
    server.stop().await;
}

/// Issue #12, finding 6 on SSE: a thread's stream joined with an API key ends (an `error`
/// event) once the key is revoked; one joined with a JWT ends at the token's `exp`.
async fn sse_streams_end_when_the_credential_lapses(backend: Backend) {
    let Some(db) = db(backend).await else { return };
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let jwt = JwtConfig { secret: Some(secret.into()), ..JwtConfig::default() };
    let auth = Auth::new(AuthMode::KeysAndJwt, &jwt).unwrap().with_key_recheck(Duration::ZERO);
    let server = SocketApp::start_with(db.store.clone(), auth, fast()).await;
    let key = server.key("alice").await;
    let (_, t) = server.http(&key, "POST", "/threads", Some(json!({}))).await;
    let thread = t["thread_id"].as_str().unwrap().to_owned();
    let body = json!({"assistant_id": "echo", "input": hi("one")});
    let (status, _) =
        server.http(&key, "POST", &format!("/threads/{thread}/runs/wait"), Some(body)).await;
    assert_eq!(status, 200);
    let path = format!("/threads/{thread}/stream");

    let mut joined = SseClient::open(&server, &key, "GET", &path, None, Some("-1")).await;
    assert_eq!(joined.frame().await.unwrap().event, "values");
    let keys = server.store.list_api_keys().await.unwrap();
    server.store.revoke_api_key(keys[0].key_id).await.unwrap();
    let rest = tokio::time::timeout(BOUND, joined.rest()).await.expect("the stream did not end");
    let last = rest.last().expect("a final frame");
    assert_eq!((last.event.as_str(), &last.data["error"]), ("error", &json!("Unauthorized")));
    assert!(last.data["message"].as_str().unwrap().contains("revoked"), "{rest:?}");

    let exp = chrono::Utc::now().timestamp() + 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "erin", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let (_, auth_header_thread) = {
        let mut stream =
            SseClient::open(&server, &token, "POST", "/threads", Some(json!({})), None).await;
        let mut text = String::new();
        use tokio::io::AsyncReadExt;
        stream.stream.read_to_string(&mut text).await.unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
        ((), serde_json::from_str::<Value>(&body).unwrap())
    };
    let erins = auth_header_thread["thread_id"].as_str().unwrap().to_owned();
    let mut joined =
        SseClient::open(&server, &token, "GET", &format!("/threads/{erins}/stream"), None, None)
            .await;
    let rest = tokio::time::timeout(BOUND, joined.rest()).await.expect("the stream did not end");
    let last = rest.last().expect("a final frame");
    assert_eq!(last.event, "error", "{rest:?}");
    assert!(last.data["message"].as_str().unwrap().contains("expired"), "{rest:?}");
    assert!(chrono::Utc::now().timestamp() >= exp, "ended before exp");
    server.stop().await;
}
