//! FTP command and reply recognition, port parsing and the proxy's own lines.
//!
//! Recognition follows the original (case-insensitive prefixes `PASV`, `PORT `,
//! `EPSV`, `EPRT `), judged after leading blanks and Telnet IAC sequences, which
//! servers skip too. Parsing is more tolerant than the original where RFCs allow
//! more (any RFC 2428 delimiter, the RFC 1123 `227 =h,h,h,h,p,p` form, blanks
//! around commas); every divergence is listed in docs/behavior.md.

// `pub` for the `internals` feature (the simulation's oracle); crate-private
// otherwise.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub, dead_code))]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A client line the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `PASV`.
    Pasv,
    /// `EPSV` (including `EPSV ALL`, whose 200 reply simply passes).
    Epsv,
    /// `PORT h1,h2,h3,h4,p1,p2`: the port, or `None` if it does not parse.
    Port(Option<u16>),
    /// `EPRT |af|addr|port|`: the port, or `None` if it does not parse.
    Eprt(Option<u16>),
    /// `USER ...`.
    User,
    /// `AUTH ...` (any mechanism): the proxy cannot carry a TLS control channel.
    Auth,
    /// `PBSZ ...`, part of RFC 4217 security only.
    Pbsz,
    /// `PROT ...`, part of RFC 4217 security only.
    Prot,
    /// `FEAT`: its reply is filtered so that clients do not offer `AUTH`.
    Feat,
    /// Anything else: forwarded untouched.
    Other,
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The line without its trailing CR/LF (and blanks before them).
fn trim_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    &line[..end]
}

/// Telnet `IAC` (RFC 854), which may prefix control-channel commands.
const IAC: u8 = 0xff;

/// The line from its command word on: leading blanks and Telnet IAC sequences
/// (`IAC cmd`, or `IAC WILL/WONT/DO/DONT option`) skipped, as servers that
/// tolerate them skip them before reading the command. Judging the line after
/// this is what keeps `-A` from being bypassed with ` USER bob`.
pub fn command_start(line: &[u8]) -> &[u8] {
    let mut s = line;
    loop {
        match s {
            [b' ' | b'\t', rest @ ..] => s = rest,
            [IAC, 251..=254, _, rest @ ..] => s = rest,
            [IAC, _, rest @ ..] => s = rest,
            _ => return s,
        }
    }
}

/// Whether the command word of `line` (up to a blank or the line end) is `word`.
fn word_is(line: &[u8], word: &[u8]) -> bool {
    let end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    line[..end].eq_ignore_ascii_case(word)
}

/// Classifies one client line (LF included), from its command word on
/// ([`command_start`]).
pub fn classify(line: &[u8]) -> Command {
    let line = command_start(line);
    if line.len() < 4 {
        return Command::Other;
    }
    if word_is(line, b"AUTH") {
        Command::Auth
    } else if word_is(line, b"PBSZ") {
        Command::Pbsz
    } else if word_is(line, b"PROT") {
        Command::Prot
    } else if word_is(line, b"FEAT") {
        Command::Feat
    } else if starts_with_ci(line, b"PASV") {
        Command::Pasv
    } else if starts_with_ci(line, b"PORT ") {
        Command::Port(parse_port_args(&line[5..]))
    } else if starts_with_ci(line, b"EPSV") {
        Command::Epsv
    } else if starts_with_ci(line, b"EPRT ") {
        Command::Eprt(parse_eprt_args(&line[5..]))
    } else if starts_with_ci(line, b"USER") {
        Command::User
    } else {
        Command::Other
    }
}

/// Whether a `USER` line names an anonymous user (`-A`): `USER ftp` or
/// `USER anonymous`, case-insensitively, with CRLF or a bare LF.
pub fn is_anonymous_user(line: &[u8]) -> bool {
    let body = command_start(line)
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    matches!(body, Some(b) if b.eq_ignore_ascii_case(b"USER ftp") || b.eq_ignore_ascii_case(b"USER anonymous"))
}

/// Whether a line is `EPSV ALL` (RFC 2428: from now on the client uses EPSV only,
/// and the server refuses PORT, EPRT and PASV).
pub fn is_epsv_all(line: &[u8]) -> bool {
    let s = command_start(line);
    if !word_is(s, b"EPSV") {
        return false;
    }
    let arg = trim_end(skip_blanks(&s[4..]));
    arg.eq_ignore_ascii_case(b"ALL")
}

