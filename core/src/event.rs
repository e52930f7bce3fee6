//! The vocabulary between the proxy and its driver: what happened ([`Input`]), what
//! to do ([`Action`]), and the names both use ([`SessionId`], [`Side`],
//! [`CloseReason`], [`Summary`]).
//!
//! It has a module of its own so that [`crate::Proxy`] and the per-session state
//! machine both depend on it and not on each other.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use crate::error::{FilterError, SocketError};
use crate::rules::{Anchor, Mode, PortRange, Rule};

/// A session's id: starts at 1 and counts up; after `u32::MAX` accepts it wraps to
/// 1, skipping ids still live, so no two live sessions ever share one. It names the
/// anchor (`ftp-proxy/<pid>.<id>`) and prefixes log lines.
///
/// `Display` writes `#` and the number (`#12`), the prefix of every log line the
/// core writes for the session (`#12 client close`); the relay's and the
/// runtime's lines use the same prefix, so one grep follows a session. `Debug`
/// writes `SessionId(12)`; use `.0` for the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u32);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One side of a session: the FTP client or the FTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The control connection accepted from the client.
    Client,
    /// The control connection the proxy opened to the server.
    Server,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }

    /// `client` or `server`, as the log lines say (also what `Display` writes).
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A client connection the driver accepted, for [`crate::Proxy::accept`].
///
/// A struct rather than positional arguments: `client` and `orig_dst` have the same
/// type and are easy to swap, and the routing domain is easy to forget.
///
/// **The driver unmaps addresses, the core does not.** A dual-stack (`[::]`) socket
/// reports an IPv4 peer as `::ffff:a.b.c.d`; every address the driver passes in
/// (`client` and `orig_dst` here, `proxy` of [`Input::ServerSocketOpened`]) must be
/// the plain IPv4 one (`Ipv6Addr::to_ipv4_mapped`), or the session's rules and
/// rewritten replies name an IPv6 address for an IPv4 connection. runtime-mio unmaps
/// each of them where it reads it from a socket. The one place the core compares
/// both forms itself is the admission of a relayed data connection (`Forward`),
/// whose peer address comes straight from an accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// The client's address, v4-mapped addresses unmapped by the driver (see above).
    pub client: SocketAddr,
    /// Where the client meant to go: the diverted destination, or in reverse mode
    /// (`-R`) the listener's own address.
    pub orig_dst: SocketAddr,
    /// The routing domain the client's connection arrived in: `SO_RTABLE` of the
    /// accepted socket on OpenBSD, 0 where there are no routing domains (Linux). The
    /// rules of the session match it (`on rdomain`).
    pub rdomain: u32,
}

impl Accept {
    /// A connection in routing domain 0 (every connection on Linux).
    pub fn new(client: SocketAddr, orig_dst: SocketAddr) -> Accept {
        Accept {
            client,
            orig_dst,
            rdomain: 0,
        }
    }
}

