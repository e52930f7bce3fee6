//! A reverse FTP proxy on std threads, written on `ftp-proxy-core`'s public API
//! alone: the second driver of the core, and the worked case of docs/embedding.md.
//!
//! ```text
//! cargo run -p ftp-proxy-core --example threaded -- 127.0.0.1:2121 127.0.0.1:21
//! ```
//!
//! One thread owns the [`Proxy`] and is the only one to touch it: every other thread
//! (the client acceptor, a reader and a writer per control socket, the server
//! connects, the data path) sends it an [`Event`] over one channel. The core thread
//! feeds each event to the proxy and executes the actions, opening or closing a
//! reader's [`Gate`] on [`Action::ReadInterest`]; each writer reports what it wrote
//! ([`Input::Written`]), from which the core decides that read interest. The packet filter is the
//! userspace data path: each commit becomes [`Forward`]s, run by [`DataPath`].
//!
//! What std cannot do, and a production driver (the mio runtime) does: bind a source
//! address before connecting (`-a`, and the nat-to address of a [`Forward`], which on
//! a one-host reverse proxy is the address the kernel picks anyway), refuse with a
//! reset rather than a close, and limit data connections beyond one per negotiation.

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
    forwards, Accept, Action, Anchor, Config, FilterError, Forward, Input, Pcg32, Proxy, Rule,
    SessionId, Side,
};

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
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(server)) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: threaded LISTEN-ADDR:PORT SERVER-ADDR:PORT");
        std::process::exit(64);
    };
    log::set_logger(&STDERR).expect("the first logger");
    log::set_max_level(log::LevelFilter::Info);
    let cfg = Config {
        ipv6: server.is_ipv6(),
        fixed_server: Some(server),
        pid: std::process::id(),
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
    let mut data = DataPath::default();
    loop {
        let event = match proxy.poll_timeout() {
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
            None => proxy.handle_timeout(now),
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
            let result = data.commit(anchor, &rules);
            proxy.handle(now, id, Input::RulesCommitted { txn, result });
        }
        Action::Close { reason, summary } => {
            // The core has logged the reason; the driver logs what the session did.
            log::info!(
                "{id} session summary: client={} server={} commands={} rules={} reason={}",
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
        Action::EndDataConnections { anchor } => {
            // This example does not track the connections its threads carry, so it
            // can only stop listening; the mio runtime resets them too.
            log::warn!("{id} replies out of step: closing the data listeners of {anchor}");
            let _ = data.commit(anchor, &[]);
        }
        Action::RulesMayRemain { anchor, error } => {
            // Removing listeners cannot fail here; a real filter would retry.
            log::error!("{id} rules of {anchor} may remain: {error}");
            let _ = data.commit(anchor, &[]);
        }
        // Ignored on purpose: each data connection here ends when both sides have
        // closed it, with no limit on how many a session holds, so a side that never
        // closes (rclone after STOR) costs two threads until the peer goes, not a
        // refused transfer. The mio runtime, which caps them, closes such a finished
        // connection (docs/embedding.md).
        Action::TransferDone { .. } => {}
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

/// The packet filter of this proxy: the listeners of each session's forwards.
#[derive(Default)]
struct DataPath {
    anchors: HashMap<Anchor, Vec<Listening>>,
}

impl DataPath {
    /// Replaces the anchor's forwards, all or nothing (the commit's contract): every
    /// new listener is bound before an old one closes; one on the same address stays.
    fn commit(&mut self, anchor: Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        let wanted = forwards(rules)?;
        // Joins (two accepted connections) are the mio relay's; this example leaves
        // `Config::relay` off, so the core never asks for one.
        if let Some(join) = wanted.iter().find(|f| f.join) {
            return Err(FilterError::Unsupported(format!("join {join}")));
        }
        let mut old = self.anchors.remove(&anchor).unwrap_or_default();
        let mut bound = Vec::new();
        for fwd in &wanted {
            if old.iter().any(|l| l.addr == fwd.listen) {
                continue;
            }
            match TcpListener::bind(fwd.listen) {
                Ok(sock) => bound.push((sock, fwd.clone())),
                Err(e) => {
                    self.anchors.insert(anchor, old);
                    return Err(bind_error(fwd.listen, &e));
                }
            }
        }
        let mut next = Vec::new();
        for fwd in wanted {
            if let Some(i) = old.iter().position(|l| l.addr == fwd.listen) {
                let kept = old.swap_remove(i);
                *kept.fwd.lock().expect("forward lock") = fwd;
                next.push(kept);
            }
        }
        for gone in old {
            gone.stop();
        }
        next.extend(
            bound
                .into_iter()
                .map(|(sock, fwd)| Listening::spawn(sock, fwd, anchor.session)),
        );
        if !next.is_empty() {
            self.anchors.insert(anchor, next);
        }
        Ok(())
    }
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

/// One forward's listener, run by its own thread until [`stop`](Self::stop).
struct Listening {
    addr: SocketAddr,
    fwd: Arc<Mutex<Forward>>,
    stop: Arc<AtomicBool>,
}

impl Listening {
    /// `session` prefixes the log lines, as the core's `#id` does.
    fn spawn(sock: TcpListener, fwd: Forward, session: u32) -> Listening {
        let addr = fwd.listen;
        let fwd = Arc::new(Mutex::new(fwd));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (fwd.clone(), stop.clone());
        thread::spawn(move || serve_forward(&sock, &f, &s, session));
        Listening { addr, fwd, stop }
    }

    /// Closes the listener; data connections in progress run to their end. A blocked
    /// `accept` cannot be interrupted in std, so a connection of our own wakes it.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Accepts the forward's one data connection, from its source only: every later
/// one is refused, while the first runs and after it has ended.
fn serve_forward(sock: &TcpListener, fwd: &Mutex<Forward>, stop: &AtomicBool, session: u32) {
    let mut used = false;
    for conn in sock.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let Ok(peer) = conn.peer_addr() else { continue };
        let fwd = fwd.lock().expect("forward lock").clone();
        if !fwd.admits(peer.ip()) {
            log::warn!(
                "#{session} data connection from {peer} to {} refused: a stranger, only {} may connect",
                fwd.listen,
                fwd.from
            );
            continue;
        }
        if used {
            log::warn!(
                "#{session} data connection from {peer} to {} refused: this negotiation's one data connection has already been made",
                fwd.listen
            );
            continue;
        }
        used = true;
        thread::spawn(move || carry(conn, &fwd, session));
    }
}

/// Connects to the forward's target and copies both ways, passing each end of file on.
fn carry(accepted: TcpStream, fwd: &Forward, session: u32) {
    let opened = match TcpStream::connect(fwd.target) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(
                "#{session} data connection {fwd} failed: cannot connect to {}: {e}",
                fwd.target
            );
            return;
        }
    };
    let (Ok(a), Ok(b)) = (accepted.try_clone(), opened.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pump(a, b));
    pump(opened, accepted);
    let _ = up.join();
}

/// One direction: copy until end of file, then half-close; on an error, end both ways.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
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
