//! SQLite: assistants and their versions.

use ids::{AssistantId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::*;
use crate::{Error, Result, assistant_conflict, json};

use super::{SqliteStore, all_readable, assistant_row, micros, time, unreadable};

impl SqliteStore {
    pub async fn upsert_system_assistant(&self, a: &SystemAssistant) -> Result<Assistant> {
        let a = a.clone();
        self.write(move |c| {
            let id = AssistantId::for_graph(&a.graph_id);
            let at = micros(now());
            let sql = concat!("insert into assistants (assistant_id, graph_id, name, description, metadata, owner_id, created_at, updated_at)
                 values (?1, ?2, ?2, ?3, '{\"created_by\":\"system\"}', null, ?4, ?4)
                 on conflict (assistant_id) do update set description = excluded.description
                 returning ", assistant_cols!());
            let assistant =
                c.prepare_cached(sql)?.query_row(params![id, a.graph_id, a.description, at], assistant_row)?;
            upsert_version(c, &AssistantVersion::from(&assistant))?;
            Ok(assistant)
        })
        .await
    }

    pub async fn get_assistant(&self, owner: UserId, id: AssistantId) -> Result<Assistant> {
        self.read(move |c| visible(c, owner, id)).await
    }

    pub async fn list_assistants(&self, owner: UserId) -> Result<Vec<Assistant>> {
        self.read(move |c| {
            let sql = concat!("select ", assistant_cols!(), " from assistants where owner_id is null or owner_id = ?1 order by created_at, assistant_id");
            all_readable(c, sql, [owner], assistant_row)
        })
        .await
    }

    pub async fn create_assistant(
        &self,
        owner: UserId,
        new: &NewAssistant,
        existing: bool,
    ) -> Result<(Assistant, bool)> {
        let new = new.clone();
        let id = new.assistant_id;
        self.write(move |c| {
            let sql = concat!("insert into assistants (assistant_id, graph_id, name, description, config, context, metadata, version, owner_id, created_at, updated_at)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9, ?9)
                 on conflict (assistant_id) do nothing
                 returning ", assistant_cols!());
            let (config, context, metadata) = encoded(&new.config, &new.context, &new.metadata)?;
            let params = params![id, new.graph_id, new.name, new.description, config, context, metadata, owner, micros(now())];
            if let Some(created) = c.prepare_cached(sql)?.query_row(params, assistant_row).optional()? {
                upsert_version(c, &AssistantVersion::from(&created))?;
                return Ok((created, true));
            }
            match owned(c, owner, id) {
                Ok(found) if existing => Ok((found, false)),
                // Taken, by the caller or anyone: say only that the id is taken.
                Ok(_) | Err(Error::NotFound { .. }) => Err(assistant_conflict(id)),
                Err(e) => Err(e),
            }
        })
        .await
    }

    pub async fn patch_assistant(
        &self,
        owner: UserId,
        id: AssistantId,
        patch: &AssistantPatch,
    ) -> Result<Assistant> {
        let patch = patch.clone();
        self.write(move |c| {
            let current = owned(c, owner, id)?;
            let version: i64 = c
                .prepare_cached("select coalesce(max(version), 0) + 1 from assistant_versions where assistant_id = ?1")?
                .query_row([id], |r| r.get(0))?;
            let next = patch.apply(&current);
            let at = micros(now());
            let (config, context, metadata) = encoded(&next.config, &next.context, &next.metadata)?;
            let sql = concat!("update assistants set graph_id = ?1, name = ?2, description = ?3, config = ?4, context = ?5, metadata = ?6, version = ?7, updated_at = ?8
                 where assistant_id = ?9 returning ", assistant_cols!());
            let params = params![next.graph_id, next.name, next.description, config, context, metadata, version, at, id];
            let patched = c.prepare_cached(sql)?.query_row(params, assistant_row)?;
            upsert_version(c, &AssistantVersion::from(&patched))?;
            Ok(patched)
        })
        .await
    }

    pub async fn delete_assistant(&self, owner: UserId, id: AssistantId) -> Result<()> {
        self.write(move |c| {
            // Its versions go with it (a cascading foreign key).
            let deleted = c
                .prepare_cached("delete from assistants where assistant_id = ?1 and owner_id = ?2")?
                .execute(params![id, owner])?;
            match deleted {
                0 => Err(Error::not_found("assistant", id)),
                _ => Ok(()),
            }
        })
        .await
    }

    pub async fn assistant_versions(
        &self,
        owner: UserId,
        id: AssistantId,
    ) -> Result<Vec<AssistantVersion>> {
        self.read(move |c| {
            visible(c, owner, id)?;
            let sql = concat!(
                "select ",
                assistant_version_cols!(),
                " from assistant_versions where assistant_id = ?1 order by version desc"
            );
            all_readable(c, sql, [id], version_row)
        })
        .await
    }

    pub async fn set_latest_assistant_version(
        &self,
        owner: UserId,
        id: AssistantId,
        version: i64,
    ) -> Result<Assistant> {
        self.write(move |c| {
            owned(c, owner, id)?;
            // The version's own copy of every field becomes the assistant's.
            let sql = concat!("update assistants set (graph_id, name, description, config, context, metadata, version, updated_at) =
                   (select graph_id, name, description, config, context, metadata, version, ?3
                      from assistant_versions where assistant_id = ?1 and version = ?2)
                 where assistant_id = ?1 and exists (select 1 from assistant_versions where assistant_id = ?1 and version = ?2)
                 returning ", assistant_cols!());
            c.prepare_cached(sql)?
                .query_row(params![id, version, micros(now())], assistant_row)
                .optional()?
                .ok_or_else(|| Error::not_found("assistant version", format!("{version} of {id}")))
        })
        .await
    }
}

/// A system assistant or one of the caller's.
fn visible(c: &Connection, owner: UserId, id: AssistantId) -> Result<Assistant> {
    let sql = concat!(
        "select ",
        assistant_cols!(),
        " from assistants where assistant_id = ?1 and (owner_id is null or owner_id = ?2)"
    );
    c.prepare_cached(sql)?
        .query_row(params![id, owner], assistant_row)
        .optional()?
        .ok_or_else(|| Error::not_found("assistant", id))
}

/// One of the caller's own assistants (never a system one).
fn owned(c: &Connection, owner: UserId, id: AssistantId) -> Result<Assistant> {
    let sql = concat!(
        "select ",
        assistant_cols!(),
        " from assistants where assistant_id = ?1 and owner_id = ?2"
    );
    c.prepare_cached(sql)?
        .query_row(params![id, owner], assistant_row)
        .optional()?
        .ok_or_else(|| Error::not_found("assistant", id))
}

fn encoded(
    config: &serde_json::Value,
    context: &serde_json::Value,
    metadata: &Metadata,
) -> Result<(String, String, String)> {
    Ok((
        json::encode("assistant config", config, true)?,
        json::encode("assistant context", context, true)?,
        json::encode("assistant metadata", metadata, true)?,
    ))
}

/// Writes a version row; a system assistant's refreshed description rewrites its own.
fn upsert_version(c: &Connection, v: &AssistantVersion) -> Result<()> {
    let (config, context, metadata) = encoded(&v.config, &v.context, &v.metadata)?;
    c.prepare_cached(
        "insert into assistant_versions (assistant_id, version, graph_id, name, description, config, context, metadata, created_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         on conflict (assistant_id, version) do update set description = excluded.description",
    )?
    .execute(params![
        v.assistant_id,
        v.version,
        v.graph_id,
        v.name,
        v.description,
        config,
        context,
        metadata,
        micros(v.created_at)
    ])?;
    Ok(())
}

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssistantVersion> {
    let id: AssistantId = r.get(0)?;
    let row = || -> rusqlite::Result<_> {
        Ok(AssistantVersion {
            assistant_id: r.get(0)?,
            version: r.get(1)?,
            graph_id: r.get(2)?,
            name: r.get(3)?,
            description: r.get(4)?,
            config: super::json(r, 5)?,
            context: super::json(r, 6)?,
            metadata: crate::json_object(super::json(r, 7)?),
            created_at: time(r, 8)?,
        })
    };
    row().map_err(|e| unreadable("assistant version", id, e))
}
