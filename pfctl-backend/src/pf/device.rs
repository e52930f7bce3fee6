//! The ioctl seam: [`PfDevice`] is everything the backend asks of `/dev/pf`.
//!
//! [`DevPf`] is the real device. Its ioctl calls exist only on OpenBSD; elsewhere the
//! type exists (so code naming it compiles everywhere) but cannot be constructed.
//! Tests use a model of the kernel's transaction rules behind the same trait.

use std::fmt;

use super::abi::{
    PfStatus, PfiocRuleset, PfiocStateKill, PfiocTrans, PfiocTransE, Pod, PATH_MAX,
    PF_TRANS_RULESET,
};
use super::encode::{c_str, put_c_str, strerror, RuleIoc};

/// An errno from an ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&strerror(self.0))
    }
}

/// A one-element transaction (`struct pfioc_trans` pointing at one `pfioc_trans_e`), as
/// ftp-proxy builds it for every begin, commit and rollback of an anchor.
///
/// The element lives in a `Box` so that the header's `array` address stays valid when
/// the `Transaction` moves.
#[derive(Debug)]
pub struct Transaction {
    header: PfiocTrans,
    element: Box<PfiocTransE>,
}

impl Transaction {
    /// `{ size = 1, esize = 1032, array = { type = PF_TRANS_RULESET, anchor, ticket = 0 } }`.
    /// `None` if the anchor path does not fit `PATH_MAX` with its NUL.
    pub fn new(anchor: &str) -> Option<Transaction> {
        let mut element = Box::new(PfiocTransE::zeroed());
        element.type_ = PF_TRANS_RULESET;
        put_c_str(&mut element.anchor, anchor)?;
        let header = PfiocTrans {
            size: 1,
            esize: std::mem::size_of::<PfiocTransE>() as i32,
            array: 0,
        };
        let mut t = Transaction { header, element };
        t.refresh_array();
        Some(t)
    }

    fn refresh_array(&mut self) {
        self.header.array = (&mut *self.element as *mut PfiocTransE) as usize as u64;
    }

    /// The `struct pfioc_trans` header.
    pub fn header(&self) -> &PfiocTrans {
        &self.header
    }

    /// The single element.
    pub fn element(&self) -> &PfiocTransE {
        &self.element
    }

    /// The single element, for a device to write the ticket into.
    pub fn element_mut(&mut self) -> &mut PfiocTransE {
        &mut self.element
    }

    /// The element's anchor path.
    pub fn anchor(&self) -> &[u8] {
        c_str(&self.element.anchor)
    }

    /// The ticket DIOCXBEGIN wrote back.
    pub fn ticket(&self) -> u32 {
        self.element.ticket
    }

    /// Whether `array` points at this transaction's own element.
    pub fn array_points_at_element(&self) -> bool {
        self.header.array == (&*self.element as *const PfiocTransE) as usize as u64
    }

    /// The ioctl argument (the header), with `array` re-derived so the kernel writes
    /// into `element`. Crate-private: the header must keep describing exactly the one
    /// boxed element (`size` 1), which only this type's own methods guarantee.
    #[cfg_attr(not(target_os = "openbsd"), allow(dead_code))]
    pub(crate) fn ioctl_arg(&mut self) -> &mut PfiocTrans {
        self.refresh_array();
        &mut self.header
    }
}

/// A `struct pfioc_ruleset` for listing the children of `path`.
pub fn ruleset_query(path: &str, nr: u32) -> Option<PfiocRuleset> {
    let mut rs = PfiocRuleset::zeroed();
    rs.nr = nr;
    put_c_str(&mut rs.path, path)?;
    debug_assert!(rs.path.len() == PATH_MAX);
    Some(rs)
}

