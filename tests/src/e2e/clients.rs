//! The real FTP clients: curl, lftp and Python's ftplib (tests/scripts/ftp_client.py),
//! and the check that proves which data-connection mode a transfer really used.
//!
//! curl silently falls back from EPSV to PASV and from EPRT to PORT, and lftp picks
//! modes on its own; a proxy that breaks one mode would pass unnoticed. So every
//! client's verbose transcript is normalised to `> CMD` / `< REPLY` lines and
//! [`prove_mode`] requires the mode's command, its success reply, and the absence of
//! the fallback command.
//!
//! FTPS: [`ClientTls`] says how a client secures the session (explicit `AUTH TLS` or
//! implicit, the CA it verifies the server against, a pinned [`TlsVersion`]), and
//! [`curl_ftps_retr`], [`curl_ftps_stor`], [`lftp_ftps`] and [`ftplib_ftps`] run
//! each client with it. They return an [`Attempt`], since a refused session is an
//! outcome the FTPS scenarios assert on.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::error::{tail, E2eError, Result};
use super::proc::{command_error, run, wait_for, ChildGuard};
use super::server::{PASSWORD, USER};
use super::tls::TlsVersion;

/// Every client run is bounded by this (seconds); a 10 MiB transfer takes well under 5.
pub const CLIENT_TIMEOUT: u64 = 90;

/// Who logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// `USER anonymous` (read-only).
    Anonymous,
    /// The named user [`USER`] with [`PASSWORD`] (may upload).
    User,
}

/// The four ways to open an FTP data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    /// `PASV` / `227` (IPv4 only).
    Pasv,
    /// `EPSV` / `229`.
    Epsv,
    /// `PORT` (IPv4 only).
    Port,
    /// `EPRT`.
    Eprt,
}

impl DataMode {
    /// All four.
    pub const ALL: [DataMode; 4] = [
        DataMode::Pasv,
        DataMode::Epsv,
        DataMode::Port,
        DataMode::Eprt,
    ];

    /// The command the client sends.
    pub fn command(self) -> &'static str {
        match self {
            DataMode::Pasv => "PASV",
            DataMode::Epsv => "EPSV",
            DataMode::Port => "PORT",
            DataMode::Eprt => "EPRT",
        }
    }

    /// The command a client falls back to, which must then not appear.
    fn fallback(self) -> &'static str {
        match self {
            DataMode::Pasv => "EPSV",
            DataMode::Epsv => "PASV",
            DataMode::Port => "EPRT",
            DataMode::Eprt => "PORT",
        }
    }

    /// The reply code of success.
    fn ok_code(self) -> &'static str {
        match self {
            DataMode::Pasv => "227",
            DataMode::Epsv => "229",
            DataMode::Port | DataMode::Eprt => "200",
        }
    }

    /// Whether the client connects (passive) rather than the server (active).
    pub fn is_passive(self) -> bool {
        matches!(self, DataMode::Pasv | DataMode::Epsv)
    }

    /// The mode's name in ftp_client.py operations.
    pub fn script_name(self) -> &'static str {
        match self {
            DataMode::Pasv => "pasv",
            DataMode::Epsv => "epsv",
            DataMode::Port => "port",
            DataMode::Eprt => "eprt",
        }
    }

    /// lftp settings selecting this mode. lftp has no switch between PORT and EPRT:
    /// with passive mode off it sends PORT on IPv4 and EPRT on IPv6.
    pub fn lftp_settings(self) -> &'static [&'static str] {
        match self {
            DataMode::Pasv => &["set ftp:passive-mode on", "set ftp:prefer-epsv no"],
            DataMode::Epsv => &["set ftp:passive-mode on", "set ftp:prefer-epsv yes"],
            DataMode::Port | DataMode::Eprt => &["set ftp:passive-mode off"],
        }
    }

    /// curl options selecting this mode.
    pub fn curl_args(self) -> &'static [&'static str] {
        match self {
            DataMode::Pasv => &["--disable-epsv"],
            DataMode::Epsv => &[],
            DataMode::Port => &["-P", "-", "--disable-eprt"],
            DataMode::Eprt => &["-P", "-"],
        }
    }
}

