//! Throughput of the core, as ratios against a baseline measured in the same run.
//!
//! `cargo bench -p ftp-proxy-core` prints control lines per second through one
//! session (relay path and negotiation path) and, as the baseline, the rate of
//! merely splitting the same bytes into lines and copying them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ftp_proxy_core::{Accept, Action, Config, Input, Pcg32, Proxy, SessionId, Side};

fn session() -> (Proxy, SessionId, Instant) {
    let mut p = Proxy::new(Config::default(), Box::new(Pcg32::new(1))).unwrap();
    let now = Instant::now();
    let id = p
        .accept(
            now,
            Accept::new(
                "203.0.113.10:40000".parse().unwrap(),
                "198.51.100.10:21".parse().unwrap(),
            ),
        )
        .unwrap();
    p.handle(
        now,
        id,
        Input::ServerSocketOpened {
            proxy: "198.51.100.1:50000".parse().unwrap(),
        },
    );
    p.handle(
        now,
        id,
        Input::Data(Side::Server, Bytes::from_static(b"220 ready\r\n")),
    );
    while p.poll_action().is_some() {}
    (p, id, now)
}

/// Runs `f` (which handles `per_iter` lines) for about `budget`, returns lines per second.
fn rate(budget: Duration, per_iter: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        iters += 64;
    }
    (iters * per_iter) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = Duration::from_secs(2);
    let batch = 64;
    let client: Bytes = "NOOP\r\n".repeat(batch).into();
    let server: Bytes = "200 NOOP command successful\r\n".repeat(batch).into();

    // Baseline: find the line ends and copy every line, nothing else.
    let base = rate(budget, 2 * batch as u64, || {
        for buf in [&client, &server] {
            let mut b = buf.clone();
            while let Some(i) = b.iter().position(|&c| c == b'\n') {
                black_box(Bytes::copy_from_slice(&b.split_to(i + 1)));
            }
        }
    });

    let (mut p, id, now) = session();
    let relay = rate(budget, 2 * batch as u64, || {
        p.handle(now, id, Input::Data(Side::Client, client.clone()));
        p.handle(now, id, Input::Data(Side::Server, server.clone()));
        // A driver reports what each write took, once per flush (one writev for
        // what one input produced), as the mio runtime does.
        let mut written = [0usize; 2];
        while let Some((_, a)) = p.poll_action() {
            if let Action::Send(side, bytes) = &a {
                written[*side as usize] += bytes.len();
            }
            black_box(a);
        }
        for (side, n) in [(Side::Client, written[0]), (Side::Server, written[1])] {
            p.handle(now, id, Input::Written(side, n));
        }
    });

    assert!(
        p.is_open(id),
        "the relay benchmark must measure a live session"
    );

    let (mut p, id, now) = session();
    let negotiations = rate(budget, 1, || {
        p.handle(
            now,
            id,
            Input::Data(Side::Client, Bytes::from_static(b"PASV\r\n")),
        );
        p.handle(
            now,
            id,
            Input::Data(
                Side::Server,
                Bytes::from_static(b"227 Entering Passive Mode (198,51,100,10,117,76).\r\n"),
            ),
        );
        while let Some((_, a)) = p.poll_action() {
            if let Action::Send(side, bytes) = &a {
                p.handle(now, id, Input::Written(*side, bytes.len()));
            }
            if let Action::CommitRules { txn, .. } = a {
                p.handle(
                    now,
                    id,
                    Input::RulesCommitted {
                        txn,
                        result: Ok(()),
                    },
                );
            }
        }
    });

    assert!(
        p.is_open(id),
        "the negotiation benchmark must measure a live session"
    );
    println!("baseline (split + copy): {:>12.0} lines/s", base);
    println!(
        "relayed control lines:   {:>12.0} lines/s  ({:.2} x baseline)",
        relay,
        relay / base
    );
    println!(
        "PASV negotiations:       {:>12.0} per s    ({:.2} x baseline lines)",
        negotiations,
        negotiations / base
    );
}
