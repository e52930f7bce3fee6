//! The multi-session proxy: the type integrators drive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Instant;

use log::error;

use crate::config::{Config, ConfigError};
use crate::event::{Accept, Action, CloseReason, Input, Refused, SessionId};
use crate::rand::RandomSource;
use crate::route::RouteTable;
use crate::session::{Cx, Session};

/// Every FTP session of one proxy instance, with no IO of its own.
///
/// `Proxy` is `Send`: it can move into a spawned task or thread.
///
/// # Driving contract
///
/// The driver owns the sockets, the clock and the packet filter. Like quinn-proto's
/// `Connection`, the proxy takes inputs and emits outputs the driver drains; the
/// driver never has to poll per-session state.
///
/// * **Inputs** (each takes `now`, which must never go backwards):
///   [`accept`](Self::accept) for a new client connection, [`handle`](Self::handle)
///   for anything that happened to a session's sockets or rules,
///   [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
///   has passed (spurious calls do nothing), and [`shutdown`](Self::shutdown), the
///   one way to end sessions from outside.
/// * **Outputs**: after *every* input, drain [`poll_action`](Self::poll_action) until
///   it returns `None`, executing actions in order, then re-read
///   [`poll_timeout`](Self::poll_timeout). Actions of one session must be executed in
///   the order given: a rewritten line follows the commit of its rules. Executing an
///   action may feed an input at once (a synchronous commit's acknowledgement, a
///   write error); its actions queue behind the rest.
/// * **Acknowledgements**: every [`Action::CommitRules`] must be answered with
///   [`Input::RulesCommitted`] (immediately, or later); the session holds back the
///   line that depends on it until then. The corners of this handshake are listed
///   on [`Action::CommitRules`].
/// * **Backpressure**: read a side only while its last [`Action::ReadInterest`]
///   said `on` (every side starts on), and report written bytes with
///   [`Input::Written`]: the core counts queued output per side and turns reading
///   off and on itself. The thresholds are [`crate::OUTPUT_HIGH_WATER`] and
///   [`crate::OUTPUT_LOW_WATER`].
///
/// A session ends with [`Action::Close`], followed by an empty `CommitRules` if it
/// ever had rules; it is forgotten once that commit is acknowledged (with
/// [`Action::RulesMayRemain`] first if the removal failed).
///
/// # Logging
///
/// The core logs through the `log` crate, with the original's wording and levels:
/// the session start, every control line at debug level, each negotiation, refused
/// commands, bad ports, the reason a session ends, and refused accepts. The driver
/// logs what only it sees (socket errors, signals, its relay) and one summary line
/// per session from [`Action::Close`]'s [`Summary`](crate::Summary); it must not
/// log the close reason or a [`Refused`] again.
///
/// The caller owns the clock and passes `now` in (a complete program that reads it
/// is `core/examples/drive.rs`):
///
/// ```
/// use std::time::Instant;
/// use ftp_proxy_core::{Accept, Action, Config, Input, Pcg32, Proxy, Side};
///
/// fn walk_through(now: Instant) {
///     let mut proxy = Proxy::new(Config::default(), Box::new(Pcg32::new(1))).unwrap();
///     let client = "203.0.113.10:40000".parse().unwrap();
///     let orig_dst = "198.51.100.10:21".parse().unwrap();
///     let id = proxy.accept(now, Accept::new(client, orig_dst)).unwrap();
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
    rng: Box<dyn RandomSource + Send>,
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
    pub fn new(cfg: Config, rng: Box<dyn RandomSource + Send>) -> Result<Proxy, ConfigError> {
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

    /// Sets the id the next accepted session tries first, so that a test can reach
    /// the wrap-around at `u32::MAX` without four billion accepts. Internal: exposed
    /// only through `internals::set_next_session_id`.
    #[cfg(feature = "internals")]
    pub(crate) fn set_next_id(&mut self, id: u32) {
        self.next_id = id.max(1);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// Replaces the route table (`--route-file`, re-read on reload). Sessions that
    /// have chosen their server keep it; every `USER` from now on is looked up in
    /// `table`, including that of a session accepted before. Fails, keeping
    /// everything as it was, when the proxy was started without a table
    /// ([`Config::routes`]): a table would change the mode its sessions are in.
    pub fn set_routes(&mut self, table: RouteTable) -> Result<(), ConfigError> {
        match self.shared.cfg.routes.as_mut() {
            Some(routes) => {
                *routes = table;
                Ok(())
            }
            None => Err(ConfigError::NoRoutes),
        }
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

    /// A new client connection. On `Err` the core has logged the refusal; the
    /// driver closes the socket without a reply.
    pub fn accept(&mut self, now: Instant, conn: Accept) -> Result<SessionId, Refused> {
        if self.shutting_down {
            return Err(Refused::ShuttingDown);
        }
        if self.sessions.len() >= self.shared.cfg.max_sessions as usize {
            error!(
                "client limit ({}) reached, refusing connection from {}",
                self.shared.cfg.max_sessions,
                conn.client.ip()
            );
            return Err(Refused::Limit(self.shared.cfg.max_sessions));
        }
        let id = self.fresh_id();
        let live = self.sessions.len() + 1;
        let mut cx = self.shared.cx(now, live);
        let session = Session::new(&mut cx, id, conn);
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
        session.sync_read_interest(&mut cx);
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
