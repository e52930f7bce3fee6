//! RFC 4217 (FTP over TLS) decisions, IO-free and free of crypto.
//!
//! This module decides what the proxy answers to `AUTH`, `PBSZ`, `PROT` and `CCC`
//! when it terminates TLS from clients (reverse mode, issue 16), what it sends a
//! server under `--server-tls` (the session's `server_tls.rs` runs that
//! dialogue), when a side must switch to TLS, which data legs are protected
//! ([`Security`]), and what `--tls-required` refuses. The driver (runtime-mio) runs handshakes and the record
//! layer; nothing here touches bytes on the wire except to find where plaintext ends.
//!
//! Reply codes (RFC 2228 defines the commands and their replies, RFC 4217 their
//! use with TLS):
//! * `AUTH TLS`, `AUTH SSL`, `AUTH TLS-C`, `AUTH TLS-P`: `234`, then the client's
//!   control connection switches to TLS once that line is flushed
//!   ([`Answer::ReplyThenStartTls`]). Any other mechanism: `504` (not
//!   implemented for that parameter). A second `AUTH` on a protected connection:
//!   `503` (bad sequence). Without TLS configured the proxy keeps today's `534`
//!   (session/dialogue.rs).
//! * `PBSZ`: `503` before `AUTH`; otherwise `200 PBSZ=0` (for TLS the only size is
//!   0, RFC 4217).
//! * `PROT`: `503` before `PBSZ`; `P` and `C` `200`; `S` and `E` `536` (level not
//!   supported by the mechanism); anything else `504` (RFC 2228, `PROT`).
//! * `CCC`: `534` (request denied for policy reasons): the proxy never reverts a
//!   protected control connection to plain text.
//! * `--tls-required`: `USER` and `PASS` before a completed `AUTH` get `530` (not
//!   logged in, RFC 959; vsftpd's `force_local_logins_ssl` answers the same); a
//!   transfer (`RETR`, `STOR`, `STOU`, `APPE`, `LIST`, `NLST`, `MLSD`) without
//!   `PROT P` gets `521` (RFC 4217's reply for a data connection the server will
//!   not open with the current `PROT` setting).

use crate::relay::Security;

/// TLS towards clients (the proxy holds the certificate; reverse mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientTls {
    /// Plain text; `AUTH` is answered `534` as without FTPS support.
    #[default]
    Off,
    /// Explicit FTPS: plain greeting, `AUTH TLS` switches.
    Explicit,
    /// Implicit FTPS (`--tls-implicit`, the port-990 convention): TLS from the
    /// first byte; the control connection counts as protected from the start.
    Implicit,
}

/// TLS towards the server (`--server-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerTls {
    /// Plain text.
    #[default]
    Off,
    /// The proxy sends `AUTH TLS` after the server's greeting.
    Explicit,
    /// TLS from the first byte.
    Implicit,
}

/// The FTPS settings of a reverse-mode listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsPolicy {
    /// Towards clients.
    pub client: ClientTls,
    /// `--tls-required`: no login before `AUTH`, no transfer without `PROT P`.
    pub required: bool,
    /// Towards the server.
    pub server: ServerTls,
}

/// The data protection level a client asked for with `PROT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prot {
    /// `PROT C` (and the level before any `PROT`).
    #[default]
    Clear,
    /// `PROT P`.
    Private,
}