/// The pf ioctls ftp-proxy uses. Each method is one ioctl on `/dev/pf` with the given
/// argument, returning the kernel's errno on failure; the argument is updated in place
/// as the kernel would.
pub trait PfDevice {
    /// `DIOCGETSTATUS`.
    fn get_status(&mut self, status: &mut PfStatus) -> Result<(), Errno>;
    /// `DIOCXBEGIN`: writes the ticket into the element.
    fn xbegin(&mut self, t: &mut Transaction) -> Result<(), Errno>;
    /// `DIOCADDRULE` with the request number of `rule`'s layout.
    fn add_rule(&mut self, rule: &mut RuleIoc) -> Result<(), Errno>;
    /// `DIOCXCOMMIT`.
    fn xcommit(&mut self, t: &mut Transaction) -> Result<(), Errno>;
    /// `DIOCXROLLBACK`.
    fn xrollback(&mut self, t: &mut Transaction) -> Result<(), Errno>;
    /// `DIOCGETRULESETS`: writes the number of children of `path` into `nr`.
    fn get_rulesets(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno>;
    /// `DIOCGETRULESET`: writes the name of child number `nr` of `path` into `name`.
    fn get_ruleset(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno>;
    /// `DIOCKILLSTATES`: removes the matching states, their number into `psk_killed`.
    fn kill_states(&mut self, psk: &mut PfiocStateKill) -> Result<(), Errno>;
}

impl<D: PfDevice + ?Sized> PfDevice for &mut D {
    fn get_status(&mut self, status: &mut PfStatus) -> Result<(), Errno> {
        (**self).get_status(status)
    }
    fn xbegin(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        (**self).xbegin(t)
    }
    fn add_rule(&mut self, rule: &mut RuleIoc) -> Result<(), Errno> {
        (**self).add_rule(rule)
    }
    fn xcommit(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        (**self).xcommit(t)
    }
    fn xrollback(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        (**self).xrollback(t)
    }
    fn get_rulesets(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno> {
        (**self).get_rulesets(rs)
    }
    fn get_ruleset(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno> {
        (**self).get_ruleset(rs)
    }
    fn kill_states(&mut self, psk: &mut PfiocStateKill) -> Result<(), Errno> {
        (**self).kill_states(psk)
    }
}

/// `/dev/pf`, opened read-write (the kernel refuses changes on a read-only descriptor
/// with EACCES). Only constructible on OpenBSD.
#[derive(Debug)]
pub struct DevPf {
    #[cfg_attr(not(target_os = "openbsd"), allow(dead_code))]
    inner: Fd,
}

/// The descriptor of `/dev/pf`.
#[cfg(target_os = "openbsd")]
type Fd = std::os::fd::OwnedFd;

/// No value: `/dev/pf` cannot be opened off OpenBSD.
#[cfg(not(target_os = "openbsd"))]
#[derive(Debug)]
enum Fd {}

#[cfg(target_os = "openbsd")]
impl DevPf {
    /// Opens `/dev/pf` read-write.
    pub fn open() -> std::io::Result<DevPf> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/pf")?;
        Ok(DevPf {
            inner: Fd::from(file),
        })
    }

    /// One ioctl with `arg`, the structure `request` encodes.
    fn ioctl<T: Pod>(&self, request: u64, arg: &mut T) -> Result<(), Errno> {
        use std::os::fd::AsFd;
        crate::sys::ioctl(self.inner.as_fd(), request, arg).map_err(Errno)
    }
}

#[cfg(target_os = "openbsd")]
impl PfDevice for DevPf {
    fn get_status(&mut self, status: &mut PfStatus) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCGETSTATUS, status)
    }
    fn xbegin(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCXBEGIN, t.ioctl_arg())
    }
    fn add_rule(&mut self, rule: &mut RuleIoc) -> Result<(), Errno> {
        let request = rule.layout().diocaddrule();
        match rule {
            RuleIoc::V1543(r) => self.ioctl(request, &mut **r),
            RuleIoc::V1548(r) => self.ioctl(request, &mut **r),
        }
    }
    fn xcommit(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCXCOMMIT, t.ioctl_arg())
    }
    fn xrollback(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCXROLLBACK, t.ioctl_arg())
    }
    fn get_rulesets(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCGETRULESETS, rs)
    }
    fn get_ruleset(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCGETRULESET, rs)
    }
    fn kill_states(&mut self, psk: &mut PfiocStateKill) -> Result<(), Errno> {
        self.ioctl(super::abi::DIOCKILLSTATES, psk)
    }
}

#[cfg(not(target_os = "openbsd"))]
impl PfDevice for DevPf {
    fn get_status(&mut self, _: &mut PfStatus) -> Result<(), Errno> {
        match self.inner {}
    }
    fn xbegin(&mut self, _: &mut Transaction) -> Result<(), Errno> {
        match self.inner {}
    }
    fn add_rule(&mut self, _: &mut RuleIoc) -> Result<(), Errno> {
        match self.inner {}
    }
    fn xcommit(&mut self, _: &mut Transaction) -> Result<(), Errno> {
        match self.inner {}
    }
    fn xrollback(&mut self, _: &mut Transaction) -> Result<(), Errno> {
        match self.inner {}
    }
    fn get_rulesets(&mut self, _: &mut PfiocRuleset) -> Result<(), Errno> {
        match self.inner {}
    }
    fn get_ruleset(&mut self, _: &mut PfiocRuleset) -> Result<(), Errno> {
        match self.inner {}
    }
    fn kill_states(&mut self, _: &mut PfiocStateKill) -> Result<(), Errno> {
        match self.inner {}
    }
}

/// Whether process `pid` exists (`kill(pid, 0)` succeeds or fails only with EPERM).
/// Used to decide that a stale anchor's owner is gone.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // Signal 0 only checks for existence and permission; nothing is delivered.
    let r = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
    r != Err(nix::errno::Errno::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_shape() {
        let t = Transaction::new("ftp-proxy/1.2").unwrap();
        assert_eq!(t.header().size, 1);
        assert_eq!(t.header().esize, 1032);
        assert_eq!(t.element().type_, 0);
        assert_eq!(t.anchor(), b"ftp-proxy/1.2");
        assert_eq!(t.ticket(), 0);
        assert!(t.array_points_at_element());
        // Moving the transaction keeps `array` pointing at its element.
        let moved = [t];
        assert!(moved[0].array_points_at_element());
        let [mut moved] = moved;
        let arg = moved.ioctl_arg() as *const PfiocTrans;
        assert_eq!(arg, moved.header() as *const PfiocTrans);
        assert!(moved.array_points_at_element());
        assert!(Transaction::new(&"x".repeat(1024)).is_none());
        assert!(Transaction::new(&"x".repeat(1023)).is_some());
    }

    #[test]
    fn liveness() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        // Reaped: the pid is free until the kernel hands it out again, which takes a
        // full wrap of the pid space.
        assert!(!process_alive(pid));
        assert!(
            process_alive(u32::MAX),
            "pids beyond pid_t are never claimed dead"
        );
    }

    #[cfg(not(target_os = "openbsd"))]
    #[test]
    fn errno_text() {
        assert_eq!(Errno(libc::EBUSY).to_string(), "Device or resource busy");
    }
}
