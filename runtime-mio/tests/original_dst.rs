//! `Divert::OriginalDst` against a real nftables `redirect`, inside a network namespace
//! this test creates for one thread (and the threads it spawns): the root namespace's
//! firewall is never touched. Needs root, `ip` and `nft`; as root a missing tool fails
//! the test.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use common::*;
use ftp_proxy_core::Config;
use ftp_proxy_runtime::Divert;

fn sh(cmd: &str, args: &[&str], stdin: Option<&str>) {
    let mut c = Command::new(cmd);
    c.args(args).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{cmd} missing: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let st = child.wait().unwrap();
    assert!(st.success(), "{cmd} {args:?} failed: {st}");
}

/// Waits (at most 2 s) until the kernel has the local route of `addr`, an address
/// just added to lo: IPv6 inserts it from a work queue after `ip addr add` returns,
/// even with `nodad`, and a connection to the address before that fails with
/// ENETUNREACH (about one run in 40 on a busy machine).
fn wait_for_local_route(addr: &str) {
    for _ in 0..200 {
        let out = Command::new("ip")
            .args(["-6", "route", "show", "table", "local", addr])
            .output()
            .expect("ip");
        if out.status.success() && !out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no local route for {addr} 2 s after adding it to lo");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn redirected_clients_see_their_original_destination() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: needs a network namespace and nftables; not run");
        return;
    }
    let t = std::thread::spawn(|| {
        // A fresh network namespace for this thread only; it goes away with the last
        // thread in it.
        // SAFETY: unshare(2) with CLONE_NEWNET touches only this thread's namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        sh("ip", &["link", "set", "lo", "up"], None);
        let mut files = BTreeMap::new();
        files.insert("f".to_string(), payload(100_000, 5));
        let server = ScriptedServer::start(ip("127.0.0.3"), files);
        let cfg = Config {
            fixed_server: Some(server.addr),
            ..Config::default()
        };
        let proxy = RunningProxy::builder(cfg)
            .relay()
            .divert(Divert::OriginalDst)
            .start();
        // Locally generated connections only pass the output hook (docs/linux.md, "Limits").
        let rules = format!(
            "table ip t {{\n chain out {{\n  type nat hook output priority -100; policy accept;\n  \
             ip daddr 127.0.0.9 tcp dport 21 redirect to :{}\n }}\n}}\n",
            proxy.addr.port()
        );
        sh("nft", &["-f", "-"], Some(&rules));

        let mut c = Client::connect(ip("127.0.0.2"), SocketAddr::new(ip("127.0.0.9"), 21));
        c.login();
        let data = c.pasv();
        assert_eq!(
            data.ip(),
            ip("127.0.0.9"),
            "227 must name the original destination"
        );
        let mut d = connect_from(ip("127.0.0.2"), data).expect("data connection to the relay");
        assert!(c.cmd("RETR f").starts_with("150"));
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert!(got == payload(100_000, 5));
        assert!(c.reply().starts_with("226"));

        // A connection that was not redirected falls back to getsockname.
        let mut direct = Client::connect(ip("127.0.0.2"), proxy.addr);
        direct.login();
        assert_eq!(direct.pasv().ip(), ip("127.0.0.1"));
        proxy.stop();
    });
    t.join().expect("namespace test thread failed");
}

#[test]
fn redirected_ipv6_clients_see_their_original_destination() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: needs a network namespace and nftables; not run");
        return;
    }
    let t = std::thread::spawn(|| {
        // SAFETY: unshare(2) with CLONE_NEWNET touches only this thread's namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        sh("ip", &["link", "set", "lo", "up"], None);
        // The "server" the client believes in: an address only this namespace has.
        sh(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                "2001:db8:ff::9/128",
                "dev",
                "lo",
                "nodad",
            ],
            None,
        );
        wait_for_local_route("2001:db8:ff::9");
        let lo6 = ip("::1");
        let mut files = BTreeMap::new();
        files.insert("f".to_string(), payload(100_000, 6));
        let server = ScriptedServer::start(lo6, files);
        let cfg = Config {
            fixed_server: Some(server.addr),
            ipv6: true,
            ..Config::default()
        };
        let proxy = RunningProxy::builder(cfg)
            .listen("[::1]:0".parse().unwrap())
            .relay()
            .divert(Divert::OriginalDst)
            .start();
        let rules = format!(
            "table ip6 t {{\n chain out {{\n  type nat hook output priority -100; policy accept;\n  \
             ip6 daddr 2001:db8:ff::9 tcp dport 21 redirect to :{}\n }}\n}}\n",
            proxy.addr.port()
        );
        sh("nft", &["-f", "-"], Some(&rules));
        let orig: SocketAddr = "[2001:db8:ff::9]:21".parse().unwrap();
        let mut c = Client::connect(lo6, orig);
        c.login();
        let port = c.epsv();
        // EPSV names no address: the client reuses the one it connected to, which the
        // relay must therefore be listening on.
        let mut d = connect_from(lo6, SocketAddr::new(orig.ip(), port))
            .expect("data connection to the relay");
        assert!(c.cmd("RETR f").starts_with("150"));
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert!(got == payload(100_000, 6));
        assert!(c.reply().starts_with("226"));
        proxy.stop();
    });
    t.join().expect("namespace test thread failed");
}
