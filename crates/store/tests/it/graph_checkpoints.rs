//! LangGraph's own checkpoints (`graph_checkpoints`, `_blobs`, `_writes`): the official savers'
//! semantics (blobs only for new versions, keep-first writes, special writes overwrite, pending
//! writes in `(task_path, task_id, idx)` order, newest first), each under one of the caller's
//! threads.

use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde_json::{Value, json};
use store::testing::TestDb;
use store::{
    ChannelWrite, Error, GraphBlob, GraphCheckpoint, GraphCheckpointFilter, GraphWrites,
    NewGraphCheckpoint, PendingWrite, Serialized, Store,
};

use crate::rows::*;

store::on_both_backends!(
    put_then_get_the_newest_or_one_by_id,
    list_is_newest_first_with_before_limit_filter_and_namespace,
    blobs_are_stored_for_new_versions_and_read_for_the_checkpoints_versions,
    bad_checkpoints_are_invalid_and_write_nothing,
    writes_keep_the_first_unless_all_are_special,
    pending_writes_are_sorted_by_task_path_task_id_idx,
    another_users_or_a_missing_thread_is_not_found_and_nothing_is_written,
    deleting_the_thread_deletes_its_graph_rows,
    copy_copies_every_row_into_the_target,
    delete_for_runs_deletes_their_checkpoints_and_writes,
    prune_keeps_the_newest_checkpoint_of_each_namespace,
);

fn msgpack(bytes: &[u8]) -> Serialized {
    Serialized { tag: "msgpack".into(), bytes: bytes.to_vec() }
}

fn blob(channel: &str, version: &str, value: Option<&str>) -> GraphBlob {
    let value = value.map(|v| msgpack(v.as_bytes()));
    GraphBlob { channel: channel.into(), version: version.into(), value }
}

/// A checkpoint of the root namespace as LangGraph's saver sends it: the checkpoint object
/// without channel values, its metadata, the blobs of its new versions.
fn checkpoint(
    id: CheckpointId,
    parent: Option<CheckpointId>,
    versions: Value,
    metadata: Value,
    blobs: Vec<GraphBlob>,
) -> NewGraphCheckpoint {
    NewGraphCheckpoint {
        checkpoint_ns: String::new(),
        checkpoint_id: id,
        parent_checkpoint_id: parent,
        checkpoint: json!({
            "v": 4, "id": id.to_string(), "ts": "2026-12-01T20:55:00.015834+00:00",
            "channel_versions": versions, "versions_seen": {}, "updated_channels": null,
        }),
        metadata: meta(metadata),
        blobs,
    }
}

fn simple(id: CheckpointId, parent: Option<CheckpointId>, metadata: Value) -> NewGraphCheckpoint {
    checkpoint(id, parent, json!({}), metadata, Vec::new())
}

fn writes(id: CheckpointId, task: &str, path: &str, writes: &[(i32, &str, &str)]) -> GraphWrites {
    GraphWrites {
        checkpoint_ns: String::new(),
        checkpoint_id: id,
        task_id: task.into(),
        task_path: path.into(),
        writes: writes
            .iter()
            .map(|&(idx, channel, bytes)| ChannelWrite {
                idx,
                channel: channel.into(),
                value: msgpack(bytes.as_bytes()),
            })
            .collect(),
    }
}

async fn user_and_thread(store: &Store, subject: &str) -> (UserId, ThreadId) {
    let owner = store.ensure_user(subject).await.unwrap().user_id;
    let thread = store.create_thread(owner, ThreadId::new(), &meta(json!({}))).await.unwrap();
    (owner, thread.thread_id)
}

async fn get(
    store: &Store,
    owner: UserId,
    thread: ThreadId,
    id: Option<CheckpointId>,
) -> Option<GraphCheckpoint> {
    store.get_graph_checkpoint(owner, thread, "", id).await.unwrap()
}

async fn list(
    store: &Store,
    owner: UserId,
    thread: ThreadId,
    filter: GraphCheckpointFilter,
) -> Vec<CheckpointId> {
    let found = store.list_graph_checkpoints(owner, thread, &filter).await.unwrap();
    found.iter().map(|c| c.checkpoint_id).collect()
}

