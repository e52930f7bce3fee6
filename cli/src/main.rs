//! `ftp-proxy`: the daemon. Parses the command line, starts up in the original's
//! order (ftp-proxy.c's `main`; docs/cli.md, "Startup order"), drops privileges and hands over to the mio runtime.
//!
//! Startup, adapted from ftp-proxy.c 1.39:
//!  0. close every inherited descriptor above 2;
//!  1. parse options; default listen address 127.0.0.1 (::1 with `-6`);
//!  2. logging: stderr with `-d`, syslog otherwise (opened now, before any chroot);
//!  3. as root: the user (not uid 0) and the chroot directory must exist;
//!  4. raise `RLIMIT_NOFILE`;
//!  5. resolve `-a`, then `-R`/`-P`;
//!  6. resolve `-b`/`-p` and listen;
//!  7. unless `-d`: open `/dev/null` and fork; the parent waits for the child's
//!     verdict and exits 0, or 1 with the child's error (see `daemon::detach`);
//!  8. build the core's configuration (the pid names anchors and the nft table);
//!  9. open the backend (pf, nftables) while still privileged;
//! 10. drop privileges (root: chroot, user; CAP_NET_ADMIN kept for nftables; in
//!     any case the capability sets cut down to the backend's needs and
//!     NoNewPrivs, see `privs`);
//! 11. report readiness to the parent and put `/dev/null` on fds 0-2;
//! 12. log `listening on <addr> port <port>` and run until a signal.
//!
//! The original forks after the drop; here the fork comes first because the
//! nftables table belongs to the netlink socket that created it (and carries the pid
//! of the process that commits to it): it must be opened by the process that runs.
//!
//! All `unsafe` is in `sys` (denied everywhere else).
//!
//! Without root the daemon still runs (the relay backend needs no privileges); it
//! sheds the capabilities it was handed beyond the backend's needs and logs what it
//! kept.

#![deny(unsafe_code)]

mod args;
mod backend;
mod cert_files;
mod daemon;
mod file_at;
mod logging;
mod privs;
mod resolve;
mod resolver_child;
mod route_file;
mod sys;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use ftp_proxy_core::{
    check_data_path as translate_check, ClientTls as ClientTlsMode, Config, ConfigError,
    DestPolicy, Proxy, RouteTable, RuleLog, RuleOptions, ServerTls as ServerTlsMode, TlsPolicy,
};
use ftp_proxy_runtime::{
    ClientTls, DataPath, Divert, Filter, Inbound, OsRandom, ProxyProtocol, RelayLimits, RunError,
    Runtime, ServerTls, ServerTlsError, ServerVerify, StartError, SYSTEM_ROOTS,
};
use log::{error, info, warn};
use nix::unistd::Uid;

use args::{Args, ArgsError, Command, DivertMode};
use cert_files::{CertFileError, CertFiles};
use daemon::{DaemonError, Detached};
use privs::{DropPlan, PrivError};
use resolve::{GaiError, Lookup};
use route_file::{RouteFile, RouteFileError};

/// Every way startup can fail; `Display` is the text after `ftp-proxy: `.
#[derive(Debug)]
enum Fatal {
    /// `-b`/`-p` did not resolve.
    ListenAddress(GaiError),
    /// `-a` did not resolve.
    SourceAddress(GaiError),
    /// `-R`/`-P` did not resolve.
    FixedServer(GaiError),
    /// The user or chroot checks, or the drop itself.
    Privileges(PrivError),
    /// Listener or descriptor limit.
    Start(StartError),
    /// The packet-filter backend.
    Backend(backend::BackendError),
    /// `/dev/null` or the fork.
    Daemon(DaemonError),
    /// The core refused the configuration.
    Config(ConfigError),
    /// A logger was already installed (cannot happen in the binary).
    Logger(log::SetLoggerError),
    /// The event loop failed.
    Run(RunError),
    /// An `--divert` mode this system cannot do.
    Divert(DivertMode),
    /// The name-resolver helper of `--user-at-host` or `--route-file` could not
    /// be started.
    Resolver(std::io::Error),
    /// The `--tls-*` options do not go together.
    TlsOptions(&'static str),
    /// The certificate or key file cannot be used.
    Tls(CertFileError),
    /// The `--route-file` cannot be read or does not parse.
    Routes(RouteFileError),
    /// TLS towards servers cannot be set up (roots, name).
    ServerTls(ServerTlsError),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::ListenAddress(e) => write!(f, "getaddrinfo listen address failed: {e}"),
            Fatal::SourceAddress(e) => write!(f, "getaddrinfo fixed proxy address failed: {e}"),
            Fatal::FixedServer(e) => write!(f, "getaddrinfo fixed server address failed: {e}"),
            Fatal::Privileges(e) => e.fmt(f),
            Fatal::Start(e) => e.fmt(f),
            Fatal::Backend(e) => e.fmt(f),
            Fatal::Daemon(e) => e.fmt(f),
            Fatal::Config(e) => e.fmt(f),
            Fatal::Logger(e) => write!(f, "cannot set up logging: {e}"),
            Fatal::Run(e) => e.fmt(f),
            Fatal::Divert(d) => write!(f, "divert mode {d} is only supported on Linux"),
            Fatal::Resolver(e) => write!(f, "cannot start the name-resolver helper: {e}"),
            Fatal::TlsOptions(why) => f.write_str(why),
            Fatal::Tls(e) => write!(f, "TLS certificate: {e}"),
            Fatal::Routes(e) => e.fmt(f),
            Fatal::ServerTls(e) => write!(f, "--server-tls: {e}"),
        }
    }
}

