//! The `spindle` binary as a user runs it: start-up, shutdown, and start-up failures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};

use store::testing::TempDir;

fn spindle() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spindle"));
    cmd.env_remove("SPINDLE_DATABASE_URL").env_remove("SPINDLE_LISTEN").env("SPINDLE_LOG", "warn");
    cmd
}

/// A running server, stopped by pid when dropped.
struct Server {
    child: Option<Child>,
    addr: String,
}

impl Server {
    fn start(dir: &TempDir) -> Server {
        Server::start_with(dir, &[])
    }

    fn start_with(dir: &TempDir, extra: &[&str]) -> Server {
        let mut child = spindle()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(&dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The server prints its address once it is bound: wait for that line, not a timer.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("spindle listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { addr: addr.to_owned(), child: Some(child) }
    }

    fn get(&self, path: &str) -> String {
        self.get_with(path, "")
    }

    fn get_with(&self, path: &str, headers: &str) -> String {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: localhost\r\n{headers}connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// A request with a JSON body; the status and the JSON of the answer (not chunked).
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let json = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
    }

    /// SIGKILL: no shutdown, no cleanup, as in a crash.
    fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn terminate(mut self) -> Output {
        let child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        child.wait_with_output().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn serve_with_defaults_creates_the_sqlite_file_answers_and_stops_on_sigterm() {
    let dir = TempDir::new("serve");
    let server = Server::start(&dir);
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

    let server = Server::start_with(&dir, &["--auth", "keys"]);
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

#[test]
fn a_run_left_running_by_a_crash_ends_in_error_after_restart() {
    let dir = TempDir::new("crash");
    let server = Server::start(&dir);
    let (_, thread) = server.request("POST", "/threads", "{}");
    let t = thread["thread_id"].as_str().unwrap().to_owned();
    let body = r#"{"assistant_id": "synthetic", "input": {"n": 100000, "delay_ms": 5}}"#;
    let (status, run) = server.request("POST", &format!("/threads/{t}/runs"), body);
    assert_eq!(status, 200, "{run}");
    let r = run["run_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.request("GET", &format!("/threads/{t}/runs/{r}"), "").1["status"] != "running" {
        assert!(std::time::Instant::now() < deadline, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.kill();

    let server = Server::start(&dir);
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
    while server.request("GET", &format!("/threads/{t}/runs/{n}"), "").1["status"] != "success" {
        assert!(std::time::Instant::now() < deadline, "the next run never finished");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(server.request("GET", &format!("/threads/{t}"), "").1["status"], "idle");
}
