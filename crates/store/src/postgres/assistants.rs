//! PostgreSQL: assistants and their versions.

use ids::{AssistantId, UserId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::model::*;
use crate::{Error, Result, assistant_conflict, skip_unreadable};

use super::{PgStore, assistant_row, object, pg_json};

impl PgStore {
    pub async fn upsert_system_assistant(&self, a: &SystemAssistant) -> Result<Assistant> {
        let sql = concat!("insert into assistants (assistant_id, graph_id, name, description, metadata, owner_id, created_at, updated_at)
             values ($1, $2, $2, $3, '{\"created_by\":\"system\"}', null, $4, $4)
             on conflict (assistant_id) do update set description = excluded.description
             returning ", assistant_cols!());
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sql)
            .bind(AssistantId::for_graph(&a.graph_id))
            .bind(&a.graph_id)
            .bind(&a.description)
            .bind(now())
            .fetch_one(&mut *tx)
            .await?;
        let assistant = assistant_row(&row)?;
        upsert_version(&mut tx, &AssistantVersion::from(&assistant)).await?;
        tx.commit().await?;
        Ok(assistant)
    }

    pub async fn get_assistant(&self, owner: UserId, id: AssistantId) -> Result<Assistant> {
        let sql = concat!(
            "select ",
            assistant_cols!(),
            " from assistants where assistant_id = $1 and (owner_id is null or owner_id = $2)"
        );
        let row = sqlx::query(sql).bind(id).bind(owner).fetch_optional(&self.pool).await?;
        row.as_ref()
            .map(assistant_row)
            .transpose()?
            .ok_or_else(|| Error::not_found("assistant", id))
    }

    pub async fn list_assistants(&self, owner: UserId) -> Result<Vec<Assistant>> {
        let sql = concat!(
            "select ",
            assistant_cols!(),
            " from assistants where owner_id is null or owner_id = $1 order by created_at, assistant_id"
        );
        let rows = sqlx::query(sql).bind(owner).fetch_all(&self.pool).await?;
        skip_unreadable(rows.iter().map(assistant_row))
    }

    pub async fn create_assistant(
        &self,
        owner: UserId,
        new: &NewAssistant,
        existing: bool,
    ) -> Result<(Assistant, bool)> {
        let id = new.assistant_id;
        let sql = concat!("insert into assistants (assistant_id, graph_id, name, description, config, context, metadata, version, owner_id, created_at, updated_at)
             values ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $9)
             on conflict (assistant_id) do nothing
             returning ", assistant_cols!());
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(sql)
            .bind(id)
            .bind(&new.graph_id)
            .bind(&new.name)
            .bind(&new.description)
            .bind(pg_json("assistant config", &new.config)?)
            .bind(pg_json("assistant context", &new.context)?)
            .bind(pg_json("assistant metadata", &new.metadata)?)
            .bind(owner)
            .bind(now())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = created {
            let created = assistant_row(&row)?;
            upsert_version(&mut tx, &AssistantVersion::from(&created)).await?;
            tx.commit().await?;
            return Ok((created, true));
        }
        match owned(&mut tx, owner, id, false).await {
            Ok(found) if existing => Ok((found, false)),
            // Taken, by the caller or anyone: say only that the id is taken.
            Ok(_) | Err(Error::NotFound { .. }) => Err(assistant_conflict(id)),
            Err(e) => Err(e),
        }
    }

    pub async fn patch_assistant(
        &self,
        owner: UserId,
        id: AssistantId,
        patch: &AssistantPatch,
    ) -> Result<Assistant> {
        let mut tx = self.pool.begin().await?;
        // Locked: concurrent patches number their versions one after the other.
        let current = owned(&mut tx, owner, id, true).await?;
        let version: i64 = sqlx::query_scalar(
            "select coalesce(max(version), 0) + 1 from assistant_versions where assistant_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let next = patch.apply(&current);
        let sql = concat!("update assistants set graph_id = $1, name = $2, description = $3, config = $4, context = $5, metadata = $6, version = $7, updated_at = $8
             where assistant_id = $9 returning ", assistant_cols!());
        let row = sqlx::query(sql)
            .bind(&next.graph_id)
            .bind(&next.name)
            .bind(&next.description)
            .bind(pg_json("assistant config", &next.config)?)
            .bind(pg_json("assistant context", &next.context)?)
            .bind(pg_json("assistant metadata", &next.metadata)?)
            .bind(version)
            .bind(now())
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let patched = assistant_row(&row)?;
        upsert_version(&mut tx, &AssistantVersion::from(&patched)).await?;
        tx.commit().await?;
        Ok(patched)
    }

    pub async fn delete_assistant(&self, owner: UserId, id: AssistantId) -> Result<()> {
        // Its versions go with it (a cascading foreign key).
        let deleted =
            sqlx::query("delete from assistants where assistant_id = $1 and owner_id = $2")
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        match deleted.rows_affected() {
            0 => Err(Error::not_found("assistant", id)),
            _ => Ok(()),
        }
    }

    pub async fn assistant_versions(
        &self,
        owner: UserId,
        id: AssistantId,
    ) -> Result<Vec<AssistantVersion>> {
        self.get_assistant(owner, id).await?;
        let sql = concat!(
            "select ",
            assistant_version_cols!(),
            " from assistant_versions where assistant_id = $1 order by version desc"
        );
        let rows = sqlx::query(sql).bind(id).fetch_all(&self.pool).await?;
        skip_unreadable(rows.iter().map(version_row))
    }

    pub async fn set_latest_assistant_version(
        &self,
        owner: UserId,
        id: AssistantId,
        version: i64,
    ) -> Result<Assistant> {
        let mut tx = self.pool.begin().await?;
        owned(&mut tx, owner, id, true).await?;
        // The version's own copy of every field becomes the assistant's.
        let sql = "update assistants a set graph_id = v.graph_id, name = v.name, description = v.description,
                    config = v.config, context = v.context, metadata = v.metadata, version = v.version, updated_at = $3
               from assistant_versions v
              where a.assistant_id = $1 and v.assistant_id = $1 and v.version = $2
             returning a.assistant_id, a.graph_id, a.name, a.description, a.config, a.context, a.metadata, a.version, a.owner_id, a.created_at, a.updated_at";
        let row =
            sqlx::query(sql).bind(id).bind(version).bind(now()).fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Err(Error::not_found("assistant version", format!("{version} of {id}")));
        };
        let latest = assistant_row(&row)?;
        tx.commit().await?;
        Ok(latest)
    }
}

/// One of the caller's own assistants (never a system one), locked for the transaction when
/// `lock`.
async fn owned(
    c: &mut PgConnection,
    owner: UserId,
    id: AssistantId,
    lock: bool,
) -> Result<Assistant> {
    let sql = match lock {
        true => concat!(
            "select ",
            assistant_cols!(),
            " from assistants where assistant_id = $1 and owner_id = $2 for update"
        ),
        false => concat!(
            "select ",
            assistant_cols!(),
            " from assistants where assistant_id = $1 and owner_id = $2"
        ),
    };
    let row = sqlx::query(sql).bind(id).bind(owner).fetch_optional(&mut *c).await?;
    row.as_ref().map(assistant_row).transpose()?.ok_or_else(|| Error::not_found("assistant", id))
}

/// Writes a version row; a system assistant's refreshed description rewrites its own.
async fn upsert_version(c: &mut PgConnection, v: &AssistantVersion) -> Result<()> {
    sqlx::query(
        "insert into assistant_versions (assistant_id, version, graph_id, name, description, config, context, metadata, created_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (assistant_id, version) do update set description = excluded.description",
    )
    .bind(v.assistant_id)
    .bind(v.version)
    .bind(&v.graph_id)
    .bind(&v.name)
    .bind(&v.description)
    .bind(pg_json("assistant config", &v.config)?)
    .bind(pg_json("assistant context", &v.context)?)
    .bind(pg_json("assistant metadata", &v.metadata)?)
    .bind(v.created_at)
    .execute(&mut *c)
    .await?;
    Ok(())
}

fn version_row(r: &PgRow) -> Result<AssistantVersion> {
    let id: AssistantId = r.try_get(0)?;
    let row = || -> Result<_> {
        Ok(AssistantVersion {
            assistant_id: r.try_get(0)?,
            version: r.try_get(1)?,
            graph_id: r.try_get(2)?,
            name: r.try_get(3)?,
            description: r.try_get(4)?,
            config: r.try_get(5)?,
            context: r.try_get(6)?,
            metadata: object(r, 7)?,
            created_at: r.try_get(8)?,
        })
    };
    row().map_err(|e| Error::unreadable("assistant version", id, e))
}
