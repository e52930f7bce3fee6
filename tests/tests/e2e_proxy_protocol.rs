//! The PROXY protocol on control connections (`--proxy-protocol-in`,
//! `--proxy-protocol-from`, `--proxy-protocol-out`), through the real binary, a
//! real pure-ftpd, curl, raw sockets, a scripted server that checks the header the
//! proxy writes, and Debian's haproxy in front.
//!
//! Loopback addresses stand for the hosts: 127.0.0.2 is the client, 127.0.0.3 the
//! load balancer (the only source in `--proxy-protocol-from`), 127.0.0.4 and
//! 127.0.0.6 strangers, and the proxy and the servers listen on 127.0.0.1.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftp_proxy_core::proxy_protocol::{encode_v1, encode_v2};
use ftp_proxy_tests::e2e::*;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const BALANCER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// A second balancer that is not in `--proxy-protocol-from`.
const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

/// The proxy's options in front of a balancer at 127.0.0.3.
const IN_ARGS: [&str; 3] = [
    "--proxy-protocol-in",
    "--proxy-protocol-from",
    "127.0.0.3/32",
];

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// The proxy's log once `pred` holds for it, or an error with its tail after `limit`.
fn wait_log(
    fx: &Fixture,
    what: &str,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let log = fx.proxy_log();
        if pred(&log) {
            return Ok(log);
        }
        if Instant::now() >= deadline {
            return Err(E2eError::check(what.to_string(), tail(&log, 4000)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `client=` field of every session summary line.
fn summary_clients(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" session summary: "))
        .filter_map(|l| {
            l.split(" client=")
                .nth(1)?
                .split(' ')
                .next()
                .map(String::from)
        })
        .collect()
}

/// The data address of a `227 ... (h1,h2,h3,h4,p1,p2)` reply.
fn pasv_addr(reply: &Reply) -> Result<SocketAddr> {
    let last = reply.last();
    let inner = last
        .split('(')
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or("");
    let n: Vec<u8> = inner.split(',').filter_map(|x| x.parse().ok()).collect();
    if reply.code != 227 || n.len() != 6 {
        return Err(E2eError::check(
            "a 227 reply with six numbers",
            last.to_string(),
        ));
    }
    Ok(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(n[0], n[1], n[2], n[3])),
        u16::from(n[4]) * 256 + u16::from(n[5]),
    ))
}

/// Reads a data connection to its end; `Err` with what happened if it was reset.
fn read_all(mut s: TcpStream) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Logs in over `ctl` (already past the 220) as the test user.
fn login(ctl: &mut Control) -> Result<()> {
    let r = ctl.command(&format!("USER {USER}"))?;
    let r = if r.code == 331 {
        ctl.command(&format!("PASS {PASSWORD}"))?
    } else {
        r
    };
    if r.code != 230 {
        return Err(E2eError::check(
            "230 after USER/PASS",
            ctl.transcript().to_string(),
        ));
    }
    Ok(())
}

/// One `NLST` whose data connection comes from `from`: the listing, or the error of
/// a connection the relay refused.
fn nlst_from(ctl: &mut Control, from: IpAddr) -> Result<std::result::Result<String, String>> {
    let data = pasv_addr(&ctl.command("PASV")?)?;
    let sock =
        connect_from(from, data).map_err(E2eError::io(format!("data connect from {from}")))?;
    // The relay decides on accept: a refused connection is reset before any byte.
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .map_err(E2eError::io("set read timeout"))?;
    let mut probe = [0u8; 1];
    if let Err(e) = sock.peek(&mut probe) {
        if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut {
            return Ok(Err(e.to_string()));
        }
    }
    let r = ctl.command("NLST")?;
    if r.code != 150 && r.code != 125 {
        return Err(E2eError::check("150 to NLST", ctl.transcript().to_string()));
    }
    let listing = read_all(sock).map_err(E2eError::io("read the listing"))?;
    let done = ctl.read_reply()?;
    if done.code != 226 {
        return Err(E2eError::check(
            "226 after the listing",
            ctl.transcript().to_string(),
        ));
    }
    Ok(Ok(String::from_utf8_lossy(&listing).into_owned()))
}

