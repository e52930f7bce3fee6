//! `--route-file` through the real daemon, started as root (it chroots to
//! /var/empty and drops privileges, so every reload reads the file through the
//! directory opened before the chroot, and host names go through the resolver
//! helper): two pure-ftpd servers on 127.0.0.1 and 127.0.0.2, each with its own
//! random files, a table sending `alice` to the first and `anonymous` (and every
//! other name) to the second. curl and Python's ftplib download in PASV and EPSV
//! and each file is compared with the original of the server the user was
//! meant to reach. Then reloads on SIGUSR1: a changed route reaches the next
//! session while a running one keeps its server; a broken file keeps the table
//! and logs FILE:LINE. At start-up a broken file is exit 1 with FILE:LINE.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

const FIRST: &str = "127.0.0.1";
const SECOND: &str = "127.0.0.2";
const RELOADED: &str = "reloaded:";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct World {
    first: FtpServer,
    second: FtpServer,
    first_files: Workdir,
    second_files: Workdir,
    routes: PathBuf,
    proxy: ProxyProcess,
}

/// The routes of `world`: `alice` to `alice_to`, `dev-*` to the first server by
/// the name `localhost` (resolved by the helper), the rest to `rest_to`, if given.
fn table(alice_to: SocketAddr, first: SocketAddr, rest_to: Option<SocketAddr>) -> String {
    let mut t = format!(
        "# written by e2e_routes\nalice {alice_to}\ndev-* localhost:{}\n",
        first.port()
    );
    if let Some(rest) = rest_to {
        t += &format!("anonymous {rest}\n*     {rest}\n");
    }
    t
}

/// Replaces the file as editors do: a new file renamed over the old one.
fn replace(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).map_err(E2eError::io("write the new route file"))?;
    std::fs::rename(&tmp, path).map_err(E2eError::io("rename the route file"))
}

fn start(tag: &str, default: bool) -> Result<Option<World>> {
    if !preflight()? {
        return Ok(None);
    }
    let first_files = Workdir::new(&format!("{tag}-1"))?;
    let second_files = Workdir::new(&format!("{tag}-2"))?;
    let first = FtpServer::start(&first_files, ip(FIRST))?;
    let second = FtpServer::start(&second_files, ip(SECOND))?;
    // A directory of its own, readable by the unprivileged user the daemon
    // becomes: the reload opens the file inside it after the drop.
    let dir = first_files.root().join("routes.d");
    std::fs::create_dir(&dir).map_err(E2eError::io("mkdir routes.d"))?;
    let routes = dir.join("ftp-proxy.routes");
    let rest = default.then(|| second.addr());
    std::fs::write(&routes, table(first.addr(), first.addr(), rest))
        .map_err(E2eError::io("write the route file"))?;
    let file = routes.display().to_string();
    let args = ["--route-file", file.as_str(), "--resolve-timeout", "5"];
    let log = first_files.root().join("ftp-proxy.log");
    let proxy = ProxyProcess::start_forward(ip(FIRST), &args, &log)?;
    Ok(Some(World {
        first,
        second,
        first_files,
        second_files,
        routes,
        proxy,
    }))
}

