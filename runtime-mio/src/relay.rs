//! The userspace data relay: executes the core's data-connection rules itself.
//!
//! The rules of each commit become [`Forward`]s ([`ftp_proxy_core::forwards`]), whose
//! documentation states the semantics: listen on the rdr-to rule's destination,
//! admit only its source, exactly one data connection, connect to the rdr-to target
//! from the paired nat-to address, copy both ways with half-close, and let data
//! connections in progress outlive the replacement of their rules, as pf states do.
//!
//! On top of that this module adds the daemon's policy ([`RelayLimits`], the `-m`
//! cap, resets at exit) and says why a data connection failed: each cause is logged
//! at notice (`warn!`) with the session id, the lines docs/embedding.md lists.
//!
//! Two facts from outside the sockets shape that policy. The runtime names each
//! session's client address ([`Relay::session_started`]): data connections that
//! outlive their session still count against that address's per-session allowance,
//! so ending sessions buys a client no more slots than keeping them. And the core
//! says when a transfer's final reply has been relayed ([`Relay::transfer_done`]):
//! a data connection whose one side has finished is then over, even if the other
//! side never closes it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use ftp_proxy_core::{forwards, Anchor, FilterError, Forward, Rule};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use nix::errno::Errno;

use crate::pipe::{Filled, Pipe};
use crate::sys;
use crate::token::{End, Tok};

/// Bytes buffered per direction of a data connection: the backpressure window.
pub(crate) const PIPE_CAPACITY: usize = 64 * 1024;
/// Reads or writes per data connection per event-loop turn before other sockets get theirs.
const STEPS_PER_TURN: usize = 16;
/// Accepts per data listener per turn.
const ACCEPTS_PER_TURN: usize = 16;
/// How often data connections are checked against their timeouts.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Bounds on the data connections the relay carries, beyond the global `-m` cap.
///
/// pf keeps a state for as long as packets flow and expires it by its own timers;
/// the relay holds two sockets per connection, so a client that keeps its sockets
/// open, or ends its sessions and leaves their transfers running, could otherwise
/// hold slots of the shared cap forever (docs/behavior.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Data connections one session may have in progress at once. Those that
    /// outlive an ended session of the same client address count too: a session
    /// starts one only while its own plus its address's orphaned ones are fewer.
    pub per_session: usize,
    /// A data connection that moves no byte for this long is reset.
    pub idle: Duration,
    /// The shorter idle limit of a connection that one side has closed, or whose
    /// control session has ended.
    pub linger: Duration,
}

impl Default for RelayLimits {
    fn default() -> RelayLimits {
        RelayLimits {
            per_session: 2,
            idle: Duration::from_secs(600),
            linger: Duration::from_secs(15),
        }
    }
}

/// The listening socket of one [`Forward`].
#[derive(Debug)]
struct DataListener {
    sock: TcpListener,
    fwd: Forward,
    anchor: Anchor,
    /// The data connection in progress, if any.
    active: Option<u64>,
    /// The negotiation's one data connection was admitted (`max 1`): the listener
    /// takes no other, whether that one is still in progress or has ended.
    used: bool,
    /// For a leg of a join ([`Forward::join`]): the connection accepted here while
    /// its partner has not arrived at the other leg's listener, and since when.
    waiting: Option<(TcpStream, SocketAddr, Instant)>,
}

/// Why a data connection was turned away (a reset, logged at notice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not the rules' source, which is given.
    Stranger(IpAddr),
    /// `keep state (max 1)`: the negotiation's data connection is in progress.
    InProgress,
    /// `keep state (max 1)`: the negotiation's data connection has come and gone;
    /// one negotiation lets exactly one through.
    Used,
    /// The session already has `own` in progress, and `orphans` more outlive ended
    /// sessions of its client address `client` ([`RelayLimits::per_session`]).
    SessionLimit {
        own: usize,
        orphans: usize,
        client: Option<IpAddr>,
    },
    /// This many are in progress, the most there may be (`-m`).
    Limit(usize),
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
        }
    }
}

/// Why a listener closed: its rules gave way to a new negotiation's, or were removed.
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

/// One socket of a data connection, with its readiness cache.
#[derive(Debug)]
struct Sock {
    sock: TcpStream,
    readable: bool,
    writable: bool,
    /// End of file (or error) read: nothing more comes from this socket.
    eof: bool,
    /// `shutdown(Write)` done.
    shut: bool,
}

impl Sock {
    fn new(sock: TcpStream, ready: bool) -> Sock {
        Sock {
            sock,
            readable: ready,
            writable: ready,
            eof: false,
            shut: false,
        }
    }
}

