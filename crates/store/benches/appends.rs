//! Event appends per second through the store (each append assigns its thread's next `seq`
//! in its transaction), with 1 and 16 concurrent writers, on SQLite and PostgreSQL; and, in the
//! same run, the raw SQLite ceiling (rusqlite, WAL, synchronous=NORMAL, one insert per
//! transaction) for the ratio.
//!
//! `cargo bench -p spindle-store --bench appends` (PostgreSQL from SPINDLE_TEST_DATABASE_URL,
//! default postgres://postgres@127.0.0.1:5432/postgres). Bounded: a fixed count of appends per
//! case. Prints one table; copy it into BENCHMARKS.md.

use std::time::Instant;

use ids::ThreadId;
use serde_json::json;
use store::testing::TestDb;
use store::{Backend, EventKind, Metadata, NewEvent, Store};

/// The raw ceilings measured on this machine: pgbench, one insert per transaction.
const PG_RAW_1: f64 = 4_500.0;
const PG_RAW_16: f64 = 17_000.0;

struct Case {
    writers: usize,
    /// All writers append to one thread (contended seq) or each to its own.
    shared_thread: bool,
    appends: usize,
}

const CASES: &[Case] = &[
    Case { writers: 1, shared_thread: false, appends: 5_000 },
    Case { writers: 16, shared_thread: false, appends: 32_000 },
    Case { writers: 16, shared_thread: true, appends: 32_000 },
];

fn delta(n: usize) -> NewEvent {
    NewEvent {
        run_id: None,
        kind: EventKind::MessageDelta,
        data: json!({"type": "AIMessageChunk", "content": "token ", "n": n}),
    }
}

async fn run_case(store: &Store, case: &Case) -> f64 {
    let owner = store.ensure_user("bench").await.unwrap().user_id;
    let threads: Vec<ThreadId> =
        (0..if case.shared_thread { 1 } else { case.writers }).map(|_| ThreadId::new()).collect();
    for t in &threads {
        store.create_thread(owner, *t, &Metadata::new()).await.unwrap();
    }
    let per_writer = case.appends / case.writers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..case.writers)
        .map(|w| {
            let store = store.clone();
            let thread = threads[w % threads.len()];
            tokio::spawn(async move {
                for n in 0..per_writer {
                    store.append_event(owner, thread, &delta(n)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (per_writer * case.writers) as f64 / started.elapsed().as_secs_f64();
    // Every append landed, numbered without gaps.
    for t in &threads {
        let last = store.get_thread(owner, *t).await.unwrap().last_seq;
        assert_eq!(last as usize, per_writer * case.writers / threads.len());
    }
    rate
}

/// The raw ceiling: one insert per transaction on a WAL file with synchronous=NORMAL.
fn raw_sqlite(n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("spindle-bench-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conn = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    conn.execute_batch(
        "pragma journal_mode = wal; pragma synchronous = normal;
         create table if not exists t (thread_id blob, seq integer, data text, primary key (thread_id, seq)) without rowid;",
    )
    .unwrap();
    let thread = [7u8; 16];
    let data = json!({"type": "AIMessageChunk", "content": "token "}).to_string();
    let started = Instant::now();
    for seq in 0..n {
        let tx = conn.unchecked_transaction().unwrap();
        tx.prepare_cached("insert into t values (?1, ?2, ?3)")
            .unwrap()
            .execute(rusqlite::params![&thread[..], seq as i64, data])
            .unwrap();
        tx.commit().unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    let _ = std::fs::remove_dir_all(dir);
    rate
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects a backend.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |b: Backend| filter.is_empty() || filter.iter().any(|f| f == b.as_str());

    let raw = raw_sqlite(20_000);
    println!("raw sqlite ceiling (rusqlite, WAL, synchronous=NORMAL, 1 insert/txn): {raw:.0}/s");
    println!();
    println!("| backend | writers | threads | appends | appends/s | ratio to raw ceiling |");
    println!("|---|---|---|---|---|---|");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if !wanted(backend) {
            continue;
        }
        for case in CASES {
            let Some(db) = TestDb::new(backend).await else { continue };
            let rate = run_case(&db.store, case).await;
            let ceiling = match (backend, case.writers) {
                (Backend::Sqlite, _) => raw,
                (Backend::Postgres, 1) => PG_RAW_1,
                (Backend::Postgres, _) => PG_RAW_16,
            };
            let threads = if case.shared_thread { "1 shared" } else { "1 each" };
            println!(
                "| {} | {} | {threads} | {} | {rate:.0} | {:.2} |",
                backend.as_str(),
                case.writers,
                case.appends,
                rate / ceiling
            );
        }
    }
}
