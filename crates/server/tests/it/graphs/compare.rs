//! Spindle against LangGraph's own dev server, on the same users' graphs: `langgraph dev`
//! (langgraph-api, in-memory runtime, pinned by `bench/peers/langgraph/setup.sh` in
//! `target/peer-venv`) and `spindle serve --graphs` on one copy of `tests/graphs`; the script
//! `tests/sdk/graphs_compare.py` (the official Python SDK) runs the same flows on each and prints
//! a normalized transcript; the two must be equal but for the differences of [`ALLOWED`], each
//! with its reason (docs/graphs-vs-langgraph.md tells them at length).
//!
//! Both transcripts are written to `target/tmp/graphs-compare/{dev,spindle}.json`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use store::Backend;
use store::testing::TestDb;

use super::{GraphServer, python, workspace};

/// Which side a difference may have the leaf on.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// Both have the leaf, with other values; or either lacks it.
    Any,
    /// Only Spindle has the leaf.
    Spindle,
    /// Only LangGraph's dev server has the leaf.
    Dev,
    /// Only Spindle has the leaf, and it is this JSON.
    SpindleIs(&'static str),
}

/// The differences between LangGraph's dev server (`dev`) and Spindle that this test accepts:
/// `(path, side, reason)`; a path is that of a leaf of the transcript, `*` matching any
/// characters. Every other difference fails the test. docs/graphs-vs-langgraph.md tells each.
const ALLOWED: &[(&str, Side, &str)] = &[
    (
        "*state*.checkpoint_id",
        Side::Dev,
        "get_state: dev repeats checkpoint.checkpoint_id as a top-level checkpoint_id; Spindle does not",
    ),
    (
        "*state*.parent_checkpoint_id",
        Side::Dev,
        "get_state: dev repeats parent_checkpoint.checkpoint_id at the top level; Spindle does not",
    ),
    (
        "*.checkpoint_map",
        Side::Spindle,
        "Spindle's checkpoint objects have checkpoint_map: null; dev's do not",
    ),
    ("*.metadata.created_by", Side::Dev, "checkpoint metadata: dev adds created_by \"system\""),
    (
        "*.metadata.langgraph_auth_user_id",
        Side::Dev,
        "checkpoint metadata: dev adds langgraph_auth_user_id \"\"",
    ),
    ("*.metadata.user_id", Side::Dev, "checkpoint metadata: dev adds user_id \"\""),
    ("*.metadata.thread_id", Side::Dev, "checkpoint metadata: dev adds thread_id"),
    (
        "stream.*messages-tuple[*][1][1].created_by",
        Side::Dev,
        "messages events' metadata: dev's has created_by \"system\"",
    ),
    (
        "chat.runs[*].metadata*",
        Side::Any,
        "a run's metadata: dev's has assistant_id, graph_id, created_by; Spindle's is {}",
    ),
    (
        "*.__interrupt__[*].response_schema",
        Side::Dev,
        "an interrupt: dev's has response_schema: null",
    ),
    (
        "hitl.thread_between.interrupts.*",
        Side::Any,
        "thread.interrupts: dev keys them by the task id, Spindle by the checkpoint id",
    ),
    (
        "*[0][1].thread_id",
        Side::Spindle,
        "the metadata event: Spindle's has thread_id besides run_id and attempt",
    ),
    (
        "stream.messages-tuple[*][1][1].thread_id",
        Side::Any,
        "the thread_id of Spindle's metadata event comes first, so the threads' numbering shifts",
    ),
    (
        "*][0]",
        Side::SpindleIs("\"end\""),
        "streams: Spindle ends each with an `end` event (data null); dev sends none",
    ),
    ("*][1]", Side::SpindleIs("null"), "streams: the data of Spindle's `end` event"),
    ("chat.thread_created.values", Side::Any, "a new thread's values: dev null, Spindle {}"),
    ("chat.thread*.context", Side::Spindle, "a thread: Spindle adds context {}"),
    (
        "chat.thread_created.interrupts",
        Side::Spindle,
        "a new thread: Spindle has interrupts {}; dev adds it after a run",
    ),
    (
        "chat.thread.config*",
        Side::Any,
        "a thread's config after a run: dev {configurable: {}}, Spindle {}",
    ),
    ("chat.thread.error", Side::Dev, "a thread: dev has error: null; Spindle has no error key"),
    (
        "assistants.search_all_graphs[*",
        Side::Any,
        "assistants.search: Spindle lists its built-in agents (echo, llm, synthetic) besides the user's graphs",
    ),
    (
        "assistants.default_assistant_ids.*",
        Side::Spindle,
        "the built-in agents' assistants (echo, llm, synthetic)",
    ),
    (
        "assistants.subgraphs_nested*",
        Side::Any,
        "get_subgraphs(recurse) of nested: dev gives outer's schemas; Spindle {}",
    ),
];

