//! The doctor finds every deliberately broken state and repairs the safe ones; `id inspect`'s
//! lookup finds each kind of id. Each broken state is written straight into the database with
//! raw SQL (a second connection, as an operator's hand or a bug would), on SQLite and on
//! PostgreSQL.

use std::time::Duration;

use ids::{AssistantId, CheckpointId, MessageId, RunId, ThreadId, UserId};
use serde_json::json;
use store::doctor::{AnyId, Check, DoctorOptions, DoctorReport, Severity};
use store::testing::{TestDb, new_run};
use store::{
    DatabaseUrl, EventKind, IfNotExists, Metadata, NewEvent, RunEnd, RunStatus, Store,
    SystemAssistant, ThreadStatus,
};

store::on_both_backends!(
    a_database_used_normally_is_healthy,
    thread_statuses_that_disagree_with_runs_are_fixed,
    stale_running_runs_end_in_error_with_an_event,
    seq_gaps_are_reported_and_a_last_seq_behind_is_raised,
    rows_pointing_at_missing_runs_or_threads_are_reported_not_fixed,
    invalid_ids_are_reported,
    inspect_finds_each_kind_of_id,
    doctor_beside_a_busy_store_sees_a_consistent_database,
    forks_are_a_tree_and_broken_parents_are_reported,
);

/// Runs raw SQL on the test database around the store, foreign keys off: SQLite by pragma,
/// PostgreSQL as a replica (which skips foreign-key triggers).
async fn raw(db: &TestDb, sqlite: &str, postgres: &str) {
    match &db.url {
        DatabaseUrl::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch("pragma foreign_keys = off").unwrap();
            c.execute_batch(sqlite).unwrap_or_else(|e| panic!("{sqlite}: {e}"));
        }
        DatabaseUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let sql = format!("set session_replication_role = replica; {postgres}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{postgres}: {e}"));
            c.close().await.unwrap();
        }
    }
}

/// The same SQL on both backends.
async fn raw_both(db: &TestDb, sql: &str) {
    raw(db, sql, sql).await;
}

/// An id as a SQL literal: a BLOB on SQLite, a uuid on PostgreSQL (both from the bytes).
fn lit(db: &TestDb, bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match db.url {
        DatabaseUrl::Sqlite(_) => format!("x'{hex}'"),
        DatabaseUrl::Postgres(_) => format!("'{hex}'::uuid"),
    }
}

fn event(run: Option<RunId>, n: i64) -> NewEvent {
    NewEvent { run_id: run, kind: EventKind::Custom, data: json!({ "n": n }) }
}

async fn doctor(store: &Store, fix: bool) -> DoctorReport {
    store.doctor(&DoctorOptions { fix, ..DoctorOptions::default() }).await.unwrap()
}

/// The checks found, in order, with their thread.
fn found(findings: &[store::doctor::Finding]) -> Vec<(Check, Option<ThreadId>)> {
    let mut out: Vec<_> = findings.iter().map(|f| (f.check, f.thread_id)).collect();
    out.sort_by_key(|(check, thread)| (*check, thread.map(|t| t.to_string())));
    out
}

fn sorted(mut expected: Vec<(Check, Option<ThreadId>)>) -> Vec<(Check, Option<ThreadId>)> {
    expected.sort_by_key(|(check, thread)| (*check, thread.map(|t| t.to_string())));
    expected
}

/// A thread with one finished run (events, a checkpoint), as the server leaves it.
async fn finished_thread(store: &Store, owner: UserId, status: RunStatus) -> (ThreadId, RunId) {
    let thread = ThreadId::new();
    let run = store.create_run(owner, &new_run(thread), IfNotExists::Create).await.unwrap();
    assert_eq!(store.claim_runs(10).await.unwrap().len(), 1);
    let update = Box::new(|_: Option<serde_json::Value>| Ok(json!({"messages": []})));
    let events = [event(Some(run.run_id), 1), event(Some(run.run_id), 2)];
    let end = RunEnd { status, error: None, event: event(Some(run.run_id), 3), interrupted: false };
    store
        .commit_step(owner, thread, run.run_id, &events, Some(update), &Metadata::new(), Some(&end))
        .await
        .unwrap();
    (thread, run.run_id)
}

