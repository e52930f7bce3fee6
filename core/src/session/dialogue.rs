//! The control dialogue: what the proxy does with each client command and each
//! server reply line.
//!
//! Commands are forwarded, answered by the proxy itself, or become negotiations
//! (`negotiation.rs`); reply lines are relayed, filtered (FEAT), collected and
//! rewritten (227/229, a join's answer), or end the session (421, out of step).
//! Which reply answers which command is the pairing's (`pairing.rs`); this module
//! asks it, and tells it what happened.

use bytes::Bytes;
use log::{debug, error, info, warn};

use crate::event::{Action, CloseReason, Side, MAX_PIPELINED};
use crate::ftp::{self, Command};
use crate::ftps::{self, Answer};
use crate::rules::{Family, Mode, MIN_DATA_PORT};
use crate::translate::{self, DataCommand, ServerDataMode};

use super::flow::idx;
use super::negotiation::Negotiation;
use super::pairing::{
    Ask, Awaited, ClientAsk, Collected, Forwarded, Multi, MultiKind, Owed, Passive,
};
use super::timer::Timer;
use super::{Cx, Phase, Session};

/// Replies the proxy itself gives in place of the original's dropped connection.
const REPLY_ANON_ONLY: &str = "500 Only anonymous FTP allowed\r\n";
const REPLY_NO_V4_MODES: &str = "500 PASV and PORT not allowed with IPv6\r\n";
const REPLY_BAD_PORT: &str = "501 Bad data port (below 1024 or malformed), refused by proxy\r\n";
pub(super) const REPLY_BAD_PASSIVE: &str =
    "425 Cannot open passive connection: bad port from server\r\n";
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

/// How much of a multi-line 227/229 reply is collected before it is refused.
const MAX_HELD_REPLY: usize = 8192;

impl Session {
    /// Whether one more command may await its reply; ends the session when not
    /// ([`MAX_PIPELINED`]): the caller must then neither forward the command nor commit
    /// rules for it.
    #[must_use]
    fn may_pipeline(&mut self, cx: &mut Cx<'_>) -> bool {
        if self.pairing.owed() >= MAX_PIPELINED {
            self.close(cx, CloseReason::TooManyPipelined);
            return false;
        }
        true
    }

    /// Records what a command waits for. Returns `false` when that ended the session
    /// ([`may_pipeline`](Self::may_pipeline)).
    #[must_use]
    pub(super) fn expect(&mut self, cx: &mut Cx<'_>, owed: Owed) -> bool {
        if !self.may_pipeline(cx) {
            return false;
        }
        self.pairing.push(owed);
        self.flush_local(cx);
        true
    }

    /// Answers locally in order: a proxy reply goes out only once every reply owed
    /// for earlier commands has been relayed (and after the greeting).
    fn local_reply(&mut self, cx: &mut Cx<'_>, reply: &'static str) {
        debug!("{} proxy: {}", self.id, ftp::escape(reply.as_bytes()));
        // Nothing follows, whether or not this ended the session.
        let _ = self.expect(cx, Owed::Local(reply));
    }

    /// Sends the local replies whose turn has come. After the `234` to `AUTH TLS`
    /// the driver is told to start TLS, and handed what the client sent after its
    /// `AUTH` line unparsed: the start of its handshake.
    pub(super) fn flush_local(&mut self, cx: &mut Cx<'_>) {
        while let Some(reply) = self.pairing.pop_local() {
            self.send(cx, Side::Client, Bytes::from_static(reply.text.as_bytes()));
            if reply.then_tls {
                self.tls_wait = false;
                let pending = self.inbox[idx(Side::Client)].take_all();
                info!("{} client control connection switches to TLS", self.id);
                self.emit(
                    cx,
                    Action::StartTls {
                        side: Side::Client,
                        pending,
                    },
                );
            }
        }
    }

