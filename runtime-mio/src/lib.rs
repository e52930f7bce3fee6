//! The mio event loop that drives [`ftp_proxy_core::Proxy`], and a userspace data relay.
//!
//! The core decides everything and touches nothing; this crate owns the sockets, the
//! clock, the signals and the packet filter (or the relay standing in for it). Its
//! public surface is what the `ftp-proxy` binary needs, in the order it needs it:
//! [`listen`] and [`raise_nofile_limit`] while still privileged, then [`run`].
//! [`Runtime`] is the loop itself, for tests and embedders that drive it turn by turn.
//!
//! # The event loop
//!
//! * mio is edge-triggered, so every socket keeps a readiness cache: an event sets
//!   `readable`/`writable`, only `WouldBlock` clears them. Each socket gets bounded work
//!   per turn: a control socket is served once per turn, however many events it had,
//!   and reads at most 4 KiB; the listener accepts 64. One with work
//!   left goes on a hot list, served in the next turn (no new edge would say so), and
//!   the next poll does not wait. The budget is in bytes because a flood of bare `\n`
//!   is one line of work per byte: a session flooding so delays the others by about
//!   one budget's work per turn, not by all it has sent.
//! * Control output is queued per connection and every write is reported to the core
//!   (`Input::Written`). The core decides when each side is read and says so with
//!   `Action::ReadInterest` (its thresholds: 64 KiB queued for the peer, or for the
//!   client itself, stops reading; below 16 KiB it resumes; unparsed input held behind
//!   a commit stops it too), so memory per session is bounded although the original's
//!   is not. A side whose interest comes back on is served in the next turn. The
//!   core emits one `Send` per line; the queue copies small ones into 4 KiB chunks,
//!   so what it holds is its payload plus one chunk whatever the line lengths (a
//!   queue entry per 1-byte line would cost tens of times the byte), and a burst of
//!   lines leaves in one `writev`.
//! * One path drives the core: every input is fed, then the core's actions are
//!   drained and executed in order, in one place. `CommitRules` runs synchronously
//!   and its acknowledgement is fed back at once; writes return what they did, and
//!   the drain feeds it back (`Input::Written`, `Input::WriteError`), so nothing
//!   re-enters the core from inside an action or a write.
//! * The packet filter and the relay are one seam to the loop (what it commits,
//!   when a transfer or session ends, their sockets' events and timers): the loop
//!   never asks which one carries the data connections.
//!   `RulesMayRemain` (a failed final removal) is retried once; `remove_all` at exit
//!   is the backstop.
//! * Logging: the core logs the session's story and its end reason; this crate logs
//!   socket and signal events, its relay, and the one summary line per session
//!   (`#ID session summary: ...`, fields in docs/behavior.md) from `Action::Close`.
//! * The client's routing domain (`SO_RTABLE`) is read from each accepted socket on
//!   OpenBSD and handed to the core for the rules; Linux has none (always 0).
//! * Tokens encode the session id and side (or relay id); ids are never reused, so a
//!   late event for a closed socket finds nothing.
//! * Signals use the self-pipe trick (portable to OpenBSD). The first SIGHUP, SIGINT
//!   or SIGTERM logs `exiting on signal N`, stops accepting and ends every session;
//!   the loop returns once all sessions are gone (their rules removed) or after
//!   [`SHUTDOWN_GRACE`]; a second signal returns at once. `remove_all` is the backstop.
//! * `EMFILE`/`ENFILE` on accept pause accepting for one second, as the original does.
//! * Behind a load balancer ([`ProxyProtocol`], `--proxy-protocol-in`), an accepted
//!   connection is not a session until its PROXY protocol header is complete: it
//!   waits in [`proxy_header`]'s table, read without blocking, bounded in bytes, time
//!   and number, and only then is offered to the core with the header's client.
//!   With `--proxy-protocol-out` the header for the server is queued on its socket
//!   before the session's first byte.
//!
//! # The userspace relay ([`DataPath::Relay`])
//!
//! The relay carries the data connections itself instead of a packet filter. Its
//! policy (listeners per negotiation, who is admitted, one connection per
//! negotiation, the caps, joins, idle limits, finished transfers, resets at exit,
//! and the log lines that explain a `425` or `426`) is
//! [`ftp_proxy_core::Relay`]'s, documented once there; this crate executes its
//! decisions with mio sockets. What only the sockets add:
//!
//! * The relay listens on the rule's destination `B`, so `B` must be an address of
//!   this host: true in reverse mode (`-R`, where `B` is the address the client
//!   connected to) and for active mode (`B` is the proxy's own address). A diverted
//!   passive connection to a foreign server address needs the packet filter
//!   ([`DataPath::Kernel`]); the commit fails with `EADDRNOTAVAIL` otherwise.
//! * Proxy ports are bound for real, so one that another socket of this host holds
//!   fails the commit (`EADDRINUSE`, reported as `AddrInUse`, on which the core picks
//!   another proxy port, up to 8 times). The proxy's own outgoing
//!   sockets carry `SO_REUSEADDR` and never block a relay listener this way.
//!   Any other bind failure is `Other` with the errno; the session then ends with
//!   `pf operation failed: ...`.
//! * Refusals and resets are `SO_LINGER` 0 closes (pf would drop the SYN).
//! * The `-m` cap is the policy's global cap: pairs outlive their sessions, and the
//!   descriptor budget [`nofile_needed`] counts one pair per session.
//! * [`RelayLimits`] (the core's) come from `--relay-per-session`,
//!   `--relay-idle-timeout` and `--relay-linger`; the loop names each session's
//!   client address to the relay when it accepts it.
//!
//! Each direction of a data connection has a bounded buffer; a full one stops reading
//! its source. On Linux the bytes move with `splice(2)` through a 1 MiB kernel pipe
//! and never enter user space (about 25% faster on loopback); elsewhere, or when a
//! pair cannot get its pipes, through a 64 KiB user-space buffer.
//!
//! # Platform notes
//!
//! IPv6 listeners are `IPV6_V6ONLY` (as on OpenBSD, where there are no dual-stack
//! sockets); v4-mapped addresses are still unmapped before they reach the core.
//! `Divert::OriginalDst` picks `SOL_IP` or `SOL_IPV6` by the peer's family.

