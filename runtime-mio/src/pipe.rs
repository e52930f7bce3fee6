//! The byte mover between the two sockets of a relayed data connection.
//!
//! The relay only asks "fill from that socket", "drain into that one", "empty? full?";
//! how the bytes travel is this module's business. Two ways:
//!
//! * [`CopyBuf`]: a user-space buffer (`read` then `write`), everywhere.
//! * On Linux, a kernel pipe with `splice(2)` on both sides: the payload never enters
//!   user space. It costs two descriptors per direction; when they cannot be had the
//!   pair falls back to copying.

use std::io::{self, ErrorKind, Read, Write};

use mio::net::TcpStream;

/// A kernel pipe asks for this many times the copy buffer's capacity (1 MiB for the
/// relay's 64 KiB). A splice from a socket fills one pipe slot per page fragment, so
/// the slot count, not the byte size, bounds each call: 256 KiB pipes moved about
/// 190 KB per call, 1 MiB pipes cut the splice and epoll_wait calls per GiB and the
/// relay's CPU time (docs/performance.md). The pages are the kernel's, lent while in
/// flight: an idle pipe costs no memory, and the proxy's RSS does not grow.
const SPLICE_WINDOW_FACTOR: usize = 16;

/// What one fill attempt achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// This many bytes moved in.
    Bytes(usize),
    /// The source reached end of file.
    Eof,
    /// The source has nothing now (clear its readiness).
    SourceEmpty,
    /// The buffer could take nothing more although it is not known to be full (a
    /// kernel pipe out of slots): drain first, the source stays ready.
    NoRoom,
}

/// A bounded buffer for one direction of a data connection. Its capacity is the
/// backpressure: when it is full the relay stops reading the source.
#[derive(Debug)]
pub(crate) enum Pipe {
    /// Through user space.
    Copy(CopyBuf),
    /// Through a kernel pipe (Linux).
    #[cfg(target_os = "linux")]
    Splice(splice::KernelPipe),
}

impl Pipe {
    /// A pipe of about `cap` bytes: a kernel pipe if `zero_copy` and one can be made,
    /// a user-space buffer otherwise.
    pub(crate) fn new(cap: usize, zero_copy: bool) -> Pipe {
        #[cfg(target_os = "linux")]
        if zero_copy {
            // A larger window than the copy buffer's: splice moves page references, and
            // 64 KiB pipes measured slower than copying (benches/relay_throughput.rs).
            match splice::KernelPipe::new(cap * SPLICE_WINDOW_FACTOR) {
                Ok(p) => return Pipe::Splice(p),
                Err(e) => log::debug!("relay: no kernel pipe ({e}), copying"),
            }
        }
        let _ = zero_copy;
        Pipe::Copy(CopyBuf::new(cap))
    }

    /// Whether nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Pipe::Copy(b) => b.is_empty(),
            #[cfg(target_os = "linux")]
            Pipe::Splice(p) => p.pending == 0,
        }
    }

    /// Whether no more can be taken in before something is written out.
    pub(crate) fn is_full(&self) -> bool {
        match self {
            Pipe::Copy(b) => b.is_full(),
            #[cfg(target_os = "linux")]
            Pipe::Splice(p) => p.pending >= p.cap,
        }
    }

    /// Bytes written out so far.
    pub(crate) fn moved(&self) -> u64 {
        match self {
            Pipe::Copy(b) => b.moved(),
            #[cfg(target_os = "linux")]
            Pipe::Splice(p) => p.moved,
        }
    }

    /// One attempt to take bytes from `src` (callers check [`is_full`](Self::is_full)).
    pub(crate) fn fill(&mut self, src: &mut TcpStream) -> io::Result<Filled> {
        match self {
            Pipe::Copy(b) => match b.fill(src) {
                Ok(0) => Ok(Filled::Eof),
                Ok(n) => Ok(Filled::Bytes(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Filled::SourceEmpty),
                Err(e) => Err(e),
            },
            #[cfg(target_os = "linux")]
            Pipe::Splice(p) => p.fill(src),
        }
    }

    /// One attempt to write pending bytes to `dst`; `WouldBlock` when it takes none.
    pub(crate) fn drain(&mut self, dst: &mut TcpStream) -> io::Result<usize> {
        match self {
            Pipe::Copy(b) => b.drain(dst),
            #[cfg(target_os = "linux")]
            Pipe::Splice(p) => p.drain(dst),
        }
    }
}

