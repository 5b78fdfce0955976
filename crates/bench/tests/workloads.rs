//! The bench's workloads through its library API against Spindle started in this process on
//! port 0, on SQLite and on PostgreSQL: sequential, a short concurrent, the SSE stream and
//! the race, asserting the correctness results (one thread, every run, every message, no 5xx);
//! and, briefly, the WebSocket workloads (stream over `/ws`, sessions, idle, fan-out).

use std::time::Duration;

use api::auth::{Auth as ServerAuth, AuthMode, JwtConfig};
use api::{AppState, HttpConfig};
use bench::workloads::{concurrent, race, sequential, sessions, stream, websocket};
use bench::{Auth, Target};
use store::Backend;
use store::testing::TestDb;

/// A Spindle server on a fresh database, serving until the test's runtime ends.
async fn start(backend: Backend) -> Option<(Target, TestDb)> {
    let db = TestDb::new(backend).await?;
    let auth = ServerAuth::new(AuthMode::Local, &JwtConfig::default()).unwrap();
    let state = AppState::new(
        engine::Engine::new(db.store.clone(), Default::default()).await.unwrap(),
        auth,
        HttpConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, state, std::future::pending()));
    let target = Target::new(&base, Auth::None, Duration::from_secs(30)).unwrap();
    target.check_reachable().await.unwrap();
    Some((target, db))
}

async fn workloads(backend: Backend) {
    let Some((target, _db)) = start(backend).await else { return };

    let options = sequential::Options { runs: 20, warmup: 2, max_time: Duration::from_secs(10) };
    let outcome = sequential::measure(&target, &options).await;
    assert_eq!(outcome.runs_ok, 20, "{outcome:?}");
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert!(outcome.latency.p50_ms > 0.0 && outcome.latency.p99_ms >= outcome.latency.p50_ms);

    let options = concurrent::Options {
        clients: vec![8],
        // Bounded by the run count; the time bound only guards against a hang.
        duration: Duration::from_secs(60),
        max_runs: 40,
        runs_per_thread: 1,
    };
    let outcome = concurrent::measure(&target, 8, &options).await;
    assert_eq!(outcome.runs_ok, 40, "{outcome:?}");
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    assert!(outcome.runs_per_s > 0.0);
    // Conversations of 5 turns: every reply still the echo of the last message.
    let options = concurrent::Options { runs_per_thread: 5, ..options };
    let outcome = concurrent::measure(&target, 4, &options).await;
    assert_eq!(outcome.runs_ok, 40, "{outcome:?}");
    assert!(outcome.errors.is_empty(), "{outcome:?}");

    let outcome =
        stream::measure_sse(&target, &stream::Options { events: 200, repeat: 2, websocket: false })
            .await;
    assert!(outcome.failures.is_empty(), "{outcome:?}");
    assert_eq!(outcome.runs.len(), 2);
    assert!(outcome.runs.iter().all(|r| r.events == 200));

    let ws =
        stream::measure_ws(&target, &stream::Options { events: 200, repeat: 2, websocket: true })
            .await
            .expect("Spindle has /ws");
    assert!(ws.failures.is_empty(), "{ws:?}");
    assert!(ws.runs.iter().all(|r| r.events == 200) && ws.runs.len() == 2, "{ws:?}");

    let options = sessions::Options {
        sessions: 30,
        concurrency: 6,
        max_time: Duration::from_secs(60),
        ..sessions::Options::default()
    };
    let outcome = sessions::measure(&target, &options).await;
    assert_eq!(outcome.websocket, Ok(()));
    assert_eq!(outcome.sessions_ok, 30, "{outcome:?}");
    assert!(outcome.identity_failures.is_empty(), "{outcome:?}");

    let options = websocket::Options {
        idle: 20,
        fanout: 10,
        events: 100,
        max_time: Duration::from_secs(60),
        ..websocket::Options::default()
    };
    let idle = websocket::idle(&target, &options, None).await;
    assert_eq!((idle.opened, idle.pings_answered), (20, idle.pings_sent), "{idle:?}");
    let fanout = websocket::fanout(&target, &options).await.unwrap();
    assert_eq!(fanout.subscribed, 10, "{fanout:?}");
    assert_eq!(fanout.connections_incomplete, 0, "{fanout:?}");
    assert!(fanout.delivered >= fanout.expected_at_least, "{fanout:?}");

    let enqueue = race::measure(&target, 20, "enqueue").await;
    assert!(enqueue.ok(), "{enqueue:#?}");
    assert_eq!(enqueue.accepted, 20);
    assert_eq!(enqueue.threads_found, Some(1));
    assert_eq!(enqueue.runs_recorded, Some(20));
    assert_eq!(enqueue.messages, Some(40));

    let reject = race::measure(&target, 20, "reject").await;
    assert!(reject.ok(), "{reject:#?}");
    assert!(reject.accepted >= 1);
    assert_eq!(reject.threads_found, Some(1));
    assert_eq!(reject.messages, Some(2 * reject.accepted));
    let refused = reject.statuses.get("409").copied().unwrap_or(0) as usize;
    assert_eq!(reject.accepted + refused, 20, "{reject:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    workloads(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    workloads(Backend::Postgres).await;
}