/// What happened to a session, reported by the driver through [`crate::Proxy::handle`].
///
/// Each fact has exactly one input. `handle` may be called at any time, also while
/// the driver is still draining [`crate::Proxy::poll_action`]: the new actions queue
/// behind the ones not yet taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The socket towards the server has its local address: `proxy` (`getsockname`,
    /// unmapped as [`Accept`] says) is the proxy's address in rules and rewrites.
    /// Report it once, as soon as the address is known.
    ///
    /// When that is depends on the driver, and the core accepts either order:
    /// * a driver that starts a non-blocking `connect(2)` itself (mio, the daemon)
    ///   knows it at once and reports it while the connect is still under way;
    /// * a driver whose connect is one awaited call (tokio's `TcpStream::connect`,
    ///   std's blocking `connect`) learns it only when the call returns: it reports
    ///   `ServerSocketOpened` then, immediately followed by
    ///   [`Input::ServerConnected`] (the threaded example does so).
    ///
    /// Until it arrives, client bytes are buffered (subject to read interest) and
    /// parsed after it; server bytes are handled as they come, though no driver has
    /// any before its connect returns. The only other difference is the log line of
    /// a failed connect: a [`Input::ServerConnectFailed`] before this input ends the
    /// session as `proxy cannot connect to server <ip>: <error>`
    /// ([`CloseReason::ConnectFailed`], logged as critical), after it as `server
    /// refused connection` ([`CloseReason::ServerRefused`], an error, the original's
    /// asynchronous failure). A driver that cannot report it before the outcome
    /// therefore logs every refused connect the first way.
    ServerSocketOpened {
        /// Local address of the server-side socket.
        proxy: SocketAddr,
    },
    /// The connect to the server completed. Optional: it is logged at debug level and
    /// changes nothing else (server bytes prove the connection too).
    ServerConnected,
    /// The connect to the server failed, at once (socket, bind or connect returned an
    /// error) or later (the socket reported an error before [`Input::ServerConnected`]).
    /// This is the one way to report a failed connect; a failure after the socket was
    /// opened is logged as the original does (`server refused connection`).
    ServerConnectFailed {
        /// The OS error (kind and errno), for the log.
        error: SocketError,
    },
    /// Bytes read from that side.
    Data(Side, Bytes),
    /// The driver wrote this many bytes of what [`Action::Send`] queued for that side.
    /// The core counts what each side has queued and decides read interest from it
    /// (see [`Action::ReadInterest`]); lines that waited for room in a queue (see
    /// [`OUTPUT_HIGH_WATER`]) are handled on it.
    Written(Side, usize),
    /// End of file from that side.
    Eof(Side),
    /// A read error on an established connection to that side.
    Reset(Side),
    /// TLS on that side's control connection failed: its handshake (a certificate
    /// that does not verify, a peer that speaks plain FTP) or a record later. The
    /// driver logs the TLS layer's reason; the session ends as
    /// [`CloseReason::TlsFailed`], so that its summary tells a TLS failure from a
    /// TCP reset. It can only occur when [`crate::Config::tls`] turns TLS on for
    /// that side.
    TlsFailed(Side),
    /// A write to that side failed.
    WriteError(Side),
    /// The answer to the session's [`Action::Resolve`]: the host's addresses (any
    /// order the resolver gives; the core tries them in that order, as
    /// `getaddrinfo(3)` sorts them by RFC 6724), or the resolver's error text. One
    /// lookup is in flight per session at most; an answer when none is (a late one
    /// after the deadline ended the session) is ignored.
    Resolved {
        /// The addresses, or why there are none.
        result: Result<Vec<IpAddr>, String>,
    },
    /// The outcome of the [`Action::CommitRules`] with this `txn`. An outcome whose
    /// `txn` is not the one the session waits for (a late answer to a commit that
    /// was replaced) is ignored, logged at debug level.
    RulesCommitted {
        /// The transaction number from the action.
        txn: u64,
        /// Whether the filter took the rules.
        result: Result<(), FilterError>,
    },
}

