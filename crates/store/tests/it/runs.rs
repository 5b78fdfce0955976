//! Runs: multitask strategies under concurrency, claims, rollback, recovery, and a step's
//! transaction.

use std::collections::HashSet;

use ids::{AssistantId, ThreadId};
use serde_json::json;
use std::time::Duration;
use store::testing::{TestDb, eventually};
use store::{
    Error, EventKind, IfNotExists, Metadata, MultitaskStrategy, NewEvent, NewRun, RunStatus,
    ThreadStatus,
};

use crate::rows::*;

store::on_both_backends!(
    reject_lets_exactly_one_of_50_concurrent_runs_in,
    on_an_existing_thread_50_concurrent_creates_start_exactly_one_run,
    interrupt_and_rollback_clear_pending_runs,
    claims_are_fifo_and_one_running_run_per_thread,
    claims_take_users_in_turns_within_a_limit_per_user,
    rollback_restores_the_state_before_the_run,
    recovery_ends_runs_left_running,
    runs_are_deleted_only_when_finished,
    a_step_commits_its_events_and_state_together_or_not_at_all,
);

async fn reject_lets_exactly_one_of_50_concurrent_runs_in(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            let run = run_with(id, MultitaskStrategy::Reject);
            tokio::spawn(async move { store.create_run(owner, &run, IfNotExists::Create).await })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Conflict(m)) if m == store::THREAD_BUSY => busy += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, busy), (1, 49));
    assert_eq!(store.admin_count_threads(id).await.unwrap(), 1);
    assert_eq!(store.list_runs(owner, id, 100, 0, None).await.unwrap().len(), 1);
}

/// On a thread that exists (the row lock is waited for, not created), whether a run may start
/// is decided once: with `reject` one of 50 gets in; with `enqueue`, of 50 runs created to
/// start at once exactly one starts (`running`) and the rest wait (`pending`).
async fn on_an_existing_thread_50_concurrent_creates_start_exactly_one_run(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    for strategy in [MultitaskStrategy::Reject, MultitaskStrategy::Enqueue] {
        let id = ThreadId::new();
        store.get_or_create_thread(owner, id, &Metadata::new()).await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                let run = run_with(id, strategy);
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        let created = store.create_run_claiming(
                            owner,
                            &run,
                            IfNotExists::Reject,
                            no_first_step(),
                        );
                        created.await.map(|(run, ..)| run)
                    } else {
                        store.create_run(owner, &run, IfNotExists::Reject).await
                    }
                })
            })
            .collect();
        let (mut created, mut busy) = (Vec::new(), 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(run) => created.push(run),
                Err(Error::Conflict(m)) if m == store::THREAD_BUSY => busy += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        let runs = store.list_runs(owner, id, 100, 0, None).await.unwrap();
        let running = runs.iter().filter(|r| r.status == RunStatus::Running).count();
        match strategy {
            MultitaskStrategy::Reject => {
                assert_eq!((created.len(), busy, runs.len()), (1, 49, 1));
                assert!(running <= 1);
            }
            _ => {
                assert_eq!((created.len(), runs.len()), (50, 50));
                // Only a run created to start at once may be running, and only one is.
                assert!(running <= 1, "{running} runs started at once on one thread");
                let pending = runs.iter().filter(|r| r.status == RunStatus::Pending).count();
                assert_eq!(pending + running, 50);
            }
        }
    }
}

async fn interrupt_and_rollback_clear_pending_runs(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let stamp = meta(json!({"graph_id": "echo", "assistant_id": AssistantId::for_graph("echo")}));
    let first = NewRun { thread_metadata: stamp.clone(), ..new_run(id) };
    let first = store.create_run(owner, &first, IfNotExists::Create).await.unwrap();
    assert_eq!(store.get_thread(owner, id).await.unwrap().metadata, stamp);
    let claimed = store.claim_runs(10).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.run_id).collect::<Vec<_>>(), [first.run_id]);
    let queued = store.create_run(owner, &new_run(id), IfNotExists::Reject).await.unwrap();
    let interrupting = store
        .create_run(owner, &run_with(id, MultitaskStrategy::Interrupt), IfNotExists::Reject)
        .await
        .unwrap();
    // The queued run ended interrupted; the running one is the executor's to stop.
    assert_eq!(
        store.get_run(owner, id, queued.run_id).await.unwrap().status,
        RunStatus::Interrupted
    );
    assert_eq!(store.get_run(owner, id, first.run_id).await.unwrap().status, RunStatus::Running);
    let rolling = store
        .create_run(owner, &run_with(id, MultitaskStrategy::Rollback), IfNotExists::Reject)
        .await
        .unwrap();
    assert_not_found(store.get_run(owner, id, interrupting.run_id).await);
    let pending = store.list_runs(owner, id, 10, 0, Some(RunStatus::Pending)).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.run_id).collect::<Vec<_>>(), [rolling.run_id]);
    let interrupted =
        store.list_runs(owner, id, 10, 0, Some(RunStatus::Interrupted)).await.unwrap();
    assert_eq!(interrupted.len(), 1);
}

