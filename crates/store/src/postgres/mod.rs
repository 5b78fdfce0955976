//! The PostgreSQL backend: sqlx with a connection pool; migrations embedded with
//! `sqlx::migrate!` (checksummed, run under an advisory lock, so many nodes may start at once).
//!
//! Concurrency comes from the database: `insert ... on conflict do nothing` for get-or-create,
//! a row lock on the thread (`update ... returning last_seq`) to number events, and
//! `select ... for update` on the thread while a run is created.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ids::{ApiKeyId, AssistantId, CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Row};

use crate::json;
use crate::model::*;
use crate::{
    Error, Result, STATS_BUSY_WITHOUT_RUN, StoreOptions, UNREADABLE_RUN, json_object, redact_in,
    skip_unreadable, thread_conflict,
};

/// The advisory lock that takes claims of pending runs one at a time (see `claim_runs`).
const CLAIM_LOCK: i64 = 0x5350_494e_444c_4501;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A checkpoint's `step` from its metadata column, as a `bigint` (−1 when it is missing or
/// not an integer): `spindle_checkpoint_step` (migration 0008), which the run functions use.
macro_rules! step_of {
    ($column:literal) => {
        concat!("spindle_checkpoint_step(", $column, ")")
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The state of threads this process wrote last, by thread: `(state_version, values)`.
    /// A run's next step computes its update from these rather than reading them first; the
    /// write checks the version, so an entry made stale by another writer costs a retry,
    /// never a lost update.
    known: Arc<Mutex<HashMap<ThreadId, KnownState>>>,
}

/// A thread's `(state_version, values)`.
type KnownState = (i64, Option<Value>);

/// Entries of `PgStore::known` at most (it is emptied when full): about one per running run.
const KNOWN_STATES: usize = 4096;
/// Tries of a step whose known state turned out stale, before it takes the thread's lock
/// first and reads the state under it.
const STALE_TRIES: usize = 3;

impl PgStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::Unavailable(redact_in(&format!("cannot connect to {url}: {e}"), url))
        };
        // One direct connection first: a pool that cannot connect reports only its own
        // time-out, while this reports the cause (refused, unknown database, auth, ...).
        let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
            .await
            .map_err(|_| unavailable(&"timed out"))?
            .map_err(|e| unavailable(&e))?;
        first.close().await.map_err(|e| unavailable(&e))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(PgStore { pool, known: Arc::default() })
    }

    fn known_states(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadId, KnownState>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn know(&self, thread: ThreadId, version: i64, values: Option<Value>) {
        let mut known = self.known_states();
        if known.len() >= KNOWN_STATES && !known.contains_key(&thread) {
            known.clear();
        }
        known.insert(thread, (version, values));
    }

    fn forget(&self, thread: ThreadId) {
        self.known_states().remove(&thread);
    }

    /// The thread's state and its version: as this process last wrote it (then `true`: it
    /// may be stale), or as read now. Either way it is no longer remembered.
    async fn state_of(&self, owner: UserId, thread: ThreadId) -> Result<(KnownState, bool)> {
        if let Some(known) = self.known_states().remove(&thread) {
            return Ok((known, true));
        }
        let row: Option<KnownState> = sqlx::query_as(
            "select state_version, state_values from threads where thread_id = $1 and owner_id = $2",
        )
        .bind(thread)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        // A thread that does not exist yet (`if_not_exists: create`) starts empty.
        Ok((row.unwrap_or((0, None)), false))
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(|e| Error::Invalid(format!("migration failed: {e}")))
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn ensure_user(&self, subject: &str) -> Result<User> {
        // `do update` (a no-op) rather than `do nothing` so the row is returned either way.
        let row = sqlx::query(
            "insert into users (user_id, subject, created_at) values ($1, $2, $3)
             on conflict (subject) do update set subject = excluded.subject
             returning user_id, subject, created_at",
        )
        .bind(UserId::new())
        .bind(subject)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(User { user_id: row.try_get(0)?, subject: row.try_get(1)?, created_at: row.try_get(2)? })
    }

    pub async fn upsert_system_assistant(&self, a: &SystemAssistant) -> Result<Assistant> {
        let sql = concat!("insert into assistants (assistant_id, graph_id, name, description, metadata, owner_id, created_at, updated_at)
             values ($1, $2, $2, $3, '{\"created_by\":\"system\"}', null, $4, $4)
             on conflict (assistant_id) do update set description = excluded.description
             returning ", assistant_cols!());
        let row = sqlx::query(sql)
            .bind(AssistantId::for_graph(&a.graph_id))
            .bind(&a.graph_id)
            .bind(&a.description)
            .bind(now())
            .fetch_one(&self.pool)
            .await?;
        assistant_row(&row)
    }

    pub async fn get_assistant(&self, owner: UserId, id: AssistantId) -> Result<Assistant> {
        let sql = concat!(
            "select ",
            assistant_cols!(),
            " from assistants where assistant_id = $1 and (owner_id is null or owner_id = $2)"
        );
        let row = sqlx::query(sql).bind(id).bind(owner).fetch_optional(&self.pool).await?;
        row.as_ref()
            .map(assistant_row)
            .transpose()?
            .ok_or_else(|| Error::not_found("assistant", id))
    }

    pub async fn list_assistants(&self, owner: UserId) -> Result<Vec<Assistant>> {
        let sql = concat!(
            "select ",
            assistant_cols!(),
            " from assistants where owner_id is null or owner_id = $1 order by created_at, assistant_id"
        );
        let rows = sqlx::query(sql).bind(owner).fetch_all(&self.pool).await?;
        skip_unreadable(rows.iter().map(assistant_row))
    }

    pub async fn get_or_create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> Result<(Thread, bool)> {
        // Two statements, each atomic: the insert either creates the row or finds it taken
        // (waiting for a concurrent inserter to commit); the select then reads the winner.
        // A delete between the two sends us round again.
        for _ in 0..3 {
            if let Some(thread) = insert_thread(&self.pool, owner, id, metadata).await? {
                // A run on it next starts from this state without reading it.
                self.know(id, 0, None);
                return Ok((thread, true));
            }
            match find_thread(&self.pool, id).await? {
                Some(thread) if thread.owner_id == owner => return Ok((thread, false)),
                Some(_) => return Err(thread_conflict(id)),
                None => continue,
            }
        }
        Err(Error::Conflict(format!("thread {id} is being created and deleted concurrently")))
    }

    pub async fn get_thread(&self, owner: UserId, id: ThreadId) -> Result<Thread> {
        let sql = concat!(
            "select ",
            thread_cols!(),
            " from threads where thread_id = $1 and owner_id = $2"
        );
        let row = sqlx::query(sql).bind(id).bind(owner).fetch_optional(&self.pool).await?;
        row.as_ref().map(thread_row).transpose()?.ok_or_else(|| Error::not_found("thread", id))
    }

    /// That the caller owns the thread, reading no more of it than its key.
    pub async fn check_owned(&self, owner: UserId, id: ThreadId) -> Result<()> {
        sqlx::query("select 1 from threads where thread_id = $1 and owner_id = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?
            .map(drop)
            .ok_or_else(|| Error::not_found("thread", id))
    }

    pub async fn list_threads(
        &self,
        owner: UserId,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Thread>> {
        let sql = concat!(
            "select ",
            thread_cols!(),
            " from threads where owner_id = $1 order by created_at desc, thread_id desc limit $2 offset $3"
        );
        let rows = sqlx::query(sql)
            .bind(owner)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        skip_unreadable(rows.iter().map(thread_row))
    }

    pub async fn search_threads(
        &self,
        owner: UserId,
        filter: &ThreadFilter,
        page: &ThreadPage,
    ) -> Result<Vec<Thread>> {
        let mut q = thread_filter_query(concat!("select ", thread_cols!()), owner, filter);
        // Column and direction come from closed enums, never from the request's text.
        let dir = page.sort_order.as_str();
        q.push(format_args!(" order by {} {dir}, thread_id {dir}", page.sort_by.as_str()));
        q.push(" limit ").push_bind(i64::from(page.limit));
        q.push(" offset ").push_bind(i64::from(page.offset));
        let rows = q.build().fetch_all(&self.pool).await?;
        skip_unreadable(rows.iter().map(thread_row))
    }

    pub async fn count_threads(&self, owner: UserId, filter: &ThreadFilter) -> Result<i64> {
        let mut q = thread_filter_query("select count(*)", owner, filter);
        Ok(q.build_query_scalar().fetch_one(&self.pool).await?)
    }

    pub async fn update_thread_metadata(
        &self,
        owner: UserId,
        id: ThreadId,
        patch: &Metadata,
    ) -> Result<Thread> {
        let sql = concat!("update threads set metadata = metadata || $1, updated_at = $2 where thread_id = $3 and owner_id = $4
             returning ", thread_cols!());
        let row = sqlx::query(sql)
            .bind(pg_json("thread metadata", patch)?)
            .bind(now())
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(thread_row).transpose()?.ok_or_else(|| Error::not_found("thread", id))
    }

    pub async fn delete_thread(&self, owner: UserId, id: ThreadId) -> Result<()> {
        self.forget(id);
        let done = sqlx::query("delete from threads where thread_id = $1 and owner_id = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("thread", id));
        }
        Ok(())
    }

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
                self.know(id, version, Some(values.clone()));
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
    async fn fork_values(
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
        self.forget(thread);
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

    pub async fn update_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        from: Option<CheckpointId>,
        update: StateUpdate,
        metadata: &Metadata,
    ) -> Result<Checkpoint> {
        // Written here without the known state: a run's next step reads the new one.
        self.forget(thread);
        let mut tx = self.pool.begin().await?;
        let checkpoint =
            update_state_in(&mut tx, owner, thread, run, from, update, metadata).await?;
        tx.commit().await?;
        Ok(checkpoint)
    }

    pub async fn commit_first_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        first: FirstStep,
    ) -> Result<Step> {
        let FirstStep { events, mut update, metadata, from, initial } = first;
        let initial = initial.filter(|_| from.is_none());
        // A fork's values are read once: they never change.
        let fork = match from {
            None => None,
            Some(from) => Some((from, self.fork_values(owner, thread, from).await?)),
        };
        let first = First { fork: fork.as_ref(), initial: initial.as_ref() };
        let step = self
            .try_step(owner, thread, run, &events, Some(&mut update), &metadata, None, first)
            .await?;
        if let Some(step) = step {
            return Ok(step);
        }
        // Stale every time (the state is being written by others as fast): under its lock.
        self.forget(thread);
        let mut events = events;
        let mut tx = self.pool.begin().await?;
        lock_owned_thread(&mut tx, owner, thread).await?;
        if let (None, Some((values, initial_metadata))) = (from, initial)
            && newest_checkpoint(&mut tx, thread).await?.is_none()
        {
            // The thread's first checkpoint: the state before the input, without a parent and
            // of no run (a rollback of the first run keeps it).
            insert_checkpoint(&mut tx, thread, None, None, &values, initial_metadata, -1).await?;
        }
        let checkpoint =
            update_state_in(&mut tx, owner, thread, Some(run), from, update, &metadata).await?;
        events.push(NewEvent::values(run, &checkpoint.values));
        let events = append_in(&mut tx, owner, thread, &events).await?;
        tx.commit().await?;
        Ok(Step { checkpoint: Some(checkpoint), events, ended: None })
    }

    #[allow(clippy::too_many_arguments, reason = "mirrors Store::commit_step")]
    pub async fn commit_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        events: &[NewEvent],
        mut update: Option<StateUpdate>,
        metadata: &Metadata,
        end: Option<&RunEnd>,
    ) -> Result<Step> {
        let first = First { fork: None, initial: None };
        let step = self
            .try_step(owner, thread, run, events, update.as_mut(), metadata, end, first)
            .await?;
        if let Some(step) = step {
            return Ok(step);
        }
        // Stale every time (the state is being written by others as fast): under its lock.
        self.forget(thread);
        let mut tx = self.pool.begin().await?;
        let step =
            commit_step_in(&mut tx, owner, thread, run, events.to_vec(), update, metadata, end)
                .await?;
        tx.commit().await?;
        Ok(step)
    }

    /// A step in one round trip to `spindle_commit_step`, the update computed from the state
    /// this process knows (or has just read), or from the checkpoint it forks from; stale, it
    /// reads and tries again. `None` when it was stale every time: the caller takes the
    /// thread's lock and reads the state under it.
    #[allow(clippy::too_many_arguments, reason = "mirrors Store::commit_step")]
    async fn try_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        events: &[NewEvent],
        mut update: Option<&mut StateUpdate>,
        metadata: &Metadata,
        end: Option<&RunEnd>,
        first: First<'_>,
    ) -> Result<Option<Step>> {
        for _ in 0..STALE_TRIES {
            let at = now();
            let mut all = events.to_vec();
            let (version, values) = match update.as_mut() {
                None => (0, None),
                Some(update) => {
                    let ((version, current), remembered) = match first.fork {
                        // No version: the function checks none for a fork.
                        Some((_, values)) => ((0, Some(values.clone())), false),
                        None => self.state_of(owner, thread).await?,
                    };
                    let values = match update(current) {
                        Ok(values) => values,
                        // Refused on a remembered state, which may be stale: read it and ask
                        // again (`state_of` has forgotten it).
                        Err(_) if remembered => continue,
                        Err(message) => return Err(Error::Invalid(message)),
                    };
                    all.push(NewEvent::values(run, &values));
                    (version, Some(values))
                }
            };
            if let Some(end) = end {
                all.push(end.event.clone());
            }
            let encoded = EncodedEvents::new(&all)?;
            // Minted in this order, so the initial checkpoint sorts before the step's.
            let initial_id = first.initial.map(|_| CheckpointId::new());
            let checkpoint_id = CheckpointId::new();
            let initial = first.initial;
            let row = sqlx::query(
                "select * from spindle_commit_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            )
            .bind(owner)
            .bind(thread)
            .bind(run)
            .bind(at)
            .bind(version)
            .bind(values.as_ref().map(|v| pg_json("state values", v)).transpose()?)
            .bind(checkpoint_id)
            .bind(pg_json("checkpoint metadata", metadata)?)
            .bind(first.fork.map(|(from, _)| *from))
            .bind(initial_id)
            .bind(initial.map(|(v, _)| pg_json("state values", v)).transpose()?)
            .bind(initial.map(|(_, m)| pg_json("checkpoint metadata", m)).transpose()?)
            .bind(end.map(|e| e.status.as_str()))
            .bind(end.and_then(|e| e.error.as_deref()))
            .bind(end.map(|e| thread_status_after(e.status, 0, e.interrupted).as_str()))
            .bind(&encoded.runs)
            .bind(&encoded.kinds)
            .bind(&encoded.data)
            .fetch_one(&self.pool)
            .await?;
            let outcome: String = row.try_get(0)?;
            match outcome.as_str() {
                "not_found" => return Err(Error::not_found("thread", thread)),
                "checkpoint_not_found" => {
                    let from = first.fork.map(|(from, _)| from.to_string()).unwrap_or_default();
                    return Err(Error::not_found("checkpoint", from));
                }
                "ended" => {
                    return Err(Error::Conflict(format!(
                        "run {run} is not running: it has already ended"
                    )));
                }
                "stale" => {
                    self.forget(thread);
                    continue;
                }
                _ => {}
            }
            let new_version: i64 = row.try_get(3)?;
            let ended = match end {
                None => None,
                Some(_) => Some(run_row_at(&row, 5)?),
            };
            // A run's end leaves the thread to whatever comes next: its state is read then.
            match (&ended, &values) {
                (None, Some(values)) => self.know(thread, new_version, Some(values.clone())),
                (Some(_), _) => self.forget(thread),
                (None, None) => {}
            }
            let checkpoint = match values {
                None => None,
                Some(values) => Some(Checkpoint {
                    checkpoint_id,
                    thread_id: thread,
                    run_id: Some(run),
                    parent_checkpoint_id: row.try_get(2)?,
                    values,
                    metadata: with_step(metadata.clone(), row.try_get(4)?),
                    created_at: at,
                }),
            };
            let first_seq: i64 = row.try_get(1)?;
            let events =
                if all.is_empty() { Vec::new() } else { numbered(thread, first_seq, all, at) };
            return Ok(Some(Step { checkpoint, events, ended }));
        }
        Ok(None)
    }

    pub async fn get_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: CheckpointId,
    ) -> Result<Checkpoint> {
        let sql = concat!(
            "select ",
            checkpoint_cols!(),
            " from checkpoints where checkpoint_id = $1 and thread_id = $2
              and exists (select 1 from threads where thread_id = $2 and owner_id = $3)"
        );
        let row =
            sqlx::query(sql).bind(id).bind(thread).bind(owner).fetch_optional(&self.pool).await?;
        row.as_ref()
            .map(checkpoint_row)
            .transpose()?
            .ok_or_else(|| Error::not_found("checkpoint", id))
    }

    pub async fn list_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        before: Option<CheckpointId>,
    ) -> Result<Vec<Checkpoint>> {
        self.check_owned(owner, thread).await?;
        let sql = concat!(
            "select ",
            checkpoint_cols!(),
            " from checkpoints where thread_id = $1 and ($2::uuid is null or checkpoint_id < $2)
             order by checkpoint_id desc limit $3"
        );
        let rows = sqlx::query(sql)
            .bind(thread)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(checkpoint_row).collect()
    }

    pub async fn append_events(
        &self,
        owner: UserId,
        thread: ThreadId,
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        append_in(&mut conn, owner, thread, events).await
    }

    pub async fn events_after(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        // One statement, one snapshot: the owner check and the rows agree.
        let rows = sqlx::query(
            "select e.seq, e.run_id, e.kind, e.data, e.created_at
             from threads t left join events e on e.thread_id = t.thread_id and e.seq > $2
                  and ($5::uuid is null or e.run_id = $5)
             where t.thread_id = $1 and t.owner_id = $3
             order by e.seq limit $4",
        )
        .bind(thread)
        .bind(after)
        .bind(owner)
        .bind(i64::from(limit))
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(Error::not_found("thread", thread));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(seq) = r.try_get::<Option<i64>, _>(0)? else { continue };
            out.push(Event {
                thread_id: thread,
                seq,
                run_id: r.try_get(1)?,
                kind: parsed(r, 2)?,
                data: r.try_get(3).map_err(|e| {
                    Error::unreadable("event", format_args!("{thread} seq {seq}"), e)
                })?,
                created_at: r.try_get(4)?,
            });
        }
        Ok(out)
    }

    pub async fn create_api_key(
        &self,
        subject: &str,
        key_hash: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        let user = self.ensure_user(subject).await?;
        let key_id = ApiKeyId::new();
        sqlx::query(
            "insert into api_keys (key_id, user_id, key_hash, prefix, created_at) values ($1, $2, $3, $4, $5)",
        )
        .bind(key_id)
        .bind(user.user_id)
        .bind(key_hash)
        .bind(prefix)
        .bind(now())
        .execute(&self.pool)
        .await?;
        self.find_api_key(key_id).await
    }

    pub async fn user_for_api_key(&self, key_hash: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "select u.user_id, u.subject, u.created_at from api_keys k join users u on u.user_id = k.user_id
             where k.key_hash = $1 and k.revoked_at is null",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(User { user_id: r.try_get(0)?, subject: r.try_get(1)?, created_at: r.try_get(2)? })
        })
        .transpose()
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        let sql = concat!("select ", api_key_cols!(), " order by k.created_at, k.key_id");
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(api_key_row).collect()
    }

    pub async fn revoke_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        sqlx::query("update api_keys set revoked_at = coalesce(revoked_at, $1) where key_id = $2")
            .bind(now())
            .bind(key)
            .execute(&self.pool)
            .await?;
        self.find_api_key(key).await
    }

    async fn find_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        let sql = concat!("select ", api_key_cols!(), " where k.key_id = $1");
        let row = sqlx::query(sql).bind(key).fetch_optional(&self.pool).await?;
        row.as_ref().map(api_key_row).transpose()?.ok_or_else(|| Error::not_found("api key", key))
    }

    pub async fn admin_find_thread(&self, id: ThreadId) -> Result<Option<Thread>> {
        find_thread(&self.pool, id).await
    }

    pub async fn admin_thread_owner(&self, id: ThreadId) -> Result<Option<UserId>> {
        let sql = "select owner_id from threads where thread_id = $1";
        Ok(sqlx::query_scalar(sql).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn admin_stats(&self) -> Result<Stats> {
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool);
        let threads_busy = count("select count(*) from threads where status = 'busy'").await?;
        let threads_busy_without_run = count(STATS_BUSY_WITHOUT_RUN).await?;
        let runs_pending = count("select count(*) from runs where status = 'pending'").await?;
        let (runs_running, oldest_running_since): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("select count(*), min(updated_at) from runs where status = 'running'")
                .fetch_one(&self.pool)
                .await?;
        Ok(Stats {
            threads_busy,
            threads_busy_without_run,
            runs_pending,
            runs_running,
            oldest_running_since,
        })
    }

    pub async fn admin_count_threads(&self, id: ThreadId) -> Result<i64> {
        Ok(sqlx::query_scalar("select count(*) from threads where thread_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }
}

/// One step of a run (see `Store::commit_step`), in the caller's transaction.
#[allow(clippy::too_many_arguments, reason = "mirrors Store::commit_step")]
async fn commit_step_in(
    tx: &mut PgConnection,
    owner: UserId,
    thread: ThreadId,
    run: RunId,
    events: Vec<NewEvent>,
    update: Option<StateUpdate>,
    metadata: &Metadata,
    end: Option<&RunEnd>,
) -> Result<Step> {
    let mut all = events;
    // The state first (its read takes the thread's row lock) ...
    let checkpoint = match update {
        None => None,
        Some(update) => {
            let checkpoint =
                update_state_in(&mut *tx, owner, thread, Some(run), None, update, metadata).await?;
            all.push(NewEvent::values(run, &checkpoint.values));
            Some(checkpoint)
        }
    };
    // ... then the run's end ...
    let ended = match end {
        None => None,
        Some(end) => {
            // The state update above took the thread's lock already, if there was one.
            let (lock, error) = (checkpoint.is_none(), end.error.as_deref());
            let (status, interrupted) = (end.status, end.interrupted);
            let ended = set_run_status_in(
                &mut *tx,
                owner,
                thread,
                run,
                status,
                error,
                lock,
                true,
                interrupted,
            )
            .await?;
            all.push(end.event.clone());
            Some(ended)
        }
    };
    // ... and every event of the step in one append, in order.
    let events =
        if all.is_empty() { Vec::new() } else { append_in(&mut *tx, owner, thread, &all).await? };
    Ok(Step { checkpoint, events, ended })
}

/// Replaces the thread's values with `update(base)` and stores them as a checkpoint, in the
/// caller's transaction; `base` is the thread's values, or `from`'s (then `from` is the
/// parent).
async fn update_state_in(
    conn: &mut PgConnection,
    owner: UserId,
    thread: ThreadId,
    run: Option<RunId>,
    from: Option<CheckpointId>,
    mut update: StateUpdate,
    metadata: &Metadata,
) -> Result<Checkpoint> {
    // The row lock orders concurrent updates: each reads the values the previous wrote.
    let current: Option<Value> = sqlx::query_scalar(
        "select state_values from threads where thread_id = $1 and owner_id = $2 for update",
    )
    .bind(thread)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::not_found("thread", thread))?;
    let (base, parent) = match from {
        None => (current, newest_checkpoint(&mut *conn, thread).await?),
        Some(from) => {
            let (values, step): (Value, i64) = sqlx::query_as(concat!(
                "select state_values, ",
                step_of!("metadata"),
                " from checkpoints where checkpoint_id = $1 and thread_id = $2"
            ))
            .bind(from)
            .bind(thread)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::not_found("checkpoint", from))?;
            (Some(values), Some((from, step)))
        }
    };
    let values = update(base).map_err(Error::Invalid)?;
    let step = parent.map_or(-1, |(_, step)| step + 1);
    let parent = parent.map(|(id, _)| id);
    let checkpoint =
        insert_checkpoint(&mut *conn, thread, run, parent, &values, metadata.clone(), step).await?;
    sqlx::query(
        // A new newest state waits for nothing: an interrupted thread is no longer (a run's
        // thread is `busy`, and its end sets the status).
        "update threads set state_values = $2, state_version = nextval('state_versions'), state_updated_at = $3, updated_at = $3,
             status = case when status = 'interrupted' then 'idle' else status end
         where thread_id = $1",
    )
    .bind(thread)
    .bind(pg_json("state values", &values)?)
    .bind(checkpoint.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(checkpoint)
}

/// The thread's newest checkpoint and its `step`.
async fn newest_checkpoint(
    conn: &mut PgConnection,
    thread: ThreadId,
) -> Result<Option<(CheckpointId, i64)>> {
    Ok(sqlx::query_as(concat!(
        "select checkpoint_id, ",
        step_of!("metadata"),
        " from checkpoints where thread_id = $1 order by checkpoint_id desc limit 1"
    ))
    .bind(thread)
    .fetch_optional(&mut *conn)
    .await?)
}

/// What makes a step a run's first (see [`FirstStep`]): the checkpoint it forks from, with
/// its values, or the state written before it on a thread without a checkpoint.
#[derive(Clone, Copy)]
struct First<'a> {
    fork: Option<&'a (CheckpointId, Value)>,
    initial: Option<&'a (Value, Metadata)>,
}

/// `metadata` with its checkpoint's `step`, as the store writes it.
fn with_step(mut metadata: Metadata, step: i64) -> Metadata {
    metadata.insert("step".into(), step.into());
    metadata
}

/// Inserts a checkpoint with `step` in its metadata.
async fn insert_checkpoint(
    conn: &mut PgConnection,
    thread: ThreadId,
    run: Option<RunId>,
    parent: Option<CheckpointId>,
    values: &Value,
    metadata: Metadata,
    step: i64,
) -> Result<Checkpoint> {
    let metadata = with_step(metadata, step);
    let checkpoint = Checkpoint {
        checkpoint_id: CheckpointId::new(),
        thread_id: thread,
        run_id: run,
        parent_checkpoint_id: parent,
        values: values.clone(),
        metadata,
        created_at: now(),
    };
    sqlx::query(
        "insert into checkpoints (checkpoint_id, thread_id, run_id, parent_checkpoint_id, state_values, metadata, created_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(checkpoint.checkpoint_id)
    .bind(thread)
    .bind(run)
    .bind(parent)
    .bind(pg_json("state values", values)?)
    .bind(pg_json("checkpoint metadata", &checkpoint.metadata)?)
    .bind(checkpoint.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(checkpoint)
}

/// Appends events numbered from the thread's `last_seq`. One statement, so one implicit
/// transaction when run alone: the thread's row lock (taken by the update) orders concurrent
/// appenders, and a failed insert rolls the counter back.
async fn append_in(
    conn: &mut PgConnection,
    owner: UserId,
    thread: ThreadId,
    events: &[NewEvent],
) -> Result<Vec<Event>> {
    let created_at = now();
    let encoded = EncodedEvents::new(events)?;
    // One statement, so one implicit transaction: the thread's row lock (taken by the
    // update) orders concurrent appenders, and a failed insert rolls the counter back.
    let seqs: Vec<i64> = sqlx::query_scalar(
            "with t as (
                 update threads set last_seq = last_seq + cardinality($4::text[])
                 where thread_id = $1 and owner_id = $2
                 returning last_seq
             )
             insert into events (thread_id, seq, run_id, kind, data, created_at)
             select $1, t.last_seq - cardinality($4::text[]) + u.ord, u.run_id, u.kind, u.data::jsonb, $6
             from t, unnest($3::uuid[], $4::text[], $5::text[]) with ordinality as u(run_id, kind, data, ord)
             returning seq",
        )
        .bind(thread)
        .bind(owner)
        .bind(&encoded.runs)
        .bind(&encoded.kinds)
        .bind(&encoded.data)
        .bind(created_at)
        .fetch_all(&mut *conn)
        .await?;
    if seqs.is_empty() {
        return Err(Error::not_found("thread", thread));
    }
    let first = seqs.iter().copied().min().unwrap_or_default();
    Ok(numbered(thread, first, events.to_vec(), created_at))
}

/// Moves a run to `status` and sets its thread's status to match, in the caller's
/// transaction (after taking the thread's row lock, unless `lock` is false because the caller
/// holds it). With `only_running`, only a running run moves: a run ends once, and a second
/// end is a conflict.
#[allow(clippy::too_many_arguments, reason = "one statement's parameters")]
async fn set_run_status_in(
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

async fn lock_owned_thread(conn: &mut PgConnection, owner: UserId, id: ThreadId) -> Result<()> {
    sqlx::query("select 1 from threads where thread_id = $1 and owner_id = $2 for update")
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut *conn)
        .await?
        .map(drop)
        .ok_or_else(|| Error::not_found("thread", id))
}

async fn insert_thread<'e, E>(
    db: E,
    owner: UserId,
    id: ThreadId,
    metadata: &Metadata,
) -> Result<Option<Thread>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let sql = concat!("insert into threads (thread_id, owner_id, metadata, status, state_values, last_seq, created_at, updated_at, state_updated_at)
         values ($1, $2, $3, 'idle', null, 0, $4, $4, $4)
         on conflict do nothing
         returning ", thread_cols!());
    let row = sqlx::query(sql)
        .bind(id)
        .bind(owner)
        .bind(pg_json("thread metadata", metadata)?)
        .bind(now())
        .fetch_optional(db)
        .await?;
    row.as_ref().map(thread_row).transpose()
}

/// `select <what> from threads where <the caller's threads matching filter>`.
fn thread_filter_query(what: &str, owner: UserId, filter: &ThreadFilter) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new(what);
    q.push(" from threads where owner_id = ").push_bind(owner);
    if let Some(metadata) = &filter.metadata {
        q.push(" and metadata @> ").push_bind(Json(metadata.clone()));
    }
    if let Some(values) = &filter.values {
        q.push(" and state_values @> ").push_bind(Json(values.clone()));
    }
    if let Some(ids) = &filter.ids {
        q.push(" and thread_id = any(").push_bind(ids.clone()).push(")");
    }
    if let Some(status) = filter.status {
        q.push(" and status = ").push_bind(status.as_str());
    }
    q
}

