//! The whole [`Proxy`] driven by an arbitrary sequence of connections, socket events,
//! filter acknowledgements, clock steps and timeouts, obeying the driving contract
//! of `core/src/proxy.rs`. After every step the invariants of docs/fuzzing.md are
//! checked by the [`Checker`] the simulation runs too
//! (`ftp_proxy_tests::invariants`); this file only drives the proxy within the
//! contract. At the end the proxy is shut down and must drain to nothing, leaving no
//! rules behind.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use ftp_proxy_core::{
    Accept, Action, AllowDest, ClientTls, Config, DestPolicy, FilterError, Input, Pcg32, PortRange,
    Proxy, Refused, Rule, RuleLog, RuleOptions, ServerDataMode, ServerTls, SessionId, Side,
    SocketError, TlsPolicy, DEFAULT_PROXY_PORTS, MIN_DATA_PORT,
};
use ftp_proxy_tests::invariants::Checker;
use libfuzzer_sys::fuzz_target;

/// The proxy's settings, drawn from small sets so that every branch is reachable.
#[derive(Debug, Arbitrary)]
struct Setup {
    ipv6: bool,
    anonymous_only: bool,
    max_sessions: u8,
    timeout: u8,
    reverse: bool,
    source: bool,
    tag: bool,
    queue: bool,
    log: u8,
    rfc_mode: bool,
    proxy_rtable: u8,
    pid: u16,
    seed: u64,
    /// `--server-data-ports`, when given: the range the fuzzer picks, ordered.
    server_ports: Option<(u16, u16)>,
    /// `--proxy-ports`, when given: the range the fuzzer picks within 1024..=65535,
    /// ordered (small ranges run out of ports, which ends the session).
    proxy_ports: Option<(u16, u16)>,
    /// [`Config::relay`]: PASV/EPSV after a multi-line reply are served joined.
    relay: bool,
    /// Client TLS (RFC 4217): `tls % 3` 0 off, 1 explicit, 2 implicit; server
    /// TLS (`--server-tls`): `tls / 3 % 3` likewise; only where the core allows
    /// them (reverse mode with the relay), so that their dialogues are reached.
    tls: u8,
    /// `--tls-required`.
    tls_required: bool,
    /// Forward mode (`--user-at-host`), where there is no `-R`: the server comes
    /// from `USER name@host`, within a policy allowing 198.51.100.0/24 and
    /// 2001:db8:3::/48 (so the canned targets are allowed, refused and looked up).
    forward: bool,
}

