//! FTPS towards clients through the proxy (issue 16): the real `ftp-proxy` in
//! reverse mode with `--tls-cert`/`--tls-key`, plain pure-ftpd behind it, and the
//! real clients (curl, lftp, Python's ftplib) speaking RFC 4217 to the proxy. The
//! proxy terminates TLS on the control connection and on the client's leg of each
//! `PROT P` data connection; the server's legs stay plain. Every file is compared
//! byte for byte with its original (stricter than comparing digests).
//!
//! Measured here (Debian 12: curl 7.88.1, lftp 4.9.2, Python 3.11; rustls 0.23
//! with ring): unpinned, every client negotiates TLS 1.3 with the proxy. curl,
//! lftp and ftplib offered the control session (`--reuse=yes`) resume it on their
//! data connections over TLS 1.3 (the proxy's stateful tickets, one cache per
//! control session; pure-ftpd does not resume TLS 1.3, tests/src/e2e/tls.rs);
//! stock ftplib makes a full handshake each time, which `--tls-data-reuse require`
//! resets after the handshake. A Python client that shuts its TLS 1.3 data socket
//! with the proxy's session tickets unread makes the kernel send a RST, not a FIN,
//! so the relay sees a reset; pinned to TLS 1.2 it sends a FIN without
//! close_notify, the case the truncation test needs.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

fn check(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::check(what, detail))
    }
}

/// The `= tls data VERSION reused=...` lines of an ftp_client.py transcript.
fn data_handshakes(transcript: &str) -> Vec<bool> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("= tls data "))
        .filter_map(|r| Some(r.split_once(" reused=")?.1.trim() == "True"))
        .collect()
}

/// curl with `--ssl-reqd` (explicit FTPS: `AUTH SSL`, `PBSZ 0`, `PROT P`):
/// download and upload in PASV and EPSV, each file compared. pure-ftpd is plain, so
/// every byte it saw was decrypted by the proxy.
#[test]
fn curl_explicit_ftps_pasv_and_epsv() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-curl", &[])? else {
        return Ok(());
    };
    let tls = ClientTls::explicit(&ca);
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        let got = fx.work.local().join(format!("curl-{m}.bin"));
        let log = curl_ftps_retr(fx.target(), Login::User, mode, &tls, BIG, &got)?.ok()?;
        prove_mode(&log, mode)?;
        check(
            log.contains("PROT P") && log.contains("SSL connection using"),
            "curl protected the control and data connections",
            tail(&log, 3000),
        )?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        let name = format!("curl-{m}.up");
        curl_ftps_stor(
            fx.target(),
            Login::User,
            mode,
            &tls,
            &fx.work.original(BIG),
            &name,
        )?
        .ok()?;
        assert_same_file(&fx.work.original(BIG), &fx.work.user().join(&name))?;
    }
    let log = fx.proxy_log();
    check(
        log.contains("client control connection switches to TLS"),
        "the proxy started TLS after AUTH",
        tail(&log, 3000),
    )?;
    Ok(())
}

/// `--tls-implicit`: curl's and lftp's `ftps://` are TLS from the first byte, with
/// no `AUTH`.
#[test]
fn curl_implicit_ftps() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-implicit", &["--tls-implicit"])? else {
        return Ok(());
    };
    let tls = ClientTls::implicit(&ca);
    let got = fx.work.local().join("curl-implicit.bin");
    let log = curl_ftps_retr(fx.target(), Login::User, DataMode::Epsv, &tls, BIG, &got)?.ok()?;
    check(
        !log.contains("> AUTH"),
        "no AUTH on an implicit connection",
        tail(&log, 3000),
    )?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    curl_ftps_stor(
        fx.target(),
        Login::User,
        DataMode::Pasv,
        &tls,
        &fx.work.original(SMALL),
        "implicit.up",
    )?
    .ok()?;
    assert_same_file(
        &fx.work.original(SMALL),
        &fx.work.user().join("implicit.up"),
    )?;
    // lftp's ftps:// too.
    let got = fx.work.local().join("lftp-implicit.bin");
    let log = lftp_ftps(
        fx.target(),
        Login::User,
        &tls,
        DataMode::Epsv.lftp_settings(),
        &[format!("get {BIG} -o {}", got.display())],
    )?
    .ok()?;
    check(
        !log.contains("> AUTH"),
        "lftp sent no AUTH on an implicit connection",
        tail(&log, 3000),
    )?;
    assert_same_file(&fx.work.original(BIG), &got)
}

