//! What the server's tests share, in one place: an app on a fresh database driven in-process
//! ([`TestApp`]), the same served on a real socket on port 0 ([`SocketApp`]), the real
//! `spindle` binary ([`Server`]), the one backend macro (`store::on_both_backends!` with
//! [`TestApp`], or `store::on_each_backend!`) and the one bounded wait ([`eventually`]).
//!
//! Tests reach the store through the [`store::testing::TestDb`] they were given (never through
//! the server's `AppState`), and the server's internal types through the re-exports below, so
//! a change to either is fixed here.

#![allow(dead_code, unused_imports, reason = "each test binary uses part of this")]

mod app;
mod binary;
mod socket;

use std::time::Duration;

pub use app::{Frame, Reply, TestApp, parse_sse};
pub use binary::{Server, database_url, spindle};
pub use socket::SocketApp;
pub use store::testing::{TempDir, TestDb, eventually};

pub use api::auth::{self, Auth, AuthMode, JwtConfig};
pub use api::metrics::Exposure;
pub use api::net::NetConfig;
pub use api::ws::WsConfig;
pub use api::{AppState, CorsOrigins, HttpConfig, app};
pub use engine::ExecutorConfig;

/// Every wait is bounded by this: a hang is a failure, not a stuck CI.
pub const BOUND: Duration = Duration::from_secs(20);