/// Checks a normalised transcript for proof that `mode` was used, and returns the
/// data port of each use: the port in the `227`/`229` reply for passive modes (where
/// the client connects), the port the client announced in `PORT`/`EPRT` otherwise.
pub fn prove_mode(transcript: &str, mode: DataMode) -> Result<Vec<u16>> {
    let lines: Vec<&str> = transcript.lines().map(str::trim_end).collect();
    let is_cmd = |l: &str, cmd: &str| {
        l.strip_prefix("> ")
            .and_then(|c| c.get(..4))
            .is_some_and(|c| c.eq_ignore_ascii_case(cmd))
    };
    if lines.iter().any(|l| is_cmd(l, mode.fallback())) {
        return Err(E2eError::check(
            format!(
                "{} used without falling back to {}",
                mode.command(),
                mode.fallback()
            ),
            tail(transcript, 4000),
        ));
    }
    // Replies come in command order, also when a client pipelines (lftp with
    // ftp:sync-mode off): the k-th command gets the (k+1)-th final reply, the first
    // being the banner. A final reply line is `< ddd text`; 1xx replies are
    // preliminary and belong to the same command as the final one after them.
    let commands: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("> "))
        .collect();
    let finals: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| final_reply_code(l).is_some_and(|c| c >= 200))
        .collect();
    let mut ports = Vec::new();
    for (k, line) in commands
        .iter()
        .enumerate()
        .filter(|(_, l)| is_cmd(l, mode.command()))
    {
        let reply = finals.get(k + 1).copied().unwrap_or("");
        if !reply[2.min(reply.len())..].starts_with(mode.ok_code()) {
            return Err(E2eError::check(
                format!(
                    "{} answered with {}, got {reply:?}",
                    mode.command(),
                    mode.ok_code()
                ),
                tail(transcript, 4000),
            ));
        }
        let port = match mode {
            DataMode::Pasv => parse_comma_port(&reply[2..]),
            DataMode::Epsv => parse_ext_port(reply.split_once('(').map_or("", |(_, r)| r)),
            DataMode::Port => parse_comma_port(&line[2..]),
            DataMode::Eprt => parse_ext_port(
                line[2..]
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .trim(),
            ),
        };
        let port = port.ok_or_else(|| {
            E2eError::check(
                format!("a data port in {line:?} / {reply:?}"),
                tail(transcript, 4000),
            )
        })?;
        ports.push(port);
    }
    if ports.is_empty() {
        return Err(E2eError::check(
            format!("the client sent {}", mode.command()),
            tail(transcript, 4000),
        ));
    }
    Ok(ports)
}

/// The code of a transcript line that ends a reply (`< ddd text` or `< ddd`).
fn final_reply_code(line: &str) -> Option<u16> {
    let text = line.strip_prefix("< ")?;
    let code = text.get(..3)?.parse::<u16>().ok()?;
    matches!(text.as_bytes().get(3), None | Some(b' ')).then_some(code)
}

/// The port in `h1,h2,h3,h4,p1,p2` (the last two numbers of the text).
fn parse_comma_port(text: &str) -> Option<u16> {
    let nums: Vec<u16> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    // Skip the reply code if present: we need at least h1..h4,p1,p2.
    let n = nums.len();
    (n >= 6)
        .then(|| {
            nums[n - 2]
                .checked_mul(256)
                .and_then(|hi| hi.checked_add(nums[n - 1]))
        })
        .flatten()
}

/// The port in `|af|addr|port|` or `|||port|` (any delimiter).
fn parse_ext_port(text: &str) -> Option<u16> {
    let delim = text.chars().next()?;
    text.split(delim).nth(3)?.parse().ok()
}

/// `ftp://[user:pass@]host:port/path`.
pub fn ftp_url(target: SocketAddr, login: Login, path: &str) -> String {
    url("ftp", target, login, path)
}

