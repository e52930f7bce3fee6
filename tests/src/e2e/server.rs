//! The test files and the real FTP server (pure-ftpd) they are served from.
//!
//! pure-ftpd serves anonymous users from the home of system user `ftp`. To avoid
//! touching the machine's accounts, the server runs in a private mount namespace
//! (`unshare -m`) where `/etc/passwd` is bind-mounted over by a copy that adds an
//! `ftp` user whose home is this test's directory. Named users come from a puredb
//! file with SHA-512 crypt hashes (`openssl passwd -6`), which log in in about 1 ms;
//! `pure-pw useradd` would hash with argon2id and cost 2.5 s per login.
//!
//! FTPS: [`FtpServer::start_tls`] with a [`PureFtpdTls`] level and a certificate
//! from [`Pki`](super::Pki).

use std::fs;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::control::Control;
use super::error::{tail, E2eError, Result};
use super::proc::{run_ok, wait_for, ChildGuard};
use super::tls::CertPair;

/// The named (virtual) FTP user; its home is writable, so uploads go there.
pub const USER: &str = "alice";
/// Its password.
pub const PASSWORD: &str = "e2e-Secret-7";
/// The 1 KiB test file, in both the anonymous and the user's directory.
pub const SMALL: &str = "small.bin";
/// The 10 MiB test file.
pub const BIG: &str = "big.bin";
/// Sizes of the two files.
pub const SMALL_LEN: usize = 1024;
/// 10 MiB.
pub const BIG_LEN: usize = 10 << 20;
/// pure-ftpd's passive port range. The proxy hands out ports from 49152 up, so a
/// passive port a client sees tells which of the two chose it. It lies below Linux's
/// ephemeral ports (32768-60999 by default): a passive port that a busy run's
/// outgoing connections already hold makes pure-ftpd answer `425 Unable to identify
/// the local data socket: Address already in use` (seen once in a fresh-root run).
pub const PASSIVE_RANGE: (u16, u16) = (20000, 29999);
/// uid/gid the FTP users map to (`nobody`), so uploads are not root-owned.
pub(super) const FTP_UID: u32 = 65534;

/// A per-test directory tree, removed when dropped:
/// `anon/` (served to anonymous users, read-only), `user/` (the named user's home,
/// writable, hard links of the same files), `local/` (client-side files), logs.
pub struct Workdir {
    root: PathBuf,
}

impl Workdir {
    /// Creates the tree with fresh random test files.
    pub fn new(tag: &str) -> Result<Workdir> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("ftp-proxy-e2e.{}.{n}.{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let w = Workdir { root };
        for d in ["", "anon", "user", "local"] {
            let p = w.root.join(d);
            fs::create_dir_all(&p).map_err(E2eError::io(format!("mkdir {}", p.display())))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                .map_err(E2eError::io(format!("chmod {}", p.display())))?;
        }
        chown(w.user(), Some(FTP_UID), Some(FTP_UID)).map_err(E2eError::io("chown user dir"))?;
        for (name, len) in [(SMALL, SMALL_LEN), (BIG, BIG_LEN)] {
            let data = random_bytes(len)?;
            let path = w.anon().join(name);
            fs::write(&path, &data).map_err(E2eError::io(format!("write {}", path.display())))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                .map_err(E2eError::io("chmod file"))?;
            fs::hard_link(&path, w.user().join(name))
                .map_err(E2eError::io("link into user dir"))?;
        }
        Ok(w)
    }

    /// The tree's root (logs and generated configuration live here).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What anonymous users see.
    pub fn anon(&self) -> PathBuf {
        self.root.join("anon")
    }

    /// The named user's home; uploads land here.
    pub fn user(&self) -> PathBuf {
        self.root.join("user")
    }

    /// Client-side scratch space.
    pub fn local(&self) -> PathBuf {
        self.root.join("local")
    }

    /// The original of test file `name` (compare downloads and uploads with it).
    pub fn original(&self, name: &str) -> PathBuf {
        self.anon().join(name)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("FTP_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .map_err(E2eError::io("read /dev/urandom"))?;
    Ok(data)
}

/// A port that was free a moment ago on `ip` (the kernel picks it).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).map_err(E2eError::io(format!("bind {ip} port 0")))?;
    Ok(l.local_addr().map_err(E2eError::io("local_addr"))?.port())
}

/// Compares two files byte for byte; the error names the first differing offset.
pub fn assert_same_file(expected: &Path, got: &Path) -> Result<()> {
    let a = fs::read(expected).map_err(E2eError::io(format!("read {}", expected.display())))?;
    let b = fs::read(got).map_err(E2eError::io(format!("read {}", got.display())))?;
    if a == b {
        return Ok(());
    }
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    Err(E2eError::check(
        format!("{} is a copy of {}", got.display(), expected.display()),
        format!(
            "expected {} bytes, got {}; first difference at offset {first}",
            a.len(),
            b.len()
        ),
    ))
}

/// A running pure-ftpd on loopback, stopped (with its session processes) on drop.
pub struct FtpServer {
    guard: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
}

impl FtpServer {
    /// Starts pure-ftpd on `ip` (127.0.0.1 or ::1) serving `work`, and waits until it
    /// answers with its banner.
    pub fn start(work: &Workdir, ip: IpAddr) -> Result<FtpServer> {
        FtpServer::start_with(work, ip, &[])
    }

