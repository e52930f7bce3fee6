//! The invariants of the proxy's actions that hold whatever its peers send: one
//! checker shared by the simulation (`sim`) and the `proxy` fuzz target (fuzz/,
//! docs/fuzzing.md), so that the two check the same rules with the same code.
//!
//! A [`Checker`] follows the whole [`Proxy`] from outside, seeing only what a driver
//! sees: the accepts and their outcome, every action in order, which commits the
//! filter took, the proxy address of each server socket, and the shutdown. It keeps
//! one [`Watch`] per session and checks, besides:
//!
//! * never more than `-m` sessions, no refusal below the limit, no session id
//!   reused, no acceptance after shutdown, no refusal as shutting down before it;
//! * every session the proxy holds was accepted; one it has forgotten was closed and
//!   its last commit (acknowledged or not) was empty; after shutdown every session is
//!   closed at once and no non-empty rule set is committed;
//! * at the end ([`Checker::finished`]) the proxy is empty and every session closed
//!   with an empty last commit.
//!
//! A [`Watch`] checks one session's actions. The driving contract:
//!
//! * at most one `ConnectServer` (to the `-R` server or the original destination,
//!   bound to `-a`), at most one `Close`, no `Send`, `ReadInterest`,
//!   `TransferDone` or `EndDataConnections` after it, and `RulesMayRemain` only after
//!   it; `TransferDone` only for a session that committed;
//! * every `Close` carries a summary naming the session's client and its server;
//! * `ReadInterest` only on a change (never the same value twice in a row for a side);
//! * every `Send` is exactly one line (ends with its only LF) of at most
//!   [`MAX_LINE`] bytes;
//! * every commit names the session's own anchor (`pid`, session id); every rule
//!   names only the session's client, original destination, server and proxy
//!   addresses, in the session's family, and only once the proxy address is known;
//!   data ports are never below 1024; proxy ports are inside `--proxy-ports`,
//!   `nat-to` ports 50001-65535 (or 20 with `-r`), a passive `rdr-to` towards the
//!   server inside `--server-data-ports` when that is given.
//!
//! And, from the lines the proxy sends the client, telling the structure of the
//! server's replies (greeting, multi-line replies, 421) the way the core does, the
//! rules of docs/behavior.md ("Replies out of step", "421"):
//!
//! * a [`Mode::Joined`](ftp_proxy_core::Mode::Joined) rule set is exactly two
//!   `join-with` rules: from the client to the original destination on the proxy
//!   port the client is told, and from the server to the proxy on the port the
//!   proxy's PORT/EPRT names, each joining with the other, both proxy ports in the
//!   configured range (never below 1024), only with a relay ([`Config::relay`]),
//!   never after `EPSV ALL`, and never before a multi-line reply after the greeting
//!   unless `--server-data-mode active` asks for joins;
//! * a [`Mode::Bridged`](ftp_proxy_core::Mode::Bridged) rule set (issue 17,
//!   `--server-data-mode passive` only, with a relay) is exactly two `bridge-with`
//!   rules: from the proxy to the server's data port and from the original
//!   destination to the client's, each naming the other, both ports from 1024 up
//!   (the server's inside `--server-data-ports` when given), and never once the
//!   session's replies may hold client-chosen lines;
//! * a translated session's rules (families crossed by `-R`) name only the
//!   session's addresses, each rule's source in the client's or the server's family;
//! * once a multi-line reply after the greeting is known to answer a command whose
//!   reply can carry client-chosen lines ([`ftp::may_carry_client_lines`]), no
//!   passive rule set takes its port from a server reply, unless `--server-data-ports`
//!   bounds it and no relay serves the transfer joined (see `Steerable` for when
//!   the watch knows);
//! * every PORT/EPRT the proxy sends the server names the proxy's own address and a
//!   proxy port whose `in` rule from the server the filter holds (the last commit
//!   acknowledged as taken has it); that of a join the server leg's port, and the
//!   client then gets either the proxy's own 227/229 naming the client leg's port or
//!   the 425 of a refused join, and nothing else from the server's answer;
//! * [`Action::EndDataConnections`] comes only right before a
//!   [`CloseReason::ReplyDesync`] close and only for a session that committed
//!   rules, and such a session always ends its data connections on that close;
//! * once a 421 outside any multi-line reply reached the client, nothing more goes
//!   to the server and no rules are committed; when its last line has gone the
//!   session closes at once with [`CloseReason::ServerClosing`], and only then.
//!
//! * with client TLS (RFC 4217) no `AUTH`, `PBSZ`, `PROT` or `CCC` reaches the
//!   server; `StartTls` comes only for the client, only with explicit TLS, at most
//!   once, and only right after a `234` went to the client;
//! * with server TLS (`--server-tls`) the first lines to the server are the
//!   proxy's own `AUTH TLS` (explicit only), `PBSZ 0` and `PROT P`, in that
//!   order, and nothing else goes before them (the greeting may reach the client
//!   meanwhile: its own `AUTH`, `PBSZ` and `PROT` are answered by the proxy);
//!   `StartTls` for the server comes only with explicit server TLS, once, right
//!   after that `AUTH TLS`; the proxy's own `421` for a connection it could not
//!   secure comes only before any other line went to the server.
//!
//! The checks that depend on the harness's own world (the sim's honest servers and
//! its mock filter, the fuzzer's legal inputs) stay with the harness.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ftp_proxy_core::internals::ftp::{self, Command};
use ftp_proxy_core::internals::MAX_LINE;
use ftp_proxy_core::{
    Accept, Action, Anchor, ClientTls, CloseReason, Config, DestPolicy, Direction, PortRange,
    Proxy, Refused, Rule, ServerDataMode, ServerTls, SessionId, Side, Translate, MIN_DATA_PORT,
    NAT_PORTS, RFC_ACTIVE_SOURCE_PORT,
};

/// The 425 a client gets when the server refused the proxy's PORT/EPRT of a join
/// (core/src/session.rs).
pub const REPLY_JOIN_REFUSED: &str =
    "425 Cannot open passive connection: the server refused the proxy's data port\r\n";
