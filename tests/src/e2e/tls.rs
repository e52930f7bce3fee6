//! FTPS test material: a certificate authority made per test with the `openssl`
//! command, the certificates it signs, and the TLS versions the clients are pinned to.
//!
//! [`Pki::create`] writes, in a directory of the test's [`Workdir`](super::Workdir):
//!
//! * `ca.pem`/`ca.key`: a CA (`CN=ftp-proxy test CA`, `basicConstraints CA:TRUE`).
//! * [`Pki::server`]: signed by the CA for [`SERVER_NAME`] with the subject
//!   alternative names `DNS:localhost`, `IP:127.0.0.1` and `IP:::1`, so a client
//!   verifying against `ca.pem` accepts it whether it dials the name or the address.
//! * [`Pki::wrong_name`]: signed by the same CA, but only for [`WRONG_NAME`]: a
//!   client that checks names refuses it, one that checks only the chain accepts it.
//! * [`Pki::untrusted`]: self-signed for the right names, not by the CA: a client
//!   that checks the chain refuses it.
//!
//! Keys are ECDSA P-256 (one `openssl req` call per certificate, a few
//! milliseconds); certificates are valid for two days.
//!
//! # What the real parts do (measured on Debian 12)
//!
//! vsftpd 3.0.3 (Debian's build, OpenSSL 3.0), pure-ftpd 1.0.50, curl 7.88.1
//! (OpenSSL), lftp 4.9.2 (GnuTLS) and Python 3.11's `ftplib.FTP_TLS`; asserted by
//! tests/tests/e2e_ftps_direct.rs, which runs every client straight at the servers.
//!
//! * **vsftpd's TLS versions.** This vsftpd has no `ssl_tlsv1_2`/`ssl_tlsv1_3`
//!   options (only `ssl_tlsv1`, `ssl_sslv2`, `ssl_sslv3`); it negotiates TLS 1.3 and
//!   TLS 1.2 alike, and an unpinned client gets TLS 1.3. With its default
//!   `ssl_ciphers` (`DES-CBC3-SHA`, which OpenSSL 3.0 no longer offers) TLS 1.2 has
//!   no cipher: curl pinned to 1.2 fails with exit 35, `sslv3 alert handshake
//!   failure`, while TLS 1.3 (whose suites that setting does not touch) works. So
//!   the fixture sets `ssl_ciphers=HIGH`, and a test picks the TLS version on the
//!   client side ([`TlsVersion`]).
//! * **vsftpd's `require_ssl_reuse=YES`** (its default) checks, after the handshake
//!   of each PROT P data connection, that the client resumed the control
//!   connection's TLS session. A data connection that did not (Python's stock
//!   `FTP_TLS`, which wraps data sockets without `session=`) completes its
//!   handshake and is then closed, and the transfer's final reply is
//!   `522 SSL connection failed: session reuse required`; the log (with
//!   `debug_ssl=YES`) says `No SSL session reuse on data channel.` The same with
//!   TLS 1.2 and 1.3. With `require_ssl_reuse=NO` the same client transfers.
//! * **Who resumes.** curl and lftp resume the control session on every data
//!   connection, PASV and EPSV (lftp also PORT), with TLS 1.2 and TLS 1.3: vsftpd
//!   logs `reused` for each data handshake. Python resumes when it is given the
//!   control socket's session (`wrap_socket(..., session=ctrl.session)`), with both
//!   versions (`SSLSocket.session_reused` is true); without it, never.
//! * **pure-ftpd** (`-Y 3`, certificate with `-2 CERT,KEY`) requires no resumption:
//!   a data connection that does not resume is served. Offered the session, it
//!   resumes it with TLS 1.2 but not with TLS 1.3 (a full handshake each time).
//!   Under `-Y 3` a plain-text `USER` gets `421 Please reconnect using TLS security
//!   mechanisms.` and the connection is closed.
//! * **curl 7.88.1 in active mode** (`-P`) never starts TLS on the data connection
//!   the server opens to it, so a PROT P transfer hangs until `--max-time` (exit
//!   28) and vsftpd logs `SSL_accept failed`. lftp and Python do active-mode FTPS.
//!   (The test expects a curl 8 or later to succeed; that branch is unmeasured.)
//! * **vsftpd's refusals** (`force_anon_logins_ssl`, `force_anon_data_ssl`): a
//!   login before `AUTH TLS` gets `530 Anonymous sessions must use encryption.`
//!   and the connection is closed; a transfer after `PROT C` gets
//!   `522 Data connections must be encrypted.`
//! * **vsftpd's replies** to the protection commands: `234 Proceed with
//!   negotiation.`, `200 PBSZ set to 0.`, `200 PROT now Private.`. curl 7.88.1
//!   sends `AUTH SSL`, lftp and Python `AUTH TLS`; vsftpd accepts both.
//! * **Certificate checks.** Every client dials `127.0.0.1`, so the name checked is
//!   the IP SAN. Against the wrong-name certificate curl exits 60 (`no alternative
//!   certificate subject name matches`), lftp fails with `certificate common name
//!   doesn't match requested host name` and Python with
//!   `CERTIFICATE_VERIFY_FAILED` (`IP address mismatch`); against the self-signed
//!   one curl exits 60 and Python fails (`self-signed certificate`), lftp with `The
//!   certificate issuer is unknown`. curl and Python refuse during the handshake
//!   and send nothing more. lftp (GnuTLS) checks the certificate only after the
//!   handshake, by when it has written `USER` into the TLS session: vsftpd logs
//!   that `USER` (for the wrong-name certificate), then lftp closes; no `PASS` and
//!   no transfer command follow.
//! * **Implicit FTPS** (vsftpd `implicit_ssl=YES`): curl with `ftps://`, lftp with
//!   `ftps://` and Python wrapping the socket before the banner; no `AUTH` is sent,
//!   and data connections are protected and resumed as after `AUTH TLS`.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{E2eError, Result};
use super::proc::run_ok;

