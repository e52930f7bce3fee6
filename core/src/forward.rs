//! The userspace data path's reading of a rule set: [`forwards`] turns the rules of
//! one [`Action::CommitRules`](crate::Action::CommitRules) into [`Forward`]s, so that
//! every driver without a packet filter reads the rules one way. What a driver does
//! with them is the policy of [`Relay`](crate::Relay), whose documentation states
//! the semantics.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::error::FilterError;
use crate::relay::Security;
use crate::rules::{Direction, LegSecurity, PortRange, Rule, Translate};

/// The address a forward's outgoing connection comes from: the paired `nat-to` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// The nat-to address: the peer the real endpoint expects to see.
    pub addr: IpAddr,
    /// The nat-to port range.
    pub ports: PortRange,
}

impl Source {
    /// What to bind before connecting: the address with the range's single port
    /// (port 20 with `-r`), or port 0 (any) for a range.
    pub fn bind_addr(&self) -> SocketAddr {
        let port = if self.ports.low == self.ports.high {
            self.ports.low
        } else {
            0
        };
        SocketAddr::new(self.addr, port)
    }
}

/// One data connection the rules allow: one negotiation, as a driver without a
/// packet filter carries it. [`Relay`](crate::Relay) takes the rules and applies
/// these (listen, admit, connect, join); its documentation states the semantics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Forward {
    /// Where the originator connects: the rdr-to rule's destination and port.
    pub listen: SocketAddr,
    /// The only peer allowed to connect: the rdr-to rule's source.
    pub from: IpAddr,
    /// The real endpoint: the rdr-to translation.
    pub target: SocketAddr,
    /// Where the connection to `target` comes from; `None` when the set holds no
    /// matching nat-to rule (the core always pairs them; the source is then the
    /// kernel's choice, and for a join).
    pub source: Option<Source>,
    /// A leg of a [`Mode::Joined`](crate::Mode::Joined) pair (a `join-with` rule):
    /// `target` is not connected to but is the `listen` address of the other leg,
    /// and the connection accepted here is joined with the one accepted there, in
    /// whichever order they arrive ([`Relay`](crate::Relay), "Joins").
    pub join: bool,
    /// What protects the accepted and the connected leg (the rdr-to or join-with
    /// rule's [`Rule::legs`]).
    pub legs: LegSecurity,
}

impl Forward {
    /// Whether a connection from `peer` may be carried. An IPv4 peer reported as an
    /// IPv4-mapped IPv6 address (a dual-stack socket) is compared as IPv4.
    pub fn admits(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        peer == self.from
    }
}

impl fmt::Display for Forward {
    /// `from -> listen -> target`, the shape of the relay's log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} -> {}", self.from, self.listen, self.target)
    }
}

/// A rule the userspace data path cannot carry out: only inbound `rdr-to` and
/// outbound `nat-to` rules have a meaning as sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardError {
    /// The rule, as given (boxed: a rule is large and the error is rare).
    pub rule: Box<Rule>,
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the userspace data path cannot carry out '{}'",
            self.rule
        )
    }
}

impl std::error::Error for ForwardError {}

impl From<ForwardError> for FilterError {
    /// A commit answered with this error leaves the session's old rules in force.
    fn from(e: ForwardError) -> FilterError {
        FilterError::Unsupported(e.to_string())
    }
}

/// The forwards of one rule set: each inbound `rdr-to` rule with its outbound
/// `nat-to` partner (same source, destination = the rdr-to target). An empty set
/// gives no forwards: the session's rules are removed.
pub fn forwards(rules: &[Rule]) -> Result<Vec<Forward>, ForwardError> {
    let mut out = Vec::new();
    for r in rules {
        match (r.direction, r.translate) {
            (Direction::In, Translate::RdrTo { addr, port }) => out.push(Forward {
                listen: SocketAddr::new(r.to, r.port),
                from: r.from,
                target: SocketAddr::new(addr, port),
                source: nat_partner(rules, r.from, SocketAddr::new(addr, port)),
                join: false,
                legs: r.legs,
            }),
            (Direction::In, Translate::JoinWith { addr, port }) => out.push(Forward {
                listen: SocketAddr::new(r.to, r.port),
                from: r.from,
                target: SocketAddr::new(addr, port),
                source: None,
                join: true,
                legs: r.legs,
            }),
            (Direction::Out, Translate::NatTo { .. } | Translate::BridgeWith { .. }) => {}
            _ => {
                return Err(ForwardError {
                    rule: Box::new(r.clone()),
                })
            }
        }
    }
    Ok(out)
}

