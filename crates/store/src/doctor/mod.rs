//! Diagnostics for operators: [`Store::doctor`] (`spindle doctor`) finds broken invariants and
//! repairs those that are safe to repair; [`Store::admin_inspect_id`] (`spindle id inspect`)
//! says what a UUID is in this database.
//!
//! Both skip the owner (they are `admin_*`: never call them on behalf of a user). Without
//! `fix` the doctor only reads, in one snapshot per backend; each repair is its own short
//! transaction that re-checks its condition under the thread's lock (the writer's lock on
//! SQLite), so the doctor is safe to run while a server serves the same database.
//!
//! This module holds the options, the checks' closed set, the report and the repairs;
//! `checks` what the backends' scans share, `inspect` the types of `admin_inspect_id`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ids::{RunId, ThreadId, UserId};
use serde::Serialize;
use serde_json::json;

use crate::model::*;
use crate::{Error, Result, Store};

mod checks;
mod inspect;

pub(crate) use checks::{
    ID_COLUMNS, JSON_SCAN_PAGE, JSON_TABLES, SEQ_BREAKS_SHOWN, last_seq_finding, parent_detail,
    seq_findings, settled_status, stale_finding, unreadable_json,
};
pub use inspect::{AnyId, CheckpointFacts, IdLookup, RunFacts, ThreadFacts, UserFacts};

/// Runs have no executor lease or heartbeat yet, so a run counts as stale when it has shown no
/// sign of life (its claim, or an event of its own) for this long: a little more than the
/// server's default `--run-timeout` (600 s), after which a live executor would have ended it.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(720);

/// Most findings of one check that a scan lists (the count says how many there were).
pub(crate) const MAX_PER_CHECK: i64 = 1000;

/// What [`Store::doctor`] does.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// A `running` run with no sign of life for this long is stale.
    pub stale_after: Duration,
    /// Repair what is safe to repair (see [`Check::fixable`]).
    pub fix: bool,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions { stale_after: DEFAULT_STALE_AFTER, fix: false }
    }
}

/// The invariants the doctor checks, one variant each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// A thread `busy` with no pending or running run: nothing will ever make it idle.
    BusyWithoutActiveRun,
    /// A thread not `busy` although it has a pending or running run.
    ActiveRunNotBusy,
    /// A run `running` with no sign of life for longer than `stale_after`.
    StaleRunningRun,
    /// A thread's event `seq`s skip numbers.
    SeqGap,
    /// A thread has two events with one `seq` (the primary key forbids it).
    SeqDuplicate,
    /// `threads.last_seq` is below the thread's newest event: the next append fails.
    LastSeqBehind,
    /// `threads.last_seq` is above the thread's newest event.
    LastSeqAhead,
    /// Events name a run that does not exist.
    EventRunMissing,
    /// Events name a run of another thread.
    EventRunInOtherThread,
    /// A checkpoint names a run that does not exist.
    CheckpointRunMissing,
    /// A checkpoint names a run of another thread.
    CheckpointRunInOtherThread,
    /// A checkpoint whose parent is not an older checkpoint of its thread: its branch cannot
    /// be followed back to the thread's first state.
    CheckpointParentMissing,
    /// A row whose thread, owner or user is missing (a broken foreign key).
    MissingParent,
    /// An id column holding something that is not a UUID (or holding the nil UUID).
    InvalidId,
    /// A JSON column this build cannot decode (a number beyond f64, nesting deeper than
    /// serde_json reads, ...): stored by an older build or by hand.
    UnreadableJson,
}