/// Bounds `langgraph dev`'s start (it imports the API server and every graph first).
const DEV_START: Duration = Duration::from_secs(60);
/// Bounds one run of the script against one server.
const SCRIPT: Duration = Duration::from_secs(90);

#[test]
fn spindle_matches_langgraph_dev() {
    let started = Instant::now();
    let root = workspace();
    let status = Command::new("bash")
        .arg(root.join("bench/peers/langgraph/setup.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("bash bench/peers/langgraph/setup.sh");
    assert!(status.success(), "bench/peers/langgraph/setup.sh failed: {status}");
    let python = python();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let Some(db) = runtime.block_on(TestDb::new(Backend::Sqlite)) else { return };
    let spindle = GraphServer::on(&db, &[]);
    // LangGraph's dev server on the same copy of tests/graphs.
    let dev = DevServer::start(&spindle.project.0);
    eprintln!("both servers up after {:?}", started.elapsed());

    let script = root.join("tests/sdk/graphs_compare.py");
    let dev_url = dev.url();
    let spindle_url = spindle.server.url();
    let (dev_out, spindle_out) = std::thread::scope(|s| {
        let d = s.spawn(|| run_script(&python, &script, &dev_url));
        let p = s.spawn(|| run_script(&python, &script, &spindle_url));
        (d.join().unwrap(), p.join().unwrap())
    });
    eprintln!("scripts done after {:?}", started.elapsed());

    let out_dir = root.join("target/tmp/graphs-compare");
    let _ = std::fs::create_dir_all(&out_dir);
    let _ = std::fs::write(out_dir.join("dev.json"), &dev_out.stdout);
    let _ = std::fs::write(out_dir.join("spindle.json"), &spindle_out.stdout);

    let parse = |out: &ScriptOutput, who: &str, log: &str| -> Value {
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the script's transcript of {who} is not JSON ({e}); status {}\n--- stdout ---\n{}\n\
                 --- stderr ---\n{}\n--- {who}'s log ---\n{log}",
                out.status, out.stdout, out.stderr
            )
        })
    };
    let dev_json = parse(&dev_out, "langgraph dev", &dev.log());
    let spindle_json = parse(&spindle_out, "spindle", &spindle.server.log());

    let diffs = differences(&dev_json, &spindle_json);
    let mut used = vec![0usize; ALLOWED.len()];
    let mut unexplained = Vec::new();
    for d in &diffs {
        let side = match (&d.dev, &d.spindle) {
            (None, _) => Side::Spindle,
            (_, None) => Side::Dev,
            _ => Side::Any,
        };
        let allows = |(pattern, only, _): &(&str, Side, &str)| {
            let fits = match only {
                Side::Any => true,
                Side::SpindleIs(json) => {
                    side == Side::Spindle
                        && d.spindle.as_ref().map(Value::to_string).as_deref() == Some(*json)
                }
                other => *other == side,
            };
            fits && glob(pattern, &d.path)
        };
        match ALLOWED.iter().position(allows) {
            Some(i) => used[i] += 1,
            None => unexplained.push(d),
        }
    }
    for ((pattern, _, reason), n) in ALLOWED.iter().zip(&used) {
        eprintln!("allowed: {n:>3} × {pattern}  ({reason})");
    }
    let flows_ok = dev_out.stderr.contains(" passed, 0 failed");
    eprintln!(
        "{} differences, {} allowed, {} not; {:?} in all",
        diffs.len(),
        diffs.len() - unexplained.len(),
        unexplained.len(),
        started.elapsed()
    );
    if !unexplained.is_empty() || !flows_ok {
        let shown: Vec<String> = unexplained.iter().take(200).map(|d| d.to_string()).collect();
        panic!(
            "Spindle's transcript differs from langgraph dev's ({} unexplained differences; \
             `-` dev, `+` spindle; transcripts in {}):\n{}\n--- dev script stderr ---\n{}\n\
             --- spindle script stderr ---\n{}",
            unexplained.len(),
            out_dir.display(),
            shown.join("\n"),
            dev_out.stderr,
            spindle_out.stderr,
        );
    }
    drop(dev);
    drop(spindle);
    runtime.block_on(async move { drop(db) });
}