/// What the driver must do for a session, drained from [`crate::Proxy::poll_action`].
///
/// Deliberately *not* `#[non_exhaustive]`: every variant is work the driver must
/// do, and one it silently ignored would break the session (a [`Action::StartTls`]
/// dropped leaves a client handshaking into plain text). A new variant therefore
/// makes an integrator's `match` fail to compile, which is the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a non-blocking TCP connection to `to` (bound to `bind` if given), then
    /// report [`Input::ServerSocketOpened`], or [`Input::ServerConnectFailed`].
    ConnectServer {
        /// The server: the `-R` address, or the client's original destination.
        to: SocketAddr,
        /// The `-a` source address.
        bind: Option<IpAddr>,
    },
    /// Look `name` up (forward mode, `--user-at-host`) without blocking anything
    /// else, and report [`Input::Resolved`]. The core bounds the wait itself
    /// ([`Config::resolve_timeout_secs`](crate::Config::resolve_timeout_secs)): the
    /// session ends with `421` when the answer is late, and a driver that cannot
    /// cancel a lookup just lets its answer fall on a closed session. In a chroot the
    /// resolver's files are out of reach: the daemon asks a helper process started
    /// before the chroot (docs/forward-proxy.md).
    Resolve {
        /// The host name from `USER name@host` (never an address literal).
        name: String,
    },
    /// Write these bytes to that side, after everything queued before, and report
    /// what was written with [`Input::Written`].
    Send(Side, Bytes),
    /// Switch `side`'s control connection to TLS (RFC 4217, `AUTH TLS`): once
    /// every byte of the [`Action::Send`]s before this one has been written in
    /// plain text, run a TLS handshake on that socket. For [`Side::Client`]
    /// ([`crate::ClientTls::Explicit`], after the proxy's `234`) the proxy is the
    /// TLS server, with its certificate; for [`Side::Server`]
    /// ([`crate::ServerTls::Explicit`], after the server's `234` to the proxy's
    /// own `AUTH TLS`) it is the TLS client, checking the server's certificate,
    /// and a `Send` may follow at once (the driver holds it until the handshake
    /// is done). `pending` are bytes the session had already read after the
    /// line that switched: they are the start of the TLS handshake, never
    /// commands or replies ([`crate::ftps::plaintext_end`]), and go to the TLS
    /// layer first, before anything read from the socket after them.
    ///
    /// From then on [`Input::Data`] of that side carries the decrypted bytes and
    /// every [`Action::Send`] to it is encrypted; [`Input::Written`] counts
    /// plaintext. A handshake that fails (a certificate that does not verify) is
    /// an [`Input::TlsFailed`] of that side (the driver logs why). A driver without
    /// TLS must not ignore it: it cannot occur unless [`crate::Config::tls`]
    /// turns TLS on, which such a driver does not do. With
    /// [`crate::ServerTls::Implicit`] no `StartTls` comes: the driver runs TLS
    /// on the server socket from the connect on.
    StartTls {
        /// Which control connection.
        side: Side,
        /// Bytes read after the `AUTH` line, to feed to the TLS layer first.
        pending: Bytes,
    },
    /// Start (`on`) or stop reading that side. Emitted only when it changes; every
    /// side starts with read interest on. It goes off while the session holds more
    /// than [`INBOX_HIGH_WATER`] unparsed bytes of that side (a commit is in flight),
    /// or while the output queued for the other side, or for the client itself (the
    /// proxy answers some client commands on its own), reaches
    /// [`OUTPUT_HIGH_WATER`]; it comes back once they are below [`OUTPUT_LOW_WATER`].
    /// So memory per session is bounded whatever the peers do. After
    /// [`Action::Close`] no more read interest is emitted: stop reading both sides.
    ReadInterest {
        /// Which socket.
        side: Side,
        /// Whether to read it.
        on: bool,
    },
    /// Replace the anchor's rules with `rules` atomically (an empty list removes them),
    /// then report [`Input::RulesCommitted`] with the same `txn`.
    ///
    /// The handshake's corners:
    /// * After a `Busy` result the same `txn` and rules are emitted again 5 ms later
    ///   (once; a second `Busy` ends the session).
    /// * After `AddrInUse` a new `txn` follows at once, with a new proxy port (up to
    ///   8 ports), and the rewritten line then names that port.
    /// * The line that depends on the rules is held back until `Ok`.
    CommitRules {
        /// Matches the acknowledgement to the commit.
        txn: u64,
        /// The session's anchor.
        anchor: Anchor,
        /// The complete new rule set.
        rules: Vec<Rule>,
    },
    /// Flush what is queued for both sides (one attempt), then close both sockets.
    /// A `CommitRules` removing the session's rules may follow.
    ///
    /// "One attempt" is the original's `end_session`: write what the socket takes now,
    /// without waiting for it to become writable, ignore errors, and close; whatever
    /// does not fit is dropped (the last lines are typically a 421 or a reply the
    /// session ends on). For an asynchronous writer that means a non-blocking try
    /// (tokio's `try_write` until `WouldBlock`), or at most a short, bounded wait
    /// in a task of its own; never keep the session's resources waiting on a peer
    /// that does not read. The session is closed for the core already: inputs for it
    /// (a `Written`, an `Eof`) are ignored from here on, except the
    /// [`Input::RulesCommitted`] of the removal.
    ///
    /// The core has already logged `reason` (as the original does); the driver logs
    /// the one summary line from `summary` and does not log the reason again.
    Close {
        /// Why the session ended.
        reason: CloseReason,
        /// What the session did, for the driver's per-session log line (boxed:
        /// every action moves through the queue, and this one is large and rare).
        summary: Box<Summary>,
    },
    /// End, now, every data connection the anchor's rules let through: reset the
    /// relay's pairs (and any connection waiting for its partner), drop the
    /// filter's connection state ([`crate::Filter::kill_connections`]). Data
    /// connections otherwise outlive their rules, as pf states do; this is emitted
    /// just before the [`Action::Close`] of a session that ends because its replies
    /// were out of step ([`CloseReason::ReplyDesync`]), so that nothing negotiated
    /// while the proxy could have been misled outlives the session.
    EndDataConnections {
        /// The session's anchor.
        anchor: Anchor,
    },
    /// The final removal of the session's rules failed: rules of this anchor may
    /// remain in the filter. The session is forgotten all the same. The driver logs
    /// it and removes the anchor's rules by other means (a retry, or its
    /// `remove_all` at exit).
    RulesMayRemain {
        /// The anchor whose removal failed.
        anchor: Anchor,
        /// What the filter said.
        error: FilterError,
    },
    /// The session has just relayed (the `Send` before this action) the final reply
    /// to a data-transfer command (`RETR`, `STOR`, `STOU`, `APPE`, `LIST`, `NLST`,
    /// `MLSD`): a 2xx, 4xx or 5xx after any 1xx. As far as the control connection
    /// tells, that transfer is over. Emitted only by sessions that have committed
    /// rules; the rules in force stay.
    ///
    /// For a driver that carries the data connections itself: the anchor's data
    /// connections on which one side has finished (its end of file read and passed
    /// on) are finished, and need not wait for the other side's end of file. Some
    /// servers never close their side of an upload (rclone's `serve ftp`), so such a
    /// connection would otherwise count as in progress until it idles out. The mio
    /// runtime closes them (docs/embedding.md). A driver whose data connections are
    /// kernel states (pf, nftables) ignores it.
    TransferDone {
        /// The session's anchor, as in its [`Action::CommitRules`].
        anchor: Anchor,
    },
}

