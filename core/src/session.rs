//! One FTP control connection: framing, parsing, rewriting and its rule commits.
//!
//! Driven only through [`crate::Proxy`], which lends it the clock, the random
//! source, the port registry and the output queue in a [`Cx`] on every call.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use log::{debug, error, info, warn};

use crate::config::{Config, COMMIT_RETRY_DELAY, CONNECT_TIMEOUT};
use crate::error::FilterError;
use crate::event::{
    Accept, Action, CloseReason, DataCounts, Input, SessionId, Side, Summary, INBOX_HIGH_WATER,
    OUTPUT_HIGH_WATER, OUTPUT_LOW_WATER,
};
use crate::ftp::{self, Command};
use crate::line::LineBuf;
use crate::rand::RandomSource;
use crate::rules::{data_rules, Anchor, Mode, Rule, SessionAddrs, MIN_DATA_PORT};

/// Replies the proxy itself gives in place of the original's dropped connection.
const REPLY_ANON_ONLY: &str = "500 Only anonymous FTP allowed\r\n";
const REPLY_NO_V4_MODES: &str = "500 PASV and PORT not allowed with IPv6\r\n";
const REPLY_BAD_PORT: &str = "501 Bad data port (below 1024 or malformed), refused by proxy\r\n";
const REPLY_BAD_PASSIVE: &str = "425 Cannot open passive connection: bad port from server\r\n";
/// The answer to `AUTH`, `PBSZ` and `PROT`: the proxy must read every control line,
/// so a TLS control channel cannot pass; saying so lets clients fall back to plain
/// text (or give up at once) instead of handshaking into a dead session.
const REPLY_NO_TLS: &str =
    "534 Request denied for policy reasons: this proxy carries plain-text FTP only\r\n";

/// How many client commands may await their replies before the session is ended.
const MAX_PIPELINED: usize = 4096;
/// How much of a multi-line 227/229 reply is collected before it is refused.
const MAX_HELD_REPLY: usize = 8192;

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
enum Passive {
    Pasv,
    Epsv,
}

/// Which forwarded command a server reply answers, where the proxy treats it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyTo {
    /// PASV or EPSV: its 227/229 is rewritten.
    Passive(Passive),
    /// FEAT: security features are dropped from its list.
    Feat,
    /// Anything else: relayed as it is.
    Other,
}

