//! How long one negotiation's rules take to commit: the nftables backend (one netlink
//! batch on a persistent socket) against spawning `nft -f -` for the same elements.
//!
//! Run as root (it creates and deletes its own network namespace, never touching the
//! root namespace's ruleset):
//!
//! ```text
//! cargo run --release -p pfctl-backend --example nft_commit_bench [iterations]
//! ```
//!
//! Prints medians and 90th percentiles in milliseconds for: add (3 elements to an
//! empty anchor), replace (destroy 3 + add 3 in one batch), remove (destroy 3).

use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftp_proxy_core::Filter;
use ftp_proxy_core::{data_rules, Anchor, Config, Mode, SessionAddrs};
use pfctl_backend::nft::NftBackend;

/// Deletes the namespace on every exit path.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn stats(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let med = ms(v[v.len() / 2]);
    let p90 = ms(v[v.len() * 9 / 10]);
    println!(
        "{name:<42} median {med:>8.3} ms   p90 {p90:>8.3} ms   (n={})",
        v.len()
    );
}

fn nft_batch(script: &str) {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    assert!(
        c.wait().expect("wait nft").success(),
        "nft failed on:\n{script}"
    );
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("nft_commit_bench must run as root (it creates a network namespace)");
        std::process::exit(2);
    }
    let ns = format!("fpxbench{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(ok.success(), "ip netns add {ns}");
    let _guard = NsGuard(ns.clone());
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on an open namespace file; this process is single-threaded here.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );

    let cfg = Config {
        pid: std::process::id(),
        ..Config::default()
    };
    let mut b = NftBackend::open(&cfg).expect("open backend");
    let table = b.table().to_string();
    let a = SessionAddrs {
        client: "203.0.113.10".parse().unwrap(),
        server: "198.51.100.10".parse().unwrap(),
        orig_server: "198.51.100.10".parse().unwrap(),
        proxy: "198.51.100.1".parse().unwrap(),
        client_rdomain: 0,
    };
    let (mut add, mut replace, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let anchor = Anchor {
            pid: cfg.pid,
            session: i as u32,
        };
        let pp = 49152 + (i % 8000) as u16;
        let r1 = data_rules(Mode::Passive, &a, 30000 + (i % 9000) as u16, pp, &cfg.rules);
        let r2 = data_rules(Mode::Passive, &a, 39500, pp + 8000, &cfg.rules);
        let t = Instant::now();
        b.commit(&anchor, &r1).expect("add");
        add.push(t.elapsed());
        let t = Instant::now();
        b.commit(&anchor, &r2).expect("replace");
        replace.push(t.elapsed());
        let t = Instant::now();
        b.commit(&anchor, &[]).expect("remove");
        remove.push(t.elapsed());
    }
    println!("nftables backend, one netlink batch on a persistent socket:");
    stats("add 3 elements (arm, rdr, nat)", &mut add);
    stats("replace (destroy 3 + add 3, one batch)", &mut replace);
    stats("remove (destroy 3)", &mut remove);

    // The same element sets through `nft -f -`, one process per batch.
    let el = |c: IpAddr, s: IpAddr, pp: u16, port: u16, np: u16| {
        (
            format!("element inet {table} arm4 {{ {c} . {s} . {pp} timeout 1d }}"),
            format!("element inet {table} rdr4 {{ {c} . {s} . {pp} timeout 1d : {s} . {port} }}"),
            format!("element inet {table} nat4 {{ {c} . {s} . {port} . {pp} timeout 1d : 198.51.100.1 . {np} }}"),
        )
    };
    let del = |c: IpAddr, s: IpAddr, pp: u16, port: u16| {
        format!(
            "delete element inet {table} arm4 {{ {c} . {s} . {pp} }}\ndelete element inet {table} rdr4 {{ {c} . {s} . {pp} }}\ndelete element inet {table} nat4 {{ {c} . {s} . {port} . {pp} }}\n"
        )
    };
    let m = n.min(60); // nft costs milliseconds per call; 60 samples suffice
    let (mut nadd, mut nrep, mut nrem) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..m {
        let pp = 49152 + i as u16;
        let port = 30000 + i as u16;
        let (x, y, z) = el(a.client, a.server, pp, port, 50001 + i as u16);
        let t = Instant::now();
        nft_batch(&format!("add {x}\nadd {y}\nadd {z}\n"));
        nadd.push(t.elapsed());
        let (x2, y2, z2) = el(a.client, a.server, pp + 8000, 39500, 60001 + i as u16);
        let t = Instant::now();
        nft_batch(&format!(
            "{}add {x2}\nadd {y2}\nadd {z2}\n",
            del(a.client, a.server, pp, port)
        ));
        nrep.push(t.elapsed());
        let t = Instant::now();
        nft_batch(&del(a.client, a.server, pp + 8000, 39500));
        nrem.push(t.elapsed());
    }
    println!("`nft -f -`, one process per batch (same elements):");
    stats("add 3 elements", &mut nadd);
    stats("replace (delete 3 + add 3)", &mut nrep);
    stats("remove (delete 3)", &mut nrem);
    b.remove_all().expect("remove_all");
}
