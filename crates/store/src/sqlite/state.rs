//! SQLite: a thread's state: state updates, a run's steps, checkpoints.

use chrono::{DateTime, Utc};
use ids::{CheckpointId, RunId, ThreadId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::json;
use crate::model::*;
use crate::{Error, Result};
use domain::Pending;

use super::events::{append_in, encode_events};
use super::runs::move_run_in;
use super::{SqliteStore, all, check_owned, checkpoint_row, micros};

impl SqliteStore {
    pub async fn update_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        from: Option<CheckpointId>,
        update: StateUpdate,
        metadata: &Metadata,
    ) -> Result<Checkpoint> {
        let metadata = StepMetadata::new(metadata)?;
        let base = Base::from(from);
        self.write(move |c| Ok(update_state_in(c, owner, thread, run, base, update, metadata)?.0))
            .await
    }

    pub async fn commit_first_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        first: FirstStep,
    ) -> Result<Step> {
        let first = EncodedFirst::new(first)?;
        self.write(move |c| first_step_in(c, owner, thread, run, first)).await
    }

    #[allow(clippy::too_many_arguments, reason = "mirrors Store::commit_step")]
    pub async fn commit_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        events: &[NewEvent],
        update: Option<StateUpdate>,
        metadata: &Metadata,
        end: Option<&RunEnd>,
    ) -> Result<Step> {
        let events = encode_events(events)?;
        let metadata = StepMetadata::new(metadata)?;
        let end = end
            .map(|e| Ok::<_, Error>((e.clone(), encode_events(std::slice::from_ref(&e.event))?)))
            .transpose()?;
        self.write(move |c| commit_step_in(c, owner, thread, run, events, update, metadata, end))
            .await
    }

    pub async fn get_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: CheckpointId,
    ) -> Result<Checkpoint> {
        self.read(move |c| {
            let sql = concat!(
                "select ",
                checkpoint_cols!(),
                " from checkpoints where checkpoint_id = ?1 and thread_id = ?2
                  and exists (select 1 from threads where thread_id = ?2 and owner_id = ?3)"
            );
            c.prepare_cached(sql)?
                .query_row(params![id, thread, owner], checkpoint_row)
                .optional()?
                .ok_or_else(|| Error::not_found("checkpoint", id))
        })
        .await
    }

    pub async fn list_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        before: Option<CheckpointId>,
    ) -> Result<Vec<Checkpoint>> {
        self.read(move |c| {
            check_owned(c, owner, thread)?;
            let sql = concat!(
                "select ",
                checkpoint_cols!(),
                " from checkpoints where thread_id = ?1 and (?2 is null or checkpoint_id < ?2)
                 order by checkpoint_id desc limit ?3"
            );
            all(c, sql, params![thread, before, limit], checkpoint_row)
        })
        .await
    }
}

/// One step of a run (see `Store::commit_step`), in the caller's transaction.
#[allow(clippy::too_many_arguments, reason = "mirrors Store::commit_step")]
fn commit_step_in(
    c: &Connection,
    owner: UserId,
    thread: ThreadId,
    run: RunId,
    events: Vec<(NewEvent, String)>,
    update: Option<StateUpdate>,
    metadata: StepMetadata,
    end: Option<(RunEnd, Vec<(NewEvent, String)>)>,
) -> Result<Step> {
    let mut all = events;
    // The state first ...
    let checkpoint = match update {
        None => None,
        Some(update) => {
            let (checkpoint, values_text) =
                update_state_in(c, owner, thread, Some(run), Base::Newest, update, metadata)?;
            if !Pending::is_graph_state(&checkpoint.metadata) {
                all.push((NewEvent::values(run, &checkpoint.values), values_text));
            }
            Some(checkpoint)
        }
    };
    // ... then the run's end ...
    let ended = match end {
        None => None,
        Some((end, last)) => {
            // A run ends once: a second end (another node's recovery got there first)
            // is refused.
            let (status, error) = (end.status, end.error.as_deref());
            let ended = move_run_in(c, owner, thread, run, status, error, true, end.interrupted)?
                .ok_or_else(|| {
                Error::Conflict(format!("run {run} is not running: it has already ended"))
            })?;
            all.extend(last);
            Some(ended)
        }
    };
    // ... and every event of the step in one append, in order.
    let events = if all.is_empty() { Vec::new() } else { append_in(c, owner, thread, all)? };
    Ok(Step { checkpoint, events, ended })
}

