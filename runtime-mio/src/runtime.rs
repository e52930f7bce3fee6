//! The event loop: sockets and timers in, [`Proxy`] inputs out, actions executed.
//!
//! One turn = poll, dispatch the events, then serve each control socket that had an
//! event or was left "hot" by the previous turn, once and with bounded work (a
//! byte budget of reads), then run due timers. After every
//! input to the proxy the loop drains `poll_action` completely before anything else
//! (the core's driving contract).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ftp_proxy_core::{
    Accept, Action, Anchor, Bytes, CloseReason, Filter, FilterError, Input, Proxy, SessionId, Side,
    Summary,
};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};

use crate::relay::{Relay, RelayLimits};
use crate::signal::Signals;
use crate::sys;
use crate::token::Tok;
use crate::{DataPath, Divert, Listener, Options, RunError};

/// Bytes read from one control socket per turn, at most, before the other sockets
/// get theirs. A flood of bare `\n` is one line (and one action of the core) per
/// byte, so the budget is in bytes, not reads: a flooder delays another session's
/// reply by about one budget's work per turn (a few hundred microseconds for 4 KiB of
/// bare `\n`), not by all it has sent (docs/performance.md measures it). Control
/// traffic of any other kind comes in far smaller bursts.
const READ_BUDGET: usize = 4 * 1024;
/// Size of one read from a control socket. The core turns each read into its lines'
/// actions before the driver executes any, so this bounds that queue too (one action
/// per byte at worst).
const READ_SIZE: usize = 4 * 1024;
/// Reads per control socket per turn, at most: the budget in reads of [`READ_SIZE`],
/// with room for short ones.
const MAX_READS: usize = 2 * READ_BUDGET / READ_SIZE;
/// Queued chunks handed to one `writev` of a control socket (well under `IOV_MAX`).
const IOV_PER_WRITE: usize = 64;
/// Control output is copied into chunks of this size (a bigger `Send` is queued as
/// it is). The core emits one `Send` per line, and a line of one byte would cost a
/// queue entry and a share of a buffer many times its size: coalesced, the memory a
/// queue holds is its payload plus at most one chunk, whatever the line lengths,
/// and a burst of lines leaves in one write.
const OUT_CHUNK: usize = 4 * 1024;
/// Accepts per turn on the control listener.
const ACCEPTS_PER_TURN: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE (the original's `pause_accept_ev`).
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// How long a shutdown waits for sessions to end and their rules to be removed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A control connection with its output queue and readiness cache.
#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    readable: bool,
    writable: bool,
    /// Nothing more will be read (EOF or error reported to the core).
    read_done: bool,
    /// Output to write, oldest first: full chunks, then (see [`OUT_CHUNK`]) ...
    out: VecDeque<Bytes>,
    /// ... the chunk being filled, which goes to `out` when full or flushed.
    tail: BytesMut,
    /// Bytes in `out` and `tail`.
    queued: usize,
}

