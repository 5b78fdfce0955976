//! The WebSocket channel under load.
//!
//! - **idle**: open N connections (this process's open-file limit is raised to its hard
//!   limit), wait for every `welcome`, and report the server's resident memory before and
//!   after, per connection (needs `--server-pid`). A sample of connections must still answer
//!   `ping` at the end. Spindle limits connections per user (`serve
//!   --ws-max-connections-per-user`, default 100): pass a large value for this workload.
//! - **fan-out**: C connections subscribed to T threads (round-robin), R `synthetic` runs of N
//!   custom events started on each thread over HTTP; every connection reads until it has seen
//!   every run of its thread end. Reports delivered events/s (all connections) and
//!   commit→receive latency: the client's receive time minus the event's `created_at` (the
//!   time the server stored it; same machine, same clock).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use super::{Evidence, thousands};
use crate::http::Target;
use crate::report::Case;
use crate::stats::{Counts, Percentiles, show};
use crate::usage::{Meter, process_tree, raise_nofile_limit, tree_cpu_and_rss};
use crate::ws::{WsConn, WsError};

#[derive(Clone, Debug)]
pub struct Options {
    /// Idle connections to hold (0 skips the idle case).
    pub idle: usize,
    /// Connections subscribed in the fan-out case (0 skips it).
    pub fanout: usize,
    pub threads: usize,
    pub runs_per_thread: usize,
    pub events: u64,
    /// Pause between a run's events (the `synthetic` agent's `delay_ms`): paces the fan-out to
    /// measure latency below the throughput ceiling.
    pub delay_ms: u64,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    pub max_time: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            idle: 10_000,
            fanout: 1000,
            threads: 1,
            runs_per_thread: 1,
            events: 1000,
            delay_ms: 0,
            connect_concurrency: 128,
            max_time: Duration::from_secs(120),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleOutcome {
    pub requested: usize,
    pub opened: usize,
    pub failures: Counts,
    pub failure_examples: Vec<String>,
    pub connect_s: f64,
    pub nofile_limit: u64,
    pub server_rss_before_mb: Option<f64>,
    pub server_rss_after_mb: Option<f64>,
    pub server_kib_per_connection: Option<f64>,
    pub pings_answered: usize,
    pub pings_sent: usize,
}

/// Opens `n` connections, `concurrency` at a time.
async fn open_many(
    target: &Target,
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> (Vec<WsConn>, Evidence) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (target, gate) = (target.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(Err(WsError::Timeout));
                }
                Some(WsConn::connect(&target, left.min(Duration::from_secs(30))).await)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(n);
    let mut evidence = Evidence::default();
    for task in tasks {
        match task.await {
            Ok(Some(Ok(conn))) => conns.push(conn),
            Ok(Some(Err(e))) => evidence.add_key(e.key(), e.to_string()),
            _ => evidence.add_key("task".into(), "connection task ended".into()),
        }
    }
    (conns, evidence)
}

fn server_rss_mb(server_pid: Option<u32>) -> Option<f64> {
    let pid = server_pid?;
    Some(tree_cpu_and_rss(&process_tree(pid)).1 as f64 / 1024.0)
}

pub async fn idle(target: &Target, options: &Options, server_pid: Option<u32>) -> IdleOutcome {
    let nofile_limit = raise_nofile_limit();
    let before = server_rss_mb(server_pid);
    let started = Instant::now();
    let (mut conns, evidence) =
        open_many(target, options.idle, options.connect_concurrency, started + options.max_time)
            .await;
    let connect_s = started.elapsed().as_secs_f64();
    // Let the server finish whatever accepting left behind before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server_rss_mb(server_pid);
    let step = (conns.len() / 100).max(1);
    let mut pings_sent = 0;
    let mut pings_answered = 0;
    for conn in conns.iter_mut().step_by(step) {
        pings_sent += 1;
        let ping = conn.request(json!({"type": "ping"}), "idle-ping", "pong", |_| {});
        if let Ok(Ok(pong)) = tokio::time::timeout(Duration::from_secs(10), ping).await
            && pong["type"] == "pong"
        {
            pings_answered += 1;
        }
    }
    let opened = conns.len();
    for conn in conns {
        conn.close().await;
    }
    IdleOutcome {
        requested: options.idle,
        opened,
        failures: evidence.counts,
        failure_examples: evidence.examples,
        connect_s,
        nofile_limit,
        server_rss_before_mb: before,
        server_rss_after_mb: after,
        server_kib_per_connection: match (before, after) {
            (Some(b), Some(a)) if opened > 0 => Some((a - b) * 1024.0 / opened as f64),
            _ => None,
        },
        pings_answered,
        pings_sent,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FanoutOutcome {
    pub connections: usize,
    pub subscribed: usize,
    pub threads: usize,
    pub runs: usize,
    pub events_per_run: u64,
    /// Event frames received, all connections.
    pub delivered: u64,
    /// Event frames every connection should have received (its thread's runs × events each).
    pub expected_at_least: u64,
    pub delivered_per_s: f64,
    pub elapsed_s: f64,
    pub commit_to_receive: Percentiles,
    pub connections_incomplete: usize,
    pub failures: Counts,
    pub failure_examples: Vec<String>,
}

#[derive(Deserialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind_of_frame: &'a str,
    kind: Option<&'a str>,
    created_at: Option<&'a str>,
}

pub async fn fanout(target: &Target, options: &Options) -> Result<FanoutOutcome, String> {
    raise_nofile_limit();
    let deadline = Instant::now() + options.max_time;
    let mut threads = Vec::new();
    for _ in 0..options.threads.max(1) {
        threads.push(target.create_thread().await.map_err(|e| format!("create thread: {e}"))?);
    }
    let (mut conns, mut evidence) =
        open_many(target, options.fanout, options.connect_concurrency, deadline).await;
    if let Some(example) = evidence.examples.first()
        && conns.is_empty()
    {
        if example.starts_with("upgrade-") {
            return Err(example.clone());
        }
        return Err(format!("no connection opened: {example}"));
    }
    // Subscribe every connection (live from now).
    let mut subscribed = Vec::new();
    for (i, mut conn) in conns.drain(..).enumerate() {
        let thread = threads[i % threads.len()].clone();
        let frame = json!({"type": "subscribe", "thread_id": thread});
        match conn.request(frame, "sub", "subscribed", |_| {}).await {
            Ok(_) => subscribed.push((conn, thread)),
            Err(e) => evidence.add_key(format!("subscribe:{}", e.key()), e.to_string()),
        }
    }
    let n_subscribed = subscribed.len();
    let runs_per_thread = options.runs_per_thread.max(1);
    let started = Instant::now();
    let readers: Vec<_> = subscribed
        .into_iter()
        .map(|(mut conn, _thread)| {
            tokio::spawn(async move {
                let mut latencies: Vec<u64> = Vec::new();
                let mut events = 0u64;
                let mut ended = 0;
                let mut last = Instant::now();
                let mut error = None;
                while ended < runs_per_thread {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let text = match tokio::time::timeout(left, conn.next_text()).await {
                        Ok(Ok(text)) => text,
                        Ok(Err(e)) => {
                            error = Some(e);
                            break;
                        }
                        Err(_) => {
                            error = Some(WsError::Timeout);
                            break;
                        }
                    };
                    let now = chrono::Utc::now();
                    let Ok(frame) = serde_json::from_str::<EventFrame<'_>>(&text) else { continue };
                    if frame.kind_of_frame != "event" {
                        continue;
                    }
                    events += 1;
                    last = Instant::now();
                    if let Some(at) =
                        frame.created_at.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    {
                        let micros =
                            (now - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0);
                        latencies.push(micros.max(0) as u64);
                    }
                    if matches!(frame.kind, Some("agent_completed" | "run_error" | "run_cancelled"))
                    {
                        ended += 1;
                    }
                }
                conn.close().await;
                (events, latencies, last, ended >= runs_per_thread, error)
            })
        })
        .collect();
    // Start the runs (HTTP, background; each thread's runs queue behind one another).
    let body = json!({
        "assistant_id": "synthetic",
        "input": {"messages": [{"role": "human", "content": "hi"}], "n": options.events, "mode": "custom", "delay_ms": options.delay_ms},
        "multitask_strategy": "enqueue",
    });
    for thread in &threads {
        for _ in 0..runs_per_thread {
            if let Err(e) =
                target.post(&format!("/threads/{thread}/runs"), &body).await.and_then(|r| r.json())
            {
                evidence.add("start-run", &e);
            }
        }
    }
    let mut delivered = 0;
    let mut latencies = Vec::new();
    let mut last = started;
    let mut incomplete = 0;
    for reader in readers {
        match reader.await {
            Ok((events, mine, at, complete, error)) => {
                delivered += events;
                latencies.extend(mine);
                last = last.max(at);
                if !complete {
                    incomplete += 1;
                }
                if let Some(e) = error {
                    evidence.add_key(format!("read:{}", e.key()), e.to_string());
                }
            }
            Err(e) => evidence.add_key("task".into(), e.to_string()),
        }
    }
    let elapsed = (last - started).as_secs_f64().max(1e-6);
    Ok(FanoutOutcome {
        connections: options.fanout,
        subscribed: n_subscribed,
        threads: threads.len(),
        runs: threads.len() * runs_per_thread,
        events_per_run: options.events,
        delivered,
        expected_at_least: n_subscribed as u64 * runs_per_thread as u64 * options.events,
        delivered_per_s: delivered as f64 / elapsed,
        elapsed_s: elapsed,
        commit_to_receive: Percentiles::of_micros(latencies),
        connections_incomplete: incomplete,
        failures: evidence.counts,
        failure_examples: evidence.examples,
    })
}

pub async fn cases(target: &Target, options: &Options, server_pid: Option<u32>) -> Vec<Case> {
    let mut cases = Vec::new();
    if options.idle > 0 {
        let name = format!("{} idle connections", thousands(options.idle as f64));
        let meter = Meter::start(server_pid);
        let outcome = idle(target, options, server_pid).await;
        let usage = meter.finish();
        if outcome.opened == 0
            && let Some(why) =
                outcome.failure_examples.first().filter(|e| e.starts_with("upgrade-"))
        {
            cases.push(Case::skipped(name, why.split_once(": ").map_or(why.as_str(), |w| w.1)));
        } else {
            let per = outcome
                .server_kib_per_connection
                .map_or("? (needs --server-pid)".into(), |k| format!("{k:.1} KiB"));
            let summary = format!(
                "{} of {} open in {:.1} s; server RSS {:.0} → {:.0} MB, {per} per connection; pings {}/{}; failures {}",
                outcome.opened,
                outcome.requested,
                outcome.connect_s,
                outcome.server_rss_before_mb.unwrap_or(0.0),
                outcome.server_rss_after_mb.unwrap_or(0.0),
                outcome.pings_answered,
                outcome.pings_sent,
                show(&outcome.failures),
            );
            let mut failures = Vec::new();
            if outcome.pings_answered < outcome.pings_sent {
                failures.push(format!(
                    "{} of {} idle connections did not answer ping",
                    outcome.pings_sent - outcome.pings_answered,
                    outcome.pings_sent
                ));
            }
            cases.push(Case::new(name, summary, &outcome, usage).with_failures(failures));
        }
    }
    if options.fanout > 0 {
        let name = format!(
            "fan-out: {} connections, {} thread(s), {} events/run",
            thousands(options.fanout as f64),
            options.threads,
            thousands(options.events as f64)
        );
        let meter = Meter::start(server_pid);
        match fanout(target, options).await {
            Err(why) => {
                let why = why
                    .split_once(": ")
                    .filter(|_| why.starts_with("upgrade-"))
                    .map_or(why.as_str(), |w| w.1);
                cases.push(Case::skipped(name, why))
            }
            Ok(outcome) => {
                let usage = meter.finish();
                let summary = format!(
                    "{} events delivered ({} expected at least) in {:.2} s: {} events/s; commit→receive p50 {:.2} ms, p99 {:.2} ms; failures {}",
                    thousands(outcome.delivered as f64),
                    thousands(outcome.expected_at_least as f64),
                    outcome.elapsed_s,
                    thousands(outcome.delivered_per_s),
                    outcome.commit_to_receive.p50_ms,
                    outcome.commit_to_receive.p99_ms,
                    show(&outcome.failures),
                );
                let mut failures = Vec::new();
                if outcome.connections_incomplete > 0 {
                    failures.push(format!(
                        "{} of {} connections did not see every run end",
                        outcome.connections_incomplete, outcome.subscribed
                    ));
                }
                if outcome.delivered < outcome.expected_at_least {
                    failures.push(format!(
                        "lost events: {} delivered, at least {} expected",
                        outcome.delivered, outcome.expected_at_least
                    ));
                }
                cases.push(Case::new(name, summary, &outcome, usage).with_failures(failures));
            }
        }
    }
    cases
}