/// Unparsed bytes of one side beyond which the session turns its read interest off.
pub const INBOX_HIGH_WATER: usize = 8 * 1024;
/// Output queued for a side (sent but not yet [`Input::Written`]) at which reading
/// stops. The session also stops handling the lines that would add to it: a server
/// line waits while the client's queue is at the mark, a client line while both
/// queues together are (it may go to the server or be answered by the proxy
/// itself). Checked before every line, so however short the lines, a session's
/// queued output passes the mark by one line at most. The mark counts payload
/// bytes: a driver that keeps each [`Action::Send`] as its own buffer pays per
/// entry on top (one per byte for a flood of bare `\n`), so it should copy small
/// sends into shared buffers, as the mio runtime does.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Queued output below which reading resumes.
pub const OUTPUT_LOW_WATER: usize = 16 * 1024;
/// The pipelining limit: how many client commands of a session may await their
/// replies (the server's, or the proxy's own answer) at once. The command that
/// would be one more is not forwarded and ends the session with
/// [`CloseReason::TooManyPipelined`], so a client that never reads replies cannot
/// make the proxy remember without bound. Lines without a command word are not
/// owed a reply and do not count.
pub const MAX_PIPELINED: usize = 4096;

/// Data connections a session negotiated, by mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataCounts {
    /// PASV (227 replies rewritten).
    pub pasv: u32,
    /// EPSV (229 replies rewritten).
    pub epsv: u32,
    /// PORT commands rewritten.
    pub port: u32,
    /// EPRT commands rewritten.
    pub eprt: u32,
}