/// A canned line, so that the fuzzer reaches the rewriting paths without having to
/// guess their syntax; `Op::Data` covers everything else.
#[derive(Debug, Arbitrary, Clone, Copy)]
enum Canned {
    Port,
    Eprt4,
    Eprt6,
    Pasv,
    Epsv,
    EpsvAll,
    UserAnonymous,
    User,
    Pass,
    List,
    Quit,
    Reply220,
    Reply227,
    Reply229,
    Reply200,
    Reply150,
    Reply226,
    Reply230More,
    Reply230,
    Reply331,
    Reply500,
    /// The commands and replies of docs/behavior.md's "Replies out of step" and 421.
    Stat,
    StatLower,
    PasvLower,
    EpsvLower,
    Feat,
    Reply211More,
    Reply211,
    Reply213More,
    /// A listing's early end (a file named `213 a`).
    Reply213,
    Reply421,
    Reply421More,
    /// What the proxy's own PORT gets (or a forged sentinel).
    Reply200Port,
    Reply425,
    /// A whole listing in one read: opening line, a file, the terminator.
    Listing,
    /// A listing cut short by a file named like its end, then a forged 227.
    ListingForged,
    /// A listing cut short, then `421-zzz`.
    Listing421,
    /// RFC 4217's commands.
    AuthTls,
    AuthSsl,
    AuthBad,
    Pbsz,
    ProtP,
    ProtC,
    ProtS,
    Ccc,
    /// `AUTH TLS` with the client's handshake right behind it in the same read.
    AuthPipelined,
    /// A FEAT reply that lists the server's own security features.
    FeatSecurity,
    /// Forward mode's logins: an allowed literal, an allowed IPv6 literal with a
    /// port, a name to look up, a refused address, a malformed target.
    UserAtAllowed,
    UserAtV6,
    UserAtName,
    UserAtRefused,
    UserAtBad,
    /// A server accepting the proxy's `AUTH TLS` (`--server-tls explicit`).
    Reply234,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Accept {
        client: u8,
        dst: u8,
        rdomain: u8,
    },
    Opened {
        s: u8,
        proxy: u8,
    },
    Connected {
        s: u8,
    },
    /// The driver's answer to a `Resolve` (any time: an answer nothing waits for
    /// is ignored, as the contract says).
    Resolved {
        s: u8,
        answer: u8,
    },
    ConnectFailed {
        s: u8,
    },
    Data {
        s: u8,
        server: bool,
        bytes: Vec<u8>,
    },
    Line {
        s: u8,
        server: bool,
        what: Canned,
        addr: [u8; 4],
        port: u16,
    },
    /// The same chunk (a canned line, or raw bytes when `what` is `None`) read
    /// `times * 4` times, each a read of its own while read interest stays on: enough
    /// to fill the 8 KiB inbox, the 64 KiB output queue or the pipelining limit
    /// within one input.
    Flood {
        s: u8,
        server: bool,
        what: Option<Canned>,
        bytes: Vec<u8>,
        times: u8,
    },
    Eof {
        s: u8,
        server: bool,
    },
    Reset {
        s: u8,
        server: bool,
    },
    /// The driver's TLS layer on that control connection failed.
    TlsFailed {
        s: u8,
        server: bool,
    },
    WriteError {
        s: u8,
        server: bool,
    },
    /// The driver wrote `n` bytes (at most what is queued) of what was sent to a side.
    Written {
        s: u8,
        server: bool,
        n: u16,
        /// Everything queued for that side, whatever `n` says.
        all: bool,
    },
    Ack {
        i: u8,
        result: u8,
    },
    Advance {
        ms: u16,
        seconds: bool,
    },
    Timeout,
    Shutdown,
}

#[derive(Debug, Arbitrary)]
struct Script {
    setup: Setup,
    ops: Vec<Op>,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(net: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host))
}

/// Where one session stands in the driving contract, for choosing legal inputs
/// (whether it is closed and what it reads, the [`Checker`]'s watch knows).
#[derive(Debug)]
struct Peer {
    server: Option<SocketAddr>,
    proxy: Option<SocketAddr>,
    connected: bool,
    /// Bytes sent to each side and not yet reported written.
    unwritten: [usize; 2],
}

struct Harness {
    cfg: Config,
    proxy: Proxy,
    now: Instant,
    ids: Vec<SessionId>,
    peers: BTreeMap<SessionId, Peer>,
    /// The invariants, shared with the simulation.
    checker: Checker,
    /// Commits not yet acknowledged, oldest first.
    pending: Vec<(SessionId, u64, Vec<Rule>)>,
    /// Reads left for `Op::Flood` in this input, so one input stays fast.
    flood_budget: usize,
}

/// Reads all `Op::Flood`s of one input may make together.
const FLOOD_BUDGET: usize = 1024;

