//! Process-level tests of the `ftp-proxy` binary: exit codes and messages of the
//! command line, startup failures, and real runs (foreground, daemon, nftables in
//! a network namespace this test creates) with a real TCP server behind the proxy.
//!
//! Tests that need root fail when a required component is missing while running as
//! root; without root they print why they did not run. The tests that run the
//! daemon read /proc and are Linux-only.

#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ftp-proxy");

const USAGE: &str =
    "usage: ftp-proxy [-6Adrv] [-a sourceaddr] [-b address] [-D level] [-m maxsessions]
                 [-P port] [-p port] [-q queue] [-R address] [-T tag]
                 [-t timeout]
";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the binary to completion (it must exit on its own: every case here fails
/// during startup), with a time limit.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftp-proxy");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ftp-proxy {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit status 1, nothing on stdout and exactly `expected` on stderr.
fn assert_fails(args: &[&str], expected: &str) {
    let o = run(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
    assert_eq!(stderr_of(&o), expected, "{args:?}");
    assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", o.stdout);
}

/// Options that let startup get past the root-only checks on this machine, which
/// has no `_ftp_proxy` user and no `/var/empty`.
fn unprivileged_user_opts(chroot: &Path) -> Vec<String> {
    vec![
        "--user".into(),
        "nobody".into(),
        "--chroot".into(),
        chroot.display().to_string(),
    ]
}

#[test]
fn out_of_range_values_print_the_originals_messages() {
    let q64 = "q".repeat(64);
    let t64 = "t".repeat(64);
    let cases: &[(&[&str], &str)] = &[
        (&["-m", "0"], "max sessions too small"),
        (&["-m", "501"], "max sessions too large"),
        (&["-m", "abc"], "max sessions invalid"),
        (&["-m0"], "max sessions too small"),
        (&["-t", "86401"], "timeout too large"),
        (&["-t", "x"], "timeout invalid"),
        (&["-D", "8"], "loglevel too large"),
        (&["-dD8"], "loglevel too large"),
        (&["-D", "-1"], "loglevel too small"),
        (&["-q", &q64], "queuename too long"),
        (&["-T", &t64], "tagname too long"),
    ];
    for (args, msg) in cases {
        assert_fails(args, &format!("ftp-proxy: {msg}\n"));
    }
}

#[test]
fn usage_errors_print_the_usage_text() {
    assert_fails(&["-vvv"], USAGE);
    assert_fails(&["-v", "-v", "-v"], USAGE);
    assert_fails(&["-x"], &format!("ftp-proxy: unknown option -- x\n{USAGE}"));
    assert_fails(
        &["-6Az"],
        &format!("ftp-proxy: unknown option -- z\n{USAGE}"),
    );
    assert_fails(
        &["-d", "-p"],
        &format!("ftp-proxy: option requires an argument -- p\n{USAGE}"),
    );
    assert_fails(
        &["--bogus"],
        &format!("ftp-proxy: unknown option -- bogus\n{USAGE}"),
    );
}

#[test]
fn help_goes_to_stdout_with_status_0() {
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with(USAGE), "{out}");
    for long in [
        "--backend",
        "--divert",
        "--user",
        "--chroot",
        "-6, --ipv6",
        "-v, --verbose",
    ] {
        assert!(out.contains(long), "{long} missing:\n{out}");
    }
    assert!(o.stderr.is_empty());
}

#[test]
fn bad_listen_address_is_a_getaddrinfo_error() {
    let mut args: Vec<String> = ["-d", "-b", "not-an-address"].map(String::from).to_vec();
    args.extend(unprivileged_user_opts(Path::new("/")));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&refs);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_of(&o);
    // glibc's gai_strerror(EAI_NONAME); the prefix is the original's on any system.
    if cfg!(target_env = "gnu") {
        assert_eq!(
            err.lines().last(),
            Some("ftp-proxy: getaddrinfo listen address failed: Name or service not known"),
            "{err}"
        );
    } else {
        assert!(
            err.contains("ftp-proxy: getaddrinfo listen address failed: "),
            "{err}"
        );
    }
    // An IPv4 address in IPv6 mode fails the same way (AF_INET6 hints).
    let mut args: Vec<String> = ["-d", "-6", "-b", "127.0.0.1"].map(String::from).to_vec();
    args.extend(unprivileged_user_opts(Path::new("/")));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&refs);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("ftp-proxy: getaddrinfo listen address failed: "));
}

