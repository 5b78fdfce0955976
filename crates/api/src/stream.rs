//! SSE responses: the bounded queue between a stream's producer and its client ([`Outbox`]),
//! its settings, and the end of a stream whose credential lapsed. The frames themselves are
//! `protocol::sse`'s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use engine::{Ended, Engine};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::auth::{Auth, Credential};

/// Settings of SSE streams (`serve --sse-*`).
#[derive(Clone, Debug)]
pub struct SseConfig {
    /// Bytes of frames queued for one stream before its producer waits (a single larger frame
    /// still goes to a client that has taken everything else).
    pub max_buffer: usize,
    /// How long a stream may stay over `max_buffer` (its client not reading) before it is
    /// dropped.
    pub slow_timeout: Duration,
    /// A `: heartbeat` comment after this long without frames.
    pub heartbeat: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            max_buffer: 1024 * 1024,
            slow_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// What SSE streams hold, process-wide for one server (tests and metrics read it).
#[derive(Debug, Default)]
pub struct SseStats {
    buffered: AtomicUsize,
    dropped: AtomicU64,
}

impl SseStats {
    /// Bytes of frames queued in SSE streams now, not yet taken by the response body.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Streams dropped because their client did not read.
    pub fn slow_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Why a frame could not be queued: the stream must end.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The client went away.
    Gone,
    /// The client stopped reading: over the byte budget past the deadline.
    Slow,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<String>,
    bytes: usize,
    /// The response body was dropped (the client went away).
    reader_gone: bool,
    /// The producer has finished (or was dropped as slow).
    ended: bool,
    slow: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    readable: Notify,
    writable: Notify,
    stats: Arc<SseStats>,
    config: SseConfig,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every queued frame.
    fn clear(&self, queue: &mut Queue) {
        self.stats.buffered.fetch_sub(queue.bytes, Ordering::Relaxed);
        queue.frames.clear();
        queue.bytes = 0;
    }
}

/// The producing side of an SSE response: a queue bounded in bytes (see [`SseConfig`]).
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// An SSE response body fed by an [`Outbox`].
pub fn outbox(
    config: &SseConfig,
    stats: Arc<SseStats>,
) -> (Outbox, impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + use<>) {
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        readable: Notify::new(),
        writable: Notify::new(),
        stats,
        config: config.clone(),
    });
    let reader = Reader(shared.clone());
    let body = futures_util::stream::unfold(reader, |reader| async move {
        let chunk = reader.next().await?;
        Some((chunk, reader))
    });
    (Outbox { shared }, body)
}

impl Outbox {
    /// Queues a frame; waits while the queue is over its budget, up to the slow deadline.
    pub async fn send(&self, frame: String) -> Result<(), Stop> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.config.slow_timeout;
        loop {
            let writable = shared.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            {
                let mut queue = shared.lock();
                if queue.reader_gone {
                    return Err(Stop::Gone);
                }
                if queue.bytes == 0 || queue.bytes + frame.len() <= shared.config.max_buffer {
                    queue.bytes += frame.len();
                    shared.stats.buffered.fetch_add(frame.len(), Ordering::Relaxed);
                    queue.frames.push_back(frame);
                    drop(queue);
                    shared.readable.notify_one();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, writable).await.is_err() {
                let mut queue = shared.lock();
                queue.slow = true;
                shared.clear(&mut queue);
                drop(queue);
                // The reader ends the response now, not at its next heartbeat.
                shared.readable.notify_one();
                shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::sse_slow_consumer_dropped();
                tracing::warn!(
                    limit = shared.config.max_buffer,
                    "dropping an SSE stream whose client does not read"
                );
                return Err(Stop::Slow);
            }
        }
    }

    /// Whether the client went away.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().reader_gone
    }

    /// Completes when the client goes away.
    pub async fn closed(&self) {
        loop {
            let writable = self.shared.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            if self.is_closed() {
                return;
            }
            writable.await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.lock().ended = true;
        self.shared.readable.notify_one();
    }
}

struct Reader(Arc<Shared>);

