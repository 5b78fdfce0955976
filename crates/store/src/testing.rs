//! Fresh databases for tests: a SQLite file in its own temporary folder, or a PostgreSQL
//! database created for the test and dropped when the [`TestDb`] is dropped.
//!
//! PostgreSQL is reached through `SPINDLE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the server CI runs); the test fails if it
//! cannot be reached. Setting `SPINDLE_TEST_POSTGRES=skip` skips PostgreSQL tests instead, and
//! says so on stderr; CI never sets it.
//!
//! Also what every test binary of the workspace shares: the one backend macro
//! ([`on_both_backends!`], [`on_each_backend!`]) and the one bounded wait ([`eventually`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ids::{AssistantId, RunId, ThreadId};

use crate::{Backend, DatabaseUrl, Metadata, MultitaskStrategy, NewRun, Store, StoreOptions};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    pub store: Store,
    pub url: DatabaseUrl,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call, for temporary folders and test databases.
fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{}x{n}x{nanos}", std::process::id())
}

/// The PostgreSQL server the tests use, or `None` when told to skip it.
pub fn postgres_admin_url() -> Option<String> {
    if std::env::var("SPINDLE_TEST_POSTGRES").is_ok_and(|v| v == "skip") {
        eprintln!("SPINDLE_TEST_POSTGRES=skip: PostgreSQL test skipped");
        return None;
    }
    Some(
        std::env::var("SPINDLE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned()),
    )
}

impl TestDb {
    /// A fresh database of the given backend, migrated; `None` only when PostgreSQL is
    /// explicitly skipped.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite().await),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    pub async fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(unique_name("spindle-test-"));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        let url = DatabaseUrl::Sqlite(dir.join("spindle.db"));
        let store = Store::open(&url, &StoreOptions::default()).await.expect("open sqlite");
        TestDb { store, url, cleanup: Cleanup::Dir(dir) }
    }

    pub async fn postgres() -> Option<TestDb> {
        let admin_url = postgres_admin_url()?;
        let name = unique_name("spindle_test_");
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL tests need {admin_url} (or SPINDLE_TEST_POSTGRES=skip): {e}")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let url = DatabaseUrl::Postgres(with_database(&admin_url, &name));
        let options = StoreOptions { max_connections: 8, migrate: true };
        let store = Store::open(&url, &options).await.expect("open postgres");
        Some(TestDb { store, url, cleanup: Cleanup::Database { admin_url, name } })
    }
}

/// `admin_url` with its database name replaced by `name`.
fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = admin_url.split_once('?').map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin_url, name } => {
                // Drop may run inside a runtime; a thread of its own can block on a new one.
                let (admin_url, db) = (admin_url.clone(), name.clone());
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async {
                        let admin = sqlx::PgPool::connect(&admin_url)
                            .await
                            .map_err(std::io::Error::other)?;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "drop database if exists {db} with (force)"
                        )))
                        .execute(&admin)
                        .await
                        .map_err(std::io::Error::other)?;
                        admin.close().await;
                        Ok::<_, std::io::Error>(())
                    })
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!("could not drop test database {name}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(super::with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            super::with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}

/// A temporary folder of a test's own, removed on drop (for tests that run the binary in it).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_name(&format!("spindle-{name}-")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs each named test body, `async fn name(db: &TestDb)`, on a fresh database of each
/// backend: `mod sqlite { fn name() }` and `mod postgres { fn name() }`.
///
/// `on_both_backends!(Fixture => name, ...)` gives each body a `&Fixture` instead, made by
/// `Fixture::new(backend).await -> Option<Fixture>` (`None`: PostgreSQL skipped), as the
/// server's tests give theirs an app on a fresh database.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!($crate::testing::TestDb => $($name),*);
    };
    ($fixture:ty => $($name:ident),* $(,)?) => {
        mod sqlite {
            // The fixture's name as the caller wrote it.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = <$fixture>::new($crate::Backend::Sqlite).await.unwrap();
                    super::$name(&fixture).await;
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fixture) = <$fixture>::new($crate::Backend::Postgres).await else { return };
                    super::$name(&fixture).await;
                }
            )*
        }
    };
}

/// Runs each named test body, `async fn name(backend: Backend)`, once per backend (the body
/// makes its own database, or server): `mod sqlite { fn name() }` and `mod postgres { fn name() }`.
#[macro_export]
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Calls `check` until it gives `Some` (every 5 ms), and returns that; panics naming `what`
/// if `timeout` passes first. The one way tests wait for a condition: never a bare sleep.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A new `echo` run on `thread` with no input (`enqueue`).
pub fn new_run(thread: ThreadId) -> NewRun {
    NewRun {
        run_id: RunId::new(),
        thread_id: thread,
        assistant_id: AssistantId::for_graph("echo"),
        input: None,
        kwargs: serde_json::json!({}),
        metadata: Metadata::new(),
        multitask_strategy: MultitaskStrategy::Enqueue,
        thread_metadata: Metadata::new(),
    }
}
