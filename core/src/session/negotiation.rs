//! Data-connection negotiations and their rule commits.
//!
//! A PORT/EPRT, a 227/229, or a PASV/EPSV served joined becomes a [`Negotiation`]:
//! the proxy picks its port(s), builds the rules and the rewritten line, commits the
//! rules, and releases the line only once the filter took them. The handshake's
//! corners (a busy filter retried once, a port in use replaced, up to
//! [`MAX_PORT_TRIES`] times) are listed on [`crate::Action::CommitRules`]; here they
//! are carried out. While a [`Commit`] is in flight it is the pairing's turn
//! (`pairing.rs`): both directions wait for its line.

use std::net::IpAddr;

use bytes::Bytes;
use log::{debug, error, info};

use crate::config::COMMIT_RETRY_DELAY;
use crate::error::FilterError;
use crate::event::{Action, CloseReason, Side};
use crate::ftp;
use crate::ftps;
use crate::rules::{data_rules, protect_client_leg, protect_server_leg, Mode, Rule};
use crate::translate::{self, DataCommand, PassiveAnswer};

use super::dialogue::REPLY_BAD_PASSIVE;
use super::flow::idx;
use super::pairing::{Ask, ClientAsk, Passive};
use super::timer::Timer;
use super::{Cx, Phase, Session};

/// Proxy ports tried for one negotiation when the filter reports each in use.
const MAX_PORT_TRIES: u32 = 8;

/// One data-connection negotiation: everything its rules and line are made from,
/// except the proxy port.
#[derive(Debug, Clone, Copy)]
pub(super) struct Negotiation {
    pub(super) mode: Mode,
    /// For passive mode, which reply to write (227 or 229).
    pub(super) passive: Option<Passive>,
    /// The endpoint's own data port (for [`Mode::Bridged`], the client's).
    pub(super) port: u16,
    /// For [`Mode::Bridged`]: the server's passive port, and the client's command.
    pub(super) bridged: Option<Bridged>,
}

/// What a [`Mode::Bridged`] negotiation adds: no proxy port, the server's passive
/// port instead.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bridged {
    /// The port of the server's 227/229.
    pub(super) server_port: u16,
    /// The client sent EPRT (not PORT): the form of the proxy's 200.
    pub(super) eprt: bool,
}

/// A rule commit awaiting its acknowledgement, and the line it releases.
#[derive(Debug)]
pub(super) struct Commit {
    pub(super) txn: u64,
    pub(super) rules: Vec<Rule>,
    pub(super) release: (Side, Bytes),
    /// The proxy ports the rules hold (two for a join).
    pub(super) ports: Vec<u16>,
    /// For a join, the 227/229 the client gets once the server took the PORT/EPRT.
    pub(super) join_reply: Option<Bytes>,
    pub(super) retried: bool,
    /// What the rules were built from, to build them again on another port.
    pub(super) negotiation: Negotiation,
    /// Proxy ports tried so far for this negotiation.
    pub(super) port_tries: u32,
}

#[cfg(test)]
impl Commit {
    /// A commit of no rules; `join_reply` makes it a join's.
    pub(super) fn for_test(txn: u64, join_reply: Option<Bytes>) -> Commit {
        Commit {
            txn,
            rules: Vec::new(),
            release: (Side::Server, Bytes::from_static(b"PORT 1,2,3,4,5,6\r\n")),
            ports: vec![50000],
            join_reply,
            retried: false,
            negotiation: Negotiation {
                mode: Mode::ActivePort,
                passive: None,
                port: 1286,
                bridged: None,
            },
            port_tries: 1,
        }
    }
}

/// The session's standing with the filter: transaction numbers, and the rules in
/// force.
#[derive(Debug)]
pub(super) struct RuleState {
    next_txn: u64,
    /// Whether any commit was issued, so that the end must remove rules.
    pub(super) installed: bool,
    /// The proxy ports of the rules in force.
    pub(super) live_ports: Vec<u16>,
}

impl RuleState {
    pub(super) fn new() -> RuleState {
        RuleState {
            next_txn: 1,
            installed: false,
            live_ports: Vec::new(),
        }
    }

    /// A fresh transaction number.
    pub(super) fn txn(&mut self) -> u64 {
        let txn = self.next_txn;
        self.next_txn += 1;
        txn
    }
}