/// What a client command waits for from the server, in order.
#[derive(Debug)]
enum Expect {
    /// The server's final reply to a forwarded command.
    Reply(ReplyTo),
    /// A reply the proxy gives itself, sent when every earlier reply has been relayed.
    Local(&'static str),
}

/// A multi-line reply in progress.
struct Multi {
    code: u16,
    /// The reply answers FEAT: its security-feature lines are not relayed.
    feat: bool,
    /// The held lines of a 227/229 reply that will be rewritten as a whole.
    collect: Option<(Passive, Vec<Bytes>, usize)>,
}

/// A rule commit awaiting its acknowledgement, and the line it releases.
struct Commit {
    txn: u64,
    rules: Vec<Rule>,
    release: (Side, Bytes),
    port: u16,
    retried: bool,
    /// What the rules were built from, to build them again on another port.
    negotiation: Negotiation,
    /// Proxy ports tried so far for this negotiation.
    port_tries: u32,
}

/// One data-connection negotiation: everything its rules and line are made from,
/// except the proxy port.
#[derive(Debug, Clone, Copy)]
struct Negotiation {
    mode: Mode,
    /// For passive mode, which reply to write (227 or 229).
    passive: Option<Passive>,
    /// The endpoint's own data port.
    port: u16,
}

/// Proxy ports tried for one negotiation when the filter reports each in use.
const MAX_PORT_TRIES: u32 = 8;

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

#[derive(Clone, Copy)]
enum Timer {
    ServerIdle = 0,
    ClientIdle = 1,
    CommitRetry = 2,
}

pub(crate) struct Session {
    id: SessionId,
    anchor: Anchor,
    client: SocketAddr,
    orig_server: SocketAddr,
    server: SocketAddr,
    client_rdomain: u32,
    /// Local address of the socket towards the server, once it exists.
    proxy: Option<SocketAddr>,
    phase: Phase,
    inbox: [LineBuf; 2],
    expect: VecDeque<Expect>,
    greeted: bool,
    multi: Option<Multi>,
    /// A PASV/EPSV line that waits until no earlier reply is owed (and every client
    /// line after it waits behind it), so that nothing the server says in an earlier
    /// reply can be taken for its answer.
    held: Option<(Passive, Bytes)>,
    /// Server bytes that were already buffered when the last PASV/EPSV was
    /// forwarded: the server sent them before it could see the command, so no line
    /// made of them answers it.
    stale: usize,
    commit: Option<Commit>,
    next_txn: u64,
    /// Whether any commit was issued, so that the end must remove rules.
    installed: bool,
    /// The proxy port of the rules in force.
    live_port: Option<u16>,
    timers: [Option<Instant>; 3],
    /// Output sent to each side and not yet reported written.
    queued: [usize; 2],
    /// Each side's queue reached [`OUTPUT_HIGH_WATER`] and has not yet fallen below
    /// [`OUTPUT_LOW_WATER`].
    out_full: [bool; 2],
    /// The read interest last emitted for each side.
    reading: [bool; 2],
    started: Instant,
    commands: u64,
    data: DataCounts,
    rules_committed: u32,
    read_bytes: [u64; 2],
}

fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl Session {
    pub(crate) fn new(cx: &mut Cx<'_>, id: SessionId, conn: Accept) -> Session {
        let Accept {
            client,
            orig_dst: orig_server,
            rdomain: client_rdomain,
        } = conn;
        let server = cx.cfg.fixed_server.unwrap_or(orig_server);
        let mut s = Session {
            id,
            anchor: Anchor {
                pid: cx.cfg.pid,
                session: id.0,
            },
            client,
            orig_server,
            server,
            client_rdomain,
            proxy: None,
            phase: Phase::Open,
            inbox: [LineBuf::new(), LineBuf::new()],
            expect: VecDeque::new(),
            greeted: false,
            multi: None,
            held: None,
            stale: 0,
            commit: None,
            next_txn: 1,
            installed: false,
            live_port: None,
            timers: [None; 3],
            queued: [0; 2],
            out_full: [false; 2],
            reading: [true; 2],
            started: cx.now,
            commands: 0,
            data: DataCounts::default(),
            rules_committed: 0,
            read_bytes: [0; 2],
        };
        debug!("{id} accepted connection from {}", client.ip());
        s.timers[Timer::ServerIdle as usize] = Some(cx.now + CONNECT_TIMEOUT);
        s.timers[Timer::ClientIdle as usize] = cx.cfg.idle_timeout().map(|t| cx.now + t);
        s.emit(
            cx,
            Action::ConnectServer {
                to: server,
                bind: cx.cfg.source_addr,
            },
        );
        s
    }

    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub(crate) fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// Whether client lines must wait: a PASV/EPSV is held back, or one was forwarded
    /// and its reply has not come. Until then the server owes nothing else, so any
    /// other reply line is out of step.
    ///
    /// A forwarded PASV/EPSV is always the newest entry: it goes out only when no
    /// reply is owed, and nothing is queued behind it while client lines wait.
    fn client_blocked(&self) -> bool {
        self.held.is_some()
            || matches!(self.expect.back(), Some(Expect::Reply(ReplyTo::Passive(_))))
    }

    /// Whether the server owes a reply to some forwarded command.
    fn reply_owed(&self) -> bool {
        self.expect.iter().any(|e| matches!(e, Expect::Reply(_)))
    }

    /// Whether the driver should read that side now: the session is open, the
    /// side's unparsed input is below [`INBOX_HIGH_WATER`], and neither the peer's
    /// output queue nor (for the client) its own is full.
    fn wants_read(&self, side: Side) -> bool {
        self.phase == Phase::Open
            && self.inbox[idx(side)].len() < INBOX_HIGH_WATER
            && !self.out_full[idx(side.peer())]
            && !(side == Side::Client && self.out_full[idx(Side::Client)])
    }

    /// Emits [`Action::ReadInterest`] for each side whose interest changed; called
    /// by the proxy after every input. Nothing after the session closed: `Close`
    /// stops both sides.
    pub(crate) fn sync_read_interest(&mut self, cx: &mut Cx<'_>) {
        if self.phase != Phase::Open {
            return;
        }
        for i in 0..2 {
            if self.queued[i] >= OUTPUT_HIGH_WATER {
                self.out_full[i] = true;
            } else if self.queued[i] < OUTPUT_LOW_WATER {
                self.out_full[i] = false;
            }
        }
        for side in [Side::Client, Side::Server] {
            let on = self.wants_read(side);
            if self.reading[idx(side)] != on {
                self.reading[idx(side)] = on;
                self.emit(cx, Action::ReadInterest { side, on });
            }
        }
    }

    fn emit(&self, cx: &mut Cx<'_>, action: Action) {
        cx.out.push_back((self.id, action));
    }

    fn send(&mut self, cx: &mut Cx<'_>, side: Side, bytes: Bytes) {
        self.queued[idx(side)] += bytes.len();
        self.emit(cx, Action::Send(side, bytes));
    }

    /// Whether the next line of `side` must wait because the output it may add is
    /// already at [`OUTPUT_HIGH_WATER`]. A server line goes to the client. A client
    /// line goes to the server or, answered by the proxy itself, back to the client,
    /// so both queues together count. Asked before every line: however short the
    /// lines (a bare `\n`, a 5-byte `AUTH` answered with 80 bytes), what one input
    /// queues passes the mark by one line at most. The lines left wait in the inbox,
    /// which stops reading in its turn, and go on when writes are reported.
    fn output_full(&self, side: Side) -> bool {
        let queued = match side {
            Side::Server => self.queued[idx(Side::Client)],
            Side::Client => self.queued[0] + self.queued[1],
        };
        queued >= OUTPUT_HIGH_WATER
    }

    pub(crate) fn handle(&mut self, cx: &mut Cx<'_>, input: Input) {
        match input {
            Input::RulesCommitted { txn, result } => return self.on_commit_result(cx, txn, result),
            _ if self.phase != Phase::Open => return,
            Input::ServerSocketOpened { proxy } => {
                self.proxy = Some(proxy);
                info!(
                    "{} FTP session {}/{} started: client {} to server {} via proxy {}",
                    self.id,
                    cx.live,
                    cx.cfg.max_sessions,
                    self.client.ip(),
                    self.server.ip(),
                    proxy.ip()
                );
            }
            Input::ServerConnected => debug!("{} connected to server {}", self.id, self.server),
            // Once the socket exists, a failed connect reads as the original's
            // asynchronous failure does.
            Input::ServerConnectFailed { .. } if self.proxy.is_some() => {
                return self.close(cx, CloseReason::ServerRefused)
            }
            Input::ServerConnectFailed { error } => {
                return self.close(
                    cx,
                    CloseReason::ConnectFailed {
                        server: self.server.ip().to_string(),
                        error,
                    },
                )
            }
            Input::Written(side, n) => {
                let q = &mut self.queued[idx(side)];
                *q = q.saturating_sub(n);
                // Lines may be waiting for room (`output_full`); with none buffered,
                // nothing else a write changes can move the session on.
                if self.inbox.iter().all(LineBuf::is_empty) {
                    return;
                }
            }
            Input::Data(side, bytes) => {
                self.read_bytes[idx(side)] += bytes.len() as u64;
                self.inbox[idx(side)].push(&bytes);
                let timer = match side {
                    Side::Client => Timer::ClientIdle,
                    Side::Server => Timer::ServerIdle,
                };
                self.timers[timer as usize] = cx.cfg.idle_timeout().map(|t| cx.now + t);
            }
            Input::Eof(side) => return self.close(cx, CloseReason::Eof(side)),
            Input::Reset(Side::Client) => return self.close(cx, CloseReason::ClientReset),
            Input::Reset(Side::Server) => return self.close(cx, CloseReason::ServerRefused),
            Input::WriteError(side) => return self.close(cx, CloseReason::WriteError(side)),
        }
        self.pump(cx);
    }

    pub(crate) fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= cx.now);
        if due(self.timers[Timer::ServerIdle as usize]) {
            return self.close(cx, CloseReason::Timeout(Side::Server));
        }
        if due(self.timers[Timer::ClientIdle as usize]) {
            return self.close(cx, CloseReason::Timeout(Side::Client));
        }
        if due(self.timers[Timer::CommitRetry as usize]) {
            self.timers[Timer::CommitRetry as usize] = None;
            if let Some(c) = &self.commit {
                let action = Action::CommitRules {
                    txn: c.txn,
                    anchor: self.anchor,
                    rules: c.rules.clone(),
                };
                self.emit(cx, action);
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
                if side == Side::Client {
                    if self.proxy.is_none() {
                        continue;
                    }
                    progressed |= self.release_held(cx);
                }
                while self.phase == Phase::Open
                    && self.commit.is_none()
                    && !(side == Side::Client && self.client_blocked())
                    && !self.output_full(side)
                {
                    match self.inbox[idx(side)].next_line() {
                        Ok(Some(line)) => {
                            progressed = true;
                            match side {
                                Side::Client => self.client_line(cx, line),
                                Side::Server => {
                                    let stale = self.stale > 0;
                                    self.stale = self.stale.saturating_sub(line.len());
                                    self.server_line(cx, line, stale)
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return self.close(cx, CloseReason::NotClean(side)),
                    }
                }
            }
            if !progressed || self.phase != Phase::Open || self.commit.is_some() {
                return;
            }
        }
    }

    /// Records what a command waits for. Returns `false` when that ended the session
    /// (too many pipelined): the caller must then neither forward the command nor
    /// commit rules for it.
    #[must_use]
    fn expect(&mut self, cx: &mut Cx<'_>, e: Expect) -> bool {
        if self.expect.len() >= MAX_PIPELINED {
            self.close(cx, CloseReason::TooManyPipelined);
            return false;
        }
        self.expect.push_back(e);
        self.flush_local(cx);
        true
    }

    /// Answers locally in order: a proxy reply goes out only once every reply owed
    /// for earlier commands has been relayed (and after the greeting).
    fn local_reply(&mut self, cx: &mut Cx<'_>, reply: &'static str) {
        debug!("{} proxy: {}", self.id, ftp::escape(reply.as_bytes()));
        // Nothing follows, whether or not this ended the session.
        let _ = self.expect(cx, Expect::Local(reply));
    }

    fn flush_local(&mut self, cx: &mut Cx<'_>) {
        if !self.greeted || self.commit.is_some() {
            return;
        }
        while let Some(Expect::Local(reply)) = self.expect.front() {
            let reply = *reply;
            self.expect.pop_front();
            self.send(cx, Side::Client, Bytes::from_static(reply.as_bytes()));
        }
    }

    fn client_line(&mut self, cx: &mut Cx<'_>, line: Bytes) {
        if ftp::is_pass(&line) {
            debug!("{} client: PASS ****", self.id);
        } else {
            debug!("{} client: {}", self.id, ftp::escape(&line));
        }
        self.commands += 1;
        let cmd = ftp::classify(&line);
        match cmd {
            Command::Auth | Command::Pbsz | Command::Prot => {
                info!(
                    "{} refusing '{}': no TLS through the proxy",
                    self.id,
                    ftp::escape(&line)
                );
                self.local_reply(cx, REPLY_NO_TLS);
            }
            Command::Pasv | Command::Port(_) if cx.cfg.ipv6 => {
                error!(priority = "crit"; "PASV and PORT not allowed with IPv6");
                self.local_reply(cx, REPLY_NO_V4_MODES);
            }
            Command::Port(port) | Command::Eprt(port) => match port.filter(|&p| p >= MIN_DATA_PORT)
            {
                None => {
                    error!(priority = "crit"; "{} bad port in '{}'", self.id, ftp::escape(&line));
                    self.local_reply(cx, REPLY_BAD_PORT);
                }
                Some(port) => {
                    let mode = if matches!(cmd, Command::Port(_)) {
                        Mode::ActivePort
                    } else {
                        Mode::ActiveEprt
                    };
                    if self.expect(cx, Expect::Reply(ReplyTo::Other)) {
                        self.active(cx, mode, port);
                    }
                }
            },
            Command::User if cx.cfg.anonymous_only && !ftp::is_anonymous_user(&line) => {
                self.local_reply(cx, REPLY_ANON_ONLY);
            }
            Command::Pasv | Command::Epsv => {
                let kind = if cmd == Command::Pasv {
                    Passive::Pasv
                } else {
                    Passive::Epsv
                };
                self.held = Some((kind, line));
                self.release_held(cx);
            }
            _ => {
                let to = if cmd == Command::Feat {
                    ReplyTo::Feat
                } else {
                    ReplyTo::Other
                };
                // Servers answer any command word, even one letter (`500`), but
                // not a line with none (empty, blanks, Telnet sequences only).
                let word = ftp::command_start(&line);
                let has_word = word
                    .iter()
                    .any(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
                if has_word && !self.expect(cx, Expect::Reply(to)) {
                    return;
                }
                self.send(cx, Side::Server, line);
            }
        }
    }

    /// Forwards the held PASV/EPSV once the server owes nothing else: greeted, no
    /// reply in progress or outstanding. Returns whether it went out.
    fn release_held(&mut self, cx: &mut Cx<'_>) -> bool {
        if self.phase != Phase::Open
            || self.commit.is_some()
            || !self.greeted
            || self.multi.is_some()
            || self.reply_owed()
        {
            return false;
        }
        let Some((kind, line)) = self.held.take() else {
            return false;
        };
        // Whatever the server already sent cannot answer a command it has not seen.
        self.stale = self.inbox[idx(Side::Server)].len();
        if self.expect(cx, Expect::Reply(ReplyTo::Passive(kind))) {
            self.send(cx, Side::Server, line);
        }
        true
    }

    /// Ends the session on a reply line that answers nothing the proxy forwarded.
    fn desync(&mut self, cx: &mut Cx<'_>, line: &[u8], why: &str) {
        error!(
            "{} server reply '{}' {why}: replies out of step with commands",
            self.id,
            ftp::escape(line)
        );
        self.close(cx, CloseReason::ReplyDesync);
    }

    fn addrs(&self) -> SessionAddrs {
        SessionAddrs {
            client: self.client.ip(),
            server: self.server.ip(),
            orig_server: self.orig_server.ip(),
            proxy: self.proxy.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip()),
            client_rdomain: self.client_rdomain,
        }
    }

    /// PORT/EPRT: rules first, then the rewritten command (servers may connect at once).
    fn active(&mut self, cx: &mut Cx<'_>, mode: Mode, port: u16) {
        self.negotiate(
            cx,
            Negotiation {
                mode,
                passive: None,
                port,
            },
        );
    }

    /// One server line; `stale` if it was buffered before the last PASV/EPSV went out.
    fn server_line(&mut self, cx: &mut Cx<'_>, line: Bytes, stale: bool) {
        debug!("{} server: {}", self.id, ftp::escape(&line));
        if let Some(m) = &mut self.multi {
            let code = m.code;
            let last = ftp::reply_code(&line) == Some((code, false));
            if let Some((kind, lines, size)) = &mut m.collect {
                *size += line.len();
                lines.push(line);
                if *size > MAX_HELD_REPLY {
                    return self.close(cx, CloseReason::NotClean(Side::Server));
                }
                if last {
                    let (kind, lines) = (*kind, std::mem::take(lines));
                    self.multi = None;
                    self.passive_reply(cx, kind, &lines);
                }
                return;
            }
            let drop = m.feat && !last && ftp::is_security_feature(&line);
            if drop {
                debug!("{} proxy: not relaying FEAT line", self.id);
            } else {
                self.send(cx, Side::Client, line);
            }
            if last {
                self.multi = None;
                self.final_reply(cx, code);
            }
            return;
        }
        let reply = ftp::reply_code(&line);
        // 421 (service closing) may come at any time, unasked. Anything else outside a
        // reply must answer an outstanding command and must not predate the PASV/EPSV.
        if self.greeted && !matches!(reply, Some((421, _))) {
            if stale {
                return self.desync(cx, &line, "was sent before the server saw PASV/EPSV");
            }
            if !self.reply_owed() {
                return self.desync(cx, &line, "answers no command");
            }
        }
        let Some((code, more)) = reply else {
            return self.send(cx, Side::Client, line);
        };
        let passive = match code {
            227 => self.owed_passive(Passive::Pasv),
            229 => self.owed_passive(Passive::Epsv),
            _ => None,
        };
        match (passive, more) {
            (Some(kind), true) => {
                let size = line.len();
                self.multi = Some(Multi {
                    code,
                    feat: false,
                    collect: Some((kind, vec![line], size)),
                });
            }
            (Some(kind), false) => self.passive_reply(cx, kind, &[line]),
            (None, true) => {
                let feat = code == 211 && self.oldest_reply() == Some(ReplyTo::Feat);
                self.multi = Some(Multi {
                    code,
                    feat,
                    collect: None,
                });
                self.send(cx, Side::Client, line);
            }
            (None, false) => {
                self.send(cx, Side::Client, line);
                self.final_reply(cx, code);
            }
        }
    }

    /// What the oldest outstanding reply answers.
    fn oldest_reply(&self) -> Option<ReplyTo> {
        self.expect.iter().find_map(|e| match e {
            Expect::Reply(to) => Some(*to),
            Expect::Local(_) => None,
        })
    }

    /// Whether this 227 (229) answers a PASV (EPSV). A PASV/EPSV goes out only when
    /// nothing else is owed, so its reply is the oldest outstanding one.
    fn owed_passive(&self, kind: Passive) -> Option<Passive> {
        if !self.greeted {
            return None;
        }
        (self.oldest_reply() == Some(ReplyTo::Passive(kind))).then_some(kind)
    }

    /// A complete reply (not 1xx) was relayed: it answers the oldest command.
    fn final_reply(&mut self, cx: &mut Cx<'_>, code: u16) {
        if code < 200 {
            return;
        }
        if !self.greeted {
            self.greeted = true;
        } else if matches!(self.expect.front(), Some(Expect::Reply(_))) {
            self.expect.pop_front();
        }
        self.flush_local(cx);
    }

    /// A 227/229 that answers a PASV/EPSV: rules, then the rewritten reply.
    fn passive_reply(&mut self, cx: &mut Cx<'_>, kind: Passive, lines: &[Bytes]) {
        // Drop everything up to and including the command this reply answers.
        while let Some(e) = self.expect.pop_front() {
            if matches!(e, Expect::Reply(ReplyTo::Passive(k)) if k == kind) {
                break;
            }
        }
        let port = lines.iter().find_map(|l| match kind {
            Passive::Pasv => ftp::parse_227(l),
            Passive::Epsv => ftp::parse_229(l),
        });
        let Some(port) = port.filter(|&p| cx.cfg.server_data_port_allowed(p)) else {
            let shown: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied()).collect();
            error!(priority = "crit"; "{} bad port in '{}'", self.id, ftp::escape(&shown));
            debug!(
                "{} proxy: {}",
                self.id,
                ftp::escape(REPLY_BAD_PASSIVE.as_bytes())
            );
            self.send(
                cx,
                Side::Client,
                Bytes::from_static(REPLY_BAD_PASSIVE.as_bytes()),
            );
            return self.flush_local(cx);
        };
        // The server owes nothing after this reply (later client lines wait for it),
        // so more bytes behind it mean the replies are out of step: the 227/229 may be
        // text of an earlier reply that was cut short.
        if !self.inbox[idx(Side::Server)].is_empty() {
            let shown: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied()).collect();
            return self.desync(cx, &shown, "is followed by more server output");
        }
        let negotiation = Negotiation {
            mode: Mode::Passive,
            passive: Some(kind),
            port,
        };
        self.negotiate(cx, negotiation);
    }

