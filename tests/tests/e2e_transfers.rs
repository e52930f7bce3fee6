//! IPv4 transfers through the proxy with curl, lftp and Python ftplib: anonymous and
//! password logins, LIST, RETR and STOR of 1 KiB and 10 MiB files compared byte for
//! byte, in each of PASV, EPSV, PORT and EPRT, each proven used.

use ftp_proxy_tests::e2e::*;

#[test]
fn curl_anonymous_login_list_and_retr() -> Result<()> {
    let Some(fx) = Fixture::start("curl-anon", false, &[])? else {
        return Ok(());
    };
    let t = fx.target();

    let log = curl_list(t, Login::Anonymous, DataMode::Epsv)?;
    for port in prove_mode(&log, DataMode::Epsv)? {
        fx.check_passive_port(port)?;
    }
    if !log.contains("> USER anonymous") || !log.lines().any(|l| l.starts_with("< 230")) {
        return Err(E2eError::check(
            "anonymous login accepted (USER anonymous, 230)",
            tail(&log, 3000),
        ));
    }
    for name in [SMALL, BIG] {
        if !log
            .lines()
            .any(|l| !l.starts_with(['<', '>', '*']) && l.ends_with(name))
        {
            return Err(E2eError::check(
                format!("LIST shows {name}"),
                tail(&log, 3000),
            ));
        }
    }

    for name in [SMALL, BIG] {
        let out = fx.work.local().join(name);
        let log = curl_retr(t, Login::Anonymous, DataMode::Epsv, name, &out)?;
        prove_mode(&log, DataMode::Epsv)?;
        assert_same_file(&fx.work.original(name), &out)?;
    }
    Ok(())
}

#[test]
fn curl_user_retr_and_stor_in_all_four_modes() -> Result<()> {
    let Some(fx) = Fixture::start("curl-user", false, &[])? else {
        return Ok(());
    };
    let t = fx.target();
    for mode in DataMode::ALL {
        let m = mode.script_name();
        for name in [SMALL, BIG] {
            let out = fx.work.local().join(format!("{m}-{name}"));
            let log = curl_retr(t, Login::User, mode, name, &out)?;
            if !log.lines().any(|l| l.starts_with("< 230")) {
                return Err(E2eError::check(
                    "password login accepted (230)",
                    tail(&log, 3000),
                ));
            }
            check_ports(&fx, &log, mode)?;
            assert_same_file(&fx.work.original(name), &out)?;

            let remote = format!("up-{m}-{name}");
            let log = curl_stor(t, Login::User, mode, &fx.work.original(name), &remote)?;
            check_ports(&fx, &log, mode)?;
            assert_same_file(&fx.work.original(name), &fx.work.user().join(&remote))?;
        }
    }
    Ok(())
}

/// Proves `mode` in a transcript and checks each data port against the proxy log.
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
fn lftp_user_passive_and_active() -> Result<()> {
    let Some(fx) = Fixture::start("lftp", false, &[])? else {
        return Ok(());
    };
    let t = fx.target();
    let local = fx.work.local();
    for (mode, setting) in [
        (DataMode::Pasv, "set ftp:passive-mode on"),
        (DataMode::Port, "set ftp:passive-mode off"),
    ] {
        let m = mode.script_name();
        let got = local.join(format!("lftp-{m}-{BIG}"));
        let up = format!("lftp-up-{m}.bin");
        let log = lftp(
            t,
            Login::User,
            &["set ftp:prefer-epsv no", setting],
            &[
                "ls".to_string(),
                format!("get {BIG} -o {}", got.display()),
                format!("put {} -o {up}", fx.work.original(BIG).display()),
            ],
        )?;
        check_ports(&fx, &log, mode)?;
        if !log.lines().any(|l| l.starts_with("< 230")) {
            return Err(E2eError::check("lftp logged in (230)", tail(&log, 3000)));
        }
        if !log
            .lines()
            .any(|l| !l.starts_with(['<', '>']) && l.ends_with(SMALL))
        {
            return Err(E2eError::check(
                format!("lftp's ls shows {SMALL}"),
                tail(&log, 3000),
            ));
        }
        assert_same_file(&fx.work.original(BIG), &got)?;
        assert_same_file(&fx.work.original(BIG), &fx.work.user().join(&up))?;
    }
    Ok(())
}