#![warn(missing_docs)]
// `unsafe` only in `sys`, which allows it and justifies each block.
#![deny(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;

use nix::errno::Errno;

/// The packet filter the kernel path commits to: the core's trait, so that this
/// crate links no filter code of its own.
pub use ftp_proxy_core::Filter;

mod dataplane;
mod pipe;
pub mod proxy_header;
mod relay;
pub mod resolver;
mod runtime;
mod signal;
mod sys;
mod tls;
mod token;

/// The relay's per-session cap and idle limits: the core's ([`ftp_proxy_core::Relay`]).
pub use ftp_proxy_core::RelayLimits;
pub use proxy_header::{Inbound, ProxyProtocol, Version as ProxyVersion};
pub use runtime::{Reload, Reloading, Runtime, ShutdownHandle, SHUTDOWN_GRACE};
pub use tls::{
    ClientTls, DataReuse, ServerTls, ServerTlsError, ServerVerify, SessionServerTls, TlsError,
    SYSTEM_ROOTS,
};

/// How the proxy learns where a diverted client originally wanted to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divert {
    /// The accepted socket's local address: pf `divert-to`, Linux TPROXY, and reverse
    /// mode (where it is simply the listener's address).
    Getsockname,
    /// Linux `SO_ORIGINAL_DST` (nftables/iptables `redirect`), falling back to
    /// `getsockname` when the connection was not NATed.
    OriginalDst,
}

/// Who carries the data connections the core negotiates.
#[derive(Debug)]
pub enum DataPath<B> {
    /// The kernel, through packet-filter rules committed by this backend.
    Kernel(B),
    /// This process: the rules are executed by a userspace relay (no firewall needed).
    Relay,
}

impl DataPath<NoFilter> {
    /// The userspace relay, with no packet filter at all (the type parameter is
    /// then [`NoFilter`], so callers need not name one).
    pub fn relay() -> DataPath<NoFilter> {
        DataPath::Relay
    }
}

/// The filter type of a [`DataPath::Relay`] that has no packet filter: it has no
/// values, so it can never be asked to commit.
#[derive(Debug)]
pub enum NoFilter {}

