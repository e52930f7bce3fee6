//! The PROXY protocol (HAProxy's specification, versions 1 and 2) on control
//! connections: reading the header a load balancer puts in front of a client's
//! control connection, and writing one in front of the proxy's own connection to
//! the server. The bytes themselves are the core's
//! ([`ftp_proxy_core::proxy_protocol`]); this module owns the sockets and the clock.
//!
//! # In
//!
//! A connection accepted while headers are expected ([`Inbound`]) is not a session
//! yet. It waits (in `Pending`) until its header is complete, and only then is it
//! offered to the core, with the header's client as [`Accept::client`](ftp_proxy_core::Accept::client)
//! (so rules, log lines, the summary and the relay's admission see the real client).
//! While it waits:
//!
//! * its TCP peer must be in [`Inbound::from`], checked before a byte is read: a
//!   header is a claim about someone else's address, believed only from a balancer
//!   the administrator named;
//! * it is read without blocking, at most [`V2_MAX`] bytes in all (the longest header
//!   accepted), so a peer that sends garbage is refused at once and never costs more
//!   than one small buffer;
//! * it has [`Inbound::timeout`] to complete the header; one that sends nothing, or
//!   half a header, is closed then, with a log line;
//! * it counts against the session limit ([`Inbound::max_sessions`], `-m`) while it
//!   waits: it is a session to be and holds a descriptor like one, so a flood of
//!   silent connections cannot hold more descriptors than the sessions could;
//! * a header whose client is of the other address family than the connection is
//!   refused: the proxy does not cross families within a session (its rules and
//!   rewritten replies are of one family).
//!
//! Bytes after the header are the start of the FTP session and are handed to it as
//! its first client data.
//!
//! A `LOCAL` command (v2, a balancer's health check) or `UNKNOWN` (v1) names no
//! client: as the specification asks, the connection is served with its own
//! addresses, so a health check sees the server's greeting through the proxy (and
//! its data connections would be admitted from the balancer, the TCP peer).
//!
//! # Out
//!
//! [`Version`] says which header to write; the runtime queues it on the server
//! socket before any byte of the session, naming the session's client (the
//! header's, or the TCP peer's) and the server it connects to.

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ftp_proxy_core::proxy_protocol::{self, Header, V2_MAX};
use ftp_proxy_core::Cidr;
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};

use crate::token::Tok;

/// How long an accepted connection may take to send its header, by default. A
/// balancer sends it with its first segment; a few seconds cover a loaded one.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `--proxy-protocol-in`: every control connection starts with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The TCP peers (the balancers) whose headers are believed; a connection from
    /// any other address is closed unread. Empty means no one: every connection is
    /// refused (the daemon refuses to start so).
    pub from: Vec<Cidr>,
    /// How long a connection may take to send its header ([`DEFAULT_HEADER_TIMEOUT`]).
    pub timeout: Duration,
    /// Sessions plus connections waiting for their header, at most (the daemon's
    /// `-m`); a connection beyond it is closed unread.
    pub max_sessions: usize,
}

impl Inbound {
    /// Headers from `from`, with the default timeout, and at most `max_sessions`
    /// sessions and waiting connections together.
    pub fn new(from: Vec<Cidr>, max_sessions: usize) -> Inbound {
        Inbound {
            from,
            timeout: DEFAULT_HEADER_TIMEOUT,
            max_sessions,
        }
    }

    fn trusts(&self, peer: SocketAddr) -> bool {
        self.from.iter().any(|c| c.contains(peer.ip()))
    }
}

/// `--proxy-protocol-out`: the header written to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// The header for a connection of `client` to `server`.
    pub(crate) fn encode(self, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
        match self {
            Version::V1 => proxy_protocol::encode_v1(client, server),
            Version::V2 => proxy_protocol::encode_v2(client, server),
        }
    }
}

/// The PROXY protocol settings of a [`Runtime`](crate::Runtime)
/// ([`set_proxy_protocol`](crate::Runtime::set_proxy_protocol)); the default is
/// neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Read a header on every accepted control connection.
    pub inbound: Option<Inbound>,
    /// Write a header on every connection to a server.
    pub outbound: Option<Version>,
}

/// A connection whose header is complete: what the session starts with.
#[derive(Debug)]
pub(crate) struct Arrived {
    pub(crate) sock: TcpStream,
    /// The TCP peer (the balancer).
    pub(crate) peer: SocketAddr,
    /// The client the header names; `None` for `LOCAL`/`UNKNOWN`.
    pub(crate) client: Option<SocketAddr>,
    /// What came after the header: the first bytes of the FTP session.
    pub(crate) rest: Vec<u8>,
}

/// One accepted connection waiting for its header.
#[derive(Debug)]
struct Waiting {
    sock: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    buf: Vec<u8>,
}

/// What one read of a waiting connection came to.
enum Step {
    /// More bytes are needed (the socket would block).
    Wait,
    /// The header is complete.
    Done(Header, usize),
    /// The connection is to be closed; the reason is logged.
    Drop(String),
}

