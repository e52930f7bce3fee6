//! The userspace data path's policy: what a session's rules mean as sockets, and
//! every rule a driver that carries data connections itself must keep.

mod vocab;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::error::SocketError;
use crate::event::SessionId;
use crate::forward::{bridges, forwards, Bridge, Forward, ForwardError, Source};
use crate::rules::{Anchor, LegSecurity, Rule, NAT_PORTS};

pub use vocab::{
    Admission, ConnectError, Decision, Flow, IdleCause, IoOp, Leg, ListenerId, Origin, PairEnd,
    PairId, PairState, PreparedCommit, Refusal, RelayLimits, Security,
};

/// How often a [`Relay`] checks its data connections against their idle limits:
/// the resolution of [`RelayLimits::idle`] and [`RelayLimits::linger`].
pub const RELAY_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The data path's policy for a driver without a packet filter: which listeners
/// exist, who is admitted, what is connected to what, what is paired, and when a
/// data connection is over. Sans-IO: it owns no socket and reads no clock.
///
/// A packet filter carries a data connection in the kernel: the `rdr-to` rule
/// steers its first SYN to the real endpoint and the paired `nat-to` rule rewrites
/// its source. A driver without one (the mio runtime's relay, a threaded or async
/// proxy) carries the connection itself: it feeds the relay the rule sets of its
/// [`Action::CommitRules`](crate::Action::CommitRules), the connections that arrive
/// and the facts of its sockets, and executes what the relay decides. The driver
/// keeps only the mechanics: sockets, readiness, buffers, copying.
///
/// # Driving contract
///
/// As [`Proxy`](crate::Proxy), in four groups:
///
/// * **Getters** (`&self`): [`poll_timeout`](Self::poll_timeout),
///   [`legs`](Self::legs), [`forward`](Self::forward),
///   [`listener_count`](Self::listener_count), [`pair_count`](Self::pair_count),
///   [`held_count`](Self::held_count), [`limits`](Self::limits).
/// * **Inputs**: the rules ([`prepare`](Self::prepare), then [`commit`](Self::commit)),
///   a connection accepted on a listener ([`accept`](Self::accept), answered at once
///   with an [`Admission`]), the outcome of a connect ([`connected`](Self::connected),
///   [`connect_failed`](Self::connect_failed)), the state of a pair's sockets
///   ([`report`](Self::report), [`failed`](Self::failed)), the clock
///   ([`handle_timeout`](Self::handle_timeout) once [`poll_timeout`](Self::poll_timeout)
///   has passed; spurious calls do nothing) and the sessions' story
///   ([`session_started`](Self::session_started), [`session_ended`](Self::session_ended),
///   [`transfer_done`](Self::transfer_done), [`kill_session`](Self::kill_session)),
///   and the end ([`remove_all`](Self::remove_all)). `now` must never go backwards.
/// * **Configuration**: [`new`](Self::new), [`set_limits`](Self::set_limits).
/// * **Output**: after *every* input, drain [`poll_decision`](Self::poll_decision)
///   until it returns `None` and execute each [`Decision`] in order. Executing one
///   may feed an input at once (a connect that fails to start, a refresh's report);
///   its decisions queue behind the rest.
///
/// The relay logs (through `log`, with the session id first) every decision a
/// support question asks about; the driver logs only its own mechanics.
///
/// # Semantics
///
/// The rules of one commit become [`Forward`]s ([`forwards`]); each forward is one
/// negotiation's data connection.
///
/// * **Listen** on [`Forward::listen`], the rdr-to rule's destination: the address
///   and proxy port the core advertised in its rewritten 227/229/PORT/EPRT.
/// * **Admit**, in this order of checks: only [`Forward::from`]
///   ([`Forward::admits`]; a stranger is [`Refusal::Stranger`]); only **one data
///   connection** per negotiation, ever (the rules' `keep state (max 1)`, read as
///   "one negotiation lets exactly one connection through"): every later one is
///   refused, while the first is in progress ([`Refusal::InProgress`]) and after it
///   has ended ([`Refusal::Used`]). A client that wants a second transfer negotiates
///   again, as clients do. Under pf the original is looser: `max` limits
///   *concurrent* states (pf.conf(5)), so once the first state has gone a new SYN
///   matches the rule again for as long as the rules stand; a port that keeps
///   admitting that long gives a late or forged connection from the admitted address
///   a window no transfer needs (docs/behavior.md). Then the caps: at most
///   [`RelayLimits::per_session`] in progress for the session, counting the pairs
///   that outlive ended sessions of the same client address
///   ([`Refusal::SessionLimit`]), so that ending sessions buys a client no more
///   slots than keeping them; and at most `max_pairs` in all ([`Refusal::Limit`]),
///   since pairs outlive their sessions and the session limit alone does not bound
///   them. A connection refused for a cap does not use the negotiation up: the next
///   may get through. **Every refusal is a reset**, never a clean close, which
///   would look like an empty, complete transfer to whoever connected (pf drops
///   the SYN instead).
/// * **Connect** to [`Forward::target`], the rdr-to translation, from
///   [`Forward::source`], the paired nat-to address ([`Decision::Connect`]):
///   [`Source::bind_addr`](crate::Source::bind_addr) says which port; a single-port
///   range (port 20 with `-r` and PORT) is bound exactly, a range means any port the
///   kernel picks (pf would pick from 50001-65535). When the single port cannot be
///   bound (no privilege, or in use) the relay falls back to an ephemeral port of the
///   same address, and when the address is not local (a transparent setup) to the
///   kernel's choice; each fallback is logged once per relay. A connect that fails,
///   at once or later, resets the accepted connection. One that never completes is
///   bounded by the kernel's SYN retries, and by the idle limit.
/// * **Copy** the bytes both ways unchanged, passing each side's end of file on as
///   a half-close once everything before it is written; an error or reset on one
///   side resets the other ([`Relay::failed`]), so neither mistakes an abort for a
///   complete transfer. This is the driver's work; it reports each direction's
///   facts ([`PairState`]) after every round of copying.
/// * **Replacing the rules** (the next commit for the same anchor) is all or
///   nothing, like a pf transaction: [`prepare`](Self::prepare) plans it without
///   changing anything, the driver binds the new listeners, and only
///   [`commit`](Self::commit) puts it in force. A bind that fails with `EADDRINUSE`
///   answers the core's commit with [`FilterError::AddrInUse`](crate::FilterError)
///   (the core then draws another proxy port); the old set stays. In force, the
///   listeners of forwards that are gone close ([`Decision::StopListening`]), but
///   data connections in progress run to their end, as pf keeps a state after its
///   rule is removed. A forward whose `listen` address is in both the old and the
///   new set keeps its listening socket (binding it again would fail) and takes the
///   new forward whole: its `from`, `target` and `source`, and a fresh
///   one-connection allowance, since every commit is a new negotiation (a replaced
///   pf rule's `max 1` counts no state of the old rule either). So a new
///   negotiation that reuses a live proxy port for a different target sends its
///   connection to the new target, while a pair already in progress through that
///   port keeps its own. Each negotiation that no connection ever used is logged
///   when its rules give way.
/// * **Joins** ([`Forward::join`], the rules of
///   [`Mode::Joined`](crate::Mode::Joined)): two forwards name each other's `listen`
///   address as their `target`. One connection is admitted on each (from its own
///   `from`); the first is held ([`Admission::Hold`]) until the second arrives
///   ([`Admission::Join`]), in either order; nothing is connected. A held leg counts
///   against the session's cap, and is reset ([`Decision::ResetHeld`]) when its
///   partner has not come within [`RelayLimits::idle`], when its rules are replaced,
///   or when its session is killed.
/// * **Bridges** ([`Bridge`], the rules of [`Mode::Bridged`](crate::Mode::Bridged),
///   `--server-data-mode passive`): no listener; once the commit is in force the
///   relay connects both legs itself, the first to the server's passive port from
///   the proxy's address ([`Decision::Dial`]), the second to the client's port from
///   the address the client reached ([`Decision::Connect`], with the fallbacks of
///   "Connect"). The caps apply as at an admission; over them the bridge is not
///   made and a notice says so. A failed dial is reported with
///   [`failed`](Self::failed) and resets the pair.
/// * **Idle limits**: a pair that moves no byte for [`RelayLimits::idle`] is reset;
///   one that is half-closed (a side sent its end of file, or failed), or whose
///   control session has ended, after the shorter [`RelayLimits::linger`]. A byte
///   counts as moved when the driver reports it written, and also when a leg's
///   kernel send queue shrinks (the `unsent` probe of
///   [`handle_timeout`](Self::handle_timeout); Linux `SIOCOUTQ`), so a slow reader
///   still draining a backlog handed to the kernel long ago is alive. The limits are
///   checked every [`RELAY_SWEEP_EVERY`].
/// * **Orphans**: a data connection outlives its control session (pf keeps the
///   state; some servers finish a download after the client's `QUIT`). The driver
///   names each session's client address ([`session_started`](Self::session_started));
///   a session's pairs become orphans when it ends
///   ([`session_ended`](Self::session_ended)) and count against that address's
///   later sessions.
/// * **Finished transfers**: after the session relays a transfer's final reply
///   ([`Action::TransferDone`](crate::Action::TransferDone),
///   [`transfer_done`](Self::transfer_done)), each of its pairs is over as soon as
///   one side has finished, without waiting for the other side's end of file
///   (rclone's `serve ftp` never sends it after an upload, so every upload would
///   otherwise count until `linger`, and the third of a session be refused). One
///   direction has finished when its end of file was read and passed on after
///   every byte before it; it must be the direction that carried the data, or
///   neither carried any (a receiver that closed its sending side early while the
///   data still flows the other way is not finished); and nothing is in flight the
///   other way: its buffer is empty and its source quiet. It is closed cleanly
///   ([`PairEnd::Finished`]): there is no unread input, so no reset is sent, and
///   what the kernel still holds for the peer is delivered after the close. The one
///   case it cannot see: a receiver that closed its sending side before a single
///   byte of the data reached the relay, with all of that data still on the network
///   when the final reply is handled. It applies to the pairs that exist then: a
///   data connection starts before the transfer's final reply can be sent, and a
///   later one belongs to a later transfer.
/// * **Replies out of step** ([`Action::EndDataConnections`](crate::Action::EndDataConnections),
///   [`kill_session`](Self::kill_session)): nothing the session negotiated may
///   outlive it; its pairs and its held legs are reset, and its listeners go with
///   the empty commit that follows.
/// * **Exit** ([`remove_all`](Self::remove_all)): relayed connections cannot outlive
///   the process. Each one in progress is reset on both sides: a clean close would
///   send an end of file, which in stream mode tells the receiver the transfer is
///   complete.
/// * Tags, queues, logging and routing-table options of the rules have no meaning
///   in userspace and are ignored.
///
/// # What it logs
///
/// At notice (`warn!`), with the session id: the support answers to a `425` or
/// `426`.
///
/// | line | what happened |
/// | --- | --- |
/// | `#3 data connection failed: A never connected to B:P before a new negotiation replaced the rules` | the originator never reached the proxy port; the client or server asked for another one first |
/// | `... before the session ended` | the same, and the session ended |
/// | `#3 data connection from X to B:P refused: a stranger, only A may connect` | a peer other than the negotiating one |
/// | `... refused: one is already in progress for this negotiation` | a second connection to the same proxy port while the first runs |
/// | `... refused: this negotiation's one data connection has already been made (...)` | a later connection to a proxy port whose one connection has ended |
/// | `... refused: data-connection limit reached, ...` | the per-session limit (`the session has N in progress`, and `M more outlive earlier sessions of A` when ended sessions' transfers count) or the global one (`-m`) |
/// | `#3 data connection from X to B:P failed: cannot connect to C:Q from N: ...` | the connection from the nat-to address could not be started |
/// | `#3 X -> B:P -> C:Q data connection failed: C:Q refused it or did not answer: ...` | the target's data port refused or timed out |
/// | `#3 X -> B:P -> C:Q data connection reset: no data for N s (...)` | an idle limit |
/// | `#3 X -> B:P -> C:Q data connection reset: its session ended on a reply desync, ...` | a killed session's pair |
/// | `#3 data connection from X to B:P reset: its partner never connected to C:Q ...` | a join's held leg |
///
/// At info a pair that failed on a socket operation, and each reset at exit; at
/// debug each listener, connect, join and clean end, with its byte counts.
#[derive(Debug)]
pub struct Relay {
    anchors: BTreeMap<Anchor, Vec<ListenerId>>,
    listeners: BTreeMap<ListenerId, Listening>,
    pairs: BTreeMap<PairId, Carried>,
    sessions: BTreeMap<u32, SessionInfo>,
    decisions: VecDeque<Decision>,
    next_id: u64,
    max_pairs: usize,
    limits: RelayLimits,
    /// When the pairs and held legs are next checked against their limits.
    next_sweep: Option<Instant>,
    port_fallback_logged: bool,
    addr_fallback_logged: bool,
}

