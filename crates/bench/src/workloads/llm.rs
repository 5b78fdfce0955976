//! The `llm` agent's cost per token, against an OpenAI-compatible model server that streams
//! timed tokens (testkit's `timed N` rule: each token is `"{i}:{unix_nanos} "`, stamped with
//! the model server's wall clock as it sends it):
//! - **direct**: `concurrency` chat completions streamed straight from the model server at
//!   once: its own rate (tokens/s, all streams together) with this client on the same cores;
//! - **through the server**: `concurrency` `llm` runs at once over SSE (`POST
//!   /threads/{id}/runs/stream`, `stream_mode: ["messages-tuple"]`): tokens/s, and each
//!   token's latency, its receive time minus the send time it carries;
//! - **one run alone** (repeated): the latency the server adds per token and its CPU per
//!   token (`--server-pid`), beside the same stream read directly.
//!
//! Correctness: every stream's tokens all arrive, in order, and no run ends with an `error`
//! event; anything else is a failure of the case.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{Value, json};
use testkit::model::{parse_timed_token, unix_nanos};

use super::{Evidence, thousands};
use crate::http::{Failure, Target};
use crate::report::Case;
use crate::stats::{Percentiles, show};
use crate::usage::{Meter, Usage};

#[derive(Clone, Debug)]
pub struct Options {
    /// Tokens per stream.
    pub tokens: usize,
    /// Tokens the model server writes in each HTTP chunk (1: one write per token, as model
    /// servers stream).
    pub tokens_per_chunk: usize,
    /// The model server's wait between writes (zero: as fast as the connection takes them).
    pub interval: Duration,
    /// Streams (runs) at once.
    pub concurrency: usize,
    /// Streams per concurrent phase, `concurrency` at a time (at least `concurrency`).
    pub runs: usize,
    /// Runs of the one-run-alone case.
    pub alone: usize,
    /// The `model` a run asks for (in its context) and direct requests name.
    pub model: String,
    /// Longest one stream may take.
    pub stream_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: 1000,
            tokens_per_chunk: 1,
            interval: Duration::ZERO,
            concurrency: 100,
            runs: 100,
            alone: 5,
            model: "bench".into(),
            stream_timeout: Duration::from_secs(300),
        }
    }
}

/// Where the streams come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Path {
    /// Chat completions straight from the model server.
    Direct,
    /// `llm` runs through the Agent Protocol server.
    Server,
}

/// One phase: some streams, some at once.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub path: Path,
    pub concurrency: usize,
    pub streams_ok: usize,
    pub streams_failed: usize,
    pub tokens: usize,
    pub elapsed_s: f64,
    /// All streams' tokens over the phase's wall time.
    pub tokens_per_s: f64,
    /// Receive time minus the token's send time.
    pub latency: Percentiles,
    pub errors: crate::stats::Counts,
    pub error_examples: Vec<String>,
}

/// Checks one stream's tokens (all there, in order) and keeps their latencies.
#[derive(Debug, Default)]
struct Tokens {
    next: usize,
    latencies_us: Vec<u64>,
    wrong: Option<String>,
}

impl Tokens {
    fn take(&mut self, token: &str, received_nanos: u128) {
        let Some((i, sent)) = parse_timed_token(token) else {
            self.wrong.get_or_insert_with(|| format!("a token that is not timed: {token:?}"));
            return;
        };
        if i != self.next {
            self.wrong.get_or_insert_with(|| format!("token {i} where {} was due", self.next));
        }
        self.next = i + 1;
        let micros = received_nanos.saturating_sub(sent) / 1000;
        self.latencies_us.push(u64::try_from(micros).unwrap_or(u64::MAX));
    }

    fn check(self, expected: usize) -> Result<Vec<u64>, Failure> {
        if let Some(wrong) = self.wrong {
            return Err(Failure::BadReply(wrong));
        }
        if self.latencies_us.len() != expected {
            let got = self.latencies_us.len();
            return Err(Failure::BadReply(format!("expected {expected} tokens, got {got}")));
        }
        Ok(self.latencies_us)
    }
}

/// Splits an SSE body into `(event, data)` frames as it arrives (a frame ends with a blank
/// line; `\n` or `\r\n` line ends; several `data:` lines are joined with `\n`).
#[derive(Debug, Default)]
pub struct SseFrames {
    pending: Vec<u8>,
    event: String,
    data: String,
}

impl SseFrames {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    frames.push((std::mem::take(&mut self.event), std::mem::take(&mut self.data)));
                }
            } else if let Some(name) = line.strip_prefix(b"event:") {
                self.event = String::from_utf8_lossy(name).trim().to_owned();
            } else if let Some(data) = line.strip_prefix(b"data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                let data = data.strip_prefix(b" ").unwrap_or(data);
                self.data.push_str(&String::from_utf8_lossy(data));
            }
            start += i + 1;
        }
        self.pending.drain(..start);
        frames
    }
}