#[test]
fn bad_source_and_fixed_server_addresses() {
    let mut base: Vec<String> = vec!["-d".into()];
    base.extend(unprivileged_user_opts(Path::new("/")));
    let with = |extra: &[&str]| {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = with(&["-a", "localhost"]);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_of(&o).contains("ftp-proxy: getaddrinfo fixed proxy address failed: "),
        "{o:?}"
    );
    let a = with(&["-R", "127.0.0.1", "-P", "no-such-service-zz"]);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_of(&o).contains("ftp-proxy: getaddrinfo fixed server address failed: "),
        "{o:?}"
    );
}

#[test]
fn root_checks_user_and_chroot_directory() {
    if !is_root() {
        eprintln!("not root: user and chroot checks only run as root");
        return;
    }
    assert_fails(
        &["-d", "--user", "no-such-user-zz"],
        "ftp-proxy: unknown user no-such-user-zz\n",
    );
    assert_fails(
        &["-d", "--user", "nobody", "--chroot", "/nonexistent/empty"],
        "ftp-proxy: chroot directory /nonexistent/empty missing\n",
    );
}

#[test]
fn listen_failure_is_reported() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let mut args: Vec<String> = ["-d", "-p", &port].map(String::from).to_vec();
    args.extend(unprivileged_user_opts(Path::new("/")));
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_of(&o).lines().last(),
        Some("ftp-proxy: bind failed: Address already in use")
    );
}

/// A one-shot server: accepts one connection, sends a banner, records what it
/// received until EOF.
struct BannerServer {
    port: u16,
    received: mpsc::Receiver<Vec<u8>>,
}

fn banner_server() -> BannerServer {
    banner_server_on("127.0.0.1:0")
}

