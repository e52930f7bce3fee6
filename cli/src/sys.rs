//! The system calls of the daemon that neither std nor nix's safe API offer:
//! `getaddrinfo(3)`, `syslog(3)`, `fork`/`_exit`, `close_range(2)`, the capability
//! calls, `getrtable(2)`. All `unsafe` of the crate is here (the crate root denies it
//! elsewhere); each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

use nix::errno::Errno;
use nix::unistd::ForkResult;

/// `getaddrinfo(3)` with hints of `family`, `SOCK_STREAM` and `flags`: the first
/// result (`None` if it is neither IPv4 nor IPv6), or the `EAI_*` code.
pub(crate) fn getaddrinfo(
    host: &CStr,
    service: Option<&CStr>,
    family: libc::c_int,
    flags: libc::c_int,
) -> Result<Option<SocketAddr>, i32> {
    // SAFETY: an all-zero addrinfo is the documented way to start a hints struct.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = family;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = flags;

    let mut res: *mut libc::addrinfo = ptr::null_mut();
    // SAFETY: host and service are NUL-terminated and outlive the call; hints is
    // initialised; res receives a list we free below.
    let rc = unsafe {
        libc::getaddrinfo(
            host.as_ptr(),
            service.map_or(ptr::null(), CStr::as_ptr),
            &hints,
            &mut res,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    // SAFETY: on success res points to at least one addrinfo; its ai_addr holds
    // ai_addrlen bytes of the family it names. The list is freed exactly once.
    let first = unsafe {
        let ai = &*res;
        let addr = sockaddr_to_std(ai.ai_addr, ai.ai_addrlen);
        libc::freeaddrinfo(res);
        addr
    };
    Ok(first)
}

/// `gai_strerror(3)` as an owned string.
pub(crate) fn gai_strerror(code: i32) -> String {
    // SAFETY: gai_strerror returns a pointer to a static NUL-terminated string.
    unsafe {
        let p = libc::gai_strerror(code);
        if p.is_null() {
            return format!("resolver error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Copies an IPv4 or IPv6 `sockaddr` into a [`SocketAddr`].
///
/// # Safety
/// `sa` must point to `len` readable bytes of a socket address.
unsafe fn sockaddr_to_std(sa: *const libc::sockaddr, len: libc::socklen_t) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    let len = len as usize;
    match i32::from((*sa).sa_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            let sin = &*(sa as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `openlog(3)`. The ident must be static: the C library keeps the pointer.
pub(crate) fn openlog(ident: &'static CStr, option: libc::c_int, facility: libc::c_int) {
    // SAFETY: ident is a NUL-terminated string that lives for the whole program.
    unsafe { libc::openlog(ident.as_ptr(), option, facility) };
}

/// `syslog(3)` of `msg` at `priority`, passed through `"%s"`.
pub(crate) fn syslog(priority: libc::c_int, msg: &CStr) {
    // SAFETY: both strings are NUL-terminated; "%s" keeps the message from being
    // read as a format string.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
}

/// `fork(2)` for a process that has a single thread, so that the child may run
/// any code. On Linux the thread count is checked (`/proc/self/task`), and a
/// process with more threads gets `EDEADLK` instead of a child.
pub(crate) fn fork_single_threaded() -> Result<ForkResult, Errno> {
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        if tasks.count() > 1 {
            return Err(Errno::EDEADLK);
        }
    }
    // SAFETY: with a single thread no lock can be held by a thread that the child
    // lacks, so the child may allocate, log and run arbitrary code.
    unsafe { nix::unistd::fork() }
}

/// `fork(2)` inside the multi-threaded test harness, for tests whose child does
/// only a little work (the privilege drop, a read, a pipe write) and then calls
/// [`exit_now`], never returning into the harness.
#[cfg(test)]
pub(crate) fn fork_in_test() -> Result<ForkResult, Errno> {
    // SAFETY: the harness's other threads hold no lock the child's few steps need
    // (the allocator's fork handlers reset its locks in glibc); see above.
    unsafe { nix::unistd::fork() }
}

/// `_exit(2)`: ends the process at once, without destructors or atexit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes a status and never returns; skipping destructors leaks
    // nothing the kernel does not reclaim.
    unsafe { libc::_exit(code) }
}

/// `close_range(first, ~0, 0)` (Linux 5.9): closes every descriptor from `first`
/// up. False when the kernel lacks it; the caller then closes one by one.
pub(crate) fn close_range_from(first: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: close_range takes (first, last, flags) and touches only the
        // descriptor table; the caller owns nothing at or above `first`.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = first;
        false
    }
}

/// The routing table the process runs in: `getrtable(2)` on OpenBSD.
#[cfg(target_os = "openbsd")]
pub(crate) fn rtable() -> u32 {
    extern "C" {
        fn getrtable() -> libc::c_int;
    }
    // SAFETY: getrtable(2) takes no arguments and cannot fail.
    u32::try_from(unsafe { getrtable() }).unwrap_or(0)
}

/// The routing table the process runs in: 0 where there are no routing domains.
#[cfg(not(target_os = "openbsd"))]
pub(crate) fn rtable() -> u32 {
    0
}

#[cfg(target_os = "linux")]
pub(crate) mod caps {
    //! The capability prctls and `capget`/`capset(2)` with the version-3 header.
    //! `PR_SET_KEEPCAPS` and `PR_SET_NO_NEW_PRIVS` go through nix's safe wrappers;
    //! nix has none for the ambient and bounding sets or for capget/capset, so those
    //! call `libc` (the kernel ABI is three small structs; no crate is needed for it).

    use nix::errno::Errno;

    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const CAP_VERSION_3: u32 = 0x2008_0522;
    /// `CAP_NET_ADMIN` is capability 12.
    pub(crate) const CAP_NET_ADMIN_BIT: u64 = 1 << 12;
    /// `CAP_SETPCAP` (8): needed to drop from the bounding set.
    pub(crate) const CAP_SETPCAP_BIT: u64 = 1 << 8;
    /// Capabilities are numbered below 64 in the version-3 ABI.
    const CAP_COUNT: u32 = 64;
    const PR_CAP_AMBIENT: libc::c_int = 47;
    const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    fn header() -> CapHeader {
        CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        }
    }

    pub(crate) fn set_keepcaps(on: bool) -> Result<(), Errno> {
        nix::sys::prctl::set_keepcaps(on)
    }

    pub(crate) fn set_no_new_privs() -> Result<(), Errno> {
        nix::sys::prctl::set_no_new_privs()
    }

    /// Empties the ambient set (no privilege needed; EINVAL before Linux 4.3, where
    /// there is no ambient set to empty).
    pub(crate) fn clear_ambient() -> Result<(), Errno> {
        // SAFETY: PR_CAP_AMBIENT with CLEAR_ALL takes three zeros.
        let rc = unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
        match Errno::result(rc) {
            Ok(_) | Err(Errno::EINVAL) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Drops every capability not in `keep` from the bounding set (needs CAP_SETPCAP).
    /// Stops at the first number the kernel does not know (EINVAL).
    pub(crate) fn limit_bounding_set(keep: u64) -> Result<(), Errno> {
        for cap in 0..CAP_COUNT {
            if keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: PR_CAPBSET_DROP takes the capability number.
            let rc =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            match Errno::result(rc) {
                Ok(_) => {}
                Err(Errno::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The (effective, permitted) sets of this thread.
    pub(crate) fn get_caps() -> Result<(u64, u64), Errno> {
        let mut h = header();
        let mut data = [CapData::default(); 2];
        // SAFETY: capget writes two CapData for version 3; both live across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_capget,
                &mut h as *mut CapHeader,
                data.as_mut_ptr(),
            )
        };
        Errno::result(rc)?;
        let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        Ok((
            join(data[0].effective, data[1].effective),
            join(data[0].permitted, data[1].permitted),
        ))
    }

    /// Permitted = effective = `keep`, inheritable = {} for this thread, which is the
    /// whole process: the daemon is single-threaded.
    pub(crate) fn set_caps(keep: u64) -> Result<(), Errno> {
        let h = header();
        let (lo, hi) = (keep as u32, (keep >> 32) as u32);
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: 0,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: 0,
            },
        ];
        // SAFETY: header and a two-element data array are what capset(2) reads for
        // version 3; both live across the call.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &h as *const CapHeader, data.as_ptr()) };
        Errno::result(rc).map(drop)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// With a second thread alive the fork is refused, so no child can inherit a
    /// lock held by a thread it lacks. (Never forks: the check comes first.)
    #[test]
    fn fork_refuses_a_multithreaded_process() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        assert_eq!(fork_single_threaded().err(), Some(Errno::EDEADLK));
        drop(tx);
        other.join().expect("join");
    }

    #[test]
    fn getaddrinfo_returns_the_first_address_or_the_code() {
        let a = getaddrinfo(
            c"127.0.0.1",
            Some(c"21"),
            libc::AF_INET,
            libc::AI_NUMERICHOST,
        );
        assert_eq!(a, Ok(Some("127.0.0.1:21".parse().unwrap())));
        let e = getaddrinfo(c"localhost", None, libc::AF_INET, libc::AI_NUMERICHOST);
        assert_eq!(e, Err(libc::EAI_NONAME));
        assert!(!gai_strerror(libc::EAI_NONAME).is_empty());
    }
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the calling process is killed when its
/// parent exits (a helper must not outlive the daemon). Nothing elsewhere: the
/// helper's end of file on its socket ends it there.
pub(crate) fn die_with_parent() -> Result<(), Errno> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(())
    }
}

/// Closes every descriptor from 3 up except `keep` (a helper's socket), with
/// `close_range(2)` where the kernel has it, one by one up to 1024 otherwise.
pub(crate) fn close_all_but(keep: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let keep = keep.as_raw_fd();
    let close = |first: i32, last: i32| {
        if first > last {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: close_range touches only the descriptor table; the caller
            // owns nothing in the range but what it means to close.
            let rc =
                unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
            if rc == 0 {
                return;
            }
        }
        for fd in first..=last.min(1023) {
            let _ = nix::unistd::close(fd);
        }
    };
    close(3, keep - 1);
    close(keep + 1, i32::MAX);
}

/// `openat(2)`: opens `name` (one path component) in the directory `dir` for
/// reading, without following it into a terminal, and without blocking on a FIFO.
/// The route file and the certificate pair are re-read this way after the
/// chroot, through the directories opened before it ([`crate::file_at`]).
pub(crate) fn open_in(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open
    // descriptor borrowed for the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Ignores SIGUSR1 in the resolver helper: it carries the daemon's name, so a
/// reload sent by name (`pkill -USR1 -x ftp-proxy`) reaches it too, and the
/// default action would end it and every later lookup with it.
pub(crate) fn ignore_reload_signal() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no code.
    unsafe { sigaction(Signal::SIGUSR1, &ignore) }.map(drop)
}