/// The 425 a client gets for a PASV/EPSV after a multi-line reply when neither a
/// relay nor `--server-data-ports` makes it safe (core/src/session.rs).
pub const REPLY_PASSIVE_UNSAFE: &str =
    "425 Passive mode refused by proxy after a multi-line reply; use active mode (PORT/EPRT)\r\n";

/// The whole proxy's invariants: accepts, the session table, shutdown, and a
/// [`Watch`] per session (see the module docs).
#[derive(Debug)]
pub struct Checker {
    cfg: Config,
    sessions: BTreeMap<SessionId, Watch>,
    shut_down: bool,
}

impl Checker {
    /// A checker for a proxy built from `cfg`.
    pub fn new(cfg: &Config) -> Checker {
        Checker {
            cfg: cfg.clone(),
            sessions: BTreeMap::new(),
            shut_down: false,
        }
    }

    /// `Proxy::accept(conn)` answered `result`, with `live` sessions before the call.
    pub fn accepted(
        &mut self,
        conn: &Accept,
        live: usize,
        result: &Result<SessionId, Refused>,
    ) -> Result<(), String> {
        match *result {
            Ok(id) => {
                if self.shut_down {
                    return Err(format!("{id} accepted after shutdown"));
                }
                if self.sessions.contains_key(&id) {
                    return Err(format!("session id {id} reused"));
                }
                let watch = Watch::new(&self.cfg, id, conn.client, conn.orig_dst);
                self.sessions.insert(id, watch);
            }
            Err(Refused::Limit(m)) => {
                if m != self.cfg.max_sessions {
                    return Err(format!("refused at a limit of {m}, not -m"));
                }
                if live < m as usize {
                    return Err(format!("refused at {live} of {m} sessions"));
                }
            }
            Err(Refused::ShuttingDown) => {
                if !self.shut_down {
                    return Err("refused as shutting down before shutdown".into());
                }
            }
        }
        Ok(())
    }

    /// `Proxy::shutdown` was called.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
    }

    /// The session's server socket was reported open with this local (proxy) address.
    pub fn proxy_opened(&mut self, id: SessionId, proxy: IpAddr) {
        if let Some(w) = self.sessions.get_mut(&id) {
            w.proxy_opened(proxy);
        }
    }

    /// The filter took a commit of these rules for the session (what it now holds).
    pub fn acked(&mut self, id: SessionId, rules: &[Rule]) {
        if let Some(w) = self.sessions.get_mut(&id) {
            w.acked(rules);
        }
    }

    /// Checks the next action the proxy emitted, for session `id`.
    pub fn action(&mut self, id: SessionId, action: &Action) -> Result<(), String> {
        let Some(w) = self.sessions.get_mut(&id) else {
            return Err(format!("action for unknown session {id}: {action:?}"));
        };
        if let Action::CommitRules { rules, .. } = action {
            if self.shut_down && !rules.is_empty() {
                return Err(format!(
                    "{id}: rules committed after shutdown: {}",
                    show(rules)
                ));
            }
        }
        w.action(action).map_err(|e| format!("{id}: {e}"))
    }

    /// The watch of session `id`, if it was accepted.
    pub fn session(&self, id: SessionId) -> Option<&Watch> {
        self.sessions.get(&id)
    }

    /// Invariants that hold between any two inputs.
    pub fn check(&self, proxy: &Proxy) -> Result<(), String> {
        if proxy.len() > self.cfg.max_sessions as usize {
            return Err(format!(
                "{} sessions, limit {}",
                proxy.len(),
                self.cfg.max_sessions
            ));
        }
        for id in proxy.session_ids() {
            if !self.sessions.contains_key(&id) {
                return Err(format!("proxy holds unknown session {id}"));
            }
        }
        for (id, w) in &self.sessions {
            if !proxy.session_ids().any(|s| s == *id) {
                // Forgotten: it must have ended and asked for its rules to go.
                if !w.closed {
                    return Err(format!("{id} forgotten without a Close"));
                }
                if let Some(last) = w.last_commit.as_deref().filter(|r| !r.is_empty()) {
                    return Err(format!("{id} forgotten with rules left: {}", show(last)));
                }
            }
            if self.shut_down && !w.closed {
                return Err(format!("{id} still open after shutdown"));
            }
        }
        Ok(())
    }

    /// After shutdown, once the driver has run everything: the proxy is empty and
    /// every session closed with an empty last commit.
    pub fn finished(&self, proxy: &Proxy) -> Result<(), String> {
        if !proxy.is_empty() {
            return Err(format!("{} sessions left after shutdown", proxy.len()));
        }
        for (id, w) in &self.sessions {
            if !w.closed {
                return Err(format!("{id} never closed"));
            }
            if let Some(last) = w.last_commit.as_deref().filter(|r| !r.is_empty()) {
                return Err(format!("{id} left rules after shutdown: {}", show(last)));
            }
        }
        Ok(())
    }
}

/// Whether the session's replies may hold client-chosen lines, as far as an
/// outside observer can tell. The core decides it by pairing each reply with its
/// command (`ReplyTo::Steerable`); the watch does not pair replies, so it says
/// [`Yes`](Steerable::Yes) only when the pairing cannot matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Steerable {
    No,
    /// A multi-line reply came after the greeting while a command whose reply can
    /// carry client-chosen lines (`ftp::may_carry_client_lines`) had been forwarded,
    /// but so had others (FEAT, HELP, a transfer, the proxy's own PORT): which one it
    /// answers only the core's reply pairing knows. Joined rules are allowed from
    /// here on, passive ones too (the sim's forged-port count still holds).
    Unknown,
    /// A multi-line reply came after the greeting when every line the proxy ever
    /// forwarded to the server was such a command (`USER`, `PASS`, `CWD`, ...): the
    /// reply answers one of them whatever the pairing (a reply that answers nothing
    /// ends the session), so the core must now distrust every server reply that
    /// names a passive port. Typical: `USER`, `PASS`, then a `230-` welcome.
    Yes,
}

