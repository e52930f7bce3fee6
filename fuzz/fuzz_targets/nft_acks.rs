//! The nftables netlink reply parsers (`pfctl-backend/src/nft/msg.rs`): any datagram
//! the socket could return is parsed without a panic by the acknowledgement and the
//! table-listing parsers, and a datagram built from well-formed messages yields
//! exactly its `NLMSG_ERROR` answers, in order.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use pfctl_backend::nft::{fuzz_parse_acks, fuzz_parse_table_dump};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;

/// One message of a well-formed datagram.
#[derive(Debug, Arbitrary)]
struct Message {
    error: bool,
    other_type: u16,
    seq: u32,
    errno: i32,
    /// Bytes after the header (and after the error code of an `NLMSG_ERROR`).
    extra: u8,
}

fn push(buf: &mut Vec<u8>, m: &Message) {
    let body = if m.error { 4 } else { 0 } + usize::from(m.extra % 40);
    let len = NLMSG_HDRLEN + body;
    let ty = if m.error {
        NLMSG_ERROR
    } else {
        m.other_type.max(3) // neither NOOP/ERROR semantics matter: anything but ERROR
    };
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&m.seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    if m.error {
        // struct nlmsgerr: the negated errno first.
        buf.extend_from_slice(&m.errno.wrapping_neg().to_ne_bytes());
    }
    buf.resize(buf.len() + usize::from(m.extra % 40), 0xa5);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: no panic, and never more answers than room for them.
    let raw = fuzz_parse_acks(data);
    assert!(raw.len() <= data.len() / (NLMSG_HDRLEN + 4));
    // The table-listing parser takes the same datagrams: no panic, and never more
    // tables than messages.
    let seq = data.first().copied().map_or(0, u32::from);
    let (tables, _end) = fuzz_parse_table_dump(data, seq);
    assert!(tables.len() <= data.len() / NLMSG_HDRLEN);

    // Well-formed messages: exactly the error answers come back, in order.
    let mut u = Unstructured::new(data);
    let Ok(messages) = Vec::<Message>::arbitrary(&mut u) else {
        return;
    };
    let mut buf = Vec::new();
    for m in &messages {
        push(&mut buf, m);
    }
    let want: Vec<(u32, i32)> = messages
        .iter()
        .filter(|m| m.error)
        .map(|m| (m.seq, m.errno.wrapping_neg().saturating_neg()))
        .collect();
    assert_eq!(fuzz_parse_acks(&buf), want);
    // A datagram cut anywhere yields a prefix of the answers.
    if !buf.is_empty() {
        let cut = usize::from(u.arbitrary::<u16>().unwrap_or(0)) % buf.len();
        let partial = fuzz_parse_acks(&buf[..cut]);
        assert!(want.starts_with(&partial));
    }
});
