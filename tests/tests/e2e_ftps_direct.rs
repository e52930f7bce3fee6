//! FTPS with no proxy in between: every client (curl, lftp, Python's ftplib) straight
//! at vsftpd (explicit and implicit) and pure-ftpd (explicit), with the per-test CA
//! of [`Pki`]. This proves the FTPS fixtures themselves, and pins down the facts the
//! proxied FTPS scenarios rest on: who resumes the control connection's TLS session
//! on data connections, what vsftpd's `require_ssl_reuse` answers a client that does
//! not, and that a verifying client refuses a certificate for another name. The
//! measured results are written up in tests/src/e2e/tls.rs.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use ftp_proxy_tests::e2e::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The reply vsftpd gives a PROT P transfer whose data connection did not resume
/// the control connection's TLS session (`require_ssl_reuse=YES`).
const REUSE_REFUSED: &str = "522 SSL connection failed: session reuse required";
/// What its log (`debug_ssl=YES`) says then.
const REUSE_REFUSED_LOG: &str = "No SSL session reuse on data channel.";

/// A work directory and its PKI, or `None` when not root.
fn setup(tag: &str) -> Result<Option<(Workdir, Pki)>> {
    if !preflight()? {
        return Ok(None);
    }
    let work = Workdir::new(tag)?;
    let pki = Pki::create(&work.root().join("pki"))?;
    Ok(Some((work, pki)))
}

fn vsftpd(work: &Workdir, tls: VsftpdTls, anon_upload: bool) -> Result<Vsftpd> {
    Vsftpd::start_with(
        work,
        LOCALHOST,
        &VsftpdConfig {
            tls: Some(tls),
            anon_upload,
        },
    )
}

fn check(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::check(what, detail))
    }
}

/// Every data handshake vsftpd logged resumed the session, and there were `n`.
fn all_data_resumed(server: &Vsftpd, n: usize, what: &str) -> Result<()> {
    let data: Vec<_> = server
        .tls_handshakes()
        .into_iter()
        .filter(|h| h.after_login)
        .collect();
    check(
        data.len() >= n && data.iter().all(|h| h.reused),
        format!("{what}: at least {n} data handshakes, all resumed"),
        format!("{data:?}\n{}", tail(&server.log(), 3000)),
    )
}

/// The `= tls data VERSION reused=...` lines of an ftp_client.py transcript.
fn script_data_handshakes(transcript: &str) -> Vec<(String, bool)> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("= tls data "))
        .filter_map(|r| {
            let (version, reused) = r.split_once(" reused=")?;
            Some((version.to_string(), reused.trim() == "True"))
        })
        .collect()
}

fn lftp_mode_settings(mode: DataMode) -> Vec<&'static str> {
    mode.lftp_settings().to_vec()
}

