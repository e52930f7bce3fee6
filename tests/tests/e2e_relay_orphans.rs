//! Downloads that outlive their sessions must not hold every relay slot.
//!
//! vsftpd finishes a download after its control connection has closed. With `-m 4`
//! a client that never had more than one session open started four downloads of a
//! large file, closed each control connection and kept reading each data connection
//! slowly: the relay carried all four (a connection that moves bytes is never timed
//! out), and every other user's data connection was reset with `data-connection
//! limit reached, 4 in progress in all sessions (-m)` for as long as the trickles
//! lasted. Data connections of ended sessions now count against their client
//! address's per-session allowance (`--relay-per-session`, 2): that client's third
//! is refused, another user's download goes through, and the two downloads that
//! outlived their sessions still arrive whole.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ftp_proxy_tests::e2e::*;

/// The client that ends its sessions and keeps their downloads.
const HOG: &str = "127.0.0.2";

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

/// Logs in anonymously (vsftpd asks for no password) and asks for binary mode and a
/// passive port: the data address to connect to.
fn login_epsv(c: &mut Control, proxy: SocketAddr) -> Result<SocketAddr> {
    if c.read_reply()?.code != 220 {
        return Err(E2eError::check("a 220 banner", c.transcript().to_string()));
    }
    let user = c.command("USER anonymous")?;
    if user.code == 331 {
        expect(c, "PASS guest@", 230)?;
    } else if user.code != 230 {
        return Err(E2eError::check(
            "anonymous login",
            c.transcript().to_string(),
        ));
    }
    expect(c, "TYPE I", 200)?;
    let reply = expect(c, "EPSV", 229)?;
    let port = reply
        .last()
        .split('|')
        .nth(3)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| E2eError::check("a 229 reply with a port", reply.last()))?;
    Ok(SocketAddr::new(proxy.ip(), port))
}

/// A download left running after its session: read slowly (about 160 KB/s) until
/// `fast`, then to the end. Returns the bytes, or why it stopped.
fn trickle(
    mut data: TcpStream,
    mut got: Vec<u8>,
    fast: Arc<AtomicBool>,
) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("still reading after 120 s ({} bytes)", got.len()));
        }
        let slow = !fast.load(Ordering::SeqCst);
        let want = if slow { 8 << 10 } else { buf.len() };
        match data.read(&mut buf[..want]) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{e} after {} bytes", got.len())),
        }
        if slow {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A download left running, read by its own thread.
type Trickle = thread::JoinHandle<Result<Vec<u8>, String>>;

/// One round of the hog: a session that starts the download of the big file and
/// closes its control connection once the first bytes have come. `None` when the
/// proxy refused the data connection (a reset, or a close without data).
fn start_and_leave(
    proxy: SocketAddr,
    hog: IpAddr,
    fast: &Arc<AtomicBool>,
) -> Result<Option<Trickle>> {
    let mut c = Control::connect_from(hog, proxy, Duration::from_secs(30))?;
    let data_addr = login_epsv(&mut c, proxy)?;
    let mut data =
        connect_from(hog, data_addr).map_err(E2eError::io("connect the data connection"))?;
    data.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(E2eError::io("data read timeout"))?;
    c.send_raw(format!("RETR {BIG}\r\n").as_bytes())?;
    let mut first = vec![0u8; 4096];
    match data.read(&mut first) {
        Ok(0) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(E2eError::io("read the first bytes of a download")(e)),
        Ok(n) => first.truncate(n),
    }
    if c.read_reply()?.code != 150 {
        return Err(E2eError::check(
            "150 before the data",
            c.transcript().to_string(),
        ));
    }
    // The session ends; vsftpd goes on sending.
    drop(c);
    let fast = fast.clone();
    Ok(Some(thread::spawn(move || trickle(data, first, fast))))
}

#[test]
fn downloads_outliving_their_sessions_do_not_hold_every_relay_slot() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("orphans")?;
    let ip = loopback(false);
    let server = Vsftpd::start(&work, ip)?;
    let proxy = ProxyProcess::start(
        ip,
        server.addr(),
        &["-m", "4"],
        &work.root().join("ftp-proxy.log"),
    )?;
    let hog: IpAddr = HOG.parse().expect("an address");
    let fast = Arc::new(AtomicBool::new(false));

    // Four sessions one after another, each leaving its download behind.
    let mut kept = Vec::new();
    let mut refused = 0;
    for n in 1..=4 {
        match start_and_leave(proxy.addr(), hog, &fast)? {
            Some(t) => kept.push(t),
            None => refused += 1,
        }
        // The proxy has seen the session end before the next one starts.
        wait_for(
            &format!("{n} session summaries"),
            Duration::from_secs(10),
            || Ok((proxy.log().matches("session summary").count() >= n).then_some(())),
            || tail(&proxy.log(), 2000),
        )?;
    }

    // Another user, with one session, downloads a file.
    let mut c = Control::connect(proxy.addr(), Duration::from_secs(30))?;
    let data_addr = login_epsv(&mut c, proxy.addr())?;
    let mut data =
        TcpStream::connect(data_addr).map_err(E2eError::io("connect the data connection"))?;
    data.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(E2eError::io("data read timeout"))?;
    c.send_raw(format!("RETR {SMALL}\r\n").as_bytes())?;
    let mut got = Vec::new();
    if let Err(e) = data.read_to_end(&mut got) {
        return Err(E2eError::check(
            format!(
                "another user's download while {} downloads outlive their sessions",
                kept.len()
            ),
            format!("{e}; proxy log: {}", tail(&proxy.log(), 2000)),
        ));
    }
    let original = std::fs::read(work.original(SMALL)).map_err(E2eError::io("read original"))?;
    if got != original {
        return Err(E2eError::check(
            "another user's download is a copy of the original",
            format!("{} bytes of {}", got.len(), original.len()),
        ));
    }
    let done = c.read_reply()?;
    if done.code != 150 || c.read_reply()?.code != 226 {
        return Err(E2eError::check("150 then 226", c.transcript().to_string()));
    }

    // The hog got exactly its allowance, and the log says why it got no more.
    let log = proxy.log();
    if kept.len() != 2 || refused != 2 {
        return Err(E2eError::check(
            "two downloads outlive their sessions, the other two are refused",
            format!(
                "{} kept, {refused} refused; {}",
                kept.len(),
                tail(&log, 2000)
            ),
        ));
    }
    if !log.contains(&format!(
        "more outlive earlier sessions of {HOG} (--relay-per-session)"
    )) {
        return Err(E2eError::check(
            "the refusal is logged with its reason",
            tail(&log, 2000),
        ));
    }

    // A download that outlived its QUIT still arrives whole.
    fast.store(true, Ordering::SeqCst);
    let original = std::fs::read(work.original(BIG)).map_err(E2eError::io("read original"))?;
    for t in kept {
        let got = t.join().expect("reader thread").map_err(|e| {
            E2eError::check(
                "an orphaned download completes",
                format!("{e}; {}", tail(&proxy.log(), 2000)),
            )
        })?;
        if got != original {
            return Err(E2eError::check(
                "an orphaned download is a copy of the original",
                format!("{} bytes of {}", got.len(), original.len()),
            ));
        }
    }
    drop(server);
    Ok(())
}
