//! Many sessions at once, as many users would open them: a WebSocket connection (when the
//! server has `/ws`), a new thread, an `echo` run with `runs/wait`, the thread's state read
//! back, a `ping` on the connection, and the connection closed.
//!
//! Users are the credentials given (`--api-keys-file`, one per line, sessions spread over them
//! round-robin); with none, every session is the one local user (`--auth local`, LangGraph's
//! dev server), which still exercises the request-context and id handling of concurrent
//! sessions. Checks: every step succeeds, the state holds exactly the 2 messages of this
//! session's run, and every connection of one credential is welcomed as the same user (and
//! different credentials as different users).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::{Evidence, thousands};
use crate::http::{Auth, Failure, Target};
use crate::report::Case;
use crate::stats::{Counts, Percentiles, show};
use crate::usage::Meter;
use crate::ws::{WsConn, WsError};

#[derive(Clone, Debug)]
pub struct Options {
    pub sessions: usize,
    pub concurrency: usize,
    /// One credential per user; empty: the target's own credential.
    pub users: Vec<Auth>,
    pub websocket: bool,
    pub max_time: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sessions: 1000,
            concurrency: 64,
            users: Vec::new(),
            websocket: true,
            max_time: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub sessions_ok: usize,
    pub sessions_failed: usize,
    pub users: usize,
    pub concurrency: usize,
    /// Whether sessions opened a WebSocket connection (else why not).
    pub websocket: Result<(), String>,
    pub failures_by_step: Counts,
    pub failure_examples: Vec<String>,
    pub elapsed_s: f64,
    pub sessions_per_s: f64,
    pub latency: Percentiles,
    /// Correctness: users seen with more than one id, or ids shared by users.
    pub identity_failures: Vec<String>,
}

struct Shared {
    next: AtomicUsize,
    /// Per credential index: the user ids its connections were welcomed as.
    seen: Mutex<BTreeMap<usize, Vec<String>>>,
}

async fn one_session(
    target: &Target,
    user: usize,
    websocket: bool,
    shared: &Shared,
) -> Result<(), (&'static str, String, String)> {
    let http = |f: Failure| (f.key(), f.to_string());
    let ws_err = |e: WsError| (e.key(), e.to_string());
    let mut conn = None;
    if websocket {
        let c = WsConn::connect(target, Duration::from_secs(30))
            .await
            .map_err(|e| ("ws-connect", e.key(), e.to_string()))?;
        if let Some(id) = c.welcome["user_id"].as_str() {
            let mut seen = shared.seen.lock().await;
            let ids = seen.entry(user).or_default();
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_owned());
            }
        }
        conn = Some(c);
    }
    let thread = target.create_thread().await.map_err(|f| {
        let (k, t) = http(f);
        ("create-thread", k, t)
    })?;
    target.echo_wait(&thread).await.map_err(|f| {
        let (k, t) = http(f);
        ("runs-wait", k, t)
    })?;
    let state =
        target.get(&format!("/threads/{thread}/state")).await.and_then(|r| r.json()).map_err(
            |f| {
                let (k, t) = http(f);
                ("state", k, t)
            },
        )?;
    let messages = state["values"]["messages"].as_array().map_or(0, Vec::len);
    if messages != 2 {
        return Err(("state", "bad-reply".into(), format!("{messages} messages, 2 expected")));
    }
    if let Some(mut c) = conn {
        c.request(json!({"type": "ping"}), "ping", "pong", |_| {}).await.map_err(|e| {
            let (k, t) = ws_err(e);
            ("ws-ping", k, t)
        })?;
        c.close().await;
    }
    Ok(())
}

pub async fn measure(target: &Target, options: &Options) -> Outcome {
    let users: Vec<Target> = if options.users.is_empty() {
        vec![target.clone()]
    } else {
        options.users.iter().map(|a| target.with_auth(a.clone())).collect()
    };
    // Does the server have /ws at all?
    let websocket = if options.websocket {
        match WsConn::connect(&users[0], Duration::from_secs(10)).await {
            Ok(conn) => {
                conn.close().await;
                Ok(())
            }
            Err(e @ WsError::Unsupported(_)) => Err(e.to_string()),
            Err(_) => Ok(()), // counted per session below
        }
    } else {
        Err("disabled (--no-websocket)".into())
    };
    let shared = Arc::new(Shared { next: AtomicUsize::new(0), seen: Mutex::new(BTreeMap::new()) });
    let started = Instant::now();
    let deadline = started + options.max_time;
    let users = Arc::new(users);
    let tasks: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let (users, shared) = (users.clone(), shared.clone());
            let (total, ws) = (options.sessions, websocket.is_ok());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut evidence = Evidence::default();
                loop {
                    let n = shared.next.fetch_add(1, Ordering::Relaxed);
                    if n >= total || Instant::now() > deadline {
                        break;
                    }
                    let user = n % users.len();
                    let t = Instant::now();
                    match one_session(&users[user], user, ws, &shared).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err((step, key, text)) => evidence.add_key(format!("{step}:{key}"), text),
                    }
                }
                (latencies, evidence)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut evidence = Evidence::default();
    for task in tasks {
        if let Ok((mine, theirs)) = task.await {
            latencies.extend(mine);
            evidence.merge(theirs);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut identity_failures = Vec::new();
    let seen = shared.seen.lock().await;
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    for (user, ids) in seen.iter() {
        if ids.len() > 1 {
            identity_failures
                .push(format!("credential #{user} was welcomed as {} users: {ids:?}", ids.len()));
        }
        for id in ids {
            if let Some(other) = owners.insert(id, *user)
                && other != *user
            {
                identity_failures
                    .push(format!("credentials #{other} and #{user} share user id {id}"));
            }
        }
    }
    let failed: u64 = evidence.counts.values().sum();
    Outcome {
        sessions_ok: latencies.len(),
        sessions_failed: failed as usize,
        users: users.len(),
        concurrency: options.concurrency,
        websocket,
        failures_by_step: evidence.counts,
        failure_examples: evidence.examples,
        elapsed_s: elapsed,
        sessions_per_s: latencies.len() as f64 / elapsed,
        latency: Percentiles::of(&mut latencies),
        identity_failures,
    }
}

pub async fn cases(target: &Target, options: &Options, server_pid: Option<u32>) -> Vec<Case> {
    let meter = Meter::start(server_pid);
    let outcome = measure(target, options).await;
    let usage = meter.finish();
    let channel = match &outcome.websocket {
        Ok(()) => "HTTP + WebSocket".to_owned(),
        Err(why) => format!("HTTP only (WebSocket {why})"),
    };
    let summary = format!(
        "{} sessions/s ({} ok, {} failed{}, {} users, {channel}), {}, failures {}",
        thousands(outcome.sessions_per_s),
        outcome.sessions_ok,
        outcome.sessions_failed,
        if outcome.sessions_ok + outcome.sessions_failed < options.sessions {
            let left = options.sessions - outcome.sessions_ok - outcome.sessions_failed;
            format!(", {left} not started: time bound")
        } else {
            String::new()
        },
        outcome.users,
        outcome.latency.short(),
        show(&outcome.failures_by_step),
    );
    let mut failures = Evidence {
        counts: outcome.failures_by_step.clone(),
        examples: outcome.failure_examples.clone(),
    }
    .correctness();
    failures.extend(outcome.identity_failures.clone());
    let name = format!("{} sessions, {} at once", options.sessions, options.concurrency);
    vec![Case::new(name, summary, &outcome, usage).with_failures(failures)]
}
