//! `--tls-cert`/`--tls-key` replaced on SIGUSR1 through the real daemon, started
//! as root: it chroots to /var/empty and drops privileges, so every reload reads
//! the pair through the directories opened before the chroot, as the
//! unprivileged user. The files live in a directory of their own; a new pair is
//! put in place as editors and certificate tools do, written beside the old one
//! and renamed over it.
//!
//! What a client sees is checked from outside: a Python client sends `AUTH TLS`
//! (or, with `--tls-implicit`, handshakes at once and reads the `220` over TLS)
//! and compares the SHA-256 of the certificate the proxy shows
//! (`getpeercert(binary_form=True)`) with the DER of the files; curl verifies it
//! against each test CA. A session held open across the reload (Python's
//! ftplib, `--tls-data-reuse require`, data connections resuming the control
//! session) must still transfer afterwards with its old certificate.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ftp_proxy_tests::e2e::*;

const RELOADED: &str = "reloaded (key";
const KEPT: &str = "; keeping the previous certificate";

/// Prints `peer HEX` for the certificate the proxy shows, then `file HEX` for
/// the first certificate of each file given. Its third argument is `explicit`
/// (the certificate shown after `AUTH TLS`) or `implicit` (the handshake from
/// the first byte; the `220` must then come over TLS).
const FINGERPRINT: &str = r#"
import hashlib, socket, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode not in ("explicit", "implicit"):
    raise SystemExit("mode %r" % mode)
s = socket.create_connection((host, port), timeout=20)
def reply(f):
    for _ in range(50):
        line = f.readline()
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
            return line
    raise SystemExit("no final reply")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode == "explicit":
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"AUTH TLS\r\n")
    r = reply(f)
    if not r.startswith(b"234"):
        raise SystemExit("AUTH TLS refused: %r" % r)
    t = ctx.wrap_socket(s, server_hostname="localhost")
else:
    t = ctx.wrap_socket(s, server_hostname="localhost")
    r = reply(t.makefile("rb"))
    if not r.startswith(b"220"):
        raise SystemExit("no 220 over implicit TLS: %r" % r)
print("peer", hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())
for path in sys.argv[4:]:
    pem = open(path).read()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"):end] + "\n"
    print("file", hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest())
t.close()
"#;

struct World {
    fx: Fixture,
    /// `--tls-implicit`: clients handshake at once, no `AUTH TLS`.
    implicit: bool,
    /// The proxy's certificate and key (the paths it was started with).
    live: CertPair,
    /// What it was started with, kept aside.
    old: CertPair,
    /// Clients verify the old certificate against this.
    old_ca: PathBuf,
    /// The replacement, from another CA.
    new: CertPair,
    new_ca: PathBuf,
}

fn check(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::check(what, detail))
    }
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(E2eError::io(format!("copy to {}", to.display())))
}

