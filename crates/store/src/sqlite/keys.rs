//! SQLite: users and API keys.

use ids::{ApiKeyId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::*;
use crate::{Error, Result};

use super::{SqliteStore, all, api_key_row, micros, time};

impl SqliteStore {
    pub async fn ensure_user(&self, subject: &str) -> Result<User> {
        let subject = subject.to_owned();
        self.write(move |c| {
            c.prepare_cached("insert into users (user_id, subject, created_at) values (?1, ?2, ?3) on conflict (subject) do nothing")?
                .execute(params![UserId::new(), subject, micros(now())])?;
            let user = c
                .prepare_cached("select user_id, subject, created_at from users where subject = ?1")?
                .query_row([&subject], |r| {
                    Ok(User { user_id: r.get(0)?, subject: r.get(1)?, created_at: time(r, 2)? })
                })?;
            Ok(user)
        })
        .await
    }

    pub async fn create_api_key(
        &self,
        subject: &str,
        key_hash: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        let (subject, key_hash, prefix) =
            (subject.to_owned(), key_hash.to_owned(), prefix.to_owned());
        self.write(move |c| {
            let at = micros(now());
            c.prepare_cached(
                "insert into users (user_id, subject, created_at) values (?1, ?2, ?3) on conflict (subject) do nothing",
            )?
            .execute(params![UserId::new(), subject, at])?;
            let key_id = ApiKeyId::new();
            c.prepare_cached(
                "insert into api_keys (key_id, user_id, key_hash, prefix, created_at)
                 select ?1, user_id, ?2, ?3, ?4 from users where subject = ?5",
            )?
            .execute(params![key_id, key_hash, prefix, at, subject])?;
            find_api_key(c, key_id)
        })
        .await
    }

    pub async fn user_for_api_key(&self, key_hash: &str) -> Result<Option<User>> {
        let key_hash = key_hash.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "select u.user_id, u.subject, u.created_at from api_keys k join users u on u.user_id = k.user_id
                 where k.key_hash = ?1 and k.revoked_at is null",
            )?
            .query_row([key_hash], |r| Ok(User { user_id: r.get(0)?, subject: r.get(1)?, created_at: time(r, 2)? }))
            .optional()?)
        })
        .await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        self.read(|c| {
            let sql = concat!("select ", api_key_cols!(), " order by k.created_at, k.key_id");
            all(c, sql, [], api_key_row)
        })
        .await
    }

    pub async fn revoke_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        self.write(move |c| {
            c.prepare_cached(
                "update api_keys set revoked_at = coalesce(revoked_at, ?1) where key_id = ?2",
            )?
            .execute(params![micros(now()), key])?;
            find_api_key(c, key)
        })
        .await
    }
}

pub(super) fn find_api_key(c: &Connection, key: ApiKeyId) -> Result<ApiKey> {
    let sql = concat!("select ", api_key_cols!(), " where k.key_id = ?1");
    c.prepare_cached(sql)?
        .query_row([key], api_key_row)
        .optional()?
        .ok_or_else(|| Error::not_found("api key", key))
}
