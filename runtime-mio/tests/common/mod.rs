//! Shared test fixtures: a runtime in a thread (with the mock filter or the relay), a scripted FTP
//! server and a small FTP client, all on real loopback sockets.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ftp_proxy_core::{Config, Proxy};
use ftp_proxy_runtime::{
    listen, DataPath, Divert, Options, OsRandom, RelayLimits, Runtime, ShutdownHandle,
};
pub use pfctl_backend::mock::MockHandle;

/// Every read and connect in the tests gives up after this (a hang fails, not blocks).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the runtime thread reports when it ends.
#[derive(Debug)]
pub struct Finished {
    /// Sessions the proxy still had when the loop ended.
    pub sessions_left: usize,
    /// Relay listeners and pairs before `finish` removed the listeners.
    pub relay: (usize, usize),
}

/// A [`Runtime`] running in its own thread.
pub struct RunningProxy {
    pub addr: SocketAddr,
    handle: ShutdownHandle,
    join: Option<JoinHandle<Finished>>,
    /// Periodic snapshots of `relay_counts()` (latest last), for tests that wait on them.
    pub relay_counts: Arc<Mutex<(usize, usize)>>,
    pub live_sessions: Arc<Mutex<usize>>,
    /// The most sessions seen open at the end of any turn.
    pub peak_sessions: Arc<Mutex<usize>>,
}

/// How a [`RunningProxy`] is set up; [`RunningProxy::builder`] makes one.
///
/// By default the proxy listens on `127.0.0.1:0`, finds the original destination with
/// `getsockname`, and commits its rules to a fresh mock filter (the kernel data path).
#[must_use = "a builder does nothing until `start`"]
pub struct ProxyBuilder {
    cfg: Config,
    listen: SocketAddr,
    data: Data,
    divert: Divert,
    limits: Option<RelayLimits>,
}

/// Which data path the runtime drives.
enum Data {
    /// The kernel path with this mock filter (a fresh one if none given).
    Kernel(Option<MockHandle>),
    /// The userspace relay.
    Relay,
}

impl ProxyBuilder {
    /// Listens on `addr` (port 0 picks one) instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: SocketAddr) -> ProxyBuilder {
        self.listen = addr;
        self
    }

    /// Carries the data connections in the userspace relay.
    pub fn relay(mut self) -> ProxyBuilder {
        self.data = Data::Relay;
        self
    }

    /// The relay with these data-connection limits.
    pub fn limits(mut self, limits: RelayLimits) -> ProxyBuilder {
        self.data = Data::Relay;
        self.limits = Some(limits);
        self
    }

    /// The kernel data path, committing to `backend` (a handle the test keeps to look
    /// at the rules).
    pub fn kernel(mut self, backend: MockHandle) -> ProxyBuilder {
        self.data = Data::Kernel(Some(backend));
        self
    }

    /// Finds the original destination of a control connection this way.
    pub fn divert(mut self, divert: Divert) -> ProxyBuilder {
        self.divert = divert;
        self
    }

    /// Starts the runtime in its own thread and waits until it listens.
    pub fn start(self) -> RunningProxy {
        let (relay, backend) = match self.data {
            Data::Relay => (true, None),
            Data::Kernel(b) => (false, b),
        };
        RunningProxy::start_full(
            self.cfg,
            self.listen,
            relay,
            backend,
            self.divert,
            self.limits,
        )
    }
}

impl RunningProxy {
    /// A proxy with configuration `cfg`, to be set up and [started](ProxyBuilder::start).
    pub fn builder(cfg: Config) -> ProxyBuilder {
        ProxyBuilder {
            cfg,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: Data::Kernel(None),
            divert: Divert::Getsockname,
            limits: None,
        }
    }

