//! The nftables backend against the real kernel, inside a router namespace, without the
//! proxy binary: the elements each commit leaves (read back with `nft list`), atomic
//! replace and failure, removal, and real TCP connections NATed by those elements
//! (passive, active with `-r`, IPv4 and IPv6, and the one-connection "arm" gate).
//!
//! Root only: as root every component must be present or the test fails; otherwise it
//! prints why it did not run.

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use ftp_proxy_core::Filter;
use ftp_proxy_core::{
    data_rules, Anchor, Config, FilterError, Mode, RuleLog, RuleOptions, SessionAddrs,
};
use ftp_proxy_tests::netns::{self, check, Ns, Result, Topology};
use pfctl_backend::nft::{own_pid_namespace, table_name, tag_mark, NftBackend};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// `nft args` in the calling thread's namespace.
fn nft(args: &[&str]) -> Result<String> {
    netns::run_ok(Command::new("nft").args(args), Duration::from_secs(10))
}

fn addrs4() -> SessionAddrs {
    SessionAddrs {
        client: ip(netns::CLIENT4),
        server: ip(netns::SERVER4),
        orig_server: ip(netns::SERVER4),
        proxy: ip(netns::ROUTER_S4),
        client_rdomain: 0,
    }
}

fn addrs6() -> SessionAddrs {
    SessionAddrs {
        client: ip(netns::CLIENT6),
        server: ip(netns::SERVER6),
        orig_server: ip(netns::SERVER6),
        proxy: ip(netns::ROUTER_S6),
        client_rdomain: 0,
    }
}

fn must_contain(text: &str, needles: &[&str]) -> Result<()> {
    for n in needles {
        if !text.contains(n) {
            return Err(check(format!("`{n}` in the nft listing"), text));
        }
    }
    Ok(())
}

fn must_not_contain(text: &str, needles: &[&str]) -> Result<()> {
    for n in needles {
        if text.contains(n) {
            return Err(check(format!("no `{n}` in the nft listing"), text));
        }
    }
    Ok(())
}

/// The NAT source port the backend chose for the nat element whose key starts with
/// `key` (`A . B . P : addr . PORT`).
fn nat_port(listing: &str, key: &str) -> Option<u16> {
    let at = listing.find(key)?;
    let rest = &listing[at..];
    let data = rest[rest.find(':')? + 1..].trim_start();
    let end = data.find([',', '\n', '}']).unwrap_or(data.len());
    data[..end].trim().rsplit(". ").next()?.trim().parse().ok()
}

