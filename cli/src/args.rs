//! Command-line parsing: OpenBSD `getopt(3)` semantics, one table for every option.
//!
//! ftp-proxy(8) users type getopt command lines: bundled short flags (`-6Adrv`),
//! attached values (`-p2121`), a repeated option where the last one wins. Each
//! option is defined once, in [`OPTIONS`]: its letter, its long name, its `--help`
//! line and how its value is checked and stored into [`Args`]. [`parse`] walks
//! `argv` as OpenBSD's getopt walks it and applies each option *in argument order*,
//! as the original's `switch` does, so the first bad value is the one reported
//! (`-m 0 -x` says `max sessions too small`). `--help` is rendered from the same
//! table.
//!
//! (An earlier version validated here and then rebuilt an argv for argh to parse a
//! second time; argh cannot bundle, attach or repeat, so it only added a second
//! definition of every option.)
//!
//! Everything here is pure (no environment, no IO), so it is unit-tested directly.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ftp_proxy_core::{
    AllowDest, Cidr, Nat64Prefix, PortRange, ServerDataMode, ServerTls,
    DEFAULT_RESOLVE_TIMEOUT_SECS,
};
use ftp_proxy_core::{
    DEFAULT_LOGIN_TIMEOUT_SECS, DEFAULT_PROXY_PORTS, MAX_SESSIONS_LIMIT, MAX_TIMEOUT_SECS,
    PF_NAME_SIZE,
};
use ftp_proxy_runtime::{DataReuse, ProxyVersion, RelayLimits};

/// The usage text, three lines with a fixed 17-space indent, as `usage()` prints it.
/// `{}` is the program name.
pub(crate) fn usage(progname: &str) -> String {
    format!(
        "usage: {progname} [-6Adrv] [-a sourceaddr] [-b address] [-D level] [-m maxsessions]\n                 [-P port] [-p port] [-q queue] [-R address] [-T tag]\n                 [-t timeout]\n"
    )
}

/// Which packet filter carries the data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// No packet filter: the proxy relays data connections itself.
    Relay,
    /// Linux nftables over netlink.
    Nftables,
    /// OpenBSD pf over `/dev/pf`.
    Pf,
}

impl BackendKind {
    /// The platform default: pf on OpenBSD, the userspace relay elsewhere.
    pub(crate) fn platform_default() -> BackendKind {
        if cfg!(target_os = "openbsd") {
            BackendKind::Pf
        } else {
            BackendKind::Relay
        }
    }

    /// The name used on the command line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BackendKind::Relay => "relay",
            BackendKind::Nftables => "nftables",
            BackendKind::Pf => "pf",
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "relay" => Ok(BackendKind::Relay),
            "nftables" => Ok(BackendKind::Nftables),
            "pf" => Ok(BackendKind::Pf),
            _ => Err(format!(
                "unknown backend {s} (expected relay, nftables or pf)"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the proxy learns where a diverted client wanted to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DivertMode {
    /// Linux nftables `redirect`/`dnat`: ask conntrack with `SO_ORIGINAL_DST`.
    Redirect,
    /// Linux nftables `tproxy`: a transparent listener, the destination is the
    /// accepted socket's own name.
    Tproxy,
    /// pf `divert-to`, or no diversion at all (reverse mode with `-R`): the
    /// accepted socket's own name is the destination.
    Getsockname,
}

impl DivertMode {
    /// The platform default: `redirect` on Linux, `getsockname` (pf `divert-to`) elsewhere.
    pub(crate) fn platform_default() -> DivertMode {
        if cfg!(target_os = "linux") {
            DivertMode::Redirect
        } else {
            DivertMode::Getsockname
        }
    }

    /// The name used on the command line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DivertMode::Redirect => "redirect",
            DivertMode::Tproxy => "tproxy",
            DivertMode::Getsockname => "getsockname",
        }
    }
}

impl FromStr for DivertMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redirect" => Ok(DivertMode::Redirect),
            "tproxy" => Ok(DivertMode::Tproxy),
            "getsockname" | "divert-to" => Ok(DivertMode::Getsockname),
            _ => Err(format!(
                "unknown divert mode {s} (expected redirect, tproxy or getsockname)"
            )),
        }
    }
}

