//! Many uploads in one session to a server that never closes its side of an
//! upload's data connection: rclone's `serve ftp` (rclone's issue 9215).
//!
//! The relay lets a session have two data connections in progress
//! (`--relay-per-session`) and keeps a half-closed one for 15 s (`--relay-linger`).
//! While it judged an upload over only by both ends of file, every upload to rclone
//! stayed counted and the third within 15 s was reset: `lftp mirror -R` of a tree
//! of small files failed in PASV, EPSV and PORT through the proxy, and passed
//! directly. The proxy now learns from the relayed 226 that the transfer is over.
//! Here lftp mirrors 100 files in each mode through the real binary, with its
//! default limits.

use std::fs;
use std::path::Path;

use ftp_proxy_tests::e2e::*;

/// Files in the tree: far more than two per 15 s.
const FILES: usize = 100;

/// Deterministic contents of file `i`, 1 to 4 KiB.
fn contents(i: usize) -> Vec<u8> {
    let mut x = (i as u32).wrapping_mul(2654435761) | 1;
    (0..1024 + (i * 37) % 3072)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn write_tree(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(E2eError::io("mkdir tree"))?;
    for i in 0..FILES {
        let path = dir.join(format!("f{i:03}.bin"));
        fs::write(&path, contents(i)).map_err(E2eError::io(format!("write {}", path.display())))?;
    }
    Ok(())
}

fn check_tree(dir: &Path, log: &str) -> Result<()> {
    for i in 0..FILES {
        let path = dir.join(format!("f{i:03}.bin"));
        let got = fs::read(&path).unwrap_or_default();
        if got != contents(i) {
            return Err(E2eError::check(
                format!("{} arrived whole at rclone", path.display()),
                format!(
                    "{} bytes of {}; lftp: {}",
                    got.len(),
                    contents(i).len(),
                    tail(log, 2000)
                ),
            ));
        }
    }
    Ok(())
}

#[test]
fn lftp_mirror_uploads_to_rclone_in_pasv_epsv_and_port() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let work = Workdir::new("rclone-mirror")?;
    let ip = loopback(false);
    let server = RcloneServer::start(&work, ip)?;
    let direct = std::env::var_os(DIRECT_ENV).is_some();
    let proxy = if direct {
        None
    } else {
        Some(ProxyProcess::start(
            ip,
            server.addr(),
            &[],
            &work.root().join("ftp-proxy.log"),
        )?)
    };
    let target = proxy.as_ref().map_or(server.addr(), ProxyProcess::addr);
    let tree = work.local().join("tree");
    write_tree(&tree)?;
    for (mode, setting) in [
        (DataMode::Pasv, "set ftp:prefer-epsv no"),
        (DataMode::Epsv, "set ftp:prefer-epsv yes"),
        (DataMode::Port, "set ftp:passive-mode off"),
    ] {
        let remote = format!("up-{}", mode.script_name());
        let log = lftp(
            target,
            Login::User,
            &[setting],
            &[format!("mirror -R {} {remote}", tree.display())],
        )
        .map_err(|e| match &proxy {
            Some(p) => E2eError::check(
                format!("lftp mirror -R in {} through the proxy", mode.command()),
                format!("{e}\n--- proxy log ---\n{}", tail(&p.log(), 3000)),
            ),
            None => e,
        })?;
        let uses = prove_mode(&log, mode)?;
        if uses.len() < FILES {
            return Err(E2eError::check(
                format!("{FILES} data connections in {}", mode.command()),
                format!("{} seen; {}", uses.len(), tail(&log, 2000)),
            ));
        }
        check_tree(&server.root().join(&remote), &log)?;
    }
    if let Some(p) = &proxy {
        let log = p.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("data connection") && l.contains("refused"))
        {
            return Err(E2eError::check(
                "no data connection refused",
                format!("{l}\n{}", tail(&log, 2000)),
            ));
        }
    }
    Ok(())
}
