//! LangGraph's own checkpoints, as a Python worker's checkpointer (a `BaseCheckpointSaver`)
//! stores them through Spindle: what the store is asked to write and what it reads back, in
//! the official savers' shape (docs/langgraph-workers.md §3). Spindle keeps the serializer's
//! `(type, bytes)` as they come and never decodes them.

use std::collections::BTreeMap;

use ids::{CheckpointId, ThreadId};
use serde_json::Value;

use crate::model::Metadata;

/// The type LangGraph's savers store for a channel in `new_versions` that has no value.
pub const EMPTY: &str = "empty";

/// A value as LangGraph's serializer wrote it (`dumps_typed`): its type tag (`msgpack`,
/// `null`, `bytes`, ...) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serialized {
    pub tag: String,
    pub bytes: Vec<u8>,
}

/// One channel's value at one version: a row of `put`'s `new_versions`. `None` is a channel
/// with no value, stored with the type `"empty"` and no bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphBlob {
    pub channel: String,
    pub version: String,
    pub value: Option<Serialized>,
}

/// A checkpoint to store (`BaseCheckpointSaver.put`).
#[derive(Clone, Debug, PartialEq)]
pub struct NewGraphCheckpoint {
    /// `""` for the root graph, `"node:<task id>"` (nested with `|`) for a subgraph.
    pub checkpoint_ns: String,
    pub checkpoint_id: CheckpointId,
    /// The checkpoint the saver's config pointed at (`None` for a thread's first).
    pub parent_checkpoint_id: Option<CheckpointId>,
    /// LangGraph's checkpoint object without its channel values, which are `blobs`. Its
    /// `channel_versions` (strings or integers) say which blob each channel reads back.
    pub checkpoint: Value,
    pub metadata: Metadata,
    /// The channels of `new_versions` only: unchanged channels keep their older blobs.
    pub blobs: Vec<GraphBlob>,
}

/// One write of a task (`put_writes`): `idx` is its position in the call's list, or for the
/// special channels LangGraph's fixed negative index (`WRITES_IDX_MAP`: `__error__` −1,
/// `__scheduled__` −2, `__interrupt__` −3, `__resume__` −4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelWrite {
    pub idx: i32,
    pub channel: String,
    pub value: Serialized,
}

/// One `put_writes` call: a task's writes against one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphWrites {
    pub checkpoint_ns: String,
    pub checkpoint_id: CheckpointId,
    pub task_id: String,
    pub task_path: String,
    pub writes: Vec<ChannelWrite>,
}

impl GraphWrites {
    /// Whether the call overwrites writes already stored under the same `(task_id, idx)`: only
    /// when every write of it is special (a negative `idx`: a resumed interrupt, a retried
    /// error), as the official PostgreSQL and SQLite savers decide. Otherwise the first write
    /// stored wins, so a retried task re-sending its writes changes nothing.
    pub fn overwrites(&self) -> bool {
        !self.writes.is_empty() && self.writes.iter().all(|w| w.idx < 0)
    }
}

/// A pending write as read back with its checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    pub task_id: String,
    pub task_path: String,
    pub idx: i32,
    pub channel: String,
    pub value: Serialized,
}

/// A stored checkpoint with what `get_tuple` and `list` return: its channel values (the blobs
/// of its `channel_versions`, `"empty"` ones left out) and its pending writes, in
/// `writes_sort_key` order `(task_path, task_id, idx)`.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphCheckpoint {
    pub thread_id: ThreadId,
    pub checkpoint_ns: String,
    pub checkpoint_id: CheckpointId,
    pub parent_checkpoint_id: Option<CheckpointId>,
    pub checkpoint: Value,
    pub metadata: Metadata,
    pub channel_values: BTreeMap<String, Serialized>,
    pub pending_writes: Vec<PendingWrite>,
}

/// Which of a thread's checkpoints `list` returns (newest first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphCheckpointFilter {
    /// One namespace, or (`None`) every namespace.
    pub checkpoint_ns: Option<String>,
    /// Only checkpoints whose metadata contains this (PostgreSQL's `@>`).
    pub metadata: Option<Metadata>,
    /// Only checkpoints older than this one (a smaller id).
    pub before: Option<CheckpointId>,
    pub limit: Option<u32>,
}

/// The `(channel, version)` pairs of a checkpoint's `channel_versions`, each version as text
/// (an integer version as its digits, as the blobs store it). A checkpoint without
/// `channel_versions` has none; a version that is neither a string nor an integer is refused
/// with the reason.
pub fn channel_versions(checkpoint: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(versions) = checkpoint.get("channel_versions") else { return Ok(Vec::new()) };
    let Value::Object(versions) = versions else {
        return Err(format!("channel_versions must be an object, got {versions}"));
    };
    versions
        .iter()
        .map(|(channel, version)| match version {
            Value::String(s) => Ok((channel.clone(), s.clone())),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok((channel.clone(), n.to_string())),
            other => Err(format!(
                "channel_versions.{channel} must be a string or an integer, got {other}"
            )),
        })
        .collect()
}

/// `put`'s checks: the checkpoint is an object whose `channel_versions` can be read back, and
/// no blob claims the type that marks a missing value.
pub fn check_new_checkpoint(new: &NewGraphCheckpoint) -> Result<(), String> {
    if !new.checkpoint.is_object() {
        return Err(format!("checkpoint must be a JSON object, got {}", new.checkpoint));
    }
    channel_versions(&new.checkpoint)?;
    if let Some(blob) = new.blobs.iter().find(|b| b.value.as_ref().is_some_and(|v| v.tag == EMPTY))
    {
        return Err(format!(
            "blob {}@{}: the type \"{EMPTY}\" marks a channel with no value (send no value instead)",
            blob.channel, blob.version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn versions_are_strings_or_integers() {
        let versions = channel_versions(&json!({"channel_versions": {"a": "0001.5", "b": 3}}));
        let expected = [("a".to_owned(), "0001.5".to_owned()), ("b".to_owned(), "3".to_owned())];
        assert_eq!(versions.unwrap(), expected);
        assert!(channel_versions(&json!({})).unwrap().is_empty());
        assert!(channel_versions(&json!({"channel_versions": {"a": 1.5}})).is_err());
        assert!(channel_versions(&json!({"channel_versions": [1]})).is_err());
    }

    #[test]
    fn only_all_special_writes_overwrite() {
        let write = |idx| ChannelWrite {
            idx,
            channel: "c".into(),
            value: Serialized { tag: "null".into(), bytes: Vec::new() },
        };
        let writes = |idx: &[i32]| GraphWrites {
            checkpoint_ns: String::new(),
            checkpoint_id: CheckpointId::new(),
            task_id: "t".into(),
            task_path: String::new(),
            writes: idx.iter().copied().map(write).collect(),
        };
        assert!(writes(&[-1]).overwrites());
        assert!(writes(&[-3, -4]).overwrites());
        assert!(!writes(&[-1, 0]).overwrites());
        assert!(!writes(&[0, 1]).overwrites());
        assert!(!writes(&[]).overwrites());
    }
}
