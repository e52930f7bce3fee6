//! The userspace data relay: the mechanics of the core's data-path policy.
//!
//! Every decision (which listeners exist, who is admitted, what is connected to
//! what, which legs are joined, when a pair is idle, finished or killed) is
//! [`ftp_proxy_core::Relay`]'s, and its documentation states the semantics. This
//! module executes them with mio sockets: binds and registers listeners, accepts,
//! connects, copies both ways (through `splice(2)` pipes where possible) with
//! half-close, and resets what the policy says to reset.
//!
//! # The TLS data path
//!
//! A pair with a TLS leg (`PROT P` towards the client, `--server-tls` towards
//! the server) copies through user space, since its bytes must pass through
//! rustls. One direction, per [`copy_tls`]:
//!
//! * **TLS source** ([`pass_tls`]): rustls reads the socket itself, at most one
//!   record's worth per call (its deframing buffer holds one record), and each
//!   record's plaintext goes on before the next read:
//!   * to a **TLS destination** whose handshake is done, straight from the
//!     source's reader into the destination's writer (`fill_buf`, `write`,
//!     `consume`), which encrypts it at once into records it queues. The
//!     queue is written (one `writev` of all queued records) when the writer
//!     takes no more (its buffer limit, rustls' default 64 KiB: four records)
//!     or the source has nothing more for now, so a bulk transfer costs one
//!     `writev` per four records instead of one per record;
//!   * to a **plain destination**, or a TLS one still handshaking, into the
//!     direction's [`Pipe`], filled with as many records' plaintext as it
//!     holds, then written with one `write`.
//! * **Plain source, TLS destination**: the socket is read into the pipe (up
//!   to 64 KiB), and once the destination's queue is empty the pipe goes into
//!   its writer whole and out in one `writev`.
//!
//! Back-pressure is the same bound as for plain pairs: a destination whose
//! queue is full and whose socket takes nothing stops the delivery; the
//! plaintext then waits in the source's rustls (which reads nothing more while
//! it holds some), and the source socket is not read. In flight per direction:
//! at most the pipe (64 KiB), one or two records of plaintext in the source's
//! rustls, and the destination's queue (64 KiB and a record).
//!
//! The byte counts the policy and the session summary get (`Pipe::moved`) are
//! the plaintext bytes handed to the destination, through the pipe or past it
//! (`Pipe::passed`, only while the pipe is empty, so nothing overtakes what it
//! holds).
//!
//! Measured and not kept: a 64 KiB staging buffer per TLS leg, read with one
//! `recv` and fed to rustls a record at a time, cut the `recv` calls by four
//! but multiplied the time in `memmove` (the extra copy into rustls' buffer,
//! and rustls' own copies of each record running cold), for no gain.

use std::collections::BTreeMap;
use std::io::{self, BufRead, ErrorKind, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ftp_proxy_core::{
    Admission, Anchor, ConnectError, Decision, FilterError, Flow, IoOp, ListenerId, PairId,
    PairState, Rule, Security, SessionId, SocketError,
};
use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use nix::errno::Errno;
use rustls::{Connection, HandshakeKind, ServerConfig, ServerConnection};

use crate::pipe::{Filled, Pipe};
use crate::sys;
use crate::tls::{DataReuse, SessionServerTls};
use crate::token::{End, Tok};

/// The policy's limits, under the name the runtime has always used.
pub(crate) use ftp_proxy_core::RelayLimits;

/// Bytes buffered per direction of a data connection: the backpressure window.
pub(crate) const PIPE_CAPACITY: usize = 64 * 1024;
/// Reads or writes per data connection per event-loop turn before other sockets get theirs.
const STEPS_PER_TURN: usize = 16;
/// Accepts per data listener per turn.
const ACCEPTS_PER_TURN: usize = 16;

/// What a control session's TLS data legs are served with: towards the client
/// (`PROT P`) its own TLS server configuration (its own session cache,
/// crate::tls) and `--tls-data-reuse`; towards the server (`--server-tls`) its
/// TLS client configuration, whose session store the control connection filled.
#[derive(Debug, Clone)]
pub(crate) struct SessionTls {
    pub(crate) config: Option<Arc<ServerConfig>>,
    pub(crate) reuse: DataReuse,
    pub(crate) server: Option<SessionServerTls>,
}

/// The listening socket of one listener of the policy, and the join leg it holds.
#[derive(Debug)]
struct DataListener {
    sock: TcpListener,
    listen: SocketAddr,
    /// [`Admission::Hold`]: a join leg waiting for its partner, and what protects it.
    held: Option<(TcpStream, Security)>,
}

/// The TLS of a data connection's leg: the server side on the client's leg
/// (`PROT P`), the client side on the server's (`--server-tls`).
#[derive(Debug)]
struct TlsLeg {
    conn: Connection,
    /// Whose leg, for log lines: "client" or "server".
    peer: &'static str,
    /// `--tls-data-reuse require`: the handshake must resume a session of the
    /// same control connection.
    require_resumed: bool,
    /// The handshake's outcome has been checked.
    checked: bool,
    /// Our close_notify has been queued.
    notified: bool,
}

/// One socket of a data connection, with its readiness cache.
#[derive(Debug)]
struct Sock {
    sock: TcpStream,
    readable: bool,
    writable: bool,
    /// End of file (or error) read: nothing more comes from this socket.
    eof: bool,
    /// `shutdown(Write)` done.
    shut: bool,
    /// TLS runs on this leg: reads are decrypted and writes encrypted through it.
    tls: Option<Box<TlsLeg>>,
}

impl Sock {
    fn new(sock: TcpStream, ready: bool) -> Sock {
        Sock {
            sock,
            readable: ready,
            writable: ready,
            eof: false,
            shut: false,
            tls: None,
        }
    }

    /// Whether this is a TLS leg whose handshake is done: plaintext written to
    /// it is encrypted at once.
    fn tls_ready(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.conn.is_handshaking())
    }

    /// Writes the TLS records rustls holds; `Ok(true)` once none is left.
    fn flush_records(&mut self) -> Result<bool, StepError> {
        let Some(t) = self.tls.as_mut() else {
            return Ok(true);
        };
        while t.conn.wants_write() {
            if !self.writable {
                return Ok(false);
            }
            match t.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(StepError::Io(IoOp::Write, e)),
            }
        }
        Ok(true)
    }
}

