//! `Store`: threads.

use ids::{ThreadId, UserId};

use crate::model::*;
use crate::{Result, Store, thread_conflict};

impl Store {
    // ---- threads ----

    /// Creates a thread. An id that is taken (by anyone) is a [`Error::Conflict`].
    ///
    /// [`Error::Conflict`]: crate::Error::Conflict
    pub async fn create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> Result<Thread> {
        match self.get_or_create_thread(owner, id, metadata).await? {
            (thread, true) => Ok(thread),
            (_, false) => Err(thread_conflict(id)),
        }
    }

    /// Returns the caller's thread with this id, creating it if no thread has the id; the
    /// bool says whether this call created it. Atomic: concurrent calls for one new id yield
    /// one row, and all of them return it. An id taken by another user is a conflict that
    /// reveals nothing of that user's thread.
    pub async fn get_or_create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> Result<(Thread, bool)> {
        dispatch!(self.get_or_create_thread(owner, id, metadata))
    }

    pub async fn get_thread(&self, owner: UserId, id: ThreadId) -> Result<Thread> {
        dispatch!(self.get_thread(owner, id))
    }

    /// That the caller owns the thread ([`Error::NotFound`] otherwise), reading only its key
    /// and owner: for routes that need no more of it (and work on a thread whose stored data
    /// cannot be read).
    ///
    /// [`Error::NotFound`]: crate::Error::NotFound
    pub async fn check_thread(&self, owner: UserId, id: ThreadId) -> Result<()> {
        dispatch!(self.check_owned(owner, id))
    }

    /// The caller's threads, newest first.
    pub async fn list_threads(
        &self,
        owner: UserId,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Thread>> {
        dispatch!(self.list_threads(owner, limit, offset))
    }

    /// Shallow-merges `patch` into the thread's metadata.
    /// The caller's threads that match `filter`, one page of them.
    pub async fn search_threads(
        &self,
        owner: UserId,
        filter: &ThreadFilter,
        page: &ThreadPage,
    ) -> Result<Vec<Thread>> {
        dispatch!(self.search_threads(owner, filter, page))
    }

    /// How many of the caller's threads match `filter`.
    pub async fn count_threads(&self, owner: UserId, filter: &ThreadFilter) -> Result<i64> {
        dispatch!(self.count_threads(owner, filter))
    }

    pub async fn update_thread_metadata(
        &self,
        owner: UserId,
        id: ThreadId,
        patch: &Metadata,
    ) -> Result<Thread> {
        dispatch!(self.update_thread_metadata(owner, id, patch))
    }

    /// Deletes the thread with its runs, checkpoints and events.
    pub async fn delete_thread(&self, owner: UserId, id: ThreadId) -> Result<()> {
        dispatch!(self.delete_thread(owner, id))
    }
}
