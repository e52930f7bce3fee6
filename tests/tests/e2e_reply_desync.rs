//! A server reply the client shapes must not become the answer to a PASV.
//!
//! pure-ftpd's `STAT -1` lists file names inside its multi-line 213 reply. A file
//! named `213 a` ends that reply early for anyone reading it line by line, and a
//! file named `227 Entering Passive Mode (127,0,0,1,p1,p2)` then looks like the
//! answer to a PASV the client pipelined behind the STAT. Taken as that answer, the
//! proxy would open a data path to any port of the server host. These scenarios put
//! such files on a real pure-ftpd and check that the proxy ends the session instead,
//! that it never logs a passive mapping to the forged port, and that a listener on
//! that port never sees a connection, whatever the read boundaries: after a
//! multi-line reply the relay serves passive transfers joined (the server connects
//! to the proxy) and takes no port from a server reply (docs/behavior.md).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ftp_proxy_tests::e2e::*;

/// Creates an empty file in the user's directory.
fn touch(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, b"").map_err(E2eError::io(format!("create {}", path.display())))
}

/// The internal service the forged 227 points at: a listener on the server's host.
fn internal_service(fx: &FtpServer) -> Result<(TcpListener, u16)> {
    let ip = fx.addr().ip();
    let l = TcpListener::bind(SocketAddr::new(ip, 0))
        .map_err(E2eError::io("bind the internal service"))?;
    l.set_nonblocking(true)
        .map_err(E2eError::io("nonblocking listener"))?;
    let port = l.local_addr().map_err(E2eError::io("local_addr"))?.port();
    Ok((l, port))
}

/// Fails if the internal service has seen a connection.
fn no_connection(service: &TcpListener) -> Result<()> {
    match service.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Ok((_, from)) => Err(E2eError::check(
            "no connection to the internal service",
            format!("one came from {from}"),
        )),
        Err(e) => Err(E2eError::io("accept on the internal service")(e)),
    }
}

/// Logs in, sends `STAT -1` and `PASV` in one write, and checks that the session
/// ends without a passive mapping to `port` and without a connection to `service`.
fn attack(proxy: &ProxyProcess, service: &TcpListener, port: u16) -> Result<()> {
    let mut c = Control::connect(proxy.addr(), Duration::from_secs(10))?;
    let banner = c.read_reply()?;
    if banner.code != 220 {
        return Err(E2eError::check("a 220 banner", c.transcript().to_string()));
    }
    if c.command(&format!("USER {USER}"))?.code != 331
        || c.command(&format!("PASS {PASSWORD}"))?.code != 230
    {
        return Err(E2eError::check("login", c.transcript().to_string()));
    }
    c.send_raw(b"STAT -1\r\nPASV\r\n")?;
    let (got, _) = c.expect_closed(Duration::from_secs(20))?;
    let got = String::from_utf8_lossy(&got).into_owned();
    // The listing really reached the early end: the scenario is the real attack.
    if !got.contains("\r\n213 a\r\n") {
        return Err(E2eError::check(
            "pure-ftpd listed the file `213 a` as a line of its STAT reply",
            got,
        ));
    }
    let (p1, p2) = (port >> 8, port & 0xff);
    if got.contains(&format!(",{p1},{p2})")) || got.contains(&format!("|||{port}|)")) {
        return Err(E2eError::check(
            "no 227/229 naming the forged port reached the client",
            got,
        ));
    }
    // Whatever 227 the client got names the proxy's own port: try it. It must
    // not lead to the internal service.
    for line in got.lines().filter(|l| l.starts_with("227 ")) {
        if let Some(addr) = parse_227(line) {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        }
    }
    thread::sleep(Duration::from_millis(200));
    let log = proxy.log();
    if log.contains(&format!("passive: client to server port {port} ")) {
        return Err(E2eError::check(
            format!("no passive mapping to the forged port {port}"),
            tail(&log, 4000),
        ));
    }
    if !log.contains("server reply answers no command") {
        return Err(E2eError::check(
            "the session ended as `server reply answers no command`",
            tail(&log, 4000),
        ));
    }
    no_connection(service)
}