/// One listener's forward and the state of its negotiation.
#[derive(Debug)]
struct Listening {
    fwd: Forward,
    anchor: Anchor,
    /// The pair in progress of this negotiation, if any.
    active: Option<PairId>,
    /// The negotiation's one data connection was admitted (`max 1`): the listener
    /// takes no other, whether that one is still in progress or has ended.
    used: bool,
    /// For a leg of a join: the connection accepted here while its partner has not
    /// arrived at the other leg's listener.
    held: Option<Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    peer: SocketAddr,
    since: Instant,
}

/// Which source a pair's connect is on ([`Decision::Connect`] fallbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The nat-to source as the rules say.
    Wanted,
    /// The nat-to address with an ephemeral port.
    AnyPort,
    /// The kernel's choice.
    AnyAddr,
}

/// A pair as the policy sees it.
#[derive(Debug)]
struct Carried {
    /// The listener it was admitted on; `None` for a bridge, which none admitted.
    listener: Option<ListenerId>,
    /// The other leg's listener of a join, whose `active` this pair holds too.
    partner: Option<ListenerId>,
    legs: [Leg; 2],
    /// `#3 peer -> listen -> target`, the start of its log lines.
    label: String,
    /// The forward it was admitted under (its own, whatever later commits do).
    fwd: Forward,
    peer: SocketAddr,
    attempt: Attempt,
    connecting: bool,
    session: u32,
    /// That session's client address, when the driver named it.
    client: Option<IpAddr>,
    /// That session has ended.
    orphan: bool,
    /// The session has relayed the final reply of a transfer since this pair began.
    done: bool,
    state: PairState,
    /// What the sweep last saw of the pair's progress, and when it last changed.
    seen: Progress,
    last_active: Instant,
}