/// Bytes the tests write, all text.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

/// The channels and bytes of a checkpoint's values.
fn values(checkpoint: &GraphCheckpoint) -> Vec<(&str, &str)> {
    checkpoint.channel_values.iter().map(|(c, v)| (c.as_str(), text(&v.bytes))).collect()
}

/// `(task_id, idx, channel, bytes)` of a checkpoint's pending writes, in their order.
fn pending(checkpoint: &GraphCheckpoint) -> Vec<(&str, i32, &str, &str)> {
    checkpoint
        .pending_writes
        .iter()
        .map(|w| (w.task_id.as_str(), w.idx, w.channel.as_str(), text(&w.value.bytes)))
        .collect()
}

async fn put_then_get_the_newest_or_one_by_id(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    assert_eq!(get(store, owner, thread, None).await, None, "a thread without checkpoints");
    // LangGraph's ids are uuid6, time-ordered: the newest is the greatest.
    let first: CheckpointId = "1f1edc97-90ad-651d-bfff-0bec145004d7".parse().unwrap();
    let second: CheckpointId = "1f1edc97-90b0-6a2e-8000-2b6d4e803348".parse().unwrap();
    let versions = json!({"__start__": "00000000000000000000000000000001.0.46458625291900824"});
    let new = checkpoint(
        first,
        None,
        versions.clone(),
        json!({"source": "input", "step": -1, "parents": {}}),
        vec![blob("__start__", versions["__start__"].as_str().unwrap(), Some("input"))],
    );
    store.put_graph_checkpoint(owner, thread, &new).await.unwrap();
    let next = simple(second, Some(first), json!({"source": "loop", "step": 0}));
    store.put_graph_checkpoint(owner, thread, &next).await.unwrap();

    let newest = get(store, owner, thread, None).await.unwrap();
    assert_eq!(newest.checkpoint_id, second);
    assert_eq!(newest.parent_checkpoint_id, Some(first));
    assert_eq!(newest.metadata, next.metadata);
    let by_id = get(store, owner, thread, Some(first)).await.unwrap();
    let expected = GraphCheckpoint {
        thread_id: thread,
        checkpoint_ns: String::new(),
        checkpoint_id: first,
        parent_checkpoint_id: None,
        checkpoint: new.checkpoint.clone(),
        metadata: new.metadata.clone(),
        channel_values: [("__start__".to_owned(), msgpack(b"input"))].into(),
        pending_writes: Vec::new(),
    };
    assert_eq!(by_id, expected, "a checkpoint reads back as it was put");
    assert_eq!(get(store, owner, thread, Some(CheckpointId::new())).await, None);
    let other_ns = store.get_graph_checkpoint(owner, thread, "child:1", None).await.unwrap();
    assert_eq!(other_ns, None, "namespaces are apart");

    // Put again under its id, the checkpoint is replaced.
    let replaced = simple(second, Some(first), json!({"source": "update"}));
    store.put_graph_checkpoint(owner, thread, &replaced).await.unwrap();
    let read = get(store, owner, thread, Some(second)).await.unwrap();
    assert_eq!(read.metadata, meta(json!({"source": "update"})));
    let all = list(store, owner, thread, GraphCheckpointFilter::default()).await;
    assert_eq!(all, [second, first]);
}