fn main() -> ExitCode {
    // Before anything of ours is open: descriptors a caller left open (without
    // close-on-exec) must not live on in the daemon.
    privs::close_inherited_fds();
    let argv: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(v) => v,
        Err(bad) => {
            eprintln!(
                "ftp-proxy: argument is not valid UTF-8: {}",
                bad.to_string_lossy()
            );
            return ExitCode::from(1);
        }
    };
    let progname = args::progname(&argv).to_owned();
    let args = match args::parse(&argv) {
        Ok(Command::Run(a)) => *a,
        Ok(Command::Help(text) | Command::Version(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Usage(diag)) => {
            if let Some(d) = diag {
                eprintln!("{progname}: {d}");
            }
            eprint!("{}", args::usage(&progname));
            return ExitCode::from(1);
        }
        Err(ArgsError::Invalid(msg)) => {
            eprintln!("{progname}: {msg}");
            return ExitCode::from(1);
        }
    };
    let mut detached = None;
    match start(&args, &progname, &mut detached) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !args.foreground {
                // In the foreground the message below is the log.
                error!("{e}");
            }
            match detached.take() {
                // A starting daemon: the waiting parent prints it and exits 1.
                Some(d) => d.fail(&e.to_string()),
                // In the foreground (or before the fork) stderr is the terminal; in a
                // running daemon it is /dev/null and the log above carries it.
                None => eprintln!("{progname}: {e}"),
            }
            ExitCode::from(1)
        }
    }
}

