//! Users' assistants over HTTP (`POST /assistants`, `PATCH`, `DELETE`, versions, latest,
//! schemas, graph), checked against what LangGraph's server answers, on both backends and
//! with two users: another user's assistant is a 404 on every route, system assistants are
//! seen by everyone and changed by no one, and a refused request changes nothing.

use axum::http::{Method, StatusCode};
use ids::AssistantId;
use serde_json::{Value, json};

use crate::harness::{Reply, TestApp};

store::on_both_backends!(TestApp =>
    create_patch_versions_latest_delete,
    if_exists_raise_and_do_nothing,
    another_users_assistant_is_not_found_on_every_route,
    system_assistants_are_visible_and_immutable,
    search_and_count_over_users_assistants,
    schemas_and_graph_of_the_built_in_graphs,
    a_run_merges_its_assistants_config_and_records_the_version,
    bad_input_is_a_422_that_says_what_was_expected_and_changes_nothing,
    delete_threads_deletes_the_callers_threads_of_that_assistant_only,
    patching_the_context_keeps_the_rest_of_the_config_and_an_empty_one_clears_it,
);

async fn create(app: &TestApp, key: &str, body: Value) -> Value {
    app.post(key, "/assistants", body).await.ok()
}

fn id_of(assistant: &Value) -> String {
    assistant["assistant_id"].as_str().unwrap().to_owned()
}

async fn create_patch_versions_latest_delete(app: &TestApp) {
    let key = app.key("alice").await;
    let created = create(
        app,
        &key,
        json!({"graph_id": "llm", "context": {"model": "a"}, "metadata": {"k": 1},
               "name": "helper", "description": "d1", "unknown_field": true}),
    )
    .await;
    let id = id_of(&created);
    assert!(id.parse::<AssistantId>().unwrap().minted_at_ms().is_some(), "a UUIDv7");
    assert_eq!(created["graph_id"], "llm");
    assert_eq!(created["version"], 1);
    assert_eq!(created["context"], json!({"model": "a"}));
    assert_eq!(created["config"], json!({"configurable": {"model": "a"}}), "kept in step");
    assert_eq!(created["metadata"], json!({"k": 1}));
    assert_eq!(created["description"], "d1");
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_eq!(app.get(&key, &format!("/assistants/{id}")).await.ok(), created);
    let untitled = create(app, &key, json!({"graph_id": "echo"})).await;
    assert_eq!(untitled["name"], "Untitled");

    let path = format!("/assistants/{id}");
    let patched =
        app.call(&key, Method::PATCH, &path, Some(json!({"metadata": {"j": 2}}))).await.ok();
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["metadata"], json!({"k": 1, "j": 2}), "metadata is merged");
    assert_eq!(patched["context"], created["context"], "fields not given are kept");
    assert_eq!((&patched["name"], &patched["description"]), (&json!("helper"), &json!("d1")));
    assert_eq!(patched["created_at"], created["created_at"]);
    let body = json!({"name": "second", "context": {"model": "b"}});
    let second = app.call(&key, Method::PATCH, &path, Some(body)).await.ok();
    assert_eq!(second["version"], 3);
    assert_eq!(second["context"], json!({"model": "b"}), "context given replaces");
    assert_eq!(second["config"], json!({"configurable": {"model": "b"}}));

    let versions = app.post(&key, &format!("{path}/versions"), json!({})).await.ok();
    let numbers: Vec<_> =
        versions.as_array().unwrap().iter().map(|v| v["version"].clone()).collect();
    assert_eq!(numbers, [json!(3), json!(2), json!(1)], "newest first");
    let mut fields: Vec<_> = versions[0].as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "assistant_id",
            "config",
            "context",
            "created_at",
            "description",
            "graph_id",
            "metadata",
            "name",
            "version"
        ]
    );
    assert_eq!(versions[2]["context"], json!({"model": "a"}), "an old version is unchanged");
    let page =
        app.post(&key, &format!("{path}/versions"), json!({"limit": 1, "offset": 1})).await.ok();
    assert_eq!(page[0]["version"], 2);
    let only =
        app.post(&key, &format!("{path}/versions"), json!({"metadata": {"j": 2}})).await.ok();
    assert_eq!(only.as_array().unwrap().len(), 2);

    let pinned = app.post(&key, &format!("{path}/latest"), json!({"version": 1})).await.ok();
    assert_eq!(pinned["version"], 1);
    assert_eq!((&pinned["name"], &pinned["context"]), (&json!("helper"), &json!({"model": "a"})));
    assert_eq!(pinned["metadata"], json!({"k": 1}));
    assert_eq!(app.get(&key, &path).await.ok(), pinned);
    app.post(&key, &format!("{path}/latest"), json!({"version": 9})).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("version 9 not found for assistant {id}"),
    );

    let deleted = app.call(&key, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.get(&key, &path).await.error(StatusCode::NOT_FOUND, "not_found", "not found");
    app.call(&key, Method::DELETE, &path, None).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
    app.post(&key, &format!("{path}/versions"), json!({})).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "not found",
    );
}