/// vsftpd explicit, `require_ssl_reuse=YES`, TLS forced for anonymous logins and
/// data: each client downloads byte-exact and uploads in PASV and EPSV (and PORT
/// for lftp and ftplib), and every data connection resumed the control session.
#[test]
fn vsftpd_explicit_transfers_with_every_client() -> Result<()> {
    let Some((work, pki)) = setup("ftps-vsftpd-explicit")? else {
        return Ok(());
    };
    let server = vsftpd(&work, VsftpdTls::explicit(&pki.server()), true)?;
    let target = server.addr();
    let tls = ClientTls::explicit(&pki.ca());
    let mut uploads = 0;
    let mut transfers = 0;
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        curl_and_lftp(
            &work,
            target,
            Login::Anonymous,
            mode,
            &tls,
            &format!("{VSFTPD_UPLOAD_DIR}/"),
            &work.anon(),
        )?;
        // ftplib, resuming the session
        let got = work.local().join(format!("ftplib-{m}.bin"));
        let name = format!("{VSFTPD_UPLOAD_DIR}/ftplib-{m}.up");
        let log = ftplib_ftps(
            target,
            &tls,
            SessionReuse::Resume,
            &[
                "login:anonymous:x@".into(),
                "prot:P".into(),
                format!("{m}:retr:{BIG}:{}", got.display()),
                format!("{m}:stor:{}:{name}", work.original(SMALL).display()),
                "quit".into(),
            ],
        )?
        .ok()?;
        prove_mode(&log, mode)?;
        assert_same_file(&work.original(BIG), &got)?;
        assert_same_file(&work.original(SMALL), &work.anon().join(&name))?;
        let hs = script_data_handshakes(&log);
        check(
            hs.len() == 2 && hs.iter().all(|(_, r)| *r),
            "ftplib offering the control session resumes it on both data connections",
            log.clone(),
        )?;
        uploads += 3;
        transfers += 6;
    }
    // Active mode: lftp and ftplib. (curl 7.88.1 cannot; see below.)
    let got = work.local().join("lftp-port.bin");
    let log = lftp_ftps(
        target,
        Login::Anonymous,
        &tls,
        &lftp_mode_settings(DataMode::Port),
        &[format!("get {BIG} -o {}", got.display())],
    )?
    .ok()?;
    prove_mode(&log, DataMode::Port)?;
    assert_same_file(&work.original(BIG), &got)?;
    let got = work.local().join("ftplib-port.bin");
    let log = ftplib_ftps(
        target,
        &tls,
        SessionReuse::Resume,
        &[
            "login:anonymous:x@".into(),
            "prot:P".into(),
            format!("port:retr:{BIG}:{}", got.display()),
            "quit".into(),
        ],
    )?
    .ok()?;
    prove_mode(&log, DataMode::Port)?;
    assert_same_file(&work.original(BIG), &got)?;
    transfers += 2;
    all_data_resumed(&server, transfers, "vsftpd explicit")?;
    // AUTH came first in every session: no USER before it (force_anon_logins_ssl
    // would refuse it anyway).
    let commands = server.commands();
    check(
        commands.iter().any(|c| c.starts_with("AUTH ")),
        "the clients sent AUTH",
        commands.join("\n"),
    )?;
    check(uploads == 6, "six uploads", uploads.to_string())?;
    Ok(())
}

/// curl in active mode: 7.x never starts TLS on the data connection the server
/// opens to it, so a PROT P transfer fails; a later curl must succeed.
#[test]
fn curl_active_mode_ftps_against_vsftpd() -> Result<()> {
    let Some((work, pki)) = setup("ftps-curl-port")? else {
        return Ok(());
    };
    let server = vsftpd(&work, VsftpdTls::explicit(&pki.server()), false)?;
    let tls = ClientTls::explicit(&pki.ca());
    let got = work.local().join("curl-port.bin");
    // A short --max-time (the last one counts): the failure is a timeout.
    let mut args: Vec<String> = DataMode::Port
        .curl_args()
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--max-time".into(),
        "8".into(),
        ftps_url(server.addr(), Login::Anonymous, SMALL, &tls),
        "-o".into(),
        got.display().to_string(),
    ]);
    let attempt = curl_ftps(&tls, &args)?;
    let version = curl_version()?;
    if version.0 < 8 {
        check(
            attempt.status().code() == Some(28),
            format!("curl {version:?} fails a PROT P transfer in active mode"),
            attempt.output().to_string(),
        )?;
        check(
            server.log().contains("SSL_accept failed"),
            "vsftpd logs the failed data handshake",
            tail(&server.log(), 3000),
        )?;
    } else {
        let log = attempt.ok()?;
        prove_mode(&log, DataMode::Port)?;
        assert_same_file(&work.original(SMALL), &got)?;
    }
    Ok(())
}

