//! Why a data connection failed: the proxy's userspace relay logs each cause at
//! notice, with the session id, and these tests read the lines from the real
//! binary's log with a real pure-ftpd behind it: a negotiation no data connection
//! used before the next one replaced it or the session ended, a stranger, the
//! per-session data-connection limit, and an endpoint that refused the connection.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

const LOG_WAIT: Duration = Duration::from_secs(10);

fn login(target: SocketAddr) -> Result<Control> {
    let mut c = Control::connect(target, Duration::from_secs(10))?;
    expect(&mut c, None, 220)?;
    expect(&mut c, Some(&format!("USER {USER}")), 331)?;
    expect(&mut c, Some(&format!("PASS {PASSWORD}")), 230)?;
    Ok(c)
}

/// Sends `line` (or only reads, for `None`) and checks the reply's code.
fn expect(c: &mut Control, line: Option<&str>, code: u16) -> Result<Reply> {
    let reply = match line {
        Some(l) => c.command(l)?,
        None => c.read_reply()?,
    };
    if reply.code != code {
        return Err(E2eError::check(
            format!("{} answered with {code}", line.unwrap_or("the banner")),
            c.transcript().to_string(),
        ));
    }
    Ok(reply)
}

/// The port of a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` reply.
fn pasv_port(reply: &Reply) -> Result<u16> {
    let inner = reply
        .last()
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(i, _)| i)
        .unwrap_or("");
    let n: Vec<u16> = inner
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    match n[..] {
        [_, _, _, _, hi, lo] => Ok(hi * 256 + lo),
        _ => Err(E2eError::check("a 227 reply with an address", reply.last())),
    }
}

/// `PORT` naming `port` on 127.0.0.1.
fn port_cmd(port: u16) -> String {
    format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff)
}

fn wait_line(fx: &Fixture, needle: &str) -> Result<()> {
    fx.proxy()?.wait_log(needle, LOG_WAIT)
}

#[test]
fn unused_negotiations_are_logged_when_replaced_and_when_the_session_ends() -> Result<()> {
    let Some(fx) = Fixture::start("data-unused", false, &[])? else {
        return Ok(());
    };
    let mut c = login(fx.target())?;
    let first = pasv_port(&expect(&mut c, Some("PASV"), 227)?)?;
    let second = pasv_port(&expect(&mut c, Some("PASV"), 227)?)?;
    wait_line(
        &fx,
        &format!("#1 data connection failed: 127.0.0.1 never connected to 127.0.0.1:{first} before a new negotiation replaced the rules"),
    )?;
    expect(&mut c, Some("QUIT"), 221)?;
    wait_line(
        &fx,
        &format!("#1 data connection failed: 127.0.0.1 never connected to 127.0.0.1:{second} before the session ended"),
    )?;
    // A negotiation that was used is not reported.
    let mut c = login(fx.target())?;
    let used = pasv_port(&expect(&mut c, Some("PASV"), 227)?)?;
    let data = TcpStream::connect(("127.0.0.1", used)).map_err(E2eError::io("data connect"))?;
    expect(&mut c, Some("NLST"), 150)?;
    drop(data);
    let _ = c.read_reply();
    let _ = c.command("QUIT");
    fx.proxy()?.wait_log("#2 session ended", LOG_WAIT).ok();
    std::thread::sleep(Duration::from_millis(300));
    if fx
        .proxy_log()
        .contains(&format!("never connected to 127.0.0.1:{used}"))
    {
        return Err(E2eError::check(
            "a used negotiation is not reported as unused",
            tail(&fx.proxy_log(), 3000),
        ));
    }
    Ok(())
}

