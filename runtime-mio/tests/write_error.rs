//! A control socket that fails on write: the loop reports it to the core
//! (`Input::WriteError`) as the value the write returned, and the session ends with
//! `reason=client_write_error`, once, its server connection closed.
//!
//! Driven turn by turn from the test's own thread, on real loopback sockets; the
//! "server" is a plain listener the test owns.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ftp_proxy_core::{Config, Proxy};
use ftp_proxy_runtime::{listen, DataPath, Divert, Options, OsRandom, Runtime};
use nix::sys::socket::{setsockopt, sockopt};
use pfctl_backend::mock::MockHandle;

/// Every info line the proxy logs (this binary has one test, so they are its).
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            LINES.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn turn(rt: &mut Runtime<MockHandle>) {
    rt.turn(Some(Duration::from_millis(1))).expect("turn");
}

#[test]
fn a_write_error_ends_the_session_once_and_closes_the_server_side() {
    log::set_logger(&CAPTURE).expect("logger");
    log::set_max_level(log::LevelFilter::Info);

    let server = TcpListener::bind((ip("127.0.0.3"), 0)).unwrap();
    server.set_nonblocking(true).unwrap();
    let cfg = Config {
        fixed_server: Some(server.local_addr().unwrap()),
        ..Config::default()
    };
    let opts = Options {
        listen: SocketAddr::new(ip("127.0.0.66"), 0),
        transparent: false,
        divert: Divert::Getsockname,
        max_sessions: cfg.max_sessions,
        relay: false,
    };
    let listener = listen(&opts).expect("listen");
    let proxy = Proxy::new(cfg, Box::new(OsRandom::new())).expect("config");
    let mut rt =
        Runtime::new(listener, &opts, proxy, DataPath::Kernel(MockHandle::new())).expect("runtime");

    // A client with small buffers that will never read.
    let client = TcpStream::connect(rt.local_addr()).unwrap();
    setsockopt(&client, sockopt::RcvBuf, &(16 << 10)).unwrap();
    setsockopt(&client, sockopt::SndBuf, &(16 << 10)).unwrap();
    client.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let upstream = loop {
        turn(&mut rt);
        match server.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never connected");
    };
    upstream.set_nonblocking(true).unwrap();
    (&upstream).write_all(b"220 test server\r\n").unwrap();

    // `AUTH` is answered by the proxy itself (an 80-byte refusal): flood it until
    // the proxy takes no more, its reply queue to the client full.
    let flood = b"AUTH\n".repeat(4 << 10);
    let mut sent = 0usize;
    let mut idle = 0;
    while idle < 300 {
        turn(&mut rt);
        match (&client).write(&flood[sent % 5..]) {
            Ok(n) => {
                sent += n;
                idle = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => idle += 1,
            Err(e) => panic!("flood write: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never stalled");
    }
    assert_eq!(rt.proxy().len(), 1, "the session is still open");

    // Closing with unread data resets the connection: the proxy's next write to
    // it fails (before it reads, as the loop writes first).
    drop(client);
    while !rt.proxy().is_empty() {
        turn(&mut rt);
        assert!(start.elapsed() < Duration::from_secs(60), "never ended");
    }
    for _ in 0..10 {
        turn(&mut rt);
    }

    let lines = LINES.lock().unwrap();
    let summaries: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("session summary"))
        .collect();
    assert_eq!(summaries.len(), 1, "one summary line: {summaries:?}");
    assert!(
        summaries[0].ends_with("reason=client_write_error"),
        "{}",
        summaries[0]
    );

    // The server's connection is closed (end of file after the greeting's traffic).
    upstream.set_nonblocking(false).unwrap();
    upstream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match (&upstream).read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server side not closed: {e}"),
        }
    }
}