/// `langgraph dev` in its own process group, stopped (the group) when dropped.
struct DevServer {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl DevServer {
    fn start(project: &Path) -> DevServer {
        let root = workspace();
        let langgraph = root.join("target/peer-venv/bin/langgraph");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let _ = std::fs::remove_dir_all(project.join(".langgraph_api"));
        // The same graphs; `langgraph dev` wants `dependencies` too ("." is the project).
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(project.join("langgraph.json")).unwrap())
                .unwrap();
        config["dependencies"] = serde_json::json!(["."]);
        std::fs::write(project.join("langgraph-dev.json"), config.to_string()).unwrap();
        let log = project.join("langgraph-dev.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&langgraph)
            .args(["dev", "--config", "langgraph-dev.json", "--no-browser", "--no-reload"])
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .current_dir(project)
            .env("LANGSMITH_TRACING", "false")
            .env("LANGCHAIN_TRACING_V2", "false")
            .env("LANGGRAPH_CLI_NO_ANALYTICS", "1")
            .env_remove("LANGSMITH_API_KEY")
            .env_remove("LANGCHAIN_API_KEY")
            .env_remove("LANGGRAPH_API_KEY")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", langgraph.display()));
        let mut dev = DevServer { child, addr, log };
        let deadline = Instant::now() + DEV_START;
        loop {
            if get_status(&addr, "/ok") == Some(200) {
                return dev;
            }
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!("langgraph dev exited ({status}) before answering:\n{}", dev.log());
            }
            assert!(
                Instant::now() < deadline,
                "langgraph dev did not answer GET /ok in {DEV_START:?}:\n{}",
                dev.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group is left (the server, or processes it started).
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

/// The status of `GET path`, or `None` if nothing answers.
fn get_status(addr: &SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect_timeout(addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = tcp.read_to_string(&mut text);
    text.get(9..12)?.parse().ok()
}

struct ScriptOutput {
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs the script against `url`, killed if it outlasts [`SCRIPT`].
fn run_script(python: &Path, script: &Path, url: &str) -> ScriptOutput {
    let dir = store::testing::TempDir::new("graphs-compare");
    let (out, err) = (dir.0.join("stdout"), dir.0.join("stderr"));
    let mut child = Command::new(python)
        .arg(script)
        .arg(url)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("LANGGRAPH_API_KEY")
        .env_remove("LANGSMITH_API_KEY")
        .env_remove("LANGCHAIN_API_KEY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python.display(), script.display()));
    let deadline = Instant::now() + SCRIPT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.to_string();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {SCRIPT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ScriptOutput {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// One leaf that differs: its path, dev's value and Spindle's (`None`: absent).
struct Difference {
    path: String,
    dev: Option<Value>,
    spindle: Option<Value>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or("(absent)".to_owned(), Value::to_string);
        write!(f, "{}\n  - {}\n  + {}", self.path, show(&self.dev), show(&self.spindle))
    }
}

/// The leaves of `value` by path (`a.b[0].c`); an empty object or list is a leaf.
fn leaves(value: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                leaves(v, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{path}[{i}]"), out);
            }
        }
        _ => out.push((path, value.clone())),
    }
}

fn differences(dev: &Value, spindle: &Value) -> Vec<Difference> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    leaves(dev, String::new(), &mut a);
    leaves(spindle, String::new(), &mut b);
    let b_map: std::collections::BTreeMap<_, _> = b.iter().cloned().collect();
    let a_map: std::collections::BTreeMap<_, _> = a.iter().cloned().collect();
    let mut out = Vec::new();
    for (path, value) in &a {
        match b_map.get(path) {
            Some(other) if other == value => {}
            other => out.push(Difference {
                path: path.clone(),
                dev: Some(value.clone()),
                spindle: other.cloned(),
            }),
        }
    }
    for (path, value) in &b {
        if !a_map.contains_key(path) {
            out.push(Difference { path: path.clone(), dev: None, spindle: Some(value.clone()) });
        }
    }
    out
}

/// `pattern` matches all of `text`; `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}
