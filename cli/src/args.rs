//! Command-line parsing: OpenBSD `getopt(3)` semantics in front of argh.
//!
//! argh cannot parse the command lines ftp-proxy(8) users type: it has no bundled
//! short flags (`-6Adrv`), no attached values (`-p2121`) and it rejects a repeated
//! option where getopt lets the last one win. So parsing happens in two passes:
//!
//! 1. [`expand`] walks `argv` exactly as OpenBSD's getopt walks it with the option
//!    string [`OPTSTRING`] (plus the long spellings of every option). It validates
//!    each value *in argument order*, as the original's `switch` does, so the first
//!    bad value is the one reported (`-m 0 -x` says `max sessions too small`). It
//!    returns a canonical argument list: one `--long value` per option, the last
//!    occurrence winning, `-v` kept once per occurrence.
//! 2. argh turns that canonical list into the typed [`RawArgs`] and renders `--help`.
//!
//! Everything here is pure (no environment, no IO), so it is unit-tested directly.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use argh::FromArgs;
use ftp_proxy_core::PortRange;

/// The original's getopt option string (ftp-proxy.c 1.39); `OPTIONS` must agree
/// with it, which a test checks.
#[cfg_attr(not(test), allow(dead_code))]
pub const OPTSTRING: &str = "6Aa:b:D:dm:P:p:q:R:rT:t:v";

/// pf's `PF_QNAME_SIZE` and `PF_TAG_NAME_SIZE`: a name must be shorter than this.
const PF_NAME_SIZE: usize = 64;

/// The usage text, three lines with a fixed 17-space indent, as `usage()` prints it.
/// `{}` is the program name.
pub fn usage(progname: &str) -> String {
    format!(
        "usage: {progname} [-6Adrv] [-a sourceaddr] [-b address] [-D level] [-m maxsessions]\n                 [-P port] [-p port] [-q queue] [-R address] [-T tag]\n                 [-t timeout]\n"
    )
}

/// Which packet filter carries the data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// No packet filter: the proxy relays data connections itself.
    Relay,
    /// Linux nftables over netlink.
    Nftables,
    /// OpenBSD pf over `/dev/pf`.
    Pf,
}

impl BackendKind {
    /// The platform default: pf on OpenBSD, the userspace relay elsewhere.
    pub fn platform_default() -> BackendKind {
        if cfg!(target_os = "openbsd") {
            BackendKind::Pf
        } else {
            BackendKind::Relay
        }
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
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
pub enum DivertMode {
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
    pub fn platform_default() -> DivertMode {
        if cfg!(target_os = "linux") {
            DivertMode::Redirect
        } else {
            DivertMode::Getsockname
        }
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
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
pub struct DataPorts(pub PortRange);

impl FromStr for DataPorts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("server data ports {s}: expected LOW:HIGH with 1024 <= LOW <= HIGH <= 65535")
        };
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
        Ok(DataPorts(PortRange { low, high }))
    }
}

/// `--proxy-ports`: `LOW:HIGH`, `LOW-HIGH` or one port, all from 1024 up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts(pub PortRange);

impl FromStr for ProxyPorts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let range = s.parse::<DataPorts>().map_err(|_| {
            format!("proxy ports {s}: expected LOW:HIGH with 1024 <= LOW <= HIGH <= 65535")
        })?;
        Ok(ProxyPorts(range.0))
    }
}

// The typed command line as argh sees it after `expand`. (A plain comment: argh
// turns doc comments on this struct into the --help description.)
//
// The long names exist because argh requires one for every option; the short
// letters are the original's. Every value reaching argh has already been checked
// by `expand`, so argh's own parse errors cannot occur for expanded input.
#[derive(FromArgs, Debug)]
#[argh(help_triggers("--help"))]
/// Internet File Transfer Protocol proxy daemon, a re-implementation of OpenBSD
/// ftp-proxy(8). Short options may be bundled (-6Adrv) and take attached values
/// (-p2121); a later option overrides an earlier one.
#[allow(missing_docs)]
pub struct RawArgs {
    /// IPv6 mode: listen, resolve and connect with IPv6; only EPSV and EPRT are allowed
    #[argh(switch, short = '6')]
    pub ipv6: bool,

