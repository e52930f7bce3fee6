//! `run()` in a real process: SIGTERM/SIGHUP end it gracefully with exit status 0,
//! closing sessions and the relay's listeners; running out of descriptors pauses
//! accepting and recovers. Uses the `reverse_relay` example,
//! which `cargo test` builds next to this test binary.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills the child (by its pid) if the test fails before it exits.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn example_path() -> std::path::PathBuf {
    // target/<profile>/deps/signals-HASH -> target/<profile>/examples/reverse_relay
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("reverse_relay");
    assert!(
        path.exists(),
        "{} missing: run through `cargo test`, which builds examples",
        path.display()
    );
    path
}

fn start(server: SocketAddr) -> (ChildGuard, SocketAddr, BufReader<std::process::ChildStderr>) {
    let child = Command::new(example_path())
        .args(["127.0.0.25:0", &server.to_string()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let mut err = BufReader::new(guard.0.stderr.take().unwrap());
    let mut line = String::new();
    // The first line names the port ("listening on 127.0.0.25 port N"). The relay
    // listens on that address: one no other program uses (see relay_sessions.rs).
    err.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"));
    (guard, SocketAddr::from(([127, 0, 0, 25], port)), err)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "proxy did not exit within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn graceful_exit_on(sig: Signal) {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let server = ScriptedServer::start(ip("127.0.0.3"), BTreeMap::new());
    let (mut child, addr, mut err) = start(server.addr);
    let mut c = Client::connect(ip("127.0.0.2"), addr);
    c.login();
    let data = c.pasv();
    kill(Pid::from_raw(child.0.id() as i32), sig).unwrap();
    let st = wait_exit(&mut child.0);
    assert_eq!(st.code(), Some(0), "exit status after {sig}");
    let mut rest = String::new();
    for _ in 0..100 {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        rest.push_str(&l);
    }
    assert!(
        rest.contains(&format!("exiting on signal {}", sig as i32)),
        "log: {rest}"
    );
    assert!(rest.contains("#1 ending session"), "log: {rest}");
    // The relay listener is gone with the process.
    let e = connect_from(ip("127.0.0.2"), data).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    // The control connection was closed.
    let mut buf = String::new();
    assert_eq!(c.r.read_line(&mut buf).unwrap_or(0), 0);
}

#[test]
fn sigterm_ends_gracefully() {
    graceful_exit_on(Signal::SIGTERM);
}

#[test]
fn sighup_ends_gracefully() {
    graceful_exit_on(Signal::SIGHUP);
}

#[test]
fn out_of_descriptors_pauses_accepting_and_recovers() {
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let server = ScriptedServer::start(ip("127.0.0.3"), BTreeMap::new());
    let mut cmd = Command::new(example_path());
    cmd.args(["127.0.0.26:0", &server.addr.to_string(), "100"])
        .env("RUST_LOG", "info")
        .env("REVERSE_RELAY_KEEP_RLIMIT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 16, 16)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let port: u16 = first
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{first:?}"));
    let addr = SocketAddr::from(([127, 0, 0, 26], port));
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        // Line by line, so the test sees messages while the process runs.
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            log2.lock().unwrap().push_str(&line);
            line.clear();
        }
    });

    // Open sessions until one gets no banner: the proxy could not accept it. Each
    // session takes two descriptors; if the last free one goes to an accepted client,
    // its server socket fails instead (the client sees EOF): then one relay listener
    // (PASV) shifts the parity so that accept() itself runs out.
    let mut served: Vec<Client> = Vec::new();
    let mut stalled = None;
    for _ in 0..16 {
        let mut c = Client::connect(ip("127.0.0.2"), addr);
        c.w.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut line = String::new();
        match c.r.read_line(&mut line) {
            Ok(n) if n > 0 => {
                assert!(line.starts_with("220"), "{line:?}");
                served.push(c);
            }
            Ok(_) => {
                let first = served.first_mut().expect("not even one session was served");
                assert!(first.cmd("USER u").starts_with("331"));
                first.pasv();
            }
            Err(_) => {
                stalled = Some(c);
                break;
            }
        }
    }
    let mut stalled = stalled.expect("16 descriptors should not serve 16 sessions");
    assert!(!served.is_empty(), "not even one session was served");
    assert!(
        wait_for(|| log
            .lock()
            .unwrap()
            .contains("accept() failed: Too many open files")),
        "no accept() failure logged: {}",
        log.lock().unwrap()
    );
    // Free two descriptors; after the one-second pause the waiting client is served.
    drop(served.remove(0));
    stalled
        .w
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    stalled
        .r
        .read_line(&mut line)
        .expect("the waiting client is served once descriptors are free");
    assert!(line.starts_with("220"), "{line:?}");
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut child.0).code(), Some(0));
}

/// Polls `f` for up to 2 s.
fn wait_for(f: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
