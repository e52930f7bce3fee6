//! `-D n` shows exactly the messages of syslog priority `n` and more important
//! ones, as the original does: in the foreground at every level 0..=7, through
//! syslog(3) (a private `/dev/log` in a mount namespace) at 2 and 4, and with the
//! journal's `<n>` prefixes when standard error is the stream `JOURNAL_STREAM` names.
//!
//! One session produces a line of each priority the daemon has: CRIT (a PORT with
//! a port below 1024), ERR (a line longer than 500 bytes, and `exiting on signal
//! 15`), NOTICE (`listening on`), INFO (`FTP session ... started`) and DEBUG (every
//! relayed line). Nothing is logged at EMERG, ALERT or WARNING, so `-D 0` and
//! `-D 1` are silent and `-D 4` shows what `-D 3` shows.
#![cfg(target_os = "linux")] // reads /proc, mount namespaces

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ftp-proxy");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The syslog priority of a line this scenario produces, by its text.
fn priority_of(line: &str) -> Option<u8> {
    if line.contains(" bad port in '") {
        Some(2)
    } else if line.contains("client command too long or not clean")
        || line.contains("exiting on signal 15")
    {
        Some(3)
    } else if line.starts_with("listening on 127.0.0.1 port ") {
        Some(5)
    } else if line.contains(" FTP session 1/1 started") {
        Some(6)
    } else if line.contains(" accepted connection from ") || line.contains(" client: ") {
        Some(7)
    } else {
        None
    }
}

