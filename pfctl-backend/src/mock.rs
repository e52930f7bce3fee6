//! A packet filter that only remembers: the backend of the deterministic simulation and
//! of runtime tests that need no kernel.
//!
//! [`MockBackend`] keeps the rule set currently in force per anchor, exactly as a
//! transactional filter would (a failed commit changes nothing; an empty commit removes
//! the anchor), plus a log of every commit in order with its result. Failures come from
//! two sources, both deterministic:
//!
//! * a script ([`MockBackend::push_result`]): the next commits return these results;
//! * seeded faults ([`MockBackend::with_faults`]): each commit that sets rules draws
//!   from a [`Pcg32`] whether it fails (`fail`) or finds the filter busy (`busy`). The
//!   draws are independent, so a retried commit is busy again with the same chance:
//!   "busy once" (the retry succeeds) and "busy twice" (the session ends) both occur.
//!   Removals (empty commits) are not faulted unless [`MockBackend::with_removal_faults`]
//!   says so, so that "no rules outlive their session" stays checkable.
//!
//! [`MockHandle`] shares one mock between the code under test and the test itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ftp_proxy_core::{Anchor, FilterError, Pcg32, Rule};

use ftp_proxy_core::Filter;

/// Probabilities of injected faults, each `(numerator, denominator)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRates {
    /// Chance a commit is answered [`FilterError::Busy`].
    pub busy: (u32, u32),
    /// Chance a commit fails with [`injected_failure`].
    pub fail: (u32, u32),
    /// Chance a commit finds its proxy port taken ([`FilterError::AddrInUse`], as the
    /// relay reports a port another socket holds).
    pub in_use: (u32, u32),
}

impl FaultRates {
    /// No faults.
    pub const NONE: FaultRates = FaultRates {
        busy: (0, 1),
        fail: (0, 1),
        in_use: (0, 1),
    };
}

impl Default for FaultRates {
    fn default() -> FaultRates {
        FaultRates::NONE
    }
}

/// The error of an injected failure (not `Busy`, so the core does not retry it).
pub fn injected_failure() -> FilterError {
    FilterError::Other {
        errno: libc::EINVAL,
        text: "Invalid argument (injected)".into(),
    }
}

#[derive(Debug, Clone)]
struct Faults {
    rng: Pcg32,
    rates: FaultRates,
}

/// One commit as the mock saw it.
pub type CommitRecord = (Anchor, Vec<Rule>, Result<(), FilterError>);

/// The recording mock filter; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct MockBackend {
    anchors: BTreeMap<Anchor, Vec<Rule>>,
    commits: Vec<CommitRecord>,
    script: VecDeque<Result<(), FilterError>>,
    faults: Option<Faults>,
    removal_faults: bool,
    remove_all_calls: usize,
    kills: Vec<Anchor>,
}

impl MockBackend {
    /// A mock that accepts every commit.
    pub fn new() -> MockBackend {
        MockBackend::default()
    }

    /// Adds seeded fault injection.
    ///
    /// # Panics
    ///
    /// If a rate has a zero denominator or a numerator above it (a test bug).
    pub fn with_faults(mut self, seed: u64, rates: FaultRates) -> MockBackend {
        for (name, (num, den)) in [("busy", rates.busy), ("fail", rates.fail)] {
            assert!(
                den > 0 && num <= den,
                "fault rate {name} = {num}/{den} is not a probability"
            );
        }
        self.faults = Some(Faults {
            rng: Pcg32::new(seed),
            rates,
        });
        self
    }

    /// Whether seeded faults also hit removals (empty commits). Off by default.
    pub fn with_removal_faults(mut self, on: bool) -> MockBackend {
        self.removal_faults = on;
        self
    }

    /// The next commit returns `result` (before any seeded fault); scripted results are
    /// used in the order pushed, for removals too.
    pub fn push_result(&mut self, result: Result<(), FilterError>) {
        self.script.push_back(result);
    }

