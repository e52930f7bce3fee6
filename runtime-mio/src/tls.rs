//! TLS towards clients (RFC 4217, reverse mode): the certificate, the server
//! configuration, and the one per control session; and TLS towards servers
//! (`--server-tls`): the roots, the name checked, and a session store per
//! control session ([`ServerTls`]).
//!
//! The core decides when a connection is TLS ([`ftp_proxy_core::ftps`],
//! [`ftp_proxy_core::Action::StartTls`], [`ftp_proxy_core::Security::Tls`]); this
//! module only holds what rustls needs to run the server side. Each control
//! session gets a clone of the server configuration with a session cache of its
//! own ([`ClientTls::for_session`]): a data connection can only resume a TLS
//! session that this control session's connections created, which is what
//! `--tls-data-reuse require` checks (vsftpd's `require_ssl_reuse`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ServerSessionMemoryCache;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, NamedGroup, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// TLS sessions one control session remembers for its data connections to
/// resume: a few transfers' worth (a TLS 1.3 server issues two tickets per
/// handshake).
const SESSIONS_PER_CONTROL: usize = 32;

/// Servers whose preferred key exchange group the proxy remembers across
/// sessions ([`KxHints`]): one per name it speaks TLS to, more than a route
/// file is expected to hold.
const KX_HINTS: usize = 256;

/// The crypto provider of both sides: ring, with the key exchange groups in the
/// order of their cost. rustls 0.23.48's ring provider lists P-384 first, so a
/// client hello carried a P-384 key share (ring computes P-384 with its generic
/// big-number code): measured through the proxy against pure-ftpd, that key
/// share was 18% of the proxy's CPU per FTPS session, and pure-ftpd, which takes
/// only P-256, asked for another one anyway (a HelloRetryRequest). X25519 is
/// what OpenSSL, curl and browsers offer first; P-256 is next (ring has
/// dedicated code for it), P-384 last.
///
/// ring rather than aws-lc-rs: it builds with cc alone (no cmake, no assembler
/// toolchain) and is all a TLS 1.2/1.3 server and client need. rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange; peers then agree on
/// X25519 or a NIST curve.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// What a data connection's TLS handshake must show (`--tls-data-reuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataReuse {
    /// A full handshake is accepted (Python's ftplib never resumes).
    #[default]
    Allow,
    /// Only a handshake that resumes a session of the same control connection.
    Require,
}

/// A certificate or key file that cannot be used; `Display` names the file.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be read or holds no PEM section of the kind.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// Why it failed.
        error: pem::Error,
    },
    /// The certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// rustls refused the pair (a key that does not match, an unsupported key type).
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { path, what, error } => {
                write!(f, "{}: cannot read {what}: {error}", path.display())
            }
            TlsError::NoCertificate(path) => {
                write!(f, "{}: no PEM certificate in the file", path.display())
            }
            TlsError::Config { cert, key, error } => write!(
                f,
                "{} with {}: unusable certificate and key: {error}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {}

/// The proxy's TLS server side towards clients: loaded at start-up (before any
/// chroot), cloned per control session. A reload builds a new one and replaces
/// the loop's ([`crate::Reloading::set_client_tls`]); the clones already handed
/// to running sessions hold their own `Arc` of the old certified key and of
/// their session cache, so they are not touched.
#[derive(Debug, Clone)]
pub struct ClientTls {
    base: Arc<ServerConfig>,
    reuse: DataReuse,
}

impl ClientTls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key.
    pub fn load(cert: &Path, key: &Path, reuse: DataReuse) -> Result<ClientTls, TlsError> {
        let read = |path: &Path, what| {
            std::fs::read(path).map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                what,
                error: pem::Error::Io(e),
            })
        };
        let cert_pem = read(cert, "a certificate")?;
        let key_pem = read(key, "a private key")?;
        ClientTls::from_pem(cert, &cert_pem, key, &key_pem, reuse)
    }

    /// The same from the files' contents, read by the caller (the daemon reads
    /// them with `openat(2)` from the directories it kept open before the
    /// chroot, to reload them); `cert` and `key` only name them in errors. The
    /// pair is refused unless the key is the certificate's (rustls compares the
    /// public keys), so a reload never installs a pair that no handshake could
    /// use.
    pub fn from_pem(
        cert: &Path,
        cert_pem: &[u8],
        key: &Path,
        key_pem: &[u8],
        reuse: DataReuse,
    ) -> Result<ClientTls, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|error| TlsError::Pem {
                path: cert.to_path_buf(),
                what: "a certificate",
                error,
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert.to_path_buf()));
        }
        let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::Pem {
            path: key.to_path_buf(),
            what: "a private key",
            error,
        })?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
            .map_err(|error| TlsError::Config {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                error,
            })?;
        Ok(ClientTls {
            base: Arc::new(config),
            reuse,
        })
    }

    /// What data connections must show.
    pub fn reuse(&self) -> DataReuse {
        self.reuse
    }

    /// The configuration of one control session: the proxy's certificate, and a
    /// session cache of its own, so that its data connections can resume only its
    /// TLS sessions. No ticket encryption key is set: resumption is stateful
    /// (TLS 1.2 session ids, TLS 1.3 tickets that name an entry of that cache), so
    /// nothing issued to one session opens another's.
    pub fn for_session(&self) -> Arc<ServerConfig> {
        let mut c = (*self.base).clone();
        c.session_storage = ServerSessionMemoryCache::new(SESSIONS_PER_CONTROL);
        Arc::new(c)
    }
}

