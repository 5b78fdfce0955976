//! SQLite: the `admin_*` functions (no owner: never called on behalf of a user): lookups,
//! `/metrics` stats, and the SQL of `spindle doctor` and `spindle id inspect` (see
//! `crate::doctor`).
//!
//! A little over 600 lines: the doctor's scan is one snapshot's queries, kept together so its
//! checks read (and compare with the other backend's) in one place.

use chrono::{DateTime, Utc};
use ids::{ApiKeyId, AssistantId, CheckpointId, RunId, ThreadId, UserId};
use rusqlite::types::{FromSql, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::doctor::{
    self, AnyId, Check, DoctorCounts, Finding, IdLookup, RunFacts, ThreadFacts, UserFacts,
};
use crate::model::*;
use crate::{Error, Result, STATS_BUSY_WITHOUT_RUN};

use super::keys::find_api_key;
use super::threads::find_thread;
use super::{SqliteStore, all, assistant_row, checkpoint_row, micros, parsed, run_row, time};

impl SqliteStore {
    pub async fn admin_find_thread(&self, id: ThreadId) -> Result<Option<Thread>> {
        self.read(move |c| find_thread(c, id)).await
    }

    pub async fn admin_thread_owner(&self, id: ThreadId) -> Result<Option<UserId>> {
        self.read(move |c| {
            let sql = "select owner_id from threads where thread_id = ?1";
            Ok(c.prepare_cached(sql)?.query_row([id], |r| r.get(0)).optional()?)
        })
        .await
    }

    pub async fn admin_stats(&self) -> Result<Stats> {
        self.read(move |c| {
            let count = |sql: &str| -> Result<i64> { Ok(c.query_row(sql, [], |r| r.get(0))?) };
            // Named indexes: without statistics SQLite would rather scan a covering index of
            // every run.
            let threads_busy =
                count("select count(*) from threads indexed by threads_busy where status = 'busy'")?;
            let threads_busy_without_run = count(STATS_BUSY_WITHOUT_RUN)?;
            let runs_pending =
                count("select count(*) from runs indexed by runs_pending where status = 'pending'")?;
            let (runs_running, oldest): (i64, Option<i64>) = c.query_row(
                "select count(*), min(updated_at) from runs indexed by runs_running where status = 'running'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Stats {
                threads_busy,
                threads_busy_without_run,
                runs_pending,
                runs_running,
                oldest_running_since: oldest.map(micros_to_time),
            })
        })
        .await
    }

    pub async fn admin_count_threads(&self, id: ThreadId) -> Result<i64> {
        self.read(move |c| {
            Ok(c.query_row("select count(*) from threads where thread_id = ?1", [id], |r| {
                r.get(0)
            })?)
        })
        .await
    }

    pub async fn admin_doctor_scan(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<(DoctorCounts, Vec<Finding>)> {
        self.read(move |c| {
            // One read transaction: every check sees the same snapshot (rolled back on drop).
            let tx = c.unchecked_transaction()?;
            doctor_scan(&tx, micros(stale_before))
        })
        .await
    }

    pub async fn admin_raise_last_seq(&self, id: ThreadId) -> Result<Option<(i64, i64)>> {
        self.write(move |c| {
            let sql = "select last_seq, (select coalesce(max(seq), 0) from events where thread_id = ?1) from threads where thread_id = ?1";
            let row: Option<(i64, i64)> =
                c.query_row(sql, [id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            let Some((old, max)) = row.filter(|(old, max)| old < max) else { return Ok(None) };
            c.execute("update threads set last_seq = ?1 where thread_id = ?2", params![max, id])?;
            Ok(Some((old, max)))
        })
        .await
    }

    pub async fn admin_settle_thread_status(
        &self,
        id: ThreadId,
    ) -> Result<Option<(ThreadStatus, ThreadStatus)>> {
        self.write(move |c| {
            let current: Option<ThreadStatus> = c
                .query_row("select status from threads where thread_id = ?1", [id], |r| {
                    parsed(r, 0)
                })
                .optional()?;
            let Some(current) = current else { return Ok(None) };
            let active: i64 = c.query_row(
                "select count(*) from runs where thread_id = ?1 and status in ('pending', 'running')",
                [id],
                |r| r.get(0),
            )?;
            let newest: Option<RunStatus> = c
                .query_row(
                    "select status from runs where thread_id = ?1 order by updated_at desc, run_id desc limit 1",
                    [id],
                    |r| parsed(r, 0),
                )
                .optional()?;
            let settled = doctor::settled_status(current, active, newest);
            if settled == current {
                return Ok(None);
            }
            c.execute(
                "update threads set status = ?1, updated_at = ?2 where thread_id = ?3",
                params![settled.as_str(), micros(now()), id],
            )?;
            Ok(Some((current, settled)))
        })
        .await
    }

    pub async fn admin_inspect_id(&self, id: &AnyId) -> Result<IdLookup> {
        let id = *id;
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            inspect_in(&tx, &id)
        })
        .await
    }
}

// ---- diagnostics: `spindle doctor` and `spindle id inspect` (see crate::doctor) ----

fn doctor_scan(c: &Connection, stale_before: i64) -> Result<(DoctorCounts, Vec<Finding>)> {
    let counts = c.query_row(
        "select (select count(*) from users), (select count(*) from threads), (select count(*) from runs),
                (select count(*) from runs where status in ('pending', 'running')),
                (select count(*) from checkpoints), (select count(*) from events)",
        [],
        |r| {
            Ok(DoctorCounts {
                users: r.get(0)?,
                threads: r.get(1)?,
                runs: r.get(2)?,
                active_runs: r.get(3)?,
                checkpoints: r.get(4)?,
                events: r.get(5)?,
            })
        },
    )?;
    let limit = doctor::MAX_PER_CHECK;
    let mut out = Vec::new();

    let sql = "select thread_id, owner_id,
                      (select status from runs r where r.thread_id = t.thread_id order by updated_at desc, run_id desc limit 1)
               from threads t where status = 'busy'
                and not exists (select 1 from runs r where r.thread_id = t.thread_id and r.status in ('pending', 'running'))
               order by thread_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let newest: Option<String> = r.get(2)?;
        let detail = match newest {
            Some(status) => {
                format!("busy, but no run is pending or running (the newest run is {status})")
            }
            None => "busy, but the thread has no runs".to_owned(),
        };
        Ok(Finding::new(Check::BusyWithoutActiveRun, detail)
            .thread(id_opt::<ThreadId>(r, 0)?)
            .owner(id_opt::<UserId>(r, 1)?))
    })?);

    let sql = "select t.thread_id, t.owner_id, t.status, count(*) from runs r join threads t on t.thread_id = r.thread_id
               where r.status in ('pending', 'running') and t.status <> 'busy'
               group by t.thread_id order by t.thread_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let (status, active): (String, i64) = (r.get(2)?, r.get(3)?);
        Ok(Finding::new(
            Check::ActiveRunNotBusy,
            format!("{status}, although {active} run(s) are pending or running"),
        )
        .thread(id_opt::<ThreadId>(r, 0)?)
        .owner(id_opt::<UserId>(r, 1)?))
    })?);

    let sql = "select run_id, thread_id, owner_id, updated_at, last from (
                   select r.run_id, r.thread_id, r.owner_id, r.updated_at,
                          max(r.updated_at, coalesce((select max(e.created_at) from events e where e.run_id = r.run_id), 0)) as last
                   from runs r where r.status = 'running')
               where last < ?1 order by last limit ?2";
    out.extend(all(c, sql, params![stale_before, limit], |r| {
        let (started, last) = (time(r, 3)?, time(r, 4)?);
        Ok(doctor::stale_finding(started, last)
            .run(id_opt::<RunId>(r, 0)?)
            .thread(id_opt::<ThreadId>(r, 1)?)
            .owner(id_opt::<UserId>(r, 2)?))
    })?);

    let sql = "select thread_id, (select owner_id from threads t where t.thread_id = e.thread_id),
                      count(*), count(distinct seq), max(seq)
               from events e group by thread_id
               having count(*) <> count(distinct seq) or max(seq) <> count(distinct seq) limit ?1";
    let broken = all(c, sql, [limit], |r| {
        let stats: (i64, i64, i64) = (r.get(2)?, r.get(3)?, r.get(4)?);
        Ok((id_opt::<ThreadId>(r, 0)?, id_opt::<UserId>(r, 1)?, stats))
    })?;
    for (thread, owner, (rows, distinct, max)) in broken {
        // A malformed thread id is reported by the id check.
        let Some(thread) = thread else { continue };
        let sql = "select seq, prev from (select seq, lag(seq, 1, 0) over (order by seq) as prev from events where thread_id = ?1)
                   where seq <> prev + 1 order by seq limit ?2";
        let breaks =
            all(c, sql, params![thread, doctor::SEQ_BREAKS_SHOWN], |r| Ok((r.get(0)?, r.get(1)?)))?;
        out.extend(doctor::seq_findings(thread, owner, rows, distinct, max, &breaks));
    }

    let sql = "select thread_id, owner_id, last_seq, max_seq from (
                   select t.thread_id, t.owner_id, t.last_seq,
                          coalesce((select max(seq) from events e where e.thread_id = t.thread_id), 0) as max_seq
                   from threads t)
               where last_seq <> max_seq order by thread_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let (last, max): (i64, i64) = (r.get(2)?, r.get(3)?);
        Ok(doctor::last_seq_finding(last, max).thread(id_opt::<ThreadId>(r, 0)?).owner(id_opt::<
            UserId,
        >(
            r, 1
        )?))
    })?);

    let sql = "select e.thread_id, e.run_id, count(*), min(e.seq), max(e.seq), r.thread_id
               from events e left join runs r on r.run_id = e.run_id
               where e.run_id is not null and length(e.run_id) = 16 and (r.run_id is null or r.thread_id <> e.thread_id)
               group by e.thread_id, e.run_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let (n, first, last): (i64, i64, i64) = (r.get(2)?, r.get(3)?, r.get(4)?);
        let run = id_opt::<RunId>(r, 1)?;
        let events = format!("{n} event(s) (seq {first}..{last})");
        let finding = match r.get_ref(5)? {
            ValueRef::Null => Finding::new(
                Check::EventRunMissing,
                format!("{events} name run {}, which does not exist", id_text::<RunId>(r, 1)?),
            ),
            _ => Finding::new(
                Check::EventRunInOtherThread,
                format!("{events} name a run of thread {}", id_text::<ThreadId>(r, 5)?),
            ),
        };
        Ok(finding.thread(id_opt::<ThreadId>(r, 0)?).run(run))
    })?);

    let sql = "select c.checkpoint_id, c.thread_id, c.run_id, r.thread_id
               from checkpoints c left join runs r on r.run_id = c.run_id
               where c.run_id is not null and length(c.run_id) = 16 and (r.run_id is null or r.thread_id <> c.thread_id)
               order by c.checkpoint_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let checkpoint = id_text::<CheckpointId>(r, 0)?;
        let finding = match r.get_ref(3)? {
            ValueRef::Null => Finding::new(
                Check::CheckpointRunMissing,
                format!(
                    "checkpoint {checkpoint} names run {}, which does not exist",
                    id_text::<RunId>(r, 2)?
                ),
            ),
            _ => Finding::new(
                Check::CheckpointRunInOtherThread,
                format!(
                    "checkpoint {checkpoint} names a run of thread {}",
                    id_text::<ThreadId>(r, 3)?
                ),
            ),
        };
        Ok(finding.thread(id_opt::<ThreadId>(r, 1)?).run(id_opt::<RunId>(r, 2)?))
    })?);

    // Forks make a thread's checkpoints a tree: every parent an older checkpoint of the thread.
    let sql = "select c.checkpoint_id, c.thread_id, c.parent_checkpoint_id, p.thread_id
               from checkpoints c left join checkpoints p on p.checkpoint_id = c.parent_checkpoint_id
               where c.parent_checkpoint_id is not null and length(c.parent_checkpoint_id) = 16 and c.parent_checkpoint_id <> zeroblob(16)
                 and (p.checkpoint_id is null or p.thread_id <> c.thread_id or p.checkpoint_id >= c.checkpoint_id)
               order by c.checkpoint_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let checkpoint = id_text::<CheckpointId>(r, 0)?;
        let parent = id_text::<CheckpointId>(r, 2)?;
        let thread = id_opt::<ThreadId>(r, 1)?;
        let parent_thread = match r.get_ref(3)? {
            ValueRef::Null => None,
            _ => id_opt::<ThreadId>(r, 3)?,
        };
        Ok(Finding::new(
            Check::CheckpointParentMissing,
            doctor::parent_detail(&checkpoint, &parent, thread, parent_thread),
        )
        .thread(thread))
    })?);

    missing_parents(c, limit, &mut out)?;
    invalid_ids(c, limit, &mut out)?;
    unreadable_json(c, limit, &mut out)?;
    Ok((counts, out))
}

