//! The relay's bounds on data connections, with real sockets through the runtime:
//! every refusal is a reset, a per-session cap, idle and linger timeouts, and no
//! session for a connection whose destination is the proxy's own listener.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use ftp_proxy_core::Config;
use ftp_proxy_runtime::{Divert, RelayLimits};

const CLIENT: &str = "127.0.0.2";
const SERVER: &str = "127.0.0.3";
const STRANGER: &str = "127.0.0.5";
/// Loopback addresses of this test alone (see relay_sessions.rs for why).
const PROXY: &str = "127.0.0.41";
const PROXY_OUT: &str = "127.0.0.42";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg(server: SocketAddr) -> Config {
    Config {
        fixed_server: Some(server),
        source_addr: Some(ip(PROXY_OUT)),
        ..Config::default()
    }
}

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    f.insert("small".to_string(), payload(1000, 1));
    f
}

/// What the peer of a refused or expired data connection sees.
fn outcome(s: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) => return Err(e),
        }
    }
}

fn assert_reset(s: &mut TcpStream, what: &str) {
    match outcome(s) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected a reset, got {other:?}"),
    }
}

#[test]
fn every_refused_data_connection_is_reset() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::start(cfg(server.addr), SocketAddr::new(ip(PROXY), 0), true, None);
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    // A stranger first: only the client may connect.
    let mut stranger = connect_from(ip(STRANGER), data_addr).expect("kernel accepts");
    assert_reset(&mut stranger, "connection from a stranger");
    // The client's connection, then a second one while it is in progress.
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(proxy.wait_relay(|(_, p)| p == 1));
    let mut second = connect_from(ip(CLIENT), data_addr).expect("kernel accepts");
    assert_reset(&mut second, "second connection to one negotiation");
    // The first is unharmed.
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert_eq!(got, payload(1000, 1));
    assert!(c.reply().starts_with("226"));
    proxy.stop();
}

/// A session that keeps its finished data connections open holds at most
/// `per_session` of them; once it ends, they expire after the linger time.
#[test]
fn one_session_cannot_hold_every_data_connection() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let limits = RelayLimits {
        per_session: 1,
        idle: Duration::from_secs(600),
        linger: Duration::from_secs(600),
    };
    let mut config = cfg(server.addr);
    config.max_sessions = 3;
    let proxy = RunningProxy::start_limited(config, SocketAddr::new(ip(PROXY), 0), limits);
    let mut hog = Client::connect(ip(CLIENT), proxy.addr);
    hog.login();
    let data_addr = hog.pasv();
    let mut kept = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(hog.cmd("RETR small").starts_with("150"));
    let mut got = vec![0u8; 1000];
    kept.read_exact(&mut got).unwrap();
    assert!(hog.reply().starts_with("226"));
    // `kept` stays open: the pair is half-closed and still counts.
    assert!(proxy.wait_relay(|(_, p)| p == 1));
    let data_addr = hog.pasv();
    let mut refused = connect_from(ip(CLIENT), data_addr).expect("kernel accepts");
    assert_reset(&mut refused, "over the per-session cap");

    // Another session still gets its data connection.
    let mut other = Client::connect(ip(CLIENT), proxy.addr);
    other.login();
    let data_addr = other.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(other.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert_eq!(got, payload(1000, 1));
    assert!(other.reply().starts_with("226"));
    drop(kept);
    proxy.stop();
}

/// Half-closed pairs and pairs of ended sessions expire after `linger`; a pair where
/// no byte moves after `idle`.
#[test]
fn idle_and_half_closed_data_connections_expire() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let limits = RelayLimits {
        per_session: 4,
        idle: Duration::from_secs(2),
        linger: Duration::from_secs(1),
    };
    let proxy =
        RunningProxy::start_limited(cfg(server.addr), SocketAddr::new(ip(PROXY), 0), limits);
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();

    // Half-closed: the transfer is complete, the client keeps its socket.
    let data_addr = c.pasv();
    let mut kept = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut got = vec![0u8; 1000];
    kept.read_exact(&mut got).unwrap();
    assert!(c.reply().starts_with("226"));
    assert!(proxy.wait_relay(|(_, p)| p == 1));
    // The end of file the server sent has arrived; the pair stays until the linger
    // time, then a reset ends it.
    assert_eq!(outcome(&mut kept).ok(), Some(0));
    assert!(
        proxy.wait_relay(|(_, p)| p == 0),
        "half-closed pair outlived its linger time"
    );
    std::thread::sleep(Duration::from_millis(100));
    // After a reset the socket is closed and the first write fails; after a clean
    // close the first write would still be accepted (the peer answers it with RST).
    assert!(
        kept.write(b"x").is_err(),
        "an expired pair must be reset, not closed"
    );

    // Idle: connected, no command, no byte either way.
    let data_addr = c.pasv();
    let mut idle = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(proxy.wait_relay(|(_, p)| p == 1));
    let t = std::time::Instant::now();
    assert_reset(&mut idle, "idle data connection");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "idle pair reset after {waited:?}, limit 2 s"
    );
    proxy.stop();
}

/// A connection that was not diverted reaches the proxy's own listener; serving it
/// would connect the proxy to itself, again and again.
#[test]
fn connection_to_own_listener_is_refused() {
    let proxy = RunningProxy::start_divert(
        Config {
            max_sessions: 5,
            ..Config::default()
        },
        SocketAddr::new(ip(PROXY), 0),
        true,
        None,
        Divert::OriginalDst,
    );
    let mut s = connect_from(ip(CLIENT), proxy.addr).expect("kernel accepts");
    let r = outcome(&mut s);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "expected the connection closed without a greeting, got {r:?}"
    );
    // No session was ever started (a loop fills the session limit, then collapses).
    std::thread::sleep(Duration::from_millis(300));
    let peak = *proxy.peak_sessions.lock().unwrap();
    assert_eq!(peak, 0, "sessions were started ({peak} at once)");
    proxy.stop();
}
