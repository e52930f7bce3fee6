//! Choosing and opening the data-connection path (`--backend`).
//!
//! Opened while still privileged, before the drop: `/dev/pf` and netlink sockets
//! need root to open, and both stay usable afterwards (netlink only with
//! CAP_NET_ADMIN kept, see [`crate::privs`]).

use std::fmt;

use ftp_proxy_runtime::{Backend, DataPath};

use crate::args::{Args, BackendKind};

/// Why the backend could not be opened.
#[derive(Debug)]
pub enum BackendError {
    /// This build or this operating system has no such backend.
    Unsupported(BackendKind, &'static str),
    /// The backend exists but failed to open; the backend's own message.
    #[allow(dead_code)] // constructed once the nftables/pf backends are wired in
    Open(BackendKind, String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Unsupported(k, why) => write!(f, "unsupported backend {k}: {why}"),
            BackendError::Open(k, e) => write!(f, "cannot open backend {k}: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// The data path for `args.backend`.
pub fn open(args: &Args) -> Result<DataPath<Box<dyn Backend>>, BackendError> {
    match args.backend {
        BackendKind::Relay => Ok(DataPath::Relay),
        BackendKind::Nftables => Err(BackendError::Unsupported(
            BackendKind::Nftables,
            "not built into this binary",
        )),
        BackendKind::Pf => Err(BackendError::Unsupported(
            BackendKind::Pf,
            "not built into this binary",
        )),
    }
}

/// Whether the privilege drop must keep CAP_NET_ADMIN for this backend.
pub fn needs_net_admin(kind: BackendKind) -> bool {
    kind == BackendKind::Nftables
}
