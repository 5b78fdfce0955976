//! Configuration from flags and environment variables (clap), one struct per command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use store::DatabaseUrl;

use api::auth::{AuthMode, JwtConfig};
use api::metrics::Exposure;

/// Spindle: an Agent Protocol server for multi-user AI-agent conversations.
#[derive(Debug, Parser)]
#[command(name = "spindle", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (migrates the database first).
    Serve(Box<ServeArgs>),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys (for `serve --auth keys`).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check the database for broken invariants and print a report; `--fix` repairs what is
    /// safe. Read-only without `--fix`; safe while a server runs. Exit 0 when no problem
    /// (warnings aside) remains, 1 otherwise.
    Doctor(DoctorArgs),
    /// Explain ids: `spindle id inspect ID`.
    #[command(subcommand)]
    Id(IdCommand),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Repair what is safe: end stale running runs `error` (with a run_error event), set busy
    /// threads' statuses from their runs, raise a last_seq that is behind. Never deletes rows
    /// or fills seq gaps. Each repair is one transaction that re-checks its condition.
    #[arg(long)]
    pub fix: bool,
    /// Seconds a running run may go without a sign of life (its start, or an event of its own)
    /// before it counts as stale. Runs have no executor heartbeat yet, so keep this above the
    /// server's --run-timeout (600 s by default).
    #[arg(long, env = "SPINDLE_DOCTOR_STALE_AFTER", default_value_t = 720, value_name = "SECS")]
    pub stale_after: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Say what an id is: its UUID version, its creation time (UUIDv7), and what it names in
    /// the database (thread, run, assistant, checkpoint, user, API key, message). For a string
    /// that is not an id, what it looks like and why it is rejected. Exit 0 for a valid id,
    /// found or not; 1 for anything else.
    Inspect {
        /// The id, or the id-like string, to explain.
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a user; prints the key, alone on stdout, once.
    Create {
        /// The user's name (their subject; the same as a JWT `sub`).
        #[arg(long)]
        user: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List keys (never the keys themselves).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a key by its key id (from `keys list`).
    Revoke {
        key_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the address is logged).
    #[arg(long, env = "SPINDLE_LISTEN", default_value = "127.0.0.1:8123")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Largest request body in bytes (413 above it).
    #[arg(long, env = "SPINDLE_BODY_LIMIT", default_value_t = 10 * 1024 * 1024)]
    pub body_limit: usize,
    /// Runs executing at once on this node.
    #[arg(long, env = "SPINDLE_RUN_CONCURRENCY", default_value_t = 64)]
    pub run_concurrency: usize,
    /// Runs of one user executing at once (on this node for runs started as they are created;
    /// across all nodes for runs waiting their turn). A user's further runs wait `pending`, and
    /// waiting runs are taken in turns between users. Default: --run-concurrency with
    /// `--auth local` (one user), a quarter of it (at least 1) otherwise.
    #[arg(long, env = "SPINDLE_MAX_RUNS_PER_USER")]
    pub max_runs_per_user: Option<usize>,
    /// Longest a run may execute, in seconds, before it ends `timeout`.
    #[arg(long, env = "SPINDLE_RUN_TIMEOUT", default_value_t = 600)]
    pub run_timeout: u64,
    /// Origins browsers may call from, comma-separated (e.g. http://localhost:3000), or `*`
    /// for any. Default: any origin with --auth keys or jwt (credentials protect); with --auth
    /// local, loopback origins only (http(s)://localhost, 127.0.0.0/8, [::1], any port), and a
    /// request from any other origin is refused (403), so a web page cannot reach the local
    /// user's threads.
    #[arg(long, env = "SPINDLE_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// `/metrics` (Prometheus text) on the main listener: public (anyone who reaches the
    /// port; no ids or users are in any series), auth (API credentials, as for every route), or
    /// off. Default: public, or off when --metrics-listen is given.
    #[arg(long, env = "SPINDLE_METRICS", value_enum)]
    pub metrics: Option<Exposure>,
    /// Also serve `/metrics`, and nothing else, without authentication on this address
    /// (e.g. 127.0.0.1:9464, a port only Prometheus reaches); port 0 picks a free port (printed
    /// on the line after the main address).
    #[arg(long, env = "SPINDLE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub ws: WsArgs,
    #[command(flatten)]
    pub sse: SseArgs,
    #[command(flatten)]
    pub agents: AgentArgs,
    #[command(flatten)]
    pub graphs: crate::graphs::GraphArgs,
}

/// Where the `llm` agent's models and tools are: server configuration only, never an
/// assistant's (docs/llm.md). The default provider's key is `SPINDLE_LLM_API_KEY`, read from
/// the environment only.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The default model provider: an OpenAI-compatible API's base URL (e.g.
    /// http://127.0.0.1:11434/v1 for Ollama); `/chat/completions` is called under it.
    #[arg(long, env = "SPINDLE_LLM_BASE_URL", value_name = "URL")]
    pub llm_base_url: Option<String>,
    /// An MCP server over Streamable HTTP, as NAME=URL; repeatable, or comma-separated in
    /// the environment. Assistants name them in `context.tools`.
    #[arg(long = "mcp", env = "SPINDLE_MCP", value_name = "NAME=URL", value_delimiter = ',')]
    pub mcp: Vec<String>,
    /// A TOML file naming more model providers (`[providers.NAME]` with `base_url` and
    /// `api_key_env`, `default_provider`) and MCP servers (`[mcp.NAME]` with `url`, or
    /// `command` and `args` for a stdio server).
    #[arg(long = "config", env = "SPINDLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What a connection may hold, and for how long (docs/security.md).
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Seconds a client has to send a request's whole head (request line and headers), from
    /// its first byte, or from the connection's opening for its first request.
    #[arg(long, env = "SPINDLE_HEADER_TIMEOUT", default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's whole body once its head is in (408 and the
    /// connection closed after). Streamed responses (SSE) and WebSockets are not limited.
    #[arg(long, env = "SPINDLE_BODY_TIMEOUT", default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,
    /// Seconds a keep-alive connection may wait, silent, for its next request.
    #[arg(long, env = "SPINDLE_KEEP_ALIVE_TIMEOUT", default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_timeout: u64,
    /// Open connections (WebSockets and streams included); more are closed at once. The soft
    /// open-file limit is raised to the hard one at start-up; a warning says when this is
    /// above what it allows.
    #[arg(long, env = "SPINDLE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Open connections from one client address (IPv6: one /64); more are closed at once.
    /// Behind a proxy every client has the proxy's address: raise this there.
    #[arg(long, env = "SPINDLE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_address: u64,
    /// Request bodies of at least this many bytes are "large": parsing JSON takes many times
    /// its size in memory, so only --large-body-parses of them are read and handled at once
    /// (the others wait their turn).
    #[arg(long, env = "SPINDLE_LARGE_BODY_SIZE", default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub large_body_size: usize,
    /// Large request bodies read and handled at once.
    #[arg(long, env = "SPINDLE_LARGE_BODY_PARSES", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub large_body_parses: u64,
}