impl Conn {
    fn new(sock: TcpStream, ready: bool) -> Conn {
        Conn {
            sock,
            readable: ready,
            writable: ready,
            read_done: false,
            out: VecDeque::new(),
            tail: BytesMut::new(),
            queued: 0,
        }
    }

    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.queued += b.len();
        if b.len() >= OUT_CHUNK {
            self.seal();
            self.out.push_back(b);
            return;
        }
        if self.tail.capacity() - self.tail.len() < b.len() {
            self.seal();
            self.tail = BytesMut::with_capacity(OUT_CHUNK);
        }
        self.tail.extend_from_slice(&b);
    }

    /// Moves what the tail chunk holds to `out`; the rest of its buffer stays the
    /// tail's, for what comes next.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.out.push_back(self.tail.split().freeze());
        }
    }

    /// Forgets everything queued (the socket is dead).
    fn clear(&mut self) {
        self.out.clear();
        self.tail = BytesMut::new();
        self.queued = 0;
    }

    /// Writes queued output until it is gone or the socket would block.
    ///
    /// The whole queue goes out in one `writev` (up to [`IOV_PER_WRITE`] chunks), so a
    /// burst of reply lines leaves as one segment rather than one per line. Once
    /// everything is written the buffers are let go: an idle connection holds none.
    fn flush(&mut self) -> io::Result<()> {
        self.seal();
        while !self.out.is_empty() {
            let iov: Vec<IoSlice<'_>> = self
                .out
                .iter()
                .take(IOV_PER_WRITE)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.sock.write_vectored(&iov) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tail = BytesMut::new();
        Ok(())
    }

    /// Drops the first `n` queued bytes (written).
    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// The sockets of one session.
#[derive(Debug)]
struct Session {
    client: Conn,
    server: Option<Conn>,
    /// The server socket's connect has not completed yet.
    connecting: bool,
    /// The core's read interest per side ([`Action::ReadInterest`]): client, server.
    reading: [bool; 2],
}

impl Session {
    fn conn(&mut self, side: Side) -> Option<&mut Conn> {
        match side {
            Side::Client => Some(&mut self.client),
            Side::Server => self.server.as_mut(),
        }
    }
    fn reading(&self, side: Side) -> bool {
        self.reading[side as usize]
    }
}

enum Data<B> {
    Kernel(B),
    Relay(Relay),
}

/// The relay as a [`Filter`]: it executes the rules itself, and needs the poll
/// registry for the listeners it opens. Its listeners and data connections live on
/// in the relay; this is only the view one call needs.
struct RelayFilter<'a> {
    relay: &'a mut Relay,
    registry: &'a mio::Registry,
}

impl Filter for RelayFilter<'_> {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn commit(
        &mut self,
        anchor: &Anchor,
        rules: &[ftp_proxy_core::Rule],
    ) -> Result<(), FilterError> {
        self.relay.commit(self.registry, anchor, rules)
    }

    /// Resets the anchor's data connections in progress (and any waiting for its
    /// partner of a join); it cannot fail.
    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        self.relay.kill_session(self.registry, anchor.session);
        Ok(())
    }

    /// Closes every listener and resets the data connections in progress; it
    /// cannot fail.
    fn remove_all(&mut self) -> Result<(), FilterError> {
        self.relay.remove_all(self.registry);
        Ok(())
    }
}

/// Asks a [`Runtime`] to shut down from another thread (tests, embedders); the same
/// as the first SIGTERM, minus the log line.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// The event loop and everything it owns. [`crate::run`] drives one until a signal;
/// tests drive one turn by turn with [`turn`](Self::turn).
pub struct Runtime<B: Filter> {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    listen_addr: SocketAddr,
    /// More connections may be waiting on the listener (edge-triggered cache).
    listener_ready: bool,
    accept_paused_until: Option<Instant>,
    divert: Divert,
    proxy: Proxy,
    data: Data<B>,
    sessions: BTreeMap<SessionId, Session>,
    /// Control sockets with work left from the previous turn.
    hot: BTreeSet<(SessionId, Side)>,
    /// Control sockets with output queued by the actions being drained.
    unflushed: BTreeSet<(SessionId, Side)>,
    signals: Option<Signals>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    shutdown_deadline: Option<Instant>,
    hurry: bool,
    /// The accept loop stopped at its bound: continue next turn.
    accept_hot: bool,
    read_buf: Box<[u8]>,
}

impl<B: Filter> Runtime<B> {
    /// A loop around `listener`, with no signal handling (see [`crate::run`]).
    pub fn new(
        listener: Listener,
        opts: &Options,
        proxy: Proxy,
        data: DataPath<B>,
    ) -> Result<Runtime<B>, RunError> {
        let poll = Poll::new().map_err(RunError::Setup)?;
        let listen_addr = listener.inner.local_addr().map_err(RunError::Setup)?;
        listener
            .inner
            .set_nonblocking(true)
            .map_err(RunError::Setup)?;
        let mut l = TcpListener::from_std(listener.inner);
        poll.registry()
            .register(&mut l, Tok::Listener.token(), Interest::READABLE)
            .map_err(RunError::Setup)?;
        let waker =
            Arc::new(Waker::new(poll.registry(), Tok::Waker.token()).map_err(RunError::Setup)?);
        Ok(Runtime {
            poll,
            events: Events::with_capacity(256),
            listener: Some(l),
            listen_addr,
            listener_ready: true,
            accept_paused_until: None,
            divert: opts.divert,
            proxy,
            data: match data {
                DataPath::Kernel(b) => Data::Kernel(b),
                DataPath::Relay => Data::Relay(Relay::new(opts.max_sessions as usize)),
            },
            sessions: BTreeMap::new(),
            hot: BTreeSet::new(),
            unflushed: BTreeSet::new(),
            signals: None,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            shutdown_deadline: None,
            hurry: false,
            accept_hot: false,
            read_buf: vec![0; READ_SIZE].into_boxed_slice(),
        })
    }

