//! `--nat64-prefix` end to end: an IPv6-only client namespace reaches an IPv4-only
//! server namespace through a router that runs the proxy with the relay backend.
//!
//! The client connects to `[64:ff9b::c633:6402]:21` (198.51.100.2 embedded, RFC
//! 6052). The router claims the NAT64 prefix as local (`ip -6 route add local
//! 64:ff9b::/96 dev lo`, with `net.ipv6.ip_nonlocal_bind=1` so that the relay can
//! listen on, and connect from, the address the client reached), and the admin's
//! nftables rule redirects TCP to the prefix's port 21 to the proxy's listener
//! (docs/linux.md, "NAT64"). pure-ftpd, curl and lftp, EPSV and EPRT, downloads
//! and uploads compared byte for byte; the proxy's `-D7` log shows what the server
//! was sent. A destination outside the prefix is not translated.
//!
//! Root only: as root every component must be present or the test fails; otherwise
//! it prints why it did not run. Nothing touches the root namespace.

#![cfg(target_os = "linux")]

use std::process::Command;
use std::time::Duration;

use ftp_proxy_tests::netns::{
    self, check, run, run_ok, AdminAccept, AdminDivert, Lab, Ns, Result, BIG_LEN, FTP_PASSWORD,
    FTP_USER,
};

/// The client's only address.
const CLIENT: &str = "2001:db8:1::2";
/// The server's only address.
const SERVER: &str = "198.51.100.2";
/// `SERVER` inside the well-known prefix.
const URL: &str = "ftp://[64:ff9b::c633:6402]";
/// A destination outside the prefix, routed nowhere by the router.
const OUTSIDE: &str = "2001:db8:5::2";

/// The admin's table: the divert of the prefix's port 21 (and of the outside
/// destination's, to show it is served untranslated) to the proxy on 8021, by
/// `redirect` (the proxy reads SO_ORIGINAL_DST) or `tproxy` (a transparent
/// listener; the prefix is local already, the outside destination needs the
/// policy routing [`nat64_addresses`] adds for it).
fn admin(divert: AdminDivert) -> String {
    let (hook, action) = match divert {
        AdminDivert::Redirect => (
            "type nat hook prerouting priority dstnat - 20",
            "redirect to :8021",
        ),
        AdminDivert::Tproxy => (
            "type filter hook prerouting priority mangle",
            "tproxy ip6 to :8021 meta mark set 0x1 accept",
        ),
    };
    format!(
        "table inet admin
delete table inet admin
table inet admin {{
\tchain divert {{
\t\t{hook}; policy accept;
\t\tiifname \"r0\" ip6 daddr 64:ff9b::/96 tcp dport 21 {action}
\t\tiifname \"r0\" ip6 daddr 2001:db8:5::/64 tcp dport 21 {action}
\t}}
}}
"
    )
}

/// Makes the client IPv6-only (2001:db8:1::2) and the server IPv4-only
/// (198.51.100.2), and lets the router own the NAT64 prefix.
fn nat64_addresses(lab: &Lab, divert: AdminDivert) -> Result<()> {
    let lim = Duration::from_secs(10);
    let (c, r, s) = (
        lab.topo.name(Ns::Client),
        lab.topo.name(Ns::Router),
        lab.topo.name(Ns::Server),
    );
    let steps: [&[&str]; 9] = [
        &["-n", &c, "addr", "flush", "dev", "c0", "scope", "global"],
        &[
            "-n",
            &c,
            "-6",
            "addr",
            "add",
            "2001:db8:1::2/64",
            "dev",
            "c0",
            "nodad",
        ],
        &[
            "-n",
            &c,
            "-6",
            "route",
            "replace",
            "default",
            "via",
            netns::ROUTER_C6,
        ],
        &["-n", &s, "addr", "flush", "dev", "s0", "scope", "global"],
        &["-n", &s, "addr", "add", "198.51.100.2/24", "dev", "s0"],
        &[
            "-n",
            &s,
            "route",
            "replace",
            "default",
            "via",
            netns::ROUTER_S4,
        ],
        &[
            "-n",
            &r,
            "-6",
            "route",
            "add",
            "local",
            "64:ff9b::/96",
            "dev",
            "lo",
        ],
        &[
            "-n",
            &r,
            "-6",
            "route",
            "add",
            "unreachable",
            "2001:db8:5::/64",
        ],
        &["-n", &r, "-6", "addr", "show", "dev", "r0"],
    ];
    for args in steps {
        run_ok(Command::new("ip").args(args), lim)?;
    }
    if divert == AdminDivert::Tproxy {
        // Marked packets are delivered locally (docs/linux.md): what the prefix's
        // local route does for its own addresses, for any other destination.
        let policy: [&[&str]; 2] = [
            &[
                "-n", &r, "-6", "rule", "add", "fwmark", "0x1", "lookup", "100",
            ],
            &[
                "-n", &r, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100",
            ],
        ];
        for args in policy {
            run_ok(Command::new("ip").args(args), lim)?;
        }
    }
    lab.topo.exec(
        Ns::Router,
        "sysctl",
        &["-q", "-w", "net.ipv6.ip_nonlocal_bind=1"],
        lim,
    )?;
    lab.topo.nft_script(&admin(divert))?;
    // The client has no IPv4 address and the server no IPv6 one.
    let caddrs = lab
        .topo
        .exec(Ns::Client, "ip", &["addr", "show", "dev", "c0"], lim)?;
    let saddrs = lab
        .topo
        .exec(Ns::Server, "ip", &["addr", "show", "dev", "s0"], lim)?;
    if caddrs.contains("inet ") || saddrs.contains("inet6 2001") || !saddrs.contains(SERVER) {
        return Err(check(
            "an IPv6-only client and an IPv4-only server",
            format!("{caddrs}\n{saddrs}"),
        ));
    }
    Ok(())
}

