//! The persistent `NETLINK_NETFILTER` socket.
//!
//! One socket for the life of the backend: a batch costs one `sendto` and one or two
//! `recv`s (about 20 µs), whereas a fresh socket per batch pays ~15 ms in `close()` after
//! any batch that deleted something (an RCU grace period; docs/performance.md).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::msg::{parse_acks, parse_table_dump, table_dump_request, Ack, Batch, TableInfo};

/// `SOL_NETLINK` options (`<linux/netlink.h>`).
const SOL_NETLINK: libc::c_int = 270;
/// Acks carry only the failing message's header, not its whole payload.
const NETLINK_CAP_ACK: libc::c_int = 10;
/// How long to wait for the kernel's answer before calling the batch failed. The kernel
/// answers within microseconds; this only bounds a wait that cannot otherwise end.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a batch failed, before mapping to the core's `FilterError`.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// The kernel rejected a message (or the whole batch) with this errno.
    Kernel { errno: i32, seq: u32 },
    /// The socket itself failed (send, receive, timeout).
    Io(io::Error),
}

/// A bound `NETLINK_NETFILTER` socket.
pub(crate) struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens and binds the socket (port id chosen by the kernel).
    pub(crate) fn open() -> io::Result<NlSocket> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid value (pid 0 = kernel picks).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: the option value is a c_int that outlives the call. Failure is harmless
        // (older kernels): acks are then longer, and the receive buffer is large enough.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_CAP_ACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Start from a time-derived number so that stray answers to an earlier process's
        // socket (impossible with a kernel-assigned port id, but cheap to rule out) never
        // match.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(NlSocket {
            fd,
            seq,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Starts a batch numbered after the previous one.
    pub(crate) fn batch(&mut self) -> Batch {
        Batch::new(self.seq)
    }

    /// Sends a batch and waits for every ack. The kernel commits or aborts the whole
    /// batch; on abort, the first error reported (in message order) is returned.
    pub(crate) fn execute(&mut self, batch: Batch) -> Result<(), BatchError> {
        let begin = batch.begin_seq();
        let (first, count) = batch.acked_seqs();
        self.seq = first.wrapping_add(count).wrapping_add(1);
        let bytes = batch.finish();
        self.send(&bytes).map_err(BatchError::Io)?;

        let mut pending = count;
        let mut first_error: Option<Ack> = None;
        // Bounded: each iteration either consumes at least one ack or fails on timeout.
        while pending > 0 {
            let n = self.recv().map_err(BatchError::Io)?;
            for ack in parse_acks(&self.buf[..n]) {
                if ack.seq == begin && ack.errno != 0 {
                    // The whole batch was refused (EPERM without CAP_NET_ADMIN).
                    return Err(BatchError::Kernel {
                        errno: ack.errno,
                        seq: ack.seq,
                    });
                }
                if !in_range(first, count, ack.seq) {
                    continue; // a late answer to an earlier, timed-out batch
                }
                pending = pending.saturating_sub(1);
                let earlier = match first_error {
                    None => true,
                    Some(e) => seq_before(ack.seq, e.seq),
                };
                if ack.errno != 0 && earlier {
                    first_error = Some(ack);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(BatchError::Kernel {
                errno: e.errno,
                seq: e.seq,
            }),
        }
    }

    /// Lists every `inet` table with its flags and owner (`nft list tables`, over this
    /// socket). Bounded: each datagram either ends the dump or adds to it, and a silent
    /// kernel ends it with a timeout; at most 10 000 datagrams are read.
    pub(crate) fn tables(&mut self) -> Result<Vec<TableInfo>, BatchError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(&table_dump_request(seq))
            .map_err(BatchError::Io)?;
        let mut tables = Vec::new();
        for _ in 0..10_000 {
            let n = self.recv().map_err(BatchError::Io)?;
            let part = parse_table_dump(&self.buf[..n], seq);
            tables.extend(part.tables);
            match part.end {
                None => {}
                Some(0) => return Ok(tables),
                Some(errno) => return Err(BatchError::Kernel { errno, seq }),
            }
        }
        Err(BatchError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "table dump did not end",
        )))
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl zeroed = the kernel (pid 0, no groups).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: bytes and sa are valid for the lengths passed.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                    0,
                    &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return if n as usize == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short netlink send",
                    ))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from nf_tables",
                    ))
                }
                _ => return Err(e),
            }
        }
    }
}

/// Whether `seq` is one of the `count` numbers from `first`, allowing for wrap-around
/// of the 32-bit counter.
fn in_range(first: u32, count: u32, seq: u32) -> bool {
    seq.wrapping_sub(first) < count
}

/// Whether `a` was sent before `b` (serial-number arithmetic).
fn seq_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_ranges_wrap() {
        assert!(in_range(u32::MAX - 1, 3, u32::MAX - 1));
        assert!(in_range(u32::MAX - 1, 3, u32::MAX));
        assert!(in_range(u32::MAX - 1, 3, 0));
        assert!(!in_range(u32::MAX - 1, 3, 1));
        assert!(!in_range(u32::MAX - 1, 3, u32::MAX - 2));
        assert!(seq_before(u32::MAX, 0));
        assert!(!seq_before(3, 2));
    }
}