/// What to do with one client line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not the proxy's to answer: the usual dialogue goes on with it.
    Pass,
    /// Answer with this line and go on.
    Reply(&'static str),
    /// Answer with this line; once it is flushed, the client's control connection
    /// switches to TLS. Bytes after the command's line feed in the same read are
    /// TLS records ([`plaintext_end`]).
    ReplyThenStartTls(&'static str),
}

pub(crate) const REPLY_AUTH_OK: &str = "234 AUTH command ok; starting TLS connection\r\n";
pub(crate) const REPLY_AUTH_MECH: &str = "504 Unsupported security mechanism; use AUTH TLS\r\n";
pub(crate) const REPLY_AUTH_AGAIN: &str = "503 Already protected by TLS\r\n";
pub(crate) const REPLY_PBSZ_OK: &str = "200 PBSZ=0\r\n";
pub(crate) const REPLY_PBSZ_EARLY: &str = "503 PBSZ needs a completed AUTH first\r\n";
pub(crate) const REPLY_PROT_OK: &str = "200 PROT command ok\r\n";
pub(crate) const REPLY_PROT_EARLY: &str = "503 PROT needs PBSZ first\r\n";
pub(crate) const REPLY_PROT_LEVEL: &str = "536 Only PROT P and PROT C are supported\r\n";
pub(crate) const REPLY_PROT_BAD: &str = "504 Unknown PROT level\r\n";
pub(crate) const REPLY_CCC: &str =
    "534 CCC refused by policy: the control connection stays protected\r\n";
pub(crate) const REPLY_LOGIN_NEEDS_TLS: &str = "530 This proxy requires AUTH TLS before login\r\n";
pub(crate) const REPLY_TRANSFER_NEEDS_PROT: &str =
    "521 Data connections must be protected: send PBSZ 0 and PROT P\r\n";

/// One session's RFC 4217 state on the client side.
#[derive(Debug, Clone, Default)]
pub struct FtpsState {
    /// The control connection is (or, once the 234 is flushed, will be) TLS.
    control: bool,
    /// `PBSZ` was accepted.
    pbsz: bool,
    /// The level the client asked for.
    prot: Prot,
}

/// The command word of `line` (after blanks and Telnet IAC) and its argument, both
/// without surrounding blanks and the line end.
fn split(line: &[u8]) -> (&[u8], &[u8]) {
    let line = crate::ftp::command_start(line);
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    let line = &line[..end];
    let word_end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    let arg = &line[word_end..];
    let arg_start = arg
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(arg.len());
    (&line[..word_end], &arg[arg_start..])
}

fn is(word: &[u8], name: &[u8]) -> bool {
    word.eq_ignore_ascii_case(name)
}

/// Whether the proxy answers `line` itself whatever the session's state, never
/// passing it to the server: `AUTH`, `PBSZ` and `PROT` always (terminated here,
/// or refused when no TLS runs towards clients), `CCC` when TLS towards clients
/// is on. Such a line may be handled while the server's connection is still
/// being secured (`--server-tls`): it neither needs nor reaches the server.
pub fn answered_here(policy: &TlsPolicy, line: &[u8]) -> bool {
    let (word, _) = split(line);
    is(word, b"AUTH")
        || is(word, b"PBSZ")
        || is(word, b"PROT")
        || (is(word, b"CCC") && policy.client != ClientTls::Off)
}

impl FtpsState {
    /// The state a new session starts in under `policy`.
    pub fn new(policy: &TlsPolicy) -> FtpsState {
        FtpsState {
            control: policy.client == ClientTls::Implicit,
            ..FtpsState::default()
        }
    }

    /// Whether the client's control connection is protected.
    pub fn control_protected(&self) -> bool {
        self.control
    }

    /// The level of the client's next data connections.
    pub fn prot(&self) -> Prot {
        self.prot
    }

    /// How the relay carries the client's data legs from now on.
    pub fn client_data_security(&self) -> Security {
        match self.prot {
            Prot::Private => Security::Tls,
            Prot::Clear => Security::Plain,
        }
    }

    /// Decides on one client line (LF included). With `policy.client` off, every
    /// line passes: the dialogue's plain-text answers stay as they are.
    pub fn command(&mut self, policy: &TlsPolicy, line: &[u8]) -> Answer {
        if policy.client == ClientTls::Off {
            return Answer::Pass;
        }
        let (word, arg) = split(line);
        if is(word, b"AUTH") {
            if self.control {
                return Answer::Reply(REPLY_AUTH_AGAIN);
            }
            let known = [&b"TLS"[..], b"SSL", b"TLS-C", b"TLS-P"]
                .iter()
                .any(|m| arg.eq_ignore_ascii_case(m));
            if !known {
                return Answer::Reply(REPLY_AUTH_MECH);
            }
            self.control = true;
            return Answer::ReplyThenStartTls(REPLY_AUTH_OK);
        }
        if is(word, b"PBSZ") {
            if !self.control {
                return Answer::Reply(REPLY_PBSZ_EARLY);
            }
            self.pbsz = true;
            return Answer::Reply(REPLY_PBSZ_OK);
        }
        if is(word, b"PROT") {
            if !self.pbsz {
                return Answer::Reply(REPLY_PROT_EARLY);
            }
            return Answer::Reply(match arg {
                [b'P' | b'p'] => {
                    self.prot = Prot::Private;
                    REPLY_PROT_OK
                }
                [b'C' | b'c'] => {
                    self.prot = Prot::Clear;
                    REPLY_PROT_OK
                }
                [b'S' | b's' | b'E' | b'e'] => REPLY_PROT_LEVEL,
                _ => REPLY_PROT_BAD,
            });
        }
        if is(word, b"CCC") {
            return Answer::Reply(REPLY_CCC);
        }
        if policy.required {
            if (is(word, b"USER") || is(word, b"PASS")) && !self.control {
                return Answer::Reply(REPLY_LOGIN_NEEDS_TLS);
            }
            let transfer = [
                &b"RETR"[..],
                b"STOR",
                b"STOU",
                b"APPE",
                b"LIST",
                b"NLST",
                b"MLSD",
            ]
            .iter()
            .any(|t| is(word, t));
            if transfer && self.prot != Prot::Private {
                return Answer::Reply(REPLY_TRANSFER_NEEDS_PROT);
            }
        }
        Answer::Pass
    }
}

/// The lines a `FEAT` reply gains when the proxy terminates TLS from clients (the
/// server's own `AUTH`/`PBSZ`/`PROT` lines are filtered out as today, since they
/// describe the server's leg, not the client's).
pub fn feat_lines(policy: &TlsPolicy) -> &'static [&'static str] {
    match policy.client {
        ClientTls::Off => &[],
        ClientTls::Explicit | ClientTls::Implicit => &[" AUTH TLS\r\n", " PBSZ\r\n", " PROT\r\n"],
    }
}