    /// Installs the SIGHUP/SIGINT/SIGTERM handlers and watches their pipe.
    pub fn handle_signals(&mut self) -> Result<(), RunError> {
        let mut s = Signals::install().map_err(RunError::Signals)?;
        self.poll
            .registry()
            .register(s.receiver(), Tok::Signal.token(), Interest::READABLE)
            .map_err(RunError::Setup)?;
        self.signals = Some(s);
        Ok(())
    }

    /// A handle that starts the shutdown from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The core, for inspection.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The packet-filter backend, when the kernel carries data connections.
    pub fn backend(&self) -> Option<&B> {
        match &self.data {
            Data::Kernel(b) => Some(b),
            Data::Relay(_) => None,
        }
    }

    /// Relay listeners and data connections in progress (`(0, 0)` without the relay).
    pub fn relay_counts(&self) -> (usize, usize) {
        match &self.data {
            Data::Kernel(_) => (0, 0),
            Data::Relay(r) => (r.listener_count(), r.pair_count()),
        }
    }

    /// Chooses how the relay moves data for connections accepted from now on:
    /// `splice(2)` through kernel pipes (Linux; the default there) or copying through
    /// user space. Without the relay this does nothing.
    pub fn set_relay_zero_copy(&mut self, on: bool) {
        if let Data::Relay(r) = &mut self.data {
            r.set_zero_copy(on);
        }
    }

    /// Sets the per-session cap and the timeouts of relayed data connections. Without
    /// the relay this does nothing.
    pub fn set_relay_limits(&mut self, limits: RelayLimits) {
        if let Data::Relay(r) = &mut self.data {
            r.set_limits(limits);
        }
    }

    /// Whether a shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// Whether a started shutdown is complete: every session gone, the grace period
    /// over, or a second signal received.
    pub fn is_finished(&self) -> bool {
        match self.shutdown_deadline {
            None => false,
            Some(d) => self.hurry || self.proxy.is_empty() || Instant::now() >= d,
        }
    }

    /// Runs until a shutdown has finished, then removes every rule left (a backstop
    /// for sessions that did not end in time).
    pub fn run(mut self) -> Result<(), RunError> {
        while !self.is_finished() {
            self.turn(None)?;
        }
        self.finish();
        Ok(())
    }

    /// Removes every rule this process installed (and, with the relay, resets the data
    /// connections still in progress); called once the loop is done.
    pub fn finish(&mut self) {
        if let Err(e) = self.with_filter(|f| f.remove_all()) {
            error!(priority = "crit"; "pf rule removal failed: {e}");
        }
    }

    /// Runs `f` on whatever executes the core's rules: the kernel backend, or the
    /// relay seen as a [`Filter`].
    fn with_filter<R>(&mut self, f: impl FnOnce(&mut dyn Filter) -> R) -> R {
        match &mut self.data {
            Data::Kernel(b) => f(b),
            Data::Relay(relay) => f(&mut RelayFilter {
                relay,
                registry: self.poll.registry(),
            }),
        }
    }