/// A relayed data connection.
#[derive(Debug)]
struct Pair {
    listener: u64,
    accepted: Sock,
    opened: Sock,
    /// accepted -> opened.
    up: Pipe,
    /// opened -> accepted.
    down: Pipe,
    connecting: bool,
    label: String,
    /// The real endpoint, for the log line of a failed connect.
    target: SocketAddr,
    /// The other leg's listener of a join, whose `active` this pair holds too.
    partner: Option<u64>,
    /// The control session that negotiated it ([`Anchor::session`]).
    session: u32,
    /// That session's client address, when the runtime named it.
    client: Option<IpAddr>,
    /// That session has ended.
    orphan: bool,
    /// The session has relayed the final reply of a transfer since this pair began
    /// ([`Relay::transfer_done`]): once one side has finished, the pair is over.
    done: bool,
    /// What the sweep last saw of the pair's progress, and when it last changed.
    seen: Progress,
    last_active: Instant,
}

/// A pair's progress as a sweep sees it: the bytes the relay moved both ways, and
/// what each socket's send queue still holds for its peer. The queues matter once
/// the relay has handed a backlog to the kernel: a slow reader then drains them while
/// the relay itself moves nothing, and that reader is alive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    moved: u64,
    unsent: (Option<u32>, Option<u32>),
}

impl Pair {
    fn progress(&self) -> Progress {
        Progress {
            moved: self.up.moved() + self.down.moved(),
            unsent: (
                sys::unsent_bytes(&self.accepted.sock),
                sys::unsent_bytes(&self.opened.sock),
            ),
        }
    }

    /// One side has sent its end of file (or failed): only the other may still send.
    fn half_closed(&self) -> bool {
        self.accepted.eof || self.opened.eof || self.accepted.shut || self.opened.shut
    }

    /// Whether the transfer this pair carries is over as far as its sockets tell,
    /// for a pair whose final reply has been relayed ([`done`](Self::done)).
    ///
    /// One direction has ended: its end of file was read and passed on after every
    /// byte before it (the `shut` of its destination). That direction is the one that
    /// carried the data, or neither carried any; a receiver that closed its sending
    /// side early while the data still flows the other way is not finished. And
    /// nothing is in flight the other way: its buffer is empty and its source has
    /// nothing left to read (its end of file, or the last read would have blocked).
    /// Closing then sends no reset (no unread input) and loses no byte: what the
    /// kernel still holds for the peer that got the end of file is delivered after
    /// the close. The one case it cannot see: a receiver that closed its sending
    /// side before a single byte of the data reached the relay, with all of that
    /// data still on the network when the final reply is handled.
    fn finished(&self) -> bool {
        if self.connecting {
            return false;
        }
        let quiet = |s: &Sock| s.eof || !s.readable;
        let up_ended = self.opened.shut
            && self.down.is_empty()
            && quiet(&self.opened)
            && (self.up.moved() > 0 || self.down.moved() == 0);
        let down_ended = self.accepted.shut
            && self.up.is_empty()
            && quiet(&self.accepted)
            && (self.down.moved() > 0 || self.up.moved() == 0);
        up_ended || down_ended
    }
}

/// Why a data connection ended early.
#[derive(Debug)]
enum PairEnd {
    Done,
    Failed(&'static str, io::Error),
    /// No byte moved for the given time; the text says which limit applied.
    Idle(&'static str, Duration),
    /// Its session ended on a reply desync ([`Relay::kill_session`]).
    Killed,
    /// Its transfer's final reply was relayed and one side has finished; the other
    /// side never closed ([`Pair::finished`]). Closed cleanly, as a peer would.
    Finished,
}

/// The relay's state: listeners per session anchor and the data connections.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    anchors: BTreeMap<Anchor, Vec<u64>>,
    listeners: BTreeMap<u64, DataListener>,
    pairs: BTreeMap<u64, Pair>,
    next_id: u64,
    hot: Vec<Tok>,
    port_fallback_logged: bool,
    addr_fallback_logged: bool,
    /// Move data with `splice(2)` through kernel pipes where possible.
    zero_copy: bool,
    /// Data connections carried at most at once: the session limit (`-m`). Pairs
    /// outlive their sessions, so the session limit alone does not bound them, and the
    /// descriptor budget ([`crate::nofile_needed`]) counts one pair per session.
    max_pairs: usize,
    limits: RelayLimits,
    /// When the data connections are next checked against their timeouts.
    next_sweep: Option<Instant>,
    /// What the relay knows of each live session.
    sessions: BTreeMap<u32, SessionInfo>,
}

/// The relay's view of one live control session.
#[derive(Debug, Default)]
struct SessionInfo {
    /// The client's address ([`Relay::session_started`]).
    client: Option<IpAddr>,
    /// Bytes (up, down) of its data connections that have ended, for the session's
    /// summary line.
    ended_bytes: (u64, u64),
}

impl Relay {
    /// A relay carrying at most `max_pairs` data connections at once.
    pub(crate) fn new(max_pairs: usize) -> Relay {
        Relay {
            next_id: 1,
            zero_copy: cfg!(target_os = "linux"),
            max_pairs,
            ..Relay::default()
        }
    }

    /// Chooses between `splice(2)` (Linux) and copying through user space for data
    /// connections accepted from now on.
    pub(crate) fn set_zero_copy(&mut self, on: bool) {
        self.zero_copy = on;
    }

