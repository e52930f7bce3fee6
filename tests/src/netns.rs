//! Three network namespaces (client, router, server) for the nftables end-to-end tests.
//!
//! ```text
//! <p>c  c0 203.0.113.10/24   2001:db8:1::10/64 --- r0 203.0.113.1/24   2001:db8:1::1/64  <p>r (forwarding)
//!                                                  r1 198.51.100.1/24  2001:db8:2::1/64
//! <p>s  s0 198.51.100.10/24  2001:db8:2::10/64 --- r1
//! ```
//!
//! The layout (docs/linux.md, "Tests") avoids these pitfalls: sysctls are set before the
//! veths exist (no DAD on link-local addresses, so IPv6 works at once), global
//! addresses are added `nodad`, both veth ends are created inside the namespaces, and
//! nothing ever touches the root namespace. The prefix holds the test process's pid and
//! a per-test tag, so parallel tests and parallel runs never share a namespace.
//! [`Topology`]'s `Drop` kills every process it started (by pid), then anything still
//! inside its namespaces, then deletes them, so a failing test leaves nothing behind.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The client's addresses.
pub const CLIENT4: &str = "203.0.113.10";
/// The client's IPv6 address.
pub const CLIENT6: &str = "2001:db8:1::10";
/// The router's address on the client side.
pub const ROUTER_C4: &str = "203.0.113.1";
/// The router's IPv6 address on the client side.
pub const ROUTER_C6: &str = "2001:db8:1::1";
/// The router's address on the server side (the proxy's source address).
pub const ROUTER_S4: &str = "198.51.100.1";
/// The router's IPv6 address on the server side.
pub const ROUTER_S6: &str = "2001:db8:2::1";
/// The FTP server.
pub const SERVER4: &str = "198.51.100.10";
/// The FTP server's IPv6 address.
pub const SERVER6: &str = "2001:db8:2::10";

/// The virtual FTP user of [`Topology::start_pure_ftpd`].
pub const FTP_USER: &str = "alice";
/// Its password.
pub const FTP_PASSWORD: &str = "netns-Secret-4";

/// What went wrong, with enough context to read the failure without rerunning.
pub enum NetnsError {
    /// A command ran and failed (or timed out).
    Command {
        /// The command line.
        cmd: String,
        /// Exit status text (or `timed out after ...`).
        status: String,
        /// Its standard error (tail).
        stderr: String,
        /// Its standard output (tail).
        stdout: String,
    },
    /// An I/O operation of the harness failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// A condition the test checks did not hold.
    Check {
        /// What was expected.
        what: String,
        /// What was seen.
        detail: String,
    },
}

impl fmt::Display for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsError::Command {
                cmd,
                status,
                stderr,
                stdout,
            } => {
                write!(
                    f,
                    "`{cmd}` failed ({status})\n--- stderr:\n{stderr}\n--- stdout:\n{stdout}"
                )
            }
            NetnsError::Io { context, source } => write!(f, "{context}: {source}"),
            NetnsError::Check { what, detail } => write!(f, "expected {what}\n--- seen:\n{detail}"),
        }
    }
}

/// `Debug` is what a failing `#[test] fn ... -> Result` prints: make it readable.
impl fmt::Debug for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NetnsError {}

/// Result of the harness.
pub type Result<T> = std::result::Result<T, NetnsError>;

/// Builds an I/O error mapper with context.
pub fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let context = context.into();
    move |source| NetnsError::Io { context, source }
}

/// A failed check.
pub fn check(what: impl Into<String>, detail: impl Into<String>) -> NetnsError {
    NetnsError::Check {
        what: what.into(),
        detail: detail.into(),
    }
}

/// The last `max` bytes of a text (for error messages).
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut at = text.len() - max;
    while !text.is_char_boundary(at) {
        at += 1;
    }
    format!("...{}", &text[at..])
}

/// True when the tests can run (effective uid 0). Otherwise prints why they did not,
/// so that a non-root `cargo test` passes visibly without pretending to have tested.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: not run: network namespaces and nftables need root (CI runs as root)");
    }
    root
}

