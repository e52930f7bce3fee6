//! TLS records read ahead of rustls: one `recv` carries several records.
//!
//! rustls reads its records itself ([`rustls::Connection::read_tls`]) into a
//! deframing buffer of at most one record's size (about 16 KiB): relayed that
//! way, a bulk transfer costs one `recv(2)` per record. A [`Staging`] buffer
//! takes [`STAGING_CAPACITY`] bytes off the socket at once, and rustls is fed
//! from it, record by record, with [`process_new_packets`] in between (the
//! relay does that, [`crate::relay`]). Records are cut wherever the socket
//! cut them: rustls keeps a partial record's head and waits for the rest,
//! which the next `recv` brings.
//!
//! The buffer exists only while its data connection does: it is allocated by
//! the first read and freed with the leg.
//!
//! [`process_new_packets`]: rustls::Connection::process_new_packets

use std::io::{self, Read};

use rustls::Connection;

/// Bytes one `recv` may take off a TLS leg's socket: four full records.
pub(crate) const STAGING_CAPACITY: usize = 64 * 1024;

/// Ciphertext read from a TLS leg's socket that rustls has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    /// Allocated by the first [`recv`](Self::recv).
    buf: Option<Box<[u8]>>,
    /// `buf[start..end]` is waiting for rustls.
    start: usize,
    end: usize,
}

impl Staging {
    /// Whether rustls has taken everything read.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// One read from `src` into the (empty) buffer; `Ok(0)` is end of file.
    pub(crate) fn recv(&mut self, src: &mut impl Read) -> io::Result<usize> {
        debug_assert!(self.is_empty());
        let buf = self
            .buf
            .get_or_insert_with(|| vec![0; STAGING_CAPACITY].into_boxed_slice());
        let n = src.read(buf)?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }

    /// Hands rustls what it takes of the waiting bytes (at most a record's
    /// worth per call); the caller runs `process_new_packets` next. `Ok(0)`
    /// with bytes waiting: rustls has had a close_notify and takes nothing more,
    /// so the rest is dropped. Never called empty: rustls takes an empty read
    /// for the end of the TCP stream.
    pub(crate) fn feed(&mut self, conn: &mut Connection) -> io::Result<usize> {
        debug_assert!(!self.is_empty());
        let Some(buf) = self.buf.as_deref() else {
            return Ok(0);
        };
        let mut waiting = &buf[self.start..self.end];
        let n = conn.read_tls(&mut waiting)?;
        if n == 0 {
            self.end = self.start;
        }
        self.start += n;
        Ok(n)
    }

    /// Gives the buffer back (the source has ended).
    pub(crate) fn release(&mut self) {
        *self = Staging::default();
    }
}
