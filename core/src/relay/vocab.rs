//! What a driver and the [`Relay`](super::Relay) say to each other: ids, the answer to
//! an accepted connection, the decisions, the socket facts and errors.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::SocketError;
use crate::forward::{Bridge, Forward};
use crate::rules::Anchor;

/// A listening socket the relay asked for, from [`PreparedCommit::listen`].
///
/// Ids of listeners and pairs come from one `u64` counter per [`Relay`](super::Relay)
/// and are never reused: at a billion a second it would take 584 years to wrap. A
/// late event for a socket already closed therefore finds nothing and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(pub u64);

/// A data connection the relay carries: two legs and the bytes between them. Never
/// reused, like [`ListenerId`] (the two share one counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PairId(pub u64);

/// Bounds on the data connections a relay carries, beyond its `max_pairs` cap
/// ([`Relay::new`](super::Relay::new), the daemon's `-m`).
///
/// pf keeps a state for as long as packets flow and expires it by its own timers;
/// a relay holds two sockets per connection, so a client that keeps its sockets
/// open, or ends its sessions and leaves their transfers running, could otherwise
/// hold slots of the shared cap forever (docs/behavior.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Data connections one session may have in progress at once (a join's leg
    /// waiting for its partner counts). Those that outlive an ended session of the
    /// same client address count too: a session starts one only while its own plus
    /// its address's orphaned ones are fewer.
    pub per_session: usize,
    /// A data connection that moves no byte for this long is reset; so is a join's
    /// leg whose partner has not arrived in this time.
    pub idle: Duration,
    /// The shorter idle limit of a connection that one side has closed, or whose
    /// control session has ended.
    pub linger: Duration,
}

impl Default for RelayLimits {
    /// 2 per session, 600 s idle, 15 s linger: the daemon's `--relay-per-session`,
    /// `--relay-idle-timeout` and `--relay-linger` defaults.
    fn default() -> RelayLimits {
        RelayLimits {
            per_session: 2,
            idle: Duration::from_secs(600),
            linger: Duration::from_secs(15),
        }
    }
}

/// What protects the bytes of one leg. The policy treats them all alike; which legs
/// are TLS (`PROT P` towards clients, every data leg towards a `--server-tls`
/// server) is decided in [`crate::ftps`]. The two TLS variants say which end of
/// the handshake the proxy is: RFC 4217 makes the FTP client the TLS client of
/// every data connection, whoever connects to whom.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// The bytes cross the socket as they are.
    Plain,
    /// The leg carries TLS records (RFC 4217 `PROT P`) with the proxy as the TLS
    /// server (the client's leg): the driver runs the handshake and the record
    /// layer, the policy sees plaintext byte counts.
    Tls,
    /// The leg carries TLS records with the proxy as the TLS client (the leg to
    /// an FTPS server, `--server-tls`): the driver resumes the TLS session of the
    /// session's server control connection on it, which servers such as vsftpd
    /// (`require_ssl_reuse`) insist on.
    TlsToServer,
}

/// How one leg of a pair came to be.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Accepted on `listener` from `peer` (unmapped: an IPv4 peer is IPv4).
    Accepted {
        /// The listener it arrived on.
        listener: ListenerId,
        /// Who connected.
        peer: SocketAddr,
    },
    /// Connected by the proxy to `to`, from `from` (the bind address of the latest
    /// attempt; `None`: the kernel's choice).
    Connected {
        /// The real endpoint.
        to: SocketAddr,
        /// The source the connection was made from.
        from: Option<SocketAddr>,
    },
}

/// One leg of a pair: how it came and what protects it ([`Relay::legs`](super::Relay::legs)).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leg {
    /// Accepted or connected, and where.
    pub origin: Origin,
    /// Plain (today) or protected.
    pub security: Security,
}

