//! The one error of Spindle's data: what the store answers, and what every transport maps
//! to its status codes (404, 409, 422, 503, 500). The database drivers' errors convert into it
//! behind the `rusqlite` and `sqlx` features, which only the store turns on.

use std::fmt;
use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading or writing Spindle's data (the store's error, told apart by
/// every transport the same way). The API maps the first three to 4xx responses; the last
/// two are 5xx whose cause is logged.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The row does not exist, or belongs to another user (the two are never told apart).
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// A unique id is already taken (possibly by another user: nothing more is said).
    #[error("{0}")]
    Conflict(String),
    /// A value the store cannot accept.
    #[error("{0}")]
    Invalid(String),
    /// The database could not be reached or opened.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database said.
    #[error("database error: {0}")]
    Database(Arc<dyn std::error::Error + Send + Sync>),
    /// A stored row this build cannot decode (stored by an older build, or by hand): it fails
    /// only the request or run that reads it; lists skip it (logged), and `spindle doctor`
    /// names it.
    #[error("stored {kind} {id} cannot be read ({cause}): see `spindle doctor`")]
    Unreadable { kind: &'static str, id: String, cause: String },
}

/// [`Error::Unreadable`] as an error a driver can carry (SQLite's row conversions).
#[derive(Debug, thiserror::Error)]
#[error("stored {kind} {id} cannot be read ({cause})")]
pub struct UnreadableRow {
    pub kind: &'static str,
    pub id: String,
    pub cause: String,
}

impl Error {
    pub fn not_found(kind: &'static str, id: impl fmt::Display) -> Self {
        Error::NotFound { kind, id: id.to_string() }
    }

    pub fn unreadable(kind: &'static str, id: impl fmt::Display, cause: impl fmt::Display) -> Self {
        Error::Unreadable { kind, id: id.to_string(), cause: cause.to_string() }
    }

    pub fn db(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Database(Arc::new(e))
    }
}

#[cfg(feature = "rusqlite")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::FromSqlConversionFailure(_, _, cause) = &e
            && let Some(row) = cause.downcast_ref::<UnreadableRow>()
        {
            return Error::unreadable(row.kind, &row.id, &row.cause);
        }
        Error::db(e)
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        // Text PostgreSQL cannot store (a NUL, `\u0000`, in a string) is the client's error.
        if let sqlx::Error::Database(db) = &e
            && matches!(db.code().as_deref(), Some("22P05" | "22021"))
        {
            return Error::Invalid(
                "text must not contain the NUL character (\\u0000), which PostgreSQL cannot store"
                    .into(),
            );
        }
        Error::db(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::db(e)
    }
}
