//! A reverse FTP proxy on std threads, written on `ftp-proxy-core`'s public API
//! alone: the second driver of the core, and the worked case of docs/embedding.md.
//!
//! ```text
//! cargo run -p ftp-proxy-core --example threaded -- 127.0.0.1:2121 127.0.0.1:21 [passive|active]
//! ```
//!
//! The optional third argument is the server data mode (`--server-data-mode`,
//! issue 17): `passive` bridges a client's PORT/EPRT through the server's passive
//! port ([`Decision::Dial`]), `active` joins a client's PASV/EPSV with the server's
//! connection to the proxy's PORT/EPRT.
//!
//! One thread owns the [`Proxy`] and the data path's [`Relay`] and is the only one
//! to touch them: every other thread (the client acceptor, a reader and a writer per
//! control socket, the server connects, an acceptor per data listener, the data
//! connects, two copy threads per data connection) sends it an [`Event`] over one
//! channel. The core thread feeds each event to the proxy or the relay and executes
//! what they say, opening or closing a reader's [`Gate`] on [`Action::ReadInterest`];
//! each writer reports what it wrote ([`Input::Written`]), from which the core
//! decides that read interest. Each commit's rules go to the [`Relay`], which
//! decides every data-path question (listeners, admission, joins, caps, idle limits
//! on this thread's clock, finished transfers, desync kills, the byte counts of the
//! summary); [`DataPath`] only binds, accepts, connects and copies.
//!
//! What std cannot do, and a production driver (the mio runtime) does: bind a source
//! address before connecting (`-a`, and the nat-to source of a `Connect`, which on a
//! one-host reverse proxy is the address the kernel picks anyway), reset a socket
//! rather than close it (no `SO_LINGER`: where the relay says reset, the peer sees an
//! end of file), and tell a kernel send queue's progress to the idle sweep.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use ftp_proxy_core::{
    Accept, Action, Admission, Anchor, Config, ConnectError, Decision, FilterError, Flow, Input,
    IoOp, ListenerId, PairId, PairState, Pcg32, Proxy, Relay, Rule, ServerDataMode, SessionId,
    Side, SocketError,
};

/// Data connections carried at once, in all sessions (the daemon's `-m`).
const MAX_PAIRS: usize = 100;

/// What reaches the core thread.
enum Event {
    /// A new client connection; `local` is where it arrived (the original destination).
    Client {
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    },
    /// The connect an [`Action::ConnectServer`] asked for has finished.
    ServerConnect(SessionId, io::Result<TcpStream>),
    /// Anything else that happened to a session's sockets.
    Input(SessionId, Input),
    /// A connection arrived on a data listener, from this peer.
    DataAccepted(ListenerId, TcpStream, SocketAddr),
    /// The connect of a [`Decision::Connect`] to this target has finished.
    DataConnect(PairId, SocketAddr, io::Result<TcpStream>),
    /// The connect of a [`Decision::Dial`] (a bridge's first leg) has finished.
    DataDialed(PairId, io::Result<TcpStream>),
    /// A copy thread's direction (`true`: up) moved bytes or ended, perhaps failing.
    DataCopied(PairId, bool, Flow, Option<(IoOp, SocketError)>),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(server)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: threaded LISTEN-ADDR:PORT SERVER-ADDR:PORT [client|passive|active]");
        std::process::exit(64);
    };
    let server_data_mode = match args.get(2).map(|m| m.parse::<ServerDataMode>()) {
        None => ServerDataMode::Client,
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            eprintln!("threaded: {e}");
            std::process::exit(64);
        }
    };
    log::set_logger(&STDERR).expect("the first logger");
    log::set_max_level(log::LevelFilter::Info);
    let cfg = Config {
        ipv6: server.is_ipv6(),
        fixed_server: Some(server),
        pid: std::process::id(),
        // The relay joins two connections that both end here (`Mode::Joined`).
        relay: true,
        server_data_mode,
        ..Config::default()
    };
    let proxy = Proxy::new(cfg, Box::new(Pcg32::new(seed()))).expect("a valid config");
    let listener = TcpListener::bind(listen).expect("bind the control port");
    log::info!("listening on {}", listener.local_addr().expect("bound"));
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    thread::spawn(move || accept_clients(listener, events));
    drive(proxy, rx, tx);
}

