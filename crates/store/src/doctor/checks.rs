//! What the backends' doctor scans share: the schema's id and JSON columns, and the
//! findings made from what a scan reads (the SQL itself is each backend's `admin.rs`).

use chrono::{DateTime, Utc};
use ids::{ThreadId, UserId};

use crate::model::*;

use super::{Check, Finding};

/// The id columns of the schema: (table, column).
pub(crate) const ID_COLUMNS: &[(&str, &str)] = &[
    ("users", "user_id"),
    ("assistants", "assistant_id"),
    ("assistants", "owner_id"),
    ("assistant_versions", "assistant_id"),
    ("threads", "thread_id"),
    ("threads", "owner_id"),
    ("runs", "run_id"),
    ("runs", "thread_id"),
    ("runs", "owner_id"),
    ("runs", "assistant_id"),
    ("checkpoints", "checkpoint_id"),
    ("checkpoints", "thread_id"),
    ("checkpoints", "run_id"),
    ("checkpoints", "parent_checkpoint_id"),
    ("events", "thread_id"),
    ("events", "run_id"),
    ("api_keys", "key_id"),
    ("api_keys", "user_id"),
    ("graph_checkpoints", "thread_id"),
    ("graph_checkpoints", "checkpoint_id"),
    ("graph_checkpoints", "parent_checkpoint_id"),
    ("graph_checkpoint_blobs", "thread_id"),
    ("graph_checkpoint_writes", "thread_id"),
    ("graph_checkpoint_writes", "checkpoint_id"),
];

/// A table with JSON columns, for [`Check::UnreadableJson`]: its row's id column (`seq` for
/// events, named with their thread) and the columns that fill a finding's ids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JsonTable {
    pub table: &'static str,
    pub kind: &'static str,
    pub id: &'static str,
    pub thread: Option<&'static str>,
    pub run: Option<&'static str>,
    pub owner: Option<&'static str>,
    pub columns: &'static [&'static str],
}

/// Every JSON column of the schema. Names come from here, never from input.
pub(crate) const JSON_TABLES: &[JsonTable] = &[
    JsonTable {
        table: "threads",
        kind: "thread",
        id: "thread_id",
        thread: Some("thread_id"),
        run: None,
        owner: Some("owner_id"),
        columns: &["metadata", "state_values"],
    },
    JsonTable {
        table: "runs",
        kind: "run",
        id: "run_id",
        thread: Some("thread_id"),
        run: Some("run_id"),
        owner: Some("owner_id"),
        columns: &["input", "kwargs", "metadata"],
    },
    JsonTable {
        table: "checkpoints",
        kind: "checkpoint",
        id: "checkpoint_id",
        thread: Some("thread_id"),
        run: Some("run_id"),
        owner: None,
        columns: &["state_values", "metadata"],
    },
    JsonTable {
        table: "events",
        kind: "event",
        id: "seq",
        thread: Some("thread_id"),
        run: Some("run_id"),
        owner: None,
        columns: &["data"],
    },
    JsonTable {
        table: "assistants",
        kind: "assistant",
        id: "assistant_id",
        thread: None,
        run: None,
        owner: Some("owner_id"),
        columns: &["config", "context", "metadata"],
    },
    JsonTable {
        table: "assistant_versions",
        kind: "assistant version",
        id: "assistant_id",
        thread: None,
        run: None,
        owner: None,
        columns: &["config", "context", "metadata"],
    },
    JsonTable {
        table: "graph_checkpoints",
        kind: "graph checkpoint",
        id: "checkpoint_id",
        thread: Some("thread_id"),
        run: None,
        owner: None,
        columns: &["checkpoint", "metadata"],
    },
];

/// Rows of a table the JSON scan reads at a time.
pub(crate) const JSON_SCAN_PAGE: i64 = 256;

/// The finding for one stored JSON `text` of `table.column`, if serde_json cannot read it
/// (what every read of the row does).
pub(crate) fn unreadable_json(
    spec: &JsonTable,
    column: &str,
    id: &str,
    text: &str,
) -> Option<Finding> {
    let cause = serde_json::from_str::<serde_json::Value>(text).err()?;
    Some(Finding::new(
        Check::UnreadableJson,
        format!("{} {id}: {}.{column} cannot be read ({cause})", spec.kind, spec.table),
    ))
}