/// Runs a command to completion with a time limit, capturing its output.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let text = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("spawning {text}")))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_limit(&mut child, limit).map_err(io_err(format!("waiting for {text}")))?;
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            return Err(NetnsError::Command {
                cmd: text,
                status: format!("timed out after {limit:?}"),
                stderr: tail(&stderr, 3000),
                stdout: tail(&stdout, 3000),
            });
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// As [`run`], failing unless the command exits 0; returns its standard output.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Result<String> {
    let text = format!("{cmd:?}");
    let out = run(cmd, limit)?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: text,
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 3000),
            stdout: tail(&String::from_utf8_lossy(&out.stdout), 3000),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for a child at most `limit` (polling every 5 ms).
pub fn wait_limit(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `f` every 20 ms until it returns `Some`, at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which namespace of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// The FTP client's.
    Client,
    /// The router's, where the proxy and nftables run.
    Router,
    /// The FTP server's.
    Server,
}

/// A process started in the topology, killed by pid on drop.
struct Proc {
    name: String,
    child: Child,
}

/// The three namespaces, a scratch directory in /dev/shm, and the processes started.
pub struct Topology {
    prefix: String,
    dir: PathBuf,
    procs: Vec<Proc>,
    created: Vec<String>,
}

impl Topology {
    /// Creates the namespaces and links. `tag` tells tests apart (at most 6 characters
    /// keeps names short); the pid tells test runs apart.
    pub fn up(tag: &str) -> Result<Topology> {
        let prefix = format!("fpx{}{}", std::process::id(), tag);
        let dir = PathBuf::from(format!("/dev/shm/{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut t = Topology {
            prefix,
            dir,
            procs: Vec::new(),
            created: Vec::new(),
        };
        t.build()?;
        Ok(t)
    }

    fn build(&mut self) -> Result<()> {
        let lim = Duration::from_secs(10);
        for ns in [Ns::Client, Ns::Router, Ns::Server] {
            let name = self.name(ns);
            // Leftover from a crashed run with a recycled pid: remove it first.
            if Path::new("/run/netns").join(&name).exists() {
                let _ = run(Command::new("ip").args(["netns", "del", &name]), lim);
            }
            run_ok(Command::new("ip").args(["netns", "add", &name]), lim)?;
            self.created.push(name.clone());
            let mut sysctls = vec![
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ];
            if ns == Ns::Router {
                sysctls.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
            }
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &name, "sysctl", "-q", "-w"])
                    .args(&sysctls),
                lim,
            )?;
        }
        let (c, r, s) = (
            self.name(Ns::Client),
            self.name(Ns::Router),
            self.name(Ns::Server),
        );
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args), lim).map(drop);
        ip(&[
            "-n", &c, "link", "add", "c0", "type", "veth", "peer", "name", "r0", "netns", &r,
        ])?;
        ip(&[
            "-n", &s, "link", "add", "s0", "type", "veth", "peer", "name", "r1", "netns", &r,
        ])?;
        for (ns, dev, v4, v6) in [
            (&c, "c0", "203.0.113.10/24", "2001:db8:1::10/64"),
            (&r, "r0", "203.0.113.1/24", "2001:db8:1::1/64"),
            (&r, "r1", "198.51.100.1/24", "2001:db8:2::1/64"),
            (&s, "s0", "198.51.100.10/24", "2001:db8:2::10/64"),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for ns in [&c, &r, &s] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &c, "route", "add", "default", "via", ROUTER_C4])?;
        ip(&["-n", &c, "-6", "route", "add", "default", "via", ROUTER_C6])?;
        ip(&["-n", &s, "route", "add", "default", "via", ROUTER_S4])?;
        ip(&["-n", &s, "-6", "route", "add", "default", "via", ROUTER_S6])?;
        Ok(())
    }

    /// The namespace's name (`<prefix>c`, `<prefix>r`, `<prefix>s`).
    pub fn name(&self, ns: Ns) -> String {
        let suffix = match ns {
            Ns::Client => 'c',
            Ns::Router => 'r',
            Ns::Server => 's',
        };
        format!("{}{}", self.prefix, suffix)
    }

    /// The scratch directory (in /dev/shm, removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command that runs `program` inside namespace `ns` (`ip netns exec`, which
    /// execs the program, so the child's pid is the program's).
    pub fn cmd(&self, ns: Ns, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(ns), program]);
        c
    }

    /// Runs `program args` in `ns`, failing unless it exits 0; returns stdout.
    pub fn exec(&self, ns: Ns, program: &str, args: &[&str], limit: Duration) -> Result<String> {
        run_ok(self.cmd(ns, program).args(args), limit)
    }

    /// Runs `nft` in the router with `script` on stdin.
    pub fn nft_script(&self, script: &str) -> Result<()> {
        let path = self
            .dir
            .join(format!("nft-{}.nft", self.procs.len() + script.len()));
        fs::write(&path, script).map_err(io_err("writing nft script"))?;
        self.exec(
            Ns::Router,
            "nft",
            &["-f", path.to_str().expect("utf-8 path")],
            Duration::from_secs(10),
        )?;
        Ok(())
    }

    /// `nft <args>` in the router, returning its output.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        self.exec(Ns::Router, "nft", args, Duration::from_secs(10))
    }

    /// Starts a long-running process; it is killed (by pid) when the topology drops.
    /// Its standard output and error go to `log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<u32> {
        let f = fs::File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
        let f2 = f.try_clone().map_err(io_err("dup log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(io_err(format!("spawning {name}: {cmd:?}")))?;
        let pid = child.id();
        self.procs.push(Proc {
            name: name.to_string(),
            child,
        });
        Ok(pid)
    }

    /// Whether the process started as `pid` is still running.
    pub fn is_running(&mut self, pid: u32) -> bool {
        self.procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Sends `sig` to a process this topology started and waits up to `limit` for it
    /// to exit. Returns its exit status.
    pub fn stop(&mut self, pid: u32, sig: i32, limit: Duration) -> Result<ExitStatus> {
        let i = self
            .procs
            .iter()
            .position(|p| p.child.id() == pid)
            .ok_or_else(|| check(format!("pid {pid} started by this topology"), "unknown pid"))?;
        // SAFETY: kill(2) on a child we started and have not reaped (no pid reuse).
        unsafe { libc::kill(pid as libc::pid_t, sig) };
        let p = &mut self.procs[i];
        match wait_limit(&mut p.child, limit).map_err(io_err("waiting for a child"))? {
            Some(s) => {
                self.procs.remove(i);
                Ok(s)
            }
            None => Err(check(
                format!(
                    "{} (pid {pid}) exits within {limit:?} of signal {sig}",
                    p.name
                ),
                "still running",
            )),
        }
    }

    /// Runs `f` on a thread that has entered namespace `ns` (network namespaces are
    /// per thread, so the rest of the test process stays where it is). Sockets `f`
    /// opens, and processes it spawns, live in `ns`.
    pub fn in_ns<T: Send>(&self, ns: Ns, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new("/run/netns").join(self.name(ns));
        let file = fs::File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace file we hold open; affects this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetnsError::Io {
                        context: format!("setns {}", path.display()),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Starts pure-ftpd in the server namespace on port 21 (IPv4 and IPv6) serving
    /// `home` to user [`FTP_USER`], with passive ports 30000-39999. Returns its pid once
    /// it accepts connections.
    ///
    /// The user's password line is written with an `openssl passwd -6` hash (a login
    /// costs 1 ms; `pure-pw useradd` would hash with argon2id, 2.5 s per login).
    pub fn start_pure_ftpd(&mut self, home: &Path) -> Result<u32> {
        let lim = Duration::from_secs(10);
        let hash = run_ok(
            Command::new("openssl").args(["passwd", "-6", FTP_PASSWORD]),
            lim,
        )?;
        let passwd = self.dir.join("pureftpd.passwd");
        let pdb = self.dir.join("pureftpd.pdb");
        let line = format!(
            "{FTP_USER}:{}:65534:65534::{}/./::::::::::::\n",
            hash.trim(),
            home.display()
        );
        fs::write(&passwd, line).map_err(io_err("writing pureftpd.passwd"))?;
        run_ok(
            Command::new("pure-pw").args([
                "mkdb",
                pdb.to_str().expect("utf-8"),
                "-f",
                passwd.to_str().expect("utf-8"),
            ]),
            lim,
        )?;
        let mut cmd = self.cmd(Ns::Server, "pure-ftpd");
        cmd.args([
            "-S", "21", "-H", "-E", "-f", "none", "-u", "1", "-c", "50", "-C", "50",
        ])
        .args(["-p", "30000:39999", "-I", "60"])
        .arg(format!("-lpuredb:{}", pdb.display()));
        let log = self.dir.join("pure-ftpd.log");
        let pid = self.spawn("pure-ftpd", cmd, &log)?;
        let name = self.name(Ns::Server);
        let ready = poll(Duration::from_secs(10), || {
            let out = run(
                Command::new("ip")
                    .args(["netns", "exec", &name, "ss", "-Hltn", "sport", "=", ":21"]),
                lim,
            )
            .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("0.0.0.0:21") || text.contains("*:21")).then_some(())
        });
        if ready.is_none() || !self.is_running(pid) {
            let log = fs::read_to_string(&log).unwrap_or_default();
            return Err(check(
                "pure-ftpd listening on port 21 in the server namespace",
                log,
            ));
        }
        Ok(pid)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            if matches!(p.child.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
                if !matches!(
                    wait_limit(&mut p.child, Duration::from_secs(2)),
                    Ok(Some(_))
                ) {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                }
            }
        }
        let lim = Duration::from_secs(5);
        for name in self.created.iter().rev() {
            // Anything still inside a namespace this test created was started by it
            // (e.g. a session child); these pids belong to the test alone.
            if let Ok(out) = run(Command::new("ip").args(["netns", "pids", name]), lim) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) of a process inside our own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = run(Command::new("ip").args(["netns", "del", name]), lim);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes `len` bytes of deterministic pseudo-random data (so a corrupted or shifted
/// byte is caught) to `path`.
pub fn write_test_file(path: &Path, len: usize, seed: u64) -> Result<()> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    fs::write(path, v).map_err(io_err(format!("writing {}", path.display())))
}

/// FNV-1a 64 of a file: the checksum the tests compare (and print on mismatch).
pub fn checksum(path: &Path) -> Result<(usize, u64)> {
    let data = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok((data.len(), h))
}

/// Path of the built `ftp-proxy`, after `cargo build -p ftp-proxy-cli` in the test's
/// own profile (once per test process; a no-op when it is fresh).
///
/// The tests crate cannot see another package's `CARGO_BIN_EXE_*`, so the binary is
/// found next to the test executable (`<target>/<profile>/deps/<test>` →
/// `<target>/<profile>/ftp-proxy`), which follows `CARGO_TARGET_DIR` and the profile.
/// `FTP_PROXY_BIN=/path` overrides both the search and the build.
pub fn proxy_binary() -> Result<PathBuf> {
    static BIN: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BIN.get_or_init(|| build_proxy().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| check("the ftp-proxy binary builds", e))
}

fn build_proxy() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FTP_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().map_err(io_err("current_exe"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| {
            check(
                "the test executable in <target>/<profile>/deps",
                exe.display().to_string(),
            )
        })?
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "ftp-proxy-cli", "--manifest-path"])
        .arg(&manifest);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // Other builds on a shared machine may hold cargo's lock for a while.
    run_ok(&mut cmd, Duration::from_secs(900))?;
    let bin = profile_dir.join("ftp-proxy");
    if !bin.is_file() {
        return Err(check(
            "cargo build to produce ftp-proxy",
            bin.display().to_string(),
        ));
    }
    Ok(bin)
}

/// How the admin's forward chain (`policy drop`) lets the proxy's data connections
/// through: the one line docs/linux.md asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAccept {
    /// `ct status dnat accept`: every proxy data connection is DNATed.
    CtStatusDnat,
    /// `ct mark <mark> accept`, the backend's mark (0xf7f7 unless `-T`).
    CtMark(u32),
    /// No divert and a forward chain that accepts everything: plain forwarding with
    /// the counters only, for baselines without the proxy.
    Open,
}

