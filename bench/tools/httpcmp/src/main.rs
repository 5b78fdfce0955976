// Client CPU per request: hyper-util's pooled client vs reqwest, same requests, same server.
use std::time::Instant;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let r = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = r.split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(20000);
    let conc: usize = std::env::args().nth(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let path = std::env::args().nth(4).unwrap_or("/ok".into());
    let body = serde_json::json!({}); let post = path == "/threads"; let path: &str = Box::leak(path.into_boxed_str());
    for round in 0..2 {
        // hyper-util
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let h: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(conn);
        let (c0, t0) = (cpu(), Instant::now());
        let tasks: Vec<_> = (0..conc).map(|_| { let h = h.clone(); let url = format!("{base}{path}"); let body = body.to_string();
            tokio::spawn(async move { for _ in 0..n / conc {
                let req = if post { hyper::Request::post(&url).header("content-type","application/json").body(Full::new(Bytes::from(body.clone()))).unwrap() } else { hyper::Request::get(&url).body(Full::new(Bytes::new())).unwrap() };
                let r = h.request(req).await.unwrap(); let b = r.into_body().collect().await.unwrap().to_bytes(); let _: serde_json::Value = serde_json::from_slice(&b).unwrap(); } }) }).collect();
        for t in tasks { t.await.unwrap(); }
        let (hc, ht) = (cpu() - c0, t0.elapsed().as_secs_f64());
        // reqwest
        let r = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(1024).build().unwrap();
        let (c0, t0) = (cpu(), Instant::now());
        let tasks: Vec<_> = (0..conc).map(|_| { let r = r.clone(); let url = format!("{base}{path}"); let body = body.clone();
            tokio::spawn(async move { for _ in 0..n / conc {
                let resp = if post { r.post(&url).json(&body).send().await.unwrap() } else { r.get(&url).send().await.unwrap() };
                let _: serde_json::Value = resp.json().await.unwrap(); } }) }).collect();
        for t in tasks { t.await.unwrap(); }
        let (rc, rt) = (cpu() - c0, t0.elapsed().as_secs_f64());
        println!("round {round} {path} n={n} conc={conc}: hyper-util {:.1} us CPU/req ({:.0} req/s); reqwest {:.1} us CPU/req ({:.0} req/s)",
            hc * 1e6 / n as f64, n as f64 / ht, rc * 1e6 / n as f64, n as f64 / rt);
    }
}