async fn list_is_newest_first_with_before_limit_filter_and_namespace(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let ids: Vec<CheckpointId> = (0..4).map(|_| CheckpointId::new()).collect();
    let (c1, c2, sub, c3) = (ids[0], ids[1], ids[2], ids[3]);
    let run = RunId::new().to_string();
    let metadata = [
        json!({"source": "input", "step": -1, "run_id": run}),
        json!({"source": "loop", "step": 0, "run_id": run, "parents": {}}),
        json!({"source": "loop", "step": 1}),
    ];
    store
        .put_graph_checkpoint(owner, thread, &simple(c1, None, metadata[0].clone()))
        .await
        .unwrap();
    store
        .put_graph_checkpoint(owner, thread, &simple(c2, Some(c1), metadata[1].clone()))
        .await
        .unwrap();
    let in_subgraph = NewGraphCheckpoint {
        checkpoint_ns: "child:6d9f".into(),
        ..simple(sub, None, json!({"source": "loop", "step": 0}))
    };
    store.put_graph_checkpoint(owner, thread, &in_subgraph).await.unwrap();
    store
        .put_graph_checkpoint(owner, thread, &simple(c3, Some(c2), metadata[2].clone()))
        .await
        .unwrap();
    store.put_graph_writes(owner, thread, &writes(c2, "t", "", &[(0, "x", "w")])).await.unwrap();

    let root =
        || GraphCheckpointFilter { checkpoint_ns: Some(String::new()), ..Default::default() };
    assert_eq!(list(store, owner, thread, root()).await, [c3, c2, c1]);
    let chain = store.list_graph_checkpoints(owner, thread, &root()).await.unwrap();
    let parents: Vec<_> = chain.iter().map(|c| c.parent_checkpoint_id).collect();
    assert_eq!(parents, [Some(c2), Some(c1), None], "each names its parent");
    assert_eq!(pending(&chain[1]), [("t", 0, "x", "w")], "a list has the pending writes");
    assert!(chain[0].pending_writes.is_empty() && chain[2].pending_writes.is_empty());

    let before = GraphCheckpointFilter { before: Some(c3), ..root() };
    assert_eq!(list(store, owner, thread, before).await, [c2, c1], "strictly older");
    let limited = GraphCheckpointFilter { limit: Some(2), ..root() };
    assert_eq!(list(store, owner, thread, limited).await, [c3, c2]);
    let both = GraphCheckpointFilter { before: Some(c2), limit: Some(5), ..root() };
    assert_eq!(list(store, owner, thread, both).await, [c1]);

    let filtered = |m: Value| GraphCheckpointFilter { metadata: Some(meta(m)), ..root() };
    assert_eq!(list(store, owner, thread, filtered(json!({"source": "loop"}))).await, [c3, c2]);
    let of_run = filtered(json!({"source": "loop", "run_id": run}));
    assert_eq!(list(store, owner, thread, of_run).await, [c2], "every key must match");
    assert_eq!(list(store, owner, thread, filtered(json!({"step": -1}))).await, [c1]);
    assert!(list(store, owner, thread, filtered(json!({"source": "fork"}))).await.is_empty());

    let every = list(store, owner, thread, GraphCheckpointFilter::default()).await;
    assert_eq!(every, [c3, sub, c2, c1], "no namespace: all of them, newest first");
    let sub_only = GraphCheckpointFilter { checkpoint_ns: Some("child:6d9f".into()), ..root() };
    assert_eq!(list(store, owner, thread, sub_only).await, [sub]);
}

async fn blobs_are_stored_for_new_versions_and_read_for_the_checkpoints_versions(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let (c1, c2, c3) = (CheckpointId::new(), CheckpointId::new(), CheckpointId::new());
    let first = checkpoint(
        c1,
        None,
        json!({"a": "1", "b": "1", "e": "1"}),
        json!({"step": -1}),
        vec![blob("a", "1", Some("a1")), blob("b", "1", Some("b1")), blob("e", "1", None)],
    );
    store.put_graph_checkpoint(owner, thread, &first).await.unwrap();
    // Only `a` and `c` are new; `b` keeps version 1, `e` (no value) and integer versions too.
    let second = checkpoint(
        c2,
        Some(c1),
        json!({"a": "2", "b": "1", "c": 3, "e": "1"}),
        json!({"step": 0}),
        vec![blob("a", "2", Some("a2")), blob("c", "3", Some("c3"))],
    );
    store.put_graph_checkpoint(owner, thread, &second).await.unwrap();
    let third = checkpoint(c3, Some(c2), json!({"a": "2"}), json!({"step": 1}), Vec::new());
    store.put_graph_checkpoint(owner, thread, &third).await.unwrap();

    let read = |id| async move { get(store, owner, thread, Some(id)).await.unwrap() };
    assert_eq!(values(&read(c1).await), [("a", "a1"), ("b", "b1")], "no empty channel");
    assert_eq!(
        values(&read(c2).await),
        [("a", "a2"), ("b", "b1"), ("c", "c3")],
        "an unchanged channel reads its older version"
    );
    assert_eq!(values(&read(c3).await), [("a", "a2")], "only its channel_versions");

    // A version's value is stored once: putting it again changes nothing.
    let again = checkpoint(
        c1,
        None,
        json!({"a": "1", "b": "1"}),
        json!({"step": -1, "again": true}),
        vec![blob("a", "1", Some("other"))],
    );
    store.put_graph_checkpoint(owner, thread, &again).await.unwrap();
    let c1_again = read(c1).await;
    assert_eq!(values(&c1_again), [("a", "a1"), ("b", "b1")]);
    assert_eq!(c1_again.metadata, again.metadata, "the checkpoint itself is replaced");
    assert_eq!(c1_again.channel_values["a"].tag, "msgpack");
}