/// The name the server certificate is issued for (and the one clients check).
pub const SERVER_NAME: &str = "localhost";
/// The only name of the wrong-name certificate.
pub const WRONG_NAME: &str = "wrong.invalid";

/// openssl's configuration: the sections are the extensions of each certificate.
const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
[wrong]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:wrong.invalid
";

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert: PathBuf,
    /// Its unencrypted private key.
    pub key: PathBuf,
}

impl CertPair {
    /// The key and the certificate in one PEM file beside them (`NAME-both.pem`),
    /// the form some servers take in a single option.
    pub fn combined(&self) -> Result<PathBuf> {
        let path = self.cert.with_extension("both.pem");
        let mut pem = fs::read(&self.key).map_err(E2eError::io("read key"))?;
        pem.extend(fs::read(&self.cert).map_err(E2eError::io("read certificate"))?);
        fs::write(&path, pem).map_err(E2eError::io(format!("write {}", path.display())))?;
        Ok(path)
    }
}

/// The test PKI in one directory (see the module documentation).
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Creates `dir` and the CA and the three certificates in it.
    pub fn create(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(E2eError::io(format!("mkdir {}", dir.display())))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        let conf = dir.join("openssl.cnf");
        fs::write(&conf, OPENSSL_CONF).map_err(E2eError::io("write openssl.cnf"))?;
        let ca = pki.pair("ca");
        pki.req(&conf, "ca", "/CN=ftp-proxy test CA", &ca, None)?;
        pki.req(&conf, "server", "/CN=localhost", &pki.server(), Some(&ca))?;
        pki.req(
            &conf,
            "wrong",
            "/CN=wrong.invalid",
            &pki.wrong_name(),
            Some(&ca),
        )?;
        // Self-signed, with the server's names: only the issuer is wrong.
        pki.req(&conf, "server", "/CN=localhost", &pki.untrusted(), None)?;
        Ok(pki)
    }

    /// The CA certificate clients are given.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The good server certificate (localhost, 127.0.0.1, ::1; signed by the CA).
    pub fn server(&self) -> CertPair {
        self.pair("server")
    }

    /// Signed by the CA for [`WRONG_NAME`] only.
    pub fn wrong_name(&self) -> CertPair {
        self.pair("wrong")
    }

    /// Self-signed for the good names.
    pub fn untrusted(&self) -> CertPair {
        self.pair("untrusted")
    }

    fn pair(&self, name: &str) -> CertPair {
        CertPair {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    /// One `openssl req -x509`: a new P-256 key and its certificate with the
    /// extensions of section `ext`, signed by `issuer` (self-signed without).
    fn req(
        &self,
        conf: &Path,
        ext: &str,
        subject: &str,
        out: &CertPair,
        issuer: Option<&CertPair>,
    ) -> Result<()> {
        let mut args: Vec<String> = vec![
            "req".into(),
            "-config".into(),
            conf.display().to_string(),
            "-extensions".into(),
            ext.into(),
            "-x509".into(),
            "-newkey".into(),
            "ec".into(),
            "-pkeyopt".into(),
            "ec_paramgen_curve:P-256".into(),
            "-nodes".into(),
            "-days".into(),
            "2".into(),
            "-subj".into(),
            subject.into(),
            "-keyout".into(),
            out.key.display().to_string(),
            "-out".into(),
            out.cert.display().to_string(),
        ];
        if let Some(ca) = issuer {
            args.extend([
                "-CA".into(),
                ca.cert.display().to_string(),
                "-CAkey".into(),
                ca.key.display().to_string(),
            ]);
        }
        run_ok("openssl", &args, 30)?;
        Ok(())
    }
}

/// A TLS version a client is pinned to (minimum and maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

impl TlsVersion {
    /// Both.
    pub const ALL: [TlsVersion; 2] = [TlsVersion::V1_2, TlsVersion::V1_3];

    /// The name OpenSSL (vsftpd's log, Python's `SSLSocket.version()`) gives it.
    pub fn openssl_name(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "TLSv1.2",
            TlsVersion::V1_3 => "TLSv1.3",
        }
    }

    /// curl's options for exactly this version.
    pub fn curl_args(self) -> &'static [&'static str] {
        match self {
            TlsVersion::V1_2 => &["--tlsv1.2", "--tls-max", "1.2"],
            TlsVersion::V1_3 => &["--tlsv1.3"],
        }
    }

    /// lftp's (GnuTLS's) priority string for exactly this version.
    pub fn gnutls_priority(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "NORMAL:-VERS-ALL:+VERS-TLS1.2",
            TlsVersion::V1_3 => "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        }
    }

    /// ftp_client.py's `--tls-version` value.
    pub fn script_name(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}
