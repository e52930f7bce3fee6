//! Issue 17 under the shared invariants (`tests/src/invariants.rs`): random
//! sessions in every server data mode and family pairing, with clients that send
//! any data command (low and malformed ports too) and servers that answer it in any
//! form (227 or 229 whichever was asked, EPSV refusals, low ports, multi-line
//! listings that make the session distrust passive replies), run through the real
//! core and checked by the [`Checker`] after every action. On top of the checker:
//! no rule ever names a port below 1024 or an address outside the session.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use ftp_proxy_core::internals::ftp::{self, Command};
use ftp_proxy_core::{
    Accept, Action, Config, Input, Pcg32, PortRange, Proxy, RandomSource, Rule, ServerDataMode,
    Side, Translate, MIN_DATA_PORT,
};
use ftp_proxy_tests::invariants::Checker;

/// Client, original destination (the proxy's listener in reverse mode), server
/// (`-R`) and the proxy's address towards it.
struct Family {
    client: &'static str,
    orig_dst: &'static str,
    server: &'static str,
    proxy: &'static str,
}

const FAMILIES: [Family; 3] = [
    Family {
        client: "203.0.113.10:40000",
        orig_dst: "203.0.113.1:21",
        server: "198.51.100.10:2121",
        proxy: "198.51.100.1:50000",
    },
    Family {
        client: "[2001:db8:1::10]:40000",
        orig_dst: "[2001:db8:1::1]:21",
        server: "198.51.100.10:2121",
        proxy: "198.51.100.1:50000",
    },
    Family {
        client: "203.0.113.10:40000",
        orig_dst: "203.0.113.1:21",
        server: "[2001:db8:2::10]:2121",
        proxy: "[2001:db8:2::1]:50000",
    },
];

const MODES: [ServerDataMode; 3] = [
    ServerDataMode::Client,
    ServerDataMode::Passive,
    ServerDataMode::Active,
];

fn pick<'a>(rng: &mut Pcg32, from: &[&'a str]) -> &'a str {
    from[rng.uniform(from.len() as u32) as usize]
}

/// A data port: usually a fine one, sometimes below 1024.
fn port(rng: &mut Pcg32) -> u16 {
    if rng.uniform(5) == 0 {
        rng.uniform(1024) as u16
    } else {
        1024 + rng.uniform(64000) as u16
    }
}

fn client_line(rng: &mut Pcg32) -> String {
    let p = port(rng);
    match rng.uniform(11) {
        0 | 1 => "PASV".into(),
        2 | 3 => "EPSV".into(),
        4 | 5 => format!("PORT 10,1,2,3,{},{}", p >> 8, p & 0xff),
        6 => format!("EPRT |1|10.1.2.3|{p}|"),
        7 => format!("EPRT |2|2001:db8::99|{p}|"),
        8 => pick(
            rng,
            &["EPSV ALL", "LPSV", "LPRT 4,4,1,2,3,4,2,1,2", "EPRT |3|x|1|"],
        )
        .into(),
        9 => pick(rng, &["STAT -1", "LIST", "HELP"]).into(),
        _ => pick(rng, &["USER ftp", "RETR f", "NOOP", "TYPE I"]).into(),
    }
}

/// The server's answer to one line the proxy sent it.
fn server_reply(rng: &mut Pcg32, line: &[u8]) -> String {
    let p = port(rng);
    let pasv = format!(
        "227 Entering Passive Mode (10,9,9,9,{},{})\r\n",
        p >> 8,
        p & 0xff
    );
    let epsv = format!("229 Entering Extended Passive Mode (|||{p}|)\r\n");
    let cmd = ftp::classify(line);
    let word =
        |w: &str| line.len() >= w.len() && line[..w.len()].eq_ignore_ascii_case(w.as_bytes());
    match cmd {
        Command::Pasv | Command::Epsv if !ftp::is_epsv_all(line) => match rng.uniform(7) {
            0 | 1 => pasv,
            2 | 3 => epsv,
            4 => "500 not understood\r\n".into(),
            5 => "522 use (1)\r\n".into(),
            _ => "425 no\r\n".into(),
        },
        Command::Port(_) | Command::Eprt(_) => {
            pick(rng, &["200 PORT ok\r\n", "500 no\r\n", "522 use (2)\r\n"]).into()
        }
        _ if word("STAT") || word("HELP") => {
            // A multi-line reply that may carry a forged passive answer.
            format!("213-status\r\n {pasv}213 end\r\n")
        }
        _ => "200 ok\r\n".into(),
    }
}

/// Every port a rule names is from 1024 up and every address is one of `addrs`.
fn confined(rules: &[Rule], addrs: &[IpAddr]) -> Result<(), String> {
    for r in rules {
        let (addr, port) = match r.translate {
            Translate::RdrTo { addr, port }
            | Translate::JoinWith { addr, port }
            | Translate::BridgeWith { addr, port } => (addr, Some(port)),
            Translate::NatTo { addr, .. } => (addr, None),
        };
        if r.port < MIN_DATA_PORT || port.is_some_and(|p| p < MIN_DATA_PORT) {
            return Err(format!("a port below 1024 in {r}"));
        }
        for a in [r.from, r.to, addr] {
            if !addrs.contains(&a) {
                return Err(format!("{a} is not the session's, in {r}"));
            }
        }
    }
    Ok(())
}

