//! Hostile FTPS peers against the real `ftp-proxy` (reverse mode, pure-ftpd
//! behind it, everything on 127.0.0.1): clients that stop in the middle of a
//! TLS handshake on the control or on a `PROT P` data connection, flood
//! garbage records or announce a 16 MiB ClientHello, crowd the `-m` limit with
//! half-open handshakes; servers (a fake one in the test) that answer
//! `AUTH TLS` with `234` and then send plain text or nothing; and SIGTERM in
//! the middle of all that.
//!
//! What each must show: the session ends by the timeout the man page names
//! (`-t`, `--relay-idle-timeout`, `--relay-linger`) or at once with one clear
//! log line, other sessions go on meanwhile, descriptors and memory come back,
//! and the daemon still exits promptly and with status 0.
//!
//! The TLS side of the test's own clients is rustls (the proxy's own library),
//! so that a handshake can be stopped at any byte.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ftp_proxy_tests::e2e::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long a test waits for one reply, at most.
const REPLY_WAIT: Duration = Duration::from_secs(20);

fn check(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::check(what, detail))
    }
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Waits up to `limit` for the proxy's descriptors to come back to `baseline`.
fn fds_back_to(pid: u32, baseline: usize, limit: Duration, log: impl Fn() -> String) -> Result<()> {
    wait_for(
        &format!("the proxy's descriptors back to {baseline}"),
        limit,
        || Ok((fd_count(pid) <= baseline).then_some(())),
        || format!("now {}\n{}", fd_count(pid), tail(&log(), 3000)),
    )
}

/// Runs `body`; on failure prints the tail of the proxy's log (the work
/// directory, and with it the log file, goes when the fixture drops).
fn with_log(fx: &Fixture, body: impl FnOnce() -> Result<()>) -> Result<()> {
    let r = body();
    if r.is_err() {
        eprintln!("--- proxy log ---\n{}", tail(&fx.proxy_log(), 8000));
    }
    r
}

/// Lines of `log` containing `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A small xorshift generator: garbage that differs from record to record.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// The first bytes of a TLS 1.2-style ClientHello record that announces
/// `body` bytes of record and never sends them all: a handshake stopped
/// halfway.
fn partial_client_hello() -> Vec<u8> {
    let mut v = vec![0x16, 0x03, 0x01, 0x02, 0x00]; // handshake record, 512 bytes
    v.extend([0x01, 0x00, 0x01, 0xfc]); // ClientHello, 508 bytes
    v.extend([0x03, 0x03]); // legacy_version
    v.extend([0x5a; 32]); // random
    v
}

/// Reads one reply (multi-line replies joined) from any byte stream.
fn read_reply(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<(u16, String)> {
    let mut text = String::new();
    let mut first: Option<u16> = None;
    for _ in 0..1000 {
        let line = loop {
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = buf.drain(..=i).collect();
                break String::from_utf8_lossy(&l).trim_end().to_string();
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return Err(E2eError::check("a reply, not EOF", text)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(E2eError::check(
                        "a reply line",
                        format!("{e} after {text:?}"),
                    ))
                }
            }
        };
        text.push_str(&line);
        text.push('\n');
        let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
        let sep = line.as_bytes().get(3).copied();
        match (first, code) {
            (None, Some(c)) if sep == Some(b'-') => first = Some(c),
            (None, Some(c)) => return Ok((c, text)),
            (Some(f), Some(c)) if c == f && sep != Some(b'-') => return Ok((c, text)),
            (None, None) => return Err(E2eError::check("a reply line with a code", text)),
            _ => {}
        }
    }
    Err(E2eError::check("a reply of at most 1000 lines", text))
}

