//! `--route-file`: the table read at start-up and re-read on SIGUSR1.
//!
//! The daemon chroots to an empty directory, where the file's path means
//! nothing. So before the chroot the file's *directory* is opened
//! (`O_DIRECTORY`), and every read opens the file by its name inside that
//! directory (`openat(2)`). A descriptor of the file itself would see in-place
//! edits only, but editors and configuration tools write a new file and rename
//! it over the old one, which a descriptor of the old file never sees; the
//! directory sees both. The price is one directory of the real root kept open
//! in the chroot (read-only, as the unprivileged user): a directory of its own
//! (`/etc/ftp-proxy/`) keeps that to the table.
//!
//! A table that does not parse at start-up stops the daemon with `FILE:LINE`;
//! on a reload it is logged with `FILE:LINE` and the table in force stays.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ftp_proxy_core::{Proxy, RouteError, RouteTable};
use log::{error, info};

/// A route file larger than this is refused (a table of [`ftp_proxy_core::MAX_ROUTES`]
/// lines of ordinary length is far below it).
const MAX_BYTES: u64 = 16 << 20;

/// The route file's directory and name, to read it again.
#[derive(Debug)]
pub(crate) struct RouteFile {
    dir: File,
    name: OsString,
    /// The path as given, for messages.
    shown: String,
}

/// Why the route file cannot be read or used.
#[derive(Debug)]
pub(crate) enum RouteFileError {
    /// The path names no file inside a directory (`/`, `..`).
    NoName(String),
    /// Its directory cannot be opened.
    Dir(String, io::Error),
    /// The file cannot be opened or read.
    Read(String, io::Error),
    /// Not a regular file, or too large.
    Unusable(String, &'static str),
    /// A line does not parse (`FILE:LINE: message`).
    Parse(RouteError),
}

impl fmt::Display for RouteFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteFileError::NoName(p) => write!(f, "route file {p}: not a file name"),
            RouteFileError::Dir(p, e) => {
                write!(f, "route file {p}: cannot open its directory: {e}")
            }
            RouteFileError::Read(p, e) => write!(f, "route file {p}: {e}"),
            RouteFileError::Unusable(p, why) => write!(f, "route file {p}: {why}"),
            RouteFileError::Parse(e) => write!(f, "route file {e}"),
        }
    }
}

impl RouteFile {
    /// Opens the directory of `path` and reads the table (before the chroot).
    pub(crate) fn open(path: &Path) -> Result<(RouteFile, RouteTable), RouteFileError> {
        let shown = path.display().to_string();
        let name = path
            .file_name()
            .ok_or_else(|| RouteFileError::NoName(shown.clone()))?
            .to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| RouteFileError::Dir(shown.clone(), e))?;
        let file = RouteFile { dir, name, shown };
        let table = file.read()?;
        info!("route file {}: {} routes", file.shown, table.len());
        Ok((file, table))
    }

    /// Reads and parses the file as it is now.
    fn read(&self) -> Result<RouteTable, RouteFileError> {
        let err = |e| RouteFileError::Read(self.shown.clone(), e);
        let f = crate::sys::open_in(self.dir.as_fd(), &self.name).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(RouteFileError::Unusable(
                self.shown.clone(),
                "not a regular file",
            ));
        }
        let mut text = String::new();
        f.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(err)?;
        if text.len() as u64 > MAX_BYTES {
            return Err(RouteFileError::Unusable(
                self.shown.clone(),
                "larger than 16 MiB",
            ));
        }
        RouteTable::parse(&self.shown, &text).map_err(RouteFileError::Parse)
    }

    /// SIGUSR1: the new table for sessions that have not chosen their server
    /// yet, or the old one kept with the reason logged.
    pub(crate) fn reload(&self, proxy: &mut Proxy) {
        match self.read() {
            Ok(table) => {
                let n = table.len();
                match proxy.set_routes(table) {
                    Ok(()) => info!("route file {} reloaded: {n} routes", self.shown),
                    Err(e) => error!("route file {} not reloaded: {e}", self.shown),
                }
            }
            Err(e) => error!("{e}; keeping the previous table"),
        }
    }
}