/// Puts `body` at `path` as editors do: a new file renamed over the old one,
/// with `mode`.
fn replace(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, body).map_err(E2eError::io("write the new file"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(E2eError::io("chmod the new file"))?;
    std::fs::rename(&tmp, path).map_err(E2eError::io("rename the new file"))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(E2eError::io(format!("read {}", path.display())))
}

/// The daemon with the old pair in place, with `--tls-implicit` if `implicit`.
fn start(tag: &str, implicit: bool) -> Result<Option<World>> {
    let mut made = None;
    let fx = Fixture::start_made(
        tag,
        false,
        |work| {
            let old_pki = Pki::create(&work.root().join("pki-old"))?;
            let new_pki = Pki::create(&work.root().join("pki-new"))?;
            // A directory of its own, as a deployment would have (/etc/ftp-proxy/).
            let dir = work.root().join("tls.d");
            std::fs::create_dir(&dir).map_err(E2eError::io("mkdir tls.d"))?;
            let live = CertPair {
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
            };
            copy(&old_pki.server().cert, &live.cert)?;
            copy(&old_pki.server().key, &live.key)?;
            // openssl writes keys for root only; a reload runs as the
            // unprivileged user, which must be able to read the pair.
            std::fs::set_permissions(&live.key, std::fs::Permissions::from_mode(0o644))
                .map_err(E2eError::io("chmod the key"))?;
            let mut args = vec![
                "--tls-cert".to_string(),
                live.cert.display().to_string(),
                "--tls-key".into(),
                live.key.display().to_string(),
                "--tls-data-reuse".into(),
                "require".into(),
            ];
            if implicit {
                args.push("--tls-implicit".into());
            }
            made = Some((live, old_pki, new_pki));
            Ok(args)
        },
        |_| Ok(Vec::new()),
    )?;
    let Some(fx) = fx else {
        return Ok(None);
    };
    let (live, old_pki, new_pki) = made.expect("made with the proxy's options");
    Ok(Some(World {
        fx,
        implicit,
        live,
        old: old_pki.server(),
        old_ca: old_pki.ca(),
        new: new_pki.server(),
        new_ca: new_pki.ca(),
    }))
}

impl World {
    /// SIGUSR1, then waits for the `n`th line containing `needle`.
    fn reload(&mut self, needle: &str, n: usize) -> Result<()> {
        self.fx.proxy_mut()?.signal(libc::SIGUSR1)?;
        for _ in 0..100 {
            if self.fx.proxy_log().matches(needle).count() >= n {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(E2eError::check(
            format!("reload number {n} logged `{needle}`"),
            tail(&self.fx.proxy_log(), 3000),
        ))
    }

    /// Whether a new session is shown the certificate of `pair`.
    fn shows(&self, pair: &CertPair) -> Result<bool> {
        let target = self.fx.target();
        let out = run(
            "python3",
            &[
                "-c".to_string(),
                FINGERPRINT.into(),
                target.ip().to_string(),
                target.port().to_string(),
                if self.implicit {
                    "implicit"
                } else {
                    "explicit"
                }
                .to_string(),
                pair.cert.display().to_string(),
            ],
            30,
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hex = |tag: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(tag))
                .map(str::to_string)
        };
        match (hex("peer "), hex("file ")) {
            (Some(peer), Some(file)) => Ok(peer == file),
            _ => Err(E2eError::check(
                "the fingerprint client got a certificate",
                format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            )),
        }
    }

    /// How a client verifying against `ca` speaks FTPS to this daemon.
    fn client_tls(&self, ca: &Path) -> ClientTls {
        if self.implicit {
            ClientTls::implicit(ca)
        } else {
            ClientTls::explicit(ca)
        }
    }

    /// curl downloads BIG over FTPS (EPSV, PROT P; `ftps://` when implicit)
    /// verifying against `ca`.
    fn curl_with(&self, ca: &Path, name: &str) -> Result<Attempt> {
        let got = self.fx.work.local().join(name);
        let tls = self.client_tls(ca);
        let a = curl_ftps_retr(
            self.fx.target(),
            Login::User,
            DataMode::Epsv,
            &tls,
            BIG,
            &got,
        )?;
        if a.succeeded() {
            assert_same_file(&self.fx.work.original(BIG), &got)?;
        }
        Ok(a)
    }
}

/// A session logged in and protected before the reload keeps its certificate
/// and its TLS session cache: after the pair is replaced by rename, its PROT P
/// download (EPSV, resuming the control session, which `--tls-data-reuse
/// require` insists on) succeeds; a new session is shown the new certificate and
/// downloads verifying it against the new CA, and no longer against the old one.
#[test]
fn a_reload_serves_the_new_certificate_to_new_sessions_only() -> Result<()> {
    new_certificate_for_new_sessions_only("ftps-reload-new", false)
}

/// The same with `--tls-implicit`: the certificate shown by the handshake a
/// client starts at once (no `AUTH TLS`) changes on SIGUSR1 for new sessions,
/// and a session opened before keeps working (its download after the reload,
/// resuming its control session).
#[test]
fn an_implicit_listener_reloads_for_new_sessions_only() -> Result<()> {
    new_certificate_for_new_sessions_only("ftps-reload-implicit", true)
}

/// The body of the two tests above, explicit or `implicit` FTPS.
fn new_certificate_for_new_sessions_only(tag: &str, implicit: bool) -> Result<()> {
    let Some(mut w) = start(tag, implicit)? else {
        return Ok(());
    };
    check(
        w.shows(&w.old)? && !w.shows(&w.new)?,
        "before the reload the old certificate is shown",
        "",
    )?;
    let held_got = w.fx.work.local().join("held.bin");
    let mut held = HeldClient::start_ftps(
        w.fx.target(),
        &w.client_tls(&w.old_ca),
        SessionReuse::Resume,
        &[
            format!("login:{USER}:{PASSWORD}"),
            "prot:P".into(),
            "wait".into(),
            format!("epsv:retr:{BIG}:{}", held_got.display()),
            "quit".into(),
        ],
        &w.fx.work.root().join("held.stderr"),
    )?;

    // The key first, then the certificate: between the two the pair does not
    // match, and no reload is asked for until both are in place.
    replace(&w.live.key, &read(&w.new.key)?, 0o644)?;
    replace(&w.live.cert, &read(&w.new.cert)?, 0o644)?;
    w.reload(RELOADED, 1)?;

    check(
        w.shows(&w.new)?,
        "a session after the reload is shown the new certificate",
        tail(&w.fx.proxy_log(), 2000),
    )?;
    let fresh = w.curl_with(&w.new_ca, "new.bin")?;
    check(
        fresh.succeeded(),
        "a new session downloads verifying the new CA",
        tail(fresh.output(), 3000),
    )?;
    let stale = w.curl_with(&w.old_ca, "stale.bin")?;
    check(
        !stale.succeeded(),
        "the old CA no longer verifies a new session",
        tail(stale.output(), 3000),
    )?;

    held.go()?;
    let log = held.finish(Duration::from_secs(60))?;
    assert_same_file(&w.fx.work.original(BIG), &held_got)?;
    check(
        log.contains("reused=True") && !log.contains("reused=False"),
        "the held session's data connection resumed its control session",
        log,
    )?;
    Ok(())
}

/// Replacements that cannot be used leave the certificate in force, each with a
/// log line naming the file: a certificate file of garbage, a key that is not
/// the certificate's, and a key readable by root only (the reload runs as the
/// unprivileged user). New sessions meanwhile still get the old certificate;
/// once a good pair is in place the same directory serves it.
#[test]
fn a_broken_pair_keeps_the_previous_certificate() -> Result<()> {
    let Some(mut w) = start("ftps-reload-broken", false)? else {
        return Ok(());
    };
    let cert = w.live.cert.display().to_string();
    let key = w.live.key.display().to_string();

    // Garbage in the certificate file.
    replace(
        &w.live.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        0o644,
    )?;
    w.reload(KEPT, 1)?;
    let log = w.fx.proxy_log();
    check(
        log.lines().any(|l| l.contains(&cert) && l.contains(KEPT)),
        "the refused certificate file is named",
        tail(&log, 2000),
    )?;
    check(w.shows(&w.old)?, "garbage keeps the old certificate", "")?;

    // The new certificate with the old key.
    replace(&w.live.cert, &read(&w.new.cert)?, 0o644)?;
    w.reload(KEPT, 2)?;
    let log = w.fx.proxy_log();
    check(
        log.lines()
            .filter(|l| l.contains(KEPT))
            .nth(1)
            .is_some_and(|l| l.contains(&cert) && l.contains(&key)),
        "a key that does not match is refused, naming both files",
        tail(&log, 2000),
    )?;
    check(
        w.shows(&w.old)?,
        "a mismatched key keeps the old certificate",
        "",
    )?;

    // The matching key, but readable by root only (as openssl writes it).
    replace(&w.live.key, &read(&w.new.key)?, 0o600)?;
    w.reload(KEPT, 3)?;
    let log = w.fx.proxy_log();
    check(
        log.lines()
            .filter(|l| l.contains(KEPT))
            .nth(2)
            .is_some_and(|l| l.contains(&key) && l.contains("ermission denied")),
        "a key the unprivileged user cannot read is refused, naming it",
        tail(&log, 2000),
    )?;
    check(
        w.shows(&w.old)?,
        "an unreadable key keeps the old certificate",
        "",
    )?;
    let old = w.curl_with(&w.old_ca, "old.bin")?;
    check(
        old.succeeded(),
        "after three refused reloads sessions still work with the old certificate",
        tail(old.output(), 3000),
    )?;

    check(
        !log.contains("not running as root"),
        "the daemon ran as root (chroot, unprivileged reloads)",
        tail(&log, 2000),
    )?;

    // Readable: the reload takes it.
    std::fs::set_permissions(&w.live.key, std::fs::Permissions::from_mode(0o644))
        .map_err(E2eError::io("chmod the key"))?;
    w.reload(RELOADED, 1)?;
    check(
        w.shows(&w.new)?,
        "the good pair is served after the refused ones",
        tail(&w.fx.proxy_log(), 2000),
    )?;
    Ok(())
}
