//! Nothing leaks: 160 short sessions through the relay, ended at every stage (before
//! the banner, after login, with a passive listener never used, in the middle of a
//! download with a reset, after an active-mode listing), leave the proxy with exactly
//! the descriptors it had before and about the same memory.
//!
//! The proxy listens on 127.0.0.41, an address no other test uses, so that no foreign
//! TIME_WAIT holds a relay port (runtime-mio notes).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

const PROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 41));
const SESSIONS: usize = 160;
/// Memory the proxy may gain over the whole run (allocator slack, not per session).
const RSS_SLACK_KIB: u64 = 4096;

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(E2eError::io(format!("list /proc/{pid}/fd")))?
        .count())
}

/// Closing sends RST instead of FIN: an abrupt end.
fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// A bare control connection: replies read line by line, last line returned.
struct Ctl {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Ctl {
    fn connect(to: SocketAddr) -> Result<Ctl> {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(E2eError::io(format!("connect {to}")))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(E2eError::io("read timeout"))?;
        let r = BufReader::new(s.try_clone().map_err(E2eError::io("clone"))?);
        Ok(Ctl { w: s, r })
    }

    fn reply(&mut self) -> Result<String> {
        loop {
            let mut line = String::new();
            let n = self
                .r
                .read_line(&mut line)
                .map_err(E2eError::io("read reply"))?;
            if n == 0 {
                return Err(E2eError::check("a reply", "end of file"));
            }
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                return Ok(line);
            }
        }
    }

    fn cmd(&mut self, c: &str, code: &str) -> Result<String> {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .map_err(E2eError::io(format!("send {c}")))?;
        let r = self.reply()?;
        if !r.starts_with(code) {
            return Err(E2eError::check(format!("{c} answered {code}"), r));
        }
        Ok(r)
    }

    fn login(&mut self) -> Result<()> {
        self.reply()?;
        self.cmd(&format!("USER {USER}"), "331")?;
        self.cmd(&format!("PASS {PASSWORD}"), "230")?;
        Ok(())
    }

    /// EPSV and a data connection to the port it names.
    fn epsv_connect(&mut self, proxy: SocketAddr) -> Result<TcpStream> {
        let r = self.cmd("EPSV", "229")?;
        let port = r
            .split("|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| E2eError::check("a port in the 229 reply", r.clone()))?;
        let d =
            TcpStream::connect_timeout(&SocketAddr::new(proxy.ip(), port), Duration::from_secs(5))
                .map_err(E2eError::io("data connect"))?;
        d.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(E2eError::io("read timeout"))?;
        Ok(d)
    }
}

/// One session ending at stage `kind`.
fn session(kind: usize, proxy: SocketAddr) -> Result<()> {
    let mut c = Ctl::connect(proxy)?;
    match kind {
        // Gone before the banner, with a reset.
        0 => linger_zero(&c.w),
        // Banner, then gone.
        1 => {
            c.reply()?;
        }
        // Logged in, then gone with a reset.
        2 => {
            c.login()?;
            linger_zero(&c.w);
        }
        // A passive listener never used, then QUIT: the listener must go.
        3 => {
            c.login()?;
            c.cmd("EPSV", "229")?;
            c.cmd("QUIT", "221")?;
        }
        // A whole listing.
        4 => {
            c.login()?;
            let mut d = c.epsv_connect(proxy)?;
            c.cmd("LIST", "150")?;
            let mut sink = Vec::new();
            d.read_to_end(&mut sink)
                .map_err(E2eError::io("read listing"))?;
            c.reply()?;
            c.cmd("QUIT", "221")?;
        }
        // A download cut with a reset, the control connection dropped at once.
        5 => {
            c.login()?;
            let mut d = c.epsv_connect(proxy)?;
            c.cmd("TYPE I", "200")?;
            c.cmd(&format!("RETR {BIG}"), "150")?;
            let mut buf = vec![0u8; 64 << 10];
            d.read_exact(&mut buf)
                .map_err(E2eError::io("read download"))?;
            linger_zero(&d);
        }
        // Active mode (EPRT to our own listener), a listing, QUIT.
        6 => {
            c.login()?;
            let me = c.w.local_addr().map_err(E2eError::io("local addr"))?.ip();
            let l = TcpListener::bind((me, 0)).map_err(E2eError::io("bind"))?;
            let port = l.local_addr().map_err(E2eError::io("local addr"))?.port();
            c.cmd(&format!("EPRT |1|{me}|{port}|"), "200")?;
            c.w.write_all(b"LIST\r\n")
                .map_err(E2eError::io("send LIST"))?;
            let (mut d, _) = accept_within(&l, Duration::from_secs(10))?;
            c.reply()?;
            let mut sink = Vec::new();
            d.read_to_end(&mut sink)
                .map_err(E2eError::io("read listing"))?;
            c.reply()?;
            c.cmd("QUIT", "221")?;
        }
        // A data connection open while the client half-closes its control connection.
        _ => {
            c.login()?;
            let d = c.epsv_connect(proxy)?;
            c.w.shutdown(Shutdown::Write)
                .map_err(E2eError::io("shutdown"))?;
            drop(d);
        }
    }
    Ok(())
}

fn accept_within(l: &TcpListener, limit: Duration) -> Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)
        .map_err(E2eError::io("nonblocking"))?;
    wait_for(
        "the active-mode data connection",
        limit,
        || match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).map_err(E2eError::io("blocking"))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(E2eError::io("read timeout"))?;
                Ok(Some((s, a)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(E2eError::io("accept")(e)),
        },
        String::new,
    )
}

