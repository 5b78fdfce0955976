//! SQLite: LangGraph's own checkpoints, blobs and pending writes (see `Store::put_graph_checkpoint`
//! and the functions after it).

use std::collections::HashSet;

use domain::graph::{EMPTY, channel_versions};
use ids::{CheckpointId, RunId, ThreadId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::json;
use crate::model::*;
use crate::{Error, Result};

use super::{SqliteStore, all, check_owned, json as json_column, unreadable};

impl SqliteStore {
    pub async fn put_graph_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        new: &NewGraphCheckpoint,
    ) -> Result<()> {
        let checkpoint = json::encode("graph checkpoint", &new.checkpoint, true)?;
        let metadata = json::encode("graph checkpoint metadata", &new.metadata, true)?;
        let (ns, id, parent) =
            (new.checkpoint_ns.clone(), new.checkpoint_id, new.parent_checkpoint_id);
        let blobs = new.blobs.clone();
        self.write(move |c| {
            check_owned(c, owner, thread)?;
            let mut insert = c.prepare_cached(
                "insert into graph_checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
                 values (?1, ?2, ?3, ?4, ?5, ?6) on conflict do nothing",
            )?;
            for blob in &blobs {
                let (tag, bytes) = match &blob.value {
                    Some(value) => (value.tag.as_str(), Some(value.bytes.as_slice())),
                    None => (EMPTY, None),
                };
                insert.execute(params![thread, ns, blob.channel, blob.version, tag, bytes])?;
            }
            c.prepare_cached(
                "insert into graph_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
                 values (?1, ?2, ?3, ?4, ?5, ?6)
                 on conflict (thread_id, checkpoint_ns, checkpoint_id) do update set
                   parent_checkpoint_id = excluded.parent_checkpoint_id,
                   checkpoint = excluded.checkpoint, metadata = excluded.metadata",
            )?
            .execute(params![thread, ns, id, parent, checkpoint, metadata])?;
            Ok(())
        })
        .await
    }

    pub async fn put_graph_writes(
        &self,
        owner: UserId,
        thread: ThreadId,
        writes: &GraphWrites,
    ) -> Result<()> {
        let sql = if writes.overwrites() {
            "insert into graph_checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             on conflict (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) do update set
               task_path = excluded.task_path, channel = excluded.channel, type = excluded.type, blob = excluded.blob"
        } else {
            "insert into graph_checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) on conflict do nothing"
        };
        let writes = writes.clone();
        self.write(move |c| {
            check_owned(c, owner, thread)?;
            let mut insert = c.prepare_cached(sql)?;
            let w = &writes;
            for write in &w.writes {
                insert.execute(params![
                    thread,
                    w.checkpoint_ns,
                    w.checkpoint_id,
                    w.task_id,
                    w.task_path,
                    write.idx,
                    write.channel,
                    write.value.tag,
                    write.value.bytes
                ])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn get_graph_checkpoint(
        &self,
        owner: UserId,
        thread: ThreadId,
        checkpoint_ns: &str,
        id: Option<CheckpointId>,
    ) -> Result<Option<GraphCheckpoint>> {
        let ns = checkpoint_ns.to_owned();
        self.read(move |c| {
            check_owned(c, owner, thread)?;
            let sql = concat!(
                "select ",
                graph_checkpoint_cols!(),
                " from graph_checkpoints where thread_id = ?1 and checkpoint_ns = ?2
                  and (?3 is null or checkpoint_id = ?3)
                order by checkpoint_id desc limit 1"
            );
            let found =
                c.prepare_cached(sql)?.query_row(params![thread, ns, id], graph_row).optional()?;
            found.map(|checkpoint| with_values_and_writes(c, checkpoint)).transpose()
        })
        .await
    }

    pub async fn list_graph_checkpoints(
        &self,
        owner: UserId,
        thread: ThreadId,
        filter: &GraphCheckpointFilter,
    ) -> Result<Vec<GraphCheckpoint>> {
        let mut sql = concat!(
            "select ",
            graph_checkpoint_cols!(),
            " from graph_checkpoints where thread_id = ?1"
        )
        .to_owned();
        let mut args: Vec<Box<dyn rusqlite::ToSql + Send>> = vec![Box::new(thread)];
        if let Some(ns) = &filter.checkpoint_ns {
            args.push(Box::new(ns.clone()));
            sql.push_str(&format!(" and checkpoint_ns = ?{}", args.len()));
        }
        if let Some(metadata) = &filter.metadata {
            args.push(Box::new(serde_json::to_string(metadata)?));
            sql.push_str(&format!(" and json_contains(metadata, ?{})", args.len()));
        }
        if let Some(before) = filter.before {
            args.push(Box::new(before));
            sql.push_str(&format!(" and checkpoint_id < ?{}", args.len()));
        }
        sql.push_str(" order by checkpoint_id desc, checkpoint_ns");
        if let Some(limit) = filter.limit {
            args.push(Box::new(limit));
            sql.push_str(&format!(" limit ?{}", args.len()));
        }
        self.read(move |c| {
            check_owned(c, owner, thread)?;
            let found = all(c, &sql, rusqlite::params_from_iter(args), graph_row)?;
            found.into_iter().map(|checkpoint| with_values_and_writes(c, checkpoint)).collect()
        })
        .await
    }

    pub async fn delete_graph_checkpoints_of_runs(
        &self,
        owner: UserId,
        runs: &[RunId],
    ) -> Result<u64> {
        if runs.is_empty() {
            return Ok(0);
        }
        let runs = serde_json::to_string(runs)?;
        self.write(move |c| {
            // The caller's checkpoints of the runs, as a `where` over `graph_checkpoints`.
            const OF_RUNS: &str = "thread_id in (select thread_id from threads where owner_id = ?1)
                 and json_extract(metadata, '$.run_id') in (select value from json_each(?2))";
            c.prepare_cached(&format!(
                "delete from graph_checkpoint_writes where (thread_id, checkpoint_ns, checkpoint_id) in
                   (select thread_id, checkpoint_ns, checkpoint_id from graph_checkpoints where {OF_RUNS})"
            ))?
            .execute(params![owner, runs])?;
            let deleted = c
                .prepare_cached(&format!("delete from graph_checkpoints where {OF_RUNS}"))?
                .execute(params![owner, runs])?;
            Ok(deleted as u64)
        })
        .await
    }

    pub async fn copy_graph_checkpoints(
        &self,
        owner: UserId,
        source: ThreadId,
        target: ThreadId,
    ) -> Result<()> {
        self.write(move |c| {
            check_owned(c, owner, source)?;
            check_owned(c, owner, target)?;
            for sql in [
                "insert into graph_checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
                 select ?2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata
                   from graph_checkpoints where thread_id = ?1 on conflict do nothing",
                "insert into graph_checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
                 select ?2, checkpoint_ns, channel, version, type, blob
                   from graph_checkpoint_blobs where thread_id = ?1 on conflict do nothing",
                "insert into graph_checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
                 select ?2, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
                   from graph_checkpoint_writes where thread_id = ?1 on conflict do nothing",
            ] {
                c.prepare_cached(sql)?.execute(params![source, target])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn prune_graph_checkpoints(&self, owner: UserId, thread: ThreadId) -> Result<u64> {
        self.write(move |c| {
            check_owned(c, owner, thread)?;
            let kept = all(
                c,
                "select checkpoint_ns, checkpoint_id, checkpoint from graph_checkpoints g
                  where thread_id = ?1 and checkpoint_id = (select max(checkpoint_id) from graph_checkpoints m
                                                            where m.thread_id = ?1 and m.checkpoint_ns = g.checkpoint_ns)",
                [thread],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, CheckpointId>(1)?, json_column(r, 2)?)),
            )?;
            let deleted = c
                .prepare_cached(
                    "delete from graph_checkpoints where thread_id = ?1
                       and checkpoint_id < (select max(checkpoint_id) from graph_checkpoints m
                                             where m.thread_id = ?1 and m.checkpoint_ns = graph_checkpoints.checkpoint_ns)",
                )?
                .execute([thread])?;
            c.prepare_cached(
                "delete from graph_checkpoint_writes where thread_id = ?1
                   and not exists (select 1 from graph_checkpoints g where g.thread_id = ?1
                                      and g.checkpoint_ns = graph_checkpoint_writes.checkpoint_ns
                                      and g.checkpoint_id = graph_checkpoint_writes.checkpoint_id)",
            )?
            .execute([thread])?;
            let mut read = HashSet::new();
            for (ns, id, checkpoint) in kept {
                let versions = channel_versions(&checkpoint)
                    .map_err(|e| Error::unreadable("graph checkpoint", id, e))?;
                read.extend(versions.into_iter().map(|(channel, version)| (ns.clone(), channel, version)));
            }
            let stored: Vec<(String, String, String)> = all(
                c,
                "select checkpoint_ns, channel, version from graph_checkpoint_blobs where thread_id = ?1",
                [thread],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut delete = c.prepare_cached(
                "delete from graph_checkpoint_blobs
                  where thread_id = ?1 and checkpoint_ns = ?2 and channel = ?3 and version = ?4",
            )?;
            for (ns, channel, version) in stored.into_iter().filter(|key| !read.contains(key)) {
                delete.execute(params![thread, ns, channel, version])?;
            }
            Ok(deleted as u64)
        })
        .await
    }
}

/// A checkpoint from the columns `graph_checkpoint_cols!()`, without its values and writes.
fn graph_row(r: &Row<'_>) -> rusqlite::Result<GraphCheckpoint> {
    let id: CheckpointId = r.get(2)?;
    let row = || -> rusqlite::Result<_> {
        Ok(GraphCheckpoint {
            thread_id: r.get(0)?,
            checkpoint_ns: r.get(1)?,
            checkpoint_id: id,
            parent_checkpoint_id: r.get(3)?,
            checkpoint: json_column(r, 4)?,
            metadata: crate::json_object(json_column(r, 5)?),
            channel_values: Default::default(),
            pending_writes: Vec::new(),
        })
    };
    row().map_err(|e| unreadable("graph checkpoint", id, e))
}

/// `checkpoint` with its channel values (the blobs of its `channel_versions`, but `"empty"`
/// ones) and its pending writes in `(task_path, task_id, idx)` order.
fn with_values_and_writes(
    c: &Connection,
    mut checkpoint: GraphCheckpoint,
) -> Result<GraphCheckpoint> {
    let id = checkpoint.checkpoint_id;
    let versions = channel_versions(&checkpoint.checkpoint)
        .map_err(|e| Error::unreadable("graph checkpoint", id, e))?;
    let (thread, ns) = (checkpoint.thread_id, checkpoint.checkpoint_ns.clone());
    let mut blob = c.prepare_cached(
        "select type, blob from graph_checkpoint_blobs
          where thread_id = ?1 and checkpoint_ns = ?2 and channel = ?3 and version = ?4",
    )?;
    for (channel, version) in versions {
        let found = blob
            .query_row(params![thread, ns, channel, version], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
            })
            .optional()?;
        if let Some((tag, bytes)) = found.filter(|(tag, _)| tag != EMPTY) {
            let bytes = bytes.unwrap_or_default();
            checkpoint.channel_values.insert(channel, Serialized { tag, bytes });
        }
    }
    checkpoint.pending_writes = all(
        c,
        "select task_id, task_path, idx, channel, type, blob from graph_checkpoint_writes
          where thread_id = ?1 and checkpoint_ns = ?2 and checkpoint_id = ?3
          order by task_path, task_id, idx",
        params![thread, ns, id],
        |r| {
            Ok(PendingWrite {
                task_id: r.get(0)?,
                task_path: r.get(1)?,
                idx: r.get(2)?,
                channel: r.get(3)?,
                value: Serialized { tag: r.get(4)?, bytes: r.get(5)? },
            })
        },
    )?;
    Ok(checkpoint)
}
