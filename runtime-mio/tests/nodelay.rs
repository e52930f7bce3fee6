//! Every socket the proxy writes on has `TCP_NODELAY`: with Nagle's algorithm a reply
//! that follows another (`150` then `226`) waited for the client's delayed ACK, 40 ms.
//!
//! The runtime runs in this process, so the test finds the proxy's own sockets among
//! this process's descriptors (by their addresses) and reads the option back from them.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;

use common::*;
use ftp_proxy_core::Config;
use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockaddrStorage};

const CLIENT: &str = "127.0.0.2";
const SERVER: &str = "127.0.0.3";
/// Loopback addresses of this test alone (see relay_sessions.rs for why).
const PROXY: &str = "127.0.0.31";
const PROXY_OUT: &str = "127.0.0.32";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn to_std(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// A connected TCP socket of this process: its addresses and `TCP_NODELAY`.
#[derive(Debug)]
struct Sock {
    local: SocketAddr,
    peer: SocketAddr,
    nodelay: bool,
}

/// Every connected TCP socket open in this process.
fn sockets() -> Vec<Sock> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(raw) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: only borrowed for the calls below while the descriptor is listed; a
        // descriptor closed meanwhile makes them fail (EBADF), which is skipped.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let (Ok(l), Ok(p)) = (
            getsockname::<SockaddrStorage>(raw),
            getpeername::<SockaddrStorage>(raw),
        ) else {
            continue;
        };
        let (Some(local), Some(peer)) = (to_std(l), to_std(p)) else {
            continue;
        };
        let Ok(nodelay) = getsockopt(&fd, sockopt::TcpNoDelay) else {
            continue;
        };
        out.push(Sock {
            local,
            peer,
            nodelay,
        });
    }
    out
}

#[test]
fn control_and_data_sockets_have_nodelay() {
    let mut files = BTreeMap::new();
    // Large enough that the transfer is still in progress while the sockets are looked at.
    files.insert("big".to_string(), payload(32 << 20, 5));
    let server = ScriptedServer::start(ip(SERVER), files);
    let proxy = RunningProxy::builder(Config {
        fixed_server: Some(server.addr),
        source_addr: Some(ip(PROXY_OUT)),
        ..Config::default()
    })
    .listen(SocketAddr::new(ip(PROXY), 0))
    .relay()
    .start();
    let mut c = Client::connect(ip(CLIENT), proxy.addr);
    c.login();
    let data_addr = c.pasv();
    let mut d = connect_from(ip(CLIENT), data_addr).expect("data connect through relay");
    assert!(c.cmd("RETR big").starts_with("150"));

    let socks = sockets();
    let client_local = c.w.local_addr().unwrap();
    let data_local = d.local_addr().unwrap();
    let find = |what: &str, f: &dyn Fn(&Sock) -> bool| -> bool {
        let s = socks
            .iter()
            .find(|s| f(s))
            .unwrap_or_else(|| panic!("no {what} socket among {socks:?}"));
        s.nodelay
    };
    let accepted_control = find("accepted control", &|s| {
        s.local == proxy.addr && s.peer == client_local
    });
    let server_control = find("server control", &|s| {
        s.local.ip() == ip(PROXY_OUT) && s.peer == server.addr
    });
    let accepted_data = find("accepted data", &|s| {
        s.local == data_addr && s.peer == data_local
    });
    let opened_data = find("opened data", &|s| {
        s.local.ip() == ip(PROXY_OUT) && s.peer.ip() == ip(SERVER) && s.peer != server.addr
    });
    assert!(
        accepted_control,
        "client control connection without TCP_NODELAY"
    );
    assert!(
        server_control,
        "server control connection without TCP_NODELAY"
    );
    assert!(
        accepted_data,
        "accepted data connection without TCP_NODELAY"
    );
    assert!(opened_data, "opened data connection without TCP_NODELAY");

    let mut got = Vec::new();
    d.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 32 << 20);
    assert!(c.reply().starts_with("226"));
    assert!(c.cmd("QUIT").starts_with("221"));
    proxy.stop();
}