async fn if_exists_raise_and_do_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let id = AssistantId::new().to_string();
    let first =
        create(app, &key, json!({"graph_id": "echo", "assistant_id": id, "name": "one"})).await;
    for body in [
        json!({"graph_id": "echo", "assistant_id": id}),
        json!({"graph_id": "echo", "assistant_id": id, "if_exists": "raise"}),
    ] {
        app.post(&key, "/assistants", body).await.error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("assistant {id} already exists"),
        );
    }
    let body =
        json!({"graph_id": "llm", "assistant_id": id, "if_exists": "do_nothing", "name": "two"});
    assert_eq!(create(app, &key, body).await, first, "do_nothing gives it back unchanged");
    let versions = app.post(&key, &format!("/assistants/{id}/versions"), json!({})).await.ok();
    assert_eq!(versions.as_array().unwrap().len(), 1);
    // A system assistant's id is taken too.
    let echo = AssistantId::for_graph("echo").to_string();
    app.post(
        &key,
        "/assistants",
        json!({"graph_id": "echo", "assistant_id": echo, "if_exists": "do_nothing"}),
    )
    .await
    .error(StatusCode::CONFLICT, "conflict", "already exists");
}

async fn another_users_assistant_is_not_found_on_every_route(app: &TestApp) {
    let alice = app.key("alice").await;
    let bob = app.key("bob").await;
    let mine = create(
        app,
        &alice,
        json!({"graph_id": "llm", "context": {"model": "m"}, "name": "private"}),
    )
    .await;
    let id = id_of(&mine);
    let path = format!("/assistants/{id}");
    let detail = format!("assistant {id} not found");
    let not_found = StatusCode::NOT_FOUND;
    app.get(&bob, &path).await.error(not_found, "not_found", &detail);
    let patch = Some(json!({"name": "stolen"}));
    app.call(&bob, Method::PATCH, &path, patch).await.error(not_found, "not_found", &detail);
    app.call(&bob, Method::DELETE, &path, None).await.error(not_found, "not_found", &detail);
    app.post(&bob, &format!("{path}/versions"), json!({})).await.error(
        not_found,
        "not_found",
        &detail,
    );
    app.post(&bob, &format!("{path}/latest"), json!({"version": 1})).await.error(
        not_found,
        "not_found",
        &detail,
    );
    for route in ["schemas", "graph", "subgraphs"] {
        app.get(&bob, &format!("{path}/{route}")).await.error(not_found, "not_found", &detail);
    }
    let taken = json!({"graph_id": "echo", "assistant_id": id, "if_exists": "do_nothing"});
    app.post(&bob, "/assistants", taken).await.error(
        StatusCode::CONFLICT,
        "conflict",
        "already exists",
    );
    let run =
        json!({"assistant_id": id, "input": {"messages": [{"role": "user", "content": "hi"}]}});
    app.post(&bob, "/runs/wait", run).await.error(not_found, "not_found", &detail);
    let found = app.post(&bob, "/assistants/search", json!({"limit": 100})).await.ok();
    assert!(found.as_array().unwrap().iter().all(|a| a["assistant_id"] != id.as_str()));
    assert_eq!(
        app.post(&bob, "/assistants/count", json!({"name": "private"})).await.ok(),
        json!(0)
    );
    assert_eq!(app.get(&alice, &path).await.ok(), mine, "nothing changed");
}

