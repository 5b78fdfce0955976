//! PostgreSQL: users and API keys.

use ids::{ApiKeyId, UserId};
use sqlx::Row;

use crate::model::*;
use crate::{Error, Result};

use super::{PgStore, api_key_row};

impl PgStore {
    pub async fn ensure_user(&self, subject: &str) -> Result<User> {
        // `do update` (a no-op) rather than `do nothing` so the row is returned either way.
        let row = sqlx::query(
            "insert into users (user_id, subject, created_at) values ($1, $2, $3)
             on conflict (subject) do update set subject = excluded.subject
             returning user_id, subject, created_at",
        )
        .bind(UserId::new())
        .bind(subject)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(User { user_id: row.try_get(0)?, subject: row.try_get(1)?, created_at: row.try_get(2)? })
    }

    pub async fn create_api_key(
        &self,
        subject: &str,
        key_hash: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        let user = self.ensure_user(subject).await?;
        let key_id = ApiKeyId::new();
        sqlx::query(
            "insert into api_keys (key_id, user_id, key_hash, prefix, created_at) values ($1, $2, $3, $4, $5)",
        )
        .bind(key_id)
        .bind(user.user_id)
        .bind(key_hash)
        .bind(prefix)
        .bind(now())
        .execute(&self.pool)
        .await?;
        self.find_api_key(key_id).await
    }

    pub async fn user_for_api_key(&self, key_hash: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "select u.user_id, u.subject, u.created_at from api_keys k join users u on u.user_id = k.user_id
             where k.key_hash = $1 and k.revoked_at is null",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(User { user_id: r.try_get(0)?, subject: r.try_get(1)?, created_at: r.try_get(2)? })
        })
        .transpose()
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        let sql = concat!("select ", api_key_cols!(), " order by k.created_at, k.key_id");
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(api_key_row).collect()
    }

    pub async fn revoke_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        sqlx::query("update api_keys set revoked_at = coalesce(revoked_at, $1) where key_id = $2")
            .bind(now())
            .bind(key)
            .execute(&self.pool)
            .await?;
        self.find_api_key(key).await
    }

    async fn find_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        let sql = concat!("select ", api_key_cols!(), " where k.key_id = $1");
        let row = sqlx::query(sql).bind(key).fetch_optional(&self.pool).await?;
        row.as_ref().map(api_key_row).transpose()?.ok_or_else(|| Error::not_found("api key", key))
    }
}
