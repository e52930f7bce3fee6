//! The destination policy of forward mode: which resolved addresses the proxy
//! connects to. Default deny: a forward proxy that connects anywhere is an open
//! relay into the networks behind it.
//!
//! `--allow-dest CIDR[:PORTS]` entries each allow a network and, optionally, a
//! port list (`21`, `21,2121`, `2000-2100`). An address is allowed when some
//! entry covers it and its port. Loopback, link-local, unspecified, multicast and
//! the proxy's own addresses and listeners are refused even then, unless an entry
//! that *names them explicitly* covers them: an entry whose network lies inside the
//! special range (`127.0.0.0/8`, `127.0.0.2/32`, `::1/128`, `169.254.0.0/16`,
//! `fe80::/10`), or, for the proxy's own addresses, a `/32` or `/128` entry of that
//! very address. So `0.0.0.0/0` opens the Internet, not the proxy's loopback.
//!
//! The check is on the resolved address, never on the name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        (!0u128 << (width - len))
            & (if width == 128 {
                !0
            } else {
                (1u128 << width) - 1
            })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) reads as its IPv4 address.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `v6/n` or a bare address (a host network).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let a = a
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(a);
        let addr: IpAddr = a.parse().map_err(|_| format!("bad address in {s:?}"))?;
        let width = bits(addr).1;
        let len = match l {
            None => width,
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= width)
                .ok_or_else(|| format!("bad prefix length in {s:?}"))?,
            Some(_) => return Err(format!("bad prefix length in {s:?}")),
        };
        let (b, w) = bits(addr);
        let net = b & mask(len, w);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(net as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(net)),
        };
        Ok(Cidr { addr, len })
    }

    /// Whether `ip` is in this network (same family only, after unmapping).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        let (a, w) = bits(self.addr);
        let (b, wb) = bits(ip);
        w == wb && (a & mask(self.len, w)) == (b & mask(self.len, w))
    }

    /// Whether every address of this network is inside `other`.
    pub fn within(&self, other: &Cidr) -> bool {
        self.len >= other.len && other.contains(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One `--allow-dest` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowDest {
    /// The network.
    pub net: Cidr,
    /// Inclusive port ranges; empty means every port.
    pub ports: Vec<(u16, u16)>,
}

impl AllowDest {
    /// Parses `CIDR[:PORTS]`; an IPv6 network with ports is written in brackets,
    /// `[2001:db8::/32]:21,2121`.
    pub fn parse(s: &str) -> Result<AllowDest, String> {
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (n, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("unterminated [ in {s:?}"))?;
            match after {
                "" => (n, None),
                p => (
                    n,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| format!("junk after ] in {s:?}"))?,
                    ),
                ),
            }
        } else if s.matches(':').count() == 1 {
            let (n, p) = s.split_once(':').expect("one colon");
            (n, Some(p))
        } else {
            (s, None)
        };
        let net = Cidr::parse(net)?;
        let mut ranges = Vec::new();
        if let Some(p) = ports {
            for part in p.split(',') {
                let num = |x: &str| {
                    x.parse::<u16>()
                        .ok()
                        .filter(|&n| n > 0 && x.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| format!("bad port {x:?} in {s:?}"))
                };
                let r = match part.split_once('-') {
                    Some((a, b)) => (num(a)?, num(b)?),
                    None => (num(part)?, num(part)?),
                };
                if r.0 > r.1 {
                    return Err(format!("empty port range {part:?} in {s:?}"));
                }
                ranges.push(r);
            }
        }
        Ok(AllowDest { net, ports: ranges })
    }

    fn covers(&self, to: SocketAddr) -> bool {
        self.net.contains(to.ip())
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&to.port())))
    }
}

/// Ranges refused unless an entry inside them is listed.
fn special_ranges() -> [Cidr; 8] {
    let c = |s: &str| Cidr::parse(s).expect("constant");
    [
        c("127.0.0.0/8"),
        c("169.254.0.0/16"),
        c("0.0.0.0/8"),
        c("224.0.0.0/4"),
        c("::1/128"),
        c("fe80::/10"),
        c("::/128"),
        c("ff00::/8"),
    ]
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestRefusal {
    /// No `--allow-dest` entry covers it (or none was given).
    NotAllowed,
    /// It is loopback, link-local, unspecified or multicast, and no entry inside
    /// that range covers it.
    Special(Cidr),
    /// It is the proxy's own address or listener, and no host entry names it.
    Proxy,
}

impl fmt::Display for DestRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestRefusal::NotAllowed => f.write_str("not in --allow-dest"),
            DestRefusal::Special(c) => {
                write!(f, "in {c}, which --allow-dest does not list explicitly")
            }
            DestRefusal::Proxy => {
                f.write_str("the proxy's own address, which --allow-dest does not list explicitly")
            }
        }
    }
}

/// The `--allow-dest` list with the proxy's own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestPolicy {
    /// The entries, in the order given.
    pub allow: Vec<AllowDest>,
    /// The proxy's own addresses (its listeners' and interfaces' addresses, as the
    /// driver knows them) and listener socket addresses.
    pub own: Vec<SocketAddr>,
}

impl DestPolicy {
    /// Whether nothing at all is allowed (the daemon says so at start-up).
    pub fn denies_all(&self) -> bool {
        self.allow.is_empty()
    }

