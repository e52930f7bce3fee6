//! Packet-filter rules as plain data.
//!
//! Every data-connection negotiation produces exactly two rules, in the shape of the
//! man page's CONFIGURATION section: an `rdr-to` rule that steers the data
//! connection's first SYN to its real endpoint, and a `nat-to` rule that rewrites
//! its source so each endpoint sees the peer it expects. Backends (pf ioctl,
//! nftables, the userspace relay) translate these values; [`Rule`]'s `Display`
//! renders them in pf.conf syntax for logs and golden tests.

use std::fmt;
use std::net::IpAddr;

use crate::relay::Security;

/// Lowest data port an endpoint may negotiate (`MIN_PORT`).
pub const MIN_DATA_PORT: u16 = 1024;
/// The NAT source-port range pfctl uses by default (`PF_NAT_PROXY_PORT_LOW/HIGH`).
pub const NAT_PORTS: PortRange = PortRange {
    low: 50001,
    high: 65535,
};
/// Source port of active data connections with `-r` and PORT (RFC 959's L-1).
pub const RFC_ACTIVE_SOURCE_PORT: u16 = 20;

/// The anchor a session's rules live in: `ftp-proxy/<pid>.<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Anchor {
    /// Process id of the daemon (after it forked), so that two daemons never collide.
    pub pid: u32,
    /// The session id, unique for the life of the process.
    pub session: u32,
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ftp-proxy/{}.{}", self.pid, self.session)
    }
}

/// `pass` ends evaluation of a data connection in the anchor; `match` (with `-T`)
/// only tags it, leaving the verdict to the admin's own `tagged` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `pass` (PF_PASS).
    Pass,
    /// `match` (PF_MATCH), used with `-T tag`.
    Match,
}

/// Which way the packet crosses the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Inbound (PF_IN): the rdr-to rule.
    In,
    /// Outbound (PF_OUT): the nat-to rule.
    Out,
}

/// Rule logging, from `-v` (`log`) and `-vv` (`log (all)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuleLog {
    /// No logging (the default).
    #[default]
    None,
    /// `log`: the packet that creates state.
    Log,
    /// `log (all)`: every packet of the connection.
    All,
}

/// Address family of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    Inet,
    /// IPv6.
    Inet6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }
}

/// An inclusive port range (`low:high` in pf.conf; a single port when equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port (inclusive).
    pub high: u16,
}

impl PortRange {
    /// A range holding one port.
    pub const fn single(port: u16) -> PortRange {
        PortRange {
            low: port,
            high: port,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}:{}", self.low, self.high)
        }
    }
}

/// What the rule does to the matching connection's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Translate {
    /// Rewrite the destination (`rdr-to addr port port`).
    RdrTo {
        /// New destination address.
        addr: IpAddr,
        /// New destination port.
        port: u16,
    },
    /// Rewrite the source (`nat-to addr port low:high`).
    NatTo {
        /// New source address.
        addr: IpAddr,
        /// Source ports to pick from.
        ports: PortRange,
    },
    /// Beyond pf: join the connection with the one that arrives at `addr` port
    /// `port`, the destination of the other rule of a [`Mode::Joined`] pair. Both
    /// data connections end at the proxy, so only a userspace data path (the relay)
    /// can carry it; a kernel filter refuses the rule set as unsupported.
    JoinWith {
        /// The other rule's destination address.
        addr: IpAddr,
        /// The other rule's destination port.
        port: u16,
    },
    /// Beyond pf: an outbound rule of a [`Mode::Bridged`] pair. The proxy itself
    /// connects from the rule's source to its destination, and joins that
    /// connection with the one it makes to `addr` port `port` (the other rule's
    /// destination). No one connects to the proxy, so only a userspace data path
    /// (the relay) can carry it; a kernel filter refuses the rule set.
    BridgeWith {
        /// The other rule's destination address.
        addr: IpAddr,
        /// The other rule's destination port.
        port: u16,
    },
}