#[test]
fn commit_replace_remove_in_router_namespace() -> Result<()> {
    if !netns::is_root("commit_replace_remove_in_router_namespace") {
        return Ok(());
    }
    let topo = Topology::up("bk")?;
    topo.in_ns(Ns::Router, || -> Result<()> {
        let cfg = Config {
            pid: std::process::id(),
            ..Config::default()
        };
        let mut b = NftBackend::open(&cfg)
            .map_err(|e| check("NftBackend::open to succeed as root", e.to_string()))?;
        let t = b.table().to_string();
        assert_eq!(t, table_name(std::process::id(), own_pid_namespace()));
        assert!(b.owned(), "table {t} without the owner flag on this kernel");
        let listed = nft(&["list", "table", "inet", &t])?;
        must_contain(&listed, &["flags owner"])?;
        let s1 = Anchor {
            pid: cfg.pid,
            session: 1,
        };
        let s2 = Anchor {
            pid: cfg.pid,
            session: 2,
        };
        let s3 = Anchor {
            pid: cfg.pid,
            session: 3,
        };

        // Passive negotiation: arm + rdr + nat.
        let r = data_rules(Mode::Passive, &addrs4(), 30028, 50447, &cfg.rules);
        b.commit(&s1, &r)
            .map_err(|e| check("passive commit", e.to_string()))?;
        let l = nft(&["list", "table", "inet", &t])?;
        must_contain(
            &l,
            &[
                "203.0.113.10 . 198.51.100.10 . 50447 timeout 1d",
                ": 198.51.100.10 . 30028",
                "203.0.113.10 . 198.51.100.10 . 30028 . 50447 timeout 1d",
                ": 198.51.100.1 . ",
            ],
        )?;
        let np = nat_port(&l, "203.0.113.10 . 198.51.100.10 . 30028 . 50447")
            .ok_or_else(|| check("a nat4 element", l.clone()))?;
        assert!(
            (50001..=65535).contains(&np),
            "nat port {np} outside 50001-65535"
        );
        let arm = nft(&["list", "set", "inet", &t, "arm4"])?;
        must_contain(&arm, &["203.0.113.10 . 198.51.100.10 . 50447"])?;

        // The same negotiation again: destroy and re-add of the same keys in one batch.
        b.commit(&s1, &r)
            .map_err(|e| check("re-commit of the same rules", e.to_string()))?;
        let l = nft(&["list", "table", "inet", &t])?;
        must_contain(
            &l,
            &[
                "203.0.113.10 . 198.51.100.10 . 50447 timeout 1d",
                "203.0.113.10 . 198.51.100.10 . 30028 . 50447 timeout 1d",
            ],
        )?;

        // Replace by an active PORT negotiation with -r: the passive elements go, in
        // the same transaction, and the nat data is the original server, port 20.
        let rfc = RuleOptions {
            rfc_mode: true,
            ..RuleOptions::default()
        };
        let r = data_rules(Mode::ActivePort, &addrs4(), 40000, 50500, &rfc);
        b.commit(&s1, &r)
            .map_err(|e| check("active commit", e.to_string()))?;
        let l = nft(&["list", "table", "inet", &t])?;
        must_not_contain(&l, &["50447", "30028"])?;
        must_contain(
            &l,
            &[
                "198.51.100.10 . 198.51.100.1 . 50500",
                ": 203.0.113.10 . 40000",
                "198.51.100.10 . 203.0.113.10 . 40000 . 50500",
                ": 198.51.100.10 . 20",
            ],
        )?;

        // IPv6 in a second anchor.
        let r6 = data_rules(Mode::Passive, &addrs6(), 31000, 51000, &cfg.rules);
        b.commit(&s2, &r6)
            .map_err(|e| check("IPv6 commit", e.to_string()))?;
        let l6 = nft(&["list", "map", "inet", &t, "rdr6"])?;
        must_contain(
            &l6,
            &[
                "2001:db8:1::10 . 2001:db8:2::10 . 51000",
                ": 2001:db8:2::10 . 31000",
            ],
        )?;

        // A commit that clashes (the same proxy port as another anchor's, other data:
        // the core never hands out one proxy port twice, another program might) fails
        // as a whole: none of its elements appear, and the other anchor's stay.
        let mut clash = addrs6();
        clash.proxy = ip("2001:db8:2::99");
        let r = data_rules(Mode::Passive, &clash, 31999, 51000, &cfg.rules);
        match b.commit(&s3, &r) {
            Err(FilterError::Other { errno, .. }) if errno == libc::EEXIST => {}
            other => {
                return Err(check(
                    "EEXIST for a clashing rdr6 element",
                    format!("{other:?}"),
                ))
            }
        }
        let l = nft(&["list", "table", "inet", &t])?;
        must_not_contain(&l, &["31999", "2001:db8:2::99"])?;
        must_contain(&l, &["51000", ": 2001:db8:2::10 . 31000"])?;

        // Empty commits remove; an anchor that never had rules costs nothing.
        b.commit(&s1, &[])
            .map_err(|e| check("empty commit", e.to_string()))?;
        b.commit(&s3, &[])
            .map_err(|e| check("empty commit of a clean anchor", e.to_string()))?;
        let l = nft(&["list", "table", "inet", &t])?;
        must_not_contain(&l, &["50500", "40000"])?;
        b.commit(&s2, &[])
            .map_err(|e| check("empty commit", e.to_string()))?;
        let l = nft(&["list", "table", "inet", &t])?;
        must_not_contain(&l, &["elements"])?;

        b.remove_all()
            .map_err(|e| check("remove_all", e.to_string()))?;
        let tables = nft(&["list", "tables"])?;
        must_not_contain(&tables, &[&t])?;
        b.remove_all()
            .map_err(|e| check("a second remove_all to be a no-op", e.to_string()))?;
        Ok(())
    })?
}