fn api_key_row(r: &PgRow) -> Result<ApiKey> {
    Ok(ApiKey {
        key_id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        subject: r.try_get(2)?,
        prefix: r.try_get(3)?,
        created_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
    })
}

async fn find_thread(pool: &PgPool, id: ThreadId) -> Result<Option<Thread>> {
    let sql = concat!("select ", thread_cols!(), " from threads where thread_id = $1");
    let row = sqlx::query(sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(thread_row).transpose()
}

fn parsed<T: std::str::FromStr<Err = String>>(r: &PgRow, idx: usize) -> Result<T> {
    let text: String = r.try_get(idx)?;
    text.parse().map_err(Error::Invalid)
}

fn object(r: &PgRow, idx: usize) -> Result<Metadata> {
    Ok(json_object(r.try_get(idx)?))
}

fn thread_row(r: &PgRow) -> Result<Thread> {
    let id: ThreadId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(Thread {
            thread_id: r.try_get(0)?,
            owner_id: r.try_get(1)?,
            metadata: object(r, 2)?,
            status: parsed(r, 3)?,
            values: r.try_get(4)?,
            last_seq: r.try_get(5)?,
            created_at: r.try_get(6)?,
            updated_at: r.try_get(7)?,
            state_updated_at: r.try_get(8)?,
        })
    };
    row().map_err(|e| Error::unreadable("thread", id, e))
}

