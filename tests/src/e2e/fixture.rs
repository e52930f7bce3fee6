//! One scenario's world: test files, pure-ftpd, and the proxy in front of it.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use super::error::{tail, E2eError, Result};
use super::proc::{run, run_ok, which};
use super::proxy::ProxyProcess;
use super::server::{FtpServer, Workdir, PASSIVE_RANGE};

/// Set to run every scenario against pure-ftpd directly, without the proxy: this
/// validates the harness itself. Scenarios about proxy-only behaviour then fail at
/// [`Fixture::proxy`].
pub const DIRECT_ENV: &str = "FTP_E2E_DIRECT";

/// The account the proxy drops to when started as root (ftp-proxy(8)'s default).
pub const PROXY_USER: &str = "_ftp_proxy";
/// The directory it chroots to.
pub const PROXY_CHROOT: &str = "/var/empty";

/// Programs the scenarios need, with their Debian packages.
const TOOLS: [(&str, &str); 9] = [
    ("pure-ftpd", "pure-ftpd"),
    ("pure-pw", "pure-ftpd"),
    ("curl", "curl"),
    ("lftp", "lftp"),
    ("python3", "python3"),
    ("openssl", "openssl"),
    ("unshare", "util-linux"),
    ("timeout", "coreutils"),
    ("getent", "libc-bin"),
];

/// Checks what every scenario needs. `Ok(false)` means "not root": the scenario
/// cannot run (pure-ftpd needs a private mount namespace, the proxy chroots) and the
/// reason has been printed. As root, a missing program is an error, never a skip.
pub fn preflight() -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "e2e: not run: needs root (unshare -m for pure-ftpd, chroot and setuid in ftp-proxy)"
        );
        return Ok(false);
    }
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            return Err(E2eError::MissingTool { tool, package });
        }
    }
    ensure_proxy_account()?;
    Ok(true)
}

/// Creates `/var/empty` and the system user `_ftp_proxy` if they are missing, as
/// .ci/run does; idempotent, and serialised within the test process.
fn ensure_proxy_account() -> Result<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(PROXY_CHROOT);
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(E2eError::io("mkdir /var/empty"))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(E2eError::io("chmod /var/empty"))?;
    }
    if run("getent", &["passwd", PROXY_USER], 10)?.status.success() {
        return Ok(());
    }
    let useradd = which("useradd").map_or_else(
        || "/usr/sbin/useradd".to_string(),
        |p| p.display().to_string(),
    );
    let args = [
        "--system",
        "--no-create-home",
        "--home-dir",
        PROXY_CHROOT,
        "--shell",
        "/usr/sbin/nologin",
        PROXY_USER,
    ];
    let out = run(&useradd, &args, 30)?;
    // Another test binary may have created it in the meantime: re-check before failing.
    if !out.status.success() {
        run_ok("getent", &["passwd", PROXY_USER], 10)?;
    }
    Ok(())
}

