//! What a mio [`Token`] names.
//!
//! The low two bits say which kind of socket it is, the rest which one.
//!
//! Ids are reused only after they wrap, and there is no generation counter:
//! * Session ids are the core's `u32`s, which wrap to 1 after `u32::MAX` and skip any
//!   id a live session still holds (`Proxy::accept`), so an id comes back at the
//!   earliest once the session that held it is gone, and in practice only after
//!   about 4·10⁹ further sessions.
//! * Relay ids (listeners and pairs) are `u64`s counted up by one; they do not wrap
//!   in the life of a process.
//!
//! So a late event (mio's batch still holds it after its socket was closed) either
//! finds nothing and is ignored, or, if its session id was just handed to a new
//! session, names a socket of that new session. That is harmless because an event is
//! only a readiness hint here, as mio's own contract (spurious events happen)
//! requires: the loop sets the socket's readable/writable flags and tries the
//! non-blocking operation, which ends at `WouldBlock` if the socket was not ready
//! (a pending connect is checked with `take_error` and `peer_addr`, which say
//! "not yet"). No state changes on the event alone, only on what the socket returned.
//!
//! Distinct ids give distinct tokens only where `usize` has 64 bits (every target
//! the daemon is built for): a session id takes 32 bits, the side and the kind three
//! more, and relay ids stay below 2^61. On a 32-bit target two live sessions whose
//! ids differ by a multiple of 2^29 would share a token: one's readiness could be
//! taken for the other's and lost (mio's events are edge-triggered), stalling it
//! until its peer sends more or it idles out. A 32-bit port must narrow the id
//! space first.

use ftp_proxy_core::{SessionId, Side};
use mio::Token;

/// The end of a relayed data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum End {
    /// The connection the relay accepted (the data connection's originator).
    Accepted,
    /// The connection the relay opened towards the real endpoint.
    Opened,
}

/// A decoded token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Tok {
    /// A control listener, by its index (0: the first `-b`).
    Listener(u8),
    /// The signal pipe.
    Signal,
    /// The cross-thread waker ([`crate::ShutdownHandle`]).
    Waker,
    /// The socket to the name resolver helper ([`crate::resolver`]).
    Resolver,
    /// An accepted connection still waiting for its PROXY protocol header, by id
    /// ([`crate::proxy_header`]); ids count up and do not wrap.
    Header(u64),
    /// A control connection.
    Control(SessionId, Side),
    /// A relay listener, by relay id.
    DataListener(u64),
    /// One end of a relayed data connection, by relay id.
    Data(u64, End),
}

/// `Listener(i)` for i >= 1 is `LISTENER_BASE + i` (4..=258).
const LISTENER_BASE: usize = 3;
/// `Header(n)` is `HEADER_BASE + n`, after every listener.
const HEADER_BASE: usize = LISTENER_BASE + u8::MAX as usize + 1;

const SPECIAL: usize = 0;
const CONTROL: usize = 1;
const DATA_LISTENER: usize = 2;
const DATA: usize = 3;

impl Tok {
    pub(crate) fn token(self) -> Token {
        let (n, kind) = match self {
            // The first listener keeps 0; more follow the signal pipe, the waker
            // and the resolver (3); headers' ids come after all listeners.
            Tok::Listener(0) => (0, SPECIAL),
            Tok::Listener(i) => (LISTENER_BASE + usize::from(i), SPECIAL),
            Tok::Signal => (1, SPECIAL),
            Tok::Waker => (2, SPECIAL),
            Tok::Resolver => (3, SPECIAL),
            Tok::Header(n) => (n as usize + HEADER_BASE, SPECIAL),
            Tok::Control(id, side) => (
                (id.0 as usize) << 1 | (side == Side::Server) as usize,
                CONTROL,
            ),
            Tok::DataListener(n) => (n as usize, DATA_LISTENER),
            Tok::Data(n, end) => ((n as usize) << 1 | (end == End::Opened) as usize, DATA),
        };
        Token(n << 2 | kind)
    }

    pub(crate) fn from_token(t: Token) -> Option<Tok> {
        let (n, kind) = (t.0 >> 2, t.0 & 3);
        match kind {
            SPECIAL => match n {
                0 => Some(Tok::Listener(0)),
                1 => Some(Tok::Signal),
                2 => Some(Tok::Waker),
                3 => Some(Tok::Resolver),
                n if n < HEADER_BASE => u8::try_from(n - LISTENER_BASE).ok().map(Tok::Listener),
                n => Some(Tok::Header((n - HEADER_BASE) as u64)),
            },
            CONTROL => {
                let side = if n & 1 == 1 {
                    Side::Server
                } else {
                    Side::Client
                };
                Some(Tok::Control(SessionId(u32::try_from(n >> 1).ok()?), side))
            }
            DATA_LISTENER => Some(Tok::DataListener(n as u64)),
            _ => Some(Tok::Data(
                (n >> 1) as u64,
                if n & 1 == 1 {
                    End::Opened
                } else {
                    End::Accepted
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_differ() {
        let all = [
            Tok::Listener(0),
            Tok::Listener(1),
            Tok::Listener(255),
            Tok::Signal,
            Tok::Waker,
            Tok::Resolver,
            Tok::Header(0),
            Tok::Header(1 << 40),
            Tok::Control(SessionId(1), Side::Client),
            Tok::Control(SessionId(1), Side::Server),
            Tok::Control(SessionId(u32::MAX), Side::Server),
            Tok::DataListener(1),
            Tok::Data(1, End::Accepted),
            Tok::Data(1, End::Opened),
            Tok::Data(1 << 40, End::Opened),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for t in all {
            assert_eq!(Tok::from_token(t.token()), Some(t));
            assert!(seen.insert(t.token().0), "{t:?} collides");
        }
    }
}
