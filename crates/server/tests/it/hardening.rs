//! Issue 12's store findings through HTTP, on SQLite and PostgreSQL: `/threads/count` with
//! `ids`, deep state updates, JSON that reads back exactly, and 404s for another user's
//! thread classified from its owner alone.

use crate::harness;
use crate::harness::TestApp;
use crate::harness::{AppState, HttpConfig};
use crate::harness::{Auth, AuthMode, JwtConfig, auth};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use ids::{RunId, ThreadId};
use serde_json::{Value, json};
use store::doctor::{Check, DoctorOptions};
use store::testing::{TestDb, new_run};
use store::{Backend, DatabaseUrl, IfNotExists, Metadata, Store};
use tower::ServiceExt;

store::on_both_backends!(TestApp =>count_honours_ids, deep_state_updates_are_a_422);

/// `/threads/count` took `ids` and ignored it: it counted every thread of the caller.
async fn count_honours_ids(app: &TestApp) {
    let alice = app.key("alice").await;
    let bob = app.key("bob").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let t = app.post(&alice, "/threads", json!({"metadata": {"n": n}})).await.ok();
        ids.push(t["thread_id"].as_str().unwrap().to_owned());
    }
    let bobs = app.post(&bob, "/threads", json!({})).await.ok()["thread_id"].clone();
    let count = |body| app.post(&alice, "/threads/count", body);
    assert_eq!(count(json!({"ids": [ids[0], ids[2]]})).await.ok(), json!(2));
    assert_eq!(count(json!({"ids": [ids[1]], "metadata": {"n": 1}})).await.ok(), json!(1));
    assert_eq!(count(json!({"ids": [ids[1]], "metadata": {"n": 2}})).await.ok(), json!(0));
    assert_eq!(count(json!({"ids": []})).await.ok(), json!(0));
    assert_eq!(count(json!({"ids": [bobs]})).await.ok(), json!(0), "another user's thread");
    assert_eq!(count(json!({})).await.ok(), json!(3));
    // The same answer as the search's total.
    let search = app.post(&alice, "/threads/search", json!({"ids": [ids[0], bobs]})).await;
    assert_eq!(search.headers["x-pagination-total"], "1");
    let too_many: Vec<_> = (0..1001).map(|_| ThreadId::new().to_string()).collect();
    count(json!({"ids": too_many})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "at most 1000",
    );
    count(json!({"ids": ["nope"]})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "`ids[0]`: invalid thread_id",
    );
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |v, _| json!([v]))
}

/// Finding 13 of issue 12: a state update nested 125 levels deep passed the body's check but
/// was stored two levels deeper in its checkpoint's metadata, and reading it back was a 500.
async fn deep_state_updates_are_a_422(app: &TestApp) {
    let key = app.key("alice").await;
    let alice = app.store().ensure_user("alice").await.unwrap().user_id;
    let id =
        app.post(&key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned();
    let thread: ThreadId = id.parse().unwrap();
    let state = format!("/threads/{id}/state");
    // The deepest that can be stored: its checkpoint's metadata is {"writes": {node: values}}.
    // (Read back through the store: the state's response nests it deeper still, past what
    // serde_json, this test's client, reads.)
    let fits = json!({ "k": nested(124) });
    app.post(&key, &state, json!({ "values": fits })).await.ok();
    let stored = app.store().list_checkpoints(alice, thread, 10, None).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].values, fits);
    assert_eq!(stored[0].metadata["writes"]["__input__"], fits);
    // One level more: a 422 that says why, and nothing changes.
    let deeper = json!({ "k": nested(125) });
    app.post(&key, &state, json!({ "values": deeper })).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "nested more than 127 levels deep as stored",
    );
    assert_eq!(app.store().list_checkpoints(alice, thread, 10, None).await.unwrap().len(), 1);
    let read = app.get(&key, &format!("/threads/{id}")).await.ok();
    assert_eq!(read["values"], fits);
}

/// Raw SQL on a test database, behind the store's back (as an older build wrote it).
async fn raw(db: &TestDb, sql: &str) {
    match &db.url {
        DatabaseUrl::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            c.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        DatabaseUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            c.close().await.unwrap();
        }
    }
}