/// Whether a multi-line reply to this client line may carry whole lines that the
/// client chose, so that a name can end the reply early for a line-by-line reader
/// (docs/behavior.md, "Replies out of step"): a listing on the control connection
/// (`STAT` with a path; pure-ftpd lists names bare), directory and login messages
/// that servers show from files a user may have uploaded (`CWD`, `CDUP`, `XCWD`,
/// `XCUP`, `SMNT`, `USER`, `PASS`, `ACCT`, `REIN`), and `SITE`, whose replies are
/// each server's own business. Other multi-line replies (transfer statistics, `FEAT`,
/// `HELP`, a bare `STAT`) are text the server makes; names appear in them only inside
/// a line, never as one.
pub fn may_carry_client_lines(line: &[u8]) -> bool {
    let s = command_start(line);
    if word_is(s, b"STAT") {
        return s[4.min(s.len())..]
            .iter()
            .any(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    }
    [
        &b"CWD"[..],
        b"CDUP",
        b"XCWD",
        b"XCUP",
        b"SMNT",
        b"USER",
        b"PASS",
        b"ACCT",
        b"REIN",
        b"SITE",
    ]
    .iter()
    .any(|w| word_is(s, w))
}

/// Whether a line carries a password, which the debug log must not show.
pub fn is_pass(line: &[u8]) -> bool {
    starts_with_ci(command_start(line), b"PASS")
}

/// Whether a line of a `FEAT` reply announces RFC 4217 security (`AUTH`, `PBSZ`,
/// `PROT`), which the proxy refuses: such lines are not relayed.
pub fn is_security_feature(line: &[u8]) -> bool {
    let s = command_start(line);
    [&b"AUTH"[..], b"PBSZ", b"PROT"]
        .iter()
        .any(|w| word_is(s, w))
}

/// Commands that move data over a data connection (RFC 959's RETR, STOR, STOU,
/// APPE, LIST, NLST; RFC 3659's MLSD). Their final reply (2xx, 4xx, 5xx, after
/// any 1xx) ends the transfer.
const TRANSFER_COMMANDS: [&[u8]; 7] = [
    b"RETR", b"STOR", b"STOU", b"APPE", b"LIST", b"NLST", b"MLSD",
];

/// Whether a client line is a data-transfer command (RETR, STOR, STOU, APPE, LIST,
/// NLST, MLSD), judged by its command word as [`classify`] judges the others.
pub fn is_transfer(line: &[u8]) -> bool {
    let s = command_start(line);
    TRANSFER_COMMANDS.iter().any(|w| word_is(s, w))
}

/// Parses a decimal number of at most `max` from the front of `s`, skipping leading
/// blanks. Returns the value and the rest.
fn number(s: &[u8], max: u32) -> Option<(u32, &[u8])> {
    let s = skip_blanks(s);
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 5 {
        return None;
    }
    let v = s[..digits]
        .iter()
        .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    (v <= max).then_some((v, &s[digits..]))
}

fn skip_blanks(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    &s[n..]
}

/// `h1,h2,h3,h4,p1,p2` at the front of `s` (blanks allowed around the commas):
/// the address and the port, and the rest.
fn six_tuple(s: &[u8]) -> Option<(Ipv4Addr, u16, &[u8])> {
    let mut v = [0u8; 6];
    let mut rest = s;
    for (i, slot) in v.iter_mut().enumerate() {
        if i > 0 {
            rest = skip_blanks(rest).strip_prefix(b",")?;
        }
        let (n, r) = number(rest, 255)?;
        *slot = n as u8;
        rest = r;
    }
    Some((
        Ipv4Addr::new(v[0], v[1], v[2], v[3]),
        u16::from(v[4]) << 8 | u16::from(v[5]),
        rest,
    ))
}

/// The arguments of `PORT`: exactly a six-tuple, then only blanks.
pub fn parse_port_args(args: &[u8]) -> Option<u16> {
    let (_, port, rest) = six_tuple(trim_end(args))?;
    rest.is_empty().then_some(port)
}

/// An RFC 2428 delimiter: printable ASCII 33 to 126, not a digit (which would be
/// ambiguous next to the port).
fn is_delimiter(d: u8) -> bool {
    (33..=126).contains(&d) && !d.is_ascii_digit()
}

/// The arguments of `EPRT`: `<d>af<d>addr<d>port<d>` with any delimiter from ASCII
/// 33 to 126 (RFC 2428). The address must be valid for its family but is otherwise
/// ignored; only the port is returned.
pub fn parse_eprt_args(args: &[u8]) -> Option<u16> {
    let s = trim_end(skip_blanks(args));
    let (&d, s) = s.split_first()?;
    if !is_delimiter(d) {
        return None;
    }
    let mut fields = s.split(|&b| b == d);
    let af = fields.next()?;
    let addr = std::str::from_utf8(fields.next()?).ok()?;
    let port = fields.next()?;
    if fields.next() != Some(b"") || fields.next().is_some() {
        return None;
    }
    match af {
        b"1" => addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        b"2" => addr
            .split('%')
            .next()?
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => None,
    }?;
    let (p, rest) = number(port, 65535)?;
    rest.is_empty().then_some(p as u16)
}

/// The port in a `227` reply: the first `h1,h2,h3,h4,p1,p2` after the code, in
/// parentheses, after `=` (RFC 1123) or bare.
pub fn parse_227(line: &[u8]) -> Option<u16> {
    let text = line.get(4..)?;
    (0..text.len())
        .filter(|&i| text[i].is_ascii_digit() && (i == 0 || !text[i - 1].is_ascii_digit()))
        .find_map(|i| six_tuple(&text[i..]).map(|(_, port, _)| port))
}

/// The port in a `229` reply: `(<d><d><d>port<d>)` with any RFC 2428 delimiter.
pub fn parse_229(line: &[u8]) -> Option<u16> {
    let text = line.get(4..)?;
    let open = text.iter().position(|&b| b == b'(')?;
    let s = &text[open + 1..];
    let &d = s.first()?;
    if !is_delimiter(d) {
        return None;
    }
    let s = s.strip_prefix(&[d, d, d][..])?;
    let (p, rest) = number(s, 65535)?;
    rest.strip_prefix(&[d, b')'][..])?;
    Some(p as u16)
}

/// A reply line's code and whether it opens a multi-line reply (`ddd-`).
pub fn reply_code(line: &[u8]) -> Option<(u16, bool)> {
    if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |v, d| v * 10 + u16::from(d - b'0'));
    match line[3] {
        b'-' => Some((code, true)),
        b' ' | b'\r' | b'\n' => Some((code, false)),
        _ => None,
    }
}

