//! Shutdown: SIGTERM ends every session, logs `exiting on signal 15`, exits 0, and
//! leaves no process behind.

use std::time::Duration;

use ftp_proxy_tests::e2e::*;

#[test]
fn sigterm_exits_zero_and_leaves_nothing_behind() -> Result<()> {
    let Some(mut fx) = Fixture::start("sigterm", false, &[])? else {
        return Ok(());
    };
    let target = fx.target();
    let mut session = Control::connect(target, Duration::from_secs(10))?;
    let banner = session.read_reply()?;
    let user = session.command(&format!("USER {USER}"))?;
    let pass = session.command(&format!("PASS {PASSWORD}"))?;
    if (banner.code, user.code, pass.code) != (220, 331, 230) {
        return Err(E2eError::check(
            "login through the proxy",
            session.transcript().to_string(),
        ));
    }
    let proxy = fx.proxy_mut()?;
    proxy.wait_log("session 1/100 started", Duration::from_secs(5))?;

    let status = proxy.stop_with(libc::SIGTERM, Duration::from_secs(10))?;
    let log = proxy.log();
    if status.code() != Some(0) {
        return Err(E2eError::check(
            format!("exit status 0 after SIGTERM, got {status}"),
            tail(&log, 3000),
        ));
    }
    if !log.contains("exiting on signal 15") {
        return Err(E2eError::check(
            "log line `exiting on signal 15`",
            tail(&log, 3000),
        ));
    }
    // The open session was ended, not abandoned.
    session.expect_closed(Duration::from_secs(5))?;
    let left = proxy.leftovers();
    if !left.is_empty() {
        return Err(E2eError::check(
            "no process left in the proxy's process group",
            format!("{left:?}"),
        ));
    }
    // Nothing listens on the proxy's port any more.
    if std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok() {
        return Err(E2eError::check(
            format!("{target} no longer accepts connections"),
            tail(&log, 3000),
        ));
    }
    Ok(())
}

/// Started as root, the proxy runs chrooted to /var/empty as `_ftp_proxy` with no
/// capabilities left (the relay needs none), and still serves transfers.
#[test]
fn runs_chrooted_as_the_proxy_user_without_capabilities() -> Result<()> {
    let Some(fx) = Fixture::start("privs", false, &[])? else {
        return Ok(());
    };
    let pid = fx.proxy()?.pid();
    let out = run_ok("getent", &["passwd", PROXY_USER], 10)?;
    let entry = String::from_utf8_lossy(&out.stdout).into_owned();
    let uid = entry.split(':').nth(2).unwrap_or("?").to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(E2eError::io(format!("read /proc/{pid}/status")))?;
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    if field("Uid:") != [uid.as_str(); 4].join(" ") {
        return Err(E2eError::check(
            format!("real, effective, saved and fs uid are {PROXY_USER}'s ({uid})"),
            status,
        ));
    }
    if field("CapEff:") != "0000000000000000" || field("CapPrm:") != "0000000000000000" {
        return Err(E2eError::check(
            "no capabilities are left with the relay data path",
            status,
        ));
    }
    let root = std::fs::read_link(format!("/proc/{pid}/root"))
        .map_err(E2eError::io("readlink /proc/PID/root"))?;
    if root != std::path::Path::new(PROXY_CHROOT) {
        return Err(E2eError::check(
            format!("chrooted to {PROXY_CHROOT}"),
            root.display().to_string(),
        ));
    }
    let got = fx.work.local().join(SMALL);
    curl_retr(fx.target(), Login::Anonymous, DataMode::Pasv, SMALL, &got)?;
    assert_same_file(&fx.work.original(SMALL), &got)
}
