//! The session's deadlines, by name (quinn-proto's `TimerTable`).
//!
//! A session has a handful of deadlines, each with its own meaning when it passes.
//! Naming them, instead of indexing a bare `[Option<Instant>; N]`, keeps the set,
//! the check order and the earliest deadline in one place.

use std::time::Instant;

/// One of a session's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The server's first bytes (`CONNECT_TIMEOUT`), then no server bytes for
    /// the idle timeout (`-t`).
    ServerIdle,
    /// No client bytes for the idle timeout (`-t`).
    ClientIdle,
    /// Until the server's 230 (`--login-timeout`).
    Login,
    /// A commit answered busy is sent again (`COMMIT_RETRY_DELAY`).
    CommitRetry,
    /// Forward mode: the host name lookup's answer (`--resolve-timeout`).
    Resolve,
}

impl Timer {
    /// Every timer, in the order [`super::Session::handle_timeout`] checks them: a
    /// session whose server and client are both overdue ends with the server's.
    pub(super) const VALUES: [Timer; 5] = [
        Timer::ServerIdle,
        Timer::ClientIdle,
        Timer::Login,
        Timer::CommitRetry,
        Timer::Resolve,
    ];
}

/// A deadline per [`Timer`], each armed or not.
///
/// Generic over the point in time only so that its own tests can use a plain
/// `Duration` from zero: the core never reads a clock, and a session's table holds
/// the driver's `Instant`s.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimerTable<T = Instant> {
    data: [Option<T>; Timer::VALUES.len()],
}

impl<T> Default for TimerTable<T> {
    fn default() -> Self {
        TimerTable {
            data: [const { None }; Timer::VALUES.len()],
        }
    }
}

impl<T: Copy + Ord> TimerTable<T> {
    /// Arms `timer` for `deadline`, replacing any earlier deadline.
    pub(super) fn set(&mut self, timer: Timer, deadline: T) {
        self.data[timer as usize] = Some(deadline);
    }

    /// Arms `timer` for `deadline`, or stops it when there is none (a timeout of
    /// zero, which the man page reads as "no timeout").
    pub(super) fn set_or_stop(&mut self, timer: Timer, deadline: Option<T>) {
        self.data[timer as usize] = deadline;
    }

    /// When `timer` is due, if it is armed.
    #[cfg(test)]
    pub(super) fn get(&self, timer: Timer) -> Option<T> {
        self.data[timer as usize]
    }

    /// Disarms `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    /// Disarms every timer (the session ended).
    pub(super) fn stop_all(&mut self) {
        self.data = [None; Timer::VALUES.len()];
    }

    /// The earliest armed deadline.
    pub(super) fn next_timeout(&self) -> Option<T> {
        self.data.iter().flatten().min().copied()
    }

    /// Whether `timer` is armed and its deadline is not after `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: T) -> bool {
        self.data[timer as usize].is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_armed_deadline_is_next() {
        let t0 = Duration::ZERO;
        let mut t = TimerTable::<Duration>::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::ClientIdle, t0 + Duration::from_secs(5));
        t.set(Timer::CommitRetry, t0 + Duration::from_millis(5));
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_millis(5)));
        assert!(t.is_expired(Timer::CommitRetry, t0 + Duration::from_millis(5)));
        assert!(!t.is_expired(Timer::ClientIdle, t0 + Duration::from_millis(5)));
        assert!(!t.is_expired(Timer::Login, t0 + Duration::from_secs(3600)));
        t.stop(Timer::CommitRetry);
        assert_eq!(t.get(Timer::CommitRetry), None);
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(5)));
        t.set_or_stop(Timer::ClientIdle, None);
        t.set_or_stop(Timer::Login, Some(t0));
        assert_eq!(t.next_timeout(), Some(t0));
        t.stop_all();
        assert_eq!(t.next_timeout(), None);
    }

    #[test]
    fn every_timer_has_its_own_slot() {
        let t0 = Duration::ZERO;
        let mut t = TimerTable::<Duration>::default();
        for (i, timer) in Timer::VALUES.into_iter().enumerate() {
            assert_eq!(
                timer as usize,
                Timer::VALUES.iter().position(|&v| v == timer).unwrap()
            );
            t.set(timer, t0 + Duration::from_secs(i as u64));
        }
        for (i, timer) in Timer::VALUES.into_iter().enumerate() {
            assert_eq!(t.get(timer), Some(t0 + Duration::from_secs(i as u64)));
        }
    }
}