#[test]
fn options_stale_tables_and_refusals() -> Result<()> {
    if !netns::is_root("options_stale_tables_and_refusals") {
        return Ok(());
    }
    let topo = Topology::up("op")?;
    topo.in_ns(Ns::Router, || -> Result<()> {
        let pid = std::process::id();
        let ns = own_pid_namespace().expect("/proc/self/ns/pid");
        let own = table_name(pid, Some(ns));
        // A leftover with our name (an earlier process with our pid) holding an extra
        // chain, one of a dead daemon of this PID namespace, one of another PID
        // namespace whose pid means nothing here, and an old-style bare-pid name.
        let dead = format!("ftp-proxy-999999999-{ns}");
        let foreign = format!("ftp-proxy-1-{}", ns + 1);
        let script = format!(
            "table inet {own} {{\n\tchain junk {{\n\t}}\n}}\ntable inet {dead}\ntable inet {foreign}\ntable inet ftp-proxy-999999998\ntable inet other\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(netns::io_err("nft"))?;
        child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(netns::io_err("nft stdin"))?;
        assert!(child.wait().map_err(netns::io_err("nft"))?.success());

        let mut cfg = Config { pid, ..Config::default() };
        cfg.rules.log = RuleLog::All;
        cfg.rules.tag = Some("FTPDATA".into());
        cfg.idle_timeout_secs = 600;
        let mut b = NftBackend::open(&cfg).map_err(|e| check("open", e.to_string()))?;
        assert_eq!(b.mark(), tag_mark("FTPDATA"));
        let tables = nft(&["list", "tables"])?;
        must_not_contain(&tables, &[&dead])?;
        must_contain(&tables, &["table inet other", &own, &foreign, "table inet ftp-proxy-999999998\n"])?;
        let l = nft(&["list", "table", "inet", b.table()])?;
        must_not_contain(&l, &["junk"])?;
        let mark = format!("ct mark set {:#010x}", tag_mark("FTPDATA"));
        must_contain(&l, &[&mark, "log prefix \"ftp-proxy: \"", "hook forward", "dstnat - 10", "srcnat - 10"])?;
        b.commit(&Anchor { pid, session: 1 }, &data_rules(Mode::Passive, &addrs4(), 30001, 50001, &cfg.rules))
            .map_err(|e| check("commit", e.to_string()))?;
        let l = nft(&["list", "map", "inet", b.table(), "rdr4"])?;
        must_contain(&l, &["timeout 10m"])?;
        b.remove_all().map_err(|e| check("remove_all", e.to_string()))?;
        nft(&["delete", "table", "inet", &foreign])?;
        nft(&["delete", "table", "inet", "ftp-proxy-999999998"])?;

        cfg.rules.queue = Some("std".into());
        match NftBackend::open(&cfg) {
            Err(FilterError::Unsupported(m)) if m.contains("-q has no nftables equivalent") => Ok(()),
            other => Err(check("-q refused at start", format!("{other:?}"))),
        }
    })?
}

/// Accepts one connection on `listener` and returns the peer address and the bytes it
/// sent, answering `reply`.
fn serve_once(
    listener: TcpListener,
    reply: &'static [u8],
) -> std::thread::JoinHandle<std::io::Result<(SocketAddr, Vec<u8>)>> {
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(reply)?;
        Ok((peer, buf[..n].to_vec()))
    })
}