/// Where the plaintext of a control read ends once an `AUTH` line switched the
/// connection: the index just after the first line feed in `buf`, or `None` if the
/// line is not complete yet. Everything from there on is TLS records and must go to
/// the TLS layer, never to the line parser.
pub fn plaintext_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
}

/// What the proxy sends the server, in order, after the server's greeting under
/// `--server-tls explicit` before relaying the client's first command: `AUTH TLS`
/// (on `234` the driver starts TLS towards the server), then `PBSZ 0` and `PROT P`
/// when the server's data legs are to be protected. With `off` or `implicit`
/// nothing is sent (implicit is TLS from the connect on; `PBSZ`/`PROT` still follow
/// the handshake, see [`server_after_handshake`]).
pub fn server_preamble(policy: &TlsPolicy) -> &'static [&'static str] {
    match policy.server {
        ServerTls::Explicit => &["AUTH TLS\r\n"],
        ServerTls::Off | ServerTls::Implicit => &[],
    }
}

/// The commands sent to the server once its control connection is TLS: every data
/// leg towards a TLS server is protected (`PROT P`), whatever the client chose, so
/// that servers that require protection (`pure-ftpd -Y 3`, vsftpd's
/// `force_local_data_ssl`) accept the transfer.
pub fn server_after_handshake(policy: &TlsPolicy) -> &'static [&'static str] {
    match policy.server {
        ServerTls::Off => &[],
        ServerTls::Explicit | ServerTls::Implicit => &["PBSZ 0\r\n", "PROT P\r\n"],
    }
}

/// Whether a server reply line accepts the proxy's `AUTH TLS` (`234`).
pub fn server_accepts_auth(reply: &[u8]) -> bool {
    reply.starts_with(b"234 ")
}