async fn bad_checkpoints_are_invalid_and_write_nothing(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let id = CheckpointId::new();
    let not_an_object =
        NewGraphCheckpoint { checkpoint: json!([1]), ..simple(id, None, json!({})) };
    let float_version = checkpoint(id, None, json!({"a": 1.5}), json!({}), Vec::new());
    let empty_typed = NewGraphCheckpoint {
        blobs: vec![GraphBlob {
            channel: "a".into(),
            version: "1".into(),
            value: Some(Serialized { tag: "empty".into(), bytes: Vec::new() }),
        }],
        ..simple(id, None, json!({}))
    };
    for bad in [not_an_object, float_version, empty_typed] {
        let result = store.put_graph_checkpoint(owner, thread, &bad).await;
        assert!(matches!(result, Err(Error::Invalid(_))), "{result:?}");
    }
    assert_eq!(get(store, owner, thread, None).await, None);
}

async fn writes_keep_the_first_unless_all_are_special(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let id = CheckpointId::new();
    // Writes may arrive before their checkpoint.
    let first = writes(id, "t1", "", &[(0, "messages", "m1"), (1, "branch:to:review", "")]);
    store.put_graph_writes(owner, thread, &first).await.unwrap();
    store.put_graph_checkpoint(owner, thread, &simple(id, None, json!({}))).await.unwrap();
    let retried = writes(id, "t1", "", &[(0, "messages", "m2")]);
    store.put_graph_writes(owner, thread, &retried).await.unwrap();
    let read = get(store, owner, thread, Some(id)).await.unwrap();
    assert_eq!(
        pending(&read),
        [("t1", 0, "messages", "m1"), ("t1", 1, "branch:to:review", "")],
        "an ordinary write stored first wins"
    );

    let interrupt = |bytes: &str| writes(id, "t2", "", &[(-3, "__interrupt__", bytes)]);
    store.put_graph_writes(owner, thread, &interrupt("i1")).await.unwrap();
    store.put_graph_writes(owner, thread, &interrupt("i2")).await.unwrap();
    let resumed = writes(id, "t2", "", &[(-3, "__interrupt__", "i3"), (-4, "__resume__", "r")]);
    store.put_graph_writes(owner, thread, &resumed).await.unwrap();
    // A call that is not all special keeps what is stored, special writes included.
    let mixed = writes(id, "t2", "", &[(-4, "__resume__", "r2"), (0, "x", "x1")]);
    store.put_graph_writes(owner, thread, &mixed).await.unwrap();
    let twice = writes(id, "t2", "", &[(-1, "__error__", "e1"), (-1, "__error__", "e2")]);
    store.put_graph_writes(owner, thread, &twice).await.unwrap();
    let read = get(store, owner, thread, Some(id)).await.unwrap();
    let t2: Vec<_> = pending(&read).into_iter().filter(|w| w.0 == "t2").collect();
    assert_eq!(
        t2,
        [
            ("t2", -4, "__resume__", "r"),
            ("t2", -3, "__interrupt__", "i3"),
            ("t2", -1, "__error__", "e2"),
            ("t2", 0, "x", "x1"),
        ],
        "special writes are replaced (the last of a call wins), only by an all-special call"
    );
    let nothing = writes(id, "t3", "", &[]);
    store.put_graph_writes(owner, thread, &nothing).await.unwrap();
}