impl Pipe {
    /// [`fill`](Self::fill) from any reader: the plaintext of a TLS leg. Only a
    /// copying pipe can (a TLS pair is always made with one).
    pub(crate) fn fill_from(&mut self, src: &mut impl Read) -> io::Result<Filled> {
        match self {
            Pipe::Copy(b) => match b.fill(src) {
                Ok(0) => Ok(Filled::Eof),
                Ok(n) => Ok(Filled::Bytes(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Filled::SourceEmpty),
                Err(e) => Err(e),
            },
            #[cfg(target_os = "linux")]
            Pipe::Splice(_) => Err(ErrorKind::Unsupported.into()),
        }
    }

    /// Counts `n` bytes that went from the source to the destination without
    /// entering the buffer (a TLS source's plaintext written straight into the
    /// destination's TLS writer or socket): moved all the same. Only while the
    /// buffer is empty, so nothing overtakes what it held.
    pub(crate) fn passed(&mut self, n: usize) {
        debug_assert!(self.is_empty());
        match self {
            Pipe::Copy(b) => b.moved += n as u64,
            #[cfg(target_os = "linux")]
            Pipe::Splice(p) => p.moved += n as u64,
        }
    }

    /// [`drain`](Self::drain) into any writer: the plaintext side of a TLS leg.
    pub(crate) fn drain_into(&mut self, dst: &mut impl Write) -> io::Result<usize> {
        match self {
            Pipe::Copy(b) => b.drain(dst),
            #[cfg(target_os = "linux")]
            Pipe::Splice(_) => Err(ErrorKind::Unsupported.into()),
        }
    }
}

/// A user-space buffer: `read` into the free space, `write` out of the pending bytes.
#[derive(Debug)]
pub(crate) struct CopyBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    moved: u64,
}

