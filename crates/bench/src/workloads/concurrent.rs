//! C clients, each looping create thread + `runs/wait` on `echo` until the time is up (or the
//! run budget is spent); with `--runs-per-thread N`, N runs on each thread (a conversation of N
//! turns: only the first is a thread's first run).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Evidence, thousands};
use crate::http::Target;
use crate::report::Case;
use crate::stats::{Counts, Percentiles};
use crate::usage::Meter;

#[derive(Clone, Debug)]
pub struct Options {
    pub clients: Vec<usize>,
    pub duration: Duration,
    /// Upper bound on runs started per client count.
    pub max_runs: usize,
    /// Runs on each thread before the client creates the next.
    pub runs_per_thread: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clients: vec![16, 64, 256],
            duration: Duration::from_secs(5),
            max_runs: 1_000_000,
            runs_per_thread: 1,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub clients: usize,
    pub runs_ok: usize,
    pub errors: Counts,
    pub error_examples: Vec<String>,
    pub elapsed_s: f64,
    pub runs_per_s: f64,
    pub latency: Percentiles,
}

pub async fn measure(target: &Target, clients: usize, options: &Options) -> Outcome {
    let started = Instant::now();
    let deadline = started + options.duration;
    let budget = Arc::new(AtomicUsize::new(options.max_runs));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (target, budget) = (target.clone(), budget.clone());
            let per_thread = options.runs_per_thread.max(1);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut evidence = Evidence::default();
                let mut thread: Option<(String, usize)> = None;
                while Instant::now() < deadline
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                {
                    let t = Instant::now();
                    let run = async {
                        let (id, done) = match thread.take() {
                            Some((id, done)) if done < per_thread => (id, done),
                            _ => (target.create_thread().await?, 0),
                        };
                        target.echo_wait(&id).await?;
                        thread = Some((id, done + 1));
                        Ok::<(), crate::http::Failure>(())
                    };
                    match run.await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(failure) => evidence.add("", &failure),
                    }
                }
                (latencies, evidence)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut evidence = Evidence::default();
    for task in tasks {
        match task.await {
            Ok((mine, theirs)) => {
                latencies.extend(mine);
                evidence.merge(theirs);
            }
            Err(e) => evidence.add_key("panic".into(), e.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Outcome {
        clients,
        runs_ok: latencies.len(),
        errors: evidence.counts,
        error_examples: evidence.examples,
        elapsed_s: elapsed,
        runs_per_s: latencies.len() as f64 / elapsed,
        latency: Percentiles::of(&mut latencies),
    }
}

pub async fn cases(target: &Target, options: &Options, server_pid: Option<u32>) -> Vec<Case> {
    let mut cases = Vec::new();
    for &clients in &options.clients {
        let meter = Meter::start(server_pid);
        let outcome = measure(target, clients, options).await;
        let usage = meter.finish();
        let failures =
            Evidence { counts: outcome.errors.clone(), examples: outcome.error_examples.clone() }
                .correctness();
        let summary = format!(
            "{} runs/s ({} runs in {:.1} s), {}, errors {}",
            thousands(outcome.runs_per_s),
            thousands(outcome.runs_ok as f64),
            outcome.elapsed_s,
            outcome.latency.short(),
            crate::stats::show(&outcome.errors)
        );
        cases.push(
            Case::new(format!("{clients} clients"), summary, &outcome, usage)
                .with_failures(failures),
        );
    }
    cases
}
