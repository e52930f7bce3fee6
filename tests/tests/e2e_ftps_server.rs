//! FTPS towards servers through the proxy (issue 16, `--server-tls`): the real
//! `ftp-proxy` in reverse mode speaks RFC 4217 to pure-ftpd and vsftpd itself
//! (its own `AUTH TLS`, `PBSZ 0`, `PROT P`, or TLS from the connect with
//! `implicit`), checks their certificates against the per-test CA, and protects
//! every data connection to them. Clients in front are plain curl, or curl with
//! FTPS to the proxy (TLS on both sides). Every file is compared byte for byte.
//!
//! Servers that insist on protection prove that it happened: pure-ftpd `-Y 3`
//! refuses unprotected logins and transfers, vsftpd with `force_anon_*_ssl`
//! too, and vsftpd's `require_ssl_reuse=YES` refuses (`522`) a data connection
//! that does not resume the control connection's TLS session; its log says
//! which handshakes resumed.
//!
//! Measured here (rustls 0.23 with ring; the pure-ftpd and vsftpd of
//! tests/src/e2e): both servers negotiate TLS 1.3 with the proxy. vsftpd
//! resumes the control session's TLS 1.3 session on every data connection
//! (asserted below from its log); pure-ftpd makes a full TLS 1.3 handshake on
//! each one (it never resumes TLS 1.3, tests/tests/e2e_ftps_direct.rs), which it
//! accepts, even with `-Y 3`. With the proxy pinned to TLS 1.2 (tried by hand,
//! not a setting) both servers resumed every data connection.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ftp_proxy_tests::e2e::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn check(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::check(what, detail))
    }
}

/// The test PKI of a work directory (made once by the server's options).
fn pki_of(work: &Workdir) -> Result<Pki> {
    Pki::create(&work.root().join("pki"))
}

/// pure-ftpd with FTPS at `level` and the certificate `cert` picks from the
/// PKI, behind the proxy started with `proxy` (given the CA file).
fn fixture(
    tag: &str,
    level: PureFtpdTls,
    cert: fn(&Pki) -> CertPair,
    proxy: impl FnOnce(&Workdir, PathBuf) -> Vec<String>,
) -> Result<Option<Fixture>> {
    Fixture::start_made(
        tag,
        false,
        |work| {
            let ca = work.root().join("pki").join("ca.pem");
            Ok(proxy(work, ca))
        },
        |work| {
            let pki = pki_of(work)?;
            Ok(pure_ftpd_tls_args(level, &cert(&pki)))
        },
    )
}

fn explicit_with_ca(ca: PathBuf) -> Vec<String> {
    vec![
        "--server-tls".into(),
        "explicit".into(),
        "--server-tls-ca".into(),
        ca.display().to_string(),
    ]
}

/// The proxy's options for TLS on both sides: explicit FTPS towards the
/// server, the test PKI's certificate towards clients.
fn both_sides_args(work: &Workdir, ca: PathBuf) -> Vec<String> {
    let pki = work.root().join("pki");
    let mut args = explicit_with_ca(ca);
    args.extend([
        "--tls-cert".into(),
        pki.join("server.pem").display().to_string(),
        "--tls-key".into(),
        pki.join("server.key").display().to_string(),
    ]);
    args
}

/// Plain curl: download and upload in PASV and EPSV, each file compared.
fn plain_curl_round(fx: &Fixture, tag: &str) -> Result<()> {
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        let got = fx.work.local().join(format!("{tag}-{m}.bin"));
        let log = curl_retr(fx.target(), Login::User, mode, BIG, &got)?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        let name = format!("{tag}-{m}.up");
        curl_stor(
            fx.target(),
            Login::User,
            mode,
            &fx.work.original(BIG),
            &name,
        )?;
        assert_same_file(&fx.work.original(BIG), &fx.work.user().join(&name))?;
    }
    Ok(())
}

/// The proxy secured the server's control connection and says so.
fn secured(fx: &Fixture) -> Result<()> {
    let log = fx.proxy_log();
    check(
        log.contains("server control connection switches to TLS")
            && log.contains("server control connection is TLS")
            && log.contains("data connection TLS handshake with the server done"),
        "the proxy sent AUTH TLS, PBSZ and PROT to the server",
        tail(&log, 3000),
    )
}

