//! `spindle serve --graphs langgraph.json`: users' LangGraph graphs (#16). At start the graphs
//! are described by the interpreter that will run them (`python -m spindle_worker describe`),
//! so a file that does not load, or an interpreter without langgraph or spindle-worker, stops
//! the start with the reason; then `--workers` worker processes are spawned and supervised
//! (restarted with backoff when they exit; their stderr in this log with the worker's name).
//! Workers on other machines connect with `SPINDLE_WORKER_TOKEN` (`docs/workers.md`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use engine::GraphSpec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Users' graphs and the processes that run them.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// A LangGraph project's langgraph.json: its graphs are served as system assistants and run
    /// by Python workers (docs/langgraph-workers.md).
    #[arg(long = "graphs", env = "SPINDLE_GRAPHS", value_name = "LANGGRAPH_JSON")]
    pub graphs: Option<PathBuf>,
    /// The Python interpreter that runs the graphs: it must have langgraph and spindle-worker
    /// (`pip install ./python`) installed.
    #[arg(long, env = "SPINDLE_PYTHON", default_value = "python3", value_name = "PATH")]
    pub python: String,
    /// Worker processes this server starts (0: none, for workers started elsewhere with
    /// `spindle-worker serve --url ... ` and `SPINDLE_WORKER_TOKEN`).
    #[arg(long, env = "SPINDLE_WORKERS", default_value_t = 1)]
    pub workers: u32,
}

/// How long describing the graphs may take (importing langgraph, a graph's factory).
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(120);

/// The graphs of `langgraph.json`, described by `python`.
pub async fn describe(python: &str, config: &Path) -> Result<Vec<GraphSpec>, String> {
    let mut command = Command::new(python);
    command
        .args(["-m", "spindle_worker", "describe"])
        .arg(config)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DESCRIBE_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            format!(
                "--graphs {}: describing the graphs took over {} s",
                config.display(),
                DESCRIBE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run the Python interpreter `{python}` (--python): {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        if stderr.contains("No module named spindle_worker") {
            return Err(format!(
                "`{python}` cannot import spindle_worker: install it into that interpreter \
                 (pip install ./python from Spindle's repository), or name another with --python"
            ));
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        return Err(format!("--graphs {}: {line}", config.display()));
    }
    let document: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("--graphs: the worker's description is not JSON: {e}"))?;
    let graphs = GraphSpec::from_describe(&document)?;
    Ok(graphs)
}

/// Starts `count` workers for `config` connecting to `url`, each restarted when it exits.
pub fn spawn_workers(python: &str, config: &Path, count: u32, url: &str, token: &str) {
    for n in 1..=count {
        let worker = Worker {
            name: format!("worker-{n}"),
            python: python.to_owned(),
            config: config.to_owned(),
            url: url.to_owned(),
            token: token.to_owned(),
        };
        tokio::spawn(worker.supervise());
    }
}

struct Worker {
    name: String,
    python: String,
    config: PathBuf,
    url: String,
    token: String,
}

/// The first wait before a restart, doubled each time up to [`BACKOFF_MAX`], and reset once a
/// worker has run for [`HEALTHY`].
const BACKOFF: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HEALTHY: Duration = Duration::from_secs(60);

impl Worker {
    async fn supervise(self) {
        let mut backoff = BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            match self.run_once().await {
                Ok(status) => tracing::warn!(worker = %self.name, %status, "worker exited"),
                Err(e) => tracing::error!(worker = %self.name, error = %e, "cannot start a worker"),
            }
            if started.elapsed() >= HEALTHY {
                backoff = BACKOFF;
            }
            tracing::info!(worker = %self.name, after_ms = backoff.as_millis() as u64, "restarting the worker");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn run_once(&self) -> std::io::Result<std::process::ExitStatus> {
        let mut child = Command::new(&self.python)
            .args(["-m", "spindle_worker", "serve"])
            .arg(&self.config)
            .args(["--url", &self.url, "--name", &self.name])
            .env("SPINDLE_WORKER_TOKEN", &self.token)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        tracing::info!(worker = %self.name, pid = child.id(), "worker started");
        if let Some(stderr) = child.stderr.take() {
            let name = self.name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(worker = %name, "{line}");
                }
            });
        }
        child.wait().await
    }
}
