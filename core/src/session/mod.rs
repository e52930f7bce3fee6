//! One FTP control connection: framing, parsing, rewriting and its rule commits.
//!
//! Driven only through [`crate::Proxy`], which lends it the clock, the random
//! source, the port registry and the output queue in a [`Cx`] on every call.
//!
//! The session is split by concern, each part a small state of its own:
//!
//! * here: the [`Session`], its inputs, its timers firing, the loop over buffered
//!   lines ([`Session::pump`]) and its end;
//! * `pairing.rs`: which reply answers which command, with the PASV/EPSV exchange
//!   and the commit in flight as one enum;
//! * `dialogue.rs`: what becomes of each command and reply line;
//! * `negotiation.rs`: data-connection negotiations, ports and rule commits;
//! * `flow.rs`: queued output and read interest;
//! * `stats.rs`: the counters of the summary line;
//! * `timer.rs`: the named deadlines;
//! * `upstream.rs`: choosing the server after `USER` (forward mode, route table);
//! * `server_tls.rs`: securing the server's control connection (`--server-tls`).

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use log::{debug, error, info, warn};

use crate::config::{Config, CONNECT_TIMEOUT};
use crate::event::{Accept, Action, CloseReason, Input, SessionId, Side};
use crate::ftps::{self, FtpsState};
use crate::line::LineBuf;
use crate::rand::RandomSource;
use crate::rules::{Anchor, Family, SessionAddrs};
use crate::translate::{ServerDataMode, ServerSupport};

mod dialogue;
mod flow;
mod negotiation;
mod pairing;
mod server_tls;
mod stats;
mod timer;
mod upstream;

use flow::{idx, Flow};
use negotiation::RuleState;
use pairing::Pairing;
use server_tls::{ServerLink, SECURING_FAILED};
use stats::Stats;
use timer::{Timer, TimerTable};
use upstream::Upstream;

/// What the session lends from the [`crate::Proxy`] for one call.
pub(crate) struct Cx<'a> {
    pub now: Instant,
    pub rng: &'a mut dyn RandomSource,
    pub cfg: &'a Config,
    /// Proxy ports handed out by live sessions, so no two sessions share one.
    pub ports: &'a mut BTreeSet<u16>,
    pub out: &'a mut VecDeque<(SessionId, Action)>,
    /// Live sessions, this one included (for the "session N/M started" log line).
    pub live: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Ended; waiting for the acknowledgement of the empty rule set.
    Closing {
        txn: u64,
    },
    /// Ended and its rules gone: the proxy drops it.
    Done,
}

/// The addresses a session is between, which its rules and rewrites are made of.
#[derive(Debug)]
struct Endpoints {
    client: SocketAddr,
    /// Where the client meant to go.
    orig_server: SocketAddr,
    /// Where the proxy connects: `orig_server`, the fixed server (`-R`), or the
    /// IPv4 server a `--nat64-prefix` destination embeds ([`Config::server_for`]).
    server: SocketAddr,
    client_rdomain: u32,
    /// Local address of the socket towards the server, once it exists.
    proxy: Option<SocketAddr>,
}

impl Endpoints {
    fn addrs(&self) -> SessionAddrs {
        SessionAddrs {
            client: self.client.ip(),
            server: self.server.ip(),
            orig_server: self.orig_server.ip(),
            proxy: self.proxy.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip()),
            client_rdomain: self.client_rdomain,
        }
    }
}

pub(crate) struct Session {
    id: SessionId,
    anchor: Anchor,
    ends: Endpoints,
    phase: Phase,
    /// Unparsed bytes of each side, by [`idx`].
    inbox: [LineBuf; 2],
    pairing: Pairing,
    rules: RuleState,
    timers: TimerTable,
    flow: Flow,
    stats: Stats,
    /// Whether the server is known yet (forward mode chooses it after `USER`).
    upstream: Upstream,
    /// What the server has shown it does not support (an EPSV refused).
    support: ServerSupport,
    /// RFC 4217 state of the client side (inert with client TLS off).
    ftps: FtpsState,
    /// `AUTH TLS` was accepted and its `234` has not gone out yet: no client byte
    /// is a command any more (they are TLS records), so none is parsed; they go to
    /// the driver with [`Action::StartTls`].
    tls_wait: bool,
    /// The proxy's own securing of the server's control connection
    /// (`--server-tls`): until it is done, server lines are the proxy's and
    /// client lines wait.
    server_link: ServerLink,
}

