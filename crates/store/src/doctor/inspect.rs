//! The types of [`Store::admin_inspect_id`] (`spindle id inspect`): an id read as every kind,
//! and what it names.
//!
//! [`Store::admin_inspect_id`]: crate::Store::admin_inspect_id

use ids::{ApiKeyId, AssistantId, CheckpointId, MessageId, ParseIdError, RunId, ThreadId, UserId};

use crate::Result;
use crate::model::*;

/// One UUID read as every kind of id, to look it up everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnyId {
    pub user: UserId,
    pub assistant: AssistantId,
    pub thread: ThreadId,
    pub run: RunId,
    pub checkpoint: CheckpointId,
    pub message: MessageId,
    pub api_key: ApiKeyId,
}

impl AnyId {
    /// Parses the canonical text form (the only one any id accepts).
    pub fn parse(text: &str) -> Result<AnyId, ParseIdError> {
        Ok(AnyId {
            user: text.parse()?,
            assistant: text.parse()?,
            thread: text.parse()?,
            run: text.parse()?,
            checkpoint: text.parse()?,
            message: text.parse()?,
            api_key: text.parse()?,
        })
    }
}

/// A thread found by [`Store::admin_inspect_id`], with what hangs off it.
///
/// [`Store::admin_inspect_id`]: crate::Store::admin_inspect_id
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadFacts {
    pub thread: Thread,
    /// The owner's subject (`None` if the owner is missing).
    pub owner_subject: Option<String>,
    pub runs: i64,
    pub active_runs: i64,
    pub checkpoints: i64,
    pub events: i64,
    /// The newest run.
    pub last_run: Option<Run>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunFacts {
    pub run: Run,
    pub owner_subject: Option<String>,
    pub events: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserFacts {
    pub user: User,
    pub threads: i64,
    pub api_keys: i64,
}

/// Everything an id names in the database (normally at most one kind).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdLookup {
    pub thread: Option<ThreadFacts>,
    pub run: Option<RunFacts>,
    pub assistant: Option<Assistant>,
    pub checkpoint: Option<Checkpoint>,
    /// The checkpoint's place in its thread's tree of branches.
    pub checkpoint_facts: Option<CheckpointFacts>,
    pub user: Option<UserFacts>,
    pub api_key: Option<ApiKey>,
    /// Threads (with their owners) whose current state holds a message with this id.
    pub message_threads: Vec<(ThreadId, UserId)>,
}

/// A checkpoint's place in its thread's tree of branches (forks make it a tree).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointFacts {
    /// Checkpoints made from it, oldest first (at most 20): more than one makes it a fork
    /// point.
    pub children: Vec<CheckpointId>,
    /// Whether it is the thread's newest checkpoint (its current state).
    pub newest: bool,
    /// How many checkpoints lead back from it to its thread's first (0 for the first), and
    /// whether that chain is whole (every parent found in the thread, each older).
    pub depth: i64,
    pub chain_whole: bool,
}

impl IdLookup {
    pub fn is_empty(&self) -> bool {
        self.thread.is_none()
            && self.run.is_none()
            && self.assistant.is_none()
            && self.checkpoint.is_none()
            && self.user.is_none()
            && self.api_key.is_none()
            && self.message_threads.is_empty()
    }
}