async fn a_database_used_normally_is_healthy(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    finished_thread(store, owner, RunStatus::Success).await;
    finished_thread(store, owner, RunStatus::Error).await;
    let pending = ThreadId::new();
    store.create_run(owner, &new_run(pending), IfNotExists::Create).await.unwrap();
    store.create_api_key("alice", "hash", "spindle_abc").await.unwrap();

    let report = doctor(store, true).await;
    assert_eq!(report.findings, []);
    assert_eq!(report.repairs, []);
    assert!(report.healthy());
    assert_eq!((report.counts.threads, report.counts.runs, report.counts.active_runs), (3, 3, 1));
    assert_eq!(report.counts.events, 8, "two events, a values event and the end per run");
}

async fn thread_statuses_that_disagree_with_runs_are_fixed(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    // Busy with no run at all; busy after a run that ended in error; idle with a pending run.
    let empty = ThreadId::new();
    store.create_thread(owner, empty, &Metadata::new()).await.unwrap();
    let (failed, _) = finished_thread(store, owner, RunStatus::Error).await;
    let waiting = ThreadId::new();
    store.create_run(owner, &new_run(waiting), IfNotExists::Create).await.unwrap();
    let (empty_l, failed_l, waiting_l) =
        (lit(db, empty.as_bytes()), lit(db, failed.as_bytes()), lit(db, waiting.as_bytes()));
    raw_both(
        db,
        &format!(
            "update threads set status = 'busy' where thread_id in ({empty_l}, {failed_l});
             update threads set status = 'idle' where thread_id = {waiting_l};"
        ),
    )
    .await;

    let report = doctor(store, false).await;
    let expected = sorted(vec![
        (Check::BusyWithoutActiveRun, Some(empty)),
        (Check::BusyWithoutActiveRun, Some(failed)),
        (Check::ActiveRunNotBusy, Some(waiting)),
    ]);
    assert_eq!(found(&report.findings), expected);
    assert!(!report.healthy());
    let detail = |t: ThreadId| report.findings.iter().find(|f| f.thread_id == Some(t)).unwrap();
    assert_eq!(detail(empty).detail, "busy, but the thread has no runs");
    assert_eq!(
        detail(failed).detail,
        "busy, but no run is pending or running (the newest run is error)"
    );
    assert_eq!(detail(waiting).owner_id, Some(owner));
    // Without --fix nothing changed.
    assert_eq!(store.get_thread(owner, empty).await.unwrap().status, ThreadStatus::Busy);

    let report = doctor(store, true).await;
    assert_eq!(report.repairs.len(), 3, "{:?}", report.repairs);
    assert_eq!(report.remaining, []);
    assert!(report.healthy());
    assert_eq!(store.get_thread(owner, empty).await.unwrap().status, ThreadStatus::Idle);
    assert_eq!(store.get_thread(owner, failed).await.unwrap().status, ThreadStatus::Error);
    assert_eq!(store.get_thread(owner, waiting).await.unwrap().status, ThreadStatus::Busy);
    let done: Vec<&str> = report.repairs.iter().map(|r| r.done.as_str()).collect();
    assert!(done.contains(&"set the thread's status from busy to idle"), "{done:?}");
    assert!(done.contains(&"set the thread's status from idle to busy"), "{done:?}");
    assert_eq!(doctor(store, false).await.findings, [], "a second run is clean");
}

