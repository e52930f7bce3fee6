//! What the relay does when the server's replies can no longer be trusted: a
//! passive transfer after a multi-line reply is served joined (the server connects
//! to the proxy, no server reply names a port), and a session that ends on a reply
//! desync takes its data connections with it (docs/behavior.md, "Replies out of step").

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use ftp_proxy_core::Config;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A relay proxy in reverse mode in front of `server`.
fn proxy_for(server: SocketAddr) -> RunningProxy {
    let cfg = Config {
        fixed_server: Some(server),
        relay: true,
        ..Config::default()
    };
    RunningProxy::builder(cfg).relay().start()
}

#[test]
fn a_pasv_after_a_multi_line_reply_is_joined_and_carries_the_file() {
    let file = payload(300_000, 7);
    let server = ScriptedServer::start(
        ip("127.0.0.1"),
        BTreeMap::from([("f".to_string(), file.clone())]),
    );
    let proxy = proxy_for(server.addr);
    let mut c = Client::connect(ip("127.0.0.1"), proxy.addr);
    c.login();
    // A multi-line reply: from now on no server reply may name a data port.
    c.w.write_all(b"SITE FLOOD 3\r\n").unwrap();
    for _ in 0..4 {
        c.reply();
    }
    for passive in ["PASV", "EPSV"] {
        let data_addr = if passive == "PASV" {
            c.pasv()
        } else {
            SocketAddr::new(ip("127.0.0.1"), c.epsv())
        };
        assert_eq!(data_addr.ip(), ip("127.0.0.1"));
        let mut d = connect_from(ip("127.0.0.1"), data_addr).unwrap();
        d.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert!(c.cmd("RETR f").starts_with("150"));
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), file.len(), "{passive}");
        assert!(got == file, "{passive}: bytes differ");
        assert!(c.reply().starts_with("226"));
    }
    let log = server.log.lock().unwrap();
    let cmds: Vec<&str> = log.lines.iter().map(|l| l.trim_end()).collect();
    assert!(
        !cmds
            .iter()
            .any(|l| l.eq_ignore_ascii_case("PASV") || l.eq_ignore_ascii_case("EPSV")),
        "the server was asked for a passive port: {cmds:?}"
    );
    assert_eq!(
        cmds.iter()
            .filter(|l| l.starts_with("PORT 127,0,0,1,"))
            .count(),
        2,
        "{cmds:?}"
    );
    // The server connected to the proxy, never the client to the server.
    assert!(log.data_peers.is_empty(), "{:?}", log.data_peers);
}

#[test]
fn a_reply_desync_resets_the_sessions_data_connections() {
    let server = ScriptedServer::start(ip("127.0.0.1"), BTreeMap::new());
    let proxy = proxy_for(server.addr);
    let mut c = Client::connect(ip("127.0.0.1"), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    let mut d = connect_from(ip("127.0.0.1"), data_addr).unwrap();
    d.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(c.cmd("RETR endless").starts_with("150"));
    let mut buf = vec![0u8; 64 * 1024];
    let mut before = 0;
    let start = Instant::now();
    while before < 100_000 && start.elapsed() < IO_TIMEOUT {
        match d.read(&mut buf) {
            Ok(n) => before += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("data connection failed before the desync: {e}"),
        }
    }
    assert!(before >= 100_000, "the transfer runs: {before} bytes");
    // The server's replies go out of step: the session ends, and the transfer it
    // negotiated must not run on (the server would send for another 30 s).
    c.w.write_all(b"SITE DESYNC\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let end = loop {
        assert!(
            Instant::now() < deadline,
            "the data connection still runs 5 s after the desync"
        );
        match d.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    // A reset, not an end of file: the client must not take it for a whole file.
    assert_eq!(end, "reset");
    assert!(proxy.wait_relay(|(_, pairs)| pairs == 0), "a pair remains");
}
