//! Scripted FTP clients and servers for the simulation: tiny state machines that
//! keep a transcript of every line they sent and received.

use std::collections::VecDeque;
use std::net::IpAddr;

use ftp_proxy_core::internals::ftp;
use ftp_proxy_core::{Pcg32, PortRange, RandomSource};

/// What a client line should become on its way to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Forwarded byte for byte.
    Same,
    /// Rewritten to advertise the proxy (PORT or EPRT).
    Rewritten,
    /// A PASV or EPSV the proxy serves: forwarded, served joined (its own PORT/EPRT
    /// to the server) or refused, depending on the replies before it (the oracle
    /// follows them) and the configuration.
    Passive,
    /// Answered by the proxy with this reply, never forwarded.
    Local(&'static str),
    /// Ends the session (over-long line, NUL byte).
    Fatal,
    /// Forward mode's `USER name@host`: the proxy connects to the host and sends
    /// this line (`USER name`) once the server has greeted; its reply is the
    /// first the client sees from the server.
    Login(Vec<u8>),
}

/// One step of a client's script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send these lines back to back (pipelining when more than one).
    Send(Vec<(Vec<u8>, Fate)>),
    /// Stay silent this long (microseconds) before the next step.
    Pause(u64),
    /// Close the connection (EOF), or reset it.
    Close {
        /// Reset (RST) instead of a clean close (FIN).
        reset: bool,
    },
}

/// Local replies the proxy gives (core/src/session.rs).
/// `-A` refusing a non-anonymous `USER`.
pub const REPLY_ANON: &str = "500 Only anonymous FTP allowed\r\n";
/// `-6` refusing `PASV` or `PORT`.
pub const REPLY_V6: &str = "500 PASV and PORT not allowed with IPv6\r\n";
/// A `PORT`/`EPRT` naming a bad port.
pub const REPLY_BAD_PORT: &str =
    "501 Bad data port (below 1024 or malformed), refused by proxy\r\n";
/// A 227/229 naming a bad port.
pub const REPLY_BAD_PASSIVE: &str = "425 Cannot open passive connection: bad port from server\r\n";
/// The server refused the proxy's PORT/EPRT of a joined PASV/EPSV.
pub use crate::invariants::REPLY_JOIN_REFUSED;
/// A PASV/EPSV after a multi-line reply, with neither a relay nor
/// `--server-data-ports`.
pub use crate::invariants::REPLY_PASSIVE_UNSAFE;
/// `AUTH`, `PBSZ` and `PROT`, answered by the proxy.
pub const REPLY_NO_TLS: &str =
    "534 Request denied for policy reasons: this proxy carries plain-text FTP only\r\n";

/// The server port a forged 227 inside a `STAT -1` listing names (an internal
/// service); the sim's servers never offer it for real, and `--server-data-ports`
/// ranges never hold it.
pub const FORGED_PORT: u16 = 3006;
/// The sentinel a forged listing may hold: what a server answers to the proxy's
/// own PORT, which a client can predict.
pub const FORGED_SENTINEL: &[u8] = b"200 PORT command successful\r\n";

/// Settings the script generator needs to know the fate of each line.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// `-6`.
    pub ipv6: bool,
    /// `-A`.
    pub anonymous_only: bool,
    /// The client's own address, used in PORT/EPRT (ignored by the proxy anyway).
    pub client_ip: IpAddr,
}

/// A verb as a client may write it: upper case, or now and then lower case (the
/// proxy recognises commands case-insensitively, as servers do).
fn verb(rng: &mut Pcg32, line: &[u8]) -> Vec<u8> {
    if rng.chance(1, 4) {
        line.to_ascii_lowercase()
    } else {
        line.to_vec()
    }
}

