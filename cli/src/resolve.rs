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
/// A numeric address is of its own family (except a listener in `-6` mode, which is
/// IPv6 as in the original): `-b ::1 -R 127.0.0.1` crosses families (issue 17),
/// which the start-up check then allows only with the relay.
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

    let family = match host.parse::<std::net::IpAddr>() {
        // `-6` is the clients' side: its listener stays IPv6, as the original's.
        _ if ipv6 && matches!(lookup, Lookup::Listen) => libc::AF_INET6,
        Ok(std::net::IpAddr::V6(_)) => libc::AF_INET6,
        Ok(std::net::IpAddr::V4(_)) => libc::AF_INET,
        Err(_) if ipv6 => libc::AF_INET6,
        Err(_) => libc::AF_INET,
    };
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
    fn a_literal_has_its_own_family_and_a_name_follows_the_mode() {
        let a = resolve("::1", Some("21"), true, Lookup::Listen).unwrap();
        assert_eq!(a, "[::1]:21".parse().unwrap());
        // An IPv4 listener in IPv6 mode is refused, as with AF_INET6 hints.
        assert!(resolve("127.0.0.1", Some("21"), true, Lookup::Listen).is_err());
        // Beyond the original, which refuses these: the families may cross.
        let a = resolve("127.0.0.1", Some("21"), true, Lookup::FixedServer).unwrap();
        assert_eq!(a, "127.0.0.1:21".parse().unwrap());
        let a = resolve("::1", Some("21"), false, Lookup::Listen).unwrap();
        assert_eq!(a, "[::1]:21".parse().unwrap());
        // "localhost" from /etc/hosts: IPv4 unless -6 (then ::1, or nothing).
        let a = resolve("localhost", Some("21"), false, Lookup::FixedServer).unwrap();
        assert!(a.is_ipv4());
        if let Ok(a) = resolve("localhost", Some("21"), true, Lookup::FixedServer) {
            assert!(a.is_ipv6());
        }
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