impl DataCounts {
    pub(crate) fn count(&mut self, mode: Mode, epsv: bool) {
        let n = match (mode, epsv) {
            (Mode::Passive | Mode::Joined, false) => &mut self.pasv,
            (Mode::Passive | Mode::Joined, true) => &mut self.epsv,
            (Mode::ActivePort, _) | (Mode::Bridged, false) => &mut self.port,
            (Mode::ActiveEprt, _) | (Mode::Bridged, true) => &mut self.eprt,
        };
        *n += 1;
    }
}

/// What one session did, handed to the driver with [`Action::Close`].
///
/// The driver adds what only it knows (bytes it relayed on data connections) and
/// logs one line; docs/behavior.md lists that line's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The client's address.
    pub client: SocketAddr,
    /// The server the session connected to.
    pub server: SocketAddr,
    /// From accept to close.
    pub duration: Duration,
    /// Client command lines read.
    pub commands: u64,
    /// Data connections negotiated (rules committed and the line rewritten), by mode.
    pub data: DataCounts,
    /// Rule sets the filter took (removals not counted).
    pub rules_committed: u32,
    /// Control bytes read from the client.
    pub client_bytes: u64,
    /// Control bytes read from the server.
    pub server_bytes: u64,
}

/// Why a session ended. `Display` gives the original's log text (without `#id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// EOF from that side (`client close` / `server close`).
    Eof(Side),
    /// A read error on the client (`client reset connection`).
    ClientReset,
    /// A read error on the server, or a connect that failed after the socket was
    /// opened (`server refused connection`).
    ServerRefused,
    /// A write to that side failed.
    WriteError(Side),
    /// TLS on that side's control connection failed ([`Input::TlsFailed`]; the
    /// driver logged the TLS layer's reason). The original has no TLS, so no
    /// wording of its own.
    TlsFailed(Side),
    /// No bytes from that side for the idle timeout (30 s for the server's first bytes).
    Timeout(Side),
    /// The server did not confirm a login (`230`) within `--login-timeout`.
    LoginTimeout,
    /// A line longer than 500 bytes or holding a NUL byte.
    NotClean(Side),
    /// The connection to the server could not even be started.
    ConnectFailed {
        /// The server the session connects to (the text gives its address only,
        /// as the original does).
        server: SocketAddr,
        /// What the OS said.
        error: SocketError,
    },
    /// Committing the data-connection rules failed.
    Filter(FilterError),
    /// A negotiation found no free proxy port: every port of `range`
    /// (`--proxy-ports`) is held by a live session, so no new data connection can
    /// be offered without sharing one.
    NoProxyPort {
        /// The configured proxy-port range.
        range: PortRange,
    },
    /// The client pipelined more commands than the proxy tracks without reading replies.
    ///
    /// The limit is [`MAX_PIPELINED`] (4,096) outstanding: every command forwarded waits until its final
    /// reply has been relayed, and every answer the proxy gives itself waits until
    /// the replies before it have gone; the command that would be the 4,097th ends
    /// the session (a line with no command word, which no server answers, does not
    /// count). No client that reads its replies comes near it.
    TooManyPipelined,
    /// A server reply line arrived that answers no command: the server sent it
    /// before it could have seen the command it would answer, or when nothing was
    /// owed. Commands and replies are out of step (a reply ended early by a line the
    /// client controls, e.g. a file name in a `STAT` listing), so no later reply can
    /// be trusted to answer a PASV/EPSV.
    ReplyDesync,
    /// The server sent 421 (service closing): its lines were relayed whole, and the
    /// session ends with them; nothing after a 421 is relayed or negotiated.
    ServerClosing,
    /// The daemon is shutting down.
    Shutdown,
    /// Forward mode: the lookup of the host named in `USER name@host` took longer
    /// than `--resolve-timeout`.
    ResolveTimeout,
}