async fn stale_running_runs_end_in_error_with_an_event(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (stale, quiet_but_young, talking) = (ThreadId::new(), ThreadId::new(), ThreadId::new());
    let mut runs = Vec::new();
    for thread in [stale, quiet_but_young, talking] {
        runs.push(store.create_run(owner, &new_run(thread), IfNotExists::Create).await.unwrap());
    }
    assert_eq!(store.claim_runs(10).await.unwrap().len(), 3);
    // Two runs started an hour ago; one of them has just emitted an event (a sign of life).
    let old = [lit(db, runs[0].run_id.as_bytes()), lit(db, runs[2].run_id.as_bytes())].join(", ");
    raw(
        db,
        &format!("update runs set updated_at = updated_at - 3600000000 where run_id in ({old})"),
        &format!(
            "update runs set updated_at = updated_at - interval '1 hour' where run_id in ({old})"
        ),
    )
    .await;
    store.append_event(owner, talking, &event(Some(runs[2].run_id), 1)).await.unwrap();

    let report = doctor(store, false).await;
    assert_eq!(found(&report.findings), [(Check::StaleRunningRun, Some(stale))]);
    let finding = &report.findings[0];
    assert_eq!((finding.run_id, finding.owner_id), (Some(runs[0].run_id), Some(owner)));
    assert!(
        finding.detail.contains("(3600 s ago)") || finding.detail.contains("(3601 s ago)"),
        "{}",
        finding.detail
    );
    // With no grace at all every running run is stale, the one that just spoke too.
    let none = DoctorOptions { stale_after: Duration::ZERO, fix: false };
    assert_eq!(store.doctor(&none).await.unwrap().findings.len(), 3);

    let report = doctor(store, true).await;
    assert_eq!(report.remaining, []);
    assert_eq!(report.repairs.len(), 1);
    assert!(
        report.repairs[0].done.starts_with("ended the run `error` with a run_error event (seq 1)")
    );
    let ended = store.get_run(owner, stale, runs[0].run_id).await.unwrap();
    assert_eq!(ended.status, RunStatus::Error);
    assert!(ended.error.unwrap().starts_with("ended by spindle doctor"));
    let events = store.events_after(owner, stale, None, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].data["error"].as_str()),
        (EventKind::RunError, Some("StaleRun"))
    );
    assert_eq!(store.get_thread(owner, stale).await.unwrap().status, ThreadStatus::Error);
    for (thread, run) in [(quiet_but_young, &runs[1]), (talking, &runs[2])] {
        assert_eq!(
            store.get_run(owner, thread, run.run_id).await.unwrap().status,
            RunStatus::Running
        );
    }
    assert_eq!(doctor(store, false).await.findings, [], "a second run is clean");
}

async fn seq_gaps_are_reported_and_a_last_seq_behind_is_raised(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (gappy, behind, ahead) = (ThreadId::new(), ThreadId::new(), ThreadId::new());
    for (thread, n) in [(gappy, 7), (behind, 3), (ahead, 2)] {
        store.create_thread(owner, thread, &Metadata::new()).await.unwrap();
        let events: Vec<_> = (0..n).map(|i| event(None, i)).collect();
        store.append_events(owner, thread, &events).await.unwrap();
    }
    let (g, b, a) =
        (lit(db, gappy.as_bytes()), lit(db, behind.as_bytes()), lit(db, ahead.as_bytes()));
    raw_both(
        db,
        &format!(
            "delete from events where thread_id = {g} and seq in (2, 3, 5);
             update threads set last_seq = 1 where thread_id = {b};
             update threads set last_seq = 10 where thread_id = {a};"
        ),
    )
    .await;

    let report = doctor(store, false).await;
    let expected = sorted(vec![
        (Check::SeqGap, Some(gappy)),
        (Check::LastSeqBehind, Some(behind)),
        (Check::LastSeqAhead, Some(ahead)),
    ]);
    assert_eq!(found(&report.findings), expected);
    let gap = report.findings.iter().find(|f| f.check == Check::SeqGap).unwrap();
    assert_eq!(gap.detail, "3 of seq 1..7 missing (missing 2-3, missing 5)");
    assert_eq!(gap.severity, Severity::Warning);
    assert!(!report.healthy(), "a last_seq behind breaks appends");
    // It does: the next append collides with an existing seq.
    assert!(store.append_event(owner, behind, &event(None, 9)).await.is_err());

    let report = doctor(store, true).await;
    assert_eq!(report.repairs.len(), 1);
    assert_eq!(report.repairs[0].done, "raised last_seq from 1 to 3");
    // Gaps are never filled and last_seq never lowered: warnings remain, healthy.
    let expected = sorted(vec![(Check::SeqGap, Some(gappy)), (Check::LastSeqAhead, Some(ahead))]);
    assert_eq!(found(&report.remaining), expected);
    assert!(report.healthy());
    assert_eq!(store.append_event(owner, behind, &event(None, 9)).await.unwrap().seq, 4);
    assert!(doctor(store, false).await.healthy(), "a second run is healthy");
}