/// Connects (with a timeout) and exchanges one message.
fn exchange(to: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg)?;
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn kernel_nats_data_connections_from_committed_elements() -> Result<()> {
    if !netns::is_root("kernel_nats_data_connections_from_committed_elements") {
        return Ok(());
    }
    let topo = Topology::up("kn")?;
    let cfg = Config {
        pid: std::process::id(),
        ..Config::default()
    };
    let rfc = RuleOptions {
        rfc_mode: true,
        ..RuleOptions::default()
    };
    let mut b = topo
        .in_ns(Ns::Router, || NftBackend::open(&cfg))?
        .map_err(|e| check("open", e.to_string()))?;
    let anchor = Anchor {
        pid: cfg.pid,
        session: 1,
    };

    for (fam, a) in [("IPv4", addrs4()), ("IPv6", addrs6())] {
        // Passive: client -> orig_server:proxy_port is redirected to server:port and
        // arrives from the proxy's address with a port in 50001-65535.
        let (port, pp) = (30028, 50447);
        b.commit(
            &anchor,
            &data_rules(Mode::Passive, &a, port, pp, &cfg.rules),
        )
        .map_err(|e| check("passive commit", e.to_string()))?;
        let l = topo
            .in_ns(Ns::Server, || {
                TcpListener::bind(SocketAddr::new(a.server, port))
            })?
            .map_err(netns::io_err("server listen"))?;
        let srv = serve_once(l, b"pong");
        let to = SocketAddr::new(a.orig_server, pp);
        let got = topo
            .in_ns(Ns::Client, || exchange(to, b"ping"))?
            .map_err(netns::io_err(format!("{fam} passive connect")))?;
        assert_eq!(got, b"pong");
        let (peer, sent) = srv
            .join()
            .expect("server thread")
            .map_err(netns::io_err("server"))?;
        assert_eq!(sent, b"ping");
        assert_eq!(
            peer.ip(),
            a.proxy,
            "{fam}: passive data must come from the proxy address"
        );
        assert!(
            peer.port() >= 50001,
            "{fam}: NAT source port {} below 50001",
            peer.port()
        );

        // The arm element was consumed by that first SYN: a second connection to the
        // same proxy port is not redirected (nothing listens on server:pp, so it fails).
        let again = topo.in_ns(Ns::Client, || exchange(to, b"ping"))?;
        assert!(
            again.is_err(),
            "{fam}: second connection to the proxy port was redirected: {again:?}"
        );
        let arm = topo.in_ns(Ns::Router, || {
            nft(&[
                "list",
                "set",
                "inet",
                b.table(),
                if fam == "IPv4" { "arm4" } else { "arm6" },
            ])
        })??;
        must_not_contain(&arm, &[&pp.to_string()])?;

        // Active PORT with -r: server -> proxy:proxy_port is redirected to the client,
        // and arrives from orig_server port 20.
        let (cport, pp) = (40000, 50500);
        b.commit(&anchor, &data_rules(Mode::ActivePort, &a, cport, pp, &rfc))
            .map_err(|e| check("active commit", e.to_string()))?;
        let l = topo
            .in_ns(Ns::Client, || {
                TcpListener::bind(SocketAddr::new(a.client, cport))
            })?
            .map_err(netns::io_err("client listen"))?;
        let cli = serve_once(l, b"data");
        let to = SocketAddr::new(a.proxy, pp);
        let got = topo
            .in_ns(Ns::Server, || exchange(to, b"hello"))?
            .map_err(netns::io_err(format!("{fam} active connect")))?;
        assert_eq!(got, b"data");
        let (peer, sent) = cli
            .join()
            .expect("client thread")
            .map_err(netns::io_err("client"))?;
        assert_eq!(sent, b"hello");
        assert_eq!(
            peer,
            SocketAddr::new(a.orig_server, 20),
            "{fam}: active data with -r comes from port 20"
        );
    }
    b.commit(&anchor, &[])
        .map_err(|e| check("empty commit", e.to_string()))?;
    topo.in_ns(Ns::Router, || b.remove_all())?
        .map_err(|e| check("remove_all", e.to_string()))?;
    Ok(())
}

