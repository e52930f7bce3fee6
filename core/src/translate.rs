//! Crossing boundaries (issue 17): which data command the proxy sends the server,
//! independent of the client's, and how the server's passive answer becomes the
//! reply the client asked for.
//!
//! Pure functions, no state but what the caller keeps per session
//! ([`ServerSupport`]). The session wires these in; this module only decides.
//! A transfer whose two legs differ in family or in direction (one accepted, one
//! connected, or both connected) is *translated*: kernel NAT cannot join such legs,
//! so it goes through the userspace relay ([`needs_relay`]).
//!
//! The security rules of ftp-proxy(8) hold: a server port below
//! [`MIN_DATA_PORT`] is refused, the address in a 227/229 is ignored (the data
//! connection goes to the control connection's server address), and the rules of
//! RFC 6384 section 4 for an IPv6-to-IPv4 ALG are followed as docs/behavior.md
//! describes.

use std::net::IpAddr;

use crate::ftp;
use crate::rules::{Family, MIN_DATA_PORT};

/// `--server-data-mode`: how the proxy asks the server for a data connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerDataMode {
    /// In the mode the client chose (the original ftp-proxy's behaviour).
    #[default]
    Client,
    /// Always PASV/EPSV towards the server.
    Passive,
    /// Always PORT/EPRT towards the server.
    Active,
}

impl std::str::FromStr for ServerDataMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Self::Client),
            "passive" => Ok(Self::Passive),
            "active" => Ok(Self::Active),
            _ => Err(format!(
                "server data mode must be client, passive or active, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for ServerDataMode {
    /// The option's value: `client`, `passive` or `active`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Passive => "passive",
            Self::Active => "active",
        })
    }
}

/// A data-connection command, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCommand {
    /// `PASV` (IPv4 only, RFC 959).
    Pasv,
    /// `EPSV` (RFC 2428).
    Epsv,
    /// `PORT` (IPv4 only, RFC 959).
    Port,
    /// `EPRT` (RFC 2428).
    Eprt,
}

impl DataCommand {
    /// PASV or EPSV: the data connection goes towards the one who answered.
    pub fn is_passive(self) -> bool {
        matches!(self, Self::Pasv | Self::Epsv)
    }

    /// The command word as sent on the wire (`PASV\r\n`, `EPSV\r\n`); PORT and EPRT
    /// carry arguments, see [`server_active_line`].
    pub fn passive_line(self) -> Option<&'static str> {
        match self {
            Self::Pasv => Some("PASV\r\n"),
            Self::Epsv => Some("EPSV\r\n"),
            _ => None,
        }
    }
}

/// What the session has learned about the server; kept for the session's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerSupport {
    /// The server answered an EPSV with 500, 502 or 522: later passive requests
    /// go as PASV straight away.
    pub epsv_refused: bool,
}

/// The command the proxy sends the server for the client's `client` command.
///
/// Towards an IPv6 server only EPSV/EPRT exist. Towards an IPv4 server PASV/PORT
/// are used unless the client itself sent the extended form (and, for EPSV, the
/// server has not refused it before), so an untranslated IPv4 session sends what
/// the original sends.
pub fn server_command(
    client: DataCommand,
    server: Family,
    mode: ServerDataMode,
    support: ServerSupport,
) -> DataCommand {
    let passive = match mode {
        ServerDataMode::Client => client.is_passive(),
        ServerDataMode::Passive => true,
        ServerDataMode::Active => false,
    };
    match (passive, server) {
        (true, Family::Inet6) => DataCommand::Epsv,
        (false, Family::Inet6) => DataCommand::Eprt,
        (true, Family::Inet) if client == DataCommand::Epsv && !support.epsv_refused => {
            DataCommand::Epsv
        }
        (true, Family::Inet) => DataCommand::Pasv,
        (false, Family::Inet) if client == DataCommand::Eprt => DataCommand::Eprt,
        (false, Family::Inet) => DataCommand::Port,
    }
}

/// Whether a transfer's legs differ in kind (family, or accepted against
/// connected), so that only the relay can join them.
pub fn needs_relay(
    client: DataCommand,
    client_family: Family,
    server: DataCommand,
    server_family: Family,
) -> bool {
    client_family != server_family || client.is_passive() != server.is_passive()
}

/// What the server's answer to the proxy's PASV/EPSV means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassiveAnswer {
    /// A 227 or a 229 (whichever answered) naming this port on the server.
    Port(u16),
    /// The server refused EPSV (500, 502, 522): send PASV instead and remember it.
    RetryPasv,
    /// A port below [`MIN_DATA_PORT`]: refused, the client gets a 425.
    LowPort(u16),
    /// Anything else: passed on as the answer to the client's command.
    Other,
}

