//! The runtime with a recording packet-filter backend (the kernel data path) and the
//! relay's refusals: commits and their removal, the session limit, the idle timeout,
//! graceful shutdown, `max 1` and source checks. Real loopback sockets throughout.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};

use common::*;
use ftp_proxy_core::{Config, Direction, Translate};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    f.insert("small".to_string(), payload(1000, 1));
    f
}

fn cfg(server: SocketAddr) -> Config {
    Config {
        fixed_server: Some(server),
        ..Config::default()
    }
}

/// Reads until EOF or error; returns the kind of ending (`None` = clean EOF).
fn read_end(s: &mut std::net::TcpStream) -> Option<ErrorKind> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => continue,
            Err(e) => return Some(e.kind()),
        }
    }
}

#[test]
fn rules_committed_then_removed_at_session_end() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let backend = MockHandle::new();
    let proxy = RunningProxy::builder(cfg(server.addr))
        .kernel(backend.clone())
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    let data = c.pasv();
    {
        let anchors = backend.anchors();
        assert_eq!(anchors.len(), 1, "one anchor with the passive rules");
        let rules = anchors.values().next().unwrap();
        assert_eq!(rules.len(), 2);
        let rdr = rules.iter().find(|r| r.direction == Direction::In).unwrap();
        assert_eq!(rdr.from, ip("127.0.0.2"));
        assert_eq!(rdr.port, data.port());
        assert!(matches!(rdr.translate, Translate::RdrTo { addr, .. } if addr == ip("127.0.0.3")));
    }
    assert!(c.cmd("QUIT").starts_with("221"));
    drop(c);
    assert!(proxy.wait_sessions(|n| n == 0), "session did not end");
    {
        let anchors = backend.anchors();
        assert!(
            anchors.is_empty(),
            "rules left after the session: {anchors:?}"
        );
        let commits = backend.commits();
        let (anchor, last, result) = commits.last().unwrap();
        assert!(
            last.is_empty() && result.is_ok(),
            "last commit for {anchor} must remove the rules"
        );
    }
    let fin = proxy.stop();
    assert_eq!(fin.sessions_left, 0);
    assert_eq!(
        backend.lock().remove_all_calls(),
        1,
        "remove_all is the exit backstop"
    );
}

#[test]
fn shutdown_ends_live_sessions_and_removes_their_rules() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let backend = MockHandle::new();
    let proxy = RunningProxy::builder(cfg(server.addr))
        .kernel(backend.clone())
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    c.pasv();
    assert_eq!(backend.anchors().len(), 1);
    let fin = proxy.stop();
    assert_eq!(
        fin.sessions_left, 0,
        "every session ended within the grace period"
    );
    // The session's own empty commit happened before the backstop.
    let empties = backend
        .commits()
        .iter()
        .filter(|(_, r, _)| r.is_empty())
        .count();
    assert_eq!(empties, 1);
    assert!(backend.anchors().is_empty());
    // The client's control connection was closed by the shutdown.
    assert_eq!(read_end(&mut c.w), None);
}

#[test]
fn session_limit_refuses_extra_clients() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let config = Config {
        max_sessions: 1,
        ..cfg(server.addr)
    };
    let proxy = RunningProxy::builder(config).start();
    let mut first = Client::connect(ip("127.0.0.2"), proxy.addr);
    first.login();
    let mut second = connect_from(ip("127.0.0.2"), proxy.addr).unwrap();
    // Refused: closed at once, no FTP reply at all.
    let mut buf = [0u8; 64];
    let n = second.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "refused client got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The first session is unaffected.
    assert!(first.cmd("USER again").starts_with("331"));
    assert!(first.cmd("QUIT").starts_with("221"));
    drop(first);
    assert!(proxy.wait_sessions(|n| n == 0));
    // With the slot free, a new client is served.
    let mut third = Client::connect(ip("127.0.0.2"), proxy.addr);
    third.login();
    proxy.stop();
}

#[test]
fn idle_timeout_closes_the_session() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let config = Config {
        idle_timeout_secs: 1,
        ..cfg(server.addr)
    };
    let proxy = RunningProxy::builder(config).start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    // Silent client: the proxy must close the control connection (a hang would make
    // the read fail with a timeout error after 10 s instead of a clean EOF).
    assert_eq!(read_end(&mut c.w), None);
    assert!(proxy.wait_sessions(|n| n == 0));
    proxy.stop();
}

#[test]
fn unreachable_server_closes_the_client() {
    // A port nobody listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = RunningProxy::builder(cfg(dead)).start();
    let mut c = connect_from(ip("127.0.0.2"), proxy.addr).unwrap();
    assert_eq!(
        read_end(&mut c),
        None,
        "client must see the connection closed"
    );
    assert!(proxy.wait_sessions(|n| n == 0));
    proxy.stop();
}