/// A header for `client` from the balancer, then the session: the header's client
/// is the session's (summary line), the bytes sent with the header are its first
/// command, and its data connections are admitted from the balancer and from the
/// client itself, never from a third address.
#[test]
fn the_header_names_the_client_and_the_relay_admits_it_and_its_balancer() -> Result<()> {
    let Some(fx) = Fixture::start("pp-admit", false, &IN_ARGS)? else {
        return Ok(());
    };
    let proxy = fx.proxy()?.addr();
    let mut ctl = Control::connect_from(BALANCER, proxy, Duration::from_secs(10))?;
    // v1 header, and the USER command in the same write (before the greeting).
    let mut first = encode_v1(sa("127.0.0.2:40000"), sa("127.0.0.1:21"));
    first.extend_from_slice(format!("USER {USER}\r\n").as_bytes());
    ctl.send_raw(&first)?;
    let greeting = ctl.read_reply()?;
    let user = ctl.read_reply()?;
    if greeting.code != 220 || user.code != 331 {
        return Err(E2eError::check(
            "220, then 331 to the USER sent right after the header",
            ctl.transcript().to_string(),
        ));
    }
    if ctl.command(&format!("PASS {PASSWORD}"))?.code != 230 {
        return Err(E2eError::check("230", ctl.transcript().to_string()));
    }
    let via_balancer = nlst_from(&mut ctl, BALANCER)?;
    let direct = nlst_from(&mut ctl, CLIENT)?;
    let stranger = nlst_from(&mut ctl, STRANGER)?;
    let ok = |r: &std::result::Result<String, String>| r.as_ref().is_ok_and(|l| l.contains(SMALL));
    if !ok(&via_balancer) || !ok(&direct) || stranger.is_ok() {
        return Err(E2eError::check(
            "listings through the balancer's and the client's data connections, the stranger's reset",
            format!(
                "balancer {via_balancer:?}\nclient {direct:?}\nstranger {stranger:?}\n{}",
                tail(&fx.proxy_log(), 3000)
            ),
        ));
    }
    let _ = ctl.command("QUIT");
    let log = wait_log(&fx, "a session summary", Duration::from_secs(10), |l| {
        l.contains(" session summary: ")
    })?;
    let refused = "refused: a stranger, only 127.0.0.2 may connect";
    if summary_clients(&log) != ["127.0.0.2:40000"]
        || !log.contains("data connection from 127.0.0.4:")
        || !log.contains(refused)
    {
        return Err(E2eError::check(
            format!("summary client=127.0.0.2:40000 and `{refused}` for 127.0.0.4"),
            tail(&log, 4000),
        ));
    }
    Ok(())
}

