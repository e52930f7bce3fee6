//! Options that change what the proxy allows: `-A` (anonymous only), `-m` (session
//! limit) and `-t` (idle timeout), with real clients.

use std::time::{Duration, Instant};

use ftp_proxy_tests::e2e::*;

#[test]
fn anonymous_only_refuses_named_users() -> Result<()> {
    let Some(fx) = Fixture::start("anon-only", false, &["-A"])? else {
        return Ok(());
    };
    fx.proxy()?;
    let got = fx.work.local().join(SMALL);
    let ops = [
        "cmd:500:USER bob".into(),
        format!("cmd:500:USER {USER}"),
        "login:anonymous:e2e@example.org".into(),
        format!("epsv:retr:{SMALL}:{}", got.display()),
        "quit".into(),
    ];
    let log = ftplib(fx.target(), &ops)?;
    let refusals = log
        .lines()
        .filter(|l| *l == "< 500 Only anonymous FTP allowed")
        .count();
    if refusals != 2 {
        return Err(E2eError::check(
            "USER bob and USER alice answered `500 Only anonymous FTP allowed`",
            log,
        ));
    }
    if !log.lines().any(|l| l.starts_with("< 230")) {
        return Err(E2eError::check("anonymous login accepted", log));
    }
    assert_same_file(&fx.work.original(SMALL), &got)?;

    // curl with a named user fails to log in (the proxy's 500 for USER).
    let out = run(
        "curl",
        &[
            "-sS",
            "-v",
            "--max-time",
            "30",
            &ftp_url(fx.target(), Login::User, SMALL),
        ],
        CLIENT_TIMEOUT,
    )?;
    let verbose = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !verbose.contains("< 500 Only anonymous FTP allowed") {
        return Err(E2eError::check(
            "curl as alice is refused with the proxy's 500",
            tail(&verbose, 3000),
        ));
    }
    // The named user's USER line never reached the server.
    let plog = fx.proxy()?.log();
    if plog.lines().any(|l| {
        l.contains("server: 331 User bob") || l.contains(&format!("server: 331 User {USER}"))
    }) {
        return Err(E2eError::check(
            "USER bob/alice were not forwarded",
            tail(&plog, 3000),
        ));
    }
    Ok(())
}

#[test]
fn session_limit_refuses_a_third_client_while_two_transfer() -> Result<()> {
    let Some(fx) = Fixture::start("max2", false, &["-m", "2"])? else {
        return Ok(());
    };
    let proxy = fx.proxy()?;
    let local = fx.work.local();
    let mut held = Vec::new();
    for i in 0..2 {
        let ops = [
            format!("login:{USER}:{PASSWORD}"),
            "wait".into(),
            format!(
                "epsv:retr:{BIG}:{}",
                local.join(format!("held{i}.bin")).display()
            ),
            "wait".into(),
            "quit".into(),
        ];
        held.push(HeldClient::start(
            fx.target(),
            &ops,
            &local.join(format!("held{i}.err")),
        )?);
    }
    let refused = |when: &str| -> Result<()> {
        let mut third = Control::connect(fx.target(), Duration::from_secs(5))?;
        let (got, _) = third.expect_closed(Duration::from_secs(10))?;
        if !got.is_empty() {
            return Err(E2eError::check(
                format!("third client {when} closed without a banner"),
                String::from_utf8_lossy(&got).into_owned(),
            ));
        }
        Ok(())
    };
    refused("before the transfers")?;
    for h in &mut held {
        h.go()?;
    }
    // Transfers run; once each has finished its RETR it waits again, still connected.
    for h in &held {
        h.wait_ready(2, Duration::from_secs(60))?;
    }
    refused("after the transfers, sessions still open")?;
    proxy.wait_log(
        "client limit (2) reached, refusing connection from 127.0.0.1",
        Duration::from_secs(5),
    )?;
    for h in &mut held {
        h.go()?;
    }
    for (i, h) in held.into_iter().enumerate() {
        h.finish(Duration::from_secs(30))?;
        assert_same_file(&fx.work.original(BIG), &local.join(format!("held{i}.bin")))?;
    }
    // Both sessions ended, so a new client gets a banner again (the proxy frees the
    // slots when it sees the closes, which may take a moment).
    wait_for(
        "a new client to be served after the two sessions ended",
        Duration::from_secs(10),
        || {
            let mut c = Control::connect(fx.target(), Duration::from_secs(5))?;
            Ok(c.read_reply().ok().filter(|r| r.code == 220).map(|_| ()))
        },
        || tail(&proxy.log(), 3000),
    )?;
    Ok(())
}

