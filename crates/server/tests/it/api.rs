//! The Agent Protocol routes of this issue, driven in-process (`app(state).oneshot`) on SQLite
//! and PostgreSQL, with several users to check isolation on every route.

use crate::harness::HttpConfig;
use crate::harness::TestApp;
use crate::harness::{Auth, AuthMode, JwtConfig};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ids::ThreadId;
use serde_json::{Value, json};
use store::Backend;

store::on_both_backends!(TestApp =>
    thread_lifecycle,
    if_exists_raise_and_do_nothing,
    state_updates_and_history,
    search_filters_pages_and_counts,
    assistants_by_id_and_by_graph_name,
    bad_input_gets_clear_errors_and_changes_nothing,
    another_users_thread_is_a_404_on_every_route,
    randomized_users_never_see_each_others_threads,
    missing_and_bad_credentials_are_401,
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
    assert_eq!(all.headers["x-pagination-total"], "2");
    let names: Vec<_> =
        all.ok().as_array().unwrap().iter().map(|a| a["graph_id"].clone()).collect();
    assert_eq!(names, [json!("echo"), json!("synthetic")]);
    let listed = app.post(&key, "/assistants/search", json!({"graph_id": "echo"})).await.ok();
    assert_eq!(listed[0]["assistant_id"], echo_id);
    assert_eq!(listed[0]["graph_id"], "echo");
    assert_eq!(listed[0]["name"], "echo");
    assert_eq!(listed[0]["metadata"], json!({"created_by": "system"}));
    assert_eq!(listed[0]["version"], 1);
    for (filter, n) in [
        (json!({"graph_id": "echo"}), 1),
        (json!({"metadata": {"created_by": "system"}}), 2),
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
    assert_eq!(app.post(&key, "/assistants/count", json!({})).await.ok(), json!(2));
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

/// The body of an error without its request id, to compare two errors.
fn without_request_id(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("request_id");
    body
}

async fn another_users_thread_is_a_404_on_every_route(app: &TestApp) {
    let alice = app.key("alice").await;
    let bob = app.key("bob").await;
    let id = app.post(&alice, "/threads", json!({"metadata": {"secret": "alice"}})).await.ok()["thread_id"].as_str().unwrap().to_owned();
    let cp = app
        .post(&alice, &format!("/threads/{id}/state"), json!({"values": {"messages": ["hi"]}}))
        .await
        .ok()["checkpoint"]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.get(&alice, &format!("/threads/{id}")).await.ok();
    let missing = ThreadId::new().to_string();

    let routes = |t: &str| {
        vec![
            (Method::GET, format!("/threads/{t}"), None),
            (Method::PATCH, format!("/threads/{t}"), Some(json!({"metadata": {"secret": "bob"}}))),
            (Method::DELETE, format!("/threads/{t}"), None),
            (Method::GET, format!("/threads/{t}/state"), None),
            (
                Method::POST,
                format!("/threads/{t}/state"),
                Some(json!({"values": {"messages": ["pwned"]}})),
            ),
            (Method::GET, format!("/threads/{t}/state/{cp}"), None),
            (
                Method::POST,
                format!("/threads/{t}/state/checkpoint"),
                Some(json!({"checkpoint": {"checkpoint_id": cp}})),
            ),
            (Method::POST, format!("/threads/{t}/history"), Some(json!({}))),
            (Method::GET, format!("/threads/{t}/history"), None),
        ]
    };
    for ((method, uri, body), (_, missing_uri, _)) in routes(&id).into_iter().zip(routes(&missing))
    {
        let theirs = app.call(&bob, method.clone(), &uri, body.clone()).await;
        let nothing = app.call(&bob, method.clone(), &missing_uri, body).await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{method} {uri}: {}", theirs.body);
        let theirs = without_request_id(theirs.body).to_string().replace(&id, "ID");
        let nothing = without_request_id(nothing.body).to_string().replace(&missing, "ID");
        assert_eq!(theirs, nothing, "{method} {uri}: another user's thread must look missing");
    }
    for filter in
        [json!({"ids": [id]}), json!({"metadata": {"secret": "alice"}}), json!({"limit": 1000})]
    {
        assert_eq!(
            app.post(&bob, "/threads/search", filter.clone()).await.ok(),
            json!([]),
            "{filter}"
        );
        assert_eq!(app.post(&bob, "/threads/count", filter).await.ok(), json!(0));
    }
    assert_eq!(
        app.get(&alice, &format!("/threads/{id}")).await.ok(),
        before,
        "alice's thread is untouched"
    );
    assert_eq!(
        app.post(&alice, &format!("/threads/{id}/history"), json!({}))
            .await
            .ok()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A small deterministic generator (xorshift), so the randomized test replays exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn randomized_users_never_see_each_others_threads(app: &TestApp) {
    let users = [app.key("u0").await, app.key("u1").await, app.key("u2").await];
    // The model: every thread ever created, with its owner and whether it still exists.
    let mut threads: Vec<(String, usize, bool)> = Vec::new();
    for seed in [7u64, 1234, 99_991] {
        let mut rng = Rng(seed);
        for step in 0..60 {
            let u = rng.below(3);
            let key = &users[u];
            let op = rng.below(5);
            if op == 0 || threads.is_empty() {
                let t = app
                    .post(key, "/threads", json!({"metadata": {"owner": u, "step": step}}))
                    .await
                    .ok();
                threads.push((t["thread_id"].as_str().unwrap().to_owned(), u, true));
                continue;
            }
            let (id, owner, alive) = threads[rng.below(threads.len())].clone();
            let visible = owner == u && alive;
            let reply = match op {
                1 => app.get(key, &format!("/threads/{id}")).await,
                2 => {
                    app.post(
                        key,
                        &format!("/threads/{id}/state"),
                        json!({"values": {"messages": [format!("from {u}")]}}),
                    )
                    .await
                }
                3 => {
                    app.call(
                        key,
                        Method::PATCH,
                        &format!("/threads/{id}"),
                        Some(json!({"metadata": {"touched_by": u}})),
                    )
                    .await
                }
                _ => {
                    let r = app.call(key, Method::DELETE, &format!("/threads/{id}"), None).await;
                    if visible {
                        threads.iter_mut().find(|t| t.0 == id).unwrap().2 = false;
                    }
                    r
                }
            };
            let expected = if !visible {
                StatusCode::NOT_FOUND
            } else if op == 4 {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::OK
            };
            assert_eq!(
                reply.status, expected,
                "seed {seed} step {step}: user {u} op {op} on thread of {owner}"
            );
            if reply.status == StatusCode::OK && op != 2 {
                assert_eq!(reply.body["metadata"]["owner"], owner);
            }
        }
    }
    // Searches return exactly each user's live threads, and no other user ever wrote to them.
    for (u, key) in users.iter().enumerate() {
        let found = app.post(key, "/threads/search", json!({"limit": 1000})).await.ok();
        let mut got: Vec<String> = found
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["thread_id"].as_str().unwrap().to_owned())
            .collect();
        let mut expected: Vec<String> =
            threads.iter().filter(|t| t.1 == u && t.2).map(|t| t.0.clone()).collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "user {u}");
        for t in found.as_array().unwrap() {
            assert!(t["metadata"]["touched_by"].is_null() || t["metadata"]["touched_by"] == u);
            for m in t["values"]["messages"].as_array().into_iter().flatten() {
                assert_eq!(m["content"], format!("from {u}"));
            }
        }
    }
}

async fn missing_and_bad_credentials_are_401(app: &TestApp) {
    let key = app.key("alice").await;
    let no_key = app.send(Request::post("/threads/search").body(Body::empty()).unwrap()).await;
    no_key.headers.get("www-authenticate").expect("WWW-Authenticate on 401");
    no_key.error(StatusCode::UNAUTHORIZED, "unauthorized", "missing credentials");
    app.post("spindle_wrong", "/threads/search", json!({})).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or revoked",
    );
    let bearer = Request::post("/threads/search")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(bearer).await.status, StatusCode::OK);
    // Public routes need no key.
    for uri in ["/ok", "/info", "/healthz", "/openapi.json"] {
        assert_eq!(
            app.send(Request::get(uri).body(Body::empty()).unwrap()).await.status,
            StatusCode::OK,
            "{uri}"
        );
    }
    // A revoked key stops working at once.
    let listed = app.store().list_api_keys().await.unwrap();
    app.store().revoke_api_key(listed[0].key_id).await.unwrap();
    app.post(&key, "/threads/search", json!({})).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or revoked",
    );
}

