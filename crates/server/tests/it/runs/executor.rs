//! The executor behind the routes: timeouts, places and their waiting runs, requests dropped
//! mid-way, and fairness between users.

use super::*;

#[tokio::test]
async fn a_run_past_its_timeout_ends_timeout_and_wait_says_so() {
    let config = harness::ExecutorConfig {
        concurrency: 2,
        run_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let (db, state) = app_with_executor(store::Backend::Sqlite, config).await.unwrap();
    let call = |uri: String, body: Value| call(&state, Method::POST, uri, body);
    let t = call("/threads".into(), json!({})).await["thread_id"].as_str().unwrap().to_owned();
    let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
    let answer = call(format!("/threads/{t}/runs/wait"), slow).await;
    assert_eq!(answer["__error__"]["error"], "TimeoutError", "{answer}");
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let runs = db.store.list_runs(owner, t.parse().unwrap(), 10, 0, None).await.unwrap();
    assert_eq!(runs[0].status, store::RunStatus::Timeout);
    assert_eq!(
        db.store.get_thread(owner, t.parse().unwrap()).await.unwrap().status,
        store::ThreadStatus::Error
    );
}

/// With no free place in the executor, a run is created `pending` and starts as soon as a
/// place frees up (the run holding it ends).
#[tokio::test]
async fn a_run_waiting_for_a_place_starts_when_one_frees_up() {
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let config = harness::ExecutorConfig { concurrency: 1, ..Default::default() };
        let Some((_db, state)) = app_with_executor(backend, config).await else { continue };
        let call = |method: &str, uri: String, body: Value| {
            call(&state, Method::from_bytes(method.as_bytes()).unwrap(), uri, body)
        };
        let thread = |_: ()| call("POST", "/threads".into(), json!({}));
        let (a, b) = (thread(()).await, thread(()).await);
        let (a, b) = (a["thread_id"].as_str().unwrap(), b["thread_id"].as_str().unwrap());
        // The one place: a run that lasts until it is cancelled.
        let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
        let first = call("POST", format!("/threads/{a}/runs"), slow).await;
        // Running at once, or (if the claim loop held the place at that moment) once claimed.
        let get_first = format!("/threads/{a}/runs/{}", first["run_id"].as_str().unwrap());
        let running = async || {
            (call("GET", get_first.clone(), Value::Null).await["status"] == "running").then_some(())
        };
        harness::eventually(&format!("{backend:?}: the first run runs"), harness::BOUND, running)
            .await;
        let echo = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}});
        let second = call("POST", format!("/threads/{b}/runs"), echo).await;
        assert_eq!(second["status"], "pending", "{backend:?}: no place, so it waits: {second}");
        // Freeing the place starts the waiting run; joining it answers with its reply.
        let cancel =
            format!("/threads/{a}/runs/{}/cancel?wait=1", first["run_id"].as_str().unwrap());
        call("POST", cancel, json!({})).await;
        let join = format!("/threads/{b}/runs/{}/join", second["run_id"].as_str().unwrap());
        let values = call("GET", join, Value::Null).await;
        assert_eq!(values["messages"][1]["content"], "echo: hi", "{backend:?}: {values}");
    }
}

/// A request that creates a run, polled by hand (as a server drives a handler) only until its
/// run is in the store: the request, and its answer if it came that soon.
struct RunRequestInFlight {
    owner: ids::UserId,
    thread: ThreadId,
    request: std::pin::Pin<Box<tower::util::Oneshot<axum::Router, Request<Body>>>>,
    answered: Option<axum::response::Response>,
}

async fn post_run_until_stored(
    db: &store::testing::TestDb,
    state: &harness::AppState,
    body: Value,
) -> RunRequestInFlight {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let created = call(state, Method::POST, "/threads".into(), json!({})).await;
    let thread: ThreadId = created["thread_id"].as_str().unwrap().parse().unwrap();
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let request = Request::post(format!("/threads/{thread}/runs"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let mut request = Box::pin(tower::ServiceExt::oneshot(harness::app(state.clone()), request));
    let mut cx = Context::from_waker(Waker::noop());
    // `Some(answer)` once the run is stored; the answer too if it came that soon.
    let stored = async || {
        if !db.store.list_runs(owner, thread, 10, 0, None).await.unwrap().is_empty() {
            return Some(None);
        }
        match request.as_mut().poll(&mut cx) {
            Poll::Ready(response) => Some(Some(response.unwrap())),
            Poll::Pending => None,
        }
    };
    let answered = harness::eventually("the run is in the store", harness::BOUND, stored).await;
    RunRequestInFlight { owner, thread, request, answered }
}

/// A create request whose future is dropped (the client hung up) after the store committed
/// its run claimed still has the run executed (it is created in a task of its own): no run is
/// left `running` with no executor, and no thread `busy`, until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_request_dropped_after_its_commit_still_runs_its_run() {
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let config = harness::ExecutorConfig::default();
        let Some((db, state)) = app_with_executor(backend, config).await else { continue };
        // Driven until the run is in the store, then dropped (as hyper does when the client's
        // connection closes).
        let RunRequestInFlight { owner, thread, request, .. } =
            post_run_until_stored(&db, &state, hi("hello")).await;
        drop(request);
        // The run must still execute and end: wait for it (bounded).
        let ended = async || {
            let runs = db.store.list_runs(owner, thread, 10, 0, None).await.unwrap();
            let t_status = db.store.get_thread(owner, thread).await.unwrap().status;
            (runs[0].status == store::RunStatus::Success).then_some(t_status)
        };
        let t_status =
            harness::eventually(&format!("{backend:?}: the run succeeds"), harness::BOUND, ended)
                .await;
        assert_eq!(t_status, store::ThreadStatus::Idle, "{backend:?}");
    }
}

