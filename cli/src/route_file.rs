//! `--route-file`: the table read at start-up and re-read on SIGUSR1.
//!
//! The daemon chroots to an empty directory, where the file's path means
//! nothing, and editors replace files by rename; so the file is read through
//! its directory, opened before the chroot ([`crate::file_at`]).
//!
//! A table that does not parse at start-up stops the daemon with `FILE:LINE`;
//! on a reload it is logged with `FILE:LINE` and the table in force stays.

use std::fmt;
use std::io;
use std::path::Path;

use ftp_proxy_core::{Proxy, RouteError, RouteTable};
use log::{error, info};

use crate::file_at::{FileAt, FileAtError};

/// A route file larger than this is refused (a table of [`ftp_proxy_core::MAX_ROUTES`]
/// lines of ordinary length is far below it).
const MAX_BYTES: u64 = 16 << 20;

/// The route file's directory and name, to read it again.
#[derive(Debug)]
pub(crate) struct RouteFile {
    file: FileAt,
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

impl RouteFileError {
    fn at(shown: &str, e: FileAtError) -> RouteFileError {
        let shown = shown.to_string();
        match e {
            FileAtError::NoName => RouteFileError::NoName(shown),
            FileAtError::Dir(e) => RouteFileError::Dir(shown, e),
            FileAtError::Read(e) => RouteFileError::Read(shown, e),
            FileAtError::Unusable(why) => RouteFileError::Unusable(shown, why),
        }
    }
}

impl RouteFile {
    /// Opens the directory of `path` and reads the table (before the chroot).
    pub(crate) fn open(path: &Path) -> Result<(RouteFile, RouteTable), RouteFileError> {
        let shown = path.display().to_string();
        let file = FileAt::open(path).map_err(|e| RouteFileError::at(&shown, e))?;
        let file = RouteFile { file, shown };
        let table = file.read()?;
        info!("route file {}: {} routes", file.shown, table.len());
        Ok((file, table))
    }

    /// Reads and parses the file as it is now.
    fn read(&self) -> Result<RouteTable, RouteFileError> {
        let bytes = self
            .file
            .read(MAX_BYTES, "larger than 16 MiB")
            .map_err(|e| RouteFileError::at(&self.shown, e))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            RouteFileError::Read(
                self.shown.clone(),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ),
            )
        })?;
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