/// Where the session stands with a 421 the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// A multi-line 421 is being relayed.
    InMulti,
    /// The 421's last line went to the client: the next action must be the close.
    Ended,
    /// Forward mode: the proxy's own one-line 421 (the server could not be found,
    /// reached or logged in to), or with server TLS (its connection could not be
    /// secured): the next action must be the close, for any reason but the
    /// server's 421.
    Own,
}

/// Follows one session's actions and checks them (see the module docs).
#[derive(Debug)]
pub struct Watch {
    relay: bool,
    ipv6: bool,
    /// `--server-data-mode`.
    mode: ServerDataMode,
    rfc_mode: bool,
    server_data_ports: Option<PortRange>,
    proxy_ports: PortRange,
    anchor: Anchor,
    /// The client's address, as the summary must name it.
    client_addr: SocketAddr,
    /// The server the session connects to (`-R`, or the original destination).
    server_addr: SocketAddr,
    /// `-a`: the address the connect to the server is bound to.
    source_addr: Option<IpAddr>,
    client: IpAddr,
    orig_dst: IpAddr,
    server: IpAddr,
    proxy: Option<IpAddr>,
    /// The rules of the last commit the filter took.
    installed: Vec<Rule>,
    /// The rules of the last commit asked for, taken or not.
    last_commit: Option<Vec<Rule>>,
    /// A non-empty rule set was committed at some time.
    committed: bool,
    /// `ConnectServer` was emitted.
    connecting: bool,
    /// The read interest last emitted per side (client, server); both start on.
    reading: [bool; 2],
    /// The first complete reply (the greeting) reached the client.
    greeted: bool,
    /// The client is inside a multi-line reply with this code.
    multi: Option<u16>,
    /// A command whose multi-line reply would make the session steerable was forwarded.
    steer_sent: bool,
    /// Every line forwarded to the server so far was such a command.
    only_steer_sent: bool,
    /// `EPSV ALL` went to the server: no passive transfer is served joined after it.
    epsv_all: bool,
    steerable: Steerable,
    closing: Closing,
    /// Client TLS of the configuration (RFC 4217, `Config::tls`).
    client_tls: ClientTls,
    /// The last line sent to the client was the `234` that accepts `AUTH TLS`.
    sent_234: bool,
    /// `StartTls` was emitted.
    tls_started: bool,
    /// Server TLS of the configuration (`Config::tls`).
    server_tls: ServerTls,
    /// The last line sent to the server was the proxy's `AUTH TLS`.
    sent_auth: bool,
    /// `StartTls` for the server was emitted.
    server_tls_started: bool,
    /// How many of the proxy's own securing commands went to the server.
    own_sent: usize,
    /// A line other than those went to the server: the link was secured.
    past_own: bool,
    /// `EndDataConnections` was the last action.
    ending_data: bool,
    /// Forward mode (`--user-at-host`): the destination policy every connect must
    /// pass; the server is the one the session connects to.
    forward: Option<DestPolicy>,
    /// A route table (`--route-file`): the server is chosen after `USER` as in
    /// forward mode, from the administrator's table, with no policy.
    routes: bool,
    /// Forward mode: a `Resolve` is the last lookup asked.
    resolving: bool,
    /// A line went to the server (in forward mode the proxy's `USER name`, after
    /// which the client's replies are the server's).
    server_spoken: bool,
    /// A join's PORT/EPRT went to the server: the client port its 227/229 must name.
    join_pending: Option<u16>,
    closed: bool,
}

impl Watch {
    /// A watch for session `id` of `cfg`, accepted from `client` for `orig_dst`.
    pub fn new(cfg: &Config, id: SessionId, client: SocketAddr, orig_dst: SocketAddr) -> Watch {
        let server_addr = cfg.fixed_server.unwrap_or(orig_dst);
        Watch {
            relay: cfg.relay,
            ipv6: cfg.ipv6,
            mode: cfg.server_data_mode,
            rfc_mode: cfg.rules.rfc_mode,
            server_data_ports: cfg.server_data_ports,
            proxy_ports: cfg.proxy_ports,
            anchor: Anchor {
                pid: cfg.pid,
                session: id.0,
            },
            client_addr: client,
            server_addr,
            source_addr: cfg.source_addr,
            client: client.ip(),
            orig_dst: orig_dst.ip(),
            server: server_addr.ip(),
            proxy: None,
            installed: Vec::new(),
            last_commit: None,
            committed: false,
            connecting: false,
            reading: [true; 2],
            greeted: false,
            multi: None,
            steer_sent: false,
            only_steer_sent: true,
            epsv_all: false,
            steerable: Steerable::No,
            closing: Closing::No,
            ending_data: false,
            join_pending: None,
            closed: false,
            client_tls: cfg.tls.client,
            sent_234: false,
            tls_started: false,
            server_tls: cfg.tls.server,
            sent_auth: false,
            own_sent: 0,
            past_own: false,
            server_tls_started: false,
            forward: cfg.user_at_host.clone(),
            routes: cfg.routes.is_some(),
            resolving: false,
            server_spoken: false,
        }
    }

    /// The server socket was reported open with this local (proxy) address.
    pub fn proxy_opened(&mut self, proxy: IpAddr) {
        self.proxy = Some(proxy);
    }

    /// The filter took a commit of these rules (what it now holds for the session).
    pub fn acked(&mut self, rules: &[Rule]) {
        self.installed = rules.to_vec();
    }

    /// Whether the session committed rules at some time.
    pub fn committed(&self) -> bool {
        self.committed
    }

    /// Whether the session emitted its `Close`.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The read interest last emitted for `side` (on until the first `ReadInterest`).
    pub fn reading(&self, side: Side) -> bool {
        self.reading[side_idx(side)]
    }

