//! Spindle's store: schema, migrations and owner-scoped queries, on SQLite (embedded default)
//! and PostgreSQL (production, many nodes), behind one concrete type.
//!
//! [`Store`] is an enum over the two backends; each method matches inside, so nothing outside
//! this crate is generic over the backend. Every function that reads or writes user data takes
//! the caller's [`UserId`]: another user's thread is indistinguishable from a missing one. The
//! only functions that skip the owner are named `admin_*` and exist for diagnostics.

/// Column lists shared by both backends, as literals so SQL stays `&'static str`.
macro_rules! thread_cols {
    () => {
        "thread_id, owner_id, metadata, status, state_values, last_seq, created_at, updated_at, state_updated_at"
    };
}
macro_rules! run_cols {
    () => {
        "run_id, thread_id, owner_id, assistant_id, status, input, kwargs, metadata, multitask_strategy, error, created_at, updated_at"
    };
}
macro_rules! checkpoint_cols {
    () => {
        "checkpoint_id, thread_id, run_id, parent_checkpoint_id, state_values, metadata, created_at"
    };
}
macro_rules! api_key_cols {
    () => {
        "k.key_id, k.user_id, u.subject, k.prefix, k.created_at, k.revoked_at from api_keys k join users u on u.user_id = k.user_id"
    };
}
macro_rules! assistant_cols {
    () => {
        "assistant_id, graph_id, name, description, config, context, metadata, version, owner_id, created_at, updated_at"
    };
}

/// The ids of up to `$limit` claimable runs: the oldest pending run of each thread that has
/// no running run, taken in turns between users (every user's oldest such run, then every
/// user's second, ...; oldest first within a turn), and none of a user who would then have
/// more than `$per_user` runs running. `$limit` and `$per_user` are placeholder texts (`?2`,
/// `$1`).
macro_rules! claimable_runs {
    ($limit:literal, $per_user:literal) => {
        concat!(
            "select c.run_id from (
               select r.run_id, r.created_at,
                      row_number() over (partition by r.owner_id order by r.created_at, r.run_id) as turn,
                      coalesce(a.running, 0) as running
                 from runs r
                 left join (select owner_id, count(*) as running from runs where status = 'running' group by owner_id) a
                   on a.owner_id = r.owner_id
                where r.status = 'pending'
                  and not exists (select 1 from runs x where x.thread_id = r.thread_id and x.status = 'running')
                  and not exists (select 1 from runs y where y.thread_id = r.thread_id and y.status = 'pending'
                                  and (y.created_at < r.created_at or (y.created_at = r.created_at and y.run_id < r.run_id)))
             ) c where c.turn + c.running <= ",
            $per_user,
            " order by c.turn, c.created_at, c.run_id limit ",
            $limit
        )
    };
}

pub mod doctor;
pub mod json;
mod postgres;
mod sqlite;
pub mod testing;

use chrono::{DateTime, Utc};
use std::fmt;
use std::path::PathBuf;

use ids::{ApiKeyId, AssistantId, CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;

/// The domain's types (rows, closed sets, lifecycle rules), named as the store's callers
/// have always named them; `now` and `micros_to_time` are the store's own.
pub mod model {
    pub use domain::model::*;

    pub(crate) use crate::{micros_to_time, now};
}

pub(crate) use domain::UnreadableRow;
pub use domain::{Error, Result};
pub use model::*;

/// Timestamps are stored with microsecond precision on both backends; `now()` truncates so
/// that what is returned from a write equals what a later read returns.
pub(crate) fn now() -> DateTime<Utc> {
    micros_to_time(Utc::now().timestamp_micros())
}

pub(crate) fn micros_to_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A parsed `--database-url`: `sqlite://PATH` (or `sqlite:PATH`) or `postgres://...`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(Error::Invalid(format!(
                    "invalid database url `{url}`: expected sqlite://PATH with a file path"
                )));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        Err(Error::Invalid(format!(
            "invalid database url `{}`: expected sqlite://PATH or postgres://USER@HOST/DB",
            redact_url(url)
        )))
    }

    pub fn backend(&self) -> Backend {
        match self {
            DatabaseUrl::Sqlite(_) => Backend::Sqlite,
            DatabaseUrl::Postgres(_) => Backend::Postgres,
        }
    }
}

