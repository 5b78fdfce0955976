//! The thread, state, search and assistant routes, and bad input answered clearly.

use super::*;

store::on_both_backends!(TestApp =>
    thread_lifecycle,
    if_exists_raise_and_do_nothing,
    state_updates_and_history,
    search_filters_pages_and_counts,
    assistants_by_id_and_by_graph_name,
    bad_input_gets_clear_errors_and_changes_nothing,
);

async fn thread_lifecycle(app: &TestApp) {
    let key = app.key("alice").await;
    let created =
        app.post(&key, "/threads", json!({"metadata": {"graph_id": "echo", "n": 1}})).await.ok();
    let id = created["thread_id"].as_str().unwrap().to_owned();
    assert!(id.parse::<ThreadId>().unwrap().minted_at_ms().is_some(), "server-minted ids are v7");
    assert_eq!(created["status"], "idle");
    assert_eq!(created["values"], json!({}));
    assert_eq!(created["interrupts"], json!({}));
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    assert_eq!(app.get(&key, &format!("/threads/{id}")).await.ok(), created);
    let patched = app
        .call(
            &key,
            Method::PATCH,
            &format!("/threads/{id}"),
            Some(json!({"metadata": {"x": 2, "n": 3}})),
        )
        .await
        .ok();
    assert_eq!(patched["metadata"], json!({"graph_id": "echo", "n": 3, "x": 2}));

    let chosen = ThreadId::new().to_string();
    let mine =
        app.post(&key, "/threads", json!({"thread_id": chosen, "graph_id": "llm"})).await.ok();
    assert_eq!(mine["thread_id"], chosen);
    assert_eq!(mine["metadata"], json!({"graph_id": "llm"}));

    let deleted = app.call(&key, Method::DELETE, &format!("/threads/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.get(&key, &format!("/threads/{id}")).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("thread {id} not found"),
    );
    app.call(&key, Method::DELETE, &format!("/threads/{id}"), None).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

async fn if_exists_raise_and_do_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let id = ThreadId::new().to_string();
    let first =
        app.post(&key, "/threads", json!({"thread_id": id, "metadata": {"v": 1}})).await.ok();
    app.post(&key, "/threads", json!({"thread_id": id})).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "already exists",
    );
    app.post(&key, "/threads", json!({"thread_id": id, "if_exists": "raise"})).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "already exists",
    );
    let again = app
        .post(
            &key,
            "/threads",
            json!({"thread_id": id, "if_exists": "do_nothing", "metadata": {"v": 2}}),
        )
        .await
        .ok();
    assert_eq!(again, first, "do_nothing returns the existing thread unchanged");
    app.post(&key, "/threads", json!({"if_exists": "sometimes"})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "at `if_exists`",
    );
    // Another user's id is taken, but nothing of theirs is revealed.
    let bob = app.key("bob").await;
    let conflict =
        app.post(&bob, "/threads", json!({"thread_id": id, "if_exists": "do_nothing"})).await;
    let body = conflict.error(StatusCode::CONFLICT, "conflict", "already exists");
    assert!(!body.to_string().contains("\"v\""));
}

