//! Live fan-out of committed events, and the subscription that joins the durable log to it.
//!
//! The event log in the store is the source of truth; the hub is a cache of what was just
//! committed, so a subscriber does not poll. Each thread with subscribers has a broadcast
//! channel of [`CHANNEL_CAPACITY`] events. A subscriber that falls further behind than that is
//! told it lagged and re-reads the gap from the log: a slow reader never blocks a publisher and
//! never loses an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ids::{RunId, ThreadId, UserId};
use store::{Event, Store};
use tokio::sync::{broadcast, mpsc};

/// Events buffered per thread for live subscribers before a slow one must re-read the log.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Events read from the log per query while catching up.
const PAGE: u32 = 500;

/// Fan-out of committed events to the subscribers of each thread. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<ThreadId, broadcast::Sender<Arc<Event>>>>>,
    /// Every event of each user's threads, for connections that follow a whole user
    /// (`subscribe_user` on the WebSocket), including threads created later.
    users: Arc<Mutex<HashMap<UserId, broadcast::Sender<Arc<Event>>>>>,
}

impl Hub {
    /// A live subscription to a thread. Take it before creating a run whose every event must
    /// be seen, even if the thread is deleted right after the run (stateless runs).
    pub fn subscribe(&self, thread: ThreadId) -> Live {
        Live { rx: Some(self.receiver(thread)), hub: self.clone(), thread }
    }

    /// A live subscription to every thread of `owner`. Events arrive in commit order per
    /// thread; a receiver that lags is told so (it must re-read from the log).
    pub fn subscribe_user(&self, owner: UserId) -> UserLive {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let rx = users
            .entry(owner)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        UserLive { rx: Some(rx), hub: self.clone(), owner }
    }

    fn forget_user_if_unused(&self, owner: UserId) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.get(&owner).is_some_and(|s| s.receiver_count() == 0) {
            users.remove(&owner);
        }
    }

    /// Removes a thread's channel once nobody listens (so ids nobody publishes to, such as a
    /// missing thread's, cost nothing once their subscribers leave).
    fn forget_if_unused(&self, thread: ThreadId) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if channels.get(&thread).is_some_and(|s| s.receiver_count() == 0) {
            channels.remove(&thread);
        }
    }

    /// How many threads have a live channel (for tests and metrics).
    pub fn channels(&self) -> usize {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn receiver(&self, thread: ThreadId) -> broadcast::Receiver<Arc<Event>> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.entry(thread).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).subscribe()
    }

    /// Publishes events of one thread of `owner` that the store has committed (persist, then
    /// publish).
    pub fn publish(&self, owner: UserId, events: &[Event]) {
        // Every committed event passes here (persist, then publish): count it once.
        crate::metrics::events_appended(events.len());
        let Some(first) = events.first() else { return };
        let thread = {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            match channels.get(&first.thread_id) {
                Some(sender) if sender.receiver_count() == 0 => {
                    channels.remove(&first.thread_id);
                    None
                }
                sender => sender.cloned(),
            }
        };
        let user = self.users.lock().unwrap_or_else(|e| e.into_inner()).get(&owner).cloned();
        if thread.is_none() && user.is_none() {
            return;
        }
        for event in events {
            let event = Arc::new(event.clone());
            // An error means every receiver has gone; the next publish removes the channel.
            if let Some(sender) = &thread {
                let _ = sender.send(event.clone());
            }
            if let Some(sender) = &user {
                let _ = sender.send(event);
            }
        }
    }

    /// Every event of `thread` (only `run`'s, if given) with `seq > after`, exactly once and
    /// in order: first from the log, then live, with no gap at the switch. The subscription
    /// to live events starts before the log is read, and live events already read from the
    /// log are skipped by `seq`. The stream ends when the receiver is dropped, or with an
    /// error if the thread is missing or not the owner's.
    ///
    /// With `early`, a subscription taken before the run was created, a thread deleted
    /// meanwhile is not an error: every event of the run was published to it.
    pub fn events(
        &self,
        store: Store,
        owner: UserId,
        thread: ThreadId,
        run: Option<RunId>,
        after: i64,
        early: Option<Live>,
    ) -> mpsc::Receiver<Result<Arc<Event>, store::Error>> {
        let (tx, rx) = mpsc::channel(256);
        let tolerate_deleted = early.is_some();
        let mut live = early.unwrap_or_else(|| self.subscribe(thread));
        tokio::spawn(async move {
            let mut last = after;
            // Catch up from the log, then follow live events; on lag, catch up again.
            loop {
                loop {
                    let page = match store.events_after(owner, thread, run, last, PAGE).await {
                        Ok(page) => page,
                        Err(store::Error::NotFound { .. }) if tolerate_deleted => Vec::new(),
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let full = page.len() == PAGE as usize;
                    for event in page {
                        last = event.seq;
                        if tx.send(Ok(Arc::new(event))).await.is_err() {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                loop {
                    // Stop as soon as the reader leaves, even if no event comes for it.
                    let received = tokio::select! {
                        r = live.recv() => r,
                        () = tx.closed() => return,
                    };
                    match received {
                        Ok(event) if event.seq <= last => {}
                        Ok(event) if run.is_some_and(|r| !belongs(&event, r)) => {}
                        Ok(event) => {
                            // Concurrent appenders may publish out of order: a gap means an
                            // event this subscriber has not seen yet, so read the log. (One
                            // run's events are appended one at a time, so gaps in a run's
                            // stream are other runs' events.)
                            if event.seq > last + 1 && run.is_none() {
                                break;
                            }
                            last = event.seq;
                            let ends_run = run.is_some() && crate::stream::is_terminal(&event);
                            if tx.send(Ok(event)).await.is_err() || ends_run {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        rx
    }
}

/// A live subscription to a thread (see [`Hub::subscribe`]). Dropping the last one of a
/// thread removes the thread's channel.
#[derive(Debug)]
pub struct Live {
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    hub: Hub,
    thread: ThreadId,
}

impl Live {
    async fn recv(&mut self) -> Result<Arc<Event>, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.forget_if_unused(self.thread);
    }
}

/// A live subscription to every thread of a user (see [`Hub::subscribe_user`]).
#[derive(Debug)]
pub struct UserLive {
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    hub: Hub,
    owner: UserId,
}

impl UserLive {
    pub async fn recv(&mut self) -> Result<Arc<Event>, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for UserLive {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.forget_user_if_unused(self.owner);
    }
}

/// Whether an event is about `run`: its own, or the event that outlives a rolled-back run.
fn belongs(event: &Event, run: RunId) -> bool {
    event.run_id == Some(run)
        || (event.run_id.is_none()
            && event.data.get("run_id").and_then(|v| v.as_str()) == Some(run.to_string().as_str()))
}