/// pure-ftpd `-Y 1` (TLS allowed) and `-Y 3` (TLS required on control and data)
/// behind `--server-tls explicit`; plain curl in front never sees TLS.
#[test]
fn pure_ftpd_behind_plain_curl() -> Result<()> {
    for (level, tag) in [
        (PureFtpdTls::Allowed, "srvtls-y1"),
        (PureFtpdTls::Required, "srvtls-y3"),
    ] {
        let Some(fx) = fixture(tag, level, Pki::server, |_, ca| explicit_with_ca(ca))? else {
            return Ok(());
        };
        plain_curl_round(&fx, tag)?;
        secured(&fx)?;
        // The proxy's own commands never reached the client.
        let got = fx.work.local().join(format!("{tag}-again.bin"));
        let log = curl_retr(fx.target(), Login::User, DataMode::Epsv, SMALL, &got)?;
        check(
            !log.contains("< 234") && !log.contains("PBSZ") && !log.contains("PROT"),
            "curl saw none of the proxy's AUTH/PBSZ/PROT dialogue",
            tail(&log, 3000),
        )?;
    }
    Ok(())
}

/// TLS on both sides: curl speaks explicit FTPS to the proxy, the proxy to
/// pure-ftpd `-Y 3`.
#[test]
fn tls_on_both_sides() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-both",
        PureFtpdTls::Required,
        Pki::server,
        both_sides_args,
    )?
    else {
        return Ok(());
    };
    let tls = ClientTls::explicit(&fx.work.root().join("pki").join("ca.pem"));
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        let got = fx.work.local().join(format!("both-{m}.bin"));
        let log = curl_ftps_retr(fx.target(), Login::User, mode, &tls, BIG, &got)?.ok()?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        let name = format!("both-{m}.up");
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
    // The client protects its control connection only (`PROT C`, or no `PROT`):
    // its data legs are plain, the server's still TLS (pure-ftpd -Y 3 would
    // refuse anything else).
    let got = fx.work.local().join("both-clear-data.bin");
    let args = vec![
        "--ftp-ssl-control".to_string(),
        "--cacert".into(),
        tls.ca.display().to_string(),
        ftp_url(fx.target(), Login::User, BIG),
        "-o".into(),
        got.display().to_string(),
    ];
    let log = curl(&args)?;
    check(
        log.contains("> USER") && !log.contains("PROT P") && log.contains("SSL connection using"),
        "curl --ftp-ssl-control leaves its data connections clear",
        tail(&log, 3000),
    )?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    secured(&fx)?;
    check(
        fx.proxy_log()
            .contains("client control connection switches to TLS"),
        "the client's side is TLS too",
        tail(&fx.proxy_log(), 3000),
    )
}

/// Bytes of the large transfers: hundreds of TLS records, many times the
/// relay's buffers (its 64 KiB pipe and the 64 KiB record queue of each TLS leg).
const LARGE_LEN: usize = 6 << 20;

/// Deterministic bytes no compression or pattern could pass for: a
/// xorshift stream, so a record dropped, doubled or reordered shows.
fn large_payload() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(LARGE_LEN);
    while out.len() < LARGE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(LARGE_LEN);
    out
}