/// The token a frame carries, if any; `Err` for a frame that ends the stream in error.
fn token_of(path: Path, event: &str, data: &str) -> Result<Option<String>, Failure> {
    match path {
        Path::Direct => {
            if data == "[DONE]" {
                return Ok(None);
            }
            let chunk: Value = serde_json::from_str(data)
                .map_err(|e| Failure::BadReply(format!("a chunk that is not JSON ({e})")))?;
            if let Some(error) = chunk.get("error") {
                return Err(Failure::BadReply(format!("the model server's error: {error}")));
            }
            let content = &chunk["choices"][0]["delta"]["content"];
            Ok(content.as_str().filter(|c| !c.is_empty()).map(str::to_owned))
        }
        Path::Server => match event {
            "error" => Err(Failure::BadReply(format!("an `error` event: {data}"))),
            "messages" => {
                let tuple: Value = serde_json::from_str(data)
                    .map_err(|e| Failure::BadReply(format!("a `messages` frame not JSON ({e})")))?;
                let chunk = &tuple[0];
                if chunk["type"] != "AIMessageChunk" {
                    return Ok(None);
                }
                Ok(chunk["content"].as_str().filter(|c| !c.is_empty()).map(str::to_owned))
            }
            _ => Ok(None),
        },
    }
}