    /// Whether the client is inside a multi-line reply (whose inner lines are the
    /// server's text, relayed as it is).
    pub fn client_in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// Checks the session's next action.
    pub fn action(&mut self, action: &Action) -> Result<(), String> {
        if self.ending_data
            && !matches!(
                action,
                Action::Close {
                    reason: CloseReason::ReplyDesync,
                    ..
                }
            )
        {
            return Err(format!(
                "EndDataConnections not followed by a reply-desync close but by {action:?}"
            ));
        }
        if matches!(self.closing, Closing::Ended | Closing::Own)
            && !matches!(action, Action::Close { .. })
        {
            return Err(format!(
                "a 421 was relayed whole, yet the session goes on: {action:?}"
            ));
        }
        let after_close = self.closed
            && !matches!(
                action,
                Action::CommitRules { .. } | Action::RulesMayRemain { .. }
            );
        if after_close {
            return Err(format!("{action:?} after the close"));
        }
        match action {
            Action::Resolve { name } => {
                if self.forward.is_none() && !self.routes {
                    return Err(format!(
                        "Resolve {name:?} in a world without --user-at-host or --route-file"
                    ));
                }
                if self.connecting {
                    return Err(format!("Resolve {name:?} after the server was chosen"));
                }
                if name.is_empty()
                    || name.parse::<IpAddr>().is_ok()
                    || name
                        .bytes()
                        .any(|b| b <= b' ' || b == b'@' || b == b'/' || b >= 0x7f)
                {
                    return Err(format!("Resolve of a name no host has: {name:?}"));
                }
                self.resolving = true;
                Ok(())
            }
            Action::ConnectServer { to, bind } => {
                if std::mem::replace(&mut self.connecting, true) {
                    return Err("a second ConnectServer".into());
                }
                if let Some(policy) = &self.forward {
                    // The server is the client's choice, but only within the policy,
                    // of the client's family, and never the proxy itself.
                    if let Err(why) = policy.check(*to) {
                        return Err(format!(
                            "forward connect to {to}, which the policy refuses: {why}"
                        ));
                    }
                    if to.is_ipv4() != self.client_addr.is_ipv4() {
                        return Err(format!(
                            "forward connect to {to} crosses the client's family"
                        ));
                    }
                    self.server_addr = *to;
                    self.server = to.ip();
                } else if self.routes {
                    if to.is_ipv4() != self.client_addr.is_ipv4() {
                        return Err(format!(
                            "routed connect to {to} crosses the client's family"
                        ));
                    }
                    self.server_addr = *to;
                    self.server = to.ip();
                }
                if *to != self.server_addr || *bind != self.source_addr {
                    return Err(format!(
                        "connect to {to} bound to {bind:?}, expected {} bound to {:?}",
                        self.server_addr, self.source_addr
                    ));
                }
                Ok(())
            }
            Action::Send(side, line) => {
                if line.len() > MAX_LINE {
                    return Err(format!("{} byte line to the {side:?}", line.len()));
                }
                if line.iter().position(|&b| b == b'\n') != Some(line.len().wrapping_sub(1)) {
                    return Err(format!("Send is not exactly one line: {line:?}"));
                }
                self.sent_234 = *side == Side::Client && line.starts_with(b"234 ");
                if *side == Side::Server {
                    self.sent_auth = &line[..] == b"AUTH TLS\r\n";
                }
                match side {
                    Side::Server => self.sent_to_server(line),
                    Side::Client => self.sent_to_client(line),
                }
            }
            Action::CommitRules { anchor, rules, .. } => {
                self.own_anchor(anchor, "CommitRules")?;
                if self.closed && !rules.is_empty() {
                    return Err(format!("rules committed after the close: {}", show(rules)));
                }
                self.last_commit = Some(rules.clone());
                self.check_rules(rules)?;
                self.commit(rules)
            }
            Action::EndDataConnections { anchor } => {
                self.own_anchor(anchor, "EndDataConnections")?;
                if !self.committed {
                    return Err("EndDataConnections for a session that never committed".into());
                }
                self.ending_data = true;
                Ok(())
            }
            Action::StartTls {
                side: Side::Server, ..
            } => {
                if self.server_tls != ServerTls::Explicit {
                    return Err(format!(
                        "StartTls on the server with server TLS {:?}",
                        self.server_tls
                    ));
                }
                if !std::mem::take(&mut self.sent_auth) {
                    return Err(
                        "StartTls on the server not right after the proxy's AUTH TLS".into(),
                    );
                }
                if std::mem::replace(&mut self.server_tls_started, true) {
                    return Err("a second StartTls on the server".into());
                }
                Ok(())
            }
            Action::StartTls { side, .. } => {
                if self.client_tls != ClientTls::Explicit || *side != Side::Client {
                    return Err(format!(
                        "StartTls on the {side} with client TLS {:?}",
                        self.client_tls
                    ));
                }
                if !std::mem::take(&mut self.sent_234) {
                    return Err("StartTls not right after the 234 to AUTH".into());
                }
                if std::mem::replace(&mut self.tls_started, true) {
                    return Err("a second StartTls".into());
                }
                Ok(())
            }
            Action::TransferDone { anchor } => {
                self.own_anchor(anchor, "TransferDone")?;
                if self.last_commit.is_none() {
                    return Err("TransferDone without rules ever committed".into());
                }
                Ok(())
            }
            Action::RulesMayRemain { anchor, error } => {
                self.own_anchor(anchor, "RulesMayRemain")?;
                if !self.closed {
                    return Err(format!("RulesMayRemain ({error}) for an open session"));
                }
                Ok(())
            }
            Action::ReadInterest { side, on } => {
                let last = &mut self.reading[side_idx(*side)];
                if *last == *on {
                    return Err(format!("ReadInterest {side} {on} repeated"));
                }
                *last = *on;
                Ok(())
            }
            Action::Close { reason, summary } => {
                if summary.client != self.client_addr || summary.server != self.server_addr {
                    return Err(format!(
                        "the summary ({reason}) names client {} and server {}, not {} and {}",
                        summary.client, summary.server, self.client_addr, self.server_addr
                    ));
                }
                self.close(reason)
            }
        }
    }

