//! A resume racing new input, under each multitask strategy.

use super::*;

store::on_both_backends!(TestApp =>
    a_resume_racing_new_input_follows_each_multitask_strategy,
    a_resume_queued_behind_an_answer_finds_nothing_to_resume,
);

/// A long input run on an interrupted thread, and a resume arriving while it runs, with each
/// multitask strategy (LangGraph's "setup B", docs/langgraph-checkpoints.md §14).
async fn a_resume_racing_new_input_follows_each_multitask_strategy(app: &TestApp) {
    let key = app.key("alice").await;
    for strategy in ["reject", "enqueue", "interrupt", "rollback"] {
        let t = new_thread(app, &key).await;
        wait(app, &key, &t, asking("first", json!("?"))).await;
        let interrupted = history(app, &key, &t).await;
        // Long enough to still run when the resume arrives: it is cancelled or waited for.
        let mut input = human("slow input");
        input["n"] = json!(100_000);
        input["delay_ms"] = json!(1000);
        let body = json!({"assistant_id": "synthetic", "input": input});
        let slow = app.post(&key, &format!("/threads/{t}/runs"), body).await.ok();
        let slow_id = slow["run_id"].as_str().unwrap().to_owned();
        app.wait_for_status(&key, &t, &slow_id, |s| s == "running").await;
        let mut body = resume(json!("R"));
        body["multitask_strategy"] = json!(strategy);
        let reply = app.post(&key, &format!("/threads/{t}/runs"), body).await;
        if strategy == "reject" {
            reply.error(StatusCode::CONFLICT, "conflict", "already running");
            let cancel = format!("/threads/{t}/runs/{slow_id}/cancel");
            app.post(&key, &cancel, json!({})).await;
            app.wait_for_status(&key, &t, &slow_id, |s| s != "running").await;
            assert_eq!(
                app.get(&key, &format!("/threads/{t}/runs")).await.ok().as_array().unwrap().len(),
                2
            );
            continue;
        }
        let resumed = reply.ok();
        let resumed_id = resumed["run_id"].as_str().unwrap().to_owned();
        if strategy == "enqueue" {
            // Queued behind the slow run, which abandons the interrupt when it ends.
            let cancel = format!("/threads/{t}/runs/{slow_id}/cancel");
            app.post(&key, &cancel, json!({})).await;
        }
        let done = app
            .wait_for_status(&key, &t, &resumed_id, |s| !matches!(s, "pending" | "running"))
            .await;
        let slow_now = app.get(&key, &format!("/threads/{t}/runs/{slow_id}")).await;
        let values = state(app, &key, &t).await["values"].clone();
        match strategy {
            "enqueue" => {
                // The slow run was cancelled after its input was applied: the thread was no
                // longer interrupted when the resume started.
                assert_eq!(slow_now.ok()["status"], "interrupted");
                assert_eq!(done["status"], "success", "{done}");
            }
            "interrupt" => {
                // The cut-off run's input was applied: its pending answer is what the resume
                // completes (it asked nothing, so the value is unused).
                assert_eq!(slow_now.ok()["status"], "interrupted");
                assert_eq!(done["status"], "success", "{done}");
                assert_eq!(texts(&values).last().unwrap(), "echo: slow input");
            }
            _ => {
                // Rolled back: the slow run and what it wrote are gone; the interrupt stands
                // and the resume answers it.
                assert_eq!(slow_now.status, StatusCode::NOT_FOUND);
                assert_eq!(done["status"], "success", "{done}");
                assert_eq!(texts(&values), ["first", "echo: first\nresumed with: \"R\""]);
                let h = history(app, &key, &t).await;
                assert_eq!(h[h.len() - interrupted.len()..], interrupted[..]);
            }
        }
        let th = thread(app, &key, &t).await;
        assert_eq!(th["status"], "idle", "{strategy}: {th}");
        assert_one_tree(&history(app, &key, &t).await);
    }
}

/// A resume accepted while the thread was busy, queued behind a run that answers (and so
/// abandons the interrupt): when it starts there is nothing to resume, and it ends `error`
/// saying so; the thread's state is the other run's. If the other run has ended before the
/// resume is created, the resume is refused at once (409) instead: either way nothing is lost.
async fn a_resume_queued_behind_an_answer_finds_nothing_to_resume(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, asking("first", json!("?"))).await;
    let mut input = human("answer this");
    input["n"] = json!(20);
    input["delay_ms"] = json!(50);
    let body = json!({"assistant_id": "synthetic", "input": input});
    let slow = app.post(&key, &format!("/threads/{t}/runs"), body).await.ok();
    let slow_id = slow["run_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&key, &t, &slow_id, |s| s == "running").await;
    let reply = app.post(&key, &format!("/threads/{t}/runs"), resume(json!("late"))).await;
    // The thread's status follows its last run: `error` for a resume that failed.
    let mut status = "idle";
    if reply.status == StatusCode::CONFLICT {
        reply.error(StatusCode::CONFLICT, "conflict", "nothing to resume");
    } else {
        let resumed = reply.ok();
        let id = resumed["run_id"].as_str().unwrap();
        let done = app.wait_for_status(&key, &t, id, |s| !matches!(s, "pending" | "running")).await;
        assert_eq!(done["status"], "error", "{done}");
        let owner = app.store().ensure_user("alice").await.unwrap().user_id;
        let run = app.store().get_run(owner, t.parse().unwrap(), id.parse().unwrap()).await;
        let error = run.unwrap().error.unwrap_or_default();
        assert!(error.contains("is not interrupted: nothing to resume"), "{error}");
        status = "error";
    }
    let slow = app.wait_for_status(&key, &t, &slow_id, |s| s != "running").await;
    assert_eq!(slow["status"], "success");
    let values = state(app, &key, &t).await["values"].clone();
    assert_eq!(texts(&values), ["first", "answer this", "echo: answer this"]);
    assert_eq!(thread(app, &key, &t).await["status"], status);
}
