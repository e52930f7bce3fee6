//! Scripted FTP clients and servers for the simulation: tiny state machines that
//! keep a transcript of every line they sent and received.

use std::collections::VecDeque;
use std::net::IpAddr;

use ftp_proxy_core::internals::ftp;
use ftp_proxy_core::{Pcg32, RandomSource};

/// What a client line should become on its way to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Forwarded byte for byte.
    Same,
    /// Rewritten to advertise the proxy (PORT or EPRT).
    Rewritten,
    /// Answered by the proxy with this reply, never forwarded.
    Local(&'static str),
    /// Ends the session (over-long line, NUL byte).
    Fatal,
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
/// `AUTH`, `PBSZ` and `PROT`, answered by the proxy.
pub const REPLY_NO_TLS: &str =
    "534 Request denied for policy reasons: this proxy carries plain-text FTP only\r\n";

/// The server port a forged 227 inside a `STAT -1` listing names (an internal
/// service); the sim's servers never offer it for real.
pub const FORGED_PORT: u16 = 3006;
/// The line of a `STAT -1` listing that ends the reply early (a file named `213 a`).
pub const EARLY_END: &[u8] = b"213 a\r\n";

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

fn port_line(rng: &mut Pcg32, m: &Mode, eprt: bool) -> (Vec<u8>, Fate) {
    let low = rng.chance(1, 12);
    let port = if low {
        rng.range(1, 1023)
    } else {
        rng.range(1024, 49151)
    } as u16;
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
            line.into_bytes(),
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
        line.into_bytes(),
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
        for _ in 0..batch {
            if rng.chance(1, 25) {
                // A listing with client-chosen file names, then a pipelined PASV/EPSV.
                lines.push((b"STAT -1\r\n".to_vec(), Fate::Same));
                let passive: &[u8] = if m.ipv6 { b"EPSV\r\n" } else { b"PASV\r\n" };
                lines.push((passive.to_vec(), Fate::Same));
                continue;
            }
            lines.push(match rng.uniform(20) {
                0..=2 => {
                    let fate = if m.ipv6 {
                        Fate::Local(REPLY_V6)
                    } else {
                        Fate::Same
                    };
                    (b"PASV\r\n".to_vec(), fate)
                }
                3..=5 => (b"EPSV\r\n".to_vec(), Fate::Same),
                6..=7 => port_line(rng, m, false),
                8..=9 => port_line(rng, m, true),
                10 => (b"NOOP\r\n".to_vec(), Fate::Same),
                11 => (b"LIST\r\n".to_vec(), Fate::Same),
                12 => (b"CWD /pub/\xc3\xa9t\xc3\xa9\r\n".to_vec(), Fate::Same),
                13 => (b"SYST\n".to_vec(), Fate::Same),
                14 => (b"EPRT |9|x|1|\r\n".to_vec(), Fate::Local(REPLY_BAD_PORT)),
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
                _ => (b"RETR file.bin\r\n".to_vec(), Fate::Same),
            });
        }
        steps.push_back(Step::Send(lines));
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

/// What kind of reply a server unit is, for the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Relayed as is.
    Plain,
    /// A 227/229 answering PASV/EPSV with a usable port: rewritten.
    Passive,
    /// A 227/229 with a bad port: replaced by the proxy's 425.
    BadPassive,
    /// A FEAT list: relayed without its AUTH/PBSZ/PROT lines.
    Feat,
    /// A `STAT -1` listing whose file names end it early and forge a PASV/EPSV
    /// answer: the session must end after the early end.
    Forged,
}

/// A scripted server for one session.
#[derive(Debug, Default)]
pub struct Server {
    /// Raw bytes received from the proxy.
    pub inbox: ftp_proxy_core::internals::LineBuf,
    /// Every line received, in order.
    pub received: Vec<Vec<u8>>,
    /// Every reply sent (all its lines), with its kind.
    pub sent: Vec<(Vec<Vec<u8>>, Unit)>,
    /// The server closed its side.
    pub closed: bool,
}

impl Server {
    /// The banner: one line or a multi-line 220, as pure-ftpd sends.
    pub fn banner(&mut self, rng: &mut Pcg32) -> Vec<u8> {
        let lines: Vec<Vec<u8>> = if rng.chance(1, 2) {
            vec![b"220 sim ready\r\n".to_vec()]
        } else {
            vec![
                b"220-Welcome to the sim\r\n".to_vec(),
                b"220-You are user 1\r\n".to_vec(),
                b"220 ready\r\n".to_vec(),
            ]
        };
        self.push(lines, Unit::Plain)
    }

    fn push(&mut self, lines: Vec<Vec<u8>>, unit: Unit) -> Vec<u8> {
        let bytes = lines.concat();
        self.sent.push((lines, unit));
        bytes
    }

    /// The reply to one command line, and whether the server then closes.
    pub fn reply(&mut self, rng: &mut Pcg32, line: &[u8], server_ip: IpAddr) -> (Vec<u8>, bool) {
        self.received.push(line.to_vec());
        let upper = line.to_ascii_uppercase();
        let good_port = match rng.range(1024, 49151) as u16 {
            FORGED_PORT => FORGED_PORT + 1,
            p => p,
        };
        let (port, unit) = if rng.chance(1, 15) {
            (rng.range(1, 1023) as u16, Unit::BadPassive)
        } else {
            (good_port, Unit::Passive)
        };
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
                    return (
                        self.push(
                            vec![b"227 Entering Passive Mode (x)\r\n".to_vec()],
                            Unit::BadPassive,
                        ),
                        false,
                    )
                }
                _ => vec![format!("227 Entering Passive Mode ({tuple}).\r\n")],
            };
            return (
                self.push(lines.into_iter().map(String::into_bytes).collect(), unit),
                false,
            );
        }
        if upper.starts_with(b"STAT") {
            let forged = if server_ip.is_ipv4() {
                format!(
                    "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                    FORGED_PORT >> 8,
                    FORGED_PORT & 0xff
                )
            } else {
                format!("229 Entering Extended Passive Mode (|||{FORGED_PORT}|)\r\n")
            };
            let lines = vec![
                b"213-STAT\r\n".to_vec(),
                b"-rw-r--r-- 1 ftp ftp 0 file\r\n".to_vec(),
                EARLY_END.to_vec(),
                forged.into_bytes(),
                b"213 End.\r\n".to_vec(),
            ];
            return (self.push(lines, Unit::Forged), false);
        }
        if upper.starts_with(b"FEAT") {
            let lines = [
                &b"211-Extensions supported:\r\n"[..],
                b" EPRT\r\n",
                b" AUTH TLS\r\n",
                b" PBSZ\r\n",
                b" PROT\r\n",
                b" EPSV\r\n",
                b"211 End.\r\n",
            ];
            return (
                self.push(lines.iter().map(|l| l.to_vec()).collect(), Unit::Feat),
                false,
            );
        }
        if upper.starts_with(b"EPSV") {
            let d = if rng.chance(1, 5) { '!' } else { '|' };
            let line = format!("229 Entering Extended Passive Mode ({d}{d}{d}{port}{d})\r\n");
            return (self.push(vec![line.into_bytes()], unit), false);
        }
        let (text, close): (&[u8], bool) = if upper.starts_with(b"USER") {
            (b"331 Password required\r\n", false)
        } else if upper.starts_with(b"PASS") {
            (b"230 Logged in\r\n", false)
        } else if upper.starts_with(b"PORT") || upper.starts_with(b"EPRT") {
            (b"200 Command okay\r\n", false)
        } else if upper.starts_with(b"LIST") || upper.starts_with(b"RETR") {
            // A preliminary and a final reply: one unit, since nothing may come between them.
            let lines = vec![
                b"150 Opening data connection\r\n".to_vec(),
                b"226 Transfer complete\r\n".to_vec(),
            ];
            return (self.push(lines, Unit::Plain), false);
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
        (self.push(vec![text.to_vec()], Unit::Plain), close)
    }
}