/// How bad a finding is: errors make the doctor exit non-zero, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl Check {
    pub const ALL: [Check; 15] = [
        Check::BusyWithoutActiveRun,
        Check::ActiveRunNotBusy,
        Check::StaleRunningRun,
        Check::SeqGap,
        Check::SeqDuplicate,
        Check::LastSeqBehind,
        Check::LastSeqAhead,
        Check::EventRunMissing,
        Check::EventRunInOtherThread,
        Check::CheckpointRunMissing,
        Check::CheckpointRunInOtherThread,
        Check::CheckpointParentMissing,
        Check::MissingParent,
        Check::InvalidId,
        Check::UnreadableJson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::BusyWithoutActiveRun => "busy_without_active_run",
            Check::ActiveRunNotBusy => "active_run_not_busy",
            Check::StaleRunningRun => "stale_running_run",
            Check::SeqGap => "seq_gap",
            Check::SeqDuplicate => "seq_duplicate",
            Check::LastSeqBehind => "last_seq_behind",
            Check::LastSeqAhead => "last_seq_ahead",
            Check::EventRunMissing => "event_run_missing",
            Check::EventRunInOtherThread => "event_run_in_other_thread",
            Check::CheckpointRunMissing => "checkpoint_run_missing",
            Check::CheckpointRunInOtherThread => "checkpoint_run_in_other_thread",
            Check::CheckpointParentMissing => "checkpoint_parent_missing",
            Check::MissingParent => "missing_parent",
            Check::InvalidId => "invalid_id",
            Check::UnreadableJson => "unreadable_json",
        }
    }

    /// One line an operator reads: what is wrong.
    pub fn title(self) -> &'static str {
        match self {
            Check::BusyWithoutActiveRun => "threads busy without a pending or running run",
            Check::ActiveRunNotBusy => "threads not busy although a run is pending or running",
            Check::StaleRunningRun => "runs running with no sign of life (no live executor)",
            Check::SeqGap => "gaps in a thread's event seq",
            Check::SeqDuplicate => "duplicate event seq in a thread",
            Check::LastSeqBehind => "threads.last_seq below the newest event (appends fail)",
            Check::LastSeqAhead => "threads.last_seq above the newest event",
            Check::EventRunMissing => "events pointing at a missing run",
            Check::EventRunInOtherThread => "events pointing at a run of another thread",
            Check::CheckpointRunMissing => "checkpoints pointing at a missing run",
            Check::CheckpointRunInOtherThread => "checkpoints pointing at a run of another thread",
            Check::CheckpointParentMissing => {
                "checkpoints whose parent is not an older checkpoint of their thread"
            }
            Check::MissingParent => "rows whose thread, owner or user is missing",
            Check::InvalidId => "ids that are not valid UUIDs",
            Check::UnreadableJson => "JSON values this server cannot read back",
        }
    }

    /// Gaps and a `last_seq` ahead are warnings: deleting or rolling back a finished run
    /// deletes its events too, which leaves exactly these behind.
    pub fn severity(self) -> Severity {
        match self {
            Check::SeqGap | Check::LastSeqAhead => Severity::Warning,
            _ => Severity::Error,
        }
    }

    /// Whether `--fix` repairs it. Nothing that would delete rows or invent events is
    /// repaired; nor is a `last_seq` lowered (clients may hold cursors past it).
    pub fn fixable(self) -> bool {
        matches!(
            self,
            Check::BusyWithoutActiveRun
                | Check::ActiveRunNotBusy
                | Check::StaleRunningRun
                | Check::LastSeqBehind
        )
    }

    /// What the operator can do about it (for checks `--fix` leaves alone, by hand).
    pub fn hint(self) -> &'static str {
        match self {
            Check::BusyWithoutActiveRun | Check::ActiveRunNotBusy => {
                "--fix sets the thread's status from its runs"
            }
            Check::StaleRunningRun => {
                "--fix ends the run `error` with a run_error event; if its server is in fact alive and the run is just slow, raise --stale-after"
            }
            Check::SeqGap => {
                "normal after a finished run was deleted or rolled back (its events go with it); otherwise events were deleted by hand; never filled in"
            }
            Check::SeqDuplicate => "the (thread_id, seq) primary key is missing or was bypassed",
            Check::LastSeqBehind => "--fix raises last_seq to the newest event's seq",
            Check::LastSeqAhead => {
                "normal after the newest run was deleted; never lowered (clients may hold cursors past it)"
            }
            Check::EventRunMissing
            | Check::EventRunInOtherThread
            | Check::CheckpointRunMissing
            | Check::CheckpointRunInOtherThread
            | Check::MissingParent => {
                "foreign keys were bypassed (SQLite without `pragma foreign_keys`, PostgreSQL replication role): restore the rows from a backup or delete them by hand"
            }
            Check::CheckpointParentMissing => {
                "the parent was deleted by hand, or by a rollback of the run that wrote it after a state update forked from it: the branch still reads, but history cannot link it to the rest; delete the branch's checkpoints by hand if it is not wanted"
            }
            Check::InvalidId => {
                "written around Spindle (ids only come from the ids crate): correct or delete the row by hand"
            }
            Check::UnreadableJson => {
                "stored by an older Spindle (which did not check JSON on the way in) or by hand; it fails only the requests and runs that read it (lists skip it): correct the value by hand (e.g. `update threads set metadata = '{}' where thread_id = '...'`), or delete the row"
            }
        }
    }
}