/// Startup and run; returns when the daemon has shut down. `detached` holds the
/// report pipe to the waiting parent while a daemonizing child is starting up.
fn start(args: &Args, progname: &str, detached: &mut Option<Detached>) -> Result<(), Fatal> {
    init_logging(args)?;
    // Read before the chroot, and before the fork so that a bad file is reported
    // on the terminal. The files' directories stay open, as the route file's.
    let (cert_files, client_tls) = match client_tls(args)? {
        Some((files, tls)) => (Some(files), Some(tls)),
        None => (None, None),
    };
    // The route file's directory stays open: the reload re-reads it from the chroot.
    let (route_file, routes) = match &args.route_file {
        Some(path) => {
            let (file, table) = RouteFile::open(path).map_err(Fatal::Routes)?;
            (Some(file), Some(table))
        }
        None => (None, None),
    };
    let server_tls = server_tls(args)?;
    let (divert, transparent) = divert_mode(args.divert)?;
    let relay = args.backend == args::BackendKind::Relay;
    let keep_net_admin = backend::needs_net_admin(args.backend);
    let identity = check_identity(args, keep_net_admin)?;
    let root = identity.is_some();

    ftp_proxy_runtime::raise_nofile_limit(args.max_sessions, relay).map_err(Fatal::Start)?;
    let (source_addr, fixed_server) = resolve_outbound(args)?;
    let listen = resolve::resolve(
        args.listen_address(),
        Some(&args.listen_port),
        args.ipv6,
        Lookup::Listen,
    )
    .map_err(Fatal::ListenAddress)?;
    let opts = ftp_proxy_runtime::Options {
        listen,
        transparent,
        divert,
        max_sessions: args.max_sessions,
        relay,
    };
    let mut listener = ftp_proxy_runtime::listen(&opts).map_err(Fatal::Start)?;
    // More `-b`: more listeners on the same port, each session of its own family.
    let mut listens = vec![listen];
    for address in &args.more_listen_addresses {
        let more = resolve::resolve(address, Some(&args.listen_port), args.ipv6, Lookup::Listen)
            .map_err(Fatal::ListenAddress)?;
        let more_opts = ftp_proxy_runtime::Options {
            listen: more,
            ..opts.clone()
        };
        listener.add(ftp_proxy_runtime::listen(&more_opts).map_err(Fatal::Start)?);
        listens.push(more);
    }

    if !args.foreground {
        let dev_null = daemon::open_dev_null().map_err(Fatal::Daemon)?;
        *detached = Some(daemon::detach(dev_null, progname).map_err(Fatal::Daemon)?);
    }

    // From here on this is the process that runs the proxy: its pid names the anchors
    // and the nftables table.
    let config = core_config(args, source_addr, fixed_server, &listens, routes);
    config.validate().map_err(Fatal::Config)?;
    // With listeners of both families, some sessions cross to the fixed server's.
    let mixed = fixed_server.is_some_and(|s| listens.iter().any(|l| l.is_ipv6() != s.is_ipv6()));
    translate_check(config.server_data_mode, mixed, config.relay)
        .map_err(|e| Fatal::Config(ConfigError::DataPath(e)))?;
    if config.user_at_host.as_ref().is_some_and(|p| p.denies_all()) {
        warn!("--user-at-host without --allow-dest: every destination is refused");
    }
    // Before the chroot: the helper keeps the real root's resolver files.
    let resolver = if config.server_after_user() {
        let what = if args.user_at_host {
            "--user-at-host"
        } else {
            "--route-file"
        };
        Some(resolver_child::spawn(identity.as_ref(), what).map_err(Fatal::Resolver)?)
    } else {
        None
    };
    let mut data_path = backend::open(args, &config).map_err(Fatal::Backend)?;

    // The backend may already hold state (the nftables table): remove it when
    // startup fails from here on, as the running daemon would at exit.
    let proxy = drop_privileges(args, identity, keep_net_admin)
        .and_then(|()| Proxy::new(config, Box::new(OsRandom::new())).map_err(Fatal::Config))
        .map_err(|e| remove_rules_after(&mut data_path, e))?;

    // The signal handlers go in before anyone is told the daemon is up: a SIGTERM
    // right after `listening on` (or after the parent exited) must reach the
    // graceful shutdown, not the default action.
    let mut runtime = Runtime::new(listener, &opts, proxy, data_path).map_err(Fatal::Run)?;
    runtime.handle_signals().map_err(Fatal::Run)?;
    if let Some(tls) = client_tls {
        runtime.set_client_tls(tls);
    }
    if let Some(tls) = server_tls {
        runtime.set_server_tls(tls);
    }
    runtime.set_relay_limits(RelayLimits {
        per_session: args.relay_per_session as usize,
        idle: Duration::from_secs(args.relay_idle_timeout.into()),
        linger: Duration::from_secs(args.relay_linger.into()),
    });
    if let Some(r) = resolver {
        runtime.set_resolver(r).map_err(Fatal::Run)?;
    }
    // One hook for both: one SIGUSR1 re-reads the route file and the certificate.
    if route_file.is_some() || cert_files.is_some() {
        runtime.set_reload(Box::new(move |r| {
            if let Some(file) = &route_file {
                file.reload(r.proxy());
            }
            if let Some(tls) = cert_files.as_ref().and_then(CertFiles::reload) {
                r.set_client_tls(tls);
            }
        }));
    }
    runtime.set_proxy_protocol(ProxyProtocol {
        inbound: args
            .proxy_protocol_in
            .then(|| Inbound::new(args.proxy_protocol_from.clone(), args.max_sessions as usize)),
        outbound: args.proxy_protocol_out,
    });

    if let Some(d) = detached.take() {
        d.ready(!root).map_err(Fatal::Daemon)?;
    }

    for address in std::iter::once(args.listen_address())
        .chain(args.more_listen_addresses.iter().map(String::as_str))
    {
        warn!("listening on {address} port {}", args.listen_port);
    }
    runtime.run().map_err(Fatal::Run)
}

/// Standard error with `-d` (`RUST_LOG` may refine it), syslog otherwise; opened
/// before any chroot.
fn init_logging(args: &Args) -> Result<(), Fatal> {
    // `-D` is 0..=7 after parsing.
    let level = u8::try_from(args.log_level).unwrap_or(u8::MAX);
    if args.foreground {
        let rust_log = std::env::var("RUST_LOG").ok();
        logging::init_stderr(level, rust_log.as_deref()).map_err(Fatal::Logger)
    } else {
        logging::init_syslog(level).map_err(Fatal::Logger)
    }
}

