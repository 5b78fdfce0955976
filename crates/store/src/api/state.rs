//! `Store`: a thread's state: state updates, a run's steps, checkpoints.

use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;

use crate::model::*;
use crate::{Error, Result, Store};

impl Store {
    // ---- state ----

    /// Stores a new state of the thread as a checkpoint (its parent is the previous newest)
    /// and makes it the thread's current values.
    pub async fn put_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        values: &Value,
        metadata: &Metadata,
    ) -> Result<Checkpoint> {
        let values = values.clone();
        let update = Box::new(move |_| Ok(values.clone()));
        self.update_state(owner, thread, run, None, update, metadata).await
    }

    /// Replaces the thread's values with `update(current)` atomically (no update between the
    /// read and the write is lost) and stores the result as a checkpoint, the thread's new
    /// newest. With `from`, `current` is that checkpoint's values and it is the new one's
    /// parent (a new branch when it was not the newest); a checkpoint the thread does not
    /// have is [`Error::NotFound`]. An error from `update` becomes [`Error::Invalid`] and
    /// changes nothing.
    ///
    /// Every checkpoint the store writes has `step` in its metadata: its parent's plus one
    /// (a parent without an integer `step` counts as −1), −1 without a parent.
    pub async fn update_state(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        from: Option<CheckpointId>,
        update: StateUpdate,
        metadata: &Metadata,
    ) -> Result<Checkpoint> {
        dispatch!(self.update_state(owner, thread, run, from, update, metadata))
    }

    /// A claimed run's first step (see [`FirstStep`]), for a run that was created pending: its
    /// events, its checkpoint (after `initial`'s, when that is written) and the `values` event,
    /// in one transaction. Publish the events after this returns.
    pub async fn commit_first_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        first: FirstStep,
    ) -> Result<Step> {
        dispatch!(self.commit_first_step(owner, thread, run, first))
    }

    /// One step of a run, in one transaction: appends `events`; with `update`, applies it as
    /// a checkpoint of the run and appends a `values` event with the new values; with `end`,
    /// ends the run (only a running run: a run ends once) and appends its last event. Returns
    /// what it committed; publish the events after this returns.
    #[allow(clippy::too_many_arguments, reason = "one transaction's parts, each optional")]
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
        dispatch!(self.commit_step(owner, thread, run, events, update, metadata, end))
    }

    /// Ends a run: its status (the thread's follows) and its last event, in one transaction.
    /// A run that is not running is a conflict: it has ended already.
    pub async fn finish_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        status: RunStatus,
        error: Option<&str>,
        event: &NewEvent,
    ) -> Result<(Run, Event)> {
        let end = RunEnd {
            status,
            error: error.map(str::to_owned),
            event: event.clone(),
            interrupted: false,
        };
        let step =
            self.commit_step(owner, thread, run, &[], None, &Metadata::new(), Some(&end)).await?;
        match (step.ended, step.events.into_iter().last()) {
            (Some(ended), Some(last)) => Ok((ended, last)),
            _ => Err(Error::Invalid("the run's end was not recorded".into())),
        }
    }

    /// One checkpoint of the caller's thread.
    pub async fn get_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: CheckpointId,
    ) -> Result<Checkpoint> {
        dispatch!(self.get_checkpoint(owner, thread, id))
    }

    /// The thread's checkpoints, newest first, optionally only those older than `before`.
    pub async fn list_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        before: Option<CheckpointId>,
    ) -> Result<Vec<Checkpoint>> {
        dispatch!(self.list_checkpoints(owner, thread, limit, before))
    }
}
