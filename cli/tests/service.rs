//! The service files in `dist/`: the systemd unit verifies and keeps its
//! hardening, its capability bounding set is exactly what start-up needs (each
//! capability in it is required, and together they start the nftables backend on
//! port 21 as root with the chroot and the user switch), and the OpenBSD rc.d
//! script is valid shell in rc.subr form.
//!
//! `systemd-analyze verify` looks up the unit's `Documentation=man:` page with
//! man(1); the test gives man a `MANPATH` holding only the repository's pages
//! (`docs/`), so it checks the unit against this project's page and does not
//! depend on what is installed on the machine.
//!
//! The capability checks run the built binary the way the unit does: as root under
//! `setpriv` with the unit's bounding set and no_new_privs, `prlimit` with its
//! LimitNOFILE, `-d`, in a network namespace this test creates. They need root.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ftp-proxy");

fn dist(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(path)
}

fn unit() -> String {
    std::fs::read_to_string(dist("systemd/ftp-proxy.service")).expect("read the unit")
}

/// The last value of `key=` in the unit.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("{key}= missing in the unit"))
        .to_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        // Tests run in parallel threads of one process: a serial number keeps
        // their directories apart.
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "ftp-proxy-service-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository's manual pages (`docs/NAME.SECTION`) as a man hierarchy
/// (`DIR/manSECTION/NAME.SECTION`), for a `MANPATH` that holds them and nothing else.
fn repository_manpath(dir: &std::path::Path) -> PathBuf {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let root = dir.join("man");
    for entry in std::fs::read_dir(&docs).expect("read docs/") {
        let path = entry.unwrap().path();
        let section = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if section.len() == 1 && section.as_bytes()[0].is_ascii_digit() {
            let mandir = root.join(format!("man{section}"));
            std::fs::create_dir_all(&mandir).unwrap();
            std::fs::copy(&path, mandir.join(path.file_name().unwrap())).unwrap();
        }
    }
    root
}

/// `systemd-analyze` on a copy of `text` (the unit) whose ExecStart names the
/// built binary (verify checks that the program exists). `man` runs with a
/// `MANPATH` of the repository's pages alone: verify looks up every
/// `Documentation=man:` page with man(1), and it must find this project's page,
/// not whatever another package installed as ftp-proxy(8) on this machine, nor
/// fail for want of an installed page on a fresh one.
fn analyze_text(text: &str, args: &[&str]) -> std::process::Output {
    let scratch = Scratch::new(&format!("analyze-{}", args[0]));
    let text = text.replace("/usr/sbin/ftp-proxy", BIN);
    let path = scratch.0.join("ftp-proxy.service");
    std::fs::write(&path, text).unwrap();
    let manpath = repository_manpath(&scratch.0);
    Command::new("systemd-analyze")
        .args(args)
        .arg(&path)
        .current_dir(&scratch.0)
        .env("MANPATH", &manpath)
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze not found (Debian package systemd)")
}

fn analyze(args: &[&str]) -> std::process::Output {
    analyze_text(&unit(), args)
}

/// `systemd-analyze verify` of `text`: `Err` with its output unless it succeeds
/// and has nothing to say.
fn verify(text: &str) -> Result<(), String> {
    let o = analyze_text(text, &["verify"]);
    if o.status.success() && o.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[test]
fn unit_verifies() {
    let u = unit();
    // The page the unit points to is the repository's, and it says it is that page.
    let doc = unit_value(&u, "Documentation");
    assert_eq!(
        doc, "man:ftp-proxy(8)",
        "Documentation= changed: update this test"
    );
    let page = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/ftp-proxy.8"),
    )
    .expect("Documentation=man:ftp-proxy(8), but docs/ftp-proxy.8 is not in the repository");
    assert!(
        page.lines().any(|l| l == ".Dt FTP-PROXY 8"),
        "docs/ftp-proxy.8 does not declare itself ftp-proxy(8) (.Dt FTP-PROXY 8)"
    );
    if let Err(out) = verify(&u) {
        panic!("systemd-analyze verify:\n{out}");
    }
}

/// The checks of `unit_verifies` can fail: a unit naming a manual page that the
/// repository lacks, even one installed on every machine with man-db, and a unit
/// with a misspelt directive are refused.
#[test]
fn verify_refuses_a_wrong_unit_or_a_page_outside_the_repository() {
    let u = unit();
    for page in ["ftp-proxy-missing(8)", "man(1)"] {
        let text = u.replace("man:ftp-proxy(8)", &format!("man:{page}"));
        let out = verify(&text).expect_err(page);
        assert!(
            out.contains(&format!("Command 'man {page}' failed")),
            "{page}:\n{out}"
        );
    }
    let text = u.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let out = verify(&text).expect_err("misspelt directive");
    assert!(out.contains("NoNewPrivilege"), "{out}");
}

