//! Who carries the data connections, behind one seam.
//!
//! The core negotiates data connections and says so in rules; something has to make
//! them happen. [`DataPlane`] is everything the event loop asks of that something,
//! and the loop knows nothing else about it: it never asks which one it has. Two
//! carry them:
//!
//! * [`Kernel`]: a packet-filter backend ([`Filter`]) commits the rules and the
//!   kernel moves the bytes; it has no sockets, timers or byte counts of its own.
//! * [`Relayed`]: this process executes the rules itself ([`Relay`], the crate docs'
//!   "userspace relay"): listeners, data connections, their timeouts and counts.
//!
//! [`Plane`] holds whichever [`DataPath`] the caller chose and is the one place that
//! tells them apart.

use std::net::IpAddr;
use std::time::Instant;

use ftp_proxy_core::{Anchor, Filter, FilterError, LegSecurity, Rule, SessionId};
use mio::event::Event;
use mio::Registry;

use crate::relay::{Relay, RelayLimits, SessionTls};
use crate::token::Tok;
use crate::DataPath;

/// What the event loop asks of whoever carries the data connections.
///
/// Every method that may touch sockets gets the poll registry (the relay registers
/// its listeners and data connections there). None of them calls the core: what the
/// core needs to hear (a commit's result) is returned.
pub(crate) trait DataPlane {
    /// Replaces everything `anchor` holds with `rules` (the core's
    /// `Action::CommitRules`; an empty slice removes them). The result is the core's
    /// `Input::RulesCommitted`.
    fn commit(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
        rules: &[Rule],
    ) -> Result<(), FilterError>;

    /// Removes every rule this process installed, and ends whatever data connections
    /// cannot outlive it (at exit).
    fn remove_all(&mut self, registry: &Registry) -> Result<(), FilterError>;

    /// Ends the data connections `anchor`'s rules let through
    /// (`Action::EndDataConnections`).
    fn kill_connections(&mut self, registry: &Registry, anchor: &Anchor)
        -> Result<(), FilterError>;

    /// The session of `anchor` relayed a transfer's final reply
    /// (`Action::TransferDone`).
    fn transfer_done(&mut self, registry: &Registry, anchor: &Anchor);

    /// A control session from `client` has begun; `tls` is its TLS configuration
    /// and what its data connections must show, when the proxy terminates TLS from
    /// clients (its `PROT P` data connections use it).
    fn session_started(&mut self, id: SessionId, client: IpAddr, tls: Option<SessionTls>);
    /// Session `id`'s control connection came through the load balancer at
    /// `balancer` (PROXY protocol): admit it for the client's data connections too.
    fn session_via(&mut self, id: SessionId, balancer: IpAddr);

    /// The control session `id` has ended; the bytes (up, down) its data
    /// connections moved, when this data plane counts them (for the summary line).
    fn session_ended(&mut self, id: SessionId) -> Option<(u64, u64)>;

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Runs what is due at `now` (spurious calls do nothing).
    fn handle_timeout(&mut self, registry: &Registry, now: Instant);

    /// A readiness event for one of this data plane's tokens ([`Tok::DataListener`],
    /// [`Tok::Data`]).
    fn event(&mut self, registry: &Registry, tok: Tok, ev: &Event);

    /// Whether some socket has work left from an earlier turn (the next poll must not
    /// wait).
    fn is_hot(&self) -> bool;

    /// Serves the sockets left with work by the previous turn.
    fn run_hot(&mut self, registry: &Registry);

    /// Listeners and data connections in progress (for tests; `(0, 0)` when the
    /// kernel carries them).
    fn counts(&self) -> (usize, usize);

    /// The per-session cap and timeouts of relayed data connections.
    fn set_relay_limits(&mut self, limits: RelayLimits);

    /// `splice(2)` or copying, for relayed data connections accepted from now on.
    fn set_relay_zero_copy(&mut self, on: bool);
}

/// The kernel carries the data connections through the rules a packet-filter
/// backend commits. The kernel's states need no word when a transfer or a session
/// ends, and there is nothing to time or to serve.
#[derive(Debug)]
pub(crate) struct Kernel<B>(pub(crate) B);

