//! `Store`: the `admin_*` functions, for operators' tools (no owner: never call these on
//! behalf of a user); the doctor's own are in `crate::doctor`.

use chrono::{DateTime, Utc};
use ids::{ThreadId, UserId};

use crate::model::*;
use crate::{Result, Store, doctor};

impl Store {
    // ---- diagnostics (no owner: never call these on behalf of a user) ----

    /// A thread by id alone, for operators' tools.
    pub async fn admin_find_thread(&self, id: ThreadId) -> Result<Option<Thread>> {
        dispatch!(self.admin_find_thread(id))
    }

    /// The owner of the thread with this id, if there is one: what a failed lookup needs to
    /// tell "another user's" from "missing" (reads the key and the owner, never the row's data).
    pub async fn admin_thread_owner(&self, id: ThreadId) -> Result<Option<UserId>> {
        dispatch!(self.admin_thread_owner(id))
    }

    /// Busy threads, active runs and the oldest running run, for `/metrics` (every scrape:
    /// each count is read from a partial index).
    pub async fn admin_stats(&self) -> Result<Stats> {
        dispatch!(self.admin_stats())
    }

    /// How many threads have this id (0 or 1 while the primary key holds), for race checks.
    pub async fn admin_count_threads(&self, id: ThreadId) -> Result<i64> {
        dispatch!(self.admin_count_threads(id))
    }

    /// The doctor's checks (`doctor::Check`), in one snapshot: the sizes of the tables and
    /// every finding (at most `doctor::MAX_PER_CHECK` a check). Runs running with no sign of
    /// life since `stale_before` are stale. Read-only.
    pub async fn admin_doctor_scan(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<(doctor::DoctorCounts, Vec<doctor::Finding>)> {
        dispatch!(self.admin_doctor_scan(stale_before))
    }

    /// Raises a thread's `last_seq` to its newest event's seq if it is below it, under the
    /// thread's lock; the old and new values, or `None` if it was not behind.
    pub async fn admin_raise_last_seq(&self, id: ThreadId) -> Result<Option<(i64, i64)>> {
        dispatch!(self.admin_raise_last_seq(id))
    }

    /// Sets a thread's status from its runs, under the thread's lock: `busy` while a run is
    /// pending or running; otherwise a `busy` thread takes the status its newest run's end
    /// gives it (`idle` without runs). The old and new statuses, or `None` if they agreed.
    pub async fn admin_settle_thread_status(
        &self,
        id: ThreadId,
    ) -> Result<Option<(ThreadStatus, ThreadStatus)>> {
        dispatch!(self.admin_settle_thread_status(id))
    }

    /// Everything this UUID names: a thread, run, assistant, checkpoint, user, API key, or a
    /// message in a thread's current state.
    pub async fn admin_inspect_id(&self, id: &doctor::AnyId) -> Result<doctor::IdLookup> {
        dispatch!(self.admin_inspect_id(id))
    }
}