/// The relay's TLS data path with TLS on both sides under back-pressure
/// (runtime-mio/src/relay.rs, "The TLS data path"): a download to a client
/// that reads at 2 MB/s, so the client's leg stays full while the server's
/// keeps sending, then an upload of the same size. Each file is compared byte
/// for byte, and each session's summary counts exactly its file's bytes.
#[test]
fn large_transfers_tls_both_sides_with_a_slow_reader() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-large",
        PureFtpdTls::Required,
        Pki::server,
        both_sides_args,
    )?
    else {
        return Ok(());
    };
    let data = large_payload();
    let remote = fx.work.user().join("large.bin");
    std::fs::write(&remote, &data).map_err(E2eError::io("writing the served file"))?;
    let original = fx.work.local().join("large-original.bin");
    std::fs::write(&original, &data).map_err(E2eError::io("writing the local copy"))?;
    let tls = ClientTls::explicit(&fx.work.root().join("pki").join("ca.pem"));
    let got = fx.work.local().join("large-slow.bin");
    let mut args: Vec<String> = DataMode::Epsv
        .curl_args()
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--limit-rate".into(),
        "2M".into(),
        ftps_url(fx.target(), Login::User, "large.bin", &tls),
        "-o".into(),
        got.display().to_string(),
    ]);
    curl_ftps(&tls, &args)?.ok()?;
    assert_same_file(&original, &got)?;
    curl_ftps_stor(
        fx.target(),
        Login::User,
        DataMode::Pasv,
        &tls,
        &original,
        "large.up",
    )?
    .ok()?;
    assert_same_file(&original, &fx.work.user().join("large.up"))?;
    // Both sessions' summaries: the download's bytes down, the upload's up.
    let down = format!("data_up=0 data_down={LARGE_LEN} ");
    let up = format!("data_up={LARGE_LEN} data_down=0 ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = fx.proxy_log();
    while !(log.contains(&down) && log.contains(&up)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = fx.proxy_log();
    }
    check(
        log.contains(&down) && log.contains(&up),
        format!("session summaries with exact data counts ({down:?}, {up:?})"),
        tail(&log, 3000),
    )?;
    secured(&fx)
}

/// vsftpd behind the proxy: TLS forced for anonymous logins and data, and
/// `require_ssl_reuse=YES`; every data connection resumed the control session.
fn vsftpd_behind(tag: &str, make: fn(&CertPair) -> VsftpdTls, mode: &str) -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new(tag)?;
    let pki = pki_of(&work)?;
    let tls = make(&pki.server());
    let server = Vsftpd::start_with(
        &work,
        LOCALHOST,
        &VsftpdConfig {
            tls: Some(tls),
            anon_upload: true,
        },
    )?;
    let ca = pki.ca().display().to_string();
    let proxy = ProxyProcess::start(
        LOCALHOST,
        server.addr(),
        &["--server-tls", mode, "--server-tls-ca", &ca],
        &work.root().join("ftp-proxy.log"),
    )?;
    let mut transfers = 0;
    for dm in [DataMode::Pasv, DataMode::Epsv] {
        let m = dm.command().to_lowercase();
        let got = work.local().join(format!("{tag}-{m}.bin"));
        let log = curl_retr(proxy.addr(), Login::Anonymous, dm, BIG, &got).map_err(|e| {
            E2eError::check(
                "download through the proxy",
                format!(
                    "{e}\n{}\n{}",
                    tail(&proxy.log(), 3000),
                    tail(&server.log(), 3000)
                ),
            )
        })?;
        prove_mode(&log, dm)?;
        assert_same_file(&work.original(BIG), &got)?;
        let name = format!("{VSFTPD_UPLOAD_DIR}/{tag}-{m}.up");
        curl_stor(
            proxy.addr(),
            Login::Anonymous,
            dm,
            &work.original(SMALL),
            &name,
        )?;
        assert_same_file(&work.original(SMALL), &work.anon().join(&name))?;
        transfers += 2;
    }
    let data: Vec<_> = server
        .tls_handshakes()
        .into_iter()
        .filter(|h| h.after_login)
        .collect();
    check(
        data.len() >= transfers && data.iter().all(|h| h.reused && h.version == "TLSv1.3"),
        format!("{tag}: at least {transfers} data handshakes, all TLS 1.3 and resumed"),
        format!("{data:?}\n{}", tail(&server.log(), 3000)),
    )?;
    let log = proxy.log();
    check(
        log.contains("server control connection is TLS"),
        "the proxy secured the control connection",
        tail(&log, 3000),
    )
}

/// `--server-tls explicit` to vsftpd `ssl_enable=YES`, `require_ssl_reuse=YES`.
#[test]
fn vsftpd_explicit_require_ssl_reuse() -> Result<()> {
    vsftpd_behind("srvtls-vsftpd", VsftpdTls::explicit, "explicit")
}