async fn system_assistants_are_visible_and_immutable(app: &TestApp) {
    let key = app.key("alice").await;
    let echo = app.get(&key, "/assistants/echo").await.ok();
    let id = id_of(&echo);
    let forbidden = StatusCode::FORBIDDEN;
    let detail = "is a built-in system assistant and cannot be changed or deleted";
    for path in [format!("/assistants/{id}"), "/assistants/echo".to_owned()] {
        let patch = Some(json!({"name": "mine now"}));
        app.call(&key, Method::PATCH, &path, patch).await.error(forbidden, "forbidden", detail);
        app.call(&key, Method::DELETE, &path, None).await.error(forbidden, "forbidden", detail);
        app.post(&key, &format!("{path}/latest"), json!({"version": 1})).await.error(
            forbidden,
            "forbidden",
            detail,
        );
    }
    let versions = app.post(&key, "/assistants/echo/versions", json!({})).await.ok();
    assert_eq!(versions.as_array().unwrap().len(), 1);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["metadata"], json!({"created_by": "system"}));
    let bob = app.key("bob").await;
    assert_eq!(app.get(&bob, "/assistants/echo").await.ok(), echo, "unchanged, for everyone");
}

async fn search_and_count_over_users_assistants(app: &TestApp) {
    let key = app.key("alice").await;
    let bob = app.key("bob").await;
    create(app, &key, json!({"graph_id": "llm", "name": "Zeta Writer", "metadata": {"team": "a"}}))
        .await;
    create(app, &key, json!({"graph_id": "echo", "name": "alpha", "metadata": {"team": "b"}}))
        .await;
    create(app, &bob, json!({"graph_id": "llm", "name": "bob's", "metadata": {"team": "a"}})).await;
    let names = |found: Value| -> Vec<String> {
        found.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect()
    };
    let by_name =
        app.post(&key, "/assistants/search", json!({"sort_by": "name", "sort_order": "asc"})).await;
    assert_eq!(by_name.headers["x-pagination-total"], "5", "three system assistants and hers");
    assert_eq!(
        names(by_name.ok()),
        ["alpha", "echo", "llm", "synthetic", "Zeta Writer"],
        "without case"
    );
    let llm = app
        .post(&key, "/assistants/search", json!({"graph_id": "llm", "sort_by": "created_at"}))
        .await
        .ok();
    assert_eq!(names(llm), ["Zeta Writer", "llm"], "newest first");
    let team = json!({"metadata": {"team": "a"}});
    assert_eq!(
        names(app.post(&key, "/assistants/search", team.clone()).await.ok()),
        ["Zeta Writer"]
    );
    assert_eq!(
        names(app.post(&key, "/assistants/search", json!({"name": "writ"})).await.ok()),
        ["Zeta Writer"]
    );
    let selected = app
        .post(&key, "/assistants/search", json!({"name": "alpha", "select": ["name", "version"]}))
        .await
        .ok();
    assert_eq!(selected, json!([{"name": "alpha", "version": 1}]));
    let by_graph = app
        .post(
            &key,
            "/assistants/search",
            json!({"sort_by": "graph_id", "sort_order": "asc", "limit": 2}),
        )
        .await
        .ok();
    assert_eq!(
        by_graph.as_array().unwrap().iter().map(|a| a["graph_id"].clone()).collect::<Vec<_>>(),
        [json!("echo"), json!("echo")]
    );
    let updated = app
        .post(&key, "/assistants/search", json!({"sort_by": "updated_at", "limit": 1}))
        .await
        .ok();
    assert_eq!(names(updated), ["alpha"]);
    for (filter, n) in
        [(json!({}), 5), (team, 1), (json!({"graph_id": "echo"}), 2), (json!({"name": "ZETA"}), 1)]
    {
        assert_eq!(
            app.post(&key, "/assistants/count", filter.clone()).await.ok(),
            json!(n),
            "{filter}"
        );
    }
}