/// Where the roots that verify FTPS servers come from when `--server-tls-ca` is
/// not given: the system's bundle, one PEM file (Debian, Ubuntu, Alpine and
/// Arch keep it here). Read with the PEM parser rustls already has, at start-up
/// before any chroot, rather than with `rustls-native-certs`: one file is all
/// this needs, and no crate has to learn the layouts of other systems.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a server's certificate is checked (`--server-tls-ca`,
/// `--server-tls-insecure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerVerify {
    /// Against the roots in this PEM file, for the name given.
    Roots(PathBuf),
    /// Not at all (the handshake's signatures still are): a warning at start-up.
    Insecure,
}

/// Why the TLS setup towards servers cannot be had.
#[derive(Debug)]
pub enum ServerTlsError {
    /// The roots file could not be read.
    Roots {
        /// The file.
        path: PathBuf,
        /// Why.
        error: pem::Error,
    },
    /// No usable root in the file.
    NoRoots(PathBuf),
    /// The name to check is neither a DNS name nor an IP address.
    Name(String),
    /// rustls refused the configuration.
    Config(rustls::Error),
}

impl fmt::Display for ServerTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTlsError::Roots { path, error } => {
                write!(
                    f,
                    "{}: cannot read CA certificates: {error}",
                    path.display()
                )
            }
            ServerTlsError::NoRoots(path) => {
                write!(
                    f,
                    "{}: no usable CA certificate in the file",
                    path.display()
                )
            }
            ServerTlsError::Name(n) => write!(f, "{n:?} is not a DNS name or an IP address"),
            ServerTlsError::Config(e) => write!(f, "TLS towards servers: {e}"),
        }
    }
}

impl std::error::Error for ServerTlsError {}

/// The proxy's TLS client side towards FTPS servers: loaded once at start-up,
/// with a session store of its own per control session
/// ([`ServerTls::for_session`]).
#[derive(Debug, Clone)]
pub struct ServerTls {
    base: Arc<ClientConfig>,
    name: ServerName<'static>,
    /// Shared by every session's store ([`SessionStore`]).
    hints: Arc<KxHints>,
}

/// One control session's TLS client configuration towards its server: the
/// control connection and every data connection of the session share its
/// session store, so each data connection resumes the control connection's TLS
/// session (vsftpd's `require_ssl_reuse` refuses the others with `522`).
#[derive(Debug, Clone)]
pub struct SessionServerTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl SessionServerTls {
    /// A new TLS client connection to the server (control or data).
    pub fn connect(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.name.clone())
    }
}

