//! The thread-status rules (`thread_status_after`, `thread_status_after_undo`), one definition
//! in Rust, checked case by case against every path of both backends that sets a status: a
//! run's end with and without a state (PostgreSQL's function and its transaction), with
//! another run of the thread waiting or not; a pending run cancelled or deleted; a running run
//! rolled back, on a thread whose newest checkpoint waits for a human or not.

use ids::ThreadId;
use serde_json::json;
use store::testing::TestDb;
use store::{IfNotExists, Metadata, RunStatus};

use crate::rows::*;

store::on_both_backends!(
    every_run_end_sets_the_status_the_rule_gives,
    every_undo_sets_the_status_the_rule_gives
);

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