/// As root: the user to become (never uid 0) and the chroot directory must exist,
/// and the kernel must support the capability calls the drop needs. `None` when not
/// started as root: there is no user switch then.
fn check_identity(args: &Args, keep_net_admin: bool) -> Result<Option<privs::Identity>, Fatal> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let id = privs::lookup_user(&args.user).map_err(Fatal::Privileges)?;
    privs::check_chroot_dir(&args.chroot).map_err(Fatal::Privileges)?;
    privs::check_caps_supported(keep_net_admin).map_err(Fatal::Privileges)?;
    Ok(Some(id))
}

/// `-a`, then `-R`/`-P`, resolved in the original's order, each logged.
fn resolve_outbound(args: &Args) -> Result<(Option<IpAddr>, Option<SocketAddr>), Fatal> {
    let source_addr = match &args.source_address {
        Some(a) => {
            let sa = resolve::resolve(a, None, args.ipv6, Lookup::SourceAddress)
                .map_err(Fatal::SourceAddress)?;
            info!("using {} to connect to servers", sa.ip());
            Some(sa.ip())
        }
        None => None,
    };
    let fixed_server = match &args.fixed_server {
        Some(s) => {
            let sa = resolve::resolve(s, Some(&args.server_port), args.ipv6, Lookup::FixedServer)
                .map_err(Fatal::FixedServer)?;
            info!("using fixed server {}", sa.ip());
            Some(sa)
        }
        None => None,
    };
    Ok((source_addr, fixed_server))
}

/// Root: chroot and user switch (CAP_NET_ADMIN kept for nftables). Not root: only
/// the capability sets are cut down, and a warning says what was kept.
fn drop_privileges(
    args: &Args,
    identity: Option<privs::Identity>,
    keep_net_admin: bool,
) -> Result<(), Fatal> {
    match identity {
        Some(identity) => {
            let plan = DropPlan {
                identity,
                chroot: Some(args.chroot.clone()),
                keep_net_admin,
            };
            let bounding_limited = privs::drop_privileges(&plan).map_err(Fatal::Privileges)?;
            if !bounding_limited {
                info!("bounding set left to the service manager: no CAP_SETPCAP");
            }
        }
        None => {
            let r = privs::restrict_unprivileged(keep_net_admin).map_err(Fatal::Privileges)?;
            warn!(
                "not running as root: no user switch or chroot; capabilities kept: {:#x}{}",
                r.kept,
                if r.bounding_limited {
                    ""
                } else {
                    " (bounding set unchanged: no CAP_SETPCAP)"
                }
            );
        }
    }
    Ok(())
}

/// After a failed start with the backend open: removes what it already created
/// (the nftables table), logging a failure, and passes `e` on.
fn remove_rules_after(data_path: &mut DataPath<Box<dyn Filter>>, e: Fatal) -> Fatal {
    if let DataPath::Kernel(b) = data_path {
        if let Err(err) = b.remove_all() {
            warn!(
                "removing the {} rules after a failed start: {err}",
                b.name()
            );
        }
    }
    e
}

/// The runtime's divert method and listener transparency for `--divert`.
fn divert_mode(mode: DivertMode) -> Result<(Divert, bool), Fatal> {
    match mode {
        DivertMode::Getsockname => Ok((Divert::Getsockname, false)),
        DivertMode::Redirect if cfg!(target_os = "linux") => Ok((Divert::OriginalDst, false)),
        DivertMode::Tproxy if cfg!(target_os = "linux") => Ok((Divert::Getsockname, true)),
        other => Err(Fatal::Divert(other)),
    }
}

