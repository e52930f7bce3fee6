//! Issue 17 through the real binary: `--server-data-mode passive` and `active` with
//! curl and pure-ftpd, a scripted server that answers EPSV and PASV in the "wrong"
//! ways, and an IPv6 client through `-b ::1 -R 127.0.0.1` to an IPv4 pure-ftpd (and
//! the reverse). Downloads and uploads are compared by content; what the server saw
//! is read from the proxy's `-D7` log of the server's own replies (pure-ftpd runs
//! without syslog) and, for the scripted server, from its command log.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Lines of the proxy's log that contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn expect(ok: bool, what: &str, log: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::check(what.to_string(), tail(log, 4000)))
    }
}

/// curl with `-g` (IPv6 literals in URLs) downloads `remote` to `local`.
fn retr(t: SocketAddr, mode: DataMode, remote: &str, local: &Path) -> Result<String> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.extend([
        "-g".into(),
        ftp_url(t, Login::User, remote),
        "-o".into(),
        local.display().to_string(),
    ]);
    curl(&args)
}

/// curl with `-g` uploads `local` as `remote`.
fn stor(t: SocketAddr, mode: DataMode, local: &Path, remote: &str) -> Result<String> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.extend([
        "-g".into(),
        "-T".into(),
        local.display().to_string(),
        ftp_url(t, Login::User, remote),
    ]);
    curl(&args)
}

/// Downloads and uploads both test files in `mode`, each compared by content, each
/// transcript proving `mode` was what the client used.
/// Proxy ports found taken and replaced (`in use, trying another`): each makes
/// the proxy write its PORT/EPRT line once more for the same transfer.
fn retries(log: &str) -> usize {
    count(log, "in use, trying another")
}

/// `n` lines for `want` transfers, allowing one more line per port retry.
fn within(n: usize, want: usize, retries: usize) -> bool {
    (want..=want + retries).contains(&n)
}

fn round_trip(fx_work: &Workdir, t: SocketAddr, mode: DataMode, tag: &str) -> Result<()> {
    let m = mode.script_name();
    for name in [SMALL, BIG] {
        let out = fx_work.local().join(format!("{tag}-{m}-{name}"));
        let log = retr(t, mode, name, &out)?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx_work.original(name), &out)?;
        let remote = format!("up-{tag}-{m}-{name}");
        let log = stor(t, mode, &fx_work.original(name), &remote)?;
        prove_mode(&log, mode)?;
        assert_same_file(&fx_work.original(name), &fx_work.user().join(&remote))?;
    }
    Ok(())
}

#[test]
fn passive_mode_serves_curl_port_and_eprt_from_the_servers_passive_port() -> Result<()> {
    let Some(fx) = Fixture::start("xl-passive", false, &["--server-data-mode", "passive"])? else {
        return Ok(());
    };
    let t = fx.target();
    for mode in [DataMode::Port, DataMode::Eprt] {
        round_trip(&fx.work, t, mode, "passive")?;
    }
    let log = fx.proxy_log();
    // 2 modes x 2 files x (download + upload), each bridged with a port of
    // pure-ftpd's passive range, which only a PASV to it opens.
    let bridged: Vec<u16> = log
        .lines()
        .filter_map(|l| l.split("bridged with server passive port ").nth(1))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    expect(bridged.len() == 8, "8 bridged transfers logged", &log)?;
    expect(
        bridged
            .iter()
            .all(|p| (PASSIVE_RANGE.0..=PASSIVE_RANGE.1).contains(p)),
        "every bridged port is in pure-ftpd's passive range",
        &log,
    )?;
    // pure-ftpd answered PASV each time and was never sent PORT or EPRT.
    expect(
        count(&log, "server: 227 Entering Passive Mode") == 8,
        "pure-ftpd answered 8 PASVs with 227",
        &log,
    )?;
    expect(
        count(&log, "server: 200 PORT") + count(&log, "server: 200 EPRT") == 0,
        "pure-ftpd never took a PORT/EPRT",
        &log,
    )?;
    Ok(())
}