#[test]
fn a_stranger_is_refused_with_the_session_id() -> Result<()> {
    // `-D 5` (after the fixture's `-D 7`) shows NOTICE and hides INFO: the line is a notice.
    let Some(fx) = Fixture::start("data-stranger", false, &["-D", "5"])? else {
        return Ok(());
    };
    let mut c = login(fx.target())?;
    let port = pasv_port(&expect(&mut c, Some("PASV"), 227)?)?;
    // A real socket from another loopback address (Python binds before connecting).
    let script = format!(
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.2', 0))\ns.settimeout(10)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print(len(s.recv(1)))\nexcept OSError as e:\n    print(type(e).__name__)\n"
    );
    let out = run_ok("python3", &["-c", &script], 30)?;
    let said = String::from_utf8_lossy(&out.stdout);
    if said.trim() != "ConnectionResetError" {
        return Err(E2eError::check("the stranger is reset", said.to_string()));
    }
    wait_line(
        &fx,
        &format!("to 127.0.0.1:{port} refused: a stranger, only 127.0.0.1 may connect"),
    )?;
    let log = fx.proxy_log();
    if !log.lines().any(|l| {
        l.contains("#1 data connection from 127.0.0.2:") && l.contains("refused: a stranger")
    }) {
        return Err(E2eError::check(
            "the refusal names the session and the stranger",
            tail(&log, 3000),
        ));
    }
    if log.contains("passive: client to server port") {
        return Err(E2eError::check(
            "-D 5 hides the INFO line of the negotiation (so the refusal is a notice)",
            tail(&log, 3000),
        ));
    }
    Ok(())
}

#[test]
fn the_per_session_limit_is_logged() -> Result<()> {
    let Some(fx) = Fixture::start("data-limit", false, &["--relay-per-session", "1"])? else {
        return Ok(());
    };
    let mut c = login(fx.target())?;
    // Active mode: the test is the client's data port. The first data connection is
    // made by the test itself from the server's address (127.0.0.1, as pure-ftpd's)
    // and carries no transfer, so it stays in progress: a finished one would stop
    // counting once its 226 is relayed.
    let first = TcpListener::bind("127.0.0.1:0").map_err(E2eError::io("bind"))?;
    let first_port = first
        .local_addr()
        .map_err(E2eError::io("local_addr"))?
        .port();
    expect(&mut c, Some(&port_cmd(first_port)), 200)?;
    let needle = format!("active: server to client port {first_port} via port ");
    wait_line(&fx, &needle)?;
    let log = fx.proxy_log();
    let relay_port: u16 = log
        .lines()
        .find_map(|l| l.split_once(needle.as_str()).map(|(_, p)| p.trim()))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| E2eError::check("the proxy port in the log", tail(&log, 2000)))?;
    let _as_server = TcpStream::connect(("127.0.0.1", relay_port))
        .map_err(E2eError::io("connect to the proxy port"))?;
    let (_held, _) = first.accept().map_err(E2eError::io("accept"))?;
    let second = TcpListener::bind("127.0.0.1:0").map_err(E2eError::io("bind"))?;
    let second_port = second
        .local_addr()
        .map_err(E2eError::io("local_addr"))?
        .port();
    expect(&mut c, Some(&port_cmd(second_port)), 200)?;
    let _ = c.command("NLST");
    wait_line(
        &fx,
        "refused: data-connection limit reached, the session has 1 in progress (--relay-per-session)",
    )?;
    let log = fx.proxy_log();
    if !log
        .lines()
        .any(|l| l.contains("#1 data connection from 127.0.0.1:") && l.contains("limit reached"))
    {
        return Err(E2eError::check(
            "the refusal names the session",
            tail(&log, 3000),
        ));
    }
    Ok(())
}

#[test]
fn an_endpoint_that_refuses_the_data_connection_is_logged() -> Result<()> {
    let Some(fx) = Fixture::start("data-refused", false, &[])? else {
        return Ok(());
    };
    let mut c = login(fx.target())?;
    // A port nothing listens on: bound, then closed.
    let closed = free_port(IpAddr::from([127, 0, 0, 1]))?;
    expect(&mut c, Some(&port_cmd(closed)), 200)?;
    let _ = c.command("NLST");
    wait_line(
        &fx,
        &format!("data connection failed: 127.0.0.1:{closed} refused it or did not answer: Connection refused"),
    )?;
    if !fx
        .proxy_log()
        .lines()
        .any(|l| l.contains("#1 ") && l.contains(&format!("127.0.0.1:{closed} refused it")))
    {
        return Err(E2eError::check(
            "the failure names the session",
            tail(&fx.proxy_log(), 3000),
        ));
    }
    Ok(())
}
