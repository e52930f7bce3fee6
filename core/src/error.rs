//! Why filter commits and server connects fail.
//!
//! `Display` is the errno text the original logs after `pf operation failed:` and
//! `proxy cannot connect to server ...:`.

use std::fmt;
use std::io;

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

/// Why the connection to the server failed, as values: the driver's OS error,
/// reduced to what the core needs to log it and what an integrator may match on.
///
/// The core stays free of IO: [`io::ErrorKind`] and an errno are plain values. Build
/// one with [`SocketError::from_errno`], [`SocketError::from_kind`], or `From` an
/// [`io::Error`] (tokio, std and mio report connects that way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketError {
    /// What kind of failure it was (`ConnectionRefused`, `TimedOut`, ...).
    pub kind: io::ErrorKind,
    /// The raw OS error number (`ECONNREFUSED`, ...), where there is one.
    pub errno: Option<i32>,
}

impl SocketError {
    /// The OS error `errno` (from `socket`, `bind`, `connect` or `SO_ERROR`); its
    /// kind is the one std gives that number on this platform.
    pub fn from_errno(errno: i32) -> SocketError {
        SocketError {
            kind: io::Error::from_raw_os_error(errno).kind(),
            errno: Some(errno),
        }
    }

    /// A failure without an OS error number (a runtime's own, e.g. a timeout).
    pub fn from_kind(kind: io::ErrorKind) -> SocketError {
        SocketError { kind, errno: None }
    }
}

impl From<&io::Error> for SocketError {
    fn from(e: &io::Error) -> SocketError {
        SocketError {
            kind: e.kind(),
            errno: e.raw_os_error(),
        }
    }
}

impl From<io::Error> for SocketError {
    fn from(e: io::Error) -> SocketError {
        SocketError::from(&e)
    }
}

/// The OS's text for the errno (`strerror`, as the original logs it: `Connection
/// refused`), or without one the kind's (`connection refused`).
impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(errno) => {
                // std writes `<strerror text> (os error N)`; the log wants the text.
                let text = io::Error::from_raw_os_error(errno).to_string();
                let suffix = format!(" (os error {errno})");
                f.write_str(text.strip_suffix(&suffix).unwrap_or(&text))
            }
            None => write!(f, "{}", self.kind),
        }
    }
}

impl From<io::ErrorKind> for SocketError {
    fn from(kind: io::ErrorKind) -> SocketError {
        SocketError::from_kind(kind)
    }
}

impl std::error::Error for SocketError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_error_reads_as_strerror_and_keeps_its_kind() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(SocketError::from(&e).errno, None);
        assert_eq!(SocketError::from(e).to_string(), "connection refused");
        let refused = io::Error::from_raw_os_error(111);
        let c = SocketError::from(&refused);
        assert_eq!(c, SocketError::from_errno(111));
        assert_eq!(c.errno, Some(111));
        assert_eq!(c.kind, refused.kind());
        let text = refused.to_string();
        assert!(text.starts_with(&c.to_string()) && text.ends_with(" (os error 111)"));
        assert!(!c.to_string().contains("os error"), "{c}");
        #[cfg(target_os = "linux")]
        assert_eq!(c.to_string(), "Connection refused");
        assert_eq!(
            SocketError::from_kind(io::ErrorKind::TimedOut),
            SocketError {
                kind: io::ErrorKind::TimedOut,
                errno: None
            }
        );
    }
}
