//! Every rule of the relay policy (`ftp_proxy_core::Relay`), driven through its
//! public API without a socket. It lives outside `src/` because its clock origin is
//! the test's own `Instant::now()`: the core itself never reads a clock.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Once;
use std::time::{Duration, Instant};

use ftp_proxy_core::*;

// ---- a log capture per test thread ----

thread_local! {
    static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES.with(|l| {
            l.borrow_mut()
                .push((record.level(), record.args().to_string()))
        });
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;
static INIT: Once = Once::new();

fn capture_logs() {
    INIT.call_once(|| {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.with(|l| l.borrow_mut().clear());
}

/// The lines logged since the last call, at notice (`warn!`) or above.
fn notices() -> Vec<String> {
    lines(log::Level::Warn)
}

fn lines(max: log::Level) -> Vec<String> {
    LINES.with(|l| {
        std::mem::take(&mut *l.borrow_mut())
            .into_iter()
            .filter(|(lvl, _)| *lvl <= max)
            .map(|(_, t)| t)
            .collect()
    })
}

fn logged(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| l.contains(want))
}

// ---- addresses and rules ----

const CLIENT: &str = "203.0.113.10";
const SERVER: &str = "198.51.100.10";
const PROXY: &str = "198.51.100.1";
/// Reverse mode: the address the client reached.
const FRONT: &str = "203.0.113.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn addrs(client: &str) -> SessionAddrs {
    SessionAddrs {
        client: ip(client),
        server: ip(SERVER),
        orig_server: ip(FRONT),
        proxy: ip(PROXY),
        client_rdomain: 0,
    }
}

fn anchor(session: u32) -> Anchor {
    Anchor { pid: 7, session }
}

/// Passive rules: listen on FRONT:proxy_port, connect to SERVER:server_port.
fn passive(server_port: u16, proxy_port: u16) -> Vec<Rule> {
    passive_from(CLIENT, server_port, proxy_port)
}

fn passive_from(client: &str, server_port: u16, proxy_port: u16) -> Vec<Rule> {
    data_rules(
        Mode::Passive,
        &addrs(client),
        server_port,
        proxy_port,
        &RuleOptions::default(),
    )
    .to_vec()
}

/// Joined rules: the client's leg on FRONT:client_port, the server's on PROXY:server_port.
fn joined(server_port: u16, client_port: u16) -> Vec<Rule> {
    data_rules(
        Mode::Joined,
        &addrs(CLIENT),
        server_port,
        client_port,
        &RuleOptions::default(),
    )
    .to_vec()
}

fn client_peer() -> SocketAddr {
    SocketAddr::new(ip(CLIENT), 40001)
}

fn server_peer() -> SocketAddr {
    SocketAddr::new(ip(SERVER), 20001)
}

// ---- the harness ----

struct H {
    relay: Relay,
    now: Instant,
    /// Listeners the "driver" holds.
    bound: BTreeSet<ListenerId>,
}

impl H {
    fn new(max_pairs: usize) -> H {
        capture_logs();
        H {
            relay: Relay::new(max_pairs),
            now: Instant::now(),
            bound: BTreeSet::new(),
        }
    }

    fn limits(mut self, per_session: usize, idle: u64, linger: u64) -> H {
        self.relay.set_limits(RelayLimits {
            per_session,
            idle: Duration::from_secs(idle),
            linger: Duration::from_secs(linger),
        });
        self
    }

    /// A commit whose binds all succeed; returns the new listeners and the decisions.
    fn commit(
        &mut self,
        session: u32,
        rules: &[Rule],
    ) -> (Vec<(ListenerId, SocketAddr)>, Vec<Decision>) {
        self.commit_at(anchor(session), rules)
    }

    fn listen_at(&mut self, anchor: Anchor, rules: &[Rule]) -> ListenerId {
        let (new, _) = self.commit_at(anchor, rules);
        assert_eq!(new.len(), 1);
        new[0].0
    }

    fn commit_at(
        &mut self,
        anchor: Anchor,
        rules: &[Rule],
    ) -> (Vec<(ListenerId, SocketAddr)>, Vec<Decision>) {
        let prepared = self.relay.prepare(anchor, rules).unwrap();
        let listen: Vec<_> = prepared.listen().collect();
        for (id, _) in &listen {
            assert!(self.bound.insert(*id), "{id:?} asked for twice");
        }
        self.relay.commit(self.now, prepared);
        let decisions = self.drain();
        (listen, decisions)
    }

    /// The one listener of a one-forward commit.
    fn listen(&mut self, session: u32, rules: &[Rule]) -> ListenerId {
        let (new, _) = self.commit(session, rules);
        assert_eq!(new.len(), 1);
        new[0].0
    }

    fn drain(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while let Some(d) = self.relay.poll_decision() {
            if let Decision::StopListening(id) = d {
                assert!(self.bound.remove(&id), "{id:?} stopped but never bound");
            }
            out.push(d);
        }
        out
    }

    /// Accepts from `peer` and expects a pair to connect; returns it connected.
    fn open(&mut self, l: ListenerId, peer: SocketAddr) -> PairId {
        let pair = match self.relay.accept(self.now, l, peer) {
            Admission::Open { pair, security } => {
                assert_eq!(security, Security::Plain);
                pair
            }
            other => panic!("expected Open, got {other:?}"),
        };
        let d = self.drain();
        assert!(
            matches!(d[..], [Decision::Connect { pair: p, .. }] if p == pair),
            "{d:?}"
        );
        self.relay.connected(self.now, pair);
        pair
    }

    fn refused(&mut self, l: ListenerId, peer: SocketAddr) -> Refusal {
        match self.relay.accept(self.now, l, peer) {
            Admission::Refuse(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn report(&mut self, pair: PairId, state: PairState) -> Vec<Decision> {
        self.relay.report(self.now, pair, state);
        self.drain()
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    /// Sweeps at `now` with nothing left in any send queue.
    fn sweep(&mut self) -> Vec<Decision> {
        self.relay.handle_timeout(self.now, |_| [Some(0), Some(0)]);
        self.drain()
    }

    /// Sweeps every second for `secs` seconds; returns every decision.
    fn sweep_for(&mut self, secs: u64) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..secs {
            self.advance(1);
            out.extend(self.sweep());
        }
        out
    }
}

fn flowing(moved: u64) -> Flow {
    Flow {
        moved,
        eof: false,
        shut: false,
        empty: true,
        quiet: true,
    }
}

/// A direction whose end of file was read and passed on after `moved` bytes.
fn ended(moved: u64) -> Flow {
    Flow {
        moved,
        eof: true,
        shut: true,
        empty: true,
        quiet: true,
    }
}

fn closes(d: &[Decision]) -> Vec<(PairId, bool, PairEnd)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Close {
                pair, reset, end, ..
            } => Some((*pair, *reset, *end)),
            _ => None,
        })
        .collect()
}

// ---- rules and listeners ----

#[test]
fn commit_listens_and_the_empty_commit_stops_and_logs_the_unused_negotiation() {
    let mut h = H::new(8);
    let (new, d) = h.commit(1, &passive(40000, 50000));
    assert_eq!(new, vec![(new[0].0, sa("203.0.113.1:50000"))]);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(h.relay.listener_count(), 1);
    let fwd = h.relay.forward(new[0].0).unwrap();
    assert_eq!(fwd.target, sa("198.51.100.10:40000"));
    let (again, d) = h.commit(1, &[]);
    assert!(again.is_empty());
    assert_eq!(d, vec![Decision::StopListening(new[0].0)]);
    assert_eq!(h.relay.listener_count(), 0);
    assert_eq!(h.relay.anchor_count(), 0);
    assert_eq!(
        notices(),
        vec!["#1 data connection failed: 203.0.113.10 never connected to 203.0.113.1:50000 before the session ended"]
    );
}

#[test]
fn a_new_negotiation_logs_the_unused_one_it_replaces() {
    let mut h = H::new(8);
    let first = h.listen(1, &passive(40000, 50000));
    let (new, d) = h.commit(1, &passive(40001, 50001));
    assert_eq!(new.len(), 1);
    assert_ne!(new[0].0, first);
    assert_eq!(d, vec![Decision::StopListening(first)]);
    assert_eq!(
        notices(),
        vec!["#1 data connection failed: 203.0.113.10 never connected to 203.0.113.1:50000 before a new negotiation replaced the rules"]
    );
    // A used one gives way quietly.
    let l = new[0].0;
    let _pair = h.open(l, client_peer());
    let (_, d) = h.commit(1, &passive(40002, 50002));
    assert_eq!(d, vec![Decision::StopListening(l)]);
    assert!(notices().is_empty());
    // The pair in progress is not touched by its rules going away.
    assert_eq!(h.relay.pair_count(), 1);
}

#[test]
fn a_dropped_prepared_commit_changes_nothing_and_its_ids_are_never_reused() {
    let mut h = H::new(8);
    let first = h.listen(1, &passive(40000, 50000));
    let prepared = h.relay.prepare(anchor(1), &passive(40001, 50001)).unwrap();
    let abandoned: Vec<_> = prepared.listen().collect();
    assert_eq!(abandoned.len(), 1);
    assert_eq!(prepared.anchor(), anchor(1));
    // The driver's bind failed (EADDRINUSE): it drops the plan.
    drop(prepared);
    assert!(h.drain().is_empty());
    assert_eq!(h.relay.listener_count(), 1);
    assert_eq!(
        h.relay.forward(first).unwrap().listen,
        sa("203.0.113.1:50000")
    );
    // The old set is still in force: its connection is admitted.
    let pair = h.open(first, client_peer());
    // The next plan gets fresh ids.
    let (new, _) = h.commit(1, &passive(40001, 50001));
    let ids = [first.0, abandoned[0].0 .0, pair.0, new[0].0 .0];
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 4, "{ids:?}");
    assert!(new[0].0 .0 > abandoned[0].0 .0);
}

