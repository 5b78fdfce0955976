//! `Store`: LangGraph's own checkpoints, blobs and pending writes (`graph_checkpoints`,
//! `graph_checkpoint_blobs`, `graph_checkpoint_writes`), with the official savers' semantics
//! so that a Python `BaseCheckpointSaver` maps onto these methods one to one
//! (docs/langgraph-workers.md §3). Every row is under one of the caller's threads: another
//! user's thread, or a missing one, is [`Error::NotFound`] and nothing is written.

use ids::{CheckpointId, RunId, ThreadId, UserId};

use crate::model::*;
use crate::{Error, Result, Store};

impl Store {
    /// Stores a checkpoint of the caller's thread (`put`), in one transaction: each blob is
    /// inserted unless `(namespace, channel, version)` is stored already (a version's value
    /// never changes), and the checkpoint is inserted or replaces the one with its id. A
    /// checkpoint that is not a JSON object, a `channel_versions` value that is neither a string
    /// nor an integer, or a blob typed `"empty"` is [`Error::Invalid`].
    pub async fn put_graph_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        new: &NewGraphCheckpoint,
    ) -> Result<()> {
        domain::graph::check_new_checkpoint(new).map_err(Error::Invalid)?;
        dispatch!(self.put_graph_checkpoint(owner, thread, new))
    }

    /// Stores a task's writes against a checkpoint (`put_writes`), in one transaction. When
    /// every write has a negative (special) `idx` they replace what is stored under their
    /// `(task_id, idx)`; otherwise a write already stored under its key is kept and the new
    /// one dropped (see [`GraphWrites::overwrites`]). The checkpoint need not be stored yet
    /// (LangGraph may send a step's writes before its checkpoint).
    pub async fn put_graph_writes(
        &self,
        owner: UserId,
        thread: ThreadId,
        writes: &GraphWrites,
    ) -> Result<()> {
        dispatch!(self.put_graph_writes(owner, thread, writes))
    }

    /// One checkpoint of the caller's thread in a namespace (`get_tuple`): `id`, or the newest
    /// (the greatest id) without one; `None` when there is no such checkpoint.
    pub async fn get_graph_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        checkpoint_ns: &str,
        id: Option<CheckpointId>,
    ) -> Result<Option<GraphCheckpoint>> {
        dispatch!(self.get_graph_checkpoint(owner, thread, checkpoint_ns, id))
    }

    /// The caller's thread's checkpoints that match `filter`, newest first (the greatest id;
    /// across namespaces, then by namespace), each with its channel values and pending
    /// writes (`list`).
    pub async fn list_graph_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        filter: &GraphCheckpointFilter,
    ) -> Result<Vec<GraphCheckpoint>> {
        dispatch!(self.list_graph_checkpoints(owner, thread, filter))
    }

    /// Deletes the checkpoints of the caller's threads whose `metadata.run_id` is one of
    /// `runs`, and the writes against them (`delete_for_runs`); returns how many checkpoints
    /// it deleted. Blobs stay: other checkpoints may read them, and they go with the thread.
    pub async fn delete_graph_checkpoints_of_runs(
        &self,
        owner: UserId,
        runs: &[RunId],
    ) -> Result<u64> {
        dispatch!(self.delete_graph_checkpoints_of_runs(owner, runs))
    }

    /// Copies every checkpoint, blob and write of the caller's thread `source` into the
    /// caller's thread `target` (`copy_thread`), as they are (metadata included), in one
    /// transaction. A row `target` has already under the same key is kept.
    pub async fn copy_graph_checkpoints(
        &self,
        owner: UserId,
        source: ThreadId,
        target: ThreadId,
    ) -> Result<()> {
        dispatch!(self.copy_graph_checkpoints(owner, source, target))
    }

    /// Keeps only the newest checkpoint of each namespace of the caller's thread (`prune`,
    /// `keep_latest`), in one transaction: deletes the others, the writes not against a kept
    /// checkpoint and the blobs no kept checkpoint reads; returns how many checkpoints it
    /// deleted.
    pub async fn prune_graph_checkpoints(&self, owner: UserId, thread: ThreadId) -> Result<u64> {
        dispatch!(self.prune_graph_checkpoints(owner, thread))
    }
}