/// A relayed data connection's sockets and buffers.
#[derive(Debug)]
struct Pair {
    accepted: Sock,
    opened: Sock,
    /// accepted -> opened.
    up: Pipe,
    /// opened -> accepted.
    down: Pipe,
    connecting: bool,
    /// The connect completed in the last step: the policy is to hear it.
    just_connected: bool,
    /// The real endpoint, for a failed connect.
    target: SocketAddr,
    /// The control session (log lines).
    session: u32,
}

/// Why a round of copying stopped for good.
#[derive(Debug)]
enum StepError {
    Connect(io::Error),
    Io(IoOp, io::Error),
    /// A TLS leg failed or ended in a way that must not pass for a complete
    /// transfer (the log line's text).
    Tls(String),
}

impl Pair {
    /// What the policy judges by: each direction's facts.
    fn state(&self) -> PairState {
        let quiet = |s: &Sock| s.eof || !s.readable;
        PairState {
            up: Flow {
                moved: self.up.moved(),
                eof: self.accepted.eof,
                shut: self.opened.shut,
                empty: self.up.is_empty(),
                quiet: quiet(&self.accepted),
            },
            down: Flow {
                moved: self.down.moved(),
                eof: self.opened.eof,
                shut: self.accepted.shut,
                empty: self.down.is_empty(),
                quiet: quiet(&self.opened),
            },
        }
    }

    fn unsent(&self) -> [Option<u32>; 2] {
        [
            sys::unsent_bytes(&self.accepted.sock),
            sys::unsent_bytes(&self.opened.sock),
        ]
    }
}

/// The relay: the policy, and the sockets it speaks of.
#[derive(Debug)]
pub(crate) struct Relay {
    /// Boxed: the runtime holds the relay in an enum beside a kernel backend.
    policy: Box<ftp_proxy_core::Relay>,
    listeners: BTreeMap<ListenerId, DataListener>,
    pairs: BTreeMap<PairId, Pair>,
    /// First legs whose second leg is being connected ([`Decision::Connect`]): an
    /// accepted connection (ready), or a bridge's dialled one ([`Decision::Dial`];
    /// ready once its socket says so), with what protects it.
    opening: BTreeMap<PairId, (TcpStream, bool, Security)>,
    /// The TLS of each live control session's data connections (client TLS on).
    tls: BTreeMap<u32, SessionTls>,
    hot: Vec<Tok>,
    /// Move data with `splice(2)` through kernel pipes where possible.
    zero_copy: bool,
}

impl Relay {
    /// A relay carrying at most `max_pairs` data connections at once.
    pub(crate) fn new(max_pairs: usize) -> Relay {
        Relay {
            policy: Box::new(ftp_proxy_core::Relay::new(max_pairs)),
            listeners: BTreeMap::new(),
            pairs: BTreeMap::new(),
            opening: BTreeMap::new(),
            tls: BTreeMap::new(),
            hot: Vec::new(),
            zero_copy: cfg!(target_os = "linux"),
        }
    }

    /// Chooses between `splice(2)` (Linux) and copying through user space for data
    /// connections accepted from now on.
    pub(crate) fn set_zero_copy(&mut self, on: bool) {
        self.zero_copy = on;
    }

    /// Sets the per-session cap and the timeouts of data connections.
    pub(crate) fn set_limits(&mut self, limits: RelayLimits) {
        self.policy.set_limits(limits);
    }

    /// A control session from `client` has begun ([`ftp_proxy_core::Relay::session_started`]).
    pub(crate) fn session_started(
        &mut self,
        session: u32,
        client: IpAddr,
        tls: Option<SessionTls>,
    ) {
        self.policy.session_started(SessionId(session), client);
        if let Some(tls) = tls {
            self.tls.insert(session, tls);
        }
    }

    /// The session came through a load balancer ([`ftp_proxy_core::Relay::session_via`]).
    pub(crate) fn session_via(&mut self, session: u32, balancer: IpAddr) {
        self.policy.session_via(SessionId(session), balancer);
    }

    /// The control session has ended; returns the bytes (up, down) its data
    /// connections have moved ([`ftp_proxy_core::Relay::session_ended`]). Its TLS
    /// configuration goes: no later data connection can resume its sessions.
    pub(crate) fn session_ended(&mut self, session: u32) -> (u64, u64) {
        self.tls.remove(&session);
        self.policy.session_ended(SessionId(session))
    }

    /// The TLS of a leg of `pair` that `security` protects, from its session's
    /// configuration; `None` (logged) if the session has none for that side.
    fn tls_leg(&self, pair: PairId, security: Security) -> Option<Box<TlsLeg>> {
        let session = self.policy.session_of(pair)?;
        let t = self.tls.get(&session.0);
        let (made, peer, require_resumed) = match security {
            Security::Tls => {
                let Some(config) = t.and_then(|t| t.config.clone()) else {
                    warn!("{session} data connection wants TLS, but its session has no TLS configuration");
                    return None;
                };
                let require = t.is_some_and(|t| t.reuse == DataReuse::Require);
                (
                    ServerConnection::new(config).map(Connection::from),
                    "client",
                    require,
                )
            }
            Security::TlsToServer => {
                let Some(server) = t.and_then(|t| t.server.as_ref()) else {
                    warn!("{session} data connection wants TLS to the server, but its session has no TLS towards servers");
                    return None;
                };
                (server.connect().map(Connection::from), "server", false)
            }
            _ => return None,
        };
        match made {
            Ok(conn) => Some(Box::new(TlsLeg {
                conn,
                peer,
                require_resumed,
                checked: false,
                notified: false,
            })),
            Err(e) => {
                warn!("{session} cannot start TLS on a data connection: {e}");
                None
            }
        }
    }

    /// `sock` as a leg of `pair`, with TLS when `security` says so; `None` when
    /// TLS cannot be had (the caller fails the pair).
    fn leg(&self, pair: PairId, sock: TcpStream, ready: bool, security: Security) -> Option<Sock> {
        let mut s = Sock::new(sock, ready);
        if security != Security::Plain {
            match self.tls_leg(pair, security) {
                Some(t) => s.tls = Some(t),
                None => {
                    // A reset, never a clean close: that would look like an
                    // empty, complete transfer.
                    reset(&s.sock);
                    return None;
                }
            }
        }
        Some(s)
    }