/// `interrupt` reaches a run claimed as created even before its request hands it to the
/// executor: the run is registered when its place is reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_reaches_a_run_claimed_as_created_before_it_is_handed_over() {
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let config = harness::ExecutorConfig::default();
        let Some((db, state)) = app_with_executor(backend, config).await else { continue };
        let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
        let RunRequestInFlight { owner, thread, request: first, answered } =
            post_run_until_stored(&db, &state, slow).await;
        // The interrupting run arrives now.
        let mut interrupting = hi("interrupting");
        interrupting["multitask_strategy"] = json!("interrupt");
        let second =
            call(&state, Method::POST, format!("/threads/{thread}/runs"), interrupting).await;
        // The first request completes (the run is handed to the executor).
        let first = match answered {
            Some(response) => response,
            None => first.await.unwrap(),
        };
        let bytes = http_body_util::BodyExt::collect(first.into_body()).await.unwrap().to_bytes();
        let first: Value = serde_json::from_slice(&bytes).unwrap();
        let run = |id: &Value| {
            let id = id.as_str().unwrap().to_owned();
            let (store, thread) = (db.store.clone(), thread);
            async move { store.get_run(owner, thread, id.parse().unwrap()).await.unwrap().status }
        };
        // The endless first run must end interrupted, and the second then run: wait for it.
        let both = async || {
            let (a, b) = (run(&first["run_id"]).await, run(&second["run_id"]).await);
            (a == store::RunStatus::Interrupted && b == store::RunStatus::Success).then_some(())
        };
        let what = format!("{backend:?}: the first run is interrupted and the second succeeds");
        harness::eventually(&what, harness::BOUND, both).await;
        // Clean up the endless run.
        let cancel =
            format!("/threads/{thread}/runs/{}/cancel?wait=1", first["run_id"].as_str().unwrap());
        call(&state, Method::POST, cancel, json!({})).await;
    }
}

/// The window the previous test cannot force: a run whose place is reserved but which is not
/// yet created, let alone handed over, is already registered, so another run's `interrupt`
/// (`cancel_thread`) reaches it and it ends `interrupted` once it runs.
#[tokio::test]
async fn a_reserved_run_is_registered_before_it_is_created() {
    cancelled_in_a_window(Window::AfterReservation).await;
}

/// The claim's window: a run the claim has taken but not registered yet when a newer run's
/// `interrupt` or `rollback` comes (`cancel_thread`) is cancelled as it registers (found by
/// the SDK suite's `race_resume_then_input_rollback` on a loaded machine: the resume, claimed
/// but unregistered, ran to its end).
#[tokio::test]
async fn a_run_registered_after_a_newer_runs_interrupt_stops() {
    cancelled_in_a_window(Window::BeforeRegistration).await;
}

/// When a newer run's `interrupt` reaches a long `synthetic` run, driven by hand.
enum Window {
    /// After its place is reserved (it is registered), before it is created.
    AfterReservation,
    /// Before it is registered at all (as the claim loop registers what it claimed).
    BeforeRegistration,
}

