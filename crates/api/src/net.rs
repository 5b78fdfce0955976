//! The listener: Spindle's own accept loop over hyper's HTTP/1.1 connections, so that nobody
//! can hold the server's memory or descriptors for free (issue #12, findings 3 and 4).
//!
//! - **Connection caps.** At most `max_connections` open connections in total and
//!   `max_connections_per_address` per client address (IPv6: per /64); a connection over a cap
//!   is closed at once, never queued. One warning is logged when open connections reach 90 %
//!   of the cap (or of what the descriptor limit allows), again only after they fell below 75 %.
//! - **Deadlines on the socket** ([`Deadlines`]): a new connection must send a whole request
//!   head within `header_timeout`; between requests, a keep-alive connection may stay silent for
//!   `idle_timeout`; once a request's first byte is in, the whole head must be in within
//!   `header_timeout`. While a request is being served (its body read, with its own deadline
//!   in `context::authenticate`, and its response, however long an SSE stream is) and after a
//!   WebSocket upgrade, the socket has no deadline.
//! - TCP_NODELAY on every connection, and graceful shutdown: on `shutdown`, stop accepting,
//!   let requests in flight finish, close idle connections, and return when every connection
//!   is closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The listener's limits (`serve`'s flags; see `config::NetArgs`).
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// A request head (and a new connection's first one) must arrive within this.
    pub header_timeout: Duration,
    /// A keep-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 256,
        }
    }
}

/// Raises the soft limit on open file descriptors to the hard limit; returns the new soft
/// limit (`None` where there is no such limit or it cannot be read).
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open file descriptor limit");
            descriptor_limit()
        }
    }
}

fn descriptor_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
}

/// Descriptors kept for what is not a client connection: the database, log files, the
/// runtime, the metrics listener.
const DESCRIPTOR_RESERVE: u64 = 64;

/// Accepts connections on `listener` and serves `router` on them until `shutdown` completes;
/// then waits for every connection to close (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: NetConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let admission = Arc::new(Admission::new(&config, descriptor_limit()));
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = admission.admit(peer) else {
            drop(stream);
            continue;
        };
        let closing = closing_rx.clone();
        tokio::spawn(connection(stream, router.clone(), config.clone(), slot, closing));
    }
    drop(listener);
    let _ = closing.send(true);
    drop(closing_rx);
    // Every connection task holds a receiver; all are gone when every connection has closed.
    closing.closed().await;
    Ok(())
}

/// An accept error: a client that gave up before it was accepted is nothing; running out of
/// descriptors (or memory) is, and retrying at once would spin.
async fn accept_failed(e: &io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "could not accept a connection (out of file descriptors?)");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn connection(
    stream: TcpStream,
    router: Router,
    config: NetConfig,
    slot: Slot,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    // Without TCP_NODELAY, a response written in parts (a streamed body) waits out the
    // client's delayed ACK: 40 ms per request on Linux.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let activity = Arc::new(Activity::default());
    // The slot goes with the socket: an upgraded WebSocket keeps it (hyper hands the socket
    // to the upgrade), so it counts against the caps for as long as it is open.
    let io = TokioIo::new(Deadlines::new(stream, activity.clone(), &config, slot));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        // Counted when hyper hands the request over (its head is in), before any await.
        let busy = Busy::new(activity.clone());
        let router = router.clone();
        async move {
            let response = match router.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                busy.activity.upgraded.store(true, Ordering::Release);
            }
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_connection_end(result),
        () = async { drop(closing.wait_for(|c| *c).await) } => {
            conn.as_mut().graceful_shutdown();
            log_connection_end(conn.await);
        }
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended");
    }
}

/// What the socket's deadlines need to know about the requests on it.
#[derive(Debug, Default)]
struct Activity {
    /// Requests handed to the router whose response has not been sent in full.
    busy: AtomicUsize,
    /// Responses sent in full so far (a new idle period starts after each).
    done: AtomicU64,
    /// Upgraded (WebSocket): the socket is the upgrade's, with no deadline.
    upgraded: AtomicBool,
}

/// One request in flight, until its response body is dropped (sent, or abandoned).
#[derive(Debug)]
struct Busy {
    activity: Arc<Activity>,
}