/// Stores JSON no build of ours can read back (a number beyond f64, as PostgreSQL's `numeric`
/// keeps it) into `table.column` of one row.
async fn poison(db: &TestDb, table: &str, column: &str, key: &str, id: &[u8; 16]) {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let sql = match db.url {
        DatabaseUrl::Sqlite(_) => {
            format!(r#"update {table} set {column} = '{{"x": 1e400}}' where {key} = x'{hex}'"#)
        }
        DatabaseUrl::Postgres(_) => format!(
            r#"update {table} set {column} = '{{"x": 1e400}}'::jsonb where {key} = '{hex}'::uuid"#
        ),
    };
    raw(db, &sql).await;
}

async fn call(
    state: &AppState,
    key: &str,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri).header("x-api-key", key);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = harness::app(state.clone()).oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() })
}

async fn key_for(store: &Store, user: &str) -> String {
    let key = auth::generate_key().unwrap();
    store.create_api_key(user, &auth::hash_key(&key), &auth::key_prefix(&key)).await.unwrap();
    key
}

/// Finding 1 of issue 12: a database holding rows an older build stored and this one cannot
/// read (written here with raw SQL) starts (recovery), claims and finishes other users' runs
/// (the claim batch), ends the owner's unreadable run `error`, answers the owner's thread
/// routes that need none of the bad row's data, and the doctor names the row.
async fn a_poisoned_database_starts_and_serves(backend: Backend) {
    let _turn = LOOKUPS.lock().await;
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store.clone();
    let (alice_key, bob_key) = (key_for(&store, "alice").await, key_for(&store, "bob").await);
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let input = json!({"messages": [{"role": "user", "content": "hello"}]});
    // Alice's run left running by a crash, whose metadata cannot be read.
    let crashed = ThreadId::new();
    let crashed_run = new_run(crashed);
    store.create_run(alice, &crashed_run, IfNotExists::Create).await.unwrap();
    assert_eq!(store.claim_runs(10).await.unwrap().len(), 1);
    poison(&db, "runs", "metadata", "run_id", crashed_run.run_id.as_bytes()).await;
    // Pending runs, claimed in one batch at start: alice's cannot be read, bob's can.
    let broken = ThreadId::new();
    let broken_run = new_run(broken);
    store.create_run(alice, &broken_run, IfNotExists::Create).await.unwrap();
    poison(&db, "runs", "kwargs", "run_id", broken_run.run_id.as_bytes()).await;
    let fine = ThreadId::new();
    let mut fine_run = new_run(fine);
    fine_run.input = Some(input.clone());
    store.create_run(bob, &fine_run, IfNotExists::Create).await.unwrap();
    // Alice's thread whose metadata cannot be read.
    let bad = ThreadId::new();
    store.create_thread(alice, bad, &Metadata::new()).await.unwrap();
    store.put_state(alice, bad, None, &json!({"n": 1}), &Metadata::new()).await.unwrap();
    poison(&db, "threads", "metadata", "thread_id", bad.as_bytes()).await;

    let auth = Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap();
    let state = AppState::new(
        engine::Engine::new(store.clone(), Default::default()).await.unwrap(),
        auth,
        HttpConfig::default(),
    );
    state.start(std::future::pending()).await.expect("the server starts");

    // Bob's run is claimed and finishes; alice's unreadable one ends and frees its thread.
    let settled = async || {
        let (_, run) = call(
            &state,
            &bob_key,
            Method::GET,
            &format!("/threads/{fine}/runs/{}", fine_run.run_id),
            None,
        )
        .await;
        let (_, thread) =
            call(&state, &alice_key, Method::GET, &format!("/threads/{broken}"), None).await;
        (run["status"] == "success" && thread["status"] == "error").then_some(())
    };
    let what = "bob's run succeeds and alice's broken thread is in error";
    harness::eventually(what, std::time::Duration::from_secs(30), settled).await;
    let (status, thread) =
        call(&state, &alice_key, Method::GET, &format!("/threads/{crashed}"), None).await;
    assert_eq!((status, &thread["status"]), (StatusCode::OK, &json!("error")));

    // Alice's routes that need none of the bad row's data answer; lists skip it.
    let (status, found) =
        call(&state, &alice_key, Method::POST, "/threads/search", Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let found: Vec<&str> =
        found.as_array().unwrap().iter().map(|t| t["thread_id"].as_str().unwrap()).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(!found.contains(&bad.to_string().as_str()));
    let (status, count) =
        call(&state, &alice_key, Method::POST, "/threads/count", Some(json!({}))).await;
    assert_eq!((status, count), (StatusCode::OK, json!(3)));
    for thread in [bad, broken, crashed] {
        let (status, runs) =
            call(&state, &alice_key, Method::GET, &format!("/threads/{thread}/runs"), None).await;
        assert_eq!(status, StatusCode::OK, "{runs}");
    }
    // The state routes read checkpoints, not the thread's row.
    for uri in [format!("/threads/{bad}/state"), format!("/threads/{bad}/history")] {
        let (status, state) = call(&state, &alice_key, Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {state}");
    }
    let (_, values) =
        call(&state, &alice_key, Method::GET, &format!("/threads/{bad}/state"), None).await;
    assert_eq!(values["values"], json!({"n": 1}));
    // Reading the bad row itself fails only that request, with no cause in the body.
    let (status, body) =
        call(&state, &alice_key, Method::GET, &format!("/threads/{bad}"), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body["detail"].as_str().unwrap().contains("1e400"), "{body}");
    // Bob is unaffected, and sees alice's bad thread as missing.
    let (status, _) = call(&state, &bob_key, Method::GET, &format!("/threads/{bad}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The doctor names the rows.
    let report = store.doctor(&DoctorOptions::default()).await.unwrap();
    let named: Vec<(Option<ThreadId>, Option<RunId>)> = report
        .findings
        .iter()
        .filter(|f| f.check == Check::UnreadableJson)
        .map(|f| (f.thread_id, f.run_id))
        .collect();
    assert_eq!(named.len(), 3, "{:#?}", report.findings);
    assert!(named.contains(&(Some(bad), None)));
    assert!(named.contains(&(Some(crashed), Some(crashed_run.run_id))));
    assert!(named.contains(&(Some(broken), Some(broken_run.run_id))));
    assert!(!report.healthy());

    // And the bad thread can be deleted.
    let (status, _) =
        call(&state, &alice_key, Method::DELETE, &format!("/threads/{bad}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&state, &alice_key, Method::GET, &format!("/threads/{bad}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_sqlite_database_starts_and_serves() {
    a_poisoned_database_starts_and_serves(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_postgres_database_starts_and_serves() {
    a_poisoned_database_starts_and_serves(Backend::Postgres).await;
}

/// Taken by the tests of this file that fail thread lookups: the counter they read is the
/// process's.
static LOOKUPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `spindle_thread_lookup_failures_total{reason}` now.
async fn lookup_failures(state: &AppState, reason: &str) -> f64 {
    let response = harness::app(state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let series = format!("spindle_thread_lookup_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Finding 11 of issue 12: a 404 for another user's thread read the whole thread to say why
/// (`not_owner` or `not_found`). It reads the owner only now, so it classifies right even
/// when the thread's data cannot be read. Both backends in turn: the metric is per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_classified_from_the_owner_alone() {
    let _turn = LOOKUPS.lock().await;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = TestApp::new(backend).await else { continue };
        let alice = app.key("alice").await;
        let bob = app.key("bob").await;
        let mut bobs = Vec::new();
        for _ in 0..2 {
            bobs.push(
                app.post(&bob, "/threads", json!({})).await.ok()["thread_id"]
                    .as_str()
                    .unwrap()
                    .parse::<ThreadId>()
                    .unwrap(),
            );
        }
        // One of bob's threads holds data no build of ours reads back.
        poison(app.db(), "threads", "metadata", "thread_id", bobs[1].as_bytes()).await;
        let state = &app.state;
        let (owner0, missing0) =
            (lookup_failures(state, "not_owner").await, lookup_failures(state, "not_found").await);
        for id in &bobs {
            let reply = app.get(&alice, &format!("/threads/{id}")).await;
            reply.error(StatusCode::NOT_FOUND, "not_found", "not found");
        }
        app.get(&alice, &format!("/threads/{}", ThreadId::new())).await.error(
            StatusCode::NOT_FOUND,
            "not_found",
            "not found",
        );
        assert_eq!(lookup_failures(state, "not_owner").await - owner0, 2.0, "{backend:?}");
        assert_eq!(lookup_failures(state, "not_found").await - missing0, 1.0, "{backend:?}");
    }
}
