//! Securing the server's control connection (`--server-tls`, RFC 4217).
//!
//! Before the client's first command goes to the server, the proxy makes the
//! server's control connection TLS on its own: with `explicit` it reads the
//! server's `220` greeting, sends `AUTH TLS`, and on `234` has the driver start a
//! TLS client on that socket ([`Action::StartTls`] with [`Side::Server`]); with
//! `implicit` the driver runs TLS from the connect on. Then it sends `PBSZ 0` and
//! `PROT P` ([`ftps::server_after_handshake`]): every data connection to a TLS
//! server is protected, whatever the client's own `PROT` (RFC 4217 lets the FTP
//! client choose; the proxy is that client). The server's greeting is relayed
//! to the client as soon as its `220` is complete, so that the client's own
//! `AUTH TLS`, handshake, `PBSZ` and `PROT` (all answered by the proxy,
//! [`ftps::answered_here`]) run while the proxy secures the server's side: the
//! two handshakes overlap instead of adding up. Every other client command
//! (`USER` first) waits until the server's side is secured, and none of the
//! proxy's commands or their replies reach the client.
//!
//! Anything else ends the session with a `421` to the client and a log line that
//! says why: a server that refuses `AUTH TLS` (a `500` or `534`), `PBSZ` or
//! `PROT`, one that closes, and a TLS handshake that fails (the driver logs the
//! TLS reason, such as a certificate that does not verify, and reports
//! [`crate::Input::TlsFailed`]; the summary then says `server_tls_failed`).
//! The session never goes on in plain text.

use bytes::Bytes;
use log::{debug, error, info};

use crate::event::{Action, CloseReason, Side};
use crate::ftp;
use crate::ftps::{self, ServerTls};

use super::flow::idx;
use super::{Cx, Session};

/// Why securing failed when the driver reports a failed TLS layer or a reset
/// connection: its own log line, just before, says which.
pub(super) const SECURING_FAILED: &str =
    "the TLS handshake or the connection failed (see the log line before)";

/// How much greeting the proxy holds while it secures the connection.
const MAX_HELD_GREETING: usize = 8192;

/// The step of the proxy's own dialogue with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Reading the greeting (plain with `explicit`, over TLS with `implicit`).
    Greeting,
    /// `AUTH TLS` sent.
    Auth,
    /// `PBSZ 0` sent (over TLS).
    Pbsz,
    /// `PROT P` sent (over TLS).
    Prot,
}

/// Where the server's control connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ServerLink {
    /// Plain by configuration, or secured: its lines are the session's.
    Ready,
    /// Being secured; the greeting's lines wait in `held`.
    Securing {
        step: Step,
        /// The code of the multi-line reply being read.
        multi: Option<u16>,
        held: Vec<Bytes>,
        size: usize,
    },
}

impl ServerLink {
    /// The link of a new session under `mode`.
    pub(super) fn new(mode: ServerTls) -> ServerLink {
        match mode {
            ServerTls::Off => ServerLink::Ready,
            ServerTls::Explicit | ServerTls::Implicit => ServerLink::Securing {
                step: Step::Greeting,
                multi: None,
                held: Vec::new(),
                size: 0,
            },
        }
    }

    /// Whether the proxy is still securing the connection: server lines are its
    /// own, and client lines wait.
    pub(super) fn securing(&self) -> bool {
        matches!(self, ServerLink::Securing { .. })
    }

    /// Whether the server's greeting has been relayed while the link is still
    /// being secured: client lines the proxy answers itself may then go.
    pub(super) fn greeted(&self) -> bool {
        matches!(self, ServerLink::Securing { step, .. } if *step != Step::Greeting)
    }
}

