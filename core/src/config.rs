//! Settings of a proxy instance, one field per ftp-proxy(8) option that reaches the core.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::ftps::{ClientTls, ServerTls, TlsPolicy};
use crate::nat64::Nat64Prefix;
use crate::route::{DestPolicy, RouteTable};
use crate::rules::{PortRange, RuleLog, RuleOptions, MIN_DATA_PORT};
use crate::translate::{check_data_path, DataPathError, ServerDataMode};

/// The proxy ports the original draws from: 49152..=65534
/// (`IPPORT_HIFIRSTAUTO` up to one below `IPPORT_HILASTAUTO`).
pub const DEFAULT_PROXY_PORTS: PortRange = PortRange {
    low: 49152,
    high: 65534,
};

/// Highest `-m` value the original accepts.
pub const MAX_SESSIONS_LIMIT: u32 = 500;
/// Highest `-t` value (one day), also the default.
pub const MAX_TIMEOUT_SECS: u32 = 86400;
/// pf's `PF_TAG_NAME_SIZE` / `PF_QNAME_SIZE`: names must be shorter than this.
pub const PF_NAME_SIZE: usize = 64;
/// The default of [`Config::login_timeout_secs`]: long enough for a person to type
/// a password, short enough that `-m` connections that never log in free their
/// slots within minutes.
pub const DEFAULT_LOGIN_TIMEOUT_SECS: u32 = 120;
/// 30 seconds: how long a new session waits for the server's first bytes (the
/// original's `CONNECT_TIMEOUT`).
///
/// The timer starts when the session is accepted, before
/// [`Action::ConnectServer`](crate::Action::ConnectServer), and only server data
/// ([`Input::Data`](crate::Input::Data) from the server) moves it on, to the idle
/// timeout; [`Input::ServerConnected`](crate::Input::ServerConnected) does not. So a
/// connect that never completes (no SYN-ACK, no RST) is covered by the core's own
/// timer, whatever the driver's connect does: 30 s after the accept the session
/// closes with `server timeout` (a warning, `CloseReason::Timeout(Server)`), and so
/// does one whose server connects but never sends its greeting. The driver then
/// abandons its connect attempt when it executes the `Close`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`Config::resolve_timeout_secs`]: a resolver that has not
/// answered in 10 s (two of glibc's 5 s tries against one name server) is not
/// going to, and the client is waiting at its `USER` prompt.
pub const DEFAULT_RESOLVE_TIMEOUT_SECS: u32 = 10;
/// 5 milliseconds: the pause before the single retry of a commit the filter reported
/// busy ([`FilterError::Busy`](crate::FilterError::Busy)). The same transaction is
/// emitted again once; a second `Busy` ends the session like any other filter error.
pub const COMMIT_RETRY_DELAY: Duration = Duration::from_millis(5);