impl Reader {
    /// The next chunk: the frames waiting go out together (one write, not one per frame), a
    /// `: heartbeat` comment after the heartbeat interval without frames; an error for a
    /// dropped slow stream (so the connection is closed), `None` at the end.
    async fn next(&self) -> Option<Result<Bytes, std::io::Error>> {
        let shared = &self.0;
        loop {
            let readable = shared.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut queue = shared.lock();
                if queue.slow {
                    return Some(Err(std::io::Error::other("slow SSE client dropped")));
                }
                if let Some(mut chunk) = queue.frames.pop_front() {
                    while chunk.len() < 64 * 1024 {
                        match queue.frames.pop_front() {
                            Some(frame) => chunk.push_str(&frame),
                            None => break,
                        }
                    }
                    queue.bytes -= chunk.len();
                    shared.stats.buffered.fetch_sub(chunk.len(), Ordering::Relaxed);
                    drop(queue);
                    shared.writable.notify_waiters();
                    return Some(Ok(Bytes::from(chunk)));
                }
                if queue.ended {
                    return None;
                }
            }
            if tokio::time::timeout(shared.config.heartbeat, readable).await.is_err() {
                return Some(Ok(Bytes::from_static(b": heartbeat\n\n")));
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.reader_gone = true;
        self.0.clear(&mut queue);
        drop(queue);
        self.0.writable.notify_waiters();
    }
}

/// Completes, with the reason, when a long-lived stream's credential stops being valid: at a
/// JWT's `exp`, or when a check of its API key (every `--auth-key-recheck`, at least 1 s)
/// finds it revoked. Never, for `--auth local`.
pub async fn credential_lapsed(
    auth: &Auth,
    engine: &Engine,
    credential: &Credential,
    every: Duration,
) -> String {
    if let Some(left) = credential.expires_in() {
        tokio::time::sleep(left).await;
        return "the JWT has expired".into();
    }
    if !matches!(credential, Credential::Key { .. }) {
        return std::future::pending().await;
    }
    let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(why) = auth.recheck(engine, credential).await {
            return why;
        }
    }
}

/// The `data` of the SSE `error` event that ends a stream whose credential lapsed.
pub fn unauthorized_data(why: &str) -> Value {
    json!({ "error": "Unauthorized", "message": format!("{why}: this stream has ended") })
}

/// The `data` of the SSE `error` event that ends a stream for this reason.
pub fn ended_data(ended: &Ended) -> Value {
    match ended {
        Ended::ThreadDeleted(thread) => serde_json::json!({
            "error": "ThreadDeleted",
            "message": format!("thread {thread} was deleted: this stream has ended"),
        }),
        Ended::Store(e) => {
            serde_json::json!({ "error": "StoreError", "message": e.to_string() })
        }
    }
}

/// The outbox's deadlines on tokio's paused clock: what is tested is time, so time is
/// simulated (each wait ends at once, as the clock jumps to the next timer).
#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::time::Instant;

    use super::*;

    fn config() -> SseConfig {
        SseConfig {
            max_buffer: 10,
            slow_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_dropped_at_the_slow_deadline() {
        let stats = Arc::new(SseStats::default());
        let (tx, body) = outbox(&config(), stats.clone());
        let mut body = Box::pin(body);
        tx.send("0123456789".into()).await.expect("the first frame fits the budget");
        let start = Instant::now();
        // Over the budget, the producer waits for the reader, up to the slow deadline.
        assert_eq!(tx.send("more".into()).await, Err(Stop::Slow));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(stats.slow_dropped(), 1);
        assert_eq!(stats.buffered_bytes(), 0, "a dropped stream holds nothing");
        // The response ends with an error, so the connection is closed.
        assert!(body.next().await.expect("an item").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_up_never_meets_the_deadline() {
        let (tx, body) = outbox(&config(), Arc::default());
        let mut body = Box::pin(body);
        for i in 0..100 {
            tx.send(format!("frame {i:02}")).await.expect("queued");
            let chunk = body.next().await.expect("a chunk").expect("not an error");
            assert_eq!(chunk, format!("frame {i:02}"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_sends_heartbeats_on_time_and_ends_with_its_producer() {
        let (tx, body) = outbox(&config(), Arc::default());
        let mut body = Box::pin(body);
        let start = Instant::now();
        for beat in 1..=3 {
            let chunk = body.next().await.expect("a chunk").expect("not an error");
            assert_eq!(chunk, Bytes::from_static(b": heartbeat\n\n"));
            assert_eq!(start.elapsed(), Duration::from_secs(5 * beat));
        }
        drop(tx);
        assert!(body.next().await.is_none(), "the response ends with its producer");
    }
}