    fn own_anchor(&self, anchor: &Anchor, what: &str) -> Result<(), String> {
        if *anchor != self.anchor {
            return Err(format!("{what} for {anchor}, not {}", self.anchor));
        }
        Ok(())
    }

    fn close(&mut self, reason: &CloseReason) -> Result<(), String> {
        let desync = *reason == CloseReason::ReplyDesync;
        if desync && self.committed && !self.ending_data {
            return Err(
                "a session that committed rules ended on a reply desync without ending its data connections"
                    .into(),
            );
        }
        let closing = *reason == CloseReason::ServerClosing;
        if self.closing == Closing::Own && closing {
            return Err("the proxy's own 421 closed as the server's 421".into());
        }
        if self.closing == Closing::Ended && !closing {
            return Err(format!("closed as '{reason}' right after a whole 421"));
        }
        if closing && self.closing != Closing::Ended {
            return Err("closed as server_closing before a whole 421 reached the client".into());
        }
        self.ending_data = false;
        self.closing = Closing::No;
        self.join_pending = None;
        self.closed = true;
        Ok(())
    }

    fn sent_to_server(&mut self, line: &[u8]) -> Result<(), String> {
        if !self.connecting {
            return Err(format!(
                "'{}' sent to the server before any ConnectServer",
                ftp::escape(line)
            ));
        }
        self.server_spoken = true;
        if self.closing != Closing::No {
            return Err(format!(
                "'{}' sent to the server after a 421 reached the client",
                ftp::escape(line)
            ));
        }
        // With server TLS the proxy's own protection commands go first, in
        // order; they are not the client's, so nothing else here concerns them.
        if self.server_tls != ServerTls::Off && !self.past_own {
            let own: &[&[u8]] = match self.server_tls {
                ServerTls::Explicit => &[b"AUTH TLS\r\n", b"PBSZ 0\r\n", b"PROT P\r\n"],
                _ => &[b"PBSZ 0\r\n", b"PROT P\r\n"],
            };
            if own.get(self.own_sent) == Some(&line) {
                self.own_sent += 1;
                return Ok(());
            }
            if self.own_sent < own.len() {
                return Err(format!(
                    "'{}' sent to the server before its control connection was secured",
                    ftp::escape(line)
                ));
            }
            self.past_own = true;
        }
        // With client TLS the protection commands are the proxy's: the server's
        // leg stays plain, so none of them may reach it.
        if self.client_tls != ClientTls::Off {
            let word = ftp::command_start(line);
            let word: Vec<u8> = word
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .map(u8::to_ascii_uppercase)
                .collect();
            if [&b"AUTH"[..], b"PBSZ", b"PROT", b"CCC"].contains(&&word[..]) {
                return Err(format!(
                    "'{}' forwarded to the server with client TLS on",
                    ftp::escape(line)
                ));
            }
        }
        if ftp::may_carry_client_lines(line) {
            self.steer_sent = true;
        } else {
            self.only_steer_sent = false;
        }
        let port = match ftp::classify(line) {
            Command::Epsv if ftp::is_epsv_all(line) => {
                self.epsv_all = true;
                return Ok(());
            }
            Command::Port(port) | Command::Eprt(port) => port,
            _ => return Ok(()),
        };
        let Some(port) = port else {
            return Err(format!("unparsable '{}' to the server", ftp::escape(line)));
        };
        let Some(proxy) = self.proxy else {
            return Err(format!(
                "'{}' to the server before the proxy address is known",
                ftp::escape(line)
            ));
        };
        let own = match proxy {
            IpAddr::V4(v4) if starts_with_ci(line, b"PORT") => ftp::format_port(v4, port),
            ip => ftp::format_eprt(ip, port),
        };
        if line != own.as_bytes() {
            return Err(format!(
                "'{}' to the server does not name the proxy's own address {proxy}",
                ftp::escape(line)
            ));
        }
        if !(self.proxy_ports.low..=self.proxy_ports.high).contains(&port) {
            return Err(format!(
                "'{}' to the server names no proxy port",
                ftp::escape(line)
            ));
        }
        if let Some((client_leg, server_leg)) = joined(&self.installed) {
            if server_leg.port != port {
                return Err(format!(
                    "the join's '{}' names port {port}, its server leg listens on {}",
                    ftp::escape(line),
                    server_leg.port
                ));
            }
            self.join_pending = Some(client_leg.port);
        } else if !self
            .installed
            .iter()
            .any(|r| r.direction == Direction::In && r.port == port && r.from == self.server)
        {
            return Err(format!(
                "'{}' left before its rules were committed ({:?})",
                ftp::escape(line),
                self.installed
            ));
        }
        Ok(())
    }

    fn sent_to_client(&mut self, line: &[u8]) -> Result<(), String> {
        let reply = ftp::reply_code(line);
        if let Some(code) = self.multi {
            if reply == Some((code, false)) {
                self.multi = None;
                if code == 421 && self.closing == Closing::InMulti {
                    self.closing = Closing::Ended;
                } else if !self.greeted && code >= 200 {
                    self.greeted = true;
                }
            }
            return Ok(());
        }
        let Some((code, more)) = reply else {
            // Text outside any reply is relayed as it is.
            return Ok(());
        };
        // The proxy's own 421: in forward or route mode before the server was
        // spoken to, with server TLS before its connection was secured (before
        // any client line went to the server; the greeting may have been
        // relayed, so the proxy's text tells it from a server's 421).
        let own = ((self.forward.is_some() || self.routes) && !self.server_spoken)
            || (self.server_tls != ServerTls::Off
                && !self.past_own
                && !more
                && line.starts_with(b"421 Cannot reach the server securely"));
        if code == 421 && own {
            if more {
                return Err("the proxy's own 421 is one line".into());
            }
            self.closing = Closing::Own;
            return Ok(());
        }
        if code == 421 {
            self.closing = if more {
                self.multi = Some(421);
                Closing::InMulti
            } else {
                Closing::Ended
            };
            self.join_pending = None;
            return Ok(());
        }
        if let Some(client_port) = self.join_pending.take() {
            let mut allowed = vec![ftp::format_229(client_port), REPLY_JOIN_REFUSED.to_string()];
            if let IpAddr::V4(v4) = self.orig_dst {
                allowed.push(ftp::format_227(v4, client_port));
            }
            if more || !allowed.iter().any(|a| a.as_bytes() == line) {
                return Err(format!(
                    "the client got '{}' for a joined PASV/EPSV, not the proxy's own reply \
                     naming port {client_port} or the 425 of a refused join",
                    ftp::escape(line)
                ));
            }
            return Ok(());
        }
        if more {
            self.multi = Some(code);
            if self.greeted && self.steer_sent && self.steerable != Steerable::Yes {
                self.steerable = if self.only_steer_sent {
                    Steerable::Yes
                } else {
                    Steerable::Unknown
                };
            }
        } else if !self.greeted && code >= 200 {
            self.greeted = true;
        }
        Ok(())
    }

