//! What a backend remembers of each session's negotiations so that
//! [`Filter::kill_connections`](ftp_proxy_core::Filter::kill_connections) can find the
//! data connections they let through, even after the rules themselves were replaced
//! or removed.
//!
//! Bounded on both axes: at most [`MAX_PER_ANCHOR`] negotiations per live anchor (the
//! newest; a session's transfers follow one another, so older connections ended long
//! before), and the negotiations of the last [`MAX_ENDED`] anchors whose rules were
//! removed, because the kill may come just after the session's last (empty) commit.

use std::collections::{HashMap, VecDeque};

use ftp_proxy_core::Anchor;

/// How many negotiations of one session a kill can still find: the most recent ones.
pub const MAX_PER_ANCHOR: usize = 256;

/// How many ended sessions keep their negotiations for a late kill.
pub const MAX_ENDED: usize = 64;

/// Per-anchor negotiations of type `T` (what a backend needs to find their
/// connections). See the module documentation.
#[derive(Debug)]
pub(crate) struct Remembered<T> {
    live: HashMap<Anchor, Vec<T>>,
    ended: VecDeque<(Anchor, Vec<T>)>,
}

impl<T> Default for Remembered<T> {
    fn default() -> Remembered<T> {
        Remembered {
            live: HashMap::new(),
            ended: VecDeque::new(),
        }
    }
}

impl<T: PartialEq + Clone> Remembered<T> {
    /// Adds negotiations just committed (or perhaps committed) to `anchor`'s; one
    /// already known is not added twice.
    pub(crate) fn add(&mut self, anchor: &Anchor, new: impl IntoIterator<Item = T>) {
        let list = self.live.entry(*anchor).or_default();
        for t in new {
            if !list.contains(&t) {
                list.push(t);
            }
        }
        if list.len() > MAX_PER_ANCHOR {
            let extra = list.len() - MAX_PER_ANCHOR;
            list.drain(..extra);
        }
        if list.is_empty() {
            self.live.remove(anchor);
        }
    }

    /// `anchor`'s rules are gone: keep what it negotiated a little longer.
    pub(crate) fn retire(&mut self, anchor: &Anchor) {
        if let Some(list) = self.live.remove(anchor) {
            self.ended.retain(|(a, _)| a != anchor);
            self.ended.push_back((*anchor, list));
            while self.ended.len() > MAX_ENDED {
                self.ended.pop_front();
            }
        }
    }

    /// What a kill of `anchor` looks for (empty when nothing is known).
    pub(crate) fn of(&self, anchor: &Anchor) -> &[T] {
        match self.live.get(anchor) {
            Some(list) => list,
            None => self
                .ended
                .iter()
                .find(|(a, _)| a == anchor)
                .map_or(&[], |(_, list)| list.as_slice()),
        }
    }

    /// After a successful kill: only `keep` (what the rules still in force may yet let
    /// through) needs looking for again; an ended anchor is forgotten.
    pub(crate) fn killed(&mut self, anchor: &Anchor, keep: &[T]) {
        match self.live.get_mut(anchor) {
            Some(list) => {
                list.retain(|t| keep.contains(t));
                if list.is_empty() {
                    self.live.remove(anchor);
                }
            }
            None => self.ended.retain(|(a, _)| a != anchor),
        }
    }

    /// Forgets everything (after all rules were removed).
    pub(crate) fn clear(&mut self) {
        self.live.clear();
        self.ended.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: Anchor = Anchor { pid: 1, session: 1 };
    const S2: Anchor = Anchor { pid: 1, session: 2 };

    #[test]
    fn bounded_per_anchor_and_kept_after_the_last_commit() {
        let mut m = Remembered::<u32>::default();
        m.add(&S1, [1, 2, 2]);
        assert_eq!(m.of(&S1), [1, 2]);
        assert!(m.of(&S2).is_empty());
        m.killed(&S1, &[2]);
        assert_eq!(m.of(&S1), [2]);
        m.add(&S2, 0..(MAX_PER_ANCHOR as u32 + 10));
        assert_eq!(m.of(&S2).len(), MAX_PER_ANCHOR);
        assert_eq!(m.of(&S2)[0], 10, "the newest stay");
        m.retire(&S1);
        assert_eq!(m.of(&S1), [2]);
        for session in 10..(10 + MAX_ENDED as u32) {
            let a = Anchor { pid: 1, session };
            m.add(&a, [7]);
            m.retire(&a);
        }
        assert!(m.of(&S1).is_empty(), "the oldest ended anchor is forgotten");
        let last = Anchor {
            pid: 1,
            session: 9 + MAX_ENDED as u32,
        };
        assert_eq!(m.of(&last), [7]);
        m.killed(&last, &[]);
        assert!(m.of(&last).is_empty());
        m.clear();
        assert!(m.of(&S2).is_empty());
    }
}
