//! The `ftp-proxy` binary under test, run as a child process.
//!
//! The tests crate cannot use `CARGO_BIN_EXE_*` of another package, so the binary is
//! found next to the test executable: tests run from `<target>/<profile>/deps/`, and
//! cargo puts `ftp-proxy` in `<target>/<profile>/`. That follows `CARGO_TARGET_DIR`
//! and the profile (debug or release) without guessing. Before the first use in a
//! test process, `cargo build -p ftp-proxy-cli` is run once in the same profile so
//! the binary is never stale (a no-op when it is fresh). `FTP_PROXY_BIN=/path`
//! overrides all of this.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::error::{tail, E2eError, Result};
use super::proc::{command_error, group_members, run, wait_for, ChildGuard};
use super::server::free_port;

/// The log line the proxy prints once it accepts connections.
pub const LISTENING: &str = "listening on";

/// Path of the built `ftp-proxy`, building it first (once per test process).
pub fn proxy_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_and_build().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| E2eError::check("the ftp-proxy binary can be built", e))
}

fn locate_and_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FTP_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = build_in_test_profile(&["-p", "ftp-proxy-cli"])?.join("ftp-proxy");
    if !bin.is_file() {
        return Err(E2eError::check(
            "cargo build produced ftp-proxy",
            bin.display().to_string(),
        ));
    }
    Ok(bin)
}

/// Runs `cargo build <what>` for this workspace in the profile the running test was
/// built with, so the artefact is current, and returns that profile's directory
/// (`<target>/<profile>`: binaries there, examples in `examples/`).
pub fn build_in_test_profile(what: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(E2eError::io("current_exe"))?;
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        E2eError::check(
            "test executable lives in <target>/<profile>/deps",
            exe.display().to_string(),
        )
    })?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build".to_string(), "--quiet".into()];
    args.extend(what.iter().map(|a| a.to_string()));
    args.extend([
        "--manifest-path".into(),
        workspace.join("Cargo.toml").display().to_string(),
    ]);
    match profile {
        "debug" => {}
        "release" => args.push("--release".into()),
        other => args.extend(["--profile".into(), other.into()]),
    }
    // Other builds may hold cargo's lock for a while on a shared machine.
    let out = run(&cargo, &args, 900)?;
    if !out.status.success() {
        return Err(command_error(&cargo, &args, &out));
    }
    Ok(profile_dir.to_path_buf())
}

/// A running `ftp-proxy -d -D7` in reverse mode, its stderr captured to a file.
pub struct ProxyProcess {
    guard: ChildGuard,
    listen: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    /// Starts the proxy in front of `server`, listening on a free port of `ip`, with
    /// `extra` options (e.g. `-m 2`), and waits for its `listening on` line.
    pub fn start(
        ip: IpAddr,
        server: SocketAddr,
        extra: &[&str],
        log: &Path,
    ) -> Result<ProxyProcess> {
        ProxyProcess::start_to(ip, Some(server), extra, log, &[])
    }

    /// Starts the proxy with no `-R`: transparent, or forward mode with
    /// `--user-at-host` in `extra`.
    pub fn start_forward(ip: IpAddr, extra: &[&str], log: &Path) -> Result<ProxyProcess> {
        ProxyProcess::start_to(ip, None, extra, log, &[])
    }

    /// Like [`start_forward`](Self::start_forward), run by `wrapper` (a program and
    /// its arguments, before the proxy's path: `unshare -m ...` to give it other
    /// resolver files). The pid is the wrapper's, which must `exec` the proxy.
    pub fn start_forward_wrapped(
        ip: IpAddr,
        extra: &[&str],
        log: &Path,
        wrapper: &[String],
    ) -> Result<ProxyProcess> {
        ProxyProcess::start_to(ip, None, extra, log, wrapper)
    }

    fn start_to(
        ip: IpAddr,
        server: Option<SocketAddr>,
        extra: &[&str],
        log: &Path,
        wrapper: &[String],
    ) -> Result<ProxyProcess> {
        let bin = proxy_binary()?;
        let mut last = String::new();
        // The chosen port may be taken before the proxy binds it: retry a few times.
        for _ in 0..3 {
            let port = free_port(ip)?;
            let out =
                fs::File::create(log).map_err(E2eError::io(format!("create {}", log.display())))?;
            let err = out.try_clone().map_err(E2eError::io("dup log fd"))?;
            let mut cmd = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(&bin);
                    c
                }
                None => Command::new(&bin),
            };
            cmd.args(["-d", "-D", "7"]);
            if ip.is_ipv6() {
                cmd.arg("-6");
            }
            cmd.arg("-b")
                .arg(ip.to_string())
                .arg("-p")
                .arg(port.to_string());
            if let Some(server) = server {
                cmd.arg("-R")
                    .arg(server.ip().to_string())
                    .arg("-P")
                    .arg(server.port().to_string());
            }
            cmd.args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let mut guard = ChildGuard::spawn(&mut cmd, format!("ftp-proxy on {ip} port {port}"))?;
            let up = wait_listening(&mut guard, log, "the proxy's `listening on` log line")?;
            if up {
                return Ok(ProxyProcess {
                    guard,
                    listen: SocketAddr::new(ip, port),
                    log: log.to_path_buf(),
                });
            }
            last = fs::read_to_string(log).unwrap_or_default();
        }
        Err(E2eError::check(
            "ftp-proxy starts and logs `listening on`",
            tail(&last, 3000),
        ))
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Its process id (and process group).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for `needle` to appear in the log.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Result<()> {
        wait_for(
            &format!("proxy log line containing {needle:?}"),
            limit,
            || Ok(self.log().contains(needle).then_some(())),
            || tail(&self.log(), 3000),
        )
    }

    /// Sends `signal` (SIGUSR1, the reload) without waiting for anything.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        self.guard.signal(signal)
    }

    /// Sends `signal` and waits up to `limit` for the exit.
    pub fn stop_with(&mut self, signal: i32, limit: Duration) -> Result<ExitStatus> {
        self.guard.signal(signal)?;
        self.guard
            .wait_timeout(limit)?
            .ok_or_else(|| E2eError::Timeout {
                what: format!("ftp-proxy to exit after signal {signal}"),
                waited: limit,
                detail: tail(&self.log(), 3000),
            })
    }

    /// Processes still in the proxy's process group (helpers it forked, say).
    pub fn leftovers(&self) -> Vec<u32> {
        group_members(self.pid())
    }
}

/// Waits up to 15 s for a started proxy (`guard`) to write [`LISTENING`] to `log`:
/// `true` once it has, `false` if the process exited first.
pub fn wait_listening(guard: &mut ChildGuard, log: &Path, what: &str) -> Result<bool> {
    wait_for(
        what,
        Duration::from_secs(15),
        || {
            if fs::read_to_string(log)
                .unwrap_or_default()
                .contains(LISTENING)
            {
                return Ok(Some(true));
            }
            Ok(guard.try_wait()?.map(|_| false))
        },
        || tail(&fs::read_to_string(log).unwrap_or_default(), 3000),
    )
}