async fn state_updates_and_history(app: &TestApp) {
    let key = app.key("alice").await;
    let id =
        app.post(&key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned();
    let empty = app.get(&key, &format!("/threads/{id}/state")).await.ok();
    assert_eq!(empty["values"], json!({}));
    assert_eq!(empty["next"], json!([]));
    assert_eq!(empty["checkpoint"]["checkpoint_id"], Value::Null);
    assert_eq!(app.post(&key, &format!("/threads/{id}/history"), json!({})).await.ok(), json!([]));

    let mut checkpoints = Vec::new();
    for text in ["hello", "again"] {
        let update = json!({"values": {"messages": [{"role": "user", "content": text}]}});
        let r = app.post(&key, &format!("/threads/{id}/state"), update).await.ok();
        assert_eq!(r["checkpoint"]["thread_id"], id);
        assert_eq!(r["checkpoint"]["checkpoint_ns"], "");
        checkpoints.push(r["checkpoint"]["checkpoint_id"].as_str().unwrap().to_owned());
    }
    let state = app.get(&key, &format!("/threads/{id}/state")).await.ok();
    let messages = state["values"]["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["type"], "human");
    assert_eq!(messages[0]["content"], "hello");
    assert_eq!(state["checkpoint"]["checkpoint_id"], checkpoints[1]);
    assert_eq!(state["parent_checkpoint"]["checkpoint_id"], checkpoints[0]);
    assert_eq!(state["metadata"]["source"], "update");

    // Same id replaces; the thread's values follow the state.
    let replace = json!({"values": {"messages": [{"type": "human", "content": "edited", "id": messages[0]["id"]}]}, "as_node": "editor"});
    app.post(&key, &format!("/threads/{id}/state"), replace).await.ok();
    let thread = app.get(&key, &format!("/threads/{id}")).await.ok();
    assert_eq!(thread["values"]["messages"][0]["content"], "edited");
    assert_eq!(thread["values"]["messages"].as_array().unwrap().len(), 2);

    let history =
        app.post(&key, &format!("/threads/{id}/history"), json!({"limit": 10})).await.ok();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0]["values"], thread["values"]);
    assert_eq!(history[0]["metadata"]["writes"]["editor"]["messages"][0]["content"], "edited");
    assert_eq!(history[2]["checkpoint"]["checkpoint_id"], checkpoints[0]);
    let page = app
        .post(
            &key,
            &format!("/threads/{id}/history"),
            json!({"limit": 1, "before": {"checkpoint_id": checkpoints[1]}}),
        )
        .await
        .ok();
    assert_eq!(page[0]["checkpoint"]["checkpoint_id"], checkpoints[0]);
    let page = app
        .get(&key, &format!("/threads/{id}/history?limit=2&before={}", checkpoints[1]))
        .await
        .ok();
    assert_eq!(page.as_array().unwrap().len(), 1);
    let filtered = app
        .post(
            &key,
            &format!("/threads/{id}/history"),
            json!({"metadata": {"writes": {"editor": {}}}}),
        )
        .await
        .ok();
    assert_eq!(filtered.as_array().unwrap().len(), 1);

    let old = app.get(&key, &format!("/threads/{id}/state/{}", checkpoints[0])).await.ok();
    assert_eq!(old["values"]["messages"].as_array().unwrap().len(), 1);
    let old2 = app
        .post(
            &key,
            &format!("/threads/{id}/state/checkpoint"),
            json!({"checkpoint": {"checkpoint_id": checkpoints[0]}}),
        )
        .await
        .ok();
    assert_eq!(old2, old);
    // Updating an old checkpoint applies to it, as a new branch (not to the latest).
    let fork = json!({"values": {"k": 1}, "checkpoint_id": checkpoints[0]});
    app.post(&key, &format!("/threads/{id}/state"), fork).await.ok();
    let head = app.get(&key, &format!("/threads/{id}/state")).await.ok();
    assert_eq!(head["parent_checkpoint"]["checkpoint_id"], checkpoints[0]);
    assert_eq!(head["values"]["messages"], old["values"]["messages"]);
    assert_eq!(head["values"]["k"], 1);
}