async fn claims_take_users_in_turns_within_a_limit_per_user(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let runs_of = |user| async move {
        let mut runs = Vec::new();
        for _ in 0..4 {
            runs.push(
                store
                    .create_run(user, &new_run(ThreadId::new()), IfNotExists::Create)
                    .await
                    .unwrap(),
            );
        }
        runs
    };
    let of_alice = runs_of(alice).await;
    let of_bob = runs_of(bob).await;
    let ids = |runs: Vec<store::Run>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    // All of Alice's runs are older, yet the first claim takes one of each user's.
    let first = ids(store.claim_runs_fairly(2, 3).await.unwrap());
    assert_eq!(first, [of_alice[0].run_id, of_bob[0].run_id]);
    // At most three running runs each: two more of each user's.
    let second = ids(store.claim_runs_fairly(10, 3).await.unwrap());
    assert_eq!(
        second,
        [of_alice[1].run_id, of_alice[2].run_id, of_bob[1].run_id, of_bob[2].run_id]
    );
    assert!(store.claim_runs_fairly(10, 3).await.unwrap().is_empty(), "both at their limit");
    // A run of Alice's ends: her next run is claimable, Bob's is not.
    let done = &of_alice[0];
    store
        .set_run_status(alice, done.thread_id, done.run_id, RunStatus::Success, None)
        .await
        .unwrap();
    assert_eq!(ids(store.claim_runs_fairly(10, 3).await.unwrap()), [of_alice[3].run_id]);
    // Without a limit per user, Bob's last run goes too.
    assert_eq!(ids(store.claim_runs(10).await.unwrap()), [of_bob[3].run_id]);
}

async fn claims_are_fifo_and_one_running_run_per_thread(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (a, b) = (ThreadId::new(), ThreadId::new());
    let a1 = store.create_run(owner, &new_run(a), IfNotExists::Create).await.unwrap();
    let b1 = store.create_run(owner, &new_run(b), IfNotExists::Create).await.unwrap();
    let a2 = store.create_run(owner, &new_run(a), IfNotExists::Reject).await.unwrap();
    let ids = |runs: Vec<store::Run>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    assert_eq!(ids(store.claim_runs(10).await.unwrap()), [a1.run_id, b1.run_id]);
    assert!(store.claim_runs(10).await.unwrap().is_empty(), "a2 waits for a1");
    store.set_run_status(owner, a, a1.run_id, RunStatus::Success, None).await.unwrap();
    assert_eq!(ids(store.claim_runs(10).await.unwrap()), [a2.run_id]);
    // Concurrent claimers never claim one run twice.
    let t = ThreadId::new();
    for _ in 0..3 {
        for _ in 0..10 {
            store.create_run(owner, &new_run(ThreadId::new()), IfNotExists::Create).await.unwrap();
        }
    }
    store.create_run(owner, &new_run(t), IfNotExists::Create).await.unwrap();
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_runs(3).await.unwrap() })
        })
        .collect();
    let mut all = HashSet::new();
    for c in claimers {
        for run in c.await.unwrap() {
            assert!(all.insert(run.run_id), "claimed twice");
        }
    }
    assert_eq!(all.len(), 24);
}

async fn rollback_restores_the_state_before_the_run(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    let before = json!({"messages": ["before"]});
    store.put_state(owner, id, None, &before, &Metadata::new()).await.unwrap();
    let run = store.create_run(owner, &new_run(id), IfNotExists::Reject).await.unwrap();
    store.claim_runs(1).await.unwrap();
    store
        .put_state(
            owner,
            id,
            Some(run.run_id),
            &json!({"messages": ["before", "during"]}),
            &Metadata::new(),
        )
        .await
        .unwrap();
    store
        .append_event(
            owner,
            id,
            &NewEvent { run_id: Some(run.run_id), kind: EventKind::Values, data: json!({}) },
        )
        .await
        .unwrap();
    store.rollback_run(owner, id, run.run_id).await.unwrap();
    let thread = store.get_thread(owner, id).await.unwrap();
    assert_eq!(thread.values, Some(before));
    assert_eq!(thread.status, ThreadStatus::Idle);
    assert_eq!(store.list_checkpoints(owner, id, 10, None).await.unwrap().len(), 1);
    assert!(store.events_after(owner, id, None, 0, 10).await.unwrap().is_empty());
    assert_not_found(store.get_run(owner, id, run.run_id).await);
}