/// One packet-filter rule for one data connection.
///
/// Common to every rule the proxy makes, and therefore not stored: `proto tcp`,
/// exact host matches on source and destination, `flags S/SA` and
/// `keep state (max 1)` (one data connection per negotiation at a time).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `pass`, or `match` with `-T`.
    pub verdict: Verdict,
    /// `in` for rdr-to rules, `out` for nat-to rules.
    pub direction: Direction,
    /// `quick`: true unless `-T` is given.
    pub quick: bool,
    /// `log` / `log (all)`.
    pub log: RuleLog,
    /// Source host of the data connection.
    pub from: IpAddr,
    /// Destination host of the data connection.
    pub to: IpAddr,
    /// Destination port of the data connection.
    pub port: u16,
    /// `queue name` (`-q`).
    pub queue: Option<String>,
    /// `tag name` (`-T`).
    pub tag: Option<String>,
    /// Routing domain the packet must arrive on (`on rdomain N`); pf's `onrdomain`.
    pub on_rdomain: Option<u32>,
    /// Routing table to continue in after translation (`rtable N`); pf's `rtableid`.
    pub rtable: Option<u32>,
    /// The address translation.
    pub translate: Translate,
    /// What protects the legs of the data connection an inbound rule lets through
    /// (RFC 4217 `PROT P` makes the client's leg TLS). Not part of pf's syntax and
    /// not printed: a packet filter cannot carry a TLS leg, so a daemon with one
    /// never turns client TLS on ([`crate::Config::validate`]); the relay reads it
    /// ([`crate::Forward::legs`]).
    pub legs: LegSecurity,
}

/// What protects the two legs of one data connection, named as the relay makes
/// them: the connection accepted on the rule's listening address, and the one the
/// proxy opens to its target (for a join, the other leg's accepted connection has
/// its own rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LegSecurity {
    /// The connection from the rule's source.
    pub accepted: Security,
    /// The connection to the rule's target.
    pub connected: Security,
}

impl Default for LegSecurity {
    /// Both plain.
    fn default() -> LegSecurity {
        LegSecurity {
            accepted: Security::Plain,
            connected: Security::Plain,
        }
    }
}

/// Marks the client's leg of a negotiation's data connection as `client`
/// ([`crate::ftps::FtpsState::client_data_security`]) in the rules
/// [`data_rules`] made for `mode`: the accepted leg of a passive rule (the client
/// connects), the connected leg of an active one (the proxy connects to the
/// client), the accepted leg of a join's first rule (the client's), and the
/// connected leg of a bridge's second rule (the proxy connects to the client).
/// The server's leg is [`protect_server_leg`]'s.
pub fn protect_client_leg(mode: Mode, rules: &mut [Rule; 2], client: Security) {
    match mode {
        Mode::Passive | Mode::Joined => rules[0].legs.accepted = client,
        Mode::ActivePort | Mode::ActiveEprt => rules[0].legs.connected = client,
        Mode::Bridged => rules[1].legs.connected = client,
    }
}

/// Marks the server's leg of a negotiation's data connection as `server`
/// ([`crate::ftps::server_data_security`]) in the rules [`data_rules`] made for
/// `mode`: the connected leg of a passive rule (the proxy connects to the
/// server), the accepted leg of an active one (the server connects), the accepted
/// leg of a join's second rule (the server's), and the connected leg of a
/// bridge's first rule (the proxy connects to the server).
pub fn protect_server_leg(mode: Mode, rules: &mut [Rule; 2], server: Security) {
    match mode {
        Mode::Passive => rules[0].legs.connected = server,
        Mode::ActivePort | Mode::ActiveEprt => rules[0].legs.accepted = server,
        Mode::Joined => rules[1].legs.accepted = server,
        Mode::Bridged => rules[0].legs.connected = server,
    }
}

impl Rule {
    /// The rule's address family (that of its source).
    pub fn family(&self) -> Family {
        Family::of(self.from)
    }
}