/// Python's ftplib.FTP_TLS with `prot_p()` (no session resumption, as stock
/// ftplib): PASV, EPSV, PORT and EPRT, downloads and uploads. In active mode the
/// proxy connects to the client and is still the TLS server on that leg.
#[test]
fn ftplib_prot_p_passive_and_active() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-ftplib", &[])? else {
        return Ok(());
    };
    let tls = ClientTls::explicit(&ca);
    for mode in DataMode::ALL {
        let m = mode.script_name();
        let got = fx.work.local().join(format!("ftplib-{m}.bin"));
        let name = format!("ftplib-{m}.up");
        let log = ftplib_ftps(
            fx.target(),
            &tls,
            SessionReuse::Fresh,
            &[
                format!("login:{USER}:{PASSWORD}"),
                "prot:P".into(),
                format!("{m}:retr:{BIG}:{}", got.display()),
                format!("{m}:stor:{}:{name}", fx.work.original(SMALL).display()),
                "quit".into(),
            ],
        )?
        .ok()?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        assert_same_file(&fx.work.original(SMALL), &fx.work.user().join(&name))?;
        check(
            data_handshakes(&log) == [false, false],
            format!("{m}: two protected data connections, full handshakes"),
            log.clone(),
        )?;
    }
    Ok(())
}

/// lftp (GnuTLS) with ftp:ssl-force, ftp:ssl-protect-data and
/// ftp:ssl-allow-anonymous, checking the certificate against the test CA: get and
/// put in PASV, get in PORT.
#[test]
fn lftp_ftps_passive_and_port() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-lftp", &[])? else {
        return Ok(());
    };
    let tls = ClientTls::explicit(&ca);
    let got = fx.work.local().join("lftp-pasv.bin");
    let log = lftp_ftps(
        fx.target(),
        Login::User,
        &tls,
        DataMode::Pasv.lftp_settings(),
        &[
            format!("get {BIG} -o {}", got.display()),
            format!("put {} -o lftp.up", fx.work.original(SMALL).display()),
        ],
    )?
    .ok()?;
    prove_mode(&log, DataMode::Pasv)?;
    check(
        log.contains("> AUTH TLS") && log.contains("> PROT P"),
        "lftp negotiated TLS and protected data",
        tail(&log, 3000),
    )?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    assert_same_file(&fx.work.original(SMALL), &fx.work.user().join("lftp.up"))?;
    let got = fx.work.local().join("lftp-port.bin");
    let log = lftp_ftps(
        fx.target(),
        Login::User,
        &tls,
        DataMode::Port.lftp_settings(),
        &[format!("get {BIG} -o {}", got.display())],
    )?
    .ok()?;
    prove_mode(&log, DataMode::Port)?;
    assert_same_file(&fx.work.original(BIG), &got)
}

/// `--tls-required`: a plain-text `USER` is answered `530` by the proxy and never
/// reaches the server; after AUTH TLS the same login works.
#[test]
fn tls_required_refuses_a_plain_login() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-required", &["--tls-required"])? else {
        return Ok(());
    };
    let log = ftplib(
        fx.target(),
        &[format!("cmd:530:USER {USER}"), "quit".into()],
    )?;
    check(
        log.contains("< 530 This proxy requires AUTH TLS before login"),
        "the proxy refused the plain USER",
        log,
    )?;
    let server_log = fx.server.log();
    check(
        !server_log.contains(&format!("USER {USER}")),
        "the refused USER did not reach the server",
        tail(&server_log, 2000),
    )?;
    let got = fx.work.local().join("required.bin");
    let log = ftplib_ftps(
        fx.target(),
        &ClientTls::explicit(&ca),
        SessionReuse::Fresh,
        &[
            format!("login:{USER}:{PASSWORD}"),
            "prot:P".into(),
            format!("pasv:retr:{SMALL}:{}", got.display()),
            "quit".into(),
        ],
    )?
    .ok()?;
    check(log.contains("< 230"), "login after AUTH", log)?;
    assert_same_file(&fx.work.original(SMALL), &got)
}

/// A session that is held open, logged in, while something else happens.
fn held_session(fx: &Fixture) -> Result<HeldClient> {
    let got = fx.work.local().join("held.bin");
    let client = HeldClient::start(
        fx.target(),
        &[
            format!("login:{USER}:{PASSWORD}"),
            "wait".into(),
            format!("pasv:retr:{SMALL}:{}", got.display()),
            "quit".into(),
        ],
        &fx.work.root().join("held.stderr"),
    )?;
    client.wait_ready(1, Duration::from_secs(20))?;
    Ok(client)
}