/// JSON values serde_json cannot read back, a page of rows at a time. Table and column names
/// come from `doctor::JSON_TABLES`, never from input.
fn unreadable_json(c: &Connection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    use rusqlite::types::Value as Sql;
    let mut found = 0;
    for spec in doctor::JSON_TABLES {
        let events = spec.table == "events";
        // Events have no rowid: they are paged by (thread_id, seq).
        let (key, after) = if events {
            ("thread_id, seq", "(thread_id, seq) > (?1, ?2)")
        } else {
            ("rowid, rowid", "rowid > ?1 and ?2 is not null")
        };
        let named = |c: Option<&str>| c.unwrap_or("null").to_owned();
        let sql = format!(
            "select {key}, {}, {}, {}, {}, {} from {} where {after} order by {key} limit ?3",
            spec.id,
            named(spec.thread),
            named(spec.run),
            named(spec.owner),
            spec.columns.join(", "),
            spec.table,
        );
        let mut last: (Sql, Sql) = if events {
            (Sql::Blob(Vec::new()), Sql::Integer(0))
        } else {
            (Sql::Integer(i64::MIN), Sql::Integer(0))
        };
        loop {
            let mut page = 0;
            let mut stmt = c.prepare(&sql)?;
            let mut rows = stmt.query(params![last.0, last.1, doctor::JSON_SCAN_PAGE])?;
            while let Some(r) = rows.next()? {
                page += 1;
                last = (r.get(0)?, r.get(1)?);
                let thread = id_opt::<ThreadId>(r, 3).ok().flatten();
                let id = if events {
                    let thread = thread.map_or_else(|| "?".to_owned(), |t| t.to_string());
                    format!("{} of thread {thread}", r.get::<_, i64>(2)?)
                } else {
                    id_opt::<ThreadId>(r, 2)
                        .ok()
                        .flatten()
                        .map_or_else(|| "?".to_owned(), |i| i.to_string())
                };
                for (i, column) in spec.columns.iter().enumerate() {
                    let ValueRef::Text(text) = r.get_ref(6 + i)? else { continue };
                    let text = String::from_utf8_lossy(text);
                    if let Some(finding) = doctor::unreadable_json(spec, column, &id, &text) {
                        out.push(
                            finding
                                .thread(thread)
                                .run(id_opt::<RunId>(r, 4).ok().flatten())
                                .owner(id_opt::<UserId>(r, 5).ok().flatten()),
                        );
                        found += 1;
                        if found >= limit {
                            return Ok(());
                        }
                    }
                }
            }
            if page < doctor::JSON_SCAN_PAGE {
                break;
            }
        }
    }
    Ok(())
}