impl Filter for NoFilter {
    fn name(&self) -> &'static str {
        match *self {}
    }
    fn commit(
        &mut self,
        _: &ftp_proxy_core::Anchor,
        _: &[ftp_proxy_core::Rule],
    ) -> Result<(), ftp_proxy_core::FilterError> {
        match *self {}
    }
    fn remove_all(&mut self) -> Result<(), ftp_proxy_core::FilterError> {
        match *self {}
    }
}

/// What the runtime needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Address and port to listen on (`-b`, `-p`).
    pub listen: SocketAddr,
    /// Set `IP_TRANSPARENT` / `IPV6_TRANSPARENT` on the listener (Linux TPROXY).
    pub transparent: bool,
    /// How to find the original destination of an accepted connection.
    pub divert: Divert,
    /// `-m`: sizes the descriptor limit.
    pub max_sessions: u32,
    /// Whether the userspace relay carries data connections (sizes the descriptor limit).
    pub relay: bool,
}

/// The listening socket: bound, listening and non-blocking; and any more of them
/// ([`Listener::add`]: the daemon's repeated `-b`, an IPv4 and an IPv6 listener in
/// one process).
///
/// Created by [`listen`] before privileges are dropped (ports below 1024 and
/// `IP_TRANSPARENT` need them), then handed to [`run`].
#[derive(Debug)]
pub struct Listener {
    inner: std::net::TcpListener,
    /// Further listening sockets, accepted from like the first.
    more: Vec<std::net::TcpListener>,
}

impl Listener {
    /// The address the (first) socket is bound to (with the real port when port 0
    /// was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Adds the sockets of `other` (from another [`listen`]): the runtime accepts
    /// from each, and every session takes its family from its own connection.
    pub fn add(&mut self, other: Listener) {
        self.more.push(other.inner);
        self.more.extend(other.more);
    }

    /// Every socket, the first first.
    pub(crate) fn into_sockets(self) -> Vec<std::net::TcpListener> {
        std::iter::once(self.inner).chain(self.more).collect()
    }
}

impl std::os::fd::AsFd for Listener {
    /// The listening socket, for socket options the runtime does not set itself.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// A startup failure. `Display` is the original's message (ftp-proxy.c's `main`), printed
/// by the binary as `ftp-proxy: <msg>` before it exits 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// `socket(2)` for the listener failed.
    Socket(Errno),
    /// `SO_REUSEADDR` (or `IPV6_V6ONLY`) could not be set.
    SetSockOpt(Errno),
    /// `IP_TRANSPARENT` / `IPV6_TRANSPARENT` could not be set (needs CAP_NET_ADMIN).
    Transparent(Errno),
    /// `bind(2)` failed.
    Bind(Errno),
    /// `listen(2)` failed.
    Listen(Errno),
    /// `setrlimit(RLIMIT_NOFILE)` failed.
    Setrlimit(Errno),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // errx(3) in the original: no strerror.
            StartError::Socket(_) => f.write_str("socket failed"),
            StartError::SetSockOpt(e) => write!(f, "setsockopt failed: {}", e.desc()),
            StartError::Transparent(e) => {
                write!(f, "setsockopt IP_TRANSPARENT failed: {}", e.desc())
            }
            StartError::Bind(e) => write!(f, "bind failed: {}", e.desc()),
            StartError::Listen(e) => write!(f, "listen failed: {}", e.desc()),
            StartError::Setrlimit(e) => write!(f, "setrlimit: {}", e.desc()),
        }
    }
}

impl std::error::Error for StartError {}

