//! The relay's bounds on data connections, with real sockets through the runtime:
//! every refusal is a reset, a per-session cap, idle and linger timeouts, and no
//! session for a connection whose destination is the proxy's own listener.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
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

/// Where the relay listens for the server's data connection: the address of the
/// (rewritten) PORT the server received last.
fn relay_port(server: &ScriptedServer) -> SocketAddr {
    let line = server.log.lock().unwrap().lines.last().cloned().unwrap();
    let v: Vec<u16> = line
        .trim_end()
        .trim_start_matches("PORT ")
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let a = std::net::Ipv4Addr::new(v[0] as u8, v[1] as u8, v[2] as u8, v[3] as u8);
    SocketAddr::new(a.into(), v[4] * 256 + v[5])
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
    let proxy = RunningProxy::builder(cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
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

/// One negotiation, one data connection (pf's `max 1` with the rule gone once its
/// state exists): after the first has ended, the proxy port of that PASV or PORT
/// takes no other, in either mode.
#[test]
fn one_negotiation_lets_exactly_one_data_connection_through() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();

    // Passive: the client's first connection carries a download and ends.
    let data_addr = c.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert_eq!(got, payload(1000, 1));
    assert!(c.reply().starts_with("226"));
    drop(d);
    assert!(proxy.wait_relay(|(_, p)| p == 0), "the first pair ends");
    // The listener is still there (the rules stay until the next negotiation), but
    // a second connection from the client is refused.
    let mut again = connect_from(ip(CLIENT), data_addr).expect("kernel accepts");
    assert_reset(&mut again, "a second connection after one PASV");

    // Active: the server's first connection to the PORT's proxy port is carried, a
    // second one is refused.
    let l = std::net::TcpListener::bind((ip(CLIENT), 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let r = c.cmd(&format!("PORT 127,0,0,2,{},{}", port >> 8, port & 255));
    assert!(r.starts_with("200"), "{r:?}");
    let relay_port = relay_port(&server);
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut d = accept_bounded(&l);
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert_eq!(got, payload(1000, 1));
    assert!(c.reply().starts_with("226"));
    drop(d);
    assert!(proxy.wait_relay(|(_, p)| p == 0), "the active pair ends");
    let mut again = connect_from(ip(SERVER), relay_port).expect("kernel accepts");
    assert_reset(&mut again, "a second connection after one PORT");
    proxy.stop();
}

/// A session that keeps data connections open holds at most `per_session` of them.
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
    let proxy = RunningProxy::builder(config)
        .listen(SocketAddr::new(ip(PROXY), 0))
        .limits(limits)
        .start();
    let mut hog = Client::connect(ip(CLIENT), proxy.addr);
    hog.login();
    // An active negotiation whose data connection comes (from the server's address)
    // and carries no transfer: the pair is in progress and counts. It does not
    // depend on the scripted server, which forgets a PORT at the next PASV.
    let l = std::net::TcpListener::bind((ip(CLIENT), 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let r = hog.cmd(&format!("PORT 127,0,0,2,{},{}", port >> 8, port & 255));
    assert!(r.starts_with("200"), "{r:?}");
    let kept = connect_from(ip(SERVER), relay_port(&server)).expect("data connect");
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

/// A transfer whose final reply has been relayed is over once one side has
/// finished: a peer that never closes its side does not keep it counted. Here the
/// server keeps every upload's data connection open (rclone's `serve ftp` does) and
/// the client keeps every download's: with two data connections per session and a
/// linger time of ten minutes, the third transfer of the session would be refused.
#[test]
fn finished_transfers_do_not_count_when_a_side_never_closes() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let limits = RelayLimits {
        per_session: 2,
        idle: Duration::from_secs(600),
        linger: Duration::from_secs(600),
    };
    let proxy = RunningProxy::builder(cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .limits(limits)
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    for i in 0..6u32 {
        let data_addr = c.pasv();
        let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
        let r = c.cmd(&format!("APPE up{i}"));
        assert!(r.starts_with("150"), "upload {i}: {r:?}");
        let up = payload(20_000 + i as usize, 50 + i);
        // A refused connection may still take the bytes into its buffer; the
        // server's reply tells.
        let _ = std::io::Write::write_all(&mut d, &up);
        drop(d);
        let r = c.reply();
        assert!(r.starts_with("226"), "upload {i}: {r:?}");
        assert!(
            server.log.lock().unwrap().stored.get(&format!("up{i}")) == Some(&up),
            "upload {i} arrived whole"
        );
    }
    assert!(
        proxy.wait_relay(|(_, p)| p == 0),
        "finished uploads still relayed although the server keeps them open"
    );
    // Downloads whose client keeps its socket: each ends at its end of file.
    let mut kept = Vec::new();
    for i in 0..4 {
        let data_addr = c.pasv();
        let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
        assert!(c.cmd("RETR small").starts_with("150"), "download {i}");
        let mut got = vec![0u8; 1000];
        d.read_exact(&mut got).unwrap();
        assert_eq!(got, payload(1000, 1), "download {i}");
        let r = c.reply();
        assert!(r.starts_with("226"), "download {i}: {r:?}");
        assert_eq!(outcome(&mut d).ok(), Some(0), "download {i} ends cleanly");
        kept.push(d);
    }
    assert!(
        proxy.wait_relay(|(_, p)| p == 0),
        "finished downloads still relayed although the client keeps them open"
    );
    drop(kept);
    proxy.stop();
}

/// The side that closed first is not always the one that sent the data: a client
/// that ended its sending side before a download must still get the whole file when
/// the transfer's 226 comes while part of the data is still on its way (the side
/// that has finished carried nothing).
#[test]
fn a_receiver_that_closed_its_side_first_gets_the_whole_download() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    d.shutdown(Shutdown::Write).unwrap();
    assert!(c.cmd("RETR overtaken").starts_with("150"));
    assert!(c.reply().starts_with("226"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(got == payload(1000, 1), "{} bytes of 1000", got.len());
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
    let proxy = RunningProxy::builder(cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .limits(limits)
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();

    // Half-closed, and no transfer's final reply relayed: the client ends its
    // side, the server never does. The pair stays until the linger time, then a
    // reset ends it.
    let data_addr = c.pasv();
    let mut kept = connect_from(ip(CLIENT), data_addr).expect("data connect");
    kept.shutdown(Shutdown::Write).unwrap();
    assert!(proxy.wait_relay(|(_, p)| p == 1));
    assert_reset(&mut kept, "a half-closed pair after its linger time");
    assert!(
        proxy.wait_relay(|(_, p)| p == 0),
        "half-closed pair outlived its linger time"
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
    let proxy = RunningProxy::builder(Config {
        max_sessions: 5,
        ..Config::default()
    })
    .listen(SocketAddr::new(ip(PROXY), 0))
    .relay()
    .divert(Divert::OriginalDst)
    .start();
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