#[test]
fn relay_refuses_strangers_and_a_second_connection() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    // Addresses of its own for the relay's ports (see relay_sessions.rs).
    let config = Config {
        source_addr: Some(ip("127.0.0.24")),
        ..cfg(server.addr)
    };
    let proxy = RunningProxy::builder(config)
        .listen("127.0.0.23:0".parse().unwrap())
        .relay()
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    let data = c.pasv();
    assert!(proxy.wait_relay(|(l, _)| l == 1));

    // Another source address may not use the rule (`from <client>`).
    let mut stranger = connect_from(ip("127.0.0.5"), data).unwrap();
    // Reset, not closed: a clean close would look like an empty transfer.
    assert_eq!(
        read_end(&mut stranger),
        Some(ErrorKind::ConnectionReset),
        "stranger must be reset"
    );
    assert_eq!(
        proxy.relay_counts.lock().unwrap().1,
        0,
        "no pair for the stranger"
    );

    // The client's first connection is relayed, a second concurrent one is not (max 1).
    let mut d = connect_from(ip("127.0.0.2"), data).unwrap();
    assert!(proxy.wait_relay(|(_, p)| p == 1));
    let mut again = connect_from(ip("127.0.0.2"), data).unwrap();
    assert_eq!(
        read_end(&mut again),
        Some(ErrorKind::ConnectionReset),
        "second concurrent connection must be reset"
    );

    // The first one still works.
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(got == payload(1000, 1));
    assert!(c.reply().starts_with("226"));
    // The server has closed its side and the 226 has been relayed: the transfer is
    // over, and the pair goes although the client keeps its socket.
    assert!(proxy.wait_relay(|(_, p)| p == 0));
    drop(d);

    // After it ended the rule still stands, but one negotiation lets one data
    // connection through: a new one is reset.
    let mut late = connect_from(ip("127.0.0.2"), data).unwrap();
    assert_eq!(read_end(&mut late), Some(ErrorKind::ConnectionReset));

    // A new negotiation replaces the rules: the old listener goes away.
    let data2 = c.pasv();
    assert_ne!(data2, data);
    assert!(proxy.wait_relay(|(l, _)| l == 1));
    let refused = connect_from(ip("127.0.0.2"), data);
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(c.cmd("QUIT").starts_with("221"));
    drop(c);
    assert!(
        proxy.wait_relay(|(l, _)| l == 0),
        "listener must go with the session"
    );
    proxy.stop();
}

#[test]
fn busy_commit_is_retried_and_the_reply_follows() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let backend = MockHandle::new();
    backend
        .lock()
        .push_result(Err(ftp_proxy_core::FilterError::Busy));
    let proxy = RunningProxy::builder(cfg(server.addr))
        .kernel(backend.clone())
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    // Pipelined: the USER behind the PASV waits for the retried commit.
    c.w.write_all(b"PASV\r\nUSER again\r\n").unwrap();
    let r = c.reply();
    assert!(r.starts_with("227 "), "{r:?}");
    assert!(c.reply().starts_with("331"));
    let commits = backend.commits();
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert_eq!(commits[0].2, Err(ftp_proxy_core::FilterError::Busy));
    assert_eq!(
        commits[0].1, commits[1].1,
        "the retry commits the same rules"
    );
    assert!(commits[1].2.is_ok());
    proxy.stop();
}

#[test]
fn failed_commit_ends_the_session() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let backend = MockHandle::new();
    backend
        .lock()
        .push_result(Err(ftp_proxy_core::FilterError::PermissionDenied));
    let proxy = RunningProxy::builder(cfg(server.addr))
        .kernel(backend.clone())
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    c.w.write_all(b"PASV\r\n").unwrap();
    // No 227: the connection just closes.
    let mut rest = String::new();
    let n = c.r.read_to_string(&mut rest).unwrap_or(0);
    assert!(rest.is_empty(), "got {n} bytes: {rest:?}");
    assert!(proxy.wait_sessions(|n| n == 0));
    assert!(backend.anchors().is_empty());
    proxy.stop();
}

#[test]
fn control_backpressure_loses_nothing() {
    // 200k lines (4.4 MB) towards a client that does not read at first: the proxy must
    // stop reading the server (bounded buffers) and resume when the client drains.
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let proxy = RunningProxy::builder(cfg(server.addr)).start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    const N: usize = 200_000;
    c.w.write_all(format!("SITE FLOOD {N}\r\n").as_bytes())
        .unwrap();
    // Let every buffer on the way fill up.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for i in 0..N {
        let line = c.reply();
        assert_eq!(line, format!("211-line {i:010}\r\n"));
    }
    assert_eq!(c.reply(), "211 flood done\r\n");
    // The session is still usable.
    assert!(c.cmd("USER x").starts_with("331"));
    proxy.stop();
}