    /// What holds for every rule, whatever the mode (see the module docs).
    fn check_rules(&self, rules: &[Rule]) -> Result<(), String> {
        let allowed = |ip: IpAddr| {
            ip == self.client || ip == self.orig_dst || ip == self.server || Some(ip) == self.proxy
        };
        let proxy_port = |port: u16| {
            port >= MIN_DATA_PORT && (self.proxy_ports.low..=self.proxy_ports.high).contains(&port)
        };
        for r in rules {
            if self.proxy.is_none() {
                return Err(format!("rules before the proxy address is known: {r}"));
            }
            if !allowed(r.from) || !allowed(r.to) {
                return Err(format!("foreign address in {r}"));
            }
            // A cross-family session's rules have sources of both families.
            let crossed = self.client.is_ipv6() != self.server.is_ipv6();
            if !crossed && r.from.is_ipv6() != self.ipv6 {
                return Err(format!("family of {r}"));
            }
            match (r.direction, r.translate) {
                (Direction::In, Translate::RdrTo { addr, port }) => {
                    if !allowed(addr) {
                        return Err(format!("foreign rdr-to address in {r}"));
                    }
                    if port < MIN_DATA_PORT {
                        return Err(format!("privileged data port in {r}"));
                    }
                    if let Some(range) = self.server_data_ports {
                        let towards_server = addr == self.server && self.server != self.client;
                        if towards_server && !(range.low..=range.high).contains(&port) {
                            return Err(format!(
                                "server data port outside --server-data-ports in {r}"
                            ));
                        }
                    }
                    if !proxy_port(r.port) {
                        return Err(format!("proxy port outside --proxy-ports in {r}"));
                    }
                }
                (Direction::In, Translate::JoinWith { addr, port }) => {
                    // The pair's shape is `check_joined`'s; each leg joins the other's
                    // destination, a proxy port.
                    if !allowed(addr) {
                        return Err(format!("foreign join-with address in {r}"));
                    }
                    if !proxy_port(port) || !proxy_port(r.port) {
                        return Err(format!("join-with port outside --proxy-ports in {r}"));
                    }
                }
                (Direction::Out, Translate::BridgeWith { addr, port }) => {
                    // The pair's shape is `check_bridged`'s.
                    if !allowed(addr) {
                        return Err(format!("foreign bridge-with address in {r}"));
                    }
                    if port < MIN_DATA_PORT || r.port < MIN_DATA_PORT {
                        return Err(format!("privileged data port in {r}"));
                    }
                }
                (Direction::Out, Translate::NatTo { addr, ports }) => {
                    if !allowed(addr) {
                        return Err(format!("foreign nat-to address in {r}"));
                    }
                    if r.port < MIN_DATA_PORT {
                        return Err(format!("privileged data port in {r}"));
                    }
                    let rfc = self.rfc_mode && ports == PortRange::single(RFC_ACTIVE_SOURCE_PORT);
                    if ports != NAT_PORTS && !rfc {
                        return Err(format!("nat-to ports in {r}"));
                    }
                }
                _ => return Err(format!("translation does not fit the direction: {r}")),
            }
        }
        Ok(())
    }

    fn commit(&mut self, rules: &[Rule]) -> Result<(), String> {
        if rules.is_empty() {
            return Ok(());
        }
        if self.closing != Closing::No {
            return Err(format!("rules committed after a 421: {rules:?}"));
        }
        self.committed = true;
        let joins = rules
            .iter()
            .filter(|r| matches!(r.translate, Translate::JoinWith { .. }))
            .count();
        if joins > 0 {
            if !self.relay {
                return Err(format!("joined rules without a relay: {}", show(rules)));
            }
            if self.epsv_all {
                return Err(format!("joined rules after EPSV ALL: {}", show(rules)));
            }
            if self.steerable == Steerable::No && self.mode != ServerDataMode::Active {
                return Err(format!(
                    "joined rules before any multi-line reply: {}",
                    show(rules)
                ));
            }
            return self.check_joined(rules);
        }
        if rules
            .iter()
            .any(|r| matches!(r.translate, Translate::BridgeWith { .. }))
        {
            return self.check_bridged(rules);
        }
        let passive = rules.iter().any(|r| {
            r.direction == Direction::In
                && r.from == self.client
                && matches!(r.translate, Translate::RdrTo { .. })
        });
        // Served joined with a relay (unless EPSV ALL), refused with neither a relay
        // nor --server-data-ports: only the bounded case takes a port from the server.
        let joined_instead = self.relay && !self.epsv_all;
        if passive
            && self.steerable == Steerable::Yes
            && (joined_instead || self.server_data_ports.is_none())
        {
            return Err(format!(
                "after a multi-line reply to a command whose reply can carry client-chosen \
                 lines, passive rules took their port from a server reply: {}",
                show(rules)
            ));
        }
        Ok(())
    }

