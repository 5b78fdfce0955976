//! PostgreSQL: the `admin_*` functions (no owner: never called on behalf of a user): lookups,
//! `/metrics` stats, and the SQL of `spindle doctor` and `spindle id inspect` (see
//! `crate::doctor`).
//!
//! A little over 600 lines: the doctor's scan is one snapshot's queries, kept together so its
//! checks read (and compare with the other backend's) in one place.

use chrono::{DateTime, Utc};
use ids::{ApiKeyId, AssistantId, CheckpointId, RunId, ThreadId, UserId};
use sqlx::{PgConnection, Row};

use crate::doctor::{
    self, AnyId, Check, DoctorCounts, Finding, IdLookup, RunFacts, ThreadFacts, UserFacts,
};
use crate::model::*;
use crate::{Error, Result, STATS_BUSY_WITHOUT_RUN};

use super::threads::find_thread;
use super::{PgStore, api_key_row, assistant_row, checkpoint_row, run_row, thread_row};

impl PgStore {
    pub async fn admin_find_thread(&self, id: ThreadId) -> Result<Option<Thread>> {
        find_thread(&self.pool, id).await
    }

    pub async fn admin_thread_owner(&self, id: ThreadId) -> Result<Option<UserId>> {
        let sql = "select owner_id from threads where thread_id = $1";
        Ok(sqlx::query_scalar(sql).bind(id).fetch_optional(&self.pool).await?)
    }

    pub async fn admin_stats(&self) -> Result<Stats> {
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool);
        let threads_busy = count("select count(*) from threads where status = 'busy'").await?;
        let threads_busy_without_run = count(STATS_BUSY_WITHOUT_RUN).await?;
        let runs_pending = count("select count(*) from runs where status = 'pending'").await?;
        let (runs_running, oldest_running_since): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("select count(*), min(updated_at) from runs where status = 'running'")
                .fetch_one(&self.pool)
                .await?;
        Ok(Stats {
            threads_busy,
            threads_busy_without_run,
            runs_pending,
            runs_running,
            oldest_running_since,
        })
    }

    pub async fn admin_count_threads(&self, id: ThreadId) -> Result<i64> {
        Ok(sqlx::query_scalar("select count(*) from threads where thread_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn admin_doctor_scan(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<(DoctorCounts, Vec<Finding>)> {
        // One snapshot for every check; read only, so it takes no row locks.
        let mut tx = self.pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let scan = doctor_scan(&mut tx, stale_before).await;
        tx.rollback().await?;
        scan
    }

    pub async fn admin_raise_last_seq(&self, id: ThreadId) -> Result<Option<(i64, i64)>> {
        let mut tx = self.pool.begin().await?;
        // The thread's row lock orders this with appenders; the max is read after taking it.
        let last: Option<i64> =
            sqlx::query_scalar("select last_seq from threads where thread_id = $1 for update")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(last) = last else { return Ok(None) };
        let max: i64 =
            sqlx::query_scalar("select coalesce(max(seq), 0) from events where thread_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if last >= max {
            return Ok(None);
        }
        sqlx::query("update threads set last_seq = $1 where thread_id = $2")
            .bind(max)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((last, max)))
    }

    pub async fn admin_settle_thread_status(
        &self,
        id: ThreadId,
    ) -> Result<Option<(ThreadStatus, ThreadStatus)>> {
        let mut tx = self.pool.begin().await?;
        // Run creation and run ends take this lock too: the runs read below are settled.
        let current: Option<String> =
            sqlx::query_scalar("select status from threads where thread_id = $1 for update")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(current) = current else { return Ok(None) };
        let current: ThreadStatus = current.parse().map_err(Error::Invalid)?;
        let (active, newest): (i64, Option<String>) = sqlx::query_as(
            "select (select count(*) from runs where thread_id = $1 and status in ('pending', 'running')),
                    (select status from runs where thread_id = $1 order by updated_at desc, run_id desc limit 1)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let newest = newest.map(|s| s.parse::<RunStatus>()).transpose().map_err(Error::Invalid)?;
        let settled = doctor::settled_status(current, active, newest);
        if settled == current {
            return Ok(None);
        }
        sqlx::query("update threads set status = $1, updated_at = $2 where thread_id = $3")
            .bind(settled.as_str())
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((current, settled)))
    }

    pub async fn admin_inspect_id(&self, id: &AnyId) -> Result<IdLookup> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let found = inspect_in(&mut tx, id).await;
        tx.rollback().await?;
        found
    }
}