#[test]
fn forged_227_right_after_the_early_end() -> Result<()> {
    let Some(fx) = Fixture::start("desync-same", false, &[])? else {
        return Ok(());
    };
    let (service, port) = internal_service(&fx.server)?;
    touch(&fx.work.user(), "213 a")?;
    touch(
        &fx.work.user(),
        &format!(
            "227 Entering Passive Mode (127,0,0,1,{},{})",
            port >> 8,
            port & 0xff
        ),
    )?;
    attack(fx.proxy()?, &service, port)
}

/// The address of a 227 reply line.
fn parse_227(line: &str) -> Option<SocketAddr> {
    let inner = line.get(line.find('(')? + 1..line.find(')')?)?;
    let v: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, p1, p2] = v[..] else {
        return None;
    };
    let ip = std::net::Ipv4Addr::new(a as u8, b as u8, c as u8, d as u8);
    Some(SocketAddr::new(ip.into(), p1 * 256 + p2))
}

/// The forged name as pure-ftpd lists it.
fn forged_name(port: u16) -> String {
    format!(
        "227 Entering Passive Mode (127,0,0,1,{},{})",
        port >> 8,
        port & 0xff
    )
}

/// A one-connection TCP forwarder between the proxy and pure-ftpd that passes the
/// server's bytes up to and including each of `markers` (in turn) at once and the
/// rest `pause` later, so that what follows a marker reaches the proxy in a later read.
fn splitting_forwarder(
    server: SocketAddr,
    markers: Vec<Vec<u8>>,
    pause: Duration,
) -> Result<SocketAddr> {
    let l = TcpListener::bind((server.ip(), 0)).map_err(E2eError::io("bind forwarder"))?;
    let addr = l.local_addr().map_err(E2eError::io("forwarder address"))?;
    l.set_nonblocking(true)
        .map_err(E2eError::io("nonblocking forwarder"))?;
    thread::spawn(move || -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        };
        client.set_nonblocking(false)?;
        let mut upstream = TcpStream::connect(server)?;
        upstream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
        c2.set_read_timeout(Some(Duration::from_secs(30)))?;
        thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut u2);
            let _ = u2.shutdown(Shutdown::Write);
        });
        let mut markers = markers.into_iter();
        let mut marker = markers.next();
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = upstream.read(&mut buf)?;
            if n == 0 {
                client.write_all(&pending)?;
                return client.shutdown(Shutdown::Write);
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(m) = &marker {
                let Some(at) = pending.windows(m.len()).position(|w| w == &m[..]) else {
                    break;
                };
                let rest = pending.split_off(at + m.len());
                client.write_all(&pending)?;
                thread::sleep(pause);
                pending = rest;
                marker = markers.next();
            }
            let Some(marker) = &marker else {
                client.write_all(&pending)?;
                pending.clear();
                continue;
            };
            // Keep only a tail that could be the start of the marker.
            let keep = (1..marker.len().min(pending.len() + 1))
                .rev()
                .find(|&k| pending.ends_with(&marker[..k]))
                .unwrap_or(0);
            let send: Vec<u8> = pending.drain(..pending.len() - keep).collect();
            client.write_all(&send)?;
        }
    });
    Ok(addr)
}

/// Where the forwarder cuts pure-ftpd's listing before passing the rest on.
#[derive(Clone, Copy)]
enum Cut {
    /// After the early end (`213 a`): the forged line comes with the rest.
    AfterEarlyEnd,
    /// After the early end and again after the forged line, which so arrives alone.
    AroundForged,
}

