//! Worlds whose sessions choose their server after `USER`: forward mode
//! (`--user-at-host`) and route tables (`--route-file`). The proxy greets the
//! client itself, the client names its server in `USER name@host[:port]` (or
//! the table maps its plain name), and the world answers the proxy's
//! [`Action::Resolve`](ftp_proxy_core::Action::Resolve).
//!
//! Each client first makes a few attempts the proxy must refuse, each with its
//! own `530` (or `-A`'s `500`) and nothing sent to any server: a command before
//! the login, a `USER` with no `@host`, an address outside the policy, the
//! proxy's own address, an address of the other family, names whose lookup
//! fails or gives only refused addresses. Then, now and then, a name whose
//! lookup never answers (the session ends with `421` after `--resolve-timeout`);
//! else the login that connects: a literal, or a name that resolves to an
//! address of the other family, one the policy refuses and the server, in that
//! order (the first allowed one of the client's family is the one). The
//! server's greeting is the proxy's to read: the client sees the reply to the
//! proxy's `USER name` first.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use ftp_proxy_core::{AllowDest, DestPolicy, Pcg32, RandomSource, RouteTable};

use super::actors::{Fate, Step, REPLY_ANON};

/// The proxy's own greeting in forward mode (core/src/session/upstream.rs).
pub const GREETING: &[u8] = b"220 ftp-proxy ready: log in as USER name@host[:port]\r\n";
/// The start of the proxy's `421` when the chosen server cannot be reached or
/// does not greet with `220`.
pub const CANNOT_LOG_IN: &[u8] = b"421 Cannot log in to ";

const LOGIN_FIRST: &str = "530 Log in with USER name@host[:port] first\r\n";
const NO_HOST: &str = "530 no @host in the user name\r\n";
const OUTSIDE_V4: &str = "530 destination 203.0.113.99 refused by proxy policy\r\n";
const OUTSIDE_V6: &str = "530 destination [2001:db8:9::99] refused by proxy policy\r\n";
const ITSELF_V4: &str = "530 destination 198.51.100.10 refused by proxy policy\r\n";
const ITSELF_V6: &str = "530 destination [2001:db8:2::10] refused by proxy policy\r\n";
const OTHER_V4: &str = "530 destination [2001:db8:2::20] refused by proxy policy\r\n";
const OTHER_V6: &str = "530 destination 198.51.100.20 refused by proxy policy\r\n";
const NAME_FAILS: &str = "530 cannot resolve nx.sim.test: no such host\r\n";
const NAME_REFUSED: &str = "530 destination outside.sim.test refused by proxy policy\r\n";
const NAME_SILENT: &str = "421 Lookup of silent.sim.test timed out\r\n";

/// The server every successful login reaches, of the client's family.
pub fn server(ipv6: bool) -> SocketAddr {
    if ipv6 {
        "[2001:db8:2::20]:2121".parse().unwrap()
    } else {
        "198.51.100.20:2121".parse().unwrap()
    }
}

/// The destination policy: the servers' networks at port 2121 (and 21), with
/// the proxy's listener (`own`) inside them, so that it is refused.
pub fn policy(listener: SocketAddr) -> DestPolicy {
    DestPolicy {
        allow: ["198.51.100.0/24:21,2121", "[2001:db8:2::/48]:21,2121"]
            .iter()
            .map(|a| AllowDest::parse(a).expect("valid"))
            .collect(),
        own: vec![listener],
    }
}

/// The world's resolver: the answer to a lookup of `name`, or `None` for a
/// name server that never answers.
pub fn answer(name: &str, ipv6: bool) -> Option<Result<Vec<IpAddr>, String>> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let (other, outside) = if ipv6 {
        ("198.51.100.20", "2001:db8:9::99")
    } else {
        ("2001:db8:2::20", "203.0.113.99")
    };
    match name {
        "files.sim.test" => Some(Ok(vec![ip(other), ip(outside), server(ipv6).ip()])),
        "outside.sim.test" => Some(Ok(vec![ip(outside), ip(other)])),
        "silent.sim.test" => None,
        _ => Some(Err("no such host".into())),
    }
}