impl NetArgs {
    pub fn config(&self) -> api::net::NetConfig {
        use std::time::Duration;
        api::net::NetConfig {
            header_timeout: Duration::from_secs(self.header_timeout),
            idle_timeout: Duration::from_secs(self.keep_alive_timeout),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_connections_per_address: usize::try_from(self.max_connections_per_address)
                .unwrap_or(usize::MAX),
        }
    }
}

/// The WebSocket channel (`GET /ws`; docs/websocket.md).
#[derive(Debug, Args)]
pub struct WsArgs {
    /// Seconds between the server's pings; a connection silent for a whole interval after a
    /// ping is closed (4009).
    #[arg(long, env = "SPINDLE_WS_PING_INTERVAL", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_ping_interval: u64,
    /// Largest frame a client may send, in bytes (larger: a `too_large` error).
    #[arg(long, env = "SPINDLE_WS_MAX_MESSAGE", default_value_t = 64 * 1024)]
    pub ws_max_message: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer (4008).
    #[arg(long, env = "SPINDLE_WS_MAX_OUTBOUND", default_value_t = 1024 * 1024)]
    pub ws_max_outbound: usize,
    /// WebSocket connections one user may hold open (more: closed with 4029).
    #[arg(long, env = "SPINDLE_WS_MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub ws_max_connections_per_user: usize,
    /// Subscriptions one connection may hold.
    #[arg(long, env = "SPINDLE_WS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub ws_max_subscriptions: usize,
    /// Seconds a connection without credentials in its handshake has to send `auth`.
    #[arg(long, env = "SPINDLE_WS_AUTH_TIMEOUT", default_value_t = 10)]
    pub ws_auth_timeout: u64,
}

