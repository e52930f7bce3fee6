//! The second driver: `core/examples/threaded.rs`, a std-threads reverse proxy on the
//! core's public API and its `Forward`s, in front of a real pure-ftpd, carries curl's
//! RETR and STOR of 1 KiB and 10 MiB files in PASV, EPSV, PORT and EPRT, each
//! compared byte for byte and each proven to have gone through the proxy's ports,
//! and the relay's byte counts in the session summaries.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ftp_proxy_tests::e2e::*;

/// Builds the example in the test's own profile (once) and returns its path:
/// cargo puts examples in `<target>/<profile>/examples/`, beside `deps/` where the
/// test runs.
fn example_binary() -> Result<PathBuf> {
    let profile_dir = build_in_test_profile(&["-p", "ftp-proxy-core", "--example", "threaded"])?;
    Ok(profile_dir.join("examples").join("threaded"))
}

/// The example running in front of `server`, its stderr in `log`.
fn start_example(server: SocketAddr, log: &Path) -> Result<(ChildGuard, SocketAddr)> {
    start_example_with(server, log, &[])
}

/// The same, with `extra` arguments (the server data mode).
fn start_example_with(
    server: SocketAddr,
    log: &Path,
    extra: &[&str],
) -> Result<(ChildGuard, SocketAddr)> {
    let bin = example_binary()?;
    let mut last = String::new();
    for _ in 0..3 {
        let listen = SocketAddr::new(server.ip(), free_port(server.ip())?);
        let out = fs::File::create(log).map_err(E2eError::io("create example log"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg(listen.to_string())
            .arg(server.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(out));
        let mut guard = ChildGuard::spawn(&mut cmd, format!("threaded example on {listen}"))?;
        let up = wait_listening(&mut guard, log, "the example's `listening on` line")?;
        if up {
            return Ok((guard, listen));
        }
        last = fs::read_to_string(log).unwrap_or_default();
    }
    Err(E2eError::check("the example starts", tail(&last, 3000)))
}

/// The core's own log line for the negotiation of `port`, printed by the example.
fn proxied(log: &str, mode: DataMode, port: u16) -> bool {
    log.lines().any(|l| {
        if mode.is_passive() {
            l.contains("passive: client to server port") && l.ends_with(&format!("via port {port}"))
        } else {
            l.contains(&format!("active: server to client port {port} via port"))
        }
    })
}

#[test]
fn threaded_example_transfers_in_all_four_modes() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("threaded-example")?;
    let server = FtpServer::start(&work, loopback(false))?;
    let log_path = work.root().join("threaded.log");
    let (_example, target) = start_example(server.addr(), &log_path)?;
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    for mode in DataMode::ALL {
        let m = mode.script_name();
        for name in [SMALL, BIG] {
            let out = work.local().join(format!("{m}-{name}"));
            let transcript = curl_retr(target, Login::User, mode, name, &out)?;
            for port in prove_mode(&transcript, mode)? {
                if !proxied(&log(), mode, port) {
                    return Err(E2eError::check(
                        format!("{m} RETR {name}: port {port} negotiated through the example"),
                        tail(&log(), 3000),
                    ));
                }
            }
            assert_same_file(&work.original(name), &out)?;

            let remote = format!("up-{m}-{name}");
            let transcript = curl_stor(target, Login::User, mode, &work.original(name), &remote)?;
            for port in prove_mode(&transcript, mode)? {
                if !proxied(&log(), mode, port) {
                    return Err(E2eError::check(
                        format!("{m} STOR {name}: port {port} negotiated through the example"),
                        tail(&log(), 3000),
                    ));
                }
            }
            assert_same_file(&work.original(name), &work.user().join(&remote))?;
        }
    }
    // The relay counts each session's data bytes: the 10 MiB went down in a RETR
    // session and up in a STOR one, and each summary says so.
    let size = fs::metadata(work.original(BIG))
        .map_err(E2eError::io("size of the big file"))?
        .len();
    for field in [format!("data_up={size} "), format!("data_down={size} ")] {
        if !log()
            .lines()
            .any(|l| l.contains("session summary") && l.contains(&field))
        {
            return Err(E2eError::check(
                format!("a session summary with {field}"),
                tail(&log(), 3000),
            ));
        }
    }
    Ok(())
}

/// Issue 17 in the second driver: `passive` bridges curl's PORT and EPRT through
/// pure-ftpd's passive ports ([`Decision::Dial`] on std threads), `active` joins
/// curl's PASV and EPSV with pure-ftpd's connection to the proxy's PORT.
#[test]
fn threaded_example_translates_in_both_server_data_modes() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    for (server_mode, modes, logged) in [
        (
            "passive",
            [DataMode::Port, DataMode::Eprt],
            "bridged with server passive port",
        ),
        (
            "active",
            [DataMode::Pasv, DataMode::Epsv],
            "joined with server to port",
        ),
    ] {
        let work = Workdir::new(&format!("threaded-{server_mode}"))?;
        let server = FtpServer::start(&work, loopback(false))?;
        let log_path = work.root().join("threaded.log");
        let (_example, target) = start_example_with(server.addr(), &log_path, &[server_mode])?;
        for mode in modes {
            let m = mode.script_name();
            let out = work.local().join(format!("{m}-{BIG}"));
            let transcript = curl_retr(target, Login::User, mode, BIG, &out)?;
            prove_mode(&transcript, mode)?;
            assert_same_file(&work.original(BIG), &out)?;
            let remote = format!("up-{m}-{BIG}");
            let transcript = curl_stor(target, Login::User, mode, &work.original(BIG), &remote)?;
            prove_mode(&transcript, mode)?;
            assert_same_file(&work.original(BIG), &work.user().join(&remote))?;
        }
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let n = log.lines().filter(|l| l.contains(logged)).count();
        // A proxy port found taken is replaced and the mapping logged again.
        let retries = log.matches("in use, trying another").count();
        if !(4..=4 + retries).contains(&n) {
            return Err(E2eError::check(
                format!("4 transfers '{logged}' in {server_mode} mode, got {n}"),
                tail(&log, 3000),
            ));
        }
    }
    Ok(())
}
