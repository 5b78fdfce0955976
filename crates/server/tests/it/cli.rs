//! The `spindle` binary as a user runs it: start-up, shutdown, and start-up failures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use store::testing::TempDir;

use crate::harness::{Server, eventually, spindle};

#[test]
fn serve_with_defaults_creates_the_sqlite_file_answers_and_stops_on_sigterm() {
    let dir = TempDir::new("serve");
    let server = Server::start_in(&dir.0, &[]);
    let ok = server.get("/ok");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with(r#"{"ok":true}"#), "{ok}");
    let health = server.get("/healthz");
    assert!(health.ends_with(r#"{"database":"sqlite","status":"ok"}"#), "{health}");
    assert!(dir.0.join("spindle-data/spindle.db").exists());
    let output = server.terminate();
    assert!(output.status.success(), "exit after SIGTERM: {:?}", output.status);
}

#[track_caller]
fn check_fails_with_one_line(args: &[&str], expected_start: &str) {
    let dir = TempDir::new("fail");
    let output = spindle().args(args).current_dir(&dir.0).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with(expected_start), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_database_is_one_clear_line_and_exit_1() {
    check_fails_with_one_line(
        &["serve", "--database-url", "postgres://spindle:s3cret@127.0.0.1:1/x"],
        "error: database unavailable: cannot connect to postgres://spindle:***@127.0.0.1:1/x: ",
    );
    check_fails_with_one_line(
        &["migrate", "--database-url", "sqlite:///proc/no-such-dir/x.db"],
        "error: database unavailable: cannot open sqlite database /proc/no-such-dir/x.db",
    );
    check_fails_with_one_line(
        &["serve", "--database-url", "mysql://root@localhost/db"],
        "error: invalid database url `mysql://root@localhost/db`: expected sqlite://PATH or postgres://",
    );
}

#[test]
fn the_secret_never_reaches_the_output() {
    let dir = TempDir::new("secret");
    let output = spindle()
        .args(["serve", "--database-url", "postgres://u:hunter2@127.0.0.1:1/x"])
        .current_dir(&dir.0)
        .env("SPINDLE_LOG", "debug")
        .output()
        .unwrap();
    let all = [output.stdout, output.stderr].concat();
    assert!(!String::from_utf8_lossy(&all).contains("hunter2"));
}

#[test]
fn migrate_creates_the_schema_and_is_repeatable() {
    let dir = TempDir::new("migrate");
    for _ in 0..2 {
        let output =
            spindle().args(["migrate", "--data-dir", "db"]).current_dir(&dir.0).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8(output.stdout).unwrap(), "migrations applied\n");
    }
    assert!(dir.0.join("db/spindle.db").exists());
}

#[test]
fn every_command_has_help() {
    for args in [&["--help"][..], &["serve", "--help"], &["migrate", "--help"]] {
        let output = spindle().args(args).output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("Usage: spindle"), "{text}");
    }
    let serve =
        String::from_utf8(spindle().args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    for flag in
        ["--listen", "--database-url", "SPINDLE_DATABASE_URL", "SPINDLE_LISTEN", "127.0.0.1:8123"]
    {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn keys_create_list_revoke_and_serve_with_keys() {
    let dir = TempDir::new("keys");
    let run = |args: &[&str]| {
        let out = spindle().args(args).current_dir(&dir.0).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let key = run(&["keys", "create", "--user", "alice"]);
    assert_eq!(key.lines().count(), 1, "the key alone on stdout: {key:?}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("spindle_") && key.len() == "spindle_".len() + 43, "{key}");
    let listed = run(&["keys", "list"]);
    assert!(listed.contains("alice") && listed.contains(&key[..12]), "{listed}");
    assert!(!listed.contains(&key), "keys list never shows a key");

    let server = Server::start_in(&dir.0, &["--auth", "keys"]);
    let search = |key: &str| {
        server.get_with(
            "/threads/00000000-0000-7000-8000-000000000001",
            &format!("x-api-key: {key}\r\n"),
        )
    };
    assert!(search(&key).starts_with("HTTP/1.1 404"), "a valid key reaches the route");
    assert!(search("spindle_nope").starts_with("HTTP/1.1 401"));
    let key_id = listed.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert!(run(&["keys", "revoke", &key_id]).starts_with("revoked"));
    assert!(search(&key).starts_with("HTTP/1.1 401"), "revocation takes effect at once");
    drop(server);
}

#[test]
fn local_auth_refuses_a_non_loopback_address() {
    check_fails_with_one_line(
        &["serve", "--listen", "0.0.0.0:0"],
        "error: refusing to serve 0.0.0.0:0 without authentication: `--auth local` is for loopback addresses only",
    );
    check_fails_with_one_line(&["serve", "--auth", "jwt"], "error: --auth jwt needs a key");
    check_fails_with_one_line(&["keys", "revoke", "abc"], "error: invalid key_id `abc`");
}

#[tokio::test]
async fn a_run_left_running_by_a_crash_ends_in_error_after_restart() {
    let dir = TempDir::new("crash");
    let server = Server::start_in(&dir.0, &[]);
    let (_, thread) = server.request("POST", "/threads", "{}");
    let t = thread["thread_id"].as_str().unwrap().to_owned();
    let body = r#"{"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}}"#;
    let (status, run) = server.request("POST", &format!("/threads/{t}/runs"), body);
    assert_eq!(status, 200, "{run}");
    let r = run["run_id"].as_str().unwrap().to_owned();
    let running = async || {
        (server.request("GET", &format!("/threads/{t}/runs/{r}"), "").1["status"] == "running")
            .then_some(())
    };
    eventually("the run starts", Duration::from_secs(30), running).await;
    server.kill();

    let server = Server::start_in(&dir.0, &[]);
    let (_, run) = server.request("GET", &format!("/threads/{t}/runs/{r}"), "");
    assert_eq!(run["status"], "error", "{run}");
    let (_, thread) = server.request("GET", &format!("/threads/{t}"), "");
    assert_eq!(thread["status"], "error", "the thread is not left busy: {thread}");
    // The thread takes new runs at once.
    let (status, next) = server.request(
        "POST",
        &format!("/threads/{t}/runs"),
        r#"{"assistant_id": "echo", "input": {"messages": ["after"]}}"#,
    );
    assert_eq!(status, 200, "{next}");
    let n = next["run_id"].as_str().unwrap().to_owned();
    let finished = async || {
        (server.request("GET", &format!("/threads/{t}/runs/{n}"), "").1["status"] == "success")
            .then_some(())
    };
    eventually("the next run finishes", Duration::from_secs(30), finished).await;
    assert_eq!(server.request("GET", &format!("/threads/{t}"), "").1["status"], "idle");
}

/// `--metrics-listen` serves `/metrics` on its own port, and the main port then has none.
#[test]
fn a_separate_metrics_listener() {
    let dir = TempDir::new("metrics");
    let mut server = Server::start_in(&dir.0, &["--metrics-listen", "127.0.0.1:0"]);
    // The server prints both addresses once it is bound: wait for them, not a timer.
    let second = server.line();
    let main = server.addr.clone();
    let metrics = second.trim().strip_prefix("spindle metrics on http://").unwrap();
    let metrics = metrics.strip_suffix("/metrics").unwrap().to_owned();
    let (status, body) = get(&metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE spindle_threads_created_total counter"), "{body}");
    assert!(body.contains("spindle_threads_busy 0"), "{body}");
    assert_eq!(get(&metrics, "/threads").0, 404, "the metrics port serves nothing else");
    assert_eq!(get(&main, "/metrics").0, 404, "off on the main port by default then");
    assert_eq!(get(&main, "/ok").0, 200);
    drop(server);
}

/// A plain HTTP/1.1 GET: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