/// A long run of a new thread, interrupted in `window` by a newer run's strategy, must end
/// `interrupted` once it runs.
async fn cancelled_in_a_window(window: Window) {
    use domain::CancelAction;
    use engine::first_step;
    let config = harness::ExecutorConfig::default();
    let (db, state) = app_with_executor(store::Backend::Sqlite, config).await.unwrap();
    let owner = db.store.ensure_user("local").await.unwrap().user_id;
    let thread = ThreadId::new();
    db.store.get_or_create_thread(owner, thread, &store::Metadata::new()).await.unwrap();
    let kwargs = json!({"graph_id": "synthetic"});
    let input = json!({"n": 100000, "delay_ms": 5, "messages": [{"role": "user", "content": "x"}]});
    let new_run = store::NewRun {
        assistant_id: ids::AssistantId::for_graph("synthetic"),
        input: Some(input.clone()),
        kwargs: kwargs.clone(),
        ..store::testing::new_run(thread)
    };
    let executor = state.engine.executor();
    let interrupt = || executor.cancel_thread(thread, ids::RunId::new(), CancelAction::Interrupt);
    if let Window::BeforeRegistration = window {
        interrupt();
    }
    let place = executor.try_reserve(new_run.run_id, thread, owner).expect("a free place");
    if let Window::AfterReservation = window {
        interrupt();
    }
    let spec = domain::RunSpec::of(&kwargs);
    let first = first_step(new_run.run_id, new_run.assistant_id, &spec, Some(&input)).unwrap();
    let (run, _, step) = db
        .store
        .create_run_claiming(owner, &new_run, store::IfNotExists::Reject, first)
        .await
        .unwrap();
    assert_eq!(run.status, store::RunStatus::Running);
    let started = step.and_then(|s| s.checkpoint).map(|c| c.values);
    let mut end = executor.watch_end(run.run_id);
    executor.spawn_claimed(run.clone(), place, started);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), end.ended()).await;
    let ended = ended.expect("the run ended").expect("its end was announced");
    assert_eq!(ended.status, Some(store::RunStatus::Interrupted));
}

/// One user's runs cannot take every place: past `per_user` they wait their turn, while
/// another user's run starts at once (finding 8 of #12: 64 sleeping runs of one user made
/// another user's `echo` wait for the whole run timeout).
#[tokio::test]
async fn one_user_cannot_take_every_place() {
    use crate::harness::{Auth, AuthMode, JwtConfig, auth};
    for backend in [store::Backend::Sqlite, store::Backend::Postgres] {
        let Some(db) = store::testing::TestDb::new(backend).await else { continue };
        let auth = Auth::new(AuthMode::Keys, &JwtConfig::default()).unwrap();
        let config = harness::ExecutorConfig { concurrency: 4, per_user: 2, ..Default::default() };
        let state = harness::AppState::new(
            engine::Engine::new(db.store.clone(), config).await.unwrap(),
            auth,
            harness::HttpConfig::default(),
        );
        state.start(std::future::pending()).await.unwrap();
        let mut keys = Vec::new();
        for user in ["mallory", "alice"] {
            let key = auth::generate_key().unwrap();
            db.store
                .create_api_key(user, &auth::hash_key(&key), &auth::key_prefix(&key))
                .await
                .unwrap();
            keys.push(key);
        }
        let call = |key: &str, method: Method, uri: String, body: Value| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let app = harness::app(state.clone());
            async move {
                let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
                let bytes = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)
            }
        };
        let (mallory, alice) = (keys[0].as_str(), keys[1].as_str());
        let slow = json!({"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}});
        let mut hers = Vec::new();
        for _ in 0..4 {
            let t = call(mallory, Method::POST, "/threads".into(), json!({})).await;
            let t = t["thread_id"].as_str().unwrap().to_owned();
            let run = call(mallory, Method::POST, format!("/threads/{t}/runs"), slow.clone()).await;
            hers.push((t, run["run_id"].as_str().unwrap().to_owned()));
        }
        // Her first two run (at once, or once claimed if the claim loop held the places at that
        // moment); the others wait.
        let two_run = async || {
            let mut statuses = Vec::new();
            for (t, run) in &hers {
                let got =
                    call(mallory, Method::GET, format!("/threads/{t}/runs/{run}"), Value::Null)
                        .await;
                statuses.push(got["status"].as_str().unwrap().to_owned());
            }
            (statuses == ["running", "running", "pending", "pending"]).then_some(())
        };
        let what = format!("{backend:?}: her first two runs run and the others wait");
        harness::eventually(&what, harness::BOUND, two_run).await;
        // Two places are free, but not for her: Alice's run takes one at once.
        let echo = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hi"}]}});
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            call(alice, Method::POST, "/runs/wait".into(), echo),
        )
        .await
        .expect("alice's run does not wait for mallory's");
        assert_eq!(answer["messages"][1]["content"], "echo: hi", "{backend:?}: {answer}");
        // One of hers ends: her oldest waiting run takes its place.
        let (t, run) = &hers[0];
        call(mallory, Method::POST, format!("/threads/{t}/runs/{run}/cancel?wait=1"), json!({}))
            .await;
        let (t, run) = &hers[2];
        let next_runs = async || {
            let got = call(mallory, Method::GET, format!("/threads/{t}/runs/{run}"), Value::Null);
            (got.await["status"] == "running").then_some(())
        };
        let what = format!("{backend:?}: her next run starts");
        harness::eventually(&what, harness::BOUND, next_runs).await;
        let (t, run) = &hers[3];
        let fourth =
            call(mallory, Method::GET, format!("/threads/{t}/runs/{run}"), Value::Null).await;
        assert_eq!(fourth["status"], "pending", "{backend:?}: still at her limit");
        for (t, run) in &hers[1..] {
            call(
                mallory,
                Method::POST,
                format!("/threads/{t}/runs/{run}/cancel?wait=1"),
                json!({}),
            )
            .await;
        }
    }
}