/// The admin's table in the router: the control-connection divert (REDIRECT to
/// :8021, docs/linux.md), a `policy drop` forward chain, and two named
/// counters: `forwarded` (bytes the router forwarded) and `local_in` (TCP bytes that
/// ended on the router's own sockets, the proxy's among them). Loading it replaces an
/// earlier admin table.
pub fn admin_ruleset(accept: AdminAccept) -> String {
    admin_ruleset_with(accept, AdminDivert::Redirect)
}

/// How the admin diverts control connections to the proxy's port 8021.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDivert {
    /// `redirect to :8021` in a nat prerouting chain (docs/linux.md); the
    /// proxy reads SO_ORIGINAL_DST.
    Redirect,
    /// `tproxy to :8021` plus `meta mark set 0x1`, with the policy routing that
    /// [`Lab::new_with`] adds; the proxy's listener is transparent and reads
    /// getsockname.
    Tproxy,
}

/// [`admin_ruleset`] with a choice of divert.
pub fn admin_ruleset_with(accept: AdminAccept, divert: AdminDivert) -> String {
    let (policy, line) = match accept {
        AdminAccept::CtStatusDnat => ("drop", "ct status dnat accept".to_string()),
        AdminAccept::CtMark(m) => ("drop", format!("ct mark {m:#010x} accept")),
        AdminAccept::Open => ("accept", String::new()),
    };
    let divert = match (accept, divert) {
        (AdminAccept::Open, _) => String::new(),
        (_, AdminDivert::Redirect) => "\tchain divert {
\t\ttype nat hook prerouting priority dstnat - 20; policy accept;
\t\tiifname \"r0\" tcp dport 21 redirect to :8021
\t}
"
        .to_string(),
        (_, AdminDivert::Tproxy) => "\tchain divert {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tiifname \"r0\" meta l4proto tcp socket transparent 1 meta mark set 0x1 accept
\t\tiifname \"r0\" tcp dport 21 tproxy to :8021 meta mark set 0x1 accept
\t}
"
        .to_string(),
    };
    format!(
        "table inet admin
delete table inet admin
table inet admin {{
\tcounter forwarded {{
\t}}
\tcounter local_in {{
\t}}
{divert}\tchain forward {{
\t\ttype filter hook forward priority filter; policy {policy};
\t\tcounter name \"forwarded\"
\t\tct state established,related accept
\t\ttcp dport 21 accept
\t\t{line}
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tmeta l4proto tcp counter name \"local_in\"
\t}}
}}
"
    )
}