#[test]
fn ftplib_retr_stor_list_in_all_four_modes() -> Result<()> {
    let Some(fx) = Fixture::start("ftplib", false, &[])? else {
        return Ok(());
    };
    let local = fx.work.local();
    // One session per mode, so that each transcript proves its mode without the
    // others' commands looking like a fallback.
    for mode in DataMode::ALL {
        let m = mode.script_name();
        let got = local.join(format!("py-{m}-{BIG}"));
        let up = format!("py-up-{m}.bin");
        let ops = [
            format!("login:{USER}:{PASSWORD}"),
            format!("{m}:list"),
            format!("{m}:retr:{BIG}:{}", got.display()),
            format!("{m}:stor:{}:{up}", fx.work.original(SMALL).display()),
            "quit".into(),
        ];
        let log = ftplib(fx.target(), &ops)?;
        let ports = prove_mode(&log, mode)?;
        if ports.len() != 3 {
            return Err(E2eError::check(
                format!("three {} data connections", mode.command()),
                tail(&log, 4000),
            ));
        }
        for port in ports {
            if mode.is_passive() {
                fx.check_passive_port(port)?;
            } else {
                fx.check_active_port(port)?;
            }
        }
        if !log.lines().any(|l| l.starts_with("| ") && l.ends_with(BIG)) {
            return Err(E2eError::check(
                format!("LIST shows {BIG}"),
                tail(&log, 4000),
            ));
        }
        assert_same_file(&fx.work.original(BIG), &got)?;
        assert_same_file(&fx.work.original(SMALL), &fx.work.user().join(&up))?;
    }
    Ok(())
}

/// lftp with `ftp:sync-mode off` sends its login and setup commands without waiting
/// for each reply; the proxy must still pair every 227/229 with its PASV/EPSV.
#[test]
fn lftp_pipelined_commands() -> Result<()> {
    let Some(fx) = Fixture::start("lftp-pipe", false, &[])? else {
        return Ok(());
    };
    let local = fx.work.local();
    for (mode, setting) in [
        (DataMode::Pasv, "set ftp:prefer-epsv no"),
        (DataMode::Epsv, "set ftp:prefer-epsv yes"),
    ] {
        let m = mode.script_name();
        let got = local.join(format!("pipe-{m}-{BIG}"));
        let up = format!("pipe-up-{m}.bin");
        let log = lftp(
            fx.target(),
            Login::User,
            &["set ftp:sync-mode off", setting],
            &[
                format!("get {BIG} -o {}", got.display()),
                format!("put {} -o {up}", fx.work.original(SMALL).display()),
                format!(
                    "get {SMALL} -o {}",
                    local.join(format!("pipe-{m}-{SMALL}")).display()
                ),
            ],
        )?;
        check_ports(&fx, &log, mode)?;
        // Proof of pipelining: lftp sent its first command before the banner came.
        let first_cmd = log.lines().position(|l| l.starts_with("> "));
        let first_reply = log.lines().position(|l| l.starts_with("< "));
        if first_cmd.is_none() || first_cmd > first_reply {
            return Err(E2eError::check(
                "lftp pipelined (a command before the banner)",
                tail(&log, 3000),
            ));
        }
        assert_same_file(&fx.work.original(BIG), &got)?;
        assert_same_file(&fx.work.original(SMALL), &fx.work.user().join(&up))?;
        assert_same_file(
            &fx.work.original(SMALL),
            &local.join(format!("pipe-{m}-{SMALL}")),
        )?;
    }
    Ok(())
}

/// Eight clients at once, two per mode, each downloading 10 MiB and uploading
/// 1 KiB: every file arrives intact, so the relay keeps data connections apart.
#[test]
fn eight_concurrent_clients_in_mixed_modes() -> Result<()> {
    let Some(fx) = Fixture::start("concurrent", false, &[])? else {
        return Ok(());
    };
    let target = fx.target();
    let jobs: Vec<(usize, DataMode)> = (0..8).map(|i| (i, DataMode::ALL[i % 4])).collect();
    let handles: Vec<_> = jobs
        .iter()
        .map(|&(i, mode)| {
            let m = mode.script_name();
            let ops = [
                format!("login:{USER}:{PASSWORD}"),
                format!(
                    "{m}:retr:{BIG}:{}",
                    fx.work.local().join(format!("c{i}.bin")).display()
                ),
                format!("{m}:stor:{}:c{i}-up.bin", fx.work.original(SMALL).display()),
                "quit".into(),
            ];
            std::thread::spawn(move || ftplib(target, &ops))
        })
        .collect();
    for ((i, mode), h) in jobs.into_iter().zip(handles) {
        let log = h
            .join()
            .map_err(|_| E2eError::check("client thread did not panic", ""))??;
        check_ports(&fx, &log, mode)?;
        assert_same_file(
            &fx.work.original(BIG),
            &fx.work.local().join(format!("c{i}.bin")),
        )?;
        assert_same_file(
            &fx.work.original(SMALL),
            &fx.work.user().join(format!("c{i}-up.bin")),
        )?;
    }
    // They really overlapped: some session started while others were live.
    if !fx.proxy_log().is_empty() {
        let most = fx
            .proxy_log()
            .lines()
            .filter_map(|l| {
                l.split("FTP session ")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        if most < 2 {
            return Err(E2eError::check(
                "at least two sessions live at once",
                tail(&fx.proxy_log(), 3000),
            ));
        }
    }
    Ok(())
}
