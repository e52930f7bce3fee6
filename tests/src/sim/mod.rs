//! Deterministic simulation of the proxy core.
//!
//! A seeded world with a simulated clock drives [`Proxy`] directly, with no sockets:
//! scripted clients and servers (see [`actors`]) talk through pipes that cut bytes
//! into random segments and delay them; the packet filter is the recording
//! [`MockBackend`] with seeded faults, answering commits after a random delay.
//! Faults: connects refused or never completing, EOF and reset at any point,
//! over-long lines, NUL bytes, malformed and low ports, PASV under `-6`, wrong USER
//! under `-A`, busy (once, twice) and failed commits, idle timeouts, more clients
//! than `-m`, shutdown at any moment, servers that send 421 (as the greeting, in
//! place of an answer, or unasked; one line or several, with lines after it),
//! refuse PORT/EPRT with 500, send multi-line replies (which make every later
//! PASV/EPSV joined, refused or bounded by `--server-data-ports`), and forge
//! answers in `STAT -1` listings (a 227/229, a `200` sentinel, a `421-`).
//! Worlds differ in `-6`, `-A`, `-m`, `-t`, `-R`, rule options, the relay
//! ([`Config::relay`]), `--server-data-ports`, forward mode (`--user-at-host`,
//! see [`forward`]: refused logins, lookups answered, failing or never answered),
//! route tables (`--route-file`, replaced at a random moment with
//! `Proxy::set_routes`) and, with the relay, translated transfers (issue 17):
//! `--server-data-mode` client, passive (PORT/EPRT bridged: the server asked
//! PASV/EPSV) or active (PASV/EPSV joined), and fixed servers of the other family
//! than the clients. The sim has no data sockets: a transfer is its control
//! exchange and its rules; in translated worlds the rules also go through the
//! core's [`Relay`] policy, whose bridge dials are checked (`World::relay_commit`).
//!
//! After every event the invariants are checked: those of every action, the
//! session table and the shutdown by the [`Checker`] the fuzz target runs too,
//! those of this world (its honest servers, its mock filter) by `World::check` and
//! `World::check_release`; at the end every byte
//! stream is compared with an oracle built from the actors' transcripts, which
//! follows the replies the way the core must (see `World::walk`). The same seed
//! always gives the same trace hash.

pub mod actors;
pub mod forward;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ftp_proxy_core::internals::ftp;
use ftp_proxy_core::Filter;
use ftp_proxy_core::{
    Accept, Action, Anchor, Config, Decision, Direction, Input, IoOp, Pcg32, PortRange, Proxy,
    RandomSource, Refused, Relay, Rule, RuleLog, RuleOptions, ServerDataMode, SessionId, Side,
    SocketError, Translate, DEFAULT_PROXY_PORTS, MIN_DATA_PORT,
};
use pfctl_backend::mock::{FaultRates, MockBackend};

use crate::invariants::Checker;
use actors::{Client, Fate, Forgery, Reply, Server, Step, Unit};

/// Hard bounds so that no seed can loop forever.
const MAX_EVENTS: u64 = 200_000;
const MAX_SIM_TIME: Duration = Duration::from_secs(4 * 3600);
const PID: u32 = 4242;

/// A failed seed: what broke, and the end of its trace.
#[derive(Debug)]
pub struct Failure {
    /// The seed that failed.
    pub seed: u64,
    /// What broke.
    pub message: String,
    /// The last lines of its trace.
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation seed {} failed: {}", self.seed, self.message)?;
        writeln!(f, "last {} trace lines:", self.trace_tail.len())?;
        for l in &self.trace_tail {
            writeln!(f, "  {l}")?;
        }
        write!(
            f,
            "rerun with: FTP_SIM_SEED={} cargo test -p ftp-proxy-tests --test sim -- --nocapture",
            self.seed
        )
    }
}

/// Counters of one run, and the hash of its whole trace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Hash of the whole trace (equal for equal runs).
    pub trace_hash: u64,
    /// Events processed.
    pub events: u64,
    /// Sessions accepted.
    pub sessions: u32,
    /// Connections refused.
    pub refused: u32,
    /// Rule sets committed.
    pub commits: u32,
    /// Commits answered "proxy port in use", each followed by a new port.
    pub ports_in_use: u32,
    /// Forged STAT listings the server sent (sessions that must end after them).
    pub forged: u32,
    /// Of those, listings forging a `200` sentinel and a `421-`.
    pub forged_sentinel: u32,
    /// See [`Report::forged_sentinel`].
    pub forged_closing: u32,
    /// Rule sets committed naming the forged port: must stay 0. After a multi-line
    /// reply no server reply names a passive port (docs/behavior.md, "Replies out
    /// of step").
    pub forged_opened: u32,
    /// Sessions that ended their data connections with them (a reply desync).
    pub data_ended: u32,
    /// Forged listings after which the proxy still answered the PASV/EPSV held
    /// behind them (the forged lines came in a later segment), with one of the
    /// answers that open nothing the forgery names.
    pub forged_answered: u32,
    /// Joined rule sets committed (a PASV/EPSV served by the proxy's PORT/EPRT).
    pub joined: u32,
    /// Joined PASV/EPSVs whose PORT/EPRT the server refused (the client got 425).
    pub joins_refused: u32,
    /// PASV/EPSVs refused by the proxy after a multi-line reply (no relay, no
    /// `--server-data-ports`).
    pub passive_refused: u32,
    /// 421 replies the servers sent (greeting, in place of an answer, unasked).
    pub server_421: u32,
    /// Forward mode: name lookups the world answered, and those it left unanswered.
    pub resolved: u32,
    /// See [`Report::resolved`].
    pub unanswered: u32,
    /// Route tables replaced while sessions ran.
    pub reloads: u32,
    /// Whether the world's transfers are translated (issue 17: a server data mode
    /// other than `client`, or a server of the other family than the clients).
    pub translated_world: bool,
    /// Data replies (the proxy's 227/229, a bridge's 200) the client got in a
    /// translated world, each checked by the oracle after its rules were in.
    pub translated: u32,
    /// Of those, 200s to a PORT/EPRT bridged with the server's passive port.
    pub bridged: u32,
    /// Of those, 227/229s of PASV/EPSVs joined by `--server-data-mode active`.
    pub active_joins: u32,
    /// Data negotiations checked in cross-family worlds: data replies to the client,
    /// and PORT/EPRT lines rewritten into the server's family.
    pub cross_family: u32,
    /// Bridged rule sets committed.
    pub bridges: u32,
    /// Bridges the relay policy dialled as the oracle expects (translated worlds).
    pub dialled: u32,
    /// Sessions ended, by close reason.
    pub closes: BTreeMap<String, u32>,
}

#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    Eof,
    Reset,
}

#[derive(Debug)]
enum Ev {
    Arrive(usize),
    ToProxy(SessionId, Input),
    ToClient(usize, Chunk),
    ToServer(usize, Chunk),
    Ack {
        sid: SessionId,
        txn: u64,
        anchor: Anchor,
        rules: Vec<ftp_proxy_core::Rule>,
    },
    ClientNext(usize),
    /// The server sends a 421 of its own accord (its idle timeout, a shutdown).
    ServerUnasked(usize),
    Timer,
    Shutdown,
    /// The route file re-read (SIGUSR1): the table for every later `USER`.
    Reload(ftp_proxy_core::RouteTable),
}

/// Directions of the four pipes of a session.
#[derive(Clone, Copy)]
enum Pipe {
    ClientToProxy = 0,
    ProxyToServer = 1,
    ServerToProxy = 2,
    ProxyToClient = 3,
}

