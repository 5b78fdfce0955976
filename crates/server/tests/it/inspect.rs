//! `spindle id inspect` and `spindle doctor` as an operator runs them: the binary, its output
//! and its exit code, on SQLite and PostgreSQL.

use std::process::Command;

use ids::{AssistantId, MessageId, ThreadId};
use serde_json::json;
use store::testing::{TempDir, TestDb, new_run};
use store::{IfNotExists, Metadata, Store, SystemAssistant};

use crate::harness;

/// The binary, logging errors only: these commands' stderr must stay empty.
fn spindle() -> Command {
    let mut cmd = harness::spindle();
    cmd.env("SPINDLE_LOG", "error");
    cmd
}

/// Runs `spindle ARGS` in `dir`; its exit code and stdout. Exit 1 is an answer here, not a
/// failure: nothing may go to stderr.
fn spindle_in(dir: &TempDir, args: &[&str]) -> (i32, String) {
    let out = spindle().args(args).current_dir(&dir.0).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.is_empty(), "{args:?}: {stderr}");
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap())
}

#[track_caller]
fn check_rejected(dir: &TempDir, input: &str, expected: &[&str]) {
    let (code, out) = spindle_in(dir, &["id", "inspect", input]);
    assert_eq!(code, 1, "{input}: not an id, exit 1\n{out}");
    assert!(out.starts_with(&format!("`{input}` is not a Spindle id.\n")), "{out}");
    for text in expected {
        assert!(out.contains(text), "{input}: expected {text:?} in\n{out}");
    }
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn legacy_and_malformed_strings_are_explained_and_rejected() {
    let dir = TempDir::new("legacy");
    check_rejected(
        &dir,
        "thread_websocket_factory_1757361062151_7_90c65fe4",
        &[
            "It is a hand-made id, assembled from parts joined by `_`:",
            "`thread`: a prefix naming the kind of id (a thread id)",
            "`websocket_factory`: the name of the component that minted it",
            "`1757361062151`: the time it was minted, in milliseconds since 1970: 2025-09-08T19:51:02.151Z",
            "`7`: a counter",
            "`90c65fe4`: 8 hex digits, 32 random bits",
            "Spindle never accepts them",
            "Where a thread id is expected, the API answers: invalid thread_id `thread_websocket_factory_1757361062151_7_90c65fe4`: expected a UUID like",
        ],
    );
    check_rejected(
        &dir,
        "websocket_factory_1757361062151",
        &[
            "`websocket_factory`: the name of the component that minted it",
            "2025-09-08T19:51:02.151Z",
            "two ids made in the same millisecond are the same id",
        ],
    );
    check_rejected(
        &dir,
        "req_73708c2b4f1e4d5a9b0c1d2e3f4a5b6c",
        &[
            "`req`: a prefix naming the kind of id (a request id)",
            "a UUID (version 4) without its hyphens, i.e. 73708c2b-4f1e-4d5a-9b0c-1d2e3f4a5b6c",
            "Spindle mints its own for every request",
            // Its UUID is looked up, but there is no database here.
            "not looked up: no database at sqlite://spindle-data/spindle.db",
        ],
    );
    check_rejected(&dir, "req_73708c2b…", &["it was cut short", "`73708c2b`: 8 hex digits"]);
    check_rejected(
        &dir,
        "0192F1C4-7D3E-7A8B-9C0D-1E2F3A4B5C6D",
        &[
            "uppercase hex digits",
            "0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d",
            "uppercase hex digit at position 4",
        ],
    );
    check_rejected(
        &dir,
        "0192f1c47d3e7a8b9c0d1e2f3a4b5c6d",
        &[
            "a UUID without its hyphens",
            "0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d",
            "got 32 characters",
        ],
    );
    check_rejected(
        &dir,
        "00000000-0000-0000-0000-000000000000",
        &["the nil UUID (all zeros): never an id"],
    );
    check_rejected(
        &dir,
        "{0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d}",
        &["braces, Microsoft's GUID form", "not looked up"],
    );
    check_rejected(
        &dir,
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        &["looks like a ULID", "2016-07-30T23:54:10.259Z"],
    );
    check_rejected(
        &dir,
        " 0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d",
        &["whitespace around it", "is a valid id"],
    );
    check_rejected(&dir, "1757361062151", &["a bare number", "2025-09-08T19:51:02.151Z"]);
    check_rejected(&dir, "", &["It is empty."]);
    check_rejected(&dir, "hello", &["It is not a UUID", "got 5 characters"]);
}

#[test]
fn a_valid_id_is_decoded_without_a_database() {
    let dir = TempDir::new("valid");
    let (code, out) = spindle_in(&dir, &["id", "inspect", "0192f1c4-7d3e-7a8b-9c0d-1e2f3a4b5c6d"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is a valid Spindle id: a UUID in the canonical form (lowercase, hyphenated), version 7."), "{out}");
    assert!(out.contains("minted at 2024-11-03T11:23:59.166Z"), "{out}");
    assert!(out.contains("not looked up: no database at"), "{out}");
    let echo = AssistantId::for_graph("echo").to_string();
    let (code, out) = spindle_in(&dir, &["id", "inspect", &echo]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the assistant id LangGraph and Spindle give the built-in graph `echo`"),
        "{out}"
    );
    let (_, out) = spindle_in(&dir, &["id", "inspect", "6ba7b810-9dad-41d1-80b4-00c04fd430c8"]);
    assert!(out.contains("Version 4 is random: Spindle never mints it"), "{out}");
    assert!(!dir.0.join("spindle-data").exists(), "inspect never creates a database");
}

store::on_both_backends!(
    inspect_names_each_kind_of_id_in_the_database,
    doctor_reports_fixes_and_exits_by_health
);

/// `spindle id inspect ID --database-url URL`, expecting exit 0.
fn inspect_in(db: &TestDb, id: &str) -> String {
    let dir = TempDir::new(&format!("db-{}", db.store.backend().as_str()));
    let (code, out) =
        spindle_in(&dir, &["id", "inspect", id, "--database-url", &db.url.to_string()]);
    assert_eq!(code, 0, "{out}");
    out
}

async fn inspect_names_each_kind_of_id_in_the_database(db: &TestDb) {
    let store: &Store = &db.store;
    let echo = SystemAssistant { graph_id: "echo".into(), description: None };
    let assistant = store.upsert_system_assistant(&echo).await.unwrap();
    let key = store.create_api_key("alice", "hash", "spindle_abc").await.unwrap();
    let owner = key.user_id;
    let thread = ThreadId::new();
    let run = store.create_run(owner, &new_run(thread), IfNotExists::Create).await.unwrap();
    let message = MessageId::new();
    let values =
        json!({"messages": [{"id": message.to_string(), "type": "human", "content": "hi"}]});
    let checkpoint = store.put_state(owner, thread, None, &values, &Metadata::new()).await.unwrap();

    let out = inspect_in(db, &thread.to_string());
    assert!(out.contains(&format!("a thread of user {owner} (alice), status busy")), "{out}");
    assert!(
        out.contains(
            "1 run(s) (1 pending or running), 1 checkpoint(s), 0 event(s), last event seq 0"
        ),
        "{out}"
    );
    assert!(out.contains(&format!("newest run {}: pending", run.run_id)), "{out}");
    let out = inspect_in(db, &run.run_id.to_string());
    assert!(
        out.contains(&format!(
            "a run of thread {thread} (user {owner}, alice), status pending, assistant {}",
            assistant.assistant_id
        )),
        "{out}"
    );
    let out = inspect_in(db, &assistant.assistant_id.to_string());
    assert!(out.contains("an assistant (built in): graph echo"), "{out}");
    assert!(out.contains("built-in graph `echo`"), "{out}");
    let out = inspect_in(db, &checkpoint.checkpoint_id.to_string());
    assert!(
        out.contains(&format!("a checkpoint of thread {thread}, no run, no parent, step -1")),
        "{out}"
    );
    assert!(
        out.contains("the thread's newest checkpoint (its current state); 0 checkpoint(s) back to the thread's first; no children (a branch's end)"),
        "{out}"
    );
    // A second state forked from the first makes it a fork point.
    let same = values.clone();
    let update = Box::new(move |_: Option<serde_json::Value>| Ok(same.clone()));
    let first = checkpoint.checkpoint_id;
    let none = Metadata::new();
    let a = store.update_state(owner, thread, None, Some(first), update, &none).await.unwrap();
    let same = values.clone();
    let update = Box::new(move |_: Option<serde_json::Value>| Ok(same.clone()));
    let b = store.update_state(owner, thread, None, Some(first), update, &none).await.unwrap();
    let out = inspect_in(db, &first.to_string());
    assert!(
        out.contains(&format!("not the thread's newest; 0 checkpoint(s) back to the thread's first; 2 children, a fork point (branches start at {}, {})", a.checkpoint_id, b.checkpoint_id)),
        "{out}"
    );
    let out = inspect_in(db, &b.checkpoint_id.to_string());
    assert!(out.contains(&format!("parent {first}, step 0, source ?")), "{out}");
    assert!(
        out.contains("the thread's newest checkpoint (its current state); 1 checkpoint(s) back"),
        "{out}"
    );
    let out = inspect_in(db, &owner.to_string());
    assert!(out.contains("a user: subject alice"), "{out}");
    assert!(out.contains("1 thread(s), 1 API key(s)"), "{out}");
    let out = inspect_in(db, &key.key_id.to_string());
    assert!(
        out.contains(&format!("an API key of user {owner} (alice), prefix spindle_abc")),
        "{out}"
    );
    let out = inspect_in(db, &message.to_string());
    assert!(
        out.contains(&format!("a message in the current state of thread {thread} (user {owner})")),
        "{out}"
    );
    let out = inspect_in(db, &ThreadId::new().to_string());
    assert!(out.contains("it is not in the database"), "{out}");
    // A UUID written in uppercase is rejected, and its canonical form is looked up for the
    // operator.
    let dir = TempDir::new(&format!("upper-{}", db.store.backend().as_str()));
    let upper = thread.to_string().to_uppercase();
    let (code, out) =
        spindle_in(&dir, &["id", "inspect", &upper, "--database-url", &db.url.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("its canonical form is:\n  a thread of user"), "{out}");
}

async fn doctor_reports_fixes_and_exits_by_health(db: &TestDb) {
    let store = &db.store;
    let owner = store.ensure_user("alice").await.unwrap().user_id;
    let thread = ThreadId::new();
    let run = store.create_run(owner, &new_run(thread), IfNotExists::Create).await.unwrap();
    assert_eq!(store.claim_runs(1).await.unwrap().len(), 1);
    let dir = TempDir::new(&format!("doctor-{}", db.store.backend().as_str()));
    let url = db.url.to_string();
    let doctor = |extra: &[&str]| {
        let mut args = vec!["doctor", "--database-url", &url];
        args.extend_from_slice(extra);
        spindle_in(&dir, &args)
    };

    // The run was just claimed: alive by the default threshold.
    let (code, out) = doctor(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no problems found"), "{out}");
    assert!(out.ends_with("\nhealthy\n"), "{out}");
    // No server executes it, though: with no grace at all it is stale.
    let (code, out) = doctor(&["--stale-after", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error: runs running with no sign of life (no live executor) (1) [stale_running_run]"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!("  - run {} (thread {thread}): running since ", run.run_id)),
        "{out}"
    );
    assert!(out.contains("runs have no executor lease or heartbeat yet"), "{out}");
    assert!(
        out.ends_with("\nunhealthy: 1 problem(s); run again with --fix to repair what is safe\n"),
        "{out}"
    );
    let (code, out) = doctor(&["--stale-after", "0", "--json"]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["healthy"], false);
    assert_eq!(report["findings"][0]["check"], "stale_running_run");
    assert_eq!(report["findings"][0]["run_id"], run.run_id.to_string());

    let (code, out) = doctor(&["--stale-after", "0", "--fix"]);
    assert_eq!(code, 0, "everything found was fixed: {out}");
    assert!(out.contains("ended the run `error` with a run_error event (seq 1)"), "{out}");
    assert!(out.contains("after the repairs: no problems found"), "{out}");
    assert_eq!(store.get_thread(owner, thread).await.unwrap().status, store::ThreadStatus::Error);
    let (code, out) = doctor(&["--stale-after", "0", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((report["healthy"].clone(), report["findings"].clone()), (json!(true), json!([])));
}

#[test]
fn doctor_never_creates_a_database() {
    let dir = TempDir::new("missing");
    let out =
        spindle().args(["doctor", "--data-dir", "nowhere"]).current_dir(&dir.0).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: no database at sqlite://nowhere/spindle.db"), "{stderr}");
    assert!(!dir.0.join("nowhere").exists());
}