    fn start_full(
        cfg: Config,
        listen_addr: SocketAddr,
        relay: bool,
        backend: Option<MockHandle>,
        divert: Divert,
        limits: Option<RelayLimits>,
    ) -> RunningProxy {
        // RUST_LOG=debug shows the proxy's log when a test fails.
        let _ = env_logger::builder().is_test(true).try_init();
        let (tx, rx) = mpsc::channel();
        let counts = Arc::new(Mutex::new((0, 0)));
        let live = Arc::new(Mutex::new(0));
        let peak = Arc::new(Mutex::new(0));
        let (counts2, live2, peak2) = (counts.clone(), live.clone(), peak.clone());
        let join = std::thread::spawn(move || {
            let opts = Options {
                listen: listen_addr,
                transparent: false,
                divert,
                max_sessions: cfg.max_sessions,
                relay,
            };
            let listener = listen(&opts).expect("listen");
            let proxy = Proxy::new(cfg, Box::new(OsRandom::new())).expect("config");
            let data = match (relay, backend) {
                (true, _) => DataPath::Relay,
                (false, Some(b)) => DataPath::Kernel(b),
                (false, None) => DataPath::Kernel(MockHandle::new()),
            };
            let mut rt = Runtime::new(listener, &opts, proxy, data).expect("runtime");
            if let Some(l) = limits {
                rt.set_relay_limits(l);
            }
            tx.send((rt.local_addr(), rt.shutdown_handle())).unwrap();
            // Bounded: a runtime that never finishes fails the test after a minute.
            let start = std::time::Instant::now();
            while !rt.is_finished() {
                rt.turn(Some(Duration::from_millis(50))).expect("turn");
                *counts2.lock().unwrap() = rt.relay_counts();
                *live2.lock().unwrap() = rt.proxy().len();
                let mut p = peak2.lock().unwrap();
                *p = (*p).max(rt.proxy().len());
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "runtime never finished"
                );
            }
            let fin = Finished {
                sessions_left: rt.proxy().len(),
                relay: rt.relay_counts(),
            };
            rt.finish();
            fin
        });
        let (addr, handle) = rx.recv_timeout(IO_TIMEOUT).expect("runtime started");
        RunningProxy {
            addr,
            handle,
            join: Some(join),
            relay_counts: counts,
            live_sessions: live,
            peak_sessions: peak,
        }
    }

    /// Starts the graceful shutdown and waits for the loop to end.
    pub fn stop(mut self) -> Finished {
        self.handle.shutdown();
        self.join
            .take()
            .unwrap()
            .join()
            .expect("runtime thread panicked")
    }

    /// Waits (bounded) until `f` holds for the live session count.
    pub fn wait_sessions(&self, f: impl Fn(usize) -> bool) -> bool {
        for _ in 0..400 {
            if f(*self.live_sessions.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits (bounded) until `f` holds for the relay counts (listeners, pairs).
    pub fn wait_relay(&self, f: impl Fn((usize, usize)) -> bool) -> bool {
        for _ in 0..400 {
            if f(*self.relay_counts.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            self.handle.shutdown();
            let _ = j.join();
        }
    }
}

/// Deterministic test payload.
pub fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A TCP connection from `from` (port 0) to `to`.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    use std::os::fd::AsRawFd;
    let fam = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// What the scripted server recorded.
#[derive(Debug, Default, Clone)]
pub struct ServerLog {
    /// Control lines received, in order.
    pub lines: Vec<String>,
    /// Uploads (STOR name -> bytes).
    pub stored: BTreeMap<String, Vec<u8>>,
    /// Peer addresses of the data connections the server accepted (passive).
    pub data_peers: Vec<SocketAddr>,
    /// Peer addresses of the control connections.
    pub control_peers: Vec<SocketAddr>,
    /// Bytes received on the bidirectional `SITE BOTH` transfer.
    pub both_received: Vec<u8>,
}

/// A scripted FTP server on `ip`: USER, PASS, PASV, EPSV, PORT, EPRT, RETR, STOR,
/// APPE (a STOR that, like rclone's `serve ftp`, never closes its side of the data
/// connection: it reads to the end of file, answers 226 and keeps the socket until
/// the control connection ends), `RETR overtaken` (file `small`, whose 226 overtakes
/// the second half of the data, as it may across connections on a real network),
/// `SITE BOTH` (sends and receives at once, with
/// half-close), QUIT. Serves control connections one after another until dropped.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<ServerLog>>,
    _join: JoinHandle<()>,
}

impl ScriptedServer {
    /// `files`: what RETR returns per name.
    pub fn start(ip: IpAddr, files: BTreeMap<String, Vec<u8>>) -> ScriptedServer {
        let l = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let log2 = log.clone();
        let files = Arc::new(files);
        let join = std::thread::spawn(move || {
            for conn in l.incoming().take(128) {
                let Ok(conn) = conn else { return };
                let (log, files) = (log2.clone(), files.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, ip, &log, &files);
                });
            }
        });
        ScriptedServer {
            addr,
            log,
            _join: join,
        }
    }
}

enum DataMode {
    None,
    Passive(TcpListener),
    Active(SocketAddr),
}