impl fmt::Display for DivertMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--server-data-ports`: `LOW:HIGH`, `LOW-HIGH` or one port, all from 1024 up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataPorts(pub PortRange);

impl FromStr for DataPorts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        port_range(s, "server data ports").map(DataPorts)
    }
}

/// A port range option's value (`--server-data-ports`, `--proxy-ports`): `LOW:HIGH`,
/// `LOW-HIGH` or one port, all from 1024 up; `what` names the option in the error.
fn port_range(s: &str, what: &str) -> Result<PortRange, String> {
    let bad = || format!("{what} {s}: expected LOW:HIGH with 1024 <= LOW <= HIGH <= 65535");
    let (low, high) = s.split_once([':', '-']).unwrap_or((s, s));
    let port = |p: &str| {
        strtonum(p, 1024, 65535)
            .map(|n| n as u16)
            .map_err(|_| bad())
    };
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(bad());
    }
    Ok(PortRange { low, high })
}

/// The parsed command line, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    /// `-6`.
    pub ipv6: bool,
    /// `-A`.
    pub anonymous_only: bool,
    /// `-a`, unresolved.
    pub source_address: Option<String>,
    /// `-b`, unresolved; `None` means the mode's loopback address.
    pub listen_address: Option<String>,
    /// Every `-b` after the first, unresolved: more listeners (beyond the original,
    /// where the last `-b` counts).
    pub more_listen_addresses: Vec<String>,
    /// `-D`, 0..=7.
    pub log_level: u32,
    /// `-d`.
    pub foreground: bool,
    /// `-m`, 1..=[`MAX_SESSIONS_LIMIT`].
    pub max_sessions: u32,
    /// `-P`, unresolved (a number or a service name).
    pub server_port: String,
    /// `-p`, unresolved (a number or a service name).
    pub listen_port: String,
    /// `-q`, shorter than [`PF_NAME_SIZE`] bytes.
    pub queue: Option<String>,
    /// `-R`, unresolved.
    pub fixed_server: Option<String>,
    /// `-r`.
    pub rfc_mode: bool,
    /// `-T`, shorter than [`PF_NAME_SIZE`] bytes.
    pub tag: Option<String>,
    /// `-t`, 0..=[`MAX_TIMEOUT_SECS`].
    pub timeout: u32,
    /// `-v` count, 0..=2.
    pub verbose: u8,
    /// `--backend`.
    pub backend: BackendKind,
    /// `--divert`.
    pub divert: DivertMode,
    /// `--server-data-ports`.
    pub server_data_ports: Option<PortRange>,
    /// `--proxy-ports`.
    pub proxy_ports: PortRange,
    /// `--user`.
    pub user: String,
    /// `--chroot`.
    pub chroot: PathBuf,
    /// `--login-timeout`, seconds, 0..=[`MAX_TIMEOUT_SECS`] (0: none).
    pub login_timeout: u32,
    /// `--server-data-mode`.
    pub server_data_mode: ServerDataMode,
    /// `--nat64-prefix`: transparent-mode destinations inside it are IPv4 servers.
    pub nat64_prefix: Option<Nat64Prefix>,
    /// `--relay-per-session`, 1..=[`MAX_SESSIONS_LIMIT`].
    pub relay_per_session: u32,
    /// `--relay-idle-timeout`, seconds, 1..=[`MAX_TIMEOUT_SECS`].
    pub relay_idle_timeout: u32,
    /// `--relay-linger`, seconds, 1..=[`MAX_TIMEOUT_SECS`].
    pub relay_linger: u32,
    /// `--proxy-protocol-in`.
    pub proxy_protocol_in: bool,
    /// `--proxy-protocol-from`, every occurrence (the option repeats).
    pub proxy_protocol_from: Vec<Cidr>,
    /// `--proxy-protocol-out`.
    pub proxy_protocol_out: Option<ProxyVersion>,
    /// `--user-at-host`: forward mode.
    pub user_at_host: bool,
    /// `--allow-dest`, every occurrence (the option repeats).
    pub allow_dest: Vec<AllowDest>,
    /// `--resolve-timeout`, seconds.
    pub resolve_timeout: u32,
    /// `--route-file`: the server of each user name, re-read on SIGUSR1.
    pub route_file: Option<PathBuf>,
    /// `--tls-cert`: PEM certificate chain towards clients (FTPS, reverse mode).
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: its PEM private key.
    pub tls_key: Option<PathBuf>,
    /// `--tls-implicit`: TLS from the first byte (no `AUTH TLS`).
    pub tls_implicit: bool,
    /// `--tls-required`: no login before `AUTH TLS`, no transfer without `PROT P`.
    pub tls_required: bool,
    /// `--tls-data-reuse`.
    pub tls_data_reuse: DataReuse,
    /// `--server-tls`: FTPS towards the server.
    pub server_tls: ServerTls,
    /// `--server-tls-ca`: the roots that verify the server (default: the system's).
    pub server_tls_ca: Option<PathBuf>,
    /// `--server-tls-name`: the name checked (default: the `-R` host as given).
    pub server_tls_name: Option<String>,
    /// `--server-tls-insecure`: no certificate check.
    pub server_tls_insecure: bool,
}

impl Default for Args {
    /// The original's defaults, and the runtime's for the relay limits.
    fn default() -> Args {
        let relay = RelayLimits::default();
        let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Args {
            ipv6: false,
            anonymous_only: false,
            source_address: None,
            listen_address: None,
            more_listen_addresses: Vec::new(),
            log_level: 5,
            foreground: false,
            max_sessions: 100,
            server_port: "21".into(),
            listen_port: "8021".into(),
            queue: None,
            fixed_server: None,
            rfc_mode: false,
            tag: None,
            timeout: MAX_TIMEOUT_SECS,
            verbose: 0,
            backend: BackendKind::platform_default(),
            divert: DivertMode::platform_default(),
            server_data_ports: None,
            proxy_ports: DEFAULT_PROXY_PORTS,
            user: "_ftp_proxy".into(),
            chroot: PathBuf::from("/var/empty"),
            login_timeout: DEFAULT_LOGIN_TIMEOUT_SECS,
            server_data_mode: ServerDataMode::Client,
            nat64_prefix: None,
            relay_per_session: u32::try_from(relay.per_session).unwrap_or(u32::MAX),
            relay_idle_timeout: secs(relay.idle),
            relay_linger: secs(relay.linger),
            proxy_protocol_in: false,
            proxy_protocol_from: Vec::new(),
            proxy_protocol_out: None,
            user_at_host: false,
            allow_dest: Vec::new(),
            resolve_timeout: DEFAULT_RESOLVE_TIMEOUT_SECS,
            route_file: None,
            tls_cert: None,
            tls_key: None,
            tls_implicit: false,
            tls_required: false,
            tls_data_reuse: DataReuse::Allow,
            server_tls: ServerTls::Off,
            server_tls_ca: None,
            server_tls_name: None,
            server_tls_insecure: false,
        }
    }
}

impl Args {
    /// The listen address, defaulted as the original does after option parsing.
    pub(crate) fn listen_address(&self) -> &str {
        match &self.listen_address {
            Some(a) => a,
            None if self.ipv6 => "::1",
            None => "127.0.0.1",
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Run the proxy.
    Run(Box<Args>),
    /// `--help`: print this text on standard output and exit 0.
    Help(String),
    /// `--version`: print this line on standard output and exit 0.
    Version(String),
}

/// The `--version` line: the program name and the package version, which is the
/// workspace version and the Debian package's upstream version.
pub(crate) fn version_line(progname: &str) -> String {
    format!("{progname} {}\n", env!("CARGO_PKG_VERSION"))
}

/// Why the command line was refused. Every variant exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArgsError {
    /// getopt's complaint (`unknown option -- x`, `option requires an argument -- p`),
    /// or none for a third `-v`; followed by the usage text.
    Usage(Option<String>),
    /// A value outside its range: `max sessions too small`, `queuename too long`, ...
    /// printed as `ftp-proxy: <message>` without the usage text.
    Invalid(String),
}

/// What an option does with its occurrence. Each is applied at once, in argument
/// order, to the [`Args`] being built, so a later occurrence overwrites an earlier one.
#[derive(Clone, Copy)]
enum Takes {
    /// No value.
    Flag(fn(&mut Args) -> Result<(), ArgsError>),
    /// A decimal number in `min..=max` (`strtonum(3)`); out of range is
    /// `<what> too small`/`too large`/`invalid`. `{range}` and `{default}` in the
    /// help text become `min..max` and the default value.
    Number {
        min: u32,
        max: u32,
        what: &'static str,
        field: fn(&mut Args) -> &mut u32,
    },
    /// Any other value; the function checks and stores it, or returns the message.
    Text(fn(&mut Args, &str) -> Result<(), String>),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// One option: getopt letter (if any), long name, `--help` text and action.
struct Opt {
    short: Option<char>,
    long: &'static str,
    help: &'static str,
    takes: Takes,
}

impl Opt {
    fn takes_value(&self) -> bool {
        matches!(self.takes, Takes::Number { .. } | Takes::Text(_))
    }
}

/// A switch's action: turn it on (repeating it changes nothing).
fn set(flag: &mut bool) -> Result<(), ArgsError> {
    *flag = true;
    Ok(())
}

/// A value's action once it is checked: store it, replacing an earlier one.
fn store<T>(slot: &mut T, value: T) -> Result<(), String> {
    *slot = value;
    Ok(())
}

/// A value that is shorter than pf's name limit, or the original's message.
fn pf_name(v: &str, too_long: &str) -> Result<Option<String>, String> {
    if v.len() >= PF_NAME_SIZE {
        return Err(too_long.into());
    }
    Ok(Some(v.to_owned()))
}

/// A value that must not be empty.
fn nonempty(v: &str) -> Result<&str, String> {
    if v.is_empty() {
        return Err("empty value".into());
    }
    Ok(v)
}

/// `--tls-data-reuse`'s value.
fn data_reuse(v: &str) -> Result<DataReuse, String> {
    match v {
        "allow" => Ok(DataReuse::Allow),
        "require" => Ok(DataReuse::Require),
        _ => Err(format!("tls data reuse {v}: expected allow or require")),
    }
}

/// `--server-tls`'s value.
fn server_tls(v: &str) -> Result<ServerTls, String> {
    match v {
        "off" => Ok(ServerTls::Off),
        "explicit" => Ok(ServerTls::Explicit),
        "implicit" => Ok(ServerTls::Implicit),
        _ => Err(format!(
            "server tls {v}: expected off, explicit or implicit"
        )),
    }
}

/// Every option, in the order of the original's `switch`, then the long-only ones,
/// then `--help` and `--version`. `--help` lists them in this order.
const OPTIONS: &[Opt] = &[
    Opt {
        short: Some('6'),
        long: "ipv6",
        help: "IPv6 mode: listen, resolve and connect with IPv6; only EPSV and EPRT are allowed",
        takes: Takes::Flag(|a| set(&mut a.ipv6)),
    },
    Opt {
        short: Some('A'),
        long: "anonymous-only",
        help: "only permit anonymous FTP (user \"ftp\" or \"anonymous\")",
        takes: Takes::Flag(|a| set(&mut a.anonymous_only)),
    },
    Opt {
        short: Some('a'),
        long: "source-address",
        help: "numeric source address for the connections to servers",
        takes: Takes::Text(|a, v| store(&mut a.source_address, Some(v.to_owned()))),
    },
    Opt {
        short: Some('b'),
        long: "listen-address",
        help: "numeric address to listen on (default 127.0.0.1, or ::1 with -6); repeat it for more listeners, e.g. one IPv4 and one IPv6",
        takes: Takes::Text(|a, v| {
            match a.listen_address {
                None => a.listen_address = Some(v.to_owned()),
                Some(_) => a.more_listen_addresses.push(v.to_owned()),
            }
            Ok(())
        }),
    },
    Opt {
        short: Some('D'),
        long: "log-level",
        help: "syslog level {range} of the messages to log (default {default}, notice)",
        takes: Takes::Number {
            min: 0,
            max: 7,
            what: "loglevel",
            field: |a| &mut a.log_level,
        },
    },
    Opt {
        short: Some('d'),
        long: "foreground",
        help: "do not daemonize: stay in the foreground and log to standard error",
        takes: Takes::Flag(|a| set(&mut a.foreground)),
    },
    Opt {
        short: Some('m'),
        long: "max-sessions",
        help: "maximum number of concurrent sessions, {range} (default {default})",
        takes: Takes::Number {
            min: 1,
            max: MAX_SESSIONS_LIMIT,
            what: "max sessions",
            field: |a| &mut a.max_sessions,
        },
    },
    Opt {
        short: Some('P'),
        long: "server-port",
        help: "fixed server port, used with -R (default 21)",
        takes: Takes::Text(|a, v| store(&mut a.server_port, v.to_owned())),
    },
    Opt {
        short: Some('p'),
        long: "listen-port",
        help: "port to listen on (default 8021)",
        takes: Takes::Text(|a, v| store(&mut a.listen_port, v.to_owned())),
    },
    Opt {
        short: Some('q'),
        long: "queue",
        help: "queue name to append to the data-connection rules (pf only)",
        takes: Takes::Text(|a, v| store(&mut a.queue, pf_name(v, "queuename too long")?)),
    },
    Opt {
        short: Some('R'),
        long: "fixed-server",
        help: "fixed server address or host name (reverse mode)",
        takes: Takes::Text(|a, v| store(&mut a.fixed_server, Some(v.to_owned()))),
    },
    Opt {
        short: Some('r'),
        long: "rfc-mode",
        help: "rewrite the source port of active-mode (PORT) data connections to 20",
        takes: Takes::Flag(|a| set(&mut a.rfc_mode)),
    },
    Opt {
        short: Some('T'),
        long: "tag",
        help: "tag data connections and use match rules instead of pass rules",
        takes: Takes::Text(|a, v| store(&mut a.tag, pf_name(v, "tagname too long")?)),
    },
    Opt {
        short: Some('t'),
        long: "timeout",
        help: "idle timeout of the control connection in seconds, {range} (default {default})",
        takes: Takes::Number {
            min: 0,
            max: MAX_TIMEOUT_SECS,
            what: "timeout",
            field: |a| &mut a.timeout,
        },
    },
    Opt {
        short: Some('v'),
        long: "verbose",
        help: "log the data-connection rules; twice: log every packet",
        takes: Takes::Flag(|a| {
            // The original: `if (verbose > 2) usage();`, no message of its own.
            a.verbose += 1;
            if a.verbose > 2 {
                return Err(ArgsError::Usage(None));
            }
            Ok(())
        }),
    },
    Opt {
        short: None,
        long: "backend",
        help: "packet filter for data connections: relay, nftables or pf (default: pf on OpenBSD, relay elsewhere)",
        takes: Takes::Text(|a, v| store(&mut a.backend, v.parse()?)),
    },
    Opt {
        short: None,
        long: "divert",
        help: "how the original destination is found: redirect (SO_ORIGINAL_DST), tproxy (transparent listener) or getsockname (pf divert-to, plain -R) (default: redirect on Linux, getsockname elsewhere)",
        takes: Takes::Text(|a, v| store(&mut a.divert, v.parse()?)),
    },
    Opt {
        short: None,
        long: "server-data-ports",
        help: "only accept server passive replies (227/229) that name a port in LOW:HIGH, e.g. the server's passive range (default: any port from 1024)",
        takes: Takes::Text(|a, v| store(&mut a.server_data_ports, Some(v.parse::<DataPorts>()?.0))),
    },
    Opt {
        short: None,
        long: "server-data-mode",
        help: "how the proxy asks the server for data connections: client (as the client asked), passive (always PASV/EPSV) or active (always PORT/EPRT); passive and active need the relay backend (default client)",
        takes: Takes::Text(|a, v| store(&mut a.server_data_mode, v.parse()?)),
    },
    Opt {
        short: None,
        long: "nat64-prefix",
        help: "transparent mode: serve a diverted IPv6 connection whose destination lies in PREFIX/96 (e.g. 64:ff9b::/96) from the IPv4 server embedded in its last 32 bits; needs the relay backend (default: none)",
        takes: Takes::Text(|a, v| {
            let p = v.parse::<Nat64Prefix>().map_err(|e| e.to_string())?;
            store(&mut a.nat64_prefix, Some(p))
        }),
    },
    Opt {
        short: None,
        long: "proxy-ports",
        help: "the ports the proxy advertises for data connections, LOW:HIGH, e.g. a firewall's pinhole range (default: 49152:65534)",
        takes: Takes::Text(|a, v| store(&mut a.proxy_ports, port_range(v, "proxy ports")?)),
    },
    Opt {
        short: None,
        long: "user",
        help: "user to switch to when started as root (default _ftp_proxy)",
        takes: Takes::Text(|a, v| store(&mut a.user, nonempty(v)?.to_owned())),
    },
    Opt {
        short: None,
        long: "chroot",
        help: "directory to chroot into when started as root (default /var/empty)",
        takes: Takes::Text(|a, v| store(&mut a.chroot, nonempty(v)?.into())),
    },
    Opt {
        short: None,
        long: "login-timeout",
        help: "seconds a client may take from connecting until its login is accepted, {range}, 0 for no limit (default {default})",
        takes: Takes::Number {
            min: 0,
            max: MAX_TIMEOUT_SECS,
            what: "login timeout",
            field: |a| &mut a.login_timeout,
        },
    },
    Opt {
        short: None,
        long: "relay-per-session",
        help: "relay: data connections one session may have in progress, {range} (default {default})",
        takes: Takes::Number {
            min: 1,
            max: MAX_SESSIONS_LIMIT,
            what: "relay per-session limit",
            field: |a| &mut a.relay_per_session,
        },
    },
    Opt {
        short: None,
        long: "relay-idle-timeout",
        help: "relay: seconds without a byte either way before a data connection is reset, {range} (default {default})",
        takes: Takes::Number {
            min: 1,
            max: MAX_TIMEOUT_SECS,
            what: "relay timeout",
            field: |a| &mut a.relay_idle_timeout,
        },
    },
    Opt {
        short: None,
        long: "relay-linger",
        help: "relay: the same for a half-closed data connection or one whose session ended, {range} (default {default})",
        takes: Takes::Number {
            min: 1,
            max: MAX_TIMEOUT_SECS,
            what: "relay timeout",
            field: |a| &mut a.relay_linger,
        },
    },
    Opt {
        short: None,
        long: "proxy-protocol-in",
        help: "every control connection starts with a PROXY protocol header (v1 or v2) naming the client; needs --proxy-protocol-from",
        takes: Takes::Flag(|a| set(&mut a.proxy_protocol_in)),
    },
    Opt {
        short: None,
        long: "proxy-protocol-from",
        help: "with --proxy-protocol-in: a network (CIDR) of load balancers whose headers are believed; connections from elsewhere are closed; repeatable",
        takes: Takes::Text(|a, v| {
            let net = Cidr::parse(v).map_err(|e| format!("proxy protocol source: {e}"))?;
            a.proxy_protocol_from.push(net);
            Ok(())
        }),
    },
    Opt {
        short: None,
        long: "proxy-protocol-out",
        help: "write a PROXY protocol header, v1 or v2, naming the client to every server before any other byte",
        takes: Takes::Text(|a, v| {
            let version = match v {
                "v1" | "1" => ProxyVersion::V1,
                "v2" | "2" => ProxyVersion::V2,
                _ => return Err(format!("proxy protocol version {v}: expected v1 or v2")),
            };
            store(&mut a.proxy_protocol_out, Some(version))
        }),
    },
    Opt {
        short: None,
        long: "user-at-host",
        help: "forward mode: the proxy greets clients itself and connects to the server named in USER name@host[:port], if --allow-dest allows it",
        takes: Takes::Flag(|a| set(&mut a.user_at_host)),
    },
    Opt {
        short: None,
        long: "allow-dest",
        help: "with --user-at-host: a network CIDR[:PORTS] servers may be in (ports 21,2121 or 2000-2100); loopback, link-local and the proxy's own addresses only when named explicitly; repeatable; none allows nothing",
        takes: Takes::Text(|a, v| {
            let entry = AllowDest::parse(v).map_err(|e| format!("allowed destination {v}: {e}"))?;
            a.allow_dest.push(entry);
            Ok(())
        }),
    },
    Opt {
        short: None,
        long: "resolve-timeout",
        help: "with --user-at-host or --route-file: seconds a server name lookup may take, {range} (default {default})",
        takes: Takes::Number {
            min: 1,
            max: MAX_TIMEOUT_SECS,
            what: "resolve timeout",
            field: |a| &mut a.resolve_timeout,
        },
    },
    Opt {
        short: None,
        long: "route-file",
        help: "the proxy greets clients itself and connects to the server FILE maps the USER name to (PATTERN HOST[:PORT] lines; exact names, prefix*, * for the rest); re-read on SIGUSR1",
        takes: Takes::Text(|a, v| store(&mut a.route_file, Some(nonempty(v)?.into()))),
    },
    Opt {
        short: None,
        long: "tls-cert",
        help: "FTPS towards clients (reverse mode, relay): PEM certificate chain, leaf first; needs --tls-key",
        takes: Takes::Text(|a, v| store(&mut a.tls_cert, Some(nonempty(v)?.into()))),
    },
    Opt {
        short: None,
        long: "tls-key",
        help: "the PEM private key of --tls-cert",
        takes: Takes::Text(|a, v| store(&mut a.tls_key, Some(nonempty(v)?.into()))),
    },
    Opt {
        short: None,
        long: "tls-implicit",
        help: "implicit FTPS: TLS from the first byte on the listening port, no AUTH TLS",
        takes: Takes::Flag(|a| set(&mut a.tls_implicit)),
    },
    Opt {
        short: None,
        long: "tls-required",
        help: "refuse USER and PASS before AUTH TLS (530) and transfers without PROT P (521)",
        takes: Takes::Flag(|a| set(&mut a.tls_required)),
    },
    Opt {
        short: None,
        long: "tls-data-reuse",
        help: "allow or require: whether a PROT P data connection must resume its control connection's TLS session (default allow)",
        takes: Takes::Text(|a, v| store(&mut a.tls_data_reuse, data_reuse(v)?)),
    },
    Opt {
        short: None,
        long: "server-tls",
        help: "off, explicit or implicit: FTPS towards the server (reverse mode, relay; default off)",
        takes: Takes::Text(|a, v| store(&mut a.server_tls, server_tls(v)?)),
    },
    Opt {
        short: None,
        long: "server-tls-ca",
        help: "PEM CA certificates that verify the server (default: the system's bundle)",
        takes: Takes::Text(|a, v| store(&mut a.server_tls_ca, Some(nonempty(v)?.into()))),
    },
    Opt {
        short: None,
        long: "server-tls-name",
        help: "the name (or IP address) the server's certificate must show (default: the -R host)",
        takes: Takes::Text(|a, v| store(&mut a.server_tls_name, Some(nonempty(v)?.to_owned()))),
    },
    Opt {
        short: None,
        long: "server-tls-insecure",
        help: "do not verify the server's certificate (a warning is logged)",
        takes: Takes::Flag(|a| set(&mut a.server_tls_insecure)),
    },
    Opt {
        short: None,
        long: "help",
        help: "display usage information",
        takes: Takes::Help,
    },
    Opt {
        short: None,
        long: "version",
        help: "print the program name and version, and exit",
        takes: Takes::Version,
    },
];

/// `strtonum(3)`: a base-10 integer in `min..=max`, with its three error strings.
///
/// Like `strtoll`, leading white space and one sign are accepted; anything left
/// over, or no digits at all, is `invalid`; values beyond `i64` saturate and then
/// count as too small or too large.
pub(crate) fn strtonum(s: &str, min: i64, max: i64) -> Result<i64, &'static str> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid");
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        v = if neg {
            v.saturating_mul(10).saturating_sub(d)
        } else {
            v.saturating_mul(10).saturating_add(d)
        };
    }
    if v < min {
        Err("too small")
    } else if v > max {
        Err("too large")
    } else {
        Ok(v)
    }
}

/// What an occurrence asks to stop parsing for.
enum Stop {
    Help,
    Version,
}

/// Applies one occurrence of `opt` (with its value, if it takes one) to `args`.
fn apply(opt: &Opt, value: Option<&str>, args: &mut Args) -> Result<Option<Stop>, ArgsError> {
    match (opt.takes, value) {
        (Takes::Flag(set), _) => set(args)?,
        (
            Takes::Number {
                min,
                max,
                what,
                field,
            },
            Some(v),
        ) => {
            let n = strtonum(v, min.into(), max.into())
                .map_err(|e| ArgsError::Invalid(format!("{what} {e}")))?;
            // In range, so it fits.
            *field(args) = u32::try_from(n).unwrap_or(max);
        }
        (Takes::Text(set), Some(v)) => set(args, v).map_err(ArgsError::Invalid)?,
        (Takes::Help, _) => return Ok(Some(Stop::Help)),
        (Takes::Version, _) => return Ok(Some(Stop::Version)),
        (Takes::Number { .. } | Takes::Text(_), None) => {
            unreachable!("the caller supplies a value for every option that takes one")
        }
    }
    Ok(None)
}

fn by_short(c: char) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.short == Some(c))
}

fn by_long(name: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.long == name)
}

fn requires_argument(name: impl fmt::Display) -> ArgsError {
    ArgsError::Usage(Some(format!("option requires an argument -- {name}")))
}

fn unknown(name: impl fmt::Display) -> ArgsError {
    ArgsError::Usage(Some(format!("unknown option -- {name}")))
}

/// getopt over `args` (without the program name), applying each option in order.
///
/// Parsing stops at `--` or at the first argument that is not an option; the
/// remaining arguments are ignored, as the original ignores them. `--help` and
/// `--version` stop it too: the first one wins.
fn getopt(args: &[String]) -> Result<Result<Args, Stop>, ArgsError> {
    let mut out = Args::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let opt = by_long(name).ok_or_else(|| unknown(name))?;
            let value = match (opt.takes_value(), attached) {
                (true, Some(v)) => Some(v),
                (true, None) => Some(rest.next().ok_or_else(|| requires_argument(name))?.as_str()),
                (false, Some(_)) => {
                    return Err(ArgsError::Usage(Some(format!(
                        "option doesn't take an argument -- {name}"
                    ))))
                }
                (false, None) => None,
            };
            if let Some(stop) = apply(opt, value, &mut out)? {
                return Ok(Err(stop));
            }
            continue;
        }
        let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) else {
            // A non-option argument (or a lone "-") ends option parsing.
            break;
        };
        for (pos, c) in shorts.char_indices() {
            let opt = by_short(c).ok_or_else(|| unknown(c))?;
            if opt.takes_value() {
                // The value is the rest of the bundle, or else the next argument.
                let attached = &shorts[pos + c.len_utf8()..];
                let value = match attached {
                    "" => rest.next().ok_or_else(|| requires_argument(c))?.as_str(),
                    v => v,
                };
                apply(opt, Some(value), &mut out)?;
                break;
            }
            apply(opt, None, &mut out)?;
        }
    }
    Ok(Ok(out))
}

/// Parses a whole command line: `argv[0]` is the program name.
pub(crate) fn parse(argv: &[String]) -> Result<Command, ArgsError> {
    let progname = progname(argv);
    Ok(match getopt(argv.get(1..).unwrap_or(&[]))? {
        Ok(args) => {
            check_combinations(&args)?;
            Command::Run(Box::new(args))
        }
        Err(Stop::Help) => Command::Help(help_text(progname)),
        Err(Stop::Version) => Command::Version(version_line(progname)),
    })
}

/// Options that only make sense together, checked once all are applied.
///
/// `--proxy-protocol-in` without `--proxy-protocol-from` is refused rather than
/// given a default: a header is a claim about another host's address, and any
/// default (even loopback only) would let whoever can reach the listener from
/// there choose the client address the rules and the relay believe.
fn check_combinations(args: &Args) -> Result<(), ArgsError> {
    if args.user_at_host && args.fixed_server.is_some() {
        return Err(ArgsError::Invalid(
            "--user-at-host and -R exclude each other: the server comes from USER or is fixed"
                .into(),
        ));
    }
    if args.route_file.is_some() && (args.user_at_host || args.fixed_server.is_some()) {
        return Err(ArgsError::Invalid(
            "--route-file excludes -R and --user-at-host: the server comes from the table".into(),
        ));
    }
    if !args.allow_dest.is_empty() && !args.user_at_host {
        return Err(ArgsError::Invalid(
            "--allow-dest without --user-at-host".into(),
        ));
    }
    match (args.proxy_protocol_in, args.proxy_protocol_from.is_empty()) {
        (true, true) => Err(ArgsError::Invalid(
            "--proxy-protocol-in needs --proxy-protocol-from: the load balancers whose headers are believed".into(),
        )),
        (false, false) => Err(ArgsError::Invalid(
            "--proxy-protocol-from without --proxy-protocol-in".into(),
        )),
        _ => Ok(()),
    }
}

/// The description under the usage text in `--help`.
const DESCRIPTION: &str = "Internet File Transfer Protocol proxy daemon, a re-implementation of OpenBSD ftp-proxy(8). Short options may be bundled (-6Adrv) and take attached values (-p2121); a later option overrides an earlier one.";

/// Where the description column of the option list starts.
const HELP_COLUMN: usize = 20;
/// The width the option descriptions are wrapped to.
const HELP_WIDTH: usize = 80;

/// `--help`: the original's usage, a description, then one entry per option of
/// [`OPTIONS`]: names indented by two, the text from column 20 (on a line of its own
/// when the names reach it), wrapped at 80 columns.
fn help_text(progname: &str) -> String {
    let defaults = Args::default();
    let mut out = format!("{}\n{DESCRIPTION}\n\nOptions:\n", usage(progname));
    for opt in OPTIONS {
        let names = match opt.short {
            Some(c) => format!("-{c}, --{}", opt.long),
            None => format!("--{}", opt.long),
        };
        let text = match opt.takes {
            Takes::Number {
                min, max, field, ..
            } => opt
                .help
                .replace("{range}", &format!("{min}..{max}"))
                .replace("{default}", &field(&mut defaults.clone()).to_string()),
            _ => opt.help.to_owned(),
        };
        let mut line = format!("  {names}");
        if line.len() >= HELP_COLUMN {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        for word in text.split(' ') {
            if line.len() > HELP_COLUMN && line.len() + 1 + word.len() > HELP_WIDTH {
                out.push_str(&line);
                out.push('\n');
                line.clear();
            }
            if line.len() < HELP_COLUMN {
                line.push_str(&" ".repeat(HELP_COLUMN - line.len()));
            } else {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The program name for messages: the last path component of `argv[0]`, like
/// `__progname`.
pub(crate) fn progname(argv: &[String]) -> &str {
    argv.first()
        .and_then(|a| a.rsplit('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("ftp-proxy")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        std::iter::once("ftp-proxy")
            .chain(s.split_whitespace())
            .map(String::from)
            .collect()
    }

    fn run(s: &str) -> Args {
        match parse(&argv(s)) {
            Ok(Command::Run(a)) => *a,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn err(s: &str) -> ArgsError {
        match parse(&argv(s)) {
            Err(e) => e,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn invalid(s: &str) -> String {
        match err(s) {
            ArgsError::Invalid(m) => m,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    #[test]
    fn server_tls_options() {
        let a = run("");
        assert_eq!(a.server_tls, ServerTls::Off);
        assert!(a.server_tls_ca.is_none() && a.server_tls_name.is_none());
        assert!(!a.server_tls_insecure);
        let a = run(
            "-R ftp.example.com --server-tls explicit --server-tls-ca /etc/ca.pem \
             --server-tls-name other.example.com --server-tls-insecure",
        );
        assert_eq!(a.server_tls, ServerTls::Explicit);
        assert_eq!(
            a.server_tls_ca.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(a.server_tls_name.as_deref(), Some("other.example.com"));
        assert!(a.server_tls_insecure);
        assert_eq!(run("--server-tls implicit").server_tls, ServerTls::Implicit);
        assert!(invalid("--server-tls maybe").contains("expected off, explicit or implicit"));
    }

    #[test]
    fn defaults_are_the_originals() {
        let a = run("");
        assert!(!a.ipv6 && !a.anonymous_only && !a.foreground && !a.rfc_mode);
        assert_eq!(a.source_address, None);
        assert_eq!(a.listen_address, None);
        assert_eq!(a.listen_address(), "127.0.0.1");
        assert_eq!(a.log_level, 5);
        assert_eq!(a.max_sessions, 100);
        assert_eq!(a.server_port, "21");
        assert_eq!(a.listen_port, "8021");
        assert_eq!(a.queue, None);
        assert_eq!(a.fixed_server, None);
        assert_eq!(a.tag, None);
        assert_eq!(a.timeout, 86400);
        assert_eq!(a.verbose, 0);
        assert_eq!(a.backend, BackendKind::platform_default());
        assert_eq!(a.divert, DivertMode::platform_default());
        assert_eq!(a.user, "_ftp_proxy");
        assert_eq!(a.chroot, PathBuf::from("/var/empty"));
    }

    #[test]
    fn ipv6_changes_the_default_listen_address_only() {
        assert_eq!(run("-6").listen_address(), "::1");
        assert_eq!(run("-6 -b ::").listen_address(), "::");
        assert_eq!(run("-b 10.0.0.1").listen_address(), "10.0.0.1");
    }

    #[test]
    fn bundled_switches() {
        let a = run("-6Adrv");
        assert!(a.ipv6 && a.anonymous_only && a.foreground && a.rfc_mode);
        assert_eq!(a.verbose, 1);
    }

    #[test]
    fn counted_verbose_and_attached_value() {
        let a = run("-vv -p2121");
        assert_eq!(a.verbose, 2);
        assert_eq!(a.listen_port, "2121");
        assert_eq!(run("-v -v").verbose, 2);
        assert_eq!(run("-v --verbose").verbose, 2);
    }

    #[test]
    fn value_at_the_end_of_a_bundle() {
        let a = run("-dD7");
        assert!(a.foreground);
        assert_eq!(a.log_level, 7);
        let a = run("-dD 6");
        assert_eq!(a.log_level, 6);
        // The value swallows the rest of the bundle, even letters that are options.
        let a = run("-Rdv");
        assert_eq!(a.fixed_server.as_deref(), Some("dv"));
        assert!(!a.foreground);
        assert_eq!(a.verbose, 0);
    }

    #[test]
    fn separate_value_may_look_like_an_option() {
        let a = run("-T -d");
        assert_eq!(a.tag.as_deref(), Some("-d"));
        assert!(!a.foreground);
    }

    #[test]
    fn every_short_option_with_a_value() {
        let a = run("-a 10.0.0.2 -b 10.0.0.1 -D 6 -m 7 -P 2100 -p 2121 -q q1 -R srv -T t1 -t 60");
        assert_eq!(a.source_address.as_deref(), Some("10.0.0.2"));
        assert_eq!(a.listen_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(a.log_level, 6);
        assert_eq!(a.max_sessions, 7);
        assert_eq!(a.server_port, "2100");
        assert_eq!(a.listen_port, "2121");
        assert_eq!(a.queue.as_deref(), Some("q1"));
        assert_eq!(a.fixed_server.as_deref(), Some("srv"));
        assert_eq!(a.tag.as_deref(), Some("t1"));
        assert_eq!(a.timeout, 60);
    }

    #[test]
    fn proxy_protocol_options_and_their_combinations() {
        let a = run("--proxy-protocol-in --proxy-protocol-from 127.0.0.3 --proxy-protocol-from 10.0.0.0/8 --proxy-protocol-out v2");
        assert!(a.proxy_protocol_in);
        assert_eq!(
            a.proxy_protocol_from,
            vec![
                Cidr::parse("127.0.0.3/32").unwrap(),
                Cidr::parse("10.0.0.0/8").unwrap()
            ]
        );
        assert_eq!(a.proxy_protocol_out, Some(ProxyVersion::V2));
        assert_eq!(
            run("--proxy-protocol-out=v1").proxy_protocol_out,
            Some(ProxyVersion::V1)
        );
        assert_eq!(run("").proxy_protocol_out, None);
        let invalid = |s: &str| match err(s) {
            ArgsError::Invalid(m) => m,
            other => panic!("{s:?} gave {other:?}"),
        };
        assert!(invalid("--proxy-protocol-in").contains("needs --proxy-protocol-from"));
        assert!(invalid("--proxy-protocol-from 10.0.0.0/8").contains("without --proxy-protocol-in"));
        assert!(
            invalid("--proxy-protocol-in --proxy-protocol-from 10.0.0.0/33")
                .contains("bad prefix length")
        );
        assert!(invalid("--proxy-protocol-out v3").contains("expected v1 or v2"));
    }

    #[test]
    fn later_duplicates_win() {
        let a = run("-p 1 -p2 -m 5 -m 6 -d -d -T a -T b");
        assert_eq!(a.listen_port, "2");
        assert_eq!(a.max_sessions, 6);
        assert!(a.foreground);
        assert_eq!(a.tag.as_deref(), Some("b"));
        // Long and short spellings are the same option.
        assert_eq!(run("--listen-port 1 -p 3").listen_port, "3");
        assert_eq!(run("-p 3 --listen-port=4").listen_port, "4");
    }

    #[test]
    fn double_dash_and_non_options_end_parsing() {
        let a = run("-d -- -6");
        assert!(a.foreground && !a.ipv6);
        let a = run("-d extra -6");
        assert!(a.foreground && !a.ipv6);
        let a = run("- -6");
        assert!(!a.ipv6);
    }

    #[test]
    fn long_options() {
        let a = run("--backend nftables --divert tproxy --user nobody --chroot /tmp/x");
        assert_eq!(a.backend, BackendKind::Nftables);
        assert_eq!(a.divert, DivertMode::Tproxy);
        assert_eq!(a.user, "nobody");
        assert_eq!(a.chroot, PathBuf::from("/tmp/x"));
        assert_eq!(run("--backend=relay").backend, BackendKind::Relay);
        assert_eq!(run("--backend=pf").backend, BackendKind::Pf);
        assert_eq!(run("--divert redirect").divert, DivertMode::Redirect);
        let range = |low, high| Some(PortRange { low, high });
        assert_eq!(
            run("--server-data-ports 30000:30100").server_data_ports,
            range(30000, 30100)
        );
        assert_eq!(
            run("--server-data-ports 30000-30100").server_data_ports,
            range(30000, 30100)
        );
        assert_eq!(
            run("--server-data-ports 30000").server_data_ports,
            range(30000, 30000)
        );
        assert_eq!(run("").server_data_ports, None);
        assert_eq!(run("").login_timeout, 120);
        assert_eq!(run("--login-timeout 0").login_timeout, 0);
        assert_eq!(run("--login-timeout=30").login_timeout, 30);
        assert_eq!(run("--divert divert-to").divert, DivertMode::Getsockname);
        assert_eq!(run("--max-sessions 3 --ipv6 --foreground").max_sessions, 3);
    }

    #[test]
    fn a_repeated_listen_address_adds_a_listener() {
        let a = run("-b 127.0.0.1 -b ::1 --listen-address=::2");
        assert_eq!(a.listen_address(), "127.0.0.1");
        assert_eq!(a.more_listen_addresses, ["::1", "::2"]);
        assert!(run("-b ::1").more_listen_addresses.is_empty());
    }

    #[test]
    fn nat64_prefix_takes_only_a_96() {
        assert_eq!(run("").nat64_prefix, None);
        assert_eq!(
            run("--nat64-prefix 64:ff9b::/96")
                .nat64_prefix
                .map(|p| p.to_string()),
            Some("64:ff9b::/96".to_string())
        );
        assert!(invalid("--nat64-prefix 64:ff9b::/64").contains("only /96"));
        assert!(invalid("--nat64-prefix 64:ff9b::").contains("such as 64:ff9b::/96"));
        assert!(invalid("--nat64-prefix 64:ff9b::1/96").contains("last 32 bits"));
    }

    #[test]
    fn server_data_mode_parses_its_three_values() {
        assert_eq!(run("").server_data_mode, ServerDataMode::Client);
        assert_eq!(
            run("--server-data-mode passive").server_data_mode,
            ServerDataMode::Passive
        );
        assert_eq!(
            run("--server-data-mode=active").server_data_mode,
            ServerDataMode::Active
        );
        assert_eq!(
            run("--server-data-mode active --server-data-mode client").server_data_mode,
            ServerDataMode::Client
        );
        assert!(invalid("--server-data-mode pasv").contains("client, passive or active"));
    }

    #[test]
    fn relay_limits_default_and_range() {
        let a = run("");
        assert_eq!(
            (a.relay_per_session, a.relay_idle_timeout, a.relay_linger),
            (2, 600, 15)
        );
        let a = run("--relay-per-session 1 --relay-idle-timeout 30 --relay-linger=5");
        assert_eq!(
            (a.relay_per_session, a.relay_idle_timeout, a.relay_linger),
            (1, 30, 5)
        );
        assert_eq!(
            invalid("--relay-per-session 0"),
            "relay per-session limit too small"
        );
        assert_eq!(invalid("--relay-linger 86401"), "relay timeout too large");
    }

    #[test]
    fn range_errors_have_the_originals_messages() {
        assert_eq!(invalid("-m 0"), "max sessions too small");
        assert_eq!(invalid("-m 501"), "max sessions too large");
        assert_eq!(invalid("-m abc"), "max sessions invalid");
        assert_eq!(invalid("-m 5x"), "max sessions invalid");
        assert_eq!(invalid("-m -1"), "max sessions too small");
        assert_eq!(invalid("-t 86401"), "timeout too large");
        assert_eq!(invalid("-t -1"), "timeout too small");
        assert_eq!(invalid("-D 8"), "loglevel too large");
        assert_eq!(invalid("-D -1"), "loglevel too small");
        assert_eq!(invalid("-D x"), "loglevel invalid");
        assert_eq!(
            invalid(&format!("-q {}", "q".repeat(64))),
            "queuename too long"
        );
        assert_eq!(
            invalid(&format!("-T {}", "t".repeat(64))),
            "tagname too long"
        );
        assert_eq!(
            run(&format!("-q {}", "q".repeat(63))).queue.unwrap().len(),
            63
        );
        assert_eq!(
            run(&format!("-T {}", "t".repeat(63))).tag.unwrap().len(),
            63
        );
        assert_eq!(run("-m 1").max_sessions, 1);
        assert_eq!(run("-m 500").max_sessions, 500);
        assert_eq!(run("-t 0").timeout, 0);
        assert_eq!(run("-t 86400").timeout, 86400);
        assert_eq!(run("-D 0").log_level, 0);
        assert_eq!(run("-D +7").log_level, 7);
        assert!(invalid("--backend ipfw").starts_with("unknown backend ipfw"));
        assert!(invalid("--divert x").starts_with("unknown divert mode x"));
        assert!(invalid("--server-data-ports 80:90").starts_with("server data ports 80:90"));
        assert!(invalid("--server-data-ports 3000:2000").starts_with("server data ports"));
        assert!(invalid("--server-data-ports x").starts_with("server data ports"));
    }

    #[test]
    fn strtonum_like_openbsd() {
        assert_eq!(strtonum(" \t5", 0, 7), Ok(5));
        assert_eq!(strtonum("5 ", 0, 7), Err("invalid"));
        assert_eq!(strtonum("", 0, 7), Err("invalid"));
        assert_eq!(strtonum("-", 0, 7), Err("invalid"));
        assert_eq!(strtonum("0x5", 0, 7), Err("invalid"));
        assert_eq!(strtonum("99999999999999999999999", 0, 7), Err("too large"));
        assert_eq!(strtonum("-99999999999999999999999", 0, 7), Err("too small"));
        assert_eq!(strtonum("007", 0, 7), Ok(7));
    }

    #[test]
    fn errors_are_reported_in_argument_order() {
        assert_eq!(invalid("-m 0 -x"), "max sessions too small");
        assert_eq!(
            err("-x -m 0"),
            ArgsError::Usage(Some("unknown option -- x".into()))
        );
        // A bad value is fatal even if a later duplicate would be fine.
        assert_eq!(invalid("-m 0 -m 5"), "max sessions too small");
    }

    #[test]
    fn usage_errors() {
        assert_eq!(err("-vvv"), ArgsError::Usage(None));
        assert_eq!(err("-v -v -v"), ArgsError::Usage(None));
        assert_eq!(
            err("-h"),
            ArgsError::Usage(Some("unknown option -- h".into()))
        );
        assert_eq!(
            err("-6x"),
            ArgsError::Usage(Some("unknown option -- x".into()))
        );
        assert_eq!(
            err("-p"),
            ArgsError::Usage(Some("option requires an argument -- p".into()))
        );
        assert_eq!(
            err("-dD"),
            ArgsError::Usage(Some("option requires an argument -- D".into()))
        );
        assert_eq!(
            err("--nope"),
            ArgsError::Usage(Some("unknown option -- nope".into()))
        );
        assert_eq!(
            err("--backend"),
            ArgsError::Usage(Some("option requires an argument -- backend".into()))
        );
        assert_eq!(
            err("--ipv6=1"),
            ArgsError::Usage(Some("option doesn't take an argument -- ipv6".into()))
        );
    }

    #[test]
    fn help_lists_every_option() {
        let Ok(Command::Help(text)) = parse(&argv("-d --help")) else {
            panic!("no help")
        };
        for o in OPTIONS {
            assert!(
                text.contains(&format!("--{}", o.long)),
                "{} missing in\n{text}",
                o.long
            );
            if let Some(c) = o.short {
                assert!(
                    text.contains(&format!("-{c}, --{}", o.long)),
                    "-{c} missing in\n{text}"
                );
            }
        }
    }

    #[test]
    fn version_wins_over_other_options() {
        let want = format!("ftp-proxy {}\n", env!("CARGO_PKG_VERSION"));
        for line in ["--version", "-d --version", "-m 7 --version -x"] {
            assert_eq!(
                parse(&argv(line)),
                Ok(Command::Version(want.clone())),
                "{line}"
            );
        }
        // After the end of the options it is an ignored argument, as in getopt.
        assert!(matches!(parse(&argv("-- --version")), Ok(Command::Run(_))));
        // A bad value before it is still reported first.
        assert_eq!(
            parse(&argv("-m 0 --version")),
            Err(ArgsError::Invalid("max sessions too small".into()))
        );
    }

    /// The option list keeps the layout `--help` always had: names indented by two,
    /// descriptions from column 20 (on their own line after long names), nothing
    /// past column 80.
    #[test]
    fn help_layout() {
        let Ok(Command::Help(text)) = parse(&argv("--help")) else {
            panic!("no help")
        };
        let list = text.split_once("Options:\n").unwrap().1;
        assert!(list.lines().all(|l| l.len() <= 80), "{list}");
        assert!(list.contains(
            "  -6, --ipv6        IPv6 mode: listen, resolve and connect with IPv6; only EPSV\n                    and EPRT are allowed\n"
        ));
        assert!(
            list.contains("  -A, --anonymous-only\n                    only permit anonymous FTP")
        );
        assert!(list.contains("  -P, --server-port fixed server port"));
        assert!(list.contains(&format!(
            "maximum number of concurrent sessions, 1..{MAX_SESSIONS_LIMIT} (default 100)"
        )));
    }

    #[test]
    fn help_mentions_version() {
        let Ok(Command::Help(text)) = parse(&argv("--help")) else {
            panic!("no help")
        };
        assert!(
            text.ends_with("  --version         print the program name and version, and exit\n"),
            "{text}"
        );
    }

    /// The short options, read back as a getopt option string, are the original's
    /// (ftp-proxy.c 1.39: `"6Aa:b:D:dm:P:p:q:R:rT:t:v"`).
    #[test]
    fn short_options_are_the_originals_optstring() {
        let optstring: String = OPTIONS
            .iter()
            .filter_map(|o| o.short.map(|c| (c, o.takes_value())))
            .map(|(c, v)| if v { format!("{c}:") } else { c.to_string() })
            .collect();
        assert_eq!(optstring, "6Aa:b:D:dm:P:p:q:R:rT:t:v");
    }

    /// The limits are the core's, not copies.
    #[test]
    fn limits_come_from_the_core() {
        assert_eq!(
            invalid(&format!("-m {}", MAX_SESSIONS_LIMIT + 1)),
            "max sessions too large"
        );
        assert_eq!(
            run(&format!("-m {MAX_SESSIONS_LIMIT}")).max_sessions,
            MAX_SESSIONS_LIMIT
        );
        assert_eq!(
            invalid(&format!("-t {}", MAX_TIMEOUT_SECS + 1)),
            "timeout too large"
        );
        let name = "n".repeat(PF_NAME_SIZE - 1);
        assert_eq!(
            run(&format!("-T {name}")).tag.as_deref(),
            Some(name.as_str())
        );
    }

    #[test]
    fn usage_text_is_three_lines_with_17_spaces() {
        let u = usage("ftp-proxy");
        let lines: Vec<&str> = u.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "usage: ftp-proxy [-6Adrv] [-a sourceaddr] [-b address] [-D level] [-m maxsessions]"
        );
        assert_eq!(
            lines[1],
            format!(
                "{}[-P port] [-p port] [-q queue] [-R address] [-T tag]",
                " ".repeat(17)
            )
        );
        assert_eq!(lines[2], format!("{}[-t timeout]", " ".repeat(17)));
        assert!(u.ends_with('\n'));
    }

    #[test]
    fn route_file_excludes_a_fixed_server_and_forward_mode() {
        assert_eq!(
            run("--route-file /etc/ftp-proxy/routes").route_file,
            Some("/etc/ftp-proxy/routes".into())
        );
        for bad in [
            "--route-file r -R 198.51.100.1",
            "--route-file r --user-at-host",
        ] {
            assert!(invalid(bad).starts_with("--route-file excludes"), "{bad}");
        }
    }

    #[test]
    fn progname_is_the_basename() {
        assert_eq!(progname(&["/usr/sbin/ftp-proxy".into()]), "ftp-proxy");
        assert_eq!(progname(&[]), "ftp-proxy");
    }
}