/// The answer to a connection accepted on a relay listener
/// ([`Relay::accept`](super::Relay::accept)). The relay has logged it already.
#[must_use = "the accepted socket must be refused, carried or held as the relay says"]
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Turn it away with a reset (`SO_LINGER` 0 where the socket API allows it): a
    /// clean close would look like an empty, complete transfer to whoever connected.
    Refuse(Refusal),
    /// Carry it as the first leg of `pair`. The second leg follows as
    /// [`Decision::Connect`], in the decisions queued by this call.
    Open {
        /// The new pair.
        pair: PairId,
        /// What protects this leg.
        security: Security,
    },
    /// Keep it, unread: the first leg of a join ([`Forward::join`]), waiting for its
    /// partner on the other leg's listener. It is named by the listener it arrived on
    /// ([`Admission::Join::with`], [`Decision::ResetHeld`]).
    Hold {
        /// What protects this leg.
        security: Security,
    },
    /// Pair it with the connection held on listener `with`: the join is complete.
    /// This connection is the pair's first leg (`up` in [`PairState`] flows from it),
    /// the held one its second; nothing is connected.
    Join {
        /// The new pair.
        pair: PairId,
        /// The listener whose held connection is the other leg.
        with: ListenerId,
        /// What protects this leg.
        security: Security,
    },
}

/// Why an accepted connection was turned away. `Display` is the text of the
/// relay's notice line after `refused: `.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not the rules' source, which is given.
    Stranger(IpAddr),
    /// `keep state (max 1)`: the negotiation's data connection is in progress (or
    /// held, waiting for its partner).
    InProgress,
    /// `keep state (max 1)`: the negotiation's data connection has come and gone;
    /// one negotiation lets exactly one through.
    Used,
    /// The session already has `own` in progress, and `orphans` more outlive ended
    /// sessions of its client address `client` ([`RelayLimits::per_session`]).
    SessionLimit {
        /// In progress (or held) for this session.
        own: usize,
        /// In progress for ended sessions of the same client address.
        orphans: usize,
        /// That address, when the driver named it
        /// ([`Relay::session_started`](super::Relay::session_started)).
        client: Option<IpAddr>,
    },
    /// This many are in progress, the most there may be (`max_pairs`, `-m`).
    Limit(usize),
    /// The listener is not (or no longer) the relay's: a late accept on a socket
    /// the driver was told to close.
    NotListening,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Stranger(from) => write!(f, "a stranger, only {from} may connect"),
            Refusal::InProgress => f.write_str("one is already in progress for this negotiation"),
            Refusal::Used => f.write_str(
                "this negotiation's one data connection has already been made (PASV, EPSV, PORT or EPRT again for another)",
            ),
            Refusal::SessionLimit {
                own,
                orphans: 0,
                ..
            } => write!(
                f,
                "data-connection limit reached, the session has {own} in progress (--relay-per-session)"
            ),
            Refusal::SessionLimit {
                own,
                orphans,
                client,
            } => {
                write!(f, "data-connection limit reached, the session has {own} in progress and {orphans} more outlive earlier sessions")?;
                if let Some(client) = client {
                    write!(f, " of {client}")?;
                }
                f.write_str(" (--relay-per-session)")
            }
            Refusal::Limit(n) => write!(
                f,
                "data-connection limit reached, {n} in progress in all sessions (-m)"
            ),
            Refusal::NotListening => f.write_str("not listening"),
        }
    }
}