/// The test's TLS client configuration: the test CA, TLS 1.3 or 1.2, and a
/// session store shared by the control and data connections made from it.
fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| E2eError::check("the test CA parses", e.to_string()))?;
    roots.add_parsable_certificates(certs);
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| E2eError::check("a rustls client configuration", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tls_client(config: &Arc<ClientConfig>) -> Result<ClientConnection> {
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    ClientConnection::new(config.clone(), name)
        .map_err(|e| E2eError::check("a rustls client connection", e.to_string()))
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(E2eError::io(format!("connect to {addr}")))?;
    s.set_read_timeout(Some(REPLY_WAIT))
        .map_err(E2eError::io("set read timeout"))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(E2eError::io("set write timeout"))?;
    Ok(s)
}

/// A plain control connection that has sent `AUTH TLS` and read the `234`:
/// what follows must be the client's ClientHello.
fn after_auth(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = connect(addr)?;
    let mut buf = Vec::new();
    let (code, text) = read_reply(&mut s, &mut buf)?;
    check(code == 220, "the greeting", text)?;
    s.write_all(b"AUTH TLS\r\n")
        .map_err(E2eError::io("send AUTH TLS"))?;
    let (code, text) = read_reply(&mut s, &mut buf)?;
    check(code == 234, "234 to AUTH TLS", text)?;
    Ok(s)
}

/// Waits up to `limit` for the peer to close `s` (EOF or reset); how long it took.
fn closed_within(s: &mut TcpStream, limit: Duration, what: &str) -> Result<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(E2eError::check(
                format!("{what}: closed by the proxy within {limit:?}"),
                "still open",
            ));
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .map_err(E2eError::io("set read timeout"))?;
        match s.read(&mut chunk) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(start.elapsed()),
        }
    }
}

/// An FTPS control session of the test's own: `AUTH TLS`, a full handshake,
/// login, `PBSZ 0`, `PROT P`.
struct Ftps {
    ctl: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    config: Arc<ClientConfig>,
}

impl Ftps {
    fn login(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<Ftps> {
        let sock = after_auth(addr)?;
        let mut f = Ftps {
            ctl: StreamOwned::new(tls_client(config)?, sock),
            buf: Vec::new(),
            config: config.clone(),
        };
        f.expect(&format!("USER {USER}"), 331)?;
        f.expect(&format!("PASS {PASSWORD}"), 230)?;
        f.expect("PBSZ 0", 200)?;
        f.expect("PROT P", 200)?;
        f.expect("TYPE I", 200)?;
        Ok(f)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.ctl
            .write_all(format!("{line}\r\n").as_bytes())
            .and_then(|()| self.ctl.flush())
            .map_err(E2eError::io(format!("send {line}")))
    }

    fn reply(&mut self) -> Result<(u16, String)> {
        read_reply(&mut self.ctl, &mut self.buf)
    }

    fn expect(&mut self, line: &str, code: u16) -> Result<String> {
        self.send(line)?;
        let (got, text) = self.reply()?;
        check(got == code, format!("{code} to {line}"), text.clone())?;
        Ok(text)
    }

    /// `EPSV`, and a plain TCP connection to the port it names.
    fn epsv_connect(&mut self) -> Result<TcpStream> {
        let text = self.expect("EPSV", 229)?;
        let port: u16 = text
            .split('|')
            .nth(3)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| E2eError::check("a port in the 229", text.clone()))?;
        connect(SocketAddr::new(LOCALHOST, port))
    }

    /// A full protected download of `name` on a fresh data connection.
    fn retr(&mut self, name: &str) -> Result<Vec<u8>> {
        let data = self.epsv_connect()?;
        self.send(&format!("RETR {name}"))?;
        let mut tls = StreamOwned::new(tls_client(&self.config)?, data);
        let mut got = Vec::new();
        match tls.read_to_end(&mut got) {
            Ok(_) => {}
            // A TLS 1.3 peer may close without close_notify after the last byte.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(E2eError::io(format!("read {name}"))(e)),
        }
        let (code, text) = self.reply()?;
        if code == 150 {
            let (code, text) = self.reply()?;
            check(code == 226, format!("226 after RETR {name}"), text)?;
        } else {
            check(code == 226, format!("150 or 226 after RETR {name}"), text)?;
        }
        Ok(got)
    }
}