/// `--server-tls implicit` to vsftpd `implicit_ssl=YES`.
#[test]
fn vsftpd_implicit() -> Result<()> {
    vsftpd_behind("srvtls-vsftpd-imp", VsftpdTls::implicit, "implicit")
}

/// A download through a proxy whose server side cannot be secured: curl fails,
/// it was told `421`, the proxy's log names `reason`, and the session summary
/// says `reason=SUMMARY`.
fn refused(fx: &Fixture, tag: &str, reason: &str, summary: &str) -> Result<()> {
    let got = fx.work.local().join(format!("{tag}.bin"));
    let e = match curl_retr(fx.target(), Login::User, DataMode::Epsv, SMALL, &got) {
        Ok(log) => {
            return Err(E2eError::check(
                format!("{tag}: the download is refused"),
                log,
            ))
        }
        Err(e) => e.to_string(),
    };
    check(
        e.contains("421"),
        format!("{tag}: curl was told 421"),
        tail(&e, 3000),
    )?;
    let log = fx.proxy_log();
    check(
        log.contains("cannot secure the control connection to server") && log.contains(reason),
        format!("{tag}: the proxy logged why ({reason})"),
        tail(&log, 3000),
    )?;
    // The summary tells a failed handshake from a refusal.
    let other = if summary == "server_tls_failed" {
        "server_refused"
    } else {
        "server_tls_failed"
    };
    fx.proxy()?.wait_log(
        &format!(" reason={summary}"),
        std::time::Duration::from_secs(5),
    )?;
    let log = fx.proxy_log();
    check(
        !log.contains(&format!(" reason={other}")),
        format!("{tag}: the session is summarised as {summary}, not {other}"),
        tail(&log, 3000),
    )
}

/// A server certificate signed by another CA, one for another name, and a
/// server that refuses `AUTH TLS`: each session ends with `421`, never plain.
#[test]
fn unverifiable_servers_are_refused() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-untrusted",
        PureFtpdTls::Allowed,
        Pki::untrusted,
        |_, ca| explicit_with_ca(ca),
    )?
    else {
        return Ok(());
    };
    refused(&fx, "untrusted", "UnknownIssuer", "server_tls_failed")?;
    drop(fx);
    let Some(fx) = fixture("srvtls-name", PureFtpdTls::Allowed, Pki::server, |_, ca| {
        let mut a = explicit_with_ca(ca);
        a.extend(["--server-tls-name".into(), WRONG_NAME.into()]);
        a
    })?
    else {
        return Ok(());
    };
    refused(
        &fx,
        "name",
        "certificate not valid for name",
        "server_tls_failed",
    )?;
    drop(fx);
    // A plain pure-ftpd (no -Y): it refuses AUTH TLS.
    let Some(fx) = Fixture::start_made(
        "srvtls-plain",
        false,
        |work| Ok(explicit_with_ca(pki_of(work)?.ca())),
        |_| Ok(Vec::new()),
    )?
    else {
        return Ok(());
    };
    refused(&fx, "plain", "refused AUTH TLS", "server_refused")
}

/// `--server-tls-insecure` takes the untrusted certificate, and says so at
/// start-up.
#[test]
fn insecure_accepts_with_a_warning() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-insecure",
        PureFtpdTls::Required,
        Pki::untrusted,
        |_, _| {
            vec![
                "--server-tls".into(),
                "explicit".into(),
                "--server-tls-insecure".into(),
            ]
        },
    )?
    else {
        return Ok(());
    };
    let got = fx.work.local().join("insecure.bin");
    curl_retr(fx.target(), Login::User, DataMode::Epsv, BIG, &got)?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    secured(&fx)?;
    let log = fx.proxy_log();
    check(
        log.contains("--server-tls-insecure: the server's certificate is not verified"),
        "the start-up warning",
        tail(&log, 3000),
    )
}