#[test]
fn active_mode_serves_curl_pasv_and_epsv_through_the_servers_connection() -> Result<()> {
    let Some(fx) = Fixture::start("xl-active", false, &["--server-data-mode", "active"])? else {
        return Ok(());
    };
    let t = fx.target();
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        round_trip(&fx.work, t, mode, "active")?;
    }
    let log = fx.proxy_log();
    expect(
        within(count(&log, "joined with server to port"), 8, retries(&log)),
        "8 joined transfers logged",
        &log,
    )?;
    // pure-ftpd was sent PORT (IPv4), took it, and never answered a PASV/EPSV.
    expect(
        count(&log, "server: 200 PORT command successful") == 8,
        "pure-ftpd took 8 PORTs",
        &log,
    )?;
    expect(
        count(&log, "server: 227") + count(&log, "server: 229") == 0,
        "pure-ftpd was never asked PASV/EPSV",
        &log,
    )?;
    Ok(())
}

#[test]
fn ipv6_client_to_ipv4_server_and_back_through_the_relay() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    for (client_ip, server_ip, modes) in [
        (V6, V4, [DataMode::Epsv, DataMode::Eprt]),
        (V4, V6, [DataMode::Pasv, DataMode::Port]),
    ] {
        let tag = if client_ip.is_ipv6() {
            "xl-6to4"
        } else {
            "xl-4to6"
        };
        let work = Workdir::new(tag)?;
        let server = FtpServer::start(&work, server_ip)?;
        let proxy = ProxyProcess::start(
            client_ip,
            server.addr(),
            &[],
            &work.root().join("ftp-proxy.log"),
        )?;
        for mode in modes {
            round_trip(&work, proxy.addr(), mode, tag)?;
        }
        let log = proxy.log();
        let started = format!("client {client_ip} to server {server_ip} via proxy");
        expect(count(&log, &started) >= 8, &started, &log)?;
        if client_ip.is_ipv6() {
            // EPSV stays EPSV towards the IPv4 server (RFC 6384); EPRT becomes EPRT |1|.
            expect(
                count(&log, "server: 229 Extended Passive mode OK") == 4,
                "pure-ftpd answered 4 EPSVs",
                &log,
            )?;
            expect(
                within(count(&log, "proxy: EPRT |1|127.0.0.1|"), 4, retries(&log)),
                "4 EPRT |1| with the proxy's IPv4 address",
                &log,
            )?;
        } else {
            // Only EPSV/EPRT exist towards the IPv6 server; the client got 227/200.
            expect(
                count(&log, "proxy: EPSV") == 4,
                "4 PASVs sent as EPSV",
                &log,
            )?;
            expect(
                within(count(&log, "proxy: EPRT |2|::1|"), 4, retries(&log)),
                "4 PORTs sent as EPRT |2|",
                &log,
            )?;
        }
    }
    Ok(())
}

/// A scripted FTP server: just enough of RFC 959 for curl's RETR and STOR, with
/// EPSV and PASV answered as `variant` says. Every command it reads is appended to
/// its log. It serves one control connection at a time and exits when idle for
/// 30 s or after 120 s in all.
const SCRIPTED_SERVER: &str = r#"
import socket, sys, time
variant, port_file, log_file, data_file, upload_file = sys.argv[1:6]
data = open(data_file, 'rb').read()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 0))
srv.listen(8)
srv.settimeout(30)
with open(port_file + '.tmp', 'w') as f:
    f.write(str(srv.getsockname()[1]))
import os
os.rename(port_file + '.tmp', port_file)
log = open(log_file, 'a', buffering=1)
refusals = {'epsv500': '500 EPSV not understood',
            'epsv502': '502 Command not implemented',
            'epsv522': '522 Network protocol not supported, use (1)'}