/// Hands every client connection to the core thread.
fn accept_clients(listener: TcpListener, events: Sender<Event>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            continue;
        };
        let client = Event::Client {
            stream,
            peer,
            local,
        };
        if events.send(client).is_err() {
            return;
        }
    }
}

/// The core thread: one event in, every action out, until the channel closes.
fn drive(mut proxy: Proxy, events: Receiver<Event>, tx: Sender<Event>) {
    let mut conns: HashMap<SessionId, Conn> = HashMap::new();
    let mut data = DataPath::new();
    loop {
        let deadline = match (proxy.poll_timeout(), data.relay.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let event = match deadline {
            Some(at) => match events.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match events.recv() {
                Ok(ev) => Some(ev),
                Err(_) => return,
            },
        };
        let now = Instant::now();
        match event {
            None => {
                // Both take a spurious call as nothing.
                proxy.handle_timeout(now);
                data.relay.handle_timeout(now, |_| [None, None]);
                data.drain(now, &tx);
            }
            Some(Event::Client {
                stream,
                peer,
                local,
            }) => {
                let conn = Accept {
                    client: peer,
                    orig_dst: local,
                    rdomain: 0,
                };
                match proxy.accept(now, conn) {
                    Ok(id) => {
                        data.relay.session_started(id, peer.ip());
                        let client = Half::spawn(id, Side::Client, stream, &tx);
                        conns.insert(
                            id,
                            Conn {
                                client,
                                server: None,
                                server_reads: true,
                            },
                        );
                    }
                    Err(refused) => log::warn!("refused {peer}: {refused}"),
                }
            }
            Some(Event::ServerConnect(id, result)) => {
                server_connected(&mut proxy, &mut conns, &tx, now, id, result)
            }
            Some(Event::Input(id, input)) => proxy.handle(now, id, input),
            Some(Event::DataAccepted(l, stream, peer)) => data.accepted(now, &tx, l, stream, peer),
            Some(Event::DataConnect(pair, to, r)) => data.connected(now, &tx, pair, to, r),
            Some(Event::DataDialed(pair, r)) => data.dialed(now, &tx, pair, r),
            Some(Event::DataCopied(pair, up, flow, failed)) => {
                data.copied(now, &tx, pair, up, flow, failed)
            }
        }
        while let Some((id, action)) = proxy.poll_action() {
            execute(&mut proxy, &mut conns, &mut data, &tx, now, id, action);
        }
    }
}

/// The std connect does the socket and the connect in one call, so both inputs
/// follow each other.
fn server_connected(
    proxy: &mut Proxy,
    conns: &mut HashMap<SessionId, Conn>,
    tx: &Sender<Event>,
    now: Instant,
    id: SessionId,
    result: io::Result<TcpStream>,
) {
    let stream = match result.and_then(|s| s.local_addr().map(|a| (s, a))) {
        Ok(s) => s,
        Err(e) => {
            let error = e.into();
            return proxy.handle(now, id, Input::ServerConnectFailed { error });
        }
    };
    // A session that ended meanwhile has no use for it: dropping it closes it.
    let Some(conn) = conns.get_mut(&id) else {
        return;
    };
    let (stream, local) = stream;
    let server = Half::spawn(id, Side::Server, stream, tx);
    server.gate.set(conn.server_reads);
    conn.server = Some(server);
    proxy.handle(now, id, Input::ServerSocketOpened { proxy: local });
    proxy.handle(now, id, Input::ServerConnected);
}

/// Carries out one action of session `id`.
fn execute(
    proxy: &mut Proxy,
    conns: &mut HashMap<SessionId, Conn>,
    data: &mut DataPath,
    tx: &Sender<Event>,
    now: Instant,
    id: SessionId,
    action: Action,
) {
    match action {
        // Forward mode (`Config::user_at_host`): a blocking lookup on a thread of
        // its own; the core bounds how long it waits for the answer.
        Action::Resolve { name } => {
            let tx = tx.clone();
            thread::spawn(move || {
                use std::net::ToSocketAddrs;
                let result = (name.as_str(), 0)
                    .to_socket_addrs()
                    .map(|addrs| addrs.map(|a| a.ip()).collect())
                    .map_err(|e| e.to_string());
                let _ = tx.send(Event::Input(id, Input::Resolved { result }));
            });
        }
        Action::ConnectServer { to, .. } => {
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(Event::ServerConnect(id, TcpStream::connect(to)));
            });
        }
        Action::Send(side, bytes) => {
            let half = conns.get(&id).and_then(|c| match side {
                Side::Client => Some(&c.client),
                Side::Server => c.server.as_ref(),
            });
            if let Some(half) = half {
                let _ = half.out.send(Out::Bytes(bytes));
            }
        }
        Action::ReadInterest { side, on } => match conns.get_mut(&id) {
            Some(conn) if side == Side::Client => conn.client.gate.set(on),
            // The server socket may not exist yet: remember the wish for it.
            Some(conn) => {
                conn.server_reads = on;
                if let Some(server) = &conn.server {
                    server.gate.set(on);
                }
            }
            None => {}
        },
        Action::CommitRules { txn, anchor, rules } => {
            let result = data.commit(now, tx, anchor, &rules);
            proxy.handle(now, id, Input::RulesCommitted { txn, result });
        }
        Action::Close { reason, summary } => {
            // The core has logged the reason; the driver logs what the session did.
            let (up, down) = data.relay.session_ended(id);
            log::info!(
                "{id} session summary: client={} server={} commands={} rules={} data_up={up} data_down={down} reason={}",
                summary.client,
                summary.server,
                summary.commands,
                summary.rules_committed,
                reason.kind()
            );
            if let Some(conn) = conns.remove(&id) {
                conn.close();
            }
        }
        Action::EndDataConnections { .. } => {
            data.relay.kill_session(id);
            data.drain(now, tx);
        }
        Action::RulesMayRemain { anchor, error } => {
            // Removing listeners cannot fail here; a real filter would retry.
            log::error!("{id} rules of {anchor} may remain: {error}");
            let _ = data.commit(now, tx, anchor, &[]);
        }
        Action::TransferDone { anchor } => {
            data.relay.transfer_done(SessionId(anchor.session));
            data.drain(now, tx);
        }
        // This example has no TLS, and its Config leaves client TLS off, so the
        // core never asks. Were it to, carrying on in plain text would hand TLS
        // records to the parser: end the session instead.
        Action::StartTls { side, .. } => {
            log::error!("{id} TLS requested on the {side}, which this example cannot do");
            proxy.handle(now, id, Input::Reset(side));
        }
    }
}

