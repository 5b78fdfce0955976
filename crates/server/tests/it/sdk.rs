//! The official Python client, `langgraph-sdk` (pinned in `tests/sdk/requirements.txt`),
//! against the real `spindle` binary on SQLite and on PostgreSQL, with two users.
//!
//! Each test creates a fresh database, an API key for `alice` and one for `bob`, starts
//! `spindle serve --auth keys` on a free port and runs one script of `tests/sdk`, which prints
//! one `ok NAME` or `FAIL NAME: ...` line per check and exits 1 if any failed:
//! `sdk_check.py` (the API, call by call), `conversations.py` (issue #13: checkpoints,
//! forks, regenerate, edit, interrupts and runs racing on a thread, as chat UIs use them) and
//! `llm.py` (issue #15: an `llm` assistant with a model, an MCP tool and an approval, the
//! server pointed at testkit's model and MCP servers, which this test runs).
//!
//! Python: `SPINDLE_SDK_PYTHON` (an interpreter with langgraph-sdk installed), or else a
//! virtualenv made once in `target/sdk-venv` with `python3 -m venv` and `pip install -r
//! tests/sdk/requirements.txt` (PyPI must be reachable the first time). A missing Python or a
//! failed install fails the test: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use store::Backend;
use store::testing::TestDb;

use crate::harness::{Server, database_url, spindle};

/// The SDK package as pinned in the requirements file.
const SDK_PACKAGE: &str = "langgraph-sdk";

/// The workspace root: the folder holding `tests/sdk`.
fn workspace() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Guards the virtualenv: both tests of this binary may run at once.
static VENV: Mutex<()> = Mutex::new(());

fn show(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command to completion, failing the test with its output if it fails.
fn run(command: &mut Command, what: &str) -> Output {
    let output =
        command.output().unwrap_or_else(|e| panic!("{what}: could not run {command:?}: {e}"));
    assert!(output.status.success(), "{what} failed ({command:?}):\n{}", show(&output));
    output
}

/// The version of `langgraph-sdk` that `python` has, or `None` if it cannot import it.
fn installed_sdk_version(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import importlib.metadata, langgraph_sdk; print(importlib.metadata.version('langgraph-sdk'))",
        ])
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The version `tests/sdk/requirements.txt` pins.
fn pinned_sdk_version(requirements: &Path) -> String {
    let text = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(SDK_PACKAGE)?.trim().strip_prefix("=="))
        .map(|version| version.trim().to_owned())
        .next()
        .unwrap_or_else(|| {
            panic!("{} does not pin `{SDK_PACKAGE}==VERSION`", requirements.display())
        })
}

/// A Python interpreter with the pinned SDK: `SPINDLE_SDK_PYTHON`, or `target/sdk-venv`
/// (created or brought to the pinned version if needed).
fn python() -> PathBuf {
    let _guard = VENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = workspace();
    let requirements = root.join("tests/sdk/requirements.txt");
    let pinned = pinned_sdk_version(&requirements);

    if let Some(python) = std::env::var_os("SPINDLE_SDK_PYTHON") {
        let python = PathBuf::from(python);
        match installed_sdk_version(&python) {
            Some(version) if version == pinned => {}
            Some(version) => eprintln!(
                "warning: SPINDLE_SDK_PYTHON={} has {SDK_PACKAGE} {version}; the pin is {pinned}",
                python.display()
            ),
            None => panic!(
                "SPINDLE_SDK_PYTHON={} cannot `import langgraph_sdk`: install {SDK_PACKAGE}=={pinned} \
                 into it, or unset SPINDLE_SDK_PYTHON to use target/sdk-venv",
                python.display()
            ),
        }
        return python;
    }

    let venv = root.join("target/sdk-venv");
    let python = venv.join("bin/python");
    if installed_sdk_version(&python).as_deref() == Some(pinned.as_str()) {
        return python;
    }
    if !python.exists() {
        eprintln!("creating the SDK virtualenv in {}", venv.display());
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "creating the Python virtualenv for the SDK test (python3 -m venv; needs python3 with venv)",
        );
    }
    eprintln!("installing {} into {}", requirements.display(), venv.display());
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet", "-r"])
            .arg(&requirements),
        "installing the pinned langgraph-sdk from PyPI (pip install -r tests/sdk/requirements.txt)",
    );
    match installed_sdk_version(&python) {
        Some(version) if version == pinned => python,
        other => panic!(
            "after pip install, {} has {SDK_PACKAGE} {other:?}, expected {pinned}",
            python.display()
        ),
    }
}