impl Carried {
    fn up(&self) -> u64 {
        self.state.up.moved
    }

    fn down(&self) -> u64 {
        self.state.down.moved
    }

    /// One side has sent its end of file (or failed): only the other may still send.
    fn half_closed(&self) -> bool {
        let PairState { up, down } = self.state;
        up.eof || down.eof || up.shut || down.shut
    }

    /// Whether the transfer is over as far as the sockets tell (the rule is on
    /// [`Relay`], "Finished transfers").
    fn finished(&self) -> bool {
        if self.connecting {
            return false;
        }
        let PairState { up, down } = self.state;
        let ended = |this: Flow, other: Flow| {
            this.shut && other.empty && other.quiet && (this.moved > 0 || other.moved == 0)
        };
        ended(up, down) || ended(down, up)
    }
}

/// A pair's progress as a sweep sees it: the bytes moved both ways, and what each
/// leg's send queue still holds for its peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    moved: u64,
    unsent: [Option<u32>; 2],
}

/// The relay's view of one live control session.
#[derive(Debug, Default)]
struct SessionInfo {
    client: Option<IpAddr>,
    /// The load balancer its control connection came through (PROXY protocol),
    /// admitted in the client's place ([`Relay::session_via`]).
    balancer: Option<IpAddr>,
    /// Bytes (up, down) of its data connections that have ended.
    ended_bytes: (u64, u64),
}

/// Why a negotiation's listener gave way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaced {
    NewNegotiation,
    SessionEnded,
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replaced::NewNegotiation => "a new negotiation replaced the rules",
            Replaced::SessionEnded => "the session ended",
        })
    }
}

impl Relay {
    /// A relay carrying at most `max_pairs` data connections at once (the daemon's
    /// `-m`), with the default [`RelayLimits`].
    pub fn new(max_pairs: usize) -> Relay {
        Relay {
            anchors: BTreeMap::new(),
            listeners: BTreeMap::new(),
            pairs: BTreeMap::new(),
            sessions: BTreeMap::new(),
            decisions: VecDeque::new(),
            next_id: 1,
            max_pairs,
            limits: RelayLimits::default(),
            next_sweep: None,
            port_fallback_logged: false,
            addr_fallback_logged: false,
        }
    }