async fn recovery_ends_runs_left_running(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (a, b) = (ThreadId::new(), ThreadId::new());
    let ra = store.create_run(owner, &new_run(a), IfNotExists::Create).await.unwrap();
    store.create_run(owner, &new_run(b), IfNotExists::Create).await.unwrap();
    store.claim_runs(1).await.unwrap();
    let queued = store.create_run(owner, &new_run(a), IfNotExists::Reject).await.unwrap();
    let recovered = store.recover_runs().await.unwrap();
    assert_eq!(recovered.iter().map(|r| r.run_id).collect::<Vec<_>>(), [ra.run_id]);
    let ended = store.get_run(owner, a, ra.run_id).await.unwrap();
    assert_eq!(
        (ended.status, ended.error.as_deref()),
        (RunStatus::Error, Some("server restarted"))
    );
    // Pending runs stay pending (they will be claimed); a thread with one stays busy.
    assert_eq!(store.get_run(owner, a, queued.run_id).await.unwrap().status, RunStatus::Pending);
    assert_eq!(store.get_thread(owner, a).await.unwrap().status, ThreadStatus::Busy);
    assert!(store.recover_runs().await.unwrap().is_empty());
}

async fn runs_are_deleted_only_when_finished(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let run = store.create_run(owner, &new_run(id), IfNotExists::Create).await.unwrap();
    assert!(matches!(store.delete_run(owner, id, run.run_id).await, Err(Error::Conflict(_))));
    store.set_run_status(owner, id, run.run_id, RunStatus::Success, None).await.unwrap();
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    assert_not_found(store.delete_run(bob, id, run.run_id).await);
    store.delete_run(owner, id, run.run_id).await.unwrap();
    assert_not_found(store.get_run(owner, id, run.run_id).await);
}

async fn a_step_commits_its_events_and_state_together_or_not_at_all(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let run = store.create_run(owner, &new_run(id), IfNotExists::Create).await.unwrap();
    let events = [event(EventKind::AgentStarted, 1), event(EventKind::MessageDelta, 2)];
    let update = Box::new(|_: Option<serde_json::Value>| Ok(json!({"messages": ["a"]})));
    let step = store
        .commit_step(owner, id, run.run_id, &events, Some(update), &Metadata::new(), None)
        .await
        .unwrap();
    let (checkpoint, appended) = (step.checkpoint, step.events);
    assert_eq!(checkpoint.unwrap().run_id, Some(run.run_id));
    let kinds: Vec<_> = appended.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        kinds,
        [(1, EventKind::AgentStarted), (2, EventKind::MessageDelta), (3, EventKind::Values)]
    );
    assert_eq!(appended[2].data, json!({"messages": ["a"]}));
    // A failing update takes its events with it.
    let fail = Box::new(|_: Option<serde_json::Value>| Err("no".to_owned()));
    let result =
        store.commit_step(owner, id, run.run_id, &events, Some(fail), &Metadata::new(), None).await;
    assert!(matches!(result, Err(Error::Invalid(_))));
    assert_eq!(store.events_after(owner, id, None, 0, 100).await.unwrap().len(), 3);
    let done = event(EventKind::AgentCompleted, 9);
    assert!(
        matches!(
            store.finish_run(owner, id, run.run_id, RunStatus::Success, None, &done).await,
            Err(Error::Conflict(_))
        ),
        "a pending run cannot end as if it ran"
    );
    store.claim_runs(1).await.unwrap();
    let (ended, last) = store
        .finish_run(
            owner,
            id,
            run.run_id,
            RunStatus::Success,
            None,
            &event(EventKind::AgentCompleted, 9),
        )
        .await
        .unwrap();
    assert_eq!(
        (ended.status, last.seq, last.kind),
        (RunStatus::Success, 4, EventKind::AgentCompleted)
    );
    assert_eq!(store.get_thread(owner, id).await.unwrap().status, ThreadStatus::Idle);
    let again =
        store.finish_run(owner, id, run.run_id, RunStatus::Error, Some("late"), &done).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "a run ends once");
    assert_eq!(store.get_run(owner, id, run.run_id).await.unwrap().status, RunStatus::Success);
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    assert_not_found(
        store.commit_step(bob, id, run.run_id, &events, None, &Metadata::new(), None).await,
    );
}

/// The SQLite writer does not checkpoint the WAL itself; its checkpointer thread must, or the
/// WAL grows forever and the database file never receives the data.
#[tokio::test]
async fn sqlite_wal_is_checkpointed_into_the_database_file() {
    let db = TestDb::sqlite().await;
    let store::DatabaseUrl::Sqlite(path) = &db.url else { unreachable!("a sqlite url") };
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let owner = db.store.ensure_user("alice").await.unwrap().user_id;
    let thread = db.store.get_or_create_thread(owner, ThreadId::new(), &Metadata::new()).await;
    let thread = thread.unwrap().0.thread_id;
    // One commit each (the caller waits for each), 4 KiB of data each: 200 commits, 800 KiB.
    let text = "x".repeat(4096);
    for _ in 0..200 {
        let event =
            NewEvent { run_id: None, kind: EventKind::Custom, data: json!({ "text": text }) };
        db.store.append_events(owner, thread, &[event]).await.unwrap();
    }
    let checkpointed = async || (size() >= before + 800 * 1024).then_some(());
    eventually("the WAL is checkpointed", Duration::from_secs(30), checkpointed).await;
}
