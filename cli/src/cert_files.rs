//! `--tls-cert`/`--tls-key`: the pair read at start-up and re-read on SIGUSR1.
//!
//! As with the route file ([`crate::route_file`]), the daemon chroots to an
//! empty directory where the paths mean nothing, and certificate tools (certbot,
//! acme.sh, editors) write a new file and rename it over the old one. So before
//! the chroot each file's *directory* is opened, and every read opens the file by
//! its name in that directory (`openat(2)`): the file in place at the moment of
//! the reload is read, whether it was rewritten or replaced. The reload runs as
//! the unprivileged user, so both files (and their directories) must be readable
//! by it; a key readable by root only fails the reload, with the reason logged.
//!
//! Both files are read and the pair checked (both parse, the key is the
//! certificate's) before anything changes: a pair that fails at start-up stops
//! the daemon naming the file; at a reload it is logged naming the file and the
//! certificate in force stays. Sessions accepted after a reload get the new
//! certificate; running ones keep theirs ([`ftp_proxy_runtime::Reloading`]).

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ftp_proxy_runtime::{ClientTls, DataReuse, TlsError};
use log::{error, info};

/// A certificate or key file larger than this is refused (a chain of a few
/// certificates is a few KiB).
const MAX_BYTES: u64 = 1 << 20;

/// One of the two files: its directory, its name in it, and the path as given.
#[derive(Debug)]
struct FileAt {
    dir: File,
    name: OsString,
    path: PathBuf,
}

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

impl FileAt {
    /// Opens the directory of `path` (before the chroot).
    fn open(path: &Path) -> Result<FileAt, CertFileError> {
        let name = path
            .file_name()
            .ok_or_else(|| CertFileError::NoName(path.to_path_buf()))?
            .to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| CertFileError::Dir(path.to_path_buf(), e))?;
        Ok(FileAt {
            dir,
            name,
            path: path.to_path_buf(),
        })
    }

    /// The file's contents as they are now.
    fn read(&self) -> Result<Vec<u8>, CertFileError> {
        let err = |e| CertFileError::Read(self.path.clone(), e);
        let f = crate::sys::open_in(self.dir.as_fd(), &self.name).map_err(err)?;
        if !f.metadata().map_err(err)?.is_file() {
            return Err(CertFileError::Unusable(
                self.path.clone(),
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        f.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(err)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(CertFileError::Unusable(
                self.path.clone(),
                "larger than 1 MiB",
            ));
        }
        Ok(bytes)
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
            cert: FileAt::open(cert)?,
            key: FileAt::open(key)?,
            reuse,
        };
        let tls = files.load()?;
        Ok((files, tls))
    }

    /// Reads and checks the pair as the files are now.
    fn load(&self) -> Result<ClientTls, CertFileError> {
        let cert = self.cert.read()?;
        let key = self.key.read()?;
        ClientTls::from_pem(&self.cert.path, &cert, &self.key.path, &key, self.reuse)
            .map_err(CertFileError::Tls)
    }

    /// SIGUSR1: the new pair for sessions accepted from now on, or `None` with
    /// the reason logged (the previous pair stays).
    pub(crate) fn reload(&self) -> Option<ClientTls> {
        match self.load() {
            Ok(tls) => {
                info!(
                    "TLS certificate {} reloaded (key {})",
                    self.cert.path.display(),
                    self.key.path.display()
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