impl Session {
    pub(crate) fn new(cx: &mut Cx<'_>, id: SessionId, conn: Accept) -> Session {
        let Accept {
            client,
            orig_dst: orig_server,
            rdomain: client_rdomain,
        } = conn;
        let server = cx.cfg.server_for(orig_server);
        let mut s = Session {
            id,
            anchor: Anchor {
                pid: cx.cfg.pid,
                session: id.0,
            },
            ends: Endpoints {
                client,
                orig_server,
                server,
                client_rdomain,
                proxy: None,
            },
            phase: Phase::Open,
            inbox: [LineBuf::new(), LineBuf::new()],
            pairing: Pairing::new(),
            rules: RuleState::new(),
            timers: TimerTable::default(),
            flow: Flow::new(),
            stats: Stats::new(cx.now),
            upstream: Upstream::Ready,
            support: ServerSupport::default(),
            ftps: FtpsState::new(&cx.cfg.tls),
            tls_wait: false,
            server_link: ServerLink::new(cx.cfg.tls.server),
        };
        debug!("{id} accepted connection from {}", client.ip());
        if cx.cfg.fixed_server.is_none() && server != orig_server {
            info!("{id} NAT64: destination {orig_server} is served by IPv4 server {server}");
        }
        s.timers
            .set_or_stop(Timer::ClientIdle, cx.cfg.idle_timeout().map(|t| cx.now + t));
        s.timers
            .set_or_stop(Timer::Login, cx.cfg.login_timeout().map(|t| cx.now + t));
        if cx.cfg.server_after_user() {
            // Forward mode or a route table: no server until the client's USER.
            s.upstream = Upstream::AwaitUser;
            s.pairing.greet_locally();
            let greeting = upstream::greeting(cx.cfg);
            s.send(cx, Side::Client, Bytes::from_static(greeting.as_bytes()));
            return s;
        }
        s.timers.set(Timer::ServerIdle, cx.now + CONNECT_TIMEOUT);
        s.emit(
            cx,
            Action::ConnectServer {
                to: server,
                bind: cx.cfg.source_addr,
            },
        );
        s
    }

    /// The family of the connection to the server (`-R`, or where the client
    /// meant to go).
    fn server_family(&self) -> Family {
        Family::of(self.ends.server.ip())
    }

    /// The family of the client's connection (an IPv4-mapped address is IPv4).
    fn client_family(&self) -> Family {
        match self.ends.client.ip() {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => Family::Inet6,
            _ => Family::Inet,
        }
    }

    /// Whether the session's transfers are translated (docs/behavior.md, "Crossing
    /// families and data modes"): a server data mode of its own, or the two sides
    /// in different families.
    fn translated(&self, cx: &Cx<'_>) -> bool {
        cx.cfg.server_data_mode != ServerDataMode::Client
            || self.client_family() != self.server_family()
    }

    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub(crate) fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// Emits [`Action::ReadInterest`] for each side whose interest changed; called
    /// by the proxy after every input. Nothing after the session closed: `Close`
    /// stops both sides.
    pub(crate) fn sync_read_interest(&mut self, cx: &mut Cx<'_>) {
        if self.phase != Phase::Open {
            return;
        }
        let inbox = [self.inbox[0].len(), self.inbox[1].len()];
        for (side, on) in self.flow.sync(inbox).into_iter().flatten() {
            self.emit(cx, Action::ReadInterest { side, on });
        }
    }

    fn emit(&self, cx: &mut Cx<'_>, action: Action) {
        cx.out.push_back((self.id, action));
    }

    fn send(&mut self, cx: &mut Cx<'_>, side: Side, bytes: Bytes) {
        self.flow.sent(side, bytes.len());
        self.emit(cx, Action::Send(side, bytes));
    }

