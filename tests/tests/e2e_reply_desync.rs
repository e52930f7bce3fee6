//! A server reply the client shapes must not become the answer to a PASV.
//!
//! pure-ftpd's `STAT -1` lists file names inside its multi-line 213 reply. A file
//! named `213 a` ends that reply early for anyone reading it line by line, and a
//! file named `227 Entering Passive Mode (127,0,0,1,p1,p2)` then looks like the
//! answer to a PASV the client pipelined behind the STAT. Taken as that answer, the
//! proxy would open a data path to any port of the server host. These scenarios put
//! such files on a real pure-ftpd and check that the proxy ends the session instead,
//! that it never logs a passive mapping to the forged port, and that a listener on
//! that port never sees a connection.

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
    if got.contains(&format!(",{p1},{p2})")) || got.lines().any(|l| l.starts_with("227 ")) {
        return Err(E2eError::check("no 227 reached the client", got));
    }
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
    match service.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Ok((_, from)) => Err(E2eError::check(
            "no connection to the internal service",
            format!("one came from {from}"),
        )),
        Err(e) => Err(E2eError::io("accept on the internal service")(e)),
    }
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

#[test]
fn forged_227_in_a_later_read_than_the_early_end() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("desync-split")?;
    let server = FtpServer::start(&work, loopback(false))?;
    let (service, port) = internal_service(&server)?;
    touch(&work.user(), "213 a")?;
    touch(&work.user(), &forged_name(port))?;
    // pure-ftpd writes the listing at once; the forwarder makes the proxy read the
    // forged line and the rest only after it has sent the PASV on.
    let fwd = splitting_forwarder(
        server.addr(),
        vec![b"213 a\r\n".to_vec()],
        Duration::from_millis(300),
    )?;
    let proxy = ProxyProcess::start(
        loopback(false),
        fwd,
        &[],
        &work.root().join("ftp-proxy.log"),
    )?;
    attack(&proxy, &service, port)?;
    let log = proxy.log();
    if !log.contains("is followed by more server output") {
        return Err(E2eError::check(
            "the forged 227 was refused for the listing behind it",
            tail(&log, 4000),
        ));
    }
    Ok(())
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
    let Some(fx) = Fixture::start("desync-honest", false, &[])? else {
        return Ok(());
    };
    let mut c = Control::connect(fx.target(), Duration::from_secs(10))?;
    c.read_reply()?;
    c.command(&format!("USER {USER}"))?;
    c.command(&format!("PASS {PASSWORD}"))?;
    c.send_raw(b"STAT -1\r\nPASV\r\n")?;
    let stat = c.read_reply()?;
    let pasv = c.read_reply()?;
    if stat.code != 213 || pasv.code != 227 {
        return Err(E2eError::check("213 then 227", c.transcript().to_string()));
    }
    let port = pasv
        .last()
        .rsplit(',')
        .take(2)
        .map(|s| {
            s.trim_end_matches(|ch: char| !ch.is_ascii_digit())
                .parse::<u16>()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| E2eError::check("a parsable 227", pasv.last().to_string()))?;
    fx.check_passive_port(port[1] * 256 + port[0])
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
    // The one order the desync checks cannot see: the forged line in a read of its
    // own, after the PASV went out and before the rest of the listing. Restricted to
    // pure-ftpd's passive range, the proxy refuses the forged port all the same.
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("desync-alone")?;
    let server = FtpServer::start(&work, loopback(false))?;
    let mut tries = 0;
    let (service, port) = loop {
        let (l, p) = internal_service(&server)?;
        if !(PASSIVE_RANGE.0..=PASSIVE_RANGE.1).contains(&p) {
            break (l, p);
        }
        tries += 1;
        if tries > 20 {
            return Err(E2eError::check("a port outside the passive range", ""));
        }
    };
    touch(&work.user(), "213 a")?;
    let forged = forged_name(port);
    touch(&work.user(), &forged)?;
    let fwd = splitting_forwarder(
        server.addr(),
        vec![b"213 a\r\n".to_vec(), format!("{forged}\r\n").into_bytes()],
        Duration::from_millis(300),
    )?;
    let range = format!("{}:{}", PASSIVE_RANGE.0, PASSIVE_RANGE.1);
    let proxy = ProxyProcess::start(
        loopback(false),
        fwd,
        &["--server-data-ports", &range],
        &work.root().join("ftp-proxy.log"),
    )?;
    attack(&proxy, &service, port)
}