deadline = time.time() + 120
while time.time() < deadline:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        break
    c.settimeout(30)
    f = c.makefile('rwb', buffering=0)
    def reply(s):
        f.write((s + '\r\n').encode())
    reply('220 scripted server')
    dl = None
    try:
        for raw in f:
            line = raw.decode('latin-1').strip()
            log.write(line + '\n')
            cmd = line.split(' ')[0].upper()
            if cmd == 'USER':
                reply('331 password please')
            elif cmd == 'PASS':
                reply('230 logged in')
            elif cmd == 'PWD':
                reply('257 "/"')
            elif cmd in ('CWD', 'TYPE'):
                reply('200 ok')
            elif cmd == 'SIZE':
                reply('213 %d' % len(data))
            elif cmd in ('EPSV', 'PASV'):
                if cmd == 'EPSV' and variant in refusals:
                    reply(refusals[variant])
                    continue
                dl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                dl.bind(('127.0.0.1', 0))
                dl.listen(1)
                dl.settimeout(30)
                p = dl.getsockname()[1]
                form = '229' if cmd == 'EPSV' else '227'
                if variant == 'epsv227' and cmd == 'EPSV':
                    form = '227'
                if variant == 'pasv229' and cmd == 'PASV':
                    form = '229'
                if form == '227':
                    # An address the proxy must ignore.
                    reply('227 Entering Passive Mode (10,9,9,9,%d,%d)' % (p >> 8, p & 255))
                else:
                    reply('229 Entering Extended Passive Mode (|||%d|)' % p)
            elif cmd == 'RETR' and dl:
                reply('150 opening data connection')
                d, _ = dl.accept()
                d.sendall(data)
                d.close()
                dl.close()
                dl = None
                reply('226 transfer complete')
            elif cmd == 'STOR' and dl:
                reply('150 ready to receive')
                d, _ = dl.accept()
                d.settimeout(30)
                got = bytearray()
                while True:
                    b = d.recv(65536)
                    if not b:
                        break
                    got += b
                d.close()
                dl.close()
                dl = None
                open(upload_file, 'wb').write(bytes(got))
                reply('226 stored')
            elif cmd == 'QUIT':
                reply('221 bye')
                break
            else:
                reply('502 not implemented')
    except Exception as e:
        log.write('error %r\n' % (e,))
    c.close()
"#;

/// The scripted server, running; its port and its command log.
struct Scripted {
    guard: ChildGuard,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Scripted {
    fn start(work: &Workdir, variant: &str, data: &Path, upload: &Path) -> Result<Scripted> {
        let script = work.root().join("scripted.py");
        fs::write(&script, SCRIPTED_SERVER).map_err(E2eError::io("write scripted.py"))?;
        let port_file = work.root().join(format!("{variant}.port"));
        let log = work.root().join(format!("{variant}.log"));
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([variant])
            .arg(&port_file)
            .arg(&log)
            .arg(data)
            .arg(upload)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let guard = ChildGuard::spawn(&mut cmd, format!("scripted FTP server ({variant})"))?;
        let port = wait_for(
            "the scripted server's port",
            Duration::from_secs(10),
            || {
                Ok(fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok()))
            },
            String::new,
        )?;
        Ok(Scripted {
            guard,
            addr: SocketAddr::new(V4, port),
            log,
        })
    }

