//! One `synthetic` run of N custom events, over SSE (`POST /threads/{id}/runs/stream`,
//! `stream_mode: ["custom"]`) and over the WebSocket channel (a `run` frame with `subscribe`).

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::thousands;
use crate::http::{Failure, Target};
use crate::report::Case;
use crate::usage::Meter;
use crate::ws::{WsConn, WsError, ends_run};

#[derive(Clone, Debug)]
pub struct Options {
    /// Custom events per run.
    pub events: u64,
    /// Runs per channel (the median is reported).
    pub repeat: usize,
    /// Also over `/ws` (skipped, with the reason, when the server has none).
    pub websocket: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { events: 1000, repeat: 5, websocket: true }
    }
}

/// One streamed run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct OneStream {
    pub events: u64,
    /// From sending the request to the first custom event.
    pub first_event_ms: f64,
    /// From sending the request to the end of the run's stream.
    pub total_ms: f64,
    /// Custom events per second after the first one arrived.
    pub events_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub channel: &'static str,
    pub expected_events: u64,
    pub runs: Vec<OneStream>,
    pub median_events_per_s: f64,
    pub median_first_event_ms: f64,
    pub failures: Vec<String>,
}

fn synthetic_input(events: u64) -> Value {
    json!({"messages": [{"role": "human", "content": "hi"}], "n": events, "mode": "custom"})
}

fn finish(started: Instant, first: Option<Duration>, events: u64) -> OneStream {
    let total = started.elapsed();
    let first = first.unwrap_or(total);
    OneStream {
        events,
        first_event_ms: first.as_secs_f64() * 1000.0,
        total_ms: total.as_secs_f64() * 1000.0,
        events_per_s: events.saturating_sub(1) as f64 / (total - first).as_secs_f64().max(1e-6),
    }
}

/// Counts `custom` events in an SSE body as it arrives (frames end with a blank line; `\n` or
/// `\r\n` line ends).
#[derive(Debug, Default)]
struct SseCounter {
    pending: Vec<u8>,
    event: String,
    custom: u64,
    errors: Vec<String>,
}

impl SseCounter {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if self.event == "custom" {
                    self.custom += 1;
                }
                self.event.clear();
            } else if let Some(name) = line.strip_prefix(b"event:") {
                self.event = String::from_utf8_lossy(name).trim().to_owned();
                if self.event == "error" && self.errors.is_empty() {
                    self.errors.push("an `error` event in the stream".into());
                }
            }
            start += i + 1;
        }
        self.pending.drain(..start);
    }
}