#[test]
fn unit_is_hardened() {
    let u = unit();
    // -d: systemd runs the process it started (Type=exec) and stderr is the journal.
    assert_eq!(unit_value(&u, "Type"), "exec");
    assert_eq!(
        unit_value(&u, "ExecStart"),
        "/usr/sbin/ftp-proxy -d $FTP_PROXY_OPTS"
    );
    assert_eq!(unit_value(&u, "EnvironmentFile"), "-/etc/default/ftp-proxy");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        ),
    ] {
        assert_eq!(unit_value(&u, key), value, "{key}");
    }
    // systemd's own rating of the sandbox (0 best, 10 worst).
    let o = analyze(&["security", "--offline=true"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 3.0, "exposure {exposure}:\n{text}");
}

/// The unit's bounding set as setpriv spells it: `+net_admin,+sys_chroot,...`.
fn bounding_set(without: Option<&str>) -> String {
    unit_value(&unit(), "CapabilityBoundingSet")
        .split_whitespace()
        .filter(|c| Some(*c) != without)
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The daemon under the unit's limits in a private network namespace.
struct Started {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn start(without: Option<&str>, chroot: &std::path::Path) -> Started {
    let nofile = unit_value(&unit(), "LimitNOFILE");
    let bounding = format!("-all,{}", bounding_set(without));
    let script = "ip link set lo up && exec \"$@\"";
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-c", script, "sh"])
        .args(["prlimit", &format!("--nofile={nofile}:{nofile}"), "--"])
        .args([
            "setpriv",
            "--bounding-set",
            &bounding,
            "--inh-caps",
            "-all",
            "--no-new-privs",
            "--",
        ])
        .args([BIN, "-d", "-D7", "--backend", "nftables", "-p", "21"])
        .args(["--user", "nobody", "--chroot"])
        .arg(chroot)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare, prlimit, setpriv (util-linux)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Started { child, lines: rx }
}

impl Started {
    /// Lines until `needle` appears or the process exits (at most 20 s); returns
    /// the log and whether the needle was seen.
    fn wait_for(&mut self, needle: &str) -> (Vec<String>, bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut log = Vec::new();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    log.push(l);
                    if hit {
                        return (log, true);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return (log, false),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        (log, false)
    }

    fn status_field(&self, field: &str) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    }

    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ftp-proxy did not exit");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_units_capabilities_start_the_nftables_backend_on_port_21() {
    if !is_root() {
        eprintln!("not root: the capability test needs root and a network namespace");
        return;
    }
    let chroot = Scratch::new("caps");
    let mut d = start(None, &chroot.0);
    let (log, up) = d.wait_for("listening on 127.0.0.1 port 21");
    assert!(
        up,
        "did not start with the unit's capabilities:\n{}",
        log.join("\n")
    );
    // After start-up: nobody, chrooted, CAP_NET_ADMIN alone.
    assert_eq!(d.status_field("CapEff:"), "0000000000001000");
    assert_eq!(d.status_field("NoNewPrivs:"), "1");
    assert!(!d.status_field("Uid:").starts_with("0\t"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/root", d.child.id())).unwrap(),
        chroot.0
    );
    // The unit's descriptor limit is enough for -m 100 with any backend.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("8192")),
        "{limits}"
    );
    let wait_handler = Instant::now() + Duration::from_secs(20);
    while u64::from_str_radix(&d.status_field("SigCgt:"), 16).unwrap_or(0) & (1 << 14) == 0 {
        assert!(Instant::now() < wait_handler, "no SIGTERM handler");
        thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert_eq!(d.wait(), Some(0));
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    if !is_root() {
        eprintln!("not root: the capability test needs root and a network namespace");
        return;
    }
    let u = unit();
    let caps: Vec<String> = unit_value(&u, "CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // What fails without each one.
    let needed_for = [
        ("CAP_NET_BIND_SERVICE", "bind failed: Permission denied"),
        ("CAP_SYS_CHROOT", "cannot drop privileges: chroot"),
        ("CAP_SETUID", "cannot drop privileges: setresuid"),
        ("CAP_SETGID", "cannot drop privileges: setgroups"),
        ("CAP_NET_ADMIN", "cannot open backend nftables"),
    ];
    assert_eq!(
        caps,
        needed_for.map(|(c, _)| c.to_owned()),
        "the unit's CapabilityBoundingSet changed: update this test"
    );
    for (cap, why) in needed_for {
        let chroot = Scratch::new(&format!("no-{cap}"));
        let mut d = start(Some(cap), &chroot.0);
        let (log, up) = d.wait_for(why);
        assert!(up, "without {cap} no {why:?}:\n{}", log.join("\n"));
        assert_eq!(d.wait(), Some(1), "without {cap}:\n{}", log.join("\n"));
    }
}

#[test]
fn openbsd_rc_script_is_rc_subr_shell() {
    let path = dist("openbsd/ftpproxy_rs");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("#!/bin/ksh\n"));
    for line in [
        "daemon=\"/usr/local/sbin/ftp-proxy\"",
        ". /etc/rc.d/rc.subr",
        "rc_reload=NO",
        "rc_cmd $1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
    let o = Command::new("sh")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("sh");
    assert!(o.status.success(), "{o:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o755
    );
}
