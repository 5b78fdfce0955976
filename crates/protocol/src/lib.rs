//! The wire: what Spindle's clients send and receive, with no transport and no store. HTTP
//! bodies as the `langgraph-sdk` clients read them ([`wire`]), the run-create body
//! ([`run_create`]), SSE frames of the event log by stream mode ([`sse`]), and the WebSocket
//! channel's frames and close codes ([`ws`]). The API crate moves these over axum.

pub mod run_create;
pub mod sse;
pub mod wire;
pub mod ws;