struct Peer {
    client: Client,
    server: Server,
    sid: Option<SessionId>,
    addr: SocketAddr,
    refused: bool,
    /// When the last segment on each pipe arrives, so segments stay in order.
    pipe_at: [u64; 4],
    ack_at: u64,
    /// Whether the proxy closed this session's sockets.
    proxy_closed: bool,
    /// Where the proxy connected (forward mode chooses it after `USER`).
    server_at: Option<SocketAddr>,
}

/// The simulated world of one seed.
pub struct World {
    seed: u64,
    rng: Pcg32,
    epoch: Instant,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    proxy: Proxy,
    cfg: Config,
    filter: MockBackend,
    /// The invariants of the proxy's actions (shared with the fuzz target).
    checker: Checker,
    peers: Vec<Peer>,
    by_sid: BTreeMap<SessionId, usize>,
    timer_at: Option<u64>,
    shut_down: bool,
    report: Report,
    hash: u64,
    trace: Option<VecDeque<String>>,
    /// Translated worlds: the core's relay policy fed every rule set the filter
    /// took, to check what it dials for a bridge (the sim has no data sockets, so
    /// each pair is failed at once after the check).
    relay: Option<Relay>,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl World {
    /// Builds the world of `seed`: configuration, clients and their arrival times.
    pub fn new(seed: u64, tracing: bool) -> World {
        let mut rng = Pcg32::new(seed);
        let ipv6 = rng.chance(1, 5);
        let fixed = if ipv6 {
            "[2001:db8:2::20]:2121"
        } else {
            "198.51.100.20:2121"
        };
        let rules = RuleOptions {
            tag: rng.chance(1, 5).then(|| "ftpdata".to_string()),
            queue: rng.chance(1, 8).then(|| "bulk".to_string()),
            log: [RuleLog::None, RuleLog::Log, RuleLog::All][rng.uniform(3) as usize],
            rfc_mode: rng.chance(1, 3),
            proxy_rtable: 0,
        };
        let cfg = Config {
            ipv6,
            anonymous_only: rng.chance(1, 4),
            max_sessions: rng.range(1, 5),
            idle_timeout_secs: [0, 3, 20, 60, 86400][rng.uniform(5) as usize],
            fixed_server: rng.chance(1, 3).then(|| fixed.parse().unwrap()),
            source_addr: None,
            rules,
            pid: PID,
            proxy_ports: DEFAULT_PROXY_PORTS,
            // Never holding the forged port: the range bounds what a forged answer
            // may open, and the sim holds it to opening nothing.
            server_data_ports: rng.chance(1, 3).then(|| {
                let low = rng.range(4000, 30000) as u16;
                PortRange {
                    low,
                    high: low + rng.range(0, 15000) as u16,
                }
            }),
            relay: rng.chance(1, 2),
            login_timeout_secs: [0, 2, 120][rng.uniform(3) as usize],
            // Forward mode: drawn below from a generator of its own, so that the
            // other worlds stay what they were.
            user_at_host: None,
            routes: None,
            resolve_timeout_secs: ftp_proxy_core::DEFAULT_RESOLVE_TIMEOUT_SECS,
            server_data_mode: ServerDataMode::Client,
            // Client TLS needs a certificate and a driver that runs rustls; the
            // sim's peers speak plain text (core/tests/ftps_session.rs covers it).
            tls: Default::default(),
            // NAT64 sessions are cross-family ones (simulated through -R); the
            // mapping itself is core/tests/nat64_session.rs's.
            nat64_prefix: None,
        };
        let mut cfg = cfg;
        let mut frng = Pcg32::new(seed ^ 0xf04a_4d00_5eed);
        let forward = cfg.fixed_server.is_none() && frng.chance(1, 4);
        let routed = cfg.fixed_server.is_none() && !forward && frng.chance(1, 4);
        let default_route = frng.chance(1, 2);
        let (routes, reloaded) = forward::tables(ipv6, default_route);
        if forward {
            cfg.user_at_host = Some(forward::policy(orig_dst(ipv6)));
        }
        if routed {
            cfg.routes = Some(routes);
        }
        if forward || routed {
            cfg.resolve_timeout_secs = frng.range(1, 3);
        }
        // Translated worlds (issue 17), from a generator of their own as well: with
        // the relay, the server is asked in the client's mode, always passive (PORT
        // and EPRT bridged) or always active (PASV and EPSV joined), and now and then
        // it is a fixed server of the other family than the clients.
        let mut xrng = Pcg32::new(seed ^ 0x7a25_1a7e_d0a7);
        if cfg.relay {
            cfg.server_data_mode = [
                ServerDataMode::Client,
                ServerDataMode::Passive,
                ServerDataMode::Active,
            ][xrng.uniform(3) as usize];
            if !forward && !routed && xrng.chance(1, 3) {
                let other = if ipv6 {
                    "198.51.100.20:2121"
                } else {
                    "[2001:db8:2::20]:2121"
                };
                cfg.fixed_server = Some(other.parse().unwrap());
            }
        }
        let proxy =
            Proxy::new(cfg.clone(), Box::new(Pcg32::new(seed ^ 0x5eed))).expect("valid config");
        let n = rng.range(1, 8) as usize;
        let mut peers = Vec::with_capacity(n);
        for i in 0..n {
            let addr: SocketAddr = if ipv6 {
                format!("[2001:db8:1::{:x}]:{}", 10 + i, 40000 + i)
                    .parse()
                    .unwrap()
            } else {
                format!("203.0.113.{}:{}", 10 + i, 40000 + i)
                    .parse()
                    .unwrap()
            };
            let mode = actors::Mode {
                ipv6,
                anonymous_only: cfg.anonymous_only,
                client_ip: addr.ip(),
            };
            let mut script = actors::script(&mut rng, &mode);
            if forward {
                forward::login(&mut frng, &mut script, ipv6, cfg.anonymous_only);
            } else if routed {
                forward::routed_login(&mut frng, &mut script, default_route, cfg.anonymous_only);
            }
            let client = Client {
                script,
                ..Client::default()
            };
            peers.push(Peer {
                client,
                server: Server {
                    data_ports: cfg.server_data_ports,
                    ..Server::default()
                },
                sid: None,
                addr,
                refused: false,
                pipe_at: [0; 4],
                ack_at: 0,
                proxy_closed: false,
                server_at: None,
            });
        }
        let faults = FaultRates {
            busy: ([0, 5, 30][rng.uniform(3) as usize], 100),
            fail: ([0, 0, 2][rng.uniform(3) as usize], 100),
            in_use: ([0, 3, 20][rng.uniform(3) as usize], 100),
        };
        let mut w = World {
            seed,
            rng,
            epoch: Instant::now(),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            proxy,
            checker: Checker::new(&cfg),
            cfg,
            filter: MockBackend::new().with_faults(seed ^ 0xf11e, faults),
            peers,
            by_sid: BTreeMap::new(),
            timer_at: None,
            shut_down: false,
            report: Report::default(),
            hash: 0xcbf2_9ce4_8422_2325,
            trace: tracing.then(VecDeque::new),
            relay: None,
        };
        if w.translated() {
            w.relay = Some(Relay::new(64));
        }
        for i in 0..n {
            let at = w.rng.range(0, 30_000_000) as u64;
            w.at(at, Ev::Arrive(i));
        }
        if w.rng.chance(1, 8) {
            let at = w.rng.range(0, 120_000_000) as u64;
            w.at(at, Ev::Shutdown);
        }
        if routed && frng.chance(2, 3) {
            let at = frng.range(0, 30_000_000) as u64;
            w.at(at, Ev::Reload(reloaded));
        }
        w
    }

    fn orig_dst(&self) -> SocketAddr {
        orig_dst(self.cfg.ipv6)
    }

    /// Whether the server side is IPv6: a fixed server's family, or the clients'.
    fn server_v6(&self) -> bool {
        self.cfg.fixed_server.map_or(self.cfg.ipv6, |s| s.is_ipv6())
    }

    /// Whether the world's transfers are translated: a server data mode of its
    /// own, or a server of the other family than the clients.
    fn translated(&self) -> bool {
        self.cfg.server_data_mode != ServerDataMode::Client || self.cross_family()
    }

    /// Whether clients and server differ in family.
    fn cross_family(&self) -> bool {
        self.server_v6() != self.cfg.ipv6
    }

    /// The proxy's address towards the server of session `i`, in the server's family.
    fn proxy_addr(&self, i: usize) -> SocketAddr {
        if self.server_v6() {
            format!("[2001:db8:2::1]:{}", 50000 + i).parse().unwrap()
        } else {
            format!("198.51.100.1:{}", 50000 + i).parse().unwrap()
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn instant(&self) -> Instant {
        self.epoch + Duration::from_micros(self.now)
    }

    fn note(&mut self, tag: &str, sid: u32, bytes: &[u8]) {
        for chunk in [
            &self.now.to_le_bytes()[..],
            tag.as_bytes(),
            &sid.to_le_bytes(),
            bytes,
        ] {
            for &b in chunk {
                self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        if let Some(t) = &mut self.trace {
            let mut line = String::new();
            let _ = write!(
                line,
                "{:>12.6}s #{sid} {tag} {}",
                self.now as f64 / 1e6,
                ftp::escape(bytes)
            );
            t.push_back(line);
            if t.len() > 50 {
                t.pop_front();
            }
        }
    }

    fn fail(&self, message: impl Into<String>) -> Failure {
        Failure {
            seed: self.seed,
            message: format!("at {:.6}s: {}", self.now as f64 / 1e6, message.into()),
            trace_tail: self
                .trace
                .as_ref()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Sends bytes down a pipe in random segments, each after a random latency, in order.
    fn pipe(&mut self, i: usize, pipe: Pipe, chunk: Chunk) {
        self.pipe_after(i, pipe, chunk, 0);
    }

    /// [`World::pipe`], `extra` microseconds later than the network alone would.
    fn pipe_after(&mut self, i: usize, pipe: Pipe, chunk: Chunk, extra: u64) {
        let mut pieces = Vec::new();
        match chunk {
            Chunk::Data(mut b) => {
                while !b.is_empty() {
                    let n = if self.rng.chance(1, 3) {
                        self.rng.range(1, b.len() as u32) as usize
                    } else {
                        b.len()
                    };
                    pieces.push(Chunk::Data(b.split_to(n)));
                }
            }
            other => pieces.push(other),
        }
        for piece in pieces {
            let latency = self.rng.range(50, 20_000) as u64;
            let t = (self.now + extra + latency).max(self.peers[i].pipe_at[pipe as usize]);
            self.peers[i].pipe_at[pipe as usize] = t;
            let ev = match (pipe, self.peers[i].sid) {
                (Pipe::ClientToProxy, Some(sid)) => Ev::ToProxy(sid, to_input(Side::Client, piece)),
                (Pipe::ServerToProxy, Some(sid)) => Ev::ToProxy(sid, to_input(Side::Server, piece)),
                (Pipe::ProxyToServer, _) => Ev::ToServer(i, piece),
                (Pipe::ProxyToClient, _) => Ev::ToClient(i, piece),
                _ => continue,
            };
            self.at(t, ev);
        }
    }

    /// Runs the seed to the end and checks everything.
    pub fn run(mut self) -> Result<Report, Failure> {
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            self.report.events += 1;
            if self.report.events > MAX_EVENTS || Duration::from_micros(t) > MAX_SIM_TIME {
                break;
            }
            self.step(ev)?;
            self.check()?;
        }
        // The end: shut down whatever is left and let it drain.
        self.queue.clear();
        self.shut_down = true;
        self.checker.shutdown();
        let now = self.instant();
        self.proxy.shutdown(now);
        self.drain()?;
        let mut guard = 0;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            guard += 1;
            if guard > 100_000 {
                return Err(self.fail("shutdown does not finish"));
            }
            self.now = self.now.max(t);
            if matches!(
                ev,
                Ev::Ack { .. } | Ev::Timer | Ev::ToClient(..) | Ev::ToServer(..)
            ) {
                self.step(ev)?;
                self.check()?;
            }
        }
        if let Err(e) = self.checker.finished(&self.proxy) {
            return Err(self.fail(e));
        }
        if let Some((anchor, rules)) = self.filter.anchors().iter().find(|(_, r)| !r.is_empty()) {
            return Err(self.fail(format!("rules left in {anchor} after shutdown: {rules:?}")));
        }
        if let Some(relay) = &self.relay {
            let (listeners, pairs) = (relay.listener_count(), relay.pair_count());
            if listeners + pairs > 0 {
                return Err(self.fail(format!(
                    "the relay policy keeps {listeners} listeners and {pairs} pairs after shutdown"
                )));
            }
        }
        for i in 0..self.peers.len() {
            let seen = self.oracle(i)?;
            self.report.forged_answered += u32::from(seen.forged_answered);
            self.report.translated += seen.translated;
            self.report.bridged += seen.bridged;
            self.report.active_joins += seen.active_joins;
            self.report.cross_family += seen.cross_family;
        }
        self.report.translated_world = self.translated();
        self.report.trace_hash = self.hash;
        Ok(self.report)
    }

    fn step(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Arrive(i) => {
                let now = self.instant();
                let live = self.proxy.len();
                let conn = Accept::new(self.peers[i].addr, self.orig_dst());
                let result = self.proxy.accept(now, conn);
                if let Err(e) = self.checker.accepted(&conn, live, &result) {
                    return Err(self.fail(e));
                }
                match result {
                    Ok(sid) => {
                        self.note("accept", sid.0, b"");
                        self.report.sessions += 1;
                        if let Some(relay) = &mut self.relay {
                            relay.session_started(sid, conn.client.ip());
                        }
                        self.peers[i].sid = Some(sid);
                        self.by_sid.insert(sid, i);
                    }
                    Err(Refused::Limit(_)) => {
                        self.note("refused", 0, b"");
                        self.report.refused += 1;
                        self.peers[i].refused = true;
                    }
                    Err(Refused::ShuttingDown) => {
                        self.peers[i].refused = true;
                    }
                }
            }
            Ev::ToProxy(sid, input) => {
                let (tag, bytes): (&str, &[u8]) = match &input {
                    Input::Data(Side::Client, b) => ("c>p", b),
                    Input::Data(Side::Server, b) => ("s>p", b),
                    _ => ("in", b""),
                };
                let bytes = bytes.to_vec();
                self.note(tag, sid.0, &bytes);
                if let Input::ServerSocketOpened { proxy } = &input {
                    self.checker.proxy_opened(sid, proxy.ip());
                }
                let now = self.instant();
                self.proxy.handle(now, sid, input);
            }
            Ev::ToClient(i, chunk) => self.client_receives(i, chunk),
            Ev::ToServer(i, chunk) => self.server_receives(i, chunk),
            Ev::Ack {
                sid,
                txn,
                anchor,
                rules,
            } => {
                // The mock decides, with its own seeded faults (installs only: removal
                // is the backend's promise, and the runtime's remove_all backs it up).
                let result = self.filter.commit(&anchor, &rules);
                if result == Err(ftp_proxy_core::FilterError::AddrInUse) {
                    self.report.ports_in_use += 1;
                }
                if result.is_ok() {
                    self.checker.acked(sid, &rules);
                    self.relay_commit(sid, anchor, &rules)?;
                }
                self.note(
                    if result.is_ok() { "ack" } else { "nak" },
                    sid.0,
                    &txn.to_le_bytes(),
                );
                let now = self.instant();
                self.proxy
                    .handle(now, sid, Input::RulesCommitted { txn, result });
            }
            Ev::ClientNext(i) => self.client_next(i),
            Ev::ServerUnasked(i) => {
                if !self.peers[i].server.closed {
                    let reply = self.peers[i].server.unasked_421(&mut self.rng);
                    self.server_sends(i, reply);
                }
            }
            Ev::Timer => {
                if self.timer_at.is_some_and(|t| t <= self.now) {
                    self.timer_at = None;
                }
                let now = self.instant();
                self.proxy.handle_timeout(now);
                if let Some(t) = self.proxy.poll_timeout() {
                    if t <= now {
                        return Err(
                            self.fail("poll_timeout() not after now after handle_timeout(now)")
                        );
                    }
                }
            }
            Ev::Reload(table) => {
                self.note("reload", 0, b"");
                self.report.reloads += 1;
                if let Err(e) = self.proxy.set_routes(table) {
                    return Err(self.fail(format!("set_routes in a route-table world: {e}")));
                }
            }
            Ev::Shutdown => {
                self.note("shutdown", 0, b"");
                self.shut_down = true;
                self.checker.shutdown();
                let now = self.instant();
                self.proxy.shutdown(now);
            }
        }
        self.drain()
    }

    /// Executes every action the proxy emitted, as the runtime would.
    fn drain(&mut self) -> Result<(), Failure> {
        while let Some((sid, action)) = self.proxy.poll_action() {
            let Some(&i) = self.by_sid.get(&sid) else {
                return Err(self.fail(format!("action for unknown session {sid}: {action:?}")));
            };
            // Relayed text inside a multi-line reply may look like anything.
            let in_multi = self
                .checker
                .session(sid)
                .is_some_and(|w| w.client_in_multi());
            if let Err(e) = self.checker.action(sid, &action) {
                return Err(self.fail(e));
            }
            match action {
                // The checker allows it in forward and route-table worlds only.
                Action::Resolve { name } => {
                    self.note("resolve", sid.0, name.as_bytes());
                    match forward::answer(&name, self.cfg.ipv6) {
                        Some(result) => {
                            self.report.resolved += 1;
                            let lat = self.rng.range(100, 200_000) as u64;
                            self.at(self.now + lat, Ev::ToProxy(sid, Input::Resolved { result }));
                        }
                        None => self.report.unanswered += 1,
                    }
                }
                Action::ConnectServer { to, .. } => {
                    self.note("connect", sid.0, b"");
                    self.peers[i].server_at = Some(to);
                    let lat = self.rng.range(100, 50_000) as u64;
                    let proxy = self.proxy_addr(i);
                    match self.rng.uniform(40) {
                        0 => self.at(
                            self.now,
                            Ev::ToProxy(
                                sid,
                                Input::ServerConnectFailed {
                                    error: SocketError::from_errno(libc::ENETUNREACH),
                                },
                            ),
                        ),
                        1 => {
                            self.at(
                                self.now,
                                Ev::ToProxy(sid, Input::ServerSocketOpened { proxy }),
                            );
                            let failed = Input::ServerConnectFailed {
                                error: SocketError::from_errno(libc::ECONNREFUSED),
                            };
                            self.at(self.now + lat, Ev::ToProxy(sid, failed));
                        }
                        2 => self.at(
                            self.now,
                            Ev::ToProxy(sid, Input::ServerSocketOpened { proxy }),
                        ),
                        _ => {
                            self.at(
                                self.now,
                                Ev::ToProxy(sid, Input::ServerSocketOpened { proxy }),
                            );
                            self.at(self.now + lat, Ev::ToProxy(sid, Input::ServerConnected));
                            let banner = self.peers[i].server.banner(&mut self.rng);
                            self.peers[i].pipe_at[Pipe::ServerToProxy as usize] = self.now + lat;
                            self.server_sends(i, banner);
                            if self.rng.chance(1, 12) {
                                let at = self.now + self.rng.range(0, 8_000_000) as u64;
                                self.at(at, Ev::ServerUnasked(i));
                            }
                        }
                    }
                }
                Action::Send(side, bytes) => {
                    self.note(
                        if side == Side::Client { "p>c" } else { "p>s" },
                        sid.0,
                        &bytes,
                    );
                    if !(side == Side::Client && in_multi) {
                        self.check_release(sid, side, &bytes)?;
                    }
                    if side == Side::Client {
                        if bytes == actors::REPLY_JOIN_REFUSED.as_bytes() {
                            self.report.joins_refused += 1;
                        } else if bytes == actors::REPLY_PASSIVE_UNSAFE.as_bytes() {
                            self.report.passive_refused += 1;
                        }
                    }
                    // Reported written at once, while the drain goes on (the
                    // contract allows inputs between polls).
                    let now = self.instant();
                    self.proxy
                        .handle(now, sid, Input::Written(side, bytes.len()));
                    let pipe = if side == Side::Client {
                        Pipe::ProxyToClient
                    } else {
                        Pipe::ProxyToServer
                    };
                    self.pipe(i, pipe, Chunk::Data(bytes));
                }
                Action::CommitRules { txn, anchor, rules } => {
                    self.note("commit", sid.0, &txn.to_le_bytes());
                    self.report.commits += 1;
                    if rules.iter().any(names_forged_port) {
                        self.report.forged_opened += 1;
                        return Err(self.fail(format!(
                            "{sid} commits rules naming the forged port {}: {rules:?}",
                            actors::FORGED_PORT
                        )));
                    }
                    if rules
                        .iter()
                        .any(|r| matches!(r.translate, Translate::JoinWith { .. }))
                    {
                        self.report.joined += 1;
                    }
                    if rules
                        .iter()
                        .any(|r| matches!(r.translate, Translate::BridgeWith { .. }))
                    {
                        self.report.bridges += 1;
                    }
                    if let Err(e) = self.confined(i, &rules) {
                        return Err(self.fail(format!("{sid}: {e}")));
                    }
                    let delay = self.rng.range(0, 10_000) as u64;
                    let t = (self.now + delay).max(self.peers[i].ack_at);
                    self.peers[i].ack_at = t;
                    self.at(
                        t,
                        Ev::Ack {
                            sid,
                            txn,
                            anchor,
                            rules,
                        },
                    );
                }
                Action::EndDataConnections { anchor } => {
                    self.note("end-data", sid.0, b"");
                    self.report.data_ended += 1;
                    // What the runtime does (the mock holds no connections).
                    let _ = self.filter.kill_connections(&anchor);
                }
                Action::ReadInterest { side, on } => {
                    // Every byte is written at once, so only unparsed input behind a
                    // commit can turn reading off; the sim delivers regardless.
                    let what = if on { "read-on" } else { "read-off" };
                    self.note(what, sid.0, side.name().as_bytes());
                }
                Action::RulesMayRemain { anchor, .. } => {
                    // What the runtime does: one more removal.
                    self.note("may-remain", sid.0, b"");
                    let _ = self.filter.commit(&anchor, &[]);
                    self.relay_commit(sid, anchor, &[])?;
                }
                Action::StartTls { .. } => {
                    return Err(self.fail(format!("{sid} StartTls with client TLS off")));
                }
                Action::TransferDone { .. } => {
                    // The sim's data path is the mock filter: nothing to close.
                    self.note("transfer-done", sid.0, b"");
                }
                Action::Close { reason, .. } => {
                    self.note("close", sid.0, reason.to_string().as_bytes());
                    *self
                        .report
                        .closes
                        .entry(close_kind(&reason.to_string()))
                        .or_default() += 1;
                    self.peers[i].proxy_closed = true;
                    if let Some(relay) = &mut self.relay {
                        relay.session_ended(sid);
                    }
                    self.pipe(i, Pipe::ProxyToClient, Chunk::Eof);
                    self.pipe(i, Pipe::ProxyToServer, Chunk::Eof);
                }
            }
        }
        if let Some(t) = self.proxy.poll_timeout() {
            let t = us(t.saturating_duration_since(self.epoch)).max(self.now);
            if self.timer_at.is_none_or(|at| t < at) {
                self.timer_at = Some(t);
                self.at(t, Ev::Timer);
            }
        }
        Ok(())
    }

    /// Invariant of this world: a 227/229 reaches the client only once its rules are
    /// in the filter, and never names the server's own data port. The sim's servers
    /// never send a 227/229 outside an answer to PASV/EPSV (except inside a listing,
    /// where the core relays them as text), so every one the client gets is the
    /// proxy's rewrite. The fuzzer's servers may send one unasked, which the core
    /// relays as any reply, so this is not the [`Checker`]'s; the PORT/EPRT half is.
    fn check_release(&self, sid: SessionId, side: Side, line: &[u8]) -> Result<(), Failure> {
        let advertised = match side {
            Side::Client if line.starts_with(b"227 ") => ftp::parse_227(line),
            Side::Client if line.starts_with(b"229 ") => ftp::parse_229(line),
            _ => return Ok(()),
        };
        let Some(port) = advertised else {
            return Err(self.fail(format!(
                "{sid} sent an unparsable data line {}",
                ftp::escape(line)
            )));
        };
        if !(DEFAULT_PROXY_PORTS.low..=DEFAULT_PROXY_PORTS.high).contains(&port) {
            return Err(self.fail(format!(
                "{sid} leaked an endpoint port: {}",
                ftp::escape(line)
            )));
        }
        let anchor = Anchor {
            pid: PID,
            session: sid.0,
        };
        let installed = self
            .filter
            .rules(&anchor)
            .iter()
            .any(|r| r.direction == Direction::In && r.port == port);
        if !installed {
            return Err(self.fail(format!(
                "{sid} released {} before its rules were committed",
                ftp::escape(line)
            )));
        }
        Ok(())
    }

    /// Feeds a rule set the filter took to the relay policy of a translated world,
    /// and checks its decisions: a bridge is dialled from the proxy's address to the
    /// port of the server's last passive answer, and its second leg connects from
    /// the address the client reached to the client's own address. Each new pair
    /// is then failed (no data sockets here), which ends it.
    fn relay_commit(
        &mut self,
        sid: SessionId,
        anchor: Anchor,
        rules: &[Rule],
    ) -> Result<(), Failure> {
        let Some(relay) = &mut self.relay else {
            return Ok(());
        };
        let now = self.epoch + Duration::from_micros(self.now);
        match relay.prepare(anchor, rules) {
            Ok(prepared) => relay.commit(now, prepared),
            Err(e) => {
                let e = format!("{sid}: the relay cannot read committed rules: {e} ({rules:?})");
                return Err(self.fail(e));
            }
        }
        let i = self.by_sid[&sid];
        let mut dialled = None;
        let mut failed = Vec::new();
        let mut wrong = None;
        let relay = self.relay.as_mut().expect("checked above");
        let decisions: Vec<Decision> = std::iter::from_fn(|| relay.poll_decision()).collect();
        for d in decisions {
            match d {
                Decision::Dial { pair, to, from, .. } => dialled = Some((pair, to, from)),
                Decision::Connect { pair, to, from, .. } => {
                    let Some((p, first, first_from)) = dialled.take().filter(|d| d.0 == pair)
                    else {
                        wrong = Some(format!("a Connect without its Dial: {pair:?} to {to}"));
                        continue;
                    };
                    failed.push(p);
                    let p = &self.peers[i];
                    let server = p
                        .server_at
                        .or(self.cfg.fixed_server)
                        .unwrap_or(orig_dst(self.cfg.ipv6));
                    let proxy = self.proxy_addr(i).ip();
                    let ok = first.ip() == server.ip()
                        && Some(first.port()) == p.server.last_passive_port
                        && first_from.map(|a| a.ip()) == Some(proxy)
                        && to.ip() == p.addr.ip()
                        && to.port() >= MIN_DATA_PORT
                        && from.map(|a| a.ip()) == Some(orig_dst(self.cfg.ipv6).ip());
                    if ok {
                        self.report.dialled += 1;
                    } else {
                        wrong = Some(format!(
                            "bridge dialled {first_from:?} -> {first}, then {from:?} -> {to}; \
                             server {server} (last passive port {:?}), proxy {proxy}, client {}",
                            p.server.last_passive_port, p.addr
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = wrong {
            return Err(self.fail(format!("{sid}: {e}")));
        }
        let relay = self.relay.as_mut().expect("checked above");
        for pair in failed {
            relay.failed(
                now,
                pair,
                IoOp::Setup,
                SocketError::from_errno(libc::ECONNREFUSED),
            );
        }
        while relay.poll_decision().is_some() {}
        Ok(())
    }

    /// Every port a rule names is from 1024 up, every address one of session
    /// `i`'s (client, original destination, server, the proxy towards the server).
    fn confined(&self, i: usize, rules: &[Rule]) -> Result<(), String> {
        let p = &self.peers[i];
        let server = p
            .server_at
            .or(self.cfg.fixed_server)
            .unwrap_or(self.orig_dst());
        let addrs = [
            p.addr.ip(),
            self.orig_dst().ip(),
            server.ip(),
            self.proxy_addr(i).ip(),
        ];
        for r in rules {
            let (addr, port) = match r.translate {
                Translate::RdrTo { addr, port }
                | Translate::JoinWith { addr, port }
                | Translate::BridgeWith { addr, port } => (addr, Some(port)),
                Translate::NatTo { addr, .. } => (addr, None),
            };
            if r.port < MIN_DATA_PORT || port.is_some_and(|p| p < MIN_DATA_PORT) {
                return Err(format!("a port below 1024 in {r}"));
            }
            if let Some(a) = [r.from, r.to, addr]
                .into_iter()
                .find(|a| !addrs.contains(a))
            {
                return Err(format!("{a} is not the session's, in {r}"));
            }
        }
        Ok(())
    }

    /// Invariants checked after every event.
    fn check(&self) -> Result<(), Failure> {
        if let Err(e) = self.checker.check(&self.proxy) {
            return Err(self.fail(e));
        }
        let live: Vec<u32> = self.proxy.session_ids().map(|s| s.0).collect();
        let mut ports = Vec::new();
        for (anchor, rules) in self.filter.anchors() {
            if rules.is_empty() {
                continue;
            }
            if !live.contains(&anchor.session) {
                return Err(self.fail(format!("rules left for ended session {anchor}")));
            }
            for r in rules.iter().filter(|r| r.direction == Direction::In) {
                if !(DEFAULT_PROXY_PORTS.low..=DEFAULT_PROXY_PORTS.high).contains(&r.port) {
                    return Err(self.fail(format!("proxy port {} out of range", r.port)));
                }
                ports.push(r.port);
            }
        }
        ports.sort_unstable();
        if ports.windows(2).any(|w| w[0] == w[1]) {
            return Err(self.fail(format!("two sessions share a proxy port: {ports:?}")));
        }
        Ok(())
    }

    fn client_receives(&mut self, i: usize, chunk: Chunk) {
        let p = &mut self.peers[i];
        match chunk {
            Chunk::Data(b) => {
                if p.client.closed {
                    return;
                }
                let finals = p.client.receive(&b);
                let mut next = false;
                for _ in 0..finals {
                    if !p.client.greeted {
                        p.client.greeted = true;
                        next = true;
                    } else if p.client.owed > 0 {
                        p.client.owed -= 1;
                        next = p.client.owed == 0;
                    }
                }
                if next {
                    let think = self.rng.range(0, 300_000) as u64;
                    self.at(self.now + think, Ev::ClientNext(i));
                }
            }
            Chunk::Eof | Chunk::Reset => {
                p.client.saw_eof = true;
                p.client.closed = true;
            }
        }
    }

    fn client_next(&mut self, i: usize) {
        if self.peers[i].client.closed {
            return;
        }
        let Some(step) = self.peers[i].client.script.pop_front() else {
            return;
        };
        match step {
            Step::Send(lines) => {
                let mut bytes = Vec::new();
                for (line, fate) in lines {
                    if fate != Fate::Fatal {
                        self.peers[i].client.owed += 1;
                    }
                    bytes.extend_from_slice(&line);
                    self.peers[i].client.sent.push((line, fate));
                }
                self.pipe(i, Pipe::ClientToProxy, Chunk::Data(bytes.into()));
            }
            Step::Pause(d) => self.at(self.now + d, Ev::ClientNext(i)),
            Step::Close { reset } => {
                self.peers[i].client.closed = true;
                self.pipe(
                    i,
                    Pipe::ClientToProxy,
                    if reset { Chunk::Reset } else { Chunk::Eof },
                );
            }
        }
    }

    fn server_receives(&mut self, i: usize, chunk: Chunk) {
        match chunk {
            Chunk::Data(b) => {
                if self.peers[i].server.closed {
                    return;
                }
                self.peers[i].server.inbox.push(&b);
                while let Ok(Some(line)) = self.peers[i].server.inbox.next_line() {
                    if self.rng.chance(1, 300) {
                        // The server dies mid-dialog.
                        self.peers[i].server.closed = true;
                        let c = if self.rng.chance(1, 2) {
                            Chunk::Reset
                        } else {
                            Chunk::Eof
                        };
                        self.pipe(i, Pipe::ServerToProxy, c);
                        return;
                    }
                    let server_ip = self.peers[i].server_at.map_or(
                        self.cfg
                            .fixed_server
                            .map_or(self.orig_dst().ip(), |s| s.ip()),
                        |s| s.ip(),
                    );
                    let reply = self.peers[i].server.reply(&mut self.rng, &line, server_ip);
                    self.server_sends(i, reply);
                    if self.peers[i].server.closed {
                        return;
                    }
                }
            }
            Chunk::Eof | Chunk::Reset => self.peers[i].server.closed = true,
        }
    }

    /// Sends what the server answered, counts what kind it is, and closes after it
    /// if it said so.
    fn server_sends(&mut self, i: usize, reply: Reply) {
        match self.peers[i].server.sent.last() {
            Some((_, Unit::Forged { forgery, .. })) => {
                self.report.forged += 1;
                match forgery {
                    Forgery::Passive => {}
                    Forgery::Sentinel => self.report.forged_sentinel += 1,
                    Forgery::Closing => self.report.forged_closing += 1,
                }
            }
            Some((_, Unit::Closing { .. })) => self.report.server_421 += 1,
            _ => {}
        }
        for (extra, bytes) in reply.chunks {
            self.pipe_after(i, Pipe::ServerToProxy, Chunk::Data(bytes.into()), extra);
        }
        if reply.close {
            self.peers[i].server.closed = true;
            self.pipe(i, Pipe::ServerToProxy, Chunk::Eof);
        }
    }

    /// Compares what each side received with what the other sent, rewrites aside.
    /// Returns what it saw: whether the proxy answered a PASV/EPSV held behind a
    /// forged listing, and the translated transfers checked.
    fn oracle(&self, i: usize) -> Result<Seen, Failure> {
        let p = &self.peers[i];
        let mut seen = Seen::default();
        let Some(sid) = p.sid else { return Ok(seen) };
        let (translated, cross) = (self.translated(), self.cross_family());
        let active = self.cfg.server_data_mode == ServerDataMode::Active;
        let proxy_ip = self.proxy_addr(i).ip();
        let orig_ip = self.orig_dst().ip();
        let walk = self.walk(i, sid)?;
        // Client to server: forwarded lines unchanged, PORT/EPRT rewritten, the
        // proxy's own PORT/EPRT of a join in place of a PASV/EPSV, local ones absent.
        let got = &p.server.received;
        if got.len() > walk.server.len() {
            return Err(self.fail(format!(
                "{sid}: server got {} lines, {} expected",
                got.len(),
                walk.server.len()
            )));
        }
        for (n, (g, want)) in got.iter().zip(&walk.server).enumerate() {
            let ok = match want {
                ToServer::Same(sent) => g == sent,
                ToServer::Active(sent) => rewritten_active(g, sent, proxy_ip),
                ToServer::Join => joining_port(g, proxy_ip),
            };
            if ok && cross && matches!(want, ToServer::Active(_)) {
                // A client's PORT/EPRT rewritten into the server's family.
                seen.cross_family += 1;
            }
            if !ok {
                return Err(self.fail(format!(
                    "{sid}: line {n} to the server should be {want:?}, is {}",
                    ftp::escape(g)
                )));
            }
        }
        if p.client.got_221 && got.len() != walk.server.len() {
            return Err(self.fail(format!("{sid}: a clean session lost client lines")));
        }
        // Server to client: what the walk expects, in order; an optional line may be
        // missing; the stream may stop anywhere (the session ended).
        let mut got = p.client.received.iter().peekable();
        for (n, want) in walk.client.iter().enumerate() {
            let Some(&g) = got.peek() else {
                return Ok(seen);
            };
            let (want, optional) = match want {
                Expected::Optional(w) => (&**w, true),
                w => (w, false),
            };
            let ok = match want {
                Expected::Exact(w) | Expected::Bridged(w) => g == w,
                Expected::ProxyPassive { pasv } => rewritten_passive(g, *pasv, orig_ip),
                Expected::Prefix(w) => g.starts_with(w),
                Expected::Optional(_) => unreachable!("never nested"),
            };
            if ok {
                got.next();
                seen.forged_answered |= walk.forged_answer == Some(n);
                let data = matches!(want, Expected::ProxyPassive { .. } | Expected::Bridged(_));
                if data && translated {
                    seen.translated += 1;
                    seen.bridged += u32::from(matches!(want, Expected::Bridged(_)));
                    seen.cross_family += u32::from(cross);
                    // Active mode joins every PASV/EPSV.
                    seen.active_joins += u32::from(active && !matches!(want, Expected::Bridged(_)));
                }
            } else if !optional {
                return Err(self.fail(format!(
                    "{sid}: client expected {want:?}, got {}",
                    ftp::escape(g)
                )));
            }
        }
        if let Some(extra) = got.next() {
            return Err(self.fail(format!(
                "{sid}: client got a line nobody sent: {}",
                ftp::escape(extra)
            )));
        }
        Ok(seen)
    }

    /// What each side of session `i` should have received, had the session not been
    /// cut short: the banner, then for each client command in the order sent either
    /// the server's reply to it (rewritten if passive) or the proxy's own reply. This
    /// pins both the bytes and the order of local replies among relayed ones. It
    /// follows the replies as the core must: after a multi-line reply (not FEAT's, not
    /// a held 227/229 or join answer) every PASV/EPSV is joined with a relay, refused
    /// without one unless `--server-data-ports` is set; a 421 ends everything; a
    /// forged listing ends the session after its early end.
    fn walk(&self, i: usize, sid: SessionId) -> Result<Walk, Failure> {
        let p = &self.peers[i];
        let mut w = Walk::default();
        let mut units = p.server.sent.iter().peekable();
        if self.cfg.server_after_user() {
            // The proxy's own greeting; the server's is read by the proxy once
            // the login names it.
            let greeting = if self.cfg.routes.is_some() {
                forward::GREETING_ROUTES
            } else {
                forward::GREETING
            };
            w.client.push(Expected::Exact(greeting.to_vec()));
        } else {
            let Some((banner, kind)) = units.next() else {
                return Ok(w);
            };
            if let Unit::Closing { lines } = kind {
                w.exact(&banner[..*lines]);
                return Ok(w);
            }
            w.exact(banner);
        }
        let relay = self.cfg.relay;
        let bounded = self.cfg.server_data_ports.is_some();
        let mode = self.cfg.server_data_mode;
        // What the proxy asks the server in place of a client's PASV/EPSV/PORT/EPRT
        // when it asks for a passive port of its own (translate::server_command):
        // an IPv6 server knows only EPSV; an IPv4 one gets PASV for PASV, PORT and
        // EPRT, EPSV for EPSV (the sim's servers never refuse EPSV).
        let server_v6 = self.server_v6();
        let mut steerable = false;
        let sent: Vec<&(Vec<u8>, Fate)> = p
            .client
            .sent
            .iter()
            .take_while(|(_, f)| *f != Fate::Fatal)
            .collect();
        for (n, &(line, fate)) in sent.iter().enumerate() {
            // A 421 may come before a local reply was sent: the reply is then never sent.
            let closing_next = matches!(units.peek(), Some((_, Unit::Closing { .. })));
            let pasv = ftp::classify(line) == ftp::Command::Pasv;
            let treat = match fate {
                Fate::Local(reply) => Treat::Local(reply),
                // `--server-data-mode active` (only with the relay): always joined.
                Fate::Passive if mode == ServerDataMode::Active => Treat::Join,
                Fate::Passive if steerable && relay => Treat::Join,
                Fate::Passive if steerable && !bounded => {
                    Treat::Local(actors::REPLY_PASSIVE_UNSAFE)
                }
                Fate::Passive => Treat::Passive,
                Fate::Same => Treat::Forward,
                // `--server-data-mode passive`: the server asked PASV/EPSV, its port
                // bridged with the client's, unless a multi-line reply may have
                // forged the answer (then PORT/EPRT goes as the client sent it).
                Fate::Rewritten if mode == ServerDataMode::Passive && !steerable => Treat::Bridge {
                    eprt: matches!(ftp::classify(line), ftp::Command::Eprt(_)),
                },
                Fate::Rewritten => Treat::Forward,
                Fate::Login(_) => {
                    // The server's greeting first: no greeting (the connect
                    // failed or never completed) or a 421 one, and the proxy
                    // tells the client it cannot log in, and the session ends.
                    let cannot = || {
                        Expected::Optional(Box::new(Expected::Prefix(
                            forward::CANNOT_LOG_IN.to_vec(),
                        )))
                    };
                    match units.next() {
                        Some((_, Unit::Plain)) => {}
                        _ => {
                            w.client.push(cannot());
                            return Ok(w);
                        }
                    }
                    Treat::Forward
                }
                Fate::Fatal => unreachable!("taken out above"),
            };
            w.server.push(match (treat, fate) {
                (Treat::Local(reply), _) => {
                    let e = Expected::Exact(reply.as_bytes().to_vec());
                    w.client.push(if closing_next {
                        Expected::Optional(Box::new(e))
                    } else {
                        e
                    });
                    continue;
                }
                (Treat::Join, _) => ToServer::Join,
                (Treat::Bridge { .. }, _) if server_v6 => ToServer::Same(b"EPSV\r\n".to_vec()),
                (Treat::Bridge { .. }, _) => ToServer::Same(b"PASV\r\n".to_vec()),
                (Treat::Passive, _) if pasv && server_v6 => ToServer::Same(b"EPSV\r\n".to_vec()),
                (_, Fate::Rewritten) => ToServer::Active(line.clone()),
                (_, Fate::Login(user)) => ToServer::Same(user.clone()),
                _ => ToServer::Same(line.clone()),
            });
            let Some((lines, unit)) = units.next() else {
                return Ok(w);
            };
            match (treat, *unit) {
                (_, Unit::Closing { lines: n }) => {
                    w.exact(&lines[..n]);
                    return Ok(w);
                }
                (Treat::Join, Unit::Plain) => {
                    let code = lines.last().and_then(|l| ftp::reply_code(l));
                    w.client.push(match code {
                        Some((200..=299, false)) => Expected::ProxyPassive { pasv },
                        _ => Expected::Exact(actors::REPLY_JOIN_REFUSED.as_bytes().to_vec()),
                    });
                }
                (Treat::Passive, Unit::Passive) => w.client.push(Expected::ProxyPassive { pasv }),
                (Treat::Passive | Treat::Bridge { .. }, Unit::BadPassive) => w.client.push(
                    Expected::Exact(actors::REPLY_BAD_PASSIVE.as_bytes().to_vec()),
                ),
                (Treat::Bridge { eprt }, Unit::Passive) => {
                    let reply: &[u8] = if eprt {
                        b"200 EPRT command successful\r\n"
                    } else {
                        b"200 PORT command successful\r\n"
                    };
                    w.client.push(Expected::Bridged(reply.to_vec()));
                }
                (Treat::Forward, Unit::Plain) => {
                    w.exact(lines);
                    if ftp::may_carry_client_lines(line)
                        && ftp::reply_code(&lines[0]).is_some_and(|(_, more)| more)
                    {
                        steerable = true;
                    }
                }
                (Treat::Forward, Unit::Feat) => w.client.extend(
                    lines
                        .iter()
                        .filter(|l| l.starts_with(b"211") || !ftp::is_security_feature(l))
                        .map(|l| Expected::Exact(l.clone())),
                ),
                (Treat::Forward, Unit::Forged { forgery, early_end }) => {
                    w.exact(&lines[..=early_end]);
                    let next = sent.get(n + 1).filter(|(_, f)| *f == Fate::Passive);
                    let Some((passive, _)) = next else {
                        return Err(self.fail(format!(
                            "{sid}: a forged listing with no PASV/EPSV after it"
                        )));
                    };
                    self.forged_tail(&mut w, forgery, &lines[early_end + 1..], passive);
                    return Ok(w);
                }
                (treat, unit) => {
                    return Err(self.fail(format!(
                        "{sid}: the sim's server answered {} ({treat:?}) with {unit:?}",
                        ftp::escape(line)
                    )))
                }
            }
        }
        // A 421 the server sent unasked after its last answer.
        if let Some((lines, Unit::Closing { lines: n })) = units.next() {
            w.exact(&lines[..*n]);
        }
        Ok(w)
    }

    /// What may follow the early end of a forged listing, the PASV/EPSV `passive`
    /// being held behind it: the forged lines never answer it. Whether the proxy
    /// still deals with the PASV/EPSV depends on whether the forged lines arrived with
    /// the early end (then the session ends first) or later.
    fn forged_tail(&self, w: &mut Walk, forgery: Forgery, rest: &[Vec<u8>], passive: &[u8]) {
        let pasv = ftp::classify(passive) == ftp::Command::Pasv;
        let (relay, bounded) = (self.cfg.relay, self.cfg.server_data_ports.is_some());
        // The proxy's answer to the PASV/EPSV, if it got that far.
        let answer = match (relay, bounded, forgery) {
            // Joined: the forged 2xx is taken for the answer to the proxy's PORT,
            // which releases only the proxy's own port.
            (true, _, Forgery::Passive | Forgery::Sentinel) => {
                Some(Expected::ProxyPassive { pasv })
            }
            // Joined, but the 421 comes first.
            (true, _, Forgery::Closing) => None,
            (false, false, _) => Some(Expected::Exact(
                actors::REPLY_PASSIVE_UNSAFE.as_bytes().to_vec(),
            )),
            // Forwarded, answered by the forged line: its port is outside the range.
            (false, true, Forgery::Passive) => Some(Expected::Exact(
                actors::REPLY_BAD_PASSIVE.as_bytes().to_vec(),
            )),
            // Forwarded, answered by the sentinel: relayed as the non-227 it is.
            (false, true, Forgery::Sentinel) => {
                Some(Expected::Exact(actors::FORGED_SENTINEL.to_vec()))
            }
            // Forwarded, then the 421 comes.
            (false, true, Forgery::Closing) => None,
        };
        if let Some(a) = answer {
            w.forged_answer = Some(w.client.len());
            w.client.push(Expected::Optional(Box::new(a)));
        }
        if forgery == Forgery::Closing {
            // `421-zzz`, the forged line, `421 y`: relayed whole; the session ends.
            w.exact(&rest[..3]);
        }
        // The server may have got the PASV/EPSV, or the proxy's PORT/EPRT of the join.
        if relay {
            w.server.push(ToServer::Join);
        } else if bounded {
            w.server.push(ToServer::Same(passive.to_vec()));
        }
    }
}

/// What the oracle expects each side of a session to receive.
#[derive(Default)]
struct Walk {
    client: Vec<Expected>,
    server: Vec<ToServer>,
    /// Where in `client` the proxy's answer to a PASV/EPSV held behind a forged
    /// listing may come.
    forged_answer: Option<usize>,
}

impl Walk {
    fn exact(&mut self, lines: &[Vec<u8>]) {
        self.client
            .extend(lines.iter().map(|l| Expected::Exact(l.clone())));
    }
}

/// How the proxy deals with one client line.
#[derive(Debug, Clone, Copy)]
enum Treat {
    /// Answers it itself.
    Local(&'static str),
    /// Forwards it (PORT/EPRT rewritten).
    Forward,
    /// Forwards a PASV/EPSV and rewrites its 227/229.
    Passive,
    /// Serves a PASV/EPSV joined: its own PORT/EPRT to the server.
    Join,
    /// Serves a PORT/EPRT bridged: its own PASV/EPSV to the server, and a 200 to
    /// the client (in the client's form) once the rules are in.
    Bridge {
        /// The client sent EPRT.
        eprt: bool,
    },
}

/// What the oracle saw of one session.
#[derive(Default)]
struct Seen {
    forged_answered: bool,
    /// Data replies the client got in a translated world: see [`Report::translated`].
    translated: u32,
    bridged: u32,
    active_joins: u32,
    cross_family: u32,
}

/// One line the server should receive.
enum ToServer {
    Same(Vec<u8>),
    /// The rewrite of the client's PORT/EPRT.
    Active(Vec<u8>),
    /// The proxy's own PORT/EPRT of a join.
    Join,
}

/// One line the client should receive.
enum Expected {
    Exact(Vec<u8>),
    /// The proxy's own 227 (PASV) or 229 (EPSV) naming a proxy port.
    ProxyPassive {
        pasv: bool,
    },
    /// A line starting with these bytes (the proxy's 421 with its reason).
    Prefix(Vec<u8>),
    /// The proxy's 200 to a PORT/EPRT it bridged with the server's passive port.
    Bridged(Vec<u8>),
    /// This line, or nothing.
    Optional(Box<Expected>),
}

impl std::fmt::Debug for ToServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToServer::Same(l) => write!(f, "'{}'", ftp::escape(l)),
            ToServer::Active(l) => write!(f, "the rewrite of '{}'", ftp::escape(l)),
            ToServer::Join => f.write_str("the proxy's PORT/EPRT of a join"),
        }
    }
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Exact(l) => write!(f, "'{}'", ftp::escape(l)),
            Expected::Bridged(l) => write!(f, "the bridge's '{}'", ftp::escape(l)),
            Expected::ProxyPassive { pasv: true } => f.write_str("the proxy's own 227"),
            Expected::ProxyPassive { pasv: false } => f.write_str("the proxy's own 229"),
            Expected::Prefix(p) => write!(f, "'{}...'", ftp::escape(p)),
            Expected::Optional(e) => write!(f, "{e:?} or nothing"),
        }
    }
}

/// Whether a rule names the forged port anywhere.
fn names_forged_port(r: &Rule) -> bool {
    let translated = match r.translate {
        Translate::RdrTo { port, .. }
        | Translate::JoinWith { port, .. }
        | Translate::BridgeWith { port, .. } => port,
        Translate::NatTo { .. } => 0,
    };
    r.port == actors::FORGED_PORT || translated == actors::FORGED_PORT
}

/// The server address the clients connect to (diverted to the proxy).
fn orig_dst(ipv6: bool) -> SocketAddr {
    if ipv6 {
        "[2001:db8:2::10]:21".parse().unwrap()
    } else {
        "198.51.100.10:21".parse().unwrap()
    }
}

fn to_input(side: Side, chunk: Chunk) -> Input {
    match chunk {
        Chunk::Data(b) => Input::Data(side, b),
        Chunk::Eof => Input::Eof(side),
        Chunk::Reset => Input::Reset(side),
    }
}

fn close_kind(reason: &str) -> String {
    reason.split(':').next().unwrap_or(reason).to_string()
}

/// The server must see the proxy's own PORT/EPRT with a proxy port.
fn rewritten_active(got: &[u8], sent: &[u8], proxy_ip: IpAddr) -> bool {
    let port = |l: &[u8]| match ftp::classify(l) {
        ftp::Command::Port(p) | ftp::Command::Eprt(p) => p,
        _ => None,
    };
    let Some(p) = port(got) else { return false };
    // PORT stays PORT towards an IPv4 proxy address; EPRT, and anything towards an
    // IPv6 one, becomes an EPRT in the proxy's family (|1| or |2|).
    let expected = match proxy_ip {
        IpAddr::V4(v4) if sent[..4].eq_ignore_ascii_case(b"PORT") => ftp::format_port(v4, p),
        _ => ftp::format_eprt(proxy_ip, p),
    };
    got == expected.as_bytes() && (DEFAULT_PROXY_PORTS.low..=DEFAULT_PROXY_PORTS.high).contains(&p)
}

/// The client must see the proxy's own 227 (with the original server address) for
/// a PASV, its own 229 for an EPSV, naming a proxy port.
fn rewritten_passive(got: &[u8], pasv: bool, orig_ip: IpAddr) -> bool {
    let (expected, port) = if pasv {
        let Some(p) = ftp::parse_227(got) else {
            return false;
        };
        let IpAddr::V4(v4) = orig_ip else {
            return false;
        };
        (ftp::format_227(v4, p), p)
    } else {
        let Some(p) = ftp::parse_229(got) else {
            return false;
        };
        (ftp::format_229(p), p)
    };
    got == expected.as_bytes()
        && (DEFAULT_PROXY_PORTS.low..=DEFAULT_PROXY_PORTS.high).contains(&port)
}

/// The proxy's own PORT (EPRT for an IPv6 proxy address) of a join, naming its
/// address and a proxy port.
fn joining_port(got: &[u8], proxy_ip: IpAddr) -> bool {
    let port = match ftp::classify(got) {
        ftp::Command::Port(Some(p)) | ftp::Command::Eprt(Some(p)) => p,
        _ => return false,
    };
    let expected = match proxy_ip {
        IpAddr::V4(v4) => ftp::format_port(v4, port),
        v6 => ftp::format_eprt(v6, port),
    };
    got == expected.as_bytes()
        && (DEFAULT_PROXY_PORTS.low..=DEFAULT_PROXY_PORTS.high).contains(&port)
}

/// Runs one seed; on failure runs it again with tracing to show the tail.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    match World::new(seed, false).run() {
        Ok(r) => Ok(r),
        Err(_) => World::new(seed, true).run(),
    }
}