#[test]
fn client_that_never_reads_proxy_replies_is_not_read_without_bound() {
    // With -A the proxy itself answers `USER bob` (500, 32 bytes for 10): a client that
    // floods such commands and never reads would make the proxy queue replies without
    // end if only the server-bound backlog stopped reading the client. The proxy must
    // stop reading it instead, lose nothing, and resume once the client reads.
    const BUDGET: usize = 16 << 20;
    const LINE: &[u8] = b"USER bob\r\n";
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let proxy = RunningProxy::builder(Config {
        anonymous_only: true,
        ..cfg(server.addr)
    })
    .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    assert!(c.reply().starts_with("220"));
    let chunk = LINE.repeat(6553);
    // A small send buffer keeps the kernel's share of what is taken small.
    nix::sys::socket::setsockopt(&c.w, nix::sys::socket::sockopt::SndBuf, &(64 << 10)).unwrap();
    c.w.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let mut last_progress = std::time::Instant::now();
    // Bounded: stops at the budget or after 500 ms without progress.
    while sent < BUDGET && last_progress.elapsed() < std::time::Duration::from_millis(500) {
        let off = sent % chunk.len();
        match c.w.write(&chunk[off..]) {
            Ok(n) => {
                sent += n;
                last_progress = std::time::Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    eprintln!("the proxy took {sent} bytes from a client that reads nothing");
    assert!(
        sent < BUDGET / 2,
        "the proxy kept reading a client that reads none of its replies: {sent} bytes taken"
    );
    // Finish the line in progress and log in (from a thread: the proxy reads again only
    // once the replies below are read), then read every reply.
    c.w.set_nonblocking(false).unwrap();
    let mut rest = match sent % LINE.len() {
        0 => Vec::new(),
        partial => LINE[partial..].to_vec(),
    };
    let lines = sent.div_ceil(LINE.len());
    rest.extend_from_slice(b"USER anonymous\r\n");
    let mut w = c.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&rest));
    for i in 0..lines {
        let r = c.reply();
        assert_eq!(
            r, "500 Only anonymous FTP allowed\r\n",
            "reply {i} of {lines}"
        );
    }
    assert!(c.reply().starts_with("331"), "the session goes on");
    writer.join().unwrap().unwrap();
    proxy.stop();
}

#[test]
fn a_failed_final_removal_is_retried() {
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let backend = MockHandle::new();
    {
        let mut mock = backend.lock();
        mock.push_result(Ok(()));
        mock.push_result(Err(ftp_proxy_core::FilterError::Other {
            errno: 5,
            text: "Input/output error".into(),
        }));
    }
    let proxy = RunningProxy::builder(cfg(server.addr))
        .kernel(backend.clone())
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    c.pasv();
    assert!(c.cmd("QUIT").starts_with("221"));
    drop(c);
    assert!(proxy.wait_sessions(|n| n == 0), "session did not end");
    let commits = backend.commits().to_vec();
    let removals: Vec<_> = commits.iter().filter(|c| c.1.is_empty()).collect();
    assert_eq!(removals.len(), 2, "{commits:?}");
    assert!(
        removals[0].2.is_err() && removals[1].2.is_ok(),
        "{commits:?}"
    );
    assert!(
        backend.anchors().is_empty(),
        "the retry removed the rules before exit"
    );
    proxy.stop();
}

#[test]
fn reading_resumes_after_a_retried_commit_with_input_held() {
    // The PASV's commit is busy; 4000 pipelined USER lines (48 KiB, more than one
    // 16 KiB read, so some stay in the socket) pile up behind it, so the core turns
    // reading the client off. The retry 5 ms later goes through on a timer, not a
    // socket event: the core's ReadInterest must bring reading back, or the rest of
    // the lines would wait for an event that never comes.
    let server = ScriptedServer::start(ip("127.0.0.3"), files());
    let backend = MockHandle::new();
    backend
        .lock()
        .push_result(Err(ftp_proxy_core::FilterError::Busy));
    let proxy = RunningProxy::builder(cfg(server.addr))
        .kernel(backend.clone())
        .start();
    let mut c = Client::connect(ip("127.0.0.2"), proxy.addr);
    c.login();
    const N: usize = 4000;
    let mut burst = b"PASV\r\n".to_vec();
    for _ in 0..N {
        burst.extend_from_slice(b"USER again\r\n");
    }
    assert!(burst.len() > 2 * 16 * 1024);
    c.w.write_all(&burst).unwrap();
    let r = c.reply();
    assert!(r.starts_with("227 "), "{r:?}");
    for i in 0..N {
        let r = c.reply();
        assert!(r.starts_with("331"), "reply {i}: {r:?}");
    }
    proxy.stop();
}