impl ServerTls {
    /// The TLS client side that checks certificates as `verify` says, for `name`
    /// (a DNS name, or an IP address checked against the certificate's IP SANs).
    ///
    /// TLS 1.3 and 1.2, as rustls' safe defaults. Measured through the proxy
    /// (tests/tests/e2e_ftps_server.rs): vsftpd negotiates TLS 1.3 and every data
    /// connection resumes the control session (its `require_ssl_reuse` is met);
    /// pure-ftpd negotiates TLS 1.3 too and never resumes it (full handshakes,
    /// which it accepts even with `-Y 3`). Pinned to TLS 1.2 both resume; no
    /// server measured needs that, so nothing is pinned.
    pub fn load(verify: &ServerVerify, name: &str) -> Result<ServerTls, ServerTlsError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| ServerTlsError::Name(name.to_string()))?;
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ServerTlsError::Config)?;
        let config = match verify {
            ServerVerify::Roots(path) => {
                let mut roots = RootCertStore::empty();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<_, _>>())
                    .map_err(|error| ServerTlsError::Roots {
                        path: path.clone(),
                        error,
                    })?;
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(ServerTlsError::NoRoots(path.clone()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ServerVerify::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        };
        Ok(ServerTls {
            base: Arc::new(config),
            name,
            hints: Arc::new(KxHints(ClientSessionMemoryCache::new(KX_HINTS))),
        })
    }

    /// The configuration of one control session, with a session store of its own
    /// (the key exchange hints excepted, which all sessions share).
    pub fn for_session(&self) -> SessionServerTls {
        let mut c = (*self.base).clone();
        c.resumption = Resumption::store(Arc::new(SessionStore {
            own: ClientSessionMemoryCache::new(SESSIONS_PER_CONTROL),
            hints: self.hints.clone(),
        }));
        SessionServerTls {
            config: Arc::new(c),
            name: self.name.clone(),
        }
    }
}

/// Which key exchange group each server took last, kept for the whole process:
/// the only thing sessions share about a server. It holds no secret, and it
/// spares each new session's first handshake the HelloRetryRequest of a server
/// that does not take the group offered first (pure-ftpd takes P-256 only), a
/// round trip and a key share computed for nothing.
#[derive(Debug)]
struct KxHints(ClientSessionMemoryCache);

/// One control session's TLS client store: its own TLS 1.2 sessions and TLS 1.3
/// tickets, so its data connections resume only its control connection's TLS
/// session (and no other session's), beside the process-wide [`KxHints`].
#[derive(Debug)]
struct SessionStore {
    own: ClientSessionMemoryCache,
    hints: Arc<KxHints>,
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.hints.0.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.hints.0.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.own.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.own.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.own.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.own.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.own.take_tls13_ticket(server_name)
    }
}

/// `--server-tls-insecure`: any certificate is taken; the handshake's signatures
/// are still checked, so the peer holds the key of the certificate it showed.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ftp-proxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn key_exchange_offers_x25519_first_and_p384_last() {
        use rustls::crypto::ring::kx_group;
        let names: Vec<NamedGroup> = provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            names,
            [kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1].map(|g| g.name())
        );
    }

    #[test]
    fn sessions_share_key_exchange_hints_and_nothing_else() {
        let hints = Arc::new(KxHints(ClientSessionMemoryCache::new(KX_HINTS)));
        let store = |h: &Arc<KxHints>| SessionStore {
            own: ClientSessionMemoryCache::new(SESSIONS_PER_CONTROL),
            hints: h.clone(),
        };
        let (a, b) = (store(&hints), store(&hints));
        let name = ServerName::try_from("ftp.example.org").unwrap();
        assert_eq!(b.kx_hint(&name), None);
        a.set_kx_hint(name.clone(), NamedGroup::secp256r1);
        assert_eq!(b.kx_hint(&name), Some(NamedGroup::secp256r1));
        // A store of another process-wide set learns nothing.
        let other = store(&Arc::new(KxHints(ClientSessionMemoryCache::new(KX_HINTS))));
        assert_eq!(other.kx_hint(&name), None);
        assert!(b.take_tls13_ticket(&name).is_none() && b.tls12_session(&name).is_none());
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let key = scratch("k1.pem", "");
        let missing = Path::new("/nonexistent/ftp-proxy/cert.pem");
        let e = ClientTls::load(missing, &key, DataReuse::Allow).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/ftp-proxy/cert.pem: "),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_pem_sections_is_named_for_what_it_lacks() {
        let cert = scratch("c2.pem", "not pem at all\n");
        let key = scratch("k2.pem", "not pem either\n");
        let e = ClientTls::load(&cert, &key, DataReuse::Allow).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e:?}");
        assert!(e.to_string().contains(&*cert.to_string_lossy()), "{e}");
    }
}
