//! The system calls std and nix's safe API do not offer, and the one unsafe trait
//! of the crate: [`Pod`] for the pf ioctl structures, `ioctl(2)` on `/dev/pf`
//! (OpenBSD), `getrandom(2)` and the netlink socket option `NETLINK_CAP_ACK`
//! (Linux). All `unsafe` of the crate is here (the crate root denies it elsewhere);
//! each block says why it is sound.
//!
//! A leaf: it imports nothing from the crate. It takes plain values (a borrowed
//! descriptor, an errno as `i32`, a `Pod` structure) and the typed wrappers live with
//! the types they serve (`pf::device`'s `DevPf` and `Errno`); the structures declare
//! themselves `Pod` where they are defined, through [`unsafe_impl_pod!`].
#![allow(unsafe_code)]

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

/// `unsafe impl Pod for T {}` for each type listed, invoked where the types are defined
/// so that this module needs not name them. `impl<R: Bound> T<R>` declares a generic one.
///
/// Invoking it is the promise the [`Pod`] contract asks for (`#[repr(C)]`, integers
/// only, no implicit padding); the invocation says, in a `SAFETY:` comment, which tests
/// check that promise.
macro_rules! unsafe_impl_pod {
    (impl<$g:ident: $bound:path> $t:ty) => {
        #[allow(unsafe_code)]
        unsafe impl<$g: $bound> $crate::sys::Pod for $t {}
    };
    ($($t:ty),* $(,)?) => {
        $(
            #[allow(unsafe_code)]
            unsafe impl $crate::sys::Pod for $t {}
        )*
    };
}
pub(crate) use unsafe_impl_pod;

/// One `ioctl(2)` on `fd` whose argument is `arg`, a structure of the size `request`
/// encodes; the errno on failure.
///
/// The kernel copies `size_of::<T>()` bytes in and out of `arg`, which a `Pod` can
/// hold whatever they are. `arg` must be the structure `request` names (the request
/// numbers are computed from `size_of` of these very types); an argument that holds a
/// user-space address (`pfioc_trans.array`) must point at memory that outlives the
/// call, as `Transaction` guarantees for its own boxed element.
#[cfg(target_os = "openbsd")]
pub(crate) fn ioctl<T: Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    request: u64,
    arg: &mut T,
) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: `arg` is a live, exclusively borrowed `Pod` structure of the size the
    // request encodes, so the kernel's copyin and copyout stay inside it and any bytes
    // it writes form a valid value. The one embedded address (a transaction's `array`)
    // points at the transaction's own boxed element, alive for the same borrow.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::c_ulong,
            (arg as *mut T).cast::<libc::c_void>(),
        )
    };
    if rc == -1 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
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