#[test]
fn rules_with_no_meaning_as_sockets_are_an_error_and_change_nothing() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let mut rules = passive(40001, 50001);
    rules[1].direction = Direction::In;
    let e = h.relay.prepare(anchor(1), &rules).unwrap_err();
    assert_eq!(*e.rule, rules[1]);
    assert_eq!(h.relay.forward(l).unwrap().target.port(), 40000);
}

#[test]
fn the_same_address_again_keeps_its_listener() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let prepared = h.relay.prepare(anchor(1), &passive(40000, 50000)).unwrap();
    assert_eq!(prepared.listen().count(), 0, "nothing to bind");
    assert_eq!(
        prepared.forwards().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![l]
    );
    h.relay.commit(h.now, prepared);
    assert!(h.drain().is_empty(), "no StopListening for a kept listener");
    assert_eq!(h.relay.listener_count(), 1);
}

#[test]
fn a_live_proxy_port_reused_for_another_target_takes_the_new_forward_whole() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let first = h.open(l, client_peer());
    assert_eq!(h.refused(l, client_peer()), Refusal::InProgress);
    // A new negotiation draws the same proxy port for another server port.
    let (new, d) = h.commit(1, &passive(40123, 50000));
    assert!(new.is_empty(), "the listener is kept, not bound again");
    assert!(d.is_empty(), "{d:?}");
    let fwd = h.relay.forward(l).unwrap();
    assert_eq!(fwd.target, sa("198.51.100.10:40123"));
    // A fresh one-connection allowance, to the new target, from the new source.
    let second = match h.relay.accept(h.now, l, SocketAddr::new(ip(CLIENT), 40002)) {
        Admission::Open { pair, .. } => pair,
        other => panic!("the new negotiation's connection: {other:?}"),
    };
    let d = h.drain();
    assert_eq!(
        d,
        vec![Decision::Connect {
            pair: second,
            to: sa("198.51.100.10:40123"),
            from: Some(sa("198.51.100.1:0")),
            security: Security::Plain,
        }]
    );
    h.relay.connected(h.now, second);
    // The pair in progress keeps its own target.
    let target = |p: PairId| match h.relay.legs(p).unwrap()[1].origin {
        Origin::Connected { to, .. } => to,
        other => panic!("{other:?}"),
    };
    assert_eq!(target(first), sa("198.51.100.10:40000"));
    assert_eq!(target(second), sa("198.51.100.10:40123"));
    // And the new negotiation has its one connection, no more.
    assert_eq!(h.refused(l, client_peer()), Refusal::InProgress);
    // The old pair ending does not touch the new negotiation's allowance.
    h.report(
        first,
        PairState {
            up: ended(5),
            down: ended(0),
        },
    );
    assert_eq!(h.refused(l, client_peer()), Refusal::InProgress);
    h.report(
        second,
        PairState {
            up: ended(1),
            down: ended(0),
        },
    );
    assert_eq!(h.refused(l, client_peer()), Refusal::Used);
}

