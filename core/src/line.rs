//! Control-channel line framing, as ftp-proxy(8)'s `get_line` does it.
//!
//! A line ends at the first LF (CR has no meaning of its own) and may be at most
//! [`MAX_LINE`] bytes including that LF. A NUL byte, or [`MAX_LINE`] bytes without an
//! LF, is fatal for the session. Partial lines wait for more data; bytes are never
//! altered.

// `pub` for the `internals` feature (the simulation's oracle); crate-private
// otherwise.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub, dead_code))]

use bytes::{Bytes, BytesMut};

/// Longest accepted line, LF included (`MAX_LINE`).
pub const MAX_LINE: usize = 500;

/// The framing error: the line is too long or holds a NUL byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotClean;

/// Accumulates one direction's bytes and cuts them into lines.
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: BytesMut,
    /// Bytes at the front already known to hold neither LF nor NUL, so that a line
    /// arriving a byte at a time is scanned once, not quadratically.
    scanned: usize,
}

impl LineBuf {
    /// An empty buffer.
    pub fn new() -> LineBuf {
        LineBuf::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as lines.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the buffered bytes begin with `prefix`.
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        self.buf.starts_with(prefix)
    }

    /// The next complete line (LF included) without taking it; `None` if no LF
    /// is buffered yet. [`next_line`](Self::next_line) still judges it.
    pub fn peek_line(&self) -> Option<&[u8]> {
        let end = self.buf.iter().take(MAX_LINE).position(|&b| b == b'\n')?;
        Some(&self.buf[..=end])
    }

    /// Takes every byte buffered, unparsed: what followed an `AUTH` line is TLS, not
    /// lines.
    pub fn take_all(&mut self) -> Bytes {
        self.scanned = 0;
        self.buf.split().freeze()
    }

    /// The next complete line (LF included), `Ok(None)` if more data is needed.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, NotClean> {
        let limit = self.buf.len().min(MAX_LINE);
        for i in self.scanned..limit {
            match self.buf[i] {
                b'\n' => {
                    self.scanned = 0;
                    return Ok(Some(self.buf.split_to(i + 1).freeze()));
                }
                0 => return Err(NotClean),
                _ => {}
            }
        }
        self.scanned = limit;
        if limit == MAX_LINE {
            return Err(NotClean);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, NotClean> {
        let mut lb = LineBuf::new();
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c);
            while let Some(l) = lb.next_line()? {
                out.push(l.to_vec());
            }
        }
        Ok(out)
    }

    #[test]
    fn splits_at_lf_and_keeps_bytes() {
        let out = lines(&[b"USER a\r\nPA", b"SS b\nNO", b"OP\r", b"\n"]).unwrap();
        assert_eq!(
            out,
            vec![
                b"USER a\r\n".to_vec(),
                b"PASS b\n".to_vec(),
                b"NOOP\r\n".to_vec()
            ]
        );
    }

    #[test]
    fn five_hundred_bytes_pass_five_hundred_one_fail() {
        let mut ok = vec![b'a'; 498];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(lines(&[&ok]).unwrap(), vec![ok.clone()]);
        let mut bad = vec![b'a'; 499];
        bad.extend_from_slice(b"\r\n");
        assert_eq!(lines(&[&bad]), Err(NotClean));
        // Also when the long line arrives one byte at a time.
        let bytes: Vec<&[u8]> = bad.chunks(1).collect();
        assert_eq!(lines(&bytes), Err(NotClean));
    }

    #[test]
    fn partial_line_below_limit_waits() {
        let mut lb = LineBuf::new();
        lb.push(&[b'x'; 499]);
        assert_eq!(lb.next_line(), Ok(None));
        lb.push(b"\n");
        assert_eq!(lb.next_line().unwrap().unwrap().len(), 500);
    }

    #[test]
    fn nul_is_fatal_even_before_lf() {
        assert_eq!(lines(&[b"NO\0OP\r\n"]), Err(NotClean));
        assert_eq!(lines(&[b"NO\0"]), Err(NotClean));
        // A NUL after the LF belongs to the next line, which fails in turn.
        assert_eq!(lines(&[b"A\n\0"]), Err(NotClean));
    }

    #[test]
    fn high_bytes_pass_untouched() {
        let out = lines(&[b"CWD \xff\xfe\xc3\xa9\r\n"]).unwrap();
        assert_eq!(out[0], b"CWD \xff\xfe\xc3\xa9\r\n");
    }
}