    /// The commands it has read, one a line.
    fn commands(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn epsv_refusals_and_crossed_answers_from_a_scripted_server() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    for (variant, mode) in [
        ("epsv500", DataMode::Epsv),
        ("epsv502", DataMode::Epsv),
        ("epsv522", DataMode::Epsv),
        ("epsv227", DataMode::Epsv),
        ("pasv229", DataMode::Pasv),
    ] {
        let work = Workdir::new(variant)?;
        let upload = work.root().join("uploaded.bin");
        let server = Scripted::start(&work, variant, &work.original(BIG), &upload)?;
        let proxy = ProxyProcess::start(V4, server.addr, &[], &work.root().join("proxy.log"))?;
        // Two downloads on one control connection, then an upload.
        let got = [work.local().join("a.bin"), work.local().join("b.bin")];
        let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
        for g in &got {
            args.extend([
                ftp_url(proxy.addr(), Login::User, BIG),
                "-o".into(),
                g.display().to_string(),
            ]);
        }
        let log = curl(&args)?;
        let ports = prove_mode(&log, mode)?;
        expect(ports.len() == 2, "two passive answers to the client", &log)?;
        expect(
            ports.iter().all(|&p| p >= 49152),
            "the client got the proxy's ports",
            &log,
        )?;
        for g in &got {
            assert_same_file(&work.original(BIG), g)?;
        }
        let log = curl(&{
            let mut a: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
            a.extend([
                "-T".into(),
                work.original(SMALL).display().to_string(),
                ftp_url(proxy.addr(), Login::User, "up.bin"),
            ]);
            a
        })?;
        prove_mode(&log, mode)?;
        assert_same_file(&work.original(SMALL), &upload)?;

        let seen = server.commands();
        let n = |w: &str| seen.iter().filter(|l| l.as_str() == w).count();
        let shown = seen.join("\n");
        match variant {
            // The first session: EPSV refused, PASV, then PASV at once for the
            // second download; the upload's session learns it again.
            "epsv500" | "epsv502" | "epsv522" => expect(
                n("EPSV") == 2 && n("PASV") == 3,
                "the server saw EPSV once per session and PASV for every transfer",
                &shown,
            )?,
            "epsv227" => expect(
                n("EPSV") == 3 && n("PASV") == 0,
                "the server saw only EPSV (answered 227)",
                &shown,
            )?,
            _ => expect(
                n("PASV") == 3 && n("EPSV") == 0,
                "the server saw only PASV (answered 229)",
                &shown,
            )?,
        }
        drop(proxy);
        drop(server.guard);
    }
    Ok(())
}

#[test]
fn translated_modes_and_crossed_families_start_only_with_the_relay() -> Result<()> {
    let bin = proxy_binary()?;
    for extra in [
        &["--server-data-mode", "passive"][..],
        &["--server-data-mode", "active"][..],
        &["-b", "::1", "-R", "127.0.0.1"][..],
    ] {
        let mut args = vec!["-d", "-p", "0", "--backend", "nftables"];
        args.extend_from_slice(extra);
        args.extend(["--user", "nobody", "--chroot", "/"]);
        let out = run(&bin.display().to_string(), &args, 20)?;
        let err = String::from_utf8_lossy(&out.stderr);
        expect(
            out.status.code() == Some(1) && err.contains("which only the relay can carry"),
            &format!("{extra:?} with nftables is refused at start-up"),
            &err,
        )?;
    }
    Ok(())
}

#[test]
fn two_listeners_one_per_family_each_session_of_its_own() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("xl-two-listeners")?;
    let server = FtpServer::start(&work, V4)?;
    let proxy = ProxyProcess::start(
        V4,
        server.addr(),
        &["-b", "::1"],
        &work.root().join("ftp-proxy.log"),
    )?;
    let v4 = proxy.addr();
    let v6 = SocketAddr::new(V6, v4.port());
    round_trip(&work, v4, DataMode::Pasv, "l4")?;
    round_trip(&work, v6, DataMode::Epsv, "l6")?;
    round_trip(&work, v6, DataMode::Eprt, "l6")?;
    let log = proxy.log();
    expect(
        count(&log, "client 127.0.0.1 to server 127.0.0.1") == 4
            && count(&log, "client ::1 to server 127.0.0.1") == 8,
        "4 IPv4 and 8 IPv6 sessions, all to the IPv4 server",
        &log,
    )?;
    // An IPv6 client's PASV is still refused (no 227 can name an IPv6 address).
    let mut c = Control::connect(v6, Duration::from_secs(5))?;
    let banner = c.read_reply()?;
    expect(banner.code == 220, "banner through the IPv6 listener", &log)?;
    let r = c.command("PASV")?;
    expect(
        r.code == 500,
        "PASV from ::1 refused with 500",
        &proxy.log(),
    )?;
    Ok(())
}
