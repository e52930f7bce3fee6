//! `--tls-cert`/`--tls-key`: the pair read at start-up and re-read on SIGUSR1.
//!
//! As with the route file, the daemon chroots to an empty directory where the
//! paths mean nothing, and certificate tools (certbot, acme.sh, editors) write a
//! new file and rename it over the old one. So each file is read through its
//! directory, opened before the chroot ([`crate::file_at`]): the file in place at
//! the moment of the reload is read, whether it was rewritten or replaced. The reload runs as
//! the unprivileged user, so both files (and their directories) must be readable
//! by it; a key readable by root only fails the reload, with the reason logged.
//!
//! Both files are read and the pair checked (both parse, the key is the
//! certificate's) before anything changes: a pair that fails at start-up stops
//! the daemon naming the file; at a reload it is logged naming the file and the
//! certificate in force stays. Sessions accepted after a reload get the new
//! certificate; running ones keep theirs ([`ftp_proxy_runtime::Reloading`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ftp_proxy_runtime::{ClientTls, DataReuse, TlsError};
use log::{error, info};

use crate::file_at::{FileAt, FileAtError};

/// A certificate or key file larger than this is refused (a chain of a few
/// certificates is a few KiB).
const MAX_BYTES: u64 = 1 << 20;

/// The certificate and key files, to read them again.
#[derive(Debug)]
pub(crate) struct CertFiles {
    cert: FileAt,
    key: FileAt,
    reuse: DataReuse,
}

/// Why the pair cannot be read or used; `Display` starts with the file's path.
#[derive(Debug)]
pub(crate) enum CertFileError {
    /// The path names no file inside a directory (`/`, `..`).
    NoName(PathBuf),
    /// Its directory cannot be opened.
    Dir(PathBuf, io::Error),
    /// The file cannot be opened or read.
    Read(PathBuf, io::Error),
    /// Not a regular file, or too large.
    Unusable(PathBuf, &'static str),
    /// The contents do not make a usable pair.
    Tls(TlsError),
}

impl fmt::Display for CertFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertFileError::NoName(p) => write!(f, "{}: not a file name", p.display()),
            CertFileError::Dir(p, e) => {
                write!(f, "{}: cannot open its directory: {e}", p.display())
            }
            CertFileError::Read(p, e) => write!(f, "{}: cannot read: {e}", p.display()),
            CertFileError::Unusable(p, why) => write!(f, "{}: {why}", p.display()),
            CertFileError::Tls(e) => e.fmt(f),
        }
    }
}

impl CertFileError {
    fn at(path: &Path, e: FileAtError) -> CertFileError {
        let path = path.to_path_buf();
        match e {
            FileAtError::NoName => CertFileError::NoName(path),
            FileAtError::Dir(e) => CertFileError::Dir(path, e),
            FileAtError::Read(e) => CertFileError::Read(path, e),
            FileAtError::Unusable(why) => CertFileError::Unusable(path, why),
        }
    }
}

impl CertFiles {
    /// Opens both directories and loads the pair (before the chroot).
    pub(crate) fn open(
        cert: &Path,
        key: &Path,
        reuse: DataReuse,
    ) -> Result<(CertFiles, ClientTls), CertFileError> {
        let files = CertFiles {
            cert: FileAt::open(cert).map_err(|e| CertFileError::at(cert, e))?,
            key: FileAt::open(key).map_err(|e| CertFileError::at(key, e))?,
            reuse,
        };
        let tls = files.load()?;
        Ok((files, tls))
    }

    /// Reads and checks the pair as the files are now.
    fn load(&self) -> Result<ClientTls, CertFileError> {
        let read = |f: &FileAt| {
            f.read(MAX_BYTES, "larger than 1 MiB")
                .map_err(|e| CertFileError::at(f.path(), e))
        };
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        ClientTls::from_pem(self.cert.path(), &cert, self.key.path(), &key, self.reuse)
            .map_err(CertFileError::Tls)
    }

    /// SIGUSR1: the new pair for sessions accepted from now on, or `None` with
    /// the reason logged (the previous pair stays).
    pub(crate) fn reload(&self) -> Option<ClientTls> {
        match self.load() {
            Ok(tls) => {
                info!(
                    "TLS certificate {} reloaded (key {})",
                    self.cert.path().display(),
                    self.key.path().display()
                );
                Some(tls)
            }
            Err(e) => {
                error!("{e}; keeping the previous certificate");
                None
            }
        }
    }
}
