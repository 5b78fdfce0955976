//! Threads, their events and search, users and API keys: owner scoping and atomicity.

use std::collections::HashSet;

use ids::{AssistantId, RunId, ThreadId};
use serde_json::json;
use store::testing::TestDb;
use store::{
    Backend, Error, EventKind, IfNotExists, Metadata, NewEvent, RunStatus, SortOrder, ThreadFilter,
    ThreadPage, ThreadSortBy, ThreadStatus,
};

use crate::rows::*;

store::on_both_backends!(
    get_or_create_is_atomic_under_64_concurrent_calls,
    another_owners_thread_is_a_conflict_that_reveals_nothing,
    every_thread_operation_is_owner_scoped,
    concurrent_appends_get_gapless_unique_seqs,
    events_after_reads_in_order_from_a_seq,
    create_run_reject_on_a_missing_thread_creates_nothing,
    create_run_with_create_makes_one_thread_under_50_concurrent_runs,
    thread_status_follows_its_runs,
    delete_cascades_to_runs_checkpoints_and_events,
    state_history_is_newest_first_with_parents,
    metadata_update_is_a_shallow_merge,
    ensure_user_is_idempotent_under_concurrency,
    system_assistants_have_langgraph_ids,
    migrate_twice_is_a_no_op,
    a_failed_write_leaves_no_trace,
    search_filters_sorts_pages_and_counts_only_the_callers_threads,
    concurrent_state_updates_lose_nothing,
    checkpoints_are_read_only_by_their_owner,
    api_keys_authenticate_until_revoked,
);

async fn get_or_create_is_atomic_under_64_concurrent_calls(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.get_or_create_thread(owner, id, &meta(json!({ "caller": i }))).await
            })
        })
        .collect();
    let mut created = 0;
    let mut seen = HashSet::new();
    for task in tasks {
        let (thread, was_created) = task.await.unwrap().expect("no call errors");
        created += usize::from(was_created);
        seen.insert((thread.thread_id, thread.created_at, thread.metadata.clone()));
    }
    assert_eq!(created, 1, "exactly one call creates the thread");
    assert_eq!(seen.len(), 1, "every call returns the same row: {seen:?}");
    assert_eq!(store.admin_count_threads(id).await.unwrap(), 1);
}

async fn another_owners_thread_is_a_conflict_that_reveals_nothing(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(alice, id, &meta(json!({"secret": "alice's"}))).await.unwrap();

    let err = store.get_or_create_thread(bob, id, &Metadata::new()).await.unwrap_err();
    match &err {
        Error::Conflict(message) => assert_eq!(message, &format!("thread {id} already exists")),
        other => panic!("expected conflict, got {other:?}"),
    }
    let err = store.create_run(bob, &new_run(id), IfNotExists::Create).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    // Alice's thread is untouched.
    let thread = store.get_thread(alice, id).await.unwrap();
    assert_eq!(thread.metadata, meta(json!({"secret": "alice's"})));
    assert_eq!(thread.status, ThreadStatus::Idle);
}

async fn every_thread_operation_is_owner_scoped(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(alice, id, &Metadata::new()).await.unwrap();
    let run = store.create_run(alice, &new_run(id), IfNotExists::Reject).await.unwrap();
    store.append_event(alice, id, &event(EventKind::RunCreated, 1)).await.unwrap();
    store.put_state(alice, id, None, &json!({"messages": []}), &Metadata::new()).await.unwrap();

    assert_not_found(store.get_thread(bob, id).await);
    assert_not_found(store.update_thread_metadata(bob, id, &meta(json!({"x": 1}))).await);
    assert_not_found(store.delete_thread(bob, id).await);
    assert_not_found(store.create_run(bob, &new_run(id), IfNotExists::Reject).await);
    assert_not_found(store.get_run(bob, id, run.run_id).await);
    assert_not_found(store.list_runs(bob, id, 10, 0, None).await);
    assert_not_found(store.set_run_status(bob, id, run.run_id, RunStatus::Error, None).await);
    assert_not_found(store.append_event(bob, id, &event(EventKind::RunError, 2)).await);
    assert_not_found(store.events_after(bob, id, None, 0, 100).await);
    assert_not_found(store.put_state(bob, id, None, &json!({}), &Metadata::new()).await);
    assert_not_found(store.list_checkpoints(bob, id, 10, None).await);
    assert!(store.list_threads(bob, 100, 0).await.unwrap().is_empty());

    // Nothing bob tried changed alice's data.
    let thread = store.get_thread(alice, id).await.unwrap();
    assert_eq!(thread.last_seq, 1);
    assert_eq!(thread.metadata, Metadata::new());
    assert_eq!(store.get_run(alice, id, run.run_id).await.unwrap().status, RunStatus::Pending);
    assert_eq!(store.list_checkpoints(alice, id, 10, None).await.unwrap().len(), 1);
}

