//! Users' LangGraph graphs on Spindle (#16): the real `spindle` binary serving
//! `tests/graphs/langgraph.json` with its own Python worker processes (`--graphs`, `--python`),
//! on SQLite and PostgreSQL: runs of a message graph, a streaming graph with a fake chat model
//! and custom events, `interrupt()` and its resume, a graph that raises, a subgraph; cancel,
//! timeout and a worker killed mid-run; the worker route's credentials; a start with a graph
//! that does not load.
//!
//! The interpreter is `SPINDLE_TEST_GRAPH_PYTHON`, or `target/py-venv` (made by `python/ci.sh`
//! from `python/requirements-test.lock` if it is not there: PyPI must be reachable then).

mod compare;
mod lifecycle;
mod runs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use store::testing::{TempDir, TestDb};

use crate::harness::Server;

/// Every wait of these tests is bounded by this (Python processes start slowly on a busy CI).
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn workspace() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

static VENV: Mutex<()> = Mutex::new(());

/// The interpreter that runs the test graphs: langgraph and spindle-worker installed.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SPINDLE_TEST_GRAPH_PYTHON") {
        return PathBuf::from(python);
    }
    let _guard = VENV.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace();
    let python = root.join("target/py-venv/bin/python");
    let lock = root.join("python/requirements-test.lock");
    let installed = root.join("target/py-venv/installed.lock");
    let current = std::fs::read(&installed).ok() == std::fs::read(&lock).ok();
    if !(python.exists() && current) {
        eprintln!("making the worker's virtualenv (python/ci.sh --setup)");
        let status = Command::new("bash")
            .arg(root.join("python/ci.sh"))
            .args(["--setup", "requirements-test.lock"])
            .status()
            .expect("bash python/ci.sh");
        assert!(status.success(), "python/ci.sh --setup failed: {status}");
    }
    python
}

/// A copy of `tests/graphs` of the test's own (so a test can find its workers by path), and a
/// server serving it on `db` with `args` added.
pub struct GraphServer {
    pub server: Server,
    pub project: TempDir,
}

impl GraphServer {
    pub fn on(db: &TestDb, args: &[&str]) -> GraphServer {
        let project = TempDir::new("graphs");
        for file in ["langgraph.json", "graphs.py"] {
            std::fs::copy(workspace().join("tests/graphs").join(file), project.0.join(file))
                .unwrap();
        }
        GraphServer::serving(db, project, args)
    }

    /// A server of the project in `project` (its `langgraph.json`).
    pub fn serving(db: &TestDb, project: TempDir, args: &[&str]) -> GraphServer {
        let config = project.0.join("langgraph.json");
        let python = python();
        let mut all =
            vec!["--graphs", config.to_str().unwrap(), "--python", python.to_str().unwrap()];
        all.extend(args);
        let mut command = crate::harness::spindle();
        let url = crate::harness::database_url(db);
        command.args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url]).args(&all);
        // The workers' comings and goings are what these tests wait on.
        command.env("SPINDLE_LOG", "warn,engine::workers=info");
        let server = Server::spawn(&mut command);
        let this = GraphServer { server, project };
        this.wait_for_workers(1);
        this
    }

    /// The pids of this server's worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        let config = self.project.0.join("langgraph.json");
        let pattern = format!("spindle_worker serve {}", config.display());
        let out = Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Waits until workers have connected `n` times (the server runs graphs once one has).
    pub fn wait_for_workers(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let connected = self.server.log().matches("worker connected").count();
            if connected >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} workers did not connect\n--- server log ---\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = http(&self.server.addr, method, path, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.call(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {value}\n--- log ---\n{}", self.server.log());
        value
    }

    /// The `step` of each state in the thread's history, newest first, and the history.
    pub fn history_steps(&self, thread: &str) -> (Vec<i64>, Value) {
        let history =
            self.ok("POST", &format!("/threads/{thread}/history"), Some(&serde_json::json!({})));
        let steps = history
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["metadata"]["step"].as_i64().unwrap())
            .collect();
        (steps, history)
    }

    pub fn new_thread(&self) -> String {
        let thread = self.ok("POST", "/threads", Some(&serde_json::json!({})));
        thread["thread_id"].as_str().unwrap().to_owned()
    }

    /// A streamed run's frames, `(event, data)`, to its end.
    pub fn stream(&self, path: &str, body: &Value) -> Vec<(String, Value)> {
        let (status, text) = http(&self.server.addr, "POST", path, Some(body));
        assert_eq!(status, 200, "POST {path}: {text}");
        sse(&text)
    }

    pub fn open_stream(&self, path: &str, body: &Value) -> Stream {
        Stream::open(&self.server.addr, "POST", path, Some(body))
    }
}

/// One HTTP/1.0 request (so the answer is not chunked and ends with the connection).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = Stream::open(addr, method, path, body);
    let mut text = String::new();
    stream.reader.read_to_string(&mut text).unwrap();
    (stream.head, text)
}

/// An open response: its status read, its body read as it comes.
pub struct Stream {
    pub head: u16,
    reader: BufReader<TcpStream>,
    pub seen: String,
}

impl Stream {
    pub fn open(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Stream {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            tcp,
            "{method} {path} HTTP/1.0\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(tcp);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let head = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Stream { head, reader, seen: String::new() }
    }

    /// Reads until the body so far contains `needle` `times` times.
    pub fn until(&mut self, needle: &str, times: usize) {
        while self.seen.matches(needle).count() < times {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "the stream ended before {times}× {needle:?}:\n{}", self.seen);
            self.seen.push_str(&line);
        }
    }

    /// The rest, to the end; every frame.
    pub fn frames(mut self) -> Vec<(String, Value)> {
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest).unwrap();
        self.seen.push_str(&rest);
        sse(&self.seen)
    }
}

/// `(event, data)` of an SSE body.
pub fn sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|frame| {
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Some((event?, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}
