//! PostgreSQL: runs (create, claim, cancel, delete, roll back, recover, read, move).

use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::model::*;
use crate::{Error, Result, UNREADABLE_RUN, skip_unreadable, thread_conflict};

use super::events::{EncodedEvents, numbered};
use super::state::with_step;
use super::{PgStore, lock_owned_thread, parsed, pg_json, run_row};

impl PgStore {
    pub async fn create_run(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
    ) -> Result<(Run, Vec<RunId>)> {
        let (run, replaced, _) = self.start_run(owner, run, if_not_exists, None).await?;
        Ok((run, replaced))
    }

    pub async fn create_run_claiming(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
        first: FirstStep,
    ) -> Result<(Run, Vec<RunId>, Option<Step>)> {
        self.start_run(owner, run, if_not_exists, Some(first)).await
    }

    /// Creates a run, claimed with its first step when `first` is given (see
    /// `Store::create_run_claiming`): one round trip to `spindle_start_run`, after a read of
    /// the thread's state unless this process knows it (or, for a fork, of the checkpoint's).
    async fn start_run(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
        first: Option<FirstStep>,
    ) -> Result<(Run, Vec<RunId>, Option<Step>)> {
        let id = run.thread_id;
        let at = now();
        let claim = first.is_some();
        // The first step, computed from the state it will be written over: the thread's, or
        // for a fork the checkpoint's (which never changes: no version to check).
        let mut step: Option<(i64, Value, Vec<NewEvent>, Metadata)> = None;
        let (mut from, mut initial) = (None, None);
        if let Some(first) = first {
            let FirstStep { mut events, mut update, metadata, from: fork, initial: before } = first;
            (from, initial) = (fork, before.filter(|_| fork.is_none()));
            let base = match from {
                None => {
                    let ((version, current), _) = self.state_of(owner, id).await?;
                    Some((version, current))
                }
                // Not found (or not the caller's): `spindle_start_run` says which, or leaves
                // the run pending for the executor to meet it.
                Some(from) => match self.fork_values(owner, id, from).await {
                    Ok(values) => Some((0, Some(values))),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                },
            };
            // Refused (an invalid update): the run is created claimed, without the step, and
            // executing it meets the same refusal.
            if let Some((version, current)) = base
                && let Ok(values) = update(current)
            {
                events.push(NewEvent::values(run.run_id, &values));
                step = Some((version, values, events, metadata));
            }
        }
        // Minted in this order, so the initial checkpoint sorts before the step's.
        let initial_id = initial.as_ref().map(|_| CheckpointId::new());
        let checkpoint_id = CheckpointId::new();
        let encoded =
            step.as_ref().map(|(_, _, events, _)| EncodedEvents::new(events)).transpose()?;
        let initial_values =
            initial.as_ref().map(|(v, _)| pg_json("state values", v)).transpose()?;
        let initial_metadata =
            initial.as_ref().map(|(_, m)| pg_json("checkpoint metadata", m)).transpose()?;
        let row = sqlx::query(
            "select o_outcome, o_status, o_replaced, o_first_seq, o_parent, o_version, o_step
             from spindle_start_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
        )
        .bind(run.run_id)
        .bind(id)
        .bind(owner)
        .bind(run.assistant_id)
        .bind(run.input.as_ref().map(|v| pg_json("run input", v)).transpose()?)
        .bind(pg_json("run kwargs", &run.kwargs)?)
        .bind(pg_json("run metadata", &run.metadata)?)
        .bind(run.multitask_strategy.as_str())
        .bind(pg_json("thread metadata", &run.thread_metadata)?)
        .bind(if_not_exists == IfNotExists::Create)
        .bind(claim)
        .bind(at)
        .bind(step.as_ref().map(|(version, ..)| *version))
        .bind(step.as_ref().map(|(_, values, ..)| pg_json("state values", values)).transpose()?)
        .bind(checkpoint_id)
        .bind(step.as_ref().map(|(.., metadata)| pg_json("checkpoint metadata", metadata)).transpose()?)
        .bind(from)
        .bind(initial_id)
        .bind(initial_values)
        .bind(initial_metadata)
        .bind(encoded.as_ref().map(|e| &e.runs))
        .bind(encoded.as_ref().map(|e| &e.kinds))
        .bind(encoded.as_ref().map(|e| &e.data))
        .fetch_one(&self.pool)
        .await?;
        let outcome: String = row.try_get(0)?;
        match outcome.as_str() {
            "not_found" => return Err(Error::not_found("thread", id)),
            "conflict" => return Err(thread_conflict(id)),
            "busy" => return Err(Error::Conflict(THREAD_BUSY.into())),
            "checkpoint_not_found" => {
                let from = from.map(|id| id.to_string()).unwrap_or_default();
                return Err(Error::not_found("checkpoint", from));
            }
            _ => {}
        }
        let created = Run {
            run_id: run.run_id,
            thread_id: id,
            owner_id: owner,
            assistant_id: run.assistant_id,
            status: parsed(&row, 1)?,
            input: run.input.clone(),
            kwargs: run.kwargs.clone(),
            metadata: run.metadata.clone(),
            multitask_strategy: run.multitask_strategy,
            error: None,
            created_at: at,
            updated_at: at,
        };
        let replaced: Vec<RunId> = row.try_get(2)?;
        let step = match (outcome.as_str(), step) {
            ("started", Some((_, values, events, metadata))) => {
                let first_seq: i64 = row.try_get(3)?;
                let version: i64 = row.try_get(5)?;
                self.remember_written(id, version, Some(values.clone()));
                let checkpoint = Checkpoint {
                    checkpoint_id,
                    thread_id: id,
                    run_id: Some(run.run_id),
                    parent_checkpoint_id: row.try_get(4)?,
                    values,
                    metadata: with_step(metadata, row.try_get(6)?),
                    created_at: at,
                };
                let events = numbered(id, first_seq, events, at);
                Some(Step { checkpoint: Some(checkpoint), events, ended: None })
            }
            _ => None,
        };
        Ok((created, replaced, step))
    }

