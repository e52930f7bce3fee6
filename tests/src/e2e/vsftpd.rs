//! vsftpd, a second real server behind the proxy: unlike pure-ftpd it finishes a
//! download after the control connection has closed, so a data connection can
//! outlive its session for as long as the client reads.
//!
//! It runs as root from the copy .ci/run unpacked (the package conflicts with
//! pure-ftpd's), anonymous and read-only, in a private mount namespace whose
//! `/etc/passwd` adds the `ftp` user it serves as (as pure-ftpd's fixture does),
//! and a PID namespace that ends with it.
//!
//! [`Vsftpd::start_with`] adds FTPS ([`VsftpdTls`]: explicit or implicit, with
//! `require_ssl_reuse` and the `force_anon_*_ssl` options) and anonymous uploads into
//! [`VSFTPD_UPLOAD_DIR`]. With TLS it logs the FTP protocol and every TLS handshake
//! (`debug_ssl=YES`), which [`Vsftpd::tls_handshakes`] and [`Vsftpd::commands`]
//! read back. What it does with TLS is measured in [`super::tls`]'s documentation.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::control::Control;
use super::error::{tail, E2eError, Result};
use super::installed;
use super::proc::{wait_for, ChildGuard};
use super::server::{free_port, write_passwd, Workdir, FTP_UID};
use super::tls::CertPair;

/// vsftpd's passive ports, apart from pure-ftpd's, rclone's and the proxy's.
pub const VSFTPD_PASSIVE_RANGE: (u16, u16) = (16000, 16999);

/// The directory under `anon/` where anonymous users may upload (with
/// [`VsftpdConfig::anon_upload`]); vsftpd lets them create files, not overwrite them.
pub const VSFTPD_UPLOAD_DIR: &str = "incoming";

/// How a [`Vsftpd`] differs from the anonymous, read-only, plain-text default.
#[derive(Debug, Clone, Default)]
pub struct VsftpdConfig {
    /// FTPS, if set.
    pub tls: Option<VsftpdTls>,
    /// Anonymous uploads into `anon/`[`VSFTPD_UPLOAD_DIR`] (`anon_upload_enable`).
    pub anon_upload: bool,
}

/// vsftpd's TLS settings: `ssl_enable=YES` and `allow_anon_ssl=YES`, plus these.
#[derive(Debug, Clone)]
pub struct VsftpdTls {
    /// `rsa_cert_file` and `rsa_private_key_file` (any key type works).
    pub cert: CertPair,
    /// `implicit_ssl`: TLS from the first byte instead of `AUTH TLS`.
    pub implicit: bool,
    /// `force_anon_logins_ssl`: anonymous logins only after `AUTH TLS`.
    pub force_logins: bool,
    /// `force_anon_data_ssl`: anonymous transfers only after `PROT P`.
    pub force_data: bool,
    /// `require_ssl_reuse`: every PROT P data connection must resume the control
    /// connection's TLS session.
    pub require_reuse: bool,
}

impl VsftpdTls {
    /// Explicit FTPS (`AUTH TLS`), TLS forced for anonymous logins and transfers,
    /// and vsftpd's default `require_ssl_reuse=YES`. With both forced, a transfer
    /// that succeeds was protected.
    pub fn explicit(cert: &CertPair) -> VsftpdTls {
        VsftpdTls {
            cert: cert.clone(),
            implicit: false,
            force_logins: true,
            force_data: true,
            require_reuse: true,
        }
    }

    /// Like [`explicit`](Self::explicit), with `implicit_ssl=YES`.
    pub fn implicit(cert: &CertPair) -> VsftpdTls {
        VsftpdTls {
            implicit: true,
            ..VsftpdTls::explicit(cert)
        }
    }

    /// The configuration lines.
    fn conf(&self) -> String {
        let yes = |b: bool| if b { "YES" } else { "NO" };
        // `ssl_ciphers=HIGH`: vsftpd's default (DES-CBC3-SHA) is refused by OpenSSL
        // 3, which leaves TLS 1.2 without a cipher. The logging shows every command,
        // reply and TLS handshake (`reused` or `not reused`) in vsftpd_log_file.
        format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nimplicit_ssl={}\n\
             force_anon_logins_ssl={}\nforce_anon_data_ssl={}\nrequire_ssl_reuse={}\n\
             rsa_cert_file={}\nrsa_private_key_file={}\nssl_ciphers=HIGH\n\
             debug_ssl=YES\nlog_ftp_protocol=YES\n",
            yes(self.implicit),
            yes(self.force_logins),
            yes(self.force_data),
            yes(self.require_reuse),
            self.cert.cert.display(),
            self.cert.key.display(),
        )
    }
}