/// What is refused, and how fast: a source not in `--proxy-protocol-from`, bytes
/// that are not a header and a header naming an IPv6 client on an IPv4 connection
/// at once, a connection that sends nothing after the deadline (5 s), while a
/// session whose v2 header came in two pieces is served meanwhile; a connection
/// beyond `-m 2` (one session and one waiting connection) at once; a v2 `LOCAL`
/// header (a health check) is served with the balancer's own address.
#[test]
fn strangers_garbage_and_silence_are_closed_and_local_is_served() -> Result<()> {
    let mut args = IN_ARGS.to_vec();
    args.extend(["-m", "2"]);
    let Some(fx) = Fixture::start("pp-refuse", false, &args)? else {
        return Ok(());
    };
    let proxy = fx.proxy()?.addr();
    let limit = Duration::from_secs(3);

    // A source the proxy does not trust, even with a well-formed header.
    let mut untrusted = Control::connect_from(UNTRUSTED, proxy, limit)?;
    untrusted.send_raw(&encode_v2(sa("127.0.0.2:1"), sa("127.0.0.1:21")))?;
    let (got, took) = untrusted.expect_closed(limit)?;
    // Bytes that are not a header, from the trusted balancer.
    let mut garbage = Control::connect_from(BALANCER, proxy, limit)?;
    garbage.send_raw(b"USER ftp\r\n")?;
    let (got2, took2) = garbage.expect_closed(limit)?;
    // A client of the other family.
    let mut v6 = Control::connect_from(BALANCER, proxy, limit)?;
    v6.send_raw(&encode_v1(sa("[2001:db8::7]:5"), sa("[2001:db8::1]:21")))?;
    let (got4, took4) = v6.expect_closed(limit)?;
    if !got.is_empty()
        || !got2.is_empty()
        || !got4.is_empty()
        || took > limit
        || took2 > limit
        || took4 > limit
    {
        return Err(E2eError::check(
            "all three closed at once without a greeting",
            format!("{got:?} {took:?} {got2:?} {took2:?} {got4:?} {took4:?}"),
        ));
    }

    // A silent connection waits for its deadline ...
    let started = Instant::now();
    let mut silent = Control::connect_from(BALANCER, proxy, Duration::from_secs(10))?;
    // ... while a proxied session is served, start to end.
    let mut ctl = Control::connect_from(BALANCER, proxy, Duration::from_secs(10))?;
    let header = encode_v2(sa("127.0.0.2:40002"), sa("127.0.0.1:21"));
    ctl.send_raw(&header[..10])?;
    std::thread::sleep(Duration::from_millis(300));
    ctl.send_raw(&header[10..])?;
    if ctl.read_reply()?.code != 220 {
        return Err(E2eError::check("220", ctl.transcript().to_string()));
    }
    login(&mut ctl)?;
    // One session and one waiting connection: -m 2 is reached.
    let mut over = Control::connect_from(BALANCER, proxy, limit)?;
    let (got5, took5) = over.expect_closed(limit)?;
    if !got5.is_empty() || took5 > limit {
        return Err(E2eError::check(
            "a connection beyond -m 2 closed at once",
            format!("{got5:?} {took5:?}"),
        ));
    }
    let listing = nlst_from(&mut ctl, CLIENT)?;
    let served_in = started.elapsed();
    let _ = ctl.command("QUIT");
    if !listing.as_ref().is_ok_and(|l| l.contains(SMALL)) || served_in >= Duration::from_secs(4) {
        return Err(E2eError::check(
            "a listing, well before the silent connection's deadline",
            format!("{listing:?} after {served_in:?}"),
        ));
    }
    let (got3, _) = silent.expect_closed(Duration::from_secs(10))?;
    let silent_for = started.elapsed();
    if !got3.is_empty()
        || silent_for < Duration::from_millis(4500)
        || silent_for > Duration::from_secs(8)
    {
        return Err(E2eError::check(
            "the silent connection closed after about 5 s, with nothing sent",
            format!("{got3:?} after {silent_for:?}"),
        ));
    }

    // LOCAL: served with the connection's own addresses.
    let mut local = Control::connect_from(BALANCER, proxy, Duration::from_secs(10))?;
    let mut header = ftp_proxy_core::proxy_protocol::V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.send_raw(&header)?;
    if local.read_reply()?.code != 220 {
        return Err(E2eError::check(
            "220 to a LOCAL connection",
            local.transcript().to_string(),
        ));
    }
    let _ = local.command("QUIT");

    let log = wait_log(&fx, "two summaries", Duration::from_secs(10), |l| {
        summary_clients(l).len() >= 2
    })?;
    let clients = summary_clients(&log);
    let lines = [
        "refused connection from 127.0.0.6:",
        "not a PROXY protocol source (--proxy-protocol-from)",
        "closed connection from 127.0.0.3:",
        "no PROXY protocol header",
        "no complete PROXY protocol header within 5000 ms (0 bytes received)",
        "its PROXY protocol header names [2001:db8::7]:5, of the other address family",
        "session limit (2) reached by 1 sessions and 1 connections waiting for their PROXY protocol header",
    ];
    let missing: Vec<&str> = lines.iter().copied().filter(|l| !log.contains(l)).collect();
    if clients.len() != 2
        || clients[0] != "127.0.0.2:40002"
        || !clients[1].starts_with("127.0.0.3:")
        || !missing.is_empty()
    {
        return Err(E2eError::check(
            format!(
                "summaries for 127.0.0.2:40002 and the LOCAL 127.0.0.3, and the lines {missing:?}"
            ),
            tail(&log, 4000),
        ));
    }
    Ok(())
}

