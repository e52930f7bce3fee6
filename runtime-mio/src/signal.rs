//! SIGHUP/SIGINT/SIGTERM (exit) and SIGUSR1 (reload) delivered through the event
//! loop (the self-pipe trick).
//!
//! The handler (in `sys`, with the state it touches) only does async-signal-safe work: it records the signal in an atomic
//! bit set and writes one byte to a non-blocking pipe whose read end the poller
//! watches. This works on Linux and OpenBSD alike (OpenBSD has no signalfd).

use std::io::Read;
use std::os::fd::AsFd;

use mio::unix::pipe;
use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::sys;

/// The signals that end the daemon (ftp-proxy.c's `main` installs `handle_signal`
/// for these), and SIGUSR1, which asks for a reload ([`RELOAD`]). SIGHUP keeps the
/// original's meaning: scripts that stop the daemon with it keep working.
const HANDLED: [Signal; 4] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
];

/// The signal that re-reads the configuration that may change at run time (the
/// `--route-file`), instead of ending the daemon.
pub(crate) const RELOAD: i32 = Signal::SIGUSR1 as i32;

/// The installed handlers and the pipe's ends. Dropping it detaches the pipe (the
/// handlers stay, but only record signals).
#[derive(Debug)]
pub(crate) struct Signals {
    rx: pipe::Receiver,
    _tx: pipe::Sender,
}

impl Signals {
    /// Creates the pipe, installs the handlers and ignores SIGPIPE.
    pub(crate) fn install() -> Result<Signals, Errno> {
        let (tx, rx) = pipe::new().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        sys::set_signal_wake(Some(tx.as_fd()));
        sys::catch_signals(&HANDLED)?;
        Ok(Signals { rx, _tx: tx })
    }

    /// The read end, to register with the poller.
    pub(crate) fn receiver(&mut self) -> &mut pipe::Receiver {
        &mut self.rx
    }

    /// Empties the pipe and returns the signals that arrived, lowest number first.
    pub(crate) fn take(&mut self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        for _ in 0..1024 {
            match self.rx.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let bits = sys::take_signals();
        (0..64).filter(|n| bits & (1 << n) != 0).collect()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        sys::set_signal_wake(None);
    }
}