/// A failure of the running daemon. `Display` is the message for `ftp-proxy: <msg>`.
#[derive(Debug)]
pub enum RunError {
    /// The poller could not be created or a socket could not be registered.
    Setup(std::io::Error),
    /// Installing the signal handlers or their pipe failed.
    Signals(Errno),
    /// `poll` itself failed (the original's `event_dispatch error`).
    Poll(std::io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Setup(e) => write!(f, "event loop setup failed: {e}"),
            RunError::Signals(e) => write!(f, "signal setup failed: {}", e.desc()),
            RunError::Poll(e) => write!(f, "event_dispatch error: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Listen backlog. The original uses 10; a burst of clients larger than the backlog
/// sees SYNs dropped and retried after a second. 128 still overflowed when 200 clients
/// connected at once on a busy 2-CPU machine (`TcpExtListenOverflows`, a second added to
/// the burst's wall time), so room for a burst as large as the session limit allows
/// (`-m` is at most 500). The kernel caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Creates the listening socket (as ftp-proxy.c's `main`; docs/cli.md, "Startup order"): `SO_REUSEADDR`, optional
/// transparency, bind, listen with [`LISTEN_BACKLOG`], non-blocking.
pub fn listen(opts: &Options) -> Result<Listener, StartError> {
    sys::listener(opts.listen, opts.transparent, LISTEN_BACKLOG as usize)
        .map(|inner| Listener {
            inner,
            more: Vec::new(),
        })
        .map_err(|e| match e {
            sys::ListenError::Socket(e) => StartError::Socket(e),
            sys::ListenError::SetSockOpt(e) => StartError::SetSockOpt(e),
            sys::ListenError::Transparent(e) => StartError::Transparent(e),
            sys::ListenError::Bind(e) => StartError::Bind(e),
            sys::ListenError::Listen(e) => StartError::Listen(e),
        })
}

/// Descriptors a proxy with `max_sessions` sessions may need.
///
/// The original sets `2*m + 10` (two control sockets per session plus slack). With the
/// relay each session may also hold a data listener and a data pair of two sockets
/// and, on Linux, two kernel pipes (four descriptors) for `splice(2)`: `9*m + 10`.
/// A pair that cannot get its pipes copies through user space instead.
pub fn nofile_needed(max_sessions: u32, relay: bool) -> u64 {
    let per = if relay { 9 } else { 2 };
    u64::from(max_sessions) * per + 10
}

/// Descriptors the relay cannot do without: its pipes for `splice(2)` are optional
/// (a pair without them copies through user space), its sockets are not.
const RELAY_NOFILE_MIN_PER_SESSION: u64 = 5;

/// Sets `RLIMIT_NOFILE` soft = hard = [`nofile_needed`], like the original's startup
/// step 6, but never lowers a limit that is already higher (lowering the hard limit is
/// irreversible for an unprivileged process and buys nothing).
///
/// With the relay, if the hard limit cannot be raised that far (no `CAP_SYS_RESOURCE`),
/// `5*m + 10` is enough: data connections then copy instead of splicing when short.
pub fn raise_nofile_limit(max_sessions: u32, relay: bool) -> Result<(), StartError> {
    match sys::raise_nofile(nofile_needed(max_sessions, relay)) {
        Err(Errno::EPERM) if relay => {
            let min = u64::from(max_sessions) * RELAY_NOFILE_MIN_PER_SESSION + 10;
            sys::raise_nofile(min).map_err(StartError::Setrlimit)
        }
        other => other.map_err(StartError::Setrlimit),
    }
}

/// The kernel's CSPRNG (`getrandom(2)` / `getentropy(2)`), buffered: the
/// [`RandomSource`](ftp_proxy_core::RandomSource) to give
/// [`Proxy::new`](ftp_proxy_core::Proxy::new) in
/// production, whatever the data path (the core's `Pcg32` is for tests and
/// simulations). It panics if the kernel refuses randomness (any error but EINTR),
/// rather than draw a guessable port.
///
/// Proxy ports must be unpredictable: a guessed port lets an attacker race the data
/// connection into the rdr-to rule. Draws use the core's rejection sampling
/// ([`RandomSource::uniform`](ftp_proxy_core::RandomSource::uniform)), so there is
/// no modulo bias.
#[derive(Debug, Default)]
pub struct OsRandom {
    buf: [u32; 16],
    left: usize,
}

impl OsRandom {
    /// A generator with an empty buffer (filled on first use).
    pub fn new() -> OsRandom {
        OsRandom::default()
    }
}

impl ftp_proxy_core::RandomSource for OsRandom {
    fn next_u32(&mut self) -> u32 {
        if self.left == 0 {
            sys::fill_random(&mut self.buf);
            self.left = self.buf.len();
        }
        self.left -= 1;
        self.buf[self.left]
    }
}

/// Runs the proxy until SIGHUP, SIGINT or SIGTERM, then shuts it down gracefully
/// (every session's rules removed) and returns `Ok(())`.
pub fn run<B: Filter>(
    listener: Listener,
    opts: &Options,
    proxy: ftp_proxy_core::Proxy,
    data: DataPath<B>,
) -> Result<(), RunError> {
    let mut rt = Runtime::new(listener, opts, proxy, data)?;
    rt.handle_signals()?;
    rt.run()
}
