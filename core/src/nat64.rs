//! `--nat64-prefix`: which diverted IPv6 destinations stand for an IPv4 server.
//!
//! An IPv6-only network reaches IPv4 servers through addresses of a NAT64 prefix
//! (RFC 6146, RFC 6052): `64:ff9b::c633:6402` is `198.51.100.2`. In transparent
//! mode the proxy sees that address as the client's original destination; with a
//! prefix configured it connects to the embedded IPv4 address instead, and the
//! session is an IPv6 client with an IPv4 server, translated as a cross-family
//! `-R` session is ([`crate::translate`]).
//!
//! Only the /96 embedding is taken: the IPv4 address is the last 32 bits, with no
//! `u` octet in the way. The shorter RFC 6052 lengths (/32 to /64) are rare in
//! practice (DNS64 and NAT64 gateways use /96), and a prefix of another length is
//! refused at start-up rather than read the wrong way.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A NAT64 /96 prefix (RFC 6052 section 2.2): its low 32 bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat64Prefix {
    /// The prefix with its host part zeroed, so that equal prefixes compare equal.
    net: Ipv6Addr,
}

/// The well-known prefix of RFC 6052 section 2.1.
pub const WELL_KNOWN_NAT64_PREFIX: Nat64Prefix = Nat64Prefix {
    net: Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
};

/// Why a `--nat64-prefix` value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nat64PrefixError {
    /// Not `IPV6-ADDRESS/LENGTH`.
    Syntax(String),
    /// A length other than 96 (the only embedding implemented).
    Length(u8),
    /// Bits set in the last 32 bits, where the IPv4 address goes.
    HostBits(Ipv6Addr),
}

impl fmt::Display for Nat64PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(s) => write!(
                f,
                "NAT64 prefix must be an IPv6 prefix of length 96 such as 64:ff9b::/96, not {s:?}"
            ),
            Self::Length(l) => write!(
                f,
                "NAT64 prefix length /{l} is not supported: only /96 (the IPv4 address in the last 32 bits, RFC 6052)"
            ),
            Self::HostBits(a) => write!(
                f,
                "NAT64 prefix {a}/96 has bits set in its last 32 bits, where the IPv4 address goes"
            ),
        }
    }
}

impl std::error::Error for Nat64PrefixError {}

impl FromStr for Nat64Prefix {
    type Err = Nat64PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || Nat64PrefixError::Syntax(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let net: Ipv6Addr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        if len > 128 {
            return Err(syntax());
        }
        if len != 96 {
            return Err(Nat64PrefixError::Length(len));
        }
        if net.octets()[12..] != [0; 4] {
            return Err(Nat64PrefixError::HostBits(net));
        }
        Ok(Nat64Prefix { net })
    }
}

impl fmt::Display for Nat64Prefix {
    /// `64:ff9b::/96`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/96", self.net)
    }
}

impl Nat64Prefix {
    /// The IPv4 address embedded in `addr`, if `addr` lies inside the prefix.
    pub fn embedded(&self, addr: Ipv6Addr) -> Option<Ipv4Addr> {
        let (o, n) = (addr.octets(), self.net.octets());
        (o[..12] == n[..12]).then(|| Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    }

    /// The server a diverted destination stands for: the embedded IPv4 address
    /// on the same port, or `None` when `dst` is not inside the prefix (an IPv4
    /// destination, or an IPv6 one outside it, is served as it is).
    pub fn server_for(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match dst.ip() {
            IpAddr::V6(v6) => self
                .embedded(v6)
                .map(|v4| SocketAddr::new(IpAddr::V4(v4), dst.port())),
            IpAddr::V4(_) => None,
        }
    }

    /// The address inside the prefix that embeds `v4` (the reverse mapping).
    pub fn embed(&self, v4: Ipv4Addr) -> Ipv6Addr {
        let mut o = self.net.octets();
        o[12..].copy_from_slice(&v4.octets());
        Ipv6Addr::from(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Nat64Prefix, Nat64PrefixError> {
        s.parse()
    }

    #[test]
    fn parses_only_96_without_host_bits() {
        assert_eq!(p("64:ff9b::/96"), Ok(WELL_KNOWN_NAT64_PREFIX));
        assert_eq!(p("64:ff9b::/96").unwrap().to_string(), "64:ff9b::/96");
        assert_eq!(
            p("2001:db8:64::/96").unwrap().to_string(),
            "2001:db8:64::/96"
        );
        assert_eq!(p("64:ff9b::/64"), Err(Nat64PrefixError::Length(64)));
        assert_eq!(p("64:ff9b::/32"), Err(Nat64PrefixError::Length(32)));
        assert!(matches!(
            p("64:ff9b::/129"),
            Err(Nat64PrefixError::Syntax(_))
        ));
        assert!(matches!(p("64:ff9b::"), Err(Nat64PrefixError::Syntax(_))));
        assert!(matches!(
            p("198.51.100.0/96"),
            Err(Nat64PrefixError::Syntax(_))
        ));
        assert!(matches!(p("64:ff9b::/x"), Err(Nat64PrefixError::Syntax(_))));
        assert!(matches!(
            p("64:ff9b::1/96"),
            Err(Nat64PrefixError::HostBits(_))
        ));
        assert!(p("64:ff9b::/64")
            .unwrap_err()
            .to_string()
            .contains("only /96"));
    }

    #[test]
    fn maps_the_last_32_bits_and_keeps_the_port() {
        let pre = WELL_KNOWN_NAT64_PREFIX;
        let dst: SocketAddr = "[64:ff9b::c633:6402]:21".parse().unwrap();
        assert_eq!(
            pre.server_for(dst),
            Some("198.51.100.2:21".parse().unwrap())
        );
        assert_eq!(
            pre.embedded("64:ff9b::cb00:7121".parse().unwrap()),
            Some(Ipv4Addr::new(203, 0, 113, 33))
        );
        assert_eq!(
            pre.embed(Ipv4Addr::new(198, 51, 100, 2)),
            "64:ff9b::c633:6402".parse::<Ipv6Addr>().unwrap()
        );
        // Outside the prefix, or IPv4: not mapped.
        for outside in [
            "[2001:db8:2::2]:21",
            "[64:ff9b:0:1::c633:6402]:21",
            "198.51.100.2:21",
        ] {
            assert_eq!(pre.server_for(outside.parse().unwrap()), None, "{outside}");
        }
    }
}
