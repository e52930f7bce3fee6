//! Hostile clients end only their own session: a 600-byte line, a NUL byte, and
//! PORT/EPRT to port 80 (refused with 501, the session continues), all while another
//! client's rate-limited 10 MiB download runs through the same proxy.

use std::thread;
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

#[test]
fn hostile_sessions_do_not_disturb_a_concurrent_transfer() -> Result<()> {
    let Some(fx) = Fixture::start("hostile", false, &[])? else {
        return Ok(());
    };
    let proxy = fx.proxy()?;
    let target = fx.target();
    let big = fx.work.local().join("concurrent-big.bin");

    // 10 MiB at 2 MiB/s: about 5 s, long enough to overlap everything below.
    let bg_out = big.clone();
    let background = thread::spawn(move || {
        let mut args: Vec<String> = vec!["--limit-rate".into(), "2M".into()];
        args.extend([
            ftp_url(target, Login::User, BIG),
            "-o".into(),
            bg_out.display().to_string(),
        ]);
        curl(&args)
    });
    // Wait until the download is really flowing.
    wait_for(
        "the background download to start",
        Duration::from_secs(15),
        || {
            Ok(std::fs::metadata(&big)
                .ok()
                .filter(|m| m.len() > 0)
                .map(|_| ()))
        },
        || tail(&proxy.log(), 3000),
    )?;

    let hello = |c: &mut Control| -> Result<()> {
        let banner = c.read_reply()?;
        if banner.code != 220 {
            return Err(E2eError::check("a 220 banner", c.transcript().to_string()));
        }
        Ok(())
    };

    // 1. A 600-byte line: the session is closed, nothing is answered or forwarded.
    let mut long = Control::connect(target, Duration::from_secs(10))?;
    hello(&mut long)?;
    let mut line = vec![b'A'; 600];
    line.extend_from_slice(b"\r\n");
    long.send_raw(&line)?;
    let (got, _) = long.expect_closed(Duration::from_secs(10))?;
    if !got.is_empty() {
        return Err(E2eError::check(
            "no reply to a 600-byte line",
            String::from_utf8_lossy(&got).into_owned(),
        ));
    }

    // 2. A NUL byte inside a command: same.
    let mut nul = Control::connect(target, Duration::from_secs(10))?;
    hello(&mut nul)?;
    nul.send_raw(b"NO\0OP\r\n")?;
    let (got, _) = nul.expect_closed(Duration::from_secs(10))?;
    if !got.is_empty() {
        return Err(E2eError::check(
            "no reply to a NUL byte",
            String::from_utf8_lossy(&got).into_owned(),
        ));
    }

    // 3. PORT and EPRT to port 80: refused by the proxy, the session goes on and can
    //    still transfer.
    let small = fx.work.local().join(SMALL);
    let ops = [
        format!("login:{USER}:{PASSWORD}"),
        "cmd:501:PORT 127,0,0,1,0,80".into(),
        "cmd:501:EPRT |1|127.0.0.1|80|".into(),
        "cmd:200:NOOP".into(),
        format!("epsv:retr:{SMALL}:{}", small.display()),
        "quit".into(),
    ];
    let log = ftplib(target, &ops)?;
    assert_same_file(&fx.work.original(SMALL), &small)?;
    if log.lines().filter(|l| l.starts_with("< 501 ")).count() != 2 {
        return Err(E2eError::check("two 501 refusals", log));
    }

    if background.is_finished() {
        return Err(E2eError::check(
            "the background transfer was still running while the hostile sessions ended",
            "it finished first: the scenario did not overlap".to_string(),
        ));
    }
    let bg_log = background
        .join()
        .map_err(|_| E2eError::check("background thread did not panic", ""))??;
    prove_mode(&bg_log, DataMode::Epsv)?;
    assert_same_file(&fx.work.original(BIG), &big)?;

    let plog = proxy.log();
    if plog.matches("client command too long or not clean").count() != 2 {
        return Err(E2eError::check(
            "two sessions ended as `client command too long or not clean`",
            tail(&plog, 4000),
        ));
    }
    if plog
        .lines()
        .any(|l| l.contains("client: AAAAAAAA") && l.contains("server"))
    {
        return Err(E2eError::check(
            "the long line was not forwarded",
            tail(&plog, 4000),
        ));
    }
    Ok(())
}