/// The two control sockets of a session.
struct Conn {
    client: Half,
    server: Option<Half>,
    /// The read interest last emitted for the server side, for when its socket opens.
    server_reads: bool,
}

impl Conn {
    /// Flushes what is queued to each side, then closes both sockets.
    fn close(self) {
        for half in std::iter::once(self.client).chain(self.server) {
            let _ = half.out.send(Out::Close);
            half.gate.set(true);
        }
    }
}

/// What a writer thread is asked to do.
enum Out {
    Bytes(Bytes),
    Close,
}

/// One control socket: a reader thread that feeds the core while its gate is open,
/// and a writer thread that sends what the core emits, in order.
struct Half {
    out: Sender<Out>,
    gate: Arc<Gate>,
}

impl Half {
    fn spawn(id: SessionId, side: Side, stream: TcpStream, events: &Sender<Event>) -> Half {
        let gate = Arc::new(Gate::default());
        let (out, queue) = mpsc::channel();
        let reader = stream.try_clone().expect("a second handle");
        let (tx, g) = (events.clone(), gate.clone());
        thread::spawn(move || read_side(id, side, reader, &g, &tx));
        let tx = events.clone();
        thread::spawn(move || write_side(id, side, stream, &queue, &tx));
        Half { out, gate }
    }
}

