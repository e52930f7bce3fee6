//! rclone's FTP server (`rclone serve ftp`), a second real server behind the proxy.
//!
//! It never closes its side of an upload's data connection (rclone's issue 9215):
//! the client's close leaves the server's socket in CLOSE-WAIT, and only its 226
//! says the upload is over. A proxy that waits for both ends of file before it
//! calls a data connection done counts every upload as still in progress.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::control::Control;
use super::error::{tail, E2eError, Result};
use super::installed;
use super::proc::{wait_for, ChildGuard};
use super::server::{free_port, Workdir, PASSWORD, USER};

/// rclone's passive ports, apart from pure-ftpd's (20000-29999) and the proxy's
/// (49152 up), so a passive port tells who chose it; below the ephemeral ports, as
/// pure-ftpd's (`PASSIVE_RANGE`).
pub const RCLONE_PASSIVE_RANGE: (u16, u16) = (14000, 14999);

/// A running `rclone serve ftp` on loopback, stopped on drop.
pub struct RcloneServer {
    _guard: ChildGuard,
    addr: SocketAddr,
    root: PathBuf,
    log: PathBuf,
}

impl RcloneServer {
    /// Serves a new directory `rclone/` of `work` on `ip` (IPv4) to [`USER`] with
    /// [`PASSWORD`], read-write, and waits for its banner. rclone caches directory
    /// listings, so the directory exists before it starts.
    pub fn start(work: &Workdir, ip: IpAddr) -> Result<RcloneServer> {
        let bin = installed::rclone()?;
        let root = work.root().join("rclone");
        fs::create_dir_all(&root).map_err(E2eError::io("mkdir rclone/"))?;
        // An empty configuration: no remote of the machine's is read.
        let config = work.root().join("rclone.conf");
        fs::write(&config, "").map_err(E2eError::io("write rclone.conf"))?;
        let log = work.root().join("rclone.log");
        let mut last = String::new();
        // The port is chosen free, then released; a few attempts make a race harmless.
        for _ in 0..3 {
            let addr = SocketAddr::new(ip, free_port(ip)?);
            let out = fs::File::create(&log).map_err(E2eError::io("create rclone.log"))?;
            let err = out.try_clone().map_err(E2eError::io("dup log fd"))?;
            let mut cmd = Command::new(&bin);
            cmd.args(["serve", "ftp"])
                .arg(&root)
                .arg("--addr")
                .arg(addr.to_string())
                .args(["--user", USER, "--pass", PASSWORD])
                .arg("--passive-port")
                .arg(format!(
                    "{}-{}",
                    RCLONE_PASSIVE_RANGE.0, RCLONE_PASSIVE_RANGE.1
                ))
                .arg("--public-ip")
                .arg(ip.to_string())
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let mut guard = ChildGuard::spawn(&mut cmd, format!("rclone serve ftp on {addr}"))?;
            let ready = wait_for(
                &format!("rclone's banner on {addr}"),
                Duration::from_secs(15),
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
                return Ok(RcloneServer {
                    _guard: guard,
                    addr,
                    root,
                    log,
                });
            }
            last = fs::read_to_string(&log).unwrap_or_default();
        }
        Err(E2eError::check(
            "rclone serve ftp starts",
            tail(&last, 3000),
        ))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory it serves: uploads land here.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
