//! The `ftp-proxy` binary with the nftables backend, end to end: client, router and
//! server namespaces, pure-ftpd, curl and lftp, a `policy drop` forward chain in the
//! router with the admin's one accept line, and checks that the data bytes went through
//! kernel NAT (not the proxy), that no element outlives its session, and that the table
//! goes away at SIGTERM.
//!
//! Root only: as root every component must be present or the test fails; otherwise it
//! prints why it did not run. Runs the proxy from `target/<profile>/ftp-proxy`, built
//! first with `cargo build -p ftp-proxy-cli` (see `netns::proxy_binary`).

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ftp_proxy_tests::netns::{
    self, check, AdminAccept, AdminDivert, Lab, Ns, ProxyRun, Result, BIG_LEN,
};
use pfctl_backend::nft::{tag_mark, DEFAULT_MARK};

const URL4: &str = "ftp://198.51.100.10";
const URL6: &str = "ftp://[2001:db8:2::10]";

/// Fails unless curl's verbose log shows it sent `cmd` (and never `not`): curl falls
/// back from EPSV to PASV and from EPRT to PORT silently, which would hide a failure.
fn sent(log: &str, cmd: &str, not: &[&str]) -> Result<()> {
    if !log.lines().any(|l| l.starts_with(&format!("> {cmd}"))) {
        return Err(check(format!("curl to send {cmd}"), netns::tail(log, 3000)));
    }
    for n in not {
        if log.lines().any(|l| l.starts_with(&format!("> {n}"))) {
            return Err(check(
                format!("curl not to fall back to {n}"),
                netns::tail(log, 3000),
            ));
        }
    }
    Ok(())
}

/// Fails unless lftp's debug log shows the command (`---> EPSV`).
fn lftp_sent(log: &str, cmd: &str) -> Result<()> {
    if !log.contains(&format!("---> {cmd}")) {
        return Err(check(format!("lftp to send {cmd}"), netns::tail(log, 3000)));
    }
    Ok(())
}

/// Downloads `big.bin` with curl, checks it byte for byte, and checks that the bytes
/// crossed the router's forward path and not its local sockets.
fn download_big_bypassing_proxy(
    lab: &Lab,
    p: &ProxyRun,
    url: &str,
    mode: &[&str],
    cmd: &str,
    not: &[&str],
) -> Result<()> {
    let out = lab.local.join(format!("big-{cmd}.bin"));
    let (_, fwd0) = lab.counter("forwarded")?;
    let (_, in0) = lab.counter("local_in")?;
    let mut args = mode.to_vec();
    let src = format!("{url}/big.bin");
    args.extend([src.as_str(), "-o", out.to_str().expect("utf-8")]);
    let log = lab.curl(&args)?;
    sent(&log, cmd, not)?;
    lab.same_file(&lab.home.join("big.bin"), &out)?;
    let (_, fwd1) = lab.counter("forwarded")?;
    let (_, in1) = lab.counter("local_in")?;
    let (fwd, local) = (fwd1 - fwd0, in1 - in0);
    // The router forwarded at least the file; its own sockets (the proxy's control
    // connections) received only a few kilobytes.
    if fwd < BIG_LEN as u64 || local > 256 * 1024 {
        return Err(check(
            format!(
                "{cmd}: ≥ {BIG_LEN} bytes forwarded by the kernel and < 256 KiB to local sockets"
            ),
            format!(
                "forwarded {fwd} bytes, local {local} bytes\nproxy log:\n{}",
                netns::tail(&p.log_text(), 2000)
            ),
        ));
    }
    lab.expect_no_elements(p, cmd)
}

/// Uploads `up-small.bin` with curl and checks what the server stored.
fn upload_small(
    lab: &Lab,
    p: &ProxyRun,
    url: &str,
    mode: &[&str],
    cmd: &str,
    not: &[&str],
    name: &str,
) -> Result<()> {
    let mut args = mode.to_vec();
    let src = lab.local.join("up-small.bin");
    let dst = format!("{url}/{name}");
    args.extend(["-T", src.to_str().expect("utf-8"), dst.as_str()]);
    let log = lab.curl(&args)?;
    sent(&log, cmd, not)?;
    lab.same_file(&src, &lab.home.join(name))?;
    lab.expect_no_elements(p, cmd)
}

