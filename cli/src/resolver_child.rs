//! The name-resolver helper of forward mode (`--user-at-host`) and of route
//! tables (`--route-file`).
//!
//! The daemon chroots to an empty directory, where `getaddrinfo(3)` finds no
//! `/etc/resolv.conf`, `/etc/hosts` or `/etc/nsswitch.conf`. Opening them before
//! the chroot is not enough: the hosts file is reopened on every lookup and the
//! name-service modules are loaded on first use. So before the chroot the daemon
//! forks this helper, which keeps the real root, drops to the same unprivileged
//! account, keeps no descriptor but its end of the socket pair, and answers
//! lookups ([`ftp_proxy_runtime::resolver::serve`]) until the daemon is gone (an
//! end of file on the pair, or `PR_SET_PDEATHSIG`).

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

use ftp_proxy_runtime::resolver::{self, Resolver};
use log::{error, info};
use nix::unistd::ForkResult;

use crate::privs::{self, DropPlan, Identity};
use crate::sys;

/// Forks the helper and returns the daemon's end of its socket pair. Must be
/// called while the process has one thread (it is checked).
/// `what`: the option that needs it, for the log line.
pub(crate) fn spawn(identity: Option<&Identity>, what: &str) -> std::io::Result<Resolver> {
    let (ours, theirs) = Resolver::pair()?;
    match sys::fork_single_threaded().map_err(std::io::Error::from)? {
        ForkResult::Parent { child } => {
            drop(theirs);
            info!("name lookups for {what} run in helper process {child}");
            Ok(ours)
        }
        ForkResult::Child => {
            std::mem::forget(ours);
            let code = match helper(theirs, identity) {
                Ok(()) => 0,
                Err(e) => {
                    error!("resolver helper: {e}");
                    1
                }
            };
            sys::exit_now(code)
        }
    }
}

fn helper(sock: UnixDatagram, identity: Option<&Identity>) -> Result<(), String> {
    sys::die_with_parent().map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {}", e.desc()))?;
    sys::ignore_reload_signal().map_err(|e| format!("sigaction(SIGUSR1): {}", e.desc()))?;
    // Only the socket stays open: not the listener, the filter's handles or logs.
    sys::close_all_but(sock.as_fd());
    if let Some(identity) = identity {
        let plan = DropPlan {
            identity: identity.clone(),
            chroot: None,
            keep_net_admin: false,
        };
        privs::drop_privileges(&plan).map_err(|e| e.to_string())?;
    }
    resolver::serve(sock).map_err(|e| e.to_string())
}