async fn pending_writes_are_sorted_by_task_path_task_id_idx(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let id = CheckpointId::new();
    store.put_graph_checkpoint(owner, thread, &simple(id, None, json!({}))).await.unwrap();
    // Stored out of order; paths and task ids that a locale would order otherwise ("B" before
    // "a", "~" after letters, as Python compares them).
    let calls = [
        ("b", "~__pregel_pull, review", &[(1, "y"), (0, "x")][..]),
        ("a", "~__pregel_pull, review", &[(-3, "__interrupt__")][..]),
        ("z", "B", &[(0, "q")][..]),
        ("A", "a", &[(2, "s"), (0, "r")][..]),
        ("c", "", &[(0, "p")][..]),
        ("B", "~__pregel_pull, review", &[(0, "w")][..]),
    ];
    for (task, path, list) in calls {
        let list: Vec<(i32, &str, &str)> = list.iter().map(|&(i, c)| (i, c, "v")).collect();
        store.put_graph_writes(owner, thread, &writes(id, task, path, &list)).await.unwrap();
    }
    let read = get(store, owner, thread, Some(id)).await.unwrap();
    let order: Vec<(&str, &str, i32)> = read
        .pending_writes
        .iter()
        .map(|w| (w.task_path.as_str(), w.task_id.as_str(), w.idx))
        .collect();
    assert_eq!(
        order,
        [
            ("", "c", 0),
            ("B", "z", 0),
            ("a", "A", 0),
            ("a", "A", 2),
            ("~__pregel_pull, review", "B", 0),
            ("~__pregel_pull, review", "a", -3),
            ("~__pregel_pull, review", "b", 0),
            ("~__pregel_pull, review", "b", 1),
        ]
    );
    let w: &PendingWrite = &read.pending_writes[5];
    assert_eq!((w.channel.as_str(), w.value.tag.as_str()), ("__interrupt__", "msgpack"));
    let listed = store.list_graph_checkpoints(owner, thread, &Default::default()).await.unwrap();
    assert_eq!(listed[0].pending_writes, read.pending_writes, "list orders them alike");
}

async fn another_users_or_a_missing_thread_is_not_found_and_nothing_is_written(db: &TestDb) {
    let store = &db.store;
    let (alice, thread) = user_and_thread(store, "alice").await;
    let (bob, bobs) = user_and_thread(store, "bob").await;
    let id = CheckpointId::new();
    let run = RunId::new();
    let new = checkpoint(
        id,
        None,
        json!({"a": "1"}),
        json!({"run_id": run.to_string()}),
        vec![blob("a", "1", Some("alice"))],
    );
    let write = writes(id, "t", "", &[(0, "a", "w")]);
    for (user, thread) in [(bob, thread), (alice, ThreadId::new())] {
        assert_not_found(store.put_graph_checkpoint(user, thread, &new).await);
        assert_not_found(store.put_graph_writes(user, thread, &write).await);
        assert_not_found(store.get_graph_checkpoint(user, thread, "", None).await);
        assert_not_found(store.list_graph_checkpoints(user, thread, &Default::default()).await);
    }
    assert_eq!(get(store, alice, thread, None).await, None, "nothing was written");

    // Alice's own checkpoint is out of reach of Bob's copies and deletes.
    let own = checkpoint(
        id,
        None,
        json!({"a": "1"}),
        json!({"run_id": run.to_string()}),
        vec![blob("a", "1", Some("mine"))],
    );
    store.put_graph_checkpoint(alice, thread, &own).await.unwrap();
    assert_not_found(store.copy_graph_checkpoints(bob, thread, bobs).await);
    assert_not_found(store.copy_graph_checkpoints(alice, thread, bobs).await);
    assert_not_found(store.copy_graph_checkpoints(alice, thread, ThreadId::new()).await);
    assert_eq!(store.delete_graph_checkpoints_of_runs(bob, &[run]).await.unwrap(), 0);
    assert_eq!(get(store, bob, bobs, None).await, None);
    let kept = get(store, alice, thread, None).await.unwrap();
    assert_eq!(values(&kept), [("a", "mine")], "Bob's blob was never stored");
}

