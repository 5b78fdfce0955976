//! `spindle-bench <workload> --base-url URL [options]`: see the library docs (`bench`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bench::workloads::{concurrent, llm, race, sequential, sessions, stream, websocket};
use bench::{Auth, Report, Target};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "spindle-bench", version, about = "Load tool for any Agent Protocol server")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct Common {
    /// The server, e.g. http://127.0.0.1:2031
    #[arg(long, global = true, env = "SPINDLE_BENCH_URL", default_value = "http://127.0.0.1:2031")]
    base_url: String,
    /// Sample this process (and its descendants): CPU seconds and peak RSS per workload.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// A name for the server in the report (e.g. "spindle sqlite").
    #[arg(long, global = true)]
    label: Option<String>,
    /// Authenticate with `x-api-key`.
    #[arg(long, global = true, env = "SPINDLE_BENCH_API_KEY")]
    api_key: Option<String>,
    /// Authenticate with `Authorization: Bearer`.
    #[arg(long, global = true, conflicts_with = "api_key")]
    bearer: Option<String>,
    /// Per-request timeout in seconds (a `runs/wait` included).
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Create thread + runs/wait on `echo`, one at a time: p50/p90/p99.
    Sequential {
        #[arg(long, default_value_t = 500)]
        runs: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
    },
    /// C clients loop create thread + runs/wait for T seconds: runs/s, percentiles, errors.
    Concurrent {
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Upper bound on runs per client count.
        #[arg(long, default_value_t = 1_000_000)]
        max_runs: usize,
        /// Runs on each thread before the next is created (1: every run is a thread's first).
        #[arg(long, default_value_t = 1)]
        runs_per_thread: usize,
    },
    /// One `synthetic` run of N custom events over SSE and over WebSocket.
    Stream {
        #[arg(long, default_value_t = 1000)]
        events: u64,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        #[arg(long)]
        no_websocket: bool,
    },
    /// K clients create-and-run on one new thread id (enqueue, reject): correctness.
    Race {
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, value_delimiter = ',', default_value = "enqueue,reject")]
        strategies: Vec<String>,
    },
    /// Many concurrent sessions (WebSocket + thread + run + state): sessions/s, failures.
    Sessions {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// One API key per line: one user each (default: the one credential given, or none).
        #[arg(long)]
        api_keys_file: Option<PathBuf>,
        #[arg(long)]
        no_websocket: bool,
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
    },
    /// Idle connections (server memory per connection) and fan-out (events/s, latency).
    Websocket {
        /// Idle connections to hold (0: skip).
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Subscribed connections for fan-out (0: skip).
        #[arg(long, default_value_t = 1000)]
        fanout: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 1)]
        runs_per_thread: usize,
        #[arg(long, default_value_t = 1000)]
        events: u64,
        /// Milliseconds between a run's events (0: as fast as the server commits them).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// `llm` runs against a model server streaming timed tokens (testkit's `timed N`):
    /// tokens/s through the server vs the model server's own rate, per-token latency and CPU.
    Llm {
        /// The model server, e.g. http://127.0.0.1:PORT/v1 (`spindle-testkit model`).
        #[arg(long)]
        model_url: String,
        #[arg(long, default_value_t = 1000)]
        tokens: usize,
        /// Tokens the model server writes in each HTTP chunk (1: a write per token).
        #[arg(long, default_value_t = 1)]
        tokens_per_chunk: usize,
        /// Microseconds the model server waits between writes (0: as fast as it can).
        #[arg(long, default_value_t = 0)]
        interval_us: u64,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Streams in each concurrent phase (at least --concurrency).
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Runs of the one-run-alone case.
        #[arg(long, default_value_t = 5)]
        alone: usize,
        /// The model a run names in its context.
        #[arg(long, default_value = "bench")]
        model: String,
    },
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Sequential { .. } => "sequential",
            Workload::Concurrent { .. } => "concurrent",
            Workload::Stream { .. } => "stream",
            Workload::Race { .. } => "race",
            Workload::Sessions { .. } => "sessions",
            Workload::Websocket { .. } => "websocket",
            Workload::Llm { .. } => "llm",
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let result = runtime.context("start the runtime").and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `Ok(false)` when a correctness check failed.
async fn run(cli: Cli) -> Result<bool> {
    let common = &cli.common;
    let auth = match (&common.api_key, &common.bearer) {
        (Some(key), _) => Auth::ApiKey(key.clone()),
        (None, Some(token)) => Auth::Bearer(token.clone()),
        (None, None) => Auth::None,
    };
    let target = Target::new(&common.base_url, auth, Duration::from_secs(common.timeout))?;
    target.check_reachable().await?;
    let pid = common.server_pid;
    let mut report = Report::new(cli.workload.name(), target.base_url(), common.label.clone(), pid);
    report.cases = match cli.workload {
        Workload::Sequential { runs, warmup, max_seconds } => {
            let options =
                sequential::Options { runs, warmup, max_time: Duration::from_secs(max_seconds) };
            sequential::cases(&target, &options, pid).await
        }
        Workload::Concurrent { clients, seconds, max_runs, runs_per_thread } => {
            let duration = Duration::from_secs(seconds);
            let options = concurrent::Options { clients, duration, max_runs, runs_per_thread };
            concurrent::cases(&target, &options, pid).await
        }
        Workload::Stream { events, repeat, no_websocket } => {
            let options = stream::Options { events, repeat, websocket: !no_websocket };
            stream::cases(&target, &options, pid).await
        }
        Workload::Race { clients, strategies } => {
            race::cases(&target, &race::Options { clients, strategies }, pid).await
        }
        Workload::Sessions { sessions, concurrency, api_keys_file, no_websocket, max_seconds } => {
            let users = match api_keys_file {
                None => Vec::new(),
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|key| Auth::ApiKey(key.to_owned()))
                    .collect(),
            };
            let options = sessions::Options {
                sessions,
                concurrency,
                users,
                websocket: !no_websocket,
                max_time: Duration::from_secs(max_seconds),
            };
            sessions::cases(&target, &options, pid).await
        }
        Workload::Websocket {
            idle,
            fanout,
            threads,
            runs_per_thread,
            events,
            delay_ms,
            connect_concurrency,
            max_seconds,
        } => {
            let options = websocket::Options {
                idle,
                fanout,
                threads,
                runs_per_thread,
                events,
                delay_ms,
                connect_concurrency,
                max_time: Duration::from_secs(max_seconds),
            };
            websocket::cases(&target, &options, pid).await
        }
        Workload::Llm {
            model_url,
            tokens,
            tokens_per_chunk,
            interval_us,
            concurrency,
            runs,
            alone,
            model,
        } => {
            let timeout = Duration::from_secs(common.timeout);
            let model_target = Target::new(&model_url, Auth::None, timeout)?;
            let options = llm::Options {
                tokens,
                tokens_per_chunk,
                interval: Duration::from_micros(interval_us),
                concurrency,
                runs,
                alone,
                model,
                ..Default::default()
            };
            llm::cases(&target, &model_target, &options, pid).await
        }
    };
    print!("{}", report.table());
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    Ok(!report.failed())
}
