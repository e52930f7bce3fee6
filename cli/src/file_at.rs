//! A file the daemon reads again after its chroot: the file's *directory* is
//! opened before the chroot (`O_DIRECTORY`), and every read opens the file by its
//! name inside it (`openat(2)`).
//!
//! A descriptor of the file itself would see in-place edits only, but editors,
//! configuration and certificate tools write a new file and rename it over the
//! old one, which a descriptor of the old file never sees; the directory sees
//! both. The price is one directory of the real root kept open in the chroot
//! (read-only, as the unprivileged user): a directory of its own
//! (`/etc/ftp-proxy/`) keeps that to the files meant. Used by the route file
//! ([`crate::route_file`]) and the certificate pair ([`crate::cert_files`]).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file's directory, its name in it, and the path as given (for messages).
#[derive(Debug)]
pub(crate) struct FileAt {
    dir: File,
    name: OsString,
    path: PathBuf,
}

/// Why the file cannot be opened or read; the caller names the file.
#[derive(Debug)]
pub(crate) enum FileAtError {
    /// The path names no file inside a directory (`/`, `..`).
    NoName,
    /// Its directory cannot be opened.
    Dir(io::Error),
    /// The file cannot be opened or read.
    Read(io::Error),
    /// Not a regular file, or larger than the caller allows.
    Unusable(&'static str),
}

impl FileAt {
    /// Opens the directory of `path` (before the chroot).
    pub(crate) fn open(path: &Path) -> Result<FileAt, FileAtError> {
        let name = path.file_name().ok_or(FileAtError::NoName)?.to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(FileAtError::Dir)?;
        Ok(FileAt {
            dir,
            name,
            path: path.to_path_buf(),
        })
    }

    /// The path as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The contents of the file now in the directory under that name; more than
    /// `max` bytes is [`FileAtError::Unusable`] with `too_large`.
    pub(crate) fn read(&self, max: u64, too_large: &'static str) -> Result<Vec<u8>, FileAtError> {
        let f = crate::sys::open_in(self.dir.as_fd(), &self.name).map_err(FileAtError::Read)?;
        if !f.metadata().map_err(FileAtError::Read)?.is_file() {
            return Err(FileAtError::Unusable("not a regular file"));
        }
        let mut bytes = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(FileAtError::Read)?;
        if bytes.len() as u64 > max {
            return Err(FileAtError::Unusable(too_large));
        }
        Ok(bytes)
    }
}
