//! AUTH TLS through the proxy: the proxy must read every control line, so it cannot
//! carry a TLS control channel. It answers AUTH/PBSZ/PROT itself with 534 and drops
//! AUTH from FEAT, so clients fall back to plain text (curl --ssl, lftp) or fail at
//! once with a clear message (curl --ssl-reqd), never on a broken session. The
//! server is a pure-ftpd with TLS enabled (`-Y 1`, a certificate from the
//! test's CA).

use std::time::{Duration, Instant};

use ftp_proxy_tests::e2e::*;

/// pure-ftpd with TLS allowed (`-Y 1`) and a certificate from a fresh test CA.
fn tls_fixture(tag: &str) -> Result<Option<Fixture>> {
    Fixture::start_with(tag, false, &[], |work| {
        let pki = Pki::create(&work.root().join("pki"))?;
        Ok(pure_ftpd_tls_args(PureFtpdTls::Allowed, &pki.server()))
    })
}

/// The FEAT reply from `target`, after the banner.
fn feat(target: std::net::SocketAddr) -> Result<Reply> {
    let mut c = Control::connect(target, Duration::from_secs(10))?;
    c.read_reply()?;
    let r = c.command("FEAT")?;
    let _ = c.command("QUIT");
    Ok(r)
}

#[test]
fn the_proxy_refuses_tls_in_ftp_and_hides_it_from_feat() -> Result<()> {
    let Some(fx) = tls_fixture("tls-feat")? else {
        return Ok(());
    };
    // The server itself offers TLS, so the scenario is meaningful.
    let direct = feat(fx.server.addr())?;
    if !direct.lines.iter().any(|l| l.trim() == "AUTH TLS") {
        return Err(E2eError::check(
            "pure-ftpd -Y 1 offers AUTH TLS",
            direct.lines.join("\n"),
        ));
    }
    let proxied = feat(fx.target())?;
    if proxied.code != 211 || proxied.lines.iter().any(|l| l.contains("AUTH")) {
        return Err(E2eError::check(
            "FEAT through the proxy: 211 without AUTH",
            proxied.lines.join("\n"),
        ));
    }
    let mut c = Control::connect(fx.target(), Duration::from_secs(10))?;
    c.read_reply()?;
    for cmd in [
        "AUTH TLS",
        "AUTH SSL",
        "AUTH TLS-C",
        "AUTH TLS-P",
        "PBSZ 0",
        "PROT P",
    ] {
        let r = c.command(cmd)?;
        if r.code != 534 {
            return Err(E2eError::check(
                format!("534 to {cmd}"),
                c.transcript().to_string(),
            ));
        }
    }
    // The session goes on in plain text.
    if c.command(&format!("USER {USER}"))?.code != 331
        || c.command(&format!("PASS {PASSWORD}"))?.code != 230
    {
        return Err(E2eError::check(
            "login after the refusals",
            c.transcript().to_string(),
        ));
    }
    Ok(())
}

#[test]
fn curl_ssl_falls_back_to_plain_text() -> Result<()> {
    let Some(fx) = tls_fixture("tls-curl")? else {
        return Ok(());
    };
    let out = fx.work.local().join(SMALL);
    let log = curl(&[
        "--ssl".into(),
        "--epsv".into(),
        ftp_url(fx.target(), Login::User, SMALL),
        "-o".into(),
        out.display().to_string(),
    ])?;
    assert_same_file(&fx.work.original(SMALL), &out)?;
    if !log.contains("< 534") {
        return Err(E2eError::check("curl saw the proxy's 534", log));
    }
    Ok(())
}

#[test]
fn curl_ssl_reqd_fails_at_once_with_a_clear_message() -> Result<()> {
    let Some(fx) = tls_fixture("tls-curl-reqd")? else {
        return Ok(());
    };
    let start = Instant::now();
    let args = [
        "-sS".to_string(),
        "--max-time".into(),
        "30".into(),
        "--ssl-reqd".into(),
        ftp_url(fx.target(), Login::User, SMALL),
        "-o".into(),
        "/dev/null".into(),
    ];
    let out = run("curl", &args, CLIENT_TIMEOUT)?;
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // curl's exit 64: "Requested FTP SSL level failed" (not 35, a TLS handshake error).
    if out.status.code() != Some(64) || took > Duration::from_secs(10) {
        return Err(E2eError::check(
            "curl --ssl-reqd exits 64 within 10 s",
            format!("{:?} after {took:?}: {stderr}", out.status),
        ));
    }
    let log = fx.proxy_log();
    if log.contains("client command too long or not clean") {
        return Err(E2eError::check(
            "no TLS handshake reached the proxy as a line",
            tail(&log, 3000),
        ));
    }
    Ok(())
}

#[test]
fn lftp_with_tls_allowed_logs_in_once_and_transfers() -> Result<()> {
    let Some(fx) = tls_fixture("tls-lftp")? else {
        return Ok(());
    };
    let out = fx.work.local().join(SMALL);
    let log = lftp(
        fx.target(),
        Login::User,
        &["set ftp:ssl-allow yes"],
        &[format!("get {SMALL} -o {}", out.display())],
    )?;
    assert_same_file(&fx.work.original(SMALL), &out)?;
    if !log.contains("> AUTH TLS") || !log.contains("< 534") {
        return Err(E2eError::check("lftp tried AUTH TLS and got 534", log));
    }
    if log.matches("> USER ").count() != 1 {
        return Err(E2eError::check("lftp logged in exactly once", log));
    }
    let plog = fx.proxy_log();
    if plog.contains("client command too long or not clean") {
        return Err(E2eError::check("no broken session", tail(&plog, 3000)));
    }
    Ok(())
}
