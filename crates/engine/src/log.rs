//! The event log: the only code that both appends events and publishes them. Every write
//! that adds events to a thread's log (a batch of an agent's events, a run's step, its end, a
//! run created with its first step, an announcement about a run) goes through [`EventLog`],
//! which publishes to the hub what the store has committed, after the commit and only then:
//! persist, then publish, in one place. (`ci/check-walls.sh` fails CI if any other file of
//! the engine or the API calls the store's appending functions.)

use ids::{RunId, ThreadId, UserId};
use store::{
    Event, FirstStep, IfNotExists, Metadata, NewEvent, NewRun, Run, RunEnd, RunStatus, StateUpdate,
    Step, Store,
};

use crate::hub::Hub;

/// The store's appending writes, each followed by publishing what it committed. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct EventLog {
    store: Store,
    hub: Hub,
}

impl EventLog {
    pub fn new(store: Store, hub: Hub) -> EventLog {
        EventLog { store, hub }
    }

    /// The live side of the log.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Appends events of `owner`'s `thread` in one transaction; returns them numbered.
    pub async fn append(
        &self,
        owner: UserId,
        thread: ThreadId,
        events: &[NewEvent],
    ) -> store::Result<Vec<Event>> {
        let events = self.store.append_events(owner, thread, events).await?;
        self.hub.publish(owner, &events);
        Ok(events)
    }

    /// A run's first step (see [`FirstStep`]).
    pub async fn commit_first_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        first: FirstStep,
    ) -> store::Result<Step> {
        let step = self.store.commit_first_step(owner, thread, run, first).await?;
        self.hub.publish(owner, &step.events);
        Ok(step)
    }

    /// One step of a run (events, a state update, the run's end), in one transaction.
    #[allow(clippy::too_many_arguments, reason = "the store's step, as it is")]
    pub async fn commit_step(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        events: &[NewEvent],
        update: Option<StateUpdate>,
        metadata: &Metadata,
        end: Option<&RunEnd>,
    ) -> store::Result<Step> {
        let step =
            self.store.commit_step(owner, thread, run, events, update, metadata, end).await?;
        self.hub.publish(owner, &step.events);
        Ok(step)
    }

    /// Ends a run with `status` and its last event.
    pub async fn finish_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        run: RunId,
        status: RunStatus,
        error: Option<&str>,
        last: &NewEvent,
    ) -> store::Result<(Run, Event)> {
        let (run, event) = self.store.finish_run(owner, thread, run, status, error, last).await?;
        self.hub.publish(owner, std::slice::from_ref(&event));
        Ok((run, event))
    }

    /// Creates a run claimed with its first step when its thread is free (see
    /// `Store::create_run_claiming`); the step's events are published before the caller can
    /// execute the run (so nothing the run emits later overtakes them).
    pub async fn create_run_claiming(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
        first: FirstStep,
    ) -> store::Result<(Run, Vec<RunId>, Option<Step>)> {
        let created = self.store.create_run_claiming(owner, run, if_not_exists, first).await?;
        if let Some(step) = &created.2 {
            self.hub.publish(owner, &step.events);
        }
        Ok(created)
    }

    /// Deletes `owner`'s `thread` with its log, then ends every subscription to it.
    pub async fn delete_thread(&self, owner: UserId, thread: ThreadId) -> store::Result<()> {
        self.store.delete_thread(owner, thread).await?;
        self.hub.thread_deleted(owner, thread);
        Ok(())
    }
}