fn port_line(rng: &mut Pcg32, m: &Mode, eprt: bool) -> (Vec<u8>, Fate) {
    let low = rng.chance(1, 12);
    let port = match if low {
        rng.range(1, 1023)
    } else {
        rng.range(1024, 49151)
    } as u16
    {
        // Only a forgery names it.
        FORGED_PORT => FORGED_PORT + 1,
        p => p,
    };
    if !eprt {
        let line = format!("PORT 10,1,2,3,{},{}\r\n", port >> 8, port & 0xff);
        let fate = if m.ipv6 {
            Fate::Local(REPLY_V6)
        } else if low {
            Fate::Local(REPLY_BAD_PORT)
        } else {
            Fate::Same // replaced below
        };
        return (
            verb(rng, line.as_bytes()),
            if fate == Fate::Same {
                Fate::Rewritten
            } else {
                fate
            },
        );
    }
    let delim = if rng.chance(1, 4) { '!' } else { '|' };
    let line = match m.client_ip {
        IpAddr::V4(a) => format!("EPRT {delim}1{delim}{a}{delim}{port}{delim}\r\n"),
        IpAddr::V6(a) => format!("EPRT {delim}2{delim}{a}{delim}{port}{delim}\r\n"),
    };
    (
        verb(rng, line.as_bytes()),
        if low {
            Fate::Local(REPLY_BAD_PORT)
        } else {
            Fate::Rewritten
        },
    )
}

/// A random client dialog: login, a few data negotiations (sometimes pipelined,
/// sometimes malformed), pauses, and an end.
pub fn script(rng: &mut Pcg32, m: &Mode) -> VecDeque<Step> {
    let mut steps = VecDeque::new();
    let user: &[u8] = match rng.uniform(5) {
        0 => b"USER anonymous\r\n",
        1 => b"user ftp\r\n",
        // Blanks and Telnet commands before the word: judged like the plain line.
        2 => b" \xff\xf4\xff\xf2USER bob\r\n",
        _ => b"USER bob\r\n",
    };
    let user_fate = if m.anonymous_only && user.ends_with(b"USER bob\r\n") {
        Fate::Local(REPLY_ANON)
    } else {
        Fate::Same
    };
    steps.push_back(Step::Send(vec![(user.to_vec(), user_fate)]));
    steps.push_back(Step::Send(vec![(b"PASS secret\r\n".to_vec(), Fate::Same)]));
    for _ in 0..rng.range(1, 8) {
        let batch = if rng.chance(1, 4) { rng.range(2, 4) } else { 1 };
        let mut lines = Vec::new();
        let mut forging = false;
        for _ in 0..batch {
            if rng.chance(1, 25) {
                // A listing with client-chosen file names, then a pipelined PASV/EPSV,
                // last in its batch; the pause after it lets the whole listing (and
                // the server's answer to whatever the proxy made of the PASV/EPSV)
                // arrive before the next command, so the oracle knows the order.
                lines.push((verb(rng, b"STAT -1\r\n"), Fate::Same));
                let passive: &[u8] = if m.ipv6 { b"EPSV\r\n" } else { b"PASV\r\n" };
                lines.push((verb(rng, passive), Fate::Passive));
                forging = true;
                break;
            }
            lines.push(match rng.uniform(22) {
                0..=2 => {
                    let fate = if m.ipv6 {
                        Fate::Local(REPLY_V6)
                    } else {
                        Fate::Passive
                    };
                    (verb(rng, b"PASV\r\n"), fate)
                }
                3..=5 => (verb(rng, b"EPSV\r\n"), Fate::Passive),
                6..=7 => port_line(rng, m, false),
                8..=9 => port_line(rng, m, true),
                10 => (b"NOOP\r\n".to_vec(), Fate::Same),
                11 => (b"LIST\r\n".to_vec(), Fate::Same),
                12 => (b"CWD /pub/\xc3\xa9t\xc3\xa9\r\n".to_vec(), Fate::Same),
                13 => (b"SYST\n".to_vec(), Fate::Same),
                14 => (b"EPRT |9|x|1|\r\n".to_vec(), Fate::Local(REPLY_BAD_PORT)),
                15 => (verb(rng, b"HELP\r\n"), Fate::Same),
                16 => (b"AUTH TLS\r\n".to_vec(), Fate::Local(REPLY_NO_TLS)),
                17 => {
                    let l: &[u8] = if rng.chance(1, 2) {
                        b"PBSZ 0\r\n"
                    } else {
                        b"PROT P\r\n"
                    };
                    (l.to_vec(), Fate::Local(REPLY_NO_TLS))
                }
                18 => (b"FEAT\r\n".to_vec(), Fate::Same),
                19 => (verb(rng, b"STAT\r\n"), Fate::Same),
                _ => (b"RETR file.bin\r\n".to_vec(), Fate::Same),
            });
        }
        steps.push_back(Step::Send(lines));
        if forging {
            steps.push_back(Step::Pause(1_000_000 + rng.range(0, 1_000_000) as u64));
            continue;
        }
        match rng.uniform(20) {
            0 => steps.push_back(Step::Pause(rng.range(5, 90) as u64 * 1_000_000)),
            1..=8 => steps.push_back(Step::Pause(rng.range(0, 2_000_000) as u64)),
            _ => {}
        }
    }
    match rng.uniform(30) {
        0 => {
            let mut long = vec![b'X'; 600];
            long.extend_from_slice(b"\r\n");
            steps.push_back(Step::Send(vec![(long, Fate::Fatal)]));
        }
        1 => steps.push_back(Step::Send(vec![(b"NO\0OP\r\n".to_vec(), Fate::Fatal)])),
        2 => steps.push_back(Step::Close { reset: true }),
        3 => steps.push_back(Step::Close { reset: false }),
        4 => steps.push_back(Step::Pause(3_600_000_000)),
        _ => {
            steps.push_back(Step::Send(vec![(b"QUIT\r\n".to_vec(), Fate::Same)]));
            steps.push_back(Step::Close { reset: false });
        }
    }
    steps
}