/// How the relay carries the server's data legs under `policy`.
pub fn server_data_security(policy: &TlsPolicy) -> Security {
    match policy.server {
        ServerTls::Off => Security::Plain,
        ServerTls::Explicit | ServerTls::Implicit => Security::TlsToServer,
    }
}

#[cfg(test)]
mod tests {
    use super::Answer::{Pass, Reply, ReplyThenStartTls};
    use super::*;

    /// Asserts `line`'s answer in session `s`, naming the line when it differs.
    fn says(s: &mut FtpsState, p: &TlsPolicy, line: &[u8], want: Answer) {
        let got = s.command(p, line);
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(line));
    }

    const EXPLICIT: TlsPolicy = TlsPolicy {
        client: ClientTls::Explicit,
        required: false,
        server: ServerTls::Off,
    };
    const REQUIRED: TlsPolicy = TlsPolicy {
        client: ClientTls::Explicit,
        required: true,
        server: ServerTls::Off,
    };

    #[test]
    fn off_passes_every_line_so_the_plain_answers_stay() {
        let p = TlsPolicy::default();
        let mut s = FtpsState::new(&p);
        for l in [
            &b"AUTH TLS\r\n"[..],
            b"PBSZ 0\r\n",
            b"PROT P\r\n",
            b"CCC\r\n",
        ] {
            assert_eq!(s.command(&p, l), Answer::Pass);
        }
        assert!(feat_lines(&p).is_empty());
        assert_eq!(s.client_data_security(), Security::Plain);
    }

    #[test]
    fn explicit_sequence_auth_pbsz_prot() {
        let mut s = FtpsState::new(&EXPLICIT);
        assert!(!s.control_protected());
        says(&mut s, &EXPLICIT, b"PBSZ 0\r\n", Reply(REPLY_PBSZ_EARLY));
        says(&mut s, &EXPLICIT, b"PROT P\r\n", Reply(REPLY_PROT_EARLY));
        says(
            &mut s,
            &EXPLICIT,
            b"AUTH KERBEROS_V4\r\n",
            Reply(REPLY_AUTH_MECH),
        );
        says(
            &mut s,
            &EXPLICIT,
            b" auth tls\r\n",
            ReplyThenStartTls(REPLY_AUTH_OK),
        );
        assert!(s.control_protected());
        says(&mut s, &EXPLICIT, b"AUTH TLS\r\n", Reply(REPLY_AUTH_AGAIN));
        says(&mut s, &EXPLICIT, b"PBSZ 0\r\n", Reply(REPLY_PBSZ_OK));
        says(&mut s, &EXPLICIT, b"PROT S\r\n", Reply(REPLY_PROT_LEVEL));
        says(&mut s, &EXPLICIT, b"PROT X\r\n", Reply(REPLY_PROT_BAD));
        assert_eq!(s.prot(), Prot::Clear);
        says(&mut s, &EXPLICIT, b"PROT P\r\n", Reply(REPLY_PROT_OK));
        assert_eq!(s.client_data_security(), Security::Tls);
        says(&mut s, &EXPLICIT, b"prot c\n", Reply(REPLY_PROT_OK));
        assert_eq!(s.client_data_security(), Security::Plain);
        says(&mut s, &EXPLICIT, b"CCC\r\n", Reply(REPLY_CCC));
        says(&mut s, &EXPLICIT, b"RETR x\r\n", Pass);
        says(&mut s, &EXPLICIT, b"AUTHX TLS\r\n", Pass);
        assert_eq!(feat_lines(&EXPLICIT).len(), 3);
    }

    #[test]
    fn auth_ssl_is_accepted_like_auth_tls() {
        let mut s = FtpsState::new(&EXPLICIT);
        says(
            &mut s,
            &EXPLICIT,
            b"AUTH SSL\r\n",
            ReplyThenStartTls(REPLY_AUTH_OK),
        );
    }

    #[test]
    fn implicit_starts_protected() {
        let p = TlsPolicy {
            client: ClientTls::Implicit,
            ..TlsPolicy::default()
        };
        let mut s = FtpsState::new(&p);
        assert!(s.control_protected());
        says(&mut s, &p, b"AUTH TLS\r\n", Reply(REPLY_AUTH_AGAIN));
        says(&mut s, &p, b"PBSZ 0\r\n", Reply(REPLY_PBSZ_OK));
    }

    #[test]
    fn required_refuses_plain_login_and_unprotected_transfers() {
        let mut s = FtpsState::new(&REQUIRED);
        says(
            &mut s,
            &REQUIRED,
            b"USER bob\r\n",
            Reply(REPLY_LOGIN_NEEDS_TLS),
        );
        says(
            &mut s,
            &REQUIRED,
            b"PASS x\r\n",
            Reply(REPLY_LOGIN_NEEDS_TLS),
        );
        assert!(matches!(
            s.command(&REQUIRED, b"AUTH TLS\r\n"),
            Answer::ReplyThenStartTls(_)
        ));
        says(&mut s, &REQUIRED, b"USER bob\r\n", Pass);
        says(
            &mut s,
            &REQUIRED,
            b"RETR f\r\n",
            Reply(REPLY_TRANSFER_NEEDS_PROT),
        );
        says(&mut s, &REQUIRED, b"PBSZ 0\r\n", Reply(REPLY_PBSZ_OK));
        says(&mut s, &REQUIRED, b"PROT C\r\n", Reply(REPLY_PROT_OK));
        says(
            &mut s,
            &REQUIRED,
            b"stor f\r\n",
            Reply(REPLY_TRANSFER_NEEDS_PROT),
        );
        says(&mut s, &REQUIRED, b"PROT P\r\n", Reply(REPLY_PROT_OK));
        for l in [&b"RETR f\r\n"[..], b"STOR f\r\n", b"LIST\r\n", b"MLSD\r\n"] {
            assert_eq!(s.command(&REQUIRED, l), Answer::Pass);
        }
    }

    #[test]
    fn plaintext_ends_after_the_auth_line() {
        let read = b"AUTH TLS\r\n\x16\x03\x01\x00\xa5";
        assert_eq!(plaintext_end(read), Some(10));
        assert_eq!(&read[10..11], b"\x16");
        assert_eq!(plaintext_end(b"AUTH TL"), None);
    }

    #[test]
    fn server_side_sequence() {
        let p = TlsPolicy {
            server: ServerTls::Explicit,
            ..TlsPolicy::default()
        };
        assert_eq!(server_preamble(&p), ["AUTH TLS\r\n"]);
        assert_eq!(server_after_handshake(&p), ["PBSZ 0\r\n", "PROT P\r\n"]);
        assert!(server_accepts_auth(b"234 Proceed with negotiation.\r\n"));
        assert!(!server_accepts_auth(b"534 no\r\n"));
        assert!(!server_accepts_auth(b"2345\r\n"));
        assert_eq!(server_data_security(&p), Security::TlsToServer);
        let off = TlsPolicy::default();
        assert!(server_preamble(&off).is_empty() && server_after_handshake(&off).is_empty());
        assert_eq!(server_data_security(&off), Security::Plain);
        let imp = TlsPolicy {
            server: ServerTls::Implicit,
            ..TlsPolicy::default()
        };
        assert!(server_preamble(&imp).is_empty());
        assert_eq!(server_after_handshake(&imp).len(), 2);
    }

    #[test]
    fn arbitrary_lines_never_panic() {
        let mut s = FtpsState::new(&REQUIRED);
        for l in [
            &b""[..],
            b"\r\n",
            b"\xff\xfb\x01",
            b"PROT",
            b"PROT  P \r\n",
            b"AUTH\r\n",
        ] {
            let _ = s.command(&REQUIRED, l);
        }
        says(&mut s, &REQUIRED, b"PROT  P \r\n", Reply(REPLY_PROT_EARLY));
    }
}