impl fmt::Display for Rule {
    /// pf.conf syntax, in pfctl's keyword order. Routing domain 0 and table 0 are the
    /// defaults and are left out, so the usual rule reads exactly as in the man page.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.verdict {
            Verdict::Pass => "pass",
            Verdict::Match => "match",
        })?;
        f.write_str(match self.direction {
            Direction::In => " in",
            Direction::Out => " out",
        })?;
        match self.log {
            RuleLog::None => {}
            RuleLog::Log => f.write_str(" log")?,
            RuleLog::All => f.write_str(" log (all)")?,
        }
        if self.quick {
            f.write_str(" quick")?;
        }
        if let Some(rd) = self.on_rdomain.filter(|&rd| rd != 0) {
            write!(f, " on rdomain {rd}")?;
        }
        f.write_str(match self.family() {
            Family::Inet => " inet",
            Family::Inet6 => " inet6",
        })?;
        write!(
            f,
            " proto tcp from {} to {} port {} flags S/SA keep state (max 1)",
            self.from, self.to, self.port
        )?;
        if let Some(q) = &self.queue {
            write!(f, " queue {q}")?;
        }
        if let Some(rt) = self.rtable.filter(|&rt| rt != 0) {
            write!(f, " rtable {rt}")?;
        }
        if let Some(t) = &self.tag {
            write!(f, " tag {t}")?;
        }
        match self.translate {
            Translate::RdrTo { addr, port } => write!(f, " rdr-to {addr} port {port}"),
            Translate::NatTo { addr, ports } => write!(f, " nat-to {addr} port {ports}"),
            Translate::JoinWith { addr, port } => write!(f, " join-with {addr} port {port}"),
            Translate::BridgeWith { addr, port } => write!(f, " bridge-with {addr} port {port}"),
        }
    }
}

/// Options from the command line that shape every rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// `-T tag`: `match` rules, not quick, tagged.
    pub tag: Option<String>,
    /// `-q queue`.
    pub queue: Option<String>,
    /// `-v` / `-vv`.
    pub log: RuleLog,
    /// `-r`: active-mode data connections for PORT come from port 20.
    pub rfc_mode: bool,
    /// Routing table of the proxy process (`getrtable()`; 0 elsewhere).
    pub proxy_rtable: u32,
}

/// The addresses of one session, as ftp-proxy(8) names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionAddrs {
    /// The control connection's client.
    pub client: IpAddr,
    /// The server the proxy connects to (`-R` address, or the original destination).
    pub server: IpAddr,
    /// The address the client originally tried to reach.
    pub orig_server: IpAddr,
    /// The proxy's own source address towards the server.
    pub proxy: IpAddr,
    /// Routing domain of the client's connection (SO_RTABLE; 0 elsewhere).
    pub client_rdomain: u32,
}

/// Which negotiation the rules are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// PASV or EPSV: the client connects to the server.
    Passive,
    /// PORT: the server connects to the client.
    ActivePort,
    /// EPRT: the server connects to the client (never rewritten to port 20).
    ActiveEprt,
    /// PASV or EPSV from the client, served by PORT/EPRT towards the server: the
    /// client connects to the proxy port of the rewritten 227/229, the server to the
    /// one of the proxy's PORT/EPRT, and the proxy joins the two. No port from a
    /// server reply is used, which is the point: the session falls back to this after
    /// a reply whose lines the client may have chosen (docs/behavior.md, "Replies out
    /// of step"). Only a userspace data path can carry it.
    Joined,
    /// PORT or EPRT from the client, served by PASV/EPSV towards the server
    /// (`--server-data-mode passive`): the proxy connects to the server's passive
    /// port and to the client's active port and joins the two. `port` of
    /// [`data_rules`] is the client's port, `proxy_port` the server's (the proxy
    /// advertises no port of its own). Only a userspace data path can carry it.
    Bridged,
}