    /// Sets the per-session cap and the idle limits, for every check from now on.
    pub fn set_limits(&mut self, limits: RelayLimits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> RelayLimits {
        self.limits
    }

    /// Listeners in force.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Pairs in progress (connecting, or carrying bytes).
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// Anchors with rules in force (an empty commit removes its anchor).
    pub fn anchor_count(&self) -> usize {
        self.anchors.len()
    }

    /// Join legs held, waiting for their partner.
    pub fn held_count(&self) -> usize {
        self.listeners.values().filter(|l| l.held.is_some()).count()
    }

    /// The forward a listener carries now (a kept listener carries the latest).
    pub fn forward(&self, listener: ListenerId) -> Option<&Forward> {
        self.listeners.get(&listener).map(|l| &l.fwd)
    }

    /// The two legs of a pair in progress: how each came, and what protects it.
    pub fn legs(&self, pair: PairId) -> Option<[Leg; 2]> {
        self.pairs.get(&pair).map(|p| p.legs)
    }

    /// The control session a pair in progress belongs to (a TLS leg is served
    /// with that session's TLS configuration, so that it can resume only that
    /// session's TLS sessions).
    pub fn session_of(&self, pair: PairId) -> Option<SessionId> {
        self.pairs.get(&pair).map(|p| SessionId(p.session))
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: `None` while no
    /// pair is in progress and no leg held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// The next decision to execute, in order; `None` once drained.
    #[must_use]
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    fn alloc(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn arm(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + RELAY_SWEEP_EVERY);
        }
    }

    fn client_of(&self, session: u32) -> Option<IpAddr> {
        self.sessions.get(&session).and_then(|s| s.client)
    }

    // ---- rules ----

    /// Plans `rules` as the new set of `anchor`, changing nothing yet: the rule set
    /// of an [`Action::CommitRules`](crate::Action::CommitRules), empty to remove
    /// the anchor's. The [`PreparedCommit`] names the listeners to bind; a forward
    /// whose `listen` address a listener of the anchor holds keeps that one. An
    /// error ([`ForwardError`], a rule with no meaning as sockets) answers the core's
    /// commit as it is.
    ///
    /// One commit per anchor at a time: prepare, bind, then commit or drop, before
    /// the next `prepare` for the same anchor.
    pub fn prepare(
        &mut self,
        anchor: Anchor,
        rules: &[Rule],
    ) -> Result<PreparedCommit, ForwardError> {
        let wanted = forwards(rules)?;
        let bridges = bridges(rules)?;
        let old: Vec<ListenerId> = self.anchors.get(&anchor).cloned().unwrap_or_default();
        let mut keep: Vec<(ListenerId, Forward)> = Vec::new();
        let mut create: Vec<(ListenerId, Forward)> = Vec::new();
        for fwd in wanted {
            let same = old.iter().copied().find(|id| {
                !keep.iter().any(|(k, _)| k == id)
                    && self
                        .listeners
                        .get(id)
                        .is_some_and(|l| l.fwd.listen == fwd.listen)
            });
            match same {
                Some(id) => keep.push((id, fwd)),
                None => create.push((ListenerId(self.alloc()), fwd)),
            }
        }
        Ok(PreparedCommit {
            anchor,
            old,
            keep,
            create,
            bridges,
            removal: rules.is_empty(),
        })
    }

    /// Puts a prepared rule set in force, once the driver has bound every listener
    /// of [`PreparedCommit::listen`]: kept listeners take their new forward, the new
    /// ones start, the old ones that are gone are stopped
    /// ([`Decision::StopListening`]), and held legs of replaced negotiations are
    /// reset ([`Decision::ResetHeld`]).
    pub fn commit(&mut self, now: Instant, prepared: PreparedCommit) {
        let PreparedCommit {
            anchor,
            old,
            keep,
            create,
            bridges,
            removal,
        } = prepared;
        let why = if removal {
            Replaced::SessionEnded
        } else {
            Replaced::NewNegotiation
        };
        let current = self.anchors.remove(&anchor).unwrap_or_default();
        debug_assert_eq!(
            current, old,
            "a commit of {anchor} prepared against another set"
        );
        let mut ids: Vec<ListenerId> = Vec::new();
        for id in current {
            let kept = keep.iter().find(|(k, _)| *k == id).map(|(_, f)| f.clone());
            let Some(mut l) = self.listeners.remove(&id) else {
                continue;
            };
            self.retire(id, &mut l, why);
            match kept {
                Some(fwd) => {
                    // A new negotiation on the same address: the new forward whole,
                    // and its own one connection. A pair in progress keeps its own.
                    debug!("relay: {anchor}: listening for {fwd}");
                    l.fwd = fwd;
                    l.used = false;
                    l.active = None;
                    self.listeners.insert(id, l);
                    ids.push(id);
                }
                None => {
                    if l.used {
                        debug!("relay: {anchor}: no longer listening on {}", l.fwd.listen);
                    }
                    self.decisions.push_back(Decision::StopListening(id));
                }
            }
        }
        for (id, fwd) in create {
            debug!("relay: {anchor}: listening for {fwd}");
            self.listeners.insert(
                id,
                Listening {
                    fwd,
                    anchor,
                    active: None,
                    used: false,
                    held: None,
                },
            );
            ids.push(id);
        }
        if !ids.is_empty() {
            self.anchors.insert(anchor, ids);
        }
        for bridge in bridges {
            self.bridge(now, anchor, bridge);
        }
    }

    /// A bridge of a new commit ([`Mode::Bridged`](crate::Mode::Bridged)): both legs
    /// are connected at once, the first with [`Decision::Dial`], the second with
    /// [`Decision::Connect`]. The caps apply as to an accepted connection; over
    /// them, nothing is connected and the transfer fails (the client's port is
    /// never reached), which the notice line says.
    fn bridge(&mut self, now: Instant, anchor: Anchor, b: Bridge) {
        let session = anchor.session;
        let client = self.client_of(session);
        let own = self.pairs.values().filter(|p| p.session == session).count()
            + self
                .listeners
                .values()
                .filter(|w| w.anchor.session == session && w.held.is_some())
                .count();
        let orphans = client.map_or(0, |c| {
            self.pairs
                .values()
                .filter(|p| p.orphan && p.client == Some(c))
                .count()
        });
        let refusal = if own + orphans >= self.limits.per_session {
            Some(Refusal::SessionLimit {
                own,
                orphans,
                client,
            })
        } else if self.pairs.len() >= self.max_pairs {
            Some(Refusal::Limit(self.pairs.len()))
        } else {
            None
        };
        if let Some(why) = refusal {
            warn!("#{session} data connection {b} not made: {why}");
            return;
        }
        let pair = PairId(self.alloc());
        let first_from = Some(SocketAddr::new(b.first_from, 0));
        let source = Source {
            addr: b.second_from,
            ports: NAT_PORTS,
        };
        let second_from = Some(source.bind_addr());
        let carried = Carried {
            listener: None,
            partner: None,
            legs: [
                Leg {
                    origin: Origin::Connected {
                        to: b.first,
                        from: first_from,
                    },
                    security: b.security[0],
                },
                Leg {
                    origin: Origin::Connected {
                        to: b.second,
                        from: second_from,
                    },
                    security: b.security[1],
                },
            ],
            label: format!("#{session} {} bridged with {}", b.first, b.second),
            fwd: Forward {
                listen: b.first,
                from: b.first.ip(),
                target: b.second,
                source: Some(source),
                join: false,
                legs: LegSecurity {
                    accepted: b.security[0],
                    connected: b.security[1],
                },
            },
            peer: b.first,
            attempt: Attempt::Wanted,
            connecting: true,
            session,
            client,
            orphan: false,
            done: false,
            state: PairState::default(),
            seen: Progress::default(),
            last_active: now,
        };
        debug!("relay: {}: connecting both", carried.label);
        self.pairs.insert(pair, carried);
        self.arm(now);
        self.decisions.push_back(Decision::Dial {
            pair,
            to: b.first,
            from: first_from,
            security: b.security[0],
        });
        self.decisions.push_back(Decision::Connect {
            pair,
            to: b.second,
            from: second_from,
            security: b.security[1],
        });
    }

    /// The negotiation of listener `id` gives way: its held leg is reset, and a
    /// negotiation no connection used is logged.
    fn retire(&mut self, id: ListenerId, l: &mut Listening, why: Replaced) {
        let session = l.anchor.session;
        if let Some(held) = l.held.take() {
            warn!(
                "#{session} data connection from {} to {} reset: its partner never connected to {} before {why}",
                held.peer, l.fwd.listen, l.fwd.target
            );
            self.decisions.push_back(Decision::ResetHeld(id));
        }
        if !l.used {
            warn!(
                "#{session} data connection failed: {} never connected to {} before {why}",
                l.fwd.from, l.fwd.listen
            );
        }
    }

    // ---- connections ----

    /// A connection from `peer` was accepted on `listener`: whether to refuse it,
    /// carry it (its second leg follows as [`Decision::Connect`]), hold it for a
    /// join, or pair it with a held one. The checks and their order are on
    /// [`Relay`] ("Admit").
    pub fn accept(&mut self, now: Instant, listener: ListenerId, peer: SocketAddr) -> Admission {
        let peer = unmap(peer);
        if let Err(why) = self.admit(listener, peer) {
            match self.listeners.get(&listener) {
                Some(l) => warn!(
                    "#{} data connection from {peer} to {} refused: {why}",
                    l.anchor.session, l.fwd.listen
                ),
                None => debug!("relay: data connection from {peer} refused: {why}"),
            }
            return Admission::Refuse(why);
        }
        let l = self.listeners.get_mut(&listener).expect("admitted on it");
        l.used = true;
        if l.fwd.join {
            return self.join(now, listener, peer);
        }
        let fwd = l.fwd.clone();
        let session = l.anchor.session;
        let pair = PairId(self.alloc());
        if let Some(l) = self.listeners.get_mut(&listener) {
            l.active = Some(pair);
        }
        let from = fwd.source.map(|s| s.bind_addr());
        let security = fwd.legs;
        let carried = Carried {
            listener: Some(listener),
            partner: None,
            legs: [
                Leg {
                    origin: Origin::Accepted { listener, peer },
                    security: security.accepted,
                },
                Leg {
                    origin: Origin::Connected {
                        to: fwd.target,
                        from,
                    },
                    security: security.connected,
                },
            ],
            label: format!("#{session} {peer} -> {} -> {}", fwd.listen, fwd.target),
            peer,
            attempt: Attempt::Wanted,
            connecting: true,
            session,
            client: self.client_of(session),
            orphan: false,
            done: false,
            state: PairState::default(),
            seen: Progress::default(),
            last_active: now,
            fwd,
        };
        debug!("relay: {}: connecting", carried.label);
        let to = carried.fwd.target;
        self.pairs.insert(pair, carried);
        self.arm(now);
        self.decisions.push_back(Decision::Connect {
            pair,
            to,
            from,
            security: security.connected,
        });
        Admission::Open {
            pair,
            security: security.accepted,
        }
    }

    /// Whether `listener` may carry a connection from `peer` now.
    fn admit(&self, listener: ListenerId, peer: SocketAddr) -> Result<(), Refusal> {
        let Some(l) = self.listeners.get(&listener) else {
            return Err(Refusal::NotListening);
        };
        if !l.fwd.admits(peer.ip()) && !self.via_balancer(l.anchor.session, &l.fwd, peer.ip()) {
            return Err(Refusal::Stranger(l.fwd.from));
        }
        if l.active.is_some() || l.held.is_some() {
            return Err(Refusal::InProgress);
        }
        if l.used {
            return Err(Refusal::Used);
        }
        let session = l.anchor.session;
        let client = self.client_of(session);
        // A join's held leg counts, except against its own partner: the two make
        // one data connection.
        let partner = l.fwd.join.then_some((l.anchor, l.fwd.target));
        let own = self.pairs.values().filter(|p| p.session == session).count()
            + self
                .listeners
                .values()
                .filter(|w| w.anchor.session == session && w.held.is_some())
                .filter(|w| partner != Some((w.anchor, w.fwd.listen)) || !w.fwd.join)
                .count();
        let orphans = client.map_or(0, |c| {
            self.pairs
                .values()
                .filter(|p| p.orphan && p.client == Some(c))
                .count()
        });
        if own + orphans >= self.limits.per_session {
            return Err(Refusal::SessionLimit {
                own,
                orphans,
                client,
            });
        }
        if self.pairs.len() >= self.max_pairs {
            return Err(Refusal::Limit(self.pairs.len()));
        }
        Ok(())
    }

    /// A connection admitted on one leg of a join: paired with the one held on the
    /// other leg, or held until that one arrives.
    fn join(&mut self, now: Instant, listener: ListenerId, peer: SocketAddr) -> Admission {
        let l = &self.listeners[&listener];
        let (anchor, listen, target) = (l.anchor, l.fwd.listen, l.fwd.target);
        let this_security = l.fwd.legs.accepted;
        let partner = self.anchors.get(&anchor).and_then(|ids| {
            ids.iter().copied().find(|&p| {
                p != listener
                    && self
                        .listeners
                        .get(&p)
                        .is_some_and(|o| o.fwd.join && o.fwd.listen == target)
            })
        });
        let held = partner.and_then(|p| self.listeners.get_mut(&p)?.held.take());
        let (Some(partner), Some(held)) = (partner, held) else {
            debug!(
                "relay: #{} {peer} -> {listen}: waiting for the other leg at {target}",
                anchor.session
            );
            if let Some(l) = self.listeners.get_mut(&listener) {
                l.held = Some(Held { peer, since: now });
            }
            self.arm(now);
            return Admission::Hold {
                security: this_security,
            };
        };
        let pair = PairId(self.alloc());
        for id in [listener, partner] {
            if let Some(l) = self.listeners.get_mut(&id) {
                l.active = Some(pair);
            }
        }
        let fwd = self.listeners[&listener].fwd.clone();
        let held_security = self
            .listeners
            .get(&partner)
            .map_or(Security::Plain, |p| p.fwd.legs.accepted);
        let carried = Carried {
            listener: Some(listener),
            partner: Some(partner),
            legs: [
                Leg {
                    origin: Origin::Accepted { listener, peer },
                    security: fwd.legs.accepted,
                },
                Leg {
                    origin: Origin::Accepted {
                        listener: partner,
                        peer: held.peer,
                    },
                    security: held_security,
                },
            ],
            label: format!(
                "#{} {peer} -> {listen} joined with {} -> {target}",
                anchor.session, held.peer
            ),
            fwd,
            peer,
            attempt: Attempt::AnyAddr,
            connecting: false,
            session: anchor.session,
            client: self.client_of(anchor.session),
            orphan: false,
            done: false,
            state: PairState::default(),
            seen: Progress::default(),
            last_active: now,
        };
        debug!("relay: {}: joined", carried.label);
        self.pairs.insert(pair, carried);
        self.arm(now);
        Admission::Join {
            pair,
            with: partner,
            security: this_security,
        }
    }

    /// The pair's second leg is connected: bytes may flow both ways.
    pub fn connected(&mut self, now: Instant, pair: PairId) {
        let _ = now;
        if let Some(p) = self.pairs.get_mut(&pair) {
            if p.connecting {
                p.connecting = false;
                debug!("relay: {}: connected", p.label);
            }
        }
    }

    /// The [`Decision::Connect`] of `pair` failed. A bind failure may bring another
    /// `Connect` from a fallback source (see [`Relay`], "Connect"); anything else
    /// ends the pair with a reset.
    pub fn connect_failed(&mut self, now: Instant, pair: PairId, error: ConnectError) {
        let _ = now;
        let Some(p) = self.pairs.get_mut(&pair) else {
            return;
        };
        if !p.connecting {
            return;
        }
        if let ConnectError::Bind { error: e, .. } = error {
            let source = p.fwd.source;
            let wanted = source.map(|s| s.bind_addr());
            let next = match (p.attempt, wanted) {
                (Attempt::Wanted, Some(bind))
                    if bind.port() != 0
                        && matches!(e.kind, ErrorKind::PermissionDenied | ErrorKind::AddrInUse) =>
                {
                    if !self.port_fallback_logged {
                        self.port_fallback_logged = true;
                        warn!(
                            "relay: cannot bind source port {} ({}), using an ephemeral port",
                            bind.port(),
                            e
                        );
                    }
                    Some((Attempt::AnyPort, Some(SocketAddr::new(bind.ip(), 0))))
                }
                (Attempt::Wanted, Some(bind)) if e.kind == ErrorKind::AddrNotAvailable => {
                    if !self.addr_fallback_logged {
                        self.addr_fallback_logged = true;
                        warn!(
                            "relay: {} is not a local address, letting the kernel choose the source",
                            bind.ip()
                        );
                    }
                    Some((Attempt::AnyAddr, None))
                }
                (Attempt::AnyPort, _) if e.kind == ErrorKind::AddrNotAvailable => {
                    Some((Attempt::AnyAddr, None))
                }
                _ => None,
            };
            if let Some((attempt, from)) = next {
                p.attempt = attempt;
                let to = p.fwd.target;
                p.legs[1].origin = Origin::Connected { to, from };
                self.decisions.push_back(Decision::Connect {
                    pair,
                    to,
                    from,
                    security: p.legs[1].security,
                });
                return;
            }
        }
        self.close(pair, PairEnd::ConnectFailed(error));
    }

    /// What the pair's sockets say now, after a round of copying (and on a
    /// [`Decision::Refresh`]). Both directions ended: the pair is done; after a
    /// transfer's final reply, one finished direction is enough (see [`Relay`],
    /// "Finished transfers"). Either way a [`Decision::Close`] follows.
    pub fn report(&mut self, now: Instant, pair: PairId, state: PairState) {
        let _ = now;
        let Some(p) = self.pairs.get_mut(&pair) else {
            return;
        };
        p.state = state;
        if p.connecting {
            return;
        }
        if state.up.shut && state.down.shut {
            self.close(pair, PairEnd::Done);
        } else if p.done && p.finished() {
            self.close(pair, PairEnd::Finished);
        }
    }

    /// A socket operation of the pair failed: the pair ends, reset on both sides.
    /// Report the bytes moved before it first ([`report`](Self::report)).
    pub fn failed(&mut self, now: Instant, pair: PairId, op: IoOp, error: SocketError) {
        let _ = now;
        self.close(pair, PairEnd::Failed { op, error });
    }

    fn close(&mut self, pair: PairId, end: PairEnd) {
        let Some(p) = self.pairs.remove(&pair) else {
            return;
        };
        let (up, down) = (p.up(), p.down());
        if !p.orphan {
            let total = &mut self.sessions.entry(p.session).or_default().ended_bytes;
            total.0 += up;
            total.1 += down;
        }
        let label = &p.label;
        match end {
            PairEnd::Done => {
                debug!("relay: {label}: done, {up} bytes up, {down} bytes down")
            }
            PairEnd::Finished => debug!(
                "relay: {label}: done, {up} bytes up, {down} bytes down; closed after the transfer's final reply, one side had not closed"
            ),
            PairEnd::Idle { limit, cause } => warn!(
                "{label} data connection reset: no data for {} s ({cause}), after {up} bytes up, {down} down",
                limit.as_secs()
            ),
            PairEnd::Killed => warn!(
                "{label} data connection reset: its session ended on a reply desync, after {up} bytes up, {down} down"
            ),
            PairEnd::ConnectFailed(ConnectError::Refused { error, .. }) => warn!(
                "{label} data connection failed: {} refused it or did not answer: {error}",
                p.fwd.target
            ),
            PairEnd::ConnectFailed(
                ConnectError::Bind { error, .. } | ConnectError::Start { error, .. },
            ) => {
                let from = p
                    .fwd
                    .source
                    .map_or_else(|| "any address".to_string(), |s| s.bind_addr().to_string());
                warn!(
                    "#{} data connection from {} to {} failed: cannot connect to {} from {from}: {}",
                    p.session,
                    p.peer,
                    p.fwd.listen,
                    p.fwd.target,
                    error
                );
            }
            PairEnd::Failed { op, error } => info!(
                "relay: {label}: {op}: {error} (after {up} bytes up, {down} down)"
            ),
            PairEnd::Exit => {
                info!("relay: {label}: reset at exit (after {up} bytes up, {down} down)")
            }
        }
        for id in [p.listener, p.partner].into_iter().flatten() {
            if let Some(l) = self.listeners.get_mut(&id) {
                if l.active == Some(pair) {
                    // The listener stays (until the rules change) to refuse and log
                    // later connections: `used` is set for good.
                    l.active = None;
                }
            }
        }
        if self.pairs.is_empty() && !self.listeners.values().any(|l| l.held.is_some()) {
            self.next_sweep = None;
        }
        self.decisions.push_back(Decision::Close {
            pair,
            reset: end.resets(),
            end,
            up,
            down,
        });
    }

    // ---- the clock ----

    /// Checks the pairs and held legs against their limits, if
    /// [`poll_timeout`](Self::poll_timeout) has passed (otherwise nothing happens).
    ///
    /// `unsent` tells, per pair, what each leg's kernel send queue still holds for
    /// its peer, where the driver can know (Linux `SIOCOUTQ`; `[None, None]`
    /// otherwise): a queue that shrinks is progress, as a byte moved is.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        mut unsent: impl FnMut(PairId) -> [Option<u32>; 2],
    ) {
        match self.next_sweep {
            Some(t) if t <= now => {}
            _ => return,
        }
        let limits = self.limits;
        let expired: Vec<(PairId, PairEnd)> = self
            .pairs
            .iter_mut()
            .filter_map(|(&id, p)| {
                let progress = Progress {
                    moved: p.up() + p.down(),
                    unsent: unsent(id),
                };
                if progress != p.seen {
                    p.seen = progress;
                    p.last_active = now;
                    return None;
                }
                let (cause, limit) = if p.orphan {
                    (IdleCause::SessionEnded, limits.linger)
                } else if p.half_closed() {
                    (IdleCause::HalfClosed, limits.linger)
                } else {
                    (IdleCause::Idle, limits.idle)
                };
                (now.duration_since(p.last_active) >= limit)
                    .then_some((id, PairEnd::Idle { limit, cause }))
            })
            .collect();
        for (id, end) in expired {
            self.close(id, end);
        }
        let mut waiting = false;
        for (&id, l) in self.listeners.iter_mut() {
            let Some(held) = l.held else {
                continue;
            };
            if now.duration_since(held.since) < limits.idle {
                waiting = true;
                continue;
            }
            l.held = None;
            warn!(
                "#{} data connection from {} to {} reset: its partner never connected to {} in {} s",
                l.anchor.session,
                held.peer,
                l.fwd.listen,
                l.fwd.target,
                limits.idle.as_secs()
            );
            self.decisions.push_back(Decision::ResetHeld(id));
        }
        self.next_sweep = (!self.pairs.is_empty() || waiting).then(|| now + RELAY_SWEEP_EVERY);
    }

