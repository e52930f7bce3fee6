//! What the running `ftp-proxy` binary holds after start-up, read from
//! `/proc/<pid>/status` and `/proc/<pid>/fd`: capability sets cut down to the backend's
//! needs, NoNewPrivs, no inherited descriptors; and `--user root` refused.
//!
//! Each daemon runs in the router namespace of a topology the test creates, so its
//! listener and (for nftables) its table never touch the machine's own namespace.
//! Root only; otherwise the tests print why they did not run.

#![cfg(target_os = "linux")]

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ftp_proxy_tests::netns::{self, check, poll, Ns, Result, Topology};

/// Descriptors the test hands to the daemon, as a careless caller would.
const INHERITED: [i32; 2] = [10, 251];

/// One field of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(netns::io_err(format!("/proc/{pid}/status")))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .ok_or_else(|| check(format!("{name} in /proc/{pid}/status"), text))
}

/// Starts `<prefix> ftp-proxy -d <args>` in the router namespace with `marker` open
/// on the [`INHERITED`] descriptors (not close-on-exec), and waits for
/// `listening on`. Returns the daemon's pid (the last process of `prefix`'s chain).
fn start(
    topo: &mut Topology,
    prefix: &[&str],
    args: &[&str],
    marker: &Path,
    log: &Path,
) -> Result<u32> {
    let bin = netns::proxy_binary()?;
    let bin = bin.to_str().expect("utf-8 path");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = topo.cmd(Ns::Router, first);
            c.args(rest).arg(bin);
            c
        }
        None => topo.cmd(Ns::Router, bin),
    };
    cmd.arg("-d").args(args);
    let file = fs::File::create(marker).map_err(netns::io_err("marker file"))?;
    let raw = file.as_raw_fd();
    // SAFETY: between fork and exec only dup2 (async-signal-safe) runs; it leaves the
    // copies without FD_CLOEXEC, so they survive into ip, the prefix and the daemon.
    unsafe {
        cmd.pre_exec(move || {
            for fd in INHERITED {
                if libc::dup2(raw, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null());
    let pid = topo.spawn("ftp-proxy", cmd, log)?;
    drop(file);
    let listening = poll(Duration::from_secs(10), || {
        fs::read_to_string(log)
            .ok()?
            .contains("listening on")
            .then_some(())
    });
    if listening.is_none() {
        return Err(check(
            format!("ftp-proxy {args:?} to start"),
            fs::read_to_string(log).unwrap_or_default(),
        ));
    }
    // `ip netns exec` execs its program; `setpriv` execs the daemon: same pid.
    Ok(pid)
}

/// Fails if the daemon still holds the marker file on any descriptor.
fn no_inherited_fds(pid: u32, marker: &Path) -> Result<()> {
    let dir = format!("/proc/{pid}/fd");
    let mut seen = Vec::new();
    for e in fs::read_dir(&dir).map_err(netns::io_err(dir.clone()))? {
        let e = e.map_err(netns::io_err(dir.clone()))?;
        let target = fs::read_link(e.path()).unwrap_or_default();
        seen.push(format!(
            "{} -> {}",
            e.file_name().to_string_lossy(),
            target.display()
        ));
        if target == marker {
            return Err(check(
                format!("no inherited descriptor in {dir}"),
                seen.join("\n"),
            ));
        }
    }
    for fd in INHERITED {
        if Path::new(&format!("{dir}/{fd}")).exists() {
            return Err(check(format!("fd {fd} closed at start"), seen.join("\n")));
        }
    }
    Ok(())
}

#[test]
fn root_start_keeps_only_what_the_backend_needs() -> Result<()> {
    if !netns::is_root("root_start_keeps_only_what_the_backend_needs") {
        return Ok(());
    }
    let mut topo = Topology::up("pv")?;
    let dir = topo.dir().to_path_buf();
    for (backend, port, bnd, eff) in [
        ("relay", "8021", "0000000000000000", "0000000000000000"),
        ("nftables", "8022", "0000000000001000", "0000000000001000"),
    ] {
        let marker = dir.join(format!("marker-{backend}"));
        let log = dir.join(format!("privs-{backend}.log"));
        let pid = start(
            &mut topo,
            &[],
            &["--backend", backend, "--user", "nobody", "-p", port],
            &marker,
            &log,
        )?;
        for (field, want) in [
            ("CapBnd:", bnd),
            ("CapEff:", eff),
            ("CapPrm:", eff),
            ("CapInh:", "0000000000000000"),
            ("CapAmb:", "0000000000000000"),
            ("NoNewPrivs:", "1"),
        ] {
            let got = status_field(pid, field)?;
            if got != want {
                return Err(check(format!("{backend}: {field} {want}"), got));
            }
        }
        no_inherited_fds(pid, &marker)?;
        let status = topo.stop(pid, libc::SIGTERM, Duration::from_secs(5))?;
        if !status.success() {
            return Err(check(
                format!("{backend}: exit 0 at SIGTERM"),
                fs::read_to_string(&log).unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

#[test]
fn unprivileged_start_sheds_handed_capabilities() -> Result<()> {
    if !netns::is_root("unprivileged_start_sheds_handed_capabilities") {
        return Ok(());
    }
    // As systemd's AmbientCapabilities= would: a non-root daemon handed CAP_NET_ADMIN
    // and CAP_NET_RAW as ambient (and inheritable) capabilities, with the full
    // bounding set. The relay backend needs none of them.
    let mut topo = Topology::up("pu")?;
    let dir = topo.dir().to_path_buf();
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+net_admin,+net_raw",
        "--ambient-caps=+net_admin,+net_raw",
    ];
    let marker = dir.join("marker-unpriv");
    let log = dir.join("unpriv.log");
    let pid = start(
        &mut topo,
        &setpriv,
        &["--backend", "relay", "-p", "8021"],
        &marker,
        &log,
    )?;
    for (field, want) in [
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapInh:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
    ] {
        let got = status_field(pid, field)?;
        if got != want {
            return Err(check(
                format!("unprivileged relay: {field} {want}"),
                format!("{got}\n{}", fs::read_to_string(&log).unwrap_or_default()),
            ));
        }
    }
    no_inherited_fds(pid, &marker)?;
    topo.stop(pid, libc::SIGTERM, Duration::from_secs(5))?;

    // The same start with nftables keeps CAP_NET_ADMIN alone, and the table works.
    let marker = dir.join("marker-unpriv-nft");
    let log = dir.join("unpriv-nft.log");
    let pid = start(
        &mut topo,
        &setpriv,
        &["--backend", "nftables", "-p", "8022"],
        &marker,
        &log,
    )?;
    for (field, want) in [
        ("CapEff:", "0000000000001000"),
        ("CapPrm:", "0000000000001000"),
        ("CapInh:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
    ] {
        let got = status_field(pid, field)?;
        if got != want {
            return Err(check(format!("unprivileged nftables: {field} {want}"), got));
        }
    }
    let table = netns::table_of(pid)?;
    let listed = topo.nft(&["list", "table", "inet", &table])?;
    if !listed.contains("flags owner") {
        return Err(check(format!("table {table} with the owner flag"), listed));
    }
    topo.stop(pid, libc::SIGTERM, Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn user_root_is_refused() -> Result<()> {
    if !netns::is_root("user_root_is_refused") {
        return Ok(());
    }
    let topo = Topology::up("pr")?;
    let bin = netns::proxy_binary()?;
    // Without -d too: the refusal comes before the fork, so the terminal sees it.
    for fg in [true, false] {
        let mut cmd = topo.cmd(Ns::Router, bin.to_str().expect("utf-8"));
        if fg {
            cmd.arg("-d");
        }
        cmd.args(["--backend", "relay", "--user", "root", "-p", "8021"]);
        let out = netns::run(&mut cmd, Duration::from_secs(10))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1)
            || !err.contains("refusing to run as user root: it has uid 0")
        {
            return Err(check(
                format!("--user root (foreground {fg}) refused with exit 1"),
                format!("{}: {err}", out.status),
            ));
        }
    }
    Ok(())
}