impl Session {
    /// One server line while the link is being secured.
    pub(super) fn server_tls_line(&mut self, cx: &mut Cx<'_>, line: Bytes) {
        debug!("{} server (TLS setup): {}", self.id, ftp::escape(&line));
        let ServerLink::Securing {
            step,
            multi,
            held,
            size,
        } = &mut self.server_link
        else {
            return;
        };
        let step = *step;
        if step == Step::Greeting {
            *size += line.len();
            if *size > MAX_HELD_GREETING {
                return self.server_tls_failed(cx, "the server's greeting is too long");
            }
            held.push(line.clone());
        }
        let code = match (*multi, ftp::reply_code(&line)) {
            (Some(c), Some((r, false))) if r == c => c,
            (Some(_), _) => return,
            (None, Some((c, true))) => {
                *multi = Some(c);
                return;
            }
            (None, Some((c, false))) => c,
            (None, None) => {
                return self.server_tls_failed(cx, "the server's reply is not an FTP reply");
            }
        };
        *multi = None;
        let shown = ftp::escape(&line);
        let shown = shown.trim_end();
        match step {
            // "Service ready in nnn minutes": the 220 follows.
            Step::Greeting if code == 120 => {}
            Step::Greeting if code == 220 => {
                let (next, word) = match cx.cfg.tls.server {
                    ServerTls::Explicit => (Step::Auth, ftps::server_preamble(&cx.cfg.tls)[0]),
                    _ => (Step::Pbsz, ftps::server_after_handshake(&cx.cfg.tls)[0]),
                };
                self.server_tls_send(cx, next, word);
                self.release_greeting(cx);
            }
            Step::Greeting => {
                self.server_tls_failed(cx, &format!("the server greeted with '{shown}'"));
            }
            Step::Auth if code == 234 => {
                let pending = self.inbox[idx(Side::Server)].take_all();
                info!("{} server control connection switches to TLS", self.id);
                self.emit(
                    cx,
                    Action::StartTls {
                        side: Side::Server,
                        pending,
                    },
                );
                let word = ftps::server_after_handshake(&cx.cfg.tls)[0];
                self.server_tls_send(cx, Step::Pbsz, word);
            }
            Step::Auth => {
                self.server_tls_failed(cx, &format!("the server refused AUTH TLS with '{shown}'"))
            }
            Step::Pbsz if (200..300).contains(&code) => {
                let word = ftps::server_after_handshake(&cx.cfg.tls)[1];
                self.server_tls_send(cx, Step::Prot, word);
            }
            Step::Pbsz => {
                self.server_tls_failed(cx, &format!("the server refused PBSZ 0 with '{shown}'"))
            }
            Step::Prot if (200..300).contains(&code) => self.server_tls_ready(cx),
            Step::Prot => {
                self.server_tls_failed(cx, &format!("the server refused PROT P with '{shown}'"))
            }
        }
    }

    /// Sends one of the proxy's own commands and waits for its reply in `next`.
    fn server_tls_send(&mut self, cx: &mut Cx<'_>, next: Step, word: &'static str) {
        if let ServerLink::Securing { step, .. } = &mut self.server_link {
            *step = next;
        }
        debug!(
            "{} proxy to server: {}",
            self.id,
            ftp::escape(word.as_bytes())
        );
        self.send(cx, Side::Server, Bytes::from_static(word.as_bytes()));
    }

    /// The greeting is complete: it goes to the client as the usual dialogue's
    /// first reply while the proxy goes on securing the server's side.
    fn release_greeting(&mut self, cx: &mut Cx<'_>) {
        let held = match &mut self.server_link {
            ServerLink::Securing { held, size, .. } => {
                *size = 0;
                std::mem::take(held)
            }
            ServerLink::Ready => return,
        };
        for line in held {
            if !self.is_open() {
                return;
            }
            self.server_line(cx, line, false);
        }
    }

    /// The server's control connection is TLS and its data connections are
    /// protected: the client's lines may go to it.
    fn server_tls_ready(&mut self, cx: &mut Cx<'_>) {
        self.release_greeting(cx);
        self.server_link = ServerLink::Ready;
        info!(
            "{} server control connection is TLS; its data connections are protected (PROT P)",
            self.id
        );
    }

    /// Ends a session whose server connection could not be secured: a log line
    /// with `why`, and a `421` to the client (never a plain-text session).
    pub(super) fn server_tls_failed(&mut self, cx: &mut Cx<'_>, why: &str) {
        self.securing_failed(cx, why, CloseReason::ServerRefused)
    }

    /// [`Session::server_tls_failed`] with the summary's `reason`: the same `421`
    /// and log line whatever broke, but a failed TLS layer
    /// ([`CloseReason::TlsFailed`]) is told apart from a server that refused or
    /// closed.
    pub(super) fn securing_failed(&mut self, cx: &mut Cx<'_>, why: &str, reason: CloseReason) {
        if !self.server_link.securing() {
            return;
        }
        self.server_link = ServerLink::Ready;
        let why: String = why.chars().filter(|c| !c.is_control()).collect();
        error!(
            "{} cannot secure the control connection to server {}: {why}",
            self.id,
            self.ends.server.ip()
        );
        let line = format!("421 Cannot reach the server securely: {why}\r\n",);
        self.send(cx, Side::Client, Bytes::from(line));
        self.close(cx, reason);
    }
}
