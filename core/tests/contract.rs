//! The driving contract's outputs: read interest, the close summary, a failed
//! final removal, the proxy-port range, the one way to report a failed connect.

mod support;

use std::time::Duration;

use ftp_proxy_core::{
    Accept, Action, CloseReason, Config, DataCounts, FilterError, Input, PortRange, Proxy, Side,
    SocketError, OUTPUT_HIGH_WATER, OUTPUT_LOW_WATER,
};
use support::*;

fn interest(side: Side, on: bool) -> Action {
    Action::ReadInterest { side, on }
}

#[test]
fn proxy_is_send() {
    fn send<T: Send>() {}
    send::<Proxy>();
}

#[test]
fn output_piling_up_stops_reading_its_source_until_written() {
    let mut h = H::new(Config::default(), &[0]);
    // The banner was written.
    assert_eq!(h.input(Input::Written(Side::Client, 11)), vec![]);
    h.client(b"USER ftp\r\n");
    // The server floods the client with a long multi-line reply nobody writes out.
    let line = format!("211-{}\r\n", "x".repeat(400));
    let mut stopped = None;
    for i in 0..400 {
        let a = h.server(line.as_bytes());
        if a.contains(&interest(Side::Server, false)) {
            stopped = Some(i);
            break;
        }
    }
    let lines = stopped.expect("reading the server stops") + 1;
    assert!(lines * line.len() >= OUTPUT_HIGH_WATER);
    assert!((lines - 1) * line.len() < OUTPUT_HIGH_WATER);
    // Written bytes above the low-water mark change nothing.
    let queued = lines * line.len();
    let a = h.input(Input::Written(Side::Client, queued - OUTPUT_LOW_WATER));
    assert_eq!(a, vec![]);
    // Below it, reading resumes, once: the server (whose output piled up) and the
    // client (whose own queue was full: the proxy answers some commands itself).
    let a = h.input(Input::Written(Side::Client, 1));
    assert_eq!(
        a,
        vec![interest(Side::Client, true), interest(Side::Server, true)]
    );
    assert_eq!(h.input(Input::Written(Side::Client, 100)), vec![]);
}

#[test]
fn a_client_that_reads_no_replies_stops_being_read() {
    let mut h = H::new(
        Config {
            anonymous_only: true,
            ..Config::default()
        },
        &[0],
    );
    // Each USER is answered by the proxy itself; the client never reads.
    let mut off = false;
    for _ in 0..5000 {
        let a = h.client(b"USER bob\r\n");
        if a.contains(&interest(Side::Client, false)) {
            off = true;
            break;
        }
    }
    assert!(off, "the client's own queue stops its reading");
}

#[test]
fn input_held_behind_a_commit_stops_reading_until_the_ack() {
    let mut h = H::new(Config::default(), &[0]);
    let (txn, _) = commit(&h.client(b"PORT 1,2,3,4,19,136\r\n"));
    let mut a = Vec::new();
    for _ in 0..40 {
        a.extend(
            h.client(
                &[b'N', b'O', b'O', b'P', b' '].repeat(60)[..]
                    .iter()
                    .copied()
                    .chain(*b"\r\n")
                    .collect::<Vec<u8>>(),
            ),
        );
    }
    assert!(a.contains(&interest(Side::Client, false)), "{a:?}");
    let a = h.ack(txn, Ok(()));
    assert!(a.contains(&interest(Side::Client, true)), "{a:?}");
}