/// What the relay asks of the driver, from [`Relay::poll_decision`](super::Relay::poll_decision).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Close this listening socket (its rules are gone). Connections it accepted go on.
    StopListening(ListenerId),
    /// Open the pair's second leg: connect to `to`, bound to `from` first if given.
    /// Report the outcome with [`Relay::connected`](super::Relay::connected) or
    /// [`Relay::connect_failed`](super::Relay::connect_failed); a failed bind may
    /// bring another `Connect` for the same pair, from a fallback source.
    Connect {
        /// The pair whose second leg this is.
        pair: PairId,
        /// The real endpoint.
        to: SocketAddr,
        /// The source address to bind, `None` for the kernel's choice.
        from: Option<SocketAddr>,
        /// What protects this leg.
        security: Security,
    },
    /// Open the first leg of a bridge ([`Mode::Bridged`](crate::Mode::Bridged)) by
    /// connecting to `to`, bound to `from` first if given, in place of an accepted
    /// connection; its [`Decision::Connect`] (the second leg) follows at once. The
    /// leg is ready once the socket says so (a failed connect shows as a failed read
    /// or write: report it with [`Relay::failed`](super::Relay::failed)); one that
    /// cannot be started is reported the same way, with [`IoOp::Setup`].
    Dial {
        /// The new pair.
        pair: PairId,
        /// The server's passive port.
        to: SocketAddr,
        /// The source address to bind, `None` for the kernel's choice.
        from: Option<SocketAddr>,
        /// What protects this leg.
        security: Security,
    },
    /// Observe the pair afresh and [`report`](super::Relay::report) it: take both its
    /// sockets as readable (a read that finds nothing says so), move what can be
    /// moved, and report. The relay asks after a transfer's final reply, which may
    /// be handled before the readiness of data that arrived ahead of it.
    Refresh(PairId),
    /// Reset the connection held on this listener for a join (its partner never
    /// came, its rules were replaced, or its session ended on a desync).
    ResetHeld(ListenerId),
    /// The pair is over: close both legs, with a reset if `reset` (an abort on one
    /// side is an abort on both, and a clean close would tell a receiver the
    /// transfer is complete), cleanly otherwise. The relay has logged it.
    Close {
        /// The pair.
        pair: PairId,
        /// Reset (`SO_LINGER` 0) rather than close.
        reset: bool,
        /// Why.
        end: PairEnd,
        /// Bytes moved from the first leg to the second.
        up: u64,
        /// Bytes moved from the second leg to the first.
        down: u64,
    },
}

/// Why a pair ended ([`Decision::Close`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairEnd {
    /// Both directions ended: each end of file passed on after all the data.
    Done,
    /// The session relayed its transfer's final reply and one side had finished;
    /// the other never closed (see [`Relay::transfer_done`](super::Relay::transfer_done)).
    Finished,
    /// A socket operation on the pair failed.
    Failed {
        /// Which.
        op: IoOp,
        /// How.
        error: SocketError,
    },
    /// The second leg could not be connected.
    ConnectFailed(ConnectError),
    /// No byte moved for `limit`.
    Idle {
        /// The limit that applied.
        limit: Duration,
        /// Which one, and why.
        cause: IdleCause,
    },
    /// Its session ended on a reply desync ([`Relay::kill_session`](super::Relay::kill_session)).
    Killed,
    /// Everything is removed ([`Relay::remove_all`](super::Relay::remove_all)).
    Exit,
}

impl PairEnd {
    /// Whether the pair is closed with a reset: every end but [`Done`](Self::Done)
    /// and [`Finished`](Self::Finished).
    pub fn resets(&self) -> bool {
        !matches!(self, PairEnd::Done | PairEnd::Finished)
    }
}

/// Which idle limit reset a pair.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleCause {
    /// [`RelayLimits::idle`].
    Idle,
    /// [`RelayLimits::linger`]: one side has sent its end of file (or failed).
    HalfClosed,
    /// [`RelayLimits::linger`]: its control session has ended.
    SessionEnded,
}

impl fmt::Display for IdleCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdleCause::Idle => "idle",
            IdleCause::HalfClosed => "half-closed",
            IdleCause::SessionEnded => "its session has ended",
        })
    }
}

/// A socket operation of a pair ([`Relay::failed`](super::Relay::failed)).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Reading a leg.
    Read,
    /// Writing a leg.
    Write,
    /// Passing an end of file on (`shutdown(Write)`).
    Shutdown,
    /// Preparing a leg's socket (registering it with the poller, and the like).
    Setup,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Shutdown => "shutdown",
            IoOp::Setup => "setup",
        })
    }
}

