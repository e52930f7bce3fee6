//! The startup API: listener options and errors, the descriptor limit, the CSPRNG.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use ftp_proxy_core::RandomSource;
use ftp_proxy_runtime::{
    listen, nofile_needed, raise_nofile_limit, Divert, Options, OsRandom, StartError,
};
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};

fn opts(addr: &str, transparent: bool) -> Options {
    Options {
        listen: addr.parse().unwrap(),
        transparent,
        divert: Divert::Getsockname,
        max_sessions: 10,
        relay: false,
    }
}

#[test]
fn listener_is_nonblocking_reuseaddr_and_reports_its_port() {
    use std::os::fd::AsFd;
    let l = listen(&opts("127.0.0.1:0", false)).unwrap();
    let addr = l.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    assert!(getsockopt(&l.as_fd(), sockopt::ReuseAddr).unwrap());
    assert!(getsockopt(&l.as_fd(), sockopt::AcceptConn).unwrap());
    let flags = nix::fcntl::fcntl(l.as_fd().as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert!(nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK));
    let l6 = listen(&opts("[::1]:0", false)).unwrap();
    assert!(l6.local_addr().unwrap().is_ipv6());
    // IPv6 listeners serve IPv6 only, as on OpenBSD.
    assert!(getsockopt(&l6.as_fd(), sockopt::Ipv6V6Only).unwrap());
}

/// A burst of clients as large as the session limit fits in the accept queue: `ss`
/// shows a listening socket's backlog in its Send-Q column.
#[test]
fn listen_backlog_holds_a_burst_of_500() {
    let l = listen(&opts("127.0.0.1:0", false)).unwrap();
    let port = l.local_addr().unwrap().port();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlog: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Send-Q in {text:?}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map_or(4096, |v| v.trim().parse().unwrap_or(4096));
    assert!(
        backlog >= 500.min(somaxconn),
        "listen backlog {backlog}: a burst of 500 clients would overflow it"
    );
}

#[test]
fn address_in_use_gives_the_originals_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let err = listen(&opts(&addr.to_string(), false)).unwrap_err();
    assert_eq!(err, StartError::Bind(Errno::EADDRINUSE));
    assert_eq!(
        err.to_string(),
        format!("bind failed: {}", Errno::EADDRINUSE.desc())
    );
}

#[test]
fn foreign_address_cannot_be_bound() {
    let err = listen(&opts("203.0.113.9:0", false)).unwrap_err();
    assert_eq!(err, StartError::Bind(Errno::EADDRNOTAVAIL));
    assert!(err.to_string().starts_with("bind failed: "));
}

#[test]
fn transparent_listener_has_the_option_set() {
    if !nix::unistd::geteuid().is_root() {
        // Without CAP_NET_ADMIN the option is refused, with its own message.
        let err = listen(&opts("127.0.0.1:0", true)).unwrap_err();
        assert!(matches!(err, StartError::Transparent(_)), "{err:?}");
        return;
    }
    use std::os::fd::AsFd;
    let l = listen(&opts("127.0.0.1:0", true)).unwrap();
    assert!(getsockopt(&l.as_fd(), sockopt::IpTransparent).unwrap());
    listen(&opts("[::1]:0", true)).expect("IPV6_TRANSPARENT listener");
}

#[test]
fn nofile_is_never_lowered() {
    use nix::sys::resource::{getrlimit, Resource};
    let before = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        before.0 >= nofile_needed(1, false),
        "test needs a soft limit of at least 12"
    );
    raise_nofile_limit(1, false).unwrap();
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), before);
    assert_eq!(nofile_needed(100, false), 210, "the original's 2*m+10");
    assert_eq!(nofile_needed(100, true), 910);
}

#[test]
fn os_random_is_uniform_enough_and_in_range() {
    let mut r = OsRandom::new();
    let mut counts = [0u32; 8];
    for _ in 0..8000 {
        let v = r.uniform(8);
        counts[v as usize] += 1;
    }
    // Each bucket expects 1000; 700 is more than 9 standard deviations away.
    assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    let port = r.uniform(65535 - 49152);
    assert!(port < 65535 - 49152);
}
