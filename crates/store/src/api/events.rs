//! `Store`: a thread's events.

use ids::{RunId, ThreadId, UserId};

use crate::model::*;
use crate::{Error, Result, Store};

impl Store {
    // ---- events ----

    /// Appends events to the caller's thread, giving each the thread's next `seq` inside the
    /// transaction that stores it. Returns them once committed: publish only after this.
    pub async fn append_events(
        &self,
        owner: UserId,
        thread: ThreadId,
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        dispatch!(self.append_events(owner, thread, events))
    }

    pub async fn append_event(
        &self,
        owner: UserId,
        thread: ThreadId,
        event: &NewEvent,
    ) -> Result<Event> {
        let mut events = self.append_events(owner, thread, std::slice::from_ref(event)).await?;
        events.pop().ok_or_else(|| Error::Invalid("no event appended".into()))
    }

    /// Events of the caller's thread with `seq > after`, in order, at most `limit`; with
    /// `run`, only that run's events.
    pub async fn events_after(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        dispatch!(self.events_after(owner, thread, run, after, limit))
    }
}