/// A protected download by curl, compared with the original: another session
/// still works.
fn curl_round(fx: &Fixture, ca: &Path, mode: FtpsMode, tag: &str) -> Result<()> {
    let tls = match mode {
        FtpsMode::Explicit => ClientTls::explicit(ca),
        FtpsMode::Implicit => ClientTls::implicit(ca),
    };
    let got = fx.work.local().join(format!("{tag}.bin"));
    curl_ftps_retr(fx.target(), Login::User, DataMode::Epsv, &tls, SMALL, &got)?.ok()?;
    assert_same_file(&fx.work.original(SMALL), &got)
}

/// Stalled control handshakes, explicit (after `234`) or implicit (from the
/// connect): one silent, one with half a ClientHello. Both end at `-t 3`
/// (`--login-timeout 0`, so that only `-t` counts), another session works
/// meanwhile, and the descriptors come back.
fn stalled_control_handshakes(mode: FtpsMode) -> Result<()> {
    let (tag, extra): (&str, &[&str]) = match mode {
        FtpsMode::Explicit => (
            "hostile-stall-explicit",
            &["-t", "3", "--login-timeout", "0"],
        ),
        FtpsMode::Implicit => (
            "hostile-stall-implicit",
            &["-t", "3", "--login-timeout", "0", "--tls-implicit"],
        ),
    };
    let Some((fx, ca)) = ftps_fixture(tag, extra)? else {
        return Ok(());
    };
    let pid = fx.proxy()?.pid();
    let baseline = fd_count(pid);
    let open = |partial: bool| -> Result<TcpStream> {
        let mut s = match mode {
            FtpsMode::Explicit => after_auth(fx.target())?,
            FtpsMode::Implicit => connect(fx.target())?,
        };
        if partial {
            s.write_all(&partial_client_hello())
                .map_err(E2eError::io("send half a ClientHello"))?;
        }
        Ok(s)
    };
    let started = Instant::now();
    let mut silent = open(false)?;
    let mut partial = open(true)?;
    curl_round(&fx, &ca, mode, "meanwhile")?;
    let limit = Duration::from_secs(10);
    closed_within(&mut silent, limit, "the silent handshake")?;
    closed_within(&mut partial, limit, "the half ClientHello")?;
    let took = started.elapsed();
    check(
        took >= Duration::from_millis(2500),
        "the stalled sessions lasted until the idle timeout (3 s)",
        format!("{took:?}\n{}", tail(&fx.proxy_log(), 3000)),
    )?;
    // Client and server are idle alike (the server waits for a command the
    // handshake holds back): whichever timer the core checks first names it.
    let timed_out = |log: &str| {
        log.lines()
            .filter(|l| l.contains("session summary") && l.contains("_timeout"))
            .count()
    };
    wait_for(
        "two session summaries that end by the idle timeout",
        Duration::from_secs(2),
        || Ok((timed_out(&fx.proxy_log()) == 2).then_some(())),
        || tail(&fx.proxy_log(), 3000),
    )?;
    fds_back_to(pid, baseline, Duration::from_secs(5), || fx.proxy_log())?;
    curl_round(&fx, &ca, mode, "after")
}

#[test]
fn explicit_auth_then_no_client_hello_ends_at_the_idle_timeout() -> Result<()> {
    stalled_control_handshakes(FtpsMode::Explicit)
}

#[test]
fn implicit_connect_then_no_client_hello_ends_at_the_idle_timeout() -> Result<()> {
    stalled_control_handshakes(FtpsMode::Implicit)
}

