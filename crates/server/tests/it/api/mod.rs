//! The Agent Protocol routes of this issue, driven in-process (`app(state).oneshot`) on SQLite
//! and PostgreSQL, with several users to check isolation on every route.

mod auth;
mod isolation;
mod routes;

use crate::harness::HttpConfig;
use crate::harness::TestApp;
use crate::harness::{Auth, AuthMode, JwtConfig};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ids::ThreadId;
use serde_json::{Value, json};
use store::Backend;

/// The body of an error without its request id, to compare two errors.
fn without_request_id(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("request_id");
    body
}

/// A small deterministic generator (xorshift), so the randomized test replays exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