    /// only permit anonymous FTP (user "ftp" or "anonymous")
    #[argh(switch, short = 'A')]
    pub anonymous_only: bool,

    /// numeric source address for the connections to servers
    #[argh(option, short = 'a')]
    pub source_address: Option<String>,

    /// numeric address to listen on (default 127.0.0.1, or ::1 with -6)
    #[argh(option, short = 'b')]
    pub listen_address: Option<String>,

    /// syslog level 0..7 of the messages to log (default 5, notice)
    #[argh(option, short = 'D', default = "5")]
    pub log_level: u8,

    /// do not daemonize: stay in the foreground and log to standard error
    #[argh(switch, short = 'd')]
    pub foreground: bool,

    /// maximum number of concurrent sessions, 1..500 (default 100)
    #[argh(option, short = 'm', default = "100")]
    pub max_sessions: u32,

    /// fixed server port, used with -R (default 21)
    #[argh(option, short = 'P', default = "String::from(\"21\")")]
    pub server_port: String,

    /// port to listen on (default 8021)
    #[argh(option, short = 'p', default = "String::from(\"8021\")")]
    pub listen_port: String,

    /// queue name to append to the data-connection rules (pf only)
    #[argh(option, short = 'q')]
    pub queue: Option<String>,

    /// fixed server address or host name (reverse mode)
    #[argh(option, short = 'R')]
    pub fixed_server: Option<String>,

    /// rewrite the source port of active-mode (PORT) data connections to 20
    #[argh(switch, short = 'r')]
    pub rfc_mode: bool,

    /// tag data connections and use match rules instead of pass rules
    #[argh(option, short = 'T')]
    pub tag: Option<String>,

    /// idle timeout of the control connection in seconds, 0..86400 (default 86400)
    #[argh(option, short = 't', default = "86400")]
    pub timeout: u32,

    /// log the data-connection rules; twice: log every packet
    #[argh(switch, short = 'v')]
    pub verbose: u8,

    /// packet filter for data connections: relay, nftables or pf (default: pf on OpenBSD, relay elsewhere)
    #[argh(option)]
    pub backend: Option<BackendKind>,

    /// how the original destination is found: redirect (SO_ORIGINAL_DST), tproxy (transparent listener) or getsockname (pf divert-to, plain -R) (default: redirect on Linux, getsockname elsewhere)
    #[argh(option)]
    pub divert: Option<DivertMode>,

    /// only accept server passive replies (227/229) that name a port in LOW:HIGH, e.g. the server's passive range (default: any port from 1024)
    #[argh(option)]
    pub server_data_ports: Option<DataPorts>,

    /// the ports the proxy advertises for data connections, LOW:HIGH, e.g. a firewall's pinhole range (default: 49152:65534)
    #[argh(option)]
    pub proxy_ports: Option<ProxyPorts>,

    /// user to switch to when started as root (default _ftp_proxy)
    #[argh(option, default = "String::from(\"_ftp_proxy\")")]
    pub user: String,

    /// directory to chroot into when started as root (default /var/empty)
    #[argh(option, default = "PathBuf::from(\"/var/empty\")")]
    pub chroot: PathBuf,

    /// relay: data connections one session may have in progress, 1..500 (default 2)
    #[argh(option, default = "2")]
    pub relay_per_session: u32,

    /// relay: seconds without a byte either way before a data connection is reset, 1..86400 (default 600)
    #[argh(option, default = "600")]
    pub relay_idle_timeout: u32,

    /// relay: the same for a half-closed data connection or one whose session ended, 1..86400 (default 15)
    #[argh(option, default = "15")]
    pub relay_linger: u32,
}

