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
/// A PASV/EPSV after a reply that may hold client-chosen lines, where no relay can
/// serve it joined and no `--server-data-ports` bounds what the server's answer may
/// name (docs/behavior.md, "Replies out of step").
const REPLY_PASSIVE_UNSAFE: &str =
    "425 Passive mode refused by proxy after a multi-line reply; use active mode (PORT/EPRT)\r\n";
/// The server refused the proxy's PORT/EPRT of a joined passive transfer.
const REPLY_JOIN_REFUSED: &str =
    "425 Cannot open passive connection: the server refused the proxy's data port\r\n";
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
    /// The proxy's PORT/EPRT that serves a client's PASV/EPSV joined
    /// ([`Mode::Joined`]): the server's answer goes no further; a 2xx releases the
    /// proxy's own 227/229 to the client, anything else a 425.
    Join,
    /// FEAT: security features are dropped from its list.
    Feat,
    /// A command whose multi-line reply may carry lines the client chose
    /// ([`ftp::may_carry_client_lines`]): such a reply makes the session
    /// [`steerable`](Session::steerable).
    Steerable,
    /// A data-transfer command ([`ftp::is_transfer`]): its final reply is
    /// announced with [`Action::TransferDone`].
    Transfer,
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
    /// What becomes of its lines.
    kind: MultiKind,
}

/// How the lines of a multi-line reply are treated.
enum MultiKind {
    /// Relayed as they come.
    Relay,
    /// The reply answers FEAT: its security-feature lines are not relayed.
    Feat,
    /// Held, to be acted on as a whole: a 227/229 to rewrite, or the answer to the
    /// proxy's own PORT/EPRT of a join.
    Collect {
        to: Collected,
        lines: Vec<Bytes>,
        size: usize,
    },
    /// A 421: relayed, and the session ends with its last line.
    Closing,
}

/// Which held reply a [`MultiKind::Collect`] gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collected {
    Passive(Passive),
    Join,
}