/// One data connection the proxy makes on both sides and joins
/// ([`Mode::Bridged`](crate::Mode::Bridged), a pair of `bridge-with` rules): no one
/// connects to the proxy. The first leg goes to the server's passive port, the
/// second to the client's active port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bridge {
    /// The first leg's destination (the server's passive port).
    pub first: SocketAddr,
    /// Its source address (the proxy's address towards the server; any port).
    pub first_from: IpAddr,
    /// The second leg's destination (the client's port of its PORT/EPRT).
    pub second: SocketAddr,
    /// Its source address: the one the client expects the data connection from.
    pub second_from: IpAddr,
    /// What protects each leg, first then second (each rule's connected leg:
    /// the client's is TLS after `PROT P`).
    pub security: [Security; 2],
}

impl fmt::Display for Bridge {
    /// `first_from -> first bridged with second_from -> second`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} bridged with {} -> {}",
            self.first_from, self.first, self.second_from, self.second
        )
    }
}

/// The bridges of one rule set: each outbound `bridge-with` rule with the later one
/// it names (and that names it). A lone `bridge-with` rule is an error.
pub fn bridges(rules: &[Rule]) -> Result<Vec<Bridge>, ForwardError> {
    let mut out = Vec::new();
    let mut used = vec![false; rules.len()];
    for (i, r) in rules.iter().enumerate() {
        let Translate::BridgeWith { addr, port } = r.translate else {
            continue;
        };
        if used[i] {
            continue;
        }
        let partner = rules.iter().enumerate().skip(i + 1).find(|(j, p)| {
            !used[*j]
                && p.direction == Direction::Out
                && (p.to, p.port) == (addr, port)
                && p.translate
                    == Translate::BridgeWith {
                        addr: r.to,
                        port: r.port,
                    }
        });
        match (r.direction, partner) {
            (Direction::Out, Some((j, p))) => {
                used[i] = true;
                used[j] = true;
                out.push(Bridge {
                    first: SocketAddr::new(r.to, r.port),
                    first_from: r.from,
                    second: SocketAddr::new(p.to, p.port),
                    second_from: p.from,
                    security: [r.legs.connected, p.legs.connected],
                });
            }
            _ => {
                return Err(ForwardError {
                    rule: Box::new(r.clone()),
                })
            }
        }
    }
    Ok(out)
}