/// The parsed command line, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `-6`.
    pub ipv6: bool,
    /// `-A`.
    pub anonymous_only: bool,
    /// `-a`, unresolved.
    pub source_address: Option<String>,
    /// `-b`, unresolved; `None` means the mode's loopback address.
    pub listen_address: Option<String>,
    /// `-D`, 0..=7.
    pub log_level: u8,
    /// `-d`.
    pub foreground: bool,
    /// `-m`, 1..=500.
    pub max_sessions: u32,
    /// `-P`, unresolved (a number or a service name).
    pub server_port: String,
    /// `-p`, unresolved (a number or a service name).
    pub listen_port: String,
    /// `-q`, shorter than 64 bytes.
    pub queue: Option<String>,
    /// `-R`, unresolved.
    pub fixed_server: Option<String>,
    /// `-r`.
    pub rfc_mode: bool,
    /// `-T`, shorter than 64 bytes.
    pub tag: Option<String>,
    /// `-t`, 0..=86400.
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
    /// `--relay-per-session`, 1..=500.
    pub relay_per_session: u32,
    /// `--relay-idle-timeout`, seconds, 1..=86400.
    pub relay_idle_timeout: u32,
    /// `--relay-linger`, seconds, 1..=86400.
    pub relay_linger: u32,
}

impl Args {
    /// The listen address, defaulted as the original does after option parsing.
    pub fn listen_address(&self) -> &str {
        match &self.listen_address {
            Some(a) => a,
            None if self.ipv6 => "::1",
            None => "127.0.0.1",
        }
    }
}

impl From<RawArgs> for Args {
    fn from(r: RawArgs) -> Args {
        Args {
            ipv6: r.ipv6,
            anonymous_only: r.anonymous_only,
            source_address: r.source_address,
            listen_address: r.listen_address,
            log_level: r.log_level,
            foreground: r.foreground,
            max_sessions: r.max_sessions,
            server_port: r.server_port,
            listen_port: r.listen_port,
            queue: r.queue,
            fixed_server: r.fixed_server,
            rfc_mode: r.rfc_mode,
            tag: r.tag,
            timeout: r.timeout,
            verbose: r.verbose,
            backend: r.backend.unwrap_or_else(BackendKind::platform_default),
            divert: r.divert.unwrap_or_else(DivertMode::platform_default),
            server_data_ports: r.server_data_ports.map(|d| d.0),
            proxy_ports: r
                .proxy_ports
                .map_or(ftp_proxy_core::DEFAULT_PROXY_PORTS, |p| p.0),
            user: r.user,
            chroot: r.chroot,
            relay_per_session: r.relay_per_session,
            relay_idle_timeout: r.relay_idle_timeout,
            relay_linger: r.relay_linger,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the proxy.
    Run(Box<Args>),
    /// `--help`: print this text on standard output and exit 0.
    Help(String),
    /// `--version`: print this line on standard output and exit 0.
    Version(String),
}

/// What the getopt pass found: options to run with, or a request to print something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expanded {
    /// The canonical argument list for argh.
    Run(Vec<String>),
    /// `--help` was given (anywhere before the end of the options).
    Help,
    /// `--version` was given (anywhere before the end of the options).
    Version,
}

/// The `--version` line: the program name and the package version, which is the
/// workspace version and the Debian package's upstream version.
pub fn version_line(progname: &str) -> String {
    format!("{progname} {}\n", env!("CARGO_PKG_VERSION"))
}

/// Why the command line was refused. Every variant exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// getopt's complaint (`unknown option -- x`, `option requires an argument -- p`),
    /// or none for a third `-v`; followed by the usage text.
    Usage(Option<String>),
    /// A value outside its range: `max sessions too small`, `queuename too long`, ...
    /// printed as `ftp-proxy: <message>` without the usage text.
    Invalid(String),
}

/// How the value of an option is checked, in argument order, before argh sees it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A flag; repeating it changes nothing.
    Switch,
    /// `-v`: counted, a third occurrence is a usage error.
    Count,
    /// An option with a value; the check returns the canonical value or the message.
    Value(fn(&str) -> Result<String, String>),
}

