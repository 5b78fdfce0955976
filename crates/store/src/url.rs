//! `DatabaseUrl` (`--database-url`, parsed) and the redaction of passwords in URLs and in the
//! errors that name them.

use std::fmt;
use std::path::PathBuf;

use crate::{Backend, Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};

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
