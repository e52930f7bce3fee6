//! The multi-session proxy: the type integrators drive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use log::error;

use crate::config::{Config, ConfigError};
use crate::error::{CloseReason, FilterError, Side};
use crate::rand::RandomSource;
use crate::rules::{Anchor, Rule};
use crate::session::{Cx, Session};

/// A session's id: starts at 1 and counts up; after `u32::MAX` accepts it wraps to
/// 1, skipping ids still live, so no two live sessions ever share one. It names the
/// anchor (`ftp-proxy/<pid>.<id>`) and prefixes log lines (`#id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u32);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What happened to a session, reported by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The socket towards the server exists and its connect is under way; `proxy` is
    /// its local address (`getsockname`), the proxy's address in rules and rewrites.
    ServerSocketOpened {
        /// Local address of the server-side socket.
        proxy: SocketAddr,
    },
    /// The connect to the server completed.
    ServerConnected,
    /// The connect to the server could not be started (socket, bind or connect failed at once).
    ServerConnectFailed {
        /// The OS error, as text for the log.
        error: String,
    },
    /// Bytes read from that side.
    Data(Side, Bytes),
    /// End of file from that side.
    Eof(Side),
    /// A read error on that side (an asynchronous connect failure shows up here for the server).
    Reset(Side),
    /// A write to that side failed.
    WriteError(Side),
    /// The outcome of the [`Action::CommitRules`] with this `txn`.
    RulesCommitted {
        /// The transaction number from the action.
        txn: u64,
        /// Whether the filter took the rules.
        result: Result<(), FilterError>,
    },
    /// End this session now (the daemon uses [`Proxy::shutdown`] for all of them).
    Shutdown,
}

/// What the caller must do for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a non-blocking TCP connection to `to` (bound to `bind` if given), then
    /// report [`Input::ServerSocketOpened`] or [`Input::ServerConnectFailed`].
    ConnectServer {
        /// The server: the `-R` address, or the client's original destination.
        to: SocketAddr,
        /// The `-a` source address.
        bind: Option<IpAddr>,
    },
    /// Write these bytes to that side, after everything queued before.
    Send(Side, Bytes),
    /// Replace the anchor's rules with `rules` atomically (an empty list removes them),
    /// then report [`Input::RulesCommitted`] with the same `txn`.
    CommitRules {
        /// Matches the acknowledgement to the commit.
        txn: u64,
        /// The session's anchor.
        anchor: Anchor,
        /// The complete new rule set.
        rules: Vec<Rule>,
    },
    /// Flush what is queued for both sides (one attempt), then close both sockets.
    /// A `CommitRules` removing the session's rules may follow.
    Close(CloseReason),
}

/// Why [`Proxy::accept`] turned a connection away; the caller closes the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `-m` sessions are live.
    Limit(u32),
    /// [`Proxy::shutdown`] was called.
    ShuttingDown,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Limit(m) => write!(f, "client limit ({m}) reached"),
            Refused::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