fn run_row(r: &PgRow) -> Result<Run> {
    run_row_at(r, 0)
}

/// A run from the columns `run_cols!()` starting at column `at`.
fn run_row_at(r: &PgRow, at: usize) -> Result<Run> {
    let id: RunId = r.try_get(at)?;
    let row = || -> Result<_> {
        Ok(Run {
            run_id: r.try_get(at)?,
            thread_id: r.try_get(at + 1)?,
            owner_id: r.try_get(at + 2)?,
            assistant_id: r.try_get(at + 3)?,
            status: parsed(r, at + 4)?,
            input: r.try_get(at + 5)?,
            kwargs: r.try_get(at + 6)?,
            metadata: object(r, at + 7)?,
            multitask_strategy: parsed(r, at + 8)?,
            error: r.try_get(at + 9)?,
            created_at: r.try_get(at + 10)?,
            updated_at: r.try_get(at + 11)?,
        })
    };
    row().map_err(|e| Error::unreadable("run", id, e))
}

/// Events as the three arrays the functions take (`unnest`ed there, in order).
struct EncodedEvents {
    runs: Vec<Option<RunId>>,
    kinds: Vec<&'static str>,
    data: Vec<String>,
}

impl EncodedEvents {
    fn new(events: &[NewEvent]) -> Result<EncodedEvents> {
        Ok(EncodedEvents {
            runs: events.iter().map(|e| e.run_id).collect(),
            kinds: events.iter().map(|e| e.kind.as_str()).collect(),
            data: events
                .iter()
                .map(|e| json::encode("event data", &e.data, false))
                .collect::<Result<_>>()?,
        })
    }
}