async fn deleting_the_thread_deletes_its_graph_rows(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let id = CheckpointId::new();
    let new = checkpoint(id, None, json!({"a": "1"}), json!({}), vec![blob("a", "1", Some("old"))]);
    store.put_graph_checkpoint(owner, thread, &new).await.unwrap();
    store.put_graph_writes(owner, thread, &writes(id, "t", "", &[(0, "a", "w")])).await.unwrap();
    store.delete_thread(owner, thread).await.unwrap();
    assert_not_found(store.get_graph_checkpoint(owner, thread, "", None).await);

    // The same id again: none of the old rows are there (an old blob would be kept by the
    // insert-if-absent, old writes would be pending).
    store.create_thread(owner, thread, &meta(json!({}))).await.unwrap();
    assert_eq!(get(store, owner, thread, None).await, None);
    let renewed =
        checkpoint(id, None, json!({"a": "1"}), json!({}), vec![blob("a", "1", Some("new"))]);
    store.put_graph_checkpoint(owner, thread, &renewed).await.unwrap();
    let read = get(store, owner, thread, None).await.unwrap();
    assert_eq!(values(&read), [("a", "new")]);
    assert!(read.pending_writes.is_empty());
}

async fn copy_copies_every_row_into_the_target(db: &TestDb) {
    let store = &db.store;
    let (owner, source) = user_and_thread(store, "alice").await;
    let target = store.create_thread(owner, ThreadId::new(), &meta(json!({}))).await.unwrap();
    let target = target.thread_id;
    let (c1, sub, c2) = (CheckpointId::new(), CheckpointId::new(), CheckpointId::new());
    let first = checkpoint(
        c1,
        None,
        json!({"a": "1"}),
        json!({"step": -1}),
        vec![blob("a", "1", Some("a1"))],
    );
    store.put_graph_checkpoint(owner, source, &first).await.unwrap();
    let in_subgraph = NewGraphCheckpoint {
        checkpoint_ns: "child:1".into(),
        ..checkpoint(sub, None, json!({"s": "1"}), json!({}), vec![blob("s", "1", Some("s1"))])
    };
    store.put_graph_checkpoint(owner, source, &in_subgraph).await.unwrap();
    let second =
        checkpoint(c2, Some(c1), json!({"a": "2"}), json!({"step": 0}), vec![blob("a", "2", None)]);
    store.put_graph_checkpoint(owner, source, &second).await.unwrap();
    let pending = writes(c2, "t", "~p", &[(0, "a", "w"), (-3, "__interrupt__", "i")]);
    store.put_graph_writes(owner, source, &pending).await.unwrap();

    store.copy_graph_checkpoints(owner, source, target).await.unwrap();
    let all = GraphCheckpointFilter::default();
    let from = store.list_graph_checkpoints(owner, source, &all).await.unwrap();
    let copied = store.list_graph_checkpoints(owner, target, &all).await.unwrap();
    assert_eq!(from.len(), 3);
    let as_source: Vec<GraphCheckpoint> =
        copied.into_iter().map(|c| GraphCheckpoint { thread_id: source, ..c }).collect();
    assert_eq!(as_source, from, "every checkpoint with its values and writes");
    let sub_copy = store.get_graph_checkpoint(owner, target, "child:1", None).await.unwrap();
    assert_eq!(values(&sub_copy.unwrap()), [("s", "s1")]);

    // The copy stands on its own.
    store.delete_thread(owner, source).await.unwrap();
    let newest = get(store, owner, target, None).await.unwrap();
    assert_eq!((newest.checkpoint_id, newest.pending_writes.len()), (c2, 2));
    assert_eq!(values(&get(store, owner, target, Some(c1)).await.unwrap()), [("a", "a1")]);
}