/// Rows whose thread, owner or user is missing: foreign keys bypassed.
fn missing_parents(c: &Connection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    let sql = "select r.run_id, r.thread_id, r.owner_id, (select t.owner_id from threads t where t.thread_id = r.thread_id)
               from runs r where not exists (select 1 from threads t where t.thread_id = r.thread_id and t.owner_id = r.owner_id)
               order by r.run_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let detail = match r.get_ref(3)? {
            ValueRef::Null => {
                format!("run of thread {}, which does not exist", id_text::<ThreadId>(r, 1)?)
            }
            _ => format!(
                "run owned by {}, but its thread is owned by {}",
                id_text::<UserId>(r, 2)?,
                id_text::<UserId>(r, 3)?
            ),
        };
        Ok(Finding::new(Check::MissingParent, detail)
            .run(id_opt::<RunId>(r, 0)?)
            .thread(id_opt::<ThreadId>(r, 1)?)
            .owner(id_opt::<UserId>(r, 2)?))
    })?);
    let sql = "select e.thread_id, count(*) from events e
               where not exists (select 1 from threads t where t.thread_id = e.thread_id)
               group by e.thread_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        let n: i64 = r.get(1)?;
        Ok(Finding::new(
            Check::MissingParent,
            format!("{n} event(s) of thread {}, which does not exist", id_text::<ThreadId>(r, 0)?),
        )
        .thread(id_opt::<ThreadId>(r, 0)?))
    })?);
    let sql = "select c.checkpoint_id, c.thread_id from checkpoints c
               where not exists (select 1 from threads t where t.thread_id = c.thread_id)
               order by c.checkpoint_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        Ok(Finding::new(
            Check::MissingParent,
            format!(
                "checkpoint {} of thread {}, which does not exist",
                id_text::<CheckpointId>(r, 0)?,
                id_text::<ThreadId>(r, 1)?
            ),
        )
        .thread(id_opt::<ThreadId>(r, 1)?))
    })?);
    let sql = "select t.thread_id, t.owner_id from threads t
               where not exists (select 1 from users u where u.user_id = t.owner_id) order by t.thread_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        Ok(Finding::new(
            Check::MissingParent,
            format!("thread owned by user {}, who does not exist", id_text::<UserId>(r, 1)?),
        )
        .thread(id_opt::<ThreadId>(r, 0)?)
        .owner(id_opt::<UserId>(r, 1)?))
    })?);
    let sql = "select k.key_id, k.user_id from api_keys k
               where not exists (select 1 from users u where u.user_id = k.user_id) order by k.key_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        Ok(Finding::new(
            Check::MissingParent,
            format!(
                "API key {} of user {}, who does not exist",
                id_text::<ApiKeyId>(r, 0)?,
                id_text::<UserId>(r, 1)?
            ),
        ))
    })?);
    let sql = "select a.assistant_id, a.owner_id from assistants a where a.owner_id is not null
                and not exists (select 1 from users u where u.user_id = a.owner_id) order by a.assistant_id limit ?1";
    out.extend(all(c, sql, [limit], |r| {
        Ok(Finding::new(
            Check::MissingParent,
            format!(
                "assistant {} of user {}, who does not exist",
                id_text::<AssistantId>(r, 0)?,
                id_text::<UserId>(r, 1)?
            ),
        ))
    })?);
    Ok(())
}