/// Every FTP session of one proxy instance, with no IO of its own.
///
/// # Driving contract
///
/// The caller owns the sockets, the clock and the packet filter. It feeds the proxy
/// inputs and executes the actions the proxy emits:
///
/// * **Inputs** (each takes `now`, which must never go backwards):
///   [`accept`](Self::accept) for a new client connection, [`handle`](Self::handle)
///   for anything that happened to a session's sockets or rules,
///   [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
///   has passed (spurious calls do nothing), and [`shutdown`](Self::shutdown).
/// * **Outputs**: after *every* input, drain [`poll_action`](Self::poll_action) until
///   it returns `None`, executing actions in order, then re-read
///   [`poll_timeout`](Self::poll_timeout). Actions of one session must be executed in
///   the order given: a rewritten line follows the commit of its rules.
/// * **Acknowledgements**: every [`Action::CommitRules`] must be answered with
///   [`Input::RulesCommitted`] (immediately, or later); the session holds back the
///   line that depends on it until then. A `Busy` answer is retried once after 5 ms.
/// * **Backpressure**: stop reading a side while [`wants_read`](Self::wants_read) says no.
///
/// A session ends with [`Action::Close`], followed by an empty `CommitRules` if it
/// ever had rules; it is forgotten once that commit is acknowledged.
///
/// The caller owns the clock and passes `now` in (a complete program that reads it
/// is `core/examples/drive.rs`):
///
/// ```
/// use std::time::Instant;
/// use ftp_proxy_core::{Action, Config, Input, Pcg32, Proxy, Side};
///
/// fn walk_through(now: Instant) {
///     let mut proxy = Proxy::new(Config::default(), Box::new(Pcg32::new(1))).unwrap();
///     let client = "203.0.113.10:40000".parse().unwrap();
///     let id = proxy.accept(now, client, "198.51.100.10:21".parse().unwrap(), 0).unwrap();
///     assert!(matches!(proxy.poll_action(), Some((_, Action::ConnectServer { .. }))));
///     let local = "198.51.100.1:50000".parse().unwrap();
///     proxy.handle(now, id, Input::ServerSocketOpened { proxy: local });
///     proxy.handle(now, id, Input::Data(Side::Server, "220 hi\r\n".into()));
///     assert_eq!(proxy.poll_action(), Some((id, Action::Send(Side::Client, "220 hi\r\n".into()))));
///
///     proxy.handle(now, id, Input::Data(Side::Client, "PORT 10,0,0,5,4,1\r\n".into()));
///     let Some((_, Action::CommitRules { txn, rules, .. })) = proxy.poll_action() else { panic!() };
///     assert_eq!(rules.len(), 2);
///     assert_eq!(proxy.poll_action(), None); // the rewritten PORT waits for the rules
///     proxy.handle(now, id, Input::RulesCommitted { txn, result: Ok(()) });
///     let Some((_, Action::Send(Side::Server, line))) = proxy.poll_action() else { panic!() };
///     assert!(line.starts_with(b"PORT 198,51,100,1,"));
/// }
/// ```
pub struct Proxy {
    shared: Shared,
    sessions: BTreeMap<SessionId, Session>,
    next_id: u32,
    shutting_down: bool,
}

/// What the proxy lends its sessions on every call (kept apart from `sessions`
/// so that one session and the shared state can be borrowed at once).
struct Shared {
    cfg: Config,
    rng: Box<dyn RandomSource>,
    /// Proxy ports held by live sessions.
    ports: BTreeSet<u16>,
    out: VecDeque<(SessionId, Action)>,
}

