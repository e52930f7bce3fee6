//! `-A` judges the USER command word after leading blanks and Telnet IAC sequences,
//! as a server that skips them reads it: ` USER alice` and `IAC IP IAC DM USER
//! alice` get the proxy's 500 and never reach the server.

use std::time::Duration;

use ftp_proxy_tests::e2e::*;

#[test]
fn anonymous_only_sees_through_blanks_and_telnet_commands() -> Result<()> {
    let Some(fx) = Fixture::start("anon-prefix", false, &["-A"])? else {
        return Ok(());
    };
    let mut c = Control::connect(fx.target(), Duration::from_secs(10))?;
    c.read_reply()?;
    for line in [
        &format!(" USER {USER}\r\n").into_bytes()[..],
        &format!("\t USER {USER}\r\n").into_bytes(),
        &[
            b"\xff\xf4\xff\xf2".as_slice(),
            format!("USER {USER}\r\n").as_bytes(),
        ]
        .concat(),
    ] {
        c.send_raw(line)?;
        let r = c.read_reply()?;
        if r.code != 500 || r.last() != "500 Only anonymous FTP allowed" {
            return Err(E2eError::check(
                "500 Only anonymous FTP allowed",
                c.transcript().to_string(),
            ));
        }
    }
    // The session goes on: anonymous still works.
    if !matches!(c.command("USER anonymous")?.code, 230 | 331) {
        return Err(E2eError::check(
            "anonymous accepted",
            c.transcript().to_string(),
        ));
    }
    let log = fx.proxy_log();
    if log.lines().any(|l| l.contains("server: 331 User alice")) {
        return Err(E2eError::check(
            "USER alice never reached the server",
            tail(&log, 3000),
        ));
    }
    Ok(())
}
