//! `getaddrinfo(3)` with the original's hints, and its `gai_strerror` texts.
//!
//! `std::net::ToSocketAddrs` cannot express `AI_NUMERICHOST`, `AI_PASSIVE`, an address
//! family or a service name, and it hides the resolver's own error text, which the
//! original prints (`getaddrinfo listen address failed: Name or service not known`).
//! So this calls the C library directly, the one place the CLI needs `unsafe`.

use std::ffi::{CStr, CString};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

/// The hints the original passes for each lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// `-b`/`-p`: `AI_NUMERICHOST | AI_PASSIVE`.
    Listen,
    /// `-a`: `AI_NUMERICHOST`, no service.
    SourceAddress,
    /// `-R`/`-P`: host names allowed.
    FixedServer,
}

/// A failed lookup: the resolver's error code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaiError {
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
pub fn resolve(
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

    // SAFETY: an all-zero addrinfo is the documented way to start a hints struct.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = match lookup {
        Lookup::Listen => libc::AI_NUMERICHOST | libc::AI_PASSIVE,
        Lookup::SourceAddress => libc::AI_NUMERICHOST,
        Lookup::FixedServer => 0,
    };

    let mut res: *mut libc::addrinfo = ptr::null_mut();
    // SAFETY: host and service are NUL-terminated and outlive the call; hints is
    // initialised; res receives a list we free below.
    let rc = unsafe {
        libc::getaddrinfo(
            c_host.as_ptr(),
            c_service.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            &hints,
            &mut res,
        )
    };
    if rc != 0 {
        return Err(GaiError {
            code: rc,
            message: gai_strerror(rc),
        });
    }
    // SAFETY: on success res points to at least one addrinfo; its ai_addr holds
    // ai_addrlen bytes of the family it names. The list is freed exactly once.
    let first = unsafe {
        let ai = &*res;
        let addr = sockaddr_to_std(ai.ai_addr, ai.ai_addrlen);
        libc::freeaddrinfo(res);
        addr
    };
    first.ok_or(GaiError {
        code: 0,
        message: "unsupported address family".into(),
    })
}

/// `gai_strerror(3)` as an owned string.
fn gai_strerror(code: i32) -> String {
    // SAFETY: gai_strerror returns a pointer to a static NUL-terminated string.
    unsafe {
        let p = libc::gai_strerror(code);
        if p.is_null() {
            return format!("resolver error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Copies an IPv4 or IPv6 `sockaddr` into a [`SocketAddr`].
///
/// # Safety
/// `sa` must point to `len` readable bytes of a socket address.
unsafe fn sockaddr_to_std(sa: *const libc::sockaddr, len: libc::socklen_t) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    let len = len as usize;
    match i32::from((*sa).sa_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            let sin = &*(sa as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
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