impl<B: Filter> DataPlane for Kernel<B> {
    fn commit(&mut self, _: &Registry, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        // A PROT P leg must be decrypted, which the kernel cannot do; the core
        // never asks with its configuration checked (client TLS needs the relay),
        // but a commit that would carry TLS as plain bytes is refused all the same.
        if rules.iter().any(|r| r.legs != LegSecurity::default()) {
            return Err(FilterError::Unsupported(
                "a TLS data connection (PROT P) needs the userspace relay".into(),
            ));
        }
        self.0.commit(anchor, rules)
    }
    fn remove_all(&mut self, _: &Registry) -> Result<(), FilterError> {
        self.0.remove_all()
    }
    fn kill_connections(&mut self, _: &Registry, anchor: &Anchor) -> Result<(), FilterError> {
        self.0.kill_connections(anchor)
    }
    fn transfer_done(&mut self, _: &Registry, _: &Anchor) {}
    fn session_started(&mut self, _: SessionId, _: IpAddr, _: Option<SessionTls>) {}
    // The rules name the client only: a balancer that forwards the data ports must
    // keep the client's source address (or the client reach them directly).
    fn session_via(&mut self, _: SessionId, _: IpAddr) {}
    fn session_ended(&mut self, _: SessionId) -> Option<(u64, u64)> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: &Registry, _: Instant) {}
    // It registers no socket, so no event is its.
    fn event(&mut self, _: &Registry, _: Tok, _: &Event) {}
    fn is_hot(&self) -> bool {
        false
    }
    fn run_hot(&mut self, _: &Registry) {}
    fn counts(&self) -> (usize, usize) {
        (0, 0)
    }
    fn set_relay_limits(&mut self, _: RelayLimits) {}
    fn set_relay_zero_copy(&mut self, _: bool) {}
}

/// This process carries the data connections: the [`Relay`] executes the rules.
#[derive(Debug)]
pub(crate) struct Relayed(Relay);

impl DataPlane for Relayed {
    fn commit(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
        rules: &[Rule],
    ) -> Result<(), FilterError> {
        self.0.commit(registry, anchor, rules)
    }
    /// Closes every listener and resets the data connections in progress; it cannot
    /// fail.
    fn remove_all(&mut self, registry: &Registry) -> Result<(), FilterError> {
        self.0.remove_all(registry);
        Ok(())
    }
    /// Resets the anchor's data connections in progress (and any waiting for its
    /// partner of a join); it cannot fail.
    fn kill_connections(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
    ) -> Result<(), FilterError> {
        self.0.kill_session(registry, anchor.session);
        Ok(())
    }
    fn transfer_done(&mut self, registry: &Registry, anchor: &Anchor) {
        self.0.transfer_done(registry, anchor);
    }
    fn session_started(&mut self, id: SessionId, client: IpAddr, tls: Option<SessionTls>) {
        self.0.session_started(id.0, client, tls);
    }
    fn session_via(&mut self, id: SessionId, balancer: IpAddr) {
        self.0.session_via(id.0, balancer);
    }
    fn session_ended(&mut self, id: SessionId) -> Option<(u64, u64)> {
        Some(self.0.session_ended(id.0))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        self.0.sweep(registry, now);
    }
    fn event(&mut self, registry: &Registry, tok: Tok, ev: &Event) {
        self.0.event(registry, tok, ev);
    }
    fn is_hot(&self) -> bool {
        self.0.is_hot()
    }
    fn run_hot(&mut self, registry: &Registry) {
        self.0.run_hot(registry);
    }
    fn counts(&self) -> (usize, usize) {
        (self.0.listener_count(), self.0.pair_count())
    }
    fn set_relay_limits(&mut self, limits: RelayLimits) {
        self.0.set_limits(limits);
    }
    fn set_relay_zero_copy(&mut self, on: bool) {
        self.0.set_zero_copy(on);
    }
}

/// The data plane a [`crate::Runtime`] was built with. Only here are the two told
/// apart: the loop sees a `dyn DataPlane`, and only [`backend`](Self::backend)
/// (which hands the caller's own filter back) needs the concrete kind.
#[derive(Debug)]
pub(crate) enum Plane<B> {
    /// [`DataPath::Kernel`].
    Kernel(Kernel<B>),
    /// [`DataPath::Relay`].
    Relay(Relayed),
}

impl<B: Filter> Plane<B> {
    /// The data plane for `data`; the relay carries at most `max_pairs` data
    /// connections at once.
    pub(crate) fn new(data: DataPath<B>, max_pairs: usize) -> Plane<B> {
        match data {
            DataPath::Kernel(b) => Plane::Kernel(Kernel(b)),
            DataPath::Relay => Plane::Relay(Relayed(Relay::new(max_pairs))),
        }
    }

    /// The data plane, to ask.
    pub(crate) fn get(&self) -> &dyn DataPlane {
        match self {
            Plane::Kernel(k) => k,
            Plane::Relay(r) => r,
        }
    }

    /// The data plane, to drive.
    pub(crate) fn get_mut(&mut self) -> &mut dyn DataPlane {
        match self {
            Plane::Kernel(k) => k,
            Plane::Relay(r) => r,
        }
    }

    /// The packet-filter backend, when the kernel carries the data connections.
    pub(crate) fn backend(&self) -> Option<&B> {
        match self {
            Plane::Kernel(Kernel(b)) => Some(b),
            Plane::Relay(_) => None,
        }
    }
}
