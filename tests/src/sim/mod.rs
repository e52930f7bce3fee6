//! Deterministic simulation of the proxy core.
//!
//! A seeded world with a simulated clock drives [`Proxy`] directly, with no sockets:
//! scripted clients and servers (see [`actors`]) talk through pipes that cut bytes
//! into random segments and delay them; the packet filter is the recording
//! [`MockBackend`] with seeded faults, answering commits after a random delay.
//! Faults: connects refused or never completing, EOF and reset at any point,
//! over-long lines, NUL bytes, malformed and low ports, PASV under `-6`, wrong USER
//! under `-A`, busy (once, twice) and failed commits, idle timeouts, more clients
//! than `-m`, and shutdown at any moment.
//!
//! After every event the invariants are checked (see `World::check`); at the end
//! every byte stream is compared with an oracle built from the actors' transcripts.
//! The same seed always gives the same trace hash.

pub mod actors;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ftp_proxy_core::internals::ftp;
use ftp_proxy_core::Filter;
use ftp_proxy_core::{
    Accept, Action, Anchor, Config, Direction, Input, Pcg32, Proxy, RandomSource, Refused, RuleLog,
    RuleOptions, SessionId, Side, Translate, DEFAULT_PROXY_PORTS,
};
use pfctl_backend::mock::{FaultRates, MockBackend};