/// The two rules of one negotiation, in the shape of the man page's CONFIGURATION
/// section (OpenBSD's `add_rdr` and `add_nat` calls in `ftp-proxy.c`).
///
/// `port` is the data port the endpoint negotiated, `proxy_port` the one the proxy
/// advertised in its place. Passive mode: the client connects to the server through
/// the proxy port; active mode: the server connects to the client through it.
/// [`Mode::Joined`]: `proxy_port` is the one advertised to the client and `port` the
/// one the proxy's PORT/EPRT gives the server; each rule joins with the other.
pub fn data_rules(
    mode: Mode,
    a: &SessionAddrs,
    port: u16,
    proxy_port: u16,
    opts: &RuleOptions,
) -> [Rule; 2] {
    let proxy_rt = opts.proxy_rtable;
    let [rdr, nat] = match mode {
        Mode::Passive => [
            Shape {
                direction: Direction::In,
                from: a.client,
                to: a.orig_server,
                port: proxy_port,
                on_rdomain: a.client_rdomain,
                rtable: Some(proxy_rt),
                translate: Translate::RdrTo {
                    addr: a.server,
                    port,
                },
            },
            Shape {
                direction: Direction::Out,
                from: a.client,
                to: a.server,
                port,
                on_rdomain: proxy_rt,
                rtable: None,
                translate: Translate::NatTo {
                    addr: a.proxy,
                    ports: NAT_PORTS,
                },
            },
        ],
        Mode::ActivePort | Mode::ActiveEprt => [
            Shape {
                direction: Direction::In,
                from: a.server,
                to: a.proxy,
                port: proxy_port,
                on_rdomain: proxy_rt,
                rtable: Some(a.client_rdomain),
                translate: Translate::RdrTo {
                    addr: a.client,
                    port,
                },
            },
            Shape {
                direction: Direction::Out,
                from: a.server,
                to: a.client,
                port,
                on_rdomain: a.client_rdomain,
                rtable: None,
                translate: Translate::NatTo {
                    addr: a.orig_server,
                    ports: active_source_ports(mode, opts),
                },
            },
        ],
        Mode::Joined => [
            // pass in from $client to $orig_server port $proxy_port join-with $proxy port $port
            Shape {
                direction: Direction::In,
                from: a.client,
                to: a.orig_server,
                port: proxy_port,
                on_rdomain: a.client_rdomain,
                rtable: None,
                translate: Translate::JoinWith {
                    addr: a.proxy,
                    port,
                },
            },
            // pass in from $server to $proxy port $port join-with $orig_server port $proxy_port
            Shape {
                direction: Direction::In,
                from: a.server,
                to: a.proxy,
                port,
                on_rdomain: proxy_rt,
                rtable: None,
                translate: Translate::JoinWith {
                    addr: a.orig_server,
                    port: proxy_port,
                },
            },
        ],
        Mode::Bridged => [
            // pass out from $proxy to $server port $server_port bridge-with $client port $port
            Shape {
                direction: Direction::Out,
                from: a.proxy,
                to: a.server,
                port: proxy_port,
                on_rdomain: proxy_rt,
                rtable: None,
                translate: Translate::BridgeWith {
                    addr: a.client,
                    port,
                },
            },
            // pass out from $orig_server to $client port $port bridge-with $server port $server_port
            Shape {
                direction: Direction::Out,
                from: a.orig_server,
                to: a.client,
                port,
                on_rdomain: a.client_rdomain,
                rtable: None,
                translate: Translate::BridgeWith {
                    addr: a.server,
                    port: proxy_port,
                },
            },
        ],
    };
    [rdr.rule(opts), nat.rule(opts)]
}

/// Source ports of an active data connection: port 20 for PORT with `-r` (RFC 959),
/// pf's NAT range otherwise (EPRT is never rewritten to port 20).
fn active_source_ports(mode: Mode, opts: &RuleOptions) -> PortRange {
    if opts.rfc_mode && mode == Mode::ActivePort {
        PortRange::single(RFC_ACTIVE_SOURCE_PORT)
    } else {
        NAT_PORTS
    }
}

/// What differs between the rules of a negotiation; [`Shape::rule`] adds what the
/// command line sets for all of them. Named fields, because `from` and `to` (and
/// the two routing numbers) have the same types and are easy to swap.
struct Shape {
    direction: Direction,
    from: IpAddr,
    to: IpAddr,
    port: u16,
    on_rdomain: u32,
    rtable: Option<u32>,
    translate: Translate,
}

impl Shape {
    fn rule(self, opts: &RuleOptions) -> Rule {
        let tagged = opts.tag.is_some();
        Rule {
            verdict: if tagged {
                Verdict::Match
            } else {
                Verdict::Pass
            },
            direction: self.direction,
            quick: !tagged,
            log: opts.log,
            from: self.from,
            to: self.to,
            port: self.port,
            queue: opts.queue.clone(),
            tag: opts.tag.clone(),
            on_rdomain: Some(self.on_rdomain),
            rtable: self.rtable,
            translate: self.translate,
            legs: LegSecurity::default(),
        }
    }
}