/// `spindle keys create --user USER`: the key, alone on stdout.
fn create_key(database_url: &str, user: &str) -> String {
    let output = run(
        spindle().args(["keys", "create", "--user", user, "--database-url", database_url]),
        &format!("spindle keys create --user {user}"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 1, "keys create prints the key alone: {stdout:?}");
    let key = stdout.trim().to_owned();
    assert!(!key.is_empty(), "keys create printed an empty key");
    key
}

/// Runs `tests/sdk/{script}` against a fresh server on `backend` (`name` says which).
fn python_sdk_against(backend: Backend, name: &str, script: &str) {
    python_sdk_with(backend, name, script, false)
}

/// As [`python_sdk_against`]; with `models`, the server's `llm` agent talks to testkit's model
/// server (`--llm-base-url`) and MCP server (`--mcp math=...`), run by this test.
fn python_sdk_with(backend: Backend, name: &str, script: &str, models: bool) {
    // Python first: a missing interpreter or install fails before any database is made.
    let python = python();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the test database");
    runtime.block_on(async {
        let Some(db) = TestDb::new(backend).await else {
            eprintln!("{script} on {name}: skipped (SPINDLE_TEST_POSTGRES=skip)");
            return;
        };
        let url = database_url(&db);
        let alice = create_key(&url, "alice");
        let bob = create_key(&url, "bob");
        assert_ne!(alice, bob, "two users, two keys");

        let model = testkit::model::ModelServer::start().await;
        let mcp = testkit::mcp::McpServer::start().await;
        let (base_url, math) = (model.base_url(), format!("math={}", mcp.url()));
        let mut args = vec!["--auth", "keys"];
        if models {
            args.extend(["--llm-base-url", &base_url, "--mcp", &math]);
        }
        let server = Server::on(&db, &args);
        let root = workspace();
        let path = root.join("tests/sdk").join(script);
        let output = Command::new(&python)
            .arg(&path)
            .current_dir(&root)
            .env("SPINDLE_URL", server.url())
            .env("SPINDLE_KEY_ALICE", &alice)
            .env("SPINDLE_KEY_BOB", &bob)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // The clients are given their keys; never one from the environment.
            .env_remove("LANGGRAPH_API_KEY")
            .env_remove("LANGSMITH_API_KEY")
            .env_remove("LANGCHAIN_API_KEY")
            // Never the reference mode (for LangGraph's own server) against Spindle.
            .env_remove("SPINDLE_REFERENCE")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python.display(), path.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The script's last line is `N passed, M failed`.
        let summary = stdout
            .lines()
            .rev()
            .find(|l| {
                l.split_once(" passed, ").is_some_and(|(passed, failed)| {
                    passed.parse::<u32>().is_ok()
                        && failed.strip_suffix(" failed").is_some_and(|f| f.parse::<u32>().is_ok())
                })
            })
            .unwrap_or("no `N passed, M failed` line");
        let ok = output.status.success() && summary.ends_with(" passed, 0 failed");
        if ok {
            println!("--- {script} on {name} ({}) ---\n{stdout}{stderr}", server.url());
        }
        assert!(
            ok,
            "the Python SDK checks of {script} failed on {name}: {summary} ({})\n\
             --- {script} on {name} ({}), stdout ---\n{stdout}\
             --- {script} stderr ---\n{stderr}\
             --- server log ---\n{}",
            output.status,
            server.url(),
            server.log()
        );
        // Stop the server before the database it uses is dropped.
        drop(server);
        drop(db);
    });
}

#[test]
fn python_sdk_against_sqlite() {
    python_sdk_against(Backend::Sqlite, "sqlite", "sdk_check.py");
}

#[test]
fn python_sdk_against_postgres() {
    python_sdk_against(Backend::Postgres, "postgres", "sdk_check.py");
}

#[test]
fn conversations_against_sqlite() {
    python_sdk_against(Backend::Sqlite, "sqlite", "conversations.py");
}

#[test]
fn conversations_against_postgres() {
    python_sdk_against(Backend::Postgres, "postgres", "conversations.py");
}

#[test]
fn llm_against_sqlite() {
    python_sdk_with(Backend::Sqlite, "sqlite", "llm.py", true);
}

#[test]
fn llm_against_postgres() {
    python_sdk_with(Backend::Postgres, "postgres", "llm.py", true);
}
