//! Choosing and opening the data-connection path (`--backend`).
//!
//! Opened while still privileged, before the drop: `/dev/pf` and netlink sockets
//! need root to open, and both stay usable afterwards (netlink only with
//! CAP_NET_ADMIN kept, see [`crate::privs`]).

use std::fmt;

use ftp_proxy_core::Config;
use ftp_proxy_runtime::{DataPath, Filter};

use crate::args::{Args, BackendKind};

/// Why the backend could not be opened.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// This build or this operating system has no such backend.
    #[cfg_attr(target_os = "linux", allow(dead_code))] // only nftables off Linux
    Unsupported(BackendKind, &'static str),
    /// pf could not be used; the original's own message (`pf is disabled`,
    /// `open /dev/pf: ...`), printed without a prefix as the original does.
    Pf(String),
    /// The backend exists but failed to open; the backend's own message.
    Open(BackendKind, String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Unsupported(k, why) => write!(f, "unsupported backend {k}: {why}"),
            BackendError::Pf(e) => f.write_str(e),
            BackendError::Open(k, e) => write!(f, "cannot open backend {k}: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// The data path for `args.backend`, for a proxy running with `config` (in the
/// process that will commit: the nftables table is named after `config.pid`).
pub(crate) fn open(
    args: &Args,
    config: &Config,
) -> Result<DataPath<Box<dyn Filter>>, BackendError> {
    match args.backend {
        BackendKind::Relay => Ok(DataPath::Relay),
        BackendKind::Nftables => open_nftables(config),
        BackendKind::Pf => open_pf(config),
    }
}

#[cfg(target_os = "linux")]
fn open_nftables(config: &Config) -> Result<DataPath<Box<dyn Filter>>, BackendError> {
    use pfctl_backend::nft::NftBackend;
    let nft = NftBackend::open(config).map_err(|e| {
        let hint = match e {
            ftp_proxy_core::FilterError::PermissionDenied => " (needs root or CAP_NET_ADMIN)",
            _ => "",
        };
        BackendError::Open(BackendKind::Nftables, format!("{e}{hint}"))
    })?;
    log::info!(
        "nftables: table inet {}, data connections get ct mark {:#010x}",
        nft.table(),
        nft.mark()
    );
    Ok(DataPath::Kernel(Box::new(nft)))
}

#[cfg(not(target_os = "linux"))]
fn open_nftables(_config: &Config) -> Result<DataPath<Box<dyn Filter>>, BackendError> {
    Err(BackendError::Unsupported(
        BackendKind::Nftables,
        "nftables needs Linux",
    ))
}

fn open_pf(_config: &Config) -> Result<DataPath<Box<dyn Filter>>, BackendError> {
    // The anchors are named by the core from `config.pid`; the backend uses this
    // process's pid (the same one) to sweep anchors of dead ftp-proxy processes.
    let pf =
        pfctl_backend::pf::PfBackend::open_auto().map_err(|e| BackendError::Pf(e.to_string()))?;
    Ok(DataPath::Kernel(Box::new(pf)))
}

/// Whether the privilege drop must keep CAP_NET_ADMIN for this backend.
pub(crate) fn needs_net_admin(kind: BackendKind) -> bool {
    kind == BackendKind::Nftables
}