/// Plain text sent to the implicit-TLS listener ends that session with a log
/// line, and TLS sent where the proxy expects plain text (an implicit client at an
/// explicit listener) too; a session open meanwhile carries on.
#[test]
fn wrong_protocol_ends_only_that_session() -> Result<()> {
    // Implicit listener, plain client.
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-wrong-implicit", &["--tls-implicit"])? else {
        return Ok(());
    };
    let ok = fx.work.local().join("implicit-ok.bin");
    // A TLS session held open, logged in, meanwhile.
    let held_got = fx.work.local().join("held-tls.bin");
    let mut held = HeldClient::start_ftps(
        fx.target(),
        &ClientTls::implicit(&ca),
        SessionReuse::Fresh,
        &[
            format!("login:{USER}:{PASSWORD}"),
            "prot:P".into(),
            "wait".into(),
            format!("epsv:retr:{SMALL}:{}", held_got.display()),
            "quit".into(),
        ],
        &fx.work.root().join("held-tls.stderr"),
    )?;
    // A plain client that speaks first (a bare FTP client waits for a banner that
    // cannot come before a handshake; the login timeout ends that one).
    let mut plain = TcpStream::connect(fx.target()).map_err(E2eError::io("connect"))?;
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(E2eError::io("set_read_timeout"))?;
    plain
        .write_all(format!("USER {USER}\r\n").as_bytes())
        .map_err(E2eError::io("write USER"))?;
    let mut answer = Vec::new();
    let read = plain.read_to_end(&mut answer);
    check(
        read.is_ok() && !String::from_utf8_lossy(&answer).contains("220"),
        "the TLS port closes a plain-text session without an FTP reply",
        format!("{read:?} {answer:?}"),
    )?;
    let log = fx.proxy_log();
    check(
        log.contains("TLS on the client control connection failed")
            && log.contains("not TLS: plain FTP on a TLS connection?"),
        "the proxy logged why it ended the plain session",
        tail(&log, 3000),
    )?;
    // Its summary names the TLS failure, not a TCP reset (the held session is
    // still open, so this is the plain session's line).
    fx.proxy()?
        .wait_log(" reason=client_tls_failed", Duration::from_secs(5))?;
    let log = fx.proxy_log();
    check(
        !log.contains(" reason=client_reset"),
        "a failed handshake is not summarised as a reset",
        tail(&log, 3000),
    )?;
    // The listener still serves TLS clients.
    curl_ftps_retr(
        fx.target(),
        Login::User,
        DataMode::Epsv,
        &ClientTls::implicit(&ca),
        SMALL,
        &ok,
    )?
    .ok()?;
    assert_same_file(&fx.work.original(SMALL), &ok)?;
    held.go()?;
    let transcript = held.finish(Duration::from_secs(30))?;
    check(
        transcript.contains("= retr small.bin 1024 bytes"),
        "the held TLS session transferred after the plain one ended",
        transcript,
    )?;
    assert_same_file(&fx.work.original(SMALL), &held_got)?;
    drop(fx);

    // Explicit listener, implicit client (a ClientHello instead of a command),
    // while a plain session is open.
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-wrong-explicit", &[])? else {
        return Ok(());
    };
    let mut held = held_session(&fx)?;
    let bad = curl_ftps_retr(
        fx.target(),
        Login::User,
        DataMode::Epsv,
        &ClientTls::implicit(&ca),
        SMALL,
        &fx.work.local().join("never.bin"),
    )?;
    check(
        !bad.succeeded(),
        "TLS at the plain-text greeting fails",
        bad.output(),
    )?;
    let log = fx.proxy_log();
    check(
        log.contains("client command too long or not clean")
            && log.contains("the client sent a TLS handshake instead of a command"),
        "the proxy ended the session that sent TLS records as commands",
        tail(&log, 3000),
    )?;
    held.go()?;
    let transcript = held.finish(Duration::from_secs(30))?;
    check(
        transcript.contains("= retr small.bin 1024 bytes"),
        "the held session transferred after the other one ended",
        transcript,
    )?;
    assert_same_file(&fx.work.original(SMALL), &fx.work.local().join("held.bin"))
}

/// `--tls-data-reuse require`: a data connection whose handshake does not resume
/// the control connection's TLS session is reset (Python's stock ftplib), one
/// that does is served (curl, and ftplib offering the control session).
#[test]
fn tls_data_reuse_require() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-reuse", &["--tls-data-reuse", "require"])? else {
        return Ok(());
    };
    let tls = ClientTls::explicit(&ca);
    let got = fx.work.local().join("fresh.bin");
    let fresh = ftplib_ftps(
        fx.target(),
        &tls,
        SessionReuse::Fresh,
        &[
            format!("login:{USER}:{PASSWORD}"),
            "prot:P".into(),
            format!("pasv:retr:{BIG}:{}", got.display()),
            "quit".into(),
        ],
    )?;
    check(
        !fresh.succeeded(),
        "a fresh data session is refused",
        fresh.output(),
    )?;
    let log = fx.proxy_log();
    check(
        log.contains("did not resume the control connection's TLS session"),
        "the proxy logged the refusal",
        tail(&log, 3000),
    )?;
    let got = fx.work.local().join("resumed.bin");
    let log = ftplib_ftps(
        fx.target(),
        &tls,
        SessionReuse::Resume,
        &[
            format!("login:{USER}:{PASSWORD}"),
            "prot:P".into(),
            format!("pasv:retr:{BIG}:{}", got.display()),
            "quit".into(),
        ],
    )?
    .ok()?;
    check(
        data_handshakes(&log) == [true],
        "ftplib offering the control session resumed it",
        log,
    )?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    let got = fx.work.local().join("curl.bin");
    curl_ftps_retr(fx.target(), Login::User, DataMode::Epsv, &tls, BIG, &got)?.ok()?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    let got = fx.work.local().join("lftp.bin");
    lftp_ftps(
        fx.target(),
        Login::User,
        &tls,
        DataMode::Pasv.lftp_settings(),
        &[format!("get {BIG} -o {}", got.display())],
    )?
    .ok()?;
    assert_same_file(&fx.work.original(BIG), &got)
}