    pub(crate) fn handle(&mut self, cx: &mut Cx<'_>, input: Input) {
        match input {
            Input::RulesCommitted { txn, result } => return self.on_commit_result(cx, txn, result),
            _ if self.phase != Phase::Open => return,
            Input::ServerSocketOpened { proxy } => {
                self.ends.proxy = Some(proxy);
                info!(
                    "{} FTP session {}/{} started: client {} to server {} via proxy {}",
                    self.id,
                    cx.live,
                    cx.cfg.max_sessions,
                    self.ends.client.ip(),
                    self.ends.server.ip(),
                    proxy.ip()
                );
            }
            Input::Resolved { result } => self.on_resolved(cx, result),
            Input::ServerConnectFailed { ref error } if self.upstream_pending() => {
                self.upstream_421(cx, &format!("cannot connect: {error}"));
                return self.handle(cx, input);
            }
            Input::Eof(Side::Server)
            | Input::Reset(Side::Server)
            | Input::TlsFailed(Side::Server)
                if self.upstream_pending() =>
            {
                self.upstream_421(cx, "the server closed the connection before its greeting");
                return self.handle(cx, input);
            }
            Input::Eof(Side::Server)
            | Input::Reset(Side::Server)
            | Input::TlsFailed(Side::Server)
                if self.server_link.securing() =>
            {
                let (why, reason) = match input {
                    Input::Eof(_) => (
                        "the server closed the connection",
                        CloseReason::ServerRefused,
                    ),
                    Input::TlsFailed(_) => (SECURING_FAILED, CloseReason::TlsFailed(Side::Server)),
                    _ => (SECURING_FAILED, CloseReason::ServerRefused),
                };
                return self.securing_failed(cx, why, reason);
            }
            Input::ServerConnected => {
                debug!("{} connected to server {}", self.id, self.ends.server)
            }
            // Once the socket exists, a failed connect reads as the original's
            // asynchronous failure does.
            Input::ServerConnectFailed { .. } if self.ends.proxy.is_some() => {
                return self.close(cx, CloseReason::ServerRefused)
            }
            Input::ServerConnectFailed { error } => {
                return self.close(
                    cx,
                    CloseReason::ConnectFailed {
                        server: self.ends.server,
                        error,
                    },
                )
            }
            Input::Written(side, n) => {
                self.flow.written(side, n);
                // Lines may be waiting for room (`Flow::output_full`); with none
                // buffered, nothing else a write changes can move the session on.
                if self.inbox.iter().all(LineBuf::is_empty) {
                    return;
                }
            }
            Input::Data(side, bytes) => {
                self.stats.read(side, bytes.len());
                self.inbox[idx(side)].push(&bytes);
                let timer = match side {
                    Side::Client => Timer::ClientIdle,
                    Side::Server => Timer::ServerIdle,
                };
                self.timers
                    .set_or_stop(timer, cx.cfg.idle_timeout().map(|t| cx.now + t));
            }
            Input::Eof(side) => return self.close(cx, CloseReason::Eof(side)),
            Input::Reset(Side::Client) => return self.close(cx, CloseReason::ClientReset),
            Input::Reset(Side::Server) => return self.close(cx, CloseReason::ServerRefused),
            Input::WriteError(side) => return self.close(cx, CloseReason::WriteError(side)),
            Input::TlsFailed(side) => return self.close(cx, CloseReason::TlsFailed(side)),
        }
        self.pump(cx);
    }