/// The URL for `tls`: `ftps://` (curl's and lftp's implicit FTPS) or `ftp://`.
pub fn ftps_url(target: SocketAddr, login: Login, path: &str, tls: &ClientTls) -> String {
    url(tls.scheme(), target, login, path)
}

fn url(scheme: &str, target: SocketAddr, login: Login, path: &str) -> String {
    let auth = match login {
        Login::Anonymous => String::new(),
        Login::User => format!("{USER}:{PASSWORD}@"),
    };
    let host = match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!(
        "{scheme}://{auth}{host}:{}/{}",
        target.port(),
        path.trim_start_matches('/')
    )
}

/// Explicit or implicit FTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtpsMode {
    /// `AUTH TLS` on the plain-text connection, after the banner.
    Explicit,
    /// TLS from the first byte (`ftps://`, the port-990 convention).
    Implicit,
}

/// How an FTPS client secures its session. Every client verifies the server's
/// certificate against `ca` and the name or address it dialled, and protects its
/// data connections (PBSZ 0, PROT P).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Explicit or implicit.
    pub mode: FtpsMode,
    /// The CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// The only TLS version allowed, or `None` for whatever both sides prefer.
    pub version: Option<TlsVersion>,
}

impl ClientTls {
    /// Explicit FTPS verified against `ca`.
    pub fn explicit(ca: &Path) -> ClientTls {
        ClientTls {
            mode: FtpsMode::Explicit,
            ca: ca.to_path_buf(),
            version: None,
        }
    }

    /// Implicit FTPS verified against `ca`.
    pub fn implicit(ca: &Path) -> ClientTls {
        ClientTls {
            mode: FtpsMode::Implicit,
            ..ClientTls::explicit(ca)
        }
    }

    /// The same, pinned to `version`.
    pub fn pinned(mut self, version: TlsVersion) -> ClientTls {
        self.version = Some(version);
        self
    }

    fn scheme(&self) -> &'static str {
        match self.mode {
            FtpsMode::Explicit => "ftp",
            FtpsMode::Implicit => "ftps",
        }
    }

    /// curl's options (the URL scheme says implicit).
    fn curl_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.mode == FtpsMode::Explicit {
            args.push("--ssl-reqd".to_string());
        }
        args.extend(["--cacert".to_string(), self.ca.display().to_string()]);
        if let Some(v) = self.version {
            args.extend(v.curl_args().iter().map(|a| a.to_string()));
        }
        args
    }

    /// lftp's settings: TLS on, required, also for anonymous logins (lftp sends no
    /// AUTH for them otherwise) and for data; the certificate and its name checked.
    fn lftp_settings(&self) -> Vec<String> {
        let mut set = vec![
            "set ftp:ssl-allow yes".to_string(),
            "set ftp:ssl-force true".into(),
            "set ftp:ssl-protect-data true".into(),
            "set ftp:ssl-protect-list true".into(),
            "set ftp:ssl-allow-anonymous true".into(),
            "set ssl:verify-certificate yes".into(),
            "set ssl:check-hostname yes".into(),
            format!("set ssl:ca-file {}", self.ca.display()),
        ];
        if let Some(v) = self.version {
            set.push(format!("set ssl:priority {}", v.gnutls_priority()));
        }
        set
    }

    /// ftp_client.py's options.
    fn ftplib_options(&self, reuse: SessionReuse) -> Vec<String> {
        let mut opts = vec![
            match self.mode {
                FtpsMode::Explicit => "--tls=explicit".to_string(),
                FtpsMode::Implicit => "--tls=implicit".to_string(),
            },
            format!("--ca={}", self.ca.display()),
            match reuse {
                SessionReuse::Resume => "--reuse=yes".to_string(),
                SessionReuse::Fresh => "--reuse=no".to_string(),
            },
        ];
        if let Some(v) = self.version {
            opts.push(format!("--tls-version={}", v.script_name()));
        }
        opts
    }
}

/// Whether ftp_client.py's data connections resume the control connection's TLS
/// session, which vsftpd's `require_ssl_reuse` insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionReuse {
    /// `wrap_socket(..., session=control.session)`, as curl and lftp do.
    Resume,
    /// A new session per data connection, as Python's stock `FTP_TLS` does.
    Fresh,
}

