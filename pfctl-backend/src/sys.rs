//! The system calls std and nix's safe API do not offer, and the one unsafe trait
//! of the crate: [`Pod`] for the pf ioctl structures, `ioctl(2)` on `/dev/pf`
//! (OpenBSD), `getrandom(2)` and the netlink socket option `NETLINK_CAP_ACK`
//! (Linux). All `unsafe` of the crate is here (the crate root denies it elsewhere);
//! each block says why it is sound.
#![allow(unsafe_code)]

use crate::pf::abi;

/// Plain-old-data ioctl structures.
///
/// # Safety
///
/// Implementors are `#[repr(C)]`, consist only of integers and arrays of integers (or
/// other `Pod` structures), and have **no implicit padding** (every padding byte is a
/// named field). Then the all-zero bit pattern is a valid value and every byte of a
/// value is initialised, so [`zeroed`](Pod::zeroed) and [`as_bytes`](Pod::as_bytes)
/// are sound. The layout tests check the "no implicit padding" part field by field.
pub unsafe trait Pod: Copy + 'static {
    /// The all-zero value, as the original's `memset(&x, 0, sizeof x)`.
    fn zeroed() -> Self {
        // SAFETY: the trait contract makes all-zero a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// The value's bytes, exactly as the kernel reads them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: no implicit padding, so all `size_of::<Self>()` bytes are initialised;
        // the slice borrows `self` and so cannot outlive it.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

// SAFETY: each type is `#[repr(C)]`, holds only integers, integer arrays and other
// `Pod` types, and has no implicit padding (checked field by field in
// `pf::abi`'s tests and against a C compiler in `pf::c_layout`).
unsafe impl Pod for abi::PfAddr {}
unsafe impl Pod for abi::PfAddrWrap {}
unsafe impl Pod for abi::PfRuleAddr {}
unsafe impl Pod for abi::PfPool {}
unsafe impl Pod for abi::PfRuleId {}
unsafe impl Pod for abi::PfRuleCommon {}
unsafe impl Pod for abi::PfDivert {}
unsafe impl Pod for abi::PfLimiterRef {}
unsafe impl Pod for abi::PfRule1543 {}
unsafe impl Pod for abi::PfRule1548 {}
unsafe impl<R: abi::PfRuleLayout> Pod for abi::PfiocRule<R> {}
unsafe impl Pod for abi::PfiocTransE {}
unsafe impl Pod for abi::PfiocTrans {}
unsafe impl Pod for abi::PfiocRuleset {}
unsafe impl Pod for abi::PfStatus {}
unsafe impl Pod for abi::PfStateCmp {}
unsafe impl Pod for abi::PfiocStateKill {}

#[cfg(target_os = "openbsd")]
pub(crate) mod pf_dev {
    //! `ioctl(2)` on `/dev/pf`.

    use std::ffi::c_void;
    use std::os::fd::{AsRawFd, OwnedFd};

    use crate::pf::device::Errno;

    // The structures mirror the LP64 layouts; refuse to build where they would be wrong.
    const _: () = assert!(
        std::mem::size_of::<usize>() == 8,
        "pf structures are mirrored for 64-bit OpenBSD"
    );

    #[derive(Debug)]
    pub(crate) struct Fd(pub(crate) OwnedFd);

    impl Fd {
        /// One `ioctl(2)`; `arg` must point at the structure `request` encodes.
        pub(crate) fn ioctl(&self, request: u64, arg: *mut c_void) -> Result<(), Errno> {
            // SAFETY: every caller passes a pointer to a live, exclusively borrowed
            // structure whose size is the one encoded in `request` (the numbers are
            // computed from `size_of` of these very types), so the kernel's copyin and
            // copyout stay inside it. Transactions point `array` at their own boxed
            // element, which the same borrow keeps alive.
            let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as libc::c_ulong, arg) };
            if rc == -1 {
                Err(Errno(
                    std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Eight bytes from the kernel's random pool (`getrandom(2)`), or `None` if it
/// refuses.
#[cfg(target_os = "linux")]
pub(crate) fn random_u64() -> Option<u64> {
    let mut b = [0u8; 8];
    // SAFETY: b is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    (n == 8).then(|| u64::from_ne_bytes(b))
}

/// `setsockopt(2)` with an `int` value, for options nix has no wrapper for.
#[cfg(target_os = "linux")]
pub(crate) fn setsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<(), nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option value is a c_int that outlives the call, and its size is
    // passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}