/// The loopback address of the family.
pub fn loopback(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// Files, server and proxy of one scenario. Fields drop in order: proxy, server, files.
pub struct Fixture {
    proxy: Option<ProxyProcess>,
    /// The FTP server behind the proxy.
    pub server: FtpServer,
    /// The directory tree with the test files.
    pub work: Workdir,
}

impl Fixture {
    /// Starts pure-ftpd on loopback (`::1` if `ipv6`) and the proxy in front of it
    /// with `proxy_args` added to `-d -D7 [-6] -b -p -R -P`. `Ok(None)` when not root.
    pub fn start(tag: &str, ipv6: bool, proxy_args: &[&str]) -> Result<Option<Fixture>> {
        Fixture::start_with(tag, ipv6, proxy_args, |_| Ok(Vec::new()))
    }

    /// Like [`start`](Self::start); `server_args` gets the work directory (to write
    /// files the server needs, such as a certificate) and returns extra pure-ftpd options.
    pub fn start_with(
        tag: &str,
        ipv6: bool,
        proxy_args: &[&str],
        server_args: impl FnOnce(&Workdir) -> Result<Vec<String>>,
    ) -> Result<Option<Fixture>> {
        let proxy_args: Vec<String> = proxy_args.iter().map(|a| a.to_string()).collect();
        Fixture::start_made(tag, ipv6, |_| Ok(proxy_args), server_args)
    }

    /// Like [`start_with`](Self::start_with), the proxy's options too made from the
    /// work directory (files the proxy reads, such as its certificate).
    pub fn start_made(
        tag: &str,
        ipv6: bool,
        proxy_args: impl FnOnce(&Workdir) -> Result<Vec<String>>,
        server_args: impl FnOnce(&Workdir) -> Result<Vec<String>>,
    ) -> Result<Option<Fixture>> {
        if !preflight()? {
            return Ok(None);
        }
        let work = Workdir::new(tag)?;
        let ip = loopback(ipv6);
        let extra = server_args(&work)?;
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let server = FtpServer::start_with(&work, ip, &extra)?;
        let proxy_args = proxy_args(&work)?;
        let proxy_args: Vec<&str> = proxy_args.iter().map(String::as_str).collect();
        let proxy = if std::env::var_os(DIRECT_ENV).is_some() {
            None
        } else {
            Some(ProxyProcess::start(
                ip,
                server.addr(),
                &proxy_args,
                &work.root().join("ftp-proxy.log"),
            )?)
        };
        Ok(Some(Fixture {
            proxy,
            server,
            work,
        }))
    }

    /// Where clients connect: the proxy (or the server itself with [`DIRECT_ENV`]).
    pub fn target(&self) -> SocketAddr {
        self.proxy
            .as_ref()
            .map_or(self.server.addr(), ProxyProcess::addr)
    }

    /// The proxy; an error when running without it.
    pub fn proxy(&self) -> Result<&ProxyProcess> {
        self.proxy.as_ref().ok_or_else(|| {
            E2eError::check(
                "a proxy-only scenario has a proxy",
                format!("{DIRECT_ENV} is set"),
            )
        })
    }

    /// The proxy, mutably (to signal it).
    pub fn proxy_mut(&mut self) -> Result<&mut ProxyProcess> {
        self.proxy.as_mut().ok_or_else(|| {
            E2eError::check(
                "a proxy-only scenario has a proxy",
                format!("{DIRECT_ENV} is set"),
            )
        })
    }

    /// The proxy's log so far (empty without a proxy).
    pub fn proxy_log(&self) -> String {
        self.proxy
            .as_ref()
            .map(ProxyProcess::log)
            .unwrap_or_default()
    }

    /// Checks that the passive port a client was given came from the proxy (it
    /// rewrote the server's 227/229 and logged the mapping), or from pure-ftpd's
    /// range when running directly.
    pub fn check_passive_port(&self, port: u16) -> Result<()> {
        match &self.proxy {
            None if (PASSIVE_RANGE.0..=PASSIVE_RANGE.1).contains(&port) => Ok(()),
            None => Err(E2eError::check(
                format!("passive port {port} in pure-ftpd's range"),
                String::new(),
            )),
            Some(p) => {
                let log = p.log();
                let mapped = log.lines().any(|l| {
                    l.contains("passive: client to server port")
                        && l.ends_with(&format!("via port {port}"))
                });
                if port >= 49152 && mapped {
                    Ok(())
                } else {
                    Err(E2eError::check(
                        format!("passive port {port} was allocated by the proxy (>= 49152, logged `via port {port}`)"),
                        tail(&log, 3000),
                    ))
                }
            }
        }
    }

    /// Checks that the proxy set up the active-mode data connection to the client's
    /// `port` (its log names it); nothing to check without a proxy.
    pub fn check_active_port(&self, port: u16) -> Result<()> {
        let Some(p) = &self.proxy else { return Ok(()) };
        let log = p.log();
        if log
            .lines()
            .any(|l| l.contains(&format!("active: server to client port {port} via port")))
        {
            Ok(())
        } else {
            Err(E2eError::check(
                format!("the proxy logged active mode to client port {port}"),
                tail(&log, 3000),
            ))
        }
    }
}

/// A fixture with the proxy holding the test CA's server certificate, `extra`
/// proxy options after `--tls-cert`/`--tls-key`; the fixture and the CA file
/// (`None` where [`preflight`] says the e2e tests cannot run).
pub fn ftps_fixture(tag: &str, extra: &[&str]) -> Result<Option<(Fixture, std::path::PathBuf)>> {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let mut ca = None;
    let fx = Fixture::start_made(
        tag,
        false,
        |work| {
            let pki = super::tls::Pki::create(&work.root().join("pki"))?;
            let pair = pki.server();
            ca = Some(pki.ca());
            let mut args = vec![
                "--tls-cert".to_string(),
                pair.cert.display().to_string(),
                "--tls-key".into(),
                pair.key.display().to_string(),
            ];
            args.extend(extra);
            Ok(args)
        },
        |_| Ok(Vec::new()),
    )?;
    Ok(fx.map(|f| (f, ca.expect("made with the proxy's options"))))
}
