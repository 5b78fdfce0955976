//! `/metrics` on SQLite and PostgreSQL: real traffic (threads, runs, streams, another user's
//! thread, malformed ids) and the values the endpoint then shows; the store gauges over
//! deliberately broken states; who may read it; request log lines; and the alert rules'
//! links and metric names against the docs and the endpoint.
//!
//! The recorder is global to the process, so the tests of this file take turns (`SERIAL`)
//! and assert differences between two scrapes: nothing else in this binary counts meanwhile.
//! That is why this is a test binary of its own, beside `it` (every other server test): the
//! tests there would count into the same recorder between two scrapes. It shares their
//! harness (`it/harness`).

#[path = "it/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use crate::harness::Exposure;
use crate::harness::HttpConfig;
use crate::harness::TestApp;
use crate::harness::{AuthMode, JwtConfig};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ids::ThreadId;
use serde_json::{Value, json};
use store::{Backend, DatabaseUrl};
use tower::ServiceExt;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

store::on_each_backend!(
    traffic_shows_in_the_counters,
    store_gauges_show_busy_threads_and_stuck_runs,
    metrics_can_be_public_authenticated_or_off,
    request_log_lines_carry_the_ids_and_no_message_text,
);

/// One scrape, parsed: series name and labels → value.
#[derive(Debug)]
struct Scrape {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut series = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (name, labels, rest) = match line.find('{') {
                Some(open) if open < line.find(' ').unwrap_or(usize::MAX) => {
                    let (labels, rest) = parse_labels(&line[open + 1..]);
                    (&line[..open], labels, rest)
                }
                _ => {
                    let (name, rest) = line.split_once(' ').unwrap();
                    (name, BTreeMap::new(), rest)
                }
            };
            let value = rest.trim().parse::<f64>().unwrap_or_else(|_| panic!("bad line {line:?}"));
            series.push((name.to_owned(), labels, value));
        }
        Scrape { series, text: text.to_owned() }
    }

    /// The sum of the series `name` whose labels include `labels` (0 if there is none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(n, l, _)| {
                n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.series.iter().any(|(n, _, _)| n == name)
    }
}

/// `a="x",b="y"} rest` → the labels and `rest`. Values may hold `{`, `}` and escapes.
fn parse_labels(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (key, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().unwrap() {
                (_, '\\') => value.push(chars.next().unwrap().1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
}

/// The difference `after - before` of one series.
#[track_caller]
fn assert_delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)], want: f64) {
    let got = after.get(name, labels) - before.get(name, labels);
    assert_eq!(got, want, "{name}{labels:?} moved by {got}, expected {want}");
}

async fn scrape(app: &TestApp) -> Scrape {
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = harness::app(app.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    Scrape::parse(std::str::from_utf8(&bytes).unwrap())
}

/// Counts the authenticated requests a test makes (each is one HTTP session).
struct Client<'a> {
    app: &'a TestApp,
    key: String,
    sessions: &'a std::cell::Cell<u32>,
}

impl Client<'_> {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> harness::Reply {
        self.sessions.set(self.sessions.get() + 1);
        self.app.call(&self.key, method, uri, body).await
    }
}