    // ---- the sessions ----

    /// A control session from `client` has begun. Its data connections count against
    /// that address's allowance after the session has ended (see [`Relay`], "Orphans").
    pub fn session_started(&mut self, session: SessionId, client: IpAddr) {
        self.sessions.entry(session.0).or_default().client = Some(unmap_ip(client));
    }

    /// The control connection of `session` came through a load balancer at
    /// `balancer`, which named the client in a PROXY protocol header. A data
    /// connection the client would make is then also admitted from the balancer:
    /// a balancer that forwards the data ports as well (the only way an `EPSV`
    /// client behind it can reach them, since a 229 reply names no address)
    /// connects from its own address, while a client that follows a 227's address
    /// comes from its own. Connections the server makes (active mode) are not
    /// affected. Call it after [`session_started`](Self::session_started).
    pub fn session_via(&mut self, session: SessionId, balancer: IpAddr) {
        self.sessions.entry(session.0).or_default().balancer = Some(unmap_ip(balancer));
    }

    /// Whether `peer` is the balancer of `session` and `fwd` admits that session's
    /// client ([`session_via`](Self::session_via)).
    fn via_balancer(&self, session: u32, fwd: &Forward, peer: IpAddr) -> bool {
        self.sessions.get(&session).is_some_and(|s| {
            s.balancer == Some(unmap_ip(peer)) && s.client.is_some_and(|c| fwd.admits(c))
        })
    }