/// The URL with any password replaced by `***`, for logs and error messages.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Replaces the password of `scheme://user:password@host/...` and any `password=` query
/// parameter with `***`.
///
/// The user information ends at the URL's *last* `@`, not at the first `/`: a password may
/// hold an unescaped `/`, `?`, `#` or `@` (`postgres://u:pa/ss@host/db`), and redacting too
/// much is harmless where too little is a leak.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some((start, end)) = password_span(url) {
        out.replace_range(start..end, "***");
    }
    if let Some(start) = out.find("password=") {
        let value_start = start + "password=".len();
        let value_end = out[value_start..].find('&').map_or(out.len(), |i| value_start + i);
        out.replace_range(value_start..value_end, "***");
    }
    out
}

/// Where the password of `scheme://user:password@...` is in `url` (bytes), if it has one.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let auth_start = url.find("://")? + 3;
    let rest = &url[auth_start..];
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some((auth_start + colon + 1, auth_start + at)).filter(|(start, end)| start < end)
}

/// `text` (a driver's error message about `url`) with the URL's password, wherever it
/// appears, replaced by `***`, and the URL itself redacted.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some((start, end)) = password_span(url) {
        out = out.replace(&url[start..end], "***");
    }
    out
}

/// Settings that are not in the URL.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// PostgreSQL pool size; SQLite reader pool size.
    pub max_connections: u32,
    /// Run migrations when opening.
    pub migrate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 16, migrate: true }
    }
}

