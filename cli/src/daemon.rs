//! Detaching from the terminal, the way `daemon(3)` does it.
//!
//! `/dev/null` is opened *before* the chroot (there is no `/dev` inside
//! `/var/empty`). Unlike the original, the fork comes *before* the backend is
//! opened and privileges are dropped: the nftables table belongs to the netlink
//! socket of the process that commits to it (the kernel deletes it when that socket
//! closes) and carries that process's pid. The parent waits for the child's verdict so that
//! startup errors still reach the terminal and the exit status (see [`detach`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{chdir, dup2, pipe2, setsid, ForkResult};

use crate::sys;

/// An open `/dev/null`, kept until [`Detached::ready`] puts it on fds 0, 1 and 2.
#[derive(Debug)]
pub(crate) struct DevNull(OwnedFd);

/// Why detaching failed. Display: the original's `cannot daemonize: <strerror>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DaemonError {
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
pub(crate) fn open_dev_null() -> Result<DevNull, DaemonError> {
    let f: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| DaemonError::OpenDevNull(e.to_string()))?;
    Ok(DevNull(f.into()))
}

/// The child's side of [`detach`]: the report pipe to the waiting parent and the
/// `/dev/null` descriptor for [`Detached::ready`].
#[derive(Debug)]
pub(crate) struct Detached {
    report: File,
    dev_null: DevNull,
}

/// What the child sends when startup finished.
const READY: &[u8] = b"ok";

/// Forks and starts a new session. The parent does not exit at once: it waits
/// until the child reports through a pipe, then exits 0 when the child is
/// [`ready`](Detached::ready), or prints the child's error as
/// `<progname>: <message>` and exits 1 (also when the child dies without a word).
///
/// This lets the child finish the privileged startup itself (the nftables table
/// is owned by the socket of the process that commits, so it must be the child's)
/// while startup errors still reach the terminal and the exit status, as they do
/// when the original fails before `daemon(3)`.
///
/// Must be called while the process has a single thread (on Linux the fork is
/// refused otherwise).
pub(crate) fn detach(dev_null: DevNull, progname: &str) -> Result<Detached, DaemonError> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(|e| DaemonError::Step("pipe", e))?;
    match sys::fork_single_threaded().map_err(|e| DaemonError::Step("fork", e))? {
        ForkResult::Parent { .. } => {
            drop(wr);
            let mut msg = Vec::new();
            let _ = File::from(rd).read_to_end(&mut msg);
            let code = if msg == READY {
                0
            } else {
                let text = String::from_utf8_lossy(&msg);
                let text = if text.is_empty() {
                    "daemon exited during startup".into()
                } else {
                    text
                };
                eprintln!("{progname}: {text}");
                1
            };
            // Skips destructors and atexit handlers: the listener and the rest belong
            // to the child now.
            sys::exit_now(code)
        }
        ForkResult::Child => {}
    }
    drop(rd);
    setsid().map_err(|e| DaemonError::Step("setsid", e))?;
    Ok(Detached {
        report: File::from(wr),
        dev_null,
    })
}

impl Detached {
    /// Startup succeeded: tells the parent to exit 0, then puts `/dev/null` on
    /// standard input, output and error. With `chdir_root` the working directory
    /// becomes `/` (unneeded after a chroot, which already did that).
    pub(crate) fn ready(mut self, chdir_root: bool) -> Result<(), DaemonError> {
        if chdir_root {
            chdir("/").map_err(|e| DaemonError::Step("chdir", e))?;
        }
        let _ = self.report.write_all(READY);
        drop(self.report);
        let fd = self.dev_null.0.as_raw_fd();
        for target in 0..=2 {
            if fd != target {
                dup2(fd, target).map_err(|e| DaemonError::Step("dup2", e))?;
            }
        }
        if fd <= 2 {
            // The descriptor is one of 0..2 now and must stay open.
            std::mem::forget(self.dev_null);
        }
        Ok(())
    }

    /// Startup failed: hands `message` to the parent, which prints it and exits 1.
    pub(crate) fn fail(mut self, message: &str) {
        let text = if message.as_bytes() == READY {
            "ok (startup failed)"
        } else {
            message
        };
        let _ = self.report.write_all(text.as_bytes());
    }
}