/// Id columns holding anything but a 16-byte BLOB, or the nil UUID. Table and column names
/// come from `doctor::ID_COLUMNS`, never from input.
fn invalid_ids(c: &Connection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    for &(table, column) in doctor::ID_COLUMNS {
        // Events have no rowid: they are named by (thread_id, seq).
        let key = if table == "events" { "thread_id, seq" } else { "rowid, rowid" };
        let sql = format!(
            "select {key}, {column} from {table} where {column} is not null
               and (typeof({column}) <> 'blob' or length({column}) <> 16 or {column} = zeroblob(16))
             limit ?1"
        );
        out.extend(all(c, &sql, [limit], |r| {
            let row = match table {
                // The finding names a well-formed thread; a malformed one is named here.
                "events" => match id_opt::<ThreadId>(r, 0)? {
                    Some(_) => format!("the event {}", r.get::<_, i64>(1)?),
                    None => format!(
                        "the event {} of thread {}",
                        r.get::<_, i64>(1)?,
                        id_text::<ThreadId>(r, 0)?
                    ),
                },
                _ => format!("the row with rowid {}", r.get::<_, i64>(0)?),
            };
            let value = match r.get_ref(2)? {
                ValueRef::Blob(b) if b.len() == 16 => "the nil UUID".to_owned(),
                other => raw_text(other),
            };
            let thread = if table == "events" { id_opt::<ThreadId>(r, 0)? } else { None };
            Ok(Finding::new(Check::InvalidId, format!("{table}.{column} of {row} is {value}"))
                .thread(thread))
        })?);
    }
    Ok(())
}