async fn traffic_shows_in_the_counters(backend: Backend) {
    let _turn = SERIAL.lock().await;
    let Some(app) = TestApp::new(backend).await else { return };
    let sessions = std::cell::Cell::new(0);
    let alice = Client { key: app.key("alice").await, app: &app, sessions: &sessions };
    let bob = Client { key: app.key("bob").await, app: &app, sessions: &sessions };
    let before = scrape(&app).await;

    // A thread, a run that waits, a streamed run, and a stateless run (its own new thread).
    let thread = alice.call(Method::POST, "/threads", Some(json!({}))).await.ok();
    let t = thread["thread_id"].as_str().unwrap().to_owned();
    let input = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hello there"}]}});
    alice.call(Method::POST, &format!("/threads/{t}/runs/wait"), Some(input.clone())).await.ok();
    sessions.set(sessions.get() + 1);
    let (status, _, frames) =
        app.post_sse(&alice.key, &format!("/threads/{t}/runs/stream"), input.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let streamed_events: std::collections::HashSet<String> = frames
        .iter()
        .filter_map(|f| f.id.as_deref())
        .filter(|id| *id != "0")
        .map(|id| id.split('-').next().unwrap().to_owned())
        .collect();
    assert!(!streamed_events.is_empty());
    alice.call(Method::POST, "/runs/wait", Some(input.clone())).await.ok();
    // `if_not_exists=create` on a new id creates a thread too; on an existing one it does not.
    let new_id = ThreadId::new();
    let create = json!({"assistant_id": "echo", "if_not_exists": "create"});
    alice
        .call(Method::POST, &format!("/threads/{new_id}/runs/wait"), Some(create.clone()))
        .await
        .ok();
    alice.call(Method::POST, &format!("/threads/{t}/runs/wait"), Some(create)).await.ok();

    // Lookups that fail: another user's thread, a missing one, a malformed id; the clients see
    // the same 404 for the first two.
    let foreign = bob.call(Method::GET, &format!("/threads/{t}"), None).await;
    let missing = alice.call(Method::GET, &format!("/threads/{}", ThreadId::new()), None).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(foreign.body["code"], missing.body["code"]);
    let foreign_run = bob
        .call(Method::POST, &format!("/threads/{t}/runs"), Some(json!({"assistant_id": "echo"})))
        .await;
    assert_eq!(foreign_run.status, StatusCode::NOT_FOUND);
    // With `if_not_exists=create`, another user's id is a conflict, and counted as not_owner.
    let create = json!({"assistant_id": "echo", "if_not_exists": "create"});
    let taken = bob.call(Method::POST, &format!("/threads/{t}/runs"), Some(create)).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.body);
    alice.call(Method::GET, "/threads/not-a-thread", None).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "thread_id",
    );
    alice.call(Method::GET, &format!("/threads/{t}/runs/nope"), None).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        "run_id",
    );
    alice.call(Method::POST, "/threads", Some(json!({"thread_id": "thread_123"}))).await.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "thread_id",
    );
    alice
        .call(
            Method::GET,
            &format!("/threads/{t}/state/0192f1c4-7d3e-7a8b-9c0d-1E2F3A4B5C6D"),
            None,
        )
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_id", "checkpoint_id");
    alice.call(Method::GET, "/no/such/route", None).await;

    // Runs and streams count their end just after the client saw it: wait for the counts.
    let runs = 5.0;
    let delivered = streamed_events.len() as f64;
    let after = settle(&app, |now| {
        now.get("spindle_runs_finished_total", &[]) - before.get("spindle_runs_finished_total", &[])
            >= runs
            && now.get("spindle_events_delivered_total", &[("transport", "sse")])
                - before.get("spindle_events_delivered_total", &[("transport", "sse")])
                >= delivered
            && now.get("spindle_runs_active", &[]) == 0.0
            && now.get("spindle_threads_busy", &[]) == 0.0
    })
    .await;
    let d = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_delta(&before, &after, name, labels, want)
    };
    d("spindle_threads_created_total", &[], 3.0);
    d("spindle_runs_created_total", &[], runs);
    d("spindle_runs_finished_total", &[("status", "success")], runs);
    d("spindle_sessions_opened_total", &[("transport", "http")], f64::from(sessions.get()));
    d("spindle_sessions_opened_total", &[("transport", "ws")], 0.0);
    d("spindle_thread_lookup_failures_total", &[("reason", "not_owner")], 3.0);
    d("spindle_thread_lookup_failures_total", &[("reason", "not_found")], 1.0);
    d("spindle_thread_lookup_failures_total", &[("reason", "malformed_id")], 1.0);
    d("spindle_id_rejections_total", &[("kind", "thread")], 2.0);
    d("spindle_id_rejections_total", &[("kind", "run")], 1.0);
    d("spindle_id_rejections_total", &[("kind", "checkpoint")], 1.0);
    d("spindle_events_delivered_total", &[("transport", "sse")], delivered);
    d("spindle_event_delivery_seconds_count", &[("transport", "sse")], delivered);
    // Every event of the runs: those still in the log of the two kept threads, and the
    // stateless run's, whose thread is gone with its log.
    let alice_id = app.store().ensure_user("alice").await.unwrap().user_id;
    let mut kept = 0;
    for thread in [t.parse().unwrap(), new_id] {
        kept += app.store().events_after(alice_id, thread, None, 0, 10_000).await.unwrap().len();
    }
    let appended = after.get("spindle_events_appended_total", &[])
        - before.get("spindle_events_appended_total", &[]);
    assert!(appended > kept as f64, "{appended} events appended, {kept} kept");

    // Route templates, never raw paths: no id in any label.
    let route = |r: &str, status: &str| {
        let labels = [("route", r), ("status", status)];
        after.get("spindle_http_request_duration_seconds_count", &labels)
            - before.get("spindle_http_request_duration_seconds_count", &labels)
    };
    assert_eq!(route("/threads/{thread_id}", "404"), 2.0);
    assert_eq!(route("/threads/{thread_id}", "422"), 1.0);
    assert_eq!(route("/threads/{thread_id}/runs/wait", "200"), 3.0);
    assert_eq!(route("unmatched", "404"), 1.0);
    assert!(!after.text.contains(&t), "a thread id in a label");
    assert!(!after.text.contains("not-a-thread"), "a raw path in a label");
    assert_eq!(after.get("spindle_runs_oldest_running_seconds", &[]), 0.0);
}

