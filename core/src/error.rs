//! Why filter commits fail.
//!
//! `Display` is the errno text the original logs after `pf operation failed:`.

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