#[test]
fn idle_session_is_closed_after_the_timeout_and_a_busy_one_is_not() -> Result<()> {
    let Some(fx) = Fixture::start("idle", false, &["-t", "2"])? else {
        return Ok(());
    };
    let proxy = fx.proxy()?;
    let login = |c: &mut Control| -> Result<()> {
        let banner = c.read_reply()?;
        let user = c.command(&format!("USER {USER}"))?;
        let pass = c.command(&format!("PASS {PASSWORD}"))?;
        if (banner.code, user.code, pass.code) != (220, 331, 230) {
            return Err(E2eError::check(
                "login succeeds",
                c.transcript().to_string(),
            ));
        }
        Ok(())
    };
    let mut idle = Control::connect(fx.target(), Duration::from_secs(10))?;
    login(&mut idle)?;
    let idle_since = Instant::now();
    let mut busy = Control::connect(fx.target(), Duration::from_secs(10))?;
    login(&mut busy)?;
    // Keep one session active for twice the timeout: it must stay open.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(500));
        let r = busy.command("NOOP")?;
        if r.code != 200 {
            return Err(E2eError::check(
                "NOOP on the busy session answered 200",
                busy.transcript().to_string(),
            ));
        }
    }
    // The idle one has been closed by now (or is about to be): EOF, no bytes.
    let (got, _) = idle.expect_closed(Duration::from_secs(15))?;
    let waited = idle_since.elapsed();
    if !got.is_empty() {
        return Err(E2eError::check(
            "the idle session got nothing before EOF",
            String::from_utf8_lossy(&got).into_owned(),
        ));
    }
    // Loose bounds: a shared 2-core machine delays timers.
    if waited < Duration::from_millis(1500) {
        return Err(E2eError::check(
            format!("idle session closed after ~2 s, not {waited:?}"),
            tail(&proxy.log(), 3000),
        ));
    }
    proxy.wait_log("client timeout", Duration::from_secs(5))?;
    // The busy session is still usable (it has been quiet only for moments).
    let r = busy.command("NOOP")?;
    if r.code != 200 {
        return Err(E2eError::check(
            "the busy session is still usable",
            busy.transcript().to_string(),
        ));
    }
    // Measure the close precisely on a fresh session too: between 1.5 s and 15 s.
    let mut fresh = Control::connect(fx.target(), Duration::from_secs(10))?;
    login(&mut fresh)?;
    let (_, took) = fresh.expect_closed(Duration::from_secs(15))?;
    if took < Duration::from_millis(1500) {
        return Err(E2eError::check(
            format!("idle session closed after ~2 s, not {took:?}"),
            tail(&proxy.log(), 3000),
        ));
    }
    Ok(())
}

#[test]
fn a_client_that_never_logs_in_loses_its_slot_at_the_login_timeout() -> Result<()> {
    // -m 1: one silent client would hold the only slot for -t (a day) before.
    let Some(fx) = Fixture::start("login-timeout", false, &["-m", "1", "--login-timeout", "2"])?
    else {
        return Ok(());
    };
    let proxy = fx.proxy()?;
    let mut silent = Control::connect(fx.target(), Duration::from_secs(10))?;
    if silent.read_reply()?.code != 220 {
        return Err(E2eError::check(
            "a 220 banner",
            silent.transcript().to_string(),
        ));
    }
    let (_, took) = silent.expect_closed(Duration::from_secs(15))?;
    if took < Duration::from_millis(1500) {
        return Err(E2eError::check(
            format!("closed after ~2 s, not {took:?}"),
            tail(&proxy.log(), 3000),
        ));
    }
    proxy.wait_log("client did not log in in time", Duration::from_secs(5))?;
    // The slot is free again, and a client that logs in keeps its session.
    let mut c = Control::connect(fx.target(), Duration::from_secs(10))?;
    c.read_reply()?;
    c.command(&format!("USER {USER}"))?;
    if c.command(&format!("PASS {PASSWORD}"))?.code != 230 {
        return Err(E2eError::check("login", c.transcript().to_string()));
    }
    std::thread::sleep(Duration::from_secs(3));
    if c.command("NOOP")?.code != 200 {
        return Err(E2eError::check(
            "the logged-in session outlives the login timeout",
            c.transcript().to_string(),
        ));
    }
    Ok(())
}
