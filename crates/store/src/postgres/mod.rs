//! The PostgreSQL backend: sqlx with a connection pool; migrations embedded with
//! `sqlx::migrate!` (checksummed, run under an advisory lock, so many nodes may start at once).
//!
//! Concurrency comes from the database: `insert ... on conflict do nothing` for get-or-create,
//! a row lock on the thread (`update ... returning last_seq`) to number events, and
//! `select ... for update` on the thread while a run is created.
//!
//! This module holds the store type, opening, migrations and the last-written-state cache, and the helpers
//! the resource modules share (row decoding first of all). Those are the same in both
//! backends (`sqlite` is the other), each function in the same module: `keys` (users,
//! assistants, API keys), `threads`, `runs`, `state` (state updates, steps,
//! checkpoints), `events`, `graph` (LangGraph's own checkpoints), `admin` (`admin_*`, the
//! doctor's SQL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ids::{AssistantId, CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Postgres, Row};

use crate::json;
use crate::model::*;
use crate::{Error, Result, StoreOptions, json_object, redact_in};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A checkpoint's `step` from its metadata column, as a `bigint` (−1 when it is missing or
/// not an integer): `spindle_checkpoint_step` (migration 0008), which the run functions use.
macro_rules! step_of {
    ($column:literal) => {
        concat!("spindle_checkpoint_step(", $column, ")")
    };
}

mod admin;
mod assistants;
mod events;
mod graph;
mod keys;
mod runs;
mod state;
mod threads;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The state of threads this process wrote last, by thread: `(state_version, values)`.
    /// A run's next step computes its update from these rather than reading them first; the
    /// write checks the version, so an entry made stale by another writer costs a retry,
    /// never a lost update.
    last_written: Arc<Mutex<HashMap<ThreadId, WrittenState>>>,
}

/// A thread's `(state_version, values)`.
type WrittenState = (i64, Option<Value>);

/// Entries of `PgStore::last_written` at most (it is emptied when full): about one per running run.
const MAX_LAST_WRITTEN: usize = 4096;

impl PgStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::Unavailable(redact_in(&format!("cannot connect to {url}: {e}"), url))
        };
        // One direct connection first: a pool that cannot connect reports only its own
        // time-out, while this reports the cause (refused, unknown database, auth, ...).
        let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
            .await
            .map_err(|_| unavailable(&"timed out"))?
            .map_err(|e| unavailable(&e))?;
        first.close().await.map_err(|e| unavailable(&e))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(PgStore { pool, last_written: Arc::default() })
    }

    fn last_written(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadId, WrittenState>> {
        self.last_written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_written(&self, thread: ThreadId, version: i64, values: Option<Value>) {
        let mut written = self.last_written();
        if written.len() >= MAX_LAST_WRITTEN && !written.contains_key(&thread) {
            written.clear();
        }
        written.insert(thread, (version, values));
    }

    fn forget_written(&self, thread: ThreadId) {
        self.last_written().remove(&thread);
    }

    /// The thread's state and its version: as this process last wrote it (then `true`: it
    /// may be stale), or as read now. Either way it is no longer remembered.
    async fn state_of(&self, owner: UserId, thread: ThreadId) -> Result<(WrittenState, bool)> {
        if let Some(written) = self.last_written().remove(&thread) {
            return Ok((written, true));
        }
        let row: Option<WrittenState> = sqlx::query_as(
            "select state_version, state_values from threads where thread_id = $1 and owner_id = $2",
        )
        .bind(thread)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        // A thread that does not exist yet (`if_not_exists: create`) starts empty.
        Ok((row.unwrap_or((0, None)), false))
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(|e| Error::Invalid(format!("migration failed: {e}")))
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }
}

// ---- shared by the resource modules: ownership, row decoding, JSON binding ----

/// How [`owned_thread`] holds the thread's row until the transaction ends.
#[derive(Clone, Copy, Debug)]
enum ThreadLock {
    /// `for update`: writers of the thread's row wait (its status, its values).
    Update,
    /// `for key share`: the thread cannot be deleted meanwhile, but its row can be written
    /// (the lock a foreign key takes).
    KeyShare,
    /// No lock: a read.
    None,
}

/// That the caller owns the thread (else [`Error::NotFound`]), holding its row as `lock` says.
async fn owned_thread(
    conn: &mut PgConnection,
    owner: UserId,
    id: ThreadId,
    lock: ThreadLock,
) -> Result<()> {
    let sql = match lock {
        ThreadLock::Update => {
            "select 1 from threads where thread_id = $1 and owner_id = $2 for update"
        }
        ThreadLock::KeyShare => {
            "select 1 from threads where thread_id = $1 and owner_id = $2 for key share"
        }
        ThreadLock::None => "select 1 from threads where thread_id = $1 and owner_id = $2",
    };
    sqlx::query(sql)
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut *conn)
        .await?
        .map(drop)
        .ok_or_else(|| Error::not_found("thread", id))
}