#[test]
fn a_kept_listener_for_a_new_client_admits_only_the_new_one() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    h.commit(1, &passive_from("203.0.113.20", 40000, 50000));
    assert_eq!(
        h.refused(l, client_peer()),
        Refusal::Stranger(ip("203.0.113.20"))
    );
    let notice = notices();
    assert!(
        logged(&notice, "#1 data connection failed: 203.0.113.10 never connected to 203.0.113.1:50000 before a new negotiation replaced the rules"),
        "{notice:?}"
    );
}

// ---- admission ----

#[test]
fn strangers_are_refused_and_mapped_peers_are_not_strangers() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let why = h.refused(l, sa("203.0.113.99:4000"));
    assert_eq!(why, Refusal::Stranger(ip(CLIENT)));
    assert_eq!(
        notices(),
        vec!["#1 data connection from 203.0.113.99:4000 to 203.0.113.1:50000 refused: a stranger, only 203.0.113.10 may connect"]
    );
    // A stranger does not use the negotiation up.
    let pair = h.open(l, sa("[::ffff:203.0.113.10]:40001"));
    match h.relay.legs(pair).unwrap()[0].origin {
        Origin::Accepted { listener, peer } => {
            assert_eq!(listener, l);
            assert_eq!(peer, client_peer(), "unmapped");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_connection_per_negotiation_in_progress_then_used_and_strangers_first() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let pair = h.open(l, client_peer());
    assert_eq!(
        h.refused(l, sa("203.0.113.99:1")),
        Refusal::Stranger(ip(CLIENT))
    );
    assert_eq!(h.refused(l, client_peer()), Refusal::InProgress);
    let d = h.report(
        pair,
        PairState {
            up: ended(10),
            down: ended(20),
        },
    );
    assert_eq!(closes(&d), vec![(pair, false, PairEnd::Done)]);
    assert_eq!(h.refused(l, client_peer()), Refusal::Used);
    let n = notices();
    assert!(logged(&n, "#1 data connection from 203.0.113.10:40001 to 203.0.113.1:50000 refused: one is already in progress for this negotiation"), "{n:?}");
    assert!(logged(&n, "refused: this negotiation's one data connection has already been made (PASV, EPSV, PORT or EPRT again for another)"), "{n:?}");
    assert_eq!(
        h.refused(ListenerId(999), client_peer()),
        Refusal::NotListening
    );
}

#[test]
fn the_session_cap_counts_its_own_and_its_address_orphans_and_refusing_does_not_use_up() {
    let mut h = H::new(16).limits(2, 600, 600);
    h.relay.session_started(SessionId(1), ip(CLIENT));
    let a = h.listen(1, &passive(40000, 50000));
    let pa = h.open(a, client_peer());
    let b = h.listen(1, &passive(40001, 50001));
    let pb = h.open(b, client_peer());
    let c = h.listen(1, &passive(40002, 50002));
    assert_eq!(
        h.refused(c, client_peer()),
        Refusal::SessionLimit {
            own: 2,
            orphans: 0,
            client: Some(ip(CLIENT))
        }
    );
    assert!(logged(&notices(), "refused: data-connection limit reached, the session has 2 in progress (--relay-per-session)"));
    // Session 1 ends; its two transfers go on, as orphans of the client's address.
    h.commit(1, &[]);
    assert_eq!(h.relay.session_ended(SessionId(1)), (0, 0));
    h.relay.session_started(SessionId(2), ip(CLIENT));
    let d = h.listen(2, &passive(40003, 50003));
    let why = h.refused(d, client_peer());
    assert_eq!(
        why,
        Refusal::SessionLimit {
            own: 0,
            orphans: 2,
            client: Some(ip(CLIENT))
        }
    );
    assert_eq!(why.to_string(), "data-connection limit reached, the session has 0 in progress and 2 more outlive earlier sessions of 203.0.113.10 (--relay-per-session)");
    // Another client's session is not held back by them.
    h.relay.session_started(SessionId(3), ip("203.0.113.20"));
    let e = h.listen(3, &passive_from("203.0.113.20", 40004, 50004));
    h.open(e, sa("203.0.113.20:40001"));
    // One orphan ends: the refused negotiation was not used up.
    h.report(
        pa,
        PairState {
            up: ended(1),
            down: ended(1),
        },
    );
    let _pd = h.open(d, client_peer());
    assert_eq!(h.relay.pair_count(), 3);
    let _ = pb;
}

#[test]
fn a_held_join_leg_counts_against_the_session_cap_but_not_against_its_partner() {
    let mut h = H::new(16).limits(1, 600, 600);
    let (c, s) = join_legs(&mut h);
    assert!(matches!(
        h.relay.accept(h.now, c, client_peer()),
        Admission::Hold { .. }
    ));
    // Another rule set of the same session (another process's anchor) is held back.
    let other = h.listen_at(Anchor { pid: 8, session: 1 }, &passive(40009, 50009));
    assert_eq!(
        h.refused(other, client_peer()),
        Refusal::SessionLimit {
            own: 1,
            orphans: 0,
            client: None
        }
    );
    // The held leg's partner completes the one data connection they make.
    assert!(matches!(
        h.relay.accept(h.now, s, server_peer()),
        Admission::Join { with, .. } if with == c
    ));
    assert_eq!(h.relay.pair_count(), 1);
}

#[test]
fn the_global_cap_counts_pairs_of_every_session() {
    let mut h = H::new(1);
    let a = h.listen(1, &passive(40000, 50000));
    h.open(a, client_peer());
    let b = h.listen(2, &passive(40001, 50001));
    assert_eq!(h.refused(b, client_peer()), Refusal::Limit(1));
    assert!(logged(
        &notices(),
        "#2 data connection from 203.0.113.10:40001 to 203.0.113.1:50001 refused: data-connection limit reached, 1 in progress in all sessions (-m)"
    ));
}

// ---- connecting ----

#[test]
fn the_connect_comes_from_the_nat_source_and_falls_back_once_logged() {
    let mut h = H::new(8);
    let opts = RuleOptions {
        rfc_mode: true,
        ..RuleOptions::default()
    };
    // Active mode with -r: the server's port 20 towards the client.
    let rules = data_rules(Mode::ActivePort, &addrs(CLIENT), 40000, 50000, &opts).to_vec();
    let l = h.listen(1, &rules);
    let pair = match h.relay.accept(h.now, l, server_peer()) {
        Admission::Open { pair, .. } => pair,
        other => panic!("{other:?}"),
    };
    let to = sa("203.0.113.10:40000");
    let want = |from: Option<&str>| Decision::Connect {
        pair,
        to,
        from: from.map(sa),
        security: Security::Plain,
    };
    assert_eq!(h.drain(), vec![want(Some("203.0.113.1:20"))]);
    let eacces = SocketError::from(ErrorKind::PermissionDenied);
    h.relay.connect_failed(
        h.now,
        pair,
        ConnectError::Bind {
            from: sa("203.0.113.1:20"),
            error: eacces,
        },
    );
    assert_eq!(h.drain(), vec![want(Some("203.0.113.1:0"))]);
    h.relay.connect_failed(
        h.now,
        pair,
        ConnectError::Bind {
            from: sa("203.0.113.1:0"),
            error: SocketError::from(ErrorKind::AddrNotAvailable),
        },
    );
    assert_eq!(h.drain(), vec![want(None)]);
    let n = notices();
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].starts_with("relay: cannot bind source port 20 ("),
        "{n:?}"
    );
    assert!(n[0].ends_with("), using an ephemeral port"), "{n:?}");
    assert_eq!(
        h.relay.legs(pair).unwrap()[1].origin,
        Origin::Connected { to, from: None }
    );
    h.relay.connected(h.now, pair);
    // The next pair's fallback is not logged again.
    let rules = data_rules(Mode::ActivePort, &addrs(CLIENT), 40001, 50001, &opts).to_vec();
    let l2 = h.listen(1, &rules);
    let p2 = match h.relay.accept(h.now, l2, server_peer()) {
        Admission::Open { pair, .. } => pair,
        other => panic!("{other:?}"),
    };
    h.drain();
    h.relay.connect_failed(
        h.now,
        p2,
        ConnectError::Bind {
            from: sa("203.0.113.1:20"),
            error: eacces,
        },
    );
    assert_eq!(h.drain().len(), 1);
    assert!(notices().is_empty());
}

