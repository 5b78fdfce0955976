//! The JSON every store path writes reads back as the same `serde_json::Value` (or is refused
//! on the way in with `Error::Invalid`), on SQLite and PostgreSQL: explicit edge cases and
//! generated values (proptest). One row the store cannot read (written by an older build,
//! here by raw SQL) fails only itself: not a claim batch, not recovery, not a list. Recovery
//! deletes a stateless run's temporary thread.

use std::time::Duration;

use ids::{RunId, ThreadId, UserId};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};
use store::doctor::Check;
use store::json::MAX_DEPTH;
use store::testing::{TestDb, new_run};
use store::{
    Backend, DatabaseUrl, Error, EventKind, IfNotExists, Metadata, NewEvent, RunStatus, Store,
    ThreadFilter, ThreadPage, ThreadSortBy, ThreadStatus,
};

store::on_both_backends!(
    edge_values_read_back_exactly,
    generated_values_read_back_exactly,
    what_cannot_be_stored_is_refused_cleanly,
    unreadable_rows_fail_only_themselves,
    recovery_deletes_a_stateless_runs_thread,
);

fn object(pairs: Value) -> Metadata {
    match pairs {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |v, _| json!([v]))
}

/// Writes `value` through every store path that stores user JSON and asserts that each reads
/// it back equal: thread metadata, run input/kwargs/metadata, state values and checkpoint
/// metadata (a state update), event data. Each wraps it in at most 3 levels.
async fn round_trip(store: &Store, owner: UserId, value: &Value) {
    let v = || json!({ "v": value });
    let id = ThreadId::new();
    let created = store.create_thread(owner, id, &object(v())).await.unwrap();
    assert_eq!(created.metadata["v"], *value, "thread metadata as created");
    assert_eq!(store.get_thread(owner, id).await.unwrap().metadata["v"], *value, "thread metadata");
    let filter = ThreadFilter { ids: Some(vec![id]), ..ThreadFilter::default() };
    let page = ThreadPage {
        limit: 1,
        offset: 0,
        sort_by: ThreadSortBy::CreatedAt,
        sort_order: store::SortOrder::Desc,
    };
    let found = store.search_threads(owner, &filter, &page).await.unwrap();
    assert_eq!(found[0].metadata["v"], *value, "thread metadata searched");

    let mut run = new_run(id);
    run.input = Some(v());
    run.kwargs = v();
    run.metadata = object(v());
    let stored = store.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    let read = store.get_run(owner, id, run.run_id).await.unwrap();
    for r in [&stored, &read] {
        assert_eq!(r.input, Some(v()), "run input");
        assert_eq!(r.kwargs, v(), "run kwargs");
        assert_eq!(r.metadata["v"], *value, "run metadata");
    }

    let metadata = object(json!({ "writes": { "node": v() } }));
    let checkpoint = store.put_state(owner, id, None, &v(), &metadata).await.unwrap();
    assert_eq!(checkpoint.values, v(), "state values as written");
    assert_eq!(store.get_thread(owner, id).await.unwrap().values, Some(v()), "state values");
    let read = store.get_checkpoint(owner, id, checkpoint.checkpoint_id).await.unwrap();
    assert_eq!(read.values, v(), "checkpoint values");
    // The store adds the checkpoint's step: the thread's first checkpoint's is -1.
    let mut metadata = metadata;
    metadata.insert("step".into(), json!(-1));
    assert_eq!(checkpoint.metadata, metadata, "checkpoint metadata as written");
    assert_eq!(read.metadata, metadata, "checkpoint metadata");

    let event = NewEvent { run_id: None, kind: EventKind::Custom, data: value.clone() };
    let appended = store.append_event(owner, id, &event).await.unwrap();
    let read = store.events_after(owner, id, None, appended.seq - 1, 1).await.unwrap();
    assert_eq!(read[0].data, *value, "event data");
    store.delete_thread(owner, id).await.unwrap();
}