    /// Sets the per-session cap and the timeouts of data connections.
    pub(crate) fn set_limits(&mut self, limits: RelayLimits) {
        self.limits = limits;
    }

    /// A control session from `client` has begun. Its data connections count against
    /// that address's allowance after the session has ended (see [`RelayLimits`]).
    pub(crate) fn session_started(&mut self, session: u32, client: IpAddr) {
        self.sessions.entry(session).or_default().client = Some(client);
    }

    fn client_of(&self, session: u32) -> Option<IpAddr> {
        self.sessions.get(&session).and_then(|s| s.client)
    }

    /// The control session `session` has ended: its data connections in progress may
    /// finish, but now idle out after the short limit, and count against the
    /// per-session allowance of their client address's other sessions. Returns the
    /// bytes (up, down) its data connections have moved so far.
    pub(crate) fn session_ended(&mut self, session: u32) -> (u64, u64) {
        let mut moved = self
            .sessions
            .remove(&session)
            .map_or((0, 0), |s| s.ended_bytes);
        for p in self.pairs.values_mut().filter(|p| p.session == session) {
            p.orphan = true;
            moved.0 += p.up.moved();
            moved.1 += p.down.moved();
        }
        moved
    }

    /// The control session `session` ended on a reply desync: nothing it negotiated
    /// may outlive it. Resets its data connections in progress and the connections
    /// of its joins still waiting for their partner; its listeners go with the empty
    /// commit that follows.
    pub(crate) fn kill_session(&mut self, registry: &Registry, session: u32) {
        let ids: Vec<u64> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.session == session)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close(registry, id, PairEnd::Killed);
        }
        for l in self.listeners.values_mut() {
            if l.anchor.session != session {
                continue;
            }
            if let Some((stream, peer, _)) = l.waiting.take() {
                warn!(
                    "#{session} data connection from {peer} to {} reset: its session ended on a reply desync",
                    l.fwd.listen
                );
                reset(&stream);
            }
        }
    }

    /// The session of `anchor` has relayed the final reply of a transfer
    /// ([`ftp_proxy_core::Action::TransferDone`]). Its data connections in progress
    /// are marked; each is closed as soon as one side has finished
    /// ([`Pair::finished`]), now or later, instead of waiting for the other side's
    /// end of file. A server that never closes its side of an upload (rclone) would
    /// otherwise keep every upload counted until `linger`, and refuse the third.
    ///
    /// It applies to the pairs that exist now: a data connection starts before the
    /// transfer's final reply can be sent, and a later one belongs to a later transfer.
    /// Each marked pair is served once with both sockets taken as readable: the
    /// reply may be handled before the readiness of data that arrived ahead of it,
    /// and the judgement must see that data (or its end of file), not a stale flag.
    pub(crate) fn transfer_done(&mut self, registry: &Registry, anchor: &Anchor) {
        let mut marked = Vec::new();
        for (&id, p) in self.pairs.iter_mut() {
            if p.session == anchor.session && !p.orphan {
                p.done = true;
                // A pair still connecting has nothing to judge yet (and a read of
                // its socket would report the connect's failure as a read's).
                if p.connecting {
                    continue;
                }
                // A read that finds nothing says WouldBlock and clears them again.
                p.accepted.readable = true;
                p.opened.readable = true;
                marked.push(id);
            }
        }
        for id in marked {
            self.service(registry, id);
        }
    }

    /// When [`sweep`](Self::sweep) is next due (`None` without data connections).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Resets the data connections that moved no byte for longer than their limit.
    pub(crate) fn sweep(&mut self, registry: &Registry, now: Instant) {
        match self.next_sweep {
            Some(t) if t <= now => {}
            _ => return,
        }
        let limits = self.limits;
        let expired: Vec<(u64, PairEnd)> = self
            .pairs
            .iter_mut()
            .filter_map(|(&id, p)| {
                let progress = p.progress();
                if progress != p.seen {
                    p.seen = progress;
                    p.last_active = now;
                    return None;
                }
                let (why, limit) = if p.orphan {
                    ("its session has ended", limits.linger)
                } else if p.half_closed() {
                    ("half-closed", limits.linger)
                } else {
                    ("idle", limits.idle)
                };
                (now.duration_since(p.last_active) >= limit)
                    .then_some((id, PairEnd::Idle(why, limit)))
            })
            .collect();
        for (id, end) in expired {
            self.close(registry, id, end);
        }
        let mut waiting = false;
        for l in self.listeners.values_mut() {
            let Some((_, _, since)) = &l.waiting else {
                continue;
            };
            if now.duration_since(*since) < limits.idle {
                waiting = true;
                continue;
            }
            if let Some((stream, peer, _)) = l.waiting.take() {
                warn!(
                    "#{} data connection from {peer} to {} reset: its partner never connected to {} in {} s",
                    l.anchor.session,
                    l.fwd.listen,
                    l.fwd.target,
                    limits.idle.as_secs()
                );
                reset(&stream);
            }
        }
        self.next_sweep = (!self.pairs.is_empty() || waiting).then(|| now + SWEEP_EVERY);
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Number of data listeners (for tests and logs).
    pub(crate) fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Number of data connections in progress.
    pub(crate) fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// Replaces the anchor's rules, like a pf transaction: on error nothing changed.
    ///
    /// The rules become [`Forward`]s (the core's reading of them); a listener whose
    /// address is in the old and the new set is kept, the others are bound anew, and
    /// the old ones that are gone are closed once every new one is bound.
    pub(crate) fn commit(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
        rules: &[Rule],
    ) -> Result<(), FilterError> {
        let forwards = forwards(rules)?;
        let old: Vec<u64> = self.anchors.get(anchor).cloned().unwrap_or_default();
        let (keep, create) = self.plan(&old, forwards);
        let mut created: Vec<(u64, DataListener)> = Vec::new();
        for fwd in create {
            match self.bind(registry, anchor, fwd) {
                Ok(l) => created.push(l),
                Err(e) => {
                    for (_, mut l) in created {
                        let _ = registry.deregister(&mut l.sock);
                    }
                    return Err(e);
                }
            }
        }
        let ended = if rules.is_empty() {
            Replaced::SessionEnded
        } else {
            Replaced::NewNegotiation
        };
        self.apply(registry, anchor, old, keep, created, ended);
        Ok(())
    }

    /// Splits the new forwards into those whose listener (of the `old` ones) stays,
    /// matched by address, and those that need a new one.
    fn plan(&self, old: &[u64], forwards: Vec<Forward>) -> (Vec<(u64, Forward)>, Vec<Forward>) {
        let mut keep: Vec<(u64, Forward)> = Vec::new();
        let mut create: Vec<Forward> = Vec::new();
        for fwd in forwards {
            let same = old.iter().find(|&&id| {
                !keep.iter().any(|(k, _)| *k == id)
                    && self
                        .listeners
                        .get(&id)
                        .is_some_and(|l| l.fwd.listen == fwd.listen)
            });
            match same {
                Some(&id) => keep.push((id, fwd)),
                None => create.push(fwd),
            }
        }
        (keep, create)
    }

    /// Binds and registers the listener of one new forward.
    fn bind(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
        fwd: Forward,
    ) -> Result<(u64, DataListener), FilterError> {
        let std = sys::data_listener(fwd.listen).map_err(|e| match e {
            Errno::EADDRINUSE => FilterError::AddrInUse,
            e => FilterError::Other {
                errno: e as i32,
                text: format!("relay bind {}: {}", fwd.listen, e.desc()),
            },
        })?;
        let mut sock = TcpListener::from_std(std);
        let id = self.alloc_id();
        registry
            .register(&mut sock, Tok::DataListener(id).token(), Interest::READABLE)
            .map_err(|e| FilterError::Other {
                errno: e.raw_os_error().unwrap_or(0),
                text: format!("relay register: {e}"),
            })?;
        let listener = DataListener {
            sock,
            fwd,
            anchor: *anchor,
            active: None,
            used: false,
            waiting: None,
        };
        Ok((id, listener))
    }

    /// Puts a commit in force: kept listeners take their new forward, the old ones
    /// that are gone close (logging those no data connection ever used), the new ones
    /// start listening.
    fn apply(
        &mut self,
        registry: &Registry,
        anchor: &Anchor,
        old: Vec<u64>,
        keep: Vec<(u64, Forward)>,
        created: Vec<(u64, DataListener)>,
        why: Replaced,
    ) {
        let mut ids: Vec<u64> = Vec::new();
        for id in old {
            if let Some((_, fwd)) = keep.iter().find(|(k, _)| *k == id) {
                if let Some(l) = self.listeners.get_mut(&id) {
                    // The same rules again keep their state; another negotiation on
                    // the same address (the core avoids it) gets its own connection.
                    if l.fwd != *fwd {
                        l.used = false;
                    }
                    l.fwd = fwd.clone();
                }
                ids.push(id);
            } else if let Some(mut l) = self.listeners.remove(&id) {
                let _ = registry.deregister(&mut l.sock);
                if let Some((stream, peer, _)) = l.waiting.take() {
                    warn!(
                        "#{} data connection from {peer} to {} reset: its partner never connected to {} before {why}",
                        anchor.session, l.fwd.listen, l.fwd.target
                    );
                    reset(&stream);
                }
                if l.used {
                    debug!("relay: {anchor}: no longer listening on {}", l.fwd.listen);
                } else {
                    warn!(
                        "#{} data connection failed: {} never connected to {} before {why}",
                        anchor.session, l.fwd.from, l.fwd.listen
                    );
                }
            }
        }
        for (id, l) in created {
            debug!("relay: {anchor}: listening for {}", l.fwd);
            self.listeners.insert(id, l);
            ids.push(id);
            // A connection may already be waiting by the time we register.
            self.hot.push(Tok::DataListener(id));
        }
        if ids.is_empty() {
            self.anchors.remove(anchor);
        } else {
            self.anchors.insert(*anchor, ids);
        }
    }

    /// Drops every listener and data connection (at exit, when the loop stops).
    ///
    /// Unlike pf states, relayed connections cannot outlive the process. Each one still
    /// in progress is reset on both sides: closing it normally would send an end of
    /// file, which in stream mode tells the receiver the transfer is complete.
    pub(crate) fn remove_all(&mut self, registry: &Registry) {
        for (_, mut l) in std::mem::take(&mut self.listeners) {
            let _ = registry.deregister(&mut l.sock);
        }
        self.anchors.clear();
        for (_, mut pair) in std::mem::take(&mut self.pairs) {
            info!(
                "relay: {}: reset at exit (after {} bytes up, {} down)",
                pair.label,
                pair.up.moved(),
                pair.down.moved()
            );
            let _ = registry.deregister(&mut pair.accepted.sock);
            let _ = registry.deregister(&mut pair.opened.sock);
            reset(&pair.accepted.sock);
            reset(&pair.opened.sock);
        }
        self.hot.clear();
        self.next_sweep = None;
    }

    /// Whether some socket still has work from an earlier turn.
    pub(crate) fn is_hot(&self) -> bool {
        !self.hot.is_empty()
    }

    /// Handles a readiness event for one of the relay's tokens.
    pub(crate) fn event(&mut self, registry: &Registry, tok: Tok, ev: &mio::event::Event) {
        match tok {
            Tok::DataListener(id) => self.accept(registry, id),
            Tok::Data(id, end) => {
                let Some(pair) = self.pairs.get_mut(&id) else {
                    return;
                };
                let s = match end {
                    End::Accepted => &mut pair.accepted,
                    End::Opened => &mut pair.opened,
                };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    s.readable = true;
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    s.writable = true;
                }
                self.service(registry, id);
            }
            _ => {}
        }
    }

    /// Serves the sockets left with work by the previous turn.
    pub(crate) fn run_hot(&mut self, registry: &Registry) {
        for tok in std::mem::take(&mut self.hot) {
            match tok {
                Tok::DataListener(id) => self.accept(registry, id),
                Tok::Data(id, _) => self.service(registry, id),
                _ => {}
            }
        }
    }

    fn accept(&mut self, registry: &Registry, id: u64) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(l) = self.listeners.get_mut(&id) else {
                return;
            };
            let (stream, peer) = match l.sock.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == ErrorKind::Interrupted
                        || e.kind() == ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                Err(e) => {
                    warn!("relay: accept on {} failed: {e}", l.fwd.listen);
                    return;
                }
            };
            let peer = sys::unmap(peer);
            if let Err(refusal) = self.admit(id, peer) {
                // Every refusal is a reset: a clean close would look like an empty
                // transfer to whoever connected.
                if let Some(l) = self.listeners.get(&id) {
                    warn!(
                        "#{} data connection from {peer} to {} refused: {refusal}",
                        l.anchor.session, l.fwd.listen
                    );
                }
                reset(&stream);
                continue;
            }
            self.start_pair(registry, id, stream, peer);
        }
        self.hot.push(Tok::DataListener(id));
    }

    /// Whether listener `id` may carry a connection from `peer` now: the rules'
    /// source, the first one only, and the per-session and global caps. A connection
    /// refused for a cap does not use the negotiation up: the next may get through.
    fn admit(&self, id: u64, peer: SocketAddr) -> Result<(), Refusal> {
        let Some(l) = self.listeners.get(&id) else {
            return Ok(());
        };
        if !l.fwd.admits(peer.ip()) {
            return Err(Refusal::Stranger(l.fwd.from));
        }
        if l.active.is_some() || l.waiting.is_some() {
            return Err(Refusal::InProgress);
        }
        if l.used {
            return Err(Refusal::Used);
        }
        let session = l.anchor.session;
        let client = self.client_of(session);
        let own = self.pairs.values().filter(|p| p.session == session).count()
            + self
                .listeners
                .values()
                .filter(|w| w.anchor.session == session && w.waiting.is_some())
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

    /// Connects an admitted data connection to its target and starts copying.
    fn start_pair(&mut self, registry: &Registry, id: u64, stream: TcpStream, peer: SocketAddr) {
        let Some(l) = self.listeners.get_mut(&id) else {
            return;
        };
        l.used = true;
        let fwd = l.fwd.clone();
        let session = l.anchor.session;
        sys::nodelay(&stream);
        if fwd.join {
            return self.join(registry, id, stream, peer);
        }
        let opened = match self.open(&fwd) {
            Ok(opened) => opened,
            Err(e) => {
                let from = fwd
                    .source
                    .map_or_else(|| "any address".to_string(), |s| s.bind_addr().to_string());
                warn!(
                    "#{session} data connection from {peer} to {} failed: cannot connect to {} from {from}: {}",
                    fwd.listen,
                    fwd.target,
                    e.desc()
                );
                reset(&stream);
                return;
            }
        };
        let pid = self.alloc_id();
        let pair = Pair {
            listener: id,
            accepted: Sock::new(stream, true),
            opened: Sock::new(TcpStream::from_std(opened), false),
            up: Pipe::new(PIPE_CAPACITY, self.zero_copy),
            down: Pipe::new(PIPE_CAPACITY, self.zero_copy),
            connecting: true,
            label: format!("#{session} {peer} -> {} -> {}", fwd.listen, fwd.target),
            target: fwd.target,
            partner: None,
            session,
            client: self.client_of(session),
            orphan: false,
            done: false,
            seen: Progress::default(),
            last_active: Instant::now(),
        };
        debug!("relay: {}: connecting", pair.label);
        self.insert_pair(registry, pid, pair);
    }

    /// Registers a new pair's sockets, marks its listeners busy and starts copying.
    fn insert_pair(&mut self, registry: &Registry, pid: u64, mut pair: Pair) {
        let rw = Interest::READABLE | Interest::WRITABLE;
        let r1 = registry.register(
            &mut pair.accepted.sock,
            Tok::Data(pid, End::Accepted).token(),
            rw,
        );
        let r2 = registry.register(
            &mut pair.opened.sock,
            Tok::Data(pid, End::Opened).token(),
            rw,
        );
        if let Err(e) = r1.and(r2) {
            warn!("relay: {}: cannot register: {e}", pair.label);
            let _ = registry.deregister(&mut pair.accepted.sock);
            let _ = registry.deregister(&mut pair.opened.sock);
            reset(&pair.accepted.sock);
            reset(&pair.opened.sock);
            return;
        }
        for l in [Some(pair.listener), pair.partner].into_iter().flatten() {
            if let Some(l) = self.listeners.get_mut(&l) {
                l.active = Some(pid);
            }
        }
        self.pairs.insert(pid, pair);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(Instant::now() + SWEEP_EVERY);
        }
        self.service(registry, pid);
    }

    /// A connection accepted on one leg of a join: paired with the one waiting on
    /// the other leg, or held until that one arrives.
    fn join(&mut self, registry: &Registry, id: u64, stream: TcpStream, peer: SocketAddr) {
        let Some(l) = self.listeners.get(&id) else {
            return;
        };
        let (anchor, listen, target) = (l.anchor, l.fwd.listen, l.fwd.target);
        let partner = self.anchors.get(&anchor).and_then(|ids| {
            ids.iter().copied().find(|&p| {
                p != id
                    && self
                        .listeners
                        .get(&p)
                        .is_some_and(|o| o.fwd.join && o.fwd.listen == target)
            })
        });
        let waiting = partner.and_then(|p| self.listeners.get_mut(&p)?.waiting.take());
        let (Some(partner), Some((other, other_peer, _))) = (partner, waiting) else {
            debug!(
                "relay: #{} {peer} -> {listen}: waiting for the other leg at {target}",
                anchor.session
            );
            if let Some(l) = self.listeners.get_mut(&id) {
                l.waiting = Some((stream, peer, Instant::now()));
            }
            if self.next_sweep.is_none() {
                self.next_sweep = Some(Instant::now() + SWEEP_EVERY);
            }
            return;
        };
        let pid = self.alloc_id();
        let pair = Pair {
            listener: id,
            accepted: Sock::new(stream, true),
            opened: Sock::new(other, true),
            up: Pipe::new(PIPE_CAPACITY, self.zero_copy),
            down: Pipe::new(PIPE_CAPACITY, self.zero_copy),
            connecting: false,
            label: format!(
                "#{} {peer} -> {listen} joined with {other_peer} -> {target}",
                anchor.session
            ),
            target,
            partner: Some(partner),
            session: anchor.session,
            client: self.client_of(anchor.session),
            orphan: false,
            done: false,
            seen: Progress::default(),
            last_active: Instant::now(),
        };
        debug!("relay: {}: joined", pair.label);
        self.insert_pair(registry, pid, pair);
    }

    /// Starts the connection to the real endpoint from the nat-to address.
    ///
    /// A single-port range (port 20 with `-r`) needs privilege to bind; without it the
    /// relay falls back to an ephemeral port (logged once). A range means "any port"
    /// and the kernel picks an ephemeral one. If the nat-to address is not local (a
    /// transparent setup without IP_TRANSPARENT), the kernel picks the source (logged once).
    fn open(&mut self, fwd: &Forward) -> Result<std::net::TcpStream, Errno> {
        let Some(source) = fwd.source else {
            return sys::start_connect(fwd.target, None).map_err(|e| e.errno());
        };
        let bind = source.bind_addr();
        let nat = source.addr;
        match sys::start_connect(fwd.target, Some(bind)) {
            Err(sys::ConnectError::Bind(e))
                if bind.port() != 0
                    && matches!(e, Errno::EACCES | Errno::EPERM | Errno::EADDRINUSE) =>
            {
                if !self.port_fallback_logged {
                    self.port_fallback_logged = true;
                    warn!(
                        "relay: cannot bind source port {} ({}), using an ephemeral port",
                        bind.port(),
                        e.desc()
                    );
                }
                self.open_from(fwd.target, nat)
            }
            Err(sys::ConnectError::Bind(Errno::EADDRNOTAVAIL)) => {
                if !self.addr_fallback_logged {
                    self.addr_fallback_logged = true;
                    warn!(
                        "relay: {nat} is not a local address, letting the kernel choose the source"
                    );
                }
                sys::start_connect(fwd.target, None).map_err(|e| e.errno())
            }
            other => other.map_err(|e| e.errno()),
        }
    }

    fn open_from(&mut self, to: SocketAddr, nat: IpAddr) -> Result<std::net::TcpStream, Errno> {
        match sys::start_connect(to, Some(SocketAddr::new(nat, 0))) {
            Err(sys::ConnectError::Bind(Errno::EADDRNOTAVAIL)) => {
                sys::start_connect(to, None).map_err(|e| e.errno())
            }
            other => other.map_err(|e| e.errno()),
        }
    }

    /// Moves bytes of one data connection until it would block or its turn is up.
    fn service(&mut self, registry: &Registry, id: u64) {
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        let outcome = pair.step();
        match outcome {
            Ok(true) => self.hot.push(Tok::Data(id, End::Accepted)),
            // Everything would block, so the read flags are current.
            Ok(false) if pair.done && pair.finished() => {
                self.close(registry, id, PairEnd::Finished)
            }
            Ok(false) => {}
            Err(end) => self.close(registry, id, end),
        }
    }

    fn close(&mut self, registry: &Registry, id: u64, end: PairEnd) {
        let Some(mut pair) = self.pairs.remove(&id) else {
            return;
        };
        let _ = registry.deregister(&mut pair.accepted.sock);
        let _ = registry.deregister(&mut pair.opened.sock);
        if !pair.orphan {
            let total = &mut self.sessions.entry(pair.session).or_default().ended_bytes;
            total.0 += pair.up.moved();
            total.1 += pair.down.moved();
        }
        match end {
            PairEnd::Done => {
                debug!(
                    "relay: {}: done, {} bytes up, {} bytes down",
                    pair.label,
                    pair.up.moved(),
                    pair.down.moved()
                )
            }
            PairEnd::Finished => {
                debug!(
                    "relay: {}: done, {} bytes up, {} bytes down; closed after the transfer's final reply, one side had not closed",
                    pair.label,
                    pair.up.moved(),
                    pair.down.moved()
                )
            }
            PairEnd::Idle(why, limit) => {
                warn!(
                    "{} data connection reset: no data for {} s ({why}), after {} bytes up, {} down",
                    pair.label,
                    limit.as_secs(),
                    pair.up.moved(),
                    pair.down.moved()
                );
                reset(&pair.accepted.sock);
                reset(&pair.opened.sock);
            }
            PairEnd::Killed => {
                warn!(
                    "{} data connection reset: its session ended on a reply desync, after {} bytes up, {} down",
                    pair.label,
                    pair.up.moved(),
                    pair.down.moved()
                );
                reset(&pair.accepted.sock);
                reset(&pair.opened.sock);
            }
            PairEnd::Failed("connect", e) => {
                warn!(
                    "{} data connection failed: {} refused it or did not answer: {e}",
                    pair.label, pair.target
                );
                reset(&pair.accepted.sock);
            }
            PairEnd::Failed(what, e) => {
                info!(
                    "relay: {}: {what}: {e} (after {} bytes up, {} down)",
                    pair.label,
                    pair.up.moved(),
                    pair.down.moved()
                );
                // An abort on one side is an abort on both, as when the kernel
                // forwards a reset: neither end may mistake it for a complete transfer.
                reset(&pair.accepted.sock);
                reset(&pair.opened.sock);
            }
        }
        if self.pairs.is_empty() {
            self.next_sweep = None;
        }
        for lid in [Some(pair.listener), pair.partner].into_iter().flatten() {
            if let Some(l) = self.listeners.get_mut(&lid) {
                if l.active == Some(id) {
                    // The listener stays (until the rules change) to refuse and log
                    // later connections: `used` is set for good.
                    l.active = None;
                }
            }
        }
    }
}

