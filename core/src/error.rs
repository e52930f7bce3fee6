//! Why sessions end and why filter commits fail.
//!
//! Each `Display` is the original's log wording, so a log line of ours reads like
//! one of ftp-proxy(8)'s (the `logmsg` calls of ftp-proxy.c).

use std::fmt;

/// A packet-filter commit that did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterError {
    /// The filter is busy with another transaction (EBUSY): retried once after 5 ms.
    Busy,
    /// The proxy port is taken on this host (the relay's EADDRINUSE): the session
    /// picks another port, up to 8 times, then gives up with this error.
    AddrInUse,
    /// The process may not change the ruleset (EPERM/EACCES, securelevel, no CAP_NET_ADMIN).
    PermissionDenied,
    /// The filter cannot express the rule (e.g. an option it has no equivalent for).
    Unsupported(String),
    /// Any other failure, with its errno where there is one and a text for the log.
    Other {
        /// The OS error number, 0 when there is none.
        errno: i32,
        /// What failed, e.g. `Invalid argument` or `bind 127.0.0.1:50000: Address in use`.
        text: String,
    },
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::Busy => f.write_str("Device busy"),
            FilterError::AddrInUse => f.write_str("Address already in use"),
            FilterError::PermissionDenied => f.write_str("Operation not permitted"),
            FilterError::Unsupported(what) => write!(f, "not supported: {what}"),
            FilterError::Other { text, .. } => f.write_str(text),
        }
    }
}

impl std::error::Error for FilterError {}

/// One side of a session: the FTP client or the FTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The control connection accepted from the client.
    Client,
    /// The control connection the proxy opened to the server.
    Server,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    /// `client` or `server`, as the log lines say.
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// Why a session ended. `Display` gives the original's log text (without `#id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// EOF from that side (`client close` / `server close`).
    Eof(Side),
    /// A read error on the client (`client reset connection`).
    ClientReset,
    /// A read error on the server, which includes an asynchronous connect failure
    /// (`server refused connection`).
    ServerRefused,
    /// A write to that side failed.
    WriteError(Side),
    /// No bytes from that side for the idle timeout (30 s for the server's first bytes).
    Timeout(Side),
    /// A line longer than 500 bytes or holding a NUL byte.
    NotClean(Side),
    /// The connection to the server could not even be started.
    ConnectFailed {
        /// The server address, as text.
        server: String,
        /// The OS error, as text.
        error: String,
    },
    /// Committing the data-connection rules failed.
    Filter(FilterError),
    /// The client pipelined more commands than the proxy tracks without reading replies.
    TooManyPipelined,
    /// A server reply line arrived that answers no command: the server sent it
    /// before it could have seen the command it would answer, or when nothing was
    /// owed. Commands and replies are out of step (a reply ended early by a line the
    /// client controls, e.g. a file name in a `STAT` listing), so no later reply can
    /// be trusted to answer a PASV/EPSV.
    ReplyDesync,
    /// The daemon is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Whether the original logs this at error (`true`) or lower level.
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            CloseReason::Eof(_) | CloseReason::Shutdown | CloseReason::Timeout(Side::Server)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Eof(side) => write!(f, "{} close", side.name()),
            CloseReason::ClientReset => f.write_str("client reset connection"),
            CloseReason::ServerRefused => f.write_str("server refused connection"),
            CloseReason::WriteError(side) => write!(f, "{} write error", side.name()),
            CloseReason::Timeout(side) => write!(f, "{} timeout", side.name()),
            CloseReason::NotClean(Side::Client) => {
                f.write_str("client command too long or not clean")
            }
            CloseReason::NotClean(Side::Server) => {
                f.write_str("server reply too long or not clean")
            }
            CloseReason::ConnectFailed { server, error } => {
                write!(f, "proxy cannot connect to server {server}: {error}")
            }
            CloseReason::Filter(e) => write!(f, "pf operation failed: {e}"),
            CloseReason::TooManyPipelined => f.write_str("client pipelined too many commands"),
            CloseReason::ReplyDesync => {
                f.write_str("server reply answers no command (replies out of step)")
            }
            CloseReason::Shutdown => f.write_str("shutting down"),
        }
    }
}