#[test]
fn a_foreign_nat_address_falls_back_to_the_kernels_choice() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let pair = match h.relay.accept(h.now, l, client_peer()) {
        Admission::Open { pair, .. } => pair,
        other => panic!("{other:?}"),
    };
    h.drain();
    h.relay.connect_failed(
        h.now,
        pair,
        ConnectError::Bind {
            from: sa("198.51.100.1:0"),
            error: SocketError::from_errno(99),
        },
    );
    assert!(matches!(
        h.drain()[..],
        [Decision::Connect { from: None, .. }]
    ));
    assert_eq!(
        notices(),
        vec!["relay: 198.51.100.1 is not a local address, letting the kernel choose the source"]
    );
}

#[test]
fn a_connect_that_cannot_start_or_is_refused_resets_the_accepted_leg() {
    let mut h = H::new(8);
    let l = h.listen(1, &passive(40000, 50000));
    let pair = match h.relay.accept(h.now, l, client_peer()) {
        Admission::Open { pair, .. } => pair,
        other => panic!("{other:?}"),
    };
    h.drain();
    let error = ConnectError::Start {
        to: sa("198.51.100.10:40000"),
        error: SocketError::from_errno(101),
    };
    h.relay.connect_failed(h.now, pair, error);
    let d = h.drain();
    assert_eq!(
        closes(&d),
        vec![(pair, true, PairEnd::ConnectFailed(error))]
    );
    let n = notices();
    assert_eq!(n.len(), 1);
    assert!(
        n[0].starts_with("#1 data connection from 203.0.113.10:40001 to 203.0.113.1:50000 failed: cannot connect to 198.51.100.10:40000 from 198.51.100.1:0: "),
        "{n:?}"
    );
    assert!(!n[0].contains("os error"), "strerror text only: {n:?}");
    assert_eq!(h.relay.pair_count(), 0);
    assert_eq!(h.refused(l, client_peer()), Refusal::Used);

    let l = h.listen(1, &passive(40001, 50001));
    let pair = match h.relay.accept(h.now, l, client_peer()) {
        Admission::Open { pair, .. } => pair,
        other => panic!("{other:?}"),
    };
    h.drain();
    let refused = SocketError::from_errno(111);
    h.relay.connect_failed(
        h.now,
        pair,
        ConnectError::Refused {
            to: sa("198.51.100.10:40001"),
            error: refused,
        },
    );
    assert_eq!(closes(&h.drain()).len(), 1);
    let n = notices();
    assert_eq!(
        n[n.len() - 1..],
        vec![format!("#1 203.0.113.10:40001 -> 203.0.113.1:50001 -> 198.51.100.10:40001 data connection failed: 198.51.100.10:40001 refused it or did not answer: {}", SocketError::from_errno(111))]
    );
}

// ---- joins ----

fn join_legs(h: &mut H) -> (ListenerId, ListenerId) {
    let (legs, _) = h.commit(1, &joined(40000, 50000));
    assert_eq!(legs.len(), 2);
    assert_eq!(legs[0].1, sa("203.0.113.1:50000"), "the client's leg");
    assert_eq!(legs[1].1, sa("198.51.100.1:40000"), "the server's leg");
    (legs[0].0, legs[1].0)
}

#[test]
fn a_join_pairs_two_accepted_legs_client_first() {
    let mut h = H::new(8);
    let (c, s) = join_legs(&mut h);
    assert!(matches!(
        h.relay.accept(h.now, c, client_peer()),
        Admission::Hold { .. }
    ));
    assert_eq!(h.relay.held_count(), 1);
    assert!(
        h.relay.poll_timeout().is_some(),
        "a held leg arms the sweep"
    );
    assert_eq!(h.refused(c, client_peer()), Refusal::InProgress);
    let pair = match h.relay.accept(h.now, s, server_peer()) {
        Admission::Join { pair, with, .. } => {
            assert_eq!(with, c);
            pair
        }
        other => panic!("{other:?}"),
    };
    assert!(h.drain().is_empty(), "nothing is connected");
    assert_eq!(h.relay.held_count(), 0);
    let legs = h.relay.legs(pair).unwrap();
    assert!(
        matches!(legs[0].origin, Origin::Accepted { listener, peer } if listener == s && peer == server_peer())
    );
    assert!(
        matches!(legs[1].origin, Origin::Accepted { listener, peer } if listener == c && peer == client_peer())
    );
    // Both legs' negotiations are taken.
    assert_eq!(h.refused(c, client_peer()), Refusal::InProgress);
    assert_eq!(h.refused(s, server_peer()), Refusal::InProgress);
    let d = h.report(
        pair,
        PairState {
            up: ended(3),
            down: ended(4),
        },
    );
    assert_eq!(
        d,
        vec![Decision::Close {
            pair,
            reset: false,
            end: PairEnd::Done,
            up: 3,
            down: 4
        }]
    );
    assert_eq!(h.refused(s, server_peer()), Refusal::Used);
}

