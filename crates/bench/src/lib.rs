//! `spindle-bench`: a load tool for any Agent Protocol server (Spindle, LangGraph's server, ...)
//! over HTTP, SSE and WebSocket, with correctness checks.
//!
//! Every workload is bounded in requests and in time, and returns a typed result that the
//! binary prints as a table and writes as JSON (`--json FILE`). The library API is what the
//! binary uses and what `tests/workloads.rs` drives against an in-process Spindle.
//!
//! - [`workloads::sequential`]: create thread + `runs/wait` on `echo`, one at a time.
//! - [`workloads::concurrent`]: C clients loop create thread + `runs/wait` for T seconds.
//! - [`workloads::stream`]: one `synthetic` run of N custom events over SSE, and over the
//!   WebSocket channel when the server has `/ws`.
//! - [`workloads::race`]: K clients post `runs/wait` with `if_not_exists: "create"` on one new
//!   thread id, with `enqueue` and with `reject`; duplicate threads, 5xx and lost messages are
//!   correctness failures.
//! - [`workloads::sessions`]: many sessions (a WebSocket connection when the server has one, a
//!   thread, a run, a state read) at once.
//! - [`workloads::websocket`]: N idle connections (server memory per connection) and fan-out
//!   of events to many subscribed connections (delivered events/s, commit→receive latency).
//! - [`workloads::llm`]: `llm` runs against a model server streaming timed tokens (testkit's
//!   `spindle-testkit model`): tokens/s through the server against the model server's own
//!   rate, each token's latency from the model server's send to this client, CPU per token.
//!
//! Resource use comes from `/proc` ([`usage`]): the server's CPU seconds and peak RSS when
//! `--server-pid` is given (the process and its descendants), and always the client's own CPU,
//! so a client-bound result shows as one.
//!
//! **HTTP client: hyper 1 + hyper-util's pooled client**, not reqwest, because it costs the
//! client less CPU per request, and on 2 shared cores every client microsecond is taken from
//! the server. Measured on this machine against `spindle serve` (SQLite, release build), the
//! same requests through both (`bench/tools/httpcmp`, two rounds each, loadavg ~7 from other
//! builds): `GET /ok` with 1 client 36–38 µs of client CPU per request with hyper-util vs
//! 50–56 µs with reqwest 0.12; with 16 clients 24–35 vs 38–43 µs; `POST /threads` with 16
//! clients 32–42 vs 46 µs. reqwest wraps the same hyper client and adds its own layers
//! (redirect policy, header copies, boxed bodies); hyper-util was already in the lock file.
//! **WebSocket: tokio-tungstenite.** **Percentiles: a sorted `Vec`** (exact; the sample counts
//! here are at most a few million).

pub mod http;
pub mod report;
pub mod stats;
pub mod usage;
pub mod workloads;
pub mod ws;

pub use http::{Auth, Target};
pub use report::{Case, Report};