impl Busy {
    fn new(activity: Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy { activity }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity.done.fetch_add(1, Ordering::AcqRel);
        self.activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted busy until it is dropped.
#[derive(Debug)]
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte (the deadline is the idle or first-head one).
    Idle,
    /// A request's head has started; it must be complete by the deadline.
    Head,
    /// A request is being served, or the connection was upgraded: no deadline.
    Off,
}

/// A socket whose reads fail (`TimedOut`, which ends the connection) when its deadline
/// passes; see the module documentation.
#[derive(Debug)]
pub struct Deadlines<T> {
    inner: T,
    activity: Arc<Activity>,
    phase: Phase,
    /// `Activity::done` when the current idle period started.
    seen_done: u64,
    sleep: Pin<Box<Sleep>>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// The connection's place under the caps, given back when the socket is dropped.
    _slot: Slot,
}

impl<T> Deadlines<T> {
    fn new(inner: T, activity: Arc<Activity>, config: &NetConfig, slot: Slot) -> Self {
        Deadlines {
            _slot: slot,
            inner,
            activity,
            phase: Phase::Idle,
            seen_done: 0,
            // A new connection has the header timeout to send its first request whole.
            sleep: Box::pin(tokio::time::sleep(config.header_timeout)),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
        }
    }

    /// Moves to the phase the requests on the connection imply.
    fn update_phase(&mut self) {
        if self.activity.upgraded.load(Ordering::Acquire)
            || self.activity.busy.load(Ordering::Acquire) > 0
        {
            self.phase = Phase::Off;
            return;
        }
        let done = self.activity.done.load(Ordering::Acquire);
        if self.phase == Phase::Off || done != self.seen_done {
            self.seen_done = done;
            self.phase = Phase::Idle;
            self.sleep.as_mut().reset(Instant::now() + self.idle_timeout);
        }
    }
}

fn timed_out(phase: Phase) -> io::Error {
    let what = match phase {
        Phase::Head => "the request head did not arrive in time",
        _ => "the connection was idle for too long",
    };
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.update_phase();
        if this.phase == Phase::Off {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(timed_out(this.phase)));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.phase == Phase::Idle && matches!(result, Poll::Ready(Ok(()))) {
            let started = buf.filled().len() > before;
            // The first byte of a request head: the whole head is due within the header
            // timeout (a new connection's deadline already is that).
            if started && this.seen_done > 0 {
                this.sleep.as_mut().reset(Instant::now() + this.header_timeout);
            }
            if started {
                this.phase = Phase::Head;
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection caps: who may open one more connection.
#[derive(Debug)]
struct Admission {
    max_total: usize,
    max_per_address: usize,
    /// Open connections at which to warn once: 90 % of the cap or of the descriptor budget.
    warn_at: usize,
    rearm_below: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    warned: bool,
}

/// The address a per-address cap counts: an IPv6 client usually owns its whole /64.
fn client_key(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Admission {
    fn new(config: &NetConfig, descriptors: Option<u64>) -> Admission {
        let max_total = config.max_connections.max(1);
        let mut effective = max_total;
        if let Some(limit) = descriptors {
            let budget = usize::try_from(limit.saturating_sub(DESCRIPTOR_RESERVE).max(1))
                .unwrap_or(usize::MAX);
            if budget < max_total {
                tracing::warn!(
                    max_connections = max_total,
                    descriptor_limit = limit,
                    "--max-connections is above what the open file descriptor limit allows: \
                     past about {budget} connections new ones will fail; raise the hard \
                     limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections"
                );
                effective = budget;
            }
        }
        Admission {
            max_total,
            max_per_address: config.max_connections_per_address.max(1),
            warn_at: (effective * 9 / 10).max(1),
            rearm_below: effective * 3 / 4,
            state: Mutex::new(Counts::default()),
        }
    }

    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        let address = client_key(peer);
        let mut counts = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            tracing::debug!(%peer, "refused a connection: --max-connections reached");
            return None;
        }
        let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= self.max_per_address {
            tracing::debug!(%peer, "refused a connection: --max-connections-per-address reached");
            return None;
        }
        counts.per_address.insert(address, from_address + 1);
        counts.total += 1;
        if from_address + 1 == self.max_per_address {
            tracing::warn!(
                address = %address,
                open = from_address + 1,
                "one client address holds --max-connections-per-address connections; \
                 more from it are refused"
            );
        }
        if counts.total >= self.warn_at && !counts.warned {
            counts.warned = true;
            tracing::warn!(
                open = counts.total,
                max_connections = self.max_total,
                "open connections are near the limit (90%); over it, new connections are \
                 closed at once"
            );
        }
        Some(Slot { admission: self.clone(), address })
    }
}

/// One admitted connection, given back on drop.
#[derive(Debug)]
struct Slot {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.state.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
        if counts.total < self.admission.rearm_below {
            counts.warned = false;
        }
    }
}