/// Why a [`Decision::Connect`] did not give a connected leg.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// The socket could not be bound to `from` (the decision's source). The relay
    /// may answer with another `Connect` from a fallback source.
    Bind {
        /// The address of the decision.
        from: SocketAddr,
        /// What `bind(2)` said.
        error: SocketError,
    },
    /// The connect could not be started: no socket, or `connect(2)` failed at once.
    Start {
        /// The target.
        to: SocketAddr,
        /// What failed.
        error: SocketError,
    },
    /// The connect was under way and failed: `to` refused it, was unreachable, or
    /// did not answer in the kernel's time (a driver with a connect timeout of its
    /// own reports it here, as [`std::io::ErrorKind::TimedOut`]).
    Refused {
        /// The target.
        to: SocketAddr,
        /// What the socket said.
        error: SocketError,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Bind { from, error } => write!(f, "cannot bind {from}: {error}"),
            ConnectError::Start { to, error } => write!(f, "cannot connect to {to}: {error}"),
            ConnectError::Refused { to, error } => {
                write!(f, "{to} refused it or did not answer: {error}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// One direction of a pair as the driver's sockets tell it, for
/// [`Relay::report`](super::Relay::report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Bytes written to the destination so far.
    pub moved: u64,
    /// End of file (or an error) was read from the source: nothing more comes.
    pub eof: bool,
    /// That end of file was passed on to the destination (`shutdown(Write)`), after
    /// every byte before it.
    pub shut: bool,
    /// The driver holds nothing for the destination.
    pub empty: bool,
    /// The source has nothing to read now: its end of file was read, or the last
    /// read would have blocked.
    pub quiet: bool,
}

impl Default for Flow {
    /// Nothing moved, nothing buffered, nothing known of the source.
    fn default() -> Flow {
        Flow {
            moved: 0,
            eof: false,
            shut: false,
            empty: true,
            quiet: false,
        }
    }
}

/// Both directions of a pair: `up` from its first leg (the accepted one; for a
/// join, the one that arrived second) to the second, `down` back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairState {
    /// First leg to second.
    pub up: Flow,
    /// Second leg to first.
    pub down: Flow,
}

/// One anchor's new rule set, checked and planned but not yet in force
/// ([`Relay::prepare`](super::Relay::prepare)).
///
/// Bind a listening socket for each of [`listen`](Self::listen); if every bind
/// succeeds, [`Relay::commit`](super::Relay::commit) it; if one fails, close the
/// ones bound and drop this: the relay is as it was (the commit is all or nothing).
#[must_use = "bind its listeners, then Relay::commit it; dropping it leaves the old rules in force"]
#[derive(Debug)]
pub struct PreparedCommit {
    pub(crate) anchor: Anchor,
    pub(crate) old: Vec<ListenerId>,
    pub(crate) keep: Vec<(ListenerId, Forward)>,
    pub(crate) create: Vec<(ListenerId, Forward)>,
    pub(crate) bridges: Vec<Bridge>,
    pub(crate) removal: bool,
}

impl PreparedCommit {
    /// The anchor whose rules these are.
    pub fn anchor(&self) -> Anchor {
        self.anchor
    }

    /// The listening sockets to bind before the commit, in the rules' order: the
    /// forwards whose `listen` address no listener of the anchor holds yet.
    pub fn listen(&self) -> impl Iterator<Item = (ListenerId, SocketAddr)> + '_ {
        self.create.iter().map(|(id, f)| (*id, f.listen))
    }

    /// The bridges of the new set: data connections the relay connects on both
    /// sides once the commit is in force ([`Decision::Dial`]).
    pub fn bridges(&self) -> &[Bridge] {
        &self.bridges
    }

    /// Every forward of the new set, with the listener that will carry it (kept or new).
    pub fn forwards(&self) -> impl Iterator<Item = (ListenerId, &Forward)> + '_ {
        self.keep.iter().chain(&self.create).map(|(id, f)| (*id, f))
    }
}