async fn schemas_and_graph_of_the_built_in_graphs(app: &TestApp) {
    let key = app.key("alice").await;
    let mine = create(app, &key, json!({"graph_id": "llm", "context": {"model": "m"}})).await;
    let id = id_of(&mine);
    let schemas = app.get(&key, &format!("/assistants/{id}/schemas")).await.ok();
    assert_eq!(schemas["graph_id"], "llm");
    let context = &schemas["context_schema"];
    assert_eq!(context["required"], json!(["model"]));
    let mut fields: Vec<_> = context["properties"].as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "approve",
            "max_steps",
            "max_tokens",
            "model",
            "provider",
            "system_prompt",
            "temperature",
            "tools"
        ]
    );
    assert_eq!(context["properties"]["max_steps"]["default"], 8);
    assert_eq!(context["properties"]["tools"]["items"]["type"], "string");
    assert_eq!(schemas["state_schema"]["properties"]["messages"]["type"], "array");
    assert_eq!(schemas["config_schema"], schemas["context_schema"]);
    let synthetic = app.get(&key, "/assistants/synthetic/schemas").await.ok();
    assert_eq!(synthetic["context_schema"]["properties"], json!({}));
    for field in ["n", "mode", "delay_ms", "interrupt", "messages"] {
        assert!(
            synthetic["input_schema"]["properties"].get(field).is_some(),
            "synthetic input {field}"
        );
    }
    for xray in ["", "?xray=true", "?xray=1", "?xray=false"] {
        let graph = app.get(&key, &format!("/assistants/{id}/graph{xray}")).await.ok();
        let nodes: Vec<_> =
            graph["nodes"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect();
        assert_eq!(nodes, [json!("__start__"), json!("llm"), json!("__end__")]);
        assert_eq!(graph["edges"][0], json!({"source": "__start__", "target": "llm"}));
    }
    app.get(&key, &format!("/assistants/{id}/graph?xray=bad")).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        "xray: expected true, false or a depth",
    );
    assert_eq!(app.get(&key, "/assistants/echo/subgraphs").await.ok(), json!({}));
    assert_eq!(app.get(&key, &format!("/assistants/{id}/subgraphs/child")).await.ok(), json!({}));
}

async fn a_run_merges_its_assistants_config_and_records_the_version(app: &TestApp) {
    let key = app.key("alice").await;
    let body = json!({"graph_id": "echo", "context": {"model": "a", "max_steps": 2, "tools": ["fs"]},
                      "config": {"tags": ["from-assistant"], "recursion_limit": 5}});
    let mine = create(app, &key, body).await;
    let id = id_of(&mine);
    app.call(
        &key,
        Method::PATCH,
        &format!("/assistants/{id}"),
        Some(json!({"metadata": {"v": 2}})),
    )
    .await
    .ok();
    let thread = app.post(&key, "/threads", json!({})).await.ok();
    let t = thread["thread_id"].as_str().unwrap();
    let run = json!({
        "assistant_id": id,
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "context": {"max_steps": 3},
        "config": {"tags": ["from-run"]},
        "metadata": {"mine": true},
    });
    let answer = app.post(&key, &format!("/threads/{t}/runs/wait"), run).await.ok();
    assert_eq!(answer["messages"][1]["content"], "echo: hi");
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    let run = &runs[0];
    assert_eq!(run["assistant_id"], id.as_str());
    assert_eq!(run["metadata"], json!({"mine": true, "assistant_version": 2}));
    assert_eq!(
        run["kwargs"]["context"],
        json!({"model": "a", "max_steps": 3, "tools": ["fs"]}),
        "the run's keys win"
    );
    assert_eq!(
        run["kwargs"]["config"],
        json!({"tags": ["from-run"], "recursion_limit": 5,
               "configurable": {"model": "a", "max_steps": 3, "tools": ["fs"]}}),
        "the run's context is its configurable too"
    );
    let thread = app.get(&key, &format!("/threads/{t}")).await.ok();
    assert_eq!(thread["metadata"]["assistant_id"], id.as_str());
    // A graph name still runs its system assistant, with the run's values alone.
    let run = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}, "context": {"x": 1}});
    app.post(&key, &format!("/threads/{t}/runs/wait"), run).await.ok();
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert_eq!(runs[0]["assistant_id"], AssistantId::for_graph("echo").to_string());
    assert_eq!(runs[0]["kwargs"]["context"], json!({"x": 1}));
    assert_eq!(runs[0]["kwargs"]["config"], json!({"configurable": {"x": 1}}));
    assert_eq!(runs[0]["metadata"], json!({}), "a system assistant's runs keep their metadata");
    // Only config.configurable: the context mirrors it, over the assistant's.
    let run = json!({"assistant_id": id, "input": {"messages": [{"role": "user", "content": "hi"}]},
                     "config": {"configurable": {"temperature": 0.5}}});
    app.post(&key, &format!("/threads/{t}/runs/wait"), run).await.ok();
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    let both = json!({"model": "a", "max_steps": 2, "tools": ["fs"], "temperature": 0.5});
    assert_eq!(runs[0]["kwargs"]["context"], both);
    assert_eq!(runs[0]["kwargs"]["config"]["configurable"], both);
}