/// The store: one of the two backends. Cheap to clone (shares its pool).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls the same method on whichever backend this store is.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(p) => p.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (creating a SQLite file and its folder if needed) and, by default, migrates.
    pub async fn open(url: &DatabaseUrl, options: &StoreOptions) -> Result<Store> {
        let store = match url {
            DatabaseUrl::Sqlite(path) => {
                Store::Sqlite(sqlite::SqliteStore::open(path, options).await?)
            }
            DatabaseUrl::Postgres(url) => {
                Store::Postgres(postgres::PgStore::open(url, options).await?)
            }
        };
        if options.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<()> {
        dispatch!(self.migrate())
    }

    /// A round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self.ping())
    }

    // ---- users ----

    /// The user behind an authenticated subject, created on first sight. Concurrent calls
    /// for one subject all get the same user.
    pub async fn ensure_user(&self, subject: &str) -> Result<User> {
        dispatch!(self.ensure_user(subject))
    }

    // ---- assistants ----

    /// Registers (or refreshes) a built-in assistant under its deterministic id.
    pub async fn upsert_system_assistant(&self, assistant: &SystemAssistant) -> Result<Assistant> {
        dispatch!(self.upsert_system_assistant(assistant))
    }

    /// A system assistant or one of the caller's.
    pub async fn get_assistant(&self, owner: UserId, id: AssistantId) -> Result<Assistant> {
        dispatch!(self.get_assistant(owner, id))
    }

    /// System assistants and the caller's, oldest first.
    pub async fn list_assistants(&self, owner: UserId) -> Result<Vec<Assistant>> {
        dispatch!(self.list_assistants(owner))
    }

    // ---- threads ----

    /// Creates a thread. An id that is taken (by anyone) is a [`Error::Conflict`].
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

    // ---- runs ----

    /// Creates a run in the caller's thread, checking ownership in the same transaction;
    /// with [`IfNotExists::Create`] a missing thread is created in that transaction too. The
    /// thread becomes `busy`. If the thread already has an active run, the run's
    /// `multitask_strategy` decides in the same transaction: `reject` is a
    /// [`Error::Conflict`] ([`THREAD_BUSY`]); `enqueue` queues behind it; `interrupt` ends
    /// pending runs `interrupted`; `rollback` deletes pending runs. A *running* run is left to
    /// the executor to stop (it is told after this returns).
    pub async fn create_run(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
    ) -> Result<Run> {
        Ok(self.create_run_replacing(owner, run, if_not_exists).await?.0)
    }

    /// [`Store::create_run`], also saying which pending runs its `interrupt` or `rollback`
    /// strategy ended (interrupted) or deleted, so their end can be announced.
    pub async fn create_run_replacing(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
    ) -> Result<(Run, Vec<RunId>)> {
        dispatch!(self.create_run(owner, run, if_not_exists))
    }

    /// [`Store::create_run_replacing`] for a caller ready to execute the run now: when the
    /// thread has no active run, the run is created `running` (claimed in the same
    /// transaction, saving the claim's own) with its `first` step committed, and the caller
    /// must publish the step's events and execute the run from there. Otherwise it is created
    /// `pending`, to be claimed in turn (and no step is returned). If the first step's update
    /// is refused (an invalid update, before anything is written), the run is still created
    /// claimed but without the step: executing it meets the same refusal and ends the run.
    pub async fn create_run_claiming(
        &self,
        owner: UserId,
        run: &NewRun,
        if_not_exists: IfNotExists,
        first: FirstStep,
    ) -> Result<(Run, Vec<RunId>, Option<Step>)> {
        dispatch!(self.create_run_claiming(owner, run, if_not_exists, first))
    }

    pub async fn get_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<Run> {
        dispatch!(self.get_run(owner, thread, id))
    }

    /// The thread's runs, newest first, optionally only those in `status`.
    pub async fn list_runs(
        &self,
        owner: UserId,
        thread: ThreadId,
        limit: u32,
        offset: u32,
        status: Option<RunStatus>,
    ) -> Result<Vec<Run>> {
        dispatch!(self.list_runs(owner, thread, limit, offset, status))
    }

    /// Claims up to `limit` runs to execute, marking them `running`: each the oldest pending
    /// run of a thread that has no running run, oldest first, with no limit per user.
    pub async fn claim_runs(&self, limit: u32) -> Result<Vec<Run>> {
        self.claim_runs_fairly(limit, u32::MAX).await
    }

    /// Claims up to `limit` runs to execute, marking them `running`: each the oldest pending
    /// run of a thread that has no running run, taken in turns between users (each user's
    /// oldest first), and no more than a user's `per_user` running runs in all. Safe with many
    /// claimers (a run is claimed only while still `pending`).
    pub async fn claim_runs_fairly(&self, limit: u32, per_user: u32) -> Result<Vec<Run>> {
        let mut runs = dispatch!(self.claim_runs(limit, per_user))?;
        // `returning` has no order: give them back oldest first.
        runs.sort_by_key(|r| (r.created_at, r.run_id));
        Ok(runs)
    }

    /// Whether any run waits to be claimed (on any node), so an executor with nothing to claim
    /// need not try again at every run's end.
    pub async fn any_pending_runs(&self) -> Result<bool> {
        dispatch!(self.any_pending_runs())
    }

    /// Cancels a run that has not started: ends it `interrupted` or, with `rollback`, deletes
    /// it. False if the run is not pending (it is running, or ended): then the executor
    /// running it must stop it.
    pub async fn cancel_pending_run(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        rollback: bool,
    ) -> Result<bool> {
        dispatch!(self.cancel_pending_run(owner, thread, id, rollback))
    }

    /// Deletes a finished run (its events go with it). An active run is a conflict.
    pub async fn delete_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        dispatch!(self.delete_run(owner, thread, id))
    }

    /// Undoes a run: deletes it with its checkpoints and events, and sets the thread's values
    /// back to its newest remaining checkpoint.
    pub async fn rollback_run(&self, owner: UserId, thread: ThreadId, id: RunId) -> Result<()> {
        dispatch!(self.rollback_run(owner, thread, id))
    }

    /// At start-up: runs left `running` by a crash end `error` ("server restarted") and their
    /// threads' statuses are set again; a stateless run's temporary thread (`on_completion:
    /// delete` in its kwargs) is deleted, as at the run's end. Returns the runs it ended that
    /// can be read (one that cannot is ended all the same, and logged).
    pub async fn recover_runs(&self) -> Result<Vec<Run>> {
        dispatch!(self.recover_runs())
    }

    /// Moves a run to `status`. When it leaves the active states the thread's status follows
    /// (`idle`, `error` or `interrupted`) unless another run of the thread is still active.
    pub async fn set_run_status(
        &self,
        owner: UserId,
        thread: ThreadId,
        id: RunId,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<Run> {
        dispatch!(self.set_run_status(owner, thread, id, status, error))
    }

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

    // ---- API keys (operators' commands and authentication) ----

    /// Stores a new key for `subject` (creating the user if needed); only its hash is kept.
    pub async fn create_api_key(
        &self,
        subject: &str,
        key_hash: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        dispatch!(self.create_api_key(subject, key_hash, prefix))
    }

    /// The user a key (by its hash) belongs to, unless the key is revoked or unknown.
    pub async fn user_for_api_key(&self, key_hash: &str) -> Result<Option<User>> {
        dispatch!(self.user_for_api_key(key_hash))
    }

    /// Every key, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        dispatch!(self.list_api_keys())
    }

    /// Revokes a key; revoking a revoked key keeps its first revocation time.
    pub async fn revoke_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        dispatch!(self.revoke_api_key(key))
    }

    // ---- diagnostics (no owner: never call these on behalf of a user) ----

    /// A thread by id alone, for operators' tools.
    pub async fn admin_find_thread(&self, id: ThreadId) -> Result<Option<Thread>> {
        dispatch!(self.admin_find_thread(id))
    }

    /// The owner of the thread with this id, if there is one: what a failed lookup needs to
    /// tell "another user's" from "missing" (reads the key and the owner, never the row's data).
    pub async fn admin_thread_owner(&self, id: ThreadId) -> Result<Option<UserId>> {
        dispatch!(self.admin_thread_owner(id))
    }

    /// Busy threads, active runs and the oldest running run, for `/metrics` (every scrape:
    /// each count is read from a partial index).
    pub async fn admin_stats(&self) -> Result<Stats> {
        dispatch!(self.admin_stats())
    }

    /// How many threads have this id (0 or 1 while the primary key holds), for race checks.
    pub async fn admin_count_threads(&self, id: ThreadId) -> Result<i64> {
        dispatch!(self.admin_count_threads(id))
    }

    /// The doctor's checks (`doctor::Check`), in one snapshot: the sizes of the tables and
    /// every finding (at most `doctor::MAX_PER_CHECK` a check). Runs running with no sign of
    /// life since `stale_before` are stale. Read-only.
    pub async fn admin_doctor_scan(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<(doctor::DoctorCounts, Vec<doctor::Finding>)> {
        dispatch!(self.admin_doctor_scan(stale_before))
    }

    /// Raises a thread's `last_seq` to its newest event's seq if it is below it, under the
    /// thread's lock; the old and new values, or `None` if it was not behind.
    pub async fn admin_raise_last_seq(&self, id: ThreadId) -> Result<Option<(i64, i64)>> {
        dispatch!(self.admin_raise_last_seq(id))
    }

    /// Sets a thread's status from its runs, under the thread's lock: `busy` while a run is
    /// pending or running; otherwise a `busy` thread takes the status its newest run's end
    /// gives it (`idle` without runs). The old and new statuses, or `None` if they agreed.
    pub async fn admin_settle_thread_status(
        &self,
        id: ThreadId,
    ) -> Result<Option<(ThreadStatus, ThreadStatus)>> {
        dispatch!(self.admin_settle_thread_status(id))
    }

    /// Everything this UUID names: a thread, run, assistant, checkpoint, user, API key, or a
    /// message in a thread's current state.
    pub async fn admin_inspect_id(&self, id: &doctor::AnyId) -> Result<doctor::IdLookup> {
        dispatch!(self.admin_inspect_id(id))
    }
}