/// A `PROT P` data connection whose client connects and never starts its
/// handshake, or stops halfway through its ClientHello: `--relay-idle-timeout 3`
/// resets it, and the server's last word on the transfer reaches the client.
/// A later transfer works, and a stalled data connection left behind by `QUIT`
/// goes with `--relay-linger 2`.
///
/// pure-ftpd answers a download whose data connection was reset with a second
/// `150` (`150 4.003 seconds (measured here), ...`) and then nothing, even
/// straight from a plain client (tried with Python's ftplib, 15 s): the transfer
/// never gets a final reply, so the proxy rightly keeps holding the session's
/// next `EPSV` (ftp-proxy(8): passive commands wait until the server owes
/// nothing). The later transfer therefore runs in a new session.
#[test]
fn prot_p_data_connection_that_never_handshakes() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture(
        "hostile-data-stall",
        &["--relay-idle-timeout", "3", "--relay-linger", "2"],
    )?
    else {
        return Ok(());
    };
    with_log(&fx, || data_stall(&fx, &ca))
}

fn data_stall(fx: &Fixture, ca: &Path) -> Result<()> {
    let pid = fx.proxy()?.pid();
    let baseline = fd_count(pid);
    let config = client_config(ca)?;
    for partial in [false, true] {
        let what = if partial {
            "half a ClientHello"
        } else {
            "no handshake"
        };
        let mut s = Ftps::login(fx.target(), &config)?;
        let mut data = s.epsv_connect()?;
        if partial {
            data.write_all(&partial_client_hello())
                .map_err(E2eError::io("send half a ClientHello"))?;
        }
        s.send(&format!("RETR {BIG}"))?;
        let started = Instant::now();
        let (code, text) = s.reply()?;
        check(code == 150, format!("{what}: 150 to RETR"), text)?;
        let (_, text) = s.reply()?;
        let took = started.elapsed();
        let resets = count(
            &fx.proxy_log(),
            "data connection reset: no data for 3 s (idle)",
        );
        check(
            resets == usize::from(partial) + 1,
            format!("{what}: the proxy reset the stalled data connection as idle"),
            text,
        )?;
        check(
            took >= Duration::from_millis(2500) && took < Duration::from_secs(15),
            format!("{what}: the server's reply came after the relay idle timeout (3 s)"),
            format!("{took:?}"),
        )?;
        closed_within(&mut data, Duration::from_secs(5), what)?;
    }
    let mut s = Ftps::login(fx.target(), &config)?;
    let original = std::fs::read(fx.work.original(BIG)).map_err(E2eError::io("read BIG"))?;
    let got = s.retr(BIG)?;
    check(
        got == original,
        "a transfer after the stalled ones is whole",
        format!("{} of {} bytes", got.len(), original.len()),
    )?;
    // Left behind by the end of the session.
    let mut data = s.epsv_connect()?;
    s.send("QUIT")?;
    let (code, text) = s.reply()?;
    check(code == 221, "221 to QUIT", text)?;
    drop(s);
    let took = closed_within(
        &mut data,
        Duration::from_secs(8),
        "the orphaned data connection",
    )?;
    check(
        took < Duration::from_secs(6),
        "the orphaned data connection went with --relay-linger 2",
        format!("{took:?}"),
    )?;
    fds_back_to(pid, baseline, Duration::from_secs(20), || fx.proxy_log())
}

