//! Live fan-out of committed events, and the subscription that joins the durable log to it.
//!
//! The event log in the store is the source of truth; the hub is a cache of what was just
//! committed, so a subscriber does not poll. Each thread with subscribers has a broadcast
//! channel of [`CHANNEL_CAPACITY`] events. A subscriber that falls further behind than that is
//! told it lagged and re-reads the gap from the log: a slow reader never blocks a publisher and
//! never loses an event.
//!
//! A thread id can be deleted and created again, by its owner or by another user (ids are
//! client-chosen). Three things keep one incarnation's events from reaching another's
//! subscribers: [`Hub::thread_deleted`] removes the thread's channel and tells its
//! subscribers (and the owner's user channel) that the thread is gone, which ends every
//! subscription to it ([`Ended::ThreadDeleted`]); a re-created thread therefore gets a new
//! channel, and seqs restarting at 1 are never compared with the old ones; and every
//! [`Published`] event carries its owner, which the live path checks before delivering
//! (defence in depth: a subscription never delivers another user's event).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

use ids::{RunId, ThreadId, UserId};
use store::{Event, Store};
use tokio::sync::{broadcast, mpsc};

/// Events buffered per thread for live subscribers before a slow one must re-read the log.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Most events read from the log per query while catching up.
const PAGE: u32 = 500;
/// The first catch-up query's size: pages grow while they are small in bytes.
const FIRST_PAGE: u32 = 8;
/// About how many bytes of events one catch-up page may hold (pages of large events shrink,
/// down to one event).
const PAGE_BYTES: usize = 1024 * 1024;
/// Events a subscription hands its reader ahead of it (each may be large).
const AHEAD: usize = 8;

/// A committed event as the hub hands it out: one allocation shared by every subscriber, with
/// a slot for a transport's encoding of it, made once for all of them (a fan-out to 1,000
/// WebSocket connections serialized each event 1,000 times). The hub names no wire format:
/// the transport passes its encoder.
#[derive(Debug)]
pub struct Published {
    event: Event,
    /// The thread's owner when the event was committed.
    owner: UserId,
    encoded: OnceLock<(TypeId, Box<dyn Any + Send + Sync>)>,
}

impl Published {
    pub fn new(owner: UserId, event: Event) -> Published {
        Published { event, owner, encoded: OnceLock::new() }
    }

    /// The owner of the event's thread.
    pub fn owner(&self) -> UserId {
        self.owner
    }

    /// The event as `encode` writes it, encoded once for every subscriber (`T` should be
    /// cheap to clone, e.g. shared bytes). The cache is keyed by the encoder (each closure is
    /// a type of its own), so two transports never get each other's encoding; one encoding is
    /// kept per event (the first asked for), another is encoded anew at each call.
    pub fn encoded<T, F>(&self, encode: F) -> T
    where
        T: Any + Clone + Send + Sync,
        F: Fn(&Event) -> T + 'static,
    {
        let (by, kept) =
            self.encoded.get_or_init(|| (TypeId::of::<F>(), Box::new(encode(&self.event))));
        match kept.downcast_ref::<T>() {
            Some(value) if *by == TypeId::of::<F>() => value.clone(),
            _ => encode(&self.event),
        }
    }
}

impl Deref for Published {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// What a live channel carries: committed events, and the end of a thread.
#[derive(Clone, Debug)]
pub enum Notice {
    Event(Arc<Published>),
    /// `owner` deleted `thread`: its subscriptions end (a new thread with the id is another
    /// channel).
    Deleted {
        thread: ThreadId,
        owner: UserId,
    },
}

/// Why a subscription ([`Hub::events`]) ended before its reader left.
#[derive(Debug)]
pub enum Ended {
    /// The thread was deleted (by any route: `DELETE /threads/{id}`, a stateless run's end).
    ThreadDeleted(ThreadId),
    /// The log could not be read (the thread is missing or not the owner's, or the database
    /// failed).
    Store(store::Error),
}

impl From<store::Error> for Ended {
    fn from(e: store::Error) -> Ended {
        Ended::Store(e)
    }
}

/// Broadcast channels by key (a thread, or a user); a channel is removed once nobody listens
/// (so ids nobody publishes to, such as a missing thread's, cost nothing once their
/// subscribers leave).
#[derive(Debug)]
struct Channels<K>(Mutex<HashMap<K, broadcast::Sender<Notice>>>);

impl<K> Default for Channels<K> {
    fn default() -> Self {
        Channels(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Copy> Channels<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, broadcast::Sender<Notice>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, key: K) -> broadcast::Receiver<Notice> {
        self.lock().entry(key).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).subscribe()
    }