/// vsftpd with `implicit_ssl=YES`: TLS from the first byte, no AUTH, protected data.
#[test]
fn vsftpd_implicit_transfers_with_every_client() -> Result<()> {
    let Some((work, pki)) = setup("ftps-vsftpd-implicit")? else {
        return Ok(());
    };
    let server = vsftpd(&work, VsftpdTls::implicit(&pki.server()), true)?;
    let target = server.addr();
    let tls = ClientTls::implicit(&pki.ca());
    let got = work.local().join("curl.bin");
    let log = curl_ftps_retr(target, Login::Anonymous, DataMode::Epsv, &tls, BIG, &got)?.ok()?;
    prove_mode(&log, DataMode::Epsv)?;
    assert_same_file(&work.original(BIG), &got)?;
    let got = work.local().join("lftp.bin");
    let name = format!("{VSFTPD_UPLOAD_DIR}/lftp.up");
    let log = lftp_ftps(
        target,
        Login::Anonymous,
        &tls,
        &lftp_mode_settings(DataMode::Pasv),
        &[
            format!("get {BIG} -o {}", got.display()),
            format!("put {} -o {name}", work.original(SMALL).display()),
        ],
    )?
    .ok()?;
    prove_mode(&log, DataMode::Pasv)?;
    assert_same_file(&work.original(BIG), &got)?;
    assert_same_file(&work.original(SMALL), &work.anon().join(&name))?;
    let got = work.local().join("ftplib.bin");
    let log = ftplib_ftps(
        target,
        &tls,
        SessionReuse::Resume,
        &[
            "login:anonymous:x@".into(),
            "prot:P".into(),
            format!("pasv:retr:{BIG}:{}", got.display()),
            "quit".into(),
        ],
    )?
    .ok()?;
    assert_same_file(&work.original(BIG), &got)?;
    check(
        log.contains("= tls control TLSv1.3") && !log.contains("> AUTH"),
        "ftplib: TLS 1.3 from the first byte, no AUTH",
        log.clone(),
    )?;
    all_data_resumed(&server, 4, "vsftpd implicit")?;
    let commands = server.commands();
    check(
        !commands
            .iter()
            .any(|c| c.to_uppercase().starts_with("AUTH")),
        "no AUTH in implicit FTPS",
        commands.join("\n"),
    )?;
    Ok(())
}

/// pure-ftpd with TLS required on control and data (`-Y 3`): each client logs in
/// as the named user, downloads byte-exact and uploads; pure-ftpd does not insist on
/// resumption, so ftplib's stock non-resuming data connections work too.
#[test]
fn pure_ftpd_explicit_transfers_with_every_client() -> Result<()> {
    let Some((work, pki)) = setup("ftps-pure-ftpd")? else {
        return Ok(());
    };
    let server = FtpServer::start_tls(&work, LOCALHOST, PureFtpdTls::Required, &pki.server())?;
    let target = server.addr();
    let tls = ClientTls::explicit(&pki.ca());
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        curl_and_lftp(&work, target, Login::User, mode, &tls, "", &work.user())?;

        for reuse in [SessionReuse::Resume, SessionReuse::Fresh] {
            let got = work.local().join(format!("ftplib-{m}-{reuse:?}.bin"));
            let name = format!("ftplib-{m}-{reuse:?}.up");
            let log = ftplib_ftps(
                target,
                &tls,
                reuse,
                &[
                    format!("login:{USER}:{PASSWORD}"),
                    "prot:P".into(),
                    format!("{m}:retr:{BIG}:{}", got.display()),
                    format!("{m}:stor:{}:{name}", work.original(SMALL).display()),
                    "quit".into(),
                ],
            )?
            .ok()?;
            prove_mode(&log, mode)?;
            assert_same_file(&work.original(BIG), &got)?;
            assert_same_file(&work.original(SMALL), &work.user().join(&name))?;
            check(
                script_data_handshakes(&log).len() == 2,
                "two protected data connections",
                log.clone(),
            )?;
        }
    }
    // -Y 3 refuses a plain-text login.
    let log = ftplib(target, &["cmd:421:USER alice".into()])?;
    check(
        log.contains("< 421 Please reconnect using TLS security mechanisms."),
        "pure-ftpd -Y 3 refuses USER before AUTH",
        log,
    )?;
    // Offered the control session, pure-ftpd resumes it with TLS 1.2 only.
    let mut resumed = Vec::new();
    for version in TlsVersion::ALL {
        let got = work
            .local()
            .join(format!("resume-{}.bin", version.script_name()));
        let log = ftplib_ftps(
            target,
            &ClientTls::explicit(&pki.ca()).pinned(version),
            SessionReuse::Resume,
            &[
                format!("login:{USER}:{PASSWORD}"),
                "prot:P".into(),
                format!("pasv:retr:{SMALL}:{}", got.display()),
                "quit".into(),
            ],
        )?
        .ok()?;
        assert_same_file(&work.original(SMALL), &got)?;
        resumed.push(script_data_handshakes(&log));
    }
    check(
        resumed
            == vec![
                vec![("TLSv1.2".to_string(), true)],
                vec![("TLSv1.3".to_string(), false)],
            ],
        "pure-ftpd resumes a TLS 1.2 session, not a TLS 1.3 one",
        format!("{resumed:?}"),
    )?;
    Ok(())
}