/// The core's configuration. Called after daemonizing: anchors carry this pid.
/// `listens`: the listeners; when every one is IPv6 (`-6`, or each `-b` naming an IPv6 address),
/// the family of the clients' side. With listeners of both families it is `false`
/// and each session judges by its own client's family.
fn core_config(
    args: &Args,
    source_addr: Option<IpAddr>,
    fixed_server: Option<SocketAddr>,
    listens: &[SocketAddr],
    routes: Option<RouteTable>,
) -> Config {
    // The proxy's own addresses for the destination policy: its listeners, and
    // their addresses at any port (its relay's data ports) where they are ones.
    let listen_v6 = listens.iter().all(SocketAddr::is_ipv6);
    let mut own = listens.to_vec();
    own.extend(
        listens
            .iter()
            .filter(|l| !l.ip().is_unspecified())
            .map(|l| SocketAddr::new(l.ip(), 0)),
    );
    Config {
        ipv6: args.ipv6 || listen_v6,
        anonymous_only: args.anonymous_only,
        max_sessions: args.max_sessions,
        idle_timeout_secs: args.timeout,
        fixed_server,
        source_addr,
        rules: RuleOptions {
            tag: args.tag.clone(),
            queue: args.queue.clone(),
            log: match args.verbose {
                0 => RuleLog::None,
                1 => RuleLog::Log,
                _ => RuleLog::All,
            },
            rfc_mode: args.rfc_mode,
            proxy_rtable: proxy_rtable(),
        },
        pid: std::process::id(),
        server_data_ports: args.server_data_ports,
        proxy_ports: args.proxy_ports,
        relay: args.backend == args::BackendKind::Relay,
        login_timeout_secs: args.login_timeout,
        user_at_host: args.user_at_host.then(|| DestPolicy {
            allow: args.allow_dest.clone(),
            own,
        }),
        routes,
        resolve_timeout_secs: args.resolve_timeout,
        server_data_mode: args.server_data_mode,
        nat64_prefix: args.nat64_prefix,
        tls: TlsPolicy {
            client: match (&args.tls_cert, args.tls_implicit) {
                (None, _) => ClientTlsMode::Off,
                (Some(_), false) => ClientTlsMode::Explicit,
                (Some(_), true) => ClientTlsMode::Implicit,
            },
            required: args.tls_required,
            server: args.server_tls,
        },
    }
}

/// The certificate towards clients, when `--tls-cert` is given: loaded now, with
/// the checks of the `--tls-*` options that need no other state. The core checks
/// the rest ([`Config::validate`]: reverse mode, and the relay, since a `PROT P`
/// data connection is decrypted on the client's leg, which a packet filter
/// cannot do). The files are kept (their directories) for SIGUSR1.
fn client_tls(args: &Args) -> Result<Option<(CertFiles, ClientTls)>, Fatal> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            if args.tls_implicit || args.tls_required {
                return Err(Fatal::TlsOptions(
                    "--tls-implicit and --tls-required need --tls-cert and --tls-key",
                ));
            }
            return Ok(None);
        }
        _ => {
            return Err(Fatal::TlsOptions(
                "--tls-cert and --tls-key must be given together",
            ))
        }
    };
    if args.fixed_server.is_none() {
        return Err(Fatal::TlsOptions(
            "--tls-cert needs reverse mode (-R): the proxy holds the certificate of the one server it fronts",
        ));
    }
    if args.backend != args::BackendKind::Relay {
        return Err(Fatal::TlsOptions(
            "--tls-cert needs --backend relay: a PROT P data connection is TLS towards the client and plain towards the server, which a packet filter cannot carry",
        ));
    }
    CertFiles::open(cert, key, args.tls_data_reuse)
        .map(Some)
        .map_err(Fatal::Tls)
}

/// TLS towards the server, when `--server-tls` is on: the roots read now (before
/// the chroot), the name to check. The core checks reverse mode and the relay.
fn server_tls(args: &Args) -> Result<Option<ServerTls>, Fatal> {
    if args.server_tls == ServerTlsMode::Off {
        if args.server_tls_ca.is_some()
            || args.server_tls_name.is_some()
            || args.server_tls_insecure
        {
            return Err(Fatal::TlsOptions(
                "--server-tls-ca, --server-tls-name and --server-tls-insecure need --server-tls",
            ));
        }
        return Ok(None);
    }
    let Some(host) = args.fixed_server.as_deref() else {
        return Err(Fatal::TlsOptions(
            "--server-tls needs reverse mode (-R): the server's certificate is checked against the -R name",
        ));
    };
    if args.server_tls_insecure && args.server_tls_ca.is_some() {
        return Err(Fatal::TlsOptions(
            "--server-tls-insecure and --server-tls-ca do not go together",
        ));
    }
    // `-R [::1]` style brackets are not part of the name.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = args.server_tls_name.as_deref().unwrap_or(host);
    let verify = if args.server_tls_insecure {
        warn!(
            "--server-tls-insecure: the server's certificate is not verified; anyone on the path \
             to {host} can read and change the sessions"
        );
        ServerVerify::Insecure
    } else {
        ServerVerify::Roots(
            args.server_tls_ca
                .clone()
                .unwrap_or_else(|| SYSTEM_ROOTS.into()),
        )
    };
    ServerTls::load(&verify, name)
        .map(Some)
        .map_err(Fatal::ServerTls)
}

/// The routing table the proxy runs in (`getrtable(2)` on OpenBSD, 0 elsewhere).
fn proxy_rtable() -> u32 {
    sys::rtable()
}
