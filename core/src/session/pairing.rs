//! Reply pairing: which server reply answers which client command.
//!
//! FTP pairs a reply with its command by order alone, and a PASV/EPSV's 227/229
//! names the port the proxy opens, so a reply taken for the wrong command opens a
//! data path the client chose (docs/behavior.md, "Replies out of step"). The
//! session therefore forwards a PASV/EPSV only when the server owes nothing else,
//! and reads no client line until its answer came. What that takes (the greeting,
//! the queue of owed replies, the reply being read, the PASV/EPSV held back or
//! asked, the rule commit in flight, the join) is one [`Pairing`], whose
//! [`Turn`] holds the passive exchange and the commit as one enum: a held
//! PASV/EPSV, an asked one, a commit and a join exclude each other by
//! construction, and each carries only what is meaningful in it.
//!
//! What the proxy does with a reply (relay, rewrite, refuse) is the dialogue's
//! (`dialogue.rs`); what a commit holds is the negotiation's (`negotiation.rs`).

use std::collections::VecDeque;

use bytes::Bytes;

use super::negotiation::Commit;

/// Which passive command a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Passive {
    Pasv,
    Epsv,
}

/// What the client asked for, when the proxy asks the server PASV/EPSV for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientAsk {
    /// Its own PASV/EPSV: it gets the rewritten 227/229 in this form.
    Passive(Passive),
    /// A PORT/EPRT to `port` (`--server-data-mode passive`): the proxy bridges the
    /// server's passive port with the client's port ([`crate::Mode::Bridged`]) and
    /// answers 200.
    Active {
        /// The client's data port (1024 and up, checked).
        port: u16,
        /// EPRT rather than PORT.
        eprt: bool,
    },
}

/// A passive request towards the server: what the client asked, and which of
/// PASV/EPSV goes to the server (`translate::server_command`; after an EPSV refusal
/// the retry's PASV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ask {
    pub(super) client: ClientAsk,
    pub(super) server: Passive,
}

/// What the reply to a command forwarded in the queue is to the proxy. A
/// PASV/EPSV and a join are never queued: they are the [`Turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forwarded {
    /// FEAT: security features are dropped from its list.
    Feat,
    /// A command whose multi-line reply may carry lines the client chose
    /// ([`crate::ftp::may_carry_client_lines`]): such a reply makes the session
    /// [steered](Pairing::is_steered).
    Steerable,
    /// A data-transfer command ([`crate::ftp::is_transfer`]): its final reply is
    /// announced with [`crate::Action::TransferDone`].
    Transfer,
    /// Anything else: relayed as it is.
    Other,
}

/// What a client command waits for, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owed {
    /// The server's final reply to a forwarded command.
    Reply(Forwarded),
    /// A reply the proxy gives itself, sent when every earlier reply has been relayed.
    Local(&'static str),
    /// The same, and once it is sent the client's control connection switches to
    /// TLS (the `234` to `AUTH TLS`, [`crate::Action::StartTls`]).
    LocalThenTls(&'static str),
}

/// A local reply whose turn has come ([`Pairing::pop_local`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LocalReply {
    pub(super) text: &'static str,
    /// TLS starts on the client's connection right after it.
    pub(super) then_tls: bool,
}

/// The command the oldest owed reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaited {
    /// A command of the queue.
    Forwarded(Forwarded),
    /// The PASV/EPSV that went to the server: its 227/229 is rewritten.
    Passive(Ask),
    /// The proxy's PORT/EPRT that serves a client's PASV/EPSV joined
    /// ([`crate::Mode::Joined`]): the server's answer goes no further; a 2xx
    /// releases the proxy's own 227/229 to the client, anything else a 425.
    Join,
}

/// A multi-line reply in progress.
#[derive(Debug)]
pub(super) struct Multi {
    pub(super) code: u16,
    /// What becomes of its lines.
    pub(super) kind: MultiKind,
}