/// `PORT a,b,c,d,p1,p2\r\n` advertising the proxy.
pub fn format_port(addr: Ipv4Addr, port: u16) -> String {
    let [a, b, c, d] = addr.octets();
    format!("PORT {a},{b},{c},{d},{},{}\r\n", port >> 8, port & 0xff)
}

/// `EPRT |1|a.b.c.d|port|\r\n` or `EPRT |2|ipv6|port|\r\n` advertising the proxy.
pub fn format_eprt(addr: IpAddr, port: u16) -> String {
    let af = if addr.is_ipv4() { 1 } else { 2 };
    format!("EPRT |{af}|{addr}|{port}|\r\n")
}

/// The 227 reply that sends the client to the original server's address.
pub fn format_227(addr: Ipv4Addr, port: u16) -> String {
    let [a, b, c, d] = addr.octets();
    format!(
        "227 Entering Passive Mode ({a},{b},{c},{d},{},{})\r\n",
        port >> 8,
        port & 0xff
    )
}

/// The 229 reply with the proxy port.
pub fn format_229(port: u16) -> String {
    format!("229 Entering Extended Passive Mode (|||{port}|)\r\n")
}

/// Escapes control bytes the way `strnvis(VIS_CSTYLE|VIS_NL)` does in `-d` logs, so
/// `\r\n` reads as the four characters `\r\n`.
pub fn escape(line: &[u8]) -> String {
    let mut s = String::with_capacity(line.len() + 4);
    for &b in line {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_commands_case_insensitively() {
        assert_eq!(classify(b"pasv\r\n"), Command::Pasv);
        assert_eq!(classify(b"PASVX\r\n"), Command::Pasv);
        assert_eq!(classify(b"EPSV ALL\r\n"), Command::Epsv);
        assert_eq!(
            classify(b"port 10,0,0,5,4,1\r\n"),
            Command::Port(Some(1025))
        );
        assert_eq!(classify(b"PORT\r\n"), Command::Other);
        assert_eq!(classify(b"EPRTX\r\n"), Command::Other);
        assert_eq!(
            classify(b"eprt |1|1.2.3.4|5000|\r\n"),
            Command::Eprt(Some(5000))
        );
        assert_eq!(classify(b"PWD\r\n"), Command::Other);
        assert_eq!(classify(b"Pa\n"), Command::Other);
    }

    #[test]
    fn port_grammar() {
        assert_eq!(parse_port_args(b"10,0,0,5,3,255\r\n"), Some(1023));
        assert_eq!(parse_port_args(b"10,0,0,5,255,255\r\n"), Some(65535));
        assert_eq!(parse_port_args(b" 10, 0, 0, 5, 4, 1 \r\n"), Some(1025));
        assert_eq!(parse_port_args(b"10,0,0,5,256,1\r\n"), None);
        assert_eq!(parse_port_args(b"10,0,0,5,4\r\n"), None);
        assert_eq!(parse_port_args(b"10,0,0,5,4,1,7\r\n"), None);
        assert_eq!(parse_port_args(b"10,0,0,5,4,1x\r\n"), None);
        assert_eq!(parse_port_args(b"a,b,c,d,e,f\r\n"), None);
        assert_eq!(parse_port_args(b"\r\n"), None);
        assert_eq!(parse_port_args(b"99999999,0,0,0,0,0\r\n"), None);
    }

    #[test]
    fn eprt_grammar_any_delimiter() {
        assert_eq!(parse_eprt_args(b"|1|1.2.3.4|5000|\r\n"), Some(5000));
        assert_eq!(parse_eprt_args(b"|2|::1|5000|\r\n"), Some(5000));
        assert_eq!(parse_eprt_args(b"!1!1.2.3.4!5000!\r\n"), Some(5000));
        assert_eq!(parse_eprt_args(b"|2|fe80::1%eth0|5000|\r\n"), Some(5000));
        assert_eq!(parse_eprt_args(b"|2|::ffff:1.2.3.4|5000|\r\n"), Some(5000));
        assert_eq!(parse_eprt_args(b"|3|1.2.3.4|5000|\r\n"), None);
        assert_eq!(parse_eprt_args(b"|1|1.2.3|5000|\r\n"), None);
        assert_eq!(parse_eprt_args(b"|1|1.2.3.4|70000|\r\n"), None);
        assert_eq!(parse_eprt_args(b"|1|1.2.3.4|5000\r\n"), None);
        assert_eq!(parse_eprt_args(b"|1|1.2.3.4|5000|x\r\n"), None);
        assert_eq!(parse_eprt_args(b"1|1|1.2.3.4|5000|\r\n"), None);
    }

    #[test]
    fn passive_replies() {
        assert_eq!(
            parse_227(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n"),
            Some(19 * 256 + 137)
        );
        assert_eq!(parse_227(b"227 =10,0,0,1,4,1\r\n"), Some(1025));
        assert_eq!(
            parse_227(b"227 Entering Passive Mode 10,0,0,1,4,1\r\n"),
            Some(1025)
        );
        assert_eq!(
            parse_227(b"227 Entering Passive Mode (10, 0, 0, 1, 4, 1)\r\n"),
            Some(1025)
        );
        assert_eq!(parse_227(b"227 Entering Passive Mode\r\n"), None);
        assert_eq!(parse_227(b"227 (300,0,0,1,4,1)\r\n"), None);
        assert_eq!(
            parse_229(b"229 Entering Extended Passive Mode (|||5001|)\r\n"),
            Some(5001)
        );
        assert_eq!(parse_229(b"229 ok (!!!5001!)\r\n"), Some(5001));
        assert_eq!(parse_229(b"229 ok (|||5001!)\r\n"), None);
        assert_eq!(parse_229(b"229 ok (|||70000|)\r\n"), None);
        assert_eq!(parse_229(b"229 ok\r\n"), None);
    }

    #[test]
    fn reply_codes() {
        assert_eq!(reply_code(b"227 ok\r\n"), Some((227, false)));
        assert_eq!(reply_code(b"220-hello\r\n"), Some((220, true)));
        assert_eq!(reply_code(b"226\r\n"), Some((226, false)));
        assert_eq!(reply_code(b" 220 x\r\n"), None);
        assert_eq!(reply_code(b"22x x\r\n"), None);
    }

    #[test]
    fn formats_match_the_original() {
        assert_eq!(
            format_port(Ipv4Addr::new(192, 0, 2, 1), 50000),
            "PORT 192,0,2,1,195,80\r\n"
        );
        assert_eq!(
            format_eprt("192.0.2.1".parse().unwrap(), 50000),
            "EPRT |1|192.0.2.1|50000|\r\n"
        );
        assert_eq!(
            format_eprt("2001:db8::1".parse().unwrap(), 50000),
            "EPRT |2|2001:db8::1|50000|\r\n"
        );
        assert_eq!(
            format_227(Ipv4Addr::new(198, 51, 100, 10), 50447),
            "227 Entering Passive Mode (198,51,100,10,197,15)\r\n"
        );
        assert_eq!(
            format_229(50447),
            "229 Entering Extended Passive Mode (|||50447|)\r\n"
        );
    }

    #[test]
    fn format_parse_round_trip() {
        for port in [1024u16, 4097, 49152, 65534, 65535] {
            let l = format_port(Ipv4Addr::new(10, 1, 2, 3), port);
            assert_eq!(classify(l.as_bytes()), Command::Port(Some(port)));
            let l = format_eprt("::1".parse().unwrap(), port);
            assert_eq!(classify(l.as_bytes()), Command::Eprt(Some(port)));
            assert_eq!(
                parse_227(format_227(Ipv4Addr::LOCALHOST, port).as_bytes()),
                Some(port)
            );
            assert_eq!(parse_229(format_229(port).as_bytes()), Some(port));
        }
    }

    #[test]
    fn leading_blanks_and_telnet_commands_are_skipped() {
        assert_eq!(classify(b" USER bob\r\n"), Command::User);
        assert_eq!(classify(b"\t\tUSER bob\r\n"), Command::User);
        assert_eq!(classify(b"\xff\xf4\xff\xf2USER bob\r\n"), Command::User);
        assert_eq!(classify(b"\xff\xfb\x01USER bob\r\n"), Command::User);
        assert_eq!(classify(b"\xff\xf4\xff\xf2ABOR\r\n"), Command::Other);
        assert_eq!(classify(b"  PASV\r\n"), Command::Pasv);
        assert!(is_anonymous_user(b" USER ftp\r\n"));
        assert!(is_anonymous_user(b"\xff\xf1USER anonymous\r\n"));
        assert!(!is_anonymous_user(b"\xff\xf1USER bob\r\n"));
        assert!(is_pass(b" PASS x\r\n"));
    }

    #[test]
    fn security_commands_and_feat_lines() {
        for l in [
            &b"AUTH TLS\r\n"[..],
            b"auth ssl\r\n",
            b"AUTH TLS-C\r\n",
            b"AUTH\r\n",
        ] {
            assert_eq!(classify(l), Command::Auth);
        }
        assert_eq!(classify(b"PBSZ 0\r\n"), Command::Pbsz);
        assert_eq!(classify(b"prot P\r\n"), Command::Prot);
        assert_eq!(classify(b"FEAT\r\n"), Command::Feat);
        assert_eq!(classify(b"AUTHX\r\n"), Command::Other);
        assert!(is_security_feature(b" AUTH TLS\r\n"));
        assert!(is_security_feature(b" PBSZ\r\n"));
        assert!(is_security_feature(b" PROT\r\n"));
        assert!(!is_security_feature(b" EPSV\r\n"));
        assert!(!is_security_feature(b" AUTHORS\r\n"));
    }

    #[test]
    fn transfer_commands_by_their_word() {
        for l in [
            &b"RETR a\r\n"[..],
            b"stor a\r\n",
            b"STOU\r\n",
            b"APPE a b\r\n",
            b"LIST\r\n",
            b"LIST -la\n",
            b"NLST\r\n",
            b" MLSD dir\r\n",
            b"\xff\xf4\xff\xf2RETR a\r\n",
        ] {
            assert!(is_transfer(l), "{}", escape(l));
        }
        for l in [
            &b"RETRX a\r\n"[..],
            b"MLST a\r\n",
            b"STAT\r\n",
            b"REST 100\r\n",
            b"SIZE a\r\n",
            b"RET\r\n",
            b"\r\n",
        ] {
            assert!(!is_transfer(l), "{}", escape(l));
        }
    }

    #[test]
    fn anonymous_check() {
        assert!(is_anonymous_user(b"USER ftp\r\n"));
        assert!(is_anonymous_user(b"user ANONYMOUS\r\n"));
        assert!(is_anonymous_user(b"USER ftp\n"));
        assert!(!is_anonymous_user(b"USER ftp \r\n"));
        assert!(!is_anonymous_user(b"USER ftp@host\r\n"));
        assert!(!is_anonymous_user(b"USER bob\r\n"));
    }

    #[test]
    fn escapes_like_vis() {
        assert_eq!(escape(b"USER a\r\n"), "USER a\\r\\n");
        assert_eq!(escape(b"\x01\xff"), "\\001\\377");
    }
}