/// One option: its getopt letter (if any), argh's long name and its kind.
struct OptSpec {
    short: Option<char>,
    long: &'static str,
    kind: Kind,
}

fn any(v: &str) -> Result<String, String> {
    Ok(v.to_owned())
}

fn log_level(v: &str) -> Result<String, String> {
    strtonum(v, 0, 7)
        .map(|n| n.to_string())
        .map_err(|e| format!("loglevel {e}"))
}

fn max_sessions(v: &str) -> Result<String, String> {
    strtonum(v, 1, 500)
        .map(|n| n.to_string())
        .map_err(|e| format!("max sessions {e}"))
}

fn timeout(v: &str) -> Result<String, String> {
    strtonum(v, 0, 86400)
        .map(|n| n.to_string())
        .map_err(|e| format!("timeout {e}"))
}

fn relay_per_session(v: &str) -> Result<String, String> {
    strtonum(v, 1, 500)
        .map(|n| n.to_string())
        .map_err(|e| format!("relay per-session limit {e}"))
}

fn relay_seconds(v: &str) -> Result<String, String> {
    strtonum(v, 1, 86400)
        .map(|n| n.to_string())
        .map_err(|e| format!("relay timeout {e}"))
}

fn queue(v: &str) -> Result<String, String> {
    if v.len() >= PF_NAME_SIZE {
        return Err("queuename too long".into());
    }
    Ok(v.to_owned())
}

fn tag(v: &str) -> Result<String, String> {
    if v.len() >= PF_NAME_SIZE {
        return Err("tagname too long".into());
    }
    Ok(v.to_owned())
}

fn backend(v: &str) -> Result<String, String> {
    v.parse::<BackendKind>().map(|b| b.as_str().to_owned())
}

fn divert(v: &str) -> Result<String, String> {
    v.parse::<DivertMode>().map(|d| d.as_str().to_owned())
}

fn data_ports(v: &str) -> Result<String, String> {
    v.parse::<DataPorts>().map(|d| d.0.to_string())
}

fn proxy_ports(v: &str) -> Result<String, String> {
    v.parse::<ProxyPorts>().map(|d| d.0.to_string())
}

fn nonempty(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("empty value".into());
    }
    Ok(v.to_owned())
}

/// Every option, in the order of the original's `switch`, then the long-only ones.
const OPTIONS: &[OptSpec] = &[
    OptSpec {
        short: Some('6'),
        long: "ipv6",
        kind: Kind::Switch,
    },
    OptSpec {
        short: Some('A'),
        long: "anonymous-only",
        kind: Kind::Switch,
    },
    OptSpec {
        short: Some('a'),
        long: "source-address",
        kind: Kind::Value(any),
    },
    OptSpec {
        short: Some('b'),
        long: "listen-address",
        kind: Kind::Value(any),
    },
    OptSpec {
        short: Some('D'),
        long: "log-level",
        kind: Kind::Value(log_level),
    },
    OptSpec {
        short: Some('d'),
        long: "foreground",
        kind: Kind::Switch,
    },
    OptSpec {
        short: Some('m'),
        long: "max-sessions",
        kind: Kind::Value(max_sessions),
    },
    OptSpec {
        short: Some('P'),
        long: "server-port",
        kind: Kind::Value(any),
    },
    OptSpec {
        short: Some('p'),
        long: "listen-port",
        kind: Kind::Value(any),
    },
    OptSpec {
        short: Some('q'),
        long: "queue",
        kind: Kind::Value(queue),
    },
    OptSpec {
        short: Some('R'),
        long: "fixed-server",
        kind: Kind::Value(any),
    },
    OptSpec {
        short: Some('r'),
        long: "rfc-mode",
        kind: Kind::Switch,
    },
    OptSpec {
        short: Some('T'),
        long: "tag",
        kind: Kind::Value(tag),
    },
    OptSpec {
        short: Some('t'),
        long: "timeout",
        kind: Kind::Value(timeout),
    },
    OptSpec {
        short: Some('v'),
        long: "verbose",
        kind: Kind::Count,
    },
    OptSpec {
        short: None,
        long: "backend",
        kind: Kind::Value(backend),
    },
    OptSpec {
        short: None,
        long: "divert",
        kind: Kind::Value(divert),
    },
    OptSpec {
        short: None,
        long: "server-data-ports",
        kind: Kind::Value(data_ports),
    },
    OptSpec {
        short: None,
        long: "proxy-ports",
        kind: Kind::Value(proxy_ports),
    },
    OptSpec {
        short: None,
        long: "user",
        kind: Kind::Value(nonempty),
    },
    OptSpec {
        short: None,
        long: "chroot",
        kind: Kind::Value(nonempty),
    },
    OptSpec {
        short: None,
        long: "relay-per-session",
        kind: Kind::Value(relay_per_session),
    },
    OptSpec {
        short: None,
        long: "relay-idle-timeout",
        kind: Kind::Value(relay_seconds),
    },
    OptSpec {
        short: None,
        long: "relay-linger",
        kind: Kind::Value(relay_seconds),
    },
];

