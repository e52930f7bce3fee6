//! Packet-filter backends: they make the kernel carry FTP data connections.
//!
//! The core decides *which* rules a session needs ([`ftp_proxy_core::Rule`]); each
//! backend here implements the core's [`Filter`] and makes them true in a packet
//! filter. Its `unsafe` (the ioctl structures, `ioctl(2)`, a socket option,
//! `getrandom(2)`) is confined to the private `sys` module; the rest of the crate
//! denies it.
#![deny(unsafe_code)]

pub use ftp_proxy_core::{Anchor, Filter, FilterError, Rule};

mod sys;

// What each session negotiated, for `Filter::kill_connections` (bounded).
pub mod remembered;

// OpenBSD pf over `/dev/pf` ioctls; structures, encoding and transactions are
// compiled and tested on every host, the ioctl calls exist only on OpenBSD.
pub mod pf;

// A recording filter with seeded fault injection, for simulations and tests.
pub mod mock;

/// Linux nftables: per-session elements of named maps, committed over netlink (docs/linux.md).
#[cfg(target_os = "linux")]
pub mod nft;