    /// With FTPS at `level` ([`pure_ftpd_tls_args`]) and the certificate `cert`.
    pub fn start_tls(
        work: &Workdir,
        ip: IpAddr,
        level: PureFtpdTls,
        cert: &CertPair,
    ) -> Result<FtpServer> {
        let args = pure_ftpd_tls_args(level, cert);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        FtpServer::start_with(work, ip, &args)
    }

    /// Like [`start`](Self::start), with extra pure-ftpd options (e.g. `-Y 1` for TLS).
    pub fn start_with(work: &Workdir, ip: IpAddr, extra: &[&str]) -> Result<FtpServer> {
        let passwd = write_passwd(work)?;
        let pdb = write_puredb(work)?;
        let log = work.root().join("pure-ftpd.log");
        let mut last = None;
        // The port is chosen free, then released: another process may take it before
        // pure-ftpd binds. A few attempts make that harmless.
        for _ in 0..3 {
            let port = free_port(ip)?;
            let addr = SocketAddr::new(ip, port);
            let out = fs::File::create(&log).map_err(E2eError::io("create pure-ftpd.log"))?;
            let err = out.try_clone().map_err(E2eError::io("dup log fd"))?;
            let mut cmd = Command::new("unshare");
            cmd.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$0" /etc/passwd && exec "$@""#)
                .arg(&passwd)
                .arg("pure-ftpd")
                .arg("-S")
                .arg(format!("{ip},{port}"))
                .arg(if ip.is_ipv4() { "-4" } else { "-6" })
                // No DNS, chroot everyone, anonymous may not upload, no syslog.
                .args([
                    "-H", "-A", "-i", "-f", "none", "-u", "1", "-c", "200", "-C", "200", "-I", "5",
                ])
                .arg("-p")
                .arg(format!("{}:{}", PASSIVE_RANGE.0, PASSIVE_RANGE.1))
                .arg("-l")
                .arg(format!("puredb:{}", pdb.display()))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let mut guard = ChildGuard::spawn(&mut cmd, format!("pure-ftpd on {addr}"))?;
            let ready = wait_for(
                &format!("pure-ftpd banner on {addr}"),
                Duration::from_secs(10),
                || {
                    if guard.try_wait()?.is_some() {
                        return Ok(Some(false));
                    }
                    let Ok(mut c) = Control::connect(addr, Duration::from_secs(5)) else {
                        return Ok(None);
                    };
                    let Ok(banner) = c.read_reply() else {
                        return Ok(None);
                    };
                    let _ = c.command("QUIT");
                    Ok(Some(banner.code == 220))
                },
                || tail(&fs::read_to_string(&log).unwrap_or_default(), 2000),
            )?;
            if ready {
                return Ok(FtpServer { guard, addr, log });
            }
            last = Some(fs::read_to_string(&log).unwrap_or_default());
        }
        Err(E2eError::check(
            "pure-ftpd starts",
            last.unwrap_or_default(),
        ))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (also its process group).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// pure-ftpd's TLS levels (`-Y`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PureFtpdTls {
    /// `-Y 1`: plain text and `AUTH TLS` both accepted.
    Allowed,
    /// `-Y 2`: sessions must start TLS before logging in.
    ControlRequired,
    /// `-Y 3`: TLS required on the control connection and on every data connection.
    Required,
}

/// pure-ftpd's options for FTPS: `-Y LEVEL -2 CERT,KEY` (its `--certfile` takes the
/// certificate and the key as two comma-separated files).
pub fn pure_ftpd_tls_args(level: PureFtpdTls, cert: &CertPair) -> Vec<String> {
    let level = match level {
        PureFtpdTls::Allowed => "1",
        PureFtpdTls::ControlRequired => "2",
        PureFtpdTls::Required => "3",
    };
    vec![
        "-Y".into(),
        level.into(),
        "-2".into(),
        format!("{},{}", cert.cert.display(), cert.key.display()),
    ]
}

/// `/etc/passwd` plus an `ftp` user whose home is the anonymous directory (vsftpd's
/// anonymous user too).
pub(super) fn write_passwd(work: &Workdir) -> Result<PathBuf> {
    let mut text = fs::read_to_string("/etc/passwd").map_err(E2eError::io("read /etc/passwd"))?;
    text = text
        .lines()
        .filter(|l| !l.starts_with("ftp:"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "ftp:x:{FTP_UID}:{FTP_UID}:e2e anonymous FTP:{}:/usr/sbin/nologin\n",
        work.anon().display()
    ));
    let path = work.root().join("passwd");
    fs::write(&path, text).map_err(E2eError::io("write passwd copy"))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .map_err(E2eError::io("chmod passwd copy"))?;
    Ok(path)
}

/// The puredb with user [`USER`], home `user/` (the `/./` chroots there).
fn write_puredb(work: &Workdir) -> Result<PathBuf> {
    let out = run_ok("openssl", &["passwd", "-6", PASSWORD], 30)?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let line = format!(
        "{USER}:{hash}:{FTP_UID}:{FTP_UID}::{}/./::::::::::::\n",
        work.user().display()
    );
    let passwd = work.root().join("users.passwd");
    fs::write(&passwd, line).map_err(E2eError::io("write users.passwd"))?;
    let pdb = work.root().join("users.pdb");
    let args = [Path::new("mkdb"), &pdb, Path::new("-f"), &passwd];
    run_ok("pure-pw", &args, 30)?;
    Ok(pdb)
}