/// One broken invariant, on one thread, run or row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<ThreadId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<UserId>,
    /// What exactly, in a sentence.
    pub detail: String,
}

impl Finding {
    pub(crate) fn new(check: Check, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            severity: check.severity(),
            thread_id: None,
            run_id: None,
            owner_id: None,
            detail: detail.into(),
        }
    }

    pub(crate) fn thread(mut self, thread: impl Into<Option<ThreadId>>) -> Finding {
        self.thread_id = thread.into();
        self
    }

    pub(crate) fn run(mut self, run: impl Into<Option<RunId>>) -> Finding {
        self.run_id = run.into();
        self
    }

    pub(crate) fn owner(mut self, owner: impl Into<Option<UserId>>) -> Finding {
        self.owner_id = owner.into();
        self
    }
}

/// One thing `--fix` did (or found already done by someone else).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Repair {
    pub check: Check,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<ThreadId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// What was done, in a sentence.
    pub done: String,
}

/// The size of what was checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DoctorCounts {
    pub users: i64,
    pub threads: i64,
    pub runs: i64,
    pub active_runs: i64,
    pub checkpoints: i64,
    pub events: i64,
}

/// What the doctor found, did, and found left.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub backend: &'static str,
    pub checked_at: DateTime<Utc>,
    pub stale_after_secs: u64,
    pub counts: DoctorCounts,
    /// Every finding of the first scan.
    pub findings: Vec<Finding>,
    /// What `--fix` did (empty without it).
    pub repairs: Vec<Repair>,
    /// The findings of a second scan after the repairs (the first scan's without `--fix`).
    pub remaining: Vec<Finding>,
    /// What the checks cannot see, said once.
    pub notes: Vec<String>,
}

impl DoctorReport {
    /// Healthy: no error remains (warnings may).
    pub fn healthy(&self) -> bool {
        self.remaining.iter().all(|f| f.severity != Severity::Error)
    }
}

impl Store {
    /// Checks the database's invariants; with `fix`, repairs what is safe (stale runs end
    /// `error` with a `run_error` event, thread statuses are set from their runs, a
    /// `last_seq` behind is raised) and checks again.
    pub async fn doctor(&self, options: &DoctorOptions) -> Result<DoctorReport> {
        let checked_at = now();
        let (counts, findings) = self.admin_doctor_scan(stale_before(options)).await?;
        let mut repairs = Vec::new();
        let remaining = if options.fix && findings.iter().any(|f| f.check.fixable()) {
            repairs = self.repair(&findings, options).await?;
            self.admin_doctor_scan(stale_before(options)).await?.1
        } else {
            findings.clone()
        };
        Ok(DoctorReport {
            backend: self.backend().as_str(),
            checked_at,
            stale_after_secs: options.stale_after.as_secs(),
            counts,
            findings,
            repairs,
            remaining,
            notes: notes(self.backend(), options),
        })
    }

