//! Configuration from flags and environment variables (clap), one struct per command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use store::DatabaseUrl;

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
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the address is logged).
    #[arg(long, env = "SPINDLE_LISTEN", default_value = "127.0.0.1:8123")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
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
