//! The event loop: sockets and timers in, [`Proxy`] inputs out, actions executed.
//!
//! One turn = poll, dispatch the events, then serve each control socket that had an
//! event or was left "hot" by the previous turn, once and with bounded work (a
//! byte budget of reads), then the data plane's hot work and timers, then the
//! core's.
//!
//! # The one drive path
//!
//! The core is fed in one place, the section "Driving the core" below:
//!
//! * [`feed`](Runtime::feed) hands it one [`Call`] (an input, the clock, the
//!   shutdown) and [`admit`](Runtime::admit) one accepted connection; both end in
//!   [`drain`](Runtime::drain). Nothing else calls `Proxy::handle`,
//!   `handle_timeout`, `accept` or `shutdown`.
//! * `drain` is the only place actions are executed. It takes them in order until
//!   there are none; an action that has an immediate answer (a commit's result, a
//!   server socket opened or not) returns it from [`execute`](Runtime::execute)
//!   and `drain` feeds it back before taking the next action. Then it writes what
//!   the actions queued, once per socket, and feeds what each write did
//!   ([`Flushed`]: `Input::Written`, `Input::WriteError`) back, and goes round
//!   again until no action and no output is left. Lines produced by one input thus
//!   leave in one write per socket.
//! * Nothing calls the core or `drain` while `drain` runs (checked in debug builds):
//!   writes, the data plane and the actions' execution return what happened as
//!   values.
//!
//! Where the data connections go is the business of the
//! [`DataPlane`](crate::dataplane::DataPlane):
//! the loop hands it commits, its sockets' events and its turn, and never asks which
//! one it is.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ftp_proxy_core::{
    Accept, Action, Anchor, Bytes, ClientTls as ClientTlsMode, CloseReason, Filter, FilterError,
    Input, Proxy, ServerTls as ServerTlsMode, SessionId, Side, Summary,
};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};

use crate::dataplane::Plane;
use crate::proxy_header::{Arrived, Pending, ProxyProtocol, Version};
use crate::relay::RelayLimits;
use crate::relay::SessionTls;
use crate::resolver::Resolver;
use crate::signal::{Signals, RELOAD};
use crate::sys;
use crate::tls::{ClientTls, ServerTls, SessionServerTls};
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
    /// Bytes in `out` and `tail` (plaintext: what the core sent).
    queued: usize,
    /// Of those, bytes at the front that the runtime queued itself (a PROXY
    /// protocol header): written like the rest, never reported to the core, which
    /// did not send them.
    own: usize,
    /// TLS on this connection (`Action::StartTls`, or an implicit-TLS accept):
    /// reads are decrypted through it and the queue is encrypted into it. `None`
    /// is the plain path, unchanged.
    tls: Option<Box<rustls::Connection>>,
    /// Bytes at the front of the queue that still go out in plain text before
    /// TLS takes over (the `234` that precedes the switch).
    plain_left: usize,
}

