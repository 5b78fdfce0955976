//! Spindle's store: schema, migrations and owner-scoped queries, on SQLite (embedded default)
//! and PostgreSQL (production, many nodes), behind one concrete type.
//!
//! [`Store`] is an enum over the two backends; each method matches inside, so nothing outside
//! this crate is generic over the backend. Every function that reads or writes user data takes
//! the caller's [`UserId`]: another user's thread is indistinguishable from a missing one. The
//! only functions that skip the owner are named `admin_*` and exist for diagnostics.
//!
//! [`UserId`]: ids::UserId

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
macro_rules! graph_checkpoint_cols {
    () => {
        "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata"
    };
}
macro_rules! assistant_version_cols {
    () => {
        "assistant_id, version, graph_id, name, description, config, context, metadata, created_at"
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
mod url;

use chrono::{DateTime, Utc};
use ids::{AssistantId, ThreadId};
use serde_json::Value;

/// The domain's types (rows, closed sets, lifecycle rules), named as the store's callers
/// have always named them; `now` and `micros_to_time` are the store's own.
pub mod model {
    pub use domain::graph::{
        ChannelWrite, GraphBlob, GraphCheckpoint, GraphCheckpointFilter, GraphWrites,
        NewGraphCheckpoint, PendingWrite, Serialized,
    };
    pub use domain::model::*;

    pub(crate) use crate::{micros_to_time, now};
}

pub(crate) use domain::UnreadableRow;
pub use domain::{Error, Result};
pub use model::*;
pub use url::{DatabaseUrl, redact_in, redact_url};

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

mod api;

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
}

/// Busy threads with no active run (both backends; `runs_thread_status` answers the probe).
pub(crate) const STATS_BUSY_WITHOUT_RUN: &str = "select count(*) from threads t where t.status = 'busy'
     and not exists (select 1 from runs r where r.thread_id = t.thread_id and r.status in ('pending', 'running'))";

pub(crate) fn assistant_conflict(id: AssistantId) -> Error {
    Error::Conflict(format!("assistant {id} already exists"))
}

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