// ---- diagnostics: `spindle doctor` and `spindle id inspect` (see crate::doctor) ----

async fn doctor_scan(
    c: &mut PgConnection,
    stale_before: DateTime<Utc>,
) -> Result<(DoctorCounts, Vec<Finding>)> {
    let (users, threads, runs, active_runs, checkpoints, events) = sqlx::query_as(
        "select (select count(*) from users), (select count(*) from threads), (select count(*) from runs),
                (select count(*) from runs where status in ('pending', 'running')),
                (select count(*) from checkpoints), (select count(*) from events)",
    )
    .fetch_one(&mut *c)
    .await?;
    let counts = DoctorCounts { users, threads, runs, active_runs, checkpoints, events };
    let limit = doctor::MAX_PER_CHECK;
    let mut out = Vec::new();

    let rows = sqlx::query(
        "select thread_id, owner_id,
                (select status from runs r where r.thread_id = t.thread_id order by updated_at desc, run_id desc limit 1)
         from threads t where status = 'busy'
          and not exists (select 1 from runs r where r.thread_id = t.thread_id and r.status in ('pending', 'running'))
         order by thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for r in &rows {
        let detail = match r.try_get::<Option<String>, _>(2)? {
            Some(status) => {
                format!("busy, but no run is pending or running (the newest run is {status})")
            }
            None => "busy, but the thread has no runs".to_owned(),
        };
        out.push(
            Finding::new(Check::BusyWithoutActiveRun, detail)
                .thread(r.try_get::<ThreadId, _>(0)?)
                .owner(r.try_get::<UserId, _>(1)?),
        );
    }

    let rows = sqlx::query(
        "select t.thread_id, t.owner_id, t.status, count(*) from runs r join threads t on t.thread_id = r.thread_id
         where r.status in ('pending', 'running') and t.status <> 'busy'
         group by t.thread_id, t.owner_id, t.status order by t.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for r in &rows {
        let (status, active): (String, i64) = (r.try_get(2)?, r.try_get(3)?);
        out.push(
            Finding::new(
                Check::ActiveRunNotBusy,
                format!("{status}, although {active} run(s) are pending or running"),
            )
            .thread(r.try_get::<ThreadId, _>(0)?)
            .owner(r.try_get::<UserId, _>(1)?),
        );
    }

    let rows = sqlx::query(
        "select run_id, thread_id, owner_id, updated_at, last from (
             select r.run_id, r.thread_id, r.owner_id, r.updated_at,
                    greatest(r.updated_at, (select max(e.created_at) from events e where e.run_id = r.run_id)) as last
             from runs r where r.status = 'running') x
         where last < $1 order by last limit $2",
    )
    .bind(stale_before)
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for r in &rows {
        out.push(
            doctor::stale_finding(r.try_get(3)?, r.try_get(4)?)
                .run(r.try_get::<RunId, _>(0)?)
                .thread(r.try_get::<ThreadId, _>(1)?)
                .owner(r.try_get::<UserId, _>(2)?),
        );
    }

    let broken: Vec<(ThreadId, Option<UserId>, i64, i64, i64)> = sqlx::query_as(
        "select e.thread_id, (select owner_id from threads t where t.thread_id = e.thread_id),
                count(*), count(distinct e.seq), max(e.seq)
         from events e group by e.thread_id
         having count(*) <> count(distinct e.seq) or max(e.seq) <> count(distinct e.seq) limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, owner, rows, distinct, max) in broken {
        let breaks: Vec<(i64, i64)> = sqlx::query_as(
            "select seq, prev from (select seq, lag(seq, 1, 0::bigint) over (order by seq) as prev from events where thread_id = $1) x
             where seq <> prev + 1 order by seq limit $2",
        )
        .bind(thread)
        .bind(doctor::SEQ_BREAKS_SHOWN)
        .fetch_all(&mut *c)
        .await?;
        out.extend(doctor::seq_findings(thread, owner, rows, distinct, max, &breaks));
    }

    let rows: Vec<(ThreadId, UserId, i64, i64)> = sqlx::query_as(
        "select thread_id, owner_id, last_seq, max_seq from (
             select t.thread_id, t.owner_id, t.last_seq,
                    coalesce((select max(seq) from events e where e.thread_id = t.thread_id), 0) as max_seq
             from threads t) x
         where last_seq <> max_seq order by thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, owner, last, max) in rows {
        out.push(doctor::last_seq_finding(last, max).thread(thread).owner(owner));
    }

    let rows: Vec<(ThreadId, RunId, i64, i64, i64, Option<ThreadId>)> = sqlx::query_as(
        "select e.thread_id, e.run_id, count(*), min(e.seq), max(e.seq), r.thread_id
         from events e left join runs r on r.run_id = e.run_id
         where e.run_id is not null and (r.run_id is null or r.thread_id <> e.thread_id)
         group by e.thread_id, e.run_id, r.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, run, n, first, last, run_thread) in rows {
        let events = format!("{n} event(s) (seq {first}..{last})");
        let finding = match run_thread {
            None => Finding::new(
                Check::EventRunMissing,
                format!("{events} name run {run}, which does not exist"),
            ),
            Some(other) => Finding::new(
                Check::EventRunInOtherThread,
                format!("{events} name a run of thread {other}"),
            ),
        };
        out.push(finding.thread(thread).run(run));
    }

    let rows: Vec<(CheckpointId, ThreadId, RunId, Option<ThreadId>)> = sqlx::query_as(
        "select c.checkpoint_id, c.thread_id, c.run_id, r.thread_id
         from checkpoints c left join runs r on r.run_id = c.run_id
         where c.run_id is not null and (r.run_id is null or r.thread_id <> c.thread_id)
         order by c.checkpoint_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (checkpoint, thread, run, run_thread) in rows {
        let finding = match run_thread {
            None => Finding::new(
                Check::CheckpointRunMissing,
                format!("checkpoint {checkpoint} names run {run}, which does not exist"),
            ),
            Some(other) => Finding::new(
                Check::CheckpointRunInOtherThread,
                format!("checkpoint {checkpoint} names a run of thread {other}"),
            ),
        };
        out.push(finding.thread(thread).run(run));
    }

    // Forks make a thread's checkpoints a tree: every parent an older checkpoint of the thread.
    let rows: Vec<(CheckpointId, ThreadId, CheckpointId, Option<ThreadId>)> = sqlx::query_as(
        "select c.checkpoint_id, c.thread_id, c.parent_checkpoint_id, p.thread_id
         from checkpoints c left join checkpoints p on p.checkpoint_id = c.parent_checkpoint_id
         where c.parent_checkpoint_id is not null
           and c.parent_checkpoint_id <> '00000000-0000-0000-0000-000000000000'::uuid
           and (p.checkpoint_id is null or p.thread_id <> c.thread_id or p.checkpoint_id >= c.checkpoint_id)
         order by c.checkpoint_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (checkpoint, thread, parent, parent_thread) in rows {
        let detail = doctor::parent_detail(
            &checkpoint.to_string(),
            &parent.to_string(),
            Some(thread),
            parent_thread,
        );
        out.push(Finding::new(Check::CheckpointParentMissing, detail).thread(Some(thread)));
    }

    missing_parents(c, limit, &mut out).await?;
    invalid_ids(c, limit, &mut out).await?;
    unreadable_json(c, limit, &mut out).await?;
    Ok((counts, out))
}

/// JSON values serde_json cannot read back, a page of rows at a time (in the scan's one
/// snapshot, so ctids stay put). Table and column names come from `doctor::JSON_TABLES`.
async fn unreadable_json(c: &mut PgConnection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    let mut found = 0;
    for spec in doctor::JSON_TABLES {
        let events = spec.table == "events";
        // Events are paged by (thread_id, seq), other rows by their ctid.
        let (key, after) = if events {
            (
                "thread_id::text || ',' || seq",
                "($1::text is null or (thread_id, seq) > (split_part($1, ',', 1)::uuid, split_part($1, ',', 2)::bigint))",
            )
        } else {
            ("ctid::text", "($1::text is null or ctid > $1::tid)")
        };
        let order = if events { "thread_id, seq" } else { "ctid" };
        let named = |c: Option<&str>| c.map_or_else(|| "null::uuid".to_owned(), str::to_owned);
        let columns: Vec<String> = spec.columns.iter().map(|c| format!("{c}::text")).collect();
        let sql = format!(
            "select {key}, {}::text, {}, {}, {}, {} from {} where {after} order by {order} limit $2",
            spec.id,
            named(spec.thread),
            named(spec.run),
            named(spec.owner),
            columns.join(", "),
            spec.table,
        );
        let mut last: Option<String> = None;
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(last.as_deref())
                .bind(doctor::JSON_SCAN_PAGE)
                .fetch_all(&mut *c)
                .await?;
            for r in &rows {
                last = Some(r.try_get(0)?);
                let thread: Option<ThreadId> = r.try_get(2)?;
                let id: String = r.try_get(1)?;
                let id = match (events, thread) {
                    (true, Some(thread)) => format!("{id} of thread {thread}"),
                    _ => id,
                };
                for (i, column) in spec.columns.iter().enumerate() {
                    let Some(text) = r.try_get::<Option<String>, _>(5 + i)? else { continue };
                    if let Some(finding) = doctor::unreadable_json(spec, column, &id, &text) {
                        out.push(
                            finding
                                .thread(thread)
                                .run(r.try_get::<Option<RunId>, _>(3)?)
                                .owner(r.try_get::<Option<UserId>, _>(4)?),
                        );
                        found += 1;
                        if found >= limit {
                            return Ok(());
                        }
                    }
                }
            }
            if (rows.len() as i64) < doctor::JSON_SCAN_PAGE {
                break;
            }
        }
    }
    Ok(())
}

/// Rows whose thread, owner or user is missing: foreign keys bypassed.
async fn missing_parents(c: &mut PgConnection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    let rows: Vec<(RunId, ThreadId, UserId, Option<UserId>)> = sqlx::query_as(
        "select r.run_id, r.thread_id, r.owner_id, (select t.owner_id from threads t where t.thread_id = r.thread_id)
         from runs r where not exists (select 1 from threads t where t.thread_id = r.thread_id and t.owner_id = r.owner_id)
         order by r.run_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (run, thread, owner, thread_owner) in rows {
        let detail = match thread_owner {
            None => format!("run of thread {thread}, which does not exist"),
            Some(other) => format!("run owned by {owner}, but its thread is owned by {other}"),
        };
        out.push(Finding::new(Check::MissingParent, detail).run(run).thread(thread).owner(owner));
    }
    let rows: Vec<(ThreadId, i64)> = sqlx::query_as(
        "select e.thread_id, count(*) from events e
         where not exists (select 1 from threads t where t.thread_id = e.thread_id)
         group by e.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, n) in rows {
        let detail = format!("{n} event(s) of thread {thread}, which does not exist");
        out.push(Finding::new(Check::MissingParent, detail).thread(thread));
    }
    let rows: Vec<(CheckpointId, ThreadId)> = sqlx::query_as(
        "select c.checkpoint_id, c.thread_id from checkpoints c
         where not exists (select 1 from threads t where t.thread_id = c.thread_id)
         order by c.checkpoint_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (checkpoint, thread) in rows {
        let detail = format!("checkpoint {checkpoint} of thread {thread}, which does not exist");
        out.push(Finding::new(Check::MissingParent, detail).thread(thread));
    }
    let rows: Vec<(ThreadId, UserId)> = sqlx::query_as(
        "select t.thread_id, t.owner_id from threads t
         where not exists (select 1 from users u where u.user_id = t.owner_id) order by t.thread_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (thread, owner) in rows {
        let detail = format!("thread owned by user {owner}, who does not exist");
        out.push(Finding::new(Check::MissingParent, detail).thread(thread).owner(owner));
    }
    let rows: Vec<(ApiKeyId, UserId)> = sqlx::query_as(
        "select k.key_id, k.user_id from api_keys k
         where not exists (select 1 from users u where u.user_id = k.user_id) order by k.key_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (key, user) in rows {
        let detail = format!("API key {key} of user {user}, who does not exist");
        out.push(Finding::new(Check::MissingParent, detail));
    }
    let rows: Vec<(AssistantId, UserId)> = sqlx::query_as(
        "select a.assistant_id, a.owner_id from assistants a where a.owner_id is not null
          and not exists (select 1 from users u where u.user_id = a.owner_id) order by a.assistant_id limit $1",
    )
    .bind(limit)
    .fetch_all(&mut *c)
    .await?;
    for (assistant, user) in rows {
        let detail = format!("assistant {assistant} of user {user}, who does not exist");
        out.push(Finding::new(Check::MissingParent, detail));
    }
    Ok(())
}

/// The `uuid` type makes every id a UUID; what is left to find is the nil UUID, which no
/// parser of ours accepts. Table and column names come from `doctor::ID_COLUMNS`.
async fn invalid_ids(c: &mut PgConnection, limit: i64, out: &mut Vec<Finding>) -> Result<()> {
    for &(table, column) in doctor::ID_COLUMNS {
        // Events are named by (thread_id, seq), other rows by their ctid.
        let key =
            if table == "events" { "thread_id::text || ', seq ' || seq" } else { "ctid::text" };
        let sql = format!(
            "select {key} from {table} where {column} = '00000000-0000-0000-0000-000000000000'::uuid limit $1"
        );
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(&mut *c).await?;
        for row in rows {
            let row = match table {
                "events" => format!("the event of thread {row}"),
                _ => format!("the row with ctid {row}"),
            };
            out.push(Finding::new(
                Check::InvalidId,
                format!("{table}.{column} of {row} is the nil UUID"),
            ));
        }
    }
    Ok(())
}

async fn inspect_in(c: &mut PgConnection, id: &AnyId) -> Result<IdLookup> {
    let mut found = IdLookup::default();
    let sql = concat!("select ", thread_cols!(), " from threads where thread_id = $1");
    let row = sqlx::query(sql).bind(id.thread).fetch_optional(&mut *c).await?;
    if let Some(thread) = row.as_ref().map(thread_row).transpose()? {
        let (owner_subject, runs, active_runs, checkpoints, events) = sqlx::query_as(
            "select (select subject from users where user_id = $2),
                    (select count(*) from runs where thread_id = $1),
                    (select count(*) from runs where thread_id = $1 and status in ('pending', 'running')),
                    (select count(*) from checkpoints where thread_id = $1),
                    (select count(*) from events where thread_id = $1)",
        )
        .bind(id.thread)
        .bind(thread.owner_id)
        .fetch_one(&mut *c)
        .await?;
        let sql = concat!(
            "select ",
            run_cols!(),
            " from runs where thread_id = $1 order by created_at desc, run_id desc limit 1"
        );
        let last = sqlx::query(sql).bind(id.thread).fetch_optional(&mut *c).await?;
        found.thread = Some(ThreadFacts {
            thread,
            owner_subject,
            runs,
            active_runs,
            checkpoints,
            events,
            last_run: last.as_ref().map(run_row).transpose()?,
        });
    }
    let sql = concat!("select ", run_cols!(), " from runs where run_id = $1");
    let row = sqlx::query(sql).bind(id.run).fetch_optional(&mut *c).await?;
    if let Some(run) = row.as_ref().map(run_row).transpose()? {
        let (owner_subject, events) = sqlx::query_as(
            "select (select subject from users where user_id = $2), (select count(*) from events where run_id = $1)",
        )
        .bind(id.run)
        .bind(run.owner_id)
        .fetch_one(&mut *c)
        .await?;
        found.run = Some(RunFacts { run, owner_subject, events });
    }
    let sql = concat!("select ", assistant_cols!(), " from assistants where assistant_id = $1");
    let row = sqlx::query(sql).bind(id.assistant).fetch_optional(&mut *c).await?;
    found.assistant = row.as_ref().map(assistant_row).transpose()?;
    let sql = concat!("select ", checkpoint_cols!(), " from checkpoints where checkpoint_id = $1");
    let row = sqlx::query(sql).bind(id.checkpoint).fetch_optional(&mut *c).await?;
    found.checkpoint = row.as_ref().map(checkpoint_row).transpose()?;
    if let Some(checkpoint) = &found.checkpoint {
        let (me, thread) = (checkpoint.checkpoint_id, checkpoint.thread_id);
        let children: Vec<CheckpointId> = sqlx::query_scalar(
            "select checkpoint_id from checkpoints where thread_id = $2 and parent_checkpoint_id = $1
             order by checkpoint_id limit 20",
        )
        .bind(me)
        .bind(thread)
        .fetch_all(&mut *c)
        .await?;
        let newest: bool = sqlx::query_scalar(
            "select checkpoint_id = $1 from checkpoints where thread_id = $2 order by checkpoint_id desc limit 1",
        )
        .bind(me)
        .bind(thread)
        .fetch_one(&mut *c)
        .await?;
        let (depth, chain_whole): (i64, bool) = sqlx::query_as(
            "with recursive chain(id, parent, n) as (
                 select checkpoint_id, parent_checkpoint_id, 0::bigint from checkpoints where checkpoint_id = $1
                 union all
                 select p.checkpoint_id, p.parent_checkpoint_id, chain.n + 1 from chain
                 join checkpoints p on p.checkpoint_id = chain.parent and p.thread_id = $2 and p.checkpoint_id < chain.id
             )
             select n, parent is null from chain order by n desc limit 1",
        )
        .bind(me)
        .bind(thread)
        .fetch_one(&mut *c)
        .await?;
        found.checkpoint_facts =
            Some(doctor::CheckpointFacts { children, newest, depth, chain_whole });
    }
    let row = sqlx::query(
        "select user_id, subject, created_at,
                (select count(*) from threads where owner_id = $1), (select count(*) from api_keys where user_id = $1)
         from users where user_id = $1",
    )
    .bind(id.user)
    .fetch_optional(&mut *c)
    .await?;
    if let Some(r) = row {
        let user =
            User { user_id: r.try_get(0)?, subject: r.try_get(1)?, created_at: r.try_get(2)? };
        found.user = Some(UserFacts { user, threads: r.try_get(3)?, api_keys: r.try_get(4)? });
    }
    let sql = concat!("select ", api_key_cols!(), " where k.key_id = $1");
    let row = sqlx::query(sql).bind(id.api_key).fetch_optional(&mut *c).await?;
    found.api_key = row.as_ref().map(api_key_row).transpose()?;
    // Messages live in the threads' JSON values: a scan (containment needs no index here).
    found.message_threads = sqlx::query_as(
        "select thread_id, owner_id from threads
         where jsonb_typeof(state_values -> 'messages') = 'array'
           and state_values -> 'messages' @> jsonb_build_array(jsonb_build_object('id', $1::text))
         limit 10",
    )
    .bind(id.message.to_string())
    .fetch_all(&mut *c)
    .await?;
    Ok(found)
}