#[test]
fn a_join_pairs_two_accepted_legs_server_first() {
    let mut h = H::new(8);
    let (c, s) = join_legs(&mut h);
    assert!(matches!(
        h.relay.accept(h.now, s, server_peer()),
        Admission::Hold { .. }
    ));
    // Only the leg's own peer may be its partner.
    assert_eq!(h.refused(c, server_peer()), Refusal::Stranger(ip(CLIENT)));
    match h.relay.accept(h.now, c, client_peer()) {
        Admission::Join { with, .. } => assert_eq!(with, s),
        other => panic!("{other:?}"),
    }
    let debug = lines(log::Level::Debug);
    assert!(logged(&debug, "relay: #1 198.51.100.10:20001 -> 198.51.100.1:40000: waiting for the other leg at 203.0.113.1:50000"), "{debug:?}");
    assert!(logged(&debug, "relay: #1 203.0.113.10:40001 -> 203.0.113.1:50000 joined with 198.51.100.10:20001 -> 198.51.100.1:40000: joined"), "{debug:?}");
}

#[test]
fn a_held_leg_whose_partner_never_comes_is_reset_after_the_idle_limit() {
    let mut h = H::new(8).limits(2, 5, 2);
    let (c, _s) = join_legs(&mut h);
    let _ = h.relay.accept(h.now, c, client_peer());
    assert!(h.sweep_for(4).is_empty());
    let d = h.sweep_for(1);
    assert_eq!(d, vec![Decision::ResetHeld(c)]);
    assert_eq!(
        notices(),
        vec!["#1 data connection from 203.0.113.10:40001 to 203.0.113.1:50000 reset: its partner never connected to 198.51.100.1:40000 in 5 s"]
    );
    assert_eq!(h.relay.poll_timeout(), None);
    // The negotiation was used by the held leg.
    assert_eq!(h.refused(c, client_peer()), Refusal::Used);
}

#[test]
fn a_held_leg_survives_a_pair_ending_and_still_expires() {
    let mut h = H::new(8).limits(4, 5, 2);
    let p = h.listen(2, &passive(40009, 50009));
    let pair = h.open(p, client_peer());
    let (c, _s) = join_legs(&mut h);
    let _ = h.relay.accept(h.now, c, client_peer());
    h.report(
        pair,
        PairState {
            up: ended(1),
            down: ended(1),
        },
    );
    assert!(
        h.relay.poll_timeout().is_some(),
        "the held leg still needs the sweep"
    );
    assert!(h.sweep_for(5).contains(&Decision::ResetHeld(c)));
}

#[test]
fn a_held_leg_is_reset_when_its_rules_are_replaced() {
    let mut h = H::new(8);
    let (c, s) = join_legs(&mut h);
    let _ = h.relay.accept(h.now, c, client_peer());
    let (_, d) = h.commit(1, &passive(40001, 50001));
    assert_eq!(
        d,
        vec![
            Decision::ResetHeld(c),
            Decision::StopListening(c),
            Decision::StopListening(s)
        ]
    );
    let n = notices();
    assert!(logged(&n, "#1 data connection from 203.0.113.10:40001 to 203.0.113.1:50000 reset: its partner never connected to 198.51.100.1:40000 before a new negotiation replaced the rules"), "{n:?}");
    assert!(logged(&n, "#1 data connection failed: 198.51.100.10 never connected to 198.51.100.1:40000 before a new negotiation replaced the rules"), "{n:?}");
}

// ---- idle limits ----

#[test]
fn an_idle_pair_is_reset_after_idle_and_progress_restarts_the_clock() {
    let mut h = H::new(8).limits(2, 10, 3);
    let l = h.listen(1, &passive(40000, 50000));
    let pair = h.open(l, client_peer());
    assert!(h.sweep_for(8).is_empty());
    h.report(
        pair,
        PairState {
            up: flowing(100),
            down: flowing(0),
        },
    );
    assert!(
        h.sweep_for(10).is_empty(),
        "100 bytes moved restart the clock"
    );
    let d = h.sweep_for(1);
    assert_eq!(
        closes(&d),
        vec![(
            pair,
            true,
            PairEnd::Idle {
                limit: Duration::from_secs(10),
                cause: IdleCause::Idle
            }
        )]
    );
    assert_eq!(
        notices(),
        vec!["#1 203.0.113.10:40001 -> 203.0.113.1:50000 -> 198.51.100.10:40000 data connection reset: no data for 10 s (idle), after 100 bytes up, 0 down"]
    );
    assert_eq!(h.relay.poll_timeout(), None);
}

#[test]
fn a_draining_send_queue_is_progress() {
    let mut h = H::new(8).limits(2, 3, 3);
    let l = h.listen(1, &passive(40000, 50000));
    let pair = h.open(l, client_peer());
    for left in (0..10u32).rev() {
        h.advance(1);
        h.relay
            .handle_timeout(h.now, |_| [Some(left * 1000), Some(0)]);
        assert!(h.drain().is_empty(), "the slow reader is alive");
    }
    assert_eq!(h.relay.pair_count(), 1);
    assert_eq!(closes(&h.sweep_for(4)).len(), 1);
    let _ = pair;
}

#[test]
fn half_closed_and_orphaned_pairs_linger_for_the_shorter_limit() {
    let mut h = H::new(8).limits(4, 100, 3);
    let a = h.listen(1, &passive(40000, 50000));
    let half = h.open(a, client_peer());
    h.report(
        half,
        PairState {
            up: ended(10),
            down: flowing(0),
        },
    );
    let b = h.listen(2, &passive(40001, 50001));
    let orphan = h.open(b, client_peer());
    h.relay.session_ended(SessionId(2));
    let c = h.listen(3, &passive(40002, 50002));
    let idle = h.open(c, client_peer());
    let d = h.sweep_for(4);
    let ends = closes(&d);
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert!(ends.contains(&(
        half,
        true,
        PairEnd::Idle {
            limit: Duration::from_secs(3),
            cause: IdleCause::HalfClosed
        }
    )));
    assert!(ends.contains(&(
        orphan,
        true,
        PairEnd::Idle {
            limit: Duration::from_secs(3),
            cause: IdleCause::SessionEnded
        }
    )));
    let n = notices();
    assert!(
        logged(
            &n,
            "no data for 3 s (half-closed), after 10 bytes up, 0 down"
        ),
        "{n:?}"
    );
    assert!(
        logged(&n, "no data for 3 s (its session has ended)"),
        "{n:?}"
    );
    assert_eq!(
        h.relay.legs(idle).map(|_| ()),
        Some(()),
        "the plain idle one stays"
    );
}

