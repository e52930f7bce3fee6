//! IPv6 (`-6`, `::1`): EPSV and EPRT transfers with curl, lftp and ftplib, and the
//! proxy's refusal of the IPv4-only PASV and PORT.

use ftp_proxy_tests::e2e::*;

fn check_ports(fx: &Fixture, log: &str, mode: DataMode) -> Result<()> {
    for port in prove_mode(log, mode)? {
        if mode.is_passive() {
            fx.check_passive_port(port)?;
        } else {
            fx.check_active_port(port)?;
        }
    }
    Ok(())
}

#[test]
fn curl_over_ipv6_epsv_and_eprt() -> Result<()> {
    let Some(fx) = Fixture::start("v6-curl", true, &[])? else {
        return Ok(());
    };
    let t = fx.target();
    if !t.is_ipv6() {
        return Err(E2eError::check("the target is IPv6", t.to_string()));
    }
    let log = curl_list(t, Login::Anonymous, DataMode::Epsv)?;
    check_ports(&fx, &log, DataMode::Epsv)?;
    if !log
        .lines()
        .any(|l| !l.starts_with(['<', '>', '*']) && l.ends_with(BIG))
    {
        return Err(E2eError::check(
            format!("LIST shows {BIG}"),
            tail(&log, 3000),
        ));
    }
    for mode in [DataMode::Epsv, DataMode::Eprt] {
        let m = mode.script_name();
        for name in [SMALL, BIG] {
            let out = fx.work.local().join(format!("{m}-{name}"));
            let log = curl_retr(t, Login::User, mode, name, &out)?;
            check_ports(&fx, &log, mode)?;
            assert_same_file(&fx.work.original(name), &out)?;
            let remote = format!("v6-{m}-{name}");
            let log = curl_stor(t, Login::User, mode, &fx.work.original(name), &remote)?;
            check_ports(&fx, &log, mode)?;
            assert_same_file(&fx.work.original(name), &fx.work.user().join(&remote))?;
        }
    }
    Ok(())
}

#[test]
fn ftplib_and_lftp_over_ipv6() -> Result<()> {
    let Some(fx) = Fixture::start("v6-py", true, &[])? else {
        return Ok(());
    };
    let local = fx.work.local();
    for mode in [DataMode::Epsv, DataMode::Eprt] {
        let m = mode.script_name();
        let got = local.join(format!("py6-{m}-{BIG}"));
        let up = format!("py6-up-{m}.bin");
        let ops = [
            format!("login:{USER}:{PASSWORD}"),
            format!("{m}:retr:{BIG}:{}", got.display()),
            format!("{m}:stor:{}:{up}", fx.work.original(BIG).display()),
            "quit".into(),
        ];
        let log = ftplib(fx.target(), &ops)?;
        check_ports(&fx, &log, mode)?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        assert_same_file(&fx.work.original(BIG), &fx.work.user().join(&up))?;
    }
    // lftp uses EPSV by itself over IPv6. (Its active mode is left to curl and
    // ftplib: on ::1, lftp 4.9.2 announces `EPRT |2|::|port|`, which pure-ftpd
    // refuses, whatever net:socket-bind-ipv6 says.)
    {
        let mode = DataMode::Epsv;
        let got = local.join("lftp6-epsv");
        let log = lftp(
            fx.target(),
            Login::Anonymous,
            &[],
            &[format!("get {SMALL} -o {}", got.display())],
        )?;
        check_ports(&fx, &log, mode)?;
        assert_same_file(&fx.work.original(SMALL), &got)?;
    }
    Ok(())
}

#[test]
fn ipv6_mode_refuses_pasv_and_port_and_the_session_goes_on() -> Result<()> {
    let Some(fx) = Fixture::start("v6-refuse", true, &[])? else {
        return Ok(());
    };
    fx.proxy()?;
    let got = fx.work.local().join(SMALL);
    let ops = [
        format!("login:{USER}:{PASSWORD}"),
        "cmd:500:PASV".into(),
        "cmd:500:PORT 127,0,0,1,200,10".into(),
        format!("epsv:retr:{SMALL}:{}", got.display()),
        "quit".into(),
    ];
    let log = ftplib(fx.target(), &ops)?;
    let refusals = log
        .lines()
        .filter(|l| l.starts_with("< 500 PASV and PORT not allowed with IPv6"))
        .count();
    if refusals != 2 {
        return Err(E2eError::check(
            "PASV and PORT answered `500 PASV and PORT not allowed with IPv6`",
            log,
        ));
    }
    assert_same_file(&fx.work.original(SMALL), &got)?;
    // The server never saw them: pure-ftpd would have answered PASV over IPv6 otherwise.
    let plog = fx.proxy()?.log();
    if plog.lines().any(|l| l.contains("server: 227")) {
        return Err(E2eError::check(
            "PASV was not forwarded to the server",
            tail(&plog, 3000),
        ));
    }
    Ok(())
}