fn banner_server_on(addr: &str) -> BannerServer {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"220 hi\r\n").unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = tx.send(buf);
        }
    });
    BannerServer { port, received: rx }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running foreground daemon; killed on drop if the test did not end it.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits (at most 20 s) for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` and waits (at most 20 s) for the exit code; collects the rest of the log.
    fn signal_and_wait(&mut self, sig: i32) -> Option<i32> {
        wait_for_handler(self.pid(), sig);
        // SAFETY: kill(2) to our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "ftp-proxy did not exit after signal {sig}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push(line);
        }
        status.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits (at most 20 s) until `pid` catches `sig` (its `SigCgt` mask in
/// /proc/PID/status has the bit). The runtime installs its handlers when `run()`
/// starts, just after `listening on` is logged, so a signal sent right after that
/// line could otherwise still meet the default action.
fn wait_for_handler(pid: i32, sig: i32) {
    let bit = 1u64 << (sig - 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let caught = u64::from_str_radix(&proc_status_field(pid, "SigCgt:"), 16).unwrap();
        if caught & bit != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never installed a handler for signal {sig}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A temporary empty directory to chroot into, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ftp-proxy-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn proc_status_field(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{field} missing in /proc/{pid}/status"))
}

/// Connects through the proxy and returns the banner line it relays.
fn read_banner(port: u16) -> (TcpStream, String) {
    read_banner_from("127.0.0.1", port)
}

fn read_banner_from(host: &str, port: u16) -> (TcpStream, String) {
    let mut c = TcpStream::connect((host, port)).expect("connect to proxy");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while !banner.ends_with(b"\n") && banner.len() < 100 {
        if c.read(&mut byte).unwrap() == 0 {
            break;
        }
        banner.push(byte[0]);
    }
    (c, String::from_utf8_lossy(&banner).into_owned())
}

#[cfg(target_os = "linux")] // reads /proc
#[test]
fn foreground_smoke_test_relays_the_banner_and_exits_on_sigterm() {
    let server = banner_server();
    let port = free_port();
    let chroot = TempDir::new("fg");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "-d",
        "-D7",
        "-p",
        &port.to_string(),
        "-R",
        "127.0.0.1",
        "-P",
        &server.port.to_string(),
    ])
    .args(unprivileged_user_opts(&chroot.0));
    let mut d = Daemon::spawn(&mut cmd);
    d.wait_for(&format!("listening on 127.0.0.1 port {port}"));
    assert!(
        d.log.iter().any(|l| l == "using fixed server 127.0.0.1"),
        "{:?}",
        d.log
    );

    if is_root() {
        // Dropped before serving: user nobody, chrooted, no capabilities.
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("user nobody");
        let uid = proc_status_field(d.pid(), "Uid:");
        assert_eq!(
            uid.split_whitespace().next(),
            Some(&*nobody.uid.to_string()),
            "{uid}"
        );
        assert_eq!(proc_status_field(d.pid(), "CapEff:"), "0000000000000000");
        let root = std::fs::read_link(format!("/proc/{}/root", d.pid())).unwrap();
        assert_eq!(root, chroot.0);
    } else {
        assert!(d
            .log
            .iter()
            .any(|l| l == "not running as root: no user switch or chroot; capabilities kept: 0x0"));
    }

    let (mut client, banner) = read_banner(port);
    assert_eq!(banner, "220 hi\r\n");
    client.write_all(b"NOOP\r\n").unwrap();
    d.wait_for("#1 client: NOOP\\r\\n");
    drop(client);
    let got = server
        .received
        .recv_timeout(Duration::from_secs(20))
        .expect("server saw the session end");
    assert_eq!(got, b"NOOP\r\n");

    assert_eq!(
        d.signal_and_wait(libc::SIGTERM),
        Some(0),
        "log:\n{}",
        d.log.join("\n")
    );
    assert!(
        d.log.iter().any(|l| l == "exiting on signal 15"),
        "log:\n{}",
        d.log.join("\n")
    );
}

#[cfg(target_os = "linux")] // reads /proc
#[test]
fn default_log_level_hides_info_and_debug() {
    let server = banner_server();
    let port = free_port();
    let chroot = TempDir::new("lvl");
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG")
        .args([
            "-d",
            "-p",
            &port.to_string(),
            "-R",
            "127.0.0.1",
            "-P",
            &server.port.to_string(),
        ])
        .args(unprivileged_user_opts(&chroot.0));
    let mut d = Daemon::spawn(&mut cmd);
    d.wait_for("listening on 127.0.0.1 port");
    let (client, banner) = read_banner(port);
    assert_eq!(banner, "220 hi\r\n");
    drop(client);
    let _ = server.received.recv_timeout(Duration::from_secs(20));
    assert_eq!(d.signal_and_wait(libc::SIGINT), Some(0));
    assert!(
        d.log.iter().any(|l| l == "exiting on signal 2"),
        "{:?}",
        d.log
    );
    // "using fixed server" is INFO and the session lines are INFO/DEBUG: all hidden at -D 5.
    for l in &d.log {
        assert!(
            !l.starts_with("using fixed server") && !l.starts_with("#1"),
            "{l:?} shown at -D 5"
        );
    }
}

#[cfg(target_os = "linux")] // reads /proc
#[test]
fn rust_log_overrides_the_debug_level() {
    let server = banner_server();
    let port = free_port();
    let chroot = TempDir::new("rustlog");
    let mut cmd = Command::new(BIN);
    cmd.env("RUST_LOG", "info")
        .args([
            "-d",
            "-D0",
            "-p",
            &port.to_string(),
            "-R",
            "127.0.0.1",
            "-P",
            &server.port.to_string(),
        ])
        .args(unprivileged_user_opts(&chroot.0));
    let mut d = Daemon::spawn(&mut cmd);
    d.wait_for("using fixed server 127.0.0.1");
    d.wait_for(&format!("listening on 127.0.0.1 port {port}"));
    assert_eq!(d.signal_and_wait(libc::SIGTERM), Some(0));
}

#[cfg(target_os = "linux")] // reads /proc
#[test]
fn ipv6_mode_listens_on_the_ipv6_loopback_by_default() {
    let server = banner_server_on("[::1]:0");
    let port = free_port();
    let chroot = TempDir::new("v6");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "-6dD7",
        "-p",
        &port.to_string(),
        "-R",
        "::1",
        "-P",
        &server.port.to_string(),
    ])
    .args(unprivileged_user_opts(&chroot.0));
    let mut d = Daemon::spawn(&mut cmd);
    assert_eq!(d.wait_for("using fixed server"), "using fixed server ::1");
    d.wait_for(&format!("listening on ::1 port {port}"));
    let (client, banner) = read_banner_from("::1", port);
    assert_eq!(banner, "220 hi\r\n");
    drop(client);
    assert_eq!(
        server
            .received
            .recv_timeout(Duration::from_secs(20))
            .unwrap(),
        b""
    );
    assert_eq!(d.signal_and_wait(libc::SIGTERM), Some(0));
    assert!(
        d.log.iter().any(|l| l == "#1 accepted connection from ::1"),
        "{:?}",
        d.log
    );
}

/// Pids of running processes whose command line is exactly `argv`.
fn pids_with_cmdline(argv: &[String]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want) {
            out.push(pid);
        }
    }
    out
}

/// Kills a pid found by [`pids_with_cmdline`] on drop (the daemon is not our child).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the daemon this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[cfg(target_os = "linux")] // reads /proc
#[test]
fn daemon_mode_detaches_and_runs_in_the_child() {
    let server = banner_server();
    let port = free_port();
    let chroot = TempDir::new("daemon");
    let mut argv: Vec<String> = vec![BIN.into()];
    argv.extend(
        [
            "-p",
            &port.to_string(),
            "-R",
            "127.0.0.1",
            "-P",
            &server.port.to_string(),
        ]
        .map(String::from),
    );
    argv.extend(unprivileged_user_opts(&chroot.0));
    let o = Command::new(BIN)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    // The parent exits 0 once the child reports that startup is complete.
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(o.stderr.is_empty(), "{}", stderr_of(&o));
    let pids = pids_with_cmdline(&argv);
    assert_eq!(pids.len(), 1, "daemon processes: {pids:?}");
    let pid = pids[0];
    let guard = KillOnDrop(pid);

    // A new session, /dev/null on 0-2, and already listening.
    // SAFETY: getsid(2) of a pid has no preconditions.
    assert_eq!(unsafe { libc::getsid(pid) }, pid);
    for fd in 0..=2 {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            Path::new("/dev/null")
        );
    }
    if is_root() {
        let uid = proc_status_field(pid, "Uid:");
        assert!(!uid.starts_with("0\t"), "daemon still root: {uid}");
    }
    let (client, banner) = read_banner(port);
    assert_eq!(banner, "220 hi\r\n");
    drop(client);
    let _ = server.received.recv_timeout(Duration::from_secs(20));

    wait_for_handler(pid, libc::SIGTERM);
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "daemon {pid} did not exit on SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
}

/// (Not on OpenBSD, where pf may well open.)
#[cfg(not(target_os = "openbsd"))]
#[test]
fn daemon_startup_failure_after_the_fork_reaches_the_terminal() {
    // The backend is opened in the child; its failure must still make the command
    // fail with the message, through the parent.
    let chroot = TempDir::new("dfail");
    let port = free_port().to_string();
    let mut args: Vec<String> = ["-p", &port, "--backend", "pf"].map(String::from).to_vec();
    args.extend(unprivileged_user_opts(&chroot.0));
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        stderr_of(&o),
        "ftp-proxy: pf is only available on OpenBSD\n"
    );
}

/// A network namespace created for one test and deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("fpcli-{tag}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let ns = NetNs(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, cmd: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn nftables_backend_keeps_cap_net_admin_after_the_drop() {
    if !is_root() {
        eprintln!("not root: the nftables test needs root and a network namespace");
        return;
    }
    let ns = NetNs::new("nft");
    let chroot = TempDir::new("nft");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        BIN,
        "-d",
        "-D7",
        "--backend",
        "nftables",
        "-p",
        "18021",
    ])
    .args(unprivileged_user_opts(&chroot.0));
    let mut d = Daemon::spawn(&mut cmd);
    d.wait_for("listening on 127.0.0.1 port 18021");
    let pid = d.pid();
    // The table is named for the pid and the PID namespace (docs/linux.md).
    let pidns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let pidns = pidns
        .to_str()
        .and_then(|t| t.strip_prefix("pid:["))
        .and_then(|t| t.strip_suffix(']'))
        .unwrap()
        .to_owned();
    let table = format!("ftp-proxy-{pid}-{pidns}");
    assert!(
        d.log
            .iter()
            .any(|l| l.starts_with(&format!("nftables: table inet {table}, "))),
        "{:?}",
        d.log
    );
    assert_eq!(proc_status_field(pid, "CapEff:"), "0000000000001000");
    assert_eq!(proc_status_field(pid, "CapPrm:"), "0000000000001000");
    assert_eq!(proc_status_field(pid, "NoNewPrivs:"), "1");
    let uid = proc_status_field(pid, "Uid:");
    assert!(!uid.starts_with("0\t"), "still root: {uid}");
    assert!(ns
        .exec(&["nft", "list", "tables"])
        .contains(&format!("table inet {table}")));

    assert_eq!(
        d.signal_and_wait(libc::SIGTERM),
        Some(0),
        "log:\n{}",
        d.log.join("\n")
    );
    // The unprivileged process removed its table over netlink at exit: that needs
    // the CAP_NET_ADMIN it kept.
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert!(
        !tables.contains(&table),
        "table left behind: {tables}\nlog:\n{}",
        d.log.join("\n")
    );
}

#[cfg(target_os = "linux")]
#[test]
fn nftables_backend_refuses_a_queue() {
    if !is_root() {
        eprintln!("not root: the nftables test needs root and a network namespace");
        return;
    }
    let ns = NetNs::new("nftq");
    let chroot = TempDir::new("nftq");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        BIN,
        "-d",
        "--backend",
        "nftables",
        "-q",
        "q1",
        "-p",
        "18022",
    ])
    .args(unprivileged_user_opts(&chroot.0))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let o = cmd.output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_of(&o);
    assert!(
        err.starts_with("ftp-proxy: cannot open backend nftables: "),
        "{err}"
    );
    assert!(err.contains("-q q1"), "{err}");
    assert_eq!(ns.exec(&["nft", "list", "tables"]), "");
}

/// Daemon mode logs through syslog(3): this test gives the daemon a private `/dev`
/// (a mount namespace holding only `null` and a `log` socket the test listens on)
/// and checks the datagrams: facility LOG_DAEMON, the child's pid, and the priority
/// of each level (NOTICE for warn, INFO, DEBUG, ERR).
#[cfg(target_os = "linux")]
#[test]
fn daemon_mode_logs_to_syslog_with_the_childs_pid() {
    use std::os::unix::net::UnixDatagram;

    if !is_root() {
        eprintln!("not root: the syslog test needs a mount namespace");
        return;
    }
    let server = banner_server();
    let port = free_port();
    let base = TempDir::new("syslog");
    let dev = base.0.join("dev");
    let chroot = base.0.join("empty");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&chroot).unwrap();
    std::fs::write(dev.join("null"), b"").unwrap();
    let log_sock = UnixDatagram::bind(dev.join("log")).expect("bind log socket");
    log_sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(base.0.clone());

    let mut argv: Vec<String> = vec![BIN.into()];
    argv.extend(
        [
            "-D7",
            "-p",
            &port.to_string(),
            "-R",
            "127.0.0.1",
            "-P",
            &server.port.to_string(),
        ]
        .map(String::from),
    );
    argv.extend(unprivileged_user_opts(&chroot));
    let script = format!(
        "mount --bind /dev/null {dev}/null && mount --bind {dev} /dev && exec \"$@\"",
        dev = dev.display()
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(&argv)
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let pids = pids_with_cmdline(&argv);
    assert_eq!(pids.len(), 1, "daemon processes: {pids:?}");
    let pid = pids[0];
    let _guard = KillOnDrop(pid);

    let (client, banner) = read_banner(port);
    assert_eq!(banner, "220 hi\r\n");
    drop(client);
    let _ = server.received.recv_timeout(Duration::from_secs(20));
    wait_for_handler(pid, libc::SIGTERM);
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };

    let mut msgs = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !msgs
        .iter()
        .any(|m: &String| m.ends_with("exiting on signal 15"))
    {
        assert!(Instant::now() < deadline, "syslog so far: {msgs:#?}");
        let n = log_sock.recv(&mut buf).expect("syslog datagram");
        msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // <priority>timestamp ftp-proxy[pid]: message; LOG_DAEMON is 3 << 3.
    let find = |prio: u32, text: &str| {
        msgs.iter().any(|m| {
            m.starts_with(&format!("<{prio}>"))
                && m.ends_with(&format!(" ftp-proxy[{pid}]: {text}"))
        })
    };
    // Resolved before the fork: logged by the parent, under the parent's pid.
    assert!(
        msgs.iter().any(|m| m.starts_with("<30>")
            && m.contains(" ftp-proxy[")
            && !m.contains(&format!("[{pid}]"))
            && m.ends_with("]: using fixed server 127.0.0.1")),
        "{msgs:#?}"
    );
    assert!(
        find(24 + 5, &format!("listening on 127.0.0.1 port {port}")),
        "{msgs:#?}"
    );
    assert!(
        find(24 + 7, "#1 accepted connection from 127.0.0.1"),
        "{msgs:#?}"
    );
    assert!(find(24 + 3, "exiting on signal 15"), "{msgs:#?}");
}

/// A backend that cannot start (here nftables without CAP_NET_ADMIN; pf off OpenBSD
/// is covered above) ends start-up with a clear message and exit status 1.
#[cfg(target_os = "linux")]
#[test]
fn a_backend_that_cannot_start_fails_with_exit_1() {
    let port = free_port().to_string();
    let o = if is_root() {
        // Drop to nobody with no capabilities before the proxy starts.
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--inh-caps=-all",
                BIN,
            ])
            .args(["-d", "--backend", "nftables", "-p", &port])
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux) is needed for this test as root")
    } else {
        run(&["-d", "--backend", "nftables", "-p", &port])
    };
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        stderr_of(&o),
        "ftp-proxy: cannot open backend nftables: Operation not permitted (needs root or CAP_NET_ADMIN)\n"
    );
}

#[test]
fn translated_transfers_without_the_relay_are_refused_at_start_up() {
    let mut base: Vec<String> = ["-d", "-p", "0", "--backend", "nftables"]
        .map(String::from)
        .to_vec();
    base.extend(unprivileged_user_opts(Path::new("/")));
    for (extra, want) in [
        (
            &["--server-data-mode", "passive"][..],
            "ftp-proxy: --server-data-mode passive translates every transfer, which only the relay can carry; use --backend relay or --server-data-mode client",
        ),
        (
            &["--server-data-mode", "active"][..],
            "ftp-proxy: --server-data-mode active translates every transfer",
        ),
        (
            &["-b", "::1", "-R", "127.0.0.1"][..],
            "ftp-proxy: client and server address families differ (-b and -R), which only the relay can carry",
        ),
        (
            &["-b", "127.0.0.1", "-b", "::1", "-R", "127.0.0.1"][..],
            "ftp-proxy: client and server address families differ (-b and -R), which only the relay can carry",
        ),
        (
            &["-6", "-b", "::1", "--nat64-prefix", "64:ff9b::/96"][..],
            "ftp-proxy: --nat64-prefix serves IPv6 clients from IPv4 servers, whose transfers only the relay can carry; use --backend relay",
        ),
    ] {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {o:?}");
        let err = stderr_of(&o);
        assert!(
            err.lines().any(|l| l.starts_with(want)),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn nat64_prefix_is_only_a_96_in_transparent_mode() {
    assert_fails(
        &["--nat64-prefix", "64:ff9b::/64"],
        "ftp-proxy: NAT64 prefix length /64 is not supported: only /96 (the IPv4 address in the last 32 bits, RFC 6052)\n",
    );
    assert_fails(
        &["--nat64-prefix", "64:ff9b::1/96"],
        "ftp-proxy: NAT64 prefix 64:ff9b::1/96 has bits set in its last 32 bits, where the IPv4 address goes\n",
    );
    let mut a: Vec<String> = ["-d", "-p", "0", "--backend", "relay", "-6", "-b", "::1"]
        .map(String::from)
        .to_vec();
    a.extend(unprivileged_user_opts(Path::new("/")));
    a.extend(["--nat64-prefix", "64:ff9b::/96", "-R", "127.0.0.1"].map(String::from));
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        stderr_of(&o).lines().any(|l| l
            == "ftp-proxy: --nat64-prefix: needs transparent mode: with -R the server is fixed"),
        "{o:?}"
    );
}