/// How the lines of a multi-line reply are treated.
#[derive(Debug)]
pub(super) enum MultiKind {
    /// Relayed as they come.
    Relay,
    /// The reply answers FEAT: its security-feature lines are not relayed.
    Feat,
    /// Held, to be acted on as a whole: the 227/229 of the PASV/EPSV asked, or the
    /// answer to the proxy's PORT/EPRT of the join ([`Pairing::collecting_for`]).
    Collect { lines: Vec<Bytes>, size: usize },
    /// A 421: relayed, and the session ends with its last line.
    Closing,
}

/// Which held reply a [`MultiKind::Collect`] gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Collected {
    Passive(Ask),
    Join,
}

/// The passive exchange and the commit in flight: at most one of them at a time.
///
/// Each state stands, in the order of owed replies, behind every entry of the
/// queue; while it lasts nothing is queued behind it (client lines wait, or a
/// commit stops both directions).
#[derive(Debug)]
enum Turn {
    /// Nothing of the kind: client lines flow and replies answer the queue.
    Open,
    /// A PASV/EPSV that waits until the server owes nothing else (greeted, no reply
    /// in progress or owed, no commit), so that nothing the server says in an
    /// earlier reply can be taken for its answer; every client line after it
    /// waits behind it.
    Held { ask: Ask, line: Bytes },
    /// The PASV/EPSV went to the server and is the only command owed a reply
    /// (it went out with nothing owed, and client lines wait for its answer).
    /// `stale`: server bytes that were already buffered when it went out: the
    /// server sent them before it could see the command, so no line made of them
    /// answers it.
    Asked { ask: Ask, stale: usize },
    /// A rule commit awaits its acknowledgement; both directions wait, since the
    /// line it releases must go out first. A join's commit
    /// ([`Commit::join_reply`]) owes the server's answer to the PORT/EPRT it
    /// releases.
    Committing(Commit),
    /// The proxy's PORT/EPRT of a join went to the server; `reply` is the 227/229
    /// the client gets if the server takes it.
    Joining { reply: Bytes },
}

/// The session's reply pairing (module docs).
#[derive(Debug)]
pub(super) struct Pairing {
    /// The server's greeting (its first final reply) was relayed. Before it no
    /// local reply goes out, no PASV/EPSV is released, and no reply is out of step.
    greeted: bool,
    /// What the commands forwarded or answered locally wait for, oldest first.
    queue: VecDeque<Owed>,
    /// The multi-line reply being read.
    reply: Option<Multi>,
    turn: Turn,
    /// A multi-line reply came to a command whose reply may carry lines the client
    /// chose ([`Forwarded::Steerable`]: a `STAT` listing, a directory message), so
    /// where the server's replies end can no longer be told for sure, and no later
    /// reply is trusted to name a passive data port: passive transfers are served
    /// joined (relay) or refused. Never cleared: no sentinel the proxy could send has
    /// an answer the client cannot also forge.
    steered: bool,
    /// The client sent `EPSV ALL`: the server now refuses PORT/EPRT, so a passive
    /// transfer can no longer be served joined.
    epsv_all: bool,
}

impl Pairing {
    pub(super) fn new() -> Pairing {
        Pairing {
            greeted: false,
            queue: VecDeque::new(),
            reply: None,
            turn: Turn::Open,
            steered: false,
            epsv_all: false,
        }
    }

    /// Whether the server's greeting was relayed.
    pub(super) fn greeted(&self) -> bool {
        self.greeted
    }

    /// The proxy greeted the client itself (forward mode): the server's greeting,
    /// when a server is chosen, is the upstream's to read, not a reply to relay.
    pub(super) fn greet_locally(&mut self) {
        self.greeted = true;
    }

    /// Entries owed (for the pipelining limit).
    pub(super) fn owed(&self) -> usize {
        self.queue.len()
    }

    /// Whether client lines must wait: a PASV/EPSV is held back, asked or served
    /// joined, and its answer has not come. Until then the server owes nothing else,
    /// so any other reply line is out of step. Nor is anything forwarded once a 421
    /// has begun: the session ends with it.
    pub(super) fn client_blocked(&self) -> bool {
        matches!(
            self.reply,
            Some(Multi {
                kind: MultiKind::Closing,
                ..
            })
        ) || match &self.turn {
            Turn::Open => false,
            Turn::Held { .. } | Turn::Asked { .. } | Turn::Joining { .. } => true,
            Turn::Committing(c) => c.join_reply.is_some(),
        }
    }

