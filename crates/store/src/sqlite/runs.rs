//! SQLite: runs (create, claim, cancel, delete, roll back, recover, read, move).

use ids::{RunId, ThreadId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::json;
use crate::model::*;
use crate::{Error, Result, UNREADABLE_RUN, json_object, skip_unreadable, thread_conflict};

use super::state::{EncodedFirst, first_step_in};
use super::threads::insert_thread;
use super::{SqliteStore, all, all_readable, check_owned, micros, run_row};

impl SqliteStore {
    pub async fn create_run(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
    ) -> Result<(Run, Vec<RunId>)> {
        let run = EncodedRun::new(run)?;
        self.write(move |c| create_run_in(c, owner, &run, if_not_exists, false)).await
    }

    pub async fn create_run_claiming(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
        first: FirstStep,
    ) -> Result<(Run, Vec<RunId>, Option<Step>)> {
        let run = EncodedRun::new(run)?;
        let first = EncodedFirst::new(first)?;
        self.write(move |c| {
            let (created, replaced) = create_run_in(c, owner, &run, if_not_exists, true)?;
            if created.status != RunStatus::Running {
                return Ok((created, replaced, None));
            }
            let (thread, id) = (created.thread_id, created.run_id);
            let exec = |sql: &str| c.prepare_cached(sql)?.execute([]).map_err(Error::from);
            exec("savepoint first_step")?;
            let step = match first_step_in(c, owner, thread, id, first) {
                Ok(step) => Some(step),
                // Refused: what it wrote before (the state before the input) goes, and the
                // executor meets the refusal again.
                Err(Error::Invalid(_)) => {
                    exec("rollback to first_step")?;
                    None
                }
                Err(e) => return Err(e),
            };
            exec("release first_step")?;
            Ok((created, replaced, step))
        })
        .await
    }

    pub async fn claim_runs(&self, limit: u32, per_user: u32) -> Result<Vec<Run>> {
        self.write(move |c| {
            let sql = concat!(
                "update runs set status = 'running', updated_at = ?1 where run_id in (",
                claimable_runs!("?2", "?3"),
                ") returning ",
                run_cols!()
            );
            let at = micros(now());
            let mut stmt = c.prepare_cached(sql)?;
            let claimed: Vec<(RunId, ThreadId, Result<Run>)> = stmt
                .query_map(params![at, limit, per_user], |r| {
                    Ok((r.get(0)?, r.get(1)?, run_row(r).map_err(Error::from)))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut runs = Vec::with_capacity(claimed.len());
            for (run, thread, row) in claimed {
                match row {
                    Ok(row) => runs.push(row),
                    // Claimed but unreadable: it ends `error` (its thread freed), alone.
                    Err(e @ Error::Unreadable { .. }) => {
                        tracing::error!(run_id = %run, thread_id = %thread, error = %e, "claimed a run that cannot be read: it ends `error`");
                        c.prepare_cached("update runs set status = 'error', error = ?2, updated_at = ?3 where run_id = ?1")?
                            .execute(params![run, UNREADABLE_RUN, at])?;
                        c.prepare_cached(
                            "update threads set status = case when exists (select 1 from runs where thread_id = ?1 and status in ('pending', 'running')) then 'busy' else 'error' end,
                                 updated_at = ?2 where thread_id = ?1",
                        )?
                        .execute(params![thread, at])?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(runs)
        })
        .await
    }

    pub async fn any_pending_runs(&self) -> Result<bool> {
        self.read(|c| {
            let sql = "select exists (select 1 from runs where status = 'pending')";
            Ok(c.prepare_cached(sql)?.query_row([], |r| r.get(0))?)
        })
        .await
    }

    pub async fn cancel_pending_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        rollback: bool,
    ) -> Result<bool> {
        self.write(move |c| {
            let at = micros(now());
            let n = if rollback {
                c.prepare_cached("delete from runs where run_id = ?1 and thread_id = ?2 and owner_id = ?3 and status = 'pending'")?
                    .execute(params![id, thread, owner])?
            } else {
                c.prepare_cached("update runs set status = 'interrupted', updated_at = ?4 where run_id = ?1 and thread_id = ?2 and owner_id = ?3 and status = 'pending'")?
                    .execute(params![id, thread, owner, at])?
            };
            if n > 0 {
                c.prepare_cached(
                    "update threads set status = case when exists (select 1 from runs where thread_id = ?1 and status in ('pending', 'running')) then 'busy' when coalesce((select json_array_length(metadata, '$.__pending__.interrupts') from checkpoints where thread_id = ?1 order by checkpoint_id desc limit 1), 0) > 0 then 'interrupted' else 'idle' end,
                         updated_at = ?2 where thread_id = ?1",
                )?
                .execute(params![thread, at])?;
            }
            Ok(n > 0)
        })
        .await
    }

    pub async fn delete_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        self.write(move |c| {
            let status: String = c
                .prepare_cached("select status from runs where run_id = ?1 and thread_id = ?2 and owner_id = ?3")?
                .query_row(params![id, thread, owner], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::not_found("run", id))?;
            if status == "pending" || status == "running" {
                return Err(Error::Conflict(format!("run {id} is {status}: cancel it before deleting it")));
            }
            c.prepare_cached("delete from runs where run_id = ?1")?.execute([id])?;
            Ok(())
        })
        .await
    }

    pub async fn rollback_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        self.write(move |c| {
            let n = c
                .prepare_cached("delete from checkpoints where run_id = ?1 and thread_id = ?2 and exists (select 1 from runs where run_id = ?1 and owner_id = ?3)")?
                .execute(params![id, thread, owner])?;
            let deleted = c.prepare_cached("delete from runs where run_id = ?1 and thread_id = ?2 and owner_id = ?3")?.execute(params![id, thread, owner])?;
            if deleted == 0 {
                return Err(Error::not_found("run", id));
            }
            let at = micros(now());
            c.prepare_cached(
                "update threads set state_values = (select state_values from checkpoints where thread_id = ?1 order by checkpoint_id desc limit 1),
                     status = case when exists (select 1 from runs where thread_id = ?1 and status in ('pending', 'running')) then 'busy' when coalesce((select json_array_length(metadata, '$.__pending__.interrupts') from checkpoints where thread_id = ?1 order by checkpoint_id desc limit 1), 0) > 0 then 'interrupted' else 'idle' end,
                     updated_at = ?2, state_updated_at = case when ?3 > 0 then ?2 else state_updated_at end
                 where thread_id = ?1",
            )?
            .execute(params![thread, at, n as i64])?;
            Ok(())
        })
        .await
    }

    pub async fn recover_runs(&self) -> Result<Vec<Run>> {
        self.write(|c| {
            let at = micros(now());
            let sql = concat!("update runs set status = 'error', error = 'server restarted', updated_at = ?1 where status = 'running' returning ", run_cols!());
            let mut stmt = c.prepare_cached(sql)?;
            let ended: Vec<(RunId, ThreadId, Result<Run>)> = stmt
                .query_map([at], |r| Ok((r.get(0)?, r.get(1)?, run_row(r).map_err(Error::from))))?
                .collect::<rusqlite::Result<_>>()?;
            drop(stmt);
            let ids: Vec<(RunId, ThreadId)> = ended.iter().map(|(run, thread, _)| (*run, *thread)).collect();
            // A run that cannot be read has ended `error` all the same: it is only not returned.
            let runs = skip_unreadable(ended.into_iter().map(|(.., run)| run))?;
            for (run, thread) in ids {
                c.prepare_cached(
                    "update threads set status = case when exists (select 1 from runs where thread_id = ?1 and status in ('pending', 'running')) then 'busy' else 'error' end,
                         updated_at = ?2 where thread_id = ?1",
                )?
                .execute(params![thread, at])?;
                // A stateless run's temporary thread goes with it, as at the run's end.
                c.prepare_cached(
                    "delete from threads where thread_id = ?1
                       and exists (select 1 from runs where run_id = ?2
                                   and case when json_valid(kwargs) then json_extract(kwargs, '$.on_completion') end = 'delete')
                       and not exists (select 1 from runs where thread_id = ?1 and status in ('pending', 'running'))",
                )?
                .execute(params![thread, run])?;
            }
            Ok(runs)
        })
        .await
    }

    pub async fn get_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<Run> {
        self.read(move |c| {
            let sql = concat!(
                "select ",
                run_cols!(),
                " from runs where run_id = ?1 and thread_id = ?2 and owner_id = ?3"
            );
            c.prepare_cached(sql)?
                .query_row(params![id, thread, owner], run_row)
                .optional()?
                .ok_or_else(|| Error::not_found("run", id))
        })
        .await
    }

    pub async fn list_runs(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        offset: u32,
        status: Option<RunStatus>,
    ) -> Result<Vec<Run>> {
        self.read(move |c| {
            check_owned(c, owner, thread)?;
            let sql = concat!(
                "select ",
                run_cols!(),
                " from runs where thread_id = ?1 and owner_id = ?2 and (?5 is null or status = ?5)
                  order by created_at desc, run_id desc limit ?3 offset ?4"
            );
            all_readable(
                c,
                sql,
                params![thread, owner, limit, offset, status.map(RunStatus::as_str)],
                run_row,
            )
        })
        .await
    }

    pub async fn set_run_status(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<Run> {
        let error = error.map(str::to_owned);
        self.write(move |c| set_run_status_in(c, owner, thread, id, status, error.as_deref())).await
    }
}

/// A new run with its JSON fields serialized, ready for a write job.
struct EncodedRun {
    run: NewRun,
    input: Option<String>,
    kwargs: String,
    metadata: String,
}

impl EncodedRun {
    fn new(run: &NewRun) -> Result<EncodedRun> {
        Ok(EncodedRun {
            input: run.input.as_ref().map(|v| json::encode("run input", v, true)).transpose()?,
            kwargs: json::encode("run kwargs", &run.kwargs, true)?,
            metadata: json::encode("run metadata", &run.metadata, true)?,
            run: run.clone(),
        })
    }
}

/// Creates a run (see `Store::create_run_replacing`); with `claim`, `running` when its thread
/// has no active run.
fn create_run_in(
    c: &Connection,
    owner: UserId,
    encoded: &EncodedRun,
    if_not_exists: IfNotExists,
    claim: bool,
) -> Result<(Run, Vec<RunId>)> {
    let EncodedRun { run, input, kwargs, metadata } = encoded;
    let id = run.thread_id;
    if if_not_exists == IfNotExists::Create {
        insert_thread(c, owner, id, "{}")?;
    }
    // The owner and metadata only: the thread's values may be large, and are not needed.
    let found: Option<(UserId, String)> = c
        .prepare_cached("select owner_id, metadata from threads where thread_id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut thread_metadata = match found {
        Some((o, metadata)) if o == owner => json_object(serde_json::from_str(&metadata)?),
        Some(_) if if_not_exists == IfNotExists::Create => return Err(thread_conflict(id)),
        _ => return Err(Error::not_found("thread", id)),
    };
    let active = i64::from(thread_active(c, id)?);
    let at = micros(now());
    let mut replaced: Vec<RunId> = Vec::new();
    if active > 0 {
        match run.multitask_strategy {
            MultitaskStrategy::Reject => return Err(Error::Conflict(THREAD_BUSY.into())),
            MultitaskStrategy::Enqueue => {}
            MultitaskStrategy::Interrupt => {
                let sql = "update runs set status = 'interrupted', updated_at = ?1 where thread_id = ?2 and status = 'pending' returning run_id";
                replaced = all(c, sql, params![at, id], |r| r.get(0))?;
            }
            MultitaskStrategy::Rollback => {
                let sql =
                    "delete from runs where thread_id = ?1 and status = 'pending' returning run_id";
                replaced = all(c, sql, [id], |r| r.get(0))?;
            }
        }
    }
    // With no run before it, a run the caller will execute now starts claimed.
    let status = if claim && active == 0 { "running" } else { "pending" };
    let sql = concat!("insert into runs (run_id, thread_id, owner_id, assistant_id, status, input, kwargs, metadata, multitask_strategy, error, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?10, ?5, ?6, ?7, ?8, null, ?9, ?9)
         returning ", run_cols!());
    let created = c.prepare_cached(sql)?.query_row(
        params![
            run.run_id,
            id,
            owner,
            run.assistant_id,
            input,
            kwargs,
            metadata,
            run.multitask_strategy.as_str(),
            at,
            status
        ],
        run_row,
    )?;
    thread_metadata.extend(run.thread_metadata.clone());
    c.prepare_cached(
        "update threads set status = 'busy', metadata = ?1, updated_at = ?2 where thread_id = ?3",
    )?
    .execute(params![json::encode("thread metadata", &thread_metadata, true)?, at, id])?;
    Ok((created, replaced))
}

/// Whether the thread has a pending or running run (two index lookups; `status in (...)`
/// would build a temporary index of the list on every execution).
fn thread_active(c: &Connection, thread: ThreadId) -> Result<bool> {
    let sql = "select exists (select 1 from runs where thread_id = ?1 and status = 'running')
                   or exists (select 1 from runs where thread_id = ?1 and status = 'pending')";
    Ok(c.prepare_cached(sql)?.query_row([thread], |r| r.get(0))?)
}

/// Moves a run to `status`; the thread's status follows.
fn set_run_status_in(
    c: &Connection,
    owner: UserId,
    thread: ThreadId,
    id: RunId,
    status: RunStatus,
    error: Option<&str>,
) -> Result<Run> {
    move_run_in(c, owner, thread, id, status, error, false, false)?
        .ok_or_else(|| Error::not_found("run", id))
}

/// Moves a run (with `only_running`, only a running one) to `status`, and its thread's status
/// to match (`interrupted`: see `RunEnd::interrupted`); `None` if no run moved.
#[allow(clippy::too_many_arguments, reason = "a run's move and its thread's, in one place")]
pub(super) fn move_run_in(
    c: &Connection,
    owner: UserId,
    thread: ThreadId,
    id: RunId,
    status: RunStatus,
    error: Option<&str>,
    only_running: bool,
    interrupted: bool,
) -> Result<Option<Run>> {
    let at = micros(now());
    // Two statements, not one with a flag parameter: a parameter beside `status` would make
    // SQLite re-plan the statement at every run (partial indexes on `status`).
    let sql = if only_running {
        concat!(
            "update runs set status = ?1, error = ?2, updated_at = ?3
             where run_id = ?4 and thread_id = ?5 and owner_id = ?6 and status = 'running' returning ",
            run_cols!()
        )
    } else {
        concat!(
            "update runs set status = ?1, error = ?2, updated_at = ?3
             where run_id = ?4 and thread_id = ?5 and owner_id = ?6 returning ",
            run_cols!()
        )
    };
    let Some(run) = c
        .prepare_cached(sql)?
        .query_row(params![status.as_str(), error, at, id, thread, owner], run_row)
        .optional()?
    else {
        return Ok(None);
    };
    let active = i64::from(thread_active(c, thread)?);
    c.prepare_cached("update threads set status = ?1, updated_at = ?2 where thread_id = ?3")?
        .execute(params![thread_status_after(status, active, interrupted).as_str(), at, thread])?;
    Ok(Some(run))
}