/// Runs one random session; returns the kinds of rule set it committed.
fn run(seed: u64) -> Result<[usize; 3], String> {
    let mut rng = Pcg32::new(seed);
    let fam = &FAMILIES[(seed % 3) as usize];
    let mode = MODES[((seed / 3) % 3) as usize];
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let client = addr(fam.client);
    let cfg = Config {
        relay: true,
        server_data_mode: mode,
        ipv6: client.is_ipv6(),
        fixed_server: Some(addr(fam.server)),
        server_data_ports: (rng.uniform(3) == 0).then_some(PortRange {
            low: 20000,
            high: 40000,
        }),
        ..Config::default()
    };
    let mut proxy =
        Proxy::new(cfg.clone(), Box::new(Pcg32::new(seed ^ 0x77))).map_err(|e| e.to_string())?;
    let mut checker = Checker::new(&cfg);
    let now = Instant::now();
    let conn = Accept::new(client, addr(fam.orig_dst));
    let accepted = proxy.accept(now, conn);
    checker.accepted(&conn, 0, &accepted)?;
    let id = accepted.map_err(|e| format!("{e:?}"))?;
    let proxy_addr = addr(fam.proxy);
    checker.proxy_opened(id, proxy_addr.ip());
    let addrs = [
        client.ip(),
        addr(fam.orig_dst).ip(),
        addr(fam.server).ip(),
        proxy_addr.ip(),
    ];
    let mut kinds = [0usize; 3];
    let mut to_server: VecDeque<Bytes> = VecDeque::new();
    let mut feed = |proxy: &mut Proxy,
                    checker: &mut Checker,
                    to_server: &mut VecDeque<Bytes>,
                    input: Option<Input>|
     -> Result<(), String> {
        let mut inputs: VecDeque<Input> = input.into_iter().collect();
        for _ in 0..1000 {
            if let Some(i) = inputs.pop_front() {
                proxy.handle(now, id, i);
            }
            let mut any = false;
            while let Some((sid, action)) = proxy.poll_action() {
                any = true;
                checker.action(sid, &action)?;
                match &action {
                    Action::CommitRules { txn, rules, .. } => {
                        confined(rules, &addrs)?;
                        match rules.first().map(|r| r.translate) {
                            Some(Translate::JoinWith { .. }) => kinds[1] += 1,
                            Some(Translate::BridgeWith { .. }) => kinds[2] += 1,
                            Some(_) => kinds[0] += 1,
                            None => {}
                        }
                        checker.acked(sid, rules);
                        inputs.push_back(Input::RulesCommitted {
                            txn: *txn,
                            result: Ok(()),
                        });
                    }
                    Action::Send(Side::Server, line) => to_server.push_back(line.clone()),
                    _ => {}
                }
            }
            checker.check(proxy)?;
            if inputs.is_empty() && !any {
                return Ok(());
            }
        }
        Err("the proxy did not settle".into())
    };
    feed(&mut proxy, &mut checker, &mut to_server, None)?;
    feed(
        &mut proxy,
        &mut checker,
        &mut to_server,
        Some(Input::ServerSocketOpened { proxy: proxy_addr }),
    )?;
    let data = |side, s: String| Some(Input::Data(side, Bytes::from(s)));
    feed(
        &mut proxy,
        &mut checker,
        &mut to_server,
        data(Side::Server, "220 ready\r\n".into()),
    )?;
    for _ in 0..14 {
        if !proxy.is_open(id) {
            break;
        }
        let line = format!("{}\r\n", client_line(&mut rng));
        feed(
            &mut proxy,
            &mut checker,
            &mut to_server,
            data(Side::Client, line),
        )?;
        // The server answers everything it has been sent, in order (bounded: each
        // answer may bring one more line, the retry of a refused EPSV).
        for _ in 0..8 {
            let Some(sent) = to_server.pop_front() else {
                break;
            };
            let reply = server_reply(&mut rng, &sent);
            feed(
                &mut proxy,
                &mut checker,
                &mut to_server,
                data(Side::Server, reply),
            )?;
        }
    }
    feed(
        &mut proxy,
        &mut checker,
        &mut to_server,
        Some(Input::Eof(Side::Client)),
    )?;
    checker.check(&proxy)?;
    if !proxy.is_empty() {
        return Err("the session outlived its client's end of file".into());
    }
    Ok(kinds)
}

#[test]
fn random_translated_sessions_keep_every_invariant() {
    let mut totals = [0usize; 3];
    for seed in 0..900 {
        match run(seed) {
            Ok(k) => (0..3).for_each(|i| totals[i] += k[i]),
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    // Every shape was exercised: plain forwards, joins (active mode) and bridges
    // (passive mode).
    eprintln!("rule sets: {totals:?}");
    assert!(totals.iter().all(|&n| n > 50), "{totals:?}");
}