    /// Whether the server owes a reply to some forwarded command.
    pub(super) fn reply_owed(&self) -> bool {
        self.queue.iter().any(|e| matches!(e, Owed::Reply(_))) || self.turn_owed().is_some()
    }

    /// What the turn owes, behind the queue.
    fn turn_owed(&self) -> Option<Awaited> {
        match &self.turn {
            Turn::Open | Turn::Held { .. } => None,
            Turn::Asked { ask, .. } => Some(Awaited::Passive(*ask)),
            Turn::Committing(c) => c.join_reply.is_some().then_some(Awaited::Join),
            Turn::Joining { .. } => Some(Awaited::Join),
        }
    }

    /// What the oldest outstanding reply answers.
    pub(super) fn oldest(&self) -> Option<Awaited> {
        self.queue
            .iter()
            .find_map(|e| match e {
                Owed::Reply(to) => Some(Awaited::Forwarded(*to)),
                Owed::Local(_) | Owed::LocalThenTls(_) => None,
            })
            .or_else(|| self.turn_owed())
    }

    /// Records what a command of the queue waits for; the caller has checked the
    /// pipelining limit.
    pub(super) fn push(&mut self, owed: Owed) {
        self.queue.push_back(owed);
    }

    /// The next local reply that may go out now: one at the head of the queue, after
    /// the greeting and with no commit in flight (a commit's line goes first).
    pub(super) fn pop_local(&mut self) -> Option<LocalReply> {
        if !self.greeted || self.is_committing() {
            return None;
        }
        let local = match self.queue.front() {
            Some(&Owed::Local(text)) => LocalReply {
                text,
                then_tls: false,
            },
            Some(&Owed::LocalThenTls(text)) => LocalReply {
                text,
                then_tls: true,
            },
            _ => return None,
        };
        self.queue.pop_front();
        Some(local)
    }

    /// A complete reply (not 1xx) was relayed. The first is the greeting; any later
    /// one answers the oldest command, which is what it returns.
    pub(super) fn final_reply(&mut self) -> Option<Awaited> {
        if !self.greeted {
            self.greeted = true;
            return None;
        }
        match self.queue.front() {
            Some(&Owed::Reply(to)) => {
                self.queue.pop_front();
                Some(Awaited::Forwarded(to))
            }
            Some(Owed::Local(_) | Owed::LocalThenTls(_)) => None,
            None => match self.turn {
                Turn::Asked { ask, .. } => {
                    self.turn = Turn::Open;
                    Some(Awaited::Passive(ask))
                }
                Turn::Joining { .. } => {
                    self.turn = Turn::Open;
                    Some(Awaited::Join)
                }
                Turn::Open | Turn::Held { .. } | Turn::Committing(_) => None,
            },
        }
    }

    /// A client's PASV/EPSV: held until [`release`](Self::release) lets it go.
    /// Client lines wait behind it, so the turn is open.
    pub(super) fn hold(&mut self, ask: Ask, line: Bytes) {
        debug_assert!(matches!(self.turn, Turn::Open), "{:?}", self.turn);
        self.turn = Turn::Held { ask, line };
    }

    /// The held PASV/EPSV, once the server owes nothing else: greeted, no reply in
    /// progress or owed, no commit in flight (a held one excludes a commit).
    pub(super) fn release(&mut self) -> Option<(Ask, Bytes)> {
        if !self.greeted || self.reply.is_some() || self.reply_owed() {
            return None;
        }
        match std::mem::replace(&mut self.turn, Turn::Open) {
            Turn::Held { ask, line } => Some((ask, line)),
            other => {
                self.turn = other;
                None
            }
        }
    }