#[test]
fn the_clock_is_checked_only_when_due() {
    let mut h = H::new(8).limits(2, 1, 1);
    assert_eq!(h.relay.poll_timeout(), None);
    let l = h.listen(1, &passive(40000, 50000));
    let _pair = h.open(l, client_peer());
    let due = h.relay.poll_timeout().unwrap();
    assert_eq!(due, h.now + RELAY_SWEEP_EVERY);
    // A spurious call does nothing, however long the pair has been idle.
    h.relay
        .handle_timeout(due - Duration::from_millis(1), |_| [None, None]);
    assert!(h.drain().is_empty());
    assert_eq!(h.relay.poll_timeout(), Some(due));
}

// ---- finished transfers ----

fn connected_pair(h: &mut H, session: u32, port: u16) -> PairId {
    let l = h.listen(session, &passive(40000 + port, 50000 + port));
    h.open(l, client_peer())
}

#[test]
fn after_the_final_reply_an_upload_whose_receiver_never_closes_is_finished() {
    let mut h = H::new(8);
    let pair = connected_pair(&mut h, 1, 0);
    // An upload: up carried the data and its end of file; the server keeps its side open.
    let upload = PairState {
        up: ended(1000),
        down: flowing(0),
    };
    assert!(
        h.report(pair, upload).is_empty(),
        "not before the final reply"
    );
    h.relay.transfer_done(SessionId(1));
    assert_eq!(h.drain(), vec![Decision::Refresh(pair)]);
    let d = h.report(pair, upload);
    assert_eq!(
        d,
        vec![Decision::Close {
            pair,
            reset: false,
            end: PairEnd::Finished,
            up: 1000,
            down: 0
        }]
    );
    let debug = lines(log::Level::Debug);
    assert!(logged(&debug, "relay: #1 203.0.113.10:40001 -> 203.0.113.1:50000 -> 198.51.100.10:40000: done, 1000 bytes up, 0 bytes down; closed after the transfer's final reply, one side had not closed"), "{debug:?}");
}

#[test]
fn a_receiver_that_closed_early_while_the_data_flows_is_not_finished() {
    let mut h = H::new(8);
    let pair = connected_pair(&mut h, 1, 0);
    h.relay.transfer_done(SessionId(1));
    h.drain();
    // A download still under way: the client (up) closed its sending side early.
    let early = PairState {
        up: ended(0),
        down: flowing(5000),
    };
    assert!(h.report(pair, early).is_empty());
    // Data still buffered or readable the other way: not finished either.
    let upload_in_flight = PairState {
        up: ended(10),
        down: Flow {
            empty: false,
            ..flowing(0)
        },
    };
    assert!(h.report(pair, upload_in_flight).is_empty());
    let readable = PairState {
        up: ended(10),
        down: Flow {
            quiet: false,
            ..flowing(0)
        },
    };
    assert!(h.report(pair, readable).is_empty());
    // Once the download's end of file is passed on, it is finished.
    let d = h.report(
        pair,
        PairState {
            up: ended(0),
            down: ended(5000),
        },
    );
    assert_eq!(closes(&d), vec![(pair, false, PairEnd::Done)]);
}

#[test]
fn an_empty_transfer_is_finished_either_way() {
    let mut h = H::new(8);
    let pair = connected_pair(&mut h, 1, 0);
    h.relay.transfer_done(SessionId(1));
    h.drain();
    let d = h.report(
        pair,
        PairState {
            up: flowing(0),
            down: ended(0),
        },
    );
    assert_eq!(closes(&d), vec![(pair, false, PairEnd::Finished)]);
}

#[test]
fn transfer_done_marks_only_the_sessions_live_pairs_and_does_not_refresh_a_connecting_one() {
    let mut h = H::new(8).limits(8, 600, 15);
    let mine = connected_pair(&mut h, 1, 0);
    let other = connected_pair(&mut h, 2, 1);
    // A pair of session 1 that is still connecting.
    let l = h.listen(1, &passive(40003, 50003));
    let connecting = match h.relay.accept(h.now, l, client_peer()) {
        Admission::Open { pair, .. } => pair,
        other => panic!("{other:?}"),
    };
    h.drain();
    h.relay.transfer_done(SessionId(1));
    let d = h.drain();
    assert!(d.contains(&Decision::Refresh(mine)), "{d:?}");
    assert!(!d.contains(&Decision::Refresh(other)), "{d:?}");
    assert!(!d.contains(&Decision::Refresh(connecting)), "{d:?}");
    // The connecting one is judged once connected.
    h.relay.connected(h.now, connecting);
    let d = h.report(
        connecting,
        PairState {
            up: ended(7),
            down: flowing(0),
        },
    );
    assert_eq!(closes(&d), vec![(connecting, false, PairEnd::Finished)]);
    // The other session's is not.
    assert!(h
        .report(
            other,
            PairState {
                up: ended(7),
                down: flowing(0)
            }
        )
        .is_empty());
}

#[test]
fn an_orphans_transfer_done_does_not_apply() {
    let mut h = H::new(8);
    let pair = connected_pair(&mut h, 1, 0);
    h.relay.session_ended(SessionId(1));
    h.relay.transfer_done(SessionId(1));
    assert!(h.drain().is_empty());
    assert!(h
        .report(
            pair,
            PairState {
                up: ended(7),
                down: flowing(0)
            }
        )
        .is_empty());
}

#[test]
fn a_failed_socket_resets_the_pair_and_logs_at_info() {
    let mut h = H::new(8);
    let pair = connected_pair(&mut h, 1, 0);
    h.report(
        pair,
        PairState {
            up: flowing(3),
            down: flowing(4),
        },
    );
    let error = SocketError::from_errno(104);
    h.relay.failed(h.now, pair, IoOp::Read, error);
    let d = h.drain();
    assert_eq!(
        d,
        vec![Decision::Close {
            pair,
            reset: true,
            end: PairEnd::Failed {
                op: IoOp::Read,
                error
            },
            up: 3,
            down: 4
        }]
    );
    let info = lines(log::Level::Info);
    assert_eq!(
        info,
        vec![format!(
            "relay: #1 203.0.113.10:40001 -> 203.0.113.1:50000 -> 198.51.100.10:40000: read: {} (after 3 bytes up, 4 down)",
            SocketError::from_errno(104)
        )]
    );
}

