//! The server's integration tests, in one binary: each test binary links the whole server,
//! so they share this one (only `metrics`, whose recorder is global to the process, has its
//! own). Shared helpers are in `harness`.

mod harness;

mod api;
mod assistants;
mod cli;
mod conversations;
mod credentials;
mod graphs;
mod hardening;
mod inspect;
mod llm;
mod net;
mod runs;
mod sdk;
mod service;
mod ws;