/// An FTP server that sends its banner and reads until EOF, once per connection.
fn banner_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().take(4) {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = s.write_all(b"220 hi\r\n");
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
            });
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory (chroot, log files), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("ftp-proxy-loglevels-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("empty")).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon's options; as root it drops to nobody in an empty chroot.
fn daemon_args(level: u8, port: u16, server: u16, scratch: &Scratch) -> Vec<String> {
    let mut a: Vec<String> = vec![
        format!("-D{level}"),
        "-m".into(),
        "1".into(),
        "-p".into(),
        port.to_string(),
        "-R".into(),
        "127.0.0.1".into(),
        "-P".into(),
        server.to_string(),
    ];
    if is_root() {
        a.extend([
            "--user".into(),
            "nobody".into(),
            "--chroot".into(),
            scratch.0.join("empty").display().to_string(),
        ]);
    }
    a
}

/// Connects (retrying until the daemon listens, at most 20 s), then runs the
/// session: banner, a PORT to port 80 (CRIT, answered by the proxy), a 600-byte
/// line (ERR, the session ends).
fn run_session(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "proxy never listened: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "220 hi\r\n");
    c.write_all(b"PORT 127,0,0,1,0,80\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("501 "),
        "PORT to port 80 answered {line:?}"
    );
    let mut long = vec![b'A'; 600];
    long.extend_from_slice(b"\r\n");
    c.write_all(&long).unwrap();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
}

/// Waits (at most 20 s) until `pid` catches SIGTERM, then sends it.
fn terminate(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (libc::SIGTERM - 1)) != 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no SIGTERM handler in {pid}");
        thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Runs the scenario with `-d -D level`, stderr into a file (with `journal`, the
/// file is also named by `JOURNAL_STREAM`); returns the lines logged.
fn foreground(level: u8, journal: bool) -> Vec<String> {
    let scratch = Scratch::new(&format!("fg{level}{journal}"));
    let server = banner_server();
    let port = free_port();
    let log_path = scratch.0.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("-d")
        .args(daemon_args(level, port, server, &scratch))
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap());
    if journal {
        let m = log.metadata().unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    let mut child = cmd.spawn().expect("spawn ftp-proxy");
    run_session(port);
    terminate(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ftp-proxy -D{level} did not exit on SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(0), "-D{level}: {text}");
    text.lines().map(str::to_owned).collect()
}

/// Asserts that `lines` (their priority from `prio`) hold a line of every
/// priority up to `level` and none beyond; at `-D 0..=5` every line must be one
/// this scenario explains.
fn assert_exactly_up_to(level: u8, lines: &[(Option<u8>, String)]) {
    let show = || {
        lines
            .iter()
            .map(|(p, l)| format!("  {p:?} {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (p, l) in lines {
        match p {
            Some(p) => assert!(
                *p <= level,
                "-D {level} showed a priority {p} line: {l}\n{}",
                show()
            ),
            None if level <= 5 => panic!("-D {level} showed an unexpected line: {l}\n{}", show()),
            None => {}
        }
    }
    for p in [2, 3, 5, 6, 7].into_iter().filter(|&p| p <= level) {
        assert!(
            lines.iter().any(|(q, _)| *q == Some(p)),
            "-D {level} showed no priority {p} line:\n{}",
            show()
        );
    }
}

#[test]
fn each_debug_level_shows_exactly_its_priorities_in_the_foreground() {
    for level in 0..=7u8 {
        let lines: Vec<(Option<u8>, String)> = foreground(level, false)
            .into_iter()
            .map(|l| (priority_of(&l), l))
            .collect();
        assert_exactly_up_to(level, &lines);
        if level <= 1 {
            assert!(lines.is_empty(), "-D {level}: {lines:?}");
        }
    }
}

/// Standard error that is the journal gets `<priority>` prefixes; the same
/// variable with stderr elsewhere (a child of the service, a redirect) does not.
#[test]
fn journal_lines_carry_their_priority() {
    let lines = foreground(7, true);
    for (prefix, needle) in [
        ("<2>", " bad port in '"),
        ("<3>", "client command too long or not clean"),
        ("<3>", "exiting on signal 15"),
        ("<5>", "listening on 127.0.0.1 port "),
        ("<6>", " FTP session 1/1 started"),
        ("<7>", " client: "),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle)),
            "no {prefix} line with {needle:?}:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "{}",
        lines.join("\n")
    );
    // Not the journal: no prefixes.
    let plain = foreground(5, false);
    assert!(plain.iter().all(|l| !l.starts_with('<')), "{plain:?}");
}

/// Daemon mode at `-D 2` and `-D 4`: the datagrams reaching a private `/dev/log`
/// (LOG_DAEMON is 3 << 3, so CRIT is `<26>`, ERR `<27>`, NOTICE `<29>`).
#[test]
fn syslog_gets_exactly_the_priorities_of_the_level() {
    use std::os::unix::net::UnixDatagram;

    if !is_root() {
        eprintln!("not root: the syslog test needs a mount namespace");
        return;
    }
    for level in [2u8, 4] {
        let scratch = Scratch::new(&format!("syslog{level}"));
        let dev = scratch.0.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("null"), b"").unwrap();
        let sock = UnixDatagram::bind(dev.join("log")).expect("bind log socket");
        let server = banner_server();
        let port = free_port();
        let mut argv: Vec<String> = vec![BIN.into()];
        argv.extend(daemon_args(level, port, server, &scratch));
        let script = format!(
            "mount --bind /dev/null {dev}/null && mount --bind {dev} /dev && exec \"$@\"",
            dev = dev.display()
        );
        let o = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .args(&argv)
            .stdin(Stdio::null())
            .output()
            .expect("unshare (util-linux)");
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let pid = daemon_pid(&argv);
        run_session(port);
        terminate(pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "daemon {pid} did not exit");
            thread::sleep(Duration::from_millis(10));
        }
        sock.set_nonblocking(true).unwrap();
        let mut msgs = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let lines: Vec<(Option<u8>, String)> = msgs
            .iter()
            .map(|m| {
                let text = m.split_once("]: ").map_or(m.as_str(), |(_, t)| t);
                let prio = priority_of(text);
                if let Some(p) = prio {
                    assert!(m.starts_with(&format!("<{}>", 24 + p)), "{m}");
                }
                (prio, text.to_owned())
            })
            .collect();
        assert_exactly_up_to(level, &lines);
    }
}

/// The pid of the detached daemon running `argv` (at most 20 s).
fn daemon_pid(argv: &[String]) -> i32 {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "daemon {argv:?} not found");
        thread::sleep(Duration::from_millis(10));
    }
}
