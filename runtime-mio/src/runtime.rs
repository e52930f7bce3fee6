//! The event loop: sockets and timers in, [`Proxy`] inputs out, actions executed.
//!
//! One turn = poll, dispatch the events (each socket serviced with bounded work),
//! serve the sockets left "hot" by the previous turn, run due timers. After every
//! input to the proxy the loop drains `poll_action` completely before anything else
//! (the core's driving contract).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ftp_proxy_core::{Action, Input, Proxy, SessionId, Side};
use log::{debug, error, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};

use crate::relay::{Relay, RelayLimits};
use crate::signal::Signals;
use crate::sys;
use crate::token::Tok;
use crate::{Backend, DataPath, Divert, Listener, Options, RunError};

/// Reads per control socket per turn before other sockets get theirs.
const READS_PER_TURN: usize = 16;
/// Queued pieces handed to one `writev` of a control socket (well under `IOV_MAX`).
const IOV_PER_WRITE: usize = 64;
/// Accepts per turn on the control listener.
const ACCEPTS_PER_TURN: usize = 64;
/// Size of one read from a control socket.
const READ_SIZE: usize = 16 * 1024;
/// Stop reading a side while its peer (or, for the client, itself) has this much
/// unwritten output.
const HIGH_WATER: usize = 64 * 1024;
/// Resume reading once that output is below this.
const LOW_WATER: usize = 16 * 1024;
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
    out: VecDeque<Bytes>,
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
            queued: 0,
        }
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queued += b.len();
            self.out.push_back(b);
        }
    }

    /// Writes queued output until it is gone or the socket would block.
    ///
    /// The whole queue goes out in one `writev` (up to [`IOV_PER_WRITE`] pieces), so a
    /// burst of reply lines leaves as one segment rather than one per line.
    fn flush(&mut self) -> io::Result<()> {
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
                let _ = front.split_to(n);
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
}

impl Session {
    fn conn(&mut self, side: Side) -> Option<&mut Conn> {
        match side {
            Side::Client => Some(&mut self.client),
            Side::Server => self.server.as_mut(),
        }
    }
    fn queued(&self, side: Side) -> usize {
        match side {
            Side::Client => self.client.queued,
            Side::Server => self.server.as_ref().map_or(0, |c| c.queued),
        }
    }
}

