//! The whole [`Proxy`] driven by an arbitrary sequence of connections, socket events,
//! filter acknowledgements, clock steps and timeouts, obeying the driving contract
//! of `core/src/proxy.rs`. After every step the invariants of docs/fuzzing.md are
//! checked, those of every session's actions by the [`Watch`] the simulation uses
//! too (`ftp_proxy_tests::invariants`); at the end the proxy is shut down and must
//! drain to nothing, leaving no rules behind.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use ftp_proxy_core::internals::ftp::{self, Command};
use ftp_proxy_core::internals::MAX_LINE;
use ftp_proxy_core::{
    Accept, Action, Anchor, Config, ConnectError, Direction, FilterError, Input, Pcg32, PortRange,
    Proxy, Refused, Rule, RuleLog, RuleOptions, SessionId, Side, Translate, DEFAULT_PROXY_PORTS,
    MIN_DATA_PORT, NAT_PORTS, RFC_ACTIVE_SOURCE_PORT,
};
use ftp_proxy_tests::invariants::Watch;
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

/// What the harness knows of one session: the addresses its rules may name and
/// where it stands in the driving contract.
#[derive(Debug)]
struct Peer {
    client: SocketAddr,
    orig_dst: SocketAddr,
    server: Option<SocketAddr>,
    proxy: Option<SocketAddr>,
    connected: bool,
    closed: bool,
    /// The read interest last emitted per side (client, server); both start on.
    reading: [bool; 2],
    /// Bytes sent to each side and not yet reported written.
    unwritten: [usize; 2],
    /// The last rule set committed for its anchor, acknowledged or not.
    last_commit: Option<Vec<Rule>>,
    /// The rules of the last commit acknowledged as taken: what the filter holds.
    installed: Vec<Rule>,
    /// The invariants of its actions, shared with the simulation.
    watch: Watch,
}

struct Harness {
    cfg: Config,
    proxy: Proxy,
    now: Instant,
    ids: Vec<SessionId>,
    peers: BTreeMap<SessionId, Peer>,
    /// Commits not yet acknowledged, oldest first.
    pending: Vec<(SessionId, u64, Vec<Rule>)>,
    shut_down: bool,
    /// Reads left for `Op::Flood` in this input, so one input stays fast.
    flood_budget: usize,
}

/// Reads all `Op::Flood`s of one input may make together.
const FLOOD_BUDGET: usize = 1024;