impl CopyBuf {
    /// An empty buffer holding at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> CopyBuf {
        CopyBuf {
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            moved: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn is_full(&self) -> bool {
        self.end - self.start == self.buf.len()
    }

    fn moved(&self) -> u64 {
        self.moved
    }

    /// One `read` from `src` into the free space; `Ok(0)` is end of file.
    fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
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
    fn drain(&mut self, dst: &mut impl Write) -> io::Result<usize> {
        let n = dst.write(&self.buf[self.start..self.end])?;
        if n == 0 && !self.is_empty() {
            return Err(ErrorKind::WriteZero.into());
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

#[cfg(target_os = "linux")]
pub(crate) mod splice {
    //! `splice(2)` through a kernel pipe.

    use std::io::{self, ErrorKind};
    use std::os::fd::{AsRawFd, OwnedFd};

    use mio::net::TcpStream;
    use nix::errno::Errno;
    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    use nix::unistd::pipe2;

    use super::Filled;

    /// A non-blocking kernel pipe and the count of bytes in it.
    #[derive(Debug)]
    pub(crate) struct KernelPipe {
        r: OwnedFd,
        w: OwnedFd,
        pub(super) pending: usize,
        pub(super) cap: usize,
        pub(super) moved: u64,
    }

    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
    }

    impl KernelPipe {
        pub(crate) fn new(cap: usize) -> io::Result<KernelPipe> {
            let (r, w) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            // Ask for `cap`; the kernel may round up, or refuse above pipe-max-size or
            // once this user's pipes hold pipe-user-pages-soft pages (64 MiB by default:
            // 32 pairs at 1 MiB). Then a quarter, then the default (64 KiB) stays. Use
            // whatever it reports.
            for want in [cap, cap / 4] {
                let want = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
                if fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(want)).is_ok_and(|r| r > 0) {
                    break;
                }
            }
            let got = fcntl(w.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)?;
            let cap = usize::try_from(got)
                .ok()
                .filter(|&c| c > 0)
                .ok_or_else(|| io::Error::other("F_GETPIPE_SZ reported no capacity"))?;
            Ok(KernelPipe {
                r,
                w,
                pending: 0,
                cap,
                moved: 0,
            })
        }

        pub(super) fn fill(&mut self, src: &mut TcpStream) -> io::Result<Filled> {
            let room = self.cap - self.pending;
            debug_assert!(room > 0);
            match splice(&*src, None, &self.w, None, room, flags()) {
                Ok(0) => Ok(Filled::Eof),
                Ok(n) => {
                    self.pending += n;
                    Ok(Filled::Bytes(n))
                }
                // With bytes in the pipe, EAGAIN may mean "no free pipe slot" (each
                // holds a partly used page) rather than "no data": keep the source
                // ready and let the drain decide.
                Err(Errno::EAGAIN) if self.pending > 0 => Ok(Filled::NoRoom),
                Err(Errno::EAGAIN) => Ok(Filled::SourceEmpty),
                Err(Errno::EINTR) => Ok(Filled::Bytes(0)),
                Err(e) => Err(e.into()),
            }
        }

        pub(super) fn drain(&mut self, dst: &mut TcpStream) -> io::Result<usize> {
            let n = splice(&self.r, None, &*dst, None, self.pending, flags())?;
            if n == 0 {
                return Err(ErrorKind::WriteZero.into());
            }
            self.pending -= n;
            self.moved += n as u64;
            Ok(n)
        }
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
        let mut p = CopyBuf::new(64);
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

    /// Tiny segments, a destination that is not read for a while, the whole stream
    /// checked: exercises the kernel pipe's "no free slot" case if the kernel keeps the
    /// segments apart, and must be byte-exact either way.
    #[test]
    fn both_pipes_move_tiny_segments_exactly() {
        use std::net::{TcpListener, TcpStream as StdStream};
        for zero_copy in [false, true] {
            let pair = || {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let a = StdStream::connect(l.local_addr().unwrap()).unwrap();
                let (b, _) = l.accept().unwrap();
                (a, b)
            };
            let (mut a, b) = pair();
            let (c, mut d) = pair();
            a.set_nodelay(true).unwrap();
            b.set_nonblocking(true).unwrap();
            c.set_nonblocking(true).unwrap();
            let (mut b, mut c) = (TcpStream::from_std(b), TcpStream::from_std(c));
            let mut p = Pipe::new(64, zero_copy);
            let sent: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
            let writer = {
                let sent = sent.clone();
                std::thread::spawn(move || {
                    for chunk in sent.chunks(3) {
                        a.write_all(chunk).unwrap();
                    }
                    a.shutdown(std::net::Shutdown::Write).unwrap();
                })
            };
            let mut eof = false;
            // Bounded: 3000 bytes in at least 1-byte steps, with slack for empty polls.
            for _ in 0..2_000_000 {
                if eof && p.is_empty() {
                    break;
                }
                if !eof && !p.is_full() {
                    match p.fill(&mut b).unwrap() {
                        Filled::Eof => eof = true,
                        Filled::Bytes(_) | Filled::SourceEmpty | Filled::NoRoom => {}
                    }
                }
                if !p.is_empty() {
                    match p.drain(&mut c) {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("drain: {e}"),
                    }
                }
            }
            assert!(
                eof && p.is_empty(),
                "zero_copy={zero_copy}: stream not finished"
            );
            writer.join().unwrap();
            drop(c);
            let mut got = Vec::new();
            d.read_to_end(&mut got).unwrap();
            assert_eq!(got, sent, "zero_copy={zero_copy}");
            assert_eq!(p.moved(), sent.len() as u64);
            #[cfg(target_os = "linux")]
            assert_eq!(
                matches!(p, Pipe::Splice(_)),
                zero_copy,
                "a kernel pipe is used on Linux"
            );
        }
    }

    #[test]
    fn full_buffer_reports_full() {
        let mut p = CopyBuf::new(4);
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