/// vsftpd's `require_ssl_reuse=YES` refuses a data connection that does not resume
/// the control session, with TLS 1.2 and 1.3; with `require_ssl_reuse=NO` the same
/// client transfers.
#[test]
fn vsftpd_require_ssl_reuse_refuses_a_fresh_data_session() -> Result<()> {
    let Some((work, pki)) = setup("ftps-reuse")? else {
        return Ok(());
    };
    let server = vsftpd(&work, VsftpdTls::explicit(&pki.server()), false)?;
    for version in TlsVersion::ALL {
        let tls = ClientTls::explicit(&pki.ca()).pinned(version);
        let got = work
            .local()
            .join(format!("fresh-{}.bin", version.script_name()));
        let attempt = ftplib_ftps(
            server.addr(),
            &tls,
            SessionReuse::Fresh,
            &[
                "login:anonymous:x@".into(),
                "prot:P".into(),
                format!("pasv:retr:{SMALL}:{}", got.display()),
                "quit".into(),
            ],
        )?;
        let out = attempt.output().to_string();
        check(
            !attempt.succeeded() && out.contains(&format!("< {REUSE_REFUSED}")),
            format!("{version:?}: vsftpd answers a fresh data session with {REUSE_REFUSED:?}"),
            out.clone(),
        )?;
        check(
            out.contains(&format!("= tls control {}", version.openssl_name()))
                && script_data_handshakes(&out)
                    == vec![(version.openssl_name().to_string(), false)],
            format!("{version:?}: one data handshake, in that version, not resumed"),
            out,
        )?;
        let last_data = server.tls_handshakes().into_iter().rfind(|h| h.after_login);
        check(
            last_data.as_ref().is_some_and(|h| !h.reused),
            format!("{version:?}: vsftpd logged the data handshake as not reused"),
            format!("{last_data:?}"),
        )?;
        // The same client resuming the session transfers.
        let log = ftplib_ftps(
            server.addr(),
            &tls,
            SessionReuse::Resume,
            &[
                "login:anonymous:x@".into(),
                "prot:P".into(),
                format!("pasv:retr:{SMALL}:{}", got.display()),
                "quit".into(),
            ],
        )?
        .ok()?;
        assert_same_file(&work.original(SMALL), &got)?;
        check(
            script_data_handshakes(&log) == vec![(version.openssl_name().to_string(), true)],
            format!("{version:?}: the data session resumed"),
            log,
        )?;
        // curl and lftp resume too, in that version.
        let before = server.tls_handshakes().len();
        let got = work
            .local()
            .join(format!("curl-{}.bin", version.script_name()));
        curl_ftps_retr(
            server.addr(),
            Login::Anonymous,
            DataMode::Epsv,
            &tls,
            SMALL,
            &got,
        )?
        .ok()?;
        assert_same_file(&work.original(SMALL), &got)?;
        let got = work
            .local()
            .join(format!("lftp-{}.bin", version.script_name()));
        lftp_ftps(
            server.addr(),
            Login::Anonymous,
            &tls,
            &[],
            &[format!("get {SMALL} -o {}", got.display())],
        )?
        .ok()?;
        assert_same_file(&work.original(SMALL), &got)?;
        let hs = server.tls_handshakes();
        let new = &hs[before..];
        check(
            new.len() == 4
                && new.iter().all(|h| h.version == version.openssl_name())
                && new.iter().filter(|h| h.after_login && h.reused).count() == 2,
            format!("{version:?}: curl and lftp each resumed on their data connection"),
            format!("{new:?}"),
        )?;
    }
    check(
        server.log().contains(REUSE_REFUSED_LOG),
        "vsftpd logs the refusal",
        tail(&server.log(), 3000),
    )?;
    // Without require_ssl_reuse the non-resuming client transfers.
    let lax = vsftpd(
        &work,
        VsftpdTls {
            require_reuse: false,
            ..VsftpdTls::explicit(&pki.server())
        },
        false,
    )?;
    let got = work.local().join("lax.bin");
    let log = ftplib_ftps(
        lax.addr(),
        &ClientTls::explicit(&pki.ca()),
        SessionReuse::Fresh,
        &[
            "login:anonymous:x@".into(),
            "prot:P".into(),
            format!("pasv:retr:{BIG}:{}", got.display()),
            "quit".into(),
        ],
    )?
    .ok()?;
    assert_same_file(&work.original(BIG), &got)?;
    check(
        script_data_handshakes(&log).iter().all(|(_, r)| !r),
        "with require_ssl_reuse=NO a fresh data session is served",
        log,
    )?;
    Ok(())
}

