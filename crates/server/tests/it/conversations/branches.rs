//! Branches as chat UIs make them: the state before the first input, regenerate and edit as
//! forks, updates of an older checkpoint, concurrent forks, and an edit during an answer.

use super::*;

store::on_both_backends!(TestApp =>
    history_starts_before_the_first_input,
    regenerate_makes_a_second_branch_and_shows_it,
    editing_a_message_replaces_it_in_a_new_branch,
    updating_an_older_checkpoint_starts_a_branch,
    two_forks_from_one_checkpoint_at_once_make_two_branches,
    editing_the_first_message_while_its_answer_runs_survives_a_rollback,
);

async fn history_starts_before_the_first_input(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    assert_eq!(state(app, &key, &t).await["checkpoint"], Value::Null, "no state yet");
    let values = wait(app, &key, &t, echo("hello")).await;
    assert_eq!(texts(&values), ["hello", "echo: hello"]);
    let history = history(app, &key, &t).await;
    assert_one_tree(&history);
    let first = history.last().unwrap();
    assert_eq!(first["values"], json!({"messages": []}));
    assert_eq!(first["next"], json!(["__start__"]));
    assert_eq!(first["metadata"]["step"], -1);
    assert_eq!(first["metadata"]["source"], "input");
    assert_eq!(first["parent_checkpoint"], Value::Null);
    assert_eq!(first["tasks"][0]["name"], "__start__");
    // The input applied waits for the agent; the answer waits for nothing.
    assert_eq!(history[1]["next"], json!(["echo"]));
    assert_eq!(history[1]["tasks"][0]["name"], "echo");
    assert_eq!(texts(&history[1]["values"]), ["hello"]);
    assert_eq!(history[0]["next"], json!([]));
    // GET state and the thread's values are the newest state, as before.
    let current = state(app, &key, &t).await;
    assert_eq!(current, history[0]);
    assert_eq!(thread(app, &key, &t).await["values"], values);
    // A second run adds no state before its input: its first state's parent is the head.
    let head = id_of(&history[0]);
    let mut body = echo("again");
    body["checkpoint"] = json!({"checkpoint_id": head, "checkpoint_ns": "", "checkpoint_map": {}});
    wait(app, &key, &t, body).await;
    let later = self::history(app, &key, &t).await;
    assert_one_tree(&later);
    assert_eq!(later.len(), history.len() + 2);
    assert_eq!(later[1]["parent_checkpoint"]["checkpoint_id"], head);
}

async fn regenerate_makes_a_second_branch_and_shows_it(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, echo("one")).await;
    wait(app, &key, &t, echo("two")).await;
    let before = history(app, &key, &t).await;
    let old_answer = state(app, &key, &t).await["values"]["messages"][3].clone();
    // Regenerate: no input, the parent checkpoint of the state where the answer appeared.
    let checkpoint = parent_of_first_seen(&before, "echo: two");
    let body = json!({"assistant_id": "echo", "checkpoint": checkpoint, "stream_mode": ["values"]});
    let (status, _, frames) = app.post_sse(&key, &format!("/threads/{t}/runs/stream"), body).await;
    assert_eq!(status, StatusCode::OK);
    let values: Vec<&Value> =
        frames.iter().filter(|f| f.event == "values").map(|f| &f.data).collect();
    assert_eq!(texts(values[0]), ["one", "echo: one", "two"], "the fork's copy first");
    assert_eq!(texts(values.last().unwrap()), ["one", "echo: one", "two", "echo: two"]);
    let after = history(app, &key, &t).await;
    assert_one_tree(&after);
    // Both answers are in history, the new one is the state now, with a new id.
    let current = state(app, &key, &t).await;
    let new_answer = current["values"]["messages"][3].clone();
    assert_ne!(new_answer["id"], old_answer["id"]);
    assert_eq!(new_answer["content"], "echo: two");
    assert!(after.iter().any(|s| s["values"]["messages"][3]["id"] == old_answer["id"]));
    assert_eq!(current, after[0]);
    // The fork point has two children: the old branch's answer and the fork's copy.
    let fork_point = checkpoint["checkpoint_id"].as_str().unwrap();
    let children: Vec<&Value> =
        after.iter().filter(|s| s["parent_checkpoint"]["checkpoint_id"] == fork_point).collect();
    assert_eq!(children.len(), 2, "{children:?}");
    assert!(children.iter().any(|s| s["metadata"]["source"] == "fork"));
    let copy = children.iter().find(|s| s["metadata"]["source"] == "fork").unwrap();
    assert_eq!(copy["values"], after.iter().find(|s| id_of(s) == fork_point).unwrap()["values"]);
    assert_eq!(copy["next"], json!(["echo"]));
}

async fn editing_a_message_replaces_it_in_a_new_branch(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    for text in ["one", "two", "three"] {
        wait(app, &key, &t, echo(text)).await;
    }
    // The first message: its parent is the state before the input (step −1).
    let h = history(app, &key, &t).await;
    let body = json!({"assistant_id": "echo", "input": human("ONE edited"), "checkpoint": parent_of_first_seen(&h, "one")});
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["ONE edited", "echo: ONE edited"]);
    assert_eq!(texts(&state(app, &key, &t).await["values"]), ["ONE edited", "echo: ONE edited"]);
    // A middle message of the old branch: what came before it stays, what followed goes.
    let h = history(app, &key, &t).await;
    let body = json!({"assistant_id": "echo", "input": human("TWO edited"), "checkpoint": parent_of_first_seen(&h, "two")});
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["one", "echo: one", "TWO edited", "echo: TWO edited"]);
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    // The old branch is untouched in history.
    let longest = h.iter().map(|s| texts(&s["values"])).max_by_key(Vec::len).unwrap();
    assert_eq!(longest, ["one", "echo: one", "two", "echo: two", "three", "echo: three"]);
}