/// Clears CAP_NET_ADMIN from the calling thread's effective set (capabilities are per
/// thread on Linux, so the rest of the test process keeps it).
fn drop_net_admin_in_this_thread() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI requires.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        d[0].effective &= !(1 << CAP_NET_ADMIN);
        if libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn commit_without_cap_net_admin_is_permission_denied() -> Result<()> {
    if !netns::is_root("commit_without_cap_net_admin_is_permission_denied") {
        return Ok(());
    }
    let topo = Topology::up("cp")?;
    let cfg = Config {
        pid: std::process::id(),
        ..Config::default()
    };
    let mut b = topo
        .in_ns(Ns::Router, || NftBackend::open(&cfg))?
        .map_err(|e| check("open", e.to_string()))?;
    let anchor = Anchor {
        pid: cfg.pid,
        session: 1,
    };
    let rules = data_rules(Mode::Passive, &addrs4(), 30028, 50447, &cfg.rules);
    // The kernel checks the *sending* thread's capability, not only the socket opener's
    // (docs/linux.md, "Privileges"): a socket opened as root does not help after a drop.
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            drop_net_admin_in_this_thread().map_err(netns::io_err("capset"))?;
            Ok::<_, netns::NetnsError>(b.commit(&anchor, &rules))
        })
        .join()
        .expect("thread")
    })?;
    match res {
        Err(FilterError::PermissionDenied) => {}
        other => {
            return Err(check(
                "PermissionDenied without CAP_NET_ADMIN",
                format!("{other:?}"),
            ))
        }
    }
    // With the capability (this thread) the same commit works, and nothing of the
    // refused one was applied before it.
    b.commit(&anchor, &rules)
        .map_err(|e| check("commit with CAP_NET_ADMIN", e.to_string()))?;
    b.remove_all()
        .map_err(|e| check("remove_all", e.to_string()))?;
    Ok(())
}

/// Each connection's peer and the name it sent.
type Named = Vec<(SocketAddr, Vec<u8>)>;

/// Accepts `n` connections on `listener`; each sends a short name and gets back
/// `ok <name>`. Returns `(peer, name)` per connection, in arrival order.
fn serve_names(listener: TcpListener, n: usize) -> std::thread::JoinHandle<std::io::Result<Named>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false)?;
        let mut seen = Vec::new();
        for _ in 0..n {
            let (mut s, peer) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 64];
            let got = s.read(&mut buf)?;
            let name = buf[..got].to_vec();
            s.write_all(&[b"ok ".as_slice(), &name].concat())?;
            seen.push((peer, name));
        }
        Ok(seen)
    })
}