/// vsftpd's refusals under `force_anon_logins_ssl` and `force_anon_data_ssl`.
#[test]
fn vsftpd_forces_tls_for_anonymous_logins_and_data() -> Result<()> {
    let Some((work, pki)) = setup("ftps-force")? else {
        return Ok(());
    };
    let server = vsftpd(&work, VsftpdTls::explicit(&pki.server()), false)?;
    let log = ftplib(server.addr(), &["cmd:530:USER anonymous".into()])?;
    check(
        log.contains("< 530 Anonymous sessions must use encryption."),
        "vsftpd refuses a plain-text anonymous login",
        log,
    )?;
    let got = work.local().join("clear.bin");
    let attempt = ftplib_ftps(
        server.addr(),
        &ClientTls::explicit(&pki.ca()),
        SessionReuse::Resume,
        &[
            "login:anonymous:x@".into(),
            "prot:C".into(),
            format!("pasv:retr:{SMALL}:{}", got.display()),
            "quit".into(),
        ],
    )?;
    let out = attempt.output();
    for line in [
        "< 234 Proceed with negotiation.",
        "< 200 PBSZ set to 0.",
        "< 522 Data connections must be encrypted.",
    ] {
        check(
            out.contains(line),
            format!("ftplib transcript has {line:?}"),
            out.to_string(),
        )?;
    }
    check(
        !attempt.succeeded(),
        "the clear transfer failed",
        out.to_string(),
    )?;
    let log = ftplib_ftps(
        server.addr(),
        &ClientTls::explicit(&pki.ca()),
        SessionReuse::Resume,
        &["login:anonymous:x@".into(), "prot:P".into(), "quit".into()],
    )?
    .ok()?;
    check(
        log.contains("< 200 PROT now Private."),
        "vsftpd's PROT P reply",
        log,
    )?;
    Ok(())
}