fn read_side(id: SessionId, side: Side, mut sock: TcpStream, gate: &Gate, events: &Sender<Event>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        gate.wait();
        let input = match sock.read(&mut buf) {
            Ok(0) => Input::Eof(side),
            Ok(n) => Input::Data(side, Bytes::copy_from_slice(&buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Input::Reset(side),
        };
        let last = !matches!(input, Input::Data(..));
        if events.send(Event::Input(id, input)).is_err() || last {
            return;
        }
    }
}

fn write_side(
    id: SessionId,
    side: Side,
    mut sock: TcpStream,
    queue: &Receiver<Out>,
    events: &Sender<Event>,
) {
    while let Ok(Out::Bytes(bytes)) = queue.recv() {
        if sock.write_all(&bytes).is_err() {
            let _ = events.send(Event::Input(id, Input::WriteError(side)));
            break;
        }
        let _ = events.send(Event::Input(id, Input::Written(side, bytes.len())));
    }
    let _ = sock.shutdown(Shutdown::Both);
}

/// Read interest as a gate: the reader waits while the core wants no more input.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        let mut closed = self.closed.lock().expect("gate lock");
        if *closed == open {
            *closed = !open;
            self.changed.notify_all();
        }
    }

    fn wait(&self) {
        let mut closed = self.closed.lock().expect("gate lock");
        while *closed {
            closed = self.changed.wait(closed).expect("gate lock");
        }
    }
}

/// The data path: `Relay` decides everything; this holds the sockets it speaks of
/// and the threads that move their bytes.
struct DataPath {
    relay: Relay,
    /// Each listener's address and its accept thread's stop flag.
    listeners: HashMap<ListenerId, (SocketAddr, Arc<AtomicBool>)>,
    /// A join's first leg, waiting for its partner ([`Admission::Hold`]).
    held: HashMap<ListenerId, TcpStream>,
    /// Accepted (or dialled) connections whose second leg is being connected.
    opening: HashMap<PairId, TcpStream>,
    /// Bridges whose first leg is being dialled ([`Decision::Dial`]), with their
    /// second leg once it has connected first (the two connects race).
    dialing: HashMap<PairId, Option<TcpStream>>,
    /// Pairs being copied: both sockets, and what their copy threads last said.
    pairs: HashMap<PairId, ([TcpStream; 2], PairState)>,
}

impl DataPath {
    fn new() -> DataPath {
        DataPath {
            relay: Relay::new(MAX_PAIRS),
            listeners: HashMap::new(),
            held: HashMap::new(),
            opening: HashMap::new(),
            dialing: HashMap::new(),
            pairs: HashMap::new(),
        }
    }

    /// The commit of a rule set, all or nothing: the relay plans it, every new
    /// listener is bound, and only then is it put in force.
    fn commit(
        &mut self,
        now: Instant,
        tx: &Sender<Event>,
        anchor: Anchor,
        rules: &[Rule],
    ) -> Result<(), FilterError> {
        let prepared = self.relay.prepare(anchor, rules)?;
        let mut bound = Vec::new();
        for (id, addr) in prepared.listen() {
            // Dropping those already bound closes them.
            bound.push((
                id,
                addr,
                TcpListener::bind(addr).map_err(|e| bind_error(addr, &e))?,
            ));
        }
        self.relay.commit(now, prepared);
        for (id, addr, sock) in bound {
            let stop = Arc::new(AtomicBool::new(false));
            let (s, tx) = (stop.clone(), tx.clone());
            thread::spawn(move || accept_data(id, &sock, &s, &tx));
            self.listeners.insert(id, (addr, stop));
        }
        self.drain(now, tx);
        Ok(())
    }