/// The §6 case: two sessions from one client address (an office behind NAT) that the
/// server tells the same data port, at the same time. Both commits must succeed, and
/// each data connection must go through its own negotiation's elements: redirected to
/// the server's port and NATed to the source port its own nat element names.
#[test]
fn two_sessions_from_one_client_share_a_server_data_port() -> Result<()> {
    if !netns::is_root("two_sessions_from_one_client_share_a_server_data_port") {
        return Ok(());
    }
    let topo = Topology::up("sc")?;
    let cfg = Config {
        pid: std::process::id(),
        ..Config::default()
    };
    let mut b = topo
        .in_ns(Ns::Router, || NftBackend::open(&cfg))?
        .map_err(|e| check("open", e.to_string()))?;
    let (s1, s2) = (
        Anchor {
            pid: cfg.pid,
            session: 1,
        },
        Anchor {
            pid: cfg.pid,
            session: 2,
        },
    );
    for (fam, a) in [("IPv4", addrs4()), ("IPv6", addrs6())] {
        let port = 30028;
        let (pp1, pp2) = (50447, 50448);
        b.commit(&s1, &data_rules(Mode::Passive, &a, port, pp1, &cfg.rules))
            .map_err(|e| check(format!("{fam}: first session's commit"), e.to_string()))?;
        // Two draws of the same NAT source port (1 in 15535) would clash in conntrack,
        // not in the maps: draw the second session's again then (bounded).
        let nat_key = |pp: u16| format!("{} . {} . {port} . {pp}", a.client, a.server);
        let mut ports = None;
        for _ in 0..8 {
            b.commit(&s2, &data_rules(Mode::Passive, &a, port, pp2, &cfg.rules))
                .map_err(|e| {
                    check(
                        format!("{fam}: a second session from the same client to the same server data port to commit"),
                        e.to_string(),
                    )
                })?;
            let l = topo.in_ns(Ns::Router, || nft(&["list", "table", "inet", b.table()]))??;
            let np1 = nat_port(&l, &nat_key(pp1))
                .ok_or_else(|| check("the first nat element", l.clone()))?;
            let np2 = nat_port(&l, &nat_key(pp2))
                .ok_or_else(|| check("the second nat element", l.clone()))?;
            if np1 != np2 {
                ports = Some((np1, np2));
                break;
            }
        }
        let (np1, np2) = ports.ok_or_else(|| check("two different NAT ports in 8 draws", ""))?;

        let l = topo
            .in_ns(Ns::Server, || {
                TcpListener::bind(SocketAddr::new(a.server, port))
            })?
            .map_err(netns::io_err("server listen"))?;
        let srv = serve_names(l, 2);
        // Both data connections open at once: the first stays connected while the
        // second is made.
        let (first, second) = topo
            .in_ns(Ns::Client, || -> std::io::Result<_> {
                let connect = |pp: u16, name: &[u8]| -> std::io::Result<(TcpStream, Vec<u8>)> {
                    let mut s = TcpStream::connect_timeout(
                        &SocketAddr::new(a.orig_server, pp),
                        Duration::from_secs(3),
                    )?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(name)?;
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf)?;
                    Ok((s, buf[..n].to_vec()))
                };
                let (c1, r1) = connect(pp1, b"one")?;
                let (c2, r2) = connect(pp2, b"two")?;
                drop((c1, c2));
                Ok((r1, r2))
            })?
            .map_err(netns::io_err(format!("{fam}: data connections")))?;
        assert_eq!(first, b"ok one", "{fam}");
        assert_eq!(second, b"ok two", "{fam}");
        let seen = srv
            .join()
            .expect("server thread")
            .map_err(netns::io_err("server"))?;
        for (name, np) in [(&b"one"[..], np1), (&b"two"[..], np2)] {
            let peer = seen
                .iter()
                .find(|(_, n)| n == name)
                .map(|(p, _)| *p)
                .ok_or_else(|| {
                    check(
                        format!("{fam}: connection {name:?} at the server"),
                        format!("{seen:?}"),
                    )
                })?;
            assert_eq!(
                peer,
                SocketAddr::new(a.proxy, np),
                "{fam}: connection {name:?} must come from the NAT port of its own negotiation"
            );
        }
        b.commit(&s1, &[])
            .map_err(|e| check("empty commit", e.to_string()))?;
        b.commit(&s2, &[])
            .map_err(|e| check("empty commit", e.to_string()))?;
    }
    topo.in_ns(Ns::Router, || b.remove_all())?
        .map_err(|e| check("remove_all", e.to_string()))?;
    Ok(())
}

/// Makes the calling thread look like the daemon after its privilege drop: uid and
/// gid 65534 (nobody), with CAP_NET_ADMIN alone kept in the effective and permitted
/// sets (cli/src/privs.rs). Raw system calls: glibc's setresuid would change every
/// thread of the test process.
fn become_nobody_with_net_admin_in_this_thread() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let d = [
        Data {
            effective: 1 << CAP_NET_ADMIN,
            permitted: 1 << CAP_NET_ADMIN,
            inheritable: 0,
        },
        Data::default(),
    ];
    // SAFETY: prctl, setresgid/setresuid and capset on this thread only, with the
    // argument shapes the kernel ABI requires.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) != 0
            || libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) != 0
            || libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Echoes what each of `n` accepted connections sends until it ends, so a data