async fn concurrent_appends_get_gapless_unique_seqs(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    // Mix single appends and batches of three.
                    let batch: Vec<_> = (0..if i % 5 == 0 { 3 } else { 1 })
                        .map(|k| event(EventKind::MessageDelta, w * 1000 + i * 10 + k))
                        .collect();
                    let events = store.append_events(owner, id, &batch).await.unwrap();
                    assert!(
                        events.windows(2).all(|p| p[1].seq == p[0].seq + 1),
                        "a batch is contiguous"
                    );
                    seqs.extend(events.iter().map(|e| e.seq));
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        let seqs = w.await.unwrap();
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "one writer's seqs increase");
        all.extend(seqs);
    }
    all.sort_unstable();
    let expected: Vec<i64> = (1..=16 * (20 + 5 * 3)).collect();
    assert_eq!(all, expected, "seqs are 1..=n with no gap and no duplicate");
    let stored = store.events_after(owner, id, None, 0, 10_000).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
    assert_eq!(store.get_thread(owner, id).await.unwrap().last_seq, 560);
}

async fn events_after_reads_in_order_from_a_seq(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    assert!(store.events_after(owner, id, None, 0, 10).await.unwrap().is_empty());
    let run = store.create_run(owner, &new_run(id), IfNotExists::Reject).await.unwrap();
    for n in 1..=10 {
        let e = NewEvent {
            run_id: Some(run.run_id),
            kind: EventKind::MessageDelta,
            data: json!({ "n": n }),
        };
        let stored = store.append_event(owner, id, &e).await.unwrap();
        assert_eq!(stored.seq, n);
    }
    let after = store.events_after(owner, id, None, 4, 3).await.unwrap();
    let of_run = store.events_after(owner, id, Some(run.run_id), 8, 100).await.unwrap();
    assert_eq!(of_run.iter().map(|e| e.seq).collect::<Vec<_>>(), [9, 10]);
    assert!(store.events_after(owner, id, Some(RunId::new()), 0, 100).await.unwrap().is_empty());
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(after[0].data, json!({"n": 5}));
    assert_eq!(after[0].run_id, Some(run.run_id));
    assert_eq!(after[0].kind, EventKind::MessageDelta);
    assert!(store.events_after(owner, id, None, 10, 10).await.unwrap().is_empty());
}

async fn create_run_reject_on_a_missing_thread_creates_nothing(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    assert_not_found(store.create_run(owner, &new_run(id), IfNotExists::Reject).await);
    assert_eq!(store.admin_count_threads(id).await.unwrap(), 0);
    assert!(store.list_threads(owner, 10, 0).await.unwrap().is_empty());
}

async fn create_run_with_create_makes_one_thread_under_50_concurrent_runs(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { store.create_run(owner, &new_run(id), IfNotExists::Create).await },
            )
        })
        .collect();
    for task in tasks {
        let run = task.await.unwrap().expect("every run is recorded");
        assert_eq!(run.thread_id, id);
    }
    assert_eq!(store.admin_count_threads(id).await.unwrap(), 1);
    assert_eq!(store.list_runs(owner, id, 100, 0, None).await.unwrap().len(), 50);
    assert_eq!(store.get_thread(owner, id).await.unwrap().status, ThreadStatus::Busy);
}

async fn thread_status_follows_its_runs(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    let status = || async { store.get_thread(owner, id).await.unwrap().status };
    let first = store.create_run(owner, &new_run(id), IfNotExists::Reject).await.unwrap();
    let second = store.create_run(owner, &new_run(id), IfNotExists::Reject).await.unwrap();
    assert_eq!(status().await, ThreadStatus::Busy);
    store.set_run_status(owner, id, first.run_id, RunStatus::Running, None).await.unwrap();
    store.set_run_status(owner, id, first.run_id, RunStatus::Success, None).await.unwrap();
    assert_eq!(status().await, ThreadStatus::Busy, "busy while another run is pending");
    let ended = store
        .set_run_status(owner, id, second.run_id, RunStatus::Error, Some("boom"))
        .await
        .unwrap();
    assert_eq!(ended.error.as_deref(), Some("boom"));
    assert_eq!(status().await, ThreadStatus::Error);
    let third = store.create_run(owner, &new_run(id), IfNotExists::Reject).await.unwrap();
    store.set_run_status(owner, id, third.run_id, RunStatus::Interrupted, None).await.unwrap();
    assert_eq!(status().await, ThreadStatus::Idle);
    let runs = store.list_runs(owner, id, 10, 0, None).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        [third.run_id, second.run_id, first.run_id]
    );
}