#[test]
fn ipv4_pasv_epsv_port_eprt_through_kernel_nat() -> Result<()> {
    if !netns::is_root("ipv4_pasv_epsv_port_eprt_through_kernel_nat") {
        return Ok(());
    }
    let mut lab = Lab::new("v4", AdminAccept::CtStatusDnat)?;
    let p = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;

    download_big_bypassing_proxy(&lab, &p, URL4, &["--disable-epsv"], "PASV", &["EPSV"])?;
    download_big_bypassing_proxy(&lab, &p, URL4, &["-P", "-"], "EPRT", &["PORT"])?;
    upload_small(&lab, &p, URL4, &[], "EPSV", &["PASV"], "up-epsv.bin")?;
    upload_small(
        &lab,
        &p,
        URL4,
        &["-P", "-", "--disable-eprt"],
        "PORT",
        &["EPRT"],
        "up-port.bin",
    )?;

    // lftp: active mode (PORT) download and a passive upload of 10 MiB.
    let out = lab.local.join("lftp-big.bin");
    let log = lab.lftp(
        URL4,
        "set ftp:passive-mode off",
        &format!("get big.bin -o {}", out.display()),
    )?;
    lftp_sent(&log, "PORT")?;
    lab.same_file(&lab.home.join("big.bin"), &out)?;
    let log = lab.lftp(
        URL4,
        "set ftp:prefer-epsv no",
        &format!(
            "put {} -o up-big.bin",
            lab.local.join("up-big.bin").display()
        ),
    )?;
    lftp_sent(&log, "PASV")?;
    lab.same_file(&lab.local.join("up-big.bin"), &lab.home.join("up-big.bin"))?;
    lab.expect_no_elements(&p, "lftp sessions")?;

    lab.stop_proxy(&p)
}

#[test]
fn ipv6_epsv_eprt_beside_an_ipv4_instance() -> Result<()> {
    if !netns::is_root("ipv6_epsv_eprt_beside_an_ipv4_instance") {
        return Ok(());
    }
    let mut lab = Lab::new("v6", AdminAccept::CtStatusDnat)?;
    // Two daemons in one namespace: each has its own table, so neither disturbs the other.
    let p4 = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;
    let p6 = lab.start_proxy(&["-6", "-b", "::"], 8021)?;
    assert_ne!(p4.table, p6.table);

    download_big_bypassing_proxy(&lab, &p6, URL6, &[], "EPSV", &["PASV"])?;
    upload_small(
        &lab,
        &p6,
        URL6,
        &["-P", "-"],
        "EPRT",
        &["PORT"],
        "up6-eprt.bin",
    )?;
    let out = lab.local.join("lftp6-big.bin");
    let log = lab.lftp(
        URL6,
        "set ftp:passive-mode off",
        &format!("get big.bin -o {}", out.display()),
    )?;
    lftp_sent(&log, "EPRT")?;
    lab.same_file(&lab.home.join("big.bin"), &out)?;
    lab.expect_no_elements(&p6, "lftp EPRT")?;
    // The IPv4 instance still works after the IPv6 one's sessions.
    upload_small(
        &lab,
        &p4,
        URL4,
        &["--disable-epsv"],
        "PASV",
        &["EPSV"],
        "up4-pasv.bin",
    )?;

    lab.stop_proxy(&p6)?;
    let tables = lab.topo.nft(&["list", "tables"])?;
    if !tables.contains(&p4.table) {
        return Err(check(
            format!("{} to survive the other daemon's exit", p4.table),
            tables,
        ));
    }
    download_big_bypassing_proxy(&lab, &p4, URL4, &["--disable-epsv"], "PASV", &["EPSV"])?;
    lab.stop_proxy(&p4)
}

