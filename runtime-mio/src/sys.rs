//! Thin wrappers over the system calls std, mio and nix's safe API do not offer:
//! socket options, binds before connect, rlimits, the kernel CSPRNG, the signal
//! handler. All `unsafe` of the crate is here (the crate root denies it elsewhere);
//! each block says why it is sound.
//!
//! A leaf: it imports nothing from the crate. It takes and returns plain values
//! (addresses, descriptors, errnos, a signal bit set); the typed wrappers live with
//! their users (`signal::Signals` owns the pipe whose write end the handler is given).
#![allow(unsafe_code)]

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};

/// Which step of creating a listener failed.
#[derive(Debug)]
pub(crate) enum ListenError {
    Socket(Errno),
    SetSockOpt(Errno),
    Transparent(Errno),
    Bind(Errno),
    Listen(Errno),
}

pub(crate) fn family(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
pub(crate) fn tcp_socket(addr: &SocketAddr) -> Result<OwnedFd, Errno> {
    socket::socket(
        family(addr),
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Sets `IP_TRANSPARENT` (19) or `IPV6_TRANSPARENT` (75); nix only knows the former.
fn set_transparent(fd: &OwnedFd, v6: bool) -> Result<(), Errno> {
    if !v6 {
        return socket::setsockopt(fd, sockopt::IpTransparent, &true);
    }
    #[cfg(target_os = "linux")]
    {
        let one: libc::c_int = 1;
        // SAFETY: fd is a valid socket; the option value is a c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_IPV6,
                libc::IPV6_TRANSPARENT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Errno::result(r).map(drop)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(Errno::ENOPROTOOPT)
    }
}

/// Socket, `SO_REUSEADDR`, optional transparency, bind, listen, non-blocking.
pub(crate) fn listener(
    addr: SocketAddr,
    transparent: bool,
    backlog: usize,
) -> Result<TcpListener, ListenError> {
    let fd = tcp_socket(&addr).map_err(ListenError::Socket)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(ListenError::SetSockOpt)?;
    if addr.is_ipv6() {
        // An explicit [::] listener serves IPv6 only, as on OpenBSD (which has no
        // dual-stack sockets); -6 is how IPv6 is asked for.
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(ListenError::SetSockOpt)?;
    }
    if transparent {
        set_transparent(&fd, addr.is_ipv6()).map_err(ListenError::Transparent)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(ListenError::Bind)?;
    let backlog =
        Backlog::new(backlog.min(i32::MAX as usize) as i32).map_err(ListenError::Listen)?;
    socket::listen(&fd, backlog).map_err(ListenError::Listen)?;
    Ok(TcpListener::from(fd))
}

/// A socket that listens on exactly `addr` for the relay (`SO_REUSEADDR`, non-blocking).
pub(crate) fn data_listener(addr: SocketAddr) -> Result<TcpListener, Errno> {
    let fd = tcp_socket(&addr)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(8)?)?;
    Ok(TcpListener::from(fd))
}

/// Starts a non-blocking connect to `to`, bound to `bind` first if given.
///
/// Returns the socket whose connect is under way (or already done, on loopback).
/// The caller learns the outcome from writability, as mio's `TcpStream::connect` docs say.
pub(crate) fn start_connect(
    to: SocketAddr,
    bind: Option<SocketAddr>,
) -> Result<std::net::TcpStream, ConnectError> {
    let fd = tcp_socket(&to).map_err(ConnectError::Socket)?;
    // SO_REUSEADDR on every outgoing socket: on Linux a relay listener may then bind a
    // proxy port that one of our connected sockets (or its TIME_WAIT) already uses as
    // its local port, since neither is listening. Without it the random proxy port
    // collides with our own ephemeral ports (both draw from 49152-60999) now and then.
    // It also lets a fixed source port (20 with -r) be reused while TIME_WAIT lingers.
    let _ = socket::setsockopt(&fd, sockopt::ReuseAddr, &true);
    // Before connect, so that the very first bytes (the command after the greeting, a
    // relayed data connection's first chunk) never wait on an acknowledgement.
    nodelay(&fd);
    if let Some(b) = bind {
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(b)).map_err(ConnectError::Bind)?;
    }
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(Errno::EINPROGRESS) | Err(Errno::EINTR) => Ok(std::net::TcpStream::from(fd)),
        Err(e) => Err(ConnectError::Connect(e)),
    }
}

/// Which step of [`start_connect`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectError {
    Socket(Errno),
    Bind(Errno),
    Connect(Errno),
}