impl Harness {
    fn new(setup: &Setup) -> Option<Harness> {
        let ipv6 = setup.ipv6;
        let cfg = Config {
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
        };
        let proxy = Proxy::new(cfg.clone(), Box::new(Pcg32::new(setup.seed))).ok()?;
        let now = Instant::now();
        Some(Harness {
            cfg,
            proxy,
            now,
            ids: Vec::new(),
            peers: BTreeMap::new(),
            pending: Vec::new(),
            shut_down: false,
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
        if matches!(input, Input::Data(..)) && (p.closed || !p.reading[side_idx(side)]) {
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
                match self.proxy.accept(self.now, conn) {
                    Ok(id) => {
                        assert!(!self.shut_down, "accepted after shutdown");
                        assert!(!self.peers.contains_key(&id), "session id {id} reused");
                        self.ids.push(id);
                        self.peers.insert(
                            id,
                            Peer {
                                client,
                                orig_dst,
                                server: None,
                                proxy: None,
                                connected: false,
                                closed: false,
                                reading: [true; 2],
                                unwritten: [0; 2],
                                last_commit: None,
                                installed: Vec::new(),
                                watch: Watch::new(&self.cfg, client.ip(), orig_dst.ip()),
                            },
                        );
                    }
                    Err(Refused::ShuttingDown) => assert!(self.shut_down),
                    Err(Refused::Limit(m)) => {
                        assert_eq!(m, self.cfg.max_sessions);
                        assert!(before >= m as usize, "refused below the limit");
                    }
                }
            }
            Op::Opened { s, proxy } => {
                let Some((id, p)) = self.peer(s) else { return };
                if p.server.is_none() || p.proxy.is_some() {
                    return;
                }
                let addr = self.addr(proxy % 2, (198, 51, 100), 3, 50000 + u16::from(proxy));
                let p = self.peers.get_mut(&id).expect("known");
                p.proxy = Some(addr);
                p.watch.proxy_opened(addr.ip());
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
            Op::ConnectFailed { s } => {
                let Some((id, p)) = self.peer(s) else { return };
                if p.server.is_none() || p.proxy.is_some() {
                    return;
                }
                let error = ConnectError::from_kind(std::io::ErrorKind::NetworkUnreachable);
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
                    let p = &self.peers[&id];
                    if p.closed || !p.reading[side_idx(side)] {
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
                    let p = self.peers.get_mut(&id).expect("known");
                    p.watch.acked(&rules);
                    p.installed = rules;
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
                self.shut_down = true;
                self.proxy.shutdown(self.now);
            }
        }
        self.drain();
        self.check();
    }

    /// Executes every action the proxy emitted, checking each one.
    fn drain(&mut self) {
        while let Some((id, action)) = self.proxy.poll_action() {
            let cfg = &self.cfg;
            let p = self
                .peers
                .get_mut(&id)
                .unwrap_or_else(|| panic!("action for unknown session {id}: {action:?}"));
            if let Err(e) = p.watch.action(&action) {
                panic!("{id}: {e}");
            }
            match action {
                Action::ConnectServer { to, bind } => {
                    assert!(p.server.is_none(), "{id}: second ConnectServer");
                    assert!(!p.closed, "{id}: ConnectServer after Close");
                    assert_eq!(to, cfg.fixed_server.unwrap_or(p.orig_dst), "{id}: server");
                    assert_eq!(bind, cfg.source_addr, "{id}: source address");
                    p.server = Some(to);
                }
                Action::Send(side, bytes) => {
                    assert!(!p.closed, "{id}: Send after Close");
                    p.unwritten[side_idx(side)] += bytes.len();
                    assert!(
                        bytes.len() <= MAX_LINE,
                        "{id}: {} byte line to the {side:?}",
                        bytes.len()
                    );
                    assert!(
                        bytes.iter().position(|&b| b == b'\n') == Some(bytes.len() - 1),
                        "{id}: Send is not exactly one line: {bytes:?}"
                    );
                    if side == Side::Server {
                        check_active_release(id, cfg, p, &bytes);
                    }
                }
                Action::CommitRules { txn, anchor, rules } => {
                    assert_eq!(
                        anchor,
                        Anchor {
                            pid: cfg.pid,
                            session: id.0
                        },
                        "{id}: anchor"
                    );
                    if p.closed || self.shut_down {
                        assert!(
                            rules.is_empty(),
                            "{id}: rules committed after the session ended"
                        );
                    }
                    check_rules(id, cfg, p, &rules);
                    p.last_commit = Some(rules.clone());
                    self.pending.retain(|&(s, t, _)| (s, t) != (id, txn));
                    self.pending.push((id, txn, rules));
                }
                Action::Close { reason, summary } => {
                    assert!(!p.closed, "{id}: closed twice");
                    assert_eq!(
                        summary.client, p.client,
                        "{id}: summary's client ({reason})"
                    );
                    assert_eq!(
                        summary.server,
                        cfg.fixed_server.unwrap_or(p.orig_dst),
                        "{id}: summary's server ({reason})"
                    );
                    p.closed = true;
                }
                Action::ReadInterest { side, on } => {
                    assert!(!p.closed, "{id}: ReadInterest {side} {on} after Close");
                    let last = &mut p.reading[side_idx(side)];
                    assert_ne!(*last, on, "{id}: ReadInterest {side} {on} repeated");
                    *last = on;
                }
                Action::TransferDone { anchor } => {
                    assert!(!p.closed, "{id}: TransferDone after Close");
                    assert!(
                        p.last_commit.is_some(),
                        "{id}: TransferDone without rules ever committed"
                    );
                    assert_eq!(
                        anchor,
                        Anchor {
                            pid: cfg.pid,
                            session: id.0
                        },
                        "{id}: TransferDone for another anchor"
                    );
                }
                Action::EndDataConnections { anchor } => {
                    assert!(!p.closed, "{id}: EndDataConnections after Close");
                    assert_eq!(
                        anchor,
                        Anchor {
                            pid: cfg.pid,
                            session: id.0
                        },
                        "{id}: EndDataConnections for another anchor"
                    );
                }
                Action::RulesMayRemain { anchor, error } => {
                    assert!(
                        p.closed,
                        "{id}: RulesMayRemain ({error}) for an open session"
                    );
                    assert_eq!(
                        anchor,
                        Anchor {
                            pid: cfg.pid,
                            session: id.0
                        },
                        "{id}: RulesMayRemain for another anchor"
                    );
                }
            }
        }
    }

    /// Invariants that hold between any two inputs.
    fn check(&self) {
        assert!(
            self.proxy.len() <= self.cfg.max_sessions as usize,
            "session limit exceeded"
        );
        for id in self.proxy.session_ids() {
            assert!(
                self.peers.contains_key(&id),
                "proxy holds unknown session {id}"
            );
        }
        for (id, p) in &self.peers {
            let live = self.proxy.session_ids().any(|s| s == *id);
            if !live {
                // Forgotten: it must have ended and asked for its rules to go.
                assert!(p.closed, "{id} forgotten without a Close");
                let last = p.last_commit.as_deref().unwrap_or(&[]);
                assert!(last.is_empty(), "{id} forgotten with rules left: {last:?}");
            }
            if self.shut_down {
                assert!(p.closed, "{id} still open after shutdown");
            }
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
        assert!(
            self.proxy.is_empty(),
            "sessions left after shutdown: {}",
            self.proxy.len()
        );
        assert!(self.proxy.poll_action().is_none());
        for (id, p) in &self.peers {
            assert!(p.closed, "{id} never closed");
            let last = p.last_commit.as_deref().unwrap_or(&[]);
            assert!(last.is_empty(), "{id} left rules after shutdown: {last:?}");
        }
    }
}

/// A PORT or EPRT reaching the server is always the proxy's own (the client's is
/// never forwarded): it advertises a proxy port whose rules the filter already
/// holds, so the server's data connection cannot arrive before them.
fn check_active_release(id: SessionId, cfg: &Config, p: &Peer, line: &[u8]) {
    let port = match ftp::classify(line) {
        Command::Port(port) | Command::Eprt(port) => port,
        _ => return,
    };
    let port = port.unwrap_or_else(|| panic!("{id}: unparsable {line:?} to the server"));
    let range = cfg.proxy_ports;
    assert!(
        (range.low..=range.high).contains(&port),
        "{id}: {line:?} to the server does not name a proxy port"
    );
    assert!(
        p.installed
            .iter()
            .any(|r| r.direction == Direction::In && r.port == port),
        "{id}: {line:?} left before its rules were committed ({:?})",
        p.installed
    );
}

/// Every rule names only the session's client, server and proxy addresses (and the
/// original destination, which is the server unless `-R` is set); data ports are
/// never privileged; proxy ports come from the documented range.
fn check_rules(id: SessionId, cfg: &Config, p: &Peer, rules: &[Rule]) {
    let proxy = p.proxy.map(|a| a.ip());
    let server = p.server.map(|a| a.ip());
    let allowed = |ip: IpAddr| {
        ip == p.client.ip() || ip == p.orig_dst.ip() || Some(ip) == server || Some(ip) == proxy
    };
    for r in rules {
        assert!(
            proxy.is_some(),
            "{id}: rules before the proxy address is known: {r}"
        );
        assert!(
            allowed(r.from) && allowed(r.to),
            "{id}: foreign address in {r}"
        );
        assert_eq!(r.from.is_ipv6(), cfg.ipv6, "{id}: family of {r}");
        match (r.direction, r.translate) {
            (Direction::In, Translate::RdrTo { addr, port }) => {
                assert!(allowed(addr), "{id}: foreign rdr-to address in {r}");
                assert!(port >= MIN_DATA_PORT, "{id}: privileged data port in {r}");
                if let (Some(range), Some(server)) = (cfg.server_data_ports, server) {
                    if addr == server && server != p.client.ip() {
                        assert!(
                            (range.low..=range.high).contains(&port),
                            "{id}: server data port outside --server-data-ports in {r}"
                        );
                    }
                }
                assert!(
                    (cfg.proxy_ports.low..=cfg.proxy_ports.high).contains(&r.port),
                    "{id}: proxy port outside --proxy-ports in {r}"
                );
            }
            (Direction::In, Translate::JoinWith { addr, port }) => {
                // The pair's shape is the Watch's to check; each leg joins the
                // other's destination, a proxy port.
                assert!(allowed(addr), "{id}: foreign join-with address in {r}");
                for port in [port, r.port] {
                    assert!(
                        port >= MIN_DATA_PORT
                            && (cfg.proxy_ports.low..=cfg.proxy_ports.high).contains(&port),
                        "{id}: join-with port outside --proxy-ports in {r}"
                    );
                }
            }
            (Direction::Out, Translate::NatTo { addr, ports }) => {
                assert!(allowed(addr), "{id}: foreign nat-to address in {r}");
                assert!(r.port >= MIN_DATA_PORT, "{id}: privileged data port in {r}");
                assert!(
                    ports == NAT_PORTS
                        || (cfg.rules.rfc_mode
                            && ports == PortRange::single(RFC_ACTIVE_SOURCE_PORT)),
                    "{id}: nat-to ports in {r}"
                );
            }
            _ => panic!("{id}: translation does not fit the direction: {r}"),
        }
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