async fn updating_an_older_checkpoint_starts_a_branch(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, echo("one")).await;
    let old_head = id_of(&state(app, &key, &t).await);
    wait(app, &key, &t, echo("two")).await;
    let update = json!({"messages": [{"type": "ai", "content": "patched"}]});
    for form in ["checkpoint", "checkpoint_id"] {
        let body = match form {
            "checkpoint" => {
                json!({"values": update, "checkpoint": {"checkpoint_id": old_head, "checkpoint_ns": "", "checkpoint_map": {}}})
            }
            _ => json!({"values": update, "checkpoint_id": old_head}),
        };
        let written = app.post(&key, &format!("/threads/{t}/state"), body).await.ok();
        let current = state(app, &key, &t).await;
        assert_eq!(current["checkpoint"]["checkpoint_id"], written["checkpoint"]["checkpoint_id"]);
        assert_eq!(current["parent_checkpoint"]["checkpoint_id"], old_head);
        assert_eq!(texts(&current["values"]), ["one", "echo: one", "patched"]);
        assert_eq!(current["metadata"]["source"], "update");
    }
    assert_one_tree(&history(app, &key, &t).await);
    // Another thread's checkpoint: 404, nothing written.
    let other = new_thread(app, &key).await;
    let before = history(app, &key, &other).await;
    let body = json!({"values": update, "checkpoint_id": old_head});
    app.post(&key, &format!("/threads/{other}/state"), body).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found in thread",
    );
    assert_eq!(history(app, &key, &other).await, before);
}

async fn two_forks_from_one_checkpoint_at_once_make_two_branches(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    wait(app, &key, &t, echo("one")).await;
    let h = history(app, &key, &t).await;
    let checkpoint = parent_of_first_seen(&h, "one");
    let fork = |text: &str| {
        let mut input = human(text);
        input["n"] = json!(50);
        input["delay_ms"] = json!(2);
        json!({"assistant_id": "synthetic", "input": input, "checkpoint": checkpoint})
    };
    let uri = format!("/threads/{t}/runs/wait");
    let (a, b) = tokio::join!(app.post(&key, &uri, fork("A")), app.post(&key, &uri, fork("B")));
    assert_eq!(texts(&a.ok()), ["A", "echo: A"]);
    assert_eq!(texts(&b.ok()), ["B", "echo: B"]);
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    let fork_point = checkpoint["checkpoint_id"].as_str().unwrap();
    let children: Vec<Vec<String>> = h
        .iter()
        .filter(|s| s["parent_checkpoint"]["checkpoint_id"] == fork_point)
        .map(|s| texts(&s["values"]))
        .collect();
    assert_eq!(children.len(), 3, "{children:?}");
    for text in ["one", "A", "B"] {
        assert!(children.contains(&vec![text.to_owned()]), "{children:?}");
    }
    // Each branch's answer follows its own input: the runs did not interleave.
    for text in ["A", "B"] {
        let input = h.iter().find(|s| texts(&s["values"]) == [text]).unwrap();
        let answer = h.iter().find(|s| texts(&s["values"]) == [text, &format!("echo: {text}")]);
        assert_eq!(
            answer.unwrap()["parent_checkpoint"]["checkpoint_id"],
            input["checkpoint"]["checkpoint_id"]
        );
    }
    assert_eq!(thread(app, &key, &t).await["status"], "idle");
}

/// Edit the first message while its answer is still streaming, replacing the run (rollback):
/// the state before the first input belongs to no run, so the fork point survives.
async fn editing_the_first_message_while_its_answer_runs_survives_a_rollback(app: &TestApp) {
    let key = app.key("alice").await;
    let t = new_thread(app, &key).await;
    let first = start_slow(app, &key, &t, "first").await;
    let h = history(app, &key, &t).await;
    let mut body = json!({"assistant_id": "echo", "input": human("edited first"), "multitask_strategy": "rollback"});
    body["checkpoint"] = parent_of_first_seen(&h, "first");
    let values = wait(app, &key, &t, body).await;
    assert_eq!(texts(&values), ["edited first", "echo: edited first"]);
    assert_eq!(
        app.get(&key, &format!("/threads/{t}/runs/{first}")).await.status,
        StatusCode::NOT_FOUND
    );
    let h = history(app, &key, &t).await;
    assert_one_tree(&h);
    assert_eq!(h.len(), 3, "the state before the input, the edit, its answer");
    // The first run rolled back alone: the state before its input stays.
    let t2 = new_thread(app, &key).await;
    let run = start_slow(app, &key, &t2, "gone").await;
    app.post(
        &key,
        &format!("/threads/{t2}/runs/{run}/cancel?action=rollback&wait=true"),
        json!({}),
    )
    .await;
    let h = history(app, &key, &t2).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["values"], json!({"messages": []}));
    assert_eq!(thread(app, &key, &t2).await["status"], "idle");
}