/// Scrapes until `done` holds (at most 10 s), and returns that scrape.
async fn settle(app: &TestApp, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let settled = async || {
        let now = scrape(app).await;
        done(&now).then_some(now)
    };
    harness::eventually("the metrics settle", std::time::Duration::from_secs(10), settled).await
}

/// Runs one SQL statement on the test's database, behind the store's back.
async fn break_database(app: &TestApp, sqlite: &str, postgres: &'static str) {
    match &app.db().url {
        DatabaseUrl::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            conn.execute(sqlite, []).unwrap();
        }
        DatabaseUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(postgres).execute(&mut conn).await.unwrap();
        }
    }
}

async fn store_gauges_show_busy_threads_and_stuck_runs(backend: Backend) {
    let _turn = SERIAL.lock().await;
    let Some(app) = TestApp::new(backend).await else { return };
    let key = app.key("alice").await;
    let idle = scrape(&app).await;
    assert_eq!(idle.get("spindle_threads_busy", &[]), 0.0);
    assert_eq!(idle.get("spindle_runs_active", &[]), 0.0);

    // A run that waits a minute between events: running, its thread busy.
    let t =
        app.post(&key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned();
    let slow = json!({"assistant_id": "synthetic", "input": {"n": 10, "delay_ms": 60_000}});
    let run = app.post(&key, &format!("/threads/{t}/runs"), slow).await.ok();
    let r = run["run_id"].as_str().unwrap().to_owned();
    app.wait_for_status(&key, &t, &r, |s| s == "running").await;
    // And one queued behind it.
    app.post(&key, &format!("/threads/{t}/runs"), json!({"assistant_id": "echo"})).await.ok();
    let running = scrape(&app).await;
    assert_eq!(running.get("spindle_threads_busy", &[]), 1.0);
    assert_eq!(running.get("spindle_threads_busy_without_run", &[]), 0.0);
    assert_eq!(running.get("spindle_runs_active", &[]), 2.0);
    assert_eq!(running.get("spindle_runs_running", &[]), 1.0);
    assert!(running.get("spindle_runs_oldest_running_seconds", &[]) < 600.0);

    // The run was claimed an hour ago, as far as the database knows.
    break_database(
        &app,
        "update runs set updated_at = updated_at - 3600000000 where status = 'running'",
        "update runs set updated_at = updated_at - interval '1 hour' where status = 'running'",
    )
    .await;
    let stuck = scrape(&app).await;
    let age = stuck.get("spindle_runs_oldest_running_seconds", &[]);
    assert!((3600.0..3700.0).contains(&age), "oldest running run: {age} s");

    // A thread marked busy with no run at all: the broken invariant the alert is about.
    let lonely =
        app.post(&key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned();
    break_database(
        &app,
        "update threads set status = 'busy' where status = 'idle'",
        "update threads set status = 'busy' where status = 'idle'",
    )
    .await;
    let broken = scrape(&app).await;
    assert_eq!(broken.get("spindle_threads_busy", &[]), 2.0);
    assert_eq!(broken.get("spindle_threads_busy_without_run", &[]), 1.0, "{lonely} is busy");

    // Cancelling ends both runs (interrupted): nothing active remains.
    let before_cancel = scrape(&app).await;
    let cancel = app.post(&key, &format!("/threads/{t}/runs/{r}/cancel?wait=1"), json!({})).await;
    assert_eq!(cancel.status, StatusCode::NO_CONTENT, "{}", cancel.body);
    let ended = settle(&app, |now| now.get("spindle_runs_active", &[]) == 0.0).await;
    let interrupted = ended.get("spindle_runs_finished_total", &[("status", "interrupted")])
        - before_cancel.get("spindle_runs_finished_total", &[("status", "interrupted")]);
    let succeeded = ended.get("spindle_runs_finished_total", &[("status", "success")])
        - before_cancel.get("spindle_runs_finished_total", &[("status", "success")]);
    assert_eq!((interrupted, succeeded), (1.0, 1.0), "the queued echo run ran after the cancel");
}

async fn metrics_can_be_public_authenticated_or_off(backend: Backend) {
    let _turn = SERIAL.lock().await;
    for (exposure, anonymous, with_key) in [
        (Exposure::Public, StatusCode::OK, StatusCode::OK),
        (Exposure::Auth, StatusCode::UNAUTHORIZED, StatusCode::OK),
        // Off, it is an unknown route: 401 before authentication, like any other.
        (Exposure::Off, StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND),
    ] {
        let http = HttpConfig { metrics: exposure, ..HttpConfig::default() };
        let Some(app) = TestApp::with(backend, AuthMode::Keys, &JwtConfig::default(), http).await
        else {
            return;
        };
        let key = app.key("prometheus").await;
        let sessions =
            |s: &Scrape| s.get("spindle_sessions_opened_total", &[("transport", "http")]);
        let before = api::metrics::render(&app.state.engine).await;
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        let response = harness::app(app.state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), anonymous, "{exposure:?} without a key");
        let request = Request::get("/metrics").header("x-api-key", &key).body(Body::empty());
        let response = harness::app(app.state.clone()).oneshot(request.unwrap()).await.unwrap();
        assert_eq!(response.status(), with_key, "{exposure:?} with a key");
        let after = api::metrics::render(&app.state.engine).await;
        // Reading the metrics is not a session.
        assert_eq!(sessions(&Scrape::parse(&after)), sessions(&Scrape::parse(&before)));
    }
}

/// Every log line of this test binary, as JSON (the format of `--log-format json`).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("info")
            .with_writer(captured.clone())
            .try_init()
            .expect("no other subscriber in this binary");
        captured
    })
}