/// One run over SSE.
pub async fn sse_once(target: &Target, events: u64) -> Result<OneStream, Failure> {
    let thread = target.create_thread().await?;
    let body = json!({
        "assistant_id": "synthetic",
        "input": synthetic_input(events),
        "stream_mode": ["custom"],
    });
    let started = Instant::now();
    let response = target.open(&format!("/threads/{thread}/runs/stream"), &body).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(Failure::Status(
            status,
            String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        ));
    }
    let mut counter = SseCounter::default();
    let mut first = None;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Io(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                counter.feed(&data);
                if first.is_none() && counter.custom > 0 {
                    first = Some(started.elapsed());
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.unwrap_or(Err(Failure::Timeout))?;
    if let Some(error) = counter.errors.first() {
        return Err(Failure::BadReply(error.clone()));
    }
    if counter.custom != events {
        return Err(Failure::BadReply(format!(
            "expected {events} custom events, got {}",
            counter.custom
        )));
    }
    Ok(finish(started, first, counter.custom))
}

/// One run over the WebSocket channel: a `run` frame with `subscribe: true`, events until the
/// run ends.
pub async fn ws_once(conn: &mut WsConn, events: u64, n: usize) -> Result<OneStream, WsError> {
    let frame = json!({
        "type": "run",
        "assistant_id": "synthetic",
        "input": synthetic_input(events),
        // A LangGraph graph (spindle serve --graphs) streams only the modes asked for; the
        // built-in agent ignores this.
        "stream_mode": ["custom"],
        "subscribe": true,
    });
    let started = Instant::now();
    let mut first = None;
    let mut custom = 0u64;
    let mut early = Vec::new();
    let reply =
        conn.request(frame, &format!("stream-{n}"), "run", |other| early.push(other)).await?;
    let run_id = reply["run"]["run_id"].clone();
    let mut ended = false;
    let mut observe = |frame: &Value, first: &mut Option<Duration>| {
        if frame["type"] == "event" && frame["run_id"] == run_id {
            // The built-in agent's events are `custom`; a graph's custom parts are `stream`
            // events of `{"event": "custom", "data": ...}`.
            if frame["kind"] == "custom"
                || (frame["kind"] == "stream" && frame["data"]["event"] == "custom")
            {
                custom += 1;
                if first.is_none() {
                    *first = Some(started.elapsed());
                }
            }
            if ends_run(frame) {
                return true;
            }
        }
        false
    };
    for frame in &early {
        ended |= observe(frame, &mut first);
    }
    let read = async {
        while !ended {
            let frame = conn.next().await?;
            if frame["type"] == "error" {
                return Err(WsError::Protocol(frame.to_string()));
            }
            ended = observe(&frame, &mut first);
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.unwrap_or(Err(WsError::Timeout))?;
    if custom != events {
        return Err(WsError::Protocol(format!("expected {events} custom events, got {custom}")));
    }
    Ok(finish(started, first, custom))
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn outcome(
    channel: &'static str,
    expected: u64,
    runs: Vec<OneStream>,
    failures: Vec<String>,
) -> Outcome {
    Outcome {
        channel,
        expected_events: expected,
        median_events_per_s: median(runs.iter().map(|r| r.events_per_s).collect()),
        median_first_event_ms: median(runs.iter().map(|r| r.first_event_ms).collect()),
        runs,
        failures,
    }
}

pub async fn measure_sse(target: &Target, options: &Options) -> Outcome {
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..options.repeat {
        match sse_once(target, options.events).await {
            Ok(run) => runs.push(run),
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    outcome("sse", options.events, runs, failures)
}

/// `Err` when the server has no `/ws` (the reason, for a skipped row).
pub async fn measure_ws(target: &Target, options: &Options) -> Result<Outcome, String> {
    let mut conn = match WsConn::connect(target, Duration::from_secs(10)).await {
        Ok(conn) => conn,
        Err(e @ WsError::Unsupported(_)) => return Err(e.to_string()),
        Err(e) => {
            return Ok(outcome(
                "websocket",
                options.events,
                Vec::new(),
                vec![format!("connect: {e}")],
            ));
        }
    };
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for n in 0..options.repeat {
        match ws_once(&mut conn, options.events, n).await {
            Ok(run) => runs.push(run),
            Err(e) => {
                failures.push(e.to_string());
                break;
            }
        }
    }
    conn.close().await;
    Ok(outcome("websocket", options.events, runs, failures))
}

fn case(name: &str, outcome: &Outcome, usage: crate::usage::Usage) -> Case {
    let summary = format!(
        "{} events/run, median {} events/s, first event {:.2} ms ({} of {} runs ok)",
        thousands(outcome.expected_events as f64),
        thousands(outcome.median_events_per_s),
        outcome.median_first_event_ms,
        outcome.runs.len(),
        outcome.runs.len() + outcome.failures.len(),
    );
    Case::new(name, summary, outcome, usage).with_failures(outcome.failures.clone())
}

pub async fn cases(target: &Target, options: &Options, server_pid: Option<u32>) -> Vec<Case> {
    let meter = Meter::start(server_pid);
    let sse = measure_sse(target, options).await;
    let mut cases = vec![case("SSE", &sse, meter.finish())];
    if options.websocket {
        let meter = Meter::start(server_pid);
        match measure_ws(target, options).await {
            Ok(ws) => cases.push(case("WebSocket", &ws, meter.finish())),
            Err(why) => cases.push(Case::skipped("WebSocket", why)),
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::SseCounter;

    #[test]
    fn counts_custom_frames_across_chunks_and_line_ends() {
        let mut counter = SseCounter::default();
        counter.feed(b"event: metadata\ndata: {}\n\nevent: cus");
        counter.feed(b"tom\r\ndata: 1\r\n\r\nevent: custom\ndata: 2\n");
        assert_eq!(counter.custom, 1);
        counter.feed(b"\nevent: end\n\n");
        assert_eq!(counter.custom, 2);
    }
}