/// Floods on the control connection: garbage records with valid headers after
/// `AUTH TLS`, a ClientHello that announces 16 MiB, and garbage application
/// data after a complete handshake and login. Each session ends at once with
/// one `TLS on the client control connection failed: ...` line, the proxy's memory
/// stays small, and another session works meanwhile.
#[test]
fn garbage_records_and_a_huge_client_hello_end_only_their_session() -> Result<()> {
    let Some((fx, ca)) = ftps_fixture("hostile-garbage", &[])? else {
        return Ok(());
    };
    let pid = fx.proxy()?.pid();
    let baseline = fd_count(pid);
    let rss_before = rss_kib(pid)?;
    let config = client_config(&ca)?;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut peak = rss_before;
    // Sends `head` then records of `kind` with random payload until the proxy
    // closes or 32 MiB went out; the RSS peak along the way.
    let mut flood = |sock: &mut dyn Write, head: &[u8], kind: u8, peak: &mut u64| -> usize {
        let mut sent = 0;
        if sock.write_all(head).is_err() {
            return sent;
        }
        let mut record = vec![0u8; 5 + 16384];
        record[..5].copy_from_slice(&[kind, 0x03, 0x03, 0x40, 0x00]);
        for i in 0..2048 {
            noise.fill(&mut record[5..]);
            if sock.write_all(&record).is_err() {
                break;
            }
            sent += record.len();
            if i % 64 == 0 {
                *peak = (*peak).max(rss_kib(pid).unwrap_or(0));
            }
        }
        sent
    };
    let mut sessions = 0;
    // 1. Handshake records of noise after 234.
    let mut a = after_auth(fx.target())?;
    let sent_a = flood(&mut a, &[], 0x16, &mut peak);
    closed_within(&mut a, Duration::from_secs(5), "garbage handshake records")?;
    sessions += 1;
    // 2. A ClientHello announcing 16 MiB - 1 bytes, then more "of it".
    let mut b = after_auth(fx.target())?;
    let head = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    let sent_b = flood(&mut b, &head, 0x16, &mut peak);
    closed_within(&mut b, Duration::from_secs(5), "a 16 MiB ClientHello")?;
    sessions += 1;
    // 3. Garbage application data inside an established session.
    let mut c = Ftps::login(fx.target(), &config)?;
    let sent_c = flood(c.ctl.get_mut(), &[], 0x17, &mut peak);
    closed_within(
        c.ctl.get_mut(),
        Duration::from_secs(5),
        "garbage application data",
    )?;
    sessions += 1;
    curl_round(&fx, &ca, FtpsMode::Explicit, "meanwhile")?;
    eprintln!(
        "floods: sent {sent_a}, {sent_b}, {sent_c} bytes before the proxy closed; \
         VmRSS {rss_before} KiB before, peak {peak} KiB"
    );
    let log = fx.proxy_log();
    check(
        count(&log, "TLS on the client control connection failed: ") == sessions,
        format!("one TLS failure line for each of the {sessions} sessions"),
        tail(&log, 4000),
    )?;
    check(
        peak < rss_before + 8 * 1024,
        "the proxy's memory stayed within 8 MiB of its start",
        format!(
            "VmRSS {rss_before} KiB before, peak {peak} KiB; sent {sent_a}, {sent_b}, {sent_c} bytes"
        ),
    )?;
    // Far less than was sent: the proxy stopped reading at the first bad record.
    check(
        sent_a < 8 << 20 && sent_b < 8 << 20 && sent_c < 8 << 20,
        "each flood was cut short by the proxy",
        format!("sent {sent_a}, {sent_b}, {sent_c} bytes"),
    )?;
    fds_back_to(pid, baseline, Duration::from_secs(5), || fx.proxy_log())
}