/// A running `ftp-proxy` in the router namespace.
#[derive(Debug, Clone)]
pub struct ProxyRun {
    /// The pid of the process the test started: the daemon itself, or the
    /// `unshare --pid --fork` that runs it in a new PID namespace.
    pub pid: u32,
    /// The daemon's pid as this test sees it (equal to `pid` without `unshare`).
    pub daemon_pid: u32,
    /// `ftp-proxy-<pid in its own PID namespace>-<PID namespace inode>`.
    pub table: String,
    /// Where its standard error goes.
    pub log: PathBuf,
}

impl ProxyRun {
    /// The proxy's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The nftables table of the running daemon `pid` (as this process sees it): its
/// pid in its own PID namespace (the last `NSpid` field) and that namespace's inode.
pub fn table_of(pid: u32) -> Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io_err(format!("reading /proc/{pid}/status")))?;
    let own = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .ok_or_else(|| check("an NSpid line", status.clone()))?;
    let link = fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map_err(io_err(format!("reading /proc/{pid}/ns/pid")))?;
    let ns = link
        .to_str()
        .and_then(|t| t.strip_prefix("pid:["))
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| check("pid:[inode]", link.display().to_string()))?;
    Ok(format!("ftp-proxy-{own}-{ns}"))
}

/// A topology with pure-ftpd serving `small.bin` (1 KiB) and `big.bin` (10 MiB), and
/// the admin's ruleset in the router.
pub struct Lab {
    /// The namespaces.
    pub topo: Topology,
    /// The FTP user's home (the server's files, uploads land here).
    pub home: PathBuf,
    /// The client's directory for downloads and upload sources.
    pub local: PathBuf,
}