impl Harness {
    fn new(setup: &Setup) -> Option<Harness> {
        let ipv6 = setup.ipv6;
        let mut cfg = Config {
            ipv6,
            anonymous_only: setup.anonymous_only,
            max_sessions: u32::from(setup.max_sessions % 4) + 1,
            idle_timeout_secs: [0, 1, 30, 86400][usize::from(setup.timeout % 4)],
            fixed_server: setup.reverse.then(|| {
                SocketAddr::new(
                    if ipv6 {
                        v6(3, 0x20)
                    } else {
                        v4(198, 51, 100, 20)
                    },
                    21,
                )
            }),
            source_addr: setup
                .source
                .then(|| if ipv6 { v6(3, 1) } else { v4(198, 51, 100, 1) }),
            rules: RuleOptions {
                tag: setup.tag.then(|| "FTPDATA".to_string()),
                queue: setup.queue.then(|| "ftpq".to_string()),
                log: [RuleLog::None, RuleLog::Log, RuleLog::All][usize::from(setup.log % 3)],
                rfc_mode: setup.rfc_mode,
                proxy_rtable: u32::from(setup.proxy_rtable % 3),
            },
            pid: u32::from(setup.pid),
            proxy_ports: setup
                .proxy_ports
                .map_or(DEFAULT_PROXY_PORTS, |(a, b)| PortRange {
                    low: a.min(b).max(MIN_DATA_PORT),
                    high: a.max(b).max(MIN_DATA_PORT),
                }),
            server_data_ports: setup.server_ports.map(|(a, b)| PortRange {
                low: a.min(b).max(MIN_DATA_PORT),
                high: a.max(b).max(MIN_DATA_PORT),
            }),
            relay: setup.relay,
            // 0 (none) to 2 s: short enough that a fuzz input reaches it.
            login_timeout_secs: u32::from(setup.seed as u8 % 3),
            // Issue 17's modes need the relay (a start-up error without it).
            server_data_mode: if setup.relay {
                [
                    ServerDataMode::Client,
                    ServerDataMode::Passive,
                    ServerDataMode::Active,
                ][(setup.seed >> 8) as usize % 3]
            } else {
                ServerDataMode::Client
            },
            user_at_host: (setup.forward && !setup.reverse).then(|| DestPolicy {
                allow: ["198.51.100.0/24", "[2001:db8:3::/48]"]
                    .iter()
                    .map(|a| AllowDest::parse(a).expect("valid"))
                    .collect(),
                own: Vec::new(),
            }),
            routes: None,
            resolve_timeout_secs: 1 + u32::from(setup.seed as u8 % 2),
            tls: match setup.tls % 3 {
                _ if !(setup.reverse && setup.relay) => TlsPolicy::default(),
                0 => TlsPolicy::default(),
                n => TlsPolicy {
                    client: if n == 1 {
                        ClientTls::Explicit
                    } else {
                        ClientTls::Implicit
                    },
                    required: setup.tls_required,
                    ..TlsPolicy::default()
                },
            },
            // The checker expects the diverted destination as the server; NAT64's
            // mapping is core/tests/nat64_session.rs's.
            nat64_prefix: None,
        };
        if setup.reverse && setup.relay {
            cfg.tls.server = [ServerTls::Off, ServerTls::Explicit, ServerTls::Implicit]
                [usize::from(setup.tls / 3 % 3)];
        }
        let proxy = Proxy::new(cfg.clone(), Box::new(Pcg32::new(setup.seed))).ok()?;
        let now = Instant::now();
        Some(Harness {
            checker: Checker::new(&cfg),
            cfg,
            proxy,
            now,
            ids: Vec::new(),
            peers: BTreeMap::new(),
            pending: Vec::new(),
            flood_budget: FLOOD_BUDGET,
        })
    }

    fn pick(&self, s: u8) -> Option<SessionId> {
        (!self.ids.is_empty()).then(|| self.ids[usize::from(s) % self.ids.len()])
    }

    fn peer(&self, s: u8) -> Option<(SessionId, &Peer)> {
        let id = self.pick(s)?;
        Some((id, &self.peers[&id]))
    }

    /// Whether session `id` closed, or does not read from `side` now.
    fn deaf(&self, id: SessionId, side: Side) -> bool {
        let w = self.checker.session(id).expect("accepted");
        w.closed() || !w.reading(side)
    }

    fn addr(&self, host: u8, v4net: (u8, u8, u8), v6net: u16, port: u16) -> SocketAddr {
        let ip = if self.cfg.ipv6 {
            v6(v6net, u16::from(host % 4) + 1)
        } else {
            v4(v4net.0, v4net.1, v4net.2, host % 4 + 1)
        };
        SocketAddr::new(ip, port)
    }