async fn rows_pointing_at_missing_runs_or_threads_are_reported_not_fixed(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (thread, _) = finished_thread(store, owner, RunStatus::Success).await;
    let (other, other_run) = finished_thread(store, owner, RunStatus::Success).await;
    let (ghost_run, ghost_thread, ghost_user) = (RunId::new(), ThreadId::new(), UserId::new());
    let orphan_run = RunId::new();
    let checkpoint = store.list_checkpoints(owner, thread, 1, None).await.unwrap()[0].checkpoint_id;
    let [t, o, c, gr, gt, gu, ow, r2, orphan, asst] = [
        thread.as_bytes(),
        other.as_bytes(),
        checkpoint.as_bytes(),
        ghost_run.as_bytes(),
        ghost_thread.as_bytes(),
        ghost_user.as_bytes(),
        owner.as_bytes(),
        other_run.as_bytes(),
        orphan_run.as_bytes(),
        AssistantId::for_graph("echo").as_bytes(),
    ]
    .map(|b| lit(db, b));
    let sql = |now: &str| {
        format!(
            "insert into events (thread_id, seq, run_id, kind, data, created_at) values ({t}, 5, {gr}, 'custom', '{{}}', {now});
             insert into events (thread_id, seq, run_id, kind, data, created_at) values ({t}, 6, {r2}, 'custom', '{{}}', {now});
             update threads set last_seq = 6 where thread_id = {t};
             update checkpoints set run_id = {gr} where checkpoint_id = {c};
             insert into runs (run_id, thread_id, owner_id, assistant_id, status, multitask_strategy, created_at, updated_at)
                 values ({orphan}, {gt}, {ow}, {asst}, 'success', 'reject', {now}, {now});
             update threads set owner_id = {gu} where thread_id = {o};"
        )
    };
    raw(db, &sql("1700000000000000"), &sql("now()")).await;
    let report = doctor(store, true).await;
    let expected = sorted(vec![
        (Check::EventRunMissing, Some(thread)),
        (Check::EventRunInOtherThread, Some(thread)),
        (Check::CheckpointRunMissing, Some(thread)),
        (Check::MissingParent, Some(ghost_thread)),
        // The other thread now belongs to a missing user, and its run to a user who no longer
        // owns its thread.
        (Check::MissingParent, Some(other)),
        (Check::MissingParent, Some(other)),
    ]);
    assert_eq!(found(&report.findings), expected, "{:#?}", report.findings);
    assert_eq!(report.repairs, [], "nothing here is safe to repair");
    assert_eq!(report.remaining, report.findings);
    assert!(!report.healthy());
    let detail =
        |check: Check| report.findings.iter().find(|f| f.check == check).unwrap().detail.clone();
    assert_eq!(
        detail(Check::EventRunMissing),
        format!("1 event(s) (seq 5..5) name run {ghost_run}, which does not exist")
    );
    assert_eq!(
        detail(Check::EventRunInOtherThread),
        format!("1 event(s) (seq 6..6) name a run of thread {other}")
    );
    assert_eq!(
        detail(Check::CheckpointRunMissing),
        format!("checkpoint {checkpoint} names run {ghost_run}, which does not exist")
    );
}

async fn invalid_ids_are_reported(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (thread, _) = finished_thread(store, owner, RunStatus::Success).await;
    let t = lit(db, thread.as_bytes());
    let nil = lit(db, &[0; 16]);
    raw(
        db,
        &format!(
            "update checkpoints set parent_checkpoint_id = {nil} where thread_id = {t};
             update events set run_id = x'0102' where thread_id = {t} and seq = 1;"
        ),
        &format!("update checkpoints set parent_checkpoint_id = {nil} where thread_id = {t};"),
    )
    .await;

    let report = doctor(store, true).await;
    let invalid: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.check == Check::InvalidId)
        .map(|f| f.detail.as_str())
        .collect();
    match db.url {
        DatabaseUrl::Sqlite(_) => {
            assert_eq!(invalid.len(), 2, "{invalid:?}");
            assert!(
                invalid[0].starts_with("checkpoints.parent_checkpoint_id of the row with rowid ")
            );
            assert!(invalid[0].ends_with(" is the nil UUID"));
            assert_eq!(invalid[1], "events.run_id of the event 1 is a 2-byte BLOB x'0102'");
            let finding = report.findings.iter().find(|f| f.detail == invalid[1]).unwrap();
            assert_eq!(finding.thread_id, Some(thread));
        }
        DatabaseUrl::Postgres(_) => {
            assert_eq!(invalid.len(), 1, "{invalid:?}");
            assert!(
                invalid[0].starts_with("checkpoints.parent_checkpoint_id of the row with ctid ")
            );
        }
    }
    assert_eq!(report.findings.len(), invalid.len(), "{:#?}", report.findings);
    assert!(!report.healthy());
}

