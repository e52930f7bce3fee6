//! The byte copy between the two sockets of a relayed data connection.
//!
//! Kept behind this small type so that a zero-copy `splice(2)` variant (through a
//! kernel pipe) can replace it without touching the relay's state machine: the relay
//! only asks "read into it", "write out of it", "is it empty / full".

use std::io::{self, Read, Write};

/// A bounded buffer for one direction of a data connection.
///
/// Its capacity is the backpressure: when it is full the relay stops reading the
/// source until the destination has drained some of it.
#[derive(Debug)]
pub(crate) struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    moved: u64,
}

impl Pipe {
    /// An empty pipe holding at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Pipe {
        Pipe {
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            moved: 0,
        }
    }

    /// Whether nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether no more can be read in before something is written out.
    pub(crate) fn is_full(&self) -> bool {
        self.end - self.start == self.buf.len()
    }

    /// Bytes written out so far.
    pub(crate) fn moved(&self) -> u64 {
        self.moved
    }

    /// One `read` from `src` into the free space. `Ok(0)` is end of file (never
    /// returned because the pipe is full: callers check [`is_full`](Self::is_full)).
    pub(crate) fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
        debug_assert!(!self.is_full());
        if self.end == self.buf.len() {
            // Free space only at the front: move the pending bytes down.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// One `write` of the pending bytes to `dst`.
    pub(crate) fn drain(&mut self, dst: &mut impl Write) -> io::Result<usize> {
        let n = dst.write(&self.buf[self.start..self.end])?;
        if n == 0 && !self.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.start += n;
        self.moved += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes per call.
    struct Slow {
        out: Vec<u8>,
        max: usize,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.max);
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_come_out_in_order_across_compaction() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut src = &data[..];
        let mut dst = Slow {
            out: Vec::new(),
            max: 13,
        };
        let mut p = Pipe::new(64);
        loop {
            if !p.is_full() && p.fill(&mut src).unwrap() == 0 && p.is_empty() {
                break;
            }
            if !p.is_empty() {
                p.drain(&mut dst).unwrap();
            }
        }
        assert_eq!(dst.out, data);
        assert_eq!(p.moved(), data.len() as u64);
    }

    #[test]
    fn full_pipe_reports_full() {
        let mut p = Pipe::new(4);
        let mut src: &[u8] = b"abcdef";
        assert_eq!(p.fill(&mut src).unwrap(), 4);
        assert!(p.is_full());
        let mut dst = Slow {
            out: Vec::new(),
            max: 1,
        };
        p.drain(&mut dst).unwrap();
        assert!(!p.is_full());
        assert_eq!(p.fill(&mut src).unwrap(), 1);
        assert!(p.is_full());
    }
}