#[tokio::test]
async fn jwt_auth_maps_sub_to_a_user_and_checks_exp_aud_iss() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let jwt = JwtConfig {
        secret: Some(secret.into()),
        audience: Some("spindle".into()),
        issuer: Some("https://issuer.test".into()),
        ..JwtConfig::default()
    };
    let app = TestApp::with(Backend::Sqlite, AuthMode::KeysAndJwt, &jwt, HttpConfig::default())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let token = |claims: Value| {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let call = |token: String| {
        let r = Request::post("/threads")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        app.send(r)
    };
    let good =
        json!({"sub": "carol", "exp": now + 600, "aud": "spindle", "iss": "https://issuer.test"});
    let created = call(token(good.clone())).await.ok();
    // The thread belongs to carol: an API key of carol's sees it.
    let key = app.key("carol").await;
    app.get(&key, &format!("/threads/{}", created["thread_id"].as_str().unwrap())).await.ok();
    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    call(token(expired)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("other");
    call(token(wrong_aud)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    call(token(wrong_iss)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let mut future = good.clone();
    future["nbf"] = json!(now + 3600);
    call(token(future)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let forged = encode(
        &Header::default(),
        &good,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    call(forged).await.error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token");
    call("not.a.jwt".into()).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
}

#[tokio::test]
async fn local_mode_needs_no_credentials() {
    let app = TestApp::with(
        Backend::Sqlite,
        AuthMode::Local,
        &JwtConfig::default(),
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let created = app.send(Request::post("/threads").body(Body::empty()).unwrap()).await.ok();
    let id = created["thread_id"].as_str().unwrap();
    app.send(Request::get(format!("/threads/{id}")).body(Body::empty()).unwrap()).await.ok();
}

#[tokio::test]
async fn body_limit_is_configurable() {
    let http = HttpConfig { body_limit: 1024, ..HttpConfig::default() };
    let app =
        TestApp::with(Backend::Sqlite, AuthMode::Local, &JwtConfig::default(), http).await.unwrap();
    let body = json!({"metadata": {"x": "a".repeat(2000)}}).to_string();
    let r = Request::post("/threads")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    app.send(r).await.error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "larger than");
    assert_eq!(
        app.store()
            .list_threads(app.store().ensure_user("local").await.unwrap().user_id, 10, 0)
            .await
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn cors_allows_the_sdk_headers_and_exposes_locations() {
    let app = TestApp::with(
        Backend::Sqlite,
        AuthMode::Keys,
        &JwtConfig::default(),
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/threads")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-api-key,content-type,last-event-id,authorization",
        )
        .body(Body::empty())
        .unwrap();
    let r = app.send(preflight).await;
    assert!(r.status.is_success(), "{:?}", r.status);
    let allowed = r.headers["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    for h in ["x-api-key", "content-type", "last-event-id", "authorization"] {
        assert!(allowed.contains(h), "{allowed} lacks {h}");
    }
    let r = app
        .send(
            Request::get("/ok")
                .header("origin", "http://localhost:3000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let exposed = r.headers["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    assert!(exposed.contains("content-location") && exposed.contains("location"), "{exposed}");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = TestApp::new(Backend::Sqlite).await.unwrap();
    let doc = app.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.ok();
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("get", "/ok"),
        ("get", "/info"),
        ("get", "/healthz"),
        ("post", "/assistants/search"),
        ("post", "/assistants/count"),
        ("get", "/assistants/{assistant_id}"),
        ("post", "/threads"),
        ("post", "/threads/search"),
        ("post", "/threads/count"),
        ("get", "/threads/{thread_id}"),
        ("patch", "/threads/{thread_id}"),
        ("delete", "/threads/{thread_id}"),
        ("get", "/threads/{thread_id}/state"),
        ("post", "/threads/{thread_id}/state"),
        ("get", "/threads/{thread_id}/state/{checkpoint_id}"),
        ("post", "/threads/{thread_id}/state/checkpoint"),
        ("post", "/threads/{thread_id}/history"),
        ("get", "/threads/{thread_id}/history"),
        ("post", "/threads/{thread_id}/runs"),
        ("get", "/threads/{thread_id}/runs"),
        ("post", "/threads/{thread_id}/runs/stream"),
        ("post", "/threads/{thread_id}/runs/wait"),
        ("get", "/threads/{thread_id}/runs/{run_id}"),
        ("delete", "/threads/{thread_id}/runs/{run_id}"),
        ("post", "/threads/{thread_id}/runs/{run_id}/cancel"),
        ("get", "/threads/{thread_id}/runs/{run_id}/join"),
        ("get", "/threads/{thread_id}/runs/{run_id}/stream"),
        ("get", "/threads/{thread_id}/stream"),
        ("post", "/runs"),
        ("post", "/runs/stream"),
        ("post", "/runs/wait"),
    ];
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from openapi.json"
        );
    }
    // And every documented operation is really served: never the router's 404 or 405.
    let key = app.key("alice").await;
    let some_id = ThreadId::new().to_string();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let uri = path
                .replace("{thread_id}", &some_id)
                .replace("{checkpoint_id}", &some_id)
                .replace("{run_id}", &some_id)
                .replace("{assistant_id}", "echo");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
            let r = app.call(&key, method.clone(), &uri, body).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(r.body["detail"], "no such route", "{method} {path}");
        }
    }
}

/// Runs openssl (Debian's, on every machine of this kind) to make test keys.
fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn jwt_with_an_es256_public_key_and_an_rs256_jwks() {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let dir = std::env::temp_dir().join(format!("spindle-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path("ec.pem"),
    ]);
    openssl(&["pkey", "-in", &path("ec.pem"), "-pubout", "-out", &path("ec.pub")]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path("rsa.pem"),
    ]);
    let modulus = openssl(&["rsa", "-in", &path("rsa.pem"), "-noout", "-modulus"]);
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]});
    std::fs::write(path("jwks.json"), jwks.to_string()).unwrap();

    let claims = json!({"sub": "dave", "exp": chrono::Utc::now().timestamp() + 600});
    let ec_token = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&std::fs::read(path("ec.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let mut rsa_header = Header::new(Algorithm::RS256);
    rsa_header.kid = Some("k1".into());
    let rsa_key = EncodingKey::from_rsa_pem(&std::fs::read(path("rsa.pem")).unwrap()).unwrap();
    let rsa_token = encode(&rsa_header, &claims, &rsa_key).unwrap();
    rsa_header.kid = Some("other".into());
    let unknown_kid = encode(&rsa_header, &claims, &rsa_key).unwrap();

    let bearer = |token: &str| {
        Request::post("/threads/search")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let pem = JwtConfig { public_key: Some(path("ec.pub").into()), ..JwtConfig::default() };
    let app =
        TestApp::with(Backend::Sqlite, AuthMode::Jwt, &pem, HttpConfig::default()).await.unwrap();
    app.send(bearer(&ec_token)).await.ok();
    app.send(bearer(&rsa_token)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );

    let set = JwtConfig { jwks: Some(path("jwks.json").into()), ..JwtConfig::default() };
    let app =
        TestApp::with(Backend::Sqlite, AuthMode::Jwt, &set, HttpConfig::default()).await.unwrap();
    app.send(bearer(&rsa_token)).await.ok();
    app.send(bearer(&unknown_kid)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    app.send(bearer(&ec_token)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn jwt_mode_without_a_key_is_a_configuration_error() {
    let err = Auth::new(AuthMode::Jwt, &JwtConfig::default()).unwrap_err();
    assert!(err.contains("--jwt-secret"), "{err}");
    let short = JwtConfig { secret: Some("short".into()), ..JwtConfig::default() };
    assert!(Auth::new(AuthMode::Jwt, &short).unwrap_err().contains("at least 32 bytes"));
}