async fn inspect_finds_each_kind_of_id(db: &TestDb) {
    let store = &db.store;
    let echo = SystemAssistant { graph_id: "echo".into(), description: None };
    let assistant = store.upsert_system_assistant(&echo).await.unwrap();
    let key = store.create_api_key("alice", "hash", "spindle_abc").await.unwrap();
    let owner = key.user_id;
    let (thread, run) = finished_thread(store, owner, RunStatus::Success).await;
    let message = MessageId::new();
    let values = json!({"messages": ["plain", {"id": message.to_string(), "type": "human"}]});
    let checkpoint = store.put_state(owner, thread, None, &values, &Metadata::new()).await.unwrap();

    let look = |text: String| async move {
        store.admin_inspect_id(&AnyId::parse(&text).unwrap()).await.unwrap()
    };
    let found = look(thread.to_string()).await;
    let facts = found.thread.as_ref().unwrap();
    assert_eq!(
        (facts.owner_subject.as_deref(), facts.runs, facts.active_runs),
        (Some("alice"), 1, 0)
    );
    assert_eq!((facts.checkpoints, facts.events, facts.thread.last_seq), (2, 4, 4));
    assert_eq!(facts.last_run.as_ref().map(|r| r.run_id), Some(run));
    assert!(found.run.is_none() && found.user.is_none() && found.message_threads.is_empty());

    let found = look(run.to_string()).await;
    let facts = found.run.unwrap();
    assert_eq!(
        (facts.run.thread_id, facts.run.status, facts.events),
        (thread, RunStatus::Success, 4)
    );
    assert!(found.thread.is_none());

    assert_eq!(look(assistant.assistant_id.to_string()).await.assistant, Some(assistant));
    assert_eq!(look(checkpoint.checkpoint_id.to_string()).await.checkpoint, Some(checkpoint));
    let found = look(owner.to_string()).await;
    let user = found.user.unwrap();
    assert_eq!((user.user.subject.as_str(), user.threads, user.api_keys), ("alice", 1, 1));
    assert_eq!(look(key.key_id.to_string()).await.api_key, Some(key));
    assert_eq!(look(message.to_string()).await.message_threads, [(thread, owner)]);
    assert!(look(ThreadId::new().to_string()).await.is_empty());
}

/// The doctor reads one snapshot, so runs being created, claimed and ended while it scans
/// (and while it repairs) never look broken to it, and its repairs break nothing.
async fn doctor_beside_a_busy_store_sees_a_consistent_database(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..15 {
                    finished_thread_any(&store, owner).await;
                }
            })
        })
        .collect();
    let mut scans = 0;
    while workers.iter().any(|w| !w.is_finished()) || scans < 3 {
        let report = doctor(store, true).await;
        assert_eq!(report.findings, [], "scan {scans}");
        assert_eq!(report.repairs, []);
        scans += 1;
    }
    for w in workers {
        w.await.unwrap();
    }
    let report = doctor(store, false).await;
    assert_eq!((report.findings.len(), report.counts.runs, report.counts.events), (0, 60, 240));
}

/// [`finished_thread`] that tolerates sharing the claim queue with other workers: it claims
/// until its own run is running.
async fn finished_thread_any(store: &Store, owner: UserId) {
    let thread = ThreadId::new();
    let run = store.create_run(owner, &new_run(thread), IfNotExists::Create).await.unwrap();
    // Other workers' claims may take this run; whoever claims a run ends it below, so claim
    // until this one is running.
    loop {
        for claimed in store.claim_runs(10).await.unwrap() {
            end(store, owner, claimed.thread_id, claimed.run_id).await;
        }
        if store.get_run(owner, thread, run.run_id).await.unwrap().status != RunStatus::Pending {
            return;
        }
    }
}