/// Replaces the script's first step (its `USER`) with the forward-mode login:
/// refused attempts, then the `USER name@host` that connects (or one whose
/// lookup never answers).
pub fn login(rng: &mut Pcg32, script: &mut VecDeque<Step>, ipv6: bool, anonymous_only: bool) {
    script.pop_front();
    let mut steps = Vec::new();
    let one = |line: String, fate: Fate| Step::Send(vec![(line.into_bytes(), fate)]);
    let pick = |v4: &'static str, v6: &'static str| if ipv6 { v6 } else { v4 };
    for _ in 0..rng.range(0, 3) {
        let (line, reply) = match rng.uniform(9) {
            0 => ("NOOP".to_string(), LOGIN_FIRST),
            1 => ("USER nobody".to_string(), NO_HOST),
            2 => (
                pick("USER ftp@203.0.113.99", "USER ftp@[2001:db8:9::99]:2121").to_string(),
                pick(OUTSIDE_V4, OUTSIDE_V6),
            ),
            3 => (
                pick("USER ftp@198.51.100.10", "USER ftp@[2001:db8:2::10]:21").to_string(),
                pick(ITSELF_V4, ITSELF_V6),
            ),
            4 => (
                pick(
                    "USER ftp@[2001:db8:2::20]:2121",
                    "USER ftp@198.51.100.20:2121",
                )
                .to_string(),
                pick(OTHER_V4, OTHER_V6),
            ),
            5 => ("USER ftp@nx.sim.test".to_string(), NAME_FAILS),
            6 => (
                "USER anonymous@outside.sim.test:2121".to_string(),
                NAME_REFUSED,
            ),
            7 if anonymous_only => (format!("USER bob@{}", server(ipv6)), REPLY_ANON),
            _ => ("NOOP".to_string(), LOGIN_FIRST),
        };
        steps.push(one(format!("{line}\r\n"), Fate::Local(reply)));
    }
    if rng.chance(1, 15) {
        steps.push(one(
            "USER ftp@silent.sim.test:2121\r\n".into(),
            Fate::Local(NAME_SILENT),
        ));
    }
    let names: &[&str] = if anonymous_only {
        &["anonymous", "ftp"]
    } else {
        &["anonymous", "ftp", "bob", "me@example.org"]
    };
    let user = names[rng.uniform(names.len() as u32) as usize];
    let host = if rng.chance(1, 2) {
        server(ipv6).to_string()
    } else {
        "files.sim.test:2121".to_string()
    };
    // Some clients put a space before the port (not after a bracket).
    let host = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && rng.chance(1, 4) => format!("{h} {p}"),
        _ => host,
    };
    steps.push(one(
        format!("USER {user}@{host}\r\n"),
        Fate::Login(format!("USER {user}\r\n").into_bytes()),
    ));
    for s in steps.into_iter().rev() {
        script.push_front(s);
    }
}

/// The proxy's greeting with a route table.
pub const GREETING_ROUTES: &[u8] = b"220 ftp-proxy ready\r\n";
const LOGIN_FIRST_ROUTES: &str = "530 Log in with USER first\r\n";
const UNMAPPED: &str = "530 no server is configured for user nobody\r\n";

/// Route-table worlds (`--route-file`): the table before a reload and after it.
/// Both map the same names (a default in both or in neither), to other places:
/// which one a session used shows only in where it connected, which the checker
/// holds to the client's family.
pub fn tables(ipv6: bool, default: bool) -> (RouteTable, RouteTable) {
    let literal = server(ipv6);
    let named = "files.sim.test:2121";
    let table = |bob: &str, anon: &str| {
        let mut t = format!("bob {bob}\nftp {anon}\nanonymous {anon}\nslow silent.sim.test:2121\n");
        if default {
            t += &format!("* {bob}\n");
        }
        RouteTable::parse("sim.routes", &t).expect("valid table")
    };
    (
        table(&literal.to_string(), named),
        table(named, &literal.to_string()),
    )
}

/// Replaces the script's first step (its `USER`) with a route-table login:
/// refused attempts (a command first, a name the table does not map when it has
/// no default, a named user under `-A`), now and then a user whose server's
/// name never resolves, then the login, whose `USER` the server gets as the
/// proxy writes it.
pub fn routed_login(
    rng: &mut Pcg32,
    script: &mut VecDeque<Step>,
    default: bool,
    anonymous_only: bool,
) {
    script.pop_front();
    let mut steps = Vec::new();
    let one = |line: &str, fate: Fate| Step::Send(vec![(line.as_bytes().to_vec(), fate)]);
    for _ in 0..rng.range(0, 3) {
        steps.push(match rng.uniform(3) {
            0 if !default => one("USER nobody\r\n", Fate::Local(UNMAPPED)),
            1 if anonymous_only => one("USER bob\r\n", Fate::Local(REPLY_ANON)),
            _ => one("PWD\r\n", Fate::Local(LOGIN_FIRST_ROUTES)),
        });
    }
    if !anonymous_only && rng.chance(1, 15) {
        steps.push(one("USER slow\r\n", Fate::Local(NAME_SILENT)));
    }
    let names: &[&str] = if anonymous_only {
        &["anonymous", "ftp"]
    } else {
        &["anonymous", "ftp", "bob"]
    };
    let user = names[rng.uniform(names.len() as u32) as usize];
    // The proxy writes the USER line itself: a lower-case verb or Telnet
    // commands before it reach the server as `USER name`.
    let mut line: Vec<u8> = match rng.uniform(3) {
        0 => b"user ".to_vec(),
        1 => b" \xff\xf4\xff\xf2USER ".to_vec(),
        _ => b"USER ".to_vec(),
    };
    line.extend_from_slice(user.as_bytes());
    line.extend_from_slice(b"\r\n");
    steps.push(Step::Send(vec![(
        line,
        Fate::Login(format!("USER {user}\r\n").into_bytes()),
    )]));
    for s in steps.into_iter().rev() {
        script.push_front(s);
    }
}