/// The scripted server for `--proxy-protocol-out`: it reads the header, writes what
/// it found to `report`, refuses the session unless it names `client` and
/// `server`, and then speaks enough FTP for curl to log in and list (EPSV, or PASV).
const HEADER_SERVER: &str = r#"
import socket, struct, sys
listen_ip, port, want_client, want_server, report = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((listen_ip, port))
srv.listen(4)
srv.settimeout(60)
print("ready", flush=True)
conn, peer = srv.accept()
conn.settimeout(30)
f = conn.makefile("rb")
def header():
    first = f.read(12)
    if first == b"\r\n\r\n\x00\r\nQUIT\n":
        ver, fam, length = struct.unpack("!BBH", f.read(4))
        body = f.read(length)
        if ver != 0x21 or fam != 0x11:
            return "v2 bad command/family %x %x" % (ver, fam)
        src = socket.inet_ntoa(body[0:4]); dst = socket.inet_ntoa(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        return "v2 %s:%d %s:%d" % (src, sport, dst, dport)
    if first.startswith(b"PROXY "):
        line = first + f.readline()
        if not line.endswith(b"\r\n"):
            return "v1 without CRLF"
        w = line[:-2].decode().split(" ")
        if len(w) != 6 or w[1] != "TCP4":
            return "v1 bad: " + line.decode()
        return "v1 %s:%s %s:%s" % (w[2], w[4], w[3], w[5])
    return "no header: %r" % first
got = header()
open(report, "w").write(got + "\n")
ver, src, dst = (got.split(" ") + ["", "", ""])[:3]
if not (src.startswith(want_client + ":") and dst == want_server):
    conn.sendall(b"421 wrong PROXY header\r\n")
    sys.exit(1)
def send(s):
    conn.sendall((s + "\r\n").encode())
send("220 scripted server")
data = None
while True:
    line = f.readline()
    if not line:
        break
    cmd = line.decode().strip().split(" ")[0].upper()
    if cmd == "USER": send("331 password")
    elif cmd == "PASS": send("230 in")
    elif cmd == "PWD": send('257 "/"')
    elif cmd == "CWD": send("250 ok")
    elif cmd == "TYPE": send("200 ok")
    elif cmd in ("EPSV", "PASV"):
        data = socket.socket(); data.bind((listen_ip, 0)); data.listen(1); data.settimeout(30)
        p = data.getsockname()[1]
        if cmd == "EPSV": send("229 Entering Extended Passive Mode (|||%d|)" % p)
        else: send("227 Entering Passive Mode (%s,%d,%d)" % (listen_ip.replace(".", ","), p >> 8, p & 255))
    elif cmd in ("LIST", "NLST"):
        d, _ = data.accept()
        send("150 here it comes")
        d.sendall(b"scripted-listing.txt\r\n"); d.close(); data.close()
        send("226 done")
    elif cmd == "QUIT":
        send("221 bye"); break
    else: send("502 not here")
"#;

/// `--proxy-protocol-out v1` and `v2`: the scripted server sees the header first,
/// naming the real client (127.0.0.2, curl's source) and itself, and curl logs in
/// and lists through the proxy. With `--proxy-protocol-in` as well, the header the
/// server gets names the client of the header the proxy got (port included), not
/// the balancer.
#[test]
fn proxy_protocol_out_names_the_client_to_the_server() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("pp-out")?;
    let ip = loopback(false);
    for version in ["v1", "v2"] {
        let port = free_port(ip)?;
        let server = SocketAddr::new(ip, port);
        let report = work.root().join(format!("header-{version}.txt"));
        let script = work.root().join("header_server.py");
        std::fs::write(&script, HEADER_SERVER).map_err(E2eError::io("write the script"))?;
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([
                ip.to_string(),
                port.to_string(),
                CLIENT.to_string(),
                server.to_string(),
            ])
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(&mut cmd, format!("scripted server {version}"))?;
        wait_ready(&mut guard)?;
        let log = work.root().join(format!("ftp-proxy-{version}.log"));
        let proxy = ProxyProcess::start(ip, server, &["--proxy-protocol-out", version], &log)?;
        let url = format!("ftp://{USER}:{PASSWORD}@{}/", proxy.addr());
        let out = curl(&["--interface".into(), CLIENT.to_string(), url]);
        let seen = std::fs::read_to_string(&report).unwrap_or_default();
        let want = format!("{version} {CLIENT}:");
        let listed = out
            .as_ref()
            .is_ok_and(|o| o.contains("scripted-listing.txt"));
        if !listed || !seen.starts_with(&want) || !seen.trim_end().ends_with(&format!(" {server}"))
        {
            return Err(E2eError::check(
                format!("the server saw `{want}... {server}` and curl listed"),
                format!(
                    "header: {seen:?}\ncurl: {out:?}\nproxy: {}",
                    tail(&proxy.log(), 3000)
                ),
            ));
        }
        let _ = guard.wait_timeout(Duration::from_secs(10));
    }

    // In and out: a balancer's v2 header for 127.0.0.2:40007 becomes a v1 header.
    let port = free_port(ip)?;
    let server = SocketAddr::new(ip, port);
    let report = work.root().join("header-in-out.txt");
    let mut cmd = Command::new("python3");
    cmd.arg(work.root().join("header_server.py"))
        .args([
            ip.to_string(),
            port.to_string(),
            CLIENT.to_string(),
            server.to_string(),
        ])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn(&mut cmd, "scripted server in-out")?;
    wait_ready(&mut guard)?;
    let mut args = IN_ARGS.to_vec();
    args.extend(["--proxy-protocol-out", "v1"]);
    let log = work.root().join("ftp-proxy-in-out.log");
    let proxy = ProxyProcess::start(ip, server, &args, &log)?;
    let mut ctl = Control::connect_from(BALANCER, proxy.addr(), Duration::from_secs(10))?;
    ctl.send_raw(&encode_v2(sa("127.0.0.2:40007"), proxy.addr()))?;
    let greeting = ctl.read_reply()?;
    login(&mut ctl)?;
    let _ = ctl.command("QUIT");
    let seen = std::fs::read_to_string(&report).unwrap_or_default();
    let want = format!("v1 127.0.0.2:40007 {server}");
    if greeting.code != 220 || seen.trim_end() != want {
        return Err(E2eError::check(
            format!("the server saw `{want}` and greeted"),
            format!(
                "header: {seen:?}\n{}\nproxy: {}",
                ctl.transcript(),
                tail(&proxy.log(), 3000)
            ),
        ));
    }
    let _ = guard.wait_timeout(Duration::from_secs(10));
    Ok(())
}

