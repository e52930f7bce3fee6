//! Whole FTP sessions through the runtime in reverse mode with the userspace relay,
//! on real loopback sockets: a scripted server, a scripted client, the real core.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};

use common::*;
use ftp_proxy_core::Config;

const CLIENT: &str = "127.0.0.2";
const SERVER: &str = "127.0.0.3";
/// The proxy listens here and connects to the server from `PROXY_OUT` (`-a`): loopback
/// addresses no other program on the machine uses, so that no foreign socket (say a
/// TIME_WAIT from someone's FTP test on 127.0.0.1) holds the random proxy port the relay
/// must bind. The relay listens on these addresses.
const PROXY: &str = "127.0.0.21";
const PROXY_OUT: &str = "127.0.0.22";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn reverse_cfg(server: SocketAddr) -> Config {
    Config {
        fixed_server: Some(server),
        ipv6: server.is_ipv6(),
        source_addr: server.is_ipv4().then(|| ip(PROXY_OUT)),
        ..Config::default()
    }
}

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    f.insert("small".to_string(), payload(1000, 1));
    f.insert("big".to_string(), payload(3 << 20, 2));
    f.insert("both".to_string(), payload(10 << 20, 3));
    f
}

#[test]
fn passive_download_and_upload_through_relay() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();

    // Download: the 227 the client sees names the proxy, not the server.
    let data_addr = c.pasv();
    assert_eq!(
        data_addr.ip(),
        ip(PROXY),
        "227 must be rewritten to the address the client used"
    );
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect through relay");
    assert!(c.cmd("RETR big").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 3 << 20);
    assert!(got == payload(3 << 20, 2), "downloaded bytes differ");
    assert!(c.reply().starts_with("226"));

    // Upload on a fresh negotiation.
    let data_addr = c.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect through relay");
    assert!(c.cmd("STOR up").starts_with("150"));
    let up = payload(2 << 20, 9);
    d.write_all(&up).unwrap();
    drop(d);
    assert!(c.reply().starts_with("226"));
    assert!(c.cmd("QUIT").starts_with("221"));

    let log = server.log.lock().unwrap().clone();
    assert!(log.stored["up"] == up, "uploaded bytes differ");
    // The server saw the data connections come from the proxy's own address (nat-to).
    let proxy_ip = log.control_peers[0].ip();
    assert_eq!(log.data_peers.len(), 2);
    assert!(
        log.data_peers.iter().all(|p| p.ip() == proxy_ip),
        "{:?} vs {proxy_ip}",
        log.data_peers
    );
    assert_ne!(proxy_ip, ip(CLIENT));
    let fin = proxy.stop();
    assert_eq!(fin.sessions_left, 0);
    assert_eq!(
        fin.relay.0, 0,
        "relay listeners left after the session ended"
    );
}

