//! Forward mode (`--user-at-host`) through the real daemon, started as root (so it
//! chroots to /var/empty and drops privileges, and name lookups go through its
//! resolver helper): two pure-ftpd servers on two loopback addresses, each reached
//! by naming it in `USER name@host[:port]`, with curl and Python's ftplib in PASV,
//! EPSV, PORT and EPRT; every file compared with the original of the server it
//! was meant to come from (each server has its own random files). Then the
//! destination policy's refusals.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

const FIRST: &str = "127.0.0.1";
const SECOND: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `name@host:port` percent-encoded for the user part of an ftp:// URL.
fn url_user(name: &str, server: SocketAddr) -> String {
    format!("{name}%40{}%3A{}", server.ip(), server.port())
}

struct World {
    first: FtpServer,
    second: FtpServer,
    first_files: Workdir,
    second_files: Workdir,
    proxy: ProxyProcess,
}

fn start(tag: &str) -> Result<Option<World>> {
    if !preflight()? {
        return Ok(None);
    }
    let first_files = Workdir::new(&format!("{tag}-1"))?;
    let second_files = Workdir::new(&format!("{tag}-2"))?;
    let first = FtpServer::start(&first_files, ip(FIRST))?;
    let second = FtpServer::start(&second_files, ip(SECOND))?;
    // The first server shares the proxy's address: it must be named by a host
    // entry (/32) to be allowed, and only at its own port.
    let allow_first = format!("{FIRST}/32:{}", first.addr().port());
    let args = [
        "--user-at-host",
        "--allow-dest",
        &allow_first,
        "--allow-dest",
        "127.0.0.2/32",
        "--resolve-timeout",
        "5",
    ];
    let log = first_files.root().join("ftp-proxy.log");
    let proxy = ProxyProcess::start_forward(ip(FIRST), &args, &log)?;
    Ok(Some(World {
        first,
        second,
        first_files,
        second_files,
        proxy,
    }))
}

#[test]
fn curl_reaches_each_server_named_in_user_in_all_four_modes() -> Result<()> {
    let Some(w) = start("fwd-curl")? else {
        return Ok(());
    };
    let proxy = w.proxy.addr();
    for mode in DataMode::ALL {
        let m = mode.script_name();
        // Anonymous at the second server, by address literal.
        let out = w.second_files.local().join(format!("{m}-{BIG}"));
        let url = format!(
            "ftp://{}:x%40@{}:{}/{BIG}",
            url_user("anonymous", w.second.addr()),
            proxy.ip(),
            proxy.port()
        );
        let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
        args.extend([url, "-o".into(), out.display().to_string()]);
        let log = curl(&args)?;
        prove_mode(&log, mode)?;
        if !log.contains(&format!(
            "> USER anonymous@{}:{}",
            w.second.addr().ip(),
            w.second.addr().port()
        )) {
            return Err(E2eError::check(
                "curl sent USER name@host:port",
                tail(&log, 2000),
            ));
        }
        assert_same_file(&w.second_files.original(BIG), &out)?;

        // The named user at the first server uploads; the file lands in its home.
        let remote = format!("up-{m}-{SMALL}");
        let url = format!(
            "ftp://{}:{PASSWORD}@{}:{}/{remote}",
            url_user(USER, w.first.addr()),
            proxy.ip(),
            proxy.port()
        );
        let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
        args.extend([
            "-T".into(),
            w.first_files.original(SMALL).display().to_string(),
            url,
        ]);
        let log = curl(&args)?;
        prove_mode(&log, mode)?;
        assert_same_file(
            &w.first_files.original(SMALL),
            &w.first_files.user().join(&remote),
        )?;
    }
    let log = w.proxy.log();
    for server in [w.first.addr(), w.second.addr()] {
        if !log.contains("forward login of user") || !log.contains(&format!("to server {server}")) {
            return Err(E2eError::check(
                format!("the proxy logged a forward login to {server}"),
                tail(&log, 3000),
            ));
        }
    }
    if !log.contains("server greeting: 220") {
        return Err(E2eError::check(
            "the servers' greetings are logged",
            tail(&log, 3000),
        ));
    }
    Ok(())
}

