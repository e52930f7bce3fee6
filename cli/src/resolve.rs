//! `getaddrinfo(3)` with the original's hints, and its `gai_strerror` texts.
//!
//! `std::net::ToSocketAddrs` cannot express `AI_NUMERICHOST`, `AI_PASSIVE`, an address
//! family or a service name, and it hides the resolver's own error text, which the
//! original prints (`getaddrinfo listen address failed: Name or service not known`).
//! So this calls the C library directly, through the wrappers in `sys`.

use std::ffi::CString;
use std::fmt;
use std::net::SocketAddr;

use crate::sys;

/// The hints the original passes for each lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// `-b`/`-p`: `AI_NUMERICHOST | AI_PASSIVE`.
    Listen,
    /// `-a`: `AI_NUMERICHOST`, no service.
    SourceAddress,
    /// `-R`/`-P`: host names allowed.
    FixedServer,
}

/// A failed lookup: the resolver's error code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GaiError {
    /// The `EAI_*` code (0 when the failure is not the resolver's, e.g. a NUL byte).
    pub code: i32,
    /// `gai_strerror(code)`, or a description for the non-resolver failures.
    pub message: String,
}

impl fmt::Display for GaiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GaiError {}

/// Resolves `host` (and `service`, a port number or a service name) for `ipv6`
/// mode and returns the first result, as the original uses `res` (the first entry).
pub(crate) fn resolve(
    host: &str,
    service: Option<&str>,
    ipv6: bool,
    lookup: Lookup,
) -> Result<SocketAddr, GaiError> {
    let nul = |what: &str| GaiError {
        code: 0,
        message: format!("{what} contains a NUL byte"),
    };
    let c_host = CString::new(host).map_err(|_| nul("address"))?;
    let c_service = service
        .map(CString::new)
        .transpose()
        .map_err(|_| nul("port"))?;

    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    let flags = match lookup {
        Lookup::Listen => libc::AI_NUMERICHOST | libc::AI_PASSIVE,
        Lookup::SourceAddress => libc::AI_NUMERICHOST,
        Lookup::FixedServer => 0,
    };
    let first =
        sys::getaddrinfo(&c_host, c_service.as_deref(), family, flags).map_err(|rc| GaiError {
            code: rc,
            message: sys::gai_strerror(rc),
        })?;
    first.ok_or(GaiError {
        code: 0,
        message: "unsupported address family".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_is_numeric_only() {
        let a = resolve("127.0.0.1", Some("8021"), false, Lookup::Listen).unwrap();
        assert_eq!(a, "127.0.0.1:8021".parse().unwrap());
        let e = resolve("localhost", Some("8021"), false, Lookup::Listen).unwrap_err();
        assert_eq!(e.code, libc::EAI_NONAME);
        assert!(!e.message.is_empty());
    }

    #[test]
    fn family_follows_the_mode() {
        let a = resolve("::1", Some("21"), true, Lookup::Listen).unwrap();
        assert_eq!(a, "[::1]:21".parse().unwrap());
        // An IPv4 literal in IPv6 mode is refused, as with AF_INET6 hints.
        assert!(resolve("127.0.0.1", Some("21"), true, Lookup::Listen).is_err());
        assert!(resolve("::1", Some("21"), false, Lookup::Listen).is_err());
    }

    #[test]
    fn service_names_are_accepted() {
        let a = resolve("127.0.0.1", Some("ftp"), false, Lookup::Listen).unwrap();
        assert_eq!(a.port(), 21);
        assert!(resolve(
            "127.0.0.1",
            Some("no-such-service-x"),
            false,
            Lookup::Listen
        )
        .is_err());
    }

    #[test]
    fn source_address_has_port_zero() {
        let a = resolve("10.1.2.3", None, false, Lookup::SourceAddress).unwrap();
        assert_eq!(a, "10.1.2.3:0".parse().unwrap());
        assert!(resolve("not-an-address", None, false, Lookup::SourceAddress).is_err());
    }

    #[test]
    fn fixed_server_may_be_a_host_name() {
        // "localhost" comes from /etc/hosts; no DNS is involved.
        let a = resolve("localhost", Some("2100"), false, Lookup::FixedServer).unwrap();
        assert_eq!(a, "127.0.0.1:2100".parse().unwrap());
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(resolve("127.0.0.1\0", None, false, Lookup::SourceAddress).is_err());
    }
}