/// A client's view: its script, what it sent and what it received.
#[derive(Debug, Default)]
pub struct Client {
    /// What the client still has to do.
    pub script: VecDeque<Step>,
    /// Every line sent, with its expected fate.
    pub sent: Vec<(Vec<u8>, Fate)>,
    /// Raw bytes received from the proxy.
    pub inbox: ftp_proxy_core::internals::LineBuf,
    /// Every line received, in order.
    pub received: Vec<Vec<u8>>,
    /// Final replies still owed to us.
    pub owed: usize,
    /// The greeting has arrived.
    pub greeted: bool,
    /// Inside a multi-line reply with this code.
    pub in_multi: Option<u16>,
    /// The client closed its side.
    pub closed: bool,
    /// The proxy closed its side.
    pub saw_eof: bool,
    /// The `221` to `QUIT` arrived.
    pub got_221: bool,
}

impl Client {
    /// Takes in received bytes; returns how many final replies completed.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        self.inbox.push(bytes);
        let mut finals = 0;
        while let Ok(Some(line)) = self.inbox.next_line() {
            if let Some(code) = self.in_multi {
                if ftp::reply_code(&line) == Some((code, false)) {
                    self.in_multi = None;
                    finals += 1;
                }
            } else if let Some((code, more)) = ftp::reply_code(&line) {
                if more {
                    self.in_multi = Some(code);
                } else if code >= 200 {
                    finals += 1;
                }
                if code == 221 {
                    self.got_221 = true;
                }
            }
            self.received.push(line.to_vec());
        }
        finals
    }
}

/// The shape of a forged `STAT -1` listing: after the line that ends it early (a
/// file named like the reply's last line), file names that look like what the
/// proxy would take for the answer to the PASV/EPSV the client pipelined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// A 227 (IPv4) or 229 (IPv6) naming [`FORGED_PORT`].
    Passive,
    /// [`FORGED_SENTINEL`]: the answer the proxy's own PORT would get.
    Sentinel,
    /// `421-zzz`, a forged 227/229 and `421 y`: a 421 the proxy relays whole, then
    /// ends the session with.
    Closing,
}

/// What kind of reply a server unit is, for the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Relayed as is.
    Plain,
    /// A 227/229 answering PASV/EPSV with a usable port: rewritten.
    Passive,
    /// A 227/229 with a bad port (or outside `--server-data-ports`): replaced by the
    /// proxy's 425.
    BadPassive,
    /// A FEAT list: relayed without its AUTH/PBSZ/PROT lines.
    Feat,
    /// A `STAT -1` listing whose file names end it early and forge an answer: the
    /// session must end after the early end.
    Forged {
        /// What the file names after the early end forge.
        forgery: Forgery,
        /// The index of the line that ends the listing early.
        early_end: usize,
    },
    /// A 421 (service closing), asked or not: its first `lines` lines reach the
    /// client, the rest (sent after it) must not, and the server closes.
    Closing {
        /// How many lines the 421 reply has.
        lines: usize,
    },
}

