//! The IO-free core of an OpenBSD-compatible ftp-proxy(8).
//!
//! Everything the proxy decides happens here: control-channel line framing, FTP
//! command and reply parsing, the rewriting of PORT/EPRT/227/229 lines, the
//! packet-filter rules each data-connection negotiation needs, idle timers, the
//! session limit and the order of it all. Nothing here touches a socket, a file,
//! the clock or a global random generator: time arrives with every input and
//! randomness through a [`RandomSource`] the caller supplies. That makes the same
//! code drive the mio daemon and a deterministic simulation.
//!
//! Start at [`Proxy`]: its documentation states the driving contract.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
mod forward;
pub mod ftp;
pub mod line;
mod proxy;
pub mod rand;
pub mod rules;
mod session;

pub use config::{Config, ConfigError};
pub use error::{CloseReason, FilterError, Side};
pub use forward::{forwards, Forward, ForwardError, Source};
pub use proxy::{Action, Input, Proxy, Refused, SessionId};
pub use rand::{Pcg32, RandomSource};
pub use rules::{
    data_rules, Anchor, Direction, Family, Mode, PortRange, Rule, RuleLog, RuleOptions,
    SessionAddrs, Translate, Verdict,
};