    /// Picks a proxy port, builds the rules and the rewritten line, and commits.
    fn negotiate(&mut self, cx: &mut Cx<'_>, negotiation: Negotiation) {
        let Some(proxy_port) = self.pick_port(cx) else {
            return self.close(cx, CloseReason::Filter(FilterError::Busy));
        };
        let (rules, release) = self.render(cx, negotiation, proxy_port);
        let txn = self.next_txn;
        self.next_txn += 1;
        self.installed = true;
        self.emit(
            cx,
            Action::CommitRules {
                txn,
                anchor: self.anchor,
                rules: rules.clone(),
            },
        );
        let port_tries = self.commit.as_ref().map_or(0, |c| c.port_tries) + 1;
        self.commit = Some(Commit {
            txn,
            rules,
            release,
            port: proxy_port,
            retried: false,
            negotiation,
            port_tries,
        });
    }

    /// The rules of a negotiation on `proxy_port`, and the line they release.
    fn render(&self, cx: &Cx<'_>, n: Negotiation, proxy_port: u16) -> (Vec<Rule>, (Side, Bytes)) {
        let addrs = self.addrs();
        let (side, line) = match n.passive {
            Some(kind) => {
                info!(
                    "{} passive: client to server port {} via port {}",
                    self.id, n.port, proxy_port
                );
                let line = match (kind, addrs.orig_server) {
                    (Passive::Pasv, IpAddr::V4(v4)) => ftp::format_227(v4, proxy_port),
                    _ => ftp::format_229(proxy_port),
                };
                (Side::Client, line)
            }
            None => {
                info!(
                    "{} active: server to client port {} via port {}",
                    self.id, n.port, proxy_port
                );
                let line = match (n.mode, addrs.proxy) {
                    (Mode::ActivePort, IpAddr::V4(v4)) => ftp::format_port(v4, proxy_port),
                    _ => ftp::format_eprt(addrs.proxy, proxy_port),
                };
                (Side::Server, line)
            }
        };
        debug!("{} proxy: {}", self.id, ftp::escape(line.as_bytes()));
        let rules = data_rules(n.mode, &addrs, n.port, proxy_port, &cx.cfg.rules);
        (rules.to_vec(), (side, Bytes::from(line)))
    }