/// Waits for the scripted server's `ready` line on its stdout.
fn wait_ready(guard: &mut ChildGuard) -> Result<()> {
    let stdout = guard
        .child_mut()
        .stdout
        .take()
        .ok_or_else(|| E2eError::check("the scripted server's stdout", String::new()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(l) if l.trim() == "ready" => Ok(()),
        other => Err(E2eError::check(
            "the scripted server says ready",
            format!("{other:?}"),
        )),
    }
}

/// haproxy in front: `send-proxy-v2` on the control connection, and the proxy's
/// data port range forwarded without a header (the only way an EPSV client behind a
/// balancer reaches a data port: a 229 names no address).
struct Haproxy {
    _guard: ChildGuard,
    /// The frontend whose server line sends from the trusted balancer address.
    front: SocketAddr,
    /// A frontend whose connections to the proxy come from 127.0.0.6 (untrusted).
    untrusted_front: SocketAddr,
}

fn haproxy_binary() -> Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file());
    found.ok_or(E2eError::MissingTool {
        tool: "haproxy",
        package: "haproxy",
    })
}

impl Haproxy {
    fn start(dir: &Path, proxy: SocketAddr, data: (u16, u16)) -> Result<Haproxy> {
        let bin = haproxy_binary()?;
        let front = SocketAddr::new(BALANCER, free_port(BALANCER)?);
        let untrusted_front = SocketAddr::new(BALANCER, free_port(BALANCER)?);
        let cfg = format!(
            "global\n    maxconn 64\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend ftp\n    bind {front}\n    default_backend proxy\n\
             backend proxy\n    server p {proxy} send-proxy-v2 source {BALANCER}\n\
             frontend ftp_untrusted\n    bind {untrusted_front}\n    default_backend untrusted\n\
             backend untrusted\n    server p {proxy} send-proxy-v2 source {UNTRUSTED}\n\
             frontend data\n    bind {BALANCER}:{}-{}\n    default_backend data\n\
             backend data\n    server p {} source {BALANCER}\n",
            data.0,
            data.1,
            proxy.ip(),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).map_err(E2eError::io("write haproxy.cfg"))?;
        let log =
            std::fs::File::create(dir.join("haproxy.log")).map_err(E2eError::io("haproxy.log"))?;
        let err = log.try_clone().map_err(E2eError::io("dup"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let guard = ChildGuard::spawn(&mut cmd, "haproxy")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&untrusted_front, Duration::from_secs(1)).is_err() {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default();
                return Err(E2eError::check("haproxy listens", tail(&log, 3000)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Haproxy {
            _guard: guard,
            front,
            untrusted_front,
        })
    }
}

/// curl through haproxy (`send-proxy-v2`) in PASV and EPSV: the files arrive, the
/// summaries name the client (127.0.0.2), the data connections came through the
/// balancer; a header through a balancer address that is not trusted is refused;
/// a connection with no header is closed after the deadline while a download goes on.
#[test]
fn curl_through_haproxy_send_proxy_v2() -> Result<()> {
    haproxy_binary()?;
    let mut args: Vec<&str> = IN_ARGS.to_vec();
    args.extend(["--proxy-ports", "40230:40249"]);
    let Some(fx) = Fixture::start("pp-haproxy", false, &args)? else {
        return Ok(());
    };
    let proxy = fx.proxy()?.addr();
    let ha = Haproxy::start(fx.work.root(), proxy, (40230, 40249))?;

    // Silent, straight from the balancer's address to the proxy: no header.
    let started = Instant::now();
    let mut silent = Control::connect_from(BALANCER, proxy, Duration::from_secs(10))?;

    let local = fx.work.local();
    let mut transcripts = Vec::new();
    for (mode, name) in [(DataMode::Pasv, "pasv"), (DataMode::Epsv, "epsv")] {
        let mut a: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
        let to = local.join(name);
        a.extend([
            "--interface".into(),
            CLIENT.to_string(),
            ftp_url(ha.front, Login::User, BIG),
            "-o".into(),
            to.display().to_string(),
        ]);
        let out = curl(&a)?;
        prove_mode(&out, mode)?;
        assert_same_file(&fx.work.original(BIG), &to)?;
        transcripts.push(out);
    }
    let downloads_took = started.elapsed();

    // Through the balancer address that is not trusted: refused.
    let refused = curl(&[
        "--interface".into(),
        CLIENT.to_string(),
        ftp_url(ha.untrusted_front, Login::User, SMALL),
        "-o".into(),
        local.join("refused").display().to_string(),
    ]);

    let (got, _) = silent.expect_closed(Duration::from_secs(10))?;
    let silent_for = started.elapsed();
    let log = wait_log(&fx, "two summaries", Duration::from_secs(10), |l| {
        summary_clients(l).len() >= 2
    })?;
    let clients = summary_clients(&log);
    let through_balancer = log
        .lines()
        .filter(|l| {
            l.contains(&format!(" {BALANCER}:")) && l.contains(&format!(" -> {}:402", proxy.ip()))
        })
        .count();
    let ok = refused.is_err()
        && log.contains("refused connection from 127.0.0.6:")
        && got.is_empty()
        && downloads_took < Duration::from_secs(5)
        && silent_for >= Duration::from_millis(4500)
        && log.contains("closed connection from 127.0.0.3:")
        && clients.len() == 2
        && clients.iter().all(|c| c.starts_with("127.0.0.2:"))
        && through_balancer >= 2;
    if !ok {
        return Err(E2eError::check(
            "two downloads for client 127.0.0.2 with data through 127.0.0.3, the untrusted balancer refused, the silent connection closed after 5 s",
            format!(
                "refused: {:?}\nsilent closed after {silent_for:?} (downloads took {downloads_took:?}), got {got:?}\nclients {clients:?}, data lines via balancer {through_balancer}\n{}",
                refused.map(|o| tail(&o, 500)),
                tail(&log, 5000)
            ),
        ));
    }
    Ok(())
}