/// Reads one stream to its end; the latencies of its tokens, in microseconds.
async fn read(
    path: Path,
    response: hyper::Response<hyper::body::Incoming>,
    options: &Options,
) -> Result<Vec<u64>, Failure> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        return Err(Failure::Status(status, text));
    }
    let mut frames = SseFrames::default();
    let mut tokens = Tokens::default();
    let reading = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Io(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            // One clock read per read from the socket: the tokens in it arrived together.
            let now = unix_nanos();
            for (event, data) in frames.feed(&data) {
                if let Some(token) = token_of(path, &event, &data)? {
                    tokens.take(&token, now);
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(options.stream_timeout, reading).await.unwrap_or(Err(Failure::Timeout))?;
    tokens.check(options.tokens)
}

/// One stream of `options.tokens` timed tokens, by either path.
async fn one(
    path: Path,
    server: &Target,
    model: &Target,
    options: &Options,
) -> Result<Vec<u64>, Failure> {
    let ask = format!(
        "timed {} per {} every {}",
        options.tokens,
        options.tokens_per_chunk.max(1),
        options.interval.as_micros()
    );
    let response = match path {
        Path::Direct => {
            let body = json!({
                "model": options.model,
                "messages": [{ "role": "user", "content": ask }],
                "stream": true,
            });
            model.open("/chat/completions", &body).await?
        }
        Path::Server => {
            let thread = server.create_thread().await?;
            let body = json!({
                "assistant_id": "llm",
                "input": { "messages": [{ "type": "human", "content": ask }] },
                "context": { "model": options.model },
                "stream_mode": ["messages-tuple"],
            });
            server.open(&format!("/threads/{thread}/runs/stream"), &body).await?
        }
    };
    read(path, response, options).await
}

/// `runs` streams, `concurrency` at a time.
pub async fn measure(
    path: Path,
    server: &Target,
    model: &Target,
    concurrency: usize,
    runs: usize,
    options: &Options,
) -> Outcome {
    let started = Instant::now();
    let left = Arc::new(AtomicUsize::new(runs.max(concurrency)));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (server, model, options, left) =
                (server.clone(), model.clone(), options.clone(), left.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut ok = 0;
                let mut evidence = Evidence::default();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    match one(path, &server, &model, &options).await {
                        Ok(mine) => {
                            ok += 1;
                            latencies.extend(mine);
                        }
                        Err(failure) => evidence.add("", &failure),
                    }
                }
                (ok, latencies, evidence)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut ok = 0;
    let mut evidence = Evidence::default();
    for worker in workers {
        match worker.await {
            Ok((n, mine, theirs)) => {
                ok += n;
                latencies.extend(mine);
                evidence.merge(theirs);
            }
            Err(e) => evidence.add_key("panic".into(), e.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = evidence.counts.values().sum::<u64>() as usize;
    Outcome {
        path,
        concurrency,
        streams_ok: ok,
        streams_failed: failed,
        tokens: latencies.len(),
        elapsed_s: elapsed,
        tokens_per_s: latencies.len() as f64 / elapsed.max(1e-9),
        latency: Percentiles::of_micros(latencies),
        errors: evidence.counts,
        error_examples: evidence.examples,
    }
}

/// Every failure of a stream here is a correctness failure: a token lost, out of order, or an
/// `error` event.
fn failures(outcome: &Outcome) -> Vec<String> {
    if outcome.errors.is_empty() {
        return Vec::new();
    }
    let examples = outcome.error_examples.join(" | ");
    vec![format!(
        "{} streams failed: {} (e.g. {examples})",
        outcome.streams_failed,
        show(&outcome.errors)
    )]
}

/// The server's CPU per token, in microseconds.
fn cpu_per_token_us(usage: &Usage, tokens: usize) -> Option<f64> {
    usage.server_cpu_s.filter(|_| tokens > 0).map(|cpu| cpu * 1e6 / tokens as f64)
}

#[derive(Clone, Debug, Serialize)]
struct Phase<'a> {
    #[serde(flatten)]
    outcome: &'a Outcome,
    server_cpu_per_token_us: Option<f64>,
    /// Through the server's tokens/s over the direct rate (goal ≥ 0.9).
    ratio_to_direct: Option<f64>,
}

fn case(name: String, outcome: &Outcome, usage: Usage, direct: Option<&Outcome>) -> Case {
    let cpu = cpu_per_token_us(&usage, outcome.tokens);
    let ratio = direct.map(|d| outcome.tokens_per_s / d.tokens_per_s.max(1e-9));
    let mut summary = format!(
        "{} tokens/s ({} of {} streams ok, {} tokens in {:.2} s), latency {}",
        thousands(outcome.tokens_per_s),
        outcome.streams_ok,
        outcome.streams_ok + outcome.streams_failed,
        thousands(outcome.tokens as f64),
        outcome.elapsed_s,
        outcome.latency.short(),
    );
    if outcome.path == Path::Server
        && let Some(cpu) = cpu
    {
        summary.push_str(&format!(", server CPU {cpu:.1} µs/token"));
    }
    if let Some(ratio) = ratio {
        summary.push_str(&format!(", {ratio:.2} of direct (goal ≥ 0.9)"));
    }
    let phase = Phase { outcome, server_cpu_per_token_us: cpu, ratio_to_direct: ratio };
    Case::new(name, summary, &phase, usage).with_failures(failures(outcome))
}

/// The four cases: direct and through the server, `concurrency` at once, then one alone.
pub async fn cases(
    server: &Target,
    model: &Target,
    options: &Options,
    server_pid: Option<u32>,
) -> Vec<Case> {
    let (c, runs) = (options.concurrency, options.runs.max(options.concurrency));
    let mut cases = Vec::new();
    let meter = Meter::start(server_pid);
    let direct = measure(Path::Direct, server, model, c, runs, options).await;
    cases.push(case(format!("direct, {c} streams at once"), &direct, meter.finish(), None));
    let meter = Meter::start(server_pid);
    let through = measure(Path::Server, server, model, c, runs, options).await;
    let name = format!("llm runs, {c} at once");
    cases.push(case(name, &through, meter.finish(), Some(&direct)));
    let alone = options.alone.max(1);
    let meter = Meter::start(server_pid);
    let direct_alone = measure(Path::Direct, server, model, 1, alone, options).await;
    let name = format!("direct, 1 stream alone ×{alone}");
    cases.push(case(name, &direct_alone, meter.finish(), None));
    let meter = Meter::start(server_pid);
    let through_alone = measure(Path::Server, server, model, 1, alone, options).await;
    let name = format!("llm run, 1 alone ×{alone}");
    cases.push(case(name, &through_alone, meter.finish(), Some(&direct_alone)));
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_line_ends() {
        let mut sse = SseFrames::default();
        assert!(sse.feed(b"event: metadata\ndata: {}\n\nevent: mess").len() == 1);
        let frames = sse.feed(b"ages\r\ndata: [1,\r\ndata: 2]\r\n\r\ndata: [DONE]\n\n");
        let expected = vec![
            ("messages".to_owned(), "[1,\n2]".to_owned()),
            (String::new(), "[DONE]".to_owned()),
        ];
        assert_eq!(frames, expected);
    }

    #[test]
    fn tokens_of_either_path() {
        let tuple = r#"[{"type":"AIMessageChunk","content":"3:17 "},{"langgraph_node":"llm"}]"#;
        assert_eq!(token_of(Path::Server, "messages", tuple), Ok(Some("3:17 ".into())));
        let last = r#"[{"type":"AIMessageChunk","content":""},{}]"#;
        assert_eq!(token_of(Path::Server, "messages", last), Ok(None));
        assert!(token_of(Path::Server, "error", r#"{"error":"ModelError"}"#).is_err());
        let chunk = r#"{"choices":[{"index":0,"delta":{"content":"0:5 "}}]}"#;
        assert_eq!(token_of(Path::Direct, "", chunk), Ok(Some("0:5 ".into())));
        assert_eq!(token_of(Path::Direct, "", "[DONE]"), Ok(None));
        assert!(token_of(Path::Direct, "", r#"{"error":{"message":"x"}}"#).is_err());
    }

    #[test]
    fn tokens_must_all_arrive_in_order() {
        let mut tokens = Tokens::default();
        tokens.take("0:1000 ", 3000);
        tokens.take("1:2000 ", 3000);
        assert_eq!(tokens.check(2), Ok(vec![2, 1]));
        let mut tokens = Tokens::default();
        tokens.take("1:1000 ", 3000);
        tokens.take("0:1000 ", 3000);
        assert!(tokens.check(2).is_err());
        let mut tokens = Tokens::default();
        tokens.take("0:1000 ", 3000);
        assert!(tokens.check(2).is_err());
    }
}
