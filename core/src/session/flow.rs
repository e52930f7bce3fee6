//! Flow control: how much output each side has queued, and whether to read it.
//!
//! The core cannot see a socket's buffer, so it counts what it sent and what the
//! driver reports written, and turns read interest off when a queue or an inbox
//! grows (docs/behavior.md; the marks are [`OUTPUT_HIGH_WATER`],
//! [`OUTPUT_LOW_WATER`] and [`INBOX_HIGH_WATER`]). Kept apart from the dialogue
//! so that memory per session is bounded by one small piece of arithmetic.

use crate::event::{Side, INBOX_HIGH_WATER, OUTPUT_HIGH_WATER, OUTPUT_LOW_WATER};

/// The index of a side in the per-side arrays of a session.
pub(super) fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// Per side: output queued, whether its queue is full, and the read interest the
/// driver was last told.
#[derive(Debug)]
pub(super) struct Flow {
    /// Output sent to each side and not yet reported written.
    queued: [usize; 2],
    /// Each side's queue reached [`OUTPUT_HIGH_WATER`] and has not yet fallen below
    /// [`OUTPUT_LOW_WATER`].
    out_full: [bool; 2],
    /// The read interest last emitted for each side (every side starts on).
    reading: [bool; 2],
}

impl Flow {
    pub(super) fn new() -> Flow {
        Flow {
            queued: [0; 2],
            out_full: [false; 2],
            reading: [true; 2],
        }
    }

    /// `n` bytes were queued for `side`.
    pub(super) fn sent(&mut self, side: Side, n: usize) {
        self.queued[idx(side)] += n;
    }

    /// The driver wrote `n` bytes of what was queued for `side`.
    pub(super) fn written(&mut self, side: Side, n: usize) {
        let q = &mut self.queued[idx(side)];
        *q = q.saturating_sub(n);
    }

    /// Whether the next line of `side` must wait because the output it may add is
    /// already at [`OUTPUT_HIGH_WATER`]. A server line goes to the client. A client
    /// line goes to the server or, answered by the proxy itself, back to the client,
    /// so both queues together count. Asked before every line: however short the
    /// lines (a bare `\n`, a 5-byte `AUTH` answered with 80 bytes), what one input
    /// queues passes the mark by one line at most. The lines left wait in the inbox,
    /// which stops reading in its turn, and go on when writes are reported.
    pub(super) fn output_full(&self, side: Side) -> bool {
        let queued = match side {
            Side::Server => self.queued[idx(Side::Client)],
            Side::Client => self.queued[0] + self.queued[1],
        };
        queued >= OUTPUT_HIGH_WATER
    }

    /// Whether the driver should read that side now (the session being open): the
    /// side's unparsed input (`inbox`) is below [`INBOX_HIGH_WATER`], and neither the
    /// peer's output queue nor (for the client) its own is full.
    fn wants_read(&self, side: Side, inbox: usize) -> bool {
        inbox < INBOX_HIGH_WATER
            && !self.out_full[idx(side.peer())]
            && !(side == Side::Client && self.out_full[idx(Side::Client)])
    }

    /// Updates the full marks from the queues, then the read interest of both sides
    /// from the unparsed input of each (`inbox`, by [`idx`]); returns, client first,
    /// the sides whose interest changed and what it is now.
    pub(super) fn sync(&mut self, inbox: [usize; 2]) -> [Option<(Side, bool)>; 2] {
        for i in 0..2 {
            if self.queued[i] >= OUTPUT_HIGH_WATER {
                self.out_full[i] = true;
            } else if self.queued[i] < OUTPUT_LOW_WATER {
                self.out_full[i] = false;
            }
        }
        [Side::Client, Side::Server].map(|side| {
            let on = self.wants_read(side, inbox[idx(side)]);
            (self.reading[idx(side)] != on).then(|| {
                self.reading[idx(side)] = on;
                (side, on)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stops_at_the_high_mark_and_resumes_below_the_low_one() {
        let mut f = Flow::new();
        assert_eq!(f.sync([0, 0]), [None, None]);
        f.sent(Side::Client, OUTPUT_HIGH_WATER);
        // The client's queue is full: the server (whose lines go there) and the
        // client (whom the proxy may answer itself) both stop.
        assert_eq!(
            f.sync([0, 0]),
            [Some((Side::Client, false)), Some((Side::Server, false))]
        );
        assert!(f.output_full(Side::Server) && f.output_full(Side::Client));
        f.written(Side::Client, OUTPUT_HIGH_WATER - OUTPUT_LOW_WATER);
        assert_eq!(
            f.sync([0, 0]),
            [None, None],
            "between the marks: still full"
        );
        f.written(Side::Client, 1);
        assert_eq!(
            f.sync([0, 0]),
            [Some((Side::Client, true)), Some((Side::Server, true))]
        );
        f.written(Side::Client, usize::MAX);
        assert!(!f.output_full(Side::Client));
    }

    #[test]
    fn a_full_server_queue_stops_only_the_client_and_a_full_inbox_its_own_side() {
        let mut f = Flow::new();
        f.sent(Side::Server, OUTPUT_HIGH_WATER);
        assert_eq!(f.sync([0, 0]), [Some((Side::Client, false)), None]);
        assert!(!f.output_full(Side::Server) && f.output_full(Side::Client));
        f.written(Side::Server, OUTPUT_HIGH_WATER);
        assert_eq!(
            f.sync([0, INBOX_HIGH_WATER]),
            [Some((Side::Client, true)), Some((Side::Server, false))]
        );
    }
}