/// Everything the core needs to know about the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `-6`: IPv6 mode; PASV and PORT are refused.
    pub ipv6: bool,
    /// `-A`: only `USER ftp` and `USER anonymous` are forwarded.
    pub anonymous_only: bool,
    /// `-m`: concurrent sessions (1..=500, default 100).
    pub max_sessions: u32,
    /// `-t`: idle timeout of the control connection in seconds (0 = none, default 86400).
    pub idle_timeout_secs: u32,
    /// `-R` with `-P`: always connect to this server (reverse mode).
    pub fixed_server: Option<SocketAddr>,
    /// `-a`: source address of the connection to the server.
    pub source_addr: Option<IpAddr>,
    /// `-q`, `-T`, `-v`, `-r`, and the proxy's routing table.
    pub rules: RuleOptions,
    /// Process id used in anchor names (`ftp-proxy/<pid>.<id>`). The default is 0,
    /// which the core accepts: the daemon sets its own pid after it forked; a
    /// driver running several proxies against one filter must give each its own.
    pub pid: u32,
    /// `--proxy-ports`: the ports the proxy advertises in rewritten lines (and that
    /// its rules listen on), drawn uniformly. Default [`DEFAULT_PROXY_PORTS`], as the
    /// original. Beyond the original: a firewall that confines data ports to a
    /// pinhole range can confine the proxy's too (docs/behavior.md).
    pub proxy_ports: PortRange,
    /// `--server-data-ports`: the only server ports a 227/229 reply may name (the
    /// server's passive range). `None` (the default, as the original) accepts any
    /// port from 1024 up. Beyond the original: it bounds what a server reply the
    /// client managed to shape could open (docs/behavior.md).
    pub server_data_ports: Option<PortRange>,
    /// The data connections are carried by a userspace relay (the mio runtime's
    /// `DataPath::Relay`, the threaded example), which can join two connections that
    /// both end at the proxy ([`Mode::Joined`](crate::Mode::Joined)); a kernel
    /// filter cannot. It decides how a passive transfer is served once the server's
    /// replies may hold lines the client chose (docs/behavior.md, "Replies out of
    /// step"): joined through the relay, or refused with 425 unless
    /// [`server_data_ports`](Self::server_data_ports) bounds what a reply may name.
    /// Default `false`.
    pub relay: bool,
    /// `--login-timeout`: seconds from the accept until the server's `230` (login
    /// complete) before the session is ended, 0 for none. Beyond the original, where
    /// only `-t` (a day by default) bounds a client that connects and never logs in,
    /// so that `-m` such connections lock everyone out. Default
    /// [`DEFAULT_LOGIN_TIMEOUT_SECS`].
    pub login_timeout_secs: u32,
    /// `--user-at-host` (forward mode, beyond the original): the proxy greets the
    /// client itself and connects to the server named in `USER name@host[:port]`,
    /// if this destination policy allows the resolved address (docs/forward-proxy.md).
    /// `None` (the default): the server is the fixed one or the diverted destination.
    pub user_at_host: Option<DestPolicy>,
    /// `--route-file` (beyond the original): like forward mode the proxy greets
    /// the client itself, but the server comes from this table, looked up on the
    /// plain `USER name`, which is sent on unchanged (docs/forward-proxy.md). No
    /// destination policy applies: the table is the administrator's own list.
    /// Replaced at run time with [`Proxy::set_routes`](crate::Proxy::set_routes).
    /// `None` (the default): no table.
    pub routes: Option<RouteTable>,
    /// `--resolve-timeout`: seconds a forward-mode host name lookup may take before
    /// the session ends with `421`. Default [`DEFAULT_RESOLVE_TIMEOUT_SECS`].
    pub resolve_timeout_secs: u32,
    /// `--server-data-mode`: how the proxy asks the server for a data connection,
    /// independent of the client's mode. Anything but the default
    /// [`ServerDataMode::Client`] (the original's behaviour) needs
    /// [`relay`](Self::relay): its transfers have legs of different kinds.
    pub server_data_mode: ServerDataMode,
    /// `--tls-cert`/`--tls-implicit`/`--tls-required`: FTPS towards clients (RFC
    /// 4217; [`crate::ftps`] decides the commands). Default off: `AUTH` is answered
    /// `534`, as by a proxy that carries plain text only. Client TLS needs reverse
    /// mode ([`fixed_server`](Self::fixed_server)) and the relay
    /// ([`relay`](Self::relay)): a `PROT P` data connection is TLS on the client's
    /// leg only, which a packet filter cannot carry ([`Config::validate`]).
    pub tls: TlsPolicy,
    /// `--nat64-prefix` (transparent mode, beyond the original): a diverted
    /// connection whose original destination lies inside this /96 prefix is served
    /// by the IPv4 server embedded in its last 32 bits, on the port the client
    /// asked for ([`Nat64Prefix::server_for`]). Such a session is an IPv6 client
    /// with an IPv4 server, so its transfers are translated and need
    /// [`relay`](Self::relay). `None` (the default): destinations are served as
    /// they are.
    pub nat64_prefix: Option<Nat64Prefix>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ipv6: false,
            anonymous_only: false,
            max_sessions: 100,
            idle_timeout_secs: MAX_TIMEOUT_SECS,
            fixed_server: None,
            source_addr: None,
            rules: RuleOptions {
                log: RuleLog::None,
                ..RuleOptions::default()
            },
            pid: 0,
            proxy_ports: DEFAULT_PROXY_PORTS,
            server_data_ports: None,
            relay: false,
            login_timeout_secs: DEFAULT_LOGIN_TIMEOUT_SECS,
            user_at_host: None,
            routes: None,
            resolve_timeout_secs: DEFAULT_RESOLVE_TIMEOUT_SECS,
            server_data_mode: ServerDataMode::Client,
            tls: TlsPolicy::default(),
            nat64_prefix: None,
        }
    }
}