fn parse_port_args(s: &str) -> Option<SocketAddr> {
    let v: Vec<u16> = s
        .trim()
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    if v.len() != 6 {
        return None;
    }
    let ip = std::net::Ipv4Addr::new(v[0] as u8, v[1] as u8, v[2] as u8, v[3] as u8);
    Some(SocketAddr::new(ip.into(), v[4] * 256 + v[5]))
}

fn parse_eprt(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    let d = s.chars().next()?;
    let parts: Vec<&str> = s.split(d).collect();
    // "", proto, addr, port, ""
    let ip: IpAddr = parts.get(2)?.parse().ok()?;
    let port: u16 = parts.get(3)?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

fn open_data(
    mode: &mut DataMode,
    own_ip: IpAddr,
    log: &Mutex<ServerLog>,
) -> std::io::Result<TcpStream> {
    // A passive listener stays open until the next PASV, EPSV, PORT or EPRT (so a
    // test can see what a second connection to it meets); an active address is used once.
    let s = match mode {
        DataMode::Passive(l) => {
            // Bounded wait for the client's (relayed) data connection.
            l.set_nonblocking(true)?;
            let mut tries = 0;
            loop {
                match l.accept() {
                    Ok((s, peer)) => {
                        log.lock().unwrap().data_peers.push(peer);
                        s.set_nonblocking(false)?;
                        break s;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 1000 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        DataMode::Active(to) => {
            let to = *to;
            *mode = DataMode::None;
            connect_from(own_ip, to)?
        }
        DataMode::None => return Err(std::io::Error::other("no data mode")),
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn serve(
    conn: TcpStream,
    own_ip: IpAddr,
    log: &Mutex<ServerLog>,
    files: &BTreeMap<String, Vec<u8>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    log.lock().unwrap().control_peers.push(conn.peer_addr()?);
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 scripted server ready\r\n")?;
    let mut mode = DataMode::None;
    // APPE's data connections, never closed before the session ends.
    let mut kept: Vec<TcpStream> = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        log.lock().unwrap().lines.push(line.clone());
        let (cmd, arg) = line
            .trim_end()
            .split_once(' ')
            .unwrap_or((line.trim_end(), ""));
        match cmd.to_ascii_uppercase().as_str() {
            "USER" => w.write_all(b"331 password please\r\n")?,
            "PASS" => w.write_all(b"230 logged in\r\n")?,
            "PASV" => {
                let l = TcpListener::bind(SocketAddr::new(own_ip, 0))?;
                let a = l.local_addr()?;
                let IpAddr::V4(ip) = a.ip() else {
                    unreachable!("PASV on IPv6")
                };
                let o = ip.octets();
                let reply = format!(
                    "227 Entering Passive Mode ({},{},{},{},{},{})\r\n",
                    o[0],
                    o[1],
                    o[2],
                    o[3],
                    a.port() >> 8,
                    a.port() & 255
                );
                mode = DataMode::Passive(l);
                w.write_all(reply.as_bytes())?;
            }
            "EPSV" => {
                let l = TcpListener::bind(SocketAddr::new(own_ip, 0))?;
                let reply = format!(
                    "229 Entering Extended Passive Mode (|||{}|)\r\n",
                    l.local_addr()?.port()
                );
                mode = DataMode::Passive(l);
                w.write_all(reply.as_bytes())?;
            }
            "PORT" => match parse_port_args(arg) {
                Some(a) => {
                    mode = DataMode::Active(a);
                    w.write_all(b"200 PORT ok\r\n")?;
                }
                None => w.write_all(b"501 bad PORT\r\n")?,
            },
            "EPRT" => match parse_eprt(arg) {
                Some(a) => {
                    mode = DataMode::Active(a);
                    w.write_all(b"200 EPRT ok\r\n")?;
                }
                None => w.write_all(b"501 bad EPRT\r\n")?,
            },
            "RETR" if arg == "endless" => {
                // Sends until the data connection breaks (bounded: 30 s), while the
                // control connection goes on, as vsftpd does.
                w.write_all(b"150 sending for ever\r\n")?;
                let mut d = open_data(&mut mode, own_ip, log)?;
                std::thread::spawn(move || {
                    let chunk = vec![b'e'; 16 * 1024];
                    let end = std::time::Instant::now() + Duration::from_secs(30);
                    while std::time::Instant::now() < end && d.write_all(&chunk).is_ok() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
            "RETR" if arg == "overtaken" => {
                let data = files.get("small").cloned().unwrap_or_default();
                w.write_all(b"150 sending\r\n")?;
                let mut d = open_data(&mut mode, own_ip, log)?;
                let (first, second) = data.split_at(data.len() / 2);
                d.write_all(first)?;
                std::thread::sleep(Duration::from_millis(300));
                w.write_all(b"226 done\r\n")?;
                std::thread::sleep(Duration::from_millis(300));
                d.write_all(second)?;
            }
            "RETR" => {
                let Some(data) = files.get(arg) else {
                    w.write_all(b"550 no such file\r\n")?;
                    continue;
                };
                w.write_all(b"150 sending\r\n")?;
                let mut d = open_data(&mut mode, own_ip, log)?;
                d.write_all(data)?;
                drop(d);
                w.write_all(b"226 done\r\n")?;
            }
            "STOR" => {
                w.write_all(b"150 receiving\r\n")?;
                let mut d = open_data(&mut mode, own_ip, log)?;
                let mut got = Vec::new();
                d.read_to_end(&mut got)?;
                log.lock().unwrap().stored.insert(arg.to_string(), got);
                w.write_all(b"226 stored\r\n")?;
            }
            "APPE" => {
                w.write_all(b"150 receiving\r\n")?;
                let mut d = open_data(&mut mode, own_ip, log)?;
                let mut got = Vec::new();
                d.read_to_end(&mut got)?;
                log.lock().unwrap().stored.insert(arg.to_string(), got);
                kept.push(d);
                w.write_all(b"226 stored\r\n")?;
            }
            "SITE" if arg.eq_ignore_ascii_case("BOTH") => {
                let data = files.get("both").cloned().unwrap_or_default();
                w.write_all(b"150 both ways\r\n")?;
                let d = open_data(&mut mode, own_ip, log)?;
                let mut dw = d.try_clone()?;
                let sender = std::thread::spawn(move || {
                    let r = dw.write_all(&data);
                    let _ = dw.shutdown(Shutdown::Write);
                    r
                });
                let mut got = Vec::new();
                (&d).read_to_end(&mut got)?;
                sender.join().unwrap()?;
                log.lock().unwrap().both_received = got;
                w.write_all(b"226 both done\r\n")?;
            }
            "SITE" if arg.to_ascii_uppercase().starts_with("FLOOD ") => {
                // A long multi-line reply, written as fast as the proxy takes it.
                let n: usize = arg[6..].trim().parse().unwrap_or(0);
                let mut out = Vec::with_capacity(n * 24);
                for i in 0..n {
                    out.extend_from_slice(format!("211-line {i:010}\r\n").as_bytes());
                }
                out.extend_from_slice(b"211 flood done\r\n");
                w.write_all(&out)?;
            }
            "SITE" if arg.eq_ignore_ascii_case("DESYNC") => {
                // A multi-line reply that ends early, then a line that answers nothing:
                // what a listing of client-chosen names looks like to the proxy.
                w.write_all(b"211-status\r\n211 early end\r\n211 a\r\n211 b\r\n211 c\r\n")?;
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"502 not implemented\r\n")?,
        }
    }
}

/// A minimal FTP client on a control connection.
pub struct Client {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
    pub ip: IpAddr,
}

impl Client {
    pub fn connect(from: IpAddr, proxy: SocketAddr) -> Client {
        let s = connect_from(from, proxy).expect("connect to proxy");
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            ip: from,
        }
    }

    /// Reads one reply line.
    pub fn reply(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read reply");
        line
    }

    /// Sends a command and returns the reply line.
    pub fn cmd(&mut self, c: &str) -> String {
        self.w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    pub fn login(&mut self) {
        let banner = self.reply();
        assert!(banner.starts_with("220"), "banner: {banner:?}");
        assert!(self.cmd("USER anonymous").starts_with("331"));
        assert!(self.cmd("PASS x@").starts_with("230"));
    }

    /// PASV; returns the address from the 227 reply.
    pub fn pasv(&mut self) -> SocketAddr {
        let r = self.cmd("PASV");
        assert!(r.starts_with("227 "), "PASV reply: {r:?}");
        let inner = &r[r.find('(').unwrap() + 1..r.find(')').unwrap()];
        parse_port_args(inner).unwrap()
    }

    /// EPSV; returns the port from the 229 reply.
    pub fn epsv(&mut self) -> u16 {
        let r = self.cmd("EPSV");
        assert!(r.starts_with("229 "), "EPSV reply: {r:?}");
        let inner = &r[r.find("(|||").unwrap() + 4..r.find("|)").unwrap()];
        inner.parse().unwrap()
    }
}

/// Accepts one connection, bounded in time.
pub fn accept_bounded(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    panic!("no connection within 10 s");
}