async fn search_filters_pages_and_counts(app: &TestApp) {
    let key = app.key("alice").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let t = app
            .post(
                &key,
                "/threads",
                json!({"metadata": {"graph_id": if n < 3 { "echo" } else { "llm" }, "n": n}}),
            )
            .await
            .ok();
        ids.push(t["thread_id"].as_str().unwrap().to_owned());
    }
    let found = app
        .post(&key, "/threads/search", json!({"metadata": {"graph_id": "echo"}, "limit": 100}))
        .await;
    assert_eq!(found.headers["x-pagination-total"], "3");
    let found: Vec<_> =
        found.ok().as_array().unwrap().iter().map(|t| t["thread_id"].clone()).collect();
    assert_eq!(found, [json!(ids[2]), json!(ids[1]), json!(ids[0])], "newest first by default");
    let page = app
        .post(
            &key,
            "/threads/search",
            json!({"limit": 2, "offset": 1, "sort_by": "created_at", "sort_order": "asc"}),
        )
        .await;
    assert_eq!(page.headers["x-pagination-total"], "5");
    let page: Vec<_> =
        page.ok().as_array().unwrap().iter().map(|t| t["thread_id"].clone()).collect();
    assert_eq!(page, [json!(ids[1]), json!(ids[2])]);
    let selected = app
        .post(&key, "/threads/search", json!({"ids": [ids[4]], "select": ["thread_id", "status"]}))
        .await
        .ok();
    assert_eq!(selected, json!([{"thread_id": ids[4], "status": "idle"}]));
    assert_eq!(app.post(&key, "/threads/search", json!({"status": "busy"})).await.ok(), json!([]));
    assert_eq!(
        app.post(&key, "/threads/count", json!({"metadata": {"graph_id": "llm"}})).await.ok(),
        json!(2)
    );
    assert_eq!(
        app.post(&key, "/threads/search", json!({})).await.ok().as_array().unwrap().len(),
        5
    );
}

async fn assistants_by_id_and_by_graph_name(app: &TestApp) {
    let key = app.key("alice").await;
    let echo_id = "046b5dc7-2108-582c-9c6c-31d556d138f0";
    let all = app
        .post(&key, "/assistants/search", json!({"sort_by": "graph_id", "sort_order": "asc"}))
        .await;
    assert_eq!(all.headers["x-pagination-total"], "3");
    let names: Vec<_> =
        all.ok().as_array().unwrap().iter().map(|a| a["graph_id"].clone()).collect();
    assert_eq!(names, [json!("echo"), json!("llm"), json!("synthetic")]);
    let listed = app.post(&key, "/assistants/search", json!({"graph_id": "echo"})).await.ok();
    assert_eq!(listed[0]["assistant_id"], echo_id);
    assert_eq!(listed[0]["graph_id"], "echo");
    assert_eq!(listed[0]["name"], "echo");
    assert_eq!(listed[0]["metadata"], json!({"created_by": "system"}));
    assert_eq!(listed[0]["version"], 1);
    for (filter, n) in [
        (json!({"graph_id": "echo"}), 1),
        (json!({"metadata": {"created_by": "system"}}), 3),
        (json!({"name": "ech"}), 1),
        (json!({"limit": 1, "offset": 1}), 1),
    ] {
        let found = app.post(&key, "/assistants/search", filter.clone()).await.ok();
        assert_eq!(found.as_array().unwrap().len(), n, "{filter}");
    }
    assert_eq!(
        app.post(&key, "/assistants/search", json!({"graph_id": "nope"})).await.ok(),
        json!([])
    );
    assert_eq!(app.post(&key, "/assistants/count", json!({})).await.ok(), json!(3));
    assert_eq!(app.get(&key, &format!("/assistants/{echo_id}")).await.ok(), listed[0]);
    assert_eq!(app.get(&key, "/assistants/echo").await.ok(), listed[0]);
    app.get(&key, "/assistants/nope").await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "assistant nope not found",
    );
    app.get(&key, &format!("/assistants/{}", ThreadId::new())).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