impl World {
    /// SIGUSR1 to the daemon and, as `pkill -USR1 -x ftp-proxy` would, to its
    /// resolver helper, which must ignore it; then waits for the `n`th reload's
    /// log line (or the error's).
    fn reload(&mut self, needle: &str, n: usize) -> Result<()> {
        let main = self.proxy.pid();
        for pid in self.proxy.leftovers().into_iter().filter(|&p| p != main) {
            // SAFETY: kill(2) with a pid of this test's own process group.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
        }
        self.proxy.signal(libc::SIGUSR1)?;
        for _ in 0..100 {
            if self.proxy.log().matches(needle).count() >= n {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(E2eError::check(
            format!("reload number {n} logged `{needle}`"),
            tail(&self.proxy.log(), 3000),
        ))
    }

    /// curl downloads BIG as `user` in `mode` into `out`.
    fn curl_big(&self, user: &str, password: &str, mode: DataMode, out: &Path) -> Result<()> {
        let proxy = self.proxy.addr();
        let url = format!(
            "ftp://{user}:{password}@{}:{}/{BIG}",
            proxy.ip(),
            proxy.port()
        );
        let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
        args.extend([url, "-o".into(), out.display().to_string()]);
        let log = curl(&args)?;
        prove_mode(&log, mode)?;
        Ok(())
    }
}

#[test]
fn each_user_reaches_its_own_server_with_curl_and_ftplib() -> Result<()> {
    let Some(w) = start("routes-users", true)? else {
        return Ok(());
    };
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let m = mode.script_name();
        // alice: the first server's file.
        let out = w.first_files.local().join(format!("curl-{m}-{BIG}"));
        w.curl_big(USER, PASSWORD, mode, &out)?;
        assert_same_file(&w.first_files.original(BIG), &out)?;
        // anonymous: the second server's.
        let out = w.second_files.local().join(format!("curl-{m}-{BIG}"));
        w.curl_big("anonymous", "x%40", mode, &out)?;
        assert_same_file(&w.second_files.original(BIG), &out)?;

        for (user, password, files) in [
            (USER, PASSWORD, &w.first_files),
            ("anonymous", "x@", &w.second_files),
        ] {
            let local = files.local().join(format!("py-{m}-{user}-{BIG}"));
            let ops = vec![
                format!("login:{user}:{password}"),
                format!("{m}:retr:{BIG}:{}", local.display()),
                "quit".into(),
            ];
            let t = ftplib(w.proxy.addr(), &ops)?;
            if !t.contains("< 220 ftp-proxy ready") || !t.contains("> USER ") {
                return Err(E2eError::check("the proxy's own greeting, then USER", t));
            }
            assert_same_file(&files.original(BIG), &local)?;
        }
    }
    // A name mapped by prefix to a host name: resolved by the helper outside the
    // chroot, and sent to that server unchanged.
    let mut ctl = Control::connect(w.proxy.addr(), Duration::from_secs(15))?;
    let greeting = ctl.read_reply()?;
    let r = ctl.command("USER dev-joe")?;
    if greeting.code != 220 || r.code != 331 {
        return Err(E2eError::check(
            "dev-joe is routed to the first server, whose 331 is relayed",
            ctl.transcript(),
        ));
    }
    let _ = ctl.command("QUIT");
    let log = w.proxy.log();
    for want in [
        format!("routed login of user 'alice' to server {}", w.first.addr()),
        format!(
            "routed login of user 'anonymous' to server {}",
            w.second.addr()
        ),
        format!(
            "routed login of user 'dev-joe' to server {}",
            w.first.addr()
        ),
        "server greeting: 220".to_string(),
        "route file ".to_string(),
    ] {
        if !log.contains(&want) {
            return Err(E2eError::check(
                format!("the proxy logged `{want}`"),
                tail(&log, 3000),
            ));
        }
    }
    if log.contains("not running as root") {
        return Err(E2eError::check(
            "the daemon ran as root (chroot)",
            tail(&log, 3000),
        ));
    }
    Ok(())
}

#[test]
fn a_reload_moves_the_next_session_and_not_a_running_one() -> Result<()> {
    let Some(mut w) = start("routes-reload", true)? else {
        return Ok(());
    };
    // A session logged in as alice on the first server before the reload.
    let mut running = Control::connect(w.proxy.addr(), Duration::from_secs(15))?;
    running.read_reply()?;
    running.command(&format!("USER {USER}"))?;
    let r = running.command(&format!("PASS {PASSWORD}"))?;
    if r.code != 230 {
        return Err(E2eError::check("alice logged in", running.transcript()));
    }
    // A session greeted before the reload that sends USER after it.
    let mut waiting = Control::connect(w.proxy.addr(), Duration::from_secs(15))?;
    waiting.read_reply()?;

    replace(
        &w.routes,
        &table(w.second.addr(), w.first.addr(), Some(w.second.addr())),
    )?;
    w.reload(RELOADED, 1)?;

    // The running session is still on the first server: its directory lands there.
    let r = running.command("MKD made-after-reload")?;
    if r.code != 257
        || !w.first_files.user().join("made-after-reload").is_dir()
        || w.second_files.user().join("made-after-reload").exists()
    {
        return Err(E2eError::check(
            "the running session kept its server",
            running.transcript(),
        ));
    }
    // The waiting one, and every new one, goes where the new table says.
    waiting.command(&format!("USER {USER}"))?;
    let r = waiting.command(&format!("PASS {PASSWORD}"))?;
    let r2 = waiting.command("MKD made-by-the-next")?;
    if r.code != 230
        || r2.code != 257
        || !w.second_files.user().join("made-by-the-next").is_dir()
        || w.first_files.user().join("made-by-the-next").exists()
    {
        return Err(E2eError::check(
            "the session greeted before the reload uses the new table",
            waiting.transcript(),
        ));
    }
    for mode in [DataMode::Pasv, DataMode::Epsv] {
        let out = w
            .second_files
            .local()
            .join(format!("after-{}", mode.script_name()));
        w.curl_big(USER, PASSWORD, mode, &out)?;
        assert_same_file(&w.second_files.original(BIG), &out)?;
    }
    let _ = running.command("QUIT");
    let _ = waiting.command("QUIT");
    let log = w.proxy.log();
    if !log.contains(&format!(
        "routed login of user 'alice' to server {}",
        w.second.addr()
    )) {
        return Err(E2eError::check("the new route is logged", tail(&log, 3000)));
    }
    Ok(())
}

#[test]
fn a_broken_reload_keeps_the_table_and_an_unmapped_user_is_refused() -> Result<()> {
    let Some(mut w) = start("routes-broken", false)? else {
        return Ok(());
    };
    // No default: a name the table does not map is refused, and may try again.
    let mut ctl = Control::connect(w.proxy.addr(), Duration::from_secs(15))?;
    ctl.read_reply()?;
    let refused = ctl.command("USER bob")?;
    let again = ctl.command(&format!("USER {USER}"))?;
    if !refused
        .last()
        .starts_with("530 no server is configured for user bob")
        || again.code != 331
    {
        return Err(E2eError::check(
            "bob is refused with 530, then alice is routed",
            ctl.transcript(),
        ));
    }
    let _ = ctl.command("QUIT");

    // Line 3 is broken: the reload is refused with FILE:LINE, the table stays.
    replace(
        &w.routes,
        &format!(
            "alice {}\n* {}\nbroken-line-without-a-destination\n",
            w.second.addr(),
            w.second.addr()
        ),
    )?;
    w.reload("keeping the previous table", 1)?;
    let log = w.proxy.log();
    let want = format!("{}:3: a pattern without a destination", w.routes.display());
    if !log.contains(&want) || log.contains(RELOADED) {
        return Err(E2eError::check(
            format!("the refused reload logged `{want}`"),
            tail(&log, 3000),
        ));
    }
    let out = w.first_files.local().join("after-broken");
    w.curl_big(USER, PASSWORD, DataMode::Epsv, &out)?;
    assert_same_file(&w.first_files.original(BIG), &out)?;
    let mut ctl = Control::connect(w.proxy.addr(), Duration::from_secs(15))?;
    ctl.read_reply()?;
    if !ctl
        .command("USER bob")?
        .last()
        .starts_with("530 no server is configured")
    {
        return Err(E2eError::check(
            "the old table (no default) is still in force",
            ctl.transcript(),
        ));
    }
    let _ = ctl.command("QUIT");
    // A file that is gone is an error too, and the table still stays.
    std::fs::remove_file(&w.routes).map_err(E2eError::io("remove the route file"))?;
    w.reload("keeping the previous table", 2)?;
    let out = w.first_files.local().join("after-gone");
    w.curl_big(USER, PASSWORD, DataMode::Pasv, &out)?;
    assert_same_file(&w.first_files.original(BIG), &out)?;
    Ok(())
}

#[test]
fn a_broken_file_at_start_up_is_exit_1_with_file_and_line() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let files = Workdir::new("routes-startup")?;
    let routes = files.root().join("bad.routes");
    std::fs::write(&routes, "alice 127.0.0.1\nbob 127.0.0.2:0\n")
        .map_err(E2eError::io("write the route file"))?;
    let log = files.root().join("ftp-proxy.log");
    let out = std::fs::File::create(&log).map_err(E2eError::io("create the log"))?;
    let err = out.try_clone().map_err(E2eError::io("dup the log"))?;
    let port = free_port(ip(FIRST))?.to_string();
    let mut cmd = std::process::Command::new(proxy_binary()?);
    cmd.args(["-d", "-b", FIRST, "-p", &port, "--route-file"])
        .arg(&routes)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child = ChildGuard::spawn(&mut cmd, "ftp-proxy with a broken route file")?;
    let status = child.wait_timeout(Duration::from_secs(15))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let want = format!("route file {}:2: ", routes.display());
    if status.and_then(|s| s.code()) != Some(1) || !text.contains(&want) {
        return Err(E2eError::check(
            format!("exit 1 and `{want}...` on stderr"),
            format!("{status:?}: {text}"),
        ));
    }
    Ok(())
}