/// `-m 20` filled with half-open handshakes (`AUTH TLS`, `234`, nothing more),
/// then 180 more clients: each is accepted and closed at once without a byte
/// (ftp-proxy(8): "Further clients are accepted and closed at once"), and once
/// the stalled ones have gone (`-t 3`) a new session is served.
#[test]
fn half_open_handshakes_fill_the_session_limit_then_free_it() -> Result<()> {
    const LIMIT: usize = 20;
    const EXTRA: usize = 180;
    let Some((fx, ca)) = ftps_fixture(
        "hostile-limit",
        &["-m", "20", "-t", "3", "--login-timeout", "0"],
    )?
    else {
        return Ok(());
    };
    let pid = fx.proxy()?.pid();
    let baseline = fd_count(pid);
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..LIMIT {
        stalled.push(after_auth(fx.target())?);
    }
    let mut refused = 0;
    for i in 0..EXTRA {
        let mut s = connect(fx.target())?;
        let mut first = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(E2eError::io("set read timeout"))?;
        match s.read(&mut first) {
            Ok(0) => refused += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => refused += 1,
            Ok(n) => {
                return Err(E2eError::check(
                    format!("client {i} past the limit closed without a reply"),
                    String::from_utf8_lossy(&first[..n]).into_owned(),
                ))
            }
            Err(e) => {
                return Err(E2eError::check(
                    format!("client {i} past the limit closed at once"),
                    e.to_string(),
                ))
            }
        }
        if started.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    check(
        refused >= 20,
        "clients past the limit were refused while the stalled ones held it",
        format!("{refused} refused"),
    )?;
    let log = fx.proxy_log();
    check(
        count(&log, "client limit (20) reached") == refused,
        "one `client limit (20) reached` line per refused client",
        tail(&log, 3000),
    )?;
    for (i, s) in stalled.iter_mut().enumerate() {
        closed_within(s, Duration::from_secs(10), &format!("stalled session {i}"))?;
    }
    fds_back_to(pid, baseline, Duration::from_secs(5), || fx.proxy_log())?;
    curl_round(&fx, &ca, FtpsMode::Explicit, "after")
}

/// What the fake FTPS server does after its `234` (or, implicit, at all).
#[derive(Debug, Clone, Copy)]
enum AfterAuth {
    /// Plain FTP where the ServerHello should be.
    Plaintext,
    /// Nothing: the handshake never completes.
    Silence,
    /// Implicit FTPS (`--server-tls implicit`): nothing at all after the
    /// accept, so the proxy's ClientHello is never answered.
    ImplicitSilence,
}

/// A fake FTP server on 127.0.0.1: greets, answers `AUTH TLS` with `234`, then
/// does `after` and holds the connection until told to stop (or 30 s).
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(after: AfterAuth) -> Result<FakeServer> {
        let l = TcpListener::bind((LOCALHOST, 0)).map_err(E2eError::io("bind fake server"))?;
        let addr = l
            .local_addr()
            .map_err(E2eError::io("fake server address"))?;
        l.set_nonblocking(true)
            .map_err(E2eError::io("nonblocking fake server"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        if let AfterAuth::ImplicitSilence = after {
                            held.push(s);
                            continue;
                        }
                        let _ = s.write_all(b"220 fake FTPS server\r\n");
                        let mut buf = Vec::new();
                        if read_reply_line(&mut s, &mut buf).is_some_and(|l| l.starts_with("AUTH"))
                        {
                            let _ = s.write_all(b"234 go ahead\r\n");
                            if let AfterAuth::Plaintext = after {
                                let _ = s.write_all(b"220 plain text where TLS should be\r\n");
                            }
                        }
                        held.push(s);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
            for s in held {
                let _ = s.shutdown(Shutdown::Both);
            }
        });
        Ok(FakeServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One line from a peer, without its CRLF.
fn read_reply_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    for _ in 0..100 {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = buf.drain(..=i).collect();
            return Some(String::from_utf8_lossy(&l).trim_end().to_string());
        }
        let mut chunk = [0u8; 512];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    None
}

/// `--server-tls explicit` towards a server that answers `AUTH TLS` with
/// `234` and then sends plain text, or nothing, and `--server-tls implicit`
/// towards one that never answers the ClientHello: the plain client in front
/// gets a `421` and the log says why, within a bounded time (`-t 3`). A
/// certificate for another name is tests/tests/e2e_ftps_server.rs's
/// `unverifiable_servers_are_refused`.
#[test]
fn servers_that_break_their_tls_handshake_get_the_client_a_421() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("hostile-server-tls")?;
    let pki = Pki::create(&work.root().join("pki"))?;
    let ca = pki.ca().display().to_string();
    for (after, limit, line) in [
        (
            AfterAuth::Plaintext,
            Duration::from_secs(3),
            "TLS on the server control connection failed",
        ),
        (
            AfterAuth::Silence,
            Duration::from_secs(10),
            "did not finish securing the connection in time",
        ),
        (
            AfterAuth::ImplicitSilence,
            Duration::from_secs(10),
            "did not finish securing the connection in time",
        ),
    ] {
        let server = FakeServer::start(after)?;
        let mode = match after {
            AfterAuth::ImplicitSilence => "implicit",
            _ => "explicit",
        };
        let proxy = ProxyProcess::start(
            LOCALHOST,
            server.addr,
            &["--server-tls", mode, "--server-tls-ca", &ca, "-t", "3"],
            &work.root().join(format!("proxy-{after:?}.log")),
        )?;
        let started = Instant::now();
        let mut s = connect(proxy.addr())?;
        let mut buf = Vec::new();
        // The server's greeting is relayed at once (the client's own TLS
        // setup overlaps the server's); the 421 follows it.
        let mut got = read_reply(&mut s, &mut buf);
        if matches!(got, Ok((220, _))) {
            got = read_reply(&mut s, &mut buf);
        }
        let took = started.elapsed();
        let log = proxy.log();
        let (code, text) = got.map_err(|e| {
            E2eError::check(
                format!("{after:?}: a reply"),
                format!("{e}\n{}", tail(&log, 3000)),
            )
        })?;
        check(
            code == 421,
            format!("{after:?}: 421 to the client"),
            format!("{text}{}", tail(&log, 3000)),
        )?;
        check(
            took < limit,
            format!("{after:?}: the 421 within {limit:?}"),
            format!("{took:?}"),
        )?;
        proxy.wait_log(line, Duration::from_secs(2))?;
        closed_within(&mut s, Duration::from_secs(3), "the client after the 421")?;
    }
    Ok(())
}

/// SIGTERM with half-done handshakes (after `234`, and half a ClientHello)
/// and a `PROT P` download stalled by its reader: the daemon exits within
/// 5 s with status 0 and says `exiting on signal 15`, as without TLS
/// (tests/tests/e2e_signals.rs).
#[test]
fn sigterm_with_half_done_handshakes_and_a_prot_p_transfer() -> Result<()> {
    let Some((mut fx, ca)) = ftps_fixture("hostile-sigterm", &[])? else {
        return Ok(());
    };
    let config = client_config(&ca)?;
    let _silent = after_auth(fx.target())?;
    let mut partial = after_auth(fx.target())?;
    partial
        .write_all(&partial_client_hello())
        .map_err(E2eError::io("send half a ClientHello"))?;
    let mut s = Ftps::login(fx.target(), &config)?;
    let data = s.epsv_connect()?;
    s.send(&format!("RETR {BIG}"))?;
    let mut tls = StreamOwned::new(tls_client(&config)?, data);
    let mut first = [0u8; 4096];
    tls.read_exact(&mut first)
        .map_err(E2eError::io("the first bytes of the download"))?;
    // The reader stops here: the relay fills up and waits.
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = fx
        .proxy_mut()?
        .stop_with(libc::SIGTERM, Duration::from_secs(5))?;
    let took = started.elapsed();
    let log = fx.proxy_log();
    check(
        status.code() == Some(0),
        format!("exit status 0 after SIGTERM, got {status}"),
        tail(&log, 3000),
    )?;
    check(
        log.contains("exiting on signal 15"),
        "log line `exiting on signal 15`",
        tail(&log, 3000),
    )?;
    check(
        took < Duration::from_secs(5),
        "the exit within 5 s",
        format!("{took:?}"),
    )?;
    check(
        fx.proxy()?.leftovers().is_empty(),
        "no process of the proxy's group left",
        format!("{:?}", fx.proxy()?.leftovers()),
    )
}