    /// Feeds a socket event of `side`, within the contract: the server side only once
    /// its socket exists, data only while the last `ReadInterest` of that side said on
    /// (and never after `Close`).
    fn socket_event(&mut self, s: u8, side: Side, input: Input) {
        let Some((id, p)) = self.peer(s) else { return };
        if side == Side::Server && p.proxy.is_none() {
            return;
        }
        if matches!(input, Input::Data(..)) && self.deaf(id, side) {
            return;
        }
        self.proxy.handle(self.now, id, input);
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Accept {
                client,
                dst,
                rdomain,
            } => {
                let client = self.addr(client, (203, 0, 113), 1, 40000 + u16::from(client));
                let orig_dst = self.addr(dst % 2 + 10, (198, 51, 100), 2, 21);
                let before = self.proxy.len();
                let conn = Accept {
                    client,
                    orig_dst,
                    rdomain: u32::from(rdomain % 3),
                };
                let result = self.proxy.accept(self.now, conn);
                if let Err(e) = self.checker.accepted(&conn, before, &result) {
                    panic!("{e}");
                }
                if let Ok(id) = result {
                    self.ids.push(id);
                    let peer = Peer {
                        server: None,
                        proxy: None,
                        connected: false,
                        unwritten: [0; 2],
                    };
                    self.peers.insert(id, peer);
                }
            }
            Op::Opened { s, proxy } => {
                let Some((id, p)) = self.peer(s) else { return };
                if p.server.is_none() || p.proxy.is_some() {
                    return;
                }
                let addr = self.addr(proxy % 2, (198, 51, 100), 3, 50000 + u16::from(proxy));
                self.peers.get_mut(&id).expect("known").proxy = Some(addr);
                self.checker.proxy_opened(id, addr.ip());
                self.proxy
                    .handle(self.now, id, Input::ServerSocketOpened { proxy: addr });
            }
            Op::Connected { s } => {
                let Some((id, p)) = self.peer(s) else { return };
                if p.proxy.is_none() || p.connected {
                    return;
                }
                self.peers.get_mut(&id).expect("known").connected = true;
                self.proxy.handle(self.now, id, Input::ServerConnected);
            }
            Op::Resolved { s, answer } => {
                let Some(id) = self.pick(s) else { return };
                let ips = |list: &[&str]| list.iter().map(|a| a.parse().expect("ip")).collect();
                let result = match answer % 4 {
                    0 => Err("Name or service not known".to_string()),
                    1 => Ok(ips(&["198.51.100.30"])),
                    2 => Ok(ips(&["127.0.0.1", "2001:db8:3::30", "198.51.100.31"])),
                    _ => Ok(Vec::new()),
                };
                self.proxy.handle(self.now, id, Input::Resolved { result });
            }
            Op::ConnectFailed { s } => {
                let Some((id, p)) = self.peer(s) else { return };
                if p.server.is_none() || p.proxy.is_some() {
                    return;
                }
                let error = SocketError::from_kind(std::io::ErrorKind::NetworkUnreachable);
                self.proxy
                    .handle(self.now, id, Input::ServerConnectFailed { error });
            }
            Op::Data { s, server, bytes } => {
                let side = if server { Side::Server } else { Side::Client };
                self.socket_event(s, side, Input::Data(side, Bytes::from(bytes)));
            }
            Op::Line {
                s,
                server,
                what,
                addr,
                port,
            } => {
                let side = if server { Side::Server } else { Side::Client };
                let line = canned(what, addr, port);
                self.socket_event(s, side, Input::Data(side, Bytes::from(line)));
            }
            Op::Flood {
                s,
                server,
                what,
                bytes,
                times,
            } => {
                let side = if server { Side::Server } else { Side::Client };
                let chunk = Bytes::from(match what {
                    Some(what) => canned(what, [198, 51, 100, 7], 50000),
                    None => bytes,
                });
                if chunk.is_empty() {
                    return;
                }
                let Some(id) = self.pick(s) else { return };
                let n = (usize::from(times) * 4).min(self.flood_budget);
                self.flood_budget -= n;
                for _ in 0..n {
                    if self.deaf(id, side) {
                        break;
                    }
                    self.socket_event(s, side, Input::Data(side, chunk.clone()));
                    // Execute each read's actions before the next read, as a driver does.
                    self.drain();
                }
            }
            Op::Eof { s, server } => {
                let side = if server { Side::Server } else { Side::Client };
                self.socket_event(s, side, Input::Eof(side));
            }
            Op::Reset { s, server } => {
                let side = if server { Side::Server } else { Side::Client };
                self.socket_event(s, side, Input::Reset(side));
            }
            Op::TlsFailed { s, server } => {
                let side = if server { Side::Server } else { Side::Client };
                self.socket_event(s, side, Input::TlsFailed(side));
            }
            Op::WriteError { s, server } => {
                let side = if server { Side::Server } else { Side::Client };
                self.socket_event(s, side, Input::WriteError(side));
            }
            Op::Written { s, server, n, all } => {
                let side = if server { Side::Server } else { Side::Client };
                let Some(id) = self.pick(s) else { return };
                let p = self.peers.get_mut(&id).expect("known");
                let queued = &mut p.unwritten[side_idx(side)];
                let n = if all {
                    *queued
                } else {
                    usize::from(n).min(*queued)
                };
                if n == 0 {
                    return;
                }
                *queued -= n;
                self.proxy.handle(self.now, id, Input::Written(side, n));
            }
            Op::Ack { i, result } => {
                if self.pending.is_empty() {
                    return;
                }
                let (id, txn, rules) = self.pending.remove(usize::from(i) % self.pending.len());
                let result = match result % 8 {
                    0..=3 => Ok(()),
                    4 => Err(FilterError::Busy),
                    5 => Err(FilterError::AddrInUse),
                    6 => Err(FilterError::PermissionDenied),
                    _ => Err(FilterError::Other {
                        errno: 22,
                        text: "Invalid argument".into(),
                    }),
                };
                if result.is_ok() {
                    // Commits are atomic: on error what was there before stays.
                    self.checker.acked(id, &rules);
                }
                self.proxy
                    .handle(self.now, id, Input::RulesCommitted { txn, result });
            }
            Op::Advance { ms, seconds } => {
                let d = if seconds {
                    Duration::from_secs(u64::from(ms))
                } else {
                    Duration::from_millis(u64::from(ms))
                };
                self.now += d;
                self.proxy.handle_timeout(self.now);
            }
            Op::Timeout => {
                if let Some(t) = self.proxy.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.proxy.handle_timeout(self.now);
            }
            Op::Shutdown => {
                self.checker.shutdown();
                self.proxy.shutdown(self.now);
            }
        }
        self.drain();
        self.check();
    }

    /// Executes every action the proxy emitted, checking each one.
    fn drain(&mut self) {
        while let Some((id, action)) = self.proxy.poll_action() {
            if let Err(e) = self.checker.action(id, &action) {
                panic!("{e}");
            }
            let p = self.peers.get_mut(&id).expect("the checker knows it");
            match action {
                Action::ConnectServer { to, .. } => p.server = Some(to),
                Action::Send(side, bytes) => p.unwritten[side_idx(side)] += bytes.len(),
                Action::CommitRules { txn, rules, .. } => {
                    self.pending.retain(|&(s, t, _)| (s, t) != (id, txn));
                    self.pending.push((id, txn, rules));
                }
                _ => {}
            }
        }
    }

    /// Invariants that hold between any two inputs.
    fn check(&self) {
        if let Err(e) = self.checker.check(&self.proxy) {
            panic!("{e}");
        }
    }

    /// Shuts down and drives the proxy, acknowledging everything, until it is empty.
    fn finish(mut self) {
        self.step(Op::Shutdown);
        let late = Accept::new(
            "203.0.113.9:1".parse().unwrap(),
            "198.51.100.10:21".parse().unwrap(),
        );
        assert!(matches!(
            self.proxy.accept(self.now, late),
            Err(Refused::ShuttingDown) | Err(Refused::Limit(_))
        ));
        for _ in 0..1000 {
            if self.proxy.is_empty() {
                break;
            }
            if self.pending.is_empty() {
                self.step(Op::Timeout);
            } else {
                self.step(Op::Ack { i: 0, result: 0 });
            }
        }
        if let Err(e) = self.checker.finished(&self.proxy) {
            panic!("{e}");
        }
        assert!(self.proxy.poll_action().is_none());
    }
}

