//! Small real servers that Spindle's tests and benchmarks talk to over real sockets: an
//! OpenAI-compatible model server (`model`) and an MCP server over Streamable HTTP (`mcp`).
//! Each binds 127.0.0.1 port 0 and stops when dropped; `RefusedPort` is a port nothing
//! listens on. Nothing here links Spindle's code.

pub mod mcp;
pub mod model;

/// A port on 127.0.0.1 that refuses connections for as long as this lives: a socket bound to
/// it that never listens. A port taken with `bind` and let go could be given to another test's
/// server meanwhile (tests run in parallel); this one cannot, as the socket does not allow
/// reuse of its address.
#[derive(Debug)]
pub struct RefusedPort {
    _socket: tokio::net::TcpSocket,
    addr: std::net::SocketAddr,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("its address");
        RefusedPort { _socket: socket, addr }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        Self::new()
    }
}