/// What a server sends at once: chunks, each after an extra delay (microseconds)
/// on top of the network's, and whether it closes after them.
#[derive(Debug, Default)]
pub struct Reply {
    /// The chunks, each with the extra delay before it.
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// The server closes its side after the last chunk.
    pub close: bool,
}

impl Reply {
    fn now(bytes: Vec<u8>) -> Reply {
        Reply {
            chunks: vec![(0, bytes)],
            close: false,
        }
    }
}

/// A scripted server for one session.
#[derive(Debug, Default)]
pub struct Server {
    /// `--server-data-ports`: the ports its passive answers name, but for the bad
    /// ones (which the proxy refuses).
    pub data_ports: Option<PortRange>,
    /// Raw bytes received from the proxy.
    pub inbox: ftp_proxy_core::internals::LineBuf,
    /// Every line received, in order.
    pub received: Vec<Vec<u8>>,
    /// Every reply sent (all its lines), with its kind.
    pub sent: Vec<(Vec<Vec<u8>>, Unit)>,
    /// The server closed its side.
    pub closed: bool,
    /// The port of its last usable passive answer (what a bridge dials).
    pub last_passive_port: Option<u16>,
}

fn lines_of(lines: &[&[u8]]) -> Vec<Vec<u8>> {
    lines.iter().map(|l| l.to_vec()).collect()
}

impl Server {
    /// The banner: one line or a multi-line 220, as pure-ftpd sends; now and then a
    /// 421 (too many users) and the end.
    pub fn banner(&mut self, rng: &mut Pcg32) -> Reply {
        if rng.chance(1, 60) {
            return self.closing(
                vec![b"421 Too many users, try later\r\n".to_vec()],
                false,
                rng,
            );
        }
        let lines: Vec<Vec<u8>> = if rng.chance(1, 2) {
            vec![b"220 sim ready\r\n".to_vec()]
        } else {
            lines_of(&[
                b"220-Welcome to the sim\r\n",
                b"220-You are user 1\r\n",
                b"220 ready\r\n",
            ])
        };
        Reply::now(self.push(lines, Unit::Plain))
    }

    /// A 421 the server sends unasked (its idle timeout, a shutdown), then closes.
    pub fn unasked_421(&mut self, rng: &mut Pcg32) -> Reply {
        self.closing(closing_lines(rng), rng.chance(1, 2), rng)
    }

    /// A 421 reply, perhaps followed by lines that must not reach the client, then
    /// the end.
    fn closing(&mut self, lines: Vec<Vec<u8>>, junk: bool, rng: &mut Pcg32) -> Reply {
        let n = lines.len();
        let mut all = lines;
        if junk {
            all.push(if rng.chance(1, 2) {
                b"200 late\r\n".to_vec()
            } else {
                b"227 Entering Passive Mode (127,0,0,1,11,190)\r\n".to_vec()
            });
        }
        Reply {
            chunks: vec![(0, self.push(all, Unit::Closing { lines: n }))],
            close: true,
        }
    }

    fn push(&mut self, lines: Vec<Vec<u8>>, unit: Unit) -> Vec<u8> {
        let bytes = lines.concat();
        self.sent.push((lines, unit));
        bytes
    }

    /// A data port for a passive answer: usable (inside `--server-data-ports` when
    /// set, never [`FORGED_PORT`]) or, now and then, one the proxy must refuse.
    fn data_port(&self, rng: &mut Pcg32) -> (u16, Unit) {
        if rng.chance(1, 15) {
            return match self.data_ports {
                Some(r) if rng.chance(1, 2) && r.high < 65535 => (r.high + 1, Unit::BadPassive),
                Some(r) if rng.chance(1, 2) && r.low > 1024 => (r.low - 1, Unit::BadPassive),
                _ => (rng.range(1, 1023) as u16, Unit::BadPassive),
            };
        }
        let port = match self.data_ports {
            Some(r) => rng.range(u32::from(r.low), u32::from(r.high)) as u16,
            None => rng.range(1024, 49151) as u16,
        };
        let port = if port == FORGED_PORT { port + 1 } else { port };
        (port, Unit::Passive)
    }