async fn delete_cascades_to_runs_checkpoints_and_events(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    let run = store.create_run(owner, &new_run(id), IfNotExists::Create).await.unwrap();
    store
        .append_event(
            owner,
            id,
            &NewEvent { run_id: Some(run.run_id), kind: EventKind::AgentStarted, data: json!({}) },
        )
        .await
        .unwrap();
    store
        .put_state(owner, id, Some(run.run_id), &json!({"messages": []}), &Metadata::new())
        .await
        .unwrap();
    store.delete_thread(owner, id).await.unwrap();
    assert_eq!(store.admin_count_threads(id).await.unwrap(), 0);
    assert_not_found(store.get_run(owner, id, run.run_id).await);
    assert_not_found(store.delete_thread(owner, id).await);
    // The id is free again, and the new thread starts with an empty log and history.
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    assert!(store.events_after(owner, id, None, 0, 10).await.unwrap().is_empty());
    assert!(store.list_checkpoints(owner, id, 10, None).await.unwrap().is_empty());
    assert!(store.list_runs(owner, id, 10, 0, None).await.unwrap().is_empty());
    assert_eq!(
        store.append_event(owner, id, &event(EventKind::RunCreated, 0)).await.unwrap().seq,
        1
    );
}

async fn state_history_is_newest_first_with_parents(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    assert_eq!(store.get_thread(owner, id).await.unwrap().values, None);
    let mut written = Vec::new();
    for n in 0..5 {
        let values = json!({"messages": [{"type": "human", "content": format!("m{n}")}]});
        written.push(
            store.put_state(owner, id, None, &values, &meta(json!({"step": n}))).await.unwrap(),
        );
    }
    let thread = store.get_thread(owner, id).await.unwrap();
    assert_eq!(thread.values, Some(written[4].values.clone()));
    let history = store.list_checkpoints(owner, id, 10, None).await.unwrap();
    let newest_first: Vec<_> = written.iter().rev().cloned().collect();
    assert_eq!(history, newest_first);
    assert_eq!(history[4].parent_checkpoint_id, None);
    for pair in history.windows(2) {
        assert_eq!(pair[0].parent_checkpoint_id, Some(pair[1].checkpoint_id));
    }
    let page = store.list_checkpoints(owner, id, 2, Some(written[3].checkpoint_id)).await.unwrap();
    assert_eq!(page, [written[2].clone(), written[1].clone()]);
}

async fn metadata_update_is_a_shallow_merge(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store
        .create_thread(owner, id, &meta(json!({"a": 1, "nested": {"x": 1, "y": 2}})))
        .await
        .unwrap();
    let updated = store
        .update_thread_metadata(owner, id, &meta(json!({"b": 2, "nested": {"x": 9}})))
        .await
        .unwrap();
    let expected = meta(json!({"a": 1, "b": 2, "nested": {"x": 9}}));
    assert_eq!(updated.metadata, expected);
    assert_eq!(store.get_thread(owner, id).await.unwrap().metadata, expected);
}

async fn ensure_user_is_idempotent_under_concurrency(db: &TestDb) {
    let store = &db.store;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ensure_user("carol").await })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().unwrap().user_id);
    }
    assert_eq!(ids.len(), 1);
    assert_ne!(store.ensure_user("dave").await.unwrap().user_id, *ids.iter().next().unwrap());
}

async fn system_assistants_have_langgraph_ids(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let spec =
        store::SystemAssistant { graph_id: "echo".into(), description: Some("repeats".into()) };
    let a = store.upsert_system_assistant(&spec).await.unwrap();
    let again = store.upsert_system_assistant(&spec).await.unwrap();
    assert_eq!(a, again);
    assert_eq!(a.assistant_id.to_string(), "046b5dc7-2108-582c-9c6c-31d556d138f0");
    assert_eq!(a.name, "echo");
    assert_eq!(a.metadata, meta(json!({"created_by": "system"})));
    assert_eq!(a.owner_id, None);
    assert_eq!(store.get_assistant(owner, a.assistant_id).await.unwrap(), a);
    assert_eq!(store.list_assistants(owner).await.unwrap(), [a]);
    assert_not_found(store.get_assistant(owner, AssistantId::for_graph("missing")).await);
}

async fn migrate_twice_is_a_no_op(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.get_thread(owner, id).await.unwrap().thread_id, id);
}