/// A minimal FTPS server (Python's `ssl`) that cuts its data connection short:
/// the RETR data are followed by a TCP close with no close_notify. Pinned to
/// TLS 1.2 so that its close is a plain FIN (tests/tests/e2e_ftps_proxy.rs).
const CUTTING_SERVER: &str = r#"
import socket, ssl, sys
cert, key, port_file = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
ls.settimeout(30)
with open(port_file + ".tmp", "w") as f:
    f.write(str(ls.getsockname()[1]))
import os
os.rename(port_file + ".tmp", port_file)
raw, _ = ls.accept()
raw.settimeout(30)
conn = raw
data = None
def send(s):
    conn.sendall(s.encode() + b"\r\n")
def line():
    buf = b""
    while not buf.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            sys.exit(0)
        buf += b
    return buf.decode().strip()
send("220 cutting server")
for _ in range(50):
    w = line().split(" ")[0].upper()
    if w == "AUTH":
        send("234 go")
        conn = ctx.wrap_socket(raw, server_side=True)
    elif w in ("PBSZ", "PROT", "TYPE"):
        send("200 ok")
    elif w == "USER":
        send("331 password")
    elif w == "PASS":
        send("230 in")
    elif w == "PWD":
        send('257 "/"')
    elif w == "EPSV":
        data = socket.socket()
        data.bind(("127.0.0.1", 0))
        data.listen(1)
        data.settimeout(30)
        send("229 Entering Extended Passive Mode (|||%d|)" % data.getsockname()[1])
    elif w == "RETR":
        send("150 here it comes")
        dc, _ = data.accept()
        ds = ctx.wrap_socket(dc, server_side=True)
        ds.sendall(b"x" * 200000)
        ds.close()  # no close_notify
        send("226 done")
    elif w == "QUIT":
        send("221 bye")
        break
    else:
        send("502 not here")
"#;

/// A download whose server data leg ends without close_notify does not reach the
/// client as a complete file: the proxy resets the client's leg and logs why.
#[test]
fn a_server_data_leg_cut_short_resets_the_client() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("srvtls-cut")?;
    let pki = pki_of(&work)?;
    let script = work.root().join("cutting_server.py");
    std::fs::write(&script, CUTTING_SERVER).map_err(E2eError::io("write the script"))?;
    let port_file = work.root().join("cutting.port");
    let pair = pki.server();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg(&pair.cert)
        .arg(&pair.key)
        .arg(&port_file)
        .stdin(std::process::Stdio::null());
    let _server = ChildGuard::spawn(&mut cmd, "the cutting FTPS server")?;
    let port = wait_for(
        "the cutting server's port",
        std::time::Duration::from_secs(10),
        || {
            Ok(std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok()))
        },
        String::new,
    )?;
    let ca = pki.ca().display().to_string();
    let proxy = ProxyProcess::start(
        LOCALHOST,
        std::net::SocketAddr::new(LOCALHOST, port),
        &["--server-tls", "explicit", "--server-tls-ca", &ca],
        &work.root().join("ftp-proxy.log"),
    )?;
    let got = work.local().join("cut.bin");
    let result = curl_retr(proxy.addr(), Login::User, DataMode::Epsv, "cut.bin", &got);
    check(
        result.is_err(),
        "curl does not take the cut-off download as complete",
        format!("{result:?}"),
    )?;
    let log = proxy.log();
    check(
        log.contains("the server's TLS leg ended without close_notify"),
        "the proxy logged the truncation",
        tail(&log, 3000),
    )
}

/// Start-up refuses what cannot work: `--server-tls` without `-R` (transparent
/// mode has no name to verify), a CA file that holds no certificate, and the
/// `--server-tls-*` options without `--server-tls`.
#[test]
fn bad_server_tls_options_fail_start_up() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let bin = proxy_binary()?.display().to_string();
    let work = Workdir::new("srvtls-startup")?;
    let port = free_port(LOCALHOST)?.to_string();
    let empty = work.root().join("empty-ca.pem");
    std::fs::write(&empty, "no certificates here\n").map_err(E2eError::io("write"))?;
    let empty = empty.display().to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["--server-tls", "explicit"], "needs reverse mode (-R)"),
        (
            &[
                "-R",
                "127.0.0.1",
                "--server-tls",
                "explicit",
                "--server-tls-ca",
                &empty,
            ],
            "no usable CA certificate",
        ),
        (
            &["-R", "127.0.0.1", "--server-tls-insecure"],
            "need --server-tls",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["-d", "-b", "127.0.0.1", "-p", &port];
        args.extend_from_slice(extra);
        let out = run(&bin, &args, 20)?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        check(
            out.status.code() == Some(1) && err.contains(want),
            format!("{extra:?} fails start-up with {want:?}"),
            err,
        )?;
    }
    Ok(())
}