    /// A checkpoint's values, for a step that forks from it: [`Error::NotFound`] for a thread
    /// the caller does not have, or a checkpoint the thread does not have.
    pub(super) async fn fork_values(
        &self,
        owner: UserId,
        thread: ThreadId,
        from: CheckpointId,
    ) -> Result<Value> {
        let row: Option<(Option<CheckpointId>, Option<Value>)> = sqlx::query_as(
            "select c.checkpoint_id, c.state_values
             from threads t left join checkpoints c on c.thread_id = t.thread_id and c.checkpoint_id = $1
             where t.thread_id = $2 and t.owner_id = $3",
        )
        .bind(from)
        .bind(thread)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Err(Error::not_found("thread", thread)),
            Some((Some(_), Some(values))) => Ok(values),
            Some(_) => Err(Error::not_found("checkpoint", from)),
        }
    }

    pub async fn claim_runs(&self, limit: u32, per_user: u32) -> Result<Vec<Run>> {
        // Claims are taken one at a time (a transaction-level advisory lock), each on a
        // snapshot taken after the previous one committed: `for update skip locked` cannot go
        // with the window function that takes users in turns, and without it concurrent
        // claimers would all pick the same runs. `status = 'pending'` is checked again on each
        // row after its lock all the same.
        let sql = concat!(
            "update runs set status = 'running', updated_at = $2 where run_id in (",
            claimable_runs!("$1", "$3"),
            ") and status = 'pending' returning ",
            run_cols!()
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query("select pg_advisory_xact_lock($1)").bind(CLAIM_LOCK).execute(&mut *tx).await?;
        let rows = sqlx::query(sql)
            .bind(i64::from(limit))
            .bind(now())
            .bind(i64::from(per_user))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut runs = Vec::with_capacity(rows.len());
        for r in &rows {
            match run_row(r) {
                Ok(run) => runs.push(run),
                // Claimed but unreadable: it ends `error` (its thread freed), alone; after the
                // claim's commit, which holds the run's row.
                Err(e @ Error::Unreadable { .. }) => {
                    let (run, thread): (RunId, ThreadId) = (r.try_get(0)?, r.try_get(1)?);
                    tracing::error!(run_id = %run, thread_id = %thread, error = %e, "claimed a run that cannot be read: it ends `error`");
                    if let Err(e) = self.end_unreadable_run(run, thread).await {
                        tracing::error!(run_id = %run, error = %e, "could not end an unreadable run");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(runs)
    }

    /// Ends a claimed run whose row cannot be read `error`, and sets its thread's status.
    async fn end_unreadable_run(&self, run: RunId, thread: ThreadId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let at = now();
        sqlx::query("select 1 from threads where thread_id = $1 for update")
            .bind(thread)
            .execute(&mut *tx)
            .await?;
        sqlx::query("update runs set status = 'error', error = $2, updated_at = $3 where run_id = $1 and status = 'running'")
            .bind(run)
            .bind(UNREADABLE_RUN)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "update threads set status = case when exists (select 1 from runs where thread_id = $1 and status in ('pending', 'running')) then 'busy' else 'error' end,
                 updated_at = $2 where thread_id = $1",
        )
        .bind(thread)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn any_pending_runs(&self) -> Result<bool> {
        let sql = "select exists (select 1 from runs where status = 'pending')";
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    pub async fn cancel_pending_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        rollback: bool,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_owned_thread(&mut tx, owner, thread).await?;
        let at = now();
        let done = if rollback {
            sqlx::query(
                "delete from runs where run_id = $1 and thread_id = $2 and status = 'pending'",
            )
            .bind(id)
            .bind(thread)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query("update runs set status = 'interrupted', updated_at = $3 where run_id = $1 and thread_id = $2 and status = 'pending'")
                .bind(id)
                .bind(thread)
                .bind(at)
                .execute(&mut *tx)
                .await?
        };
        let cancelled = done.rows_affected() > 0;
        if cancelled {
            sqlx::query(
                "update threads set status = case when exists (select 1 from runs where thread_id = $1 and status in ('pending', 'running')) then 'busy' when coalesce((select case when jsonb_typeof(c.metadata->'__pending__'->'interrupts') = 'array' then jsonb_array_length(c.metadata->'__pending__'->'interrupts') end from checkpoints c where c.thread_id = $1 order by c.checkpoint_id desc limit 1), 0) > 0 then 'interrupted' else 'idle' end,
                     updated_at = $2 where thread_id = $1",
            )
            .bind(thread)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(cancelled)
    }

    pub async fn delete_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let status: String = sqlx::query_scalar(
            "select status from runs where run_id = $1 and thread_id = $2 and owner_id = $3 for update",
        )
        .bind(id)
        .bind(thread)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found("run", id))?;
        if status == "pending" || status == "running" {
            return Err(Error::Conflict(format!(
                "run {id} is {status}: cancel it before deleting it"
            )));
        }
        sqlx::query("delete from runs where run_id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn rollback_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        self.forget_written(thread);
        let mut tx = self.pool.begin().await?;
        lock_owned_thread(&mut tx, owner, thread).await?;
        sqlx::query("delete from checkpoints where run_id = $1 and thread_id = $2")
            .bind(id)
            .bind(thread)
            .execute(&mut *tx)
            .await?;
        let deleted =
            sqlx::query("delete from runs where run_id = $1 and thread_id = $2 and owner_id = $3")
                .bind(id)
                .bind(thread)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        if deleted.rows_affected() == 0 {
            return Err(Error::not_found("run", id));
        }
        sqlx::query(
            "update threads set state_values = (select state_values from checkpoints where thread_id = $1 order by checkpoint_id desc limit 1),
                 state_version = nextval('state_versions'),
                 status = case when exists (select 1 from runs where thread_id = $1 and status in ('pending', 'running')) then 'busy' when coalesce((select case when jsonb_typeof(c.metadata->'__pending__'->'interrupts') = 'array' then jsonb_array_length(c.metadata->'__pending__'->'interrupts') end from checkpoints c where c.thread_id = $1 order by c.checkpoint_id desc limit 1), 0) > 0 then 'interrupted' else 'idle' end,
                 updated_at = $2
             where thread_id = $1",
        )
        .bind(thread)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn recover_runs(&self) -> Result<Vec<Run>> {
        let mut tx = self.pool.begin().await?;
        let at = now();
        let sql = concat!(
            "update runs set status = 'error', error = 'server restarted', updated_at = $1 where status = 'running' returning ",
            run_cols!()
        );
        let rows = sqlx::query(sql).bind(at).fetch_all(&mut *tx).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push((r.try_get::<RunId, _>(0)?, r.try_get::<ThreadId, _>(1)?));
        }
        // A run that cannot be read has ended `error` all the same: it is only not returned.
        let runs = skip_unreadable(rows.iter().map(run_row))?;
        for (run, thread) in ids {
            sqlx::query(
                "update threads set status = case when exists (select 1 from runs where thread_id = $1 and status in ('pending', 'running')) then 'busy' else 'error' end,
                     updated_at = $2 where thread_id = $1",
            )
            .bind(thread)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            // A stateless run's temporary thread goes with it, as at the run's end.
            sqlx::query(
                "delete from threads where thread_id = $1
                   and exists (select 1 from runs where run_id = $2 and kwargs ->> 'on_completion' = 'delete')
                   and not exists (select 1 from runs where thread_id = $1 and status in ('pending', 'running'))",
            )
            .bind(thread)
            .bind(run)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(runs)
    }

    pub async fn get_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<Run> {
        let sql = concat!(
            "select ",
            run_cols!(),
            " from runs where run_id = $1 and thread_id = $2 and owner_id = $3"
        );
        let row =
            sqlx::query(sql).bind(id).bind(thread).bind(owner).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_row).transpose()?.ok_or_else(|| Error::not_found("run", id))
    }

    pub async fn list_runs(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        offset: u32,
        status: Option<RunStatus>,
    ) -> Result<Vec<Run>> {
        self.check_owned(owner, thread).await?;
        let sql = concat!(
            "select ",
            run_cols!(),
            " from runs where thread_id = $1 and owner_id = $2 and ($5::text is null or status = $5)
              order by created_at desc, run_id desc limit $3 offset $4"
        );
        let rows = sqlx::query(sql)
            .bind(thread)
            .bind(owner)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .bind(status.map(RunStatus::as_str))
            .fetch_all(&self.pool)
            .await?;
        skip_unreadable(rows.iter().map(run_row))
    }

    pub async fn set_run_status(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        let run = set_run_status_in(&mut tx, owner, thread, id, status, error, true, false, false)
            .await?;
        tx.commit().await?;
        Ok(run)
    }
}

/// The advisory lock that takes claims of pending runs one at a time (see `claim_runs`).
const CLAIM_LOCK: i64 = 0x5350_494e_444c_4501;

/// Moves a run to `status` and sets its thread's status to match, in the caller's
/// transaction (after taking the thread's row lock, unless `lock` is false because the caller
/// holds it). With `only_running`, only a running run moves: a run ends once, and a second
/// end is a conflict.
#[allow(clippy::too_many_arguments, reason = "one statement's parameters")]
pub(super) async fn set_run_status_in(
    conn: &mut PgConnection,
    owner: UserId,
    thread: ThreadId,
    run: RunId,
    status: RunStatus,
    error: Option<&str>,
    lock: bool,
    only_running: bool,
    interrupted: bool,
) -> Result<Run> {
    if lock {
        lock_owned_thread(conn, owner, thread).await?;
    }
    let sql = concat!(
        "update runs set status = $1, error = $2, updated_at = $3
         where run_id = $4 and thread_id = $5 and owner_id = $6 and (not $7 or status = 'running')
         returning ",
        run_cols!()
    );
    let row = sqlx::query(sql)
        .bind(status.as_str())
        .bind(error)
        .bind(now())
        .bind(run)
        .bind(thread)
        .bind(owner)
        .bind(only_running)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| match only_running {
            true => Error::Conflict(format!("run {run} is not running: it has already ended")),
            false => Error::not_found("run", run),
        })?;
    let updated = run_row(&row)?;
    sqlx::query(
        "update threads set updated_at = $2, status = case
             when exists (select 1 from runs where thread_id = $1 and status in ('pending', 'running')) then 'busy'
             else $3 end
         where thread_id = $1",
    )
    .bind(thread)
    .bind(updated.updated_at)
    .bind(thread_status_after(status, 0, interrupted).as_str())
    .execute(&mut *conn)
    .await?;
    Ok(updated)
}