impl ConnectError {
    pub(crate) fn errno(self) -> Errno {
        match self {
            ConnectError::Socket(e) | ConnectError::Bind(e) | ConnectError::Connect(e) => e,
        }
    }
}

/// `TCP_NODELAY` on, errors ignored (the socket works without it, only slower).
///
/// Without it Nagle's algorithm holds a small write back while an earlier one is
/// unacknowledged, and the peer delays that acknowledgement (40 ms on Linux): a reply
/// that follows another one (`150` then `226`, `350` then `250`) waited that long. The
/// proxy never writes a byte at a time (it forwards whole lines and whole reads), so
/// there is nothing for Nagle to coalesce.
pub(crate) fn nodelay<F: AsFd>(fd: &F) {
    let _ = socket::setsockopt(fd, sockopt::TcpNoDelay, &true);
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
/// Bytes in `fd`'s send queue that the peer has not acknowledged yet (`SIOCOUTQ`).
///
/// The relay's own counters stop once a download sits in the kernel's buffers; this
/// count still falls while the peer reads, so a slow reader is seen as alive.
/// `None` where the query is not available.
#[cfg(target_os = "linux")]
pub(crate) fn unsent_bytes<F: AsFd>(fd: &F) -> Option<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: fd is a valid socket; SIOCOUTQ (TIOCOUTQ) writes one c_int to the
    // pointer, which points at a live c_int.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| u32::try_from(n).unwrap_or(0))
}

/// Not available here: only the relay's own counters count as activity.
#[cfg(not(target_os = "linux"))]
pub(crate) fn unsent_bytes<F: AsFd>(_fd: &F) -> Option<u32> {
    None
}