impl CloseReason {
    /// A stable, machine-friendly name of the reason (`client_close`,
    /// `server_timeout`, `filter_failed`, ...), for the summary line's `reason=`
    /// field: the original's wording is in the line the core logs, and a second
    /// copy of it would make every grep for it count each session twice.
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::Eof(Side::Client) => "client_close",
            CloseReason::Eof(Side::Server) => "server_close",
            CloseReason::ClientReset => "client_reset",
            CloseReason::ServerRefused => "server_refused",
            CloseReason::WriteError(Side::Client) => "client_write_error",
            CloseReason::WriteError(Side::Server) => "server_write_error",
            CloseReason::TlsFailed(Side::Client) => "client_tls_failed",
            CloseReason::TlsFailed(Side::Server) => "server_tls_failed",
            CloseReason::Timeout(Side::Client) => "client_timeout",
            CloseReason::Timeout(Side::Server) => "server_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::NotClean(Side::Client) => "client_not_clean",
            CloseReason::NotClean(Side::Server) => "server_not_clean",
            CloseReason::ConnectFailed { .. } => "connect_failed",
            CloseReason::Filter(_) => "filter_failed",
            CloseReason::NoProxyPort { .. } => "no_proxy_port",
            CloseReason::TooManyPipelined => "too_many_pipelined",
            CloseReason::ReplyDesync => "reply_desync",
            CloseReason::ServerClosing => "server_closing",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ResolveTimeout => "resolve_timeout",
        }
    }

    /// Whether the original logs this at error (`true`) or lower level.
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            CloseReason::Eof(_)
                | CloseReason::Shutdown
                | CloseReason::Timeout(Side::Server)
                | CloseReason::ServerClosing
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Eof(side) => write!(f, "{} close", side.name()),
            CloseReason::ClientReset => f.write_str("client reset connection"),
            CloseReason::ServerRefused => f.write_str("server refused connection"),
            CloseReason::WriteError(side) => write!(f, "{} write error", side.name()),
            CloseReason::TlsFailed(side) => {
                write!(f, "TLS on the {} control connection failed", side.name())
            }
            CloseReason::Timeout(side) => write!(f, "{} timeout", side.name()),
            CloseReason::LoginTimeout => f.write_str("client did not log in in time"),
            CloseReason::NotClean(Side::Client) => {
                f.write_str("client command too long or not clean")
            }
            CloseReason::NotClean(Side::Server) => {
                f.write_str("server reply too long or not clean")
            }
            CloseReason::ConnectFailed { server, error } => {
                write!(f, "proxy cannot connect to server {}: {error}", server.ip())
            }
            CloseReason::Filter(e) => write!(f, "pf operation failed: {e}"),
            CloseReason::NoProxyPort { range } => write!(
                f,
                "no free proxy port: every port of {range} is held by a live session"
            ),
            CloseReason::TooManyPipelined => f.write_str("client pipelined too many commands"),
            CloseReason::ReplyDesync => {
                f.write_str("server reply answers no command (replies out of step)")
            }
            CloseReason::ServerClosing => f.write_str("server closing connection (421)"),
            CloseReason::Shutdown => f.write_str("shutting down"),
            CloseReason::ResolveTimeout => f.write_str("server name lookup timed out"),
        }
    }
}

/// Why [`crate::Proxy::accept`] turned a connection away; the driver closes the
/// socket without a reply (as the original does). The core has logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `-m` sessions are live.
    Limit(u32),
    /// [`crate::Proxy::shutdown`] was called.
    ShuttingDown,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Limit(m) => write!(f, "client limit ({m}) reached"),
            Refused::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

impl std::error::Error for Refused {}
