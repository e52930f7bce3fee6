//! What a session did, counted for its summary line.
//!
//! Counting is not deciding: nothing the session decides reads these, so they live
//! apart from the state that does, and become the [`Summary`] of
//! [`crate::Action::Close`] (docs/behavior.md lists the line's fields).

use std::net::SocketAddr;
use std::time::Instant;

use crate::event::{DataCounts, Side, Summary};
use crate::rules::Mode;

use super::flow::idx;

/// The counters of one session.
#[derive(Debug)]
pub(super) struct Stats {
    started: Instant,
    /// Client command lines read.
    commands: u64,
    /// Data connections negotiated, by mode.
    data: DataCounts,
    /// Rule sets the filter took (removals not counted).
    rules_committed: u32,
    /// Control bytes read from each side.
    read_bytes: [u64; 2],
}

impl Stats {
    pub(super) fn new(started: Instant) -> Stats {
        Stats {
            started,
            commands: 0,
            data: DataCounts::default(),
            rules_committed: 0,
            read_bytes: [0; 2],
        }
    }

    /// `n` control bytes were read from `side`.
    pub(super) fn read(&mut self, side: Side, n: usize) {
        self.read_bytes[idx(side)] += n as u64;
    }

    /// A client command line was read.
    pub(super) fn command(&mut self) {
        self.commands += 1;
    }

    /// The filter took the rules of a negotiation in `mode` (`epsv`: answering EPSV).
    pub(super) fn committed(&mut self, mode: Mode, epsv: bool) {
        self.rules_committed += 1;
        self.data.count(mode, epsv);
    }

    /// The summary of a session between `client` and `server` that ends at `now`.
    pub(super) fn summary(&self, client: SocketAddr, server: SocketAddr, now: Instant) -> Summary {
        Summary {
            client,
            server,
            duration: now.saturating_duration_since(self.started),
            commands: self.commands,
            data: self.data,
            rules_committed: self.rules_committed,
            client_bytes: self.read_bytes[idx(Side::Client)],
            server_bytes: self.read_bytes[idx(Side::Server)],
        }
    }
}