    /// The session ended on a reply desync ([`ftp_proxy_core::Relay::kill_session`]).
    pub(crate) fn kill_session(&mut self, registry: &Registry, session: u32) {
        self.policy.kill_session(SessionId(session));
        self.drain(registry);
    }

    /// The session of `anchor` has relayed a transfer's final reply
    /// ([`ftp_proxy_core::Relay::transfer_done`]).
    pub(crate) fn transfer_done(&mut self, registry: &Registry, anchor: &Anchor) {
        self.policy.transfer_done(SessionId(anchor.session));
        self.drain(registry);
    }

    /// When [`sweep`](Self::sweep) is next due (`None` without data connections).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.policy.poll_timeout()
    }

    /// Checks the data connections against their limits ([`ftp_proxy_core::Relay::handle_timeout`]).
    pub(crate) fn sweep(&mut self, registry: &Registry, now: Instant) {
        let pairs = &self.pairs;
        self.policy
            .handle_timeout(now, |id| pairs.get(&id).map_or([None, None], Pair::unsent));
        self.drain(registry);
    }

    /// Number of data listeners (for tests and logs).
    pub(crate) fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Number of data connections in progress.
    pub(crate) fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// Replaces the anchor's rules, like a pf transaction: on error nothing changed.
    /// The policy plans it ([`ftp_proxy_core::Relay::prepare`]); every new listener
    /// is bound before it is put in force.
    pub(crate) fn commit(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
        rules: &[Rule],
    ) -> Result<(), FilterError> {
        let prepared = self.policy.prepare(*anchor, rules)?;
        let mut created: Vec<(ListenerId, DataListener)> = Vec::new();
        for (id, listen) in prepared.listen() {
            match bind(registry, id, listen) {
                Ok(l) => created.push((id, l)),
                Err(e) => {
                    for (_, mut l) in created {
                        let _ = registry.deregister(&mut l.sock);
                    }
                    return Err(e);
                }
            }
        }
        self.policy.commit(Instant::now(), prepared);
        for (id, l) in created {
            self.listeners.insert(id, l);
            // A connection may already be waiting by the time we register.
            self.hot.push(Tok::DataListener(id.0));
        }
        self.drain(registry);
        Ok(())
    }

    /// Drops every listener and data connection (at exit, when the loop stops):
    /// each pair still in progress is reset on both sides.
    pub(crate) fn remove_all(&mut self, registry: &Registry) {
        self.policy.remove_all();
        self.drain(registry);
        self.hot.clear();
    }

    /// Whether some socket still has work from an earlier turn.
    pub(crate) fn is_hot(&self) -> bool {
        !self.hot.is_empty()
    }

    /// Handles a readiness event for one of the relay's tokens.
    pub(crate) fn event(&mut self, registry: &Registry, tok: Tok, ev: &mio::event::Event) {
        match tok {
            Tok::DataListener(id) => self.accept(registry, ListenerId(id)),
            Tok::Data(id, end) => {
                let Some(pair) = self.pairs.get_mut(&PairId(id)) else {
                    return;
                };
                let s = match end {
                    End::Accepted => &mut pair.accepted,
                    End::Opened => &mut pair.opened,
                };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    s.readable = true;
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    s.writable = true;
                }
                self.service(PairId(id));
            }
            _ => {}
        }
        self.drain(registry);
    }

    /// Serves the sockets left with work by the previous turn.
    pub(crate) fn run_hot(&mut self, registry: &Registry) {
        for tok in std::mem::take(&mut self.hot) {
            match tok {
                Tok::DataListener(id) => self.accept(registry, ListenerId(id)),
                Tok::Data(id, _) => self.service(PairId(id)),
                _ => {}
            }
        }
        self.drain(registry);
    }

    /// Executes the policy's decisions, in order, until none is left.
    fn drain(&mut self, registry: &Registry) {
        while let Some(d) = self.policy.poll_decision() {
            match d {
                Decision::StopListening(id) => {
                    if let Some(mut l) = self.listeners.remove(&id) {
                        let _ = registry.deregister(&mut l.sock);
                        if let Some((held, _)) = l.held.take() {
                            reset(&held);
                        }
                    }
                }
                Decision::Dial {
                    pair,
                    to,
                    from,
                    security,
                } => match sys::start_connect(to, from) {
                    Ok(s) => {
                        self.opening
                            .insert(pair, (TcpStream::from_std(s), false, security));
                    }
                    Err(e) => {
                        let error = SocketError::from_errno(e.errno() as i32);
                        self.policy.failed(Instant::now(), pair, IoOp::Setup, error);
                    }
                },
                Decision::Connect {
                    pair,
                    to,
                    from,
                    security,
                } => self.connect(registry, pair, to, from, security),
                Decision::Refresh(pair) => {
                    if let Some(p) = self.pairs.get_mut(&pair) {
                        // A read that finds nothing says WouldBlock and clears them again.
                        p.accepted.readable = true;
                        p.opened.readable = true;
                        self.service(pair);
                    }
                }
                Decision::ResetHeld(id) => {
                    if let Some((held, _)) = self.listeners.get_mut(&id).and_then(|l| l.held.take())
                    {
                        reset(&held);
                    }
                }
                Decision::Close { pair, reset: r, .. } => {
                    if let Some((stream, ..)) = self.opening.remove(&pair) {
                        reset(&stream);
                    }
                    if let Some(mut p) = self.pairs.remove(&pair) {
                        let _ = registry.deregister(&mut p.accepted.sock);
                        let _ = registry.deregister(&mut p.opened.sock);
                        if r {
                            reset(&p.accepted.sock);
                            reset(&p.opened.sock);
                        } else {
                            // A clean end: a TLS leg hears it as a close_notify, as
                            // far as its socket takes it now.
                            for leg in [&mut p.accepted, &mut p.opened] {
                                if let Some(t) = leg.tls.as_mut().filter(|t| !t.notified) {
                                    t.notified = true;
                                    t.conn.send_close_notify();
                                    leg.writable = true;
                                    let _ = leg.flush_records();
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn accept(&mut self, registry: &Registry, id: ListenerId) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(l) = self.listeners.get_mut(&id) else {
                return;
            };
            let (stream, peer) = match l.sock.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == ErrorKind::Interrupted
                        || e.kind() == ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                Err(e) => {
                    warn!("relay: accept on {} failed: {e}", l.listen);
                    return;
                }
            };
            let peer = sys::unmap(peer);
            match self.policy.accept(Instant::now(), id, peer) {
                Admission::Open { pair, security } => {
                    sys::nodelay(&stream);
                    self.opening.insert(pair, (stream, true, security));
                }
                Admission::Hold { security } => {
                    sys::nodelay(&stream);
                    if let Some(l) = self.listeners.get_mut(&id) {
                        l.held = Some((stream, security));
                    }
                }
                Admission::Join {
                    pair,
                    with,
                    security,
                } => {
                    sys::nodelay(&stream);
                    let Some((other, other_security)) =
                        self.listeners.get_mut(&with).and_then(|l| l.held.take())
                    else {
                        // The policy paired it with a leg this relay does not hold:
                        // the pair ends at once (and is logged), not at the idle limit.
                        reset(&stream);
                        let error = SocketError::from(ErrorKind::NotConnected);
                        self.policy.failed(Instant::now(), pair, IoOp::Setup, error);
                        self.drain(registry);
                        continue;
                    };
                    let target = other.local_addr().unwrap_or(peer);
                    let legs = (
                        self.leg(pair, stream, true, security),
                        self.leg(pair, other, true, other_security),
                    );
                    let (Some(accepted), Some(opened)) = legs else {
                        self.tls_failed(registry, pair);
                        continue;
                    };
                    let p = self.pair(pair, accepted, opened, false, target);
                    self.insert_pair(registry, pair, p);
                }
                // Every refusal is a reset: a clean close would look like an empty
                // transfer to whoever connected.
                _ => reset(&stream),
            }
            // Connect decisions of an admitted connection, before the next accept.
            self.drain(registry);
        }
        self.hot.push(Tok::DataListener(id.0));
    }

    /// Executes a [`Decision::Connect`]: starts the connection to the real endpoint.
    fn connect(
        &mut self,
        registry: &Registry,
        pair: PairId,
        to: SocketAddr,
        from: Option<SocketAddr>,
        security: Security,
    ) {
        if !self.opening.contains_key(&pair) {
            return;
        }
        let now = Instant::now();
        let opened = match sys::start_connect(to, from) {
            Ok(s) => s,
            Err(sys::ConnectError::Bind(e)) => {
                let error = SocketError::from_errno(e as i32);
                let from = from.unwrap_or(to);
                return self
                    .policy
                    .connect_failed(now, pair, ConnectError::Bind { from, error });
            }
            Err(e) => {
                let error = SocketError::from_errno(e.errno() as i32);
                return self
                    .policy
                    .connect_failed(now, pair, ConnectError::Start { to, error });
            }
        };
        let Some((stream, ready, first_security)) = self.opening.remove(&pair) else {
            return;
        };
        let legs = (
            self.leg(pair, stream, ready, first_security),
            self.leg(pair, TcpStream::from_std(opened), false, security),
        );
        let (Some(accepted), Some(opened)) = legs else {
            return self.tls_failed(registry, pair);
        };
        let p = self.pair(pair, accepted, opened, true, to);
        self.insert_pair(registry, pair, p);
    }

    /// A new pair of two legs. A pair with a TLS leg copies through user space:
    /// the bytes must pass through rustls, which `splice(2)` would bypass.
    fn pair(
        &self,
        id: PairId,
        accepted: Sock,
        opened: Sock,
        connecting: bool,
        target: SocketAddr,
    ) -> Pair {
        let zero_copy = self.zero_copy && accepted.tls.is_none() && opened.tls.is_none();
        Pair {
            accepted,
            opened,
            up: Pipe::new(PIPE_CAPACITY, zero_copy),
            down: Pipe::new(PIPE_CAPACITY, zero_copy),
            connecting,
            just_connected: false,
            target,
            session: self.policy.session_of(id).map_or(0, |s| s.0),
        }
    }

    /// A pair whose TLS leg could not be set up ends at once (reset, logged).
    fn tls_failed(&mut self, registry: &Registry, pair: PairId) {
        let error = SocketError::from(ErrorKind::Unsupported);
        self.policy.failed(Instant::now(), pair, IoOp::Setup, error);
        self.drain(registry);
    }

    /// Registers a new pair's sockets and starts copying.
    fn insert_pair(&mut self, registry: &Registry, id: PairId, mut pair: Pair) {
        let rw = Interest::READABLE | Interest::WRITABLE;
        let r1 = registry.register(
            &mut pair.accepted.sock,
            Tok::Data(id.0, End::Accepted).token(),
            rw,
        );
        let r2 = registry.register(
            &mut pair.opened.sock,
            Tok::Data(id.0, End::Opened).token(),
            rw,
        );
        self.pairs.insert(id, pair);
        if let Err(e) = r1.and(r2) {
            debug!("relay: cannot register a data connection: {e}");
            self.policy
                .failed(Instant::now(), id, IoOp::Setup, SocketError::from(&e));
            return;
        }
        self.service(id);
    }

    /// Moves bytes of one data connection until it would block or its turn is up,
    /// and tells the policy what the sockets say (the caller drains its decisions).
    fn service(&mut self, id: PairId) {
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        let outcome = pair.step();
        let now = Instant::now();
        if std::mem::take(&mut pair.just_connected) {
            self.policy.connected(now, id);
        }
        let state = pair.state();
        let target = pair.target;
        match outcome {
            Ok(more) => {
                if more {
                    self.hot.push(Tok::Data(id.0, End::Accepted));
                }
                self.policy.report(now, id, state);
            }
            Err(StepError::Connect(e)) => {
                let error = SocketError::from(&e);
                self.policy
                    .connect_failed(now, id, ConnectError::Refused { to: target, error });
            }
            Err(StepError::Io(op, e)) => {
                self.policy.report(now, id, state);
                self.policy.failed(now, id, op, SocketError::from(&e));
            }
            Err(StepError::Tls(why)) => {
                warn!(
                    "#{} data connection reset: {why}",
                    self.pairs.get(&id).map_or(0, |p| p.session)
                );
                self.policy.report(now, id, state);
                let error = SocketError::from(ErrorKind::ConnectionAborted);
                self.policy.failed(now, id, IoOp::Read, error);
            }
        }
    }
}

/// Binds and registers the listening socket of one new listener.
fn bind(
    registry: &Registry,
    id: ListenerId,
    listen: SocketAddr,
) -> Result<DataListener, FilterError> {
    let std = sys::data_listener(listen).map_err(|e| match e {
        Errno::EADDRINUSE => FilterError::AddrInUse,
        e => FilterError::Other {
            errno: e as i32,
            text: format!("relay bind {listen}: {}", e.desc()),
        },
    })?;
    let mut sock = TcpListener::from_std(std);
    registry
        .register(
            &mut sock,
            Tok::DataListener(id.0).token(),
            Interest::READABLE,
        )
        .map_err(|e| FilterError::Other {
            errno: e.raw_os_error().unwrap_or(0),
            text: format!("relay register: {e}"),
        })?;
    Ok(DataListener {
        sock,
        listen,
        held: None,
    })
}

/// Sets `SO_LINGER` to zero so that closing sends RST instead of FIN.
fn reset<F: std::os::fd::AsFd>(sock: &F) {
    let _ = nix::sys::socket::setsockopt(
        sock,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

impl Pair {
    /// One bounded round of copying. `Ok(true)`: work is left for the next turn;
    /// `Ok(false)`: everything would block, or both directions have ended;
    /// `Err`: the connection is over.
    fn step(&mut self) -> Result<bool, StepError> {
        if self.connecting {
            if !self.opened.writable {
                // Nothing to learn yet; the accepted side may still fill its pipe below.
            } else {
                match self.opened.sock.take_error() {
                    Ok(Some(e)) | Err(e) => return Err(StepError::Connect(e)),
                    Ok(None) => {}
                }
                match self.opened.sock.peer_addr() {
                    Ok(_) => {
                        self.connecting = false;
                        self.just_connected = true;
                    }
                    Err(e)
                        if e.kind() == ErrorKind::NotConnected
                            || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                    {
                        self.opened.writable = false;
                    }
                    Err(e) => return Err(StepError::Connect(e)),
                }
            }
        }
        for _ in 0..STEPS_PER_TURN {
            let mut progress = false;
            progress |= copy(
                &mut self.up,
                &mut self.accepted,
                &mut self.opened,
                !self.connecting,
            )?;
            progress |= copy(
                &mut self.down,
                &mut self.opened,
                &mut self.accepted,
                !self.connecting,
            )?;
            if self.accepted.shut && self.opened.shut {
                return Ok(false);
            }
            if !progress {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// One direction: write what is buffered, read more if there is room, and pass an
/// end of file on once everything before it is written. Returns whether anything moved.
fn copy(
    pipe: &mut Pipe,
    src: &mut Sock,
    dst: &mut Sock,
    connected: bool,
) -> Result<bool, StepError> {
    if src.tls.is_some() || dst.tls.is_some() {
        return copy_tls(pipe, src, dst, connected);
    }
    let mut progress = false;
    if connected && dst.writable && !pipe.is_empty() {
        match pipe.drain(&mut dst.sock) {
            Ok(_) => progress = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => dst.writable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(e) => return Err(StepError::Io(IoOp::Write, e)),
        }
    }
    if src.readable && !src.eof && !pipe.is_full() {
        match pipe.fill(&mut src.sock) {
            Ok(Filled::Eof) => {
                src.eof = true;
                progress = true;
            }
            Ok(Filled::Bytes(_)) => progress = true,
            Ok(Filled::SourceEmpty) => src.readable = false,
            // Nothing moved; the drain above makes room once the destination can take it.
            Ok(Filled::NoRoom) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(e) => return Err(StepError::Io(IoOp::Read, e)),
        }
    }
    if connected && src.eof && pipe.is_empty() && !dst.shut {
        dst.shut = true;
        progress = true;
        if let Err(e) = dst.sock.shutdown(Shutdown::Write) {
            if e.kind() != ErrorKind::NotConnected {
                return Err(StepError::Io(IoOp::Shutdown, e));
            }
        }
    }
    Ok(progress)
}

/// [`copy`] for a direction with a TLS leg at either end (the client's leg of a
/// `PROT P` data connection, the server's with `--server-tls`): the handshake
/// runs as the leg's bytes come, records are written before any new plaintext
/// is taken in, and the end of file passed on to a TLS leg is a close_notify,
/// then the FIN. A TLS source is read by [`pass_tls`].
///
/// A TLS source that ends without a close_notify after carrying data is not a
/// complete transfer (RFC 4217 section 9 leaves truncation to the TLS close): the
/// pair fails, so the other leg is reset and the server reports the upload failed
/// instead of keeping a cut-off file.
fn copy_tls(
    pipe: &mut Pipe,
    src: &mut Sock,
    dst: &mut Sock,
    connected: bool,
) -> Result<bool, StepError> {
    let mut progress = false;
    // Out: records first, then what the pipe holds once the handshake is done.
    if connected && dst.tls.is_some() {
        let flushed = dst.flush_records()?;
        if flushed && dst.tls_ready() && !pipe.is_empty() {
            let t = dst.tls.as_mut().expect("checked");
            // The queue is empty and the pipe holds at most its limit: the
            // writer takes it all.
            match pipe.drain_into(&mut t.conn.writer()) {
                Ok(_) => progress = true,
                Err(e) => return Err(StepError::Io(IoOp::Write, e)),
            }
            dst.flush_records()?;
        }
    } else if connected && dst.writable && !pipe.is_empty() {
        match pipe.drain(&mut dst.sock) {
            Ok(_) => progress = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => dst.writable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(e) => return Err(StepError::Io(IoOp::Write, e)),
        }
    }
    // In.
    if !src.eof {
        if src.tls.is_some() {
            progress |= pass_tls(pipe, src, dst, connected)?;
        } else if src.readable && !pipe.is_full() {
            match pipe.fill(&mut src.sock) {
                Ok(Filled::Eof) => {
                    src.eof = true;
                    progress = true;
                }
                Ok(Filled::Bytes(_)) => progress = true,
                Ok(Filled::SourceEmpty) => src.readable = false,
                Ok(Filled::NoRoom) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
                Err(e) => return Err(StepError::Io(IoOp::Read, e)),
            }
        }
    }
    // The end of file, passed on.
    if connected && src.eof && pipe.is_empty() && !dst.shut {
        if let Some(t) = dst.tls.as_mut() {
            if !t.notified {
                t.notified = true;
                t.conn.send_close_notify();
                progress = true;
            }
        }
        if dst.flush_records()? {
            dst.shut = true;
            progress = true;
            if let Err(e) = dst.sock.shutdown(Shutdown::Write) {
                if e.kind() != ErrorKind::NotConnected {
                    return Err(StepError::Io(IoOp::Shutdown, e));
                }
            }
        }
    }
    Ok(progress)
}

/// Rounds of [`pass_tls`] per step: each delivers one record's plaintext or
/// reads the socket once (about a record), so a step moves about four records,
/// a full queue of the destination's (one `writev`), and a turn of
/// [`STEPS_PER_TURN`] about 1 MiB, as a plain pair's 64 KiB pipe does.
const TLS_ROUNDS_PER_STEP: usize = 8;

/// What [`deliver`] did with the plaintext a TLS source holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Some went on (or the destination's records went out, making room).
    Moved,
    /// None is held: rustls needs more records.
    Dry,
    /// The destination takes nothing more now (back-pressure).
    Blocked,
    /// The close_notify came, after everything before it.
    Eof,
}

/// Reads a TLS source and passes its plaintext on (module docs, "The TLS data
/// path"): rustls reads a record's worth from the socket, each record's
/// plaintext goes on before the next read, and the records written to a TLS
/// destination are sent once its queue is full or the source has nothing more.
/// Returns whether anything moved.
///
/// Back-pressure: a destination that takes nothing more stops the delivery,
/// the plaintext stays in rustls, and the socket is not read again until
/// rustls holds none.
fn pass_tls(
    pipe: &mut Pipe,
    src: &mut Sock,
    dst: &mut Sock,
    connected: bool,
) -> Result<bool, StepError> {
    let mut progress = false;
    for _ in 0..TLS_ROUNDS_PER_STEP {
        match deliver(pipe, src, dst, connected)? {
            Delivered::Moved => {
                progress = true;
                continue;
            }
            Delivered::Eof => {
                src.eof = true;
                progress = true;
                break;
            }
            Delivered::Blocked => break,
            Delivered::Dry => {}
        }
        if !src.readable {
            break;
        }
        let t = src.tls.as_mut().expect("a TLS source");
        // rustls reads at most a record's worth per call (its own buffer); an
        // end of the TCP stream is an empty read, after which its reader tells
        // a close_notify from a cut.
        match t.conn.read_tls(&mut src.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                src.readable = false;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                progress = true;
                continue;
            }
            Err(e) => return Err(StepError::Io(IoOp::Read, e)),
        }
        progress = true;
        process_records(src)?;
    }
    // The records queued by this round, in as few writes as the socket takes.
    if connected && dst.tls.is_some() {
        dst.flush_records()?;
    }
    Ok(progress)
}

/// Moves plaintext a TLS source holds towards the destination: straight into
/// the destination's TLS writer when that can take it (no copy through the
/// pipe), into the pipe otherwise (a plain destination, whose socket then gets
/// several records' plaintext per write, or a TLS one still handshaking).
fn deliver(
    pipe: &mut Pipe,
    src: &mut Sock,
    dst: &mut Sock,
    connected: bool,
) -> Result<Delivered, StepError> {
    let t = src.tls.as_mut().expect("a TLS source");
    let got = if connected && pipe.is_empty() && dst.tls_ready() {
        let d = dst.tls.as_mut().expect("checked");
        let mut reader = t.conn.reader();
        let (offered, taken) = match reader.fill_buf() {
            Ok([]) => return Ok(Delivered::Eof),
            Ok(chunk) => match d.conn.writer().write(chunk) {
                Ok(n) => (chunk.len(), n),
                Err(e) => return Err(StepError::Io(IoOp::Write, e)),
            },
            Err(e) => return reader_failed(pipe, t.peer, e),
        };
        reader.consume(taken);
        pipe.passed(taken);
        if taken < offered && !dst.flush_records()? {
            // The destination's queue is at its limit and its socket is full.
            return Ok(Delivered::Blocked);
        }
        return Ok(Delivered::Moved);
    } else if !pipe.is_full() {
        pipe.fill_from(&mut t.conn.reader())
    } else {
        return Ok(Delivered::Blocked);
    };
    match got {
        Ok(Filled::Eof) => Ok(Delivered::Eof),
        Ok(Filled::Bytes(_)) => Ok(Delivered::Moved),
        Ok(Filled::SourceEmpty | Filled::NoRoom) => Ok(Delivered::Dry),
        Err(e) => reader_failed(pipe, t.peer, e),
    }
}

/// A TLS source's plaintext reader said `e`: nothing held now (`WouldBlock`),
/// or the TCP stream ended without close_notify, which ends the pair unless
/// nothing ever came this way (the direction of a download's acknowledgements:
/// an end like a FIN).
fn reader_failed(pipe: &Pipe, peer: &'static str, e: io::Error) -> Result<Delivered, StepError> {
    match e.kind() {
        ErrorKind::WouldBlock => Ok(Delivered::Dry),
        ErrorKind::UnexpectedEof if pipe.moved() > 0 || !pipe.is_empty() => {
            let (from, other) = match peer {
                "server" => ("server", "client"),
                _ => ("client", "server"),
            };
            Err(StepError::Tls(format!(
                "the {from}'s TLS leg ended without close_notify after {} bytes passed on: \
                 the transfer may be cut short, so the {other}'s leg is reset",
                pipe.moved()
            )))
        }
        ErrorKind::UnexpectedEof => Ok(Delivered::Eof),
        _ => Err(StepError::Io(IoOp::Read, e)),
    }
}

/// After rustls took records from a TLS source: decrypts them, checks a
/// finished handshake against `--tls-data-reuse`, and sends what rustls
/// answers (the handshake's flights, alerts) on the same socket.
fn process_records(src: &mut Sock) -> Result<(), StepError> {
    let t = src.tls.as_mut().expect("a TLS source");
    if let Err(e) = t.conn.process_new_packets() {
        // The alert rustls queued, if the socket takes it.
        let _ = src.flush_records();
        let peer = src.tls.as_ref().map_or("client", |t| t.peer);
        return Err(StepError::Tls(format!(
            "TLS on the {peer}'s leg failed: {e}"
        )));
    }
    if !t.checked && !t.conn.is_handshaking() {
        t.checked = true;
        let resumed = t.conn.handshake_kind() == Some(HandshakeKind::Resumed);
        debug!(
            "relay: data connection TLS handshake with the {} done ({}, {:?})",
            t.peer,
            if resumed { "resumed" } else { "full" },
            t.conn.protocol_version()
        );
        if t.require_resumed && !resumed {
            return Err(StepError::Tls(
                "its TLS handshake did not resume the control connection's \
                 TLS session (--tls-data-reuse require)"
                    .to_string(),
            ));
        }
    }
    src.flush_records()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftp_proxy_core::{data_rules, Mode, RuleOptions, SessionAddrs};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::path::PathBuf;

    fn addrs() -> SessionAddrs {
        SessionAddrs {
            client: "127.0.0.2".parse().unwrap(),
            server: "127.0.0.3".parse().unwrap(),
            orig_server: "127.0.0.1".parse().unwrap(),
            proxy: "127.0.0.4".parse().unwrap(),
            client_rdomain: 0,
        }
    }

    fn rules_for(listen_ip: &str, proxy_port: u16) -> Vec<Rule> {
        rules_to(listen_ip, 40000, proxy_port)
    }

    /// Passive rules: listen on `listen_ip:proxy_port`, admit 127.0.0.2, connect to
    /// 127.0.0.3:`server_port` from 127.0.0.4.
    fn rules_to(listen_ip: &str, server_port: u16, proxy_port: u16) -> Vec<Rule> {
        let a = SessionAddrs {
            orig_server: listen_ip.parse().unwrap(),
            ..addrs()
        };
        data_rules(
            Mode::Passive,
            &a,
            server_port,
            proxy_port,
            &RuleOptions::default(),
        )
        .to_vec()
    }

    const ANCHOR: Anchor = Anchor { pid: 1, session: 1 };

    #[test]
    fn commit_listens_and_empty_commit_removes() {
        let poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        relay
            .commit(poll.registry(), &ANCHOR, &rules_for("127.0.0.1", port))
            .unwrap();
        assert_eq!(relay.listener_count(), 1);
        // Really listening: a connect succeeds.
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The same rules again keep the same socket (rebinding would fail).
        relay
            .commit(poll.registry(), &ANCHOR, &rules_for("127.0.0.1", port))
            .unwrap();
        assert_eq!(relay.listener_count(), 1);
        relay.commit(poll.registry(), &ANCHOR, &[]).unwrap();
        assert_eq!(relay.listener_count(), 0);
        let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    }

    #[test]
    fn port_in_use_is_busy_and_changes_nothing() {
        let poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        relay
            .commit(poll.registry(), &ANCHOR, &rules_for("127.0.0.1", free))
            .unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let r = relay.commit(
            poll.registry(),
            &ANCHOR,
            &rules_for("127.0.0.1", taken_port),
        );
        assert_eq!(r, Err(FilterError::AddrInUse));
        // The old rules are still in force.
        assert_eq!(relay.listener_count(), 1);
        std::net::TcpStream::connect(("127.0.0.1", free)).unwrap();
    }

    #[test]
    fn foreign_address_is_a_filter_error_with_errno() {
        let poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        // 203.0.113.0/24 (TEST-NET-3) is on no interface of a test machine.
        let r = relay.commit(poll.registry(), &ANCHOR, &rules_for("203.0.113.7", 50000));
        match r {
            Err(FilterError::Other { errno, text }) => {
                assert_eq!(errno, libc::EADDRNOTAVAIL);
                assert!(text.starts_with("relay bind 203.0.113.7:50000: "), "{text}");
            }
            other => panic!("expected Other, got {other:?}"),
        }
        assert_eq!(relay.listener_count(), 0);
    }

    /// Runs the relay's share of the loop until `done` holds (or 5 s pass).
    fn pump(poll: &mut mio::Poll, relay: &mut Relay, mut done: impl FnMut(&mut Relay) -> bool) {
        let mut events = mio::Events::with_capacity(64);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !done(relay) {
            assert!(Instant::now() < deadline, "the relay did not get there");
            poll.poll(&mut events, Some(std::time::Duration::from_millis(10)))
                .unwrap();
            for ev in events.iter() {
                if let Some(tok) = Tok::from_token(ev.token()) {
                    relay.event(poll.registry(), tok, ev);
                }
            }
            relay.run_hot(poll.registry());
            relay.sweep(poll.registry(), Instant::now());
        }
    }

    /// A blocking connection from `from` to `to`.
    fn connect_from(from: &str, to: SocketAddr) -> std::net::TcpStream {
        let bind = SocketAddr::new(from.parse().unwrap(), 0);
        let s = sys::start_connect(to, Some(bind)).unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s
    }

    /// Reads exactly `want` from `s` while the relay runs.
    fn expect_bytes(
        poll: &mut mio::Poll,
        relay: &mut Relay,
        s: &mut std::net::TcpStream,
        want: &[u8],
    ) {
        use std::io::Read;
        s.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        pump(poll, relay, |_| {
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
            got.len() >= want.len()
        });
        assert_eq!(got, want);
        s.set_nonblocking(false).unwrap();
    }

    /// The core can draw a live proxy port again for another target: the kept
    /// listener then sends the new negotiation's one connection to the new target,
    /// from the new source, while the pair in progress keeps its own.
    #[test]
    fn a_live_proxy_port_reused_for_another_target_reaches_the_new_target() {
        use std::io::Write;
        let mut poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        let old_server = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let new_server = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let (old_port, new_port) = (
            old_server.local_addr().unwrap().port(),
            new_server.local_addr().unwrap().port(),
        );
        let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], proxy_port));
        relay
            .commit(
                poll.registry(),
                &ANCHOR,
                &rules_to("127.0.0.1", old_port, proxy_port),
            )
            .unwrap();
        let mut c1 = connect_from("127.0.0.2", listen);
        pump(&mut poll, &mut relay, |r| r.pair_count() == 1);
        let (mut s1, from1) = old_server.accept().unwrap();
        assert_eq!(
            from1.ip().to_string(),
            "127.0.0.4",
            "from the nat-to source"
        );

        // The next negotiation draws the same proxy port for another server port.
        relay
            .commit(
                poll.registry(),
                &ANCHOR,
                &rules_to("127.0.0.1", new_port, proxy_port),
            )
            .unwrap();
        assert_eq!(relay.listener_count(), 1, "the listener is kept");
        let mut c2 = connect_from("127.0.0.2", listen);
        pump(&mut poll, &mut relay, |r| r.pair_count() == 2);
        let (mut s2, from2) = new_server.accept().unwrap();
        assert_eq!(from2.ip().to_string(), "127.0.0.4");
        old_server.set_nonblocking(true).unwrap();
        assert_eq!(
            old_server.accept().map(|_| ()).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "nothing more reaches the old target"
        );

        // Each pair carries its own bytes, both ways.
        c1.write_all(b"old negotiation").unwrap();
        expect_bytes(&mut poll, &mut relay, &mut s1, b"old negotiation");
        c2.write_all(b"new negotiation").unwrap();
        expect_bytes(&mut poll, &mut relay, &mut s2, b"new negotiation");
        s2.write_all(b"down").unwrap();
        expect_bytes(&mut poll, &mut relay, &mut c2, b"down");

        // The new negotiation has had its one connection: a third is reset.
        let mut c3 = connect_from("127.0.0.2", listen);
        c3.set_nonblocking(true).unwrap();
        let mut seen = None;
        pump(&mut poll, &mut relay, |_| {
            use std::io::Read;
            let mut b = [0u8; 1];
            match c3.read(&mut b) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                other => {
                    seen = Some(other.map_err(|e| e.kind()));
                    true
                }
            }
        });
        assert_eq!(seen, Some(Err(ErrorKind::ConnectionReset)));
        assert_eq!(relay.pair_count(), 2);
    }

    /// A self-signed certificate for "localhost" made by openssl(1), and its key.
    fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let dir = std::env::temp_dir().join(format!("ftp-proxy-relay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key): (PathBuf, PathBuf) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl made a certificate");
        let chain = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (chain, key)
    }

    /// A client and a server connection with their handshake done in memory.
    fn connected() -> (ClientConnection, ServerConnection) {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = certificate();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        // Bounded: a TLS 1.3 handshake takes a few flights.
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (c, s)
    }

    /// A connected loopback pair: the relay's end non-blocking, the peer's
    /// blocking.
    fn socket_pair() -> (TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_nodelay(true).unwrap();
        // Small kernel buffers, so that a peer which does not read makes the
        // relay's writes block within a few records.
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&ours, sockopt::SndBuf, &16_384).unwrap();
        setsockopt(&peer, sockopt::RcvBuf, &16_384).unwrap();
        (TcpStream::from_std(ours), peer)
    }

    fn tls_sock(sock: TcpStream, conn: Connection, peer: &'static str) -> Sock {
        let mut s = Sock::new(sock, true);
        s.tls = Some(Box::new(TlsLeg {
            conn,
            peer,
            require_resumed: false,
            checked: true,
            notified: false,
        }));
        s
    }

    /// TLS to TLS through [`copy`]: the server writes its records cut anywhere
    /// (a byte, a header, a record and a bit), the client reads slowly at first
    /// so the relay's queue towards it fills and back-pressure holds; every
    /// byte arrives once and in order, then the close_notify and the FIN, and
    /// the pipe counts exactly the plaintext passed on.
    #[test]
    fn tls_to_tls_copy_is_exact_under_back_pressure() {
        use std::io::{Read, Write};
        let (relay_client, mut server) = connected();
        let (mut client, relay_server) = connected();
        let (a, mut a_peer) = socket_pair();
        let (b, mut b_peer) = socket_pair();
        let mut src = tls_sock(a, Connection::from(relay_client), "server");
        let mut dst = tls_sock(b, Connection::from(relay_server), "client");
        let data: Vec<u8> = (0..(2 << 20) + 4_321u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let mut wire = Vec::new();
        for chunk in data.chunks(50_000) {
            server.writer().write_all(chunk).unwrap();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
        }
        server.send_close_notify();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let sender = std::thread::spawn(move || {
            let cuts = [1usize, 4, 16_405, 65_536, 3, 70_000, 999];
            let mut rest = &wire[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                a_peer.write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            a_peer.shutdown(Shutdown::Write).unwrap();
            // Held open until the relay is done reading.
            let mut sink = Vec::new();
            let _ = a_peer.read_to_end(&mut sink);
        });
        let receiver = std::thread::spawn(move || {
            b_peer
                .set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            // Nothing read for a while: the relay meets a full socket.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = b_peer.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                // rustls takes a part of a read at a time.
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    client.read_tls(&mut rest).unwrap();
                    client.process_new_packets().unwrap();
                    match client.reader().read_to_end(&mut got) {
                        Ok(_) => return got,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("client reader: {e}"),
                    }
                }
            }
            got
        });
        let mut pipe = Pipe::new(PIPE_CAPACITY, false);
        let mut blocked = false;
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !(src.eof && dst.shut) {
            assert!(Instant::now() < deadline, "the copy did not finish");
            // The readiness an event loop would report: a read or write that
            // finds nothing clears it again.
            blocked |= !dst.writable;
            src.readable = true;
            dst.writable = true;
            copy(&mut pipe, &mut src, &mut dst, true).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let got = receiver.join().unwrap();
        drop(src);
        sender.join().unwrap();
        assert!(
            blocked,
            "the client's socket filled up: back-pressure was exercised"
        );
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the client got the server's bytes, in order");
        assert_eq!(pipe.moved(), data.len() as u64);
        assert!(pipe.is_empty());
    }
}