    /// The control session has ended: its pairs in progress may finish, but now
    /// idle out after [`RelayLimits::linger`], and count against the allowance of
    /// their client address's other sessions. Returns the bytes (up, down) its data
    /// connections have moved, ended ones and those in progress so far: the
    /// summary's `data_up` and `data_down`.
    pub fn session_ended(&mut self, session: SessionId) -> (u64, u64) {
        let mut moved = self
            .sessions
            .remove(&session.0)
            .map_or((0, 0), |s| s.ended_bytes);
        for p in self
            .pairs
            .values_mut()
            .filter(|p| p.session == session.0 && !p.orphan)
        {
            p.orphan = true;
            moved.0 += p.up();
            moved.1 += p.down();
        }
        moved
    }

    /// The session relayed the final reply of a transfer
    /// ([`Action::TransferDone`](crate::Action::TransferDone)). Its pairs in progress
    /// are marked, and each is over as soon as one side has finished (see
    /// [`Relay`], "Finished transfers"); each connected one is to be observed afresh
    /// ([`Decision::Refresh`]).
    pub fn transfer_done(&mut self, session: SessionId) {
        for (&id, p) in self.pairs.iter_mut() {
            if p.session == session.0 && !p.orphan {
                p.done = true;
                // A pair still connecting has nothing to judge yet.
                if !p.connecting {
                    self.decisions.push_back(Decision::Refresh(id));
                }
            }
        }
    }

