//! The store's guarantees, each checked on SQLite and on PostgreSQL with a fresh database.

use std::collections::HashSet;

use ids::{AssistantId, CheckpointId, RunId, ThreadId, UserId};
use serde_json::json;
use store::testing::TestDb;
use store::{
    Backend, Error, EventKind, IfNotExists, Metadata, MultitaskStrategy, NewEvent, NewRun,
    RunStatus, SortOrder, Store, ThreadFilter, ThreadPage, ThreadSortBy, ThreadStatus,
};

/// Runs each named test body on both backends: `mod sqlite { fn name() }`, `mod postgres { .. }`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = store::testing::TestDb::new(store::Backend::Sqlite).await.unwrap();
                    super::$name(&db.store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = store::testing::TestDb::new(store::Backend::Postgres).await else { return };
                    super::$name(&db.store).await;
                }
            )*
        }
    };
}

both_backends!(
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

fn meta(value: serde_json::Value) -> Metadata {
    value.as_object().cloned().unwrap()
}

fn new_run(thread: ThreadId) -> NewRun {
    NewRun {
        run_id: RunId::new(),
        thread_id: thread,
        assistant_id: AssistantId::for_graph("echo"),
        input: Some(json!({"messages": [{"role": "user", "content": "hi"}]})),
        kwargs: json!({"stream_mode": ["values"]}),
        metadata: Metadata::new(),
        multitask_strategy: MultitaskStrategy::Enqueue,
        thread_metadata: Metadata::new(),
    }
}

fn event(kind: EventKind, n: i64) -> NewEvent {
    NewEvent { run_id: None, kind, data: json!({ "n": n }) }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn get_or_create_is_atomic_under_64_concurrent_calls(store: &Store) {
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

async fn another_owners_thread_is_a_conflict_that_reveals_nothing(store: &Store) {
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

async fn every_thread_operation_is_owner_scoped(store: &Store) {
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

async fn concurrent_appends_get_gapless_unique_seqs(store: &Store) {
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

async fn events_after_reads_in_order_from_a_seq(store: &Store) {
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

async fn create_run_reject_on_a_missing_thread_creates_nothing(store: &Store) {
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    assert_not_found(store.create_run(owner, &new_run(id), IfNotExists::Reject).await);
    assert_eq!(store.admin_count_threads(id).await.unwrap(), 0);
    assert!(store.list_threads(owner, 10, 0).await.unwrap().is_empty());
}

async fn create_run_with_create_makes_one_thread_under_50_concurrent_runs(store: &Store) {
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

async fn thread_status_follows_its_runs(store: &Store) {
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

async fn delete_cascades_to_runs_checkpoints_and_events(store: &Store) {
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

async fn state_history_is_newest_first_with_parents(store: &Store) {
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

async fn metadata_update_is_a_shallow_merge(store: &Store) {
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

async fn ensure_user_is_idempotent_under_concurrency(store: &Store) {
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

async fn system_assistants_have_langgraph_ids(store: &Store) {
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

async fn migrate_twice_is_a_no_op(store: &Store) {
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(owner, id, &Metadata::new()).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.get_thread(owner, id).await.unwrap().thread_id, id);
}

async fn a_failed_write_leaves_no_trace(store: &Store) {
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

async fn search_filters_sorts_pages_and_counts_only_the_callers_threads(store: &Store) {
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

async fn concurrent_state_updates_lose_nothing(store: &Store) {
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

async fn checkpoints_are_read_only_by_their_owner(store: &Store) {
    let alice = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let id = ThreadId::new();
    store.create_thread(alice, id, &Metadata::new()).await.unwrap();
    let cp = store.put_state(alice, id, None, &json!({"k": 1}), &Metadata::new()).await.unwrap();
    assert_eq!(store.get_checkpoint(alice, id, cp.checkpoint_id).await.unwrap(), cp);
    assert_not_found(store.get_checkpoint(bob, id, cp.checkpoint_id).await);
    assert_not_found(store.get_checkpoint(alice, ThreadId::new(), cp.checkpoint_id).await);
}

async fn api_keys_authenticate_until_revoked(store: &Store) {
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

fn run_with(thread: ThreadId, strategy: MultitaskStrategy) -> NewRun {
    NewRun { multitask_strategy: strategy, ..new_run(thread) }
}

async fn reject_lets_exactly_one_of_50_concurrent_runs_in(store: &Store) {
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

/// A first step that applies nothing (the state stays as it is).
fn no_first_step() -> store::FirstStep {
    store::FirstStep {
        events: Vec::new(),
        update: Box::new(|current: Option<serde_json::Value>| Ok(current.unwrap_or(json!({})))),
        metadata: Metadata::new(),
        from: None,
        initial: None,
    }
}

/// On a thread that exists (the row lock is waited for, not created), whether a run may start
/// is decided once: with `reject` one of 50 gets in; with `enqueue`, of 50 runs created to
/// start at once exactly one starts (`running`) and the rest wait (`pending`).
async fn on_an_existing_thread_50_concurrent_creates_start_exactly_one_run(store: &Store) {
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

async fn interrupt_and_rollback_clear_pending_runs(store: &Store) {
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

async fn claims_take_users_in_turns_within_a_limit_per_user(store: &Store) {
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

async fn claims_are_fifo_and_one_running_run_per_thread(store: &Store) {
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

async fn rollback_restores_the_state_before_the_run(store: &Store) {
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

async fn recovery_ends_runs_left_running(store: &Store) {
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

async fn runs_are_deleted_only_when_finished(store: &Store) {
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

async fn a_step_commits_its_events_and_state_together_or_not_at_all(store: &Store) {
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while size() < before + 800 * 1024 {
        assert!(std::time::Instant::now() < deadline, "the WAL was never checkpointed");
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

/// An update that appends `text` to the thread's `messages`.
fn push(text: &'static str) -> store::StateUpdate {
    Box::new(move |current: Option<serde_json::Value>| {
        let mut values = current.unwrap_or_else(|| json!({"messages": []}));
        values["messages"].as_array_mut().ok_or("messages is not a list")?.push(json!(text));
        Ok(values)
    })
}

/// A run's steps over a state another process changed meanwhile lose nothing: PostgreSQL
/// computes a step from the state it wrote last and writes it only if the thread is still at
/// that version (else it reads and tries again, or leaves the first step to the executor);
/// SQLite reads the state under its single writer.
async fn steps_over_a_state_changed_elsewhere_lose_nothing(db: &TestDb) {
    let here = &db.store;
    let options = store::StoreOptions { migrate: false, ..store::StoreOptions::default() };
    let elsewhere = Store::open(&db.url, &options).await.unwrap();
    let owner = here.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    here.get_or_create_thread(owner, thread, &Metadata::new()).await.unwrap();
    let none = Metadata::new();
    // Changed elsewhere after this process created the thread, before the run's first step.
    elsewhere.update_state(owner, thread, None, None, push("elsewhere 1"), &none).await.unwrap();
    let run = new_run(thread);
    let first = store::FirstStep {
        events: Vec::new(),
        update: push("input"),
        metadata: none.clone(),
        from: None,
        initial: None,
    };
    let (created, _, step) =
        here.create_run_claiming(owner, &run, IfNotExists::Reject, first).await.unwrap();
    assert_eq!(created.status, RunStatus::Running);
    match db.store.backend() {
        // Stale: the run is created claimed, its first step left to the executor.
        Backend::Postgres => assert!(step.is_none(), "a stale first step was written"),
        Backend::Sqlite => assert!(step.is_some()),
    }
    if step.is_none() {
        here.commit_step(owner, thread, run.run_id, &[], Some(push("input")), &none, None)
            .await
            .unwrap();
    }
    // Changed elsewhere between two steps.
    elsewhere.update_state(owner, thread, None, None, push("elsewhere 2"), &none).await.unwrap();
    let end = store::RunEnd {
        status: RunStatus::Success,
        error: None,
        interrupted: false,
        event: NewEvent {
            run_id: Some(run.run_id),
            kind: EventKind::AgentCompleted,
            data: json!({}),
        },
    };
    let last = here
        .commit_step(owner, thread, run.run_id, &[], Some(push("reply")), &none, Some(&end))
        .await
        .unwrap();
    assert_eq!(last.ended.unwrap().status, RunStatus::Success);
    assert_eq!(last.checkpoint.unwrap().values["messages"].as_array().unwrap().len(), 4);
    let after = here.get_thread(owner, thread).await.unwrap();
    assert_eq!(
        after.values.unwrap()["messages"],
        json!(["elsewhere 1", "input", "elsewhere 2", "reply"])
    );
    assert_eq!(after.status, ThreadStatus::Idle);
    // The run's events: each step's `values`, then its end, numbered without gaps.
    let events = here.events_after(owner, thread, Some(run.run_id), 0, 100).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Values, EventKind::Values, EventKind::AgentCompleted]);
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

/// A thread deleted and created again under the same id elsewhere, its state written there
/// as many times as here: a state this process remembers for the old thread is never taken for
/// the new one's (PostgreSQL's versions come from one sequence, never reused).
async fn a_state_remembered_for_a_deleted_thread_is_not_reused(db: &TestDb) {
    let here = &db.store;
    let options = store::StoreOptions { migrate: false, ..store::StoreOptions::default() };
    let elsewhere = Store::open(&db.url, &options).await.unwrap();
    let owner = here.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    let none = Metadata::new();
    here.get_or_create_thread(owner, thread, &none).await.unwrap();
    let first = store::FirstStep {
        events: Vec::new(),
        update: push("old"),
        metadata: none.clone(),
        from: None,
        initial: None,
    };
    let (_, _, step) = here
        .create_run_claiming(owner, &new_run(thread), IfNotExists::Reject, first)
        .await
        .unwrap();
    assert!(step.is_some());
    // Elsewhere: the thread deleted, created again, its state written once (as here).
    elsewhere.delete_thread(owner, thread).await.unwrap();
    elsewhere.get_or_create_thread(owner, thread, &none).await.unwrap();
    elsewhere.update_state(owner, thread, None, None, push("new"), &none).await.unwrap();
    let run = new_run(thread);
    elsewhere.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    // Here: a step of the new thread's run.
    here.commit_step(owner, thread, run.run_id, &[], Some(push("reply")), &none, None)
        .await
        .unwrap();
    let values = here.get_thread(owner, thread).await.unwrap().values.unwrap();
    assert_eq!(values["messages"], json!(["new", "reply"]));
}

mod two_processes {
    use super::*;
    store::on_both_backends!(
        steps_over_a_state_changed_elsewhere_lose_nothing,
        a_state_remembered_for_a_deleted_thread_is_not_reused,
        a_first_step_over_a_state_changed_elsewhere_loses_nothing,
    );
}

/// A run's first step: `update` over the values it starts from, forking from `from`, with the
/// state before the input `initial` for a thread without a checkpoint.
fn first_step(
    update: store::StateUpdate,
    from: Option<CheckpointId>,
    initial: Option<(serde_json::Value, Metadata)>,
) -> store::FirstStep {
    store::FirstStep {
        events: Vec::new(),
        update,
        metadata: meta(json!({"source": "input"})),
        from,
        initial,
    }
}

/// The state before the input LangGraph writes as a thread's step −1.
fn before_input() -> Option<(serde_json::Value, Metadata)> {
    Some((json!({"messages": []}), meta(json!({"source": "input", "writes": null}))))
}

fn run_end(run: RunId, status: RunStatus, interrupted: bool) -> store::RunEnd {
    store::RunEnd {
        status,
        error: None,
        interrupted,
        event: NewEvent { run_id: Some(run), kind: EventKind::AgentCompleted, data: json!({}) },
    }
}

/// `metadata` with the step the store writes.
fn stepped(metadata: &Metadata, step: i64) -> Metadata {
    let mut metadata = metadata.clone();
    metadata.insert("step".into(), json!(step));
    metadata
}

/// The thread's checkpoints, newest first.
async fn history(store: &Store, owner: UserId, thread: ThreadId) -> Vec<store::Checkpoint> {
    store.list_checkpoints(owner, thread, 100, None).await.unwrap()
}

/// Asserts that each checkpoint reads back exactly as its write returned it.
async fn reads_back(store: &Store, owner: UserId, written: &[&store::Checkpoint]) {
    for checkpoint in written {
        let read = store.get_checkpoint(owner, checkpoint.thread_id, checkpoint.checkpoint_id);
        assert_eq!(&read.await.unwrap(), *checkpoint, "a checkpoint as written and as read");
    }
}

/// Claims the one pending run of the database.
async fn claim_one(store: &Store, run: RunId) {
    let claimed = store.claim_runs(1).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.run_id).collect::<Vec<_>>(), [run]);
}

async fn a_first_step_forks_from_an_older_checkpoint(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    store.get_or_create_thread(owner, thread, &Metadata::new()).await.unwrap();
    let none = Metadata::new();
    let a = store.update_state(owner, thread, None, None, push("a"), &none).await.unwrap();
    let b = store.update_state(owner, thread, None, None, push("b"), &none).await.unwrap();
    assert_eq!((a.metadata["step"].clone(), b.metadata["step"].clone()), (json!(-1), json!(0)));

    // Created claimed, its first step forking from `a` (`initial` is for a thread without
    // a checkpoint, and never for a fork).
    let run = new_run(thread);
    let first = first_step(push("fork"), Some(a.checkpoint_id), before_input());
    let (created, _, step) =
        store.create_run_claiming(owner, &run, IfNotExists::Reject, first).await.unwrap();
    assert_eq!(created.status, RunStatus::Running);
    let fork = step.expect("the fork's first step is committed with the run").checkpoint.unwrap();
    assert_eq!(fork.parent_checkpoint_id, Some(a.checkpoint_id));
    assert_eq!(fork.values, json!({"messages": ["a", "fork"]}));
    assert_eq!(fork.metadata, stepped(&meta(json!({"source": "input"})), 0));
    assert_eq!(fork.run_id, Some(run.run_id));
    let thread_now = store.get_thread(owner, thread).await.unwrap();
    assert_eq!(thread_now.values, Some(fork.values.clone()));
    assert_eq!(thread_now.status, ThreadStatus::Busy);
    assert_eq!(history(store, owner, thread).await, [fork.clone(), b.clone(), a.clone()]);
    // Its next step goes on from the fork.
    let next = store
        .commit_step(owner, thread, run.run_id, &[], Some(push("reply")), &none, None)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(next.parent_checkpoint_id, Some(fork.checkpoint_id));
    assert_eq!(next.values, json!({"messages": ["a", "fork", "reply"]}));
    assert_eq!(next.metadata, stepped(&none, 1));
    let end = run_end(run.run_id, RunStatus::Success, false);
    store.commit_step(owner, thread, run.run_id, &[], None, &none, Some(&end)).await.unwrap();

    // Created pending, claimed, its first step (forking from `b`) committed by the executor.
    let run = new_run(thread);
    store.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    claim_one(store, run.run_id).await;
    let first = first_step(push("fork 2"), Some(b.checkpoint_id), before_input());
    let step = store.commit_first_step(owner, thread, run.run_id, first).await.unwrap();
    let fork2 = step.checkpoint.unwrap();
    assert_eq!(fork2.parent_checkpoint_id, Some(b.checkpoint_id));
    assert_eq!(fork2.values, json!({"messages": ["a", "b", "fork 2"]}));
    assert_eq!(fork2.metadata, stepped(&meta(json!({"source": "input"})), 1));
    let kinds: Vec<_> = step.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Values]);
    assert_eq!(step.events[0].data, fork2.values);
    let thread_now = store.get_thread(owner, thread).await.unwrap();
    assert_eq!(thread_now.values, Some(fork2.values.clone()));
    // Both branches, newest first.
    assert_eq!(
        history(store, owner, thread).await,
        [fork2.clone(), next.clone(), fork.clone(), b.clone(), a.clone()]
    );
    reads_back(store, owner, &[&fork2, &next, &fork, &b, &a]).await;
    // And the run's next step goes on from the new branch.
    let last = store
        .commit_step(owner, thread, run.run_id, &[], Some(push("reply 2")), &none, None)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(last.parent_checkpoint_id, Some(fork2.checkpoint_id));
    assert_eq!(last.values, json!({"messages": ["a", "b", "fork 2", "reply 2"]}));
    assert_eq!(last.metadata["step"], json!(2));
}

async fn a_fork_from_a_checkpoint_the_thread_does_not_have_writes_nothing(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let bob = store.ensure_user("bob").await.unwrap().user_id;
    let none = Metadata::new();
    let (thread, other, bobs) = (ThreadId::new(), ThreadId::new(), ThreadId::new());
    for (user, id) in [(owner, thread), (owner, other), (bob, bobs)] {
        store.get_or_create_thread(user, id, &none).await.unwrap();
    }
    let mine = store.update_state(owner, thread, None, None, push("mine"), &none).await.unwrap();
    let others = store.update_state(owner, other, None, None, push("other"), &none).await.unwrap();
    store.update_state(bob, bobs, None, None, push("bob's"), &none).await.unwrap();
    let is_checkpoint_not_found =
        |e: Error| matches!(e, Error::NotFound { kind: "checkpoint", .. });
    let unchanged = || async {
        assert_eq!(history(store, owner, thread).await, std::slice::from_ref(&mine));
        let now = store.get_thread(owner, thread).await.unwrap();
        assert_eq!(now.values, Some(mine.values.clone()));
        assert_eq!(now.status, ThreadStatus::Idle);
        assert!(store.events_after(owner, thread, None, 0, 100).await.unwrap().is_empty());
    };

    // Another thread's checkpoint, and one that does not exist: no run is created.
    for from in [others.checkpoint_id, CheckpointId::new()] {
        let run = new_run(thread);
        let first = first_step(push("fork"), Some(from), before_input());
        let result = store.create_run_claiming(owner, &run, IfNotExists::Reject, first).await;
        assert!(is_checkpoint_not_found(result.unwrap_err()));
        assert!(store.list_runs(owner, thread, 100, 0, None).await.unwrap().is_empty());
        unchanged().await;
        let fork = push("fork");
        let result = store.update_state(owner, thread, None, Some(from), fork, &none).await;
        assert!(is_checkpoint_not_found(result.unwrap_err()));
        unchanged().await;
    }
    // On a thread to create: neither the thread nor the run is.
    let new = ThreadId::new();
    let first = first_step(push("fork"), Some(mine.checkpoint_id), before_input());
    let result = store.create_run_claiming(owner, &new_run(new), IfNotExists::Create, first).await;
    assert!(is_checkpoint_not_found(result.unwrap_err()));
    assert_not_found(store.get_thread(owner, new).await);
    // Another owner's thread with this thread's checkpoint: not found all the same.
    let first = first_step(push("fork"), Some(mine.checkpoint_id), None);
    let result = store.create_run_claiming(bob, &new_run(bobs), IfNotExists::Reject, first).await;
    assert!(matches!(result, Err(Error::NotFound { .. })));
    assert!(store.list_runs(bob, bobs, 100, 0, None).await.unwrap().is_empty());
    let first = first_step(push("fork"), Some(mine.checkpoint_id), None);
    let result = store.create_run_claiming(bob, &new_run(thread), IfNotExists::Reject, first).await;
    assert!(matches!(result, Err(Error::NotFound { .. })));
    unchanged().await;

    // A pending run's first step, committed by the executor: nothing written either.
    let run = new_run(thread);
    store.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    claim_one(store, run.run_id).await;
    let events = [event(EventKind::AgentStarted, 1)];
    for from in [others.checkpoint_id, CheckpointId::new()] {
        let mut first = first_step(push("fork"), Some(from), before_input());
        first.events = events.to_vec();
        let result = store.commit_first_step(owner, thread, run.run_id, first).await;
        assert!(is_checkpoint_not_found(result.unwrap_err()));
        assert_eq!(history(store, owner, thread).await, std::slice::from_ref(&mine));
        assert_eq!(
            store.get_thread(owner, thread).await.unwrap().values,
            Some(mine.values.clone())
        );
        assert!(store.events_after(owner, thread, None, 0, 100).await.unwrap().is_empty());
    }
    let first = first_step(push("fork"), Some(mine.checkpoint_id), None);
    assert_not_found(store.commit_first_step(bob, thread, run.run_id, first).await);
    assert_eq!(history(store, owner, thread).await, std::slice::from_ref(&mine));
}

async fn a_thread_s_first_step_writes_the_state_before_its_input(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let (initial_values, initial_metadata) = before_input().unwrap();
    // Three ways to a thread's first step: a run on a thread that exists, one that creates
    // its thread, and a pending run whose first step the executor commits.
    for way in 0..3 {
        let thread = ThreadId::new();
        let run = new_run(thread);
        let first = first_step(push("hi"), None, before_input());
        let step = match way {
            0 | 1 => {
                let if_not_exists = match way {
                    0 => {
                        store.get_or_create_thread(owner, thread, &Metadata::new()).await.unwrap();
                        IfNotExists::Reject
                    }
                    _ => IfNotExists::Create,
                };
                let (created, _, step) =
                    store.create_run_claiming(owner, &run, if_not_exists, first).await.unwrap();
                assert_eq!(created.status, RunStatus::Running);
                step.expect("the first step is committed with the run")
            }
            _ => {
                store.create_run(owner, &run, IfNotExists::Create).await.unwrap();
                claim_one(store, run.run_id).await;
                store.commit_first_step(owner, thread, run.run_id, first).await.unwrap()
            }
        };
        let checkpoint = step.checkpoint.unwrap();
        let [newest, initial] = &history(store, owner, thread).await[..] else {
            panic!("two checkpoints")
        };
        assert_eq!(newest, &checkpoint, "the step's checkpoint as written and as read");
        assert_eq!(initial.parent_checkpoint_id, None);
        assert_eq!(initial.values, initial_values);
        assert_eq!(initial.metadata, stepped(&initial_metadata, -1));
        // Of no run: a rollback of the first run keeps it.
        assert_eq!(initial.run_id, None);
        assert_eq!(checkpoint.parent_checkpoint_id, Some(initial.checkpoint_id));
        assert_eq!(checkpoint.values, json!({"messages": ["hi"]}));
        assert_eq!(checkpoint.metadata, stepped(&meta(json!({"source": "input"})), 0));
        reads_back(store, owner, &[&checkpoint, initial]).await;
        let thread_now = store.get_thread(owner, thread).await.unwrap();
        assert_eq!(thread_now.values, Some(checkpoint.values.clone()));
        // One `values` event: the step's.
        let events = store.events_after(owner, thread, None, 0, 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::Values]);
        assert_eq!(events[0].data, checkpoint.values);
    }
}

async fn the_state_before_the_input_is_not_written_on_a_thread_with_checkpoints(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let none = Metadata::new();
    let thread = ThreadId::new();
    store.get_or_create_thread(owner, thread, &none).await.unwrap();
    let a = store.update_state(owner, thread, None, None, push("a"), &none).await.unwrap();
    let run = new_run(thread);
    let first = first_step(push("hi"), None, before_input());
    let (_, _, step) =
        store.create_run_claiming(owner, &run, IfNotExists::Reject, first).await.unwrap();
    let hi = step.expect("the first step is committed with the run").checkpoint.unwrap();
    assert_eq!(hi.parent_checkpoint_id, Some(a.checkpoint_id));
    assert_eq!(hi.values, json!({"messages": ["a", "hi"]}));
    assert_eq!(hi.metadata["step"], json!(0));
    let end = run_end(run.run_id, RunStatus::Success, false);
    store.commit_step(owner, thread, run.run_id, &[], None, &none, Some(&end)).await.unwrap();
    // The same through the executor's first step.
    let run = new_run(thread);
    store.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    claim_one(store, run.run_id).await;
    let first = first_step(push("again"), None, before_input());
    let again = store
        .commit_first_step(owner, thread, run.run_id, first)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(again.parent_checkpoint_id, Some(hi.checkpoint_id));
    assert_eq!(again.values, json!({"messages": ["a", "hi", "again"]}));
    assert_eq!(again.metadata["step"], json!(1));
    assert_eq!(history(store, owner, thread).await, [again.clone(), hi.clone(), a.clone()]);
}

async fn steps_count_up_along_a_run(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    let run = new_run(thread);
    let first = first_step(push("hi"), None, before_input());
    let (_, _, step) =
        store.create_run_claiming(owner, &run, IfNotExists::Create, first).await.unwrap();
    let hi = step.unwrap().checkpoint.unwrap();
    assert_eq!(hi.metadata["step"], json!(0));
    // A step's own `step` is the store's, whatever the caller's metadata says.
    let theirs = meta(json!({"source": "loop", "step": "not a number"}));
    let mut written = vec![hi];
    for (n, text) in ["one", "two"].into_iter().enumerate() {
        let step = store
            .commit_step(owner, thread, run.run_id, &[], Some(push(text)), &theirs, None)
            .await
            .unwrap();
        let checkpoint = step.checkpoint.unwrap();
        assert_eq!(checkpoint.parent_checkpoint_id, Some(written.last().unwrap().checkpoint_id));
        assert_eq!(checkpoint.metadata, stepped(&theirs, n as i64 + 1));
        written.push(checkpoint);
    }
    // Events alone write no checkpoint.
    let step = store
        .commit_step(owner, thread, run.run_id, &[event(EventKind::Custom, 1)], None, &theirs, None)
        .await
        .unwrap();
    assert!(step.checkpoint.is_none());
    let end = run_end(run.run_id, RunStatus::Success, false);
    let step = store
        .commit_step(owner, thread, run.run_id, &[], Some(push("bye")), &theirs, Some(&end))
        .await
        .unwrap();
    let bye = step.checkpoint.unwrap();
    assert_eq!(bye.parent_checkpoint_id, Some(written.last().unwrap().checkpoint_id));
    assert_eq!(bye.metadata, stepped(&theirs, 3));
    assert_eq!(bye.values, json!({"messages": ["hi", "one", "two", "bye"]}));
    written.push(bye);
    let mut read = history(store, owner, thread).await;
    let initial = read.pop().unwrap();
    assert_eq!(initial.metadata["step"], json!(-1));
    read.reverse();
    assert_eq!(read, written);
    assert_eq!(store.get_thread(owner, thread).await.unwrap().status, ThreadStatus::Idle);
    // A state update after the run goes on counting.
    let after = store.update_state(owner, thread, None, None, push("later"), &theirs).await;
    assert_eq!(after.unwrap().metadata["step"], json!(4));
}

async fn an_update_from_a_checkpoint_starts_a_branch(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let none = Metadata::new();
    let thread = ThreadId::new();
    store.get_or_create_thread(owner, thread, &none).await.unwrap();
    let mut line = Vec::new();
    for text in ["a", "b", "c"] {
        line.push(store.update_state(owner, thread, None, None, push(text), &none).await.unwrap());
    }
    let from = line[1].checkpoint_id;
    let edit = meta(json!({"source": "update"}));
    let branch =
        store.update_state(owner, thread, None, Some(from), push("edit"), &edit).await.unwrap();
    assert_eq!(branch.parent_checkpoint_id, Some(from));
    assert_eq!(branch.values, json!({"messages": ["a", "b", "edit"]}));
    assert_eq!(branch.metadata, stepped(&edit, 1));
    assert_eq!(store.get_thread(owner, thread).await.unwrap().values, Some(branch.values.clone()));
    // The branch is the newest: the next update goes on from it.
    let next = store.update_state(owner, thread, None, None, push("d"), &none).await.unwrap();
    assert_eq!(next.parent_checkpoint_id, Some(branch.checkpoint_id));
    assert_eq!(next.values, json!({"messages": ["a", "b", "edit", "d"]}));
    assert_eq!(next.metadata, stepped(&none, 2));
    let expected = [&next, &branch, &line[2], &line[1], &line[0]];
    let read = history(store, owner, thread).await;
    assert_eq!(read.iter().collect::<Vec<_>>(), expected);
    reads_back(store, owner, &expected).await;
    // A run's next step after a branch made meanwhile goes on from the branch too.
    let run = new_run(thread);
    let (_, _, step) = store
        .create_run_claiming(owner, &run, IfNotExists::Reject, first_step(push("run"), None, None))
        .await
        .unwrap();
    let ran = step.unwrap().checkpoint.unwrap();
    let fork = push("fork");
    let forked =
        store.update_state(owner, thread, None, Some(line[0].checkpoint_id), fork, &edit).await;
    let forked = forked.unwrap();
    assert_eq!(forked.metadata["step"], json!(0));
    let step = store
        .commit_step(owner, thread, run.run_id, &[], Some(push("reply")), &none, None)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(ran.metadata["step"], json!(3));
    assert_eq!(step.parent_checkpoint_id, Some(forked.checkpoint_id));
    assert_eq!(step.values, json!({"messages": ["a", "fork", "reply"]}));
    assert_eq!(step.metadata["step"], json!(1));
}

async fn an_interrupted_end_leaves_the_thread_interrupted(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let none = Metadata::new();
    let thread = ThreadId::new();
    let status = || async { store.get_thread(owner, thread).await.unwrap().status };
    // With a last state update, and without.
    for update in [true, false] {
        let run = new_run(thread);
        store
            .create_run_claiming(
                owner,
                &run,
                IfNotExists::Create,
                first_step(push("hi"), None, None),
            )
            .await
            .unwrap();
        let end = run_end(run.run_id, RunStatus::Success, true);
        let update = update.then(|| push("ask"));
        let step = store
            .commit_step(owner, thread, run.run_id, &[], update, &none, Some(&end))
            .await
            .unwrap();
        assert_eq!(step.ended.unwrap().status, RunStatus::Success);
        assert_eq!(status().await, ThreadStatus::Interrupted);
        assert_eq!(
            store.get_run(owner, thread, run.run_id).await.unwrap().status,
            RunStatus::Success
        );
    }
    // Another run of the thread waiting: busy.
    let run = new_run(thread);
    store
        .create_run_claiming(owner, &run, IfNotExists::Reject, first_step(push("hi"), None, None))
        .await
        .unwrap();
    let waiting = new_run(thread);
    store.create_run(owner, &waiting, IfNotExists::Reject).await.unwrap();
    let end = run_end(run.run_id, RunStatus::Success, true);
    store
        .commit_step(owner, thread, run.run_id, &[], Some(push("ask")), &none, Some(&end))
        .await
        .unwrap();
    assert_eq!(status().await, ThreadStatus::Busy);
    // The waiting run ends without asking: idle; an error is an error, asking or not.
    claim_one(store, waiting.run_id).await;
    let end = run_end(waiting.run_id, RunStatus::Success, false);
    store.commit_step(owner, thread, waiting.run_id, &[], None, &none, Some(&end)).await.unwrap();
    assert_eq!(status().await, ThreadStatus::Idle);
    let run = new_run(thread);
    store
        .create_run_claiming(owner, &run, IfNotExists::Reject, first_step(push("hi"), None, None))
        .await
        .unwrap();
    let end = run_end(run.run_id, RunStatus::Error, true);
    store.commit_step(owner, thread, run.run_id, &[], None, &none, Some(&end)).await.unwrap();
    assert_eq!(status().await, ThreadStatus::Error);
}

mod first_steps {
    use super::*;
    store::on_both_backends!(
        a_first_step_forks_from_an_older_checkpoint,
        a_fork_from_a_checkpoint_the_thread_does_not_have_writes_nothing,
        a_thread_s_first_step_writes_the_state_before_its_input,
        the_state_before_the_input_is_not_written_on_a_thread_with_checkpoints,
        steps_count_up_along_a_run,
        an_update_from_a_checkpoint_starts_a_branch,
        an_interrupted_end_leaves_the_thread_interrupted,
        a_refused_first_step_writes_nothing,
    );
}

/// The thread-status rules (`thread_status_after`, `thread_status_after_undo`), one definition
/// in Rust, checked case by case against every path of both backends that sets a status: a
/// run's end with and without a state (PostgreSQL's function and its transaction), with
/// another run of the thread waiting or not; a pending run cancelled or deleted; a running run
/// rolled back, on a thread whose newest checkpoint waits for a human or not.
mod status_rules {
    use super::*;
    store::on_both_backends!(
        every_run_end_sets_the_status_the_rule_gives,
        every_undo_sets_the_status_the_rule_gives
    );
}

/// A pending run's first step over a state another process changed since this one wrote it
/// loses nothing (PostgreSQL: stale, read again), and a fork from a checkpoint written
/// elsewhere needs no state of this process.
async fn a_first_step_over_a_state_changed_elsewhere_loses_nothing(db: &TestDb) {
    let here = &db.store;
    let options = store::StoreOptions { migrate: false, ..store::StoreOptions::default() };
    let elsewhere = Store::open(&db.url, &options).await.unwrap();
    let owner = here.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    let none = Metadata::new();
    // Here: a running run's step (this process remembers the state it wrote).
    let running = new_run(thread);
    let first = first_step(push("first"), None, before_input());
    let (_, _, step) =
        here.create_run_claiming(owner, &running, IfNotExists::Create, first).await.unwrap();
    let first = step.unwrap().checkpoint.unwrap();
    // Elsewhere: the state written, and a run queued.
    let written =
        elsewhere.update_state(owner, thread, None, None, push("elsewhere"), &none).await.unwrap();
    let run = new_run(thread);
    elsewhere.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
    // Here: the queued run's first step (its thread's state is not the one remembered).
    let step = here
        .commit_first_step(owner, thread, run.run_id, first_step(push("queued"), None, None))
        .await
        .unwrap();
    let queued = step.checkpoint.unwrap();
    assert_eq!(queued.values, json!({"messages": ["first", "elsewhere", "queued"]}));
    assert_eq!(queued.parent_checkpoint_id, Some(written.checkpoint_id));
    assert_eq!(queued.metadata["step"], json!(2));
    // Elsewhere again; here a fork from the first step's checkpoint.
    elsewhere.update_state(owner, thread, None, None, push("again"), &none).await.unwrap();
    let from = Some(first.checkpoint_id);
    let step = here
        .commit_first_step(owner, thread, run.run_id, first_step(push("fork"), from, None))
        .await
        .unwrap();
    let fork = step.checkpoint.unwrap();
    assert_eq!(fork.values, json!({"messages": ["first", "fork"]}));
    assert_eq!(fork.metadata["step"], json!(1));
    // The next step goes on from the fork, though the state changed elsewhere after it.
    elsewhere.update_state(owner, thread, None, None, push("late"), &none).await.unwrap();
    let next = here
        .commit_step(owner, thread, run.run_id, &[], Some(push("next")), &none, None)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(next.values, json!({"messages": ["first", "fork", "late", "next"]}));
    assert_eq!(here.get_checkpoint(owner, thread, next.checkpoint_id).await.unwrap(), next);
}

/// A first step its update refuses writes nothing, not even the state before the input: the
/// run is created claimed without it (the executor meets the refusal), or the step fails.
async fn a_refused_first_step_writes_nothing(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let refuse = || -> store::StateUpdate { Box::new(|_| Err("refused".to_owned())) };
    let thread = ThreadId::new();
    let run = new_run(thread);
    let first = first_step(refuse(), None, before_input());
    let (created, _, step) =
        store.create_run_claiming(owner, &run, IfNotExists::Create, first).await.unwrap();
    assert_eq!(created.status, RunStatus::Running);
    assert!(step.is_none());
    assert!(history(store, owner, thread).await.is_empty());
    let result = store
        .commit_first_step(owner, thread, run.run_id, first_step(refuse(), None, before_input()))
        .await;
    assert!(matches!(result, Err(Error::Invalid(_))));
    assert!(history(store, owner, thread).await.is_empty());
    assert_eq!(store.get_thread(owner, thread).await.unwrap().values, None);
    assert!(store.events_after(owner, thread, None, 0, 100).await.unwrap().is_empty());
}

/// A checkpoint's metadata whose pending task holds an interrupt, as the server writes it.
fn waiting_for_a_human() -> Metadata {
    meta(
        json!({"source": "loop", "__pending__": {"next": ["synthetic"], "interrupts": [{"id": "0".repeat(32), "value": "?"}]}}),
    )
}

async fn every_run_end_sets_the_status_the_rule_gives(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let none = Metadata::new();
    let mut cases = 0;
    for status in [RunStatus::Success, RunStatus::Error, RunStatus::Timeout, RunStatus::Interrupted]
    {
        for interrupted in [false, true] {
            for other_waiting in [false, true] {
                for with_state in [false, true] {
                    let thread = ThreadId::new();
                    let run = new_run(thread);
                    store.create_run(owner, &run, IfNotExists::Create).await.unwrap();
                    claim_one(store, run.run_id).await;
                    let other = new_run(thread);
                    if other_waiting {
                        store.create_run(owner, &other, IfNotExists::Reject).await.unwrap();
                    }
                    let update = with_state.then(|| push("step"));
                    let end = run_end(run.run_id, status, interrupted);
                    let step = store
                        .commit_step(owner, thread, run.run_id, &[], update, &none, Some(&end))
                        .await
                        .unwrap();
                    let want =
                        store::thread_status_after(status, i64::from(other_waiting), interrupted);
                    let case = format!(
                        "{status} interrupted={interrupted} other_waiting={other_waiting} with_state={with_state}"
                    );
                    assert_eq!(step.ended.unwrap().status, status, "{case}");
                    assert_eq!(
                        store.get_thread(owner, thread).await.unwrap().status,
                        want,
                        "{case}"
                    );
                    if other_waiting {
                        // Out of the next case's claim.
                        store.cancel_pending_run(owner, thread, other.run_id, true).await.unwrap();
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 32);
}

async fn every_undo_sets_the_status_the_rule_gives(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    for undo in ["cancel", "delete", "rollback"] {
        for head_interrupted in [false, true] {
            for other_waiting in [false, true] {
                let thread = ThreadId::new();
                store.create_thread(owner, thread, &Metadata::new()).await.unwrap();
                let metadata = if head_interrupted {
                    waiting_for_a_human()
                } else {
                    meta(json!({"source": "loop"}))
                };
                store
                    .put_state(owner, thread, None, &json!({"messages": ["q"]}), &metadata)
                    .await
                    .unwrap();
                // The run undone: pending (cancel, delete) or running (rollback), with a state.
                let run = new_run(thread);
                store.create_run(owner, &run, IfNotExists::Reject).await.unwrap();
                if undo == "rollback" {
                    claim_one(store, run.run_id).await;
                    let none = Metadata::new();
                    store
                        .commit_step(owner, thread, run.run_id, &[], Some(push("cut")), &none, None)
                        .await
                        .unwrap();
                }
                let other = new_run(thread);
                if other_waiting {
                    store.create_run(owner, &other, IfNotExists::Reject).await.unwrap();
                }
                match undo {
                    "rollback" => store.rollback_run(owner, thread, run.run_id).await.unwrap(),
                    _ => assert!(
                        store
                            .cancel_pending_run(owner, thread, run.run_id, undo == "delete")
                            .await
                            .unwrap()
                    ),
                }
                let active = i64::from(other_waiting);
                let want = store::thread_status_after_undo(active, head_interrupted);
                let case = format!(
                    "{undo} head_interrupted={head_interrupted} other_waiting={other_waiting}"
                );
                assert_eq!(store.get_thread(owner, thread).await.unwrap().status, want, "{case}");
                if other_waiting {
                    // Out of the next case's claim.
                    store.cancel_pending_run(owner, thread, other.run_id, true).await.unwrap();
                }
                if !other_waiting && undo == "rollback" {
                    assert_eq!(
                        store.get_thread(owner, thread).await.unwrap().values,
                        Some(json!({"messages": ["q"]})),
                        "{case}"
                    );
                }
            }
        }
    }
}