/// JSON text checked and encoded by [`json::encode`] (so that it reads back exactly), bound
/// as `jsonb`.
struct PgJson(String);

fn pg_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> Result<PgJson> {
    json::encode(what, value, false).map(PgJson)
}

impl sqlx::Type<Postgres> for PgJson {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Json<Value> as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Json<Value> as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, Postgres> for PgJson {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        // jsonb's binary format: a version byte (1), then the text.
        buf.push(1);
        buf.extend_from_slice(self.0.as_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

/// Appended events, numbered from `first`.
fn numbered(
    thread: ThreadId,
    first: i64,
    events: Vec<NewEvent>,
    created_at: DateTime<Utc>,
) -> Vec<Event> {
    events
        .into_iter()
        .zip(first..)
        .map(|(e, seq)| Event {
            thread_id: thread,
            seq,
            run_id: e.run_id,
            kind: e.kind,
            data: e.data,
            created_at,
        })
        .collect()
}

fn checkpoint_row(r: &PgRow) -> Result<Checkpoint> {
    let id: CheckpointId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(Checkpoint {
            checkpoint_id: r.try_get(0)?,
            thread_id: r.try_get(1)?,
            run_id: r.try_get(2)?,
            parent_checkpoint_id: r.try_get(3)?,
            values: r.try_get(4)?,
            metadata: object(r, 5)?,
            created_at: r.try_get(6)?,
        })
    };
    row().map_err(|e| Error::unreadable("checkpoint", id, e))
}

fn assistant_row(r: &PgRow) -> Result<Assistant> {
    let id: AssistantId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(Assistant {
            assistant_id: r.try_get(0)?,
            graph_id: r.try_get(1)?,
            name: r.try_get(2)?,
            description: r.try_get(3)?,
            config: r.try_get(4)?,
            context: r.try_get(5)?,
            metadata: object(r, 6)?,
            version: r.try_get(7)?,
            owner_id: r.try_get(8)?,
            created_at: r.try_get(9)?,
            updated_at: r.try_get(10)?,
        })
    };
    row().map_err(|e| Error::unreadable("assistant", id, e))
}

// ---- diagnostics: `spindle doctor` and `spindle id inspect` (see crate::doctor) ----

use crate::doctor::{
    self, AnyId, Check, DoctorCounts, Finding, IdLookup, RunFacts, ThreadFacts, UserFacts,
};

impl PgStore {
    pub async fn admin_doctor_scan(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<(DoctorCounts, Vec<Finding>)> {
        // One snapshot for every check; read only, so it takes no row locks.
        let mut tx = self.pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let scan = doctor_scan(&mut tx, stale_before).await;
        tx.rollback().await?;
        scan
    }

    pub async fn admin_raise_last_seq(&self, id: ThreadId) -> Result<Option<(i64, i64)>> {
        let mut tx = self.pool.begin().await?;
        // The thread's row lock orders this with appenders; the max is read after taking it.
        let last: Option<i64> =
            sqlx::query_scalar("select last_seq from threads where thread_id = $1 for update")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(last) = last else { return Ok(None) };
        let max: i64 =
            sqlx::query_scalar("select coalesce(max(seq), 0) from events where thread_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if last >= max {
            return Ok(None);
        }
        sqlx::query("update threads set last_seq = $1 where thread_id = $2")
            .bind(max)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((last, max)))
    }