    fn forget_if_unused(&self, key: K) {
        let mut channels = self.lock();
        if channels.get(&key).is_some_and(|s| s.receiver_count() == 0) {
            channels.remove(&key);
        }
    }

    /// Removes `key`'s channel (its receivers see what was sent, then the end).
    fn remove(&self, key: K) -> Option<broadcast::Sender<Notice>> {
        self.lock().remove(&key)
    }

    /// The sender of `key`'s channel if anyone listens.
    fn sender(&self, key: K) -> Option<broadcast::Sender<Notice>> {
        let mut channels = self.lock();
        match channels.get(&key) {
            Some(sender) if sender.receiver_count() == 0 => {
                channels.remove(&key);
                None
            }
            sender => sender.cloned(),
        }
    }
}

/// Fan-out of committed events to the subscribers of each thread, and of each user's threads
/// (`subscribe_user` on the WebSocket, including threads created later). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    threads: Arc<Channels<ThreadId>>,
    users: Arc<Channels<UserId>>,
}

impl Hub {
    /// A live subscription to a thread. Take it before creating a run whose every event must
    /// be seen, even if the thread is deleted right after the run (stateless runs).
    pub fn subscribe(&self, thread: ThreadId) -> Live {
        Live {
            rx: Some(self.threads.subscribe(thread)),
            hub: self.clone(),
            key: Key::Thread(thread),
        }
    }

    /// A live subscription to every thread of `owner`. Events arrive in commit order per
    /// thread; a receiver that lags is told so (it must re-read from the log).
    pub fn subscribe_user(&self, owner: UserId) -> Live {
        Live { rx: Some(self.users.subscribe(owner)), hub: self.clone(), key: Key::User(owner) }
    }

    /// How many threads have a live channel (for tests and metrics).
    pub fn channels(&self) -> usize {
        self.threads.lock().len()
    }

    /// Publishes events of one thread of `owner` that the store has committed (persist, then
    /// publish).
    pub fn publish(&self, owner: UserId, events: &[Event]) {
        // Every committed event passes here (persist, then publish): count it once.
        crate::metrics::events_appended(events.len());
        let Some(first) = events.first() else { return };
        let thread = self.threads.sender(first.thread_id);
        let user = self.users.sender(owner);
        if thread.is_none() && user.is_none() {
            return;
        }
        for event in events {
            let event = Notice::Event(Arc::new(Published::new(owner, event.clone())));
            // An error means every receiver has gone; the next publish removes the channel.
            if let Some(sender) = &thread {
                let _ = sender.send(event.clone());
            }
            if let Some(sender) = &user {
                let _ = sender.send(event);
            }
        }
    }

    /// `owner` has deleted `thread` (after the commit): every subscription to it ends with
    /// [`Ended::ThreadDeleted`] once it has what was published before, the channel goes (a
    /// thread created again with the id gets a new one), and the owner's user channel is told
    /// (a connection forgets the thread's last seq there).
    pub fn thread_deleted(&self, owner: UserId, thread: ThreadId) {
        if let Some(sender) = self.threads.remove(thread) {
            let _ = sender.send(Notice::Deleted { thread, owner });
        }
        if let Some(sender) = self.users.sender(owner) {
            let _ = sender.send(Notice::Deleted { thread, owner });
        }
    }