#[test]
fn short_sessions_ended_anywhere_leak_no_descriptor_or_memory() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("leaks")?;
    let server = FtpServer::start(&work, loopback(false))?;
    let proxy = ProxyProcess::start(
        PROXY_IP,
        server.addr(),
        &[],
        &work.root().join("ftp-proxy.log"),
    )?;
    let pid = proxy.pid();
    // One warm-up session of each kind, so lazily allocated buffers are counted in.
    for kind in 0..8 {
        session(kind, proxy.addr()).map_err(|e| {
            E2eError::check(
                format!("warm-up session {kind}: {e}"),
                tail(&proxy.log(), 3000),
            )
        })?;
    }
    let settled = |want: Option<usize>| -> Result<usize> {
        // A closed client is noticed at the proxy's next turn: wait until it is.
        let mut last = usize::MAX;
        wait_for(
            "the proxy's descriptor count to settle",
            Duration::from_secs(5),
            || {
                let n = fd_count(pid)?;
                let done = match want {
                    Some(w) => n == w,
                    None => n == last,
                };
                last = n;
                std::thread::sleep(Duration::from_millis(100));
                Ok(done.then_some(n))
            },
            || tail(&proxy.log(), 3000),
        )
    };
    let fds_before = settled(None)?;
    let rss_before = rss_kib(pid)?;
    for i in 0..SESSIONS {
        session(i % 8, proxy.addr()).map_err(|e| {
            E2eError::check(
                format!("session {i} (kind {}): {e}", i % 8),
                tail(&proxy.log(), 3000),
            )
        })?;
    }
    let fds_after = settled(Some(fds_before)).map_err(|e| {
        let listing: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .map(|e| format!("{:?}", fs::read_link(e.path())))
                    .collect()
            })
            .unwrap_or_default();
        E2eError::check(
            format!("descriptors back to {fds_before} after {SESSIONS} sessions"),
            format!("{e}\nopen now: {listing:?}"),
        )
    })?;
    let rss_after = rss_kib(pid)?;
    eprintln!(
        "{SESSIONS} sessions: descriptors {fds_before} -> {fds_after}, VmRSS {rss_before} -> {rss_after} KiB"
    );
    if rss_after > rss_before + RSS_SLACK_KIB {
        return Err(E2eError::check(
            format!("VmRSS within {RSS_SLACK_KIB} KiB of {rss_before} KiB"),
            format!("{rss_after} KiB"),
        ));
    }
    Ok(())
}
