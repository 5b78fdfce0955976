//! Authentication: who is calling. `local` (one local user, loopback only), API keys
//! (`x-api-key` or `Authorization: Bearer`, stored hashed), JWT (HS256 secret, RS256/ES256
//! public key, or a JWKS file), or keys and JWT together. Every mode ends in a `UserId` from
//! the store, found by the caller's external subject.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use engine::Engine as Spindle;
use ids::UserId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

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
    exp: i64,
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

    /// The token's subject and expiry (`exp`, Unix seconds).
    fn verify(&self, token: &str) -> Result<(String, i64), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        // RFC 7515 4.1.11: a `crit` extension the recipient does not understand makes the
        // token invalid. We understand none.
        if let Some(crit) = &header.crit {
            return Err(format!(
                "the token's header lists critical extensions this server does not support: {}",
                crit.join(", ")
            ));
        }
        let candidates = self.keys.iter().filter(|(kid, alg, _)| {
            *alg == header.alg && (kid.is_none() || header.kid.is_none() || *kid == header.kid)
        });
        let mut last = format!("no configured key verifies {:?} tokens", header.alg);
        for (_, alg, key) in candidates {
            let mut validation = Validation::new(*alg);
            // The list replaces jsonwebtoken's defaults: a configured audience or issuer is
            // required, not only checked when present.
            let mut required = vec!["exp", "sub"];
            if self.audience.is_some() {
                required.push("aud");
            }
            if self.issuer.is_some() {
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            validation.validate_nbf = true;
            match &self.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
            }
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) if !data.claims.sub.is_empty() => {
                    return Ok((data.claims.sub, data.claims.exp));
                }
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
    /// How long a long-lived connection trusts a check of its API key (`--auth-key-recheck`).
    key_recheck: Duration,
    /// When each key (by hash) was last found valid by [`Auth::recheck`].
    key_checked: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Who a request is from.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub subject: String,
    pub credential: Credential,
}

/// What a caller authenticated with, kept by long-lived connections (WebSocket, SSE streams)
/// to check that it is still valid ([`Auth::recheck`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Local,
    /// An API key, by its hash (revocable).
    Key {
        hash: String,
    },
    /// A JWT, valid until `expires_at` (Unix seconds).
    Jwt {
        expires_at: i64,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Local => f.write_str("Local"),
            Credential::Key { .. } => f.write_str("Key"),
            Credential::Jwt { expires_at } => write!(f, "Jwt(exp {expires_at})"),
        }
    }
}

impl Credential {
    /// When the credential stops being valid by itself (a JWT's `exp`).
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        match self {
            Credential::Jwt { expires_at } => {
                let secs = u64::try_from(*expires_at).unwrap_or(0);
                Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            }
            _ => None,
        }
    }

    /// How long from now until [`Credential::expires_at`] (zero if past).
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at()
            .map(|at| at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
    }
}

impl Auth {
    pub fn new(mode: AuthMode, jwt: &JwtConfig) -> Result<Auth, String> {
        let jwt = if mode.jwt() { Some(JwtVerifier::new(jwt)?) } else { None };
        Ok(Auth {
            mode,
            jwt,
            users: Arc::default(),
            key_recheck: Duration::from_secs(1),
            key_checked: Arc::default(),
        })
    }

    /// How long a long-lived connection trusts a check of its API key before asking the store
    /// again (zero: at every check).
    pub fn with_key_recheck(mut self, interval: Duration) -> Auth {
        self.key_recheck = interval;
        self
    }

    /// How long a check of an API key is trusted (`--auth-key-recheck`).
    pub fn key_recheck(&self) -> Duration {
        self.key_recheck
    }

    /// Whether a long-lived connection's credential is still valid: a JWT before its `exp`,
    /// an API key not revoked (asked of the store at most once per `--auth-key-recheck` per
    /// key; a store that does not answer keeps the connection). The error says why not.
    pub async fn recheck(&self, engine: &Spindle, credential: &Credential) -> Result<(), String> {
        match credential {
            Credential::Local => Ok(()),
            Credential::Jwt { .. } => match credential.expires_in() {
                Some(left) if left.is_zero() => Err("the JWT has expired".into()),
                _ => Ok(()),
            },
            Credential::Key { hash } => {
                let fresh = |checked: &HashMap<String, Instant>| {
                    checked.get(hash).is_some_and(|at| at.elapsed() < self.key_recheck)
                };
                if fresh(&self.key_checked.lock().unwrap_or_else(|e| e.into_inner())) {
                    return Ok(());
                }
                match engine.user_for_api_key(hash).await {
                    Ok(Some(_)) => {
                        let mut checked =
                            self.key_checked.lock().unwrap_or_else(|e| e.into_inner());
                        checked.retain(|_, at| at.elapsed() < self.key_recheck);
                        checked.insert(hash.clone(), Instant::now());
                        Ok(())
                    }
                    Ok(None) => {
                        self.key_checked.lock().unwrap_or_else(|e| e.into_inner()).remove(hash);
                        Err("the API key has been revoked".into())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not re-check an API key; keeping the connection");
                        Ok(())
                    }
                }
            }
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Resolves the request's credentials to a user, or says what is wrong with them.
    pub async fn authenticate(
        &self,
        engine: &Spindle,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        if self.mode == AuthMode::Local {
            return self.user(engine, LOCAL_SUBJECT, Credential::Local).await;
        }
        let unauthorized = |m: &str| ApiError::Unauthorized(m.to_owned());
        let api_key = headers.get("x-api-key").map(|v| v.to_str().unwrap_or_default());
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        if let Some(key) = api_key.filter(|_| self.mode.keys()) {
            return self.key_user(engine, key).await;
        }
        match bearer {
            Some(token) if self.mode.keys() && token.starts_with(KEY_PREFIX) => {
                self.key_user(engine, token).await
            }
            Some(token) => match &self.jwt {
                Some(jwt) => match jwt.verify(token) {
                    Ok((subject, expires_at)) => {
                        self.user(engine, &subject, Credential::Jwt { expires_at }).await
                    }
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

    async fn key_user(&self, engine: &Spindle, key: &str) -> Result<Caller, ApiError> {
        let hash = hash_key(key);
        match engine.user_for_api_key(&hash).await? {
            Some(user) => Ok(Caller {
                user: user.user_id,
                subject: user.subject,
                credential: Credential::Key { hash },
            }),
            None => Err(ApiError::Unauthorized("invalid or revoked API key".into())),
        }
    }

    async fn user(
        &self,
        engine: &Spindle,
        subject: &str,
        credential: Credential,
    ) -> Result<Caller, ApiError> {
        let cached = self.users.lock().unwrap_or_else(|e| e.into_inner()).get(subject).copied();
        let user = match cached {
            Some(user) => user,
            None => {
                let user = engine.ensure_user(subject).await?.user_id;
                self.users
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(subject.to_owned(), user);
                user
            }
        };
        Ok(Caller { user, subject: subject.to_owned(), credential })
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