    /// The reply to one command line.
    pub fn reply(&mut self, rng: &mut Pcg32, line: &[u8], server_ip: IpAddr) -> Reply {
        self.received.push(line.to_vec());
        let upper = line.to_ascii_uppercase();
        if rng.chance(1, 150) {
            // Shutting down instead of answering.
            return self.closing(closing_lines(rng), rng.chance(1, 3), rng);
        }
        let (port, unit) = self.data_port(rng);
        if unit == Unit::Passive && (upper.starts_with(b"PASV") || upper.starts_with(b"EPSV")) {
            self.last_passive_port = Some(port);
        }
        let (p1, p2) = (port >> 8, port & 0xff);
        let h = match server_ip {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => [10, 0, 0, 1],
        };
        let tuple = format!("{},{},{},{},{p1},{p2}", h[0], h[1], h[2], h[3]);
        if upper.starts_with(b"PASV") {
            let lines = match rng.uniform(6) {
                0 => vec![
                    format!("227-Entering Passive Mode ({tuple})\r\n"),
                    "227 OK\r\n".into(),
                ],
                1 => vec![format!("227 ={tuple}\r\n")],
                2 if unit == Unit::Passive && rng.chance(1, 3) => {
                    return Reply::now(self.push(
                        vec![b"227 Entering Passive Mode (x)\r\n".to_vec()],
                        Unit::BadPassive,
                    ))
                }
                _ => vec![format!("227 Entering Passive Mode ({tuple}).\r\n")],
            };
            return Reply::now(
                self.push(lines.into_iter().map(String::into_bytes).collect(), unit),
            );
        }
        if upper.starts_with(b"STAT -1") {
            return self.forged_listing(rng, server_ip);
        }
        if upper.starts_with(b"STAT") {
            // An honest status whose inner lines look like replies, 421 among them.
            let lines = lines_of(&[
                b"211-Status of sim\r\n",
                b" 211 a\r\n",
                b"421-zzz\r\n",
                b"227 Entering Passive Mode (127,0,0,1,11,190)\r\n",
                b"421 y\r\n",
                b"211 End of status\r\n",
            ]);
            return Reply::now(self.push(lines, Unit::Plain));
        }
        if upper.starts_with(b"HELP") {
            let lines = lines_of(&[
                b"214-The following commands are recognized\r\n",
                b" USER PASS PASV EPSV PORT EPRT\r\n",
                b"214 Help OK\r\n",
            ]);
            return Reply::now(self.push(lines, Unit::Plain));
        }
        if upper.starts_with(b"FEAT") {
            let lines = lines_of(&[
                b"211-Extensions supported:\r\n",
                b" EPRT\r\n",
                b" AUTH TLS\r\n",
                b" PBSZ\r\n",
                b" PROT\r\n",
                b" EPSV\r\n",
                b"211 End.\r\n",
            ]);
            return Reply::now(self.push(lines, Unit::Feat));
        }
        if upper.starts_with(b"EPSV") {
            let d = if rng.chance(1, 5) { '!' } else { '|' };
            let line = format!("229 Entering Extended Passive Mode ({d}{d}{d}{port}{d})\r\n");
            return Reply::now(self.push(vec![line.into_bytes()], unit));
        }
        if upper.starts_with(b"PASS") && rng.chance(1, 6) {
            // pure-ftpd's multi-line login message.
            let lines = lines_of(&[
                b"230-Welcome, this is the sim\r\n",
                b"230-Quota: none\r\n",
                b"230 Logged in\r\n",
            ]);
            return Reply::now(self.push(lines, Unit::Plain));
        }
        if upper.starts_with(b"PORT") || upper.starts_with(b"EPRT") {
            // The client's (rewritten) or the proxy's own, for a joined PASV/EPSV.
            let lines = match rng.uniform(10) {
                0 => lines_of(&[b"500 Illegal PORT command\r\n"]),
                1 => lines_of(&[b"200-PORT command\r\n", b"200 successful\r\n"]),
                _ => lines_of(&[b"200 Command okay\r\n"]),
            };
            return Reply::now(self.push(lines, Unit::Plain));
        }
        let (text, close): (&[u8], bool) = if upper.starts_with(b"USER") {
            (b"331 Password required\r\n", false)
        } else if upper.starts_with(b"PASS") {
            (b"230 Logged in\r\n", false)
        } else if upper.starts_with(b"LIST") || upper.starts_with(b"RETR") {
            // A preliminary and a final reply: one unit, since nothing may come between them.
            let lines = lines_of(&[
                b"150 Opening data connection\r\n",
                b"226 Transfer complete\r\n",
            ]);
            return Reply::now(self.push(lines, Unit::Plain));
        } else if upper.starts_with(b"QUIT") {
            (b"221 Goodbye\r\n", true)
        } else if upper.starts_with(b"NOOP")
            || upper.starts_with(b"SYST")
            || upper.starts_with(b"CWD")
        {
            (b"200 OK\r\n", false)
        } else {
            (b"500 Unknown command\r\n", false)
        };
        let mut reply = Reply::now(self.push(vec![text.to_vec()], Unit::Plain));
        reply.close = close;
        reply
    }

