//! A slow but live reader must never be cut by the relay's idle or linger timer.
//!
//! The relay hands a download to the kernel as fast as the client's socket takes it:
//! the proxy's send buffer and the client's receive buffer hold megabytes, so the
//! relay itself may move no byte for seconds while the client is still reading that
//! backlog. Once the server has finished, the pair is half-closed and the short
//! `--relay-linger` applies. Judged by the relay's own counters alone, the pair looks
//! idle and is reset, and the reset throws away what the kernel still held for the
//! client: the download arrives short. Here a real pure-ftpd serves 10 MiB through
//! the real binary with both timers at 1 s, and a client reads it at about 2.5 MB/s.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ftp_proxy_tests::e2e::*;

fn expect(c: &mut Control, line: &str, code: u16) -> Result<Reply> {
    let reply = c.command(line)?;
    if reply.code != code {
        return Err(E2eError::check(
            format!("{line} answered with {code}"),
            c.transcript().to_string(),
        ));
    }
    Ok(reply)
}

/// The port of a `229 Entering Extended Passive Mode (|||port|)` reply.
fn epsv_port(reply: &Reply) -> Result<u16> {
    reply
        .last()
        .split('|')
        .nth(3)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| E2eError::check("a 229 reply with a port", reply.last()))
}

#[test]
fn slow_reader_gets_the_whole_download_with_short_relay_timers() -> Result<()> {
    let Some(fx) = Fixture::start(
        "slow-reader",
        false,
        &["--relay-idle-timeout", "1", "--relay-linger", "1"],
    )?
    else {
        return Ok(());
    };
    let mut c = Control::connect(fx.target(), Duration::from_secs(30))?;
    if c.read_reply()?.code != 220 {
        return Err(E2eError::check("a 220 banner", c.transcript().to_string()));
    }
    expect(&mut c, &format!("USER {USER}"), 331)?;
    expect(&mut c, &format!("PASS {PASSWORD}"), 230)?;
    expect(&mut c, "TYPE I", 200)?;
    let port = epsv_port(&expect(&mut c, "EPSV", 229)?)?;
    let mut data = TcpStream::connect(SocketAddr::new(fx.target().ip(), port))
        .map_err(E2eError::io("connect the data connection"))?;
    data.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(E2eError::io("data read timeout"))?;
    expect(&mut c, &format!("RETR {BIG}"), 150)?;
    // About 2.5 MB/s: the kernel buffers hold more than a second of it.
    let mut got = Vec::with_capacity(BIG_LEN);
    let mut buf = vec![0u8; 128 << 10];
    let started = Instant::now();
    let failure = loop {
        if started.elapsed() > Duration::from_secs(60) {
            break Some("took over 60 s".to_string());
        }
        match data.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.to_string()),
        }
        thread::sleep(Duration::from_millis(50));
    };
    let log = fx.proxy_log();
    if let Some(e) = failure {
        return Err(E2eError::check(
            format!("the slow reader got all {BIG_LEN} bytes"),
            format!(
                "{e} after {} bytes; proxy log: {}",
                got.len(),
                tail(&log, 1500)
            ),
        ));
    }
    let reply = c.read_reply()?;
    if reply.code != 226 {
        return Err(E2eError::check(
            "226 after the download",
            c.transcript().to_string(),
        ));
    }
    let original = std::fs::read(fx.work.original(BIG)).map_err(E2eError::io("read original"))?;
    if got != original {
        return Err(E2eError::check(
            "the download is a copy of the original",
            format!("{} bytes of {}", got.len(), original.len()),
        ));
    }
    if log.contains("data connection reset") {
        return Err(E2eError::check(
            "no data connection reset",
            tail(&log, 1500),
        ));
    }
    Ok(())
}