async fn end(store: &Store, owner: UserId, thread: ThreadId, run: RunId) {
    let update = Box::new(|_: Option<serde_json::Value>| Ok(json!({"messages": []})));
    let events = [event(Some(run), 1), event(Some(run), 2)];
    let end = RunEnd {
        status: RunStatus::Success,
        error: None,
        event: event(Some(run), 3),
        interrupted: false,
    };
    store
        .commit_step(owner, thread, run, &events, Some(update), &Metadata::new(), Some(&end))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_duplicate_seqs_are_reported() {
    // Only PostgreSQL lets a test drop the primary key that forbids them.
    let Some(db) = TestDb::new(store::Backend::Postgres).await else { return };
    let owner = db.store.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    db.store.create_thread(owner, thread, &Metadata::new()).await.unwrap();
    db.store.append_events(owner, thread, &[event(None, 1), event(None, 2)]).await.unwrap();
    let t = lit(&db, thread.as_bytes());
    let sql = format!(
        "alter table events drop constraint events_pkey;
         insert into events (thread_id, seq, kind, data, created_at) values ({t}, 2, 'custom', '{{}}', now());"
    );
    raw_both(&db, &sql).await;
    let report = doctor(&db.store, true).await;
    assert_eq!(found(&report.findings), [(Check::SeqDuplicate, Some(thread))]);
    assert_eq!(report.findings[0].detail, "1 event(s) share a seq with another (2 twice)");
    assert!(!report.healthy());
}

/// Forks make a thread's checkpoints a tree: the doctor finds it healthy and `id inspect`
/// tells a fork point, a branch's end and the newest; a parent that is missing, of another
/// thread, or not older is reported (never fixed).
async fn forks_are_a_tree_and_broken_parents_are_reported(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    store.create_thread(owner, thread, &Metadata::new()).await.unwrap();
    let none = Metadata::new();
    let put = |text: &str, from: Option<CheckpointId>| {
        let values = json!({ "messages": [{ "type": "human", "content": text }] });
        let update = Box::new(move |_: Option<serde_json::Value>| Ok(values.clone()));
        store.update_state(owner, thread, None, from, update, &none)
    };
    let root = put("root", None).await.unwrap();
    let a = put("a", None).await.unwrap();
    let b = put("b", Some(root.checkpoint_id)).await.unwrap();
    assert_eq!(b.parent_checkpoint_id, Some(root.checkpoint_id));
    assert_eq!((root.metadata["step"].clone(), b.metadata["step"].clone()), (json!(-1), json!(0)));
    assert!(doctor(store, false).await.healthy());

    let look = |id: CheckpointId| async move {
        let found = store.admin_inspect_id(&AnyId::parse(&id.to_string()).unwrap()).await.unwrap();
        found.checkpoint_facts.unwrap()
    };
    let facts = look(root.checkpoint_id).await;
    assert_eq!(facts.children, [a.checkpoint_id, b.checkpoint_id], "a fork point");
    assert_eq!((facts.newest, facts.depth, facts.chain_whole), (false, 0, true));
    let facts = look(b.checkpoint_id).await;
    assert_eq!(facts.children, []);
    assert_eq!((facts.newest, facts.depth, facts.chain_whole), (true, 1, true));
    let facts = look(a.checkpoint_id).await;
    assert_eq!((facts.newest, facts.depth), (false, 1));

    // Broken by hand: a's parent deleted, b's parent another thread's checkpoint, and a
    // third checkpoint made the parent of root, which is older than it.
    let (other, _) = finished_thread(store, owner, RunStatus::Success).await;
    let foreign = store.list_checkpoints(owner, other, 1, None).await.unwrap()[0].checkpoint_id;
    let ghost = CheckpointId::new();
    let c = put("c", None).await.unwrap();
    let [ca, cb, cr, g, f, cc] =
        [a.checkpoint_id, b.checkpoint_id, root.checkpoint_id, ghost, foreign, c.checkpoint_id]
            .map(|id| lit(db, id.as_bytes()));
    raw_both(
        db,
        &format!(
            "update checkpoints set parent_checkpoint_id = {g} where checkpoint_id = {ca};
             update checkpoints set parent_checkpoint_id = {f} where checkpoint_id = {cb};
             update checkpoints set parent_checkpoint_id = {cc} where checkpoint_id = {cr};"
        ),
    )
    .await;
    let report = doctor(store, true).await;
    let broken: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.check == Check::CheckpointParentMissing)
        .map(|f| f.detail.clone())
        .collect();
    assert_eq!(
        broken,
        [
            format!(
                "checkpoint {} has parent {cr_parent}, which is not older than it",
                root.checkpoint_id,
                cr_parent = c.checkpoint_id
            ),
            format!("checkpoint {} has parent {ghost}, which does not exist", a.checkpoint_id),
            format!(
                "checkpoint {} has parent {foreign}, a checkpoint of thread {other}",
                b.checkpoint_id
            ),
        ],
        "{:#?}",
        report.findings
    );
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.severity == Severity::Error || f.check != Check::CheckpointParentMissing)
    );
    assert_eq!(report.repairs, [], "nothing here is safe to repair");
    assert!(!look(a.checkpoint_id).await.chain_whole);
}