    /// A proxy port no other live session uses, drawn uniformly from the configured
    /// range (49152..=65534 by default, as the original). A taken port is drawn
    /// again; after 64 taken draws (only a small `--proxy-ports` range gets there)
    /// the range is searched from a random start, so a free port is always found
    /// and `None` means every port is held.
    fn pick_port(&mut self, cx: &mut Cx<'_>) -> Option<u16> {
        let range = cx.cfg.proxy_ports;
        let span = u32::from(range.high - range.low) + 1;
        for _ in 0..64 {
            let port = range.low + cx.rng.uniform(span) as u16;
            if cx.ports.insert(port) {
                return Some(port);
            }
        }
        let start = cx.rng.uniform(span);
        (0..span)
            .map(|i| range.low + ((start + i) % span) as u16)
            .find(|&port| cx.ports.insert(port))
    }

    fn on_commit_result(&mut self, cx: &mut Cx<'_>, txn: u64, result: Result<(), FilterError>) {
        match self.phase {
            Phase::Closing { txn: last } if txn == last => {
                if let Err(error) = result {
                    error!(priority = "crit"; "{} pf rule removal failed: {error}", self.id);
                    let anchor = self.anchor;
                    self.emit(cx, Action::RulesMayRemain { anchor, error });
                }
                self.phase = Phase::Done;
                return;
            }
            Phase::Open => {}
            _ => return,
        }
        let Some(commit) = self.commit.as_mut().filter(|c| c.txn == txn) else {
            debug!("{} stale rules acknowledgement {txn}", self.id);
            return;
        };
        match result {
            Ok(()) => {
                let commit = self.commit.take().expect("checked above");
                self.rules_committed += 1;
                let n = commit.negotiation;
                self.data.count(n.mode, n.passive == Some(Passive::Epsv));
                if let Some(old) = self.live_port.replace(commit.port) {
                    cx.ports.remove(&old);
                }
                let (side, line) = commit.release;
                self.send(cx, side, line);
                self.flush_local(cx);
                self.pump(cx);
            }
            Err(FilterError::Busy) if !commit.retried => {
                commit.retried = true;
                self.timers[Timer::CommitRetry as usize] = Some(cx.now + COMMIT_RETRY_DELAY);
            }
            Err(FilterError::AddrInUse) if commit.port_tries < MAX_PORT_TRIES => {
                // Something else holds the port (the relay binds it for real): take
                // another one. The line is rebuilt, so it always names the port in force.
                let (old, negotiation) = (commit.port, commit.negotiation);
                info!("{} proxy port {old} in use, trying another", self.id);
                cx.ports.remove(&old);
                self.timers[Timer::CommitRetry as usize] = None;
                self.negotiate(cx, negotiation);
            }
            Err(e) => self.close(cx, CloseReason::Filter(e)),
        }
    }

