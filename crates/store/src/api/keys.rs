//! `Store`: users and API keys.

use ids::ApiKeyId;

use crate::model::*;
use crate::{Result, Store};

impl Store {
    // ---- users ----

    /// The user behind an authenticated subject, created on first sight. Concurrent calls
    /// for one subject all get the same user.
    pub async fn ensure_user(&self, subject: &str) -> Result<User> {
        dispatch!(self.ensure_user(subject))
    }

    // ---- API keys (operators' commands and authentication) ----

    /// Stores a new key for `subject` (creating the user if needed); only its hash is kept.
    pub async fn create_api_key(
        &self,
        subject: &str,
        key_hash: &str,
        prefix: &str,
    ) -> Result<ApiKey> {
        dispatch!(self.create_api_key(subject, key_hash, prefix))
    }

    /// The user a key (by its hash) belongs to, unless the key is revoked or unknown.
    pub async fn user_for_api_key(&self, key_hash: &str) -> Result<Option<User>> {
        dispatch!(self.user_for_api_key(key_hash))
    }

    /// Every key, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        dispatch!(self.list_api_keys())
    }

    /// Revokes a key; revoking a revoked key keeps its first revocation time.
    pub async fn revoke_api_key(&self, key: ApiKeyId) -> Result<ApiKey> {
        dispatch!(self.revoke_api_key(key))
    }
}
