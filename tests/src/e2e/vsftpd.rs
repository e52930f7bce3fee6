//! vsftpd, a second real server behind the proxy: unlike pure-ftpd it finishes a
//! download after the control connection has closed, so a data connection can
//! outlive its session for as long as the client reads.
//!
//! It runs as root from the copy .ci/run unpacked (the package conflicts with
//! pure-ftpd's), anonymous and read-only, in a private mount namespace whose
//! `/etc/passwd` adds the `ftp` user it serves as (as pure-ftpd's fixture does),
//! and a PID namespace that ends with it.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::control::Control;
use super::error::{tail, E2eError, Result};
use super::installed;
use super::proc::{wait_for, ChildGuard};
use super::server::{free_port, write_passwd, Workdir};

/// vsftpd's passive ports, apart from pure-ftpd's, rclone's and the proxy's.
pub const VSFTPD_PASSIVE_RANGE: (u16, u16) = (16000, 16999);

/// A running vsftpd serving `anon/` of a [`Workdir`] to anonymous users, stopped
/// (with its session processes) on drop.
pub struct Vsftpd {
    _guard: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
}

impl Vsftpd {
    /// Starts it on `ip` (IPv4) and waits for its banner.
    pub fn start(work: &Workdir, ip: IpAddr) -> Result<Vsftpd> {
        let bin = installed::vsftpd()?;
        let passwd = write_passwd(work)?;
        // vsftpd chroots its unprivileged helper into an empty root-owned directory.
        let empty = work.root().join("vsftpd-empty");
        fs::create_dir_all(&empty).map_err(E2eError::io("mkdir vsftpd-empty"))?;
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755))
            .map_err(E2eError::io("chmod vsftpd-empty"))?;
        let log = work.root().join("vsftpd.log");
        let mut last = String::new();
        for _ in 0..3 {
            let addr = SocketAddr::new(ip, free_port(ip)?);
            let conf = work.root().join("vsftpd.conf");
            let text = format!(
                "listen=YES\nlisten_ipv6=NO\nlisten_address={ip}\nlisten_port={}\n\
                 background=NO\nanonymous_enable=YES\nlocal_enable=NO\nwrite_enable=NO\n\
                 anon_root={}\nno_anon_password=YES\npasv_min_port={}\npasv_max_port={}\n\
                 secure_chroot_dir={}\nseccomp_sandbox=NO\nftp_username=ftp\n\
                 xferlog_enable=NO\nsyslog_enable=NO\nvsftpd_log_file={}\n\
                 isolate=NO\nisolate_network=NO\n",
                addr.port(),
                work.anon().display(),
                VSFTPD_PASSIVE_RANGE.0,
                VSFTPD_PASSIVE_RANGE.1,
                empty.display(),
                log.display(),
            );
            // `isolate*=NO`: no namespaces per session, which the test does not need
            // and which cost a network namespace per login.
            fs::write(&conf, text).map_err(E2eError::io("write vsftpd.conf"))?;
            // vsftpd refuses a configuration file others may write.
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o600))
                .map_err(E2eError::io("chmod vsftpd.conf"))?;
            let out = fs::File::create(work.root().join("vsftpd.out"))
                .map_err(E2eError::io("create vsftpd.out"))?;
            let err = out.try_clone().map_err(E2eError::io("dup log fd"))?;
            // A PID namespace of its own too: vsftpd puts each session in a new
            // session (setsid), out of reach of the guard's process-group kill. When
            // the guard stops `unshare`, its child, the namespace's first process, is
            // killed, and with it every process of the namespace.
            let mut cmd = Command::new("unshare");
            cmd.args([
                "-m",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
            ])
            .args(["sh", "-c"])
            // sh stays the namespace's first process: with vsftpd itself in that
            // place, logins after the first few were reset (measured).
            .arg(r#"mount --bind "$0" /etc/passwd && { "$@" & wait; }"#)
            .arg(&passwd)
            .arg(&bin)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
            let mut guard = ChildGuard::spawn(&mut cmd, format!("vsftpd on {addr}"))?;
            let output = || {
                let out = fs::read_to_string(work.root().join("vsftpd.out")).unwrap_or_default();
                tail(&out, 2000)
            };
            let ready = wait_for(
                &format!("vsftpd's banner on {addr}"),
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
                output,
            )?;
            if ready {
                return Ok(Vsftpd {
                    _guard: guard,
                    addr,
                    log,
                });
            }
            last = output();
        }
        Err(E2eError::check("vsftpd starts", last))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
