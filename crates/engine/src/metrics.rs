//! The engine's counters (Prometheus series, recorded through the `metrics` facade into the
//! process's recorder, which the API installs and serves at `/metrics`).

use metrics::counter;

/// Why a thread named by a client could not be used (`spindle_thread_lookup_failures_total`).
/// The client sees the same 404 for `NotFound` and `NotOwner`; only the operator tells them
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupFailure {
    /// No thread has the id.
    NotFound,
    /// The thread exists and belongs to another user.
    NotOwner,
    /// The id is not one of our ids (422 `invalid_id`).
    MalformedId,
}

impl LookupFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupFailure::NotFound => "not_found",
            LookupFailure::NotOwner => "not_owner",
            LookupFailure::MalformedId => "malformed_id",
        }
    }
}

/// A thread was created.
pub fn thread_created() {
    counter!("spindle_threads_created_total").increment(1);
}

/// A run was created.
pub fn run_created() {
    counter!("spindle_runs_created_total").increment(1);
}

/// A run ended with `status` (a `RunStatus` name, or `rolled_back`).
pub fn run_finished(status: &'static str) {
    counter!("spindle_runs_finished_total", "status" => status).increment(1);
}

/// Events were committed to the log.
pub fn events_appended(n: usize) {
    counter!("spindle_events_appended_total").increment(n as u64);
}

/// A thread named by a client could not be used.
pub fn thread_lookup_failed(reason: LookupFailure) {
    counter!("spindle_thread_lookup_failures_total", "reason" => reason.as_str()).increment(1);
}
