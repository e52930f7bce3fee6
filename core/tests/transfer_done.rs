//! `Action::TransferDone`: the session says when it has relayed the final reply to a
//! data-transfer command, so that a driver carrying the data connections itself
//! knows the transfer is over even if one side never closes its data connection.

mod support;

use ftp_proxy_core::{Action, Anchor, Config, Side};
use support::*;

fn anchor(h: &H) -> Action {
    Action::TransferDone {
        anchor: Anchor {
            pid: Config::default().pid,
            session: h.id.0,
        },
    }
}

/// A session that has committed the rules of one PORT negotiation.
fn with_rules() -> H {
    let mut h = H::new(Config::default(), &[0]);
    let (txn, _) = commit(&h.client(b"PORT 10,9,8,7,19,136\r\n"));
    h.ack(txn, Ok(()));
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![send(Side::Client, b"200 ok\r\n")]
    );
    h
}

#[test]
fn the_final_reply_to_each_transfer_command_is_announced_after_it_is_sent() {
    let mut h = with_rules();
    for cmd in [
        "RETR a", "STOR a", "STOU", "APPE a", "LIST", "NLST", "MLSD", "retr b",
    ] {
        let line = format!("{cmd}\r\n");
        assert_eq!(
            h.client(line.as_bytes()),
            vec![send(Side::Server, line.as_bytes())]
        );
        // The preliminary reply ends nothing.
        assert_eq!(
            h.server(b"150 here it comes\r\n"),
            vec![send(Side::Client, b"150 here it comes\r\n")],
            "{cmd}"
        );
        assert_eq!(
            h.server(b"226 done\r\n"),
            vec![send(Side::Client, b"226 done\r\n"), anchor(&h)],
            "{cmd}"
        );
    }
}

#[test]
fn a_refusal_without_a_preliminary_reply_ends_the_transfer_too() {
    let mut h = with_rules();
    for (reply, name) in [
        (&b"550 no such file\r\n"[..], "550"),
        (b"425 no data connection\r\n", "425"),
        (b"250 ok\r\n", "250"),
    ] {
        h.client(b"RETR x\r\n");
        assert_eq!(
            h.server(reply),
            vec![send(Side::Client, reply), anchor(&h)],
            "{name}"
        );
    }
    // After a 1xx, a 4xx/5xx is the final reply.
    h.client(b"STOR y\r\n");
    h.server(b"150 go\r\n");
    assert_eq!(
        h.server(b"451 aborted\r\n"),
        vec![send(Side::Client, b"451 aborted\r\n"), anchor(&h)]
    );
}

#[test]
fn a_multi_line_final_reply_is_announced_after_its_last_line() {
    let mut h = with_rules();
    h.client(b"RETR a\r\n");
    h.server(b"150 go\r\n");
    assert_eq!(
        h.server(b"226-Transfer complete\r\n"),
        vec![send(Side::Client, b"226-Transfer complete\r\n")]
    );
    assert_eq!(
        h.server(b" 10 MiB in 1 s\r\n226 Bye\r\n"),
        vec![
            send(Side::Client, b" 10 MiB in 1 s\r\n"),
            send(Side::Client, b"226 Bye\r\n"),
            anchor(&h)
        ]
    );
}

#[test]
fn other_commands_and_pipelined_ones_pair_with_their_own_replies() {
    let mut h = with_rules();
    // Pipelined: only the reply to RETR ends a transfer, in order.
    h.client(b"CWD d\r\nRETR a\r\nSIZE a\r\n");
    assert_eq!(
        h.server(b"250 ok\r\n"),
        vec![send(Side::Client, b"250 ok\r\n")]
    );
    assert_eq!(
        h.server(b"150 go\r\n"),
        vec![send(Side::Client, b"150 go\r\n")]
    );
    assert_eq!(
        h.server(b"226 done\r\n213 1000\r\n"),
        vec![
            send(Side::Client, b"226 done\r\n"),
            anchor(&h),
            send(Side::Client, b"213 1000\r\n"),
        ]
    );
    // A command word that only starts like one is not a transfer.
    h.client(b"RETRX a\r\n");
    assert_eq!(
        h.server(b"500 ?\r\n"),
        vec![send(Side::Client, b"500 ?\r\n")]
    );
}

#[test]
fn a_session_without_rules_has_nothing_to_announce() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"RETR a\r\n");
    assert_eq!(
        h.server(b"425 use PASV or PORT first\r\n"),
        vec![send(Side::Client, b"425 use PASV or PORT first\r\n")]
    );
}