/// One daemon with an IPv4 and an IPv6 listener (`-b 0.0.0.0 -b ::`), nftables
/// carrying the data connections of both families: an IPv4 client in PASV and an
/// IPv6 client in EPSV download at the same time through the one process, each
/// file byte for byte, each session of its own family in the log, and the rules
/// of both gone afterwards (issue 17, "one process, both families").
#[test]
fn one_daemon_serves_both_families_at_once_with_nftables() -> Result<()> {
    if !netns::is_root("one_daemon_serves_both_families_at_once_with_nftables") {
        return Ok(());
    }
    let mut lab = Lab::new("both", AdminAccept::CtStatusDnat)?;
    let p = lab.start_proxy(&["-b", "0.0.0.0", "-b", "::"], 8021)?;
    let out4 = lab.local.join("both-v4.bin");
    let out6 = lab.local.join("both-v6.bin");
    let src4 = format!("{URL4}/big.bin");
    let src6 = format!("{URL6}/big.bin");
    let (log4, log6) = std::thread::scope(|scope| {
        let lab = &lab;
        let a4 = [
            "--disable-epsv",
            src4.as_str(),
            "-o",
            out4.to_str().expect("utf-8"),
        ];
        let a6 = [src6.as_str(), "-o", out6.to_str().expect("utf-8")];
        let t4 = scope.spawn(move || lab.curl(&a4));
        let t6 = scope.spawn(move || lab.curl(&a6));
        (
            t4.join().expect("curl thread"),
            t6.join().expect("curl thread"),
        )
    });
    sent(&log4?, "PASV", &["EPSV"])?;
    sent(&log6?, "EPSV", &["PASV"])?;
    lab.same_file(&lab.home.join("big.bin"), &out4)?;
    lab.same_file(&lab.home.join("big.bin"), &out6)?;
    let log = p.log_text();
    let v4 = log.contains("to server 198.51.100.10");
    let v6 = log.contains("to server 2001:db8:2::10");
    if !(v4 && v6) {
        return Err(check(
            "one daemon logged an IPv4 and an IPv6 session",
            netns::tail(&log, 3000),
        ));
    }
    lab.expect_no_elements(&p, "both families")?;
    lab.stop_proxy(&p)
}

/// Reads one (possibly multi-line) FTP reply.
fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut all = String::new();
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, all));
        }
        all.push_str(&line);
        let b = line.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
            return Ok(all);
        }
    }
    Err(std::io::Error::other(format!("reply too long: {all}")))
}

fn command(r: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
    r.get_mut().write_all(format!("{line}\r\n").as_bytes())?;
    reply(r)
}

/// A hand-driven PASV session: the first connection to the advertised port reaches the
/// server; a second one to the same port is not redirected (the arm element is gone),
/// so the admin's drop policy eats it.
fn second_connection_is_not_redirected(lab: &Lab) -> Result<String> {
    lab.topo
        .in_ns(Ns::Client, || -> std::io::Result<String> {
            let ctl = TcpStream::connect_timeout(
                &"198.51.100.10:21".parse().expect("addr"),
                Duration::from_secs(5),
            )?;
            ctl.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut r = BufReader::new(ctl);
            let mut t = reply(&mut r)?;
            t += &command(&mut r, &format!("USER {}", netns::FTP_USER))?;
            t += &command(&mut r, &format!("PASS {}", netns::FTP_PASSWORD))?;
            t += &command(&mut r, "TYPE I")?;
            let pasv = command(&mut r, "PASV")?;
            t += &pasv;
            // 227 Entering Passive Mode (198,51,100,10,p1,p2)
            let inner = pasv
                .split(['(', ')'])
                .nth(1)
                .ok_or_else(|| std::io::Error::other(format!("no 227 tuple: {t}")))?;
            let n: Vec<u16> = inner
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect();
            if n.len() != 6 || n[..4] != [198, 51, 100, 10] {
                return Err(std::io::Error::other(format!("unexpected 227: {pasv}")));
            }
            let to = SocketAddr::new("198.51.100.10".parse().expect("addr"), n[4] * 256 + n[5]);
            let mut data = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            let second = TcpStream::connect_timeout(&to, Duration::from_secs(2));
            if second.is_ok() {
                return Err(std::io::Error::other(format!(
                    "second connection to {to} was let through\n{t}"
                )));
            }
            t += &command(&mut r, "RETR small.bin")?;
            data.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut got = Vec::new();
            data.read_to_end(&mut got)?;
            t += &reply(&mut r)?;
            t += &command(&mut r, "QUIT")?;
            let want = std::fs::read(lab.home.join("small.bin"))?;
            if got != want {
                return Err(std::io::Error::other(format!(
                    "RETR returned {} bytes, not the file\n{t}",
                    got.len()
                )));
            }
            Ok(t)
        })?
        .map_err(netns::io_err("hand-driven PASV session"))
}

