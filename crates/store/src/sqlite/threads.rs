//! SQLite: threads (create, read, search, metadata, delete).

use ids::{ThreadId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::json;
use crate::model::*;
use crate::{Error, Result, thread_conflict};

use super::{SqliteStore, all_readable, check_owned, micros, thread_row};

impl SqliteStore {
    pub async fn get_or_create_thread(
        &self,
        owner: UserId,
        id: ThreadId,
        metadata: &Metadata,
    ) -> Result<(Thread, bool)> {
        let metadata = json::encode("thread metadata", metadata, true)?;
        self.write(move |c| {
            if let Some(thread) = insert_thread(c, owner, id, &metadata)? {
                return Ok((thread, true));
            }
            match find_thread(c, id)? {
                Some(thread) if thread.owner_id == owner => Ok((thread, false)),
                // Taken by another user: say only that the id is taken.
                Some(_) => Err(thread_conflict(id)),
                None => {
                    Err(Error::Conflict(format!("thread {id} was deleted while being created")))
                }
            }
        })
        .await
    }

    pub async fn get_thread(&self, owner: UserId, id: ThreadId) -> Result<Thread> {
        self.read(move |c| owned_thread(c, owner, id)).await
    }

    pub async fn check_owned(&self, owner: UserId, id: ThreadId) -> Result<()> {
        self.read(move |c| check_owned(c, owner, id)).await
    }

    pub async fn list_threads(
        &self,
        owner: UserId,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Thread>> {
        self.read(move |c| {
            let sql = concat!("select ", thread_cols!(), " from threads where owner_id = ?1 order by created_at desc, thread_id desc limit ?2 offset ?3");
            all_readable(c, sql, params![owner, limit, offset], thread_row)
        })
        .await
    }

    pub async fn search_threads(
        &self,
        owner: UserId,
        filter: &ThreadFilter,
        page: &ThreadPage,
    ) -> Result<Vec<Thread>> {
        let (mut sql, mut args) =
            thread_filter_sql(concat!("select ", thread_cols!()), owner, filter)?;
        let dir = page.sort_order.as_str();
        sql.push_str(&format!(" order by {} {dir}, thread_id {dir}", page.sort_by.as_str()));
        sql.push_str(&format!(" limit ?{} offset ?{}", args.len() + 1, args.len() + 2));
        args.push(Box::new(page.limit));
        args.push(Box::new(page.offset));
        self.read(move |c| all_readable(c, &sql, rusqlite::params_from_iter(args), thread_row))
            .await
    }

    pub async fn count_threads(&self, owner: UserId, filter: &ThreadFilter) -> Result<i64> {
        let (sql, args) = thread_filter_sql("select count(*)", owner, filter)?;
        self.read(move |c| {
            Ok(c.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(args), |r| r.get(0))?)
        })
        .await
    }

    pub async fn update_thread_metadata(
        &self,
        owner: UserId,
        id: ThreadId,
        patch: &Metadata,
    ) -> Result<Thread> {
        let patch = patch.clone();
        self.write(move |c| {
            let mut thread = owned_thread(c, owner, id)?;
            thread.metadata.extend(patch);
            thread.updated_at = now();
            c.prepare_cached(
                "update threads set metadata = ?1, updated_at = ?2 where thread_id = ?3",
            )?
            .execute(params![
                json::encode("thread metadata", &thread.metadata, true)?,
                micros(thread.updated_at),
                id
            ])?;
            Ok(thread)
        })
        .await
    }

    pub async fn delete_thread(&self, owner: UserId, id: ThreadId) -> Result<()> {
        self.write(move |c| {
            let n = c
                .prepare_cached("delete from threads where thread_id = ?1 and owner_id = ?2")?
                .execute(params![id, owner])?;
            if n == 0 {
                return Err(Error::not_found("thread", id));
            }
            Ok(())
        })
        .await
    }
}

pub(super) fn insert_thread(
    c: &Connection,
    owner: UserId,
    id: ThreadId,
    metadata: &str,
) -> Result<Option<Thread>> {
    let sql = concat!("insert into threads (thread_id, owner_id, metadata, status, state_values, last_seq, created_at, updated_at, state_updated_at)
         values (?1, ?2, ?3, 'idle', null, 0, ?4, ?4, ?4)
         on conflict do nothing
         returning ", thread_cols!());
    Ok(c.prepare_cached(sql)?
        .query_row(params![id, owner, metadata, micros(now())], thread_row)
        .optional()?)
}

/// `select <what> from threads where <the caller's threads matching filter>`, with its
/// arguments. Containment uses the `json_contains` function registered on every connection.
fn thread_filter_sql(
    what: &str,
    owner: UserId,
    filter: &ThreadFilter,
) -> Result<(String, Vec<Box<dyn rusqlite::ToSql + Send>>)> {
    let mut sql = format!("{what} from threads where owner_id = ?1");
    let mut args: Vec<Box<dyn rusqlite::ToSql + Send>> = vec![Box::new(owner)];
    if let Some(metadata) = &filter.metadata {
        args.push(Box::new(serde_json::to_string(metadata)?));
        sql.push_str(&format!(" and json_contains(metadata, ?{})", args.len()));
    }
    if let Some(values) = &filter.values {
        args.push(Box::new(serde_json::to_string(values)?));
        sql.push_str(&format!(
            " and state_values is not null and json_contains(state_values, ?{})",
            args.len()
        ));
    }
    if let Some(ids) = &filter.ids {
        let mut placeholders = Vec::with_capacity(ids.len());
        for id in ids {
            args.push(Box::new(*id));
            placeholders.push(format!("?{}", args.len()));
        }
        sql.push_str(&format!(" and thread_id in ({})", placeholders.join(", ")));
    }
    if let Some(status) = filter.status {
        args.push(Box::new(status.as_str()));
        sql.push_str(&format!(" and status = ?{}", args.len()));
    }
    Ok((sql, args))
}

pub(super) fn find_thread(c: &Connection, id: ThreadId) -> Result<Option<Thread>> {
    let sql = concat!("select ", thread_cols!(), " from threads where thread_id = ?1");
    Ok(c.prepare_cached(sql)?.query_row([id], thread_row).optional()?)
}

fn owned_thread(c: &Connection, owner: UserId, id: ThreadId) -> Result<Thread> {
    let sql =
        concat!("select ", thread_cols!(), " from threads where thread_id = ?1 and owner_id = ?2");
    c.prepare_cached(sql)?
        .query_row(params![id, owner], thread_row)
        .optional()?
        .ok_or_else(|| Error::not_found("thread", id))
}