    /// Repairs, in an order where each step's precondition holds: `last_seq` first (ending a
    /// run appends an event), then runs (ending one settles its thread), then threads.
    async fn repair(&self, findings: &[Finding], options: &DoctorOptions) -> Result<Vec<Repair>> {
        let mut repairs = Vec::new();
        let of = |check: Check| findings.iter().filter(move |f| f.check == check);
        for f in of(Check::LastSeqBehind) {
            let Some(thread) = f.thread_id else { continue };
            let done = match self.admin_raise_last_seq(thread).await? {
                Some((old, new)) => format!("raised last_seq from {old} to {new}"),
                None => "last_seq was no longer behind: nothing to do".to_owned(),
            };
            repairs.push(Repair { check: f.check, thread_id: Some(thread), run_id: None, done });
        }
        for f in of(Check::StaleRunningRun) {
            let (Some(thread), Some(run), Some(owner)) = (f.thread_id, f.run_id, f.owner_id) else {
                continue;
            };
            let done = self.end_stale_run(owner, thread, run, options).await?;
            repairs.push(Repair {
                check: f.check,
                thread_id: Some(thread),
                run_id: Some(run),
                done,
            });
        }
        let threads = of(Check::BusyWithoutActiveRun).chain(of(Check::ActiveRunNotBusy));
        for f in threads {
            let Some(thread) = f.thread_id else { continue };
            let done = match self.admin_settle_thread_status(thread).await? {
                Some((old, new)) => format!("set the thread's status from {old} to {new}"),
                None => {
                    "the thread's status already agreed with its runs: nothing to do".to_owned()
                }
            };
            repairs.push(Repair { check: f.check, thread_id: Some(thread), run_id: None, done });
        }
        Ok(repairs)
    }

    /// Ends a stale run the way a restart's recovery does: `error`, the thread's status
    /// following, and a `run_error` event, in one transaction that only ends a running run.
    async fn end_stale_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        options: &DoctorOptions,
    ) -> Result<String> {
        let secs = options.stale_after.as_secs();
        let message =
            format!("ended by spindle doctor: running with no sign of life for more than {secs} s");
        let end = RunEnd {
            interrupted: false,
            status: RunStatus::Error,
            error: Some(message.clone()),
            event: NewEvent {
                run_id: Some(run),
                kind: EventKind::RunError,
                data: json!({ "error": "StaleRun", "message": message }),
            },
        };
        let none = Metadata::new();
        match self.commit_step(owner, thread, run, &[], None, &none, Some(&end)).await {
            Ok(step) => {
                let seq = step.events.last().map_or(0, |e| e.seq);
                Ok(format!("ended the run `error` with a run_error event (seq {seq})"))
            }
            Err(Error::Conflict(_)) => Ok("the run had already ended: nothing to do".to_owned()),
            Err(e) => Err(e),
        }
    }

    // The backends' parts are `admin_doctor_scan`, `admin_raise_last_seq`,
    // `admin_settle_thread_status` and `admin_inspect_id`, in api/admin.rs with the other
    // `admin_*` methods.
}

fn stale_before(options: &DoctorOptions) -> DateTime<Utc> {
    let stale = chrono::Duration::from_std(options.stale_after).unwrap_or(chrono::Duration::MAX);
    now().checked_sub_signed(stale).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn notes(backend: crate::Backend, options: &DoctorOptions) -> Vec<String> {
    let ids = match backend {
        crate::Backend::Sqlite => {
            "ids: every id column is checked for a 16-byte BLOB other than the nil UUID; UUID versions are not checked (clients may choose their own ids)"
        }
        crate::Backend::Postgres => {
            "ids: PostgreSQL's uuid type guarantees every id is a UUID; only the nil UUID is checked for; UUID versions are not checked (clients may choose their own ids)"
        }
    };
    vec![
        format!(
            "runs have no executor lease or heartbeat yet: a running run counts as stale after {} s without a sign of life (its start or one of its events); a server with a longer --run-timeout needs a longer --stale-after",
            options.stale_after.as_secs()
        ),
        "events a repair appends reach clients streaming from a running server when they reconnect, not live".to_owned(),
        ids.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_one_name() {
        let names: std::collections::HashSet<_> = Check::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Check::ALL.len());
        for check in Check::ALL {
            assert_eq!(serde_json::to_value(check).unwrap(), check.name());
        }
    }
}