fn side_idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

fn canned(what: Canned, a: [u8; 4], port: u16) -> Vec<u8> {
    let (p1, p2) = (port >> 8, port & 0xff);
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, u16::from(a[0]), 0, 0, 0, 0, u16::from(a[1]));
    let s = match what {
        Canned::Port => format!("PORT {},{},{},{},{p1},{p2}\r\n", a[0], a[1], a[2], a[3]),
        Canned::Eprt4 => format!("EPRT |1|{}.{}.{}.{}|{port}|\r\n", a[0], a[1], a[2], a[3]),
        Canned::Eprt6 => format!("EPRT |2|{v6}|{port}|\r\n"),
        Canned::Pasv => "PASV\r\n".into(),
        Canned::Epsv => "EPSV\r\n".into(),
        Canned::EpsvAll => "EPSV ALL\r\n".into(),
        Canned::UserAnonymous => "USER anonymous\r\n".into(),
        Canned::User => "USER bob\r\n".into(),
        Canned::Pass => "PASS secret\r\n".into(),
        Canned::List => "LIST\r\n".into(),
        Canned::Quit => "QUIT\r\n".into(),
        Canned::Reply220 => "220 ready\r\n".into(),
        Canned::Reply227 => format!(
            "227 Entering Passive Mode ({},{},{},{},{p1},{p2})\r\n",
            a[0], a[1], a[2], a[3]
        ),
        Canned::Reply229 => format!("229 Entering Extended Passive Mode (|||{port}|)\r\n"),
        Canned::Reply200 => "200 ok\r\n".into(),
        Canned::Reply234 => "234 Proceed\r\n".into(),
        Canned::Reply150 => "150 opening\r\n".into(),
        Canned::Reply226 => "226 done\r\n".into(),
        Canned::Reply230More => "230-welcome\r\n".into(),
        Canned::Reply230 => "230 logged in\r\n".into(),
        Canned::Reply331 => "331 password\r\n".into(),
        Canned::Reply500 => "500 what\r\n".into(),
        Canned::Stat => "STAT -1\r\n".into(),
        Canned::StatLower => "stat -1\r\n".into(),
        Canned::PasvLower => "pasv\r\n".into(),
        Canned::EpsvLower => "epsv\r\n".into(),
        Canned::Feat => "FEAT\r\n".into(),
        Canned::Reply211More => "211-Status\r\n".into(),
        Canned::Reply211 => "211 End\r\n".into(),
        Canned::Reply213More => "213-STAT\r\n".into(),
        Canned::Reply213 => "213 a\r\n".into(),
        Canned::Reply421 => "421 Timeout\r\n".into(),
        Canned::Reply421More => "421-zzz\r\n".into(),
        Canned::Reply200Port => "200 PORT command successful\r\n".into(),
        Canned::Reply425 => "425 no\r\n".into(),
        Canned::Listing => "213-STAT\r\n file\r\n213 End\r\n".into(),
        Canned::ListingForged => format!(
            "213-STAT\r\n213 a\r\n227 Entering Passive Mode ({},{},{},{},{p1},{p2})\r\n",
            a[0], a[1], a[2], a[3]
        ),
        Canned::Listing421 => "213-STAT\r\n213 a\r\n421-zzz\r\n".into(),
        Canned::UserAtAllowed => "USER anonymous@198.51.100.20\r\n".into(),
        Canned::UserAtV6 => "USER bob@[2001:db8:3::20]:2121\r\n".into(),
        Canned::UserAtName => "USER bob@files.example 2121\r\n".into(),
        Canned::UserAtRefused => "USER bob@127.0.0.1\r\n".into(),
        Canned::UserAtBad => "USER bob@[::1\r\n".into(),
        Canned::AuthTls => "AUTH TLS\r\n".into(),
        Canned::AuthSsl => "auth ssl\r\n".into(),
        Canned::AuthBad => "AUTH KERBEROS_V4\r\n".into(),
        Canned::Pbsz => "PBSZ 0\r\n".into(),
        Canned::ProtP => "PROT P\r\n".into(),
        Canned::ProtC => "PROT C\r\n".into(),
        Canned::ProtS => "PROT S\r\n".into(),
        Canned::Ccc => "CCC\r\n".into(),
        Canned::AuthPipelined => "AUTH TLS\r\n\x16\x03\x01\x00\x05PASV\r\n".into(),
        Canned::FeatSecurity => {
            "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n MDTM\r\n211 End\r\n".into()
        }
    };
    s.into_bytes()
}

fuzz_target!(|script: Script| {
    let Some(mut h) = Harness::new(&script.setup) else {
        return;
    };
    for op in script.ops.into_iter().take(256) {
        h.step(op);
    }
    h.finish();
});