/// What one read of a control connection gave ([`Conn::read_input`]).
#[derive(Debug)]
enum Got {
    /// Bytes for the core (decrypted, on a TLS connection).
    Data(Bytes),
    /// End of file (a TLS `close_notify`, or the peer's FIN).
    Eof,
    /// Nothing now.
    Blocked,
    /// Something moved that is not yet data for the core (TLS records, EINTR):
    /// read again.
    Again,
    /// The socket failed.
    Failed(io::Error),
    /// The TLS layer refused what the peer sent (a failed handshake, plain text
    /// on a TLS connection).
    Tls(rustls::Error),
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
            own: 0,
            tls: None,
            plain_left: 0,
        }
    }

    /// Whether anything waits to be written: queued bytes, or TLS records
    /// (handshake messages, alerts) of the connection's own.
    fn has_output(&self) -> bool {
        self.queued > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Switches to TLS: what is queued now still goes out in plain text first.
    fn start_tls(&mut self, tls: impl Into<rustls::Connection>) {
        self.plain_left = self.queued;
        self.tls = Some(Box::new(tls.into()));
    }

    /// One read, plain or through TLS, into `buf`'s room.
    fn read_input(&mut self, buf: &mut [u8]) -> Got {
        let Some(tls) = self.tls.as_mut() else {
            return match self.sock.read(buf) {
                Ok(0) => Got::Eof,
                Ok(n) => Got::Data(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Got::Blocked,
                Err(e) if e.kind() == ErrorKind::Interrupted => Got::Again,
                Err(e) => Got::Failed(e),
            };
        };
        // Plaintext rustls already holds comes first.
        match tls.reader().read(buf) {
            Ok(0) => return Got::Eof,
            Ok(n) => return Got::Data(Bytes::copy_from_slice(&buf[..n])),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // The peer's FIN without a close_notify: on a control connection an
            // end like any other (no transfer is judged by it).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Got::Eof,
            Err(e) => return Got::Failed(e),
        }
        match tls.read_tls(&mut self.sock) {
            Ok(n) => match tls.process_new_packets() {
                Err(e) => Got::Tls(e),
                // After the FIN (n = 0) the reader says how it ended.
                Ok(_) if n == 0 => match tls.reader().read(buf) {
                    Ok(n) if n > 0 => Got::Data(Bytes::copy_from_slice(&buf[..n])),
                    _ => Got::Eof,
                },
                Ok(_) => Got::Again,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => Got::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => Got::Again,
            Err(e) => Got::Failed(e),
        }
    }

    /// Queues bytes of the runtime's own ahead of anything the core sends (called
    /// before the core's first `Send` to this socket).
    fn push_own(&mut self, b: Vec<u8>) {
        self.own += b.len();
        self.push(Bytes::from(b));
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
        self.own = 0;
    }

    /// Writes queued output until it is gone or the socket would block, and says
    /// what it did; it does not tell the core (the caller does).
    ///
    /// The whole queue goes out in one `writev` (up to [`IOV_PER_WRITE`] chunks), so a
    /// burst of reply lines leaves as one segment rather than one per line. Once
    /// everything is written the buffers are let go: an idle connection holds none.
    /// After an error the queue is forgotten (the socket is dead).
    fn flush(&mut self) -> Flushed {
        let before = self.queued;
        match self.write_out() {
            Ok(()) => {
                let written = before - self.queued;
                let own = written.min(self.own);
                self.own -= own;
                Flushed::Written(written - own)
            }
            Err(e) => {
                self.clear();
                Flushed::Failed(e)
            }
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        self.seal();
        if self.tls.is_some() {
            return self.write_tls();
        }
        while !self.out.is_empty() {
            if !self.write_plain(usize::MAX)? {
                return Ok(());
            }
        }
        self.tail = BytesMut::new();
        Ok(())
    }

    /// One `writev` of at most `limit` queued bytes; `false` if the socket would block.
    fn write_plain(&mut self, limit: usize) -> io::Result<bool> {
        let mut room = limit;
        let iov: Vec<IoSlice<'_>> = self
            .out
            .iter()
            .take(IOV_PER_WRITE)
            .map_while(|b| {
                let n = b.len().min(room);
                room -= n;
                (n > 0).then(|| IoSlice::new(&b[..n]))
            })
            .collect();
        match self.sock.write_vectored(&iov) {
            Ok(0) => Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.consume(n);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The TLS path: the plain bytes before the switch, then records out and
    /// plaintext in, as long as the socket takes them. rustls holds at most its
    /// buffer limit (64 KiB) of records, so the core's queue stays the
    /// backpressure: plaintext counts as written once rustls took it.
    fn write_tls(&mut self) -> io::Result<()> {
        while self.plain_left > 0 {
            let before = self.queued;
            if !self.write_plain(self.plain_left)? {
                return Ok(());
            }
            self.plain_left -= before - self.queued;
        }
        let Some(mut tls) = self.tls.take() else {
            return Ok(());
        };
        let result = self.write_records(&mut tls);
        self.tls = Some(tls);
        result
    }

    /// [`write_tls`](Self::write_tls) once the plain bytes are out.
    fn write_records(&mut self, tls: &mut rustls::Connection) -> io::Result<()> {
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut self.sock) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.writable = false;
                        return Ok(());
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(front) = self.out.front() else {
                self.tail = BytesMut::new();
                return Ok(());
            };
            let n = tls.writer().write(front)?;
            if n == 0 {
                return Ok(());
            }
            self.consume(n);
        }
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

/// What one [`Conn::flush`] did.
#[derive(Debug)]
enum Flushed {
    /// This many bytes went out (0 if the socket would block at once).
    Written(usize),
    /// The socket failed; what was queued is forgotten.
    Failed(io::Error),
}

impl Flushed {
    /// The input that tells the core, if any.
    fn input(self, id: SessionId, side: Side) -> Option<Input> {
        match self {
            Flushed::Written(0) => None,
            Flushed::Written(n) => Some(Input::Written(side, n)),
            Flushed::Failed(e) => {
                debug!("{id} {} write error: {e}", side.name());
                Some(Input::WriteError(side))
            }
        }
    }
}

/// A call into the core that [`Runtime::feed`] makes (a new connection is
/// [`Runtime::admit`]'s).
#[derive(Debug)]
enum Call {
    /// `Proxy::handle`.
    Input(SessionId, Input),
    /// `Proxy::handle_timeout`.
    Timeout,
    /// `Proxy::shutdown`.
    Shutdown,
}

/// The sockets of one session.
#[derive(Debug)]
struct Session {
    /// The client as the core knows it (a PROXY protocol header's, or the peer).
    client_addr: SocketAddr,
    client: Conn,
    server: Option<Conn>,
    /// The server socket's connect has not completed yet.
    connecting: bool,
    /// The core's read interest per side ([`Action::ReadInterest`]): client, server.
    reading: [bool; 2],
    /// This session's TLS server configuration (its own session cache), when the
    /// proxy terminates TLS from clients.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// This session's TLS client configuration towards its server
    /// (`--server-tls`; its own session store, shared with its data connections).
    server_tls: Option<SessionServerTls>,
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
    fn conn_ref(&self, side: Side) -> Option<&Conn> {
        match side {
            Side::Client => Some(&self.client),
            Side::Server => self.server.as_ref(),
        }
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
    /// The control listeners (one per `-b`); emptied when the shutdown begins.
    listeners: Vec<ControlListener>,
    /// The first listener's address.
    listen_addr: SocketAddr,
    accept_paused_until: Option<Instant>,
    divert: Divert,
    proxy: Proxy,
    /// Whoever carries the data connections.
    data: Plane<B>,
    /// [`drain`](Self::drain) is running: nothing may call the core (debug check).
    draining: bool,
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
    /// The certificate towards clients ([`set_client_tls`](Self::set_client_tls)).
    client_tls: Option<ClientTls>,
    /// TLS towards servers ([`set_server_tls`](Self::set_server_tls)).
    server_tls: Option<ServerTls>,
    /// `--proxy-protocol-in`: accepted connections waiting for their header.
    headers: Option<Pending>,
    /// `--proxy-protocol-out`: the header written to each server.
    header_out: Option<Version>,
    /// Forward mode's name lookups ([`Runtime::set_resolver`]).
    resolver: Option<Resolver>,
    /// What SIGUSR1 runs ([`Runtime::set_reload`]).
    reload_hook: Option<Reload>,
}

/// A reload hook: re-reads what may change at run time and hands it to the core
/// or to the loop ([`Reloading`]).
pub type Reload = Box<dyn FnMut(&mut Reloading<'_>) + Send>;

/// What a reload hook may replace: the core's state (its route table) and the
/// certificate towards clients. Both apply to sessions accepted from then on;
/// a running session keeps the per-session TLS configuration it was given at its
/// accept, which holds its own reference to the old certificate and the cache its
/// data connections resume from.
pub struct Reloading<'a> {
    proxy: &'a mut Proxy,
    client_tls: &'a mut Option<ClientTls>,
}

impl Reloading<'_> {
    /// The core, for [`Proxy::set_routes`].
    pub fn proxy(&mut self) -> &mut Proxy {
        self.proxy
    }

    /// Replaces the certificate towards clients for sessions accepted from now
    /// on (as [`Runtime::set_client_tls`]).
    pub fn set_client_tls(&mut self, tls: ClientTls) {
        *self.client_tls = Some(tls);
    }
}

/// One control listener.
#[derive(Debug)]
struct ControlListener {
    sock: TcpListener,
    addr: SocketAddr,
    /// More connections may be waiting (edge-triggered cache).
    ready: bool,
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
        let listen_addr = listener.local_addr().map_err(RunError::Setup)?;
        let mut listeners = Vec::new();
        for (i, sock) in listener.into_sockets().into_iter().enumerate() {
            let addr = sock.local_addr().map_err(RunError::Setup)?;
            sock.set_nonblocking(true).map_err(RunError::Setup)?;
            let mut sock = TcpListener::from_std(sock);
            let i = u8::try_from(i).map_err(|_| {
                RunError::Setup(io::Error::new(
                    ErrorKind::InvalidInput,
                    "more than 256 listeners",
                ))
            })?;
            poll.registry()
                .register(&mut sock, Tok::Listener(i).token(), Interest::READABLE)
                .map_err(RunError::Setup)?;
            listeners.push(ControlListener {
                sock,
                addr,
                ready: true,
            });
        }
        let waker =
            Arc::new(Waker::new(poll.registry(), Tok::Waker.token()).map_err(RunError::Setup)?);
        Ok(Runtime {
            poll,
            events: Events::with_capacity(256),
            listeners,
            listen_addr,
            accept_paused_until: None,
            divert: opts.divert,
            proxy,
            data: Plane::new(data, opts.max_sessions as usize),
            draining: false,
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
            headers: None,
            header_out: None,
            resolver: None,
            client_tls: None,
            reload_hook: None,
            server_tls: None,
        })
    }

    /// Installs the SIGHUP/SIGINT/SIGTERM handlers (exit) and the SIGUSR1 one
    /// (reload, [`set_reload`](Self::set_reload)) and watches their pipe.
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
        self.data.backend()
    }

    /// Relay listeners and data connections in progress (`(0, 0)` without the relay).
    pub fn relay_counts(&self) -> (usize, usize) {
        self.data.get().counts()
    }

    /// Chooses how the relay moves data for connections accepted from now on:
    /// `splice(2)` through kernel pipes (Linux; the default there) or copying through
    /// user space. Without the relay this does nothing.
    pub fn set_relay_zero_copy(&mut self, on: bool) {
        self.data.get_mut().set_relay_zero_copy(on);
    }

    /// Terminates TLS from clients with this certificate: the core's
    /// [`Config::tls`](ftp_proxy_core::Config::tls) says when (`AUTH TLS`, or
    /// from the accept with implicit TLS), and its `PROT P` data connections are TLS
    /// on the client's leg. Sessions accepted from now on use it.
    pub fn set_client_tls(&mut self, tls: ClientTls) {
        self.client_tls = Some(tls);
    }

    /// Speaks TLS to the server with this client configuration: the core's
    /// [`Config::tls`](ftp_proxy_core::Config::tls) says when (after its `AUTH
    /// TLS`, or from the connect with implicit TLS), and every data connection
    /// to the server is TLS, resuming its control connection's session.
    /// Sessions accepted from now on use it.
    pub fn set_server_tls(&mut self, tls: ServerTls) {
        self.server_tls = Some(tls);
    }

    /// Sets the per-session cap and the timeouts of relayed data connections. Without
    /// the relay this does nothing.
    pub fn set_relay_limits(&mut self, limits: RelayLimits) {
        self.data.get_mut().set_relay_limits(limits);
    }

    /// Sets the PROXY protocol for connections accepted and servers connected from
    /// now on (see [`crate::proxy_header`]). Connections already waiting for a
    /// header when reading headers is turned off are closed.
    pub fn set_proxy_protocol(&mut self, pp: ProxyProtocol) {
        if let Some(mut old) = self.headers.take() {
            old.clear(self.poll.registry());
        }
        self.headers = pp.inbound.map(Pending::new);
        self.header_out = pp.outbound;
    }

    /// What SIGUSR1 does: `hook` is called on the loop's thread, between events,
    /// with what it may replace (the daemon re-reads its `--route-file` and calls
    /// [`Proxy::set_routes`], and re-reads its `--tls-cert`/`--tls-key` pair and
    /// calls [`Reloading::set_client_tls`]). One hook does both, so one signal
    /// reloads everything. Without a hook the signal is logged and ignored.
    pub fn set_reload(&mut self, hook: Reload) {
        self.reload_hook = Some(hook);
    }

    /// Runs the reload hook, as SIGUSR1 does.
    pub fn reload(&mut self) {
        match self.reload_hook.as_mut() {
            Some(hook) => hook(&mut Reloading {
                proxy: &mut self.proxy,
                client_tls: &mut self.client_tls,
            }),
            None => {
                warn!("ignoring signal {RELOAD}: nothing to reload (no --route-file or --tls-cert)")
            }
        }
    }

    /// Where host names are looked up (forward mode, route tables;
    /// [`Action::Resolve`]): the
    /// loop's end of a [`Resolver::pair`] whose other end a helper serves
    /// ([`crate::resolver::serve`]). Without one every lookup fails at once with
    /// "no resolver".
    pub fn set_resolver(&mut self, mut resolver: Resolver) -> Result<(), RunError> {
        self.poll
            .registry()
            .register(resolver.source(), Tok::Resolver.token(), Interest::READABLE)
            .map_err(RunError::Setup)?;
        self.resolver = Some(resolver);
        Ok(())
    }

    /// Accepted connections still waiting for their PROXY protocol header.
    pub fn header_pending_count(&self) -> usize {
        self.headers.as_ref().map_or(0, Pending::len)
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
        if let Err(e) = self.data.get_mut().remove_all(self.poll.registry()) {
            error!(priority = "crit"; "pf rule removal failed: {e}");
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
        for mut l in std::mem::take(&mut self.listeners) {
            let _ = self.poll.registry().deregister(&mut l.sock);
        }
        if let Some(h) = self.headers.as_mut() {
            h.clear(self.poll.registry());
        }
        self.feed(now, Call::Shutdown);
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.proxy.poll_timeout(),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.data.get().poll_timeout(),
            self.headers.as_ref().and_then(Pending::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One round: waits for events (at most `max_wait`, if given), handles them, the
    /// hot sockets and due timers.
    pub fn turn(&mut self, max_wait: Option<Duration>) -> Result<(), RunError> {
        let timeout = if !self.hot.is_empty() || self.data.get().is_hot() || self.accept_hot {
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
        let data = self.data.get_mut();
        data.run_hot(self.poll.registry());
        data.handle_timeout(self.poll.registry(), Instant::now());
        if std::mem::take(&mut self.accept_hot) {
            self.accept();
        }
        let now = Instant::now();
        if let Some(h) = self.headers.as_mut() {
            if h.poll_timeout().is_some_and(|t| t <= now) {
                h.expire(self.poll.registry(), now);
            }
        }
        if self.proxy.poll_timeout().is_some_and(|t| t <= now) {
            // A commit retry that goes through turns reading back on through
            // `Action::ReadInterest`, which marks that side hot.
            self.feed(now, Call::Timeout);
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
            Tok::Listener(i) => {
                if let Some(l) = self.listeners.get_mut(usize::from(i)) {
                    l.ready = true;
                }
                self.accept();
            }
            Tok::Signal => {
                let sigs = self.signals.as_mut().map(Signals::take).unwrap_or_default();
                for sig in sigs {
                    if sig == RELOAD {
                        info!("reloading on signal {sig}");
                        self.reload();
                        continue;
                    }
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
            Tok::Resolver => {
                let answers = self.resolver.as_mut().map(Resolver::answers);
                for (id, result) in answers.unwrap_or_default() {
                    if self.sessions.contains_key(&id) {
                        self.feed(Instant::now(), Call::Input(id, Input::Resolved { result }));
                    }
                }
            }
            Tok::Header(n) => {
                let arrived = self
                    .headers
                    .as_mut()
                    .and_then(|h| h.readable(self.poll.registry(), n));
                if let Some(a) = arrived {
                    self.header_arrived(a);
                }
            }
            Tok::DataListener(_) | Tok::Data(..) => {
                self.data.get_mut().event(self.poll.registry(), tok, ev);
            }
        }
    }

    /// Accepts on every listener until each would block (or its turn is up).
    fn accept(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept_on(i);
        }
    }

    /// Accepts on listener `i` until it would block (or its turn is up).
    fn accept_on(&mut self, i: usize) {
        for _ in 0..ACCEPTS_PER_TURN {
            if self.accept_paused_until.is_some() {
                return;
            }
            let Some(l) = self.listeners.get_mut(i).filter(|l| l.ready) else {
                return;
            };
            match l.sock.accept() {
                Ok((sock, peer)) => self.start_session(sock, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    l.ready = false;
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

    /// Hands one accepted connection to the core (if it is one to serve), or with
    /// `--proxy-protocol-in` to the connections waiting for their header.
    fn start_session(&mut self, sock: TcpStream, peer: SocketAddr) {
        if let Some(h) = self.headers.as_mut() {
            let peer = sys::unmap(peer);
            let live = self.sessions.len();
            if let Some(a) = h.offer(self.poll.registry(), Instant::now(), sock, peer, live) {
                self.header_arrived(a);
            }
            return;
        }
        let Some(conn) = self.describe(&sock, peer) else {
            return;
        };
        self.admit(Instant::now(), conn, sock);
    }

    /// A connection's PROXY protocol header is complete: the session starts with
    /// the header's client (the balancer's own address for `LOCAL`), the relay
    /// also admits the balancer for the client's data connections, and the bytes
    /// after the header are the client's first data.
    fn header_arrived(&mut self, a: Arrived) {
        let Arrived {
            sock,
            peer,
            client,
            rest,
        } = a;
        let Some(mut conn) = self.describe(&sock, peer) else {
            return;
        };
        if let Some(c) = client {
            let c = sys::unmap(c);
            if c.is_ipv4() != conn.orig_dst.is_ipv4() {
                warn!(
                    "closed connection from {peer}: its PROXY protocol header names {c}, of the other address family than the connection to {}; sessions do not cross families",
                    conn.orig_dst
                );
                return;
            }
            conn.client = c;
        }
        let now = Instant::now();
        let Some(id) = self.admit(now, conn, sock) else {
            return;
        };
        if conn.client.ip() != peer.ip() {
            self.data.get_mut().session_via(id, peer.ip());
        }
        if !rest.is_empty() && self.sessions.contains_key(&id) {
            self.feed(
                now,
                Call::Input(id, Input::Data(Side::Client, Bytes::from(rest))),
            );
        }
    }

    /// Sets up the sockets of session `id`, which the core has just accepted from
    /// `client`; the input for the core if the client socket cannot be registered.
    fn open_session(
        &mut self,
        id: SessionId,
        client: SocketAddr,
        mut sock: TcpStream,
    ) -> Option<Input> {
        let tls = self.client_tls.as_ref().map(ClientTls::for_session);
        let reuse = self.client_tls.as_ref().map(ClientTls::reuse);
        let server_tls = self.server_tls.as_ref().map(ServerTls::for_session);
        let data_tls = (tls.is_some() || server_tls.is_some()).then(|| SessionTls {
            config: tls.clone(),
            reuse: reuse.unwrap_or_default(),
            server: server_tls.clone(),
        });
        self.data
            .get_mut()
            .session_started(id, client.ip(), data_tls);
        sys::keepalive(&sock);
        sys::nodelay(&sock);
        let rw = Interest::READABLE | Interest::WRITABLE;
        let registered =
            self.poll
                .registry()
                .register(&mut sock, Tok::Control(id, Side::Client).token(), rw);
        // A fresh socket is assumed ready; WouldBlock will say otherwise.
        let mut session = Session {
            client_addr: client,
            client: Conn::new(sock, registered.is_ok()),
            server: None,
            connecting: false,
            reading: [true; 2],
            tls: tls.clone(),
            server_tls,
        };
        // Implicit TLS: the client's first bytes are its handshake.
        let mut tls_failed = false;
        if self.proxy.config().tls.client == ClientTlsMode::Implicit {
            match tls.map(rustls::ServerConnection::new) {
                Some(Ok(t)) => session.client.start_tls(t),
                Some(Err(e)) => {
                    error!("{id} cannot start TLS: {e}");
                    tls_failed = true;
                }
                None => {
                    error!("{id} implicit TLS, but no certificate is configured");
                    tls_failed = true;
                }
            }
        }
        self.sessions.insert(id, session);
        if let Err(e) = registered {
            error!(priority = "crit"; "{id} cannot register client socket: {e}");
            return Some(Input::Reset(Side::Client));
        }
        if tls_failed {
            return Some(Input::TlsFailed(Side::Client));
        }
        self.hot.insert((id, Side::Client));
        None
    }

    /// Whether `orig`, the original destination of an accepted connection, is the
    /// proxy's own listening socket. Only when the core connects to that destination
    /// (no fixed server, `-R`): with a fixed server it is the normal case.
    fn is_own_listener(&self, orig: SocketAddr) -> bool {
        // Reverse and forward mode serve connections to the listener itself: their
        // server is not the destination.
        let cfg = self.proxy.config();
        if cfg.fixed_server.is_some() || cfg.server_after_user() {
            return false;
        }
        self.listeners.iter().any(|l| {
            let listen_ip = sys::unmap(l.addr).ip();
            orig.port() == l.addr.port()
                && if listen_ip.is_unspecified() {
                    sys::is_local(orig.ip())
                } else {
                    orig.ip() == listen_ip
                }
        })
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
        self.feed(Instant::now(), Call::Input(id, input));
    }

    /// Writes and reads one control socket, with bounded work.
    fn service(&mut self, id: SessionId, side: Side) {
        // Write first: what the peer sent may be waiting for this socket. What was
        // written may turn read interest on or off, and a write error may end the
        // session (the loop below then finds it gone).
        if let Some(wrote) = self.flush(id, side) {
            self.feed(Instant::now(), Call::Input(id, wrote));
        }
        self.read_some(id, side);
        // On a TLS connection reading may have produced records of its own (the
        // handshake's answers): they go out now.
        let tls_out = self
            .sessions
            .get(&id)
            .and_then(|s| s.conn_ref(side))
            .is_some_and(|c| c.tls.is_some() && c.has_output());
        if tls_out {
            if let Some(wrote) = self.flush(id, side) {
                self.feed(Instant::now(), Call::Input(id, wrote));
            }
        }
    }

    /// Reads one control socket, within the turn's budget.
    fn read_some(&mut self, id: SessionId, side: Side) {
        let mut budget = READ_BUDGET;
        // A TLS read may take a socket read and a plaintext read per chunk.
        for _ in 0..MAX_READS * 4 {
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
            let input = match c.read_input(&mut self.read_buf[..budget.min(READ_SIZE)]) {
                Got::Eof => {
                    c.read_done = true;
                    Input::Eof(side)
                }
                Got::Data(b) => {
                    budget -= b.len();
                    Input::Data(side, b)
                }
                Got::Blocked => {
                    c.readable = false;
                    return;
                }
                Got::Again => continue,
                Got::Failed(e) => {
                    debug!("{id} {} read error: {e}", side.name());
                    c.read_done = true;
                    Input::Reset(side)
                }
                Got::Tls(e) => {
                    error!(
                        "{id} TLS on the {} control connection failed: {e}{}; ending the session",
                        side.name(),
                        plain_hint(&e)
                    );
                    // The alert rustls queued, if the socket takes it.
                    let _ = c.flush();
                    c.read_done = true;
                    Input::TlsFailed(side)
                }
            };
            self.feed(Instant::now(), Call::Input(id, input));
        }
        // The budget is spent with data possibly left: no new edge will say so.
        self.hot.insert((id, side));
    }

    /// Writes one side's queued output if the socket can take it; what the core must
    /// hear of it ([`Flushed::input`]), if anything. It does not tell the core itself.
    fn flush(&mut self, id: SessionId, side: Side) -> Option<Input> {
        let s = self.sessions.get_mut(&id)?;
        let connecting = s.connecting;
        let c = s.conn(side)?;
        if !c.has_output() || !c.writable || (side == Side::Server && connecting) {
            return None;
        }
        c.flush().input(id, side)
    }

    // ---- Driving the core: the only code that calls it (see the module docs). ----

    /// Feeds one call to the core, then drains every action it produced.
    fn feed(&mut self, now: Instant, call: Call) {
        debug_assert!(!self.draining, "the core fed from inside drain");
        match call {
            Call::Input(id, input) => self.proxy.handle(now, id, input),
            Call::Timeout => self.proxy.handle_timeout(now),
            Call::Shutdown => self.proxy.shutdown(now),
        }
        self.drain(now);
    }

    /// Offers one accepted connection to the core; if it is taken, sets the session's
    /// sockets up, then drains (the core's first actions need the session). The
    /// session's id if the core took it.
    fn admit(&mut self, now: Instant, conn: Accept, sock: TcpStream) -> Option<SessionId> {
        debug_assert!(!self.draining, "the core fed from inside drain");
        // On refusal the core logged it; no reply, as in the original.
        let id = self.proxy.accept(now, conn).ok()?;
        match self.open_session(id, conn.client, sock) {
            Some(input) => self.feed(now, Call::Input(id, input)),
            None => self.drain(now),
        }
        Some(id)
    }

    /// Executes every pending action (the core's drain rule), feeding each immediate
    /// answer back before the next action, then writes what they queued and feeds
    /// back what the writes did, until nothing is left: lines produced by one input
    /// leave in one write per socket.
    fn drain(&mut self, now: Instant) {
        debug_assert!(!self.draining, "drain re-entered");
        self.draining = true;
        loop {
            let mut next = self.proxy.poll_action();
            while let Some((id, action)) = next {
                next = match action {
                    Action::Send(side, bytes) => self.queue(id, side, bytes),
                    action => {
                        if let Some(answer) = self.execute(id, action) {
                            self.proxy.handle(now, id, answer);
                        }
                        self.proxy.poll_action()
                    }
                };
            }
            if self.unflushed.is_empty() {
                break;
            }
            for (id, side) in std::mem::take(&mut self.unflushed) {
                if let Some(wrote) = self.flush(id, side) {
                    self.proxy.handle(now, id, wrote);
                }
            }
        }
        self.draining = false;
    }

    /// Executes one action; returns the core's input that answers it at once, if it
    /// has one (a commit's result, the server socket opened or not).
    fn execute(&mut self, id: SessionId, action: Action) -> Option<Input> {
        match action {
            Action::ConnectServer { to, bind } => return self.connect_server(id, to, bind),
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
            Action::StartTls { side, pending } => return self.start_tls(id, side, &pending),
            Action::RulesMayRemain { anchor, error } => self.rules_may_remain(anchor, &error),
            Action::EndDataConnections { anchor } => {
                let killed = self
                    .data
                    .get_mut()
                    .kill_connections(self.poll.registry(), &anchor);
                if let Err(e) = killed {
                    error!("{id} cannot end the data connections of {anchor}: {e}");
                }
            }
            Action::TransferDone { anchor } => {
                self.data
                    .get_mut()
                    .transfer_done(self.poll.registry(), &anchor);
            }
            Action::Close { reason, summary } => {
                if let Some(r) = self.resolver.as_mut() {
                    r.forget(id);
                }
                self.close(id, &reason, &summary)
            }
            Action::Resolve { name } => {
                let asked = match self.resolver.as_mut() {
                    Some(r) => r.ask(id, &name),
                    None => Err("no resolver".into()),
                };
                if let Err(e) = asked {
                    return Some(Input::Resolved { result: Err(e) });
                }
            }
            Action::CommitRules { txn, anchor, rules } => {
                let result = self
                    .data
                    .get_mut()
                    .commit(self.poll.registry(), &anchor, &rules);
                return Some(Input::RulesCommitted { txn, result });
            }
        }
        None
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

    // ---- End of the drive path. ----

    /// The core has ended session `id`: its summary line, one best-effort flush of
    /// what is queued, and its sockets let go.
    fn close(&mut self, id: SessionId, reason: &CloseReason, summary: &Summary) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        let relayed = self.data.get_mut().session_ended(id);
        info!("{}", SummaryLine(id, reason, summary, relayed));
        let registry = self.poll.registry();
        // Errors ignored (as ftp-proxy.c's `end_session`); the core has forgotten
        // the session, so there is no one to tell. A TLS client hears the end as a
        // close_notify after the last reply.
        let _ = s.client.flush();
        if let Some(tls) = s.client.tls.as_mut() {
            tls.send_close_notify();
            let _ = s.client.flush();
        }
        let _ = registry.deregister(&mut s.client.sock);
        if let Some(mut c) = s.server.take() {
            if !s.connecting {
                let _ = c.flush();
                if let Some(tls) = c.tls.as_mut() {
                    tls.send_close_notify();
                    let _ = c.flush();
                }
            }
            let _ = registry.deregister(&mut c.sock);
        }
        self.hot.remove(&(id, Side::Client));
        self.hot.remove(&(id, Side::Server));
    }

    /// The core could not remove a finished session's rules (and has logged it):
    /// try once more, and otherwise leave them to `remove_all` at exit.
    fn rules_may_remain(&mut self, anchor: Anchor, error: &FilterError) {
        let retry = self
            .data
            .get_mut()
            .commit(self.poll.registry(), &anchor, &[]);
        match retry {
            Ok(()) => info!("rules of {anchor} removed on the second attempt (first: {error})"),
            Err(e) => error!(
                priority = "crit";
                "rules of {anchor} may remain until exit: removal failed twice ({e})"
            ),
        }
    }

    /// Executes [`Action::StartTls`]: the connection turns TLS once what is queued
    /// (the `234`) has gone out plain; the bytes the client sent after its `AUTH`
    /// line are the start of its handshake. A failure is the core's
    /// `Input::TlsFailed` of that side, logged here.
    fn start_tls(&mut self, id: SessionId, side: Side, pending: &[u8]) -> Option<Input> {
        let s = self.sessions.get_mut(&id)?;
        let made: Result<rustls::Connection, String> = match side {
            Side::Client => match s.tls.clone() {
                None => Err("no certificate is configured".into()),
                Some(config) => rustls::ServerConnection::new(config)
                    .map(Into::into)
                    .map_err(|e| e.to_string()),
            },
            Side::Server => match s.server_tls.as_ref() {
                None => Err("no TLS towards servers is configured".into()),
                Some(t) => t.connect().map(Into::into).map_err(|e| e.to_string()),
            },
        };
        let c = s.conn(side)?;
        let mut tls = match made {
            Ok(t) => t,
            Err(e) => {
                error!(
                    "{id} cannot start TLS on the {} connection: {e}",
                    side.name()
                );
                return Some(Input::TlsFailed(side));
            }
        };
        let mut rest = pending;
        while !rest.is_empty() {
            match tls.read_tls(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Err(e) = tls.process_new_packets() {
                error!(
                    "{id} TLS on the {} control connection failed: {e}; ending the session",
                    side.name()
                );
                return Some(Input::TlsFailed(side));
            }
        }
        debug!(
            "{id} TLS handshake on the {} connection begins",
            side.name()
        );
        c.start_tls(tls);
        self.unflushed.insert((id, side));
        self.hot.insert((id, side));
        None
    }

    /// Starts the server connect of session `id`; what the core must hear at once
    /// (`ServerSocketOpened` or `ServerConnectFailed`), `None` if the session is gone.
    fn connect_server(
        &mut self,
        id: SessionId,
        to: SocketAddr,
        bind: Option<std::net::IpAddr>,
    ) -> Option<Input> {
        if !self.sessions.contains_key(&id) {
            return None;
        }
        let started = sys::start_connect(to, bind.map(|ip| SocketAddr::new(ip, 0)));
        let input = match started {
            Err(e) => Input::ServerConnectFailed {
                error: ftp_proxy_core::SocketError::from_errno(e.errno() as i32),
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
                            let mut c = Conn::new(sock, false);
                            if let Some(v) = self.header_out {
                                // Before any byte of the session: the connect has
                                // only begun, so the core has sent nothing yet.
                                c.push_own(v.encode(s.client_addr, sys::unmap(to)));
                            }
                            // Implicit FTPS: TLS from the first byte (after a
                            // PROXY header, which the server reads plain).
                            let implicit =
                                self.proxy.config().tls.server == ServerTlsMode::Implicit;
                            if let Some(t) = s.server_tls.as_ref().filter(|_| implicit) {
                                match t.connect() {
                                    Ok(tls) => c.start_tls(tls),
                                    Err(e) => {
                                        error!("{id} cannot start TLS towards the server: {e}");
                                        return Some(Input::ServerConnectFailed {
                                            error: ErrorKind::Unsupported.into(),
                                        });
                                    }
                                }
                            }
                            s.server = Some(c);
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
        Some(input)
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

/// A hint after a TLS failure whose cause is usually plain text where TLS was
/// expected (an FTP client without TLS on the implicit-TLS port).
fn plain_hint(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidMessage(_) => " (not TLS: plain FTP on a TLS connection?)",
        _ => "",
    }
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