/// One TLS handshake vsftpd logged (`debug_ssl=YES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsftpdHandshake {
    /// OpenSSL's name of the version, e.g. `TLSv1.3`.
    pub version: String,
    /// Whether the client resumed an earlier session.
    pub reused: bool,
    /// Whether the session had logged in: a data connection's handshake (the control
    /// connection's comes before `USER`).
    pub after_login: bool,
}

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
        Vsftpd::start_with(work, ip, &VsftpdConfig::default())
    }

    /// Like [`start`](Self::start), configured by `config`. Several may run on one
    /// [`Workdir`]; each has its own configuration and log, named after its port.
    pub fn start_with(work: &Workdir, ip: IpAddr, config: &VsftpdConfig) -> Result<Vsftpd> {
        let bin = installed::vsftpd()?;
        let passwd = write_passwd(work)?;
        // vsftpd chroots its unprivileged helper into an empty root-owned directory.
        let empty = work.root().join("vsftpd-empty");
        fs::create_dir_all(&empty).map_err(E2eError::io("mkdir vsftpd-empty"))?;
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755))
            .map_err(E2eError::io("chmod vsftpd-empty"))?;
        if config.anon_upload {
            let dir = work.anon().join(VSFTPD_UPLOAD_DIR);
            fs::create_dir_all(&dir).map_err(E2eError::io("mkdir anon upload dir"))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(E2eError::io("chmod anon upload dir"))?;
            std::os::unix::fs::chown(&dir, Some(FTP_UID), Some(FTP_UID))
                .map_err(E2eError::io("chown anon upload dir"))?;
        }
        let mut last = String::new();
        for _ in 0..3 {
            let addr = SocketAddr::new(ip, free_port(ip)?);
            let name = format!("vsftpd-{}", addr.port());
            let conf = work.root().join(format!("{name}.conf"));
            let log = work.root().join(format!("{name}.log"));
            let out_path = work.root().join(format!("{name}.out"));
            let mut text = format!(
                "listen=YES\nlisten_ipv6=NO\nlisten_address={ip}\nlisten_port={}\n\
                 background=NO\nanonymous_enable=YES\nlocal_enable=NO\nwrite_enable={}\n\
                 anon_root={}\nno_anon_password=YES\npasv_min_port={}\npasv_max_port={}\n\
                 secure_chroot_dir={}\nseccomp_sandbox=NO\nftp_username=ftp\n\
                 xferlog_enable={}\nsyslog_enable=NO\nvsftpd_log_file={}\n\
                 isolate=NO\nisolate_network=NO\n",
                addr.port(),
                if config.anon_upload { "YES" } else { "NO" },
                work.anon().display(),
                VSFTPD_PASSIVE_RANGE.0,
                VSFTPD_PASSIVE_RANGE.1,
                empty.display(),
                if config.tls.is_some() { "YES" } else { "NO" },
                log.display(),
            );
            if config.anon_upload {
                text.push_str("anon_upload_enable=YES\nanon_umask=022\n");
            }
            if let Some(tls) = &config.tls {
                text.push_str(&tls.conf());
            }
            // `isolate*=NO`: no namespaces per session, which the test does not need
            // and which cost a network namespace per login.
            fs::write(&conf, text).map_err(E2eError::io("write vsftpd.conf"))?;
            // vsftpd refuses a configuration file others may write.
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o600))
                .map_err(E2eError::io("chmod vsftpd.conf"))?;
            let out = fs::File::create(&out_path).map_err(E2eError::io("create vsftpd.out"))?;
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
            let output = || tail(&fs::read_to_string(&out_path).unwrap_or_default(), 2000);
            let implicit = config.tls.as_ref().is_some_and(|t| t.implicit);
            let ready = wait_for(
                &format!("vsftpd's banner on {addr}"),
                Duration::from_secs(10),
                || {
                    if guard.try_wait()?.is_some() {
                        return Ok(Some(false));
                    }
                    if implicit {
                        // The banner comes after a handshake: a connection that vsftpd
                        // logged (so it is vsftpd listening there) is enough.
                        let connected =
                            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok();
                        let logged =
                            fs::read_to_string(&log).is_ok_and(|l| l.contains("CONNECT: Client"));
                        return Ok((connected && logged).then_some(true));
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

    /// Its log so far (empty without TLS, which turns logging on).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The TLS handshakes it has logged, in order.
    pub fn tls_handshakes(&self) -> Vec<VsftpdHandshake> {
        self.log().lines().filter_map(parse_handshake).collect()
    }

    /// The FTP commands it has received, in order (as logged, `PASS` included).
    pub fn commands(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("FTP command: Client \"")?;
                let (_, cmd) = rest.split_once("\", \"")?;
                Some(cmd.strip_suffix('"').unwrap_or(cmd).to_string())
            })
            .collect()
    }
}

/// `... [pid 5] [anonymous] DEBUG: Client "127.0.0.1", "SSL version: TLSv1.3, SSL
/// cipher: TLS_AES_256_GCM_SHA384, reused, no cert"`: the user's name in brackets
/// appears once the session has logged in.
fn parse_handshake(line: &str) -> Option<VsftpdHandshake> {
    let (head, rest) = line.split_once(" DEBUG: Client ")?;
    let (_, details) = rest.split_once("\"SSL version: ")?;
    let (version, rest) = details.split_once(',')?;
    Some(VsftpdHandshake {
        version: version.to_string(),
        // `reused` or `not reused` as a field of its own.
        reused: rest.split(',').any(|f| f.trim() == "reused"),
        after_login: head.contains("] ["),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_lines_are_parsed() {
        let control = r#"Mon Dec  7 03:38:29 2026 [pid 5] DEBUG: Client "127.0.0.1", "SSL version: TLSv1.3, SSL cipher: TLS_AES_256_GCM_SHA384, not reused, no cert""#;
        let data = r#"Mon Dec  7 03:38:30 2026 [pid 5] [anonymous] DEBUG: Client "127.0.0.1", "SSL version: TLSv1.2, SSL cipher: ECDHE-ECDSA-AES256-GCM-SHA384, reused, no cert""#;
        let other = r#"Mon Dec  7 03:38:30 2026 [pid 5] [anonymous] DEBUG: Client "127.0.0.1", "No SSL session reuse on data channel.""#;
        assert_eq!(
            parse_handshake(control),
            Some(VsftpdHandshake {
                version: "TLSv1.3".into(),
                reused: false,
                after_login: false
            })
        );
        assert_eq!(
            parse_handshake(data),
            Some(VsftpdHandshake {
                version: "TLSv1.2".into(),
                reused: true,
                after_login: true
            })
        );
        assert_eq!(parse_handshake(other), None);
    }
}