/// Numbers at f64's and the integer types' edges, nesting up to the deepest each path reads,
/// large and unusual strings.
async fn edge_values_read_back_exactly(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let two_53 = 9_007_199_254_740_992_f64;
    let numbers = [
        json!(f64::MAX),
        json!(f64::MIN),
        json!(f64::MIN_POSITIVE),
        json!(f64::MIN_POSITIVE / 4.0),
        json!(5e-324),
        json!(1e-320),
        json!(-1e-320),
        json!(1e308),
        json!(-0.0),
        json!(0.0),
        json!(0.1),
        json!(1e-7),
        json!(1.5e300),
        json!(1e15),
        json!(1e16),
        json!(-1e16),
        json!(two_53),
        json!(two_53 + 2.0),
        json!(9_007_199_254_740_993_u64),
        json!(9.223_372_036_854_776e18),
        json!(-9.223_372_036_854_776e18),
        json!(1.844_674_407_370_955_2e19),
        json!(1e20),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(0),
        json!(-1),
    ];
    // `Value` equality tells a float from an integer: each reads back as the same kind.
    for n in &numbers {
        round_trip(store, owner, n).await;
    }
    round_trip(store, owner, &Value::Array(numbers.to_vec())).await;
    // Parsed from text, as a request body is: integers past u64 are floats.
    let parsed: Value =
        serde_json::from_str("[18446744073709551616, -9223372036854775809, 1E2, 2.50]").unwrap();
    round_trip(store, owner, &parsed).await;
    for s in [
        "",
        "ünïcödé ✓ 🦀 \u{10FFFF} \u{FEFF} \u{200B}",
        "quote \" backslash \\ slash / controls \u{1} \u{1f} \n\t",
        "\\u0000 is six characters here",
        "[[[[{{{{ not nesting",
    ] {
        round_trip(store, owner, &json!(s)).await;
        round_trip(store, owner, &json!({ s: s })).await;
    }
    round_trip(store, owner, &json!("🦀x".repeat(256 * 1024))).await;
    // The deepest value every path stores (the state update's metadata wraps it 3 deep).
    round_trip(store, owner, &nested(MAX_DEPTH - 3)).await;
    // Event data, stored as given, up to serde_json's own limit.
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    let deep = nested(MAX_DEPTH);
    let event = NewEvent { run_id: None, kind: EventKind::Custom, data: deep.clone() };
    store.append_event(owner, id, &event).await.unwrap();
    assert_eq!(store.events_after(owner, id, None, 0, 1).await.unwrap()[0].data, deep);
}

fn text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

/// Any JSON value (no NUL: PostgreSQL refuses it, tested on its own), numbers from the
/// whole of f64, i64 and u64, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop::num::f64::SUBNORMAL.prop_map(Value::from),
        (-1e20..1e20_f64).prop_map(|f| Value::from(f.trunc())),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// 96 generated values through every path (a fixed seed: the same values every run).
async fn generated_values_read_back_exactly(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let mut runner = TestRunner::deterministic();
    let strategy = json_value();
    for _ in 0..96 {
        let value = strategy.new_tree(&mut runner).unwrap().current();
        round_trip(store, owner, &value).await;
    }
}

#[track_caller]
fn refused(result: Result<impl std::fmt::Debug, Error>, says: &str) {
    match result {
        Err(Error::Invalid(m)) => assert!(m.contains(says), "{m:?} does not say {says:?}"),
        other => panic!("expected Invalid saying {says:?}, got {other:?}"),
    }
}

/// Nesting that could not be read back is refused on every path, on both backends; a NUL is
/// refused on PostgreSQL (which cannot store it) and read back on SQLite. Nothing is written.
async fn what_cannot_be_stored_is_refused_cleanly(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    let deep = nested(MAX_DEPTH);
    let too_deep = "nested more than 127 levels";
    refused(
        store.create_thread(owner, ThreadId::new(), &object(json!({ "v": deep }))).await,
        too_deep,
    );
    refused(store.update_thread_metadata(owner, id, &object(json!({ "v": deep }))).await, too_deep);
    let mut run = new_run(id);
    run.kwargs = json!({ "v": deep });
    refused(store.create_run(owner, &run, IfNotExists::Reject).await, too_deep);
    let mut run = new_run(id);
    run.metadata = object(json!({ "v": deep }));
    refused(store.create_run(owner, &run, IfNotExists::Reject).await, too_deep);
    // A state update whose values fit but whose checkpoint metadata (two levels more) does not.
    let values = nested(MAX_DEPTH - 1);
    let metadata = object(json!({ "writes": { "node": values } }));
    refused(store.put_state(owner, id, None, &values, &metadata).await, too_deep);
    refused(
        store.put_state(owner, id, None, &json!({ "v": deep }), &Metadata::new()).await,
        too_deep,
    );
    let event = NewEvent { run_id: None, kind: EventKind::Custom, data: json!([deep]) };
    refused(store.append_event(owner, id, &event).await, too_deep);
    let thread = store.get_thread(owner, id).await.unwrap();
    assert_eq!((thread.metadata, thread.values, thread.last_seq), (Metadata::new(), None, 0));
    assert!(store.list_runs(owner, id, 10, 0, None).await.unwrap().is_empty());

    let nul = json!({ "a": "x\u{0}y", "k\u{0}": 1 });
    let results = [
        store.create_thread(owner, ThreadId::new(), &object(nul.clone())).await.map(drop),
        store.put_state(owner, id, None, &nul, &Metadata::new()).await.map(drop),
        store
            .append_event(
                owner,
                id,
                &NewEvent { run_id: None, kind: EventKind::Custom, data: nul.clone() },
            )
            .await
            .map(drop),
        store
            .create_run(
                owner,
                &{
                    let mut run = new_run(id);
                    run.kwargs = nul.clone();
                    run
                },
                IfNotExists::Reject,
            )
            .await
            .map(drop),
    ];
    for result in results {
        match store.backend() {
            Backend::Postgres => refused(result, "NUL character"),
            Backend::Sqlite => result.unwrap(),
        }
    }
}