/// Busy threads with no active run (both backends; `runs_thread_status` answers the probe).
pub(crate) const STATS_BUSY_WITHOUT_RUN: &str = "select count(*) from threads t where t.status = 'busy'
     and not exists (select 1 from runs r where r.thread_id = t.thread_id and r.status in ('pending', 'running'))";

pub(crate) fn thread_conflict(id: ThreadId) -> Error {
    Error::Conflict(format!("thread {id} already exists"))
}

/// The rows of a list that could be read: one this build cannot decode is skipped and logged
/// with its id (`spindle doctor` names it too), so one bad row never fails a whole list.
pub(crate) fn skip_unreadable<T>(rows: impl IntoIterator<Item = Result<T>>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for row in rows {
        match row {
            Ok(row) => out.push(row),
            Err(e @ Error::Unreadable { .. }) => {
                tracing::error!(error = %e, "skipped a stored row that cannot be read");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What a run whose stored row cannot be read ends with.
pub(crate) const UNREADABLE_RUN: &str =
    "the run's stored row cannot be read by this server (see `spindle doctor`)";

pub(crate) fn json_object(value: Value) -> Metadata {
    match value {
        Value::Object(map) => map,
        _ => Metadata::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/x.db").unwrap(),
            DatabaseUrl::Sqlite("data/x.db".into())
        );
        assert_eq!(DatabaseUrl::parse("sqlite:x.db").unwrap(), DatabaseUrl::Sqlite("x.db".into()));
        assert_eq!(
            DatabaseUrl::parse("sqlite:///abs/x.db").unwrap(),
            DatabaseUrl::Sqlite("/abs/x.db".into())
        );
        let pg = DatabaseUrl::parse("postgres://u:secret@h:5432/db?password=other").unwrap();
        assert_eq!(pg.to_string(), "postgres://u:***@h:5432/db?password=***");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        let err = DatabaseUrl::parse("mysql://u:pw@h/db").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid database url `mysql://u:***@h/db`: expected sqlite://PATH or postgres://USER@HOST/DB"
        );
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }

    /// Finding 15 of issue 12: a password with an unescaped `/` (or `@`, `?`, `#`) was
    /// printed in full, because the user information was taken to end at the first `/`.
    #[test]
    fn passwords_with_url_delimiters_are_redacted() {
        for (url, redacted) in [
            ("postgres://u:pa/ss@host/db", "postgres://u:***@host/db"),
            ("postgres://u:p@ss/w@host:5432/db", "postgres://u:***@host:5432/db"),
            (
                "postgresql://u:a?b#c@host/db?sslmode=disable",
                "postgresql://u:***@host/db?sslmode=disable",
            ),
            ("postgres://u:@host/db", "postgres://u:@host/db"),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
            let parsed = DatabaseUrl::parse(url).unwrap();
            assert_eq!(parsed.to_string(), redacted);
            assert_eq!(format!("{parsed:?}"), format!("DatabaseUrl({redacted})"));
        }
        let err = DatabaseUrl::parse("mysql://u:pa/ss@h/db").unwrap_err().to_string();
        assert!(!err.contains("pa/ss") && err.contains("u:***@h/db"), "{err}");
        let said = redact_in(
            "cannot parse postgres://u:pa/ss@h/db: port `pa/ss`",
            "postgres://u:pa/ss@h/db",
        );
        assert_eq!(said, "cannot parse postgres://u:***@h/db: port `***`");
    }

    /// The error of opening a PostgreSQL URL whose password holds a `/` names no password.
    #[tokio::test]
    async fn open_errors_do_not_print_a_password_with_a_slash() {
        for url in ["postgres://u:s3cr/et@127.0.0.1:1/db", "postgres://u:1/s3cret@127.0.0.1:1/db"] {
            let url = DatabaseUrl::parse(url).unwrap();
            let options = StoreOptions { max_connections: 1, migrate: false };
            let err = Store::open(&url, &options).await.unwrap_err();
            for said in [err.to_string(), format!("{err:?}")] {
                assert!(!said.contains("s3cr"), "{said}");
            }
        }
    }
}