#[test]
fn close_carries_the_session_summary() {
    let mut h = H::new(Config::default(), &[0, 1]);
    h.client(b"USER ftp\r\n");
    h.server(b"331 ok\r\n");
    let (txn, _) = commit(&h.client(b"EPRT |1|1.2.3.4|5000|\r\n"));
    h.ack(txn, Ok(()));
    h.server(b"200 ok\r\n");
    h.client(b"EPSV\r\n");
    let (txn, _) = commit(&h.server(b"229 ok (|||6000|)\r\n"));
    h.ack(txn, Ok(()));
    h.now += Duration::from_secs(3);
    h.p.handle(h.now, h.id, Input::Eof(Side::Client));
    let Some((_, Action::Close { reason, summary })) = h.p.poll_action() else {
        panic!()
    };
    assert_eq!(reason, CloseReason::Eof(Side::Client));
    assert_eq!(summary.client, addr(CLIENT));
    assert_eq!(summary.server, addr(SERVER));
    assert_eq!(summary.duration, Duration::from_secs(3));
    assert_eq!(summary.commands, 3);
    assert_eq!(
        summary.data,
        DataCounts {
            epsv: 1,
            eprt: 1,
            ..DataCounts::default()
        }
    );
    assert_eq!(summary.rules_committed, 2);
    let sum = |lines: &[&str]| lines.iter().map(|l| l.len() as u64).sum::<u64>();
    let client = ["USER ftp\r\n", "EPRT |1|1.2.3.4|5000|\r\n", "EPSV\r\n"];
    let server = [
        "220 ready\r\n",
        "331 ok\r\n",
        "200 ok\r\n",
        "229 ok (|||6000|)\r\n",
    ];
    assert_eq!(summary.client_bytes, sum(&client));
    assert_eq!(summary.server_bytes, sum(&server));
}

#[test]
fn a_failed_final_removal_is_reported_to_the_driver() {
    let mut h = H::new(Config::default(), &[0]);
    let (txn, _) = commit(&h.client(b"PORT 1,2,3,4,19,136\r\n"));
    h.ack(txn, Ok(()));
    let a = h.input(Input::Eof(Side::Server));
    let (txn, rules) = commit(&a);
    assert!(rules.is_empty());
    let error = FilterError::Other {
        errno: 5,
        text: "Input/output error".into(),
    };
    let a = h.ack(txn, Err(error.clone()));
    let [Action::RulesMayRemain { anchor, error: e }] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!((anchor.session, e), (h.id.0, &error));
    assert!(h.p.is_empty());
}

#[test]
fn proxy_ports_come_from_the_configured_range() {
    let range = PortRange {
        low: 40000,
        high: 40001,
    };
    let cfg = Config {
        proxy_ports: range,
        ..Config::default()
    };
    // Two sessions take both ports, whatever the generator says; a third finds none.
    let mut ports = Vec::new();
    let mut p = Proxy::new(cfg.clone(), Box::new(Script([1, 1].into()))).unwrap();
    for _ in 0..3 {
        let id = p
            .accept(h_now(), Accept::new(addr(CLIENT), addr(SERVER)))
            .unwrap();
        greet_and_port(&mut p, h_now(), id);
        let acts: Vec<_> = std::iter::from_fn(|| p.poll_action())
            .map(|(_, a)| a)
            .collect();
        match acts.iter().find_map(|a| match a {
            Action::CommitRules { txn, .. } => Some(*txn),
            _ => None,
        }) {
            Some(txn) => {
                p.handle(
                    h_now(),
                    id,
                    Input::RulesCommitted {
                        txn,
                        result: Ok(()),
                    },
                );
                let line = std::iter::from_fn(|| p.poll_action())
                    .find_map(|(_, a)| match a {
                        Action::Send(Side::Server, l) => Some(l),
                        _ => None,
                    })
                    .unwrap();
                ports.push(line);
            }
            None => {
                let reason = acts.iter().find_map(|a| match a {
                    Action::Close { reason, .. } => Some(reason),
                    _ => None,
                });
                assert_eq!(
                    reason,
                    Some(&CloseReason::NoProxyPort { range }),
                    "{acts:?}"
                );
                let reason = reason.unwrap();
                assert_eq!(reason.kind(), "no_proxy_port");
                assert_eq!(
                    reason.to_string(),
                    "no free proxy port: every port of 40000:40001 is held by a live session"
                );
            }
        }
    }
    assert_eq!(
        ports,
        [
            "PORT 198,51,100,1,156,65\r\n",
            "PORT 198,51,100,1,156,64\r\n"
        ]
    );
    let bad = Config {
        proxy_ports: PortRange {
            low: 1000,
            high: 2000,
        },
        ..Config::default()
    };
    assert!(Proxy::new(bad, Box::new(Script([0].into()))).is_err());
}