#[test]
fn ftplib_logs_in_by_name_through_the_resolver_helper() -> Result<()> {
    let Some(w) = start("fwd-ftplib")? else {
        return Ok(());
    };
    // `localhost` is resolved by the helper outside the chroot (the daemon itself
    // has no /etc/hosts): its IPv4 address is the first server, at that port.
    let user = format!("USER {USER}@localhost {}", w.first.addr().port());
    for mode in DataMode::ALL {
        let m = mode.script_name();
        let local = w.first_files.local().join(format!("py-{m}-{BIG}"));
        let ops = vec![
            format!("cmd:331:{user}"),
            format!("cmd:230:PASS {PASSWORD}"),
            format!("{m}:retr:{BIG}:{}", local.display()),
            "quit".into(),
        ];
        let t = ftplib(w.proxy.addr(), &ops)?;
        if !t.contains("< 220 ftp-proxy ready") {
            return Err(E2eError::check("the proxy's own greeting", t));
        }
        assert_same_file(&w.first_files.original(BIG), &local)?;
    }
    let log = w.proxy.log();
    if !log.contains("name lookups for --user-at-host run in helper process") {
        return Err(E2eError::check(
            "the daemon started its resolver helper",
            tail(&log, 3000),
        ));
    }
    Ok(())
}

#[test]
fn destinations_outside_the_policy_are_refused_and_the_session_may_retry() -> Result<()> {
    let Some(w) = start("fwd-refuse")? else {
        return Ok(());
    };
    let mut ctl = Control::connect(w.proxy.addr(), Duration::from_secs(15))?;
    let greeting = ctl.read_reply()?;
    let proxy_port = w.proxy.addr().port();
    let checks: Vec<(String, &str)> = vec![
        // Not listed at all.
        (
            "USER ftp@127.0.0.3".into(),
            "530 destination 127.0.0.3 refused",
        ),
        // The second server's address is listed, but not the first's other ports:
        // the proxy's own listener is refused.
        (
            format!("USER ftp@{FIRST}:{proxy_port}"),
            "530 destination 127.0.0.1 refused",
        ),
        (
            "USER ftp@no-such-host.invalid".into(),
            "530 cannot resolve no-such-host.invalid",
        ),
        ("USER ftp".into(), "530 no @host in the user name"),
        ("LIST".into(), "530 Log in with USER name@host"),
    ];
    let mut seen = Vec::new();
    for (cmd, want) in &checks {
        let r = ctl.command(cmd)?;
        if !r.last().starts_with(want) {
            return Err(E2eError::check(
                format!("{cmd} answered `{want}...`"),
                ctl.transcript(),
            ));
        }
        seen.push(r.last().to_string());
    }
    // After the refusals the same session still logs in.
    let r = ctl.command(&format!("USER anonymous@{}", w.second.addr()))?;
    if greeting.code != 220 || !matches!(r.code, 230 | 331) {
        return Err(E2eError::check(
            "the session logs in after its refusals",
            ctl.transcript(),
        ));
    }
    let log = w.proxy.log();
    if !log
        .contains("destination 127.0.0.3:21 (from USER ...@127.0.0.3) refused: not in --allow-dest")
    {
        return Err(E2eError::check(
            "each refusal is logged with its reason",
            tail(&log, 3000),
        ));
    }
    let _ = ctl.command("QUIT");
    Ok(())
}

/// The proxy in a private mount namespace whose `/etc/hosts` names the second
/// server `second.ftp.test` and whose `/etc/resolv.conf` points at a name server
/// that never answers (a UDP socket this test holds): a name in the hosts file is
/// served, a name that goes to DNS hangs in the helper, is cut off by
/// `--resolve-timeout` with a 421, and while it hangs another session logs in.
#[test]
fn a_hosts_entry_is_found_and_a_silent_name_server_is_cut_off() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let files = Workdir::new("fwd-slow")?;
    let second = FtpServer::start(&files, ip(SECOND))?;
    let etc = files.root().join("etc");
    std::fs::create_dir_all(&etc).map_err(E2eError::io("mkdir etc"))?;
    let hosts = etc.join("hosts");
    let resolv = etc.join("resolv.conf");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{SECOND} second.ftp.test\n"),
    )
    .map_err(E2eError::io("write hosts"))?;
    // A name server that reads and never answers. resolv.conf has no port
    // syntax, so it takes port 53 of an address nothing else uses.
    let silent = std::net::UdpSocket::bind("127.0.0.77:53")
        .map_err(E2eError::io("bind the silent name server on port 53"))?;
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:30 attempts:1\n",
    )
    .map_err(E2eError::io("write resolv.conf"))?;
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && exec \"$@\"",
        hosts.display(),
        resolv.display()
    );
    let wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args = [
        "--user-at-host",
        "--allow-dest",
        "127.0.0.2/32",
        "--resolve-timeout",
        "2",
    ];
    let log = files.root().join("ftp-proxy.log");
    let proxy = ProxyProcess::start_forward_wrapped(ip(FIRST), &args, &log, &wrapper)?;

    let mut slow = Control::connect(proxy.addr(), Duration::from_secs(15))?;
    slow.read_reply()?;
    slow.send_raw(b"USER ftp@slow.ftp.test\r\n")?;
    let started = std::time::Instant::now();
    // Meanwhile: a name from the hosts file, resolved by the same helper.
    let mut fast = Control::connect(proxy.addr(), Duration::from_secs(15))?;
    fast.read_reply()?;
    let r = fast.command(&format!(
        "USER anonymous@second.ftp.test:{}",
        second.addr().port()
    ))?;
    let fast_took = started.elapsed();
    let cut = slow.read_reply()?;
    let slow_took = started.elapsed();
    let eof = slow.read_reply().is_err();
    let mut buf = [0u8; 512];
    let queried = silent
        .set_read_timeout(Some(Duration::from_secs(1)))
        .and_then(|()| silent.recv_from(&mut buf))
        .is_ok();
    if !matches!(r.code, 230 | 331)
        || fast_took > Duration::from_secs(2)
        || cut.code != 421
        || !cut.last().contains("Lookup of slow.ftp.test timed out")
        || !eof
        || slow_took < Duration::from_millis(1900)
        || slow_took > Duration::from_secs(6)
        || !queried
    {
        return Err(E2eError::check(
            "second.ftp.test logs in at once; slow.ftp.test ends with 421 after about 2 s; the silent server was asked",
            format!(
                "fast {fast_took:?}: {}\nslow {slow_took:?} eof={eof} queried={queried}: {}\nproxy: {}",
                fast.transcript(),
                slow.transcript(),
                tail(&proxy.log(), 3000)
            ),
        ));
    }
    drop(second);
    if !proxy.log().contains("server name lookup timed out") {
        return Err(E2eError::check(
            "the timeout is logged",
            tail(&proxy.log(), 3000),
        ));
    }
    Ok(())
}