    /// Starts the graceful shutdown (what the first signal does).
    pub fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            self.hurry = true;
            return;
        }
        let now = Instant::now();
        self.shutdown_deadline = Some(now + SHUTDOWN_GRACE);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.proxy.shutdown(now);
        self.drain(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.proxy.poll_timeout(),
            self.accept_paused_until,
            self.shutdown_deadline,
            match &self.data {
                Data::Relay(r) => r.poll_timeout(),
                Data::Kernel(_) => None,
            },
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One round: waits for events (at most `max_wait`, if given), handles them, the
    /// hot sockets and due timers.
    pub fn turn(&mut self, max_wait: Option<Duration>) -> Result<(), RunError> {
        let relay_hot = matches!(&self.data, Data::Relay(r) if r.is_hot());
        let timeout = if !self.hot.is_empty() || relay_hot || self.accept_hot {
            Some(Duration::ZERO)
        } else {
            let now = Instant::now();
            let t = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            match (t, max_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => self.events.clear(),
            Err(e) => return Err(RunError::Poll(e)),
        }
        let events: Vec<(Tok, bool, bool, mio::event::Event)> = self
            .events
            .iter()
            .filter_map(|ev| {
                let tok = Tok::from_token(ev.token())?;
                let r = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                let w = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                Some((tok, r, w, ev.clone()))
            })
            .collect();
        // Control sockets are served after every event is seen, each once, however
        // many of its events came and whether or not it was hot: one budget per turn.
        let mut due = std::mem::take(&mut self.hot);
        for (tok, r, w, ev) in events {
            self.dispatch(tok, r, w, &ev, &mut due);
        }
        for (id, side) in due {
            self.service(id, side);
        }
        if let Data::Relay(relay) = &mut self.data {
            relay.run_hot(self.poll.registry());
            relay.sweep(self.poll.registry(), Instant::now());
        }
        if std::mem::take(&mut self.accept_hot) {
            self.accept();
        }
        let now = Instant::now();
        if self.proxy.poll_timeout().is_some_and(|t| t <= now) {
            // A commit retry that goes through turns reading back on through
            // `Action::ReadInterest`, which marks that side hot.
            self.proxy.handle_timeout(now);
            self.drain(now);
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept();
        }
        if self.stop.load(Ordering::SeqCst) && self.shutdown_deadline.is_none() {
            self.begin_shutdown();
        }
        Ok(())
    }

    /// Handles one event; a control socket's readiness is cached and the socket
    /// added to `due`, served once the turn's events are all in.
    fn dispatch(
        &mut self,
        tok: Tok,
        r: bool,
        w: bool,
        ev: &mio::event::Event,
        due: &mut BTreeSet<(SessionId, Side)>,
    ) {
        match tok {
            Tok::Listener => {
                self.listener_ready = true;
                self.accept();
            }
            Tok::Signal => {
                let sigs = self.signals.as_mut().map(Signals::take).unwrap_or_default();
                for sig in sigs {
                    error!("exiting on signal {sig}");
                    self.begin_shutdown();
                }
            }
            Tok::Waker => {
                if self.stop.load(Ordering::SeqCst) {
                    self.begin_shutdown();
                }
            }
            Tok::Control(id, side) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                if let Some(c) = s.conn(side) {
                    c.readable |= r;
                    c.writable |= w;
                }
                if side == Side::Server && s.connecting {
                    self.check_connect(id);
                }
                due.insert((id, side));
            }
            Tok::DataListener(_) | Tok::Data(..) => {
                if let Data::Relay(relay) = &mut self.data {
                    relay.event(self.poll.registry(), tok, ev);
                }
            }
        }
    }

    /// Accepts until the listener would block (or its turn is up).
    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            if self.accept_paused_until.is_some() || !self.listener_ready {
                return;
            }
            let Some(l) = &self.listener else { return };
            match l.accept() {
                Ok((sock, peer)) => self.start_session(sock, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e)
                    if e.kind() == ErrorKind::Interrupted
                        || e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    error!(priority = "crit"; "accept() failed: {e}");
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    }
                    return;
                }
            }
        }
        // Turn is up with connections possibly still waiting.
        self.accept_hot = true;
    }

    /// Where an accepted client meant to go, and its routing domain; `None` (logged)
    /// when the connection must be dropped.
    fn describe(&self, sock: &TcpStream, peer: SocketAddr) -> Option<Accept> {
        let client = sys::unmap(peer);
        let local = match sock.local_addr() {
            Ok(a) => sys::unmap(a),
            Err(e) => {
                error!(priority = "crit"; "getsockname failed: {e}");
                return None;
            }
        };
        let orig_dst = match self.divert {
            Divert::Getsockname => local,
            Divert::OriginalDst => sys::original_dst(sock, peer)
                .map(sys::unmap)
                .unwrap_or(local),
        };
        if self.is_own_listener(orig_dst) {
            // Not diverted: serving it would connect to ourselves, and that
            // connection again, until the session limit (docs/linux.md).
            warn!(
                "refused connection from {client}: its destination {orig_dst} is this proxy's own listener, not a diverted FTP server"
            );
            return None;
        }
        Some(Accept {
            client,
            orig_dst,
            rdomain: sys::rdomain(sock),
        })
    }

    /// Hands one accepted connection to the core and registers its socket.
    fn start_session(&mut self, mut sock: TcpStream, peer: SocketAddr) {
        let Some(conn) = self.describe(&sock, peer) else {
            return;
        };
        let now = Instant::now();
        // On refusal the core logged it; no reply, as in the original.
        let Ok(id) = self.proxy.accept(now, conn) else {
            return;
        };
        if let Data::Relay(relay) = &mut self.data {
            relay.session_started(id.0, conn.client.ip());
        }
        sys::keepalive(&sock);
        sys::nodelay(&sock);
        let rw = Interest::READABLE | Interest::WRITABLE;
        let registered =
            self.poll
                .registry()
                .register(&mut sock, Tok::Control(id, Side::Client).token(), rw);
        // A fresh socket is assumed ready; WouldBlock will say otherwise.
        let session = Session {
            client: Conn::new(sock, registered.is_ok()),
            server: None,
            connecting: false,
            reading: [true; 2],
        };
        self.sessions.insert(id, session);
        if let Err(e) = registered {
            error!(priority = "crit"; "{id} cannot register client socket: {e}");
            self.proxy.handle(now, id, Input::Reset(Side::Client));
        } else {
            self.hot.insert((id, Side::Client));
        }
        self.drain(now);
    }

    /// Whether `orig`, the original destination of an accepted connection, is the
    /// proxy's own listening socket. Only when the core connects to that destination
    /// (no fixed server, `-R`): with a fixed server it is the normal case.
    fn is_own_listener(&self, orig: SocketAddr) -> bool {
        if self.proxy.config().fixed_server.is_some() || orig.port() != self.listen_addr.port() {
            return false;
        }
        let listen_ip = sys::unmap(self.listen_addr).ip();
        if listen_ip.is_unspecified() {
            sys::is_local(orig.ip())
        } else {
            orig.ip() == listen_ip
        }
    }

    /// Learns whether the server connect finished (mio's `TcpStream::connect` recipe).
    fn check_connect(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(c) = s.server.as_mut() else { return };
        if !c.writable && !c.readable {
            return;
        }
        let failed = |e: io::Error| {
            debug!("{id} connect failed: {e}");
            Some(Input::ServerConnectFailed { error: e.into() })
        };
        let input = match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => failed(e),
            Ok(None) => match c.sock.peer_addr() {
                Ok(_) => Some(Input::ServerConnected),
                Err(e)
                    if e.kind() == ErrorKind::NotConnected
                        || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                {
                    c.writable = false;
                    c.readable = false;
                    None
                }
                Err(e) => failed(e),
            },
        };
        let Some(input) = input else { return };
        if input == Input::ServerConnected {
            s.connecting = false;
            sys::keepalive(&c.sock);
        } else {
            c.read_done = true;
        }
        let now = Instant::now();
        self.proxy.handle(now, id, input);
        self.drain(now);
    }

    /// Writes and reads one control socket, with bounded work.
    fn service(&mut self, id: SessionId, side: Side) {
        // Write first: what the peer sent may be waiting for this socket.
        if !self.flush(id, side) {
            return;
        }
        // What was written may have turned read interest on or off.
        self.drain(Instant::now());
        let mut budget = READ_BUDGET;
        for _ in 0..MAX_READS {
            if budget == 0 {
                break;
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            if side == Side::Server && s.connecting {
                return;
            }
            // The core decides when to read (Action::ReadInterest): it counts what
            // each side has queued and what it has not parsed yet.
            let reading = s.reading(side);
            let Some(c) = s.conn(side) else { return };
            if !c.readable || c.read_done || !reading {
                return;
            }
            let now;
            let input = match c.sock.read(&mut self.read_buf[..budget.min(READ_SIZE)]) {
                Ok(0) => {
                    c.read_done = true;
                    now = Instant::now();
                    Input::Eof(side)
                }
                Ok(n) => {
                    budget -= n;
                    now = Instant::now();
                    Input::Data(side, Bytes::copy_from_slice(&self.read_buf[..n]))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("{id} {} read error: {e}", side.name());
                    c.read_done = true;
                    now = Instant::now();
                    Input::Reset(side)
                }
            };
            self.proxy.handle(now, id, input);
            self.drain(now);
        }
        // The budget is spent with data possibly left: no new edge will say so.
        self.hot.insert((id, side));
    }

    /// Flushes one side's output if the socket can take it. Returns false if the
    /// session is gone (or just ended because of a write error).
    fn flush(&mut self, id: SessionId, side: Side) -> bool {
        let Some(s) = self.sessions.get_mut(&id) else {
            return false;
        };
        let connecting = s.connecting;
        let Some(c) = s.conn(side) else { return true };
        if c.queued == 0 || !c.writable || (side == Side::Server && connecting) {
            return true;
        }
        let before = c.queued;
        match c.flush() {
            Ok(()) => {
                let written = before - c.queued;
                if written > 0 {
                    // Its actions (read interest) run in the caller's drain.
                    let now = Instant::now();
                    self.proxy.handle(now, id, Input::Written(side, written));
                }
                true
            }
            Err(e) => {
                debug!("{id} {} write error: {e}", side.name());
                c.clear();
                let now = Instant::now();
                self.proxy.handle(now, id, Input::WriteError(side));
                self.drain(now);
                self.sessions.contains_key(&id)
            }
        }
    }

    /// Executes every pending action (the core's drain rule), then writes what they
    /// queued: lines produced by one input leave in one write per socket.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut next = self.proxy.poll_action();
            while let Some((id, action)) = next {
                next = match action {
                    Action::Send(side, bytes) => self.queue(id, side, bytes),
                    action => {
                        self.execute(now, id, action);
                        self.proxy.poll_action()
                    }
                };
            }
            if self.unflushed.is_empty() {
                return;
            }
            for (id, side) in std::mem::take(&mut self.unflushed) {
                self.flush(id, side);
            }
        }
    }

    fn execute(&mut self, now: Instant, id: SessionId, action: Action) {
        match action {
            Action::ConnectServer { to, bind } => self.connect_server(now, id, to, bind),
            Action::Send(side, bytes) => {
                if let Some(c) = out_queue(&mut self.sessions, id, side) {
                    c.push(bytes);
                    self.unflushed.insert((id, side));
                }
            }
            Action::ReadInterest { side, on } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.reading[side as usize] = on;
                    if on {
                        self.hot.insert((id, side));
                    }
                }
            }
            Action::RulesMayRemain { anchor, error } => self.rules_may_remain(anchor, &error),
            Action::EndDataConnections { anchor } => {
                if let Err(e) = self.with_filter(|f| f.kill_connections(&anchor)) {
                    error!("{id} cannot end the data connections of {anchor}: {e}");
                }
            }
            // The kernel's states need no word; the relay closes finished pairs.
            Action::TransferDone { anchor } => {
                if let Data::Relay(relay) = &mut self.data {
                    relay.transfer_done(self.poll.registry(), &anchor);
                }
            }
            Action::Close { reason, summary } => {
                let Some(mut s) = self.sessions.remove(&id) else {
                    return;
                };
                let relayed = match &mut self.data {
                    Data::Relay(r) => Some(r.session_ended(id.0)),
                    Data::Kernel(_) => None,
                };
                info!("{}", SummaryLine(id, &reason, &summary, relayed));
                let registry = self.poll.registry();
                // One best-effort flush of what is queued, errors ignored (as ftp-proxy.c's `end_session`).
                let _ = s.client.flush();
                let _ = registry.deregister(&mut s.client.sock);
                if let Some(mut c) = s.server.take() {
                    if !s.connecting {
                        let _ = c.flush();
                    }
                    let _ = registry.deregister(&mut c.sock);
                }
                self.hot.remove(&(id, Side::Client));
                self.hot.remove(&(id, Side::Server));
            }
            Action::CommitRules { txn, anchor, rules } => {
                let result = self.with_filter(|f| f.commit(&anchor, &rules));
                self.proxy
                    .handle(now, id, Input::RulesCommitted { txn, result });
            }
        }
    }

    /// Queues `bytes` for one socket, and every `Send` to that socket right behind it
    /// with the same lookup (a read of short lines is a burst of them); returns the
    /// first other action.
    fn queue(&mut self, id: SessionId, side: Side, bytes: Bytes) -> Option<(SessionId, Action)> {
        let Some(c) = out_queue(&mut self.sessions, id, side) else {
            return self.proxy.poll_action();
        };
        c.push(bytes);
        self.unflushed.insert((id, side));
        loop {
            match self.proxy.poll_action() {
                Some((i, Action::Send(s, b))) if i == id && s == side => c.push(b),
                other => return other,
            }
        }
    }

    /// The core could not remove a finished session's rules (and has logged it):
    /// try once more, and otherwise leave them to `remove_all` at exit.
    fn rules_may_remain(&mut self, anchor: Anchor, error: &FilterError) {
        let retry = self.with_filter(|f| f.commit(&anchor, &[]));
        match retry {
            Ok(()) => info!("rules of {anchor} removed on the second attempt (first: {error})"),
            Err(e) => error!(
                priority = "crit";
                "rules of {anchor} may remain until exit: removal failed twice ({e})"
            ),
        }
    }

    fn connect_server(
        &mut self,
        now: Instant,
        id: SessionId,
        to: SocketAddr,
        bind: Option<std::net::IpAddr>,
    ) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        let started = sys::start_connect(to, bind.map(|ip| SocketAddr::new(ip, 0)));
        let input = match started {
            Err(e) => Input::ServerConnectFailed {
                error: ftp_proxy_core::ConnectError::from_errno(e.errno() as i32),
            },
            Ok(std) => {
                let mut sock = TcpStream::from_std(std);
                let rw = Interest::READABLE | Interest::WRITABLE;
                match self
                    .poll
                    .registry()
                    .register(&mut sock, Tok::Control(id, Side::Server).token(), rw)
                    .and_then(|()| sock.local_addr())
                {
                    Ok(local) => {
                        if let Some(s) = self.sessions.get_mut(&id) {
                            s.server = Some(Conn::new(sock, false));
                            s.connecting = true;
                        }
                        Input::ServerSocketOpened {
                            proxy: sys::unmap(local),
                        }
                    }
                    Err(e) => {
                        let _ = self.poll.registry().deregister(&mut sock);
                        Input::ServerConnectFailed { error: e.into() }
                    }
                }
            }
        };
        self.proxy.handle(now, id, input);
    }
}