/// One client run that may fail: how it ended and everything it printed.
pub struct Attempt {
    program: &'static str,
    args: Vec<String>,
    out: Output,
    text: String,
}

impl Attempt {
    fn new(program: &'static str, args: Vec<String>, out: Output, text: String) -> Attempt {
        Attempt {
            program,
            args,
            out,
            text,
        }
    }

    /// Whether it exited 0.
    pub fn succeeded(&self) -> bool {
        self.out.status.success()
    }

    /// How it ended.
    pub fn status(&self) -> ExitStatus {
        self.out.status
    }

    /// Its transcript: for lftp normalised like [`lftp`]'s, for curl its verbose
    /// log, for ftp_client.py its output and then its error output.
    pub fn output(&self) -> &str {
        &self.text
    }

    /// The transcript if it succeeded, else an error with the command and its output.
    pub fn ok(self) -> Result<String> {
        if self.succeeded() {
            Ok(self.text)
        } else {
            Err(command_error(self.program, &self.args, &self.out))
        }
    }
}

/// The version of the curl in `PATH`, e.g. `(7, 88, 1)`.
pub fn curl_version() -> Result<(u32, u32, u32)> {
    let out = run("curl", &["--version"], 10)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = text.split_whitespace().nth(1).map(|v| {
        v.split('.')
            .map(|n| n.parse::<u32>().ok())
            .collect::<Vec<_>>()
    });
    match parsed.as_deref() {
        Some([Some(a), Some(b), Some(c)]) => Ok((*a, *b, *c)),
        _ => Err(E2eError::check("curl --version names a version", text)),
    }
}

/// Runs curl like [`curl`] with `tls`'s options before `args`, whatever the outcome.
pub fn curl_ftps(tls: &ClientTls, args: &[String]) -> Result<Attempt> {
    let mut all = vec![
        "-sS".to_string(),
        "-v".into(),
        "--max-time".into(),
        "60".into(),
    ];
    all.extend(tls.curl_args());
    all.extend_from_slice(args);
    let out = run("curl", &all, CLIENT_TIMEOUT)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(Attempt::new("curl", all, out, text))
}

/// curl downloads `remote` to `local` over FTPS using `mode`.
pub fn curl_ftps_retr(
    target: SocketAddr,
    login: Login,
    mode: DataMode,
    tls: &ClientTls,
    remote: &str,
    local: &Path,
) -> Result<Attempt> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.extend([
        ftps_url(target, login, remote, tls),
        "-o".into(),
        local.display().to_string(),
    ]);
    curl_ftps(tls, &args)
}

/// curl uploads `local` as `remote` over FTPS using `mode`.
pub fn curl_ftps_stor(
    target: SocketAddr,
    login: Login,
    mode: DataMode,
    tls: &ClientTls,
    local: &Path,
    remote: &str,
) -> Result<Attempt> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.extend([
        "-T".into(),
        local.display().to_string(),
        ftps_url(target, login, remote, tls),
    ]);
    curl_ftps(tls, &args)
}

/// Runs curl with `-sS -v` (verbose log returned) and the given arguments.
pub fn curl(args: &[String]) -> Result<String> {
    let mut all = vec![
        "-sS".to_string(),
        "-v".into(),
        "--max-time".into(),
        "60".into(),
    ];
    all.extend_from_slice(args);
    let out = run("curl", &all, CLIENT_TIMEOUT)?;
    if !out.status.success() {
        return Err(command_error("curl", &all, &out));
    }
    let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok(log)
}

/// curl downloads `remote` to `local` using `mode`; returns the verbose log.
pub fn curl_retr(
    target: SocketAddr,
    login: Login,
    mode: DataMode,
    remote: &str,
    local: &Path,
) -> Result<String> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.extend([
        ftp_url(target, login, remote),
        "-o".into(),
        local.display().to_string(),
    ]);
    curl(&args)
}

