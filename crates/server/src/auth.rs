//! Authentication: who is calling. `local` (one local user, loopback only), API keys
//! (`x-api-key` or `Authorization: Bearer`, stored hashed), JWT (HS256 secret, RS256/ES256
//! public key, or a JWKS file), or keys and JWT together. Every mode ends in a `UserId` from
//! the store, found by the caller's external subject.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ids::UserId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use store::Store;

use crate::error::ApiError;

/// The subject of the single user of `--auth local`.
pub const LOCAL_SUBJECT: &str = "local";
/// What every API key starts with, so a leaked one is recognisable.
pub const KEY_PREFIX: &str = "spindle_";

/// How `serve` authenticates requests (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Local,
    Keys,
    Jwt,
    KeysAndJwt,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts: Vec<&str> = s.split(',').map(str::trim).collect();
        parts.sort_unstable();
        match parts.as_slice() {
            ["local"] => Ok(AuthMode::Local),
            ["keys"] => Ok(AuthMode::Keys),
            ["jwt"] => Ok(AuthMode::Jwt),
            ["jwt", "keys"] => Ok(AuthMode::KeysAndJwt),
            _ => Err(format!("invalid auth mode `{s}`: expected local, keys, jwt or keys,jwt")),
        }
    }
}

impl AuthMode {
    fn keys(self) -> bool {
        matches!(self, AuthMode::Keys | AuthMode::KeysAndJwt)
    }

    fn jwt(self) -> bool {
        matches!(self, AuthMode::Jwt | AuthMode::KeysAndJwt)
    }
}

/// Where JWT verification keys come from (one of the three) and which claims to check.
#[derive(Clone, Debug, Default)]
pub struct JwtConfig {
    pub secret: Option<String>,
    pub public_key: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Verifies JWTs with the configured keys.
#[derive(Clone)]
struct JwtVerifier {
    /// (key id, algorithm, key); a token's `kid` picks among several.
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl JwtVerifier {
    fn new(config: &JwtConfig) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.secret {
            if secret.len() < 32 {
                return Err("the JWT secret must be at least 32 bytes".into());
            }
            keys.push((None, Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes())));
        }
        if let Some(path) = &config.public_key {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read JWT public key {}: {e}", path.display()))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (Algorithm::RS256, k))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)))
                .map_err(|e| {
                    format!("JWT public key {} is not an RSA or EC PEM key: {e}", path.display())
                })?;
            keys.push((None, key.0, key.1));
        }
        if let Some(path) = &config.jwks {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("JWKS {} is not a JWK set: {e}", path.display()))?;
            for jwk in &set.keys {
                let alg = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
                    Some("ES256") => Algorithm::ES256,
                    Some("RS256") | None => Algorithm::RS256,
                    Some(other) => {
                        return Err(format!("JWKS {}: unsupported alg {other}", path.display()));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("JWKS {}: {e}", path.display()))?;
                keys.push((jwk.common.key_id.clone(), alg, key));
            }
        }
        if keys.is_empty() {
            return Err(
                "--auth jwt needs a key: --jwt-secret, --jwt-public-key or --jwt-jwks".into()
            );
        }
        Ok(JwtVerifier { keys, audience: config.audience.clone(), issuer: config.issuer.clone() })
    }

    fn verify(&self, token: &str) -> Result<String, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let candidates = self.keys.iter().filter(|(kid, alg, _)| {
            *alg == header.alg && (kid.is_none() || header.kid.is_none() || *kid == header.kid)
        });
        let mut last = format!("no configured key verifies {:?} tokens", header.alg);
        for (_, alg, key) in candidates {
            let mut validation = Validation::new(*alg);
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.validate_nbf = true;
            match &self.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
            }
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) if !data.claims.sub.is_empty() => return Ok(data.claims.sub),
                Ok(_) => return Err("the token's sub claim is empty".into()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// The authenticator of a running server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auth {
    mode: AuthMode,
    jwt: Option<JwtVerifier>,
    /// Subjects already resolved to users (users are never deleted, so this never goes stale).
    users: Arc<Mutex<HashMap<String, UserId>>>,
}

/// Who a request is from.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub subject: String,
}

impl Auth {
    pub fn new(mode: AuthMode, jwt: &JwtConfig) -> Result<Auth, String> {
        let jwt = if mode.jwt() { Some(JwtVerifier::new(jwt)?) } else { None };
        Ok(Auth { mode, jwt, users: Arc::default() })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Resolves the request's credentials to a user, or says what is wrong with them.
    pub async fn authenticate(
        &self,
        store: &Store,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        if self.mode == AuthMode::Local {
            return self.user(store, LOCAL_SUBJECT).await;
        }
        let unauthorized = |m: &str| ApiError::Unauthorized(m.to_owned());
        let api_key = headers.get("x-api-key").map(|v| v.to_str().unwrap_or_default());
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        if let Some(key) = api_key.filter(|_| self.mode.keys()) {
            return self.key_user(store, key).await;
        }
        match bearer {
            Some(token) if self.mode.keys() && token.starts_with(KEY_PREFIX) => {
                self.key_user(store, token).await
            }
            Some(token) => match &self.jwt {
                Some(jwt) => match jwt.verify(token) {
                    Ok(subject) => self.user(store, &subject).await,
                    Err(e) => Err(ApiError::Unauthorized(format!("invalid bearer token: {e}"))),
                },
                None => Err(unauthorized("invalid API key")),
            },
            None => Err(unauthorized(match self.mode {
                AuthMode::Keys => "missing credentials: send an API key in the x-api-key header",
                AuthMode::Jwt => {
                    "missing credentials: send a JWT in the Authorization: Bearer header"
                }
                _ => {
                    "missing credentials: send an API key in x-api-key or a JWT in Authorization: Bearer"
                }
            })),
        }
    }

    async fn key_user(&self, store: &Store, key: &str) -> Result<Caller, ApiError> {
        match store.user_for_api_key(&hash_key(key)).await? {
            Some(user) => Ok(Caller { user: user.user_id, subject: user.subject }),
            None => Err(ApiError::Unauthorized("invalid or revoked API key".into())),
        }
    }

    async fn user(&self, store: &Store, subject: &str) -> Result<Caller, ApiError> {
        let cached = self.users.lock().unwrap_or_else(|e| e.into_inner()).get(subject).copied();
        let user = match cached {
            Some(user) => user,
            None => {
                let user = store.ensure_user(subject).await?.user_id;
                self.users
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(subject.to_owned(), user);
                user
            }
        };
        Ok(Caller { user, subject: subject.to_owned() })
    }
}

/// A new API key: `spindle_` and 43 characters of base64url (256 random bits).
pub fn generate_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a key: {e}"))?;
    Ok(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What the store keeps of a key: its SHA-256, hex. Keys are 256 random bits, so a fast hash
/// is enough (there is nothing to brute-force).
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The part of a key safe to show an operator.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 4).collect()
}