/// Reads the server's single-line answer to `asked` (PASV or EPSV) from a server
/// of `server` family. Both 227 and 229 are understood, whichever was asked.
pub fn passive_answer(asked: DataCommand, server: Family, line: &[u8]) -> PassiveAnswer {
    let port = match ftp::reply_code(line) {
        Some((227, false)) => ftp::parse_227(line),
        Some((229, false)) => ftp::parse_229(line),
        Some((500 | 502 | 522, false)) if asked == DataCommand::Epsv && server == Family::Inet => {
            return PassiveAnswer::RetryPasv
        }
        _ => None,
    };
    match port {
        Some(p) if p < MIN_DATA_PORT => PassiveAnswer::LowPort(p),
        Some(p) => PassiveAnswer::Port(p),
        None => PassiveAnswer::Other,
    }
}

/// Why a reply in the client's form cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// PASV or PORT asked over IPv6: they carry IPv4 addresses only (RFC 2428).
    NeedsIpv4,
}

/// The reply to the client's `client` command once the server side is ready:
/// for PASV/EPSV the proxy's `addr`/`port` the client connects to, for PORT/EPRT
/// a 200 (the proxy connects to the client's negotiated port).
pub fn client_reply(client: DataCommand, addr: IpAddr, port: u16) -> Result<String, ReplyError> {
    match (client, addr) {
        (DataCommand::Pasv, IpAddr::V4(v4)) => Ok(ftp::format_227(v4, port)),
        (DataCommand::Pasv, IpAddr::V6(_)) => Err(ReplyError::NeedsIpv4),
        (DataCommand::Epsv, _) => Ok(ftp::format_229(port)),
        (DataCommand::Port, _) => Ok("200 PORT command successful\r\n".into()),
        (DataCommand::Eprt, _) => Ok("200 EPRT command successful\r\n".into()),
    }
}

/// The PORT/EPRT line the proxy sends the server, advertising its own server-side
/// `addr` and listening `port`.
pub fn server_active_line(
    server: DataCommand,
    addr: IpAddr,
    port: u16,
) -> Result<String, ReplyError> {
    match (server, addr) {
        (DataCommand::Port, IpAddr::V4(v4)) => Ok(ftp::format_port(v4, port)),
        (DataCommand::Port, IpAddr::V6(_)) => Err(ReplyError::NeedsIpv4),
        (DataCommand::Eprt, a) => Ok(ftp::format_eprt(a, port)),
        (DataCommand::Pasv | DataCommand::Epsv, _) => Err(ReplyError::NeedsIpv4),
    }
}

/// RFC 6384 section 4 for a client command the ALG answers itself rather than
/// passing to the server, given the server's family. On a translated session
/// `EPSV ALL` is not passed to an IPv4 server but answered with a 200: passed on, it
/// would forbid the PASV the proxy may need as a fallback. LPSV/LPRT are refused
/// with 502 rather than translated.
pub fn answered_by_proxy(line: &[u8], server: Family, translated: bool) -> Option<&'static str> {
    let word = ftp::command_start(line);
    let end = word
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(word.len());
    let is = |w: &[u8]| word[..end].eq_ignore_ascii_case(w);
    if !translated {
        return None;
    }
    if ftp::is_epsv_all(line) && server == Family::Inet {
        Some("200 EPSV ALL command successful\r\n")
    } else if is(b"LPSV") || is(b"LPRT") {
        Some("502 LPSV and LPRT are not implemented by the proxy\r\n")
    } else {
        None
    }
}

/// A configuration whose transfers would need the relay while the daemon has none
/// (only a packet filter): refused at start-up, never left to hang a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPathError {
    /// `--server-data-mode` other than `client` makes every transfer translated.
    ServerDataModeNeedsRelay(ServerDataMode),
    /// Client and server families may differ (a listener and `-R` of different
    /// families).
    FamiliesNeedRelay,
    /// `--nat64-prefix`: IPv6 clients of IPv4 servers, every transfer translated.
    Nat64NeedsRelay,
}

impl std::fmt::Display for DataPathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServerDataModeNeedsRelay(m) => write!(
                f,
                "--server-data-mode {m} translates every transfer, which only the relay can carry; \
                 use --backend relay or --server-data-mode client"
            ),
            Self::FamiliesNeedRelay => write!(
                f,
                "client and server address families differ (-b and -R), which only the relay \
                 can carry; use --backend relay"
            ),
            Self::Nat64NeedsRelay => write!(
                f,
                "--nat64-prefix serves IPv6 clients from IPv4 servers, whose transfers only \
                 the relay can carry; use --backend relay"
            ),
        }
    }
}

/// Start-up check: `mode`, whether families may differ, and whether a userspace
/// relay carries the transfers the packet filter cannot.
pub fn check_data_path(
    mode: ServerDataMode,
    families_may_differ: bool,
    relay_available: bool,
) -> Result<(), DataPathError> {
    if relay_available {
        return Ok(());
    }
    if mode != ServerDataMode::Client {
        return Err(DataPathError::ServerDataModeNeedsRelay(mode));
    }
    if families_may_differ {
        return Err(DataPathError::FamiliesNeedRelay);
    }
    Ok(())
}
