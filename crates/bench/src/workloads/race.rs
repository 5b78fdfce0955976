//! K clients post `runs/wait` with `if_not_exists: "create"` on one new thread id at the same
//! moment, once with `multitask_strategy: "enqueue"` and once with `"reject"`, then check what
//! the server kept: one thread for the id, every accepted run recorded and successful, and two
//! messages (human + echo) in the final state per accepted run.
//!
//! Correctness failures: a duplicate thread (more than one search result for the id), any 5xx,
//! an accepted request whose run or messages are missing (or extra), a refused request under
//! `enqueue` (every request is valid), a status other than 2xx/409 under `reject`.

use std::time::Instant;

use ids::ThreadId;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use super::Evidence;
use crate::http::{Failure, Target, check_echo, echo_input};
use crate::report::Case;
use crate::stats::{Counts, Percentiles, count, show};
use crate::usage::Meter;

#[derive(Clone, Debug)]
pub struct Options {
    pub clients: usize,
    pub strategies: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { clients: 50, strategies: vec!["enqueue".into(), "reject".into()] }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub strategy: String,
    pub thread_id: String,
    pub clients: usize,
    /// Status codes of the K `runs/wait` requests (`io`, `timeout`, `bad-reply` for the rest).
    pub statuses: Counts,
    /// Requests answered 2xx with the echo reply.
    pub accepted: usize,
    /// `GET /threads/{id}`: status code.
    pub get_thread_status: Option<u16>,
    /// `POST /threads/search` with `ids: [id]`: results carrying that id.
    pub threads_found: Option<usize>,
    /// `GET /threads/{id}/runs?limit=1000`.
    pub runs_recorded: Option<usize>,
    pub run_statuses: Counts,
    /// `GET /threads/{id}/state` → `values.messages`.
    pub messages: Option<usize>,
    pub expected_messages: usize,
    pub latency: Percentiles,
    pub elapsed_s: f64,
    pub failures: Vec<String>,
    pub evidence: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

pub async fn measure(target: &Target, clients: usize, strategy: &str) -> Outcome {
    // The id is minted here, by the ids crate, so no server has seen it.
    let thread_id = ThreadId::new().to_string();
    let barrier = std::sync::Arc::new(Barrier::new(clients));
    let body = json!({
        "assistant_id": "echo",
        "input": echo_input(),
        "if_not_exists": "create",
        "multitask_strategy": strategy,
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (target, barrier, body) = (target.clone(), barrier.clone(), body.clone());
            let path = format!("/threads/{thread_id}/runs/wait");
            tokio::spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                let result = match target.post(&path, &body).await {
                    Ok(reply) => match reply.json() {
                        Ok(values) => check_echo(&values).map(|()| reply.status),
                        Err(failure) => Err(failure),
                    },
                    Err(failure) => Err(failure),
                };
                (result, t.elapsed())
            })
        })
        .collect();
    let mut statuses = Counts::new();
    let mut evidence = Evidence::default();
    let mut latencies = Vec::new();
    let mut accepted = 0;
    let mut unexpected = 0;
    for task in tasks {
        let (result, took) = match task.await {
            Ok(done) => done,
            Err(e) => (Err(Failure::Io(format!("client task: {e}"))), Default::default()),
        };
        match result {
            Ok(status) => {
                accepted += 1;
                latencies.push(took);
                count(&mut statuses, status.to_string());
            }
            Err(failure) => {
                let refused_ok = strategy == "reject" && failure.key() == "409";
                if !refused_ok {
                    unexpected += 1;
                    evidence.add("", &failure);
                }
                count(&mut statuses, failure.key());
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut outcome = Outcome {
        strategy: strategy.into(),
        thread_id: thread_id.clone(),
        clients,
        statuses,
        accepted,
        get_thread_status: None,
        threads_found: None,
        runs_recorded: None,
        run_statuses: Counts::new(),
        messages: None,
        expected_messages: 2 * accepted,
        latency: Percentiles::of(&mut latencies),
        elapsed_s,
        failures: Vec::new(),
        evidence: evidence.examples.clone(),
    };
    inspect(target, &mut outcome).await;

    let failures = &mut outcome.failures;
    let five_xx: u64 =
        outcome.statuses.iter().filter(|(k, _)| k.starts_with('5')).map(|(_, v)| v).sum();
    if five_xx > 0 {
        failures.push(format!(
            "{five_xx} of {clients} requests answered 5xx ({})",
            show(&outcome.statuses)
        ));
    }
    if unexpected as u64 > five_xx {
        let what = if strategy == "enqueue" {
            "valid requests were not served (enqueue accepts every run)"
        } else {
            "requests failed other than with 409"
        };
        failures.push(format!(
            "{} {what}: {}",
            unexpected as u64 - five_xx,
            show(&outcome.statuses)
        ));
    }
    if accepted == 0 {
        failures.push("no request was accepted".into());
    }
    match outcome.get_thread_status {
        Some(200) => {}
        other => failures.push(format!("GET /threads/{thread_id} answered {other:?}, not 200")),
    }
    match outcome.threads_found {
        Some(1) => {}
        Some(n) if n > 1 => {
            let detail = outcome.evidence.iter().find(|e| e.starts_with("POST /threads/search"));
            let detail = detail.map_or(String::new(), |d| format!(": {d}"));
            failures.push(format!("duplicate thread: {n} threads with id {thread_id}{detail}"))
        }
        other => {
            failures.push(format!("thread search found {other:?} threads with id {thread_id}"))
        }
    }
    match outcome.runs_recorded {
        Some(n) if n >= accepted => {}
        Some(n) => failures.push(format!("lost runs: {accepted} accepted, {n} recorded")),
        None => failures.push("could not list the thread's runs".into()),
    }
    let not_success: u64 =
        outcome.run_statuses.iter().filter(|(k, _)| k.as_str() != "success").map(|(_, v)| v).sum();
    if not_success > 0 {
        failures.push(format!("runs not successful: {}", show(&outcome.run_statuses)));
    }
    match outcome.messages {
        Some(n) if n == outcome.expected_messages => {}
        Some(n) if n < outcome.expected_messages => failures.push(format!(
            "lost messages: {n} in the final state, {} expected (2 per accepted run)",
            outcome.expected_messages
        )),
        Some(n) => failures.push(format!(
            "extra messages: {n} in the final state, {} expected (2 per accepted run)",
            outcome.expected_messages
        )),
        None => failures.push("could not read the thread's state".into()),
    }
    outcome
}

/// Reads back what the server kept for the thread.
async fn inspect(target: &Target, outcome: &mut Outcome) {
    let id = outcome.thread_id.clone();
    outcome.get_thread_status = match target.get(&format!("/threads/{id}")).await {
        Ok(reply) => Some(reply.status),
        Err(Failure::Status(status, _)) => Some(status),
        Err(_) => None,
    };
    let search = json!({"ids": [id], "limit": 1000});
    outcome.threads_found = match target
        .post("/threads/search", &search)
        .await
        .and_then(|r| r.json())
    {
        Ok(Value::Array(threads)) => {
            let same: Vec<&Value> =
                threads.iter().filter(|t| t["thread_id"] == id.as_str()).collect();
            if same.len() > 1 {
                let rows: Vec<String> = same
                    .iter()
                    .take(5)
                    .map(|t| format!("created_at {} status {}", t["created_at"], t["status"]))
                    .collect();
                let more = if same.len() > 5 { "; ..." } else { "" };
                outcome.evidence.push(format!(
                        "POST /threads/search {{\"ids\": [\"{id}\"]}} returned {} threads with that id: {}{more}",
                        same.len(),
                        rows.join("; "),
                    ));
            }
            Some(same.len())
        }
        Ok(other) => {
            outcome.evidence.push(format!("search: not a list: {other}"));
            None
        }
        Err(failure) => {
            outcome.evidence.push(format!("search: {failure}"));
            None
        }
    };
    match target.get(&format!("/threads/{id}/runs?limit=1000")).await.and_then(|r| r.json()) {
        Ok(Value::Array(runs)) => {
            outcome.runs_recorded = Some(runs.len());
            for run in &runs {
                count(&mut outcome.run_statuses, run["status"].as_str().unwrap_or("?"));
            }
        }
        Ok(other) => outcome.evidence.push(format!("runs: not a list: {other}")),
        Err(failure) => outcome.evidence.push(format!("runs: {failure}")),
    }
    match target.get(&format!("/threads/{id}/state")).await.and_then(|r| r.json()) {
        Ok(state) => outcome.messages = state["values"]["messages"].as_array().map(Vec::len),
        Err(failure) => outcome.evidence.push(format!("state: {failure}")),
    }
}

pub async fn cases(target: &Target, options: &Options, server_pid: Option<u32>) -> Vec<Case> {
    let mut cases = Vec::new();
    for strategy in &options.strategies {
        let meter = Meter::start(server_pid);
        let outcome = measure(target, options.clients, strategy).await;
        let usage = meter.finish();
        let summary = format!(
            "{} clients: statuses {}; threads {}; runs {}; messages {} of {} expected; {:.2} s",
            outcome.clients,
            show(&outcome.statuses),
            outcome.threads_found.map_or("?".into(), |n| n.to_string()),
            outcome.runs_recorded.map_or("?".into(), |n| n.to_string()),
            outcome.messages.map_or("?".into(), |n| n.to_string()),
            outcome.expected_messages,
            outcome.elapsed_s,
        );
        let failures = outcome.failures.clone();
        cases.push(Case::new(strategy.clone(), summary, &outcome, usage).with_failures(failures));
    }
    cases
}