/// A well-formed id of the column (a 16-byte BLOB), or `None`.
fn id_opt<T: FromSql>(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    match r.get_ref(idx)? {
        ValueRef::Blob(b) if b.len() == 16 => r.get(idx).map(Some),
        _ => Ok(None),
    }
}

/// A column's id as text: the UUID if it is one, or what it holds instead.
fn id_text<T: FromSql + std::fmt::Display>(r: &Row<'_>, idx: usize) -> rusqlite::Result<String> {
    match id_opt::<T>(r, idx)? {
        Some(id) => Ok(id.to_string()),
        None => Ok(raw_text(r.get_ref(idx)?)),
    }
}

/// A stored value that is not an id, described for an operator (cut to 32 bytes).
fn raw_text(value: ValueRef<'_>) -> String {
    let hex = |b: &[u8]| b.iter().take(32).map(|x| format!("{x:02x}")).collect::<String>();
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => format!("the INTEGER {i}"),
        ValueRef::Real(f) => format!("the REAL {f}"),
        ValueRef::Text(t) => {
            let text: String = String::from_utf8_lossy(t).chars().take(64).collect();
            format!("the TEXT '{text}'")
        }
        ValueRef::Blob(b) => format!("a {}-byte BLOB x'{}'", b.len(), hex(b)),
    }
}