/// Active mode towards a TLS server: pure-ftpd `-Y 3` connects to the proxy's
/// port, and the proxy is still the TLS client of that data connection
/// (RFC 4217: the FTP client is the TLS client whoever connects). Plain curl in
/// front, with PORT and EPRT.
#[test]
fn active_mode_to_a_tls_server() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-active",
        PureFtpdTls::Required,
        Pki::server,
        |_, ca| explicit_with_ca(ca),
    )?
    else {
        return Ok(());
    };
    for mode in [DataMode::Port, DataMode::Eprt] {
        let m = mode.command().to_lowercase();
        let got = fx.work.local().join(format!("active-{m}.bin"));
        let log = curl_retr(fx.target(), Login::User, mode, BIG, &got)?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        let name = format!("active-{m}.up");
        curl_stor(
            fx.target(),
            Login::User,
            mode,
            &fx.work.original(SMALL),
            &name,
        )?;
        assert_same_file(&fx.work.original(SMALL), &fx.work.user().join(&name))?;
    }
    secured(&fx)
}

/// `--server-tls-name` names the DNS name to check instead of the `-R` address
/// (the tests' `-R` is 127.0.0.1, checked as an IP address everywhere else).
#[test]
fn server_tls_name_checks_a_dns_name() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-dnsname",
        PureFtpdTls::Required,
        Pki::server,
        |_, ca| {
            let mut a = explicit_with_ca(ca);
            a.extend(["--server-tls-name".into(), SERVER_NAME.into()]);
            a
        },
    )?
    else {
        return Ok(());
    };
    let got = fx.work.local().join("dnsname.bin");
    curl_retr(fx.target(), Login::User, DataMode::Epsv, SMALL, &got)?;
    assert_same_file(&fx.work.original(SMALL), &got)?;
    secured(&fx)
}

/// Implicit TLS in front (`--tls-implicit`, curl's `ftps://`) with TLS behind,
/// explicit (pure-ftpd `-Y 3`) and implicit (vsftpd `implicit_ssl=YES`): the
/// combinations of front and back the other tests leave out.
#[test]
fn implicit_in_front_with_tls_behind() -> Result<()> {
    let front = |work: &Workdir| {
        let pki = work.root().join("pki");
        vec![
            "--tls-implicit".to_string(),
            "--tls-cert".into(),
            pki.join("server.pem").display().to_string(),
            "--tls-key".into(),
            pki.join("server.key").display().to_string(),
        ]
    };
    // Implicit in front, explicit behind.
    let Some(fx) = fixture(
        "srvtls-imp-exp",
        PureFtpdTls::Required,
        Pki::server,
        |work, ca| {
            let mut args = explicit_with_ca(ca);
            args.extend(front(work));
            args
        },
    )?
    else {
        return Ok(());
    };
    let tls = ClientTls::implicit(&fx.work.root().join("pki").join("ca.pem"));
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        let got = fx.work.local().join(format!("imp-exp-{m}.bin"));
        let log = curl_ftps_retr(fx.target(), Login::User, mode, &tls, BIG, &got)?.ok()?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx.work.original(BIG), &got)?;
        let name = format!("imp-exp-{m}.up");
        curl_ftps_stor(
            fx.target(),
            Login::User,
            mode,
            &tls,
            &fx.work.original(SMALL),
            &name,
        )?
        .ok()?;
        assert_same_file(&fx.work.original(SMALL), &fx.work.user().join(&name))?;
    }
    secured(&fx)?;
    drop(fx);

    // Implicit on both sides, vsftpd behind (it requires its data connections to
    // resume the control session's TLS session).
    let work = Workdir::new("srvtls-imp-imp")?;
    let pki = pki_of(&work)?;
    let server = Vsftpd::start_with(
        &work,
        LOCALHOST,
        &VsftpdConfig {
            tls: Some(VsftpdTls::implicit(&pki.server())),
            anon_upload: true,
        },
    )?;
    let ca = pki.ca().display().to_string();
    let mut args = vec![
        "--server-tls".to_string(),
        "implicit".into(),
        "--server-tls-ca".into(),
        ca.clone(),
    ];
    args.extend(front(&work));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = ProxyProcess::start(
        LOCALHOST,
        server.addr(),
        &args,
        &work.root().join("ftp-proxy.log"),
    )?;
    let tls = ClientTls::implicit(&pki.ca());
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.command().to_lowercase();
        let got = work.local().join(format!("imp-imp-{m}.bin"));
        let log = curl_ftps_retr(proxy.addr(), Login::Anonymous, mode, &tls, BIG, &got)?
            .ok()
            .map_err(|e| {
                E2eError::check(
                    "implicit FTPS on both sides",
                    format!(
                        "{e}\n{}\n{}",
                        tail(&proxy.log(), 3000),
                        tail(&server.log(), 2000)
                    ),
                )
            })?;
        prove_mode(&log, mode)?;
        assert_same_file(&work.original(BIG), &got)?;
    }
    let data: Vec<_> = server
        .tls_handshakes()
        .into_iter()
        .filter(|h| h.after_login)
        .collect();
    check(
        data.len() >= 2 && data.iter().all(|h| h.reused),
        "vsftpd saw every data connection resume the proxy's control session",
        format!("{data:?}"),
    )
}

