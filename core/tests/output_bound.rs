//! What one input may queue: the session checks its output queues before every line,
//! so however short the lines that produce output (a bare `\n` forwarded, a 5-byte
//! `AUTH` answered with an 80-byte refusal), the output a session holds passes
//! [`OUTPUT_HIGH_WATER`] by one line at most, and nothing is lost: the lines left
//! unparsed go out as the driver reports writes.

mod support;

use ftp_proxy_core::{Action, Config, Input, Side, OUTPUT_HIGH_WATER};

/// The longest control line (ftp-proxy(8)'s limit, LF included).
const MAX_LINE: usize = 500;
use support::*;

fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// The bytes each side was sent in `actions`.
fn sent(actions: &[Action]) -> [Vec<u8>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for a in actions {
        if let Action::Send(side, b) = a {
            out[idx(*side)].extend_from_slice(b);
        }
    }
    out
}

/// Feeds `input` in one piece (as a driver that read it at once would), then reports
/// every queued byte of `side` written, round after round, collecting what `side`
/// was sent; checks that each round queued at most `bound`. Bounded in rounds.
fn pump_through(h: &mut H, input: &[u8], side: Side, bound: usize) -> Vec<u8> {
    let mut a = h.client(input);
    let mut got = Vec::new();
    for round in 0..10_000 {
        let s = sent(&a);
        let other = &s[idx(side.peer())];
        assert!(
            other.is_empty(),
            "round {round}: output for the other side too"
        );
        let mine = &s[idx(side)];
        assert!(
            mine.len() <= bound,
            "round {round}: {} bytes queued for the {side} (bound {bound})",
            mine.len()
        );
        if mine.is_empty() {
            return got;
        }
        got.extend_from_slice(mine);
        a = h.input(Input::Written(side, mine.len()));
    }
    panic!("still queueing after 10,000 rounds");
}

#[test]
fn bare_newlines_queue_no_more_than_the_mark_and_all_go_out() {
    let mut h = H::new(Config::default(), &[0]);
    let flood = vec![b'\n'; 200_000];
    let got = pump_through(&mut h, &flood, Side::Server, OUTPUT_HIGH_WATER + 1);
    assert_eq!(got, flood);
    assert!(h.p.is_open(h.id));
}

#[test]
fn replies_the_proxy_gives_itself_queue_no_more_than_the_mark() {
    let mut h = H::new(Config::default(), &[0]);
    // The banner was written.
    h.input(Input::Written(Side::Client, 11));
    let n = 20_000;
    let flood = b"AUTH\r\n".repeat(n);
    let got = pump_through(&mut h, &flood, Side::Client, OUTPUT_HIGH_WATER + 100);
    let replies: Vec<&[u8]> = got.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(replies.len(), n, "one refusal per AUTH, none lost");
    assert!(replies.iter().all(|r| r.starts_with(b"534 ")));
    assert!(h.p.is_open(h.id));
}

#[test]
fn a_client_line_waits_while_both_queues_together_are_at_the_mark() {
    // A client line may produce output for either side: what it leaves queued for
    // both together is what it may add, so a full server queue and a full client
    // queue cannot be stacked on each other.
    let mut h = H::new(Config::default(), &[0]);
    h.input(Input::Written(Side::Client, 11));
    let blanks = vec![b'\n'; OUTPUT_HIGH_WATER - 1000];
    let a = h.client(&blanks);
    assert_eq!(sent(&a)[idx(Side::Server)].len(), blanks.len());
    let a = h.client(&b"AUTH\r\n".repeat(1000));
    let s = sent(&a);
    let refused = s[idx(Side::Client)].len();
    assert!(
        refused <= 1000 + 100,
        "{refused} bytes of refusals queued on top of {} for the server",
        blanks.len()
    );
    // The server takes its bytes: the commands waiting are answered.
    let a = h.input(Input::Written(Side::Server, blanks.len()));
    assert!(!sent(&a)[idx(Side::Client)].is_empty());
}

#[test]
fn a_long_line_may_pass_the_mark_by_itself_only() {
    let mut h = H::new(Config::default(), &[0]);
    let mut line = vec![b' '; MAX_LINE - 1];
    line.push(b'\n');
    let flood: Vec<u8> = line.repeat(400);
    let a = h.client(&flood);
    let queued = sent(&a)[idx(Side::Server)].len();
    assert!(
        (OUTPUT_HIGH_WATER..OUTPUT_HIGH_WATER + MAX_LINE).contains(&queued),
        "{queued} bytes queued by one input of 500-byte lines"
    );
}