/// Starts the proxy with the relay backend and `--nat64-prefix`, returns its pid.
fn start_proxy(lab: &mut Lab, divert: AdminDivert, log: &std::path::Path) -> Result<u32> {
    let bin = netns::proxy_binary()?;
    let mut cmd = lab.topo.cmd(Ns::Router, bin.to_str().expect("utf-8 path"));
    cmd.args(["-d", "-D7", "--backend", "relay", "--user", "nobody"])
        .args(["-6", "-b", "::", "-p", "8021"])
        .args(match divert {
            AdminDivert::Redirect => ["--divert", "redirect"],
            AdminDivert::Tproxy => ["--divert", "tproxy"],
        })
        .args(["--nat64-prefix", "64:ff9b::/96"]);
    let pid = lab.topo.spawn("ftp-proxy", cmd, log)?;
    let router = lab.topo.name(Ns::Router);
    let ready = netns::poll(Duration::from_secs(10), || {
        let ss = run(
            Command::new("ip").args([
                "netns", "exec", &router, "ss", "-Hltn", "sport", "=", ":8021",
            ]),
            Duration::from_secs(5),
        )
        .ok()?;
        (!ss.stdout.is_empty()).then_some(())
    });
    if ready.is_none() || !lab.topo.is_running(pid) {
        return Err(check(
            "ftp-proxy --nat64-prefix to listen on port 8021",
            std::fs::read_to_string(log).unwrap_or_default(),
        ));
    }
    Ok(pid)
}

/// Fails unless curl's verbose log shows it sent `cmd` and never `not`.
fn curl_sent(log: &str, cmd: &str, not: &str) -> Result<()> {
    let sent = |c: &str| log.lines().any(|l| l.starts_with(&format!("> {c}")));
    if !sent(cmd) || sent(not) {
        return Err(check(
            format!("curl to send {cmd} and not {not}"),
            netns::tail(log, 3000),
        ));
    }
    Ok(())
}