/// Sets `SO_LINGER` to zero so that closing sends RST instead of FIN.
fn reset<F: std::os::fd::AsFd>(sock: &F) {
    let _ = nix::sys::socket::setsockopt(
        sock,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

impl Pair {
    /// One bounded round of copying. `Ok(true)`: work is left for the next turn;
    /// `Ok(false)`: everything would block; `Err`: the connection is over.
    fn step(&mut self) -> Result<bool, PairEnd> {
        if self.connecting {
            if !self.opened.writable {
                // Nothing to learn yet; the accepted side may still fill its pipe below.
            } else {
                match self.opened.sock.take_error() {
                    Ok(Some(e)) | Err(e) => return Err(PairEnd::Failed("connect", e)),
                    Ok(None) => {}
                }
                match self.opened.sock.peer_addr() {
                    Ok(_) => {
                        self.connecting = false;
                        debug!("relay: {}: connected", self.label);
                    }
                    Err(e)
                        if e.kind() == ErrorKind::NotConnected
                            || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                    {
                        self.opened.writable = false;
                    }
                    Err(e) => return Err(PairEnd::Failed("connect", e)),
                }
            }
        }
        for _ in 0..STEPS_PER_TURN {
            let mut progress = false;
            progress |= copy(
                &mut self.up,
                &mut self.accepted,
                &mut self.opened,
                !self.connecting,
            )?;
            progress |= copy(
                &mut self.down,
                &mut self.opened,
                &mut self.accepted,
                !self.connecting,
            )?;
            if self.accepted.shut && self.opened.shut {
                return Err(PairEnd::Done);
            }
            if !progress {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// One direction: write what is buffered, read more if there is room, and pass an
/// end of file on once everything before it is written. Returns whether anything moved.
fn copy(pipe: &mut Pipe, src: &mut Sock, dst: &mut Sock, connected: bool) -> Result<bool, PairEnd> {
    let mut progress = false;
    if connected && dst.writable && !pipe.is_empty() {
        match pipe.drain(&mut dst.sock) {
            Ok(_) => progress = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => dst.writable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(e) => return Err(PairEnd::Failed("write", e)),
        }
    }
    if src.readable && !src.eof && !pipe.is_full() {
        match pipe.fill(&mut src.sock) {
            Ok(Filled::Eof) => {
                src.eof = true;
                progress = true;
            }
            Ok(Filled::Bytes(_)) => progress = true,
            Ok(Filled::SourceEmpty) => src.readable = false,
            // Nothing moved; the drain above makes room once the destination can take it.
            Ok(Filled::NoRoom) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => progress = true,
            Err(e) => return Err(PairEnd::Failed("read", e)),
        }
    }
    if connected && src.eof && pipe.is_empty() && !dst.shut {
        dst.shut = true;
        progress = true;
        if let Err(e) = dst.sock.shutdown(Shutdown::Write) {
            if e.kind() != ErrorKind::NotConnected {
                return Err(PairEnd::Failed("shutdown", e));
            }
        }
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftp_proxy_core::{data_rules, Mode, RuleOptions, SessionAddrs};

    fn addrs() -> SessionAddrs {
        SessionAddrs {
            client: "127.0.0.2".parse().unwrap(),
            server: "127.0.0.3".parse().unwrap(),
            orig_server: "127.0.0.1".parse().unwrap(),
            proxy: "127.0.0.4".parse().unwrap(),
            client_rdomain: 0,
        }
    }

    fn rules_for(listen_ip: &str, proxy_port: u16) -> Vec<Rule> {
        let a = SessionAddrs {
            orig_server: listen_ip.parse().unwrap(),
            ..addrs()
        };
        data_rules(
            Mode::Passive,
            &a,
            40000,
            proxy_port,
            &RuleOptions::default(),
        )
        .to_vec()
    }

    const ANCHOR: Anchor = Anchor { pid: 1, session: 1 };

    #[test]
    fn commit_listens_and_empty_commit_removes() {
        let poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        relay
            .commit(poll.registry(), &ANCHOR, &rules_for("127.0.0.1", port))
            .unwrap();
        assert_eq!(relay.listener_count(), 1);
        // Really listening: a connect succeeds.
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The same rules again keep the same socket (rebinding would fail).
        relay
            .commit(poll.registry(), &ANCHOR, &rules_for("127.0.0.1", port))
            .unwrap();
        assert_eq!(relay.listener_count(), 1);
        relay.commit(poll.registry(), &ANCHOR, &[]).unwrap();
        assert_eq!(relay.listener_count(), 0);
        assert!(relay.anchors.is_empty());
        let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    }

    #[test]
    fn port_in_use_is_busy_and_changes_nothing() {
        let poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        relay
            .commit(poll.registry(), &ANCHOR, &rules_for("127.0.0.1", free))
            .unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let r = relay.commit(
            poll.registry(),
            &ANCHOR,
            &rules_for("127.0.0.1", taken_port),
        );
        assert_eq!(r, Err(FilterError::AddrInUse));
        // The old rules are still in force.
        assert_eq!(relay.listener_count(), 1);
        std::net::TcpStream::connect(("127.0.0.1", free)).unwrap();
    }

    #[test]
    fn foreign_address_is_a_filter_error_with_errno() {
        let poll = mio::Poll::new().unwrap();
        let mut relay = Relay::new(8);
        // 203.0.113.0/24 (TEST-NET-3) is on no interface of a test machine.
        let r = relay.commit(poll.registry(), &ANCHOR, &rules_for("203.0.113.7", 50000));
        match r {
            Err(FilterError::Other { errno, text }) => {
                assert_eq!(errno, libc::EADDRNOTAVAIL);
                assert!(text.starts_with("relay bind 203.0.113.7:50000: "), "{text}");
            }
            other => panic!("expected Other, got {other:?}"),
        }
        assert_eq!(relay.listener_count(), 0);
    }
}