    /// Ends the session: log, close both sockets, then remove its rules.
    pub(crate) fn close(&mut self, cx: &mut Cx<'_>, reason: CloseReason) {
        if self.phase != Phase::Open {
            return;
        }
        match &reason {
            CloseReason::Eof(_) | CloseReason::Shutdown => info!("{} {reason}", self.id),
            CloseReason::Timeout(Side::Server) => warn!("{} {reason}", self.id),
            // The original's CRIT ones (cli/src/logging.rs reads the key).
            CloseReason::ConnectFailed { .. } | CloseReason::Filter(_) => {
                error!(priority = "crit"; "{} {reason}", self.id)
            }
            _ => error!("{} {reason}", self.id),
        }
        info!("{} ending session", self.id);
        self.timers = [None; 3];
        let summary = Box::new(Summary {
            client: self.client,
            server: self.server,
            duration: cx.now.saturating_duration_since(self.started),
            commands: self.commands,
            data: self.data,
            rules_committed: self.rules_committed,
            client_bytes: self.read_bytes[idx(Side::Client)],
            server_bytes: self.read_bytes[idx(Side::Server)],
        });
        self.emit(cx, Action::Close { reason, summary });
        for port in self
            .live_port
            .take()
            .into_iter()
            .chain(self.commit.take().map(|c| c.port))
        {
            cx.ports.remove(&port);
        }
        if self.installed {
            let txn = self.next_txn;
            self.next_txn += 1;
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