async fn a_failed_write_leaves_no_trace(db: &TestDb) {
    let store = &db.store;
    // A run whose thread is missing fails inside its transaction; writes batched with it
    // (on SQLite) must still commit, and the failed one must leave nothing.
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let good = ThreadId::new();
    store.create_thread(owner, good, &Metadata::new()).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store
                        .append_event(owner, good, &event(EventKind::MessageDelta, i))
                        .await
                        .map(drop)
                } else {
                    store
                        .create_run(owner, &new_run(ThreadId::new()), IfNotExists::Reject)
                        .await
                        .map(drop)
                }
            })
        })
        .collect();
    let mut failures = 0;
    for task in tasks {
        if task.await.unwrap().is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 20);
    assert_eq!(store.events_after(owner, good, None, 0, 100).await.unwrap().len(), 20);
    assert_eq!(store.list_threads(owner, 100, 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_test_databases_are_really_distinct_backends() {
    let sqlite = TestDb::new(Backend::Sqlite).await.unwrap();
    assert_eq!(sqlite.store.backend(), Backend::Sqlite);
    if let Some(pg) = TestDb::new(Backend::Postgres).await {
        assert_eq!(pg.store.backend(), Backend::Postgres);
    }
}

async fn search_filters_sorts_pages_and_counts_only_the_callers_threads(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let mut mine = Vec::new();
    for n in 0..6 {
        let id = ThreadId::new();
        let graph = if n % 2 == 0 { "echo" } else { "llm" };
        store
            .create_thread(alice, id, &meta(json!({"graph_id": graph, "n": n, "tags": ["a", "b"]})))
            .await
            .unwrap();
        mine.push(id);
    }
    // Bob's thread matches every filter alice uses; she must never see it.
    let theirs = ThreadId::new();
    store
        .create_thread(bob, theirs, &meta(json!({"graph_id": "echo", "n": 0, "tags": ["a", "b"]})))
        .await
        .unwrap();
    store
        .put_state(
            alice,
            mine[0],
            None,
            &json!({"messages": [{"type": "human", "content": "hi"}]}),
            &Metadata::new(),
        )
        .await
        .unwrap();
    store
        .put_state(
            bob,
            theirs,
            None,
            &json!({"messages": [{"type": "human", "content": "hi"}]}),
            &Metadata::new(),
        )
        .await
        .unwrap();
    store.create_run(alice, &new_run(mine[1]), IfNotExists::Reject).await.unwrap();

    let page =
        |limit, offset, sort_by, sort_order| ThreadPage { limit, offset, sort_by, sort_order };
    let newest = page(100, 0, ThreadSortBy::CreatedAt, SortOrder::Desc);
    let ids =
        |threads: Vec<store::Thread>| threads.into_iter().map(|t| t.thread_id).collect::<Vec<_>>();
    let search = |filter: ThreadFilter, p: ThreadPage| {
        let store = store.clone();
        async move { ids(store.search_threads(alice, &filter, &p).await.unwrap()) }
    };

    let all: Vec<_> = mine.iter().rev().copied().collect();
    assert_eq!(search(ThreadFilter::default(), newest).await, all);
    let echo = ThreadFilter { metadata: Some(json!({"graph_id": "echo"})), ..Default::default() };
    assert_eq!(search(echo.clone(), newest).await, [mine[4], mine[2], mine[0]]);
    assert_eq!(store.count_threads(alice, &echo).await.unwrap(), 3);
    assert_eq!(store.count_threads(bob, &echo).await.unwrap(), 1);
    let tagged =
        ThreadFilter { metadata: Some(json!({"tags": ["b"], "n": 3})), ..Default::default() };
    assert_eq!(search(tagged, newest).await, [mine[3]]);
    let hi = ThreadFilter {
        values: Some(json!({"messages": [{"content": "hi"}]})),
        ..Default::default()
    };
    assert_eq!(search(hi, newest).await, [mine[0]]);
    let busy = ThreadFilter { status: Some(ThreadStatus::Busy), ..Default::default() };
    assert_eq!(search(busy, newest).await, [mine[1]]);
    let by_id = ThreadFilter { ids: Some(vec![mine[2], mine[5], theirs]), ..Default::default() };
    assert_eq!(
        search(by_id.clone(), page(100, 0, ThreadSortBy::CreatedAt, SortOrder::Asc)).await,
        [mine[2], mine[5]]
    );
    assert_eq!(store.count_threads(alice, &by_id).await.unwrap(), 2);
    assert_eq!(
        search(ThreadFilter::default(), page(2, 1, ThreadSortBy::CreatedAt, SortOrder::Asc)).await,
        [mine[1], mine[2]]
    );
    let mut sorted = mine.clone();
    sorted.sort();
    assert_eq!(
        search(ThreadFilter::default(), page(100, 0, ThreadSortBy::ThreadId, SortOrder::Asc)).await,
        sorted
    );
    assert_eq!(
        search(ThreadFilter::default(), page(100, 0, ThreadSortBy::UpdatedAt, SortOrder::Desc))
            .await[0],
        mine[1]
    );
    let nothing =
        ThreadFilter { metadata: Some(json!({"graph_id": "none"})), ..Default::default() };
    assert!(search(nothing, newest).await.is_empty());
}

async fn concurrent_state_updates_lose_nothing(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let append = Box::new(move |current: Option<serde_json::Value>| {
                    let mut values = current.unwrap_or_else(|| json!({"messages": []}));
                    values["messages"]
                        .as_array_mut()
                        .ok_or("messages is not a list")?
                        .push(json!(n));
                    Ok(values)
                });
                store.update_state(owner, id, None, None, append, &Metadata::new()).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let values = store.get_thread(owner, id).await.unwrap().values.unwrap();
    let mut got: Vec<i64> =
        values["messages"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..32).collect::<Vec<_>>());
    // A failing update changes nothing.
    let fail = Box::new(|_: Option<serde_json::Value>| Err("no".to_owned()));
    assert!(matches!(
        store.update_state(owner, id, None, None, fail, &Metadata::new()).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(store.list_checkpoints(owner, id, 100, None).await.unwrap().len(), 32);
}

async fn checkpoints_are_read_only_by_their_owner(db: &TestDb) {
    let store = &db.store;
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(alice, id, &Metadata::new()).await.unwrap();
    let cp = store.put_state(alice, id, None, &json!({"k": 1}), &Metadata::new()).await.unwrap();
    assert_eq!(store.get_checkpoint(alice, id, cp.checkpoint_id).await.unwrap(), cp);
    assert_not_found(store.get_checkpoint(bob, id, cp.checkpoint_id).await);
    assert_not_found(store.get_checkpoint(alice, ThreadId::new(), cp.checkpoint_id).await);
}

async fn api_keys_authenticate_until_revoked(db: &TestDb) {
    let store = &db.store;
    let key = store.create_api_key("erin", "hash-1", "spindle_ab").await.unwrap();
    assert_eq!(key.subject, "erin");
    assert_eq!(key.revoked_at, None);
    let user = store.user_for_api_key("hash-1").await.unwrap().unwrap();
    assert_eq!(user.user_id, key.user_id);
    assert_eq!(user.user_id, store.ensure_user("erin").await.unwrap().user_id);
    assert_eq!(store.user_for_api_key("hash-2").await.unwrap(), None);
    let second = store.create_api_key("erin", "hash-2", "spindle_cd").await.unwrap();
    assert_eq!(second.user_id, key.user_id);
    let revoked = store.revoke_api_key(key.key_id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(store.revoke_api_key(key.key_id).await.unwrap().revoked_at, revoked.revoked_at);
    assert_eq!(store.user_for_api_key("hash-1").await.unwrap(), None);
    assert!(store.user_for_api_key("hash-2").await.unwrap().is_some());
    let listed: Vec<_> =
        store.list_api_keys().await.unwrap().into_iter().map(|k| k.key_id).collect();
    assert_eq!(listed, [key.key_id, second.key_id]);
    assert_not_found(store.revoke_api_key(ids::ApiKeyId::new()).await);
}

#[test]
fn json_contains_matches_postgres_semantics() {
    use store::json_contains;
    let doc = json!({"a": 1, "b": {"c": [1, 2, {"d": "x"}]}, "tags": ["x", "y"]});
    for (needle, expected) in [
        (json!({}), true),
        (json!({"a": 1}), true),
        (json!({"a": 2}), false),
        (json!({"b": {"c": [2]}}), true),
        (json!({"b": {"c": [{"d": "x"}]}}), true),
        (json!({"b": {"c": [3]}}), false),
        (json!({"tags": ["y", "x"]}), true),
        (json!({"tags": "x"}), false),
        (json!({"missing": null}), false),
    ] {
        assert_eq!(json_contains(&doc, &needle), expected, "{needle}");
    }
    // Checked against PostgreSQL 15's jsonb @>.
    assert!(json_contains(&json!(["x", "y"]), &json!("x")));
    assert!(!json_contains(&json!([[1, 2]]), &json!([1])));
    assert!(json_contains(&json!([1, [2]]), &json!([[2]])));
}
