//! PostgreSQL: a thread's state: state updates, a run's steps, checkpoints.

use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::model::*;
use crate::{Error, Result};
use domain::Pending;

use super::events::{EncodedEvents, append_in, numbered};
use super::runs::set_run_status_in;
use super::{PgStore, checkpoint_row, lock_owned_thread, pg_json, run_row_at};

impl PgStore {
    pub async fn update_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        from: Option<CheckpointId>,
        update: StateUpdate,
        metadata: &Metadata,
    ) -> Result<Checkpoint> {
        // Written here without the last-written state: a run's next step reads the new one.
        self.forget_written(thread);
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
        self.forget_written(thread);
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
        if !Pending::is_graph_state(&checkpoint.metadata) {
            events.push(NewEvent::values(run, &checkpoint.values));
        }
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
        self.forget_written(thread);
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
                    if !Pending::is_graph_state(metadata) {
                        all.push(NewEvent::values(run, &values));
                    }
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
                    self.forget_written(thread);
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
                (None, Some(values)) => {
                    self.remember_written(thread, new_version, Some(values.clone()))
                }
                (Some(_), _) => self.forget_written(thread),
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
}

/// Tries of a step whose last-written state turned out stale, before it takes the thread's lock
/// first and reads the state under it.
const STALE_TRIES: usize = 3;

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
            if !Pending::is_graph_state(metadata) {
                all.push(NewEvent::values(run, &checkpoint.values));
            }
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
pub(super) fn with_step(mut metadata: Metadata, step: i64) -> Metadata {
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