    /// Every event of `thread` (only `run`'s, if given) with `seq > after`, exactly once and
    /// in order: first from the log, then live, with no gap at the switch. The subscription
    /// to live events starts before the log is read, and live events already read from the
    /// log are skipped by `seq`. The stream ends when the receiver is dropped, or with an
    /// error: the thread is missing or not the owner's, or it was deleted
    /// ([`Ended::ThreadDeleted`], after every event published before the delete). Live events
    /// of another owner (a thread id deleted and taken by another user) are never delivered.
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
    ) -> mpsc::Receiver<Result<Arc<Published>, Ended>> {
        let (tx, rx) = mpsc::channel(AHEAD);
        let tolerate_deleted = early.is_some();
        let mut live = early.unwrap_or_else(|| self.subscribe(thread));
        let hub = self.clone();
        tokio::spawn(async move {
            let mut last = after;
            // Whether the log has been read once: a thread missing after that was deleted.
            let mut existed = false;
            let mut limit = FIRST_PAGE;
            // Catch up from the log, then follow live events; on lag, catch up again.
            loop {
                loop {
                    let page = match store.events_after(owner, thread, run, last, limit).await {
                        Ok(page) => page,
                        Err(store::Error::NotFound { .. }) if tolerate_deleted => Vec::new(),
                        Err(store::Error::NotFound { .. }) if existed => {
                            let _ = tx.send(Err(Ended::ThreadDeleted(thread))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    existed = true;
                    let full = page.len() == limit as usize;
                    // Pages bounded in bytes, not only in events.
                    let bytes: usize = page.iter().map(|e| approx_size(&e.data)).sum();
                    limit = if bytes > PAGE_BYTES {
                        (limit / 2).max(1)
                    } else if bytes < PAGE_BYTES / 2 {
                        (limit * 2).min(PAGE)
                    } else {
                        limit
                    };
                    for event in page {
                        last = event.seq;
                        let event = Arc::new(Published::new(owner, event));
                        if tx.send(Ok(event)).await.is_err() {
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
                    let event = match received {
                        Ok(Notice::Event(event)) => Ok(event),
                        Ok(Notice::Deleted { owner: by, .. }) if by == owner => {
                            let _ = tx.send(Err(Ended::ThreadDeleted(thread))).await;
                            return;
                        }
                        // Another user's thread with this id went (this one was not created
                        // yet): its channel went with it; follow the new one, from the log.
                        Ok(Notice::Deleted { .. }) => {
                            live = hub.subscribe(thread);
                            break;
                        }
                        Err(e) => Err(e),
                    };
                    match event {
                        // Defence in depth: never another user's event.
                        Ok(event) if event.owner != owner => {}
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
                            let ends_run = run.is_some() && domain::is_terminal(&event);
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

/// What a [`Live`] subscription follows.
#[derive(Clone, Copy, Debug)]
enum Key {
    Thread(ThreadId),
    User(UserId),
}

/// A live subscription to a thread or a user (see [`Hub::subscribe`],
/// [`Hub::subscribe_user`]). Dropping the last one of a channel removes the channel.
#[derive(Debug)]
pub struct Live {
    rx: Option<broadcast::Receiver<Notice>>,
    hub: Hub,
    key: Key,
}

impl Live {
    pub async fn recv(&mut self) -> Result<Notice, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        drop(self.rx.take());
        match self.key {
            Key::Thread(thread) => self.hub.threads.forget_if_unused(thread),
            Key::User(user) => self.hub.users.forget_if_unused(user),
        }
    }
}

/// About the size of a JSON value as text, without writing it.
fn approx_size(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| approx_size(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map.iter().map(|(k, v)| k.len() + 4 + approx_size(v)).sum::<usize>()
        }
    }
}

/// Whether an event is about `run`: its own, or the event that outlives a rolled-back run.
fn belongs(event: &Event, run: RunId) -> bool {
    event.run_id == Some(run)
        || (event.run_id.is_none()
            && event.data.get("run_id").and_then(|v| v.as_str()) == Some(run.to_string().as_str()))
}