/// The attack through a forwarder that cuts the listing as `cut` says, against a
/// proxy started with `proxy_args`. Returns the proxy's log, or `None` when the
/// scenario cannot run (not root).
fn cut_attack(tag: &str, cut: Cut, proxy_args: &[&str]) -> Result<Option<String>> {
    if !preflight()? {
        return Ok(None);
    }
    let work = Workdir::new(tag)?;
    let server = FtpServer::start(&work, loopback(false))?;
    let (service, port) = internal_service(&server)?;
    // An ephemeral port, above pure-ftpd's passive range: the forged port must be
    // one that `--server-data-ports` would refuse.
    if (PASSIVE_RANGE.0..=PASSIVE_RANGE.1).contains(&port) {
        return Err(E2eError::check(
            "a port outside the passive range",
            port.to_string(),
        ));
    }
    touch(&work.user(), "213 a")?;
    let forged = forged_name(port);
    touch(&work.user(), &forged)?;
    // pure-ftpd writes the listing at once; the forwarder makes the proxy read what
    // follows each cut only after it has acted on what came before.
    let mut markers = vec![b"213 a\r\n".to_vec()];
    if let Cut::AroundForged = cut {
        markers.push(format!("{forged}\r\n").into_bytes());
    }
    let fwd = splitting_forwarder(server.addr(), markers, Duration::from_millis(300))?;
    let proxy = ProxyProcess::start(
        loopback(false),
        fwd,
        proxy_args,
        &work.root().join("ftp-proxy.log"),
    )?;
    attack(&proxy, &service, port)?;
    Ok(Some(proxy.log()))
}

#[test]
fn forged_227_in_a_later_read_than_the_early_end() -> Result<()> {
    let Some(log) = cut_attack("desync-split", Cut::AfterEarlyEnd, &[])? else {
        return Ok(());
    };
    if !log.contains("passive transfer served joined") {
        return Err(E2eError::check(
            "the PASV after the listing was served joined, not asked of the server",
            tail(&log, 4000),
        ));
    }
    Ok(())
}

#[test]
fn forged_227_alone_in_a_read_without_server_data_ports() -> Result<()> {
    // The review's read-boundary case, with the default options: the forged line is
    // the whole of a read, after the reply seemed to end and before the rest of the
    // listing. No server PASV is ever sent, so it can answer nothing that opens a port.
    cut_attack("desync-alone-default", Cut::AroundForged, &[]).map(drop)
}

#[test]
fn a_421_inside_a_listing_ends_the_session_with_nothing_after_it() -> Result<()> {
    // The review's second forgery: `421-zzz` after an early end opened a multi-line
    // reply in which nothing was checked. A 421 now ends the session.
    let Some(fx) = Fixture::start("desync-421", false, &[])? else {
        return Ok(());
    };
    let (service, port) = internal_service(&fx.server)?;
    touch(&fx.work.user(), "213 a")?;
    touch(&fx.work.user(), "421-zzz")?;
    touch(&fx.work.user(), "421 y")?;
    touch(&fx.work.user(), &forged_name(port))?;
    let proxy = fx.proxy()?;
    let mut c = Control::connect(proxy.addr(), Duration::from_secs(10))?;
    c.read_reply()?;
    c.command(&format!("USER {USER}"))?;
    c.command(&format!("PASS {PASSWORD}"))?;
    c.send_raw(b"STAT -1\r\nstat -1\r\nPASV\r\n")?;
    let (got, _) = c.expect_closed(Duration::from_secs(20))?;
    let got = String::from_utf8_lossy(&got).into_owned();
    // pure-ftpd sorts `421 y` before `421-zzz`: the single-line 421 ends it all,
    // and nothing after it (the rest of the listing, the PASV's answer) follows.
    if !got.ends_with("\r\n421 y\r\n") {
        return Err(E2eError::check(
            "the listing up to the 421, and nothing after it",
            got,
        ));
    }
    let log = proxy.log();
    if !log.contains("server closing connection (421)") || log.contains(&format!("port {port} ")) {
        return Err(E2eError::check(
            "the session ended on the 421, with no mapping to the forged port",
            tail(&log, 4000),
        ));
    }
    no_connection(&service)
}

#[test]
fn forged_227_far_behind_the_early_end() -> Result<()> {
    let Some(fx) = Fixture::start("desync-later", false, &[])? else {
        return Ok(());
    };
    let (service, port) = internal_service(&fx.server)?;
    touch(&fx.work.user(), "213 a")?;
    // About 150 KB of names that sort between `213 a` and `227 ...`: the forged line
    // comes many reads after the early end, behind text that answers no command.
    for n in 0..700 {
        touch(
            &fx.work.user(),
            &format!("22 fill {n:04} {}", "x".repeat(200)),
        )?;
    }
    touch(
        &fx.work.user(),
        &format!(
            "227 Entering Passive Mode (127,0,0,1,{},{})",
            port >> 8,
            port & 0xff
        ),
    )?;
    attack(fx.proxy()?, &service, port)
}