    /// The rule set in force per anchor; anchors without rules are absent.
    pub fn anchors(&self) -> &BTreeMap<Anchor, Vec<Rule>> {
        &self.anchors
    }

    /// The rules in force in `anchor` (empty if none).
    pub fn rules(&self, anchor: &Anchor) -> &[Rule] {
        self.anchors.get(anchor).map_or(&[], Vec::as_slice)
    }

    /// Every commit so far, in order, with its result.
    pub fn commits(&self) -> &[CommitRecord] {
        &self.commits
    }

    /// How often [`Filter::remove_all`] was called.
    pub fn remove_all_calls(&self) -> usize {
        self.remove_all_calls
    }

    /// The anchors [`Filter::kill_connections`] was called for, in order. The mock
    /// carries no connections, so a kill changes nothing else (and never fails).
    pub fn kills(&self) -> &[Anchor] {
        &self.kills
    }

    /// Wraps the mock in a shareable handle.
    pub fn into_handle(self) -> MockHandle {
        MockHandle(Arc::new(Mutex::new(self)))
    }

    fn decide(&mut self, removal: bool) -> Result<(), FilterError> {
        if let Some(result) = self.script.pop_front() {
            return result;
        }
        match &mut self.faults {
            Some(f) if !removal || self.removal_faults => {
                // Always three draws, so the stream position depends only on the
                // number of faultable commits.
                let fail = f.rng.chance(f.rates.fail.0, f.rates.fail.1);
                let busy = f.rng.chance(f.rates.busy.0, f.rates.busy.1);
                let in_use = f.rng.chance(f.rates.in_use.0, f.rates.in_use.1);
                if fail {
                    Err(injected_failure())
                } else if in_use {
                    Err(FilterError::AddrInUse)
                } else if busy {
                    Err(FilterError::Busy)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

impl Filter for MockBackend {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        let result = self.decide(rules.is_empty());
        if result.is_ok() {
            if rules.is_empty() {
                self.anchors.remove(anchor);
            } else {
                self.anchors.insert(*anchor, rules.to_vec());
            }
        }
        self.commits.push((*anchor, rules.to_vec(), result.clone()));
        result
    }

    fn remove_all(&mut self) -> Result<(), FilterError> {
        self.remove_all_calls += 1;
        self.anchors.clear();
        Ok(())
    }

    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        self.kills.push(*anchor);
        Ok(())
    }
}

/// A cloneable, thread-safe handle to one [`MockBackend`]: give one clone to the code
/// under test as its [`Filter`], keep another to look at what it did.
#[derive(Debug, Clone)]
pub struct MockHandle(Arc<Mutex<MockBackend>>);

impl MockHandle {
    /// A handle to a fresh [`MockBackend::new`].
    pub fn new() -> MockHandle {
        MockBackend::new().into_handle()
    }

    /// Exclusive access to the mock. A panic while it was held (a failed assertion in
    /// another thread) does not hide the state from the test.
    pub fn lock(&self) -> MutexGuard<'_, MockBackend> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the rules in force in `anchor`.
    pub fn rules(&self, anchor: &Anchor) -> Vec<Rule> {
        self.lock().rules(anchor).to_vec()
    }

    /// A copy of the rule sets in force.
    pub fn anchors(&self) -> BTreeMap<Anchor, Vec<Rule>> {
        self.lock().anchors().clone()
    }

    /// A copy of the commit log.
    pub fn commits(&self) -> Vec<CommitRecord> {
        self.lock().commits().to_vec()
    }
}

impl Default for MockHandle {
    fn default() -> MockHandle {
        MockHandle::new()
    }
}

impl From<MockBackend> for MockHandle {
    fn from(mock: MockBackend) -> MockHandle {
        mock.into_handle()
    }
}

impl Filter for MockHandle {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        self.lock().commit(anchor, rules)
    }

    fn remove_all(&mut self) -> Result<(), FilterError> {
        self.lock().remove_all()
    }

    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        self.lock().kill_connections(anchor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftp_proxy_core::data_rules;
    use ftp_proxy_core::{Mode, RuleOptions, SessionAddrs};

    fn rules(port: u16) -> Vec<Rule> {
        let a = SessionAddrs {
            client: "10.0.0.5".parse().unwrap(),
            server: "198.51.100.10".parse().unwrap(),
            orig_server: "198.51.100.10".parse().unwrap(),
            proxy: "198.51.100.1".parse().unwrap(),
            client_rdomain: 0,
        };
        data_rules(Mode::Passive, &a, port, 50000, &RuleOptions::default()).to_vec()
    }

    const A1: Anchor = Anchor { pid: 7, session: 1 };
    const A2: Anchor = Anchor { pid: 7, session: 2 };

    #[test]
    fn records_commits_and_current_rules() {
        let mut m = MockBackend::new();
        m.commit(&A1, &rules(5001)).unwrap();
        m.commit(&A2, &rules(5002)).unwrap();
        m.commit(&A1, &rules(5003)).unwrap();
        assert_eq!(m.rules(&A1), rules(5003).as_slice());
        assert_eq!(m.rules(&A2), rules(5002).as_slice());
        assert_eq!(m.anchors().len(), 2);
        m.commit(&A1, &[]).unwrap();
        assert!(m.rules(&A1).is_empty());
        assert_eq!(m.anchors().keys().collect::<Vec<_>>(), [&A2]);
        let log: Vec<(Anchor, usize)> = m.commits().iter().map(|(a, r, _)| (*a, r.len())).collect();
        assert_eq!(log, [(A1, 2), (A2, 2), (A1, 2), (A1, 0)]);
        assert!(m.commits().iter().all(|(_, _, r)| r.is_ok()));
        m.remove_all().unwrap();
        assert!(m.anchors().is_empty());
        assert_eq!(m.remove_all_calls(), 1);
        assert_eq!(m.name(), "mock");
    }

    #[test]
    fn failed_commit_changes_nothing() {
        let mut m = MockBackend::new();
        m.commit(&A1, &rules(5001)).unwrap();
        m.push_result(Err(FilterError::Busy));
        m.push_result(Err(FilterError::PermissionDenied));
        assert_eq!(m.commit(&A1, &rules(5002)), Err(FilterError::Busy));
        assert_eq!(m.commit(&A1, &[]), Err(FilterError::PermissionDenied));
        assert_eq!(m.rules(&A1), rules(5001).as_slice());
        assert_eq!(m.commits()[1], (A1, rules(5002), Err(FilterError::Busy)));
        assert_eq!(
            m.commits()[2],
            (A1, vec![], Err(FilterError::PermissionDenied))
        );
        m.commit(&A1, &rules(5002)).unwrap();
        assert_eq!(m.rules(&A1), rules(5002).as_slice());
    }

    fn outcomes(seed: u64, rates: FaultRates, n: usize) -> Vec<Result<(), FilterError>> {
        let mut m = MockBackend::new().with_faults(seed, rates);
        (0..n)
            .map(|i| m.commit(&A1, &rules(5000 + i as u16)))
            .collect()
    }

    #[test]
    fn seeded_faults_are_deterministic_and_cover_every_kind() {
        let rates = FaultRates {
            busy: (1, 3),
            fail: (1, 10),
            ..FaultRates::NONE
        };
        let a = outcomes(17, rates, 400);
        assert_eq!(a, outcomes(17, rates, 400), "same seed, same faults");
        assert_ne!(a, outcomes(18, rates, 400), "another seed, other faults");
        let busy = a.iter().filter(|r| **r == Err(FilterError::Busy)).count();
        let fail = a.iter().filter(|r| **r == Err(injected_failure())).count();
        let ok = a.iter().filter(|r| r.is_ok()).count();
        assert_eq!(busy + fail + ok, 400);
        // Expected 400·0.9·(1/3) = 120 busy and 40 failures; the bounds are loose.
        assert!((60..180).contains(&busy), "busy {busy}");
        assert!((15..80).contains(&fail), "fail {fail}");
        // Busy once (then success) and busy twice in a row both happen.
        let once = a
            .windows(2)
            .filter(|w| w[0] == Err(FilterError::Busy) && w[1].is_ok())
            .count();
        let twice = a
            .windows(2)
            .filter(|w| w[0] == Err(FilterError::Busy) && w[1] == Err(FilterError::Busy))
            .count();
        assert!(once > 0 && twice > 0, "once {once}, twice {twice}");
    }

    #[test]
    fn certain_faults() {
        assert!(outcomes(
            1,
            FaultRates {
                busy: (1, 1),
                fail: (0, 1),
                ..FaultRates::NONE
            },
            20
        )
        .iter()
        .all(|r| *r == Err(FilterError::Busy)));
        assert!(outcomes(
            1,
            FaultRates {
                busy: (1, 1),
                fail: (1, 1),
                ..FaultRates::NONE
            },
            20
        )
        .iter()
        .all(|r| *r == Err(injected_failure())));
        assert!(outcomes(1, FaultRates::NONE, 20).iter().all(Result::is_ok));
    }

    #[test]
    fn removals_are_not_faulted_unless_asked() {
        let always = FaultRates {
            busy: (1, 1),
            fail: (0, 1),
            ..FaultRates::NONE
        };
        let mut m = MockBackend::new().with_faults(3, always);
        assert_eq!(m.commit(&A1, &rules(5001)), Err(FilterError::Busy));
        assert_eq!(m.commit(&A1, &[]), Ok(()));
        let mut m = MockBackend::new()
            .with_faults(3, always)
            .with_removal_faults(true);
        assert_eq!(m.commit(&A1, &[]), Err(FilterError::Busy));
    }

    #[test]
    #[should_panic(expected = "fault rate busy = 1/0 is not a probability")]
    fn bad_rates_panic() {
        let _ = MockBackend::new().with_faults(
            1,
            FaultRates {
                busy: (1, 0),
                fail: (0, 1),
                ..FaultRates::NONE
            },
        );
    }

    #[test]
    fn handle_shares_state_across_threads() {
        let handle = MockHandle::new();
        let mut backend: Box<dyn Filter + Send> = Box::new(handle.clone());
        std::thread::spawn(move || {
            backend.commit(&A1, &rules(5001)).unwrap();
            backend.commit(&A2, &rules(5002)).unwrap();
            backend.commit(&A2, &[]).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(handle.rules(&A1), rules(5001));
        assert_eq!(handle.anchors().len(), 1);
        assert_eq!(handle.commits().len(), 3);
        handle.lock().push_result(Err(FilterError::Busy));
        let mut other = handle.clone();
        assert_eq!(other.commit(&A1, &[]), Err(FilterError::Busy));
        assert_eq!(handle.rules(&A1), rules(5001));
        other.remove_all().unwrap();
        assert!(handle.anchors().is_empty());
        assert_eq!(handle.lock().remove_all_calls(), 1);
    }

    #[test]
    fn kills_are_recorded_through_handles_and_boxes() {
        let handle = MockHandle::new();
        let mut boxed: Box<dyn Filter + Send> = Box::new(handle.clone());
        boxed.commit(&A1, &rules(5001)).unwrap();
        boxed.kill_connections(&A1).unwrap();
        boxed.kill_connections(&A2).unwrap();
        assert_eq!(handle.lock().kills(), [A1, A2]);
        // A kill ends connections, not rules.
        assert_eq!(handle.rules(&A1), rules(5001));
        assert_eq!(handle.commits().len(), 1);
    }
}