/// Size of `small.bin`.
pub const SMALL_LEN: usize = 1024;
/// Size of `big.bin`.
pub const BIG_LEN: usize = 10 << 20;

impl Lab {
    /// Builds the topology, files, admin ruleset and server.
    pub fn new(tag: &str, accept: AdminAccept) -> Result<Lab> {
        Lab::new_with(tag, accept, AdminDivert::Redirect)
    }

    /// As [`Lab::new`], with a choice of divert. For TPROXY it also adds the router's
    /// policy routing: packets marked 0x1 are delivered locally (table 100).
    pub fn new_with(tag: &str, accept: AdminAccept, divert: AdminDivert) -> Result<Lab> {
        let mut topo = Topology::up(tag)?;
        if divert == AdminDivert::Tproxy {
            let r = topo.name(Ns::Router);
            let lim = Duration::from_secs(10);
            for args in [
                &["-4", "rule", "add", "fwmark", "0x1", "lookup", "100"][..],
                &[
                    "-4",
                    "route",
                    "add",
                    "local",
                    "0.0.0.0/0",
                    "dev",
                    "lo",
                    "table",
                    "100",
                ],
                &["-6", "rule", "add", "fwmark", "0x1", "lookup", "100"],
                &[
                    "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100",
                ],
            ] {
                run_ok(Command::new("ip").args(["-n", &r]).args(args), lim)?;
            }
        }
        let home = topo.dir().join("home");
        let local = topo.dir().join("local");
        for d in [&home, &local] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        use std::os::unix::fs::PermissionsExt;
        // The FTP user maps to uid 65534; uploads must be able to land in its home.
        fs::set_permissions(&home, fs::Permissions::from_mode(0o777))
            .map_err(io_err("chmod home"))?;
        write_test_file(&home.join("small.bin"), SMALL_LEN, 0x5eed_0001)?;
        write_test_file(&home.join("big.bin"), BIG_LEN, 0x5eed_0002)?;
        write_test_file(&local.join("up-small.bin"), SMALL_LEN, 0x5eed_0003)?;
        write_test_file(&local.join("up-big.bin"), BIG_LEN, 0x5eed_0004)?;
        topo.nft_script(&admin_ruleset_with(accept, divert))?;
        topo.start_pure_ftpd(&home)?;
        Ok(Lab { topo, home, local })
    }