enum Data<B> {
    Kernel(B),
    Relay(Relay),
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
pub struct Runtime<B: Backend> {
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

impl<B: Backend> Runtime<B> {
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
        match &mut self.data {
            Data::Kernel(b) => {
                if let Err(e) = b.remove_all() {
                    error!(priority = "crit"; "pf rule removal failed: {e}");
                }
            }
            Data::Relay(r) => r.remove_all(self.poll.registry()),
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
        let hot = std::mem::take(&mut self.hot);
        for (tok, r, w, ev) in events {
            self.dispatch(tok, r, w, &ev);
        }
        for (id, side) in hot {
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
            self.proxy.handle_timeout(now);
            self.drain(now);
            // A timer may have re-enabled reading (a commit retry that went through).
            let all: Vec<SessionId> = self.sessions.keys().copied().collect();
            for id in all {
                self.hot.insert((id, Side::Client));
                self.hot.insert((id, Side::Server));
            }
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

    fn dispatch(&mut self, tok: Tok, r: bool, w: bool, ev: &mio::event::Event) {
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
                self.service(id, side);
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
            let (sock, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e)
                    if e.kind() == ErrorKind::Interrupted
                        || e.kind() == ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                Err(e) => {
                    error!(priority = "crit"; "accept() failed: {e}");
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    }
                    return;
                }
            };
            let now = Instant::now();
            let client = sys::unmap(peer);
            let local = match sock.local_addr() {
                Ok(a) => sys::unmap(a),
                Err(e) => {
                    error!(priority = "crit"; "getsockname failed: {e}");
                    continue;
                }
            };
            let orig = match self.divert {
                Divert::Getsockname => local,
                Divert::OriginalDst => sys::original_dst(&sock, peer)
                    .map(sys::unmap)
                    .unwrap_or(local),
            };
            if self.is_own_listener(orig) {
                // Not diverted: serving it would connect to ourselves, and that
                // connection again, until the session limit (docs/linux.md).
                warn!(
                    "refused connection from {client}: its destination {orig} is this proxy's own listener, not a diverted FTP server"
                );
                drop(sock);
                continue;
            }
            match self.proxy.accept(now, client, orig, 0) {
                Ok(id) => {
                    let mut sock = sock;
                    sys::keepalive(&sock);
                    sys::nodelay(&sock);
                    let rw = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        Tok::Control(id, Side::Client).token(),
                        rw,
                    ) {
                        error!(priority = "crit"; "{id} cannot register client socket: {e}");
                        self.sessions.insert(
                            id,
                            Session {
                                client: Conn::new(sock, false),
                                server: None,
                                connecting: false,
                            },
                        );
                        self.proxy.handle(now, id, Input::Reset(Side::Client));
                        self.drain(now);
                        continue;
                    }
                    // A fresh socket is assumed ready; WouldBlock will say otherwise.
                    self.sessions.insert(
                        id,
                        Session {
                            client: Conn::new(sock, true),
                            server: None,
                            connecting: false,
                        },
                    );
                    self.drain(now);
                    self.hot.insert((id, Side::Client));
                }
                Err(_) => drop(sock), // the core logged it; no reply, as in the original
            }
        }
        // Turn is up with connections possibly still waiting.
        self.accept_hot = true;
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
        let input = match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => {
                debug!("{id} connect failed: {e}");
                Some(Input::Reset(Side::Server))
            }
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
                Err(e) => {
                    debug!("{id} connect failed: {e}");
                    Some(Input::Reset(Side::Server))
                }
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
        for _ in 0..READS_PER_TURN {
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            if side == Side::Server && s.connecting {
                return;
            }
            // Reading one side feeds its peer's queue, and the client's own: the core
            // answers some client commands itself. A client that reads none of those
            // answers must stop being read, or its queue grows without bound.
            let backlog = s.queued(side.peer()) >= HIGH_WATER
                || (side == Side::Client && s.client.queued >= HIGH_WATER);
            let Some(c) = s.conn(side) else { return };
            if !c.readable || c.read_done || backlog || !self.proxy.wants_read(id, side) {
                return;
            }
            let now;
            let input = match c.sock.read(&mut self.read_buf) {
                Ok(0) => {
                    c.read_done = true;
                    now = Instant::now();
                    Input::Eof(side)
                }
                Ok(n) => {
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
                if before >= LOW_WATER && c.queued < LOW_WATER {
                    // The peer may have stopped reading because of us, and so may
                    // this side (the client, for the proxy's own replies).
                    self.hot.insert((id, side.peer()));
                    self.hot.insert((id, side));
                }
                true
            }
            Err(e) => {
                debug!("{id} {} write error: {e}", side.name());
                c.out.clear();
                c.queued = 0;
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
            while let Some((id, action)) = self.proxy.poll_action() {
                self.execute(now, id, action);
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
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                match s.conn(side) {
                    Some(c) => c.push(bytes),
                    None => {
                        warn!("{id} output for the {} dropped: no socket", side.name());
                        return;
                    }
                }
                self.unflushed.insert((id, side));
            }
            Action::Close(_) => {
                let Some(mut s) = self.sessions.remove(&id) else {
                    return;
                };
                if let Data::Relay(r) = &mut self.data {
                    r.session_ended(id.0);
                }
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
                let result = match &mut self.data {
                    Data::Kernel(b) => b.commit(&anchor, &rules),
                    Data::Relay(r) => r.commit(self.poll.registry(), &anchor, &rules),
                };
                self.proxy
                    .handle(now, id, Input::RulesCommitted { txn, result });
            }
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
                error: e.errno().desc().to_string(),
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
                        Input::ServerConnectFailed {
                            error: e.to_string(),
                        }
                    }
                }
            }
        };
        self.proxy.handle(now, id, input);
    }
}