/// The connections waiting for their header, by id (their token, [`Tok::Header`]).
#[derive(Debug)]
pub(crate) struct Pending {
    cfg: Inbound,
    conns: std::collections::BTreeMap<u64, Waiting>,
    next_id: u64,
}

impl Pending {
    pub(crate) fn new(cfg: Inbound) -> Pending {
        Pending {
            cfg,
            conns: Default::default(),
            next_id: 0,
        }
    }

    /// Connections waiting now.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// The earliest deadline of a waiting connection.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().map(|w| w.deadline).min()
    }

    /// Takes a freshly accepted connection from `peer` while `sessions` sessions are
    /// live: refused at once (logged) when the peer is not a trusted balancer or the
    /// session limit is reached; else read
    /// at once (the header usually came with the handshake) and, if still
    /// incomplete, registered to wait.
    pub(crate) fn offer(
        &mut self,
        registry: &Registry,
        now: Instant,
        mut sock: TcpStream,
        peer: SocketAddr,
        sessions: usize,
    ) -> Option<Arrived> {
        if !self.cfg.trusts(peer) {
            warn!(
                "refused connection from {peer}: not a PROXY protocol source (--proxy-protocol-from)"
            );
            return None;
        }
        if sessions + self.conns.len() >= self.cfg.max_sessions {
            warn!(
                "refused connection from {peer}: session limit ({}) reached by {sessions} sessions and {} connections waiting for their PROXY protocol header",
                self.cfg.max_sessions,
                self.conns.len()
            );
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = registry.register(&mut sock, Tok::Header(id).token(), Interest::READABLE) {
            warn!("refused connection from {peer}: cannot register its socket: {e}");
            return None;
        }
        self.conns.insert(
            id,
            Waiting {
                sock,
                peer,
                deadline: now + self.cfg.timeout,
                buf: Vec::new(),
            },
        );
        self.readable(registry, id)
    }

    /// Reads waiting connection `id` after a readiness event; the connection if its
    /// header is now complete (deregistered, for the session to register anew).
    pub(crate) fn readable(&mut self, registry: &Registry, id: u64) -> Option<Arrived> {
        let w = self.conns.get_mut(&id)?;
        let step = read_header(w);
        match step {
            Step::Wait => None,
            Step::Drop(why) => {
                let mut w = self.conns.remove(&id)?;
                warn!("closed connection from {}: {why}", w.peer);
                let _ = registry.deregister(&mut w.sock);
                None
            }
            Step::Done(header, len) => {
                let mut w = self.conns.remove(&id)?;
                let _ = registry.deregister(&mut w.sock);
                let client = match header {
                    Header::Proxied { src, dst } => {
                        debug!("connection from {} is proxied for {src} (to {dst})", w.peer);
                        Some(src)
                    }
                    Header::Local => {
                        debug!(
                            "connection from {}: PROXY protocol LOCAL or UNKNOWN, served with its own addresses",
                            w.peer
                        );
                        None
                    }
                };
                Some(Arrived {
                    sock: w.sock,
                    peer: w.peer,
                    client,
                    rest: w.buf.split_off(len),
                })
            }
        }
    }

    /// Closes (and logs) every connection whose deadline is past.
    pub(crate) fn expire(&mut self, registry: &Registry, now: Instant) {
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            if let Some(mut w) = self.conns.remove(&id) {
                warn!(
                    "closed connection from {}: no complete PROXY protocol header within {} ms ({} bytes received)",
                    w.peer,
                    self.cfg.timeout.as_millis(),
                    w.buf.len()
                );
                let _ = registry.deregister(&mut w.sock);
            }
        }
    }

    /// Closes every waiting connection (the shutdown: none of them is a session).
    pub(crate) fn clear(&mut self, registry: &Registry) {
        for (_, mut w) in std::mem::take(&mut self.conns) {
            let _ = registry.deregister(&mut w.sock);
        }
    }
}

/// Reads what `w` has, never past [`V2_MAX`] bytes in all, and parses it.
fn read_header(w: &mut Waiting) -> Step {
    let mut chunk = [0u8; V2_MAX];
    loop {
        let room = V2_MAX - w.buf.len();
        if room == 0 {
            // parse() decides within V2_MAX bytes; this is a backstop.
            return Step::Drop(format!("no PROXY protocol header within {V2_MAX} bytes"));
        }
        match w.sock.read(&mut chunk[..room]) {
            Ok(0) => {
                return Step::Drop(format!(
                    "end of file before a complete PROXY protocol header ({} bytes received)",
                    w.buf.len()
                ))
            }
            Ok(n) => w.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return Step::Drop(format!("read error before the PROXY protocol header: {e}"))
            }
        }
        match proxy_protocol::parse(&w.buf) {
            Ok(None) => {}
            Ok(Some((header, len))) => return Step::Done(header, len),
            Err(e) => return Step::Drop(e.to_string()),
        }
    }
}