pub(crate) fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// `SO_KEEPALIVE` on, errors ignored as in the original.
pub(crate) fn keepalive<F: AsFd>(fd: &F) {
    let _ = socket::setsockopt(fd, sockopt::KeepAlive, &true);
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; other addresses are returned unchanged.
pub(crate) fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The destination a NATed (`redirect`) connection originally had.
///
/// The option is chosen by the peer's family: `SOL_IP` for IPv4 and v4-mapped peers,
/// `SOL_IPV6` for native IPv6 (docs/linux.md). `None` when the connection was
/// not NATed (ENOENT) or the system has no such option; the caller then uses getsockname.
#[cfg(target_os = "linux")]
pub(crate) fn original_dst<F: AsFd>(fd: &F, peer: SocketAddr) -> Option<SocketAddr> {
    if unmap(peer).is_ipv4() {
        let sin = socket::getsockopt(fd, sockopt::OriginalDst).ok()?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
    } else {
        let sin6 = socket::getsockopt(fd, sockopt::Ip6tOriginalDst).ok()?;
        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        Some(SocketAddr::new(
            IpAddr::V6(ip),
            u16::from_be(sin6.sin6_port),
        ))
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn original_dst<F: AsFd>(_fd: &F, _peer: SocketAddr) -> Option<SocketAddr> {
    None
}

/// The routing domain an accepted connection arrived in (`SO_RTABLE`), for the
/// session's rules. 0 when it cannot be read.
#[cfg(target_os = "openbsd")]
pub(crate) fn rdomain<F: AsFd>(fd: &F) -> u32 {
    use std::os::fd::AsRawFd;
    let mut rtable: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `rtable` and `len` are live locals of the sizes passed; the descriptor
    // is borrowed for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RTABLE,
            (&mut rtable as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        u32::try_from(rtable).unwrap_or(0)
    } else {
        0
    }
}

/// Linux has no routing domains: every connection is in 0.
#[cfg(not(target_os = "openbsd"))]
pub(crate) fn rdomain<F: AsFd>(_fd: &F) -> u32 {
    0
}

/// Raises `RLIMIT_NOFILE` to `want` (soft and hard) unless both are already at least that.
pub(crate) fn raise_nofile(want: u64) -> Result<(), Errno> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want && hard >= want {
        return Ok(());
    }
    let new_hard = hard.max(want);
    let new_soft = soft.max(want);
    setrlimit(Resource::RLIMIT_NOFILE, new_soft, new_hard)
}

/// Fills `buf` from the kernel CSPRNG. Panics only if the kernel refuses randomness,
/// which leaves nothing safe to do (the original's arc4random cannot fail either).
pub(crate) fn fill_random(buf: &mut [u32]) {
    let len = std::mem::size_of_val(buf);
    let ptr = buf.as_mut_ptr().cast::<u8>();
    let mut done = 0usize;
    let mut tries = 0;
    while done < len {
        #[cfg(target_os = "linux")]
        // SAFETY: ptr+done..ptr+len lies inside `buf`, which we borrow mutably.
        let r = unsafe { libc::getrandom(ptr.add(done).cast(), len - done, 0) };
        #[cfg(not(target_os = "linux"))]
        // SAFETY: as above; getentropy takes at most 256 bytes and fills all or fails.
        let r = unsafe {
            let n = (len - done).min(256);
            if libc::getentropy(ptr.add(done).cast(), n) == 0 {
                n as isize
            } else {
                -1
            }
        };
        if r > 0 {
            done += r as usize;
            continue;
        }
        let e = Errno::last();
        tries += 1;
        assert!(
            e == Errno::EINTR && tries < 100,
            "kernel random source failed: {e}"
        );
    }
}

/// Write end of the wake-up pipe, or -1 when no loop is listening.
static SIGNAL_WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Bit `n` set: signal `n` arrived and was not yet taken.
static SIGNALS_PENDING: AtomicU64 = AtomicU64::new(0);

/// Installs [`on_signal`] for `sigs` (with `SA_RESTART`) and ignores SIGPIPE.
///
/// The handler records each signal for [`take_signals`] and writes one byte to the
/// descriptor [`set_signal_wake`] published, if any.
pub(crate) fn catch_signals(sigs: &[nix::sys::signal::Signal]) -> Result<(), Errno> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for &sig in sigs {
        // SAFETY: the handler is async-signal-safe: it saves and restores errno,
        // touches only this module's atomics and calls write(2).
        unsafe { sigaction(sig, &action) }?;
    }
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no code.
    unsafe { sigaction(Signal::SIGPIPE, &ignore) }?;
    Ok(())
}

/// Publishes the write end of the pipe the handler wakes the loop through (`Some`),
/// or withdraws it (`None`). The caller keeps a published descriptor open until it
/// withdraws it.
pub(crate) fn set_signal_wake(fd: Option<BorrowedFd<'_>>) {
    SIGNAL_WAKE_FD.store(fd.map_or(-1, |fd| fd.as_raw_fd()), Ordering::SeqCst);
}

/// The signals that arrived since the last call, as a bit set (bit `n`: signal `n`).
pub(crate) fn take_signals() -> u64 {
    SIGNALS_PENDING.swap(0, Ordering::SeqCst)
}

/// The signal handler: records the signal and wakes the loop through the self-pipe.
/// Only touches atomics and calls write(2), so it is async-signal-safe.
extern "C" fn on_signal(sig: libc::c_int) {
    let saved = Errno::last_raw();
    if (0..64).contains(&sig) {
        SIGNALS_PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    }
    let fd = SIGNAL_WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; fd is the pipe's write end, kept open
        // while it is published (`set_signal_wake`). A full pipe (EAGAIN) still leaves
        // the loop woken.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    Errno::set_raw(saved);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmap_turns_mapped_into_v4_only() {
        let m: SocketAddr = "[::ffff:10.1.2.3]:21".parse().unwrap();
        assert_eq!(unmap(m), "10.1.2.3:21".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:21".parse().unwrap();
        assert_eq!(unmap(v6), v6);
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(unmap(v4), v4);
    }

    #[test]
    fn random_fills_whole_buffer() {
        let mut a = [0u32; 64];
        fill_random(&mut a);
        // 64 zero words from a CSPRNG would be a 2^-2048 event: this catches a short fill.
        assert!(a.iter().any(|&w| w != 0));
        assert!(a[32..].iter().any(|&w| w != 0));
    }
}
