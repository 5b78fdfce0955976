//! A run's first step: forks from an older checkpoint, the state before the input, step
//! numbers along a run, branches from an update, interrupted ends, and a refused first step.

use ids::{CheckpointId, ThreadId};
use serde_json::json;
use store::testing::TestDb;
use store::{Error, EventKind, IfNotExists, Metadata, RunStatus, ThreadStatus};

use crate::rows::*;

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