/// The nat-to rule for connections from `from` to `target`.
fn nat_partner(rules: &[Rule], from: IpAddr, target: SocketAddr) -> Option<Source> {
    rules.iter().find_map(|n| match n.translate {
        Translate::NatTo { addr, ports }
            if n.direction == Direction::Out
                && n.from == from
                && SocketAddr::new(n.to, n.port) == target =>
        {
            Some(Source { addr, ports })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{
        data_rules, Mode, RuleOptions, SessionAddrs, NAT_PORTS, RFC_ACTIVE_SOURCE_PORT,
    };

    fn v4() -> SessionAddrs {
        SessionAddrs {
            client: "203.0.113.10".parse().unwrap(),
            server: "198.51.100.10".parse().unwrap(),
            orig_server: "198.51.100.10".parse().unwrap(),
            proxy: "198.51.100.1".parse().unwrap(),
            client_rdomain: 0,
        }
    }

    fn v6() -> SessionAddrs {
        SessionAddrs {
            client: "2001:db8:1::10".parse().unwrap(),
            server: "2001:db8:2::10".parse().unwrap(),
            orig_server: "2001:db8:2::10".parse().unwrap(),
            proxy: "2001:db8:2::1".parse().unwrap(),
            client_rdomain: 0,
        }
    }

    /// Reverse mode (`-R`): the client reached the proxy's own address, the server
    /// is elsewhere.
    fn reverse() -> SessionAddrs {
        SessionAddrs {
            orig_server: "203.0.113.1".parse().unwrap(),
            ..v4()
        }
    }

    fn one(mode: Mode, a: &SessionAddrs, opts: &RuleOptions) -> Forward {
        let rules = data_rules(mode, a, 40000, 50000, opts);
        let mut f = forwards(&rules).unwrap();
        assert_eq!(f.len(), 1, "{rules:?}");
        f.remove(0)
    }

    fn fwd(listen: &str, from: &str, target: &str, src: &str, ports: PortRange) -> Forward {
        Forward {
            listen: listen.parse().unwrap(),
            from: from.parse().unwrap(),
            target: target.parse().unwrap(),
            source: Some(Source {
                addr: src.parse().unwrap(),
                ports,
            }),
            join: false,
            legs: LegSecurity::default(),
        }
    }

    #[test]
    fn passive_v4_listens_on_the_original_destination_and_connects_from_the_proxy() {
        let got = one(Mode::Passive, &v4(), &RuleOptions::default());
        let want = fwd(
            "198.51.100.10:50000",
            "203.0.113.10",
            "198.51.100.10:40000",
            "198.51.100.1",
            NAT_PORTS,
        );
        assert_eq!(got, want);
        assert_eq!(
            got.source.unwrap().bind_addr(),
            "198.51.100.1:0".parse().unwrap()
        );
    }

    #[test]
    fn passive_v6() {
        let got = one(Mode::Passive, &v6(), &RuleOptions::default());
        let want = fwd(
            "[2001:db8:2::10]:50000",
            "2001:db8:1::10",
            "[2001:db8:2::10]:40000",
            "2001:db8:2::1",
            NAT_PORTS,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn active_port_v4_listens_on_the_proxy_and_connects_as_the_server() {
        let got = one(Mode::ActivePort, &v4(), &RuleOptions::default());
        let want = fwd(
            "198.51.100.1:50000",
            "198.51.100.10",
            "203.0.113.10:40000",
            "198.51.100.10",
            NAT_PORTS,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn active_eprt_v6() {
        let got = one(Mode::ActiveEprt, &v6(), &RuleOptions::default());
        let want = fwd(
            "[2001:db8:2::1]:50000",
            "2001:db8:2::10",
            "[2001:db8:1::10]:40000",
            "2001:db8:2::10",
            NAT_PORTS,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn rfc_mode_binds_port_20_for_port_but_not_for_eprt() {
        let opts = RuleOptions {
            rfc_mode: true,
            ..RuleOptions::default()
        };
        let port = one(Mode::ActivePort, &v4(), &opts);
        let src = port.source.unwrap();
        assert_eq!(src.ports, PortRange::single(RFC_ACTIVE_SOURCE_PORT));
        assert_eq!(src.bind_addr(), "198.51.100.10:20".parse().unwrap());
        let eprt = one(Mode::ActiveEprt, &v4(), &opts);
        assert_eq!(eprt.source.unwrap().bind_addr().port(), 0);
    }

    #[test]
    fn reverse_mode_listens_on_the_proxy_address_the_client_reached() {
        let passive = one(Mode::Passive, &reverse(), &RuleOptions::default());
        assert_eq!(
            passive,
            fwd(
                "203.0.113.1:50000",
                "203.0.113.10",
                "198.51.100.10:40000",
                "198.51.100.1",
                NAT_PORTS
            )
        );
        // Active: the client sees the data connection come from the address it reached.
        let active = one(Mode::ActivePort, &reverse(), &RuleOptions::default());
        assert_eq!(
            active,
            fwd(
                "198.51.100.1:50000",
                "198.51.100.10",
                "203.0.113.10:40000",
                "203.0.113.1",
                NAT_PORTS
            )
        );
    }

    #[test]
    fn tag_and_queue_do_not_change_the_forward() {
        let opts = RuleOptions {
            tag: Some("ftp".into()),
            queue: Some("q".into()),
            ..RuleOptions::default()
        };
        assert_eq!(
            one(Mode::Passive, &v4(), &opts),
            one(Mode::Passive, &v4(), &RuleOptions::default())
        );
    }

    #[test]
    fn empty_set_has_no_forwards_and_a_lone_rdr_has_no_source() {
        assert!(forwards(&[]).unwrap().is_empty());
        let rules = data_rules(Mode::Passive, &v4(), 40000, 50000, &RuleOptions::default());
        let f = forwards(&rules[..1]).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].source, None);
    }

    #[test]
    fn an_inbound_nat_rule_is_refused_with_the_rule() {
        let mut rules = data_rules(Mode::Passive, &v4(), 40000, 50000, &RuleOptions::default());
        rules[1].direction = Direction::In;
        let e = forwards(&rules).unwrap_err();
        assert_eq!(*e.rule, rules[1]);
        assert!(
            matches!(FilterError::from(e), FilterError::Unsupported(t) if t.contains("nat-to"))
        );
    }

    #[test]
    fn joined_gives_two_legs_that_name_each_other() {
        let rules = data_rules(
            Mode::Joined,
            &reverse(),
            40000,
            50000,
            &RuleOptions::default(),
        );
        let f = forwards(&rules).unwrap();
        assert_eq!(f.len(), 2, "{rules:?}");
        let client: SocketAddr = "203.0.113.1:50000".parse().unwrap();
        let server: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        assert_eq!((f[0].listen, f[0].target), (client, server));
        assert_eq!((f[1].listen, f[1].target), (server, client));
        assert_eq!(f[0].from, reverse().client);
        assert_eq!(f[1].from, reverse().server);
        assert!(f.iter().all(|f| f.join && f.source.is_none()));
        assert_eq!(
            rules[0].to_string(),
            "pass in quick inet proto tcp from 203.0.113.10 to 203.0.113.1 port 50000 \
             flags S/SA keep state (max 1) join-with 198.51.100.1 port 40000"
        );
    }

    #[test]
    fn bridged_gives_one_bridge_and_no_forward() {
        let rules = data_rules(
            Mode::Bridged,
            &reverse(),
            40000,
            30000,
            &RuleOptions::default(),
        );
        assert!(forwards(&rules).unwrap().is_empty());
        let b = bridges(&rules).unwrap();
        assert_eq!(
            b,
            [Bridge {
                first: "198.51.100.10:30000".parse().unwrap(),
                first_from: reverse().proxy,
                second: "203.0.113.10:40000".parse().unwrap(),
                second_from: reverse().orig_server,
                security: [Security::Plain; 2],
            }]
        );
        // After PROT P the client's leg (the second: the proxy connects to it) is TLS.
        let mut prot_p = rules.clone();
        crate::rules::protect_client_leg(Mode::Bridged, &mut prot_p, Security::Tls);
        assert_eq!(
            bridges(&prot_p).unwrap()[0].security,
            [Security::Plain, Security::Tls]
        );
        assert_eq!(
            rules[0].to_string(),
            "pass out quick inet proto tcp from 198.51.100.1 to 198.51.100.10 port 30000 \
             flags S/SA keep state (max 1) bridge-with 203.0.113.10 port 40000"
        );
        let lone = bridges(&rules[..1]).unwrap_err();
        assert_eq!(*lone.rule, rules[0]);
        assert!(bridges(&data_rules(
            Mode::Passive,
            &v4(),
            1,
            2,
            &RuleOptions::default()
        ))
        .unwrap()
        .is_empty());
    }

    #[test]
    fn admits_only_from_also_when_mapped() {
        let f = one(Mode::Passive, &v4(), &RuleOptions::default());
        assert!(f.admits("203.0.113.10".parse().unwrap()));
        assert!(f.admits("::ffff:203.0.113.10".parse().unwrap()));
        assert!(!f.admits("203.0.113.11".parse().unwrap()));
        assert_eq!(
            f.to_string(),
            "203.0.113.10 -> 198.51.100.10:50000 -> 198.51.100.10:40000"
        );
    }
}
