//! Against the running OpenBSD kernel (compiled only there). They need root and an
//! enabled pf; run as root they fail if pf is unusable, as non-root they say why they
//! did not run. They use anchors `ftp-proxy/<test pid>.9000xx` and remove them on
//! every exit path.
//!
//! Not yet run on a real OpenBSD host: written from the transaction checks of
//! pf_ioctl.c (`pfioctl`, DIOCXBEGIN/DIOCADDRULE/DIOCXCOMMIT) and pfctl's rule printing, type-checked on Linux.

use std::process::Command;

use super::*;
use ftp_proxy_core::data_rules;
use ftp_proxy_core::{Mode, RuleOptions, SessionAddrs};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Removes everything the backend installed, even when an assertion failed.
struct Cleanup(PfBackend<DevPf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.remove_all();
    }
}

fn pfctl_rules(anchor: &str) -> String {
    let out = Command::new("pfctl")
        .args(["-a", anchor, "-sr"])
        .output()
        .expect("run pfctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn addrs() -> SessionAddrs {
    SessionAddrs {
        client: "203.0.113.5".parse().unwrap(),
        server: "198.51.100.10".parse().unwrap(),
        orig_server: "198.51.100.10".parse().unwrap(),
        proxy: "198.51.100.1".parse().unwrap(),
        client_rdomain: 0,
    }
}

#[test]
fn commit_replace_and_remove_on_the_kernel() {
    if !is_root() {
        eprintln!("not root: the pf kernel tests did not run");
        return;
    }
    let pf = PfBackend::open_auto().expect("pf must be enabled (pfctl -e) for this test");
    let mut pf = Cleanup(pf);
    let anchor = Anchor {
        pid: std::process::id(),
        session: 900_001,
    };
    let path = anchor.to_string();

    let rules = data_rules(
        Mode::Passive,
        &addrs(),
        5001,
        55000,
        &RuleOptions::default(),
    );
    pf.0.commit(&anchor, &rules).expect("commit");
    let shown = pfctl_rules(&path);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "pfctl shows:\n{shown}");
    for (line, parts) in lines.iter().zip([
        &[
            "pass in quick",
            "inet proto tcp from 203.0.113.5 to 198.51.100.10 port = 55000",
            "flags S/SA",
            "max 1",
            "rdr-to 198.51.100.10 port 5001",
        ][..],
        &[
            "pass out quick",
            "inet proto tcp from 203.0.113.5 to 198.51.100.10 port = 5001",
            "flags S/SA",
            "max 1",
            "nat-to 198.51.100.1 port 50001:65535",
        ][..],
    ]) {
        for p in parts {
            assert!(line.contains(p), "'{p}' missing from '{line}'");
        }
    }

    // The next negotiation replaces both rules in one transaction.
    let o = RuleOptions {
        rfc_mode: true,
        ..RuleOptions::default()
    };
    let rules = data_rules(Mode::ActivePort, &addrs(), 6001, 56000, &o);
    pf.0.commit(&anchor, &rules).expect("second commit");
    let shown = pfctl_rules(&path);
    assert_eq!(shown.lines().count(), 2, "pfctl shows:\n{shown}");
    assert!(
        shown.contains("port = 56000") && shown.contains("nat-to 198.51.100.10 port 20"),
        "{shown}"
    );
    assert!(!shown.contains("55000"), "old rules gone: {shown}");

    pf.0.commit(&anchor, &[]).expect("removal");
    assert_eq!(pfctl_rules(&path).trim(), "", "anchor emptied");
}

/// A second DIOCXBEGIN on the same anchor invalidates the first ticket: its commit
/// gets EBUSY (pf_ioctl.c's ticket check), and the second transaction still commits.
#[test]
fn stale_ticket_commit_is_ebusy() {
    if !is_root() {
        eprintln!("not root: the pf kernel tests did not run");
        return;
    }
    let mut dev = DevPf::open().expect("open /dev/pf");
    let name = Anchor {
        pid: std::process::id(),
        session: 900_002,
    }
    .to_string();
    let mut t1 = Transaction::new(&name).unwrap();
    let mut t2 = Transaction::new(&name).unwrap();
    dev.xbegin(&mut t1).expect("begin 1");
    dev.xbegin(&mut t2).expect("begin 2");
    assert_ne!(t1.ticket(), t2.ticket());
    let stale = dev.xcommit(&mut t1);
    let fresh = dev.xcommit(&mut t2);
    let _ = dev.xrollback(&mut t1);
    assert_eq!(stale, Err(Errno(libc::EBUSY)));
    assert_eq!(fresh, Ok(()));
}

/// The probe and the real DIOCADDRULE agree: the layout open_auto picked adds rules.
#[test]
fn probed_layout_adds_ipv6_rules() {
    if !is_root() {
        eprintln!("not root: the pf kernel tests did not run");
        return;
    }
    let mut pf = Cleanup(PfBackend::open_auto().expect("pf must be enabled"));
    let anchor = Anchor {
        pid: std::process::id(),
        session: 900_003,
    };
    let a = SessionAddrs {
        client: "2001:db8::5".parse().unwrap(),
        server: "2001:db8:1::10".parse().unwrap(),
        orig_server: "2001:db8:1::10".parse().unwrap(),
        proxy: "2001:db8:1::1".parse().unwrap(),
        client_rdomain: 0,
    };
    let rules = data_rules(Mode::Passive, &a, 5001, 55000, &RuleOptions::default());
    pf.0.commit(&anchor, &rules).expect("commit");
    let shown = pfctl_rules(&anchor.to_string());
    assert!(
        shown.contains("inet6 proto tcp from 2001:db8::5 to 2001:db8:1::10 port = 55000"),
        "{shown}"
    );
    pf.0.commit(&anchor, &[]).expect("removal");
}
