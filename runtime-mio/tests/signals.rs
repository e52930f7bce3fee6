//! `run()` in a real process: SIGTERM/SIGHUP end it gracefully with exit status 0,
//! closing sessions and the relay's listeners. Uses the `reverse_relay` example,
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
        .args(["127.0.0.1:0", &server.to_string()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let mut err = BufReader::new(guard.0.stderr.take().unwrap());
    let mut line = String::new();
    // The first line names the port ("listening on 127.0.0.1 port N").
    err.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"));
    (guard, SocketAddr::from(([127, 0, 0, 1], port)), err)
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