fn log_lines(captured: &Captured) -> Vec<Value> {
    let bytes = captured.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn request_log_lines_carry_the_ids_and_no_message_text(backend: Backend) {
    let _turn = SERIAL.lock().await;
    let captured = logs();
    let Some(app) = TestApp::new(backend).await else { return };
    let key = app.key("alice").await;
    let t =
        app.post(&key, "/threads", json!({})).await.ok()["thread_id"].as_str().unwrap().to_owned();
    let secret = "the combination is 31-41-59";
    let input = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": secret}]}});
    let reply = app.post(&key, &format!("/threads/{t}/runs/wait"), input).await;
    assert_eq!(reply.body["messages"][1]["content"], format!("echo: {secret}"), "{}", reply.body);
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    let lines = log_lines(captured);
    let line = lines
        .iter()
        .find(|l| {
            l["span"]["request_id"] == request_id.as_str() && l["fields"]["message"] == "request"
        })
        .unwrap_or_else(|| panic!("no request line for {request_id}"));
    let user = app.store().ensure_user("alice").await.unwrap().user_id.to_string();
    assert_eq!(line["span"]["user_id"], user.as_str(), "{line}");
    assert_eq!(line["span"]["thread_id"], t.as_str(), "{line}");
    assert!(line["span"]["run_id"].as_str().unwrap().parse::<ids::RunId>().is_ok(), "{line}");
    assert_eq!(line["span"]["route"], "/threads/{thread_id}/runs/wait", "{line}");
    assert_eq!(line["fields"]["status"], 200, "{line}");
    // The run's own lines name it too.
    let run_id = line["span"]["run_id"].clone();
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["run_id"] == run_id && l["fields"]["message"] == "run ended")
    );
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(secret), "message text in the log");
    assert!(!text.contains(&key), "an API key in the log");
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Each alert links to a section of the troubleshooting guide that exists, and every series
/// the rules read is one `/metrics` exposes.
#[tokio::test]
async fn alert_rules_link_to_the_guide_and_read_exposed_series() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let guide = repo_file("docs/troubleshooting.md");
    let anchors: Vec<String> = guide
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let alerts = rules.matches("- alert: ").count();
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .map(|url| url.trim_matches('"').rsplit_once('#').unwrap().1)
        .collect();
    assert_eq!(links.len(), alerts, "every alert has a runbook_url");
    for link in links {
        assert!(anchors.iter().any(|a| a == link), "no section #{link} in docs/troubleshooting.md");
    }

    let _turn = SERIAL.lock().await;
    let Some(app) = TestApp::new(Backend::Sqlite).await else { return };
    app.get(&app.key("alice").await, "/threads/search").await;
    let exposed = scrape(&app).await;
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("spindle_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        assert!(exposed.has(&name), "the rules read {name}, which /metrics does not expose");
    }
}