async fn delete_for_runs_deletes_their_checkpoints_and_writes(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let (kept_run, gone_run) = (RunId::new(), RunId::new());
    let of = |run: RunId| json!({"source": "loop", "run_id": run.to_string()});
    let (c1, c2, c3) = (CheckpointId::new(), CheckpointId::new(), CheckpointId::new());
    store.put_graph_checkpoint(owner, thread, &simple(c1, None, of(kept_run))).await.unwrap();
    store.put_graph_checkpoint(owner, thread, &simple(c2, Some(c1), of(gone_run))).await.unwrap();
    store.put_graph_checkpoint(owner, thread, &simple(c3, Some(c2), of(gone_run))).await.unwrap();
    for id in [c1, c3] {
        store
            .put_graph_writes(owner, thread, &writes(id, "t", "", &[(0, "a", "w")]))
            .await
            .unwrap();
    }
    // A copy of the run's checkpoint in another of the caller's threads goes too.
    let other = store.create_thread(owner, ThreadId::new(), &meta(json!({}))).await.unwrap();
    store
        .put_graph_checkpoint(owner, other.thread_id, &simple(c2, None, of(gone_run)))
        .await
        .unwrap();

    assert_eq!(store.delete_graph_checkpoints_of_runs(owner, &[]).await.unwrap(), 0);
    let deleted = store.delete_graph_checkpoints_of_runs(owner, &[gone_run, RunId::new()]).await;
    assert_eq!(deleted.unwrap(), 3);
    assert_eq!(list(store, owner, thread, GraphCheckpointFilter::default()).await, [c1]);
    assert_eq!(get(store, owner, other.thread_id, None).await, None);
    let kept = get(store, owner, thread, None).await.unwrap();
    assert_eq!(pending(&kept), [("t", 0, "a", "w")], "other checkpoints keep their writes");
    // The deleted checkpoint's writes went with it.
    store.put_graph_checkpoint(owner, thread, &simple(c3, Some(c2), of(kept_run))).await.unwrap();
    assert!(get(store, owner, thread, Some(c3)).await.unwrap().pending_writes.is_empty());
}

async fn prune_keeps_the_newest_checkpoint_of_each_namespace(db: &TestDb) {
    let store = &db.store;
    let (owner, thread) = user_and_thread(store, "alice").await;
    let ids: Vec<CheckpointId> = (0..4).map(|_| CheckpointId::new()).collect();
    let (c1, sub1, c2, sub2) = (ids[0], ids[1], ids[2], ids[3]);
    let in_child =
        |new: NewGraphCheckpoint| NewGraphCheckpoint { checkpoint_ns: "child:1".into(), ..new };
    let puts = [
        checkpoint(
            c1,
            None,
            json!({"a": "1", "b": "1"}),
            json!({}),
            vec![blob("a", "1", Some("a1")), blob("b", "1", Some("b1"))],
        ),
        in_child(checkpoint(
            sub1,
            None,
            json!({"s": "1"}),
            json!({}),
            vec![blob("s", "1", Some("s1"))],
        )),
        checkpoint(
            c2,
            Some(c1),
            json!({"a": "2", "b": "1"}),
            json!({}),
            vec![blob("a", "2", Some("a2"))],
        ),
        in_child(simple(sub2, Some(sub1), json!({}))),
    ];
    for new in &puts {
        store.put_graph_checkpoint(owner, thread, new).await.unwrap();
    }
    for id in [c1, c2] {
        store
            .put_graph_writes(owner, thread, &writes(id, "t", "", &[(0, "a", "w")]))
            .await
            .unwrap();
    }
    let (bob, _) = user_and_thread(store, "bob").await;
    assert_not_found(store.prune_graph_checkpoints(bob, thread).await);

    assert_eq!(store.prune_graph_checkpoints(owner, thread).await.unwrap(), 2);
    assert_eq!(list(store, owner, thread, GraphCheckpointFilter::default()).await, [sub2, c2]);
    let newest = get(store, owner, thread, None).await.unwrap();
    assert_eq!(values(&newest), [("a", "a2"), ("b", "b1")], "the blobs it reads stay");
    assert_eq!(pending(&newest), [("t", 0, "a", "w")], "and its writes");
    assert_eq!(store.prune_graph_checkpoints(owner, thread).await.unwrap(), 0);

    // What only the pruned checkpoints had is gone: their blobs and writes.
    store
        .put_graph_checkpoint(
            owner,
            thread,
            &checkpoint(
                c1,
                None,
                json!({"a": "1"}),
                json!({}),
                vec![blob("a", "1", Some("again"))],
            ),
        )
        .await
        .unwrap();
    let again = get(store, owner, thread, Some(c1)).await.unwrap();
    assert_eq!(values(&again), [("a", "again")]);
    assert!(again.pending_writes.is_empty());
}