    /// A connection arrived on a listener: the relay says what becomes of it.
    fn accepted(
        &mut self,
        now: Instant,
        tx: &Sender<Event>,
        id: ListenerId,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        match self.relay.accept(now, id, peer) {
            Admission::Open { pair, .. } => {
                self.opening.insert(pair, stream);
            }
            Admission::Hold { .. } => {
                self.held.insert(id, stream);
            }
            Admission::Join { pair, with, .. } => match self.held.remove(&with) {
                Some(other) => self.carry(tx, pair, stream, other),
                None => close(&stream),
            },
            // Refused (the relay logged why): closed, as std allows.
            _ => close(&stream),
        }
        self.drain(now, tx);
    }

    /// The connect of a [`Decision::Connect`] has finished.
    fn connected(
        &mut self,
        now: Instant,
        tx: &Sender<Event>,
        pair: PairId,
        to: SocketAddr,
        result: io::Result<TcpStream>,
    ) {
        match result {
            Ok(opened) => {
                // A pair closed meanwhile has no use for it: dropping it closes it.
                if let Some(accepted) = self.opening.remove(&pair) {
                    self.relay.connected(now, pair);
                    self.carry(tx, pair, accepted, opened);
                } else if let Some(early) = self.dialing.get_mut(&pair) {
                    // A bridge whose first leg is still being dialled.
                    self.relay.connected(now, pair);
                    *early = Some(opened);
                }
            }
            Err(e) => {
                let error = SocketError::from(&e);
                self.relay
                    .connect_failed(now, pair, ConnectError::Refused { to, error });
            }
        }
        self.drain(now, tx);
    }

    /// The connect of a [`Decision::Dial`] has finished: the bridge's first leg,
    /// carried with its second once that one is connected too.
    fn dialed(
        &mut self,
        now: Instant,
        tx: &Sender<Event>,
        pair: PairId,
        result: io::Result<TcpStream>,
    ) {
        let Some(early) = self.dialing.remove(&pair) else {
            return;
        };
        match (result, early) {
            (Ok(first), Some(second)) => self.carry(tx, pair, first, second),
            (Ok(first), None) => {
                self.opening.insert(pair, first);
            }
            (Err(e), early) => {
                if let Some(second) = early {
                    close(&second);
                }
                self.relay
                    .failed(now, pair, IoOp::Setup, SocketError::from(&e));
            }
        }
        self.drain(now, tx);
    }

    /// A copy thread's news: the facts of its direction, and a failure if any.
    fn copied(
        &mut self,
        now: Instant,
        tx: &Sender<Event>,
        pair: PairId,
        up: bool,
        flow: Flow,
        failed: Option<(IoOp, SocketError)>,
    ) {
        let Some((_, state)) = self.pairs.get_mut(&pair) else {
            return;
        };
        *if up { &mut state.up } else { &mut state.down } = flow;
        self.relay.report(now, pair, *state);
        if let Some((op, error)) = failed {
            self.relay.failed(now, pair, op, error);
        }
        self.drain(now, tx);
    }

    /// Starts copying both ways between the pair's legs.
    fn carry(&mut self, tx: &Sender<Event>, pair: PairId, first: TcpStream, second: TcpStream) {
        let clones = (|| {
            Ok::<_, io::Error>([
                first.try_clone()?,
                second.try_clone()?,
                first.try_clone()?,
                second.try_clone()?,
            ])
        })();
        let Ok([a, b, c, d]) = clones else {
            return self.relay.failed(
                Instant::now(),
                pair,
                IoOp::Setup,
                SocketError::from(io::ErrorKind::Other),
            );
        };
        let tx2 = tx.clone();
        let tx = tx.clone();
        thread::spawn(move || copy(pair, true, a, b, &tx));
        thread::spawn(move || copy(pair, false, d, c, &tx2));
        self.pairs
            .insert(pair, ([first, second], PairState::default()));
    }