    /// Starts `ftp-proxy -d -D7 --backend nftables --user nobody <args>` in the router
    /// and waits until its table exists and it listens on `port`.
    pub fn start_proxy(&mut self, args: &[&str], port: u16) -> Result<ProxyRun> {
        self.start_proxy_in(false, args, port)
    }

    /// As [`Lab::start_proxy`]; with `own_pid_ns` the daemon runs under
    /// `unshare --pid --fork --kill-child` (pid 1 of a new PID namespace, sharing the
    /// router's network namespace).
    pub fn start_proxy_in(
        &mut self,
        own_pid_ns: bool,
        args: &[&str],
        port: u16,
    ) -> Result<ProxyRun> {
        let bin = proxy_binary()?;
        let log = self.topo.dir().join(format!(
            "proxy-{}{}.log",
            if own_pid_ns { "pidns-" } else { "" },
            args.join("_").replace(['/', ':'], "")
        ));
        let bin = bin.to_str().expect("utf-8 path");
        let mut cmd = if own_pid_ns {
            let mut c = self.topo.cmd(Ns::Router, "unshare");
            c.args(["--pid", "--fork", "--kill-child", bin]);
            c
        } else {
            self.topo.cmd(Ns::Router, bin)
        };
        cmd.args(["-d", "-D7", "--backend", "nftables", "--user", "nobody"])
            .args(args);
        let pid = self.topo.spawn("ftp-proxy", cmd, &log)?;
        let daemon_pid = if own_pid_ns {
            poll(Duration::from_secs(5), || {
                let c = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
                c.split_whitespace().next()?.parse().ok()
            })
            .ok_or_else(|| check("unshare to start the daemon", "no child"))?
        } else {
            pid
        };
        let table = table_of(daemon_pid)?;
        let router = self.topo.name(Ns::Router);
        let lim = Duration::from_secs(5);
        let ready = poll(Duration::from_secs(10), || {
            let tables = run(
                Command::new("ip").args(["netns", "exec", &router, "nft", "list", "tables"]),
                lim,
            )
            .ok()?;
            let ss = run(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &router,
                    "ss",
                    "-Hltn",
                    "sport",
                    "=",
                    &format!(":{port}"),
                ]),
                lim,
            )
            .ok()?;
            let listed = String::from_utf8_lossy(&tables.stdout)
                .lines()
                .any(|l| l.trim() == format!("table inet {table}"));
            (listed && !ss.stdout.is_empty()).then_some(())
        });
        let run = ProxyRun {
            pid,
            daemon_pid,
            table,
            log,
        };
        if ready.is_none() || !self.topo.is_running(pid) {
            return Err(check(
                format!(
                    "ftp-proxy {args:?} to create table {} and listen on port {port}",
                    run.table
                ),
                run.log_text(),
            ));
        }
        Ok(run)
    }

    /// Reads a named counter of the admin table: (packets, bytes).
    pub fn counter(&self, name: &str) -> Result<(u64, u64)> {
        let out = self.topo.nft(&["list", "counter", "inet", "admin", name])?;
        let num = |key: &str| {
            out.split_whitespace()
                .skip_while(|w| *w != key)
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (num("packets"), num("bytes")) {
            (Some(p), Some(b)) => Ok((p, b)),
            _ => Err(check(format!("counter {name} in the admin table"), out)),
        }
    }

    /// Every element of the proxy's maps and sets, as listed by nft (empty when the
    /// proxy holds no negotiation).
    pub fn elements(&self, p: &ProxyRun) -> Result<String> {
        let l = self.topo.nft(&["list", "table", "inet", &p.table])?;
        Ok(l.lines()
            .filter(|l| {
                l.contains("elements =") || l.trim_start().starts_with(|c: char| c.is_ascii_digit())
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Waits (up to 3 s: the proxy sees the client's QUIT/EOF asynchronously) until the
    /// proxy's maps and sets are empty again.
    pub fn expect_no_elements(&self, p: &ProxyRun, after: &str) -> Result<()> {
        let mut last = String::new();
        let gone = poll(Duration::from_secs(3), || match self.elements(p) {
            Ok(e) if e.is_empty() => Some(()),
            Ok(e) => {
                last = e;
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        });
        gone.ok_or_else(|| {
            check(
                format!("no elements left in table {} after {after}", p.table),
                last,
            )
        })
    }

    /// Stops the proxy with SIGTERM and checks that its table went with it.
    pub fn stop_proxy(&mut self, p: &ProxyRun) -> Result<()> {
        let status = self.signal_proxy(p, libc::SIGTERM)?;
        let tables = self.topo.nft(&["list", "tables"])?;
        if tables.contains(&p.table) {
            return Err(check(
                format!("table {} removed at SIGTERM (exit {status})", p.table),
                tables,
            ));
        }
        Ok(())
    }

    /// Sends `sig` to the daemon and waits (5 s at most) for the process the test
    /// started to end; returns its exit status.
    pub fn signal_proxy(&mut self, p: &ProxyRun, sig: i32) -> Result<ExitStatus> {
        let lim = Duration::from_secs(5);
        if p.daemon_pid == p.pid {
            return self.topo.stop(p.pid, sig, lim);
        }
        // SAFETY: kill(2) of the daemon our own unshare child forked; unshare has not
        // reaped it while it still runs (checked just before).
        if self.topo.is_running(p.pid) {
            unsafe { libc::kill(p.daemon_pid as libc::pid_t, sig) };
        }
        // Signal 0: only wait for unshare, which ends with its child.
        self.topo.stop(p.pid, 0, lim)
    }

    /// Runs curl in the client namespace with `-v` and returns its verbose log.
    pub fn curl(&self, args: &[&str]) -> Result<String> {
        let user = format!("{FTP_USER}:{FTP_PASSWORD}");
        let out = run(
            self.topo
                .cmd(Ns::Client, "curl")
                .args([
                    "-sS",
                    "-v",
                    "-g",
                    "--max-time",
                    "60",
                    "--connect-timeout",
                    "5",
                    "-u",
                    &user,
                ])
                .args(args),
            Duration::from_secs(90),
        )?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(check(format!("curl {args:?} to succeed"), tail(&log, 4000)));
        }
        Ok(log)
    }

    /// Runs lftp in the client namespace with `cmds` after opening `url`; returns its
    /// debug log (the FTP commands it sent).
    pub fn lftp(&self, url: &str, settings: &str, cmds: &str) -> Result<String> {
        let script = format!(
            "set net:max-retries 1; set net:timeout 5; set cmd:fail-exit yes; set ftp:ssl-allow no; {settings}; \
             open -u {FTP_USER},{FTP_PASSWORD} {url}; {cmds}"
        );
        let out = run(
            self.topo
                .cmd(Ns::Client, "lftp")
                .args(["-d", "-c", &script]),
            Duration::from_secs(90),
        )?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(check(
                format!("lftp `{script}` to succeed"),
                tail(&log, 4000),
            ));
        }
        Ok(log)
    }

    /// Fails unless two files have the same size and checksum.
    pub fn same_file(&self, a: &Path, b: &Path) -> Result<()> {
        let (ca, cb) = (checksum(a)?, checksum(b)?);
        if ca != cb {
            return Err(check(
                format!("{} and {} identical", a.display(), b.display()),
                format!("(len, fnv1a64) {ca:?} vs {cb:?}"),
            ));
        }
        Ok(())
    }
}
