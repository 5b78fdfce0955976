//! The `spindle` binary: the command line (`config`), `serve` (the engine over the store,
//! the API over the engine), `migrate`, `keys`, `doctor` and `id inspect`. Any error ends the
//! process with one line on stderr and exit code 1. This crate is the one place that holds
//! both the store and the API: it wires them together.

mod agents_config;
mod config;
mod doctor;
mod graphs;
mod inspect;

/// The process's allocator. Measured here under the runs benchmark, glibc's malloc and free
/// took a quarter of all CPU time (arena locks contended between the SQLite writer thread and
/// the tokio workers); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

use api::auth::{self, Auth, AuthMode};
use api::metrics::Exposure;
use api::{AppState, CorsOrigins, HttpConfig, serve, shutdown_signal};
use axum::http::HeaderValue;
use clap::Parser;
use engine::{Engine, ExecutorConfig};
use store::{Store, StoreOptions};
use tracing_subscriber::EnvFilter;

use crate::config::{
    Cli, Command, DatabaseArgs, IdCommand, KeysCommand, LogArgs, LogFormat, ServeArgs,
};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if matches!(cli.command, Command::Doctor(_) | Command::Id(_)) {
        // The doctor's scans read whole tables by design: sqlx's slow-statement warnings
        // would only be noise on its stderr.
        cli.log.log.push_str(",sqlx::query=error");
    }
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let done = match cli.command {
            Command::Serve(args) => run_serve(*args).await,
            Command::Migrate(args) => run_migrate(args).await,
            Command::Keys(command) => run_keys(command).await,
            // These two answer with their exit code: 1 is "problems found" / "not an id".
            Command::Doctor(args) => return doctor::run(&args).await,
            Command::Id(IdCommand::Inspect { id, database }) => {
                return inspect::run(&id, &database).await;
            }
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Targets that log whole frames, headers or bodies (credentials among them: a WebSocket's
/// first `auth` frame, `Authorization` headers) at debug or trace. They are held at `info`
/// whatever `--log` asks for.
const PAYLOAD_LOGGERS: [&str; 6] =
    ["tungstenite", "tokio_tungstenite", "hyper", "hyper_util", "h2", "axum::serve"];

/// The `--log` filter, with [`PAYLOAD_LOGGERS`] capped at `info` (directives given later win
/// over earlier ones for the same target, and the most specific target wins).
fn log_filter(directives: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    // Nothing is more verbose than `info` anyway (`--log warn`): leave those targets quieter.
    if filter.max_level_hint().is_some_and(|most| most <= tracing::level_filters::LevelFilter::INFO)
    {
        return filter;
    }
    for target in PAYLOAD_LOGGERS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

fn init_logging(args: &LogArgs) {
    let filter = log_filter(&args.log);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn open_store(args: &DatabaseArgs) -> Result<Store, String> {
    let url = args.url().map_err(|e| e.to_string())?;
    let options = StoreOptions { max_connections: args.database_max_connections, migrate: true };
    let store = Store::open(&url, &options).await.map_err(|e| e.to_string())?;
    tracing::info!(database = %url, "database ready");
    Ok(store)
}

fn http_config(args: &ServeArgs) -> Result<HttpConfig, String> {
    let cors_origins = match args.cors_origins.as_deref().map(str::trim) {
        None => CorsOrigins::Default,
        Some("*") => CorsOrigins::Any,
        Some(list) => CorsOrigins::List(
            list.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| {
                    HeaderValue::from_str(o.trim_end_matches('/'))
                        .map_err(|_| format!("invalid CORS origin `{o}`"))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let metrics = args.metrics.unwrap_or(if args.metrics_listen.is_some() {
        Exposure::Off
    } else {
        Exposure::Public
    });
    Ok(HttpConfig {
        body_limit: args.body_limit,
        body_timeout: std::time::Duration::from_secs(args.net.body_timeout),
        large_body: args.net.large_body_size,
        large_body_parses: usize::try_from(args.net.large_body_parses).unwrap_or(usize::MAX),
        cors_origins,
        net: args.net.config(),
        metrics,
        ws: args.ws.config(),
        sse: args.sse.config(),
    })
}

async fn run_serve(args: ServeArgs) -> Result<(), String> {
    if args.auth.auth == AuthMode::Local && !args.listen.ip().is_loopback() {
        return Err(format!(
            "refusing to serve {} without authentication: `--auth local` is for loopback addresses only; \
             use --auth keys (and `spindle keys create --user NAME`) or --auth jwt with --jwt-secret, \
             --jwt-public-key or --jwt-jwks",
            args.listen
        ));
    }
    let auth = Auth::new(args.auth.auth, &args.auth.jwt())?
        .with_key_recheck(std::time::Duration::from_secs(args.auth.auth_key_recheck));
    let http = http_config(&args)?;
    if args.auth.auth == AuthMode::Local && http.cors_origins == CorsOrigins::Any {
        tracing::warn!(
            "--cors-origins '*' with --auth local: any web page the local user visits can \
             read and write their threads"
        );
    }
    if let Some(limit) = api::net::raise_descriptor_limit() {
        tracing::info!(open_files = limit, "open file descriptor limit");
    }
    let store = open_store(&args.database).await?;
    let concurrency = args.run_concurrency.max(1);
    let per_user = args.max_runs_per_user.unwrap_or(match args.auth.auth {
        AuthMode::Local => concurrency,
        _ => (concurrency / 4).max(1),
    });
    // Users' graphs: described now (a file that does not load stops the start), run by workers
    // that authenticate with the worker token (minted here unless given).
    let graph_workers = match &args.graphs.graphs {
        None => None,
        Some(config) => {
            let specs = graphs::describe(&args.graphs.python, config).await?;
            let ids: Vec<&str> = specs.iter().map(|g| g.graph_id.as_str()).collect();
            tracing::info!(graphs = ?ids, file = %config.display(), "serving graphs");
            let token = match std::env::var("SPINDLE_WORKER_TOKEN") {
                Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
                _ => auth::generate_key()?,
            };
            Some((engine::Workers::new(store.clone(), specs, Some(token.clone())), token))
        }
    };
    let executor = ExecutorConfig {
        concurrency,
        per_user: per_user.max(1),
        run_timeout: std::time::Duration::from_secs(args.run_timeout.max(1)),
        agents: agents_config::runtime(&args.agents)?,
        workers: graph_workers.as_ref().map(|(w, _)| w.clone()),
    };
    let engine = Engine::new(store, executor).await.map_err(|e| e.to_string())?;
    let state = AppState::new(engine, auth, http);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, auth = ?args.auth.auth, "spindle listening");
    if let (Some((_, token)), Some(config)) = (&graph_workers, &args.graphs.graphs) {
        let host =
            if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        let host =
            if addr.is_ipv6() && !addr.ip().is_unspecified() { format!("[{host}]") } else { host };
        let url = format!("ws://{host}:{}/workers/connect", addr.port());
        graphs::spawn_workers(&args.graphs.python, config, args.graphs.workers, &url, token);
    }
    // One plain line on stdout, so scripts and tests that pass port 0 can find the port (and
    // the metrics address on the next line, written with it, before anyone stops reading).
    let mut lines = format!("spindle listening on http://{addr}\n");
    if let Some(metrics_addr) = args.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .map_err(|e| format!("cannot listen on {metrics_addr} for metrics: {e}"))?;
        let metrics_addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(addr = %metrics_addr, "metrics listening");
        lines.push_str(&format!("spindle metrics on http://{metrics_addr}/metrics\n"));
        let router = api::metrics::router(state.engine.clone());
        let net = args.net.config();
        tokio::spawn(async move {
            let forever = std::future::pending();
            if let Err(e) = api::net::serve(metrics_listener, router, net, forever).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    // Signals are caught from before the address is printed (see `shutdown_signal`).
    let shutdown = shutdown_signal();
    print!("{lines}");
    serve(listener, state, shutdown).await.map_err(|e| format!("server failed: {e}"))
}

async fn run_migrate(args: DatabaseArgs) -> Result<(), String> {
    open_store(&args).await?;
    println!("migrations applied");
    Ok(())
}

async fn run_keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create { user, database } => {
            if user.trim().is_empty() {
                return Err("--user must not be empty".into());
            }
            let store = open_store(&database).await?;
            let key = auth::generate_key()?;
            let created = store
                .create_api_key(&user, &auth::hash_key(&key), &auth::key_prefix(&key))
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(key_id = %created.key_id, user = %user, "API key created");
            println!("{key}");
        }
        KeysCommand::List { database } => {
            let store = open_store(&database).await?;
            println!(
                "{:<36}  {:<20}  {:<12}  {:<25}  revoked",
                "key_id", "user", "prefix", "created"
            );
            for k in store.list_api_keys().await.map_err(|e| e.to_string())? {
                let revoked = k.revoked_at.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
                println!(
                    "{:<36}  {:<20}  {:<12}  {:<25}  {revoked}",
                    k.key_id,
                    k.subject,
                    k.prefix,
                    k.created_at.to_rfc3339()
                );
            }
        }
        KeysCommand::Revoke { key_id, database } => {
            let id: ids::ApiKeyId = key_id.parse().map_err(|e: ids::ParseIdError| e.to_string())?;
            let store = open_store(&database).await?;
            let key = store.revoke_api_key(id).await.map_err(|e| e.to_string())?;
            println!("revoked {} ({})", key.key_id, key.subject);
        }
    }
    Ok(())
}