async fn bad_input_is_a_422_that_says_what_was_expected_and_changes_nothing(app: &TestApp) {
    let key = app.key("alice").await;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    let mine = create(app, &key, json!({"graph_id": "llm", "context": {"model": "m"}})).await;
    let id = id_of(&mine);
    let path = format!("/assistants/{id}");
    for (body, code, detail) in [
        (json!({}), "missing_field", "graph_id is required"),
        (
            json!({"graph_id": "echo", "config": [1]}),
            "invalid_request",
            "config: expected an object, got [1]",
        ),
        (
            json!({"graph_id": "echo", "context": "x"}),
            "invalid_request",
            "context: expected an object",
        ),
        (
            json!({"graph_id": "echo", "config": {"configurable": 3}}),
            "invalid_request",
            "config.configurable: expected an object",
        ),
        (
            json!({"graph_id": "echo", "context": {"a": 1}, "config": {"configurable": {"b": 2}}}),
            "invalid_request",
            "not both",
        ),
        (json!({"graph_id": "echo", "metadata": [1]}), "invalid_body", "metadata"),
        (
            json!({"graph_id": "echo", "name": "a\0b"}),
            "invalid_request",
            "name: expected text without the NUL",
        ),
        (json!({"graph_id": "echo", "if_exists": "bogus"}), "invalid_body", "if_exists"),
        (json!({"graph_id": "echo", "assistant_id": "nope"}), "invalid_body", "assistant_id"),
    ] {
        app.post(&key, "/assistants", body).await.error(invalid, code, detail);
    }
    app.post(&key, "/assistants", json!({"graph_id": "nope"})).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "Graph 'nope' not found. Expected one of: echo, synthetic, llm",
    );
    let patch = |body: Value| app.call(&key, Method::PATCH, &path, Some(body));
    patch(json!({"graph_id": "nope"})).await.error(
        StatusCode::NOT_FOUND,
        "not_found",
        "Graph 'nope' not found",
    );
    patch(json!({"description": "a\0"})).await.error(
        invalid,
        "invalid_request",
        "description: expected text without the NUL",
    );
    patch(json!({"context": [1]})).await.error(
        invalid,
        "invalid_request",
        "context: expected an object",
    );
    app.post(&key, &format!("{path}/latest"), json!({})).await.error(
        invalid,
        "missing_field",
        "version is required",
    );
    app.post(&key, &format!("{path}/latest"), json!({"version": "one"})).await.error(
        invalid,
        "invalid_body",
        "version",
    );
    app.post(&key, &format!("{path}/versions"), json!({"limit": 0})).await.error(
        invalid,
        "invalid_request",
        "limit: expected 1 to 1000",
    );
    app.call(&key, Method::DELETE, &format!("{path}?delete_threads=maybe"), None).await.error(
        invalid,
        "invalid_query",
        "delete_threads",
    );
    let both = json!({"assistant_id": id, "input": {"messages": []},
                      "context": {"a": 1}, "config": {"configurable": {"b": 2}}});
    app.post(&key, "/runs/wait", both).await.error(invalid, "invalid_request", "not both");
    let run = json!({"assistant_id": id, "input": {"messages": []}, "config": "x"});
    app.post(&key, "/runs/wait", run).await.error(
        invalid,
        "invalid_request",
        "config: expected an object",
    );
    assert_eq!(app.get(&key, &path).await.ok(), mine, "nothing changed");
    let versions = app.post(&key, &format!("{path}/versions"), json!({})).await.ok();
    assert_eq!(versions.as_array().unwrap().len(), 1);
    assert_eq!(app.post(&key, "/assistants/count", json!({})).await.ok(), json!(4));
}

