//! Isolation between users: another user's thread is a 404 on every route, also for
//! randomized users and threads.

use super::*;

store::on_both_backends!(TestApp =>
    another_users_thread_is_a_404_on_every_route,
    randomized_users_never_see_each_others_threads,
);

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