    /// The session ended on a reply desync
    /// ([`Action::EndDataConnections`](crate::Action::EndDataConnections)): its pairs
    /// in progress and its held legs are reset; its listeners go with the empty
    /// commit that follows.
    pub fn kill_session(&mut self, session: SessionId) {
        let ids: Vec<PairId> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.session == session.0)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close(id, PairEnd::Killed);
        }
        for (&id, l) in self.listeners.iter_mut() {
            if l.anchor.session != session.0 {
                continue;
            }
            if let Some(held) = l.held.take() {
                warn!(
                    "#{} data connection from {} to {} reset: its session ended on a reply desync",
                    session.0, held.peer, l.fwd.listen
                );
                self.decisions.push_back(Decision::ResetHeld(id));
            }
        }
        if self.pairs.is_empty() && !self.listeners.values().any(|l| l.held.is_some()) {
            self.next_sweep = None;
        }
    }

    /// Removes everything (at exit): every listener stops, every held leg and every
    /// pair in progress is reset (see [`Relay`], "Exit").
    pub fn remove_all(&mut self) {
        self.anchors.clear();
        for (id, l) in std::mem::take(&mut self.listeners) {
            if l.held.is_some() {
                self.decisions.push_back(Decision::ResetHeld(id));
            }
            self.decisions.push_back(Decision::StopListening(id));
        }
        let ids: Vec<PairId> = self.pairs.keys().copied().collect();
        for id in ids {
            self.close(id, PairEnd::Exit);
        }
        self.next_sweep = None;
    }
}

/// An IPv4 peer reported as an IPv4-mapped IPv6 address (a dual-stack socket) is
/// an IPv4 peer: the relay unmaps every address it is given.
fn unmap(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmap_ip(addr.ip()), addr.port())
}

fn unmap_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