async fn lock_owned_thread(conn: &mut PgConnection, owner: UserId, id: ThreadId) -> Result<()> {
    owned_thread(conn, owner, id, ThreadLock::Update).await
}

fn api_key_row(r: &PgRow) -> Result<ApiKey> {
    Ok(ApiKey {
        key_id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        subject: r.try_get(2)?,
        prefix: r.try_get(3)?,
        created_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
    })
}

fn parsed<T: std::str::FromStr<Err = String>>(r: &PgRow, idx: usize) -> Result<T> {
    let text: String = r.try_get(idx)?;
    text.parse().map_err(Error::Invalid)
}

fn object(r: &PgRow, idx: usize) -> Result<Metadata> {
    Ok(json_object(r.try_get(idx)?))
}

fn thread_row(r: &PgRow) -> Result<Thread> {
    let id: ThreadId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(Thread {
            thread_id: r.try_get(0)?,
            owner_id: r.try_get(1)?,
            metadata: object(r, 2)?,
            status: parsed(r, 3)?,
            values: r.try_get(4)?,
            last_seq: r.try_get(5)?,
            created_at: r.try_get(6)?,
            updated_at: r.try_get(7)?,
            state_updated_at: r.try_get(8)?,
        })
    };
    row().map_err(|e| Error::unreadable("thread", id, e))
}

fn run_row(r: &PgRow) -> Result<Run> {
    run_row_at(r, 0)
}

/// A run from the columns `run_cols!()` starting at column `at`.
fn run_row_at(r: &PgRow, at: usize) -> Result<Run> {
    let id: RunId = r.try_get(at)?;
    let row = || -> Result<_> {
        Ok(Run {
            run_id: r.try_get(at)?,
            thread_id: r.try_get(at + 1)?,
            owner_id: r.try_get(at + 2)?,
            assistant_id: r.try_get(at + 3)?,
            status: parsed(r, at + 4)?,
            input: r.try_get(at + 5)?,
            kwargs: r.try_get(at + 6)?,
            metadata: object(r, at + 7)?,
            multitask_strategy: parsed(r, at + 8)?,
            error: r.try_get(at + 9)?,
            created_at: r.try_get(at + 10)?,
            updated_at: r.try_get(at + 11)?,
        })
    };
    row().map_err(|e| Error::unreadable("run", id, e))
}

/// JSON text checked and encoded by [`json::encode`] (so that it reads back exactly), bound
/// as `jsonb`.
struct PgJson(String);

fn pg_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> Result<PgJson> {
    json::encode(what, value, false).map(PgJson)
}

impl sqlx::Type<Postgres> for PgJson {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Json<Value> as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Json<Value> as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, Postgres> for PgJson {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        // jsonb's binary format: a version byte (1), then the text.
        buf.push(1);
        buf.extend_from_slice(self.0.as_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

fn checkpoint_row(r: &PgRow) -> Result<Checkpoint> {
    let id: CheckpointId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(Checkpoint {
            checkpoint_id: r.try_get(0)?,
            thread_id: r.try_get(1)?,
            run_id: r.try_get(2)?,
            parent_checkpoint_id: r.try_get(3)?,
            values: r.try_get(4)?,
            metadata: object(r, 5)?,
            created_at: r.try_get(6)?,
        })
    };
    row().map_err(|e| Error::unreadable("checkpoint", id, e))
}

fn assistant_row(r: &PgRow) -> Result<Assistant> {
    let id: AssistantId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(Assistant {
            assistant_id: r.try_get(0)?,
            graph_id: r.try_get(1)?,
            name: r.try_get(2)?,
            description: r.try_get(3)?,
            config: r.try_get(4)?,
            context: r.try_get(5)?,
            metadata: object(r, 6)?,
            version: r.try_get(7)?,
            owner_id: r.try_get(8)?,
            created_at: r.try_get(9)?,
            updated_at: r.try_get(10)?,
        })
    };
    row().map_err(|e| Error::unreadable("assistant", id, e))
}