async fn bad_input_gets_clear_errors_and_changes_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let id =
        app.post(&key, "/threads", json!({"metadata": {"keep": true}})).await.ok()["thread_id"]
            .as_str()
            .unwrap()
            .to_owned();
    app.get(&key, "/threads/abc").await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "invalid thread_id `abc`: expected a UUID like",
    );
    app.get(&key, "/threads/thread_websocket_factory_1757361062151_7_90c65fe4").await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "invalid thread_id",
    );
    app.get(&key, &format!("/threads/{id}/state/req_73708c2b")).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "invalid checkpoint_id",
    );
    app.post(&key, "/threads", json!({"thread_id": "nope"})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "at `thread_id`: invalid thread_id `nope`",
    );
    app.post(&key, "/threads/search", json!({"ids": [id, "x"]})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "at `ids[1]`",
    );
    app.post(&key, "/threads/search", json!({"limit": 0})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "limit: expected 1 to 1000, got 0",
    );
    app.post(&key, "/threads/search", json!({"status": "sleepy"})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "at `status`",
    );
    app.post(&key, "/threads/search", json!({"sort_by": "color"})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "at `sort_by`",
    );
    app.post(&key, "/threads", json!({"ttl": 5})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        "ttl is not supported",
    );
    app.post(
        &key,
        &format!("/threads/{id}/state"),
        json!({"values": {"messages": [{"role": "robot"}]}}),
    )
    .await
    .error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "values.messages[0]: expected `type` human",
    );
    // A NUL in a string: PostgreSQL cannot store it, so a 422 there; never a 500.
    let nul = app.post(&key, "/threads", json!({"metadata": {"a": "x\u{0}y"}})).await;
    if app.store().backend() == Backend::Postgres {
        nul.error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "NUL character");
    } else {
        assert_eq!(nul.status, StatusCode::OK, "SQLite stores a NUL: {}", nul.body);
        let created = nul.body["thread_id"].as_str().unwrap().to_owned();
        app.call(&key, Method::DELETE, &format!("/threads/{created}"), None).await;
    }
    let many: Vec<String> = (0..1001).map(|_| ThreadId::new().to_string()).collect();
    app.post(&key, "/threads/search", json!({"ids": many})).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "at most 1000",
    );
    // Unknown fields are ignored, so newer clients keep working.
    app.post(&key, "/threads/search", json!({"limit": 1, "some_future_field": true})).await.ok();

    let raw = |method: Method, uri: &str, content_type: Option<&str>, body: &str| {
        let mut r = Request::builder().method(method).uri(uri).header("x-api-key", key.as_str());
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        r.body(Body::from(body.to_owned())).unwrap()
    };
    app.send(raw(Method::POST, "/threads", Some("application/json"), "{not json")).await.error(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        "malformed JSON body",
    );
    app.send(raw(Method::POST, "/threads", Some("text/plain"), "{}x")).await.error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "content-type application/json",
    );
    let huge = format!("{{\"metadata\": {{\"x\": \"{}\"}}}}", "a".repeat(11 * 1024 * 1024));
    app.send(raw(Method::POST, "/threads", Some("application/json"), &huge)).await.error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "larger than",
    );
    app.send(raw(Method::PATCH, &format!("/threads/{id}"), Some("application/json"), "[1,"))
        .await
        .error(StatusCode::BAD_REQUEST, "malformed_json", "");
    app.get(&key, "/no/such/route").await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    );
    app.call(&key, Method::PUT, "/threads", None).await.error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "not allowed",
    );
    app.get(&key, &format!("/threads/{id}/history?limit=many")).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        "limit",
    );

    // None of it changed the thread, and there is still exactly one.
    let thread = app.get(&key, &format!("/threads/{id}")).await.ok();
    assert_eq!(thread["metadata"], json!({"keep": true}));
    assert_eq!(thread["values"], json!({}));
    assert_eq!(app.post(&key, "/threads/count", json!({})).await.ok(), json!(1));

    // A client's request id is kept when it is a UUID, replaced otherwise.
    let mine = ids::RequestId::new().to_string();
    let r = app
        .send(
            Request::get("/ok").header("x-request-id", mine.as_str()).body(Body::empty()).unwrap(),
        )
        .await;
    assert_eq!(r.headers["x-request-id"], mine.as_str());
    let r = app
        .send(Request::get("/ok").header("x-request-id", "req_1").body(Body::empty()).unwrap())
        .await;
    assert_ne!(r.headers["x-request-id"], "req_1");
}