fn inspect_in(c: &Connection, id: &AnyId) -> Result<IdLookup> {
    let subject = |user: UserId| -> Result<Option<String>> {
        Ok(c.query_row("select subject from users where user_id = ?1", [user], |r| r.get(0))
            .optional()?)
    };
    let count = |sql: &str, key: &dyn rusqlite::ToSql| -> Result<i64> {
        Ok(c.query_row(sql, [key], |r| r.get(0))?)
    };
    let mut found = IdLookup::default();
    if let Some(thread) = find_thread(c, id.thread)? {
        let sql = concat!(
            "select ",
            run_cols!(),
            " from runs where thread_id = ?1 order by created_at desc, run_id desc limit 1"
        );
        found.thread = Some(ThreadFacts {
            owner_subject: subject(thread.owner_id)?,
            runs: count("select count(*) from runs where thread_id = ?1", &id.thread)?,
            active_runs: count(
                "select count(*) from runs where thread_id = ?1 and status in ('pending', 'running')",
                &id.thread,
            )?,
            checkpoints: count(
                "select count(*) from checkpoints where thread_id = ?1",
                &id.thread,
            )?,
            events: count("select count(*) from events where thread_id = ?1", &id.thread)?,
            last_run: c.query_row(sql, [id.thread], run_row).optional()?,
            thread,
        });
    }
    let sql = concat!("select ", run_cols!(), " from runs where run_id = ?1");
    if let Some(run) = c.query_row(sql, [id.run], run_row).optional()? {
        found.run = Some(RunFacts {
            owner_subject: subject(run.owner_id)?,
            events: count("select count(*) from events where run_id = ?1", &id.run)?,
            run,
        });
    }
    let sql = concat!("select ", assistant_cols!(), " from assistants where assistant_id = ?1");
    found.assistant = c.query_row(sql, [id.assistant], assistant_row).optional()?;
    let sql = concat!("select ", checkpoint_cols!(), " from checkpoints where checkpoint_id = ?1");
    found.checkpoint = c.query_row(sql, [id.checkpoint], checkpoint_row).optional()?;
    if let Some(checkpoint) = &found.checkpoint {
        let (me, thread) = (checkpoint.checkpoint_id, checkpoint.thread_id);
        let sql = "select checkpoint_id from checkpoints where thread_id = ?2 and parent_checkpoint_id = ?1
                   order by checkpoint_id limit 20";
        let children = all(c, sql, params![me, thread], |r| r.get(0))?;
        let sql = "select checkpoint_id = ?1 from checkpoints where thread_id = ?2 order by checkpoint_id desc limit 1";
        let newest = c.query_row(sql, params![me, thread], |r| r.get(0))?;
        let sql = "with recursive chain(id, parent, n) as (
                       select checkpoint_id, parent_checkpoint_id, 0 from checkpoints where checkpoint_id = ?1
                       union all
                       select p.checkpoint_id, p.parent_checkpoint_id, chain.n + 1 from chain
                       join checkpoints p on p.checkpoint_id = chain.parent and p.thread_id = ?2 and p.checkpoint_id < chain.id
                   )
                   select n, parent is null from chain order by n desc limit 1";
        let (depth, chain_whole) =
            c.query_row(sql, params![me, thread], |r| Ok((r.get(0)?, r.get(1)?)))?;
        found.checkpoint_facts =
            Some(doctor::CheckpointFacts { children, newest, depth, chain_whole });
    }
    let sql = "select user_id, subject, created_at from users where user_id = ?1";
    let user = c
        .query_row(sql, [id.user], |r| {
            Ok(User { user_id: r.get(0)?, subject: r.get(1)?, created_at: time(r, 2)? })
        })
        .optional()?;
    if let Some(user) = user {
        found.user = Some(UserFacts {
            threads: count("select count(*) from threads where owner_id = ?1", &id.user)?,
            api_keys: count("select count(*) from api_keys where user_id = ?1", &id.user)?,
            user,
        });
    }
    found.api_key = match find_api_key(c, id.api_key) {
        Ok(key) => Some(key),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    // Messages live in the threads' JSON values: a scan, guarded against values that are not
    // JSON objects (json_extract would fail on them).
    let sql = "select t.thread_id, t.owner_id from threads t,
                      json_each(case when json_valid(t.state_values) then t.state_values else '{}' end, '$.messages') m
               where (case when m.type = 'object' then json_extract(m.value, '$.id') end) = ?1
               limit 10";
    found.message_threads = all(c, sql, [id.message.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(found)
}
