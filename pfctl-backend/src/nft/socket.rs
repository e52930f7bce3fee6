//! The persistent `NETLINK_NETFILTER` socket.
//!
//! One socket for the life of the backend: a batch costs one `sendto` and one or two
//! `recv`s (about 20 µs), whereas a fresh socket per batch pays ~15 ms in `close()` after
//! any batch that deleted something (an RCU grace period; docs/performance.md).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;
use std::time::Duration;

use super::msg::{
    ct_delete_request, ct_dump_request, get_elem_request, parse_acks, parse_ct_dump,
    parse_table_dump, table_dump_request, Ack, Batch, CtEntry, Element, TableInfo,
};

/// `SOL_NETLINK` options (`<linux/netlink.h>`).
const SOL_NETLINK: libc::c_int = 270;
/// Acks carry only the failing message's header, not its whole payload.
const NETLINK_CAP_ACK: libc::c_int = 10;
/// How long to wait for the kernel's answer before calling the batch failed. The kernel
/// answers within microseconds; this only bounds a wait that cannot otherwise end.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on the datagrams of one conntrack dump: far more than the proxy's
/// connections fill (a datagram holds dozens of entries), and still finite.
const MAX_DUMP_DATAGRAMS: usize = 100_000;

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
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        // Port id 0: the kernel picks one.
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // Failure is harmless (older kernels): acks are then longer, and the receive
        // buffer is large enough.
        let _ = crate::sys::setsockopt_int(fd.as_fd(), SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let timeout = TimeVal::new(RECV_TIMEOUT.as_secs() as libc::time_t, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
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

    /// Whether `e` is in its set now. Bounded: the answer is one element message and
    /// one ack (or an error), read in at most 16 datagrams, each within the socket's
    /// timeout.
    pub(crate) fn has_elem(&mut self, table: &str, e: &Element) -> Result<bool, BatchError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(&get_elem_request(seq, table, e))
            .map_err(BatchError::Io)?;
        for _ in 0..16 {
            let n = self.recv().map_err(BatchError::Io)?;
            if let Some(ack) = parse_acks(&self.buf[..n])
                .into_iter()
                .find(|a| a.seq == seq)
            {
                return match ack.errno {
                    0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    errno => Err(BatchError::Kernel { errno, seq }),
                };
            }
        }
        Err(BatchError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "no answer to an element query",
        )))
    }

    /// The conntrack entries with mark `mark`, all families (`conntrack -L -m <mark>`,
    /// over this socket). Bounded: each datagram either ends the dump or adds to it, a
    /// silent kernel ends it with a timeout, and at most [`MAX_DUMP_DATAGRAMS`] are read.
    pub(crate) fn conntrack(&mut self, mark: u32) -> Result<Vec<CtEntry>, BatchError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(&ct_dump_request(seq, mark))
            .map_err(BatchError::Io)?;
        let mut entries = Vec::new();
        for _ in 0..MAX_DUMP_DATAGRAMS {
            let n = self.recv().map_err(BatchError::Io)?;
            let part = parse_ct_dump(&self.buf[..n], seq);
            entries.extend(part.entries);
            match part.end {
                None => {}
                Some(0) => return Ok(entries),
                Some(errno) => return Err(BatchError::Kernel { errno, seq }),
            }
        }
        Err(BatchError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "conntrack dump did not end",
        )))
    }

    /// Deletes one conntrack entry; an entry that is gone already (ENOENT) counts as
    /// deleted. Bounded as [`NlSocket::has_elem`].
    pub(crate) fn delete_conntrack(&mut self, e: &CtEntry) -> Result<(), BatchError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.send(&ct_delete_request(seq, e))
            .map_err(BatchError::Io)?;
        for _ in 0..16 {
            let n = self.recv().map_err(BatchError::Io)?;
            if let Some(ack) = parse_acks(&self.buf[..n])
                .into_iter()
                .find(|a| a.seq == seq)
            {
                return match ack.errno {
                    0 | libc::ENOENT => Ok(()),
                    errno => Err(BatchError::Kernel { errno, seq }),
                };
            }
        }
        Err(BatchError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "no answer to a conntrack delete",
        )))
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // To the kernel: port id 0, no groups.
        let kernel = NetlinkAddr::new(0, 0);
        loop {
            match sendto(self.fd.as_raw_fd(), bytes, &kernel, MsgFlags::empty()) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short netlink send",
                    ))
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn recv(&mut self) -> io::Result<usize> {
        loop {
            let e = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => return Ok(n),
                Err(e) => io::Error::from(e),
            };
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