fn h_now() -> std::time::Instant {
    use std::sync::OnceLock;
    static NOW: OnceLock<std::time::Instant> = OnceLock::new();
    *NOW.get_or_init(std::time::Instant::now)
}

#[test]
fn a_connect_failure_reads_by_when_it_happened() {
    let mut p = Proxy::new(Config::default(), Box::new(Script([0].into()))).unwrap();
    let now = h_now();
    let at_once = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    let later = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    // ECONNREFUSED, as the OS reports it.
    let econnrefused = if cfg!(target_os = "linux") { 111 } else { 61 };
    let error = SocketError::from(std::io::Error::from_raw_os_error(econnrefused));
    p.handle(now, at_once, Input::ServerConnectFailed { error });
    p.handle(now, later, Input::ServerSocketOpened { proxy: addr(PROXY) });
    p.handle(now, later, Input::ServerConnectFailed { error });
    let reasons: Vec<CloseReason> = std::iter::from_fn(|| p.poll_action())
        .filter_map(|(_, a)| match a {
            Action::Close { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            CloseReason::ConnectFailed {
                server: addr(SERVER),
                error,
            },
            CloseReason::ServerRefused
        ]
    );
    assert_eq!(error.kind, std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "proxy cannot connect to server 198.51.100.10: Connection refused",
            "server refused connection"
        ]
    );
    let unnumbered = CloseReason::ConnectFailed {
        server: addr(SERVER),
        error: SocketError::from_kind(std::io::ErrorKind::TimedOut),
    };
    assert_eq!(
        unnumbered.to_string(),
        "proxy cannot connect to server 198.51.100.10: timed out"
    );
}

#[test]
fn the_clients_routing_domain_reaches_its_rules() {
    let mut p = Proxy::new(Config::default(), Box::new(Script([0].into()))).unwrap();
    let now = h_now();
    let conn = Accept {
        rdomain: 3,
        ..Accept::new(addr(CLIENT), addr(SERVER))
    };
    let id = p.accept(now, conn).unwrap();
    greet_and_port(&mut p, now, id);
    let acts: Vec<Action> = std::iter::from_fn(|| p.poll_action())
        .map(|(_, a)| a)
        .collect();
    let (_, rules) = commit(&acts);
    assert!(rules[0].contains(" rtable 3 "), "{rules:?}");
    assert!(rules[1].contains(" on rdomain 3 "), "{rules:?}");
}

#[test]
fn close_reason_kinds_are_distinct() {
    let reasons = [
        CloseReason::Eof(Side::Client),
        CloseReason::Eof(Side::Server),
        CloseReason::ClientReset,
        CloseReason::ServerRefused,
        CloseReason::TlsFailed(Side::Client),
        CloseReason::TlsFailed(Side::Server),
        CloseReason::WriteError(Side::Client),
        CloseReason::WriteError(Side::Server),
        CloseReason::Timeout(Side::Client),
        CloseReason::Timeout(Side::Server),
        CloseReason::NotClean(Side::Client),
        CloseReason::NotClean(Side::Server),
        CloseReason::ConnectFailed {
            server: addr(SERVER),
            error: SocketError::from_kind(std::io::ErrorKind::ConnectionRefused),
        },
        CloseReason::Filter(FilterError::Busy),
        CloseReason::NoProxyPort {
            range: PortRange::single(50000),
        },
        CloseReason::LoginTimeout,
        CloseReason::ServerClosing,
        CloseReason::TooManyPipelined,
        CloseReason::ReplyDesync,
        CloseReason::Shutdown,
    ];
    let kinds: std::collections::BTreeSet<&str> = reasons.iter().map(CloseReason::kind).collect();
    assert_eq!(kinds.len(), reasons.len());
    assert!(kinds
        .iter()
        .all(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
}
