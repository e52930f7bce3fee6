//! 1 GiB through the router: the proxy's kernel data path (nftables DNAT/SNAT from the
//! backend's map elements) against plain forwarding with no proxy and no NAT.
//!
//! A benchmark, not a test: ignored by default. Run it as root on an idle machine:
//!
//! ```text
//! cargo test --release -p ftp-proxy-tests --test netns_bench -- --ignored --nocapture
//! ```
//!
//! `FTP_BENCH_RUNS=n` (default 5) sets the number of runs of each kind; runs alternate
//! (plain, proxy, plain, ...) so that a burst of load from elsewhere hits both. Each
//! run is a passive-mode upload (`curl --disable-epsv -T`) of a 1 GiB file from
//! /dev/shm to pure-ftpd writing into /dev/shm, timed around the whole curl process
//! (login included, a few ms).

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use ftp_proxy_tests::netns::{self, admin_ruleset, check, AdminAccept, Lab, Result};

const GIB: usize = 1 << 30;

fn upload(lab: &Lab, name: &str) -> Result<Duration> {
    let src = lab.local.join("gib.bin");
    let dst = format!("ftp://198.51.100.10/{name}");
    let t = Instant::now();
    let log = lab.curl(&["--disable-epsv", "-T", src.to_str().expect("utf-8"), &dst])?;
    let took = t.elapsed();
    let len = std::fs::metadata(lab.home.join(name))
        .map_err(netns::io_err("uploaded file"))?
        .len();
    if len != GIB as u64 {
        return Err(check(
            format!("{name}: {GIB} bytes stored"),
            format!("{len} bytes\n{}", netns::tail(&log, 2000)),
        ));
    }
    Ok(took)
}

fn summary(name: &str, v: &mut [Duration]) -> String {
    v.sort();
    let med = v[v.len() / 2].as_secs_f64();
    format!(
        "{name:<44} median {med:.3} s ({:.0} MiB/s), min {:.3} s, max {:.3} s, n={}",
        1024.0 / med,
        v[0].as_secs_f64(),
        v[v.len() - 1].as_secs_f64(),
        v.len()
    )
}

#[test]
#[ignore = "benchmark: 1 GiB transfers; run as root with --ignored --nocapture on an idle machine"]
fn one_gib_upload_kernel_nat_vs_plain_forwarding() -> Result<()> {
    if !netns::is_root("one_gib_upload_kernel_nat_vs_plain_forwarding") {
        return Ok(());
    }
    let runs: usize = std::env::var("FTP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut lab = Lab::new("bn", AdminAccept::CtStatusDnat)?;
    netns::write_test_file(&lab.local.join("gib.bin"), GIB, 0x5eed_0005)?;
    let p = lab.start_proxy(&["-b", "0.0.0.0"], 8021)?;
    let (mut plain, mut proxied) = (Vec::new(), Vec::new());
    for i in 0..runs {
        lab.topo.nft_script(&admin_ruleset(AdminAccept::Open))?;
        let name = format!("plain-{i}.bin");
        plain.push(upload(&lab, &name)?);
        // Plain means plain: nothing reached the router's own sockets (no proxy).
        let (_, local) = lab.counter("local_in")?;
        if local != 0 {
            return Err(check(
                "no bytes to the router's sockets without the divert",
                format!("{local} bytes"),
            ));
        }
        let _ = std::fs::remove_file(lab.home.join(&name));

        lab.topo
            .nft_script(&admin_ruleset(AdminAccept::CtStatusDnat))?;
        let name = format!("proxy-{i}.bin");
        proxied.push(upload(&lab, &name)?);
        // Every byte went through the forward path; the proxy's sockets saw only the
        // control connection.
        let (_, fwd) = lab.counter("forwarded")?;
        let (_, local) = lab.counter("local_in")?;
        if fwd < GIB as u64 || local == 0 || local > 1 << 20 {
            return Err(check(
                "1 GiB forwarded, the control connection (only) through the proxy",
                format!("forwarded {fwd}, local {local}"),
            ));
        }
        if i + 1 == runs {
            lab.same_file(&lab.local.join("gib.bin"), &lab.home.join(&name))?;
        }
        let _ = std::fs::remove_file(lab.home.join(&name));
        lab.expect_no_elements(&p, "an upload")?;
    }
    println!("1 GiB PASV upload, client -> router -> pure-ftpd, /dev/shm to /dev/shm:");
    println!(
        "{}",
        summary("plain forwarding (no proxy, no NAT)", &mut plain)
    );
    println!(
        "{}",
        summary("ftp-proxy --backend nftables (kernel NAT)", &mut proxied)
    );
    lab.stop_proxy(&p)
}