impl Session {
    /// A 227/229 that answers the PASV/EPSV asked: rules, then the rewritten reply
    /// in the client's form. Or an EPSV refusal to retry as PASV
    /// ([`translate::passive_answer`]).
    pub(super) fn passive_reply(&mut self, cx: &mut Cx<'_>, ask: Ask, lines: &[Bytes]) {
        let asked = match ask.server {
            Passive::Pasv => DataCommand::Pasv,
            Passive::Epsv => DataCommand::Epsv,
        };
        let last = lines.last().map_or(&[][..], |l| &l[..]);
        if translate::passive_answer(asked, self.server_family(), last) == PassiveAnswer::RetryPasv
        {
            let code = ftp::reply_code(last).map_or(0, |(c, _)| c);
            return self.retry_pasv(cx, code);
        }
        self.pairing.take_asked();
        // Whichever of 227 and 229 came (a multi-line one names the port on any line).
        let port = match ftp::reply_code(last) {
            Some((227, _)) => lines.iter().find_map(|l| ftp::parse_227(l)),
            Some((229, _)) => lines.iter().find_map(|l| ftp::parse_229(l)),
            _ => None,
        };
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
        let negotiation = match ask.client {
            ClientAsk::Passive(kind) => Negotiation {
                mode: Mode::Passive,
                passive: Some(kind),
                port,
                bridged: None,
            },
            ClientAsk::Active {
                port: client_port,
                eprt,
            } => Negotiation {
                mode: Mode::Bridged,
                passive: None,
                port: client_port,
                bridged: Some(Bridged {
                    server_port: port,
                    eprt,
                }),
            },
        };
        self.negotiate(cx, negotiation);
    }

    /// PORT/EPRT: rules first, then the rewritten command (servers may connect at once).
    pub(super) fn active(&mut self, cx: &mut Cx<'_>, mode: Mode, port: u16) {
        self.negotiate(
            cx,
            Negotiation {
                mode,
                passive: None,
                port,
                bridged: None,
            },
        );
    }

    /// Picks the proxy ports, builds the rules and the rewritten line, and commits.
    pub(super) fn negotiate(&mut self, cx: &mut Cx<'_>, negotiation: Negotiation) {
        let wanted = match negotiation.mode {
            Mode::Joined => 2,
            Mode::Bridged => 0,
            _ => 1,
        };
        let mut ports = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            match self.pick_port(cx) {
                Some(port) => ports.push(port),
                None => {
                    for port in ports {
                        cx.ports.remove(&port);
                    }
                    let range = cx.cfg.proxy_ports;
                    return self.close(cx, CloseReason::NoProxyPort { range });
                }
            }
        }
        let (rules, release, join_reply) = self.render(cx, negotiation, &ports);
        let txn = self.rules.txn();
        self.rules.installed = true;
        self.emit(
            cx,
            Action::CommitRules {
                txn,
                anchor: self.anchor,
                rules: rules.clone(),
            },
        );
        let port_tries = self.pairing.commit().map_or(0, |c| c.port_tries) + 1;
        self.pairing.start_commit(Commit {
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
        let addrs = self.ends.addrs();
        if let Some(b) = n.bridged {
            info!(
                "{} active: client port {} bridged with server passive port {}",
                self.id, n.port, b.server_port
            );
            let client = if b.eprt {
                DataCommand::Eprt
            } else {
                DataCommand::Port
            };
            let reply = translate::client_reply(client, addrs.orig_server, n.port)
                .expect("PORT and EPRT are answered in any family");
            debug!("{} proxy: {}", self.id, ftp::escape(reply.as_bytes()));
            let rules = data_rules(Mode::Bridged, &addrs, n.port, b.server_port, &cx.cfg.rules);
            return (rules.to_vec(), (Side::Client, Bytes::from(reply)), None);
        }
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
        let mut rules = data_rules(n.mode, &addrs, endpoint_port, proxy_port, &cx.cfg.rules);
        // The PROT level in force now is the one this data connection gets.
        protect_client_leg(n.mode, &mut rules, self.ftps.client_data_security());
        protect_server_leg(n.mode, &mut rules, ftps::server_data_security(&cx.cfg.tls));
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

    pub(super) fn on_commit_result(
        &mut self,
        cx: &mut Cx<'_>,
        txn: u64,
        result: Result<(), FilterError>,
    ) {
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
        let Some(commit) = self.pairing.commit_mut().filter(|c| c.txn == txn) else {
            debug!("{} stale rules acknowledgement {txn}", self.id);
            return;
        };
        match result {
            Ok(()) => {
                let commit = self.pairing.committed().expect("checked above");
                let n = commit.negotiation;
                let extended =
                    n.passive == Some(Passive::Epsv) || n.bridged.is_some_and(|b| b.eprt);
                self.stats.committed(n.mode, extended);
                for old in std::mem::replace(&mut self.rules.live_ports, commit.ports) {
                    cx.ports.remove(&old);
                }
                let (side, line) = commit.release;
                self.send(cx, side, line);
                self.flush_local(cx);
                self.pump(cx);
            }
            Err(FilterError::Busy) if !commit.retried => {
                commit.retried = true;
                self.timers
                    .set(Timer::CommitRetry, cx.now + COMMIT_RETRY_DELAY);
            }
            Err(FilterError::AddrInUse) if commit.port_tries < MAX_PORT_TRIES => {
                // Something else holds the port (the relay binds it for real): take
                // another one. The line is rebuilt, so it always names the port in force.
                let (old, negotiation) = (std::mem::take(&mut commit.ports), commit.negotiation);
                info!("{} proxy port {old:?} in use, trying another", self.id);
                for port in old {
                    cx.ports.remove(&port);
                }
                self.timers.stop(Timer::CommitRetry);
                self.negotiate(cx, negotiation);
            }
            Err(e) => self.close(cx, CloseReason::Filter(e)),
        }
    }
}
