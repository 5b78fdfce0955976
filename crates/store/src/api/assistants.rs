//! `Store`: assistants (the built-in system ones and users') and their versions.

use ids::{AssistantId, UserId};

use crate::model::*;
use crate::{Result, Store};

impl Store {
    /// Registers (or refreshes) a built-in assistant under its deterministic id.
    pub async fn upsert_system_assistant(&self, assistant: &SystemAssistant) -> Result<Assistant> {
        dispatch!(self.upsert_system_assistant(assistant))
    }

    /// A system assistant or one of the caller's.
    pub async fn get_assistant(&self, owner: UserId, id: AssistantId) -> Result<Assistant> {
        dispatch!(self.get_assistant(owner, id))
    }

    /// System assistants and the caller's, oldest first.
    pub async fn list_assistants(&self, owner: UserId) -> Result<Vec<Assistant>> {
        dispatch!(self.list_assistants(owner))
    }

    /// Creates the caller's assistant with its version 1. An id already taken (by anyone) is
    /// `Conflict`, unless `existing` is true and the caller owns it: then it is returned as it
    /// is, with `false`.
    pub async fn create_assistant(
        &self,
        owner: UserId,
        new: &NewAssistant,
        existing: bool,
    ) -> Result<(Assistant, bool)> {
        dispatch!(self.create_assistant(owner, new, existing))
    }

    /// Applies a patch to one of the caller's assistants as its next version, which becomes
    /// the current one.
    pub async fn patch_assistant(
        &self,
        owner: UserId,
        id: AssistantId,
        patch: &AssistantPatch,
    ) -> Result<Assistant> {
        dispatch!(self.patch_assistant(owner, id, patch))
    }

    /// Deletes one of the caller's assistants and its versions (its runs stay).
    pub async fn delete_assistant(&self, owner: UserId, id: AssistantId) -> Result<()> {
        dispatch!(self.delete_assistant(owner, id))
    }

    /// The versions of a system assistant or one of the caller's, newest first.
    pub async fn assistant_versions(
        &self,
        owner: UserId,
        id: AssistantId,
    ) -> Result<Vec<AssistantVersion>> {
        dispatch!(self.assistant_versions(owner, id))
    }

    /// Makes an older (or newer) version of one of the caller's assistants the current one.
    pub async fn set_latest_assistant_version(
        &self,
        owner: UserId,
        id: AssistantId,
        version: i64,
    ) -> Result<Assistant> {
        dispatch!(self.set_latest_assistant_version(owner, id, version))
    }
}
