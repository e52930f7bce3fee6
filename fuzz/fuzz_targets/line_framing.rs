//! Control-channel line framing (`core/src/line.rs`): bytes arriving in arbitrary
//! chunks must be cut into the same lines, with the same verdict, as the whole
//! stream scanned at once, and never altered.

#![no_main]

use arbitrary::Unstructured;
use ftp_proxy_core::internals::{LineBuf, MAX_LINE};
use libfuzzer_sys::fuzz_target;

/// The framing rule stated on its own: a line ends at the first LF within
/// `MAX_LINE` bytes; a NUL before it, or `MAX_LINE` bytes without one, is fatal.
/// Returns the lines, whether the stream failed, and the bytes left waiting.
fn reference(mut stream: &[u8]) -> (Vec<&[u8]>, bool, usize) {
    let mut lines = Vec::new();
    loop {
        let window = &stream[..stream.len().min(MAX_LINE)];
        match window.iter().position(|&b| b == b'\n' || b == 0) {
            Some(i) if stream[i] == b'\n' => {
                lines.push(&stream[..=i]);
                stream = &stream[i + 1..];
            }
            Some(_) => return (lines, true, stream.len()),
            None if window.len() == MAX_LINE => return (lines, true, stream.len()),
            None => return (lines, false, stream.len()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // The first bytes choose the chunk sizes, the rest is the stream.
    let sizes: Vec<u16> = (0..16)
        .map(|_| u.arbitrary::<u16>().unwrap_or(1) % 700)
        .collect();
    let stream = u.take_rest();

    let mut lb = LineBuf::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    let mut rest = stream;
    let mut k = 0;
    'feed: while !rest.is_empty() {
        let n = (usize::from(sizes[k % sizes.len()]) + 1).min(rest.len());
        k += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        lb.push(chunk);
        loop {
            match lb.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= MAX_LINE);
                    got.push(line.to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
        assert!(
            lb.len() < MAX_LINE,
            "{} bytes buffered without a verdict",
            lb.len()
        );
    }

    let (want, want_failed, left) = reference(stream);
    assert_eq!(got.len(), want.len(), "line count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), *w);
    }
    assert_eq!(failed, want_failed, "verdict");
    if !failed {
        assert_eq!(lb.len(), left, "bytes left waiting");
        assert_eq!(lb.is_empty(), left == 0);
    }
});