/// Runs raw SQL on the test database behind the store's back (as an older build wrote it).
async fn raw(db: &TestDb, sqlite: &str, postgres: &str) {
    match &db.url {
        DatabaseUrl::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch(sqlite).unwrap_or_else(|e| panic!("{sqlite}: {e}"));
        }
        DatabaseUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(postgres.to_owned()))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{postgres}: {e}"));
            c.close().await.unwrap();
        }
    }
}

/// An id as a SQL literal: a BLOB on SQLite, a uuid on PostgreSQL.
fn lit(db: &TestDb, bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match db.url {
        DatabaseUrl::Sqlite(_) => format!("x'{hex}'"),
        DatabaseUrl::Postgres(_) => format!("'{hex}'::uuid"),
    }
}

/// Stores `json` (text no build of ours can read back) into `table.column` of one row.
pub async fn poison(db: &TestDb, table: &str, column: &str, key: &str, id: &[u8; 16], json: &str) {
    let id = lit(db, id);
    let cast = if matches!(db.url, DatabaseUrl::Postgres(_)) { "::jsonb" } else { "" };
    let sql = format!("update {table} set {column} = '{json}'{cast} where {key} = {id}");
    raw(db, &sql, &sql).await;
}

/// What an older build could store: a number beyond f64 and nesting past serde_json's limit.
const HUGE: &str = r#"{"x": 1e400}"#;

fn too_deep_text() -> String {
    format!("{{\"x\": {}1{}}}", "[".repeat(130), "]".repeat(130))
}