/// connection stays up as long as its peer keeps it.
fn echo_server(listener: TcpListener, n: usize) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..n {
            let (mut s, _) = listener.accept()?;
            workers.push(std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut buf = [0u8; 256];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 || s.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.join();
        }
        Ok(())
    })
}

/// Opens a data connection to `to` and checks one echo on it.
fn open_echo(to: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    echo(&mut s, b"hello")?;
    Ok(s)
}

/// One echo round trip.
fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    if buf != msg {
        return Err(std::io::Error::other(format!("echo {buf:?} for {msg:?}")));
    }
    Ok(())
}

/// The conntrack entries of TCP connections to port `dport` in the router (their
/// lines of `conntrack -L`).
fn conntrack_to(topo: &Topology, dport: u16) -> Result<Vec<String>> {
    let out = topo.exec(
        Ns::Router,
        "conntrack",
        &["-L", "-p", "tcp"],
        Duration::from_secs(10),
    )?;
    let want = format!("dport={dport} ");
    Ok(out
        .lines()
        .filter(|l| {
            l.split("src=")
                .nth(1)
                .is_some_and(|orig| orig.contains(&want))
        })
        .map(str::to_owned)
        .collect())
}

/// Whether a connection has ended: a write then a read fails or reads EOF within 5 s.
fn ended(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 8];
    match s.write_all(b"after").and_then(|()| s.read(&mut buf)) {
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    }
}