/// Start-up refusals: a certificate path that does not exist is named in the
/// error, and TLS with a packet-filter backend is refused with the reason.
#[test]
fn bad_tls_options_fail_start_up() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let bin = proxy_binary()?;
    let work = Workdir::new("ftps-proxy-startup")?;
    let pki = Pki::create(&work.root().join("pki"))?;
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = free_port(lo)?.to_string();
    let missing = work.root().join("no-such-cert.pem");
    let base = |cert: &str, key: &str| -> Vec<String> {
        [
            "-d",
            "-b",
            "127.0.0.1",
            "-p",
            &port,
            "-R",
            "127.0.0.1",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let key = pki.server().key.display().to_string();
    let cert = pki.server().cert.display().to_string();
    let out = run(
        &bin.display().to_string(),
        &base(&missing.display().to_string(), &key),
        20,
    )?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    check(
        out.status.code() == Some(1) && err.contains(&missing.display().to_string()),
        "a missing certificate fails start-up, naming the file",
        err,
    )?;
    // A key file that holds a certificate only.
    let out = run(&bin.display().to_string(), &base(&cert, &cert), 20)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    check(
        out.status.code() == Some(1) && err.contains(&cert) && err.contains("private key"),
        "a key file without a key fails start-up, naming the file",
        err,
    )?;
    let mut args = base(&cert, &key);
    args.extend(["--backend".to_string(), "nftables".into()]);
    let out = run(&bin.display().to_string(), &args, 20)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    check(
        out.status.code() == Some(1) && err.contains("packet filter"),
        "TLS with a packet-filter backend is refused, saying why",
        err,
    )?;
    let out = run(
        &bin.display().to_string(),
        &["-d", "-p", &port, "--tls-cert", &cert],
        20,
    )?;
    check(
        out.status.code() == Some(1),
        "--tls-cert without --tls-key is refused",
        String::from_utf8_lossy(&out.stderr),
    )?;
    Ok(())
}

/// A TLS upload whose client closes TCP without a close_notify may be cut short
/// (RFC 4217 leaves truncation detection to the TLS close): the proxy resets the
/// server's leg instead of passing a clean end of file on, so the server reports
/// the transfer failed rather than keep the file as complete, and says so in its
/// log.
#[test]
fn upload_without_close_notify_fails_on_the_server() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("ftps-proxy-truncated", &[])? else {
        return Ok(());
    };
    // Stock FTP_TLS up to the data connection; then the TCP connection is shut
    // under the TLS layer (no unwrap, so no close_notify).
    let script = format!(
        r#"
import ftplib, socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
# TLS 1.2: no session tickets arrive after the handshake, so nothing is left
# unread and the close is a FIN (with unread bytes the kernel would send a RST,
# which the relay passes on as a reset anyway).
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
f = ftplib.FTP_TLS(context=ctx, timeout=30)
f.connect({host:?}, {port})
f.auth()
f.login({user:?}, {password:?})
f.prot_p()
conn = f.transfercmd("STOR cut.up")
conn.sendall(b"x" * 300000)
conn.shutdown(socket.SHUT_RDWR)
conn.close()
try:
    print("REPLY " + f.voidresp())
except ftplib.Error as e:
    print("REPLY " + str(e))
"#,
        ca = ca.display().to_string(),
        host = fx.target().ip().to_string(),
        port = fx.target().port(),
        user = USER,
        password = PASSWORD,
    );
    let out = run("python3", &["-c", &script], 60)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = text
        .lines()
        .find_map(|l| l.strip_prefix("REPLY "))
        .unwrap_or("");
    check(
        !reply.is_empty() && !reply.starts_with("226"),
        "the server did not report the cut-off upload complete",
        text.clone(),
    )?;
    let log = fx.proxy_log();
    check(
        log.contains("ended without close_notify"),
        "the proxy logged the missing close_notify",
        tail(&log, 3000),
    )
}