async fn delete_threads_deletes_the_callers_threads_of_that_assistant_only(app: &TestApp) {
    let key = app.key("alice").await;
    let mine = create(app, &key, json!({"graph_id": "echo"})).await;
    let id = id_of(&mine);
    let run = |assistant: &str| {
        json!({"assistant_id": assistant, "input": {"messages": [{"role": "user", "content": "hi"}]},
               "on_completion": "keep"})
    };
    let thread_of = |reply: Reply| {
        let location = reply.headers["content-location"].to_str().unwrap().to_owned();
        reply.ok();
        location.split('/').nth(2).unwrap().to_owned()
    };
    let doomed = thread_of(app.post(&key, "/runs/wait", run(&id)).await);
    let kept = thread_of(app.post(&key, "/runs/wait", run("echo")).await);
    // Bob's thread naming her assistant in its metadata is not hers to delete.
    let bob = app.key("bob").await;
    let bobs = app.post(&bob, "/threads", json!({"metadata": {"assistant_id": id}})).await.ok();
    let path = format!("/assistants/{id}?delete_threads=true");
    let deleted = app.call(&key, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = app.get(&key, &format!("/threads/{doomed}")).await;
    gone.error(StatusCode::NOT_FOUND, "not_found", "not found");
    app.get(&key, &format!("/threads/{kept}")).await.ok();
    app.get(&bob, &format!("/threads/{}", bobs["thread_id"].as_str().unwrap())).await.ok();
}

async fn patching_the_context_keeps_the_rest_of_the_config_and_an_empty_one_clears_it(
    app: &TestApp,
) {
    let key = app.key("alice").await;
    let body = json!({"graph_id": "echo", "context": {"model": "a"},
                      "config": {"tags": ["kept"], "recursion_limit": 5}});
    let mine = create(app, &key, body).await;
    let path = format!("/assistants/{}", id_of(&mine));
    let patched =
        app.call(&key, Method::PATCH, &path, Some(json!({"context": {"model": "b"}}))).await.ok();
    assert_eq!(patched["context"], json!({"model": "b"}));
    assert_eq!(
        patched["config"],
        json!({"tags": ["kept"], "recursion_limit": 5, "configurable": {"model": "b"}}),
        "a PATCH of the context alone replaced the whole config"
    );
    // An empty context clears the values; config.configurable must not keep the old ones
    // (a run reads both).
    let cleared = app.call(&key, Method::PATCH, &path, Some(json!({"context": {}}))).await.ok();
    assert_eq!(cleared["context"], json!({}));
    assert!(
        cleared["config"]["configurable"].as_object().is_none_or(|c| c.is_empty()),
        "config.configurable kept what the context no longer says: {}",
        cleared["config"]
    );
    let thread = app.post(&key, "/threads", json!({})).await.ok();
    let t = thread["thread_id"].as_str().unwrap();
    let run = json!({"assistant_id": id_of(&mine),
                     "input": {"messages": [{"role": "user", "content": "hi"}]}});
    app.post(&key, &format!("/threads/{t}/runs/wait"), run).await.ok();
    let runs = app.get(&key, &format!("/threads/{t}/runs")).await.ok();
    assert!(
        runs[0]["kwargs"]["config"]["configurable"].get("model").is_none(),
        "the run still got the cleared model: {}",
        runs[0]["kwargs"]
    );
}
