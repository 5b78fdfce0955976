//! `spindle-testkit model [--listen ADDR]`: the tests' model server as a process of its own,
//! for benchmarks that measure Spindle from outside (`bench/llm.sh`). Prints
//! `model http://ADDR/v1` on stdout once it accepts connections, and serves until killed.

use std::io::Write;

const USAGE: &str = "usage: spindle-testkit model [--listen 127.0.0.1:0]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match parse(&args) {
        Ok(listen) => listen,
        Err(why) => {
            eprintln!("error: {why}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let runtime = runtime.unwrap_or_else(|e| {
        eprintln!("error: start the runtime: {e}");
        std::process::exit(1);
    });
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("error: bind {listen}: {e}");
                std::process::exit(1);
            }
        };
        let server = testkit::model::ModelServer::serve(listener);
        println!("model {}", server.base_url());
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}

/// The listen address of `model [--listen ADDR]`.
fn parse(args: &[String]) -> Result<String, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err("expected a command".into());
    };
    if command != "model" {
        return Err(format!("expected the command `model`, got `{command}`"));
    }
    match rest {
        [] => Ok("127.0.0.1:0".into()),
        [flag, addr] if flag == "--listen" => Ok(addr.clone()),
        _ => Err(format!("expected `--listen ADDR`, got `{}`", rest.join(" "))),
    }
}