// ---- sessions ----

#[test]
fn session_ended_counts_ended_and_running_pairs_once() {
    let mut h = H::new(8);
    let a = connected_pair(&mut h, 1, 0);
    h.report(
        a,
        PairState {
            up: ended(10),
            down: ended(20),
        },
    );
    let b = connected_pair(&mut h, 1, 1);
    h.report(
        b,
        PairState {
            up: flowing(1),
            down: flowing(2),
        },
    );
    let _other = connected_pair(&mut h, 2, 2);
    assert_eq!(h.relay.session_ended(SessionId(1)), (11, 22));
    // The orphan's later bytes count for no session.
    h.report(
        b,
        PairState {
            up: ended(100),
            down: ended(200),
        },
    );
    assert_eq!(h.relay.session_ended(SessionId(1)), (0, 0));
}

#[test]
fn kill_resets_the_sessions_pairs_and_held_legs_only() {
    let mut h = H::new(8);
    let mine = connected_pair(&mut h, 1, 9);
    let other = connected_pair(&mut h, 2, 8);
    let (c, _s) = join_legs(&mut h);
    let _ = h.relay.accept(h.now, c, client_peer());
    notices();
    h.relay.kill_session(SessionId(1));
    let d = h.drain();
    assert_eq!(closes(&d), vec![(mine, true, PairEnd::Killed)]);
    assert!(d.contains(&Decision::ResetHeld(c)));
    assert_eq!(h.relay.pair_count(), 1);
    assert!(h.relay.legs(other).is_some());
    let n = notices();
    assert!(logged(&n, "#1 203.0.113.10:40001 -> 203.0.113.1:50009 -> 198.51.100.10:40009 data connection reset: its session ended on a reply desync, after 0 bytes up, 0 down"), "{n:?}");
    assert!(logged(&n, "#1 data connection from 203.0.113.10:40001 to 203.0.113.1:50000 reset: its session ended on a reply desync"), "{n:?}");
    // Its listeners (the join's two, session 2's one) stay until the empty
    // commit that follows.
    assert_eq!(h.relay.listener_count(), 3);
}

#[test]
fn remove_all_stops_every_listener_and_resets_everything() {
    let mut h = H::new(8);
    let pair = connected_pair(&mut h, 2, 0);
    h.report(
        pair,
        PairState {
            up: flowing(5),
            down: flowing(6),
        },
    );
    let (c, _s) = join_legs(&mut h);
    let _ = h.relay.accept(h.now, c, client_peer());
    lines(log::Level::Trace);
    h.relay.remove_all();
    let d = h.drain();
    assert!(h.bound.is_empty(), "every listener stopped: {d:?}");
    assert!(d.contains(&Decision::ResetHeld(c)));
    assert_eq!(closes(&d), vec![(pair, true, PairEnd::Exit)]);
    assert_eq!((h.relay.listener_count(), h.relay.pair_count()), (0, 0));
    assert_eq!(h.relay.poll_timeout(), None);
    assert!(logged(&lines(log::Level::Info), "relay: #2 203.0.113.10:40001 -> 203.0.113.1:50000 -> 198.51.100.10:40000: reset at exit (after 5 bytes up, 6 down)"));
}

#[test]
fn refusal_texts_are_the_notice_lines() {
    let cases = [
        (Refusal::Stranger(ip(CLIENT)), "a stranger, only 203.0.113.10 may connect"),
        (Refusal::InProgress, "one is already in progress for this negotiation"),
        (
            Refusal::SessionLimit {
                own: 1,
                orphans: 0,
                client: None,
            },
            "data-connection limit reached, the session has 1 in progress (--relay-per-session)",
        ),
        (
            Refusal::SessionLimit {
                own: 0,
                orphans: 2,
                client: None,
            },
            "data-connection limit reached, the session has 0 in progress and 2 more outlive earlier sessions (--relay-per-session)",
        ),
    ];
    for (r, text) in cases {
        assert_eq!(r.to_string(), text);
    }
}

#[test]
fn socket_errors_print_as_strerror_without_the_os_error_suffix() {
    let e = SocketError::from(&std::io::Error::from_raw_os_error(111));
    assert_eq!(e.kind, ErrorKind::ConnectionRefused);
    assert_eq!(e.errno, Some(111));
    let io_text = std::io::Error::from_raw_os_error(111).to_string();
    assert!(io_text.starts_with(&e.to_string()), "{io_text} / {e}");
    assert!(!e.to_string().contains("os error"));
    let k = SocketError::from(ErrorKind::TimedOut);
    assert_eq!(k.errno, None);
    assert_eq!(k.to_string(), "timed out");
}

#[test]
fn a_session_behind_a_balancer_admits_the_balancer_for_its_client_only() {
    const BALANCER: &str = "203.0.113.50";
    let mut h = H::new(8).limits(8, 600, 600);
    // Without session_via the balancer is a stranger like any other address.
    h.relay.session_started(SessionId(1), ip(CLIENT));
    let l = h.listen(1, &passive(40000, 50000));
    assert_eq!(
        h.refused(l, sa("203.0.113.50:4000")),
        Refusal::Stranger(ip(CLIENT))
    );
    // Session 2 came through the balancer: its passive port admits the balancer
    // (a balancer that forwards the data ports) ...
    h.relay.session_started(SessionId(2), ip(CLIENT));
    h.relay
        .session_via(SessionId(2), "::ffff:203.0.113.50".parse().unwrap());
    let a = h.listen(2, &passive(40001, 50001));
    h.open(a, sa("203.0.113.50:4001"));
    // ... and the client itself (one that follows the 227's address) ...
    let b = h.listen(2, &passive(40002, 50002));
    h.open(b, client_peer());
    // ... but nobody else, and a forward admitting the server (active mode) does
    // not admit the balancer.
    let c = h.listen(2, &passive(40003, 50003));
    assert_eq!(
        h.refused(c, sa("203.0.113.51:4000")),
        Refusal::Stranger(ip(CLIENT))
    );
    let rules = data_rules(
        Mode::ActivePort,
        &addrs(CLIENT),
        40004,
        50004,
        &RuleOptions::default(),
    )
    .to_vec();
    let d = h.listen(2, &rules);
    assert_eq!(
        h.refused(d, SocketAddr::new(ip(BALANCER), 4002)),
        Refusal::Stranger(ip(SERVER))
    );
    h.open(d, server_peer());
}

