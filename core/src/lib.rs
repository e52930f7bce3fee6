//! The IO-free core of an OpenBSD-compatible ftp-proxy(8).
//!
//! Everything the proxy decides happens here: control-channel line framing, FTP
//! command and reply parsing, the rewriting of PORT/EPRT/227/229 lines, the
//! packet-filter rules each data-connection negotiation needs, idle timers, the
//! session limit, read interest and the order of it all. Nothing here touches a
//! socket, a file, the clock or a global random generator: time arrives with every
//! input and randomness through a [`RandomSource`] the caller supplies. That makes
//! the same code drive the mio daemon, a thread-per-connection proxy and a
//! deterministic simulation.
//!
//! Start at [`Proxy`]: its documentation states the driving contract. The packet
//! filter a driver commits rules to implements [`Filter`]. A driver without a packet
//! filter carries the data connections itself: [`Relay`] is their policy (who is
//! admitted, what is connected and paired, when a connection is over), and its
//! documentation states the semantics.

#![forbid(unsafe_code)]

mod config;
mod error;
mod event;
mod filter;
mod forward;
mod ftp;
pub mod ftps;
mod line;
mod nat64;
mod proxy;
pub mod proxy_protocol;
mod rand;
mod relay;
mod route;
mod rules;
mod session;
mod translate;

/// The byte buffer of [`Input::Data`] and [`Action::Send`], re-exported so that
/// drivers name the same version the core uses.
pub use bytes::Bytes;
pub use config::{
    Config, ConfigError, COMMIT_RETRY_DELAY, CONNECT_TIMEOUT, DEFAULT_LOGIN_TIMEOUT_SECS,
    DEFAULT_PROXY_PORTS, DEFAULT_RESOLVE_TIMEOUT_SECS, MAX_SESSIONS_LIMIT, MAX_TIMEOUT_SECS,
    PF_NAME_SIZE,
};
pub use error::{FilterError, SocketError};
pub use event::{
    Accept, Action, CloseReason, DataCounts, Input, Refused, SessionId, Side, Summary,
    INBOX_HIGH_WATER, MAX_PIPELINED, OUTPUT_HIGH_WATER, OUTPUT_LOW_WATER,
};
pub use filter::Filter;
pub use forward::{bridges, forwards, Bridge, Forward, ForwardError, Source};
pub use ftps::{ClientTls, FtpsState, ServerTls, TlsPolicy};
pub use nat64::{Nat64Prefix, Nat64PrefixError, WELL_KNOWN_NAT64_PREFIX};
pub use proxy::Proxy;
pub use rand::{Pcg32, RandomSource};
pub use relay::{
    Admission, ConnectError, Decision, Flow, IdleCause, IoOp, Leg, ListenerId, Origin, PairEnd,
    PairId, PairState, PreparedCommit, Refusal, Relay, RelayLimits, Security, RELAY_SWEEP_EVERY,
};
pub use route::{
    parse_user_target, AllowDest, Cidr, DestPolicy, DestRefusal, Host, Route, RouteError,
    RouteTable, TargetError, UserTarget, MAX_ROUTES,
};
pub use rules::{
    data_rules, protect_client_leg, protect_server_leg, Anchor, Direction, Family, LegSecurity,
    Mode, PortRange, Rule, RuleLog, RuleOptions, SessionAddrs, Translate, Verdict, MIN_DATA_PORT,
    NAT_PORTS, RFC_ACTIVE_SOURCE_PORT,
};
pub use translate::{
    answered_by_proxy, check_data_path, client_reply, needs_relay, passive_answer,
    server_active_line, server_command, DataCommand, DataPathError, PassiveAnswer, ReplyError,
    ServerDataMode, ServerSupport,
};

/// Parsing and framing helpers the simulation uses as its oracle. Not part of the
/// API: present only with the `internals` feature, and free to change.
#[cfg(feature = "internals")]
pub mod internals {
    /// FTP command and reply parsing and formatting.
    pub mod ftp {
        pub use crate::ftp::*;
    }
    pub use crate::line::{LineBuf, NotClean, MAX_LINE};

    /// Makes `proxy` try `id` first for its next session (tests of the id
    /// wrap-around at `u32::MAX`).
    pub fn set_next_session_id(proxy: &mut crate::Proxy, id: u32) {
        proxy.set_next_id(id);
    }
}
