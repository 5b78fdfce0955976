//! PostgreSQL: LangGraph's own checkpoints, blobs and pending writes (see
//! `Store::put_graph_checkpoint` and the functions after it). Text is ordered `collate "C"`
//! (by code point, as Python and SQLite order it), not by the database's locale.

use std::collections::HashMap;

use domain::graph::{EMPTY, channel_versions};
use ids::{CheckpointId, RunId, ThreadId, UserId};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use crate::model::*;
use crate::{Error, Result};

use super::{PgStore, ThreadLock, lock_owned_thread, object, owned_thread, pg_json};

impl PgStore {
    pub async fn put_graph_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        new: &NewGraphCheckpoint,
    ) -> Result<()> {
        let checkpoint = pg_json("graph checkpoint", &new.checkpoint)?;
        let metadata = pg_json("graph checkpoint metadata", &new.metadata)?;
        let mut tx = self.pool.begin().await?;
        owned_thread(&mut tx, owner, thread, ThreadLock::KeyShare).await?;
        if !new.blobs.is_empty() {
            let channels: Vec<&str> = new.blobs.iter().map(|b| b.channel.as_str()).collect();
            let versions: Vec<&str> = new.blobs.iter().map(|b| b.version.as_str()).collect();
            let tags: Vec<&str> = new
                .blobs
                .iter()
                .map(|b| b.value.as_ref().map_or(EMPTY, |v| v.tag.as_str()))
                .collect();
            let bytes: Vec<Option<&[u8]>> =
                new.blobs.iter().map(|b| b.value.as_ref().map(|v| v.bytes.as_slice())).collect();
            sqlx::query(
                "insert into graph_checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
                 select $1, $2, * from unnest($3::text[], $4::text[], $5::text[], $6::bytea[])
                 on conflict do nothing",
            )
            .bind(thread)
            .bind(&new.checkpoint_ns)
            .bind(channels)
            .bind(versions)
            .bind(tags)
            .bind(bytes)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "insert into graph_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (thread_id, checkpoint_ns, checkpoint_id) do update set
               parent_checkpoint_id = excluded.parent_checkpoint_id,
               checkpoint = excluded.checkpoint, metadata = excluded.metadata",
        )
        .bind(thread)
        .bind(&new.checkpoint_ns)
        .bind(new.checkpoint_id)
        .bind(new.parent_checkpoint_id)
        .bind(checkpoint)
        .bind(metadata)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn put_graph_writes(
        &self,
        owner: UserId,
        thread: ThreadId,
        writes: &GraphWrites,
    ) -> Result<()> {
        let overwrites = writes.overwrites();
        let mut rows: Vec<&ChannelWrite> = writes.writes.iter().collect();
        if overwrites {
            // One statement may change a row once: of writes with one idx, the last wins, as
            // when they are written one after the other.
            let mut seen = std::collections::HashSet::new();
            rows.reverse();
            rows.retain(|w| seen.insert(w.idx));
            rows.reverse();
        }
        let on_conflict = if overwrites {
            "on conflict (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) do update set
               task_path = excluded.task_path, channel = excluded.channel, type = excluded.type, blob = excluded.blob"
        } else {
            "on conflict do nothing"
        };
        let sql = format!(
            "insert into graph_checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
             select $1, $2, $3, $4, $5, * from unnest($6::integer[], $7::text[], $8::text[], $9::bytea[])
             {on_conflict}"
        );
        let mut tx = self.pool.begin().await?;
        owned_thread(&mut tx, owner, thread, ThreadLock::KeyShare).await?;
        if !rows.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(thread)
                .bind(&writes.checkpoint_ns)
                .bind(writes.checkpoint_id)
                .bind(&writes.task_id)
                .bind(&writes.task_path)
                .bind(rows.iter().map(|w| w.idx).collect::<Vec<i32>>())
                .bind(rows.iter().map(|w| w.channel.as_str()).collect::<Vec<&str>>())
                .bind(rows.iter().map(|w| w.value.tag.as_str()).collect::<Vec<&str>>())
                .bind(rows.iter().map(|w| w.value.bytes.as_slice()).collect::<Vec<&[u8]>>())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_graph_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        checkpoint_ns: &str,
        id: Option<CheckpointId>,
    ) -> Result<Option<GraphCheckpoint>> {
        let mut conn = self.pool.acquire().await?;
        owned_thread(&mut conn, owner, thread, ThreadLock::None).await?;
        let sql = concat!(
            "select ",
            graph_checkpoint_cols!(),
            " from graph_checkpoints where thread_id = $1 and checkpoint_ns = $2
              and ($3::uuid is null or checkpoint_id = $3)
            order by checkpoint_id desc limit 1"
        );
        let row = sqlx::query(sql)
            .bind(thread)
            .bind(checkpoint_ns)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut found = vec![graph_row(&row)?];
        with_values_and_writes(&mut conn, thread, &mut found).await?;
        Ok(found.pop())
    }

    pub async fn list_graph_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        filter: &GraphCheckpointFilter,
    ) -> Result<Vec<GraphCheckpoint>> {
        let mut conn = self.pool.acquire().await?;
        owned_thread(&mut conn, owner, thread, ThreadLock::None).await?;
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(concat!(
            "select ",
            graph_checkpoint_cols!(),
            " from graph_checkpoints where thread_id = "
        ));
        q.push_bind(thread);
        if let Some(ns) = &filter.checkpoint_ns {
            q.push(" and checkpoint_ns = ").push_bind(ns.clone());
        }
        if let Some(metadata) = &filter.metadata {
            q.push(" and metadata @> ").push_bind(Json(metadata.clone()));
        }
        if let Some(before) = filter.before {
            q.push(" and checkpoint_id < ").push_bind(before);
        }
        q.push(" order by checkpoint_id desc, checkpoint_ns collate \"C\"");
        if let Some(limit) = filter.limit {
            q.push(" limit ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&mut *conn).await?;
        let mut found = rows.iter().map(graph_row).collect::<Result<Vec<_>>>()?;
        with_values_and_writes(&mut conn, thread, &mut found).await?;
        Ok(found)
    }

    pub async fn delete_graph_checkpoints_of_runs(
        &self,
        owner: UserId,
        runs: &[RunId],
    ) -> Result<u64> {
        if runs.is_empty() {
            return Ok(0);
        }
        let runs: Vec<String> = runs.iter().map(ToString::to_string).collect();
        let deleted: i64 = sqlx::query_scalar(
            "with gone as (
               delete from graph_checkpoints
                where thread_id in (select thread_id from threads where owner_id = $1)
                  and metadata->>'run_id' = any($2)
               returning thread_id, checkpoint_ns, checkpoint_id
             ), writes as (
               delete from graph_checkpoint_writes w using gone g
                where w.thread_id = g.thread_id and w.checkpoint_ns = g.checkpoint_ns
                  and w.checkpoint_id = g.checkpoint_id
             )
             select count(*) from gone",
        )
        .bind(owner)
        .bind(runs)
        .fetch_one(&self.pool)
        .await?;
        Ok(deleted.unsigned_abs())
    }

    pub async fn copy_graph_checkpoints(
        &self,
        owner: UserId,
        source: ThreadId,
        target: ThreadId,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        owned_thread(&mut tx, owner, source, ThreadLock::KeyShare).await?;
        owned_thread(&mut tx, owner, target, ThreadLock::KeyShare).await?;
        for sql in [
            "insert into graph_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
             select $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata
               from graph_checkpoints where thread_id = $1 on conflict do nothing",
            "insert into graph_checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
             select $2, checkpoint_ns, channel, version, type, blob
               from graph_checkpoint_blobs where thread_id = $1 on conflict do nothing",
            "insert into graph_checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
             select $2, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
               from graph_checkpoint_writes where thread_id = $1 on conflict do nothing",
        ] {
            sqlx::query(sql).bind(source).bind(target).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn prune_graph_checkpoints(&self, owner: UserId, thread: ThreadId) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Locked (puts take a key-share lock): no checkpoint is put while the newest are chosen.
        lock_owned_thread(&mut tx, owner, thread).await?;
        let kept: Vec<(String, CheckpointId, Value)> = sqlx::query_as(
            "select distinct on (checkpoint_ns) checkpoint_ns, checkpoint_id, checkpoint
               from graph_checkpoints where thread_id = $1 order by checkpoint_ns, checkpoint_id desc",
        )
        .bind(thread)
        .fetch_all(&mut *tx)
        .await?;
        let namespaces: Vec<&str> = kept.iter().map(|(ns, ..)| ns.as_str()).collect();
        let ids: Vec<CheckpointId> = kept.iter().map(|(_, id, _)| *id).collect();
        let deleted = sqlx::query(
            "delete from graph_checkpoints where thread_id = $1
               and (checkpoint_ns, checkpoint_id) not in (select * from unnest($2::text[], $3::uuid[]))",
        )
        .bind(thread)
        .bind(namespaces.clone())
        .bind(ids.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "delete from graph_checkpoint_writes where thread_id = $1
               and (checkpoint_ns, checkpoint_id) not in (select * from unnest($2::text[], $3::uuid[]))",
        )
        .bind(thread)
        .bind(namespaces)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
        let mut read: Vec<(String, String, String)> = Vec::new();
        for (ns, id, checkpoint) in &kept {
            let versions = channel_versions(checkpoint)
                .map_err(|e| Error::unreadable("graph checkpoint", id, e))?;
            read.extend(
                versions.into_iter().map(|(channel, version)| (ns.clone(), channel, version)),
            );
        }
        sqlx::query(
            "delete from graph_checkpoint_blobs where thread_id = $1
               and (checkpoint_ns, channel, version) not in (select * from unnest($2::text[], $3::text[], $4::text[]))",
        )
        .bind(thread)
        .bind(read.iter().map(|(ns, ..)| ns.as_str()).collect::<Vec<_>>())
        .bind(read.iter().map(|(_, c, _)| c.as_str()).collect::<Vec<_>>())
        .bind(read.iter().map(|(.., v)| v.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// A checkpoint from the columns `graph_checkpoint_cols!()`, without its values and writes.
fn graph_row(r: &PgRow) -> Result<GraphCheckpoint> {
    let id: CheckpointId = r.try_get(2)?;
    let row = || -> Result<_> {
        Ok(GraphCheckpoint {
            thread_id: r.try_get(0)?,
            checkpoint_ns: r.try_get(1)?,
            checkpoint_id: id,
            parent_checkpoint_id: r.try_get(3)?,
            checkpoint: r.try_get(4)?,
            metadata: object(r, 5)?,
            channel_values: Default::default(),
            pending_writes: Vec::new(),
        })
    };
    row().map_err(|e| Error::unreadable("graph checkpoint", id, e))
}

/// Fills in the channel values (the blobs of each one's `channel_versions`, but `"empty"`
/// ones) and the pending writes (in `(task_path, task_id, idx)` order) of checkpoints of one
/// thread: two queries, however many checkpoints.
async fn with_values_and_writes(
    conn: &mut PgConnection,
    thread: ThreadId,
    checkpoints: &mut [GraphCheckpoint],
) -> Result<()> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let mut wanted: Vec<(usize, String, String)> = Vec::new();
    for (i, checkpoint) in checkpoints.iter().enumerate() {
        let versions = channel_versions(&checkpoint.checkpoint)
            .map_err(|e| Error::unreadable("graph checkpoint", checkpoint.checkpoint_id, e))?;
        wanted.extend(versions.into_iter().map(|(channel, version)| (i, channel, version)));
    }
    if !wanted.is_empty() {
        let namespaces: Vec<&str> =
            wanted.iter().map(|(i, ..)| checkpoints[*i].checkpoint_ns.as_str()).collect();
        let channels: Vec<&str> = wanted.iter().map(|(_, c, _)| c.as_str()).collect();
        let versions: Vec<&str> = wanted.iter().map(|(.., v)| v.as_str()).collect();
        let rows = sqlx::query(
            "select b.checkpoint_ns, b.channel, b.version, b.type, b.blob
               from graph_checkpoint_blobs b
               join (select distinct * from unnest($2::text[], $3::text[], $4::text[])) k (ns, channel, version)
                 on b.checkpoint_ns = k.ns and b.channel = k.channel and b.version = k.version
              where b.thread_id = $1 and b.type <> 'empty'",
        )
        .bind(thread)
        .bind(namespaces)
        .bind(channels)
        .bind(versions)
        .fetch_all(&mut *conn)
        .await?;
        let mut blobs: HashMap<(String, String, String), Serialized> = HashMap::new();
        for r in &rows {
            let key = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let bytes: Option<Vec<u8>> = r.try_get(4)?;
            blobs.insert(key, Serialized { tag: r.try_get(3)?, bytes: bytes.unwrap_or_default() });
        }
        for (i, channel, version) in wanted {
            let key = (checkpoints[i].checkpoint_ns.clone(), channel, version);
            if let Some(value) = blobs.get(&key) {
                checkpoints[i].channel_values.insert(key.1, value.clone());
            }
        }
    }
    let namespaces: Vec<&str> = checkpoints.iter().map(|c| c.checkpoint_ns.as_str()).collect();
    let ids: Vec<CheckpointId> = checkpoints.iter().map(|c| c.checkpoint_id).collect();
    let rows = sqlx::query(
        r#"select w.checkpoint_ns, w.checkpoint_id, w.task_id, w.task_path, w.idx, w.channel, w.type, w.blob
             from graph_checkpoint_writes w
             join (select distinct * from unnest($2::text[], $3::uuid[])) k (ns, id)
               on w.checkpoint_ns = k.ns and w.checkpoint_id = k.id
            where w.thread_id = $1
            order by w.task_path collate "C", w.task_id collate "C", w.idx"#,
    )
    .bind(thread)
    .bind(namespaces)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut index: HashMap<(String, CheckpointId), usize> = HashMap::new();
    for (i, c) in checkpoints.iter().enumerate() {
        index.insert((c.checkpoint_ns.clone(), c.checkpoint_id), i);
    }
    for r in &rows {
        let key: (String, CheckpointId) = (r.try_get(0)?, r.try_get(1)?);
        let Some(&i) = index.get(&key) else { continue };
        checkpoints[i].pending_writes.push(PendingWrite {
            task_id: r.try_get(2)?,
            task_path: r.try_get(3)?,
            idx: r.try_get(4)?,
            channel: r.try_get(5)?,
            value: Serialized { tag: r.try_get(6)?, bytes: r.try_get(7)? },
        });
    }
    Ok(())
}