/// Logs in through the proxy and negotiates PASV, without connecting to the data
/// port: the returned control connection keeps the session's elements in place.
fn hold_pasv_negotiation(lab: &Lab) -> Result<BufReader<TcpStream>> {
    lab.topo
        .in_ns(Ns::Client, || -> std::io::Result<BufReader<TcpStream>> {
            let ctl = TcpStream::connect_timeout(
                &"198.51.100.10:21".parse().expect("addr"),
                Duration::from_secs(5),
            )?;
            ctl.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut r = BufReader::new(ctl);
            let mut t = reply(&mut r)?;
            t += &command(&mut r, &format!("USER {}", netns::FTP_USER))?;
            t += &command(&mut r, &format!("PASS {}", netns::FTP_PASSWORD))?;
            let pasv = command(&mut r, "PASV")?;
            if !pasv.starts_with("227 ") {
                return Err(std::io::Error::other(format!("PASV refused: {t}{pasv}")));
            }
            Ok(r)
        })?
        .map_err(netns::io_err("PASV negotiation"))
}

/// conntrack entries of the router as text.
fn conntrack(lab: &Lab) -> Result<String> {
    lab.topo.exec(
        Ns::Router,
        "conntrack",
        &["-L", "-p", "tcp"],
        Duration::from_secs(10),
    )
}