use actors::{Client, Fate, Server, Step, Unit};

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
    /// Forged STAT listings the server sent (sessions that must end in a desync).
    pub forged: u32,
    /// Rule sets committed for the forged port: must stay 0. After a multi-line reply
    /// no server reply names a passive port (docs/behavior.md, "Replies out of step").
    pub forged_opened: u32,
    /// Sessions that ended their data connections with them (a reply desync).
    pub data_ended: u32,
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
    Timer,
    Shutdown,
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
    /// The read interest last emitted per side (client, server); both start on.
    reading: [bool; 2],
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
    peers: Vec<Peer>,
    by_sid: BTreeMap<SessionId, usize>,
    timer_at: Option<u64>,
    shut_down: bool,
    report: Report,
    hash: u64,
    trace: Option<VecDeque<String>>,
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
            server_data_ports: None,
            relay: rng.chance(1, 2),
            login_timeout_secs: [0, 2, 120][rng.uniform(3) as usize],
        };
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
            let client = Client {
                script: actors::script(&mut rng, &mode),
                ..Client::default()
            };
            peers.push(Peer {
                client,
                server: Server::default(),
                sid: None,
                addr,
                refused: false,
                pipe_at: [0; 4],
                ack_at: 0,
                proxy_closed: false,
                reading: [true; 2],
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
            cfg,
            filter: MockBackend::new().with_faults(seed ^ 0xf11e, faults),
            peers,
            by_sid: BTreeMap::new(),
            timer_at: None,
            shut_down: false,
            report: Report::default(),
            hash: 0xcbf2_9ce4_8422_2325,
            trace: tracing.then(VecDeque::new),
        };
        for i in 0..n {
            let at = w.rng.range(0, 30_000_000) as u64;
            w.at(at, Ev::Arrive(i));
        }
        if w.rng.chance(1, 8) {
            let at = w.rng.range(0, 120_000_000) as u64;
            w.at(at, Ev::Shutdown);
        }
        w
    }

    fn orig_dst(&self) -> SocketAddr {
        if self.cfg.ipv6 {
            "[2001:db8:2::10]:21".parse().unwrap()
        } else {
            "198.51.100.10:21".parse().unwrap()
        }
    }

    fn proxy_addr(&self, i: usize) -> SocketAddr {
        if self.cfg.ipv6 {
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
            let t = (self.now + latency).max(self.peers[i].pipe_at[pipe as usize]);
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
        if !self.proxy.is_empty() {
            return Err(self.fail(format!("{} sessions left after shutdown", self.proxy.len())));
        }
        if let Some((anchor, rules)) = self.filter.anchors().iter().find(|(_, r)| !r.is_empty()) {
            return Err(self.fail(format!("rules left in {anchor} after shutdown: {rules:?}")));
        }
        for i in 0..self.peers.len() {
            self.oracle(i)?;
        }
        self.report.trace_hash = self.hash;
        Ok(self.report)
    }

    fn step(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Arrive(i) => {
                let now = self.instant();
                let live = self.proxy.len();
                match self
                    .proxy
                    .accept(now, Accept::new(self.peers[i].addr, self.orig_dst()))
                {
                    Ok(sid) => {
                        self.note("accept", sid.0, b"");
                        self.report.sessions += 1;
                        self.peers[i].sid = Some(sid);
                        self.by_sid.insert(sid, i);
                    }
                    Err(Refused::Limit(m)) => {
                        if live < m as usize {
                            return Err(self.fail(format!("refused at {live} of {m} sessions")));
                        }
                        self.note("refused", 0, b"");
                        self.report.refused += 1;
                        self.peers[i].refused = true;
                    }
                    Err(Refused::ShuttingDown) => {
                        if !self.shut_down {
                            return Err(self.fail("refused as shutting down before shutdown"));
                        }
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
            Ev::Shutdown => {
                self.note("shutdown", 0, b"");
                self.shut_down = true;
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
            match action {
                Action::ConnectServer { to, bind } => {
                    self.note("connect", sid.0, b"");
                    let want = self.cfg.fixed_server.unwrap_or(self.orig_dst());
                    if to != want || bind.is_some() {
                        return Err(
                            self.fail(format!("connect to {to} (bind {bind:?}), expected {want}"))
                        );
                    }
                    let lat = self.rng.range(100, 50_000) as u64;
                    let proxy = self.proxy_addr(i);
                    match self.rng.uniform(40) {
                        0 => self.at(
                            self.now,
                            Ev::ToProxy(
                                sid,
                                Input::ServerConnectFailed {
                                    error: "Network unreachable".into(),
                                },
                            ),
                        ),
                        1 => {
                            self.at(
                                self.now,
                                Ev::ToProxy(sid, Input::ServerSocketOpened { proxy }),
                            );
                            let failed = Input::ServerConnectFailed {
                                error: "Connection refused".into(),
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
                            self.pipe(i, Pipe::ServerToProxy, Chunk::Data(banner.into()));
                        }
                    }
                }
                Action::Send(side, bytes) => {
                    self.note(
                        if side == Side::Client { "p>c" } else { "p>s" },
                        sid.0,
                        &bytes,
                    );
                    self.check_release(sid, side, &bytes)?;
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
                    if rules.iter().any(|r| {
                        matches!(r.translate, Translate::RdrTo { port, .. } if port == actors::FORGED_PORT)
                    }) {
                        self.report.forged_opened += 1;
                    }
                    if anchor
                        != (Anchor {
                            pid: PID,
                            session: sid.0,
                        })
                    {
                        return Err(self.fail(format!("{sid} commits to {anchor}")));
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
                    if anchor.session != sid.0 || self.peers[i].proxy_closed {
                        return Err(self.fail(format!("{sid} ends data of {anchor} after close")));
                    }
                }
                Action::ReadInterest { side, on } => {
                    // Every byte is written at once, so only unparsed input behind a
                    // commit can turn reading off; the sim delivers regardless.
                    let what = if on { "read-on" } else { "read-off" };
                    self.note(what, sid.0, side.name().as_bytes());
                    // Invariant: emitted only when it changes, never after the close.
                    let was = std::mem::replace(&mut self.peers[i].reading[side as usize], on);
                    if was == on || self.peers[i].proxy_closed {
                        return Err(self.fail(format!(
                            "{sid} read interest {side} {on} repeated or after close"
                        )));
                    }
                }
                Action::RulesMayRemain { anchor, .. } => {
                    // What the runtime does: one more removal.
                    self.note("may-remain", sid.0, b"");
                    let _ = self.filter.commit(&anchor, &[]);
                }
                Action::TransferDone { anchor } => {
                    // The sim's data path is the mock filter: nothing to close. The
                    // reply it follows was relayed, so the session is still open.
                    self.note("transfer-done", sid.0, b"");
                    if self.peers[i].proxy_closed
                        || anchor
                            != (Anchor {
                                pid: PID,
                                session: sid.0,
                            })
                    {
                        return Err(self.fail(format!(
                            "{sid} transfer done for {anchor} (closed: {})",
                            self.peers[i].proxy_closed
                        )));
                    }
                }
                Action::Close { reason, summary } => {
                    self.note("close", sid.0, reason.to_string().as_bytes());
                    if summary.client != self.peers[i].addr {
                        return Err(self.fail(format!(
                            "{sid} summary names client {}, not {}",
                            summary.client, self.peers[i].addr
                        )));
                    }
                    *self
                        .report
                        .closes
                        .entry(close_kind(&reason.to_string()))
                        .or_default() += 1;
                    self.peers[i].proxy_closed = true;
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

    /// Invariant: a rewritten line leaves only once its rules are in the filter, and
    /// no endpoint's own data port ever reaches the other side.
    fn check_release(&self, sid: SessionId, side: Side, line: &[u8]) -> Result<(), Failure> {
        let advertised = match side {
            Side::Server if line.starts_with(b"PORT ") => ftp::parse_port_args(&line[5..]),
            Side::Server if line.starts_with(b"EPRT ") => ftp::parse_eprt_args(&line[5..]),
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

    /// Invariants checked after every event.
    fn check(&self) -> Result<(), Failure> {
        if self.proxy.len() > self.cfg.max_sessions as usize {
            return Err(self.fail(format!(
                "{} sessions, limit {}",
                self.proxy.len(),
                self.cfg.max_sessions
            )));
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
                    let server_ip = self
                        .cfg
                        .fixed_server
                        .map_or(self.orig_dst().ip(), |s| s.ip());
                    let (reply, close) =
                        self.peers[i].server.reply(&mut self.rng, &line, server_ip);
                    if matches!(self.peers[i].server.sent.last(), Some((_, Unit::Forged))) {
                        self.report.forged += 1;
                    }
                    self.pipe(i, Pipe::ServerToProxy, Chunk::Data(reply.into()));
                    if close {
                        self.peers[i].server.closed = true;
                        self.pipe(i, Pipe::ServerToProxy, Chunk::Eof);
                        return;
                    }
                }
            }
            Chunk::Eof | Chunk::Reset => self.peers[i].server.closed = true,
        }
    }

    /// Compares what each side received with what the other sent, rewrites aside.
    fn oracle(&self, i: usize) -> Result<(), Failure> {
        let p = &self.peers[i];
        let Some(sid) = p.sid else { return Ok(()) };
        let proxy_ip = self.proxy_addr(i).ip();
        // Client to server: forwarded lines unchanged, PORT/EPRT rewritten, local ones absent.
        let expected: Vec<&(Vec<u8>, Fate)> = p
            .client
            .sent
            .iter()
            .take_while(|(_, f)| *f != Fate::Fatal)
            .filter(|(_, f)| matches!(f, Fate::Same | Fate::Rewritten))
            .collect();
        let got = &p.server.received;
        if got.len() > expected.len() {
            return Err(self.fail(format!(
                "{sid}: server got {} lines, client sent {}",
                got.len(),
                expected.len()
            )));
        }
        for (n, (g, (sent, fate))) in got.iter().zip(expected.iter().copied()).enumerate() {
            let ok = match fate {
                Fate::Same => g == sent,
                Fate::Rewritten => rewritten_active(g, sent, proxy_ip),
                _ => false,
            };
            if !ok {
                return Err(self.fail(format!(
                    "{sid}: client line {n} {} reached the server as {}",
                    ftp::escape(sent),
                    ftp::escape(g)
                )));
            }
        }
        if p.client.got_221 && got.len() != expected.len() {
            return Err(self.fail(format!("{sid}: a clean session lost client lines")));
        }
        // Server to client: the banner, then for each command in the order sent either
        // the server's reply to it (rewritten if passive) or the proxy's own reply.
        // This pins both the bytes and the order of local replies among relayed ones.
        let mut units = p.server.sent.iter();
        let mut expected: Vec<Expected> = Vec::new();
        if let Some((lines, _)) = units.next() {
            expected.extend(lines.iter().map(|l| Expected::Exact(l.clone())));
        }
        for (_, fate) in p.client.sent.iter().take_while(|(_, f)| *f != Fate::Fatal) {
            match fate {
                Fate::Local(reply) => expected.push(Expected::Exact(reply.as_bytes().to_vec())),
                _ => match units.next() {
                    Some((lines, Unit::Plain)) => {
                        expected.extend(lines.iter().map(|l| Expected::Exact(l.clone())))
                    }
                    Some((_, Unit::BadPassive)) => expected.push(Expected::Exact(
                        actors::REPLY_BAD_PASSIVE.as_bytes().to_vec(),
                    )),
                    Some((lines, Unit::Passive)) => {
                        expected.push(Expected::Passive(lines[0].clone()))
                    }
                    Some((lines, Unit::Feat)) => expected.extend(
                        lines
                            .iter()
                            .filter(|l| l.starts_with(b"211") || !ftp::is_security_feature(l))
                            .map(|l| Expected::Exact(l.clone())),
                    ),
                    Some((lines, Unit::Forged)) => {
                        // Up to the early end; then at most the rewrite of the forged
                        // line (separate segments), and nothing more: the session ends.
                        let end = lines.iter().position(|l| l == actors::EARLY_END).unwrap();
                        expected.extend(lines[..=end].iter().map(|l| Expected::Exact(l.clone())));
                        expected.push(Expected::ForgedRewrite);
                        break;
                    }
                    None => break,
                },
            }
        }
        let orig_ip = self.orig_dst().ip();
        let mut got = p.client.received.iter().peekable();
        for want in &expected {
            let Some(&g) = got.peek() else { return Ok(()) };
            let ok = match want {
                Expected::Exact(w) => g == w,
                Expected::Passive(first) => rewritten_passive(g, first, orig_ip),
                Expected::ForgedRewrite => {
                    if g.starts_with(b"22") {
                        got.next();
                    }
                    continue;
                }
            };
            got.next();
            if !ok {
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
        Ok(())
    }
}

/// One line the client should receive.
enum Expected {
    Exact(Vec<u8>),
    /// The rewritten form of the passive reply whose first line this is.
    Passive(Vec<u8>),
    /// Optionally, the rewrite of a forged passive answer.
    ForgedRewrite,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Exact(l) => write!(f, "'{}'", ftp::escape(l)),
            Expected::Passive(l) => write!(f, "the rewrite of '{}'", ftp::escape(l)),
            Expected::ForgedRewrite => f.write_str("the rewrite of a forged answer, or nothing"),
        }
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
    let verb_kept = got[..4].eq_ignore_ascii_case(&sent[..4]);
    let expected = match (&got[..4], proxy_ip) {
        (b"PORT", IpAddr::V4(v4)) => ftp::format_port(v4, p),
        _ => ftp::format_eprt(proxy_ip, p),
    };
    verb_kept
        && got == expected.as_bytes()
        && (DEFAULT_PROXY_PORTS.low..=DEFAULT_PROXY_PORTS.high).contains(&p)
}

/// The client must see the proxy's own 227 (with the original server address) or 229.
fn rewritten_passive(got: &[u8], first_line: &[u8], orig_ip: IpAddr) -> bool {
    let (expected, port) = if first_line.starts_with(b"227") {
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

/// Runs one seed; on failure runs it again with tracing to show the tail.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    match World::new(seed, false).run() {
        Ok(r) => Ok(r),
        Err(_) => World::new(seed, true).run(),
    }
}