/// A [`FirstStep`] with its events encoded (outside the writer).
pub(super) struct EncodedFirst {
    events: Vec<(NewEvent, String)>,
    update: StateUpdate,
    metadata: StepMetadata,
    from: Option<CheckpointId>,
    initial: Option<(String, StepMetadata)>,
}

/// A checkpoint's metadata encoded outside the writer (the one thread every write waits
/// for), without `step`, which the writer splices in once it knows the parent.
struct StepMetadata {
    map: Metadata,
    text: String,
}

impl StepMetadata {
    fn new(metadata: &Metadata) -> Result<StepMetadata> {
        let mut map = metadata.clone();
        map.remove("step");
        let text = json::encode("checkpoint metadata", &map, true)?;
        Ok(StepMetadata { map, text })
    }

    /// The metadata with `step`, as text to store and as the checkpoint returned.
    fn with_step(self, step: i64) -> (String, Metadata) {
        let text = match self.text.strip_prefix('{') {
            Some("}") | None => format!("{{\"step\":{step}}}"),
            Some(rest) => format!("{{\"step\":{step},{rest}"),
        };
        let mut map = self.map;
        map.insert("step".into(), step.into());
        (text, map)
    }
}

impl EncodedFirst {
    pub(super) fn new(first: FirstStep) -> Result<EncodedFirst> {
        let initial = match first.initial {
            None => None,
            Some((values, metadata)) => {
                let metadata = StepMetadata::new(&metadata)?;
                Some((json::encode("state values", &values, true)?, metadata))
            }
        };
        Ok(EncodedFirst {
            events: encode_events(&first.events)?,
            update: first.update,
            metadata: StepMetadata::new(&first.metadata)?,
            from: first.from,
            initial,
        })
    }
}

/// A run's first step (see `Store::commit_first_step`), in the caller's transaction.
pub(super) fn first_step_in(
    c: &Connection,
    owner: UserId,
    thread: ThreadId,
    run: RunId,
    first: EncodedFirst,
) -> Result<Step> {
    let EncodedFirst { mut events, update, metadata, from, initial } = first;
    let mut base = Base::from(from);
    if let (None, Some((values_text, initial_metadata))) = (from, initial) {
        base = match newest_checkpoint(c, thread)? {
            Some(newest) => Base::Known(Some(newest)),
            None => {
                // The thread's first checkpoint: the state before the input, without a parent
                // and of no run (a rollback of the first run keeps it: forks of the first
                // message start there).
                check_owner(c, owner, thread)?;
                let (initial, ..) =
                    insert_checkpoint(c, thread, None, None, &values_text, initial_metadata, -1)?;
                Base::Known(Some((initial, -1)))
            }
        };
    }
    let (checkpoint, values_text) =
        update_state_in(c, owner, thread, Some(run), base, update, metadata)?;
    if !Pending::is_graph_state(&checkpoint.metadata) {
        events.push((NewEvent::values(run, &checkpoint.values), values_text));
    }
    let events = append_in(c, owner, thread, events)?;
    Ok(Step { checkpoint: Some(checkpoint), events, ended: None })
}