impl WsArgs {
    pub fn config(&self) -> api::ws::WsConfig {
        use std::time::Duration;
        api::ws::WsConfig {
            ping_interval: Duration::from_secs(self.ws_ping_interval),
            max_message: self.ws_max_message,
            max_outbound: self.ws_max_outbound,
            max_connections_per_user: self.ws_max_connections_per_user,
            max_subscriptions: self.ws_max_subscriptions,
            auth_timeout: Duration::from_secs(self.ws_auth_timeout),
            ..api::ws::WsConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct SseArgs {
    /// Bytes of frames queued for one SSE stream before it waits for its client (a single
    /// larger frame still goes out); catch-up reads from the log are bounded alike.
    #[arg(long, env = "SPINDLE_SSE_MAX_BUFFER", default_value_t = 1024 * 1024)]
    pub sse_max_buffer: usize,
    /// Seconds an SSE stream may stay over --sse-max-buffer (its client not reading) before
    /// it is dropped.
    #[arg(long, env = "SPINDLE_SSE_SLOW_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub sse_slow_timeout: u64,
}

impl SseArgs {
    pub fn config(&self) -> api::stream::SseConfig {
        api::stream::SseConfig {
            max_buffer: self.sse_max_buffer,
            slow_timeout: std::time::Duration::from_secs(self.sse_slow_timeout),
            ..api::stream::SseConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    /// How requests authenticate: local (one local user; loopback addresses only), keys, jwt,
    /// or keys,jwt.
    #[arg(long, env = "SPINDLE_AUTH", default_value = "local")]
    pub auth: AuthMode,
    /// HS256 secret for JWTs (at least 32 bytes).
    #[arg(long, env = "SPINDLE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with the RS256 or ES256 public key for JWTs.
    #[arg(long, env = "SPINDLE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file with the public keys for JWTs (chosen by `kid`).
    #[arg(long, env = "SPINDLE_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// Required `aud` claim.
    #[arg(long, env = "SPINDLE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "SPINDLE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Seconds a long-lived connection (WebSocket, SSE stream) trusts a check of its API key
    /// before asking the database again whether it was revoked (0: at every command). A
    /// revoked key's connections close within this; a JWT's close at its `exp`.
    #[arg(long, env = "SPINDLE_AUTH_KEY_RECHECK", default_value_t = 1, value_name = "SECS")]
    pub auth_key_recheck: u64,
}

impl AuthArgs {
    pub fn jwt(&self) -> JwtConfig {
        JwtConfig {
            secret: self.jwt_secret.clone(),
            public_key: self.jwt_public_key.clone(),
            jwks: self.jwt_jwks.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database: sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DB.
    /// Default: sqlite://<data-dir>/spindle.db.
    #[arg(long, env = "SPINDLE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Folder of the default SQLite database.
    #[arg(long, env = "SPINDLE_DATA_DIR", default_value = "spindle-data")]
    pub data_dir: PathBuf,
    /// Most database connections to hold (PostgreSQL pool, SQLite readers).
    #[arg(long, env = "SPINDLE_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
}

impl DatabaseArgs {
    pub fn url(&self) -> store::Result<DatabaseUrl> {
        match &self.database_url {
            Some(url) => DatabaseUrl::parse(url),
            None => Ok(DatabaseUrl::Sqlite(self.data_dir.join("spindle.db"))),
        }
    }
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter, in `tracing` syntax (e.g. `info`, `spindle=debug,sqlx=warn`).
    #[arg(long, global = true, env = "SPINDLE_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, env = "SPINDLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}