    /// A `STAT -1` listing of file names the client chose: one ends the reply early,
    /// the next ones forge an answer ([`Forgery`]). They arrive with the early end,
    /// or in a later segment, or alone in a segment of their own.
    fn forged_listing(&mut self, rng: &mut Pcg32, server_ip: IpAddr) -> Reply {
        let code: &[u8] = if rng.chance(1, 3) { b"211" } else { b"213" };
        let forged = if server_ip.is_ipv4() {
            format!(
                "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                FORGED_PORT >> 8,
                FORGED_PORT & 0xff
            )
        } else {
            format!("229 Entering Extended Passive Mode (|||{FORGED_PORT}|)\r\n")
        }
        .into_bytes();
        let line = |text: &[u8]| [code, text].concat();
        let head = vec![
            line(b"-STAT\r\n"),
            b"-rw-r--r-- 1 ftp ftp 0 file\r\n".to_vec(),
            line(b" a\r\n"),
        ];
        let early_end = head.len() - 1;
        let (forgery, payload) = match rng.uniform(3) {
            0 => (Forgery::Passive, vec![forged]),
            1 => (Forgery::Sentinel, vec![FORGED_SENTINEL.to_vec()]),
            _ => (
                Forgery::Closing,
                vec![b"421-zzz\r\n".to_vec(), forged, b"421 y\r\n".to_vec()],
            ),
        };
        let tail = vec![line(b" End.\r\n")];
        let gap = |rng: &mut Pcg32| rng.range(1_000, 40_000) as u64;
        let chunks = match rng.uniform(3) {
            0 => vec![(0, [&head[..], &payload, &tail].concat().concat())],
            1 => vec![
                (0, head.concat()),
                (gap(rng), [&payload[..], &tail].concat().concat()),
            ],
            _ => vec![
                (0, head.concat()),
                (gap(rng), payload.concat()),
                (if rng.chance(1, 2) { 0 } else { gap(rng) }, tail.concat()),
            ],
        };
        self.sent.push((
            [head, payload, tail].concat(),
            Unit::Forged { forgery, early_end },
        ));
        Reply {
            chunks,
            close: false,
        }
    }
}

/// A 421 reply: one line, or several whose inner lines look like other replies.
fn closing_lines(rng: &mut Pcg32) -> Vec<Vec<u8>> {
    if rng.chance(1, 2) {
        lines_of(&[b"421 Service not available, closing control connection\r\n"])
    } else {
        lines_of(&[
            b"421-Idle timeout (300 seconds)\r\n",
            b"227 Entering Passive Mode (127,0,0,1,11,190)\r\n",
            b"200 OK\r\n",
            b"421 Closing\r\n",
        ])
    }
}
