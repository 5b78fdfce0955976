//! PostgreSQL: threads (create, read, search, metadata, delete).

use ids::{ThreadId, UserId};
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};

use crate::model::*;
use crate::{Error, Result, skip_unreadable, thread_conflict};

use super::{PgStore, pg_json, thread_row};

impl PgStore {
    pub async fn get_or_create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> Result<(Thread, bool)> {
        // Two statements, each atomic: the insert either creates the row or finds it taken
        // (waiting for a concurrent inserter to commit); the select then reads the winner.
        // A delete between the two sends us round again.
        for _ in 0..3 {
            if let Some(thread) = insert_thread(&self.pool, owner, id, metadata).await? {
                // A run on it next starts from this state without reading it.
                self.remember_written(id, 0, None);
                return Ok((thread, true));
            }
            match find_thread(&self.pool, id).await? {
                Some(thread) if thread.owner_id == owner => return Ok((thread, false)),
                Some(_) => return Err(thread_conflict(id)),
                None => continue,
            }
        }
        Err(Error::Conflict(format!("thread {id} is being created and deleted concurrently")))
    }

    pub async fn get_thread(&self, owner: UserId, id: ThreadId) -> Result<Thread> {
        let sql = concat!(
            "select ",
            thread_cols!(),
            " from threads where thread_id = $1 and owner_id = $2"
        );
        let row = sqlx::query(sql).bind(id).bind(owner).fetch_optional(&self.pool).await?;
        row.as_ref().map(thread_row).transpose()?.ok_or_else(|| Error::not_found("thread", id))
    }

    /// That the caller owns the thread, reading no more of it than its key.
    pub async fn check_owned(&self, owner: UserId, id: ThreadId) -> Result<()> {
        sqlx::query("select 1 from threads where thread_id = $1 and owner_id = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?
            .map(drop)
            .ok_or_else(|| Error::not_found("thread", id))
    }

    pub async fn list_threads(
        &self,
        owner: UserId,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Thread>> {
        let sql = concat!(
            "select ",
            thread_cols!(),
            " from threads where owner_id = $1 order by created_at desc, thread_id desc limit $2 offset $3"
        );
        let rows = sqlx::query(sql)
            .bind(owner)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        skip_unreadable(rows.iter().map(thread_row))
    }

    pub async fn search_threads(
        &self,
        owner: UserId,
        filter: &ThreadFilter,
        page: &ThreadPage,
    ) -> Result<Vec<Thread>> {
        let mut q = thread_filter_query(concat!("select ", thread_cols!()), owner, filter);
        // Column and direction come from closed enums, never from the request's text.
        let dir = page.sort_order.as_str();
        q.push(format_args!(" order by {} {dir}, thread_id {dir}", page.sort_by.as_str()));
        q.push(" limit ").push_bind(i64::from(page.limit));
        q.push(" offset ").push_bind(i64::from(page.offset));
        let rows = q.build().fetch_all(&self.pool).await?;
        skip_unreadable(rows.iter().map(thread_row))
    }

    pub async fn count_threads(&self, owner: UserId, filter: &ThreadFilter) -> Result<i64> {
        let mut q = thread_filter_query("select count(*)", owner, filter);
        Ok(q.build_query_scalar().fetch_one(&self.pool).await?)
    }

    pub async fn update_thread_metadata(
        &self,
        owner: UserId,
        id: ThreadId,
        patch: &Metadata,
    ) -> Result<Thread> {
        let sql = concat!("update threads set metadata = metadata || $1, updated_at = $2 where thread_id = $3 and owner_id = $4
             returning ", thread_cols!());
        let row = sqlx::query(sql)
            .bind(pg_json("thread metadata", patch)?)
            .bind(now())
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(thread_row).transpose()?.ok_or_else(|| Error::not_found("thread", id))
    }

    pub async fn delete_thread(&self, owner: UserId, id: ThreadId) -> Result<()> {
        self.forget_written(id);
        let done = sqlx::query("delete from threads where thread_id = $1 and owner_id = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("thread", id));
        }
        Ok(())
    }
}

async fn insert_thread<'e, E>(
    db: E,
    owner: UserId,
    id: ThreadId,
    metadata: &Metadata,
) -> Result<Option<Thread>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let sql = concat!("insert into threads (thread_id, owner_id, metadata, status, state_values, last_seq, created_at, updated_at, state_updated_at)
         values ($1, $2, $3, 'idle', null, 0, $4, $4, $4)
         on conflict do nothing
         returning ", thread_cols!());
    let row = sqlx::query(sql)
        .bind(id)
        .bind(owner)
        .bind(pg_json("thread metadata", metadata)?)
        .bind(now())
        .fetch_optional(db)
        .await?;
    row.as_ref().map(thread_row).transpose()
}

/// `select <what> from threads where <the caller's threads matching filter>`.
fn thread_filter_query(what: &str, owner: UserId, filter: &ThreadFilter) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new(what);
    q.push(" from threads where owner_id = ").push_bind(owner);
    if let Some(metadata) = &filter.metadata {
        q.push(" and metadata @> ").push_bind(Json(metadata.clone()));
    }
    if let Some(values) = &filter.values {
        q.push(" and state_values @> ").push_bind(Json(values.clone()));
    }
    if let Some(ids) = &filter.ids {
        q.push(" and thread_id = any(").push_bind(ids.clone()).push(")");
    }
    if let Some(status) = filter.status {
        q.push(" and status = ").push_bind(status.as_str());
    }
    q
}

pub(super) async fn find_thread(pool: &PgPool, id: ThreadId) -> Result<Option<Thread>> {
    let sql = concat!("select ", thread_cols!(), " from threads where thread_id = $1");
    let row = sqlx::query(sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(thread_row).transpose()
}