    /// The RFC 4217 commands, when the proxy terminates TLS from clients
    /// ([`crate::ftps`]): whether the line was answered here (`PBSZ`, `PROT`, `CCC`
    /// and `AUTH` never reach the server, whose leg stays plain).
    fn ftps_line(&mut self, cx: &mut Cx<'_>, line: &[u8]) -> bool {
        match self.ftps.command(&cx.cfg.tls, line) {
            Answer::Pass => false,
            Answer::Reply(reply) => {
                // Logged by local_reply.
                self.local_reply(cx, reply);
                true
            }
            Answer::ReplyThenStartTls(reply) => {
                debug!("{} proxy: {}", self.id, ftp::escape(reply.as_bytes()));
                // Nothing after this line is parsed until the switch.
                self.tls_wait = true;
                let _ = self.expect(cx, Owed::LocalThenTls(reply));
                true
            }
        }
    }

    pub(super) fn client_line(&mut self, cx: &mut Cx<'_>, line: Bytes) {
        if ftp::is_pass(&line) {
            debug!("{} client: PASS ****", self.id);
        } else {
            debug!("{} client: {}", self.id, ftp::escape(&line));
        }
        self.stats.command();
        if self.ftps_line(cx, &line) {
            return;
        }
        let cmd = ftp::classify(&line);
        if let Some(reply) =
            translate::answered_by_proxy(&line, self.server_family(), self.translated(cx))
        {
            info!(
                "{} answering '{}' itself: a translated session",
                self.id,
                ftp::escape(&line)
            );
            return self.local_reply(cx, reply);
        }
        match cmd {
            Command::Auth | Command::Pbsz | Command::Prot => {
                info!(
                    "{} refusing '{}': no TLS through the proxy",
                    self.id,
                    ftp::escape(&line)
                );
                self.local_reply(cx, REPLY_NO_TLS);
            }
            Command::Pasv | Command::Port(_)
                if cx.cfg.ipv6 || self.client_family() == Family::Inet6 =>
            {
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
                    let eprt = matches!(cmd, Command::Eprt(_));
                    let client = if eprt {
                        DataCommand::Eprt
                    } else {
                        DataCommand::Port
                    };
                    let server = self.server_command(cx, client);
                    if let Some(server) = passive_of(server) {
                        let ask = Ask {
                            client: ClientAsk::Active { port, eprt },
                            server,
                        };
                        self.pairing.hold(ask, line);
                        self.release_held(cx);
                    } else {
                        self.forward_active(cx, port, eprt);
                    }
                }
            },
            Command::User if cx.cfg.anonymous_only && !ftp::is_anonymous_user(&line) => {
                self.local_reply(cx, REPLY_ANON_ONLY);
            }
            // Not a negotiation: no reply to it names a port. Forwarded like any
            // command (the original holds it as an EPSV whose 229 never comes).
            Command::Epsv if ftp::is_epsv_all(&line) => {
                self.pairing.set_epsv_all();
                if self.expect(cx, Owed::Reply(Forwarded::Other)) {
                    self.send(cx, Side::Server, line);
                }
            }
            Command::Pasv | Command::Epsv => {
                let (kind, client) = if cmd == Command::Pasv {
                    (Passive::Pasv, DataCommand::Pasv)
                } else {
                    (Passive::Epsv, DataCommand::Epsv)
                };
                // An active server command (`--server-data-mode active`) is the
                // join, decided when the request is released; until then the
                // server is asked in the client's kind.
                let server = passive_of(self.server_command(cx, client)).unwrap_or(kind);
                let ask = Ask {
                    client: ClientAsk::Passive(kind),
                    server,
                };
                self.pairing.hold(ask, line);
                self.release_held(cx);
            }
            _ => {
                let to = if cmd == Command::Feat {
                    Forwarded::Feat
                } else if ftp::may_carry_client_lines(&line) {
                    Forwarded::Steerable
                } else if ftp::is_transfer(&line) {
                    Forwarded::Transfer
                } else {
                    Forwarded::Other
                };
                // Servers answer any command word, even one letter (`500`), but
                // not a line with none (empty, blanks, Telnet sequences only).
                let word = ftp::command_start(&line);
                let has_word = word
                    .iter()
                    .any(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
                if has_word && !self.expect(cx, Owed::Reply(to)) {
                    return;
                }
                self.send(cx, Side::Server, line);
            }
        }
    }