impl Shared {
    fn cx(&mut self, now: Instant, live: usize) -> Cx<'_> {
        Cx {
            now,
            rng: &mut *self.rng,
            cfg: &self.cfg,
            ports: &mut self.ports,
            out: &mut self.out,
            live,
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("sessions", &self.sessions.len())
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl Proxy {
    /// A proxy with no sessions. Fails if `cfg` is outside the man page's ranges.
    pub fn new(cfg: Config, rng: Box<dyn RandomSource>) -> Result<Proxy, ConfigError> {
        cfg.validate()?;
        Ok(Proxy {
            shared: Shared {
                cfg,
                rng,
                ports: BTreeSet::new(),
                out: VecDeque::new(),
            },
            sessions: BTreeMap::new(),
            next_id: 1,
            shutting_down: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// Live sessions, including ended ones whose rules are still being removed.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether the session exists and still relays (not closing).
    pub fn is_open(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(Session::is_open)
    }

    /// Ids of all live sessions, in order.
    pub fn session_ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.keys().copied()
    }

    /// A new client connection. `orig_dst` is where the client meant to go (the
    /// diverted destination; in reverse mode the listener's own address) and
    /// `client_rdomain` its routing domain (0 where there are none).
    pub fn accept(
        &mut self,
        now: Instant,
        client: SocketAddr,
        orig_dst: SocketAddr,
        client_rdomain: u32,
    ) -> Result<SessionId, Refused> {
        if self.shutting_down {
            return Err(Refused::ShuttingDown);
        }
        if self.sessions.len() >= self.shared.cfg.max_sessions as usize {
            error!(
                "client limit ({}) reached, refusing connection from {}",
                self.shared.cfg.max_sessions,
                client.ip()
            );
            return Err(Refused::Limit(self.shared.cfg.max_sessions));
        }
        let id = self.fresh_id();
        let live = self.sessions.len() + 1;
        let mut cx = self.shared.cx(now, live);
        let session = Session::new(&mut cx, id, client, orig_dst, client_rdomain);
        self.sessions.insert(id, session);
        Ok(id)
    }

    /// The next id no live session holds. Ids count up from 1 and wrap to 1 after
    /// `u32::MAX`; a wrapped id that still names a live (or closing) session is
    /// skipped, so its rules and log lines are never confused with a new one's. At
    /// most `max_sessions` (500) ids are live, so the search ends within 501 steps.
    fn fresh_id(&mut self) -> SessionId {
        loop {
            let id = SessionId(self.next_id);
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    fn with_session(
        &mut self,
        now: Instant,
        id: SessionId,
        f: impl FnOnce(&mut Session, &mut Cx<'_>),
    ) {
        let live = self.sessions.len();
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut cx = self.shared.cx(now, live);
        f(session, &mut cx);
        if session.is_done() {
            self.sessions.remove(&id);
        }
    }

    /// Feeds one input to a session. Inputs for unknown (already forgotten) sessions
    /// are ignored, so late socket events are harmless.
    pub fn handle(&mut self, now: Instant, id: SessionId, input: Input) {
        self.with_session(now, id, |s, cx| s.handle(cx, input));
    }

    /// Runs every timer that is due: idle timeouts and commit retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.next_timeout().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.with_session(now, id, |s, cx| s.handle_timeout(cx));
        }
    }

    /// The next action to execute, oldest first.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<(SessionId, Action)> {
        self.shared.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(Session::next_timeout)
            .min()
    }

    /// Whether the caller should read more from that side of the session. False
    /// while the session has unparsed input piling up (a commit is in flight) or has ended.
    pub fn wants_read(&self, id: SessionId, side: Side) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.wants_read(side))
    }

    /// Ends every session (their rules are removed through the usual actions) and
    /// refuses new ones. The caller keeps driving until [`is_empty`](Self::is_empty).
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.with_session(now, id, |s, cx| s.close(cx, CloseReason::Shutdown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::Pcg32;

    #[test]
    fn ids_wrap_around_live_sessions() {
        let mut p = Proxy::new(Config::default(), Box::new(Pcg32::new(1))).unwrap();
        let now = Instant::now();
        let client: SocketAddr = "203.0.113.10:40000".parse().unwrap();
        let server: SocketAddr = "198.51.100.10:21".parse().unwrap();
        let first = p.accept(now, client, server, 0).unwrap();
        let second = p.accept(now, client, server, 0).unwrap();
        assert_eq!((first, second), (SessionId(1), SessionId(2)));
        p.next_id = u32::MAX;
        let last = p.accept(now, client, server, 0).unwrap();
        assert_eq!(last, SessionId(u32::MAX));
        // 1 and 2 are live: the wrap skips them (and 0 is never used).
        assert_eq!(p.accept(now, client, server, 0).unwrap(), SessionId(3));
        assert_eq!(p.len(), 4);
        assert!(p.is_open(first) && p.is_open(second));
        // An ended id becomes free again after the next wrap.
        p.handle(now, first, Input::Eof(Side::Client));
        assert!(!p.is_open(first));
        p.next_id = u32::MAX;
        // u32::MAX is live, so the next is 1 again.
        assert_eq!(p.accept(now, client, server, 0).unwrap(), SessionId(1));
    }
}
