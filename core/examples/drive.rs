//! Driving the core by hand: one session through login and an active-mode
//! negotiation, printing every action. `cargo run -p ftp-proxy-core --example drive`
//!
//! The clock is read here, by the caller, as an integrator's event loop would; the
//! core itself never reads it.

use std::time::Instant;

use ftp_proxy_core::{Accept, Action, Config, Input, Pcg32, Proxy, Side};

fn drain(proxy: &mut Proxy, now: Instant) {
    while let Some((id, action)) = proxy.poll_action() {
        println!("{id} {action:?}");
        // A real caller executes the action; here every write completes at once
        // and the filter accepts every commit.
        if let Action::Send(side, bytes) = &action {
            proxy.handle(now, id, Input::Written(*side, bytes.len()));
        }
        if let Action::Close { summary, .. } = &action {
            println!(
                "    {} commands, {} rule sets",
                summary.commands, summary.rules_committed
            );
        }
        if let Action::CommitRules { txn, rules, .. } = action {
            for rule in &rules {
                println!("    {rule}");
            }
            proxy.handle(
                now,
                id,
                Input::RulesCommitted {
                    txn,
                    result: Ok(()),
                },
            );
        }
    }
}

fn main() {
    let mut proxy = Proxy::new(Config::default(), Box::new(Pcg32::new(1))).expect("valid config");
    let now = Instant::now();
    let client = "203.0.113.10:40000".parse().unwrap();
    let server = "198.51.100.10:21".parse().unwrap();
    let id = proxy
        .accept(now, Accept::new(client, server))
        .expect("below the session limit");
    drain(&mut proxy, now);
    let local = "198.51.100.1:50000".parse().unwrap();
    proxy.handle(now, id, Input::ServerSocketOpened { proxy: local });
    for (side, bytes) in [
        (Side::Server, "220 ready\r\n"),
        (Side::Client, "USER anonymous\r\n"),
        (Side::Server, "331 password please\r\n"),
        (Side::Client, "PORT 10,0,0,5,19,136\r\n"),
        (Side::Server, "200 PORT ok\r\n"),
        (Side::Client, "QUIT\r\n"),
    ] {
        proxy.handle(now, id, Input::Data(side, bytes.into()));
        drain(&mut proxy, now);
    }
    proxy.handle(now, id, Input::Eof(Side::Server));
    drain(&mut proxy, now);
    assert!(proxy.is_empty(), "the session and its rules are gone");
}