/// The seqs where a thread's log breaks, as `(seq, previous seq)` pairs from a scan in seq
/// order (the first previous is 0), turned into words: `missing 3-4, 9; 7 twice`.
pub(crate) fn describe_breaks(breaks: &[(i64, i64)]) -> String {
    let parts: Vec<String> = breaks
        .iter()
        .map(|&(seq, prev)| match seq - prev {
            0 => format!("{seq} twice"),
            2 => format!("missing {}", prev + 1),
            _ => format!("missing {}-{}", prev + 1, seq - 1),
        })
        .collect();
    parts.join(", ")
}

/// The findings of the `seq` checks for one thread, from its group statistics and its breaks.
#[allow(clippy::too_many_arguments, reason = "one row of statistics")]
pub(crate) fn seq_findings(
    thread: ThreadId,
    owner: Option<UserId>,
    rows: i64,
    distinct: i64,
    max: i64,
    breaks: &[(i64, i64)],
) -> Vec<Finding> {
    let mut out = Vec::new();
    let breaks_text = describe_breaks(breaks);
    let more = if breaks.len() as i64 >= SEQ_BREAKS_SHOWN { ", ..." } else { "" };
    if rows != distinct {
        out.push(
            Finding::new(
                Check::SeqDuplicate,
                format!(
                    "{} event(s) share a seq with another ({breaks_text}{more})",
                    rows - distinct
                ),
            )
            .thread(thread)
            .owner(owner),
        );
    }
    if max != distinct {
        out.push(
            Finding::new(
                Check::SeqGap,
                format!("{} of seq 1..{max} missing ({breaks_text}{more})", max - distinct),
            )
            .thread(thread)
            .owner(owner),
        );
    }
    out
}

/// How many breaks of one thread's log a finding lists.
pub(crate) const SEQ_BREAKS_SHOWN: i64 = 5;

/// The status a thread's runs give it: `busy` while one is active; a `busy` thread without an
/// active run takes the status its newest run's end gives (`idle` without runs); any other
/// status stands.
pub(crate) fn settled_status(
    current: ThreadStatus,
    active: i64,
    newest: Option<RunStatus>,
) -> ThreadStatus {
    if active > 0 {
        return ThreadStatus::Busy;
    }
    if current != ThreadStatus::Busy {
        return current;
    }
    newest.map_or(ThreadStatus::Idle, |status| thread_status_after(status, 0, false))
}

/// What is wrong with a checkpoint's parent, for [`Check::CheckpointParentMissing`].
pub(crate) fn parent_detail(
    checkpoint: &str,
    parent: &str,
    thread: Option<ThreadId>,
    parent_thread: Option<ThreadId>,
) -> String {
    match parent_thread {
        None => format!("checkpoint {checkpoint} has parent {parent}, which does not exist"),
        Some(other) if Some(other) != thread => {
            format!("checkpoint {checkpoint} has parent {parent}, a checkpoint of thread {other}")
        }
        Some(_) => {
            format!("checkpoint {checkpoint} has parent {parent}, which is not older than it")
        }
    }
}

pub(crate) fn stale_finding(started: DateTime<Utc>, last: DateTime<Utc>) -> Finding {
    Finding::new(
        Check::StaleRunningRun,
        format!(
            "running since {}, last sign of life {} ({} s ago)",
            started.to_rfc3339(),
            last.to_rfc3339(),
            secs_ago(last)
        ),
    )
}

pub(crate) fn last_seq_finding(last: i64, max: i64) -> Finding {
    let check = if last < max { Check::LastSeqBehind } else { Check::LastSeqAhead };
    Finding::new(check, format!("last_seq is {last}, the newest event's seq is {max}"))
}

/// Seconds from `then` to now, for "N s ago".
pub(crate) fn secs_ago(then: DateTime<Utc>) -> i64 {
    (now() - then).num_seconds()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_are_described_as_ranges() {
        assert_eq!(describe_breaks(&[(3, 1), (9, 5), (7, 7)]), "missing 2, missing 6-8, 7 twice");
        let t = ThreadId::new();
        let found = seq_findings(t, None, 5, 5, 7, &[(3, 1), (7, 5)]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].check, Check::SeqGap);
        assert_eq!(found[0].detail, "2 of seq 1..7 missing (missing 2, missing 6)");
    }
}
