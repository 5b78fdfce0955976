//! The `spindle` binary: parses the command line and runs the library's commands. Any error
//! ends the process with one line on stderr and exit code 1.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use server::config::{Cli, Command, DatabaseArgs, LogArgs, LogFormat, ServeArgs};
use server::{AppState, serve, shutdown_signal};
use store::{Store, StoreOptions};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => run_serve(args).await,
            Command::Migrate(args) => run_migrate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
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

async fn run_serve(args: ServeArgs) -> Result<(), String> {
    let store = open_store(&args.database).await?;
    let state = AppState::new(store).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "spindle listening");
    // One plain line on stdout, so scripts and tests that pass port 0 can find the port.
    println!("spindle listening on http://{addr}");
    serve(listener, state, shutdown_signal()).await.map_err(|e| format!("server failed: {e}"))
}

async fn run_migrate(args: DatabaseArgs) -> Result<(), String> {
    open_store(&args).await?;
    println!("migrations applied");
    Ok(())
}
