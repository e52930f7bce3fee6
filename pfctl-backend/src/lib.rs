//! Packet-filter backends: they make the kernel carry FTP data connections.
//!
//! The core decides *which* rules a session needs ([`ftp_proxy_core::Rule`]); a
//! [`Backend`] makes them true in a packet filter. Its `unsafe` (the ioctl structures,
//! `ioctl(2)`, a socket option, `getrandom(2)`) is confined to the private `sys`
//! module; the rest of the crate denies it.
#![deny(unsafe_code)]

pub use ftp_proxy_core::{Anchor, FilterError, Rule};

mod sys;

// OpenBSD pf over `/dev/pf` ioctls; structures, encoding and transactions are
// compiled and tested on every host, the ioctl calls exist only on OpenBSD.
pub mod pf;

// A recording filter with seeded fault injection, for simulations and tests.
pub mod mock;

/// Linux nftables: per-session elements of named maps, committed over netlink (docs/linux.md).
#[cfg(target_os = "linux")]
pub mod nft;

/// A packet filter that can hold one rule set per session anchor.
pub trait Backend {
    /// Short name for logs and the command line (`pf`, `nftables`, `mock`).
    fn name(&self) -> &'static str;

    /// Replaces everything `anchor` holds with `rules`, atomically: afterwards either
    /// exactly `rules` are in force or, on error, what was there before. An empty
    /// slice removes the anchor's rules.
    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError>;

    /// Removes every rule this backend installed for this process (at exit).
    fn remove_all(&mut self) -> Result<(), FilterError>;
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        (**self).commit(anchor, rules)
    }
    fn remove_all(&mut self) -> Result<(), FilterError> {
        (**self).remove_all()
    }
}
