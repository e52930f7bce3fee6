//! Child processes with bounded waits, killed by process group when dropped.

use std::env;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::{tail, E2eError, Result};

/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(20);

/// A spawned program in its own process group. Dropping the guard terminates the
/// whole group (SIGTERM, then SIGKILL after 2 s): pure-ftpd forks one process per
/// session, and a failing test must not leave any of them behind.
pub struct ChildGuard {
    child: Child,
    name: String,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command, name: impl Into<String>) -> Result<ChildGuard> {
        let name = name.into();
        let child = cmd
            .process_group(0)
            .spawn()
            .map_err(E2eError::io(format!("spawn {name}")))?;
        Ok(ChildGuard {
            child,
            name,
            status: None,
        })
    }

    /// The process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if it has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(E2eError::io(format!("wait for {}", self.name)))?;
        }
        Ok(self.status)
    }

    /// Waits up to `limit` for the exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` to the process itself (not its group); an error if it has
    /// already exited.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            return Err(E2eError::check(
                format!("{} still running to receive signal {signal}", self.name),
                status.to_string(),
            ));
        }
        // SAFETY: kill(2) on a child that `try_wait` just found unreaped, so its pid
        // cannot have been reused.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        if rc != 0 {
            return Err(E2eError::io(format!(
                "kill -{signal} {} ({})",
                self.pid(),
                self.name
            ))(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn signal_group(&self, signal: i32) {
        // SAFETY: killpg(2) on the group this guard created; errors (ESRCH when the
        // group is already empty) are irrelevant during cleanup.
        unsafe { libc::killpg(self.pid() as libc::pid_t, signal) };
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.signal_group(libc::SIGTERM);
        if matches!(self.wait_timeout(Duration::from_secs(2)), Ok(Some(_))) {
            // The leader is gone; stragglers of its group (pure-ftpd sessions) get a
            // short grace period too, then SIGKILL.
            thread::sleep(Duration::from_millis(50));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.wait_timeout(Duration::from_secs(2));
    }
}

/// Whether any process still belongs to process group `pgid` (scans `/proc`).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            found.push(pid);
        }
    }
    found
}

/// Finds `tool` in `PATH`.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a program to completion under coreutils `timeout` (SIGTERM after `secs`,
/// SIGKILL 5 s later), stdin closed. Returns its output whatever the exit status.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S], secs: u64) -> Result<Output> {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &secs.to_string(), program])
        .args(args)
        .stdin(Stdio::null());
    cmd.output().map_err(E2eError::io(format!("run {program}")))
}

/// Like [`run`], but a non-zero exit is an [`E2eError::Command`].
pub fn run_ok<S: AsRef<OsStr>>(program: &str, args: &[S], secs: u64) -> Result<Output> {
    let out = run(program, args, secs)?;
    if !out.status.success() {
        return Err(command_error(program, args, &out));
    }
    Ok(out)
}

/// The error for a failed run, with the tail of its output.
pub(crate) fn command_error<S: AsRef<OsStr>>(program: &str, args: &[S], out: &Output) -> E2eError {
    let line: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut what = format!("{program} {}", line.join(" "));
    if what.len() > 300 {
        what = format!("{}...", &what[..what.floor_char_boundary_compat(300)]);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    E2eError::Command {
        what,
        status: out.status,
        output: tail(&text, 6000),
    }
}

/// `str::floor_char_boundary` is unstable; this is the same for our short messages.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Polls `probe` every 20 ms until it yields a value or `limit` passes.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
    detail: impl FnOnce() -> String,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(E2eError::Timeout {
                what: what.to_string(),
                waited: limit,
                detail: detail(),
            });
        }
        thread::sleep(POLL);
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> super::error::Result<u64> {
    use super::error::E2eError;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(E2eError::io(format!("read /proc/{pid}/status")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| E2eError::check("VmRSS in /proc/<pid>/status", status.clone()))
}