/// The proxy log's lines of session `#id` (`#3 ...`).
fn session_lines(log: &str, id: u32) -> Vec<String> {
    let tag = format!("#{id} ");
    log.lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// Fails unless session `#id` of the proxy's log has a line containing each of
/// `want` and none containing any of `not`.
fn session_says(log: &str, id: u32, want: &[&str], not: &[&str]) -> Result<()> {
    let lines = session_lines(log, id);
    let has = |w: &str| lines.iter().any(|l| l.contains(w));
    for w in want {
        if !has(w) {
            return Err(check(
                format!("session #{id} to log {w:?}"),
                lines.join("\n"),
            ));
        }
    }
    for n in not {
        if has(n) {
            return Err(check(
                format!("session #{id} not to log {n:?}"),
                lines.join("\n"),
            ));
        }
    }
    Ok(())
}

/// What every translated session logs: the mapping and the IPv4 server.
fn translated() -> [String; 2] {
    [
        format!("NAT64: destination [64:ff9b::c633:6402]:21 is served by IPv4 server {SERVER}:21"),
        format!("client {CLIENT} to server {SERVER} via proxy 198.51.100.1"),
    ]
}

#[test]
fn ipv6_only_client_reaches_ipv4_only_server_through_the_nat64_prefix() -> Result<()> {
    if !netns::is_root("ipv6_only_client_reaches_ipv4_only_server_through_the_nat64_prefix") {
        return Ok(());
    }
    through_the_prefix("n64", AdminDivert::Redirect)
}

#[test]
fn the_same_with_a_tproxy_divert() -> Result<()> {
    if !netns::is_root("the_same_with_a_tproxy_divert") {
        return Ok(());
    }
    through_the_prefix("n64tp", AdminDivert::Tproxy)
}

/// The whole scenario with one kind of divert.
fn through_the_prefix(tag: &str, divert: AdminDivert) -> Result<()> {
    let mut lab = Lab::new(tag, AdminAccept::Open)?;
    nat64_addresses(&lab, divert)?;
    let log_path = lab.topo.dir().join("proxy-nat64.log");
    let pid = start_proxy(&mut lab, divert, &log_path)?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut id = 0;

    // 1. curl EPSV download of 10 MiB: the IPv4 server is asked EPSV (RFC 6384:
    // EPSV passes through) and answers it.
    let out = lab.local.join("big-epsv.bin");
    let c = lab.curl(&[
        &format!("{URL}/big.bin"),
        "-o",
        out.to_str().expect("utf-8"),
    ])?;
    curl_sent(&c, "EPSV", "PASV")?;
    lab.same_file(&lab.home.join("big.bin"), &out)?;
    id += 1;
    let t = translated();
    session_says(
        &log(),
        id,
        &[&t[0], &t[1], "client: EPSV", "server: 229 "],
        &["proxy: PASV", "server: 227 "],
    )?;

    // 2. curl EPRT upload: EPRT |2| from the client becomes EPRT |1| with the
    // proxy's IPv4 address towards the server.
    let src = lab.local.join("up-small.bin");
    let c = lab.curl(&[
        "-P",
        "-",
        "-T",
        src.to_str().expect("utf-8"),
        &format!("{URL}/up-eprt.bin"),
    ])?;
    curl_sent(&c, "EPRT |2|2001:db8:1::2|", "PORT")?;
    lab.same_file(&src, &lab.home.join("up-eprt.bin"))?;
    id += 1;
    let t = translated();
    session_says(
        &log(),
        id,
        &[
            &t[0],
            &t[1],
            "client: EPRT |2|2001:db8:1::2|",
            "proxy: EPRT |1|198.51.100.1|",
        ],
        &["proxy: EPRT |2|"],
    )?;

    // 3. lftp EPRT (active) download of 10 MiB.
    let out = lab.local.join("lftp-eprt.bin");
    let l = lab.lftp(
        URL,
        "set ftp:passive-mode off",
        &format!("get big.bin -o {}", out.display()),
    )?;
    if !l.contains("---> EPRT |2|") {
        return Err(check("lftp to send EPRT |2|", netns::tail(&l, 3000)));
    }
    lab.same_file(&lab.home.join("big.bin"), &out)?;
    id += 1;
    let t = translated();
    session_says(
        &log(),
        id,
        &[&t[0], &t[1], "proxy: EPRT |1|198.51.100.1|"],
        &[],
    )?;

    // 4. lftp EPSV upload of 10 MiB.
    let up = lab.local.join("up-big.bin");
    let l = lab.lftp(
        URL,
        "set ftp:passive-mode on; set ftp:prefer-epsv yes",
        &format!("put {} -o up-epsv.bin", up.display()),
    )?;
    if !l.contains("---> EPSV") {
        return Err(check("lftp to send EPSV", netns::tail(&l, 3000)));
    }
    lab.same_file(&up, &lab.home.join("up-epsv.bin"))?;
    if std::fs::metadata(lab.home.join("up-epsv.bin"))
        .map(|m| m.len())
        .ok()
        != Some(BIG_LEN as u64)
    {
        return Err(check("the 10 MiB upload stored whole", ""));
    }
    id += 1;
    let t = translated();
    session_says(
        &log(),
        id,
        &[&t[0], &t[1], "client: EPSV", "server: 229 "],
        &["proxy: PASV"],
    )?;

    // 5. Outside the prefix: not translated. The proxy connects to the IPv6
    // destination itself, which the router cannot reach, and the client's
    // session ends as any session whose server is unreachable.
    let user = format!("{FTP_USER}:{FTP_PASSWORD}");
    let out = run(
        lab.topo.cmd(Ns::Client, "curl").args([
            "-sS",
            "-g",
            "--max-time",
            "10",
            "-u",
            &user,
            &format!("ftp://[{OUTSIDE}]/small.bin"),
            "-o",
            "/dev/null",
        ]),
        Duration::from_secs(20),
    )?;
    if out.status.success() {
        return Err(check("curl to an unreachable IPv6 server to fail", ""));
    }
    id += 1;
    let logged = netns::poll(Duration::from_secs(5), || {
        session_says(
            &log(),
            id,
            &[&format!("cannot connect to server {OUTSIDE}")],
            &["NAT64", SERVER],
        )
        .ok()
    });
    if logged.is_none() {
        session_says(
            &log(),
            id,
            &[&format!("cannot connect to server {OUTSIDE}")],
            &["NAT64", SERVER],
        )?;
    }

    let status = lab.topo.stop(pid, libc::SIGTERM, Duration::from_secs(5))?;
    if !status.success() {
        return Err(check("ftp-proxy to exit 0 at SIGTERM", log()));
    }
    Ok(())
}
