//! Detaching from the terminal, the way `daemon(3)` does it.
//!
//! `/dev/null` is opened *before* the chroot (there is no `/dev` inside
//! `/var/empty`), the fork happens *after* the privilege drop, as in the original,
//! so the child that runs the proxy (and whose pid names the anchors) never was root.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::{chdir, dup2, fork, setsid, ForkResult};

/// An open `/dev/null`, kept until [`daemonize`] puts it on fds 0, 1 and 2.
#[derive(Debug)]
pub struct DevNull(OwnedFd);

/// Why detaching failed. Display: the original's `cannot daemonize: <strerror>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonError {
    /// `/dev/null` could not be opened.
    OpenDevNull(String),
    /// A step of the detach failed.
    Step(&'static str, Errno),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::OpenDevNull(e) => write!(f, "open(/dev/null): {e}"),
            DaemonError::Step(step, e) => write!(f, "cannot daemonize: {step}: {}", e.desc()),
        }
    }
}

impl std::error::Error for DaemonError {}

/// Opens `/dev/null` read-write (startup step 11).
pub fn open_dev_null() -> Result<DevNull, DaemonError> {
    let f: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| DaemonError::OpenDevNull(e.to_string()))?;
    Ok(DevNull(f.into()))
}

/// Forks (the parent exits 0 at once), starts a new session and puts `/dev/null`
/// on standard input, output and error. With `chdir_root` the working directory
/// becomes `/` (unneeded after a chroot, which already did that).
///
/// Must be called while the process has a single thread.
pub fn daemonize(dev_null: DevNull, chdir_root: bool) -> Result<(), DaemonError> {
    // SAFETY: the process is single-threaded here (nothing has spawned a thread), so
    // the child may run arbitrary code; the parent only calls _exit.
    match unsafe { fork() }.map_err(|e| DaemonError::Step("fork", e))? {
        // SAFETY: _exit skips destructors and atexit handlers that belong to the child now.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    setsid().map_err(|e| DaemonError::Step("setsid", e))?;
    if chdir_root {
        chdir("/").map_err(|e| DaemonError::Step("chdir", e))?;
    }
    let fd = dev_null.0.as_raw_fd();
    for target in 0..=2 {
        if fd != target {
            dup2(fd, target).map_err(|e| DaemonError::Step("dup2", e))?;
        }
    }
    if fd <= 2 {
        // The descriptor is one of 0..2 now and must stay open.
        std::mem::forget(dev_null);
    }
    Ok(())
}