#[test]
fn a_pasv_pipelined_behind_an_honest_stat_still_works() -> Result<()> {
    // An honest listing (names indented) reaches the client, and the transfer after
    // it works: served joined through the relay (pure-ftpd connects to the proxy).
    let Some(fx) = Fixture::start("desync-honest", false, &[])? else {
        return Ok(());
    };
    let mut c = Control::connect(fx.target(), Duration::from_secs(10))?;
    c.read_reply()?;
    c.command(&format!("USER {USER}"))?;
    c.command(&format!("PASS {PASSWORD}"))?;
    c.command("TYPE I")?;
    c.send_raw(b"STAT -1\r\nPASV\r\n")?;
    let stat = c.read_reply()?;
    let pasv = c.read_reply()?;
    if stat.code != 213 || pasv.code != 227 || !c.transcript().contains(SMALL) {
        return Err(E2eError::check(
            "213 listing the files, then 227",
            c.transcript().to_string(),
        ));
    }
    let addr = parse_227(pasv.last())
        .ok_or_else(|| E2eError::check("a parsable 227", pasv.last().to_string()))?;
    let mut data = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(E2eError::io("connect to the proxy's data port"))?;
    data.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(E2eError::io("read timeout"))?;
    if c.command(&format!("RETR {SMALL}"))?.code != 150 {
        return Err(E2eError::check("150 to RETR", c.transcript().to_string()));
    }
    let mut got = Vec::new();
    data.read_to_end(&mut got)
        .map_err(E2eError::io("read the data connection"))?;
    let want = fs::read(fx.work.original(SMALL)).map_err(E2eError::io("read original"))?;
    if got != want || c.read_reply()?.code != 226 {
        return Err(E2eError::check(
            format!("the file ({} bytes) and 226", want.len()),
            format!("{} bytes; {}", got.len(), c.transcript()),
        ));
    }
    if fx.proxy().is_ok() && !fx.proxy_log().contains("passive transfer served joined") {
        return Err(E2eError::check(
            "the transfer was joined",
            tail(&fx.proxy_log(), 3000),
        ));
    }
    Ok(())
}

#[test]
fn server_data_ports_admit_the_passive_range_and_refuse_the_rest() -> Result<()> {
    // pure-ftpd's passive range is allowed: transfers work.
    let range = format!("{}:{}", PASSIVE_RANGE.0, PASSIVE_RANGE.1);
    let Some(fx) = Fixture::start("data-ports-ok", false, &["--server-data-ports", &range])? else {
        return Ok(());
    };
    let out = fx.work.local().join(SMALL);
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        curl_retr(fx.target(), Login::User, mode, SMALL, &out)?;
        assert_same_file(&fx.work.original(SMALL), &out)?;
    }
    // A range that leaves it out: PASV and EPSV get the proxy's 425.
    let Some(fx) = Fixture::start(
        "data-ports-refused",
        false,
        &["--server-data-ports", "1024-2048"],
    )?
    else {
        return Ok(());
    };
    let mut c = Control::connect(fx.target(), Duration::from_secs(10))?;
    c.read_reply()?;
    c.command(&format!("USER {USER}"))?;
    c.command(&format!("PASS {PASSWORD}"))?;
    for cmd in ["PASV", "EPSV"] {
        if c.command(cmd)?.code != 425 {
            return Err(E2eError::check(
                format!("425 to {cmd}"),
                c.transcript().to_string(),
            ));
        }
    }
    if c.command("NOOP")?.code != 200 {
        return Err(E2eError::check(
            "the session goes on",
            c.transcript().to_string(),
        ));
    }
    Ok(())
}

#[test]
fn server_data_ports_refuse_a_forged_227_that_arrives_alone() -> Result<()> {
    // The forged line in a read of its own, after the PASV went out and before the
    // rest of the listing. Restricted to pure-ftpd's passive range, the proxy refuses
    // the forged port all the same.
    let range = format!("{}:{}", PASSIVE_RANGE.0, PASSIVE_RANGE.1);
    cut_attack(
        "desync-alone",
        Cut::AroundForged,
        &["--server-data-ports", &range],
    )
    .map(drop)
}