/// A setting outside the range ftp-proxy(8) allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `-m` outside 1..=500.
    MaxSessions(u32),
    /// `-t` above 86400.
    Timeout(u32),
    /// `-T` of 64 bytes or more.
    TagTooLong,
    /// `-q` of 64 bytes or more.
    QueueTooLong,
    /// An address of the wrong family for the mode (`-6` or not).
    Family(&'static str),
    /// A server data-port range that is empty or reaches below 1024.
    DataPorts(PortRange),
    /// A proxy-port range that is empty or reaches below 1024.
    ProxyPorts(PortRange),
    /// `--user-at-host` with `-R`: the server comes from one or the other.
    ForwardAndFixed,
    /// `--route-file` with `-R` or `--user-at-host`: the server comes from the
    /// table or from the other option.
    RoutesExclusive,
    /// [`Proxy::set_routes`](crate::Proxy::set_routes) on a proxy started without
    /// a route table: a table would change how its sessions choose their server.
    NoRoutes,
    /// `--resolve-timeout` of 0 or above 86400.
    ResolveTimeout(u32),
    /// Transfers would need the relay, and the data path is a packet filter.
    DataPath(DataPathError),
    /// A TLS setting this build or mode cannot serve (what is missing).
    Tls(&'static str),
    /// `--nat64-prefix` with an option it cannot be combined with (which, and why).
    Nat64(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MaxSessions(m) if *m < 1 => f.write_str("max sessions too small"),
            ConfigError::MaxSessions(_) => f.write_str("max sessions too large"),
            ConfigError::Timeout(_) => f.write_str("timeout too large"),
            ConfigError::TagTooLong => f.write_str("tagname too long"),
            ConfigError::QueueTooLong => f.write_str("queuename too long"),
            ConfigError::Family(what) => write!(f, "{what} address family does not match the mode"),
            ConfigError::DataPorts(r) => write!(
                f,
                "server data ports {r}: need low <= high, both from {MIN_DATA_PORT} up"
            ),
            ConfigError::DataPath(e) => write!(f, "{e}"),
            ConfigError::ProxyPorts(r) => write!(
                f,
                "proxy ports {r}: need low <= high, both from {MIN_DATA_PORT} up"
            ),
            ConfigError::ForwardAndFixed => f.write_str(
                "--user-at-host and -R exclude each other: the server comes from USER or is fixed",
            ),
            ConfigError::RoutesExclusive => f.write_str(
                "--route-file excludes -R and --user-at-host: the server comes from the table",
            ),
            ConfigError::NoRoutes => {
                f.write_str("no route table to replace: the proxy was started without one")
            }
            ConfigError::ResolveTimeout(t) => {
                write!(
                    f,
                    "resolve timeout {t}: need 1..={MAX_TIMEOUT_SECS} seconds"
                )
            }
            ConfigError::Tls(why) => write!(f, "FTPS: {why}"),
            ConfigError::Nat64(why) => write!(f, "--nat64-prefix: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every range the original's option parser checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SESSIONS_LIMIT).contains(&self.max_sessions) {
            return Err(ConfigError::MaxSessions(self.max_sessions));
        }
        if self.idle_timeout_secs > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Timeout(self.idle_timeout_secs));
        }
        if self.login_timeout_secs > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Timeout(self.login_timeout_secs));
        }
        if self
            .rules
            .tag
            .as_ref()
            .is_some_and(|t| t.len() >= PF_NAME_SIZE)
        {
            return Err(ConfigError::TagTooLong);
        }
        if self
            .rules
            .queue
            .as_ref()
            .is_some_and(|q| q.len() >= PF_NAME_SIZE)
        {
            return Err(ConfigError::QueueTooLong);
        }
        self.validate_nat64()?;
        // `ipv6` is the client side's family; a fixed server of the other family
        // makes every session cross families, which only the relay carries.
        let server_v6 = self.fixed_server.map_or(self.ipv6, |s| s.is_ipv6());
        if self.source_addr.is_some_and(|s| s.is_ipv6() != server_v6) {
            return Err(ConfigError::Family("source"));
        }
        if self.user_at_host.is_some() && self.fixed_server.is_some() {
            return Err(ConfigError::ForwardAndFixed);
        }
        if self.routes.is_some() && (self.user_at_host.is_some() || self.fixed_server.is_some()) {
            return Err(ConfigError::RoutesExclusive);
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.resolve_timeout_secs) {
            return Err(ConfigError::ResolveTimeout(self.resolve_timeout_secs));
        }
        check_data_path(self.server_data_mode, server_v6 != self.ipv6, self.relay)
            .map_err(ConfigError::DataPath)?;
        let r = self.proxy_ports;
        if r.low > r.high || r.low < MIN_DATA_PORT {
            return Err(ConfigError::ProxyPorts(r));
        }
        if let Some(r) = self.server_data_ports {
            if r.low > r.high || r.low < MIN_DATA_PORT {
                return Err(ConfigError::DataPorts(r));
            }
        }
        self.validate_tls()
    }

    /// NAT64 picks the server from the diverted destination, so it is for
    /// transparent mode only; and a session's server may then be of either
    /// family, which one `-a` address cannot match.
    fn validate_nat64(&self) -> Result<(), ConfigError> {
        if self.nat64_prefix.is_none() {
            return Ok(());
        }
        if self.fixed_server.is_some() {
            return Err(ConfigError::Nat64(
                "needs transparent mode: with -R the server is fixed",
            ));
        }
        if self.server_after_user() {
            return Err(ConfigError::Nat64(
                "needs transparent mode: with --user-at-host or --route-file the server comes from USER",
            ));
        }
        if self.source_addr.is_some() {
            return Err(ConfigError::Nat64(
                "-a cannot be combined: servers are then of both families",
            ));
        }
        if !self.relay {
            return Err(ConfigError::DataPath(DataPathError::Nat64NeedsRelay));
        }
        Ok(())
    }

    /// The server a session connects to, given the client's original destination:
    /// the fixed server (`-R`), else the IPv4 server a `--nat64-prefix` address
    /// embeds, else the destination itself.
    pub fn server_for(&self, orig_dst: SocketAddr) -> SocketAddr {
        self.fixed_server
            .or_else(|| self.nat64_prefix.and_then(|p| p.server_for(orig_dst)))
            .unwrap_or(orig_dst)
    }

    /// TLS on either side is for reverse mode with the relay. Towards clients the
    /// proxy holds the certificate of the one server it fronts; towards servers
    /// it checks the certificate against the `-R` name, which transparent and
    /// forward mode do not have (their server is chosen per session). A TLS data
    /// connection is decrypted in the proxy, so it must pass through user space,
    /// which a packet filter's data path never does.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = self.tls;
        if t.client == ClientTls::Off && t.required {
            return Err(ConfigError::Tls("--tls-required needs a certificate"));
        }
        if t.client == ClientTls::Off && t.server == ServerTls::Off {
            return Ok(());
        }
        if self.fixed_server.is_none() || self.user_at_host.is_some() {
            return Err(ConfigError::Tls("needs reverse mode (-R)"));
        }
        if !self.relay {
            return Err(ConfigError::Tls(
                "needs the userspace relay: a TLS data connection is decrypted \
                 in the proxy, which a packet filter cannot do",
            ));
        }
        Ok(())
    }

    /// Whether a 227/229 reply may name this server data port.
    pub fn server_data_port_allowed(&self, port: u16) -> bool {
        port >= MIN_DATA_PORT
            && self
                .server_data_ports
                .is_none_or(|r| (r.low..=r.high).contains(&port))
    }

    /// The idle timeout, `None` for `-t 0`.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(u64::from(self.idle_timeout_secs)))
    }

    /// Whether sessions choose their server after `USER` (forward mode or a route
    /// table): the proxy greets the client itself and connects later.
    pub fn server_after_user(&self) -> bool {
        self.user_at_host.is_some() || self.routes.is_some()
    }

    /// The `--resolve-timeout` as a duration.
    pub fn resolve_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.resolve_timeout_secs))
    }

    /// The `--login-timeout` as a duration; `None` when 0 (no bound).
    pub fn login_timeout(&self) -> Option<Duration> {
        (self.login_timeout_secs > 0)
            .then(|| Duration::from_secs(u64::from(self.login_timeout_secs)))
    }
}