#[test]
fn rfc_mode_port_20_ct_mark_and_one_connection_per_negotiation() -> Result<()> {
    if !netns::is_root("rfc_mode_port_20_ct_mark_and_one_connection_per_negotiation") {
        return Ok(());
    }
    // The admin accepts data connections by the backend's mark instead of ct status.
    let mut lab = Lab::new("rf", AdminAccept::CtMark(DEFAULT_MARK))?;
    let p = lab.start_proxy(&["-b", "0.0.0.0", "-r"], 8021)?;

    // PORT with -r: the client sees the data connection come from the server's port 20.
    download_big_bypassing_proxy(
        &lab,
        &p,
        URL4,
        &["-P", "-", "--disable-eprt"],
        "PORT",
        &["EPRT"],
    )?;
    let ct = conntrack(&lab)?;
    let mark = format!("mark={}", DEFAULT_MARK);
    let port20 = ct.lines().find(|l| {
        l.contains("src=203.0.113.10 dst=198.51.100.10")
            && l.contains("dport=20 ")
            && l.contains(&mark)
    });
    if port20.is_none() {
        return Err(check(
            format!("a conntrack entry whose reply goes to 198.51.100.10 port 20, with {mark}"),
            ct,
        ));
    }
    // EPRT is never rewritten to port 20: of the two active data connections (pure-ftpd
    // sends both from its port 20), only the PORT one reaches the client from port 20.
    download_big_bypassing_proxy(&lab, &p, URL4, &["-P", "-"], "EPRT", &["PORT"])?;
    let ct = conntrack(&lab)?;
    let mut reply_ports: Vec<u32> = ct
        .lines()
        .filter(|l| l.contains("src=198.51.100.10 dst=198.51.100.1 sport=20 ") && l.contains(&mark))
        .filter_map(|l| {
            l.rsplit("dport=")
                .next()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    reply_ports.sort_unstable();
    if reply_ports.len() != 2 || reply_ports[0] != 20 || reply_ports[1] < 50001 {
        return Err(check(
            "active data connections: PORT from port 20, EPRT from 50001-65535",
            ct,
        ));
    }

    let transcript = second_connection_is_not_redirected(&lab)?;
    lab.expect_no_elements(&p, "the hand-driven session")
        .map_err(|e| check("no elements after QUIT", format!("{e}\n{transcript}")))?;
    lab.stop_proxy(&p)
}

#[test]
fn reverse_mode_with_fixed_server() -> Result<()> {
    if !netns::is_root("reverse_mode_with_fixed_server") {
        return Ok(());
    }
    // With -T the data connections carry a mark derived from the tag, and the admin
    // accepts by that mark; -v adds a log statement to the data rules.
    let mut lab = Lab::new("rv", AdminAccept::CtMark(tag_mark("ftpdata")))?;
    // The client talks to the router's own address; the proxy always connects to the
    // server given with -R. No divert rule is involved.
    let p = lab.start_proxy(
        &[
            "-b",
            "0.0.0.0",
            "-p",
            "8022",
            "-R",
            "198.51.100.10",
            "-P",
            "21",
            "--divert",
            "getsockname",
            "-T",
            "ftpdata",
            "-v",
        ],
        8022,
    )?;
    let table = lab.topo.nft(&["list", "table", "inet", &p.table])?;
    let want = format!(
        "log prefix \"ftp-proxy: \" ct mark set {:#010x}",
        tag_mark("ftpdata")
    );
    if !table.contains(&want) {
        return Err(check(format!("`{want}` in the proxy's table"), table));
    }
    let url = "ftp://203.0.113.1:8022";
    let log = lab.curl(&[
        "--disable-epsv",
        &format!("{url}/small.bin"),
        "-o",
        lab.local.join("rv-small.bin").to_str().expect("utf-8"),
    ])?;
    sent(&log, "PASV", &["EPSV"])?;
    if !log.contains("203,0,113,1,") {
        return Err(check(
            "the 227 reply to name the proxy's address 203.0.113.1",
            netns::tail(&log, 3000),
        ));
    }
    lab.same_file(&lab.home.join("small.bin"), &lab.local.join("rv-small.bin"))?;
    lab.expect_no_elements(&p, "reverse PASV")?;
    download_big_bypassing_proxy(
        &lab,
        &p,
        url,
        &["-P", "-", "--disable-eprt"],
        "PORT",
        &["EPRT"],
    )?;
    upload_small(&lab, &p, url, &[], "EPSV", &["PASV"], "rv-epsv.bin")?;
    lab.stop_proxy(&p)
}

#[test]
fn queue_option_is_refused_at_start() -> Result<()> {
    if !netns::is_root("queue_option_is_refused_at_start") {
        return Ok(());
    }
    let topo = netns::Topology::up("q")?;
    let bin = netns::proxy_binary()?;
    let out = netns::run(
        topo.cmd(Ns::Router, bin.to_str().expect("utf-8")).args([
            "-d",
            "--backend",
            "nftables",
            "--user",
            "nobody",
            "-b",
            "0.0.0.0",
            "-q",
            "std",
        ]),
        Duration::from_secs(10),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("-q has no nftables equivalent") {
        return Err(check(
            "ftp-proxy -q std --backend nftables to exit non-zero, naming -q",
            format!("{}: {err}", out.status),
        ));
    }
    let tables = topo.nft(&["list", "tables"])?;
    if tables.contains("ftp-proxy-") {
        return Err(check("no table left behind by the refused start", tables));
    }
    Ok(())
}

#[test]
fn tproxy_divert_ipv4_and_ipv6() -> Result<()> {
    if !netns::is_root("tproxy_divert_ipv4_and_ipv6") {
        return Ok(());
    }
    // The data path is the same as with REDIRECT; only the admin's divert and the
    // proxy's listener (transparent, original destination from getsockname) differ.
    let mut lab = Lab::new_with("tp", AdminAccept::CtStatusDnat, AdminDivert::Tproxy)?;
    let p4 = lab.start_proxy(&["-b", "0.0.0.0", "--divert", "tproxy"], 8021)?;
    let p6 = lab.start_proxy(&["-6", "-b", "::", "--divert", "tproxy"], 8021)?;
    download_big_bypassing_proxy(&lab, &p4, URL4, &["--disable-epsv"], "PASV", &["EPSV"])?;
    upload_small(
        &lab,
        &p4,
        URL4,
        &["-P", "-", "--disable-eprt"],
        "PORT",
        &["EPRT"],
        "tp-port.bin",
    )?;
    download_big_bypassing_proxy(&lab, &p6, URL6, &[], "EPSV", &["PASV"])?;
    upload_small(
        &lab,
        &p6,
        URL6,
        &["-P", "-"],
        "EPRT",
        &["PORT"],
        "tp6-eprt.bin",
    )?;
    for p in [&p4, &p6] {
        if !p.log_text().contains("FTP session") {
            return Err(check("the session to go through the proxy", p.log_text()));
        }
    }
    lab.stop_proxy(&p6)?;
    lab.stop_proxy(&p4)
}

#[test]
fn concurrent_sessions_and_crash_leftovers() -> Result<()> {
    if !netns::is_root("concurrent_sessions_and_crash_leftovers") {
        return Ok(());
    }
    let mut lab = Lab::new("cc", AdminAccept::CtStatusDnat)?;
    let p = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;

    // 16 sessions at once, half passive and half active: each commit is its own batch
    // on the one socket, and none may disturb another's elements.
    const N: usize = 16;
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || -> Result<()> {
                    let out = lab.local.join(format!("cc-{i}.bin"));
                    let src = format!("{URL4}/big.bin");
                    let mode: &[&str] = if i % 2 == 0 {
                        &["--disable-epsv"]
                    } else {
                        &["-P", "-"]
                    };
                    let mut args = mode.to_vec();
                    args.extend([src.as_str(), "-o", out.to_str().expect("utf-8")]);
                    lab.curl(&args)?;
                    lab.same_file(&lab.home.join("big.bin"), &out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect()
    });
    for r in results {
        r?;
    }
    lab.expect_no_elements(&p, "16 concurrent sessions")?;

    // A daemon killed with SIGKILL in the middle of a negotiation: its table belongs
    // to its netlink socket (NFT_TABLE_F_OWNER), so the kernel removes the table and
    // its armed elements as the process dies, before anyone starts a sweep.
    let ctl = hold_pasv_negotiation(&lab)?;
    let armed = lab.elements(&p)?;
    if !armed.contains("203.0.113.10 . 198.51.100.10") {
        return Err(check("elements of the held PASV negotiation", armed));
    }
    lab.signal_proxy(&p, libc::SIGKILL)?;
    let tables = lab.topo.nft(&["list", "tables"])?;
    if tables.contains(&p.table) {
        return Err(check(
            format!("{} gone as soon as the daemon died of SIGKILL", p.table),
            tables,
        ));
    }
    drop(ctl);
    let q = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;
    if q.log_text().contains("removing table") {
        return Err(check("nothing to sweep after SIGKILL", q.log_text()));
    }
    upload_small(&lab, &q, URL4, &[], "EPSV", &["PASV"], "after-crash.bin")?;
    lab.stop_proxy(&q)
}

#[test]
fn instances_in_separate_pid_namespaces_keep_their_tables() -> Result<()> {
    if !netns::is_root("instances_in_separate_pid_namespaces_keep_their_tables") {
        return Ok(());
    }
    // Two daemons, each pid 1 of its own PID namespace, in one network namespace: the
    // second one's start must neither sweep nor collide with the first one's table,
    // and the first keeps working.
    let mut lab = Lab::new("pn", AdminAccept::CtStatusDnat)?;
    let a = lab.start_proxy_in(true, &["-b", "0.0.0.0"], 8021)?;
    let b = lab.start_proxy_in(true, &["-6", "-b", "::"], 8021)?;
    for p in [&a, &b] {
        if !p.table.starts_with("ftp-proxy-1-") {
            return Err(check(
                "a daemon that is pid 1 in its namespace",
                p.table.clone(),
            ));
        }
    }
    if a.table == b.table {
        return Err(check("two distinct table names", a.table.clone()));
    }
    let tables = lab.topo.nft(&["list", "tables"])?;
    if !tables.contains(&a.table) || b.log_text().contains("removing table") {
        return Err(check(
            format!("{} kept by the start of {}", a.table, b.table),
            format!("{tables}\n{}", b.log_text()),
        ));
    }
    upload_small(&lab, &a, URL4, &[], "EPSV", &["PASV"], "pidns-a.bin")?;
    upload_small(&lab, &b, URL6, &[], "EPSV", &["PASV"], "pidns-b.bin")?;
    // SIGKILL of one takes its table only.
    lab.signal_proxy(&b, libc::SIGKILL)?;
    let tables = lab.topo.nft(&["list", "tables"])?;
    if tables.contains(&b.table) || !tables.contains(&a.table) {
        return Err(check(
            format!(
                "{} gone and {} kept after SIGKILL of the second",
                b.table, a.table
            ),
            tables,
        ));
    }
    download_big_bypassing_proxy(&lab, &a, URL4, &["--disable-epsv"], "PASV", &["EPSV"])?;
    lab.stop_proxy(&a)
}

/// Logs in, negotiates PASV twice without connecting, and quits; returns both ports.
fn two_unused_pasv_negotiations(lab: &Lab) -> Result<(u16, u16)> {
    lab.topo
        .in_ns(Ns::Client, || -> std::io::Result<(u16, u16)> {
            let ctl = TcpStream::connect_timeout(
                &"198.51.100.10:21".parse().expect("addr"),
                Duration::from_secs(5),
            )?;
            ctl.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut r = BufReader::new(ctl);
            let mut t = reply(&mut r)?;
            t += &command(&mut r, &format!("USER {}", netns::FTP_USER))?;
            t += &command(&mut r, &format!("PASS {}", netns::FTP_PASSWORD))?;
            let mut ports = Vec::new();
            for _ in 0..2 {
                let pasv = command(&mut r, "PASV")?;
                t += &pasv;
                let n: Vec<u16> = pasv
                    .split(['(', ')'])
                    .nth(1)
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
                if n.len() != 6 {
                    return Err(std::io::Error::other(format!("no 227 tuple: {t}")));
                }
                ports.push(n[4] * 256 + n[5]);
            }
            command(&mut r, "QUIT")?;
            Ok((ports[0], ports[1]))
        })?
        .map_err(netns::io_err("two PASV negotiations"))
}

/// With nftables the proxy never sees a data connection, but it can ask whether a
/// negotiation's arm element is still there when it replaces or removes it (the
/// first SYN deletes it): a used one is not reported, unused ones are, at notice.
#[test]
fn unused_negotiations_are_logged_with_nftables() -> Result<()> {
    if !netns::is_root("unused_negotiations_are_logged_with_nftables") {
        return Ok(());
    }
    let mut lab = Lab::new("un", AdminAccept::CtStatusDnat)?;
    let p = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;
    // Session #1 uses its negotiation.
    second_connection_is_not_redirected(&lab)?;
    let (first, second) = two_unused_pasv_negotiations(&lab)?;
    let want = [
        format!("#2 data connection failed: 203.0.113.10 never connected to 198.51.100.10:{first} before a new negotiation replaced the rules"),
        format!("#2 data connection failed: 203.0.113.10 never connected to 198.51.100.10:{second} before the session ended"),
    ];
    let found = netns::poll(Duration::from_secs(10), || {
        let log = p.log_text();
        want.iter().all(|w| log.contains(w.as_str())).then_some(())
    });
    let log = p.log_text();
    if found.is_none() {
        return Err(check(
            format!("{want:?} in the proxy's log"),
            netns::tail(&log, 3000),
        ));
    }
    if log.contains("#1 data connection failed") {
        return Err(check(
            "the used negotiation of #1 is not reported",
            netns::tail(&log, 3000),
        ));
    }
    lab.expect_no_elements(&p, "the unused negotiations")?;
    lab.stop_proxy(&p)
}

/// Logs in, lists the home directory on the control connection (`STAT -1 .`, a
/// multi-line reply of file names), then asks for `passive`: returns its reply and a
/// `NOOP`'s, with the transcript.
fn passive_after_a_listing(lab: &Lab, passive: &str) -> Result<(String, String, String)> {
    lab.topo
        .in_ns(
            Ns::Client,
            || -> std::io::Result<(String, String, String)> {
                let ctl = TcpStream::connect_timeout(
                    &"198.51.100.10:21".parse().expect("addr"),
                    Duration::from_secs(5),
                )?;
                ctl.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut r = BufReader::new(ctl);
                let mut t = reply(&mut r)?;
                t += &command(&mut r, &format!("USER {}", netns::FTP_USER))?;
                t += &command(&mut r, &format!("PASS {}", netns::FTP_PASSWORD))?;
                t += &command(&mut r, "STAT -1 .")?;
                let answer = command(&mut r, passive)?;
                t += &answer;
                let noop = command(&mut r, "NOOP")?;
                t += &noop;
                Ok((answer, noop, t))
            },
        )?
        .map_err(netns::io_err("a passive negotiation after a listing"))
}

#[test]
fn after_a_listing_passive_is_refused_unless_server_data_ports_bound_it() -> Result<()> {
    if !netns::is_root("after_a_listing_passive_is_refused_unless_server_data_ports_bound_it") {
        return Ok(());
    }
    // Kernel NAT cannot join two connections that both end at the proxy: with no
    // bound on the server's answer, PASV/EPSV after a listing get the proxy's 425.
    let mut lab = Lab::new("ls", AdminAccept::CtStatusDnat)?;
    let p = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;
    for passive in ["PASV", "EPSV"] {
        let (answer, noop, t) = passive_after_a_listing(&lab, passive)?;
        if !answer.starts_with("425 Passive mode refused by proxy") || !noop.starts_with("200") {
            return Err(check(
                format!("425 to {passive} after STAT -1, and the session goes on"),
                t,
            ));
        }
        if !t.contains("small.bin") {
            return Err(check("the listing reached the client", t));
        }
    }
    lab.stop_proxy(&p)?;
    // With --server-data-ports the server is asked, and its answer confined.
    let p = lab.start_proxy(
        &["-b", "0.0.0.0", "--server-data-ports", "30000:39999"],
        8021,
    )?;
    let (answer, _, t) = passive_after_a_listing(&lab, "EPSV")?;
    if !answer.starts_with("229 ") {
        return Err(check(
            "229 to EPSV after STAT -1 with --server-data-ports",
            t,
        ));
    }
    lab.stop_proxy(&p)
}

#[test]
fn a_reply_desync_removes_the_sessions_conntrack_entries() -> Result<()> {
    if !netns::is_root("a_reply_desync_removes_the_sessions_conntrack_entries") {
        return Ok(());
    }
    let mut lab = Lab::new("dk", AdminAccept::CtStatusDnat)?;
    // `213 a` ends pure-ftpd's STAT -1 listing early; the names after it answer nothing.
    std::fs::write(lab.home.join("213 a"), b"").map_err(netns::io_err("create `213 a`"))?;
    let p = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;
    let (ctl, data, port) = lab
        .topo
        .in_ns(
            Ns::Client,
            || -> std::io::Result<(BufReader<TcpStream>, TcpStream, u16)> {
                let ctl = TcpStream::connect_timeout(
                    &"198.51.100.10:21".parse().expect("addr"),
                    Duration::from_secs(5),
                )?;
                ctl.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut r = BufReader::new(ctl);
                reply(&mut r)?;
                command(&mut r, &format!("USER {}", netns::FTP_USER))?;
                command(&mut r, &format!("PASS {}", netns::FTP_PASSWORD))?;
                let pasv = command(&mut r, "PASV")?;
                let n: Vec<u16> = pasv
                    .split(['(', ')'])
                    .nth(1)
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
                if n.len() != 6 {
                    return Err(std::io::Error::other(format!("unexpected 227: {pasv}")));
                }
                let port = n[4] * 256 + n[5];
                let to = SocketAddr::new("198.51.100.10".parse().expect("addr"), port);
                let data = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                Ok((r, data, port))
            },
        )?
        .map_err(netns::io_err("a PASV data connection"))?;
    let entry = |ct: &str| {
        ct.lines().any(|l| {
            l.contains("src=203.0.113.10 dst=198.51.100.10")
                && l.contains(&format!("dport={port} "))
        })
    };
    let ct = conntrack(&lab)?;
    if !entry(&ct) {
        return Err(check(
            format!("a conntrack entry for the data connection to port {port}"),
            ct,
        ));
    }
    // The listing goes out of step: the session ends, and its translated data
    // connection with it (left alone, its entry would stay for minutes).
    let mut ctl = ctl;
    ctl.get_mut()
        .write_all(b"STAT -1 .\r\n")
        .map_err(netns::io_err("send STAT"))?;
    let mut rest = Vec::new();
    let _ = ctl.read_to_end(&mut rest);
    let mut log = String::new();
    for _ in 0..100 {
        log = p.log_text();
        if log.contains("server reply answers no command") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !log.contains("server reply answers no command") {
        return Err(check(
            "the session ended on a reply desync",
            netns::tail(&log, 3000),
        ));
    }
    let mut ct = String::new();
    for _ in 0..20 {
        ct = conntrack(&lab)?;
        if !entry(&ct) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if entry(&ct) {
        return Err(check(
            format!("no conntrack entry for port {port} after the desync"),
            format!("{ct}\n{}", netns::tail(&p.log_text(), 3000)),
        ));
    }
    drop(data);
    lab.stop_proxy(&p)
}