    pub async fn admin_settle_thread_status(
        &self,
        id: ThreadId,
    ) -> Result<Option<(ThreadStatus, ThreadStatus)>> {
        let mut tx = self.pool.begin().await?;
        // Run creation and run ends take this lock too: the runs read below are settled.
        let current: Option<String> =
            sqlx::query_scalar("select status from threads where thread_id = $1 for update")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(current) = current else { return Ok(None) };
        let current: ThreadStatus = current.parse().map_err(Error::Invalid)?;
        let (active, newest): (i64, Option<String>) = sqlx::query_as(
            "select (select count(*) from runs where thread_id = $1 and status in ('pending', 'running')),
                    (select status from runs where thread_id = $1 order by updated_at desc, run_id desc limit 1)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let newest = newest.map(|s| s.parse::<RunStatus>()).transpose().map_err(Error::Invalid)?;
        let settled = doctor::settled_status(current, active, newest);
        if settled == current {
            return Ok(None);
        }
        sqlx::query("update threads set status = $1, updated_at = $2 where thread_id = $3")
            .bind(settled.as_str())
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((current, settled)))
    }

    pub async fn admin_inspect_id(&self, id: &AnyId) -> Result<IdLookup> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let found = inspect_in(&mut tx, id).await;
        tx.rollback().await?;
        found
    }
}

