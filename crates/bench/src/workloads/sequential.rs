//! One client: create a thread, run `echo` with `runs/wait`, repeat.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Evidence;
use crate::http::Target;
use crate::report::Case;
use crate::stats::{Counts, Percentiles};
use crate::usage::Meter;

#[derive(Clone, Debug)]
pub struct Options {
    pub runs: usize,
    pub warmup: usize,
    /// Stops early after this long.
    pub max_time: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { runs: 500, warmup: 20, max_time: Duration::from_secs(60) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub runs_ok: usize,
    pub errors: Counts,
    pub error_examples: Vec<String>,
    pub elapsed_s: f64,
    /// Create thread + `runs/wait`, successful runs only.
    pub latency: Percentiles,
}

pub async fn measure(target: &Target, options: &Options) -> Outcome {
    for _ in 0..options.warmup {
        let _ = target.one_run().await;
    }
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(options.runs);
    let mut evidence = Evidence::default();
    for _ in 0..options.runs {
        if started.elapsed() > options.max_time {
            break;
        }
        let t = Instant::now();
        match target.one_run().await {
            Ok(()) => latencies.push(t.elapsed()),
            Err(failure) => evidence.add("", &failure),
        }
    }
    Outcome {
        runs_ok: latencies.len(),
        errors: evidence.counts,
        error_examples: evidence.examples,
        elapsed_s: started.elapsed().as_secs_f64(),
        latency: Percentiles::of(&mut latencies),
    }
}

pub async fn cases(target: &Target, options: &Options, server_pid: Option<u32>) -> Vec<Case> {
    let meter = Meter::start(server_pid);
    let outcome = measure(target, options).await;
    let usage = meter.finish();
    let failures =
        Evidence { counts: outcome.errors.clone(), examples: outcome.error_examples.clone() }
            .correctness();
    let summary = format!(
        "{} runs, {}, errors {}",
        outcome.runs_ok,
        outcome.latency.short(),
        crate::stats::show(&outcome.errors)
    );
    vec![Case::new("1 client", summary, &outcome, usage).with_failures(failures)]
}