#[test]
fn active_port_download_through_relay() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let l = TcpListener::bind((ip(CLIENT), 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let r = c.cmd(&format!("PORT 127,0,0,2,{},{}", port >> 8, port & 255));
    assert!(r.starts_with("200"), "{r:?}");
    assert!(c.cmd("RETR big").starts_with("150"));
    let (mut d, peer) = {
        let s = accept_bounded(&l);
        let p = s.peer_addr().unwrap();
        (s, p)
    };
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(
        got == payload(3 << 20, 2),
        "downloaded bytes differ ({} bytes)",
        got.len()
    );
    assert!(c.reply().starts_with("226"));
    // nat-to the original server address: the client sees the proxy address it used.
    assert_eq!(peer.ip(), ip(PROXY));
    let log = server.log.lock().unwrap().clone();
    let port_line = log.lines.iter().find(|l| l.starts_with("PORT")).unwrap();
    let proxy_ip = log.control_peers[0].ip();
    let IpAddr::V4(p4) = proxy_ip else { panic!() };
    let o = p4.octets();
    assert!(
        port_line.starts_with(&format!("PORT {},{},{},{},", o[0], o[1], o[2], o[3])),
        "PORT not rewritten to the proxy: {port_line:?}"
    );
    drop(c);
    assert!(
        proxy.wait_sessions(|n| n == 0),
        "session did not end after the client left"
    );
    proxy.stop();
}

#[test]
fn ten_mib_both_ways_with_half_close() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    let d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(c.cmd("SITE BOTH").starts_with("150"));
    let up = payload(10 << 20, 4);
    let mut dw = d.try_clone().unwrap();
    let up2 = up.clone();
    let sender = std::thread::spawn(move || {
        dw.write_all(&up2).unwrap();
        // Half-close: we are done sending but still receive.
        dw.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&d).read_to_end(&mut got).unwrap();
    sender.join().unwrap();
    assert_eq!(got.len(), 10 << 20);
    assert!(got == payload(10 << 20, 3), "bytes from the server differ");
    assert!(c.reply().starts_with("226"));
    let log = server.log.lock().unwrap().clone();
    assert_eq!(log.both_received.len(), 10 << 20);
    assert!(log.both_received == up, "bytes to the server differ");
    assert!(
        proxy.wait_relay(|(_, pairs)| pairs == 0),
        "data pair not closed after both half-closes"
    );
    drop(c);
    proxy.stop();
}

#[test]
fn ipv6_epsv_download_through_relay() {
    let lo6 = ip("::1");
    let server = ScriptedServer::start(lo6, files());
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(lo6, 0))
        .relay()
        .start();
    let mut c = Client::connect(lo6, proxy.addr);
    c.login();
    let port = c.epsv();
    let mut d = connect_from(lo6, SocketAddr::new(lo6, port)).expect("data connect");
    assert!(c.cmd("RETR big").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(got == payload(3 << 20, 2), "downloaded bytes differ");
    assert!(c.reply().starts_with("226"));
    assert!(c.cmd("QUIT").starts_with("221"));
    proxy.stop();
}

#[test]
fn rfc_mode_active_data_comes_from_port_20() {
    let server = ScriptedServer::start(ip(SERVER), files());
    let mut cfg = reverse_cfg(server.addr);
    cfg.rules.rfc_mode = true;
    // An address of its own: a TIME_WAIT left on 127.0.0.1:20 by another program (an
    // FTP server sending active data as root) would block binding port 20 there.
    let own = ip("127.0.0.6");
    let proxy = RunningProxy::builder(cfg)
        .listen(SocketAddr::new(own, 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    for round in 0..2 {
        let l = TcpListener::bind((ip(CLIENT), 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(c
            .cmd(&format!("PORT 127,0,0,2,{},{}", port >> 8, port & 255))
            .starts_with("200"));
        assert!(c.cmd("RETR small").starts_with("150"));
        let mut d = accept_bounded(&l);
        let peer = d.peer_addr().unwrap();
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert!(got == payload(1000, 1), "round {round}: bytes differ");
        assert!(c.reply().starts_with("226"));
        assert_eq!(peer.ip(), own);
        // Binding port 20 needs privilege; without it the relay uses an ephemeral port.
        if nix::unistd::geteuid().is_root() {
            assert_eq!(
                peer.port(),
                20,
                "round {round}: -r active data must come from port 20"
            );
        } else {
            eprintln!("not root: port 20 not checked (peer port {})", peer.port());
        }
    }
    proxy.stop();
}

#[test]
fn transfer_outlives_its_control_session() {
    // pf keeps states after their rules are removed; the relay keeps the data pair.
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    assert!(c.cmd("RETR big").starts_with("150"));
    drop(c);
    assert!(proxy.wait_sessions(|n| n == 0), "control session must end");
    assert!(proxy.wait_relay(|(l, _)| l == 0), "its listener must go");
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(
        got == payload(3 << 20, 2),
        "transfer cut short: {} bytes",
        got.len()
    );
    drop(d);
    assert!(proxy.wait_relay(|(_, p)| p == 0));
    proxy.stop();
}

#[test]
fn forty_concurrent_sessions_each_get_their_own_bytes() {
    let mut f = BTreeMap::new();
    for i in 0..40u32 {
        f.insert(
            format!("f{i}"),
            payload(200_000 + i as usize * 1000, 100 + i),
        );
    }
    let server = ScriptedServer::start(ip(SERVER), f);
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let addr = proxy.addr;
    let workers: Vec<_> = (0..40u32)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(ip(CLIENT), addr);
                c.login();
                for round in 0..2 {
                    let data_addr = c.pasv();
                    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
                    assert!(c.cmd(&format!("RETR f{i}")).starts_with("150"));
                    let mut got = Vec::new();
                    d.read_to_end(&mut got).unwrap();
                    assert!(
                        got == payload(200_000 + i as usize * 1000, 100 + i),
                        "session {i} round {round}: wrong bytes ({} received)",
                        got.len()
                    );
                    assert!(c.reply().starts_with("226"));
                }
                assert!(c.cmd("QUIT").starts_with("221"));
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread failed");
    }
    assert!(proxy.wait_sessions(|n| n == 0));
    assert!(
        proxy.wait_relay(|(l, p)| l == 0 && p == 0),
        "relay state left behind"
    );
    proxy.stop();
}

#[test]
fn shutdown_resets_data_connections_in_progress() {
    // The relay dies with the process: a transfer it cuts short must end in a reset on
    // both sides, never in the end of file that says "complete" in stream mode.
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(reverse_cfg(server.addr))
        .listen(SocketAddr::new(ip(PROXY), 0))
        .relay()
        .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect");
    // A small window so that most of the 3 MiB is still on the way at the shutdown.
    nix::sys::socket::setsockopt(&d, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    assert!(c.cmd("RETR big").starts_with("150"));
    let mut first = [0u8; 4096];
    d.read_exact(&mut first).unwrap();
    assert!(proxy.wait_relay(|(_, p)| p == 1), "the transfer is relayed");
    let fin = proxy.stop();
    assert_eq!(fin.relay.1, 1, "the transfer was still in progress");
    let mut got = first.len();
    let mut buf = [0u8; 65536];
    let end = loop {
        match d.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n,
            Err(e) => break Err(e.kind()),
        }
    };
    assert!(
        got < 3 << 20,
        "the whole file arrived: nothing was cut short"
    );
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "a transfer cut short after {got} bytes must not end cleanly"
    );
}

#[test]
fn data_connections_outliving_their_sessions_stay_within_the_session_limit() {
    // Transfers outlive their sessions, so a client could start a download, never read
    // it, drop the control connection and do it again: each round frees its session
    // slot but leaves a relayed pair (six descriptors) behind, and the descriptor budget
    // (9 per session, `nofile_needed`) runs out for everyone. The relay carries at most
    // as many data connections as there may be sessions; the next is refused.
    let server = ScriptedServer::start(ip(SERVER), files());
    let proxy = RunningProxy::builder(Config {
        max_sessions: 2,
        ..reverse_cfg(server.addr)
    })
    .listen(SocketAddr::new(ip(PROXY), 0))
    .relay()
    .start();
    let mut stalled = Vec::new();
    for i in 0..2 {
        let mut c = Client::connect(ip(CLIENT), proxy.addr);
        c.login();
        let d = connect_from(ip(CLIENT), c.pasv()).expect("data connect");
        assert!(c.cmd("RETR big").starts_with("150"));
        drop(c);
        assert!(proxy.wait_sessions(|n| n == 0), "session {i} ends");
        assert!(
            proxy.wait_relay(|(_, p)| p == i + 1),
            "its transfer goes on"
        );
        stalled.push(d);
    }
    // Two transfers and no session: a third data connection is one too many.
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let mut d = connect_from(ip(CLIENT), c.pasv()).expect("data connect");
    // Refused: closed at once. Relayed: nothing to read until the read times out.
    d.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    let refused = d.read(&mut buf).map_err(|e| e.kind());
    assert!(
        matches!(refused, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "a third relayed data connection: {refused:?}"
    );
    assert!(
        proxy.wait_relay(|(_, p)| p == 2),
        "no more pairs than sessions allowed"
    );
    // Once the stalled ones go, transfers work again.
    drop(stalled);
    assert!(proxy.wait_relay(|(_, p)| p == 0));
    let mut d = connect_from(ip(CLIENT), c.pasv()).expect("data connect");
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(got == payload(1000, 1), "download after the refusal");
    assert!(c.reply().starts_with("226"));
    proxy.stop();
}

/// A client must not hold more data connections by ending its sessions than by
/// keeping one: transfers that outlive their sessions (the server keeps sending, as
/// vsftpd does) count against the per-session allowance of their client address.
/// With `-m 4` and two per session, a client that started four downloads, one
/// session after another, held every slot and every other user's data connection
/// was reset. Now its third is refused, other users keep theirs, and the downloads
/// that outlive their sessions still arrive whole.
#[test]
fn transfers_outliving_their_sessions_count_against_their_client_address() {
    use ftp_proxy_runtime::RelayLimits;
    use std::time::Duration;
    let server = ScriptedServer::start(ip(SERVER), files());
    // A linger time no test reaches: the ended sessions' transfers stand for ones
    // that keep moving bytes (a slow reader), which no timer cuts.
    let limits = RelayLimits {
        per_session: 2,
        idle: Duration::from_secs(600),
        linger: Duration::from_secs(600),
    };
    let proxy = RunningProxy::builder(Config {
        max_sessions: 4,
        ..reverse_cfg(server.addr)
    })
    .listen(SocketAddr::new(ip(PROXY), 0))
    .limits(limits)
    .start();
    // One session at a time: start a download, end the session, keep the download.
    let orphan = |n: usize| {
        let mut c = Client::connect(ip(CLIENT), proxy.addr);
        c.login();
        let d = connect_from(ip(CLIENT), c.pasv()).expect("data connect");
        assert!(c.cmd("RETR big").starts_with("150"));
        drop(c);
        assert!(proxy.wait_sessions(|s| s == 0), "session {n} ends");
        d
    };
    let mut kept = Vec::new();
    for n in 0..2 {
        kept.push(orphan(n));
        assert!(
            proxy.wait_relay(|(_, p)| p == n + 1),
            "download {n} outlives its session"
        );
    }
    let mut third = orphan(2);
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    let r = third.read(&mut buf).map_err(|e| e.kind());
    assert!(
        matches!(r, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "a third data connection through ended sessions of one client: {r:?}"
    );
    assert!(proxy.wait_relay(|(_, p)| p == 2), "only two are relayed");

    // Another client's transfer goes through.
    let mut other = Client::connect(ip("127.0.0.7"), proxy.addr);
    other.login();
    let mut d = connect_from(ip("127.0.0.7"), other.pasv()).expect("data connect");
    assert!(other.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(got == payload(1000, 1), "another client's download");
    assert!(other.reply().starts_with("226"));

    // The downloads that outlived their sessions arrive whole; then the client's
    // allowance is back.
    for (n, mut d) in kept.into_iter().enumerate() {
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert!(
            got == payload(3 << 20, 2),
            "download {n} after its session: {} bytes",
            got.len()
        );
    }
    assert!(proxy.wait_relay(|(_, p)| p == 0));
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let mut d = connect_from(ip(CLIENT), c.pasv()).expect("data connect");
    assert!(c.cmd("RETR small").starts_with("150"));
    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert!(
        got == payload(1000, 1),
        "the client's download once its orphans ended"
    );
    assert!(c.reply().starts_with("226"));
    proxy.stop();
}