async fn doctor_scan(
    c: &mut PgConnection,
    stale_before: DateTime<Utc>,
) -> Result<(DoctorCounts, Vec<Finding>)> {
    let (users, threads, runs, active_runs, checkpoints, events) = sqlx::query_as(
        "select (select count(*) from users), (select count(*) from threads), (select count(*) from runs),
                (select count(*) from runs where status in ('pending', 'running')),
                (select count(*) from checkpoints), (select count(*) from events)",
    )
    .fetch_one(&mut *c)
    .await?;
    let counts = DoctorCounts { users, threads, runs, active_runs, checkpoints, events };
    let limit = doctor::MAX_PER_CHECK;
    let mut out = Vec::new();

    let rows = sqlx::query(
        "select thread_id, owner_id,
                (select status from runs r where r.thread_id = t.thread_id order by updated_at desc, run_id desc limit 1)
         from threads t where status = 'busy'
          and not exists (select 1 from runs r where r.thread_id = t.thread_id and r.status in ('pending', 'running'))
         order by thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for r in &rows {
        let detail = match r.try_get::<Option<String>, _>(2)? {
            Some(status) => {
                format!("busy, but no run is pending or running (the newest run is {status})")
            }
            None => "busy, but the thread has no runs".to_owned(),
        };
        out.push(
            Finding::new(Check::BusyWithoutActiveRun, detail)
                .thread(r.try_get::<ThreadId, _>(0)?)
                .owner(r.try_get::<UserId, _>(1)?),
        );
    }

    let rows = sqlx::query(
        "select t.thread_id, t.owner_id, t.status, count(*) from runs r join threads t on t.thread_id = r.thread_id
         where r.status in ('pending', 'running') and t.status <> 'busy'
         group by t.thread_id, t.owner_id, t.status order by t.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for r in &rows {
        let (status, active): (String, i64) = (r.try_get(2)?, r.try_get(3)?);
        out.push(
            Finding::new(
                Check::ActiveRunNotBusy,
                format!("{status}, although {active} run(s) are pending or running"),
            )
            .thread(r.try_get::<ThreadId, _>(0)?)
            .owner(r.try_get::<UserId, _>(1)?),
        );
    }

    let rows = sqlx::query(
        "select run_id, thread_id, owner_id, updated_at, last from (
             select r.run_id, r.thread_id, r.owner_id, r.updated_at,
                    greatest(r.updated_at, (select max(e.created_at) from events e where e.run_id = r.run_id)) as last
             from runs r where r.status = 'running') x
         where last < $1 order by last limit $2",
    )
    .bind(stale_before)
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for r in &rows {
        out.push(
            doctor::stale_finding(r.try_get(3)?, r.try_get(4)?)
                .run(r.try_get::<RunId, _>(0)?)
                .thread(r.try_get::<ThreadId, _>(1)?)
                .owner(r.try_get::<UserId, _>(2)?),
        );
    }

    let broken: Vec<(ThreadId, Option<UserId>, i64, i64, i64)> = sqlx::query_as(
        "select e.thread_id, (select owner_id from threads t where t.thread_id = e.thread_id),
                count(*), count(distinct e.seq), max(e.seq)
         from events e group by e.thread_id
         having count(*) <> count(distinct e.seq) or max(e.seq) <> count(distinct e.seq) limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, owner, rows, distinct, max) in broken {
        let breaks: Vec<(i64, i64)> = sqlx::query_as(
            "select seq, prev from (select seq, lag(seq, 1, 0::bigint) over (order by seq) as prev from events where thread_id = $1) x
             where seq <> prev + 1 order by seq limit $2",
        )
        .bind(thread)
        .bind(doctor::SEQ_BREAKS_SHOWN)
        .fetch_all(&mut *c)
        .await?;
        out.extend(doctor::seq_findings(thread, owner, rows, distinct, max, &breaks));
    }

    let rows: Vec<(ThreadId, UserId, i64, i64)> = sqlx::query_as(
        "select thread_id, owner_id, last_seq, max_seq from (
             select t.thread_id, t.owner_id, t.last_seq,
                    coalesce((select max(seq) from events e where e.thread_id = t.thread_id), 0) as max_seq
             from threads t) x
         where last_seq <> max_seq order by thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, owner, last, max) in rows {
        out.push(doctor::last_seq_finding(last, max).thread(thread).owner(owner));
    }

    let rows: Vec<(ThreadId, RunId, i64, i64, i64, Option<ThreadId>)> = sqlx::query_as(
        "select e.thread_id, e.run_id, count(*), min(e.seq), max(e.seq), r.thread_id
         from events e left join runs r on r.run_id = e.run_id
         where e.run_id is not null and (r.run_id is null or r.thread_id <> e.thread_id)
         group by e.thread_id, e.run_id, r.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, run, n, first, last, run_thread) in rows {
        let events = format!("{n} event(s) (seq {first}..{last})");
        let finding = match run_thread {
            None => Finding::new(
                Check::EventRunMissing,
                format!("{events} name run {run}, which does not exist"),
            ),
            Some(other) => Finding::new(
                Check::EventRunInOtherThread,
                format!("{events} name a run of thread {other}"),
            ),
        };
        out.push(finding.thread(thread).run(run));
    }

    let rows: Vec<(CheckpointId, ThreadId, RunId, Option<ThreadId>)> = sqlx::query_as(
        "select c.checkpoint_id, c.thread_id, c.run_id, r.thread_id
         from checkpoints c left join runs r on r.run_id = c.run_id
         where c.run_id is not null and (r.run_id is null or r.thread_id <> c.thread_id)
         order by c.checkpoint_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (checkpoint, thread, run, run_thread) in rows {
        let finding = match run_thread {
            None => Finding::new(
                Check::CheckpointRunMissing,
                format!("checkpoint {checkpoint} names run {run}, which does not exist"),
            ),
            Some(other) => Finding::new(
                Check::CheckpointRunInOtherThread,
                format!("checkpoint {checkpoint} names a run of thread {other}"),
            ),
        };
        out.push(finding.thread(thread).run(run));
    }

    // Forks make a thread's checkpoints a tree: every parent an older checkpoint of the thread.
    let rows: Vec<(CheckpointId, ThreadId, CheckpointId, Option<ThreadId>)> = sqlx::query_as(
        "select c.checkpoint_id, c.thread_id, c.parent_checkpoint_id, p.thread_id
         from checkpoints c left join checkpoints p on p.checkpoint_id = c.parent_checkpoint_id
         where c.parent_checkpoint_id is not null
           and c.parent_checkpoint_id <> '00000000-0000-0000-0000-000000000000'::uuid
           and (p.checkpoint_id is null or p.thread_id <> c.thread_id or p.checkpoint_id >= c.checkpoint_id)
         order by c.checkpoint_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (checkpoint, thread, parent, parent_thread) in rows {
        let detail = doctor::parent_detail(
            &checkpoint.to_string(),
            &parent.to_string(),
            Some(thread),
            parent_thread,
        );
        out.push(Finding::new(Check::CheckpointParentMissing, detail).thread(Some(thread)));
    }

    missing_parents(c, limit, &mut out).await?;
    invalid_ids(c, limit, &mut out).await?;
    unreadable_json(c, limit, &mut out).await?;
    Ok((counts, out))
}

/// JSON values serde_json cannot read back, a page of rows at a time (in the scan's one
/// snapshot, so ctids stay put). Table and column names come from `doctor::JSON_TABLES`.
async fn unreadable_json(c: &mut PgConnection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    let mut found = 0;
    for spec in doctor::JSON_TABLES {
        let events = spec.table == "events";
        // Events are paged by (thread_id, seq), other rows by their ctid.
        let (key, after) = if events {
            (
                "thread_id::text || ',' || seq",
                "($1::text is null or (thread_id, seq) > (split_part($1, ',', 1)::uuid, split_part($1, ',', 2)::bigint))",
            )
        } else {
            ("ctid::text", "($1::text is null or ctid > $1::tid)")
        };
        let order = if events { "thread_id, seq" } else { "ctid" };
        let named = |c: Option<&str>| c.map_or_else(|| "null::uuid".to_owned(), str::to_owned);
        let columns: Vec<String> = spec.columns.iter().map(|c| format!("{c}::text")).collect();
        let sql = format!(
            "select {key}, {}::text, {}, {}, {}, {} from {} where {after} order by {order} limit $2",
            spec.id,
            named(spec.thread),
            named(spec.run),
            named(spec.owner),
            columns.join(", "),
            spec.table,
        );
        let mut last: Option<String> = None;
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(last.as_deref())
                .bind(doctor::JSON_SCAN_PAGE)
                .fetch_all(&mut *c)
                .await?;
            for r in &rows {
                last = Some(r.try_get(0)?);
                let thread: Option<ThreadId> = r.try_get(2)?;
                let id: String = r.try_get(1)?;
                let id = match (events, thread) {
                    (true, Some(thread)) => format!("{id} of thread {thread}"),
                    _ => id,
                };
                for (i, column) in spec.columns.iter().enumerate() {
                    let Some(text) = r.try_get::<Option<String>, _>(5 + i)? else { continue };
                    if let Some(finding) = doctor::unreadable_json(spec, column, &id, &text) {
                        out.push(
                            finding
                                .thread(thread)
                                .run(r.try_get::<Option<RunId>, _>(3)?)
                                .owner(r.try_get::<Option<UserId>, _>(4)?),
                        );
                        found += 1;
                        if found >= limit {
                            return Ok(());
                        }
                    }
                }
            }
            if (rows.len() as i64) < doctor::JSON_SCAN_PAGE {
                break;
            }
        }
    }
    Ok(())
}

/// Rows whose thread, owner or user is missing: foreign keys bypassed.
async fn missing_parents(c: &mut PgConnection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    let rows: Vec<(RunId, ThreadId, UserId, Option<UserId>)> = sqlx::query_as(
        "select r.run_id, r.thread_id, r.owner_id, (select t.owner_id from threads t where t.thread_id = r.thread_id)
         from runs r where not exists (select 1 from threads t where t.thread_id = r.thread_id and t.owner_id = r.owner_id)
         order by r.run_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (run, thread, owner, thread_owner) in rows {
        let detail = match thread_owner {
            None => format!("run of thread {thread}, which does not exist"),
            Some(other) => format!("run owned by {owner}, but its thread is owned by {other}"),
        };
        out.push(Finding::new(Check::MissingParent, detail).run(run).thread(thread).owner(owner));
    }
    let rows: Vec<(ThreadId, i64)> = sqlx::query_as(
        "select e.thread_id, count(*) from events e
         where not exists (select 1 from threads t where t.thread_id = e.thread_id)
         group by e.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, n) in rows {
        let detail = format!("{n} event(s) of thread {thread}, which does not exist");
        out.push(Finding::new(Check::MissingParent, detail).thread(thread));
    }
    let rows: Vec<(CheckpointId, ThreadId)> = sqlx::query_as(
        "select c.checkpoint_id, c.thread_id from checkpoints c
         where not exists (select 1 from threads t where t.thread_id = c.thread_id)
         order by c.checkpoint_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (checkpoint, thread) in rows {
        let detail = format!("checkpoint {checkpoint} of thread {thread}, which does not exist");
        out.push(Finding::new(Check::MissingParent, detail).thread(thread));
    }
    let rows: Vec<(ThreadId, UserId)> = sqlx::query_as(
        "select t.thread_id, t.owner_id from threads t
         where not exists (select 1 from users u where u.user_id = t.owner_id) order by t.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, owner) in rows {
        let detail = format!("thread owned by user {owner}, who does not exist");
        out.push(Finding::new(Check::MissingParent, detail).thread(thread).owner(owner));
    }
    let rows: Vec<(ApiKeyId, UserId)> = sqlx::query_as(
        "select k.key_id, k.user_id from api_keys k
         where not exists (select 1 from users u where u.user_id = k.user_id) order by k.key_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (key, user) in rows {
        let detail = format!("API key {key} of user {user}, who does not exist");
        out.push(Finding::new(Check::MissingParent, detail));
    }
    let rows: Vec<(AssistantId, UserId)> = sqlx::query_as(
        "select a.assistant_id, a.owner_id from assistants a where a.owner_id is not null
          and not exists (select 1 from users u where u.user_id = a.owner_id) order by a.assistant_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (assistant, user) in rows {
        let detail = format!("assistant {assistant} of user {user}, who does not exist");
        out.push(Finding::new(Check::MissingParent, detail));
    }
    Ok(())
}

/// The `uuid` type makes every id a UUID; what is left to find is the nil UUID, which no
/// parser of ours accepts. Table and column names come from `doctor::ID_COLUMNS`.
async fn invalid_ids(c: &mut PgConnection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    for &(table, column) in doctor::ID_COLUMNS {
        // Events are named by (thread_id, seq), other rows by their ctid.
        let key =
            if table == "events" { "thread_id::text || ', seq ' || seq" } else { "ctid::text" };
        let sql = format!(
            "select {key} from {table} where {column} = '00000000-0000-0000-0000-000000000000'::uuid limit $1"
        );
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(&mut *c).await?;
        for row in rows {
            let row = match table {
                "events" => format!("the event of thread {row}"),
                _ => format!("the row with ctid {row}"),
            };
            out.push(Finding::new(
                Check::InvalidId,
                format!("{table}.{column} of {row} is the nil UUID"),
            ));
        }
    }
    Ok(())
}

async fn inspect_in(c: &mut PgConnection, id: &AnyId) -> Result<IdLookup> {
    let mut found = IdLookup::default();
    let sql = concat!("select ", thread_cols!(), " from threads where thread_id = $1");
    let row = sqlx::query(sql).bind(id.thread).fetch_optional(&mut *c).await?;
    if let Some(thread) = row.as_ref().map(thread_row).transpose()? {
        let (owner_subject, runs, active_runs, checkpoints, events) = sqlx::query_as(
            "select (select subject from users where user_id = $2),
                    (select count(*) from runs where thread_id = $1),
                    (select count(*) from runs where thread_id = $1 and status in ('pending', 'running')),
                    (select count(*) from checkpoints where thread_id = $1),
                    (select count(*) from events where thread_id = $1)",
        )
        .bind(id.thread)
        .bind(thread.owner_id)
        .fetch_one(&mut *c)
        .await?;
        let sql = concat!(
            "select ",
            run_cols!(),
            " from runs where thread_id = $1 order by created_at desc, run_id desc limit 1"
        );
        let last = sqlx::query(sql).bind(id.thread).fetch_optional(&mut *c).await?;
        found.thread = Some(ThreadFacts {
            thread,
            owner_subject,
            runs,
            active_runs,
            checkpoints,
            events,
            last_run: last.as_ref().map(run_row).transpose()?,
        });
    }
    let sql = concat!("select ", run_cols!(), " from runs where run_id = $1");
    let row = sqlx::query(sql).bind(id.run).fetch_optional(&mut *c).await?;
    if let Some(run) = row.as_ref().map(run_row).transpose()? {
        let (owner_subject, events) = sqlx::query_as(
            "select (select subject from users where user_id = $2), (select count(*) from events where run_id = $1)",
        )
        .bind(id.run)
        .bind(run.owner_id)
        .fetch_one(&mut *c)
        .await?;
        found.run = Some(RunFacts { run, owner_subject, events });
    }
    let sql = concat!("select ", assistant_cols!(), " from assistants where assistant_id = $1");
    let row = sqlx::query(sql).bind(id.assistant).fetch_optional(&mut *c).await?;
    found.assistant = row.as_ref().map(assistant_row).transpose()?;
    let sql = concat!("select ", checkpoint_cols!(), " from checkpoints where checkpoint_id = $1");
    let row = sqlx::query(sql).bind(id.checkpoint).fetch_optional(&mut *c).await?;
    found.checkpoint = row.as_ref().map(checkpoint_row).transpose()?;
    if let Some(checkpoint) = &found.checkpoint {
        let (me, thread) = (checkpoint.checkpoint_id, checkpoint.thread_id);
        let children: Vec<CheckpointId> = sqlx::query_scalar(
            "select checkpoint_id from checkpoints where thread_id = $2 and parent_checkpoint_id = $1
             order by checkpoint_id limit 20",
        )
        .bind(me)
        .bind(thread)
        .fetch_all(&mut *c)
        .await?;
        let newest: bool = sqlx::query_scalar(
            "select checkpoint_id = $1 from checkpoints where thread_id = $2 order by checkpoint_id desc limit 1",
        )
        .bind(me)
        .bind(thread)
        .fetch_one(&mut *c)
        .await?;
        let (depth, chain_whole): (i64, bool) = sqlx::query_as(
            "with recursive chain(id, parent, n) as (
                 select checkpoint_id, parent_checkpoint_id, 0::bigint from checkpoints where checkpoint_id = $1
                 union all
                 select p.checkpoint_id, p.parent_checkpoint_id, chain.n + 1 from chain
                 join checkpoints p on p.checkpoint_id = chain.parent and p.thread_id = $2 and p.checkpoint_id < chain.id
             )
             select n, parent is null from chain order by n desc limit 1",
        )
        .bind(me)
        .bind(thread)
        .fetch_one(&mut *c)
        .await?;
        found.checkpoint_facts =
            Some(doctor::CheckpointFacts { children, newest, depth, chain_whole });
    }
    let row = sqlx::query(
        "select user_id, subject, created_at,
                (select count(*) from threads where owner_id = $1), (select count(*) from api_keys where user_id = $1)
         from users where user_id = $1",
    )
    .bind(id.user)
    .fetch_optional(&mut *c)
    .await?;
    if let Some(r) = row {
        let user =
            User { user_id: r.try_get(0)?, subject: r.try_get(1)?, created_at: r.try_get(2)? };
        found.user = Some(UserFacts { user, threads: r.try_get(3)?, api_keys: r.try_get(4)? });
    }
    let sql = concat!("select ", api_key_cols!(), " where k.key_id = $1");
    let row = sqlx::query(sql).bind(id.api_key).fetch_optional(&mut *c).await?;
    found.api_key = row.as_ref().map(api_key_row).transpose()?;
    // Messages live in the threads' JSON values: a scan (containment needs no index here).
    found.message_threads = sqlx::query_as(
        "select thread_id, owner_id from threads
         where jsonb_typeof(state_values -> 'messages') = 'array'
           and state_values -> 'messages' @> jsonb_build_array(jsonb_build_object('id', $1::text))
         limit 10",
    )
    .bind(id.message.to_string())
    .fetch_all(&mut *c)
    .await?;
    Ok(found)
}