/// The thread's newest checkpoint and its `step` (a missing or non-integer step read as −1).
fn newest_checkpoint(c: &Connection, thread: ThreadId) -> Result<Option<(CheckpointId, i64)>> {
    Ok(c.prepare_cached(
        // The metadata is parsed once (`->>`), in the writer every write waits for.
        "select checkpoint_id, iif(typeof(step) = 'integer', step, -1) from
             (select checkpoint_id, metadata ->> '$.step' as step from checkpoints where thread_id = ?1 order by checkpoint_id desc limit 1)",
    )?
    .query_row([thread], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?)
}

/// `NotFound` unless the caller owns the thread.
fn check_owner(c: &Connection, owner: UserId, thread: ThreadId) -> Result<()> {
    c.prepare_cached("select 1 from threads where thread_id = ?1 and owner_id = ?2")?
        .query_row(params![thread, owner], |_| Ok(()))
        .optional()?
        .ok_or_else(|| Error::not_found("thread", thread))
}

/// Inserts a checkpoint with `step` in its metadata; returns the metadata as written.
fn insert_checkpoint(
    c: &Connection,
    thread: ThreadId,
    run: Option<RunId>,
    parent: Option<CheckpointId>,
    values_text: &str,
    metadata: StepMetadata,
    step: i64,
) -> Result<(CheckpointId, Metadata, DateTime<Utc>)> {
    let (metadata_text, metadata) = metadata.with_step(step);
    let checkpoint_id = CheckpointId::new();
    let created_at = now();
    c.prepare_cached(
        "insert into checkpoints (checkpoint_id, thread_id, run_id, parent_checkpoint_id, state_values, metadata, created_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![checkpoint_id, thread, run, parent, values_text, metadata_text, micros(created_at)])?;
    Ok((checkpoint_id, metadata, created_at))
}

/// What a new checkpoint is made from.
#[derive(Clone, Copy)]
enum Base {
    /// The thread's values; the parent is its newest checkpoint.
    Newest,
    /// The thread's values; the parent (its newest checkpoint, and its step) read already.
    Known(Option<(CheckpointId, i64)>),
    /// That checkpoint's values (a fork); it is the parent.
    From(CheckpointId),
}

impl Base {
    fn from(from: Option<CheckpointId>) -> Base {
        from.map_or(Base::Newest, Base::From)
    }
}

/// Replaces the thread's values with `update(base)` and stores them as a checkpoint, the
/// base being the thread's values, or a fork's checkpoint's (see [`Base`]); returns it with
/// its values as JSON text.
fn update_state_in(
    c: &Connection,
    owner: UserId,
    thread: ThreadId,
    run: Option<RunId>,
    from: Base,
    mut update: StateUpdate,
    metadata: StepMetadata,
) -> Result<(Checkpoint, String)> {
    let current: Option<String> = c
        .prepare_cached("select state_values from threads where thread_id = ?1 and owner_id = ?2")?
        .query_row(params![thread, owner], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found("thread", thread))?;
    let (base, parent) = match from {
        Base::Newest => (current, newest_checkpoint(c, thread)?),
        Base::Known(parent) => (current, parent),
        Base::From(from) => {
            let (values, step): (String, i64) = c
                .prepare_cached(
                    "select state_values, iif(typeof(step) = 'integer', step, -1) from
                         (select state_values, metadata ->> '$.step' as step from checkpoints where checkpoint_id = ?1 and thread_id = ?2)",
                )?
                .query_row(params![from, thread], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| Error::not_found("checkpoint", from))?;
            (Some(values), Some((from, step)))
        }
    };
    let base = base.map(|text| serde_json::from_str(&text)).transpose()?;
    let values = update(base).map_err(Error::Invalid)?;
    let values_text = json::encode("state values", &values, true)?;
    let step = parent.map_or(-1, |(_, step)| step + 1);
    let parent = parent.map(|(id, _)| id);
    let (checkpoint_id, metadata, created_at) =
        insert_checkpoint(c, thread, run, parent, &values_text, metadata, step)?;
    // A new newest state waits for nothing: an interrupted thread is no longer (a run's
    // thread is `busy`, and its end sets the status).
    c.prepare_cached("update threads set state_values = ?1, state_updated_at = ?2, updated_at = ?2, status = case when status = 'interrupted' then 'idle' else status end where thread_id = ?3")?
        .execute(params![values_text, micros(created_at), thread])?;
    // Built from what was written, not read back: the values need no second parse.
    let checkpoint = Checkpoint {
        checkpoint_id,
        thread_id: thread,
        run_id: run,
        parent_checkpoint_id: parent,
        values,
        metadata,
        created_at,
    };
    Ok((checkpoint, values_text))
}