    /// The released PASV/EPSV went to the server, with `stale` bytes of the server's
    /// already buffered.
    pub(super) fn ask(&mut self, ask: Ask, stale: usize) {
        debug_assert!(matches!(self.turn, Turn::Open), "{:?}", self.turn);
        self.turn = Turn::Asked { ask, stale };
    }

    /// The server refused the EPSV asked: the same request goes again as `server`
    /// (PASV), with `stale` bytes of the server's already buffered. Nothing else
    /// changes: client lines still wait, and the answer to the retry is the one
    /// rewritten.
    pub(super) fn retry(&mut self, server: Passive, stale: usize) {
        if let Turn::Asked { ask, stale: s } = &mut self.turn {
            ask.server = server;
            *s = stale;
        }
    }

    /// A server line of `len` bytes is about to be handled: whether the server sent
    /// it before it could see the PASV/EPSV asked.
    pub(super) fn take_stale(&mut self, len: usize) -> bool {
        match &mut self.turn {
            Turn::Asked { stale, .. } => {
                let was = *stale > 0;
                *stale = stale.saturating_sub(len);
                was
            }
            _ => false,
        }
    }

    /// The 227/229 to the PASV/EPSV asked came: which one it answered.
    pub(super) fn take_asked(&mut self) -> Option<Ask> {
        match self.turn {
            Turn::Asked { ask, .. } => {
                self.turn = Turn::Open;
                Some(ask)
            }
            _ => None,
        }
    }

    /// A 421 began: a held PASV/EPSV is dropped (nothing is forwarded after it).
    pub(super) fn closing_began(&mut self) {
        if matches!(self.turn, Turn::Held { .. }) {
            self.turn = Turn::Open;
        }
    }

    /// Whether a rule commit is in flight.
    pub(super) fn is_committing(&self) -> bool {
        matches!(self.turn, Turn::Committing(_))
    }

    /// The commit in flight.
    pub(super) fn commit(&self) -> Option<&Commit> {
        match &self.turn {
            Turn::Committing(c) => Some(c),
            _ => None,
        }
    }

    /// The commit in flight, to be retried.
    pub(super) fn commit_mut(&mut self) -> Option<&mut Commit> {
        match &mut self.turn {
            Turn::Committing(c) => Some(c),
            _ => None,
        }
    }

    /// A negotiation's rules go to the filter: in place of the commit they replace
    /// (another port), or with the turn open (a PORT/EPRT, the 227/229 just taken,
    /// the join just released).
    pub(super) fn start_commit(&mut self, commit: Commit) {
        debug_assert!(
            matches!(self.turn, Turn::Open | Turn::Committing(_)),
            "{:?}",
            self.turn
        );
        self.turn = Turn::Committing(commit);
    }

    /// The filter took the commit in flight: the turn opens, or for a join waits for
    /// the server's answer to the PORT/EPRT (the commit's join reply moves there).
    pub(super) fn committed(&mut self) -> Option<Commit> {
        let mut c = self.abandon_commit()?;
        if let Some(reply) = c.join_reply.take() {
            self.turn = Turn::Joining { reply };
        }
        Some(c)
    }

    /// The session ends: the commit in flight, if any, is dropped and returned.
    pub(super) fn abandon_commit(&mut self) -> Option<Commit> {
        match std::mem::replace(&mut self.turn, Turn::Open) {
            Turn::Committing(c) => Some(c),
            other => {
                self.turn = other;
                None
            }
        }
    }

    /// The server's final answer to the join's PORT/EPRT came: the 227/229 the
    /// client gets if it was a 2xx.
    pub(super) fn join_answered(&mut self) -> Option<Bytes> {
        match std::mem::replace(&mut self.turn, Turn::Open) {
            Turn::Joining { reply } => Some(reply),
            other => {
                self.turn = other;
                None
            }
        }
    }

    /// What a collected reply answers: the PASV/EPSV asked, or the join.
    pub(super) fn collecting_for(&self) -> Option<Collected> {
        match self.turn {
            Turn::Asked { ask, .. } => Some(Collected::Passive(ask)),
            Turn::Joining { .. } => Some(Collected::Join),
            _ => None,
        }
    }