    /// Checks one resolved destination.
    pub fn check(&self, to: SocketAddr) -> Result<(), DestRefusal> {
        let to = SocketAddr::new(unmap(to.ip()), to.port());
        let ip = to.ip();
        let covering: Vec<&AllowDest> = self.allow.iter().filter(|a| a.covers(to)).collect();
        if covering.is_empty() {
            return Err(DestRefusal::NotAllowed);
        }
        let is_own = self.own.iter().any(|o| {
            let oip = unmap(o.ip());
            oip == ip && (o.port() == 0 || o.port() == to.port())
                || (o.port() == to.port() && oip.is_unspecified())
        });
        if is_own {
            let host = Cidr {
                addr: ip,
                len: bits(ip).1,
            };
            if !covering.iter().any(|a| a.net == host) {
                return Err(DestRefusal::Proxy);
            }
        }
        for special in special_ranges() {
            if special.contains(ip) && !covering.iter().any(|a| a.net.within(&special)) {
                return Err(DestRefusal::Special(special));
            }
        }
        Ok(())
    }

    /// The first resolved address the policy allows, with the refusal of each
    /// address before it (for the log), or the refusals of all.
    pub fn pick(
        &self,
        addrs: &[SocketAddr],
    ) -> (Option<SocketAddr>, Vec<(SocketAddr, DestRefusal)>) {
        let mut refused = Vec::new();
        for &a in addrs {
            match self.check(a) {
                Ok(()) => return (Some(a), refused),
                Err(e) => refused.push((a, e)),
            }
        }
        (None, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn policy(entries: &[&str], own: &[&str]) -> DestPolicy {
        DestPolicy {
            allow: entries
                .iter()
                .map(|e| AllowDest::parse(e).unwrap())
                .collect(),
            own: own.iter().map(|o| sa(o)).collect(),
        }
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("203.0.113.77/24").unwrap();
        assert_eq!(c.to_string(), "203.0.113.0/24");
        assert!(c.contains("203.0.113.1".parse().unwrap()));
        assert!(c.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::5".parse().unwrap()));
        for bad in [
            "1.2.3.4/33",
            "::/129",
            "1.2.3/8",
            "x",
            "1.2.3.4/",
            "1.2.3.4/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_dest_parse() {
        let a = AllowDest::parse("198.51.100.0/24:21,2000-2100").unwrap();
        assert_eq!(a.ports, vec![(21, 21), (2000, 2100)]);
        let b = AllowDest::parse("[2001:db8::/32]:21").unwrap();
        assert_eq!(b.net.len, 32);
        assert_eq!(b.ports, vec![(21, 21)]);
        assert!(AllowDest::parse("2001:db8::/32").unwrap().ports.is_empty());
        for bad in [
            "1.2.3.0/24:0",
            "1.2.3.0/24:9-3",
            "1.2.3.0/24:",
            "[::1:21",
            "1.2.3.0/24:x",
        ] {
            assert!(AllowDest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_deny() {
        let p = DestPolicy::default();
        assert!(p.denies_all());
        assert_eq!(p.check(sa("198.51.100.1:21")), Err(DestRefusal::NotAllowed));
    }

    #[test]
    fn ports_and_networks() {
        let p = policy(&["198.51.100.0/24:21"], &[]);
        assert_eq!(p.check(sa("198.51.100.9:21")), Ok(()));
        assert_eq!(p.check(sa("198.51.100.9:22")), Err(DestRefusal::NotAllowed));
        assert_eq!(p.check(sa("203.0.113.9:21")), Err(DestRefusal::NotAllowed));
    }

    #[test]
    fn special_ranges_need_explicit_entries() {
        let open = policy(&["0.0.0.0/0", "::/0"], &[]);
        assert!(matches!(
            open.check(sa("127.0.0.2:21")),
            Err(DestRefusal::Special(_))
        ));
        assert!(matches!(
            open.check(sa("[::1]:21")),
            Err(DestRefusal::Special(_))
        ));
        assert!(matches!(
            open.check(sa("169.254.169.254:80")),
            Err(DestRefusal::Special(_))
        ));
        assert!(matches!(
            open.check(sa("[fe80::1]:21")),
            Err(DestRefusal::Special(_))
        ));
        assert!(matches!(
            open.check(sa("[::ffff:127.0.0.1]:21")),
            Err(DestRefusal::Special(_))
        ));
        assert_eq!(open.check(sa("198.51.100.1:21")), Ok(()));
        let lo = policy(&["0.0.0.0/0", "127.0.0.2/32"], &[]);
        assert_eq!(lo.check(sa("127.0.0.2:21")), Ok(()));
        assert!(lo.check(sa("127.0.0.3:21")).is_err());
    }

    #[test]
    fn the_proxy_itself() {
        // Loopback listed as a whole, the proxy listens on 127.0.0.1:8021.
        let p = policy(&["127.0.0.0/8"], &["127.0.0.1:8021"]);
        assert_eq!(p.check(sa("127.0.0.1:8021")), Err(DestRefusal::Proxy));
        assert_eq!(p.check(sa("127.0.0.1:2121")), Ok(()));
        // A listener on the wildcard address: every address at that port.
        let w = policy(&["127.0.0.0/8"], &["0.0.0.0:8021"]);
        assert_eq!(w.check(sa("127.0.0.5:8021")), Err(DestRefusal::Proxy));
        // An own address (port 0: every port) named as a host entry is allowed.
        let own = policy(&["198.51.100.0/24"], &["198.51.100.7:0"]);
        assert_eq!(own.check(sa("198.51.100.7:21")), Err(DestRefusal::Proxy));
        let named = policy(&["198.51.100.0/24", "198.51.100.7/32"], &["198.51.100.7:0"]);
        assert_eq!(named.check(sa("198.51.100.7:21")), Ok(()));
    }

    #[test]
    fn pick_first_allowed() {
        let p = policy(&["198.51.100.0/24"], &[]);
        let (a, refused) = p.pick(&[sa("127.0.0.1:21"), sa("198.51.100.3:21")]);
        assert_eq!(a, Some(sa("198.51.100.3:21")));
        assert_eq!(refused.len(), 1);
    }
}
