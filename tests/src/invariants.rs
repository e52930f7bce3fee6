//! Invariants of one session's actions that hold whatever its peers send: shared by
//! the simulation (`sim`) and the `proxy` fuzz target (fuzz/, docs/fuzzing.md).
//!
//! A [`Watch`] follows one session from outside, seeing only what a driver sees:
//! its actions in order, which commits the filter took, and the proxy address of
//! its server socket. From the lines the proxy sends the client it tells the
//! structure of the server's replies (greeting, multi-line replies, 421) the way the
//! core does, which is enough to check the rules of docs/behavior.md ("Replies out
//! of step", "421"):
//!
//! * a [`Mode::Joined`](ftp_proxy_core::Mode::Joined) rule set is exactly two
//!   `join-with` rules: from the client to the original destination on the proxy
//!   port the client is told, and from the server to the proxy on the port the
//!   proxy's PORT/EPRT names, each joining with the other, both proxy ports in the
//!   configured range (never below 1024), and only with a relay
//!   ([`Config::relay`]);
//! * once a multi-line reply after the greeting (not FEAT's) reached the client, no
//!   passive rule set takes its port from a server reply (with a relay every
//!   passive transfer is joined; with neither a relay nor `--server-data-ports` it
//!   is refused), and no joined rule set exists before that;
//! * every PORT/EPRT the proxy sends the server names the proxy's own address and a
//!   proxy port of the rules in force; that of a join the server leg's port, and the
//!   client then gets either the proxy's own 227/229 naming the client leg's port or
//!   the 425 of a refused join, and nothing else from the server's answer;
//! * [`Action::EndDataConnections`] comes only right before a
//!   [`CloseReason::ReplyDesync`] close and only for a session that committed
//!   rules, and such a session always ends its data connections on that close;
//! * once a 421 outside any multi-line reply reached the client, nothing more goes
//!   to the server and no rules are committed; when its last line has gone the
//!   session closes at once with [`CloseReason::ServerClosing`], and only then.

use std::net::IpAddr;

use ftp_proxy_core::internals::ftp::{self, Command};
use ftp_proxy_core::{
    Action, CloseReason, Config, Direction, PortRange, Rule, Side, Translate, MIN_DATA_PORT,
};

/// The 425 a client gets when the server refused the proxy's PORT/EPRT of a join
/// (core/src/session.rs).
pub const REPLY_JOIN_REFUSED: &str =
    "425 Cannot open passive connection: the server refused the proxy's data port\r\n";
/// The 425 a client gets for a PASV/EPSV after a multi-line reply when neither a
/// relay nor `--server-data-ports` makes it safe (core/src/session.rs).
pub const REPLY_PASSIVE_UNSAFE: &str =
    "425 Passive mode refused by proxy after a multi-line reply; use active mode (PORT/EPRT)\r\n";

/// Whether the session's replies may hold client-chosen lines, as far as an
/// outside observer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Steerable {
    No,
    /// A multi-line reply came that may answer a command whose reply can carry
    /// client-chosen lines (`ftp::may_carry_client_lines`) or one whose reply cannot
    /// (FEAT, transfer statistics): which, only the core's reply pairing knows, and
    /// this watch does not pair replies. The sim's forged-port count still holds.
    Unknown,
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
}

/// Follows one session's actions and checks them (see the module docs).
#[derive(Debug)]
pub struct Watch {
    relay: bool,
    server_data_ports: Option<PortRange>,
    proxy_ports: PortRange,
    client: IpAddr,
    orig_dst: IpAddr,
    server: IpAddr,
    proxy: Option<IpAddr>,
    /// The rules of the last commit the filter took.
    installed: Vec<Rule>,
    /// A non-empty rule set was committed at some time.
    committed: bool,
    /// The first complete reply (the greeting) reached the client.
    greeted: bool,
    /// The client is inside a multi-line reply with this code.
    multi: Option<u16>,
    /// A FEAT went to the server at some time.
    feat_sent: bool,
    /// A command whose multi-line reply would make the session steerable was forwarded.
    steer_sent: bool,
    steerable: Steerable,
    closing: Closing,
    /// `EndDataConnections` was the last action.
    ending_data: bool,
    /// A join's PORT/EPRT went to the server: the client port its 227/229 must name.
    join_pending: Option<u16>,
    closed: bool,
}

impl Watch {
    /// A watch for a session of `cfg` accepted from `client` for `orig_dst`.
    pub fn new(cfg: &Config, client: IpAddr, orig_dst: IpAddr) -> Watch {
        Watch {
            relay: cfg.relay,
            server_data_ports: cfg.server_data_ports,
            proxy_ports: cfg.proxy_ports,
            client,
            orig_dst,
            server: cfg.fixed_server.map_or(orig_dst, |s| s.ip()),
            proxy: None,
            installed: Vec::new(),
            committed: false,
            greeted: false,
            multi: None,
            feat_sent: false,
            steer_sent: false,
            steerable: Steerable::No,
            closing: Closing::No,
            ending_data: false,
            join_pending: None,
            closed: false,
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
        if self.closing == Closing::Ended && !matches!(action, Action::Close { .. }) {
            return Err(format!(
                "a 421 was relayed whole, yet the session goes on: {action:?}"
            ));
        }
        match action {
            Action::Send(Side::Server, line) => self.sent_to_server(line),
            Action::Send(Side::Client, line) => self.sent_to_client(line),
            Action::CommitRules { rules, .. } => self.commit(rules),
            Action::EndDataConnections { .. } => {
                if !self.committed {
                    return Err("EndDataConnections for a session that never committed".into());
                }
                if self.closed {
                    return Err("EndDataConnections after the close".into());
                }
                self.ending_data = true;
                Ok(())
            }
            Action::Close { reason, .. } => self.close(reason),
            _ => Ok(()),
        }
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
        if self.closing != Closing::No {
            return Err(format!(
                "'{}' sent to the server after a 421 reached the client",
                ftp::escape(line)
            ));
        }
        if ftp::may_carry_client_lines(line) {
            self.steer_sent = true;
        }
        let port = match ftp::classify(line) {
            Command::Feat => {
                self.feat_sent = true;
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
            if self.greeted && self.steer_sent && self.steerable == Steerable::No {
                self.steerable = Steerable::Unknown;
            }
        } else if !self.greeted && code >= 200 {
            self.greeted = true;
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
            if self.steerable == Steerable::No {
                return Err(format!(
                    "joined rules before any multi-line reply: {}",
                    show(rules)
                ));
            }
            return self.check_joined(rules);
        }
        let passive = rules.iter().any(|r| {
            r.direction == Direction::In
                && r.from == self.client
                && matches!(r.translate, Translate::RdrTo { .. })
        });
        if passive
            && self.steerable == Steerable::Yes
            && (self.relay || self.server_data_ports.is_none())
        {
            return Err(format!(
                "after a multi-line reply, passive rules took their port from a server reply: {}",
                show(rules)
            ));
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

fn show(rules: &[Rule]) -> String {
    let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
    shown.join("; ")
}