/// Finding 1 of issue 12: one unreadable row failed a whole claim batch (other users' runs
/// left `running`), recovery (the server could not start), and every list of its owner.
async fn unreadable_rows_fail_only_themselves(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let thread = |owner| async move {
        let id = ThreadId::new();
        store.create_thread(owner, id, &object(json!({"ok": true}))).await.unwrap();
        id
    };
    // A run left running by a crash, whose metadata cannot be read.
    let crashed = thread(alice).await;
    let crashed_run = new_run(crashed);
    store.create_run(alice, &crashed_run, IfNotExists::Reject).await.unwrap();
    assert_eq!(store.claim_runs(10).await.unwrap().len(), 1);
    poison(db, "runs", "metadata", "run_id", crashed_run.run_id.as_bytes(), HUGE).await;
    // Pending runs, claimed in one batch: alice's cannot be read, bob's can.
    let (broken, fine) = (thread(alice).await, thread(bob).await);
    let broken_run = new_run(broken);
    store.create_run(alice, &broken_run, IfNotExists::Reject).await.unwrap();
    let fine_run = new_run(fine);
    store.create_run(bob, &fine_run, IfNotExists::Reject).await.unwrap();
    poison(db, "runs", "kwargs", "run_id", broken_run.run_id.as_bytes(), &too_deep_text()).await;
    // A thread whose metadata cannot be read, with a readable checkpoint.
    let bad = thread(alice).await;
    store.put_state(alice, bad, None, &json!({"n": 1}), &Metadata::new()).await.unwrap();
    poison(db, "threads", "metadata", "thread_id", bad.as_bytes(), HUGE).await;

    // Recovery ends the unreadable running run all the same.
    let recovered = store.recover_runs().await.unwrap();
    assert!(recovered.is_empty(), "an unreadable run is ended, not returned: {recovered:?}");
    assert_eq!(store.get_thread(alice, crashed).await.unwrap().status, ThreadStatus::Error);
    // The claim batch: bob's run is claimed; alice's unreadable one ends `error`, its thread freed.
    let claimed: Vec<RunId> =
        store.claim_runs(10).await.unwrap().iter().map(|r| r.run_id).collect();
    assert_eq!(claimed, [fine_run.run_id]);
    assert_eq!(store.get_run(bob, fine, fine_run.run_id).await.unwrap().status, RunStatus::Running);
    assert_eq!(store.get_thread(alice, broken).await.unwrap().status, ThreadStatus::Error);
    assert!(!store.any_pending_runs().await.unwrap());
    assert!(store.claim_runs(10).await.unwrap().is_empty());
    for (thread, run) in [(crashed, crashed_run.run_id), (broken, broken_run.run_id)] {
        match store.get_run(alice, thread, run).await {
            Err(Error::Unreadable { kind: "run", id, .. }) => assert_eq!(id, run.to_string()),
            other => panic!("expected the run to be unreadable, got {other:?}"),
        }
        // Lists skip it (logged).
        assert!(store.list_runs(alice, thread, 10, 0, None).await.unwrap().is_empty());
    }

    // The owner's lists skip the unreadable thread; the row itself fails only its own reads.
    let listed: Vec<ThreadId> =
        store.list_threads(alice, 10, 0).await.unwrap().iter().map(|t| t.thread_id).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.contains(&bad));
    let page = ThreadPage {
        limit: 10,
        offset: 0,
        sort_by: ThreadSortBy::CreatedAt,
        sort_order: store::SortOrder::Desc,
    };
    assert_eq!(
        store.search_threads(alice, &ThreadFilter::default(), &page).await.unwrap().len(),
        2
    );
    assert_eq!(store.count_threads(alice, &ThreadFilter::default()).await.unwrap(), 3);
    match store.get_thread(alice, bad).await {
        Err(e @ Error::Unreadable { kind: "thread", .. }) => {
            assert!(
                e.to_string().contains(&bad.to_string())
                    && e.to_string().contains("spindle doctor"),
                "{e}"
            );
        }
        other => panic!("expected the thread to be unreadable, got {other:?}"),
    }
    store.check_thread(alice, bad).await.unwrap();
    assert!(matches!(store.check_thread(bob, bad).await, Err(Error::NotFound { .. })));
    assert_eq!(store.admin_thread_owner(bad).await.unwrap(), Some(alice));
    assert_eq!(store.list_checkpoints(alice, bad, 10, None).await.unwrap().len(), 1);
    assert_eq!(store.list_threads(bob, 10, 0).await.unwrap().len(), 1);

    // The doctor names every unreadable row and says what to do.
    let (_, findings) = store.admin_doctor_scan(chrono::Utc::now()).await.unwrap();
    let unreadable: Vec<_> = findings.iter().filter(|f| f.check == Check::UnreadableJson).collect();
    assert_eq!(unreadable.len(), 3, "{unreadable:#?}");
    let about = |needle: &str| {
        unreadable
            .iter()
            .find(|f| f.detail.contains(needle))
            .unwrap_or_else(|| panic!("no finding about {needle}: {unreadable:#?}"))
    };
    let f = about("threads.metadata");
    assert_eq!((f.thread_id, f.owner_id), (Some(bad), Some(alice)));
    assert!(f.detail.contains(&bad.to_string()), "{}", f.detail);
    let f = about("runs.metadata");
    assert_eq!((f.run_id, f.thread_id), (Some(crashed_run.run_id), Some(crashed)));
    let f = about("runs.kwargs");
    assert_eq!(f.run_id, Some(broken_run.run_id));
    assert!(Check::UnreadableJson.hint().contains("by hand"));

    // Deleting needs nothing of the row's data.
    store.delete_thread(alice, bad).await.unwrap();
}

/// Finding 12 of issue 12: a stateless run's temporary thread (`on_completion: delete`)
/// survived a crash. Recovery now deletes it (and keeps the thread of an ordinary run).
async fn recovery_deletes_a_stateless_runs_thread(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (temporary, kept) = (ThreadId::new(), ThreadId::new());
    let mut stateless = new_run(temporary);
    stateless.kwargs = json!({ "on_completion": "delete" });
    store.create_run(owner, &stateless, IfNotExists::Create).await.unwrap();
    let mut ordinary = new_run(kept);
    ordinary.kwargs = json!({ "on_completion": "keep" });
    store.create_run(owner, &ordinary, IfNotExists::Create).await.unwrap();
    // Both claimed, then the process "crashes": nothing ends them.
    assert_eq!(store.claim_runs(10).await.unwrap().len(), 2);
    let recovered = store.recover_runs().await.unwrap();
    assert_eq!(recovered.len(), 2);
    assert!(matches!(store.get_thread(owner, temporary).await, Err(Error::NotFound { .. })));
    assert_eq!(store.admin_count_threads(temporary).await.unwrap(), 0);
    let thread = store.get_thread(owner, kept).await.unwrap();
    assert_eq!(thread.status, ThreadStatus::Error);
    assert_eq!(store.get_run(owner, kept, ordinary.run_id).await.unwrap().status, RunStatus::Error);
}