    /// The multi-line reply being read, to add a line to.
    pub(super) fn reply_mut(&mut self) -> Option<&mut Multi> {
        self.reply.as_mut()
    }

    /// A multi-line reply begins.
    pub(super) fn begin_reply(&mut self, multi: Multi) {
        self.reply = Some(multi);
    }

    /// The multi-line reply's last line was read.
    pub(super) fn end_reply(&mut self) {
        self.reply = None;
    }

    /// Whether replies may have been steered by the client ([`Forwarded::Steerable`]).
    pub(super) fn is_steered(&self) -> bool {
        self.steered
    }

    /// A multi-line reply to a [`Forwarded::Steerable`] command came; returns whether
    /// this is the first.
    pub(super) fn steer(&mut self) -> bool {
        !std::mem::replace(&mut self.steered, true)
    }

    /// Whether the client sent `EPSV ALL`.
    pub(super) fn epsv_all(&self) -> bool {
        self.epsv_all
    }

    /// The client sent `EPSV ALL`.
    pub(super) fn set_epsv_all(&mut self) {
        self.epsv_all = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO: &str = "500 no\r\n";

    fn ask(kind: Passive) -> Ask {
        Ask {
            client: ClientAsk::Passive(kind),
            server: kind,
        }
    }

    fn pasv() -> Bytes {
        Bytes::from_static(b"PASV\r\n")
    }

    fn greeted() -> Pairing {
        let mut p = Pairing::new();
        assert_eq!(p.final_reply(), None, "the greeting answers nothing");
        assert!(p.greeted());
        p
    }

    #[test]
    fn local_replies_wait_for_the_greeting_and_for_earlier_replies() {
        let mut p = Pairing::new();
        p.push(Owed::Local(NO));
        assert_eq!(p.pop_local(), None, "not before the greeting");
        p.push(Owed::Reply(Forwarded::Transfer));
        p.push(Owed::Local("501 x\r\n"));
        assert_eq!(p.final_reply(), None);
        assert_eq!(p.pop_local().map(|l| l.text), Some(NO));
        assert_eq!(p.pop_local(), None, "behind the RETR's reply");
        assert!(p.reply_owed());
        assert_eq!(p.oldest(), Some(Awaited::Forwarded(Forwarded::Transfer)));
        assert_eq!(
            p.final_reply(),
            Some(Awaited::Forwarded(Forwarded::Transfer))
        );
        assert_eq!(p.pop_local().map(|l| l.text), Some("501 x\r\n"));
        assert_eq!((p.owed(), p.reply_owed(), p.oldest()), (0, false, None));
        assert_eq!(
            p.final_reply(),
            None,
            "a reply nothing waits for answers nothing"
        );
    }

    #[test]
    fn a_pasv_is_released_only_when_nothing_is_owed_and_blocks_until_answered() {
        let mut p = Pairing::new();
        p.hold(ask(Passive::Pasv), pasv());
        assert!(p.client_blocked());
        assert_eq!(p.release(), None, "not before the greeting");
        p.final_reply();
        p.push(Owed::Reply(Forwarded::Other));
        assert_eq!(p.release(), None, "a reply is owed");
        p.begin_reply(Multi {
            code: 200,
            kind: MultiKind::Relay,
        });
        assert_eq!(p.final_reply(), Some(Awaited::Forwarded(Forwarded::Other)));
        assert_eq!(p.release(), None, "a reply is in progress");
        p.end_reply();
        assert_eq!(p.release(), Some((ask(Passive::Pasv), pasv())));
        assert!(!p.client_blocked() && !p.reply_owed());
        p.ask(ask(Passive::Pasv), 10);
        assert!(p.client_blocked() && p.reply_owed());
        assert_eq!(p.oldest(), Some(Awaited::Passive(ask(Passive::Pasv))));
        assert_eq!(
            p.collecting_for(),
            Some(Collected::Passive(ask(Passive::Pasv)))
        );
        // Ten bytes were buffered: the lines that begin within them are stale.
        assert!(p.take_stale(4));
        assert!(p.take_stale(7));
        assert!(!p.take_stale(20));
        assert_eq!(p.take_asked(), Some(ask(Passive::Pasv)));
        assert!(!p.client_blocked() && !p.reply_owed());
        assert_eq!(p.take_asked(), None);
        assert!(!p.take_stale(1), "nothing is stale with nothing asked");
    }

    #[test]
    fn a_refusal_answers_the_pasv_asked() {
        let mut p = greeted();
        p.hold(ask(Passive::Epsv), pasv());
        assert_eq!(p.release(), Some((ask(Passive::Epsv), pasv())));
        p.ask(ask(Passive::Epsv), 0);
        assert!(!p.take_stale(8));
        assert_eq!(p.final_reply(), Some(Awaited::Passive(ask(Passive::Epsv))));
        assert!(!p.client_blocked());
        assert_eq!(p.collecting_for(), None);
    }

    #[test]
    fn a_421_drops_the_held_pasv_and_blocks_the_client() {
        let mut p = Pairing::new();
        p.hold(ask(Passive::Pasv), pasv());
        p.closing_began();
        assert!(!p.client_blocked());
        p.begin_reply(Multi {
            code: 421,
            kind: MultiKind::Closing,
        });
        assert!(p.client_blocked());
        p.final_reply();
        assert_eq!(p.release(), None, "nothing was held any more");
    }

    #[test]
    fn a_commit_stops_local_replies_and_a_joins_commit_also_owes_its_answer() {
        let mut p = greeted();
        p.push(Owed::Reply(Forwarded::Other));
        p.start_commit(Commit::for_test(1, None));
        assert!(p.is_committing() && !p.client_blocked());
        p.push(Owed::Local(NO));
        assert_eq!(p.final_reply(), Some(Awaited::Forwarded(Forwarded::Other)));
        assert_eq!(p.pop_local(), None, "the commit's line goes first");
        assert_eq!(p.oldest(), None);
        // A retry on another port replaces the commit.
        p.start_commit(Commit::for_test(2, None));
        assert_eq!(p.commit().map(|c| c.txn), Some(2));
        assert_eq!(p.committed().map(|c| c.txn), Some(2));
        assert!(!p.is_committing());
        assert_eq!(p.pop_local().map(|l| l.text), Some(NO));

        let reply = Bytes::from_static(b"227 x\r\n");
        p.hold(ask(Passive::Pasv), pasv());
        assert_eq!(p.release(), Some((ask(Passive::Pasv), pasv())));
        p.start_commit(Commit::for_test(3, Some(reply.clone())));
        assert!(p.client_blocked() && p.reply_owed());
        assert_eq!(p.oldest(), Some(Awaited::Join));
        assert_eq!(p.collecting_for(), None, "no server line is read meanwhile");
        let c = p.committed().unwrap();
        assert_eq!(c.join_reply, None, "the reply moved to the join");
        assert!(p.client_blocked() && !p.is_committing());
        assert_eq!(p.oldest(), Some(Awaited::Join));
        assert_eq!(p.collecting_for(), Some(Collected::Join));
        assert_eq!(p.join_answered(), Some(reply));
        assert!(!p.client_blocked() && !p.reply_owed());
        assert_eq!(p.join_answered(), None);
    }

    #[test]
    fn an_abandoned_commit_is_returned_once() {
        let mut p = greeted();
        assert!(p.abandon_commit().is_none());
        p.start_commit(Commit::for_test(7, Some(Bytes::from_static(b"229 x\r\n"))));
        assert_eq!(p.abandon_commit().map(|c| c.txn), Some(7));
        assert!(p.abandon_commit().is_none());
        assert!(!p.client_blocked() && !p.reply_owed());
    }

    #[test]
    fn steering_and_epsv_all_stick() {
        let mut p = Pairing::new();
        assert!(!p.is_steered() && !p.epsv_all());
        assert!(p.steer());
        assert!(!p.steer(), "only the first is news");
        p.set_epsv_all();
        assert!(p.is_steered() && p.epsv_all());
    }
}