/// A TLS 1.2 client that asks to renegotiate on the control connection
/// (`openssl s_client`'s `R` command): rustls never renegotiates and answers
/// with its `no_renegotiation` alert, OpenSSL gives up on the connection, and the
/// proxy ends that session with a log line naming the TLS failure; another
/// session is not disturbed.
#[test]
fn a_renegotiation_attempt_does_not_renegotiate() -> Result<()> {
    let Some(fx) = fixture(
        "srvtls-reneg",
        PureFtpdTls::Allowed,
        Pki::server,
        |work, _ca| {
            let pki = work.root().join("pki");
            vec![
                "--tls-cert".into(),
                pki.join("server.pem").display().to_string(),
                "--tls-key".into(),
                pki.join("server.key").display().to_string(),
            ]
        },
    )?
    else {
        return Ok(());
    };
    let ca = fx.work.root().join("pki").join("ca.pem");
    let t = fx.target();
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &t.to_string(),
            "-starttls",
            "ftp",
            "-tls1_2",
            "-CAfile",
            &ca.display().to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(E2eError::io("spawn openssl s_client"))?;
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().expect("piped");
        let _ = stdin.write_all(b"NOOP\r\n");
        std::thread::sleep(std::time::Duration::from_millis(500));
        // `R` on a line of its own: s_client renegotiates.
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let _ = stdin.write_all(b"NOOP\r\n");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(E2eError::io("wait s_client"))? {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child
        .wait_with_output()
        .map_err(E2eError::io("s_client output"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Each handshake's chain is verified and printed once (two lines).
    let asked = text.contains("RENEGOTIATING");
    let renegotiated = text.matches("verify return:1").count() > 2;
    // A transfer by another client still works.
    let tls = ClientTls::explicit(&ca);
    let got = fx.work.local().join("after-reneg.bin");
    curl_ftps_retr(t, Login::User, DataMode::Epsv, &tls, BIG, &got)?.ok()?;
    assert_same_file(&fx.work.original(BIG), &got)?;
    check(
        status.is_some()
            && asked
            && text.contains("no renegotiation")
            && !renegotiated
            && fx
                .proxy_log()
                .contains("TLS on the client control connection failed"),
        "the renegotiation is refused (rustls' no_renegotiation alert, no second handshake) and the proxy ends that session with a log line",
        format!("status {status:?}\n{}\nproxy: {}", tail(&text, 3000), tail(&fx.proxy_log(), 2000)),
    )
}