/// `strtonum(3)`: a base-10 integer in `min..=max`, with its three error strings.
///
/// Like `strtoll`, leading white space and one sign are accepted; anything left
/// over, or no digits at all, is `invalid`; values beyond `i64` saturate and then
/// count as too small or too large.
pub fn strtonum(s: &str, min: i64, max: i64) -> Result<i64, &'static str> {
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

/// One option occurrence after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Occurrence {
    long: &'static str,
    value: Option<String>,
}

fn spec_by_short(c: char) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.short == Some(c))
}

fn spec_by_long(name: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.long == name)
}

/// Records one occurrence, running its check and the `-v` limit in argument order.
fn record(
    out: &mut Vec<Occurrence>,
    spec: &'static OptSpec,
    value: Option<&str>,
    verbose: &mut u8,
) -> Result<(), ArgsError> {
    let value = match (spec.kind, value) {
        (Kind::Value(check), Some(v)) => Some(check(v).map_err(ArgsError::Invalid)?),
        (Kind::Count, _) => {
            *verbose += 1;
            if *verbose > 2 {
                return Err(ArgsError::Usage(None));
            }
            None
        }
        _ => None,
    };
    out.push(Occurrence {
        long: spec.long,
        value,
    });
    Ok(())
}

/// Pass 1: getopt over `args` (without the program name).
///
/// Returns the canonical argument list for argh, or which of `--help` and
/// `--version` was given (the first one wins). Parsing stops at `--` or at the first argument that is not an option;
/// the remaining arguments are ignored, as the original ignores them.
pub fn expand(args: &[String]) -> Result<Expanded, ArgsError> {
    let mut occ: Vec<Occurrence> = Vec::new();
    let mut verbose = 0u8;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            if long == "help" {
                return Ok(Expanded::Help);
            }
            if long == "version" {
                return Ok(Expanded::Version);
            }
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let spec = spec_by_long(name)
                .ok_or_else(|| ArgsError::Usage(Some(format!("unknown option -- {name}"))))?;
            let value = match spec.kind {
                Kind::Value(_) => match attached {
                    Some(v) => Some(v.to_owned()),
                    None if i < args.len() => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => {
                        return Err(ArgsError::Usage(Some(format!(
                            "option requires an argument -- {name}"
                        ))))
                    }
                },
                _ if attached.is_some() => {
                    return Err(ArgsError::Usage(Some(format!(
                        "option doesn't take an argument -- {name}"
                    ))))
                }
                _ => None,
            };
            record(&mut occ, spec, value.as_deref(), &mut verbose)?;
            continue;
        }
        let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) else {
            // A non-option argument (or a lone "-") ends option parsing.
            break;
        };
        for (pos, c) in shorts.char_indices() {
            let spec = spec_by_short(c)
                .ok_or_else(|| ArgsError::Usage(Some(format!("unknown option -- {c}"))))?;
            if let Kind::Value(_) = spec.kind {
                let rest = &shorts[pos + c.len_utf8()..];
                let value = if !rest.is_empty() {
                    rest.to_owned()
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(ArgsError::Usage(Some(format!(
                        "option requires an argument -- {c}"
                    ))));
                };
                record(&mut occ, spec, Some(&value), &mut verbose)?;
                break;
            }
            record(&mut occ, spec, None, &mut verbose)?;
        }
    }
    Ok(Expanded::Run(canonical(&occ)))
}