    /// Executes the relay's decisions, in order, until none is left.
    fn drain(&mut self, now: Instant, tx: &Sender<Event>) {
        while let Some(decision) = self.relay.poll_decision() {
            match decision {
                Decision::StopListening(id) => {
                    if let Some((addr, stop)) = self.listeners.remove(&id) {
                        stop.store(true, Ordering::SeqCst);
                        // A blocked `accept` cannot be interrupted in std: wake it.
                        let _ = TcpStream::connect(addr);
                    }
                    if let Some(held) = self.held.remove(&id) {
                        close(&held);
                    }
                }
                Decision::Dial { pair, to, .. } => {
                    self.dialing.insert(pair, None);
                    let tx = tx.clone();
                    thread::spawn(move || {
                        let _ = tx.send(Event::DataDialed(pair, TcpStream::connect(to)));
                    });
                }
                Decision::Connect { pair, to, .. } => {
                    let tx = tx.clone();
                    thread::spawn(move || {
                        let _ = tx.send(Event::DataConnect(pair, to, TcpStream::connect(to)));
                    });
                }
                Decision::Refresh(pair) => {
                    // The copy threads never stop reading: what they last said stands.
                    if let Some((_, state)) = self.pairs.get(&pair) {
                        self.relay.report(now, pair, *state);
                    }
                }
                Decision::ResetHeld(id) => {
                    if let Some(held) = self.held.remove(&id) {
                        close(&held);
                    }
                }
                Decision::Close { pair, .. } => {
                    if let Some(accepted) = self.opening.remove(&pair) {
                        close(&accepted);
                    }
                    if let Some(Some(second)) = self.dialing.remove(&pair) {
                        close(&second);
                    }
                    if let Some((socks, _)) = self.pairs.remove(&pair) {
                        socks.iter().for_each(close);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Ends a socket that copy threads may hold too, waking them. std has no
/// `SO_LINGER`, so where the relay says reset this sends an end of file.
fn close(sock: &TcpStream) {
    let _ = sock.shutdown(Shutdown::Both);
}

fn bind_error(addr: SocketAddr, e: &io::Error) -> FilterError {
    if e.kind() == io::ErrorKind::AddrInUse {
        FilterError::AddrInUse
    } else {
        FilterError::Other {
            errno: e.raw_os_error().unwrap_or(0),
            text: format!("bind {addr}: {e}"),
        }
    }
}

/// One listener's accept loop: every connection goes to the core thread.
fn accept_data(id: ListenerId, sock: &TcpListener, stop: &AtomicBool, events: &Sender<Event>) {
    for stream in sock.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        if events.send(Event::DataAccepted(id, stream, peer)).is_err() {
            return;
        }
    }
}

/// One direction of a pair: copy, passing the end of file on, and report the
/// direction's facts after each write. Blocked in `read`, it holds nothing and its
/// source is quiet.
fn copy(pair: PairId, up: bool, mut from: TcpStream, mut to: TcpStream, events: &Sender<Event>) {
    let mut flow = Flow {
        quiet: true,
        ..Flow::default()
    };
    let mut buf = vec![0u8; 16 * 1024];
    let failed = loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some((IoOp::Read, SocketError::from(e))),
        };
        if n == 0 {
            flow.eof = true;
            match to.shutdown(Shutdown::Write) {
                Ok(()) => flow.shut = true,
                Err(e) => break Some((IoOp::Shutdown, SocketError::from(e))),
            }
            break None;
        }
        if let Err(e) = to.write_all(&buf[..n]) {
            break Some((IoOp::Write, SocketError::from(e)));
        }
        flow.moved += n as u64;
        let _ = events.send(Event::DataCopied(pair, up, flow, None));
    };
    let _ = events.send(Event::DataCopied(pair, up, flow, failed));
}

/// Proxy ports must be unpredictable: seed from the kernel, else from the clock.
fn seed() -> u64 {
    let mut buf = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)) {
        Ok(()) => u64::from_ne_bytes(buf),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// The core logs through `log`; this prints its lines (and ours) to stderr.
struct Stderr;

static STDERR: Stderr = Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("{} {}", record.level(), record.args());
    }

    fn flush(&self) {}
}