/// curl uploads `local` as `remote` using `mode`; returns the verbose log.
pub fn curl_stor(
    target: SocketAddr,
    login: Login,
    mode: DataMode,
    local: &Path,
    remote: &str,
) -> Result<String> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.extend([
        "-T".into(),
        local.display().to_string(),
        ftp_url(target, login, remote),
    ]);
    curl(&args)
}

/// curl lists the root directory (LIST) using `mode`; returns the verbose log, which
/// ends with the listing itself.
pub fn curl_list(target: SocketAddr, login: Login, mode: DataMode) -> Result<String> {
    let mut args: Vec<String> = mode.curl_args().iter().map(|s| s.to_string()).collect();
    args.push(ftp_url(target, login, ""));
    curl(&args)
}

/// Runs lftp with debug output on `commands` after logging in; `settings` are extra
/// `set` commands (e.g. `set ftp:passive-mode off`). Returns the debug transcript
/// normalised to `> CMD` / `< REPLY` lines (other lines are kept as they are).
pub fn lftp(
    target: SocketAddr,
    login: Login,
    settings: &[&str],
    commands: &[String],
) -> Result<String> {
    let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
    lftp_run(target, login, "ftp", &settings, commands)?.ok()
}

/// Runs lftp like [`lftp`], logging in as `user` with `password` (any text, such
/// as forward mode's `name@host:port`: lftp's `-u` takes it as it is).
pub fn lftp_as(
    target: SocketAddr,
    user: &str,
    password: &str,
    settings: &[&str],
    commands: &[String],
) -> Result<String> {
    let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
    let open = format!("open -u '{user}','{password}'");
    lftp_open(target, &open, "ftp", &settings, commands)?.ok()
}

/// Runs lftp like [`lftp`] over FTPS as `tls` says (`settings` come after its TLS
/// settings), whatever the outcome.
pub fn lftp_ftps(
    target: SocketAddr,
    login: Login,
    tls: &ClientTls,
    settings: &[&str],
    commands: &[String],
) -> Result<Attempt> {
    let mut all = tls.lftp_settings();
    all.extend(settings.iter().map(|s| s.to_string()));
    lftp_run(target, login, tls.scheme(), &all, commands)
}

fn lftp_run(
    target: SocketAddr,
    login: Login,
    scheme: &str,
    settings: &[String],
    commands: &[String],
) -> Result<Attempt> {
    let open = match login {
        Login::Anonymous => "open".to_string(),
        Login::User => format!("open -u {USER},{PASSWORD}"),
    };
    lftp_open(target, &open, scheme, settings, commands)
}

/// lftp with `open` (the command and its login options, before the URL).
fn lftp_open(
    target: SocketAddr,
    open: &str,
    scheme: &str,
    settings: &[String],
    commands: &[String],
) -> Result<Attempt> {
    // Without these, a failure retries for minutes (test-servers.md).
    let mut script = String::from(
        "set net:max-retries 1; set net:timeout 10; set cmd:fail-exit yes; set ftp:ssl-allow no; \
         set ftp:use-mlsd no; set xfer:clobber on; ",
    );
    for s in settings {
        script.push_str(s);
        script.push_str("; ");
    }
    let host = match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    script.push_str(&format!("{open} {scheme}://{host}:{}; ", target.port()));
    script.push_str(&commands.join("; "));
    let args = vec!["-d".to_string(), "-c".into(), script];
    let out = run("lftp", &args, CLIENT_TIMEOUT)?;
    let raw = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = raw
        .lines()
        .map(
            |l| match (l.strip_prefix("---> "), l.strip_prefix("<--- ")) {
                (Some(c), _) => format!("> {c}\n"),
                (_, Some(r)) => format!("< {r}\n"),
                _ => format!("{l}\n"),
            },
        )
        .collect();
    Ok(Attempt::new("lftp", args, out, text))
}

/// Path of the ftplib client script.
pub fn ftplib_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ftp_client.py")
}

fn ftplib_args(target: SocketAddr, ops: &[String]) -> Vec<String> {
    let mut args = vec![
        ftplib_script().to_string(),
        target.ip().to_string(),
        target.port().to_string(),
    ];
    args.extend_from_slice(ops);
    args
}