/// A rule commit awaiting its acknowledgement, and the line it releases.
struct Commit {
    txn: u64,
    rules: Vec<Rule>,
    release: (Side, Bytes),
    /// The proxy ports the rules hold (two for a join).
    ports: Vec<u16>,
    /// For a join, the 227/229 the client gets once the server took the PORT/EPRT.
    join_reply: Option<Bytes>,
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
    /// Until the server's 230 (`--login-timeout`).
    Login = 3,
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
    /// A multi-line reply came to a command whose reply may carry lines the client
    /// chose ([`ReplyTo::Steerable`]: a `STAT` listing, a directory message), so
    /// where the server's replies end can no longer be told for sure, and no later
    /// reply is trusted to name a passive data port: passive transfers are served
    /// joined (relay) or refused. Never cleared: no sentinel the proxy could send has
    /// an answer the client cannot also forge.
    steerable: bool,
    /// The client sent `EPSV ALL`: the server now refuses PORT/EPRT, so a passive
    /// transfer can no longer be served joined.
    epsv_all: bool,
    /// The 227/229 of a join whose PORT/EPRT went to the server, until its answer.
    join_reply: Option<Bytes>,
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
    /// The proxy ports of the rules in force.
    live_ports: Vec<u16>,
    timers: [Option<Instant>; 4],
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
            steerable: false,
            epsv_all: false,
            join_reply: None,
            held: None,
            stale: 0,
            commit: None,
            next_txn: 1,
            installed: false,
            live_ports: Vec::new(),
            timers: [None; 4],
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
        s.timers[Timer::Login as usize] = cx.cfg.login_timeout().map(|t| cx.now + t);
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
    ///
    /// Nor is anything forwarded once a 421 has begun: the session ends with it.
    fn client_blocked(&self) -> bool {
        self.held.is_some()
            || matches!(
                self.multi,
                Some(Multi {
                    kind: MultiKind::Closing,
                    ..
                })
            )
            || matches!(
                self.expect.back(),
                Some(Expect::Reply(ReplyTo::Passive(_) | ReplyTo::Join))
            )
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
        if due(self.timers[Timer::Login as usize]) {
            return self.close(cx, CloseReason::LoginTimeout);
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
            // Not a negotiation: no reply to it names a port. Forwarded like any
            // command (the original holds it as an EPSV whose 229 never comes).
            Command::Epsv if ftp::is_epsv_all(&line) => {
                self.epsv_all = true;
                if self.expect(cx, Expect::Reply(ReplyTo::Other)) {
                    self.send(cx, Side::Server, line);
                }
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
                } else if ftp::may_carry_client_lines(&line) {
                    ReplyTo::Steerable
                } else if ftp::is_transfer(&line) {
                    ReplyTo::Transfer
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
        if self.steerable {
            self.passive_untrusted(cx, kind, line);
            return true;
        }
        // Whatever the server already sent cannot answer a command it has not seen.
        self.stale = self.inbox[idx(Side::Server)].len();
        if self.expect(cx, Expect::Reply(ReplyTo::Passive(kind))) {
            self.send(cx, Side::Server, line);
        }
        true
    }

    /// A PASV/EPSV once the server's replies may hold client-chosen lines: no port
    /// from a server reply is trusted. With a relay the transfer is served joined
    /// (the proxy sends PORT/EPRT to the server and joins its connection with the
    /// client's); with a kernel filter it is refused, unless `--server-data-ports`
    /// bounds what the server's answer may name.
    fn passive_untrusted(&mut self, cx: &mut Cx<'_>, kind: Passive, line: Bytes) {
        if cx.cfg.relay && !self.epsv_all {
            info!(
                "{} passive transfer served joined (the proxy's PORT/EPRT to the server): \
                 an earlier multi-line reply may hold client-chosen lines",
                self.id
            );
            if self.expect(cx, Expect::Reply(ReplyTo::Join)) {
                self.negotiate(
                    cx,
                    Negotiation {
                        mode: Mode::Joined,
                        passive: Some(kind),
                        port: 0,
                    },
                );
            }
        } else if cx.cfg.server_data_ports.is_some() {
            // The answer may still be forged, but can only name the server's range.
            self.stale = self.inbox[idx(Side::Server)].len();
            if self.expect(cx, Expect::Reply(ReplyTo::Passive(kind))) {
                self.send(cx, Side::Server, line);
            }
        } else {
            error!(
                "{} refusing passive mode: an earlier multi-line reply may hold \
                 client-chosen lines, and without a relay or --server-data-ports \
                 no server reply can be trusted to name the data port",
                self.id
            );
            self.local_reply(cx, REPLY_PASSIVE_UNSAFE);
        }
    }

    /// Ends the session on a reply line that answers nothing the proxy forwarded.
    /// Its data connections end with it: whatever was negotiated while the proxy
    /// could have been misled must not outlive the session.
    fn desync(&mut self, cx: &mut Cx<'_>, line: &[u8], why: &str) {
        error!(
            "{} server reply '{}' {why}: replies out of step with commands",
            self.id,
            ftp::escape(line)
        );
        if self.installed && self.phase == Phase::Open {
            let anchor = self.anchor;
            self.emit(cx, Action::EndDataConnections { anchor });
        }
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
            match &mut m.kind {
                MultiKind::Collect { to, lines, size } => {
                    *size += line.len();
                    lines.push(line);
                    if *size > MAX_HELD_REPLY {
                        return self.close(cx, CloseReason::NotClean(Side::Server));
                    }
                    if last {
                        let (to, lines) = (*to, std::mem::take(lines));
                        self.multi = None;
                        self.collected(cx, to, code, &lines);
                    }
                }
                MultiKind::Closing => {
                    self.send(cx, Side::Client, line);
                    if last {
                        self.multi = None;
                        self.close(cx, CloseReason::ServerClosing);
                    }
                }
                MultiKind::Feat if !last && ftp::is_security_feature(&line) => {
                    debug!("{} proxy: not relaying FEAT line", self.id);
                }
                MultiKind::Feat | MultiKind::Relay => {
                    self.send(cx, Side::Client, line);
                    if last {
                        self.multi = None;
                        self.final_reply(cx, code);
                    }
                }
            }
            return;
        }
        let reply = ftp::reply_code(&line);
        // 421 (service closing) may come at any time, unasked, and answers no
        // command: its lines go to the client whole and the session ends with them.
        if let Some((421, more)) = reply {
            self.held = None;
            self.send(cx, Side::Client, line);
            if more {
                self.multi = Some(Multi {
                    code: 421,
                    kind: MultiKind::Closing,
                });
                return;
            }
            return self.close(cx, CloseReason::ServerClosing);
        }
        // Anything else outside a reply must answer an outstanding command and must
        // not predate the PASV/EPSV.
        if self.greeted {
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
        let collect = match (code, self.oldest_reply()) {
            _ if !self.greeted => None,
            (227, Some(ReplyTo::Passive(Passive::Pasv))) => Some(Collected::Passive(Passive::Pasv)),
            (229, Some(ReplyTo::Passive(Passive::Epsv))) => Some(Collected::Passive(Passive::Epsv)),
            (_, Some(ReplyTo::Join)) => Some(Collected::Join),
            _ => None,
        };
        match (collect, more) {
            (Some(to), true) => {
                let size = line.len();
                self.multi = Some(Multi {
                    code,
                    kind: MultiKind::Collect {
                        to,
                        lines: vec![line],
                        size,
                    },
                });
            }
            (Some(to), false) => self.collected(cx, to, code, &[line]),
            (None, true) => {
                let feat = code == 211 && self.oldest_reply() == Some(ReplyTo::Feat);
                let steered = self.oldest_reply() == Some(ReplyTo::Steerable);
                if self.greeted && steered && !self.steerable {
                    info!(
                        "{} multi-line {code} reply: from now on no server reply is trusted \
                         to name a passive data port",
                        self.id
                    );
                    self.steerable = true;
                }
                self.multi = Some(Multi {
                    code,
                    kind: if feat {
                        MultiKind::Feat
                    } else {
                        MultiKind::Relay
                    },
                });
                self.send(cx, Side::Client, line);
            }
            (None, false) => {
                self.send(cx, Side::Client, line);
                self.final_reply(cx, code);
            }
        }
    }

    /// A held reply is complete: a 227/229 to rewrite, or the server's answer to the
    /// proxy's PORT/EPRT of a join (a preliminary 1xx is dropped and the final one
    /// awaited).
    fn collected(&mut self, cx: &mut Cx<'_>, to: Collected, code: u16, lines: &[Bytes]) {
        match to {
            Collected::Passive(kind) => self.passive_reply(cx, kind, lines),
            Collected::Join if code < 200 => {}
            Collected::Join => {
                if matches!(self.expect.front(), Some(Expect::Reply(ReplyTo::Join))) {
                    self.expect.pop_front();
                }
                let reply = self.join_reply.take();
                let reply = match reply {
                    Some(reply) if (200..300).contains(&code) => reply,
                    _ => {
                        let shown: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied()).collect();
                        warn!(
                            "{} server refused the proxy's data port: '{}'",
                            self.id,
                            ftp::escape(&shown)
                        );
                        Bytes::from_static(REPLY_JOIN_REFUSED.as_bytes())
                    }
                };
                debug!("{} proxy: {}", self.id, ftp::escape(&reply));
                self.send(cx, Side::Client, reply);
                self.flush_local(cx);
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

    /// A complete reply (not 1xx) was relayed: it answers the oldest command.
    fn final_reply(&mut self, cx: &mut Cx<'_>, code: u16) {
        if code < 200 {
            return;
        }
        if code == 230 {
            self.timers[Timer::Login as usize] = None;
        }
        if !self.greeted {
            self.greeted = true;
        } else if matches!(self.expect.front(), Some(Expect::Reply(_))) {
            self.transfer_done(cx);
            self.expect.pop_front();
        }
        self.flush_local(cx);
    }

    /// The final reply to the oldest command has been relayed: if that command moved
    /// data, the driver learns that its transfer is over. Only sessions that ever
    /// committed rules can have data connections to tell about.
    fn transfer_done(&self, cx: &mut Cx<'_>) {
        if self.installed && matches!(self.expect.front(), Some(Expect::Reply(ReplyTo::Transfer))) {
            let anchor = self.anchor;
            self.emit(cx, Action::TransferDone { anchor });
        }
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

    /// Picks the proxy ports, builds the rules and the rewritten line, and commits.
    fn negotiate(&mut self, cx: &mut Cx<'_>, negotiation: Negotiation) {
        let wanted = if negotiation.mode == Mode::Joined {
            2
        } else {
            1
        };
        let mut ports = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            match self.pick_port(cx) {
                Some(port) => ports.push(port),
                None => {
                    for port in ports {
                        cx.ports.remove(&port);
                    }
                    return self.close(cx, CloseReason::Filter(FilterError::Busy));
                }
            }
        }
        let (rules, release, join_reply) = self.render(cx, negotiation, &ports);
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
            ports,
            join_reply,
            retried: false,
            negotiation,
            port_tries,
        });
    }

    /// The rules of a negotiation on `ports` (the proxy port; for a join, the
    /// client's and then the server's), the line they release, and for a join the
    /// 227/229 the client gets once the server took the PORT/EPRT.
    fn render(
        &self,
        cx: &Cx<'_>,
        n: Negotiation,
        ports: &[u16],
    ) -> (Vec<Rule>, (Side, Bytes), Option<Bytes>) {
        let addrs = self.addrs();
        let proxy_port = ports[0];
        let client_reply = |kind| match (kind, addrs.orig_server) {
            (Passive::Pasv, IpAddr::V4(v4)) => ftp::format_227(v4, proxy_port),
            _ => ftp::format_229(proxy_port),
        };
        let (side, line, join_reply, endpoint_port) = match (n.mode, n.passive) {
            (Mode::Joined, kind) => {
                let server_port = ports[1];
                info!(
                    "{} passive: client to port {proxy_port}, joined with server to port {server_port}",
                    self.id
                );
                let line = match addrs.proxy {
                    IpAddr::V4(v4) => ftp::format_port(v4, server_port),
                    v6 => ftp::format_eprt(v6, server_port),
                };
                let reply = client_reply(kind.unwrap_or(Passive::Epsv));
                debug!(
                    "{} proxy: {} (once the server takes it)",
                    self.id,
                    ftp::escape(reply.as_bytes())
                );
                (Side::Server, line, Some(Bytes::from(reply)), server_port)
            }
            (_, Some(kind)) => {
                info!(
                    "{} passive: client to server port {} via port {}",
                    self.id, n.port, proxy_port
                );
                (Side::Client, client_reply(kind), None, n.port)
            }
            (_, None) => {
                info!(
                    "{} active: server to client port {} via port {}",
                    self.id, n.port, proxy_port
                );
                let line = match (n.mode, addrs.proxy) {
                    (Mode::ActivePort, IpAddr::V4(v4)) => ftp::format_port(v4, proxy_port),
                    _ => ftp::format_eprt(addrs.proxy, proxy_port),
                };
                (Side::Server, line, None, n.port)
            }
        };
        debug!("{} proxy: {}", self.id, ftp::escape(line.as_bytes()));
        let rules = data_rules(n.mode, &addrs, endpoint_port, proxy_port, &cx.cfg.rules);
        (rules.to_vec(), (side, Bytes::from(line)), join_reply)
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
                for old in std::mem::replace(&mut self.live_ports, commit.ports) {
                    cx.ports.remove(&old);
                }
                if commit.join_reply.is_some() {
                    self.join_reply = commit.join_reply;
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
                let (old, negotiation) = (std::mem::take(&mut commit.ports), commit.negotiation);
                info!("{} proxy port {old:?} in use, trying another", self.id);
                for port in old {
                    cx.ports.remove(&port);
                }
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
            CloseReason::Eof(_) | CloseReason::Shutdown | CloseReason::ServerClosing => {
                info!("{} {reason}", self.id)
            }
            CloseReason::Timeout(Side::Server) => warn!("{} {reason}", self.id),
            // The original's CRIT ones (cli/src/logging.rs reads the key).
            CloseReason::ConnectFailed { .. } | CloseReason::Filter(_) => {
                error!(priority = "crit"; "{} {reason}", self.id)
            }
            _ => error!("{} {reason}", self.id),
        }
        info!("{} ending session", self.id);
        self.timers = [None; 4];
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
        let pending = self.commit.take().map(|c| c.ports).unwrap_or_default();
        for port in std::mem::take(&mut self.live_ports)
            .into_iter()
            .chain(pending)
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