    /// Forwards the held PASV/EPSV once the server owes nothing else
    /// ([`Pairing::release`](super::pairing::Pairing::release)). Returns whether it
    /// went out.
    pub(super) fn release_held(&mut self, cx: &mut Cx<'_>) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        let Some((ask, line)) = self.pairing.release() else {
            return false;
        };
        match ask.client {
            // A PORT/EPRT is bridged only where the server's 227/229 is trusted;
            // otherwise it goes to the server as the original sends it.
            ClientAsk::Active { port, eprt } if self.pairing.is_steered() => {
                info!(
                    "{} active transfer not bridged: an earlier multi-line reply may hold \
                     client-chosen lines, so the server is sent PORT/EPRT",
                    self.id
                );
                self.forward_active(cx, port, eprt);
            }
            ClientAsk::Passive(kind) if self.pairing.is_steered() => {
                self.passive_untrusted(cx, ask, kind, line)
            }
            ClientAsk::Passive(kind)
                if cx.cfg.server_data_mode == ServerDataMode::Active
                    && !self.pairing.epsv_all() =>
            {
                info!(
                    "{} passive transfer served joined: --server-data-mode active",
                    self.id
                );
                self.join(cx, kind);
            }
            _ => self.ask(cx, ask, line),
        }
        true
    }

    /// A client's PORT/EPRT to `port` goes to the server as PORT/EPRT: rules, then
    /// the rewritten line; the server's reply answers it.
    fn forward_active(&mut self, cx: &mut Cx<'_>, port: u16, eprt: bool) {
        let mode = if eprt {
            Mode::ActiveEprt
        } else {
            Mode::ActivePort
        };
        if self.expect(cx, Owed::Reply(Forwarded::Other)) {
            self.active(cx, mode, port);
        }
    }

    /// Serves a client's PASV/EPSV with the proxy's PORT/EPRT to the server, the
    /// two connections joined by the relay ([`Mode::Joined`]).
    fn join(&mut self, cx: &mut Cx<'_>, kind: Passive) {
        if self.may_pipeline(cx) {
            self.negotiate(
                cx,
                Negotiation {
                    mode: Mode::Joined,
                    passive: Some(kind),
                    port: 0,
                    bridged: None,
                },
            );
        }
    }

    /// Sends a released PASV/EPSV to the server. Whatever the server already sent
    /// cannot answer a command it has not seen: those bytes are stale. The client's
    /// own line goes when the server is asked the same; otherwise the proxy's.
    fn ask(&mut self, cx: &mut Cx<'_>, ask: Ask, line: Bytes) {
        let stale = self.inbox[idx(Side::Server)].len();
        let line = if ask.client == ClientAsk::Passive(ask.server) {
            line
        } else {
            let word = passive_line(ask.server);
            debug!("{} proxy: {}", self.id, ftp::escape(word.as_bytes()));
            Bytes::from_static(word.as_bytes())
        };
        if self.may_pipeline(cx) {
            self.pairing.ask(ask, stale);
            self.flush_local(cx);
            self.send(cx, Side::Server, line);
        }
    }

    /// The server refused the EPSV asked (500, 502, 522): PASV goes instead, and
    /// every later passive request of the session goes as PASV at once.
    pub(super) fn retry_pasv(&mut self, cx: &mut Cx<'_>, code: u16) {
        info!(
            "{} server refused EPSV ({code}): asking PASV, and PASV from now on",
            self.id
        );
        self.support.epsv_refused = true;
        let stale = self.inbox[idx(Side::Server)].len();
        self.pairing.retry(Passive::Pasv, stale);
        debug!("{} proxy: PASV", self.id);
        self.send(cx, Side::Server, Bytes::from_static(b"PASV\r\n"));
    }

    /// What the proxy sends the server for the client's `client` command.
    fn server_command(&self, cx: &Cx<'_>, client: DataCommand) -> DataCommand {
        translate::server_command(
            client,
            self.server_family(),
            cx.cfg.server_data_mode,
            self.support,
        )
    }

    /// A PASV/EPSV once the server's replies may hold client-chosen lines: no port
    /// from a server reply is trusted. With a relay the transfer is served joined
    /// (the proxy sends PORT/EPRT to the server and joins its connection with the
    /// client's); with a kernel filter it is refused, unless `--server-data-ports`
    /// bounds what the server's answer may name.
    fn passive_untrusted(&mut self, cx: &mut Cx<'_>, ask: Ask, kind: Passive, line: Bytes) {
        if cx.cfg.relay && !self.pairing.epsv_all() {
            info!(
                "{} passive transfer served joined (the proxy's PORT/EPRT to the server): \
                 an earlier multi-line reply may hold client-chosen lines",
                self.id
            );
            self.join(cx, kind);
        } else if cx.cfg.server_data_ports.is_some() {
            // The answer may still be forged, but can only name the server's range.
            self.ask(cx, ask, line);
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
    pub(super) fn desync(&mut self, cx: &mut Cx<'_>, line: &[u8], why: &str) {
        error!(
            "{} server reply '{}' {why}: replies out of step with commands",
            self.id,
            ftp::escape(line)
        );
        if self.rules.installed && self.phase == Phase::Open {
            let anchor = self.anchor;
            self.emit(cx, Action::EndDataConnections { anchor });
        }
        self.close(cx, CloseReason::ReplyDesync);
    }

    /// One server line; `stale` if it was buffered before the last PASV/EPSV went out.
    pub(super) fn server_line(&mut self, cx: &mut Cx<'_>, line: Bytes, stale: bool) {
        debug!("{} server: {}", self.id, ftp::escape(&line));
        if let Some(m) = self.pairing.reply_mut() {
            let code = m.code;
            let last = ftp::reply_code(&line) == Some((code, false));
            match &mut m.kind {
                MultiKind::Collect { lines, size } => {
                    *size += line.len();
                    lines.push(line);
                    if *size > MAX_HELD_REPLY {
                        return self.close(cx, CloseReason::NotClean(Side::Server));
                    }
                    if last {
                        let lines = std::mem::take(lines);
                        self.pairing.end_reply();
                        self.collected(cx, code, &lines);
                    }
                }
                MultiKind::Closing => {
                    self.send(cx, Side::Client, line);
                    if last {
                        self.pairing.end_reply();
                        self.close(cx, CloseReason::ServerClosing);
                    }
                }
                MultiKind::Feat if !last && ftp::is_security_feature(&line) => {
                    debug!("{} proxy: not relaying FEAT line", self.id);
                }
                MultiKind::Feat | MultiKind::Relay => {
                    if last && matches!(m.kind, MultiKind::Feat) {
                        // The proxy's own security features, where the server's were.
                        for feat in ftps::feat_lines(&cx.cfg.tls) {
                            self.send(cx, Side::Client, Bytes::from_static(feat.as_bytes()));
                        }
                    }
                    self.send(cx, Side::Client, line);
                    if last {
                        self.pairing.end_reply();
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
            self.pairing.closing_began();
            self.send(cx, Side::Client, line);
            if more {
                self.pairing.begin_reply(Multi {
                    code: 421,
                    kind: MultiKind::Closing,
                });
                return;
            }
            return self.close(cx, CloseReason::ServerClosing);
        }
        // Anything else outside a reply must answer an outstanding command and must
        // not predate the PASV/EPSV.
        let greeted = self.pairing.greeted();
        if greeted {
            if stale {
                return self.desync(cx, &line, "was sent before the server saw PASV/EPSV");
            }
            if !self.pairing.reply_owed() {
                return self.desync(cx, &line, "answers no command");
            }
        }
        let Some((code, more)) = reply else {
            return self.send(cx, Side::Client, line);
        };
        let oldest = self.pairing.oldest();
        // A 227 and a 229 are both understood, whichever was asked; an EPSV
        // refusal from an IPv4 server is held too, to be retried as PASV.
        let refused_epsv = |ask: Ask| {
            ask.server == Passive::Epsv
                && self.server_family() == Family::Inet
                && matches!(code, 500 | 502 | 522)
        };
        let collect = greeted
            && match oldest {
                Some(Awaited::Passive(ask)) => matches!(code, 227 | 229) || refused_epsv(ask),
                Some(Awaited::Join) => true,
                _ => false,
            };
        match (collect, more) {
            (true, true) => {
                let size = line.len();
                self.pairing.begin_reply(Multi {
                    code,
                    kind: MultiKind::Collect {
                        lines: vec![line],
                        size,
                    },
                });
            }
            (true, false) => self.collected(cx, code, &[line]),
            (false, true) => {
                let feat = code == 211 && oldest == Some(Awaited::Forwarded(Forwarded::Feat));
                let steered = oldest == Some(Awaited::Forwarded(Forwarded::Steerable));
                if greeted && steered && self.pairing.steer() {
                    info!(
                        "{} multi-line {code} reply: from now on no server reply is trusted \
                         to name a passive data port",
                        self.id
                    );
                }
                self.pairing.begin_reply(Multi {
                    code,
                    kind: if feat {
                        MultiKind::Feat
                    } else {
                        MultiKind::Relay
                    },
                });
                self.send(cx, Side::Client, line);
            }
            (false, false) => {
                self.send(cx, Side::Client, line);
                self.final_reply(cx, code);
            }
        }
    }

    /// A held reply is complete: a 227/229 to rewrite, or the server's answer to the
    /// proxy's PORT/EPRT of a join (a preliminary 1xx is dropped and the final one
    /// awaited).
    fn collected(&mut self, cx: &mut Cx<'_>, code: u16, lines: &[Bytes]) {
        match self.pairing.collecting_for() {
            Some(Collected::Passive(ask)) => self.passive_reply(cx, ask, lines),
            Some(Collected::Join) if code < 200 => {}
            Some(Collected::Join) => {
                let reply = match self.pairing.join_answered() {
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
            // A reply is collected only while the pairing waits for one of the two
            // (and the pairing cannot move on while it is collected).
            None => {}
        }
    }

    /// A complete reply (not 1xx) was relayed: it answers the oldest command.
    fn final_reply(&mut self, cx: &mut Cx<'_>, code: u16) {
        if code < 200 {
            return;
        }
        if code == 230 {
            self.timers.stop(Timer::Login);
        }
        if self.pairing.final_reply() == Some(Awaited::Forwarded(Forwarded::Transfer)) {
            self.transfer_done(cx);
        }
        self.flush_local(cx);
    }

    /// The final reply to a data-transfer command has been relayed: the driver
    /// learns that its transfer is over. Only sessions that ever committed rules can
    /// have data connections to tell about.
    fn transfer_done(&self, cx: &mut Cx<'_>) {
        if self.rules.installed {
            let anchor = self.anchor;
            self.emit(cx, Action::TransferDone { anchor });
        }
    }
}

/// PASV or EPSV, as the pairing names it; `None` for PORT/EPRT.
fn passive_of(cmd: DataCommand) -> Option<Passive> {
    match cmd {
        DataCommand::Pasv => Some(Passive::Pasv),
        DataCommand::Epsv => Some(Passive::Epsv),
        _ => None,
    }
}

/// The proxy's own PASV/EPSV line.
fn passive_line(kind: Passive) -> &'static str {
    match kind {
        Passive::Pasv => "PASV\r\n",
        Passive::Epsv => "EPSV\r\n",
    }
}