/// Runs ftp_client.py over FTPS as `tls` says, its data connections resuming the
/// control connection's TLS session or not, whatever the outcome. Its transcript
/// adds `= tls control VERSION` and, per data connection,
/// `= tls data VERSION reused=True|False` (whether the server resumed the session).
pub fn ftplib_ftps(
    target: SocketAddr,
    tls: &ClientTls,
    reuse: SessionReuse,
    ops: &[String],
) -> Result<Attempt> {
    let mut args = vec![ftplib_script().to_string()];
    args.extend(tls.ftplib_options(reuse));
    args.extend(ftplib_args(target, ops).into_iter().skip(1));
    let out = run("python3", &args, CLIENT_TIMEOUT)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Attempt::new("python3", args, out, text))
}

/// Runs ftp_client.py with `ops` to completion; returns its transcript.
pub fn ftplib(target: SocketAddr, ops: &[String]) -> Result<String> {
    let args = ftplib_args(target, ops);
    let out = run("python3", &args, CLIENT_TIMEOUT)?;
    if !out.status.success() {
        return Err(command_error("python3", &args, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An ftp_client.py session paused at a `wait` operation: logged in and holding its
/// control connection until [`HeldClient::go`].
pub struct HeldClient {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    stderr: std::path::PathBuf,
}

impl HeldClient {
    /// Starts ftp_client.py with `ops` (which should contain `wait`) and waits up to
    /// 15 s for it to print `READY`. `stderr` is where its error output goes.
    pub fn start(target: SocketAddr, ops: &[String], stderr: &Path) -> Result<HeldClient> {
        HeldClient::spawn(ftplib_args(target, ops), stderr)
    }

    /// [`start`](Self::start) over FTPS as `tls` says (see [`ftplib_ftps`]).
    pub fn start_ftps(
        target: SocketAddr,
        tls: &ClientTls,
        reuse: SessionReuse,
        ops: &[String],
        stderr: &Path,
    ) -> Result<HeldClient> {
        let mut args = vec![ftplib_script().to_string()];
        args.extend(tls.ftplib_options(reuse));
        args.extend(ftplib_args(target, ops).into_iter().skip(1));
        HeldClient::spawn(args, stderr)
    }

    fn spawn(args: Vec<String>, stderr: &Path) -> Result<HeldClient> {
        let err = fs::File::create(stderr).map_err(E2eError::io("create client stderr file"))?;
        let mut cmd = Command::new("python3");
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut guard = ChildGuard::spawn(&mut cmd, "ftp_client.py")?;
        let stdin = guard.child_mut().stdin.take();
        let stdout = guard.child_mut().stdout.take().expect("stdout is piped");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        // The reader thread ends at EOF, which the guard guarantees by killing the child.
        thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let mut s = sink.lock().expect("transcript lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let held = HeldClient {
            guard,
            stdin,
            out,
            stderr: stderr.to_path_buf(),
        };
        wait_for(
            "ftp_client.py to log in and print READY",
            Duration::from_secs(15),
            || Ok(held.transcript().contains("READY").then_some(())),
            || {
                format!(
                    "{}{}",
                    held.transcript(),
                    fs::read_to_string(&held.stderr).unwrap_or_default()
                )
            },
        )?;
        Ok(held)
    }

    /// Waits up to `limit` until it has printed `READY` `count` times in all, i.e.
    /// reached its `count`-th `wait` operation.
    pub fn wait_ready(&self, count: usize, limit: Duration) -> Result<()> {
        wait_for(
            &format!("ftp_client.py to reach wait #{count}"),
            limit,
            || {
                Ok(
                    (self.transcript().lines().filter(|l| *l == "READY").count() >= count)
                        .then_some(()),
                )
            },
            || {
                format!(
                    "{}{}",
                    self.transcript(),
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                )
            },
        )
    }

    /// Its output so far.
    pub fn transcript(&self) -> String {
        self.out.lock().expect("transcript lock").clone()
    }

    /// Lets it continue past `wait`.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| E2eError::check("client still waiting", ""))?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .map_err(E2eError::io("write to ftp_client.py"))
    }

    /// Waits up to `limit` for it to finish; a non-zero exit is an error.
    pub fn finish(mut self, limit: Duration) -> Result<String> {
        self.stdin = None;
        let status = self.guard.wait_timeout(limit)?;
        // Give the reader thread a moment to collect the last lines.
        let _ = wait_for(
            "client output",
            Duration::from_secs(2),
            || Ok(self.transcript().contains("DONE").then_some(())),
            String::new,
        );
        let text = format!(
            "{}{}",
            self.transcript(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        match status {
            Some(s) if s.success() => Ok(self.transcript()),
            Some(s) => Err(E2eError::check(
                format!("ftp_client.py succeeds (exit {s})"),
                tail(&text, 4000),
            )),
            None => Err(E2eError::Timeout {
                what: "ftp_client.py to finish".into(),
                waited: limit,
                detail: tail(&text, 4000),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL_EPSV: &str = "< 220 hi\n> EPSV\n* Connect data stream passively\n< 229 Extended Passive mode OK (|||50123|)\n> RETR x\n";
    const CURL_FELL_BACK: &str =
        "> EPSV\n< 500 no\n> PASV\n< 227 Entering Passive Mode (127,0,0,1,195,250)\n";

    #[test]
    fn passive_ports_come_from_the_reply() {
        assert_eq!(prove_mode(CURL_EPSV, DataMode::Epsv).unwrap(), vec![50123]);
        let pasv = "< 220 hi\n> PASV\n< 227 Entering Passive Mode (127,0,0,1,195,250).\n";
        assert_eq!(
            prove_mode(pasv, DataMode::Pasv).unwrap(),
            vec![195 * 256 + 250]
        );
    }

    #[test]
    fn active_ports_come_from_the_command() {
        let port = "< 220 hi\n> PORT 127,0,0,1,4,1\n< 200 PORT command successful\n";
        assert_eq!(prove_mode(port, DataMode::Port).unwrap(), vec![1025]);
        let eprt =
            "< 220 hi\n> EPRT |2|::1|40000|\n< 200 ok\n> EPRT |1|127.0.0.1|40001|\n< 200 ok\n";
        assert_eq!(
            prove_mode(eprt, DataMode::Eprt).unwrap(),
            vec![40000, 40001]
        );
    }

    #[test]
    fn pipelined_replies_pair_with_commands_in_order() {
        // Commands sent before the banner arrived; multi-line replies; a 150 before 226.
        let t = "> USER a\n> PASS ****\n> TYPE I\n> PASV\n> RETR x\n< 220-Welcome\n< 220 hi\n\
                 < 331 pass\n< 230-ok\n< 230 ok\n< 200 TYPE\n< 227 Entering (127,0,0,1,200,7)\n\
                 < 150 go\n< 226 done\n";
        assert_eq!(prove_mode(t, DataMode::Pasv).unwrap(), vec![200 * 256 + 7]);
        // Shift the replies by one (the PASV's reply is the TYPE one): caught.
        let shifted = t.replace("< 331 pass\n", "");
        assert!(prove_mode(&shifted, DataMode::Pasv).is_err());
    }

    #[test]
    fn a_silent_fallback_is_caught() {
        assert!(prove_mode(CURL_FELL_BACK, DataMode::Epsv).is_err());
        assert!(prove_mode(CURL_FELL_BACK, DataMode::Pasv).is_err());
        let eprt_then_port =
            "> EPRT |1|127.0.0.1|40001|\n< 500 ?\n> PORT 127,0,0,1,4,1\n< 200 ok\n";
        assert!(prove_mode(eprt_then_port, DataMode::Eprt).is_err());
    }

    #[test]
    fn a_refused_or_missing_command_is_caught() {
        assert!(prove_mode(
            "> PORT 127,0,0,1,0,80\n< 501 Bad data port\n",
            DataMode::Port
        )
        .is_err());
        assert!(prove_mode("< 220 hi\n> RETR x\n< 150 ok\n", DataMode::Epsv).is_err());
    }
}
