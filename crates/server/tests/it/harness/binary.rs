//! [`Server`]: the real `spindle` binary (`CARGO_BIN_EXE_spindle`) serving on port 0, its
//! stderr in a log file of its own, killed when dropped (so a failing test stops it too).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use store::DatabaseUrl;
use store::testing::{TempDir, TestDb};

/// The binary, with none of the `SPINDLE_*` settings of the environment that tests pass as
/// flags, logging warnings and errors only.
pub fn spindle() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spindle"));
    for var in ["SPINDLE_DATABASE_URL", "SPINDLE_LISTEN", "SPINDLE_AUTH", "SPINDLE_LOG_FORMAT"] {
        cmd.env_remove(var);
    }
    cmd.env("SPINDLE_LOG", "warn");
    cmd
}

/// The `--database-url` of a test's database.
pub fn database_url(db: &TestDb) -> String {
    match &db.url {
        DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseUrl::Postgres(url) => url.clone(),
    }
}

/// A running `spindle serve --listen 127.0.0.1:0`.
pub struct Server {
    child: Option<Child>,
    /// Kept open: the server's stdout stays a live pipe for as long as it runs.
    stdout: BufReader<ChildStdout>,
    /// `host:port` it listens on.
    pub addr: String,
    /// Holds `stderr.log`.
    logs: TempDir,
}

impl Server {
    /// `spindle serve --listen 127.0.0.1:0 ARGS` in `dir` (its default data folder there).
    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        let mut command = spindle();
        Server::spawn(
            command.args(["serve", "--listen", "127.0.0.1:0"]).args(args).current_dir(dir),
        )
    }

    /// `spindle serve --listen 127.0.0.1:0 --database-url DB ARGS`: on a test's own database.
    pub fn on(db: &TestDb, args: &[&str]) -> Server {
        let mut command = spindle();
        command.args(["serve", "--listen", "127.0.0.1:0", "--database-url", &database_url(db)]);
        Server::spawn(command.args(args))
    }

    /// Spawns `command` (a `spindle serve`) and returns once it says where it listens: the
    /// line it prints once it is bound, so no test waits on a timer for it.
    pub fn spawn(command: &mut Command) -> Server {
        let logs = TempDir::new("server-log");
        let log = std::fs::File::create(logs.0.join("stderr.log")).unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut server = Server { child: Some(child), stdout, addr: String::new(), logs };
        let line = server.line();
        let Some(addr) = line.trim().strip_prefix("spindle listening on http://") else {
            let mut child = server.child.take().unwrap();
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "spindle serve did not announce its address: first stdout line {line:?}, exit \
                 {status:?}\n--- server log ---\n{}",
                server.log()
            );
        };
        server.addr = addr.to_owned();
        server
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next line the server prints on stdout (empty at its end).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// What the server has logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.0.join("stderr.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> String {
        self.get_with(path, "")
    }

    /// A GET with extra header lines (each ending `\r\n`); the whole response.
    pub fn get_with(&self, path: &str, headers: &str) -> String {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: localhost\r\n{headers}connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// A request with a JSON body; the status and the JSON of the answer (not chunked).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let json = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
    }

    /// SIGKILL: no shutdown, no cleanup, as in a crash.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; the output's `stderr` is the server's whole log.
    pub fn terminate(mut self) -> Output {
        let child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let mut output = child.wait_with_output().unwrap();
        output.stderr = self.log().into_bytes();
        output
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
