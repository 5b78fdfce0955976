//! Runs end to end over real HTTP on loopback: create thread + `runs/wait` on `echo`
//! (sequential latency; 16 and 64 concurrent clients for throughput), and a 1,000-event
//! `synthetic` stream over SSE (events/s, time to first event), on SQLite and PostgreSQL.
//!
//! `cargo bench -p spindle-server --bench runs [sqlite|postgres]`. The server runs in this
//! process on a port of its own; the client is hyper on the same 2 cores, so client and
//! server share the CPU (numbers are a floor for the server alone). Bounded: fixed counts and
//! a few seconds per case.

use std::time::{Duration, Instant};

use api::auth::{Auth, AuthMode, JwtConfig};
use api::{AppState, HttpConfig};
use bytes::Bytes;
use engine::ExecutorConfig;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use store::Backend;
use store::testing::TestDb;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn post(client: &HttpClient, url: &str, body: &Value) -> (u16, Bytes) {
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

/// One create-thread + run/wait; returns its latency.
async fn one_run(client: &HttpClient, base: &str) -> Duration {
    let started = Instant::now();
    let (status, body) = post(client, &format!("{base}/threads"), &json!({})).await;
    assert_eq!(status, 200);
    let thread: Value = serde_json::from_slice(&body).unwrap();
    let input = json!({"assistant_id": "echo", "input": {"messages": [{"role": "user", "content": "hello"}]}});
    let url = format!("{base}/threads/{}/runs/wait", thread["thread_id"].as_str().unwrap());
    let (status, body) = post(client, &url, &input).await;
    assert_eq!(status, 200);
    let values: Value =
        serde_json::from_slice(String::from_utf8_lossy(&body).trim().as_bytes()).unwrap();
    assert_eq!(values["messages"][1]["content"], "echo: hello");
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

async fn bench(backend: Backend) {
    let db = TestDb::new(backend).await.expect("database");
    let auth = Auth::new(AuthMode::Local, &JwtConfig::default()).unwrap();
    let config = ExecutorConfig { concurrency: 128, per_user: 128, ..ExecutorConfig::default() };
    let engine = engine::Engine::new(db.store.clone(), config).await.unwrap();
    let state = AppState::new(engine, auth, HttpConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let name = backend.as_str();

    // Warm up (connections, statement caches).
    for _ in 0..50 {
        one_run(&client, &base).await;
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for _ in 0..500 {
        latencies.push(one_run(&client, &base).await);
    }
    latencies.sort();
    println!(
        "| {name} | sequential create thread + runs/wait | 1 | 500 runs | p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99)
    );

    for clients in [16usize, 64] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, base) = (client.clone(), base.clone());
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while Instant::now() < deadline {
                        mine.push(one_run(&client, &base).await);
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        println!(
            "| {name} | concurrent create thread + runs/wait | {clients} | {} runs in {elapsed:.1} s | {:.0} runs/s, p50 {:.2} ms, p99 {:.2} ms |",
            all.len(),
            all.len() as f64 / elapsed,
            percentile(&all, 0.5),
            percentile(&all, 0.99)
        );
    }

    // One synthetic run of 1,000 custom events over SSE.
    let mut rates = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let (_, body) = post(&client, &format!("{base}/threads"), &json!({})).await;
        let thread: Value = serde_json::from_slice(&body).unwrap();
        let request = hyper::Request::post(format!(
            "{base}/threads/{}/runs/stream",
            thread["thread_id"].as_str().unwrap()
        ))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"assistant_id": "synthetic", "stream_mode": "custom", "input": {"n": 1000}})
                .to_string(),
        )))
        .unwrap();
        let started = Instant::now();
        let mut response = client.request(request).await.unwrap();
        let (mut seen, mut first, mut text) = (0usize, None, String::new());
        while let Some(frame) = response.body_mut().frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
                // Count whole frames only, and each once.
                let Some(end) = text.rfind("\n\n") else { continue };
                seen += text[..end].matches("event: custom").count();
                text.drain(..end + 2);
                if seen > 0 && first.is_none() {
                    first = Some(started.elapsed());
                }
            }
        }
        assert_eq!(seen, 1000);
        let first = first.unwrap();
        let total = started.elapsed();
        rates.push(1000.0 / (total - first).as_secs_f64().max(1e-9));
        firsts.push(first.as_secs_f64() * 1000.0);
    }
    rates.sort_by(f64::total_cmp);
    firsts.sort_by(f64::total_cmp);
    println!(
        "| {name} | synthetic stream, 1,000 custom events over SSE | 1 | 5 runs | median {:.0} events/s, first event {:.2} ms |",
        rates[2], firsts[2]
    );
    println!(
        "| {name} | peak RSS of the process (server and client) | | | {:.0} MB |",
        peak_rss_mb()
    );
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    println!("| backend | workload | clients | size | result |");
    println!("|---|---|---|---|---|");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if filter.is_empty() || filter.iter().any(|f| f == backend.as_str()) {
            bench(backend).await;
        }
    }
}