    fn check_bridged(&self, rules: &[Rule]) -> Result<(), String> {
        if !self.relay || self.mode != ServerDataMode::Passive {
            return Err(format!(
                "bridged rules without a relay or outside --server-data-mode passive: {}",
                show(rules)
            ));
        }
        if self.steerable == Steerable::Yes {
            return Err(format!(
                "after a multi-line reply to a command whose reply can carry client-chosen \
                 lines, a bridge took its port from a server reply: {}",
                show(rules)
            ));
        }
        let proxy = self.proxy.ok_or_else(|| {
            format!(
                "bridged rules before the proxy address is known: {}",
                show(rules)
            )
        })?;
        let [s, c] = rules else {
            return Err(format!(
                "a bridged rule set is not exactly two bridge-with rules: {}",
                show(rules)
            ));
        };
        let legs_ok = s.direction == Direction::Out
            && c.direction == Direction::Out
            && s.from == proxy
            && s.to == self.server
            && s.translate
                == (Translate::BridgeWith {
                    addr: self.client,
                    port: c.port,
                })
            && c.from == self.orig_dst
            && c.to == self.client
            && c.translate
                == (Translate::BridgeWith {
                    addr: self.server,
                    port: s.port,
                });
        if !legs_ok {
            return Err(format!(
                "bridged rules are not {proxy} to the server and {} to the client, each naming the other: {}",
                self.orig_dst,
                show(rules)
            ));
        }
        if let Some(range) = self.server_data_ports {
            if !(range.low..=range.high).contains(&s.port) {
                return Err(format!(
                    "bridged server port outside --server-data-ports: {}",
                    show(rules)
                ));
            }
        }
        Ok(())
    }

    fn check_joined(&self, rules: &[Rule]) -> Result<(), String> {
        let Some((c, s)) = joined(rules) else {
            return Err(format!(
                "a joined rule set is not exactly two join-with rules: {}",
                show(rules)
            ));
        };
        let proxy = self.proxy.ok_or_else(|| {
            format!(
                "joined rules before the proxy address is known: {}",
                show(rules)
            )
        })?;
        let legs_ok = c.direction == Direction::In
            && s.direction == Direction::In
            && c.from == self.client
            && c.to == self.orig_dst
            && c.translate
                == (Translate::JoinWith {
                    addr: proxy,
                    port: s.port,
                })
            && s.from == self.server
            && s.to == proxy
            && s.translate
                == (Translate::JoinWith {
                    addr: self.orig_dst,
                    port: c.port,
                });
        if !legs_ok {
            return Err(format!(
                "joined rules are not client to {} and server to {proxy}, each joining the other: {}",
                self.orig_dst,
                show(rules)
            ));
        }
        let range = self.proxy_ports.low.max(MIN_DATA_PORT)..=self.proxy_ports.high;
        if !range.contains(&c.port) || !range.contains(&s.port) || c.port == s.port {
            return Err(format!(
                "joined rules' proxy ports {} and {} are not two distinct ports of {}-{}: {}",
                c.port,
                s.port,
                self.proxy_ports.low,
                self.proxy_ports.high,
                show(rules)
            ));
        }
        Ok(())
    }
}

/// The client leg and the server leg of a joined rule set, if `rules` is exactly two
/// `join-with` rules.
fn joined(rules: &[Rule]) -> Option<(&Rule, &Rule)> {
    match rules {
        [c, s]
            if matches!(c.translate, Translate::JoinWith { .. })
                && matches!(s.translate, Translate::JoinWith { .. }) =>
        {
            Some((c, s))
        }
        _ => None,
    }
}

fn starts_with_ci(line: &[u8], word: &[u8]) -> bool {
    line.len() >= word.len() && line[..word.len()].eq_ignore_ascii_case(word)
}

fn side_idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