/// Every client verifying against the CA refuses the wrong-name certificate, and
/// one from another CA, before it sends USER.
#[test]
fn clients_refuse_a_wrong_or_untrusted_certificate() -> Result<()> {
    let Some((work, pki)) = setup("ftps-wrong-name")? else {
        return Ok(());
    };
    let cases = [
        (
            pki.wrong_name(),
            "wrong name",
            "no alternative certificate subject name matches",
            "certificate common name doesn't match requested host name",
            "IP address mismatch",
        ),
        (
            pki.untrusted(),
            "untrusted",
            "self-signed certificate",
            "The certificate issuer is unknown",
            "self-signed certificate",
        ),
    ];
    for (cert, what, curl_reason, lftp_reason, py_reason) in cases {
        let server = vsftpd(&work, VsftpdTls::explicit(&cert), false)?;
        let tls = ClientTls::explicit(&pki.ca());
        let got = work.local().join("never.bin");
        let curl = curl_ftps_retr(
            server.addr(),
            Login::Anonymous,
            DataMode::Epsv,
            &tls,
            SMALL,
            &got,
        )?;
        check(
            curl.status().code() == Some(60) && curl.output().contains(curl_reason),
            format!("{what}: curl exits 60 (peer certificate cannot be authenticated)"),
            curl.output().to_string(),
        )?;
        let lftp = lftp_ftps(
            server.addr(),
            Login::Anonymous,
            &tls,
            &[],
            &[format!("get {SMALL} -o {}", got.display())],
        )?;
        check(
            !lftp.succeeded() && lftp.output().contains(lftp_reason),
            format!("{what}: lftp refuses the certificate"),
            lftp.output().to_string(),
        )?;
        let py = ftplib_ftps(
            server.addr(),
            &tls,
            SessionReuse::Resume,
            &["login:anonymous:x@".into(), "quit".into()],
        )?;
        check(
            !py.succeeded()
                && py.output().contains("CERTIFICATE_VERIFY_FAILED")
                && py.output().contains(py_reason),
            format!("{what}: ftplib refuses the certificate"),
            py.output().to_string(),
        )?;
        check(
            !got.exists(),
            format!("{what}: nothing downloaded"),
            String::new(),
        )?;
        // curl and Python refuse during the handshake; lftp (GnuTLS) checks the
        // certificate after it and has by then written its USER into the session,
        // which vsftpd reads. Nothing after that: no PASS, no PBSZ, no transfer.
        let commands = server.commands();
        let upper: Vec<String> = commands.iter().map(|c| c.to_uppercase()).collect();
        check(
            upper.iter().filter(|c| c.starts_with("USER")).count() <= 1
                && !upper.iter().any(|c| {
                    ["PASS", "PBSZ", "PROT", "PASV", "EPSV", "RETR"]
                        .iter()
                        .any(|v| c.starts_with(v))
                }),
            format!("{what}: at most lftp's USER reached the server, nothing after it"),
            commands.join("\n"),
        )?;
    }
    check(
        fs::read_dir(work.local()).map(|d| d.count()).unwrap_or(0) == 0,
        "no client wrote a file",
        String::new(),
    )?;
    Ok(())
}

/// curl downloads `BIG` and uploads `SMALL`, then lftp does both in one session, in
/// `mode`; every file is compared. Uploads are named `{prefix}{client}-{mode}.up`
/// and land in `landing` (the server's view of the login's root).
fn curl_and_lftp(
    work: &Workdir,
    target: SocketAddr,
    login: Login,
    mode: DataMode,
    tls: &ClientTls,
    prefix: &str,
    landing: &Path,
) -> Result<()> {
    let m = mode.command().to_lowercase();
    let got = work.local().join(format!("curl-{m}.bin"));
    let log = curl_ftps_retr(target, login, mode, tls, BIG, &got)?.ok()?;
    prove_mode(&log, mode)?;
    assert_same_file(&work.original(BIG), &got)?;
    let name = format!("{prefix}curl-{m}.up");
    curl_ftps_stor(target, login, mode, tls, &work.original(SMALL), &name)?.ok()?;
    assert_same_file(&work.original(SMALL), &landing.join(&name))?;

    let got = work.local().join(format!("lftp-{m}.bin"));
    let name = format!("{prefix}lftp-{m}.up");
    let log = lftp_ftps(
        target,
        login,
        tls,
        &lftp_mode_settings(mode),
        &[
            format!("get {BIG} -o {}", got.display()),
            format!("put {} -o {name}", work.original(SMALL).display()),
        ],
    )?
    .ok()?;
    prove_mode(&log, mode)?;
    assert_same_file(&work.original(BIG), &got)?;
    assert_same_file(&work.original(SMALL), &landing.join(&name))
}