/// lftp logs in as `alice@127.0.0.1:PORT` (a host entry of the policy) and
/// downloads and uploads in PASV, EPSV and PORT (lftp sends PORT, not EPRT, on
/// IPv4); the files land on, and come from, the server named.
#[test]
fn lftp_logs_in_as_name_at_host_in_every_mode() -> Result<()> {
    let Some(w) = start("fwd-lftp")? else {
        return Ok(());
    };
    let user = format!("{USER}@{}", w.first.addr());
    for mode in [DataMode::Pasv, DataMode::Epsv, DataMode::Port] {
        let m = mode.script_name();
        let local = w.first_files.local().join(format!("lftp-{m}-{BIG}"));
        let remote = format!("lftp-up-{m}.bin");
        let log = lftp_as(
            w.proxy.addr(),
            &user,
            PASSWORD,
            mode.lftp_settings(),
            &[
                format!("get {BIG} -o {}", local.display()),
                format!(
                    "put {} -o {remote}",
                    w.first_files.original(SMALL).display()
                ),
            ],
        )?;
        if !log.contains(&format!("> USER {user}"))
            || !log.contains(&format!("> {}", mode.command()))
        {
            return Err(E2eError::check(
                format!("lftp sent USER {user} and {}", mode.command()),
                tail(&log, 3000),
            ));
        }
        assert_same_file(&w.first_files.original(BIG), &local)?;
        assert_same_file(
            &w.first_files.original(SMALL),
            &w.first_files.user().join(&remote),
        )?;
    }
    Ok(())
}

/// With `-A` a forward login must still be anonymous: `bob@host` is refused with
/// the original's 500 and never reaches a server; `anonymous@host` logs in.
#[test]
fn anonymous_only_checks_the_user_part_of_a_forward_login() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let files = Workdir::new("fwd-anon")?;
    let second = FtpServer::start(&files, ip(SECOND))?;
    let args = ["-A", "--user-at-host", "--allow-dest", "127.0.0.2/32"];
    let proxy = ProxyProcess::start_forward(ip(FIRST), &args, &files.root().join("ftp-proxy.log"))?;
    let mut ctl = Control::connect(proxy.addr(), Duration::from_secs(15))?;
    ctl.read_reply()?;
    let bob = ctl.command(&format!("USER {USER}@{}", second.addr()))?;
    let anon = ctl.command(&format!("USER anonymous@{}", second.addr()))?;
    let log = proxy.log();
    if bob.code != 500
        || !bob.last().contains("Only anonymous FTP allowed")
        || !matches!(anon.code, 230 | 331)
        || log.matches("forward login of user").count() != 1
    {
        return Err(E2eError::check(
            "bob@host refused with 500 and no connect; anonymous@host logs in",
            format!("{}\nproxy: {}", ctl.transcript(), tail(&log, 3000)),
        ));
    }
    let _ = ctl.command("QUIT");
    Ok(())
}