fn show(rules: &[Rule]) -> String {
    let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
    shown.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ftp_proxy_core::{data_rules, Mode, RuleOptions, SessionAddrs};

    const CLIENT: &str = "203.0.113.5:40000";
    const DST: &str = "198.51.100.10:21";
    const PROXY: &str = "198.51.100.1";

    fn watch(cfg: &Config) -> Watch {
        let mut w = Watch::new(
            cfg,
            SessionId(1),
            CLIENT.parse().unwrap(),
            DST.parse().unwrap(),
        );
        let connect = Action::ConnectServer {
            to: DST.parse().unwrap(),
            bind: None,
        };
        w.action(&connect).unwrap();
        w.proxy_opened(PROXY.parse().unwrap());
        w
    }

    fn send(w: &mut Watch, side: Side, line: &str) -> Result<(), String> {
        w.action(&Action::Send(side, Bytes::copy_from_slice(line.as_bytes())))
    }

    /// The passive rules the core commits for a 227 naming server port 6000.
    fn passive_commit(cfg: &Config) -> Action {
        let addrs = SessionAddrs {
            client: CLIENT.parse::<SocketAddr>().unwrap().ip(),
            server: DST.parse::<SocketAddr>().unwrap().ip(),
            orig_server: DST.parse::<SocketAddr>().unwrap().ip(),
            proxy: PROXY.parse().unwrap(),
            client_rdomain: 0,
        };
        let rules = data_rules(Mode::Passive, &addrs, 6000, 55000, &RuleOptions::default());
        Action::CommitRules {
            txn: 1,
            anchor: Anchor {
                pid: cfg.pid,
                session: 1,
            },
            rules: rules.to_vec(),
        }
    }

    /// Greeting, then `commands` forwarded, then a multi-line reply.
    fn dialogue(w: &mut Watch, commands: &[&str]) {
        send(w, Side::Client, "220 ready\r\n").unwrap();
        for c in commands {
            send(w, Side::Server, c).unwrap();
        }
        send(w, Side::Client, "230-Welcome\r\n").unwrap();
        send(w, Side::Client, "230 Logged in\r\n").unwrap();
    }

    #[test]
    fn passive_rules_after_a_welcome_to_user_and_pass_are_caught() {
        let cfg = Config::default();
        let mut w = watch(&cfg);
        dialogue(&mut w, &["USER bob\r\n", "PASS x\r\n"]);
        assert_eq!(w.steerable, Steerable::Yes);
        let e = w.action(&passive_commit(&cfg)).unwrap_err();
        assert!(e.contains("passive rules took their port"), "{e}");
    }

    #[test]
    fn bounded_passive_rules_after_a_welcome_pass() {
        // Without a relay, --server-data-ports makes the server's answer safe enough.
        let cfg = Config {
            server_data_ports: Some(PortRange {
                low: 5000,
                high: 7000,
            }),
            ..Config::default()
        };
        let mut w = watch(&cfg);
        dialogue(&mut w, &["USER bob\r\n"]);
        w.action(&passive_commit(&cfg)).unwrap();
    }

    #[test]
    fn a_multi_line_reply_that_may_answer_feat_decides_nothing() {
        let cfg = Config::default();
        let mut w = watch(&cfg);
        dialogue(&mut w, &["USER bob\r\n", "FEAT\r\n"]);
        assert_eq!(w.steerable, Steerable::Unknown);
        w.action(&passive_commit(&cfg)).unwrap();
        // Before any command that could steer a reply, a multi-line one is harmless.
        let mut w = watch(&cfg);
        dialogue(&mut w, &["SYST\r\n"]);
        assert_eq!(w.steerable, Steerable::No);
        w.action(&passive_commit(&cfg)).unwrap();
    }

    #[test]
    fn the_driving_contract_is_checked() {
        let cfg = Config::default();
        let mut w = watch(&cfg);
        let off = Action::ReadInterest {
            side: Side::Client,
            on: false,
        };
        w.action(&off).unwrap();
        assert!(w.action(&off).unwrap_err().contains("repeated"));
        assert!(send(&mut w, Side::Client, "220 a\r\n220 b\r\n").is_err());
        let mut other = passive_commit(&cfg);
        if let Action::CommitRules { anchor, .. } = &mut other {
            anchor.session = 2;
        }
        assert!(w.action(&other).unwrap_err().contains("CommitRules for"));
    }

    /// The real core in the dialogue that makes the watch sure (USER, a `230-`
    /// welcome, then PASV), through the [`Checker`]: the two agree in each of the
    /// three ways the core may answer, and the watch has said `Yes`.
    #[test]
    fn the_core_and_the_checker_agree_after_a_welcome() {
        use ftp_proxy_core::{Input, Pcg32};
        use std::time::Instant;

        let ranges = Some(PortRange {
            low: 5000,
            high: 7000,
        });
        for (relay, server_data_ports) in [(false, None), (true, None), (false, ranges)] {
            let cfg = Config {
                relay,
                server_data_ports,
                ..Config::default()
            };
            let mut proxy = Proxy::new(cfg.clone(), Box::new(Pcg32::new(7))).unwrap();
            let mut checker = Checker::new(&cfg);
            let now = Instant::now();
            let conn = Accept::new(CLIENT.parse().unwrap(), DST.parse().unwrap());
            let result = proxy.accept(now, conn);
            checker.accepted(&conn, 0, &result).unwrap();
            let id = result.unwrap();
            let proxy_addr = SocketAddr::new(PROXY.parse().unwrap(), 50000);
            checker.proxy_opened(id, proxy_addr.ip());
            let mut sent = Vec::new();
            let mut feed = |proxy: &mut Proxy, input: Option<Input>| {
                if let Some(input) = input {
                    proxy.handle(now, id, input);
                }
                while let Some((sid, action)) = proxy.poll_action() {
                    checker.action(sid, &action).unwrap();
                    if let Action::CommitRules { txn, rules, .. } = &action {
                        checker.acked(sid, rules);
                        let ok = Input::RulesCommitted {
                            txn: *txn,
                            result: Ok(()),
                        };
                        proxy.handle(now, sid, ok);
                    }
                    sent.push(action);
                }
            };
            let data =
                |side: Side, s: &str| Some(Input::Data(side, Bytes::copy_from_slice(s.as_bytes())));
            feed(&mut proxy, None);
            feed(
                &mut proxy,
                Some(Input::ServerSocketOpened { proxy: proxy_addr }),
            );
            feed(&mut proxy, data(Side::Server, "220 ready\r\n"));
            feed(&mut proxy, data(Side::Client, "USER bob\r\n"));
            feed(
                &mut proxy,
                data(Side::Server, "230-Welcome\r\n230 Logged in\r\n"),
            );
            feed(&mut proxy, data(Side::Client, "PASV\r\n"));
            if server_data_ports.is_some() {
                feed(
                    &mut proxy,
                    data(
                        Side::Server,
                        "227 Entering Passive Mode (198,51,100,10,23,112)\r\n",
                    ),
                );
            }
            assert_eq!(checker.session(id).unwrap().steerable, Steerable::Yes);
            let commits: Vec<&Vec<Rule>> = sent
                .iter()
                .filter_map(|a| match a {
                    Action::CommitRules { rules, .. } if !rules.is_empty() => Some(rules),
                    _ => None,
                })
                .collect();
            match (relay, server_data_ports) {
                (false, None) => {
                    let refused = Action::Send(
                        Side::Client,
                        Bytes::from_static(REPLY_PASSIVE_UNSAFE.as_bytes()),
                    );
                    assert!(sent.contains(&refused), "{sent:?}");
                    assert!(commits.is_empty(), "{commits:?}");
                }
                (true, _) => {
                    assert_eq!(commits.len(), 1, "{sent:?}");
                    assert!(joined(commits[0]).is_some(), "{commits:?}");
                }
                (false, Some(_)) => {
                    assert_eq!(commits.len(), 1, "{sent:?}");
                    assert!(
                        commits[0].iter().any(|r| r.translate
                            == Translate::RdrTo {
                                addr: DST.parse::<SocketAddr>().unwrap().ip(),
                                port: 6000
                            }),
                        "{commits:?}"
                    );
                }
            }
        }
    }
}
