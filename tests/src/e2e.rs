//! End-to-end harness: the real `ftp-proxy` binary between real FTP clients (curl,
//! lftp, Python ftplib) and a real server (pure-ftpd; vsftpd and rclone where a
//! scenario needs their behaviour), all on loopback.
//!
//! A scenario is a [`Fixture`]: a private directory with random 1 KiB and 10 MiB
//! files, pure-ftpd serving them (anonymous read-only, user `alice` read-write),
//! and the proxy in reverse mode in front (`-R`/`-P`), logging at `-D7` to a file
//! the test can assert on. Every wait is bounded and every process is killed by its
//! process group when its guard drops, so a failing test leaves nothing behind.
//!
//! The scenarios must run as root (CI does): pure-ftpd runs in a private mount
//! namespace and the proxy chroots and drops privileges. As root, missing programs
//! fail the test; as another user, the test prints why it did not run and passes.
//!
//! FTPS: a per-test CA and certificates ([`Pki`]), vsftpd and pure-ftpd with TLS
//! ([`VsftpdTls`], [`FtpServer::start_tls`]) and the clients' TLS options
//! ([`ClientTls`]); what the real parts do with TLS is in the `tls` module's
//! documentation (tests/src/e2e/tls.rs).

mod clients;
mod control;
mod error;
mod fixture;
mod installed;
mod proc;
mod proxy;
mod rclone;
mod server;
mod tls;
mod vsftpd;

pub use clients::{
    curl, curl_ftps, curl_ftps_retr, curl_ftps_stor, curl_list, curl_retr, curl_stor, curl_version,
    ftp_url, ftplib, ftplib_ftps, ftplib_script, ftps_url, lftp, lftp_as, lftp_ftps, prove_mode,
    Attempt, ClientTls, DataMode, FtpsMode, HeldClient, Login, SessionReuse, CLIENT_TIMEOUT,
};
pub use control::{connect_from, Control, Reply};
pub use error::{tail, E2eError, Result};
pub use fixture::{
    ftps_fixture, loopback, preflight, Fixture, DIRECT_ENV, PROXY_CHROOT, PROXY_USER,
};
pub use installed::TOOLS_DIR;
pub use proc::{group_members, rss_kib, run, run_ok, wait_for, ChildGuard};
pub use proxy::{build_in_test_profile, proxy_binary, wait_listening, ProxyProcess, LISTENING};
pub use rclone::{RcloneServer, RCLONE_PASSIVE_RANGE};
pub use server::{
    assert_same_file, free_port, pure_ftpd_tls_args, FtpServer, PureFtpdTls, Workdir, BIG, BIG_LEN,
    PASSIVE_RANGE, PASSWORD, SMALL, SMALL_LEN, USER,
};
pub use tls::{CertPair, Pki, TlsVersion, SERVER_NAME, WRONG_NAME};
pub use vsftpd::{
    Vsftpd, VsftpdConfig, VsftpdHandshake, VsftpdTls, VSFTPD_PASSIVE_RANGE, VSFTPD_UPLOAD_DIR,
};