/// The connection a `Send` for `side` of session `id` goes to; `None` (logged if the
/// session is still there) when it has no such socket.
fn out_queue(
    sessions: &mut BTreeMap<SessionId, Session>,
    id: SessionId,
    side: Side,
) -> Option<&mut Conn> {
    let c = sessions.get_mut(&id)?.conn(side);
    if c.is_none() {
        warn!("{id} output for the {} dropped: no socket", side.name());
    }
    c
}

/// The one line a session leaves when it ends (info level, `-D 6`), with stable
/// `key=value` fields documented in docs/behavior.md. The core has already logged
/// why the session ended in the original's words; `reason` gives its stable name
/// ([`CloseReason::kind`]), so that the line stands alone without repeating that
/// text.
struct SummaryLine<'a>(SessionId, &'a CloseReason, &'a Summary, Option<(u64, u64)>);

impl std::fmt::Display for SummaryLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SummaryLine(id, reason, s, relayed) = *self;
        write!(
            f,
            "{id} session summary: client={} server={} duration={:.3}s commands={} \
             pasv={} epsv={} port={} eprt={} rules={} ctl_in={} ctl_out={}",
            s.client,
            s.server,
            s.duration.as_secs_f64(),
            s.commands,
            s.data.pasv,
            s.data.epsv,
            s.data.port,
            s.data.eprt,
            s.rules_committed,
            s.client_bytes,
            s.server_bytes,
        )?;
        if let Some((up, down)) = relayed {
            write!(f, " data_up={up} data_down={down}")?;
        }
        write!(f, " reason={}", reason.kind())
    }
}