/// A session that ends on a reply desync must take its data connections with it:
/// `kill_connections` deletes the conntrack entries of every connection its
/// negotiations redirected (here a passive IPv4 one, and an active IPv6 one that
/// replaced it), so those connections end, while another session's connection from
/// the same client to the same server port goes on. The capability check is the
/// daemon's: uid nobody with CAP_NET_ADMIN kept works, without it the kill is
/// refused and changes nothing.
#[test]
fn kill_connections_ends_one_anchors_data_connections() -> Result<()> {
    if !netns::is_root("kill_connections_ends_one_anchors_data_connections") {
        return Ok(());
    }
    let topo = Topology::up("kc")?;
    let cfg = Config {
        pid: std::process::id(),
        ..Config::default()
    };
    let mut b = topo
        .in_ns(Ns::Router, || NftBackend::open(&cfg))?
        .map_err(|e| check("open", e.to_string()))?;
    let (s1, s2) = (
        Anchor {
            pid: cfg.pid,
            session: 1,
        },
        Anchor {
            pid: cfg.pid,
            session: 2,
        },
    );
    let (a4, a6) = (addrs4(), addrs6());
    let port = 30028;
    let srv4 = topo
        .in_ns(Ns::Server, || {
            TcpListener::bind(SocketAddr::new(a4.server, port))
        })?
        .map_err(netns::io_err("server listen"))?;
    let _srv4 = echo_server(srv4, 2);

    // Session 1, first negotiation: passive IPv4 on proxy port 50447.
    b.commit(
        &s1,
        &data_rules(Mode::Passive, &a4, port, 50447, &cfg.rules),
    )
    .map_err(|e| check("s1 passive commit", e.to_string()))?;
    let mut c1 = topo
        .in_ns(Ns::Client, || {
            open_echo(SocketAddr::new(a4.orig_server, 50447))
        })?
        .map_err(netns::io_err("s1 passive data connection"))?;
    // Session 2, same client and server data port, proxy port 50448.
    b.commit(
        &s2,
        &data_rules(Mode::Passive, &a4, port, 50448, &cfg.rules),
    )
    .map_err(|e| check("s2 passive commit", e.to_string()))?;
    let mut c2 = topo
        .in_ns(Ns::Client, || {
            open_echo(SocketAddr::new(a4.orig_server, 50448))
        })?
        .map_err(netns::io_err("s2 passive data connection"))?;
    // Session 1, second negotiation (replaces the first's elements): active EPRT over
    // IPv6, the server connecting to the proxy's port 50500.
    let cport = 40000;
    let cli6 = topo
        .in_ns(Ns::Client, || {
            TcpListener::bind(SocketAddr::new(a6.client, cport))
        })?
        .map_err(netns::io_err("client listen"))?;
    let _cli6 = echo_server(cli6, 1);
    b.commit(
        &s1,
        &data_rules(Mode::ActiveEprt, &a6, cport, 50500, &cfg.rules),
    )
    .map_err(|e| check("s1 active commit", e.to_string()))?;
    let mut c3 = topo
        .in_ns(Ns::Server, || open_echo(SocketAddr::new(a6.proxy, 50500)))?
        .map_err(netns::io_err("s1 active data connection"))?;
    for dport in [50447, 50448, 50500] {
        if conntrack_to(&topo, dport)?.is_empty() {
            return Err(check(
                format!("a conntrack entry to port {dport} before the kill"),
                "",
            ));
        }
    }

    // Without CAP_NET_ADMIN the kill is refused, and nothing is deleted.
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            drop_net_admin_in_this_thread().map_err(netns::io_err("capset"))?;
            Ok::<_, netns::NetnsError>(b.kill_connections(&s1))
        })
        .join()
        .expect("thread")
    })?;
    if res != Err(FilterError::PermissionDenied) {
        return Err(check(
            "PermissionDenied without CAP_NET_ADMIN",
            format!("{res:?}"),
        ));
    }
    if conntrack_to(&topo, 50447)?.is_empty() {
        return Err(check("the entry still there after a refused kill", ""));
    }

    // As the daemon runs after its drop: nobody, with CAP_NET_ADMIN.
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            become_nobody_with_net_admin_in_this_thread().map_err(netns::io_err("drop"))?;
            Ok::<_, netns::NetnsError>(b.kill_connections(&s1))
        })
        .join()
        .expect("thread")
    })?;
    res.map_err(|e| {
        check(
            "kill_connections as nobody with CAP_NET_ADMIN",
            e.to_string(),
        )
    })?;
    for dport in [50447, 50500] {
        let left = conntrack_to(&topo, dport)?;
        if !left.is_empty() {
            return Err(check(
                format!("no conntrack entry to port {dport} after the kill"),
                left.join("\n"),
            ));
        }
    }
    assert!(
        ended(&mut c1),
        "session 1's passive data connection goes on after the kill"
    );
    assert!(
        ended(&mut c3),
        "session 1's active data connection goes on after the kill"
    );
    echo(&mut c2, b"still here").map_err(netns::io_err("session 2's connection after the kill"))?;
    if conntrack_to(&topo, 50448)?.is_empty() {
        return Err(check("session 2's conntrack entry kept", ""));
    }
    // A second kill finds nothing more and succeeds.
    b.kill_connections(&s1)
        .map_err(|e| check("a second kill", e.to_string()))?;
    echo(&mut c2, b"and still").map_err(netns::io_err("session 2 after a second kill"))?;
    // The kill may come after the session's last (empty) commit: the backend still
    // knows what the session negotiated.
    b.commit(&s2, &[])
        .map_err(|e| check("s2 empty commit", e.to_string()))?;
    b.kill_connections(&s2)
        .map_err(|e| check("a kill after the last commit", e.to_string()))?;
    let left = conntrack_to(&topo, 50448)?;
    if !left.is_empty() {
        return Err(check(
            "no entry of session 2 after its kill",
            left.join("\n"),
        ));
    }
    assert!(
        ended(&mut c2),
        "session 2's data connection goes on after its kill"
    );
    drop((c1, c2, c3));
    topo.in_ns(Ns::Router, || b.remove_all())?
        .map_err(|e| check("remove_all", e.to_string()))?;
    Ok(())
}