/// Keeps the last occurrence of every option (every `-v`), in order of last
/// appearance, spelled the way argh expects.
fn canonical(occ: &[Occurrence]) -> Vec<String> {
    let mut out = Vec::new();
    for (idx, o) in occ.iter().enumerate() {
        let counted = matches!(spec_by_long(o.long).map(|s| s.kind), Some(Kind::Count));
        let superseded = occ[idx + 1..].iter().any(|later| later.long == o.long);
        if superseded && !counted {
            continue;
        }
        out.push(format!("--{}", o.long));
        if let Some(v) = &o.value {
            out.push(v.clone());
        }
    }
    out
}

/// Parses a whole command line: `argv[0]` is the program name.
pub fn parse(argv: &[String]) -> Result<Command, ArgsError> {
    let progname = progname(argv);
    let rest = argv.get(1..).unwrap_or(&[]);
    let canonical = match expand(rest)? {
        Expanded::Run(c) => c,
        Expanded::Version => return Ok(Command::Version(version_line(progname))),
        Expanded::Help => {
            return match RawArgs::from_args(&[progname], &["--help"]) {
                Err(e) if e.status.is_ok() => Ok(Command::Help(help_text(progname, &e.output))),
                Err(e) => Err(ArgsError::Invalid(e.output)),
                Ok(_) => Err(ArgsError::Invalid("--help produced no help".into())),
            };
        }
    };
    let refs: Vec<&str> = canonical.iter().map(String::as_str).collect();
    match RawArgs::from_args(&[progname], &refs) {
        Ok(raw) => Ok(Command::Run(Box::new(raw.into()))),
        // Cannot happen for values `expand` accepted; kept as a plain error, not a panic.
        Err(e) => Err(ArgsError::Invalid(e.output.trim_end().to_owned())),
    }
}

/// `--help`: the original's usage, then argh's description and option list
/// (argh's own one-line synopsis is dropped in favour of the usage text).
fn help_text(progname: &str, argh_output: &str) -> String {
    let body = match argh_output.split_once("\n\n") {
        Some((first, rest)) if first.starts_with("Usage:") => rest,
        _ => argh_output,
    };
    // argh lists only the fields of `RawArgs`; --version is handled before argh.
    format!(
        "{}\n{body}  --version         print the program name and version, and exit\n",
        usage(progname)
    )
}

/// The program name for messages: the last path component of `argv[0]`, like
/// `__progname`.
pub fn progname(argv: &[String]) -> &str {
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
        assert_eq!(run("--divert divert-to").divert, DivertMode::Getsockname);
        assert_eq!(run("--max-sessions 3 --ipv6 --foreground").max_sessions, 3);
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

    #[test]
    fn option_table_matches_optstring() {
        let mut chars = OPTSTRING.chars().peekable();
        let mut n = 0;
        while let Some(c) = chars.next() {
            let takes_value = chars.peek() == Some(&':');
            if takes_value {
                chars.next();
            }
            let spec = spec_by_short(c).unwrap_or_else(|| panic!("-{c} missing"));
            assert_eq!(matches!(spec.kind, Kind::Value(_)), takes_value, "-{c}");
            n += 1;
        }
        assert_eq!(n, OPTIONS.iter().filter(|o| o.short.is_some()).count());
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
    fn progname_is_the_basename() {
        assert_eq!(progname(&["/usr/sbin/ftp-proxy".into()]), "ftp-proxy");
        assert_eq!(progname(&[]), "ftp-proxy");
    }
}