    /// Runs the timers that are due, in [`Timer::VALUES`] order: an idle or login
    /// timeout ends the session, a commit retry sends the commit again.
    pub(crate) fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        for timer in Timer::VALUES {
            if !self.timers.is_expired(timer, cx.now) {
                continue;
            }
            self.timers.stop(timer);
            match timer {
                Timer::ServerIdle => {
                    self.upstream_421(cx, "the server did not greet in time");
                    if self.server_link.securing() {
                        return self.server_tls_failed(cx, "the server did not answer in time");
                    }
                    return self.close(cx, CloseReason::Timeout(Side::Server));
                }
                Timer::Resolve => return self.resolve_timed_out(cx),
                // While the proxy secures the server's connection the client
                // waits for the greeting or for its `USER` to go, so its silence
                // is the server's doing: a server that answers `234` and never
                // finishes its handshake sends no line that would move the
                // server's timer, and the client's, armed at the accept, is due
                // first.
                Timer::ClientIdle | Timer::Login if self.server_link.securing() => {
                    return self.server_tls_failed(
                        cx,
                        "the server did not finish securing the connection in time",
                    );
                }
                Timer::ClientIdle => return self.close(cx, CloseReason::Timeout(Side::Client)),
                Timer::Login => return self.close(cx, CloseReason::LoginTimeout),
                Timer::CommitRetry => {
                    if let Some(c) = self.pairing.commit() {
                        let action = Action::CommitRules {
                            txn: c.txn,
                            anchor: self.anchor,
                            rules: c.rules.clone(),
                        };
                        self.emit(cx, action);
                    }
                }
            }
        }
    }

    /// Processes buffered lines until input runs out, a commit is in flight, or the
    /// session ends. While a commit is in flight both directions wait: its line must
    /// go out first, and ordering is the point.
    fn pump(&mut self, cx: &mut Cx<'_>) {
        loop {
            let mut progressed = false;
            for side in [Side::Server, Side::Client] {
                if side == Side::Client && self.upstream == Upstream::Ready {
                    if self.ends.proxy.is_none() {
                        continue;
                    }
                    progressed |= self.release_held(cx);
                }
                while self.line_may_go(cx, side) {
                    match self.inbox[idx(side)].next_line() {
                        Ok(Some(line)) => {
                            progressed = true;
                            match side {
                                Side::Client if self.upstream == Upstream::AwaitUser => {
                                    self.upstream_client_line(cx, line)
                                }
                                Side::Client => self.client_line(cx, line),
                                Side::Server if self.upstream_pending() => {
                                    self.greeting_line(cx, line)
                                }
                                Side::Server if self.server_link.securing() => {
                                    self.server_tls_line(cx, line)
                                }
                                Side::Server => {
                                    let stale = self.pairing.take_stale(line.len());
                                    self.server_line(cx, line, stale)
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // A TLS handshake record (content type 22, version 3.x)
                            // where a command was due: say what it most likely is.
                            if side == Side::Client
                                && self.inbox[idx(side)].starts_with(b"\x16\x03")
                            {
                                warn!(
                                    "{} the client sent a TLS handshake instead of a command: \
                                     implicit FTPS (ftps://) at a port that expects plain text \
                                     or AUTH TLS?",
                                    self.id
                                );
                            }
                            return self.close(cx, CloseReason::NotClean(side));
                        }
                    }
                }
            }
            if !progressed || self.phase != Phase::Open || self.pairing.is_committing() {
                return;
            }
        }
    }

    /// Whether the next buffered line of `side` may be handled now: the session is
    /// open, no commit is in flight, the pairing lets client lines go (for the
    /// client), and the output the line may add has room ([`Flow::output_full`]).
    /// While the server's connection is being secured, only the client lines the
    /// proxy answers itself go, once the greeting has been relayed
    /// (`server_tls.rs`).
    fn line_may_go(&self, cx: &Cx<'_>, side: Side) -> bool {
        let securing = self.server_link.securing()
            && !(self.server_link.greeted()
                && self.inbox[idx(Side::Client)]
                    .peek_line()
                    .is_some_and(|l| ftps::answered_here(&cx.cfg.tls, l)));
        let blocked = side == Side::Client
            && (self.pairing.client_blocked()
                || self.tls_wait
                || securing
                || !self.upstream.takes_client_lines());
        self.phase == Phase::Open
            && !(self.pairing.is_committing() || blocked || self.flow.output_full(side))
    }

    /// Ends the session: log, close both sockets, then remove its rules.
    pub(crate) fn close(&mut self, cx: &mut Cx<'_>, reason: CloseReason) {
        if self.phase != Phase::Open {
            return;
        }
        match &reason {
            CloseReason::Eof(_) | CloseReason::Shutdown | CloseReason::ServerClosing => {
                info!("{} {reason}", self.id)
            }
            CloseReason::Timeout(Side::Server) => warn!("{} {reason}", self.id),
            // The original's CRIT ones (cli/src/logging.rs reads the key).
            CloseReason::ConnectFailed { .. }
            | CloseReason::Filter(_)
            | CloseReason::NoProxyPort { .. } => {
                error!(priority = "crit"; "{} {reason}", self.id)
            }
            _ => error!("{} {reason}", self.id),
        }
        info!("{} ending session", self.id);
        self.timers.stop_all();
        let summary = Box::new(
            self.stats
                .summary(self.ends.client, self.ends.server, cx.now),
        );
        self.emit(cx, Action::Close { reason, summary });
        let pending = self
            .pairing
            .abandon_commit()
            .map(|c| c.ports)
            .unwrap_or_default();
        for port in std::mem::take(&mut self.rules.live_ports)
            .into_iter()
            .chain(pending)
        {
            cx.ports.remove(&port);
        }
        if self.rules.installed {
            let txn = self.rules.txn();
            self.phase = Phase::Closing { txn };
            self.emit(
                cx,
                Action::CommitRules {
                    txn,
                    anchor: self.anchor,
                    rules: Vec::new(),
                },
            );
        } else {
            self.phase = Phase::Done;
        }
    }
}