// ---- bridges (`--server-data-mode passive`) ----

/// Bridged rules: the proxy connects to SERVER:server_port and CLIENT:client_port.
fn bridged(server_port: u16, client_port: u16) -> Vec<Rule> {
    data_rules(
        Mode::Bridged,
        &addrs(CLIENT),
        client_port,
        server_port,
        &RuleOptions::default(),
    )
    .to_vec()
}

#[test]
fn a_bridge_dials_the_server_then_connects_the_client_and_listens_on_nothing() {
    let mut h = H::new(10);
    let (listen, d) = h.commit(1, &bridged(30000, 5000));
    assert!(listen.is_empty(), "a bridge needs no listener: {listen:?}");
    let pair = match d[..] {
        [Decision::Dial {
            pair,
            to,
            from,
            security: Security::Plain,
        }, Decision::Connect {
            pair: p2,
            to: to2,
            from: from2,
            ..
        }] => {
            assert_eq!(pair, p2);
            assert_eq!(to, sa("198.51.100.10:30000"));
            assert_eq!(from, Some(sa("198.51.100.1:0")));
            assert_eq!(to2, sa("203.0.113.10:5000"));
            // The client sees the data connection come from the address it reached.
            assert_eq!(from2, Some(sa("203.0.113.1:0")));
            pair
        }
        _ => panic!("{d:?}"),
    };
    assert_eq!(h.relay.pair_count(), 1);
    let legs = h.relay.legs(pair).unwrap();
    assert!(legs
        .iter()
        .all(|l| matches!(l.origin, Origin::Connected { .. })));
    h.relay.connected(h.now, pair);
    let d = h.report(
        pair,
        PairState {
            up: ended(10),
            down: ended(0),
        },
    );
    assert_eq!(closes(&d), [(pair, false, PairEnd::Done)]);
    // Replacing the rules leaves nothing behind and needs no StopListening.
    let (_, d) = h.commit(1, &[]);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(h.relay.anchor_count(), 0);
}

#[test]
fn a_bridge_over_the_session_cap_connects_nothing_and_says_so() {
    let mut h = H::new(10).limits(1, 600, 15);
    let (_, d) = h.commit(1, &bridged(30000, 5000));
    assert_eq!(d.len(), 2);
    notices();
    let (_, d) = h.commit(1, &bridged(30001, 5001));
    assert!(d.is_empty(), "{d:?}");
    assert!(
        logged(&notices(), "not made: data-connection limit reached"),
        "the refusal is logged"
    );
    assert_eq!(h.relay.pair_count(), 1);
}

#[test]
fn a_bridge_whose_dial_fails_ends_reset() {
    let mut h = H::new(10);
    let (_, d) = h.commit(1, &bridged(30000, 5000));
    let Decision::Dial { pair, .. } = d[0] else {
        panic!("{d:?}")
    };
    h.relay.failed(
        h.now,
        pair,
        IoOp::Setup,
        SocketError::from(ErrorKind::ConnectionRefused),
    );
    let d = h.drain();
    assert!(matches!(
        closes(&d)[..],
        [(p, true, PairEnd::Failed { .. })] if p == pair
    ));
    assert_eq!(h.relay.pair_count(), 0);
}

/// `PROT P` travels with the rules (`Rule::legs`, set by `protect_client_leg`):
/// the client's leg is the accepted one in passive mode, the connected one in
/// active mode, and the first rule's accepted one in a join; the server's leg
/// stays plain. The relay's answers say so, and `legs` and `session_of` report it.
#[test]
fn prot_p_marks_the_clients_leg_in_every_mode() {
    let mut h = H::new(8);
    let mut rules: [Rule; 2] = passive(40000, 50000).try_into().unwrap();
    protect_client_leg(Mode::Passive, &mut rules, Security::Tls);
    let l = h.listen(1, &rules);
    let pair = match h.relay.accept(h.now, l, client_peer()) {
        Admission::Open { pair, security } => {
            assert_eq!(security, Security::Tls, "the client connects: TLS");
            pair
        }
        other => panic!("{other:?}"),
    };
    let d = h.drain();
    assert!(
        matches!(
            d[..],
            [Decision::Connect {
                security: Security::Plain,
                ..
            }]
        ),
        "the server's leg is plain: {d:?}"
    );
    let legs = h.relay.legs(pair).unwrap();
    assert_eq!(
        [legs[0].security, legs[1].security],
        [Security::Tls, Security::Plain]
    );
    assert_eq!(h.relay.session_of(pair), Some(SessionId(1)));

    // Active: the server connects to the proxy, the proxy to the client.
    let mut rules = data_rules(
        Mode::ActivePort,
        &addrs(CLIENT),
        6000,
        50001,
        &RuleOptions::default(),
    );
    protect_client_leg(Mode::ActivePort, &mut rules, Security::Tls);
    let l = h.listen(2, &rules);
    match h.relay.accept(h.now, l, server_peer()) {
        Admission::Open { security, .. } => assert_eq!(security, Security::Plain),
        other => panic!("{other:?}"),
    }
    let d = h.drain();
    assert!(
        matches!(
            d[..],
            [Decision::Connect {
                security: Security::Tls,
                ..
            }]
        ),
        "the proxy connects to the client: TLS: {d:?}"
    );

    // Joined: the client's leg (first rule) is TLS, the server's plain, in
    // whichever order they arrive.
    let mut rules: [Rule; 2] = joined(40002, 50002).try_into().unwrap();
    protect_client_leg(Mode::Joined, &mut rules, Security::Tls);
    let (new, _) = h.commit(3, &rules);
    let (client_l, server_l) = (new[0].0, new[1].0);
    match h.relay.accept(h.now, server_l, server_peer()) {
        Admission::Hold { security } => assert_eq!(security, Security::Plain),
        other => panic!("{other:?}"),
    }
    let pair = match h.relay.accept(h.now, client_l, client_peer()) {
        Admission::Join { pair, security, .. } => {
            assert_eq!(security, Security::Tls);
            pair
        }
        other => panic!("{other:?}"),
    };
    let legs = h.relay.legs(pair).unwrap();
    assert_eq!(
        [legs[0].security, legs[1].security],
        [Security::Tls, Security::Plain]
    );
}
