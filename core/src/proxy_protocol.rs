//! The PROXY protocol header (HAProxy's "PROXY protocol" specification, versions
//! 1 and 2): how a load balancer in front of the proxy tells it the client's real
//! address, and how the proxy tells a server behind it.
//!
//! [`parse`] reads the header at the start of a control connection
//! (`--proxy-protocol-in`); [`encode_v1`] and [`encode_v2`] write one
//! (`--proxy-protocol-out`). Pure: bytes in, a header and a length out.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The twelve bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's 107).
pub const V1_MAX: usize = 107;
/// The longest version 2 header accepted: 16 bytes of fixed part and up to 520
/// of addresses and TLVs (a balancer's TLVs are skipped, not read).
pub const V2_MAX: usize = 16 + 520;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection was proxied for a client: its source and its destination.
    Proxied {
        /// The client.
        src: SocketAddr,
        /// The address the client connected to.
        dst: SocketAddr,
    },
    /// `LOCAL` (v2) or `UNKNOWN` (v1): the balancer's own connection (a health
    /// check) or a family it does not describe; use the socket's addresses.
    Local,
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Neither signature at the start.
    NoHeader,
    /// A version 1 line that is malformed (with what is wrong).
    BadV1(&'static str),
    /// A version 2 header that is malformed (with what is wrong).
    BadV2(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoHeader => f.write_str("no PROXY protocol header"),
            ParseError::BadV1(w) => write!(f, "bad PROXY protocol v1 header: {w}"),
            ParseError::BadV2(w) => write!(f, "bad PROXY protocol v2 header: {w}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((header, len)))` with the header's length (the FTP stream begins after
/// it), or the refusal.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ParseError::NoHeader)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX || window.contains(&b'\n') {
            Err(ParseError::BadV1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ParseError::BadV1("not ASCII"))?;
    let len = end + 2;
    let mut words = line.split(' ');
    let proto = words.next().unwrap_or("");
    if proto == "UNKNOWN" {
        return Ok(Some((Header::Local, len)));
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ParseError::BadV1("protocol not TCP4, TCP6 or UNKNOWN")),
    };
    let fields: Vec<&str> = words.collect();
    let [s, d, sp, dp] = fields[..] else {
        return Err(ParseError::BadV1("not four fields after the protocol"));
    };
    let ip = |x: &str| -> Result<IpAddr, ParseError> {
        let ip: IpAddr = x.parse().map_err(|_| ParseError::BadV1("bad address"))?;
        if ip.is_ipv6() != v6 {
            return Err(ParseError::BadV1("address of the other family"));
        }
        Ok(ip)
    };
    let port = |x: &str| -> Result<u16, ParseError> {
        let ok = !x.is_empty() && x.len() <= 5 && x.bytes().all(|b| b.is_ascii_digit());
        let ok = ok && !(x.len() > 1 && x.starts_with('0'));
        x.parse()
            .ok()
            .filter(|_| ok)
            .ok_or(ParseError::BadV1("bad port"))
    };
    let src = SocketAddr::new(ip(s)?, port(sp)?);
    let dst = SocketAddr::new(ip(d)?, port(dp)?);
    Ok(Some((Header::Proxied { src, dst }, len)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::BadV2("version not 2"));
    }
    let body_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + body_len > V2_MAX {
        return Err(ParseError::BadV2("longer than 536 bytes"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ParseError::BadV2("command not LOCAL or PROXY")),
    };
    if buf.len() < 16 + body_len {
        return Ok(None);
    }
    let len = 16 + body_len;
    let body = &buf[16..len];
    if local {
        return Ok(Some((Header::Local, len)));
    }
    let header = match buf[13] {
        // TCP over IPv4.
        0x11 => {
            if body.len() < 12 {
                return Err(ParseError::BadV2("IPv4 addresses truncated"));
            }
            let a = |i: usize| IpAddr::from([body[i], body[i + 1], body[i + 2], body[i + 3]]);
            let p = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            Header::Proxied {
                src: SocketAddr::new(a(0), p(8)),
                dst: SocketAddr::new(a(4), p(10)),
            }
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(ParseError::BadV2("IPv6 addresses truncated"));
            }
            let a = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[i..i + 16]);
                IpAddr::from(o)
            };
            let p = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            Header::Proxied {
                src: SocketAddr::new(a(0), p(32)),
                dst: SocketAddr::new(a(16), p(34)),
            }
        }
        // UNSPEC: the receiver must ignore the addresses.
        0x00 => Header::Local,
        _ => {
            return Err(ParseError::BadV2(
                "family/transport not TCP4, TCP6 or UNSPEC",
            ))
        }
    };
    Ok(Some((header, len)))
}

/// The version 1 line for a connection from `src` to `dst` (`UNKNOWN` when their
/// families differ).
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let line = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            format!("PROXY TCP6 {s} {d} {} {}\r\n", src.port(), dst.port())
        }
        _ => "PROXY UNKNOWN\r\n".to_owned(),
    };
    line.into_bytes()
}

/// The version 2 header (command PROXY, no TLVs) for a connection from `src` to
/// `dst` (command LOCAL when their families differ).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => {
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            return out;
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trip_and_rest() {
        for (s, d) in [
            ("198.51.100.7:40000", "203.0.113.1:21"),
            ("[2001:db8::7]:5", "[2001:db8::1]:21"),
        ] {
            let mut bytes = encode_v1(sa(s), sa(d));
            let n = bytes.len();
            bytes.extend_from_slice(b"USER ftp\r\n");
            let (h, len) = parse(&bytes).unwrap().unwrap();
            assert_eq!(len, n);
            assert_eq!(
                h,
                Header::Proxied {
                    src: sa(s),
                    dst: sa(d)
                }
            );
        }
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Header::Local, 15))));
        assert_eq!(
            parse(b"PROXY UNKNOWN ff:: ::1 1 2\r\n").unwrap().unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::BadV1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
        assert_eq!(parse(b"USER ftp\r\n"), Err(ParseError::NoHeader));
        assert_eq!(parse(b"PROX"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None));
    }

    #[test]
    fn v2_round_trip_incremental() {
        for (s, d) in [
            ("198.51.100.7:40000", "203.0.113.1:21"),
            ("[2001:db8::7]:5", "[2001:db8::1]:21"),
        ] {
            let bytes = encode_v2(sa(s), sa(d));
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "cut {cut}");
            }
            let (h, len) = parse(&bytes).unwrap().unwrap();
            assert_eq!(
                (h, len),
                (
                    Header::Proxied {
                        src: sa(s),
                        dst: sa(d)
                    },
                    bytes.len()
                )
            );
        }
    }

    #[test]
    fn v2_tlvs_local_and_refusals() {
        // PROXY over IPv4 with 3 bytes of TLV after the addresses: skipped.
        let mut b = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        b[15] = 15;
        b.extend_from_slice(&[0x04, 0, 0]);
        b.extend_from_slice(b"USER");
        assert_eq!(parse(&b).unwrap().unwrap().1, 31);
        let local = encode_v2(sa("1.2.3.4:1"), sa("[::1]:2"));
        assert_eq!(parse(&local), Ok(Some((Header::Local, 16))));
        let mut v1 = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        v1[12] = 0x11;
        assert!(matches!(parse(&v1), Err(ParseError::BadV2(_))));
        let mut cmd = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        cmd[12] = 0x22;
        assert!(matches!(parse(&cmd), Err(ParseError::BadV2(_))));
        let mut short = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        short[15] = 4;
        short.truncate(20);
        assert!(matches!(parse(&short), Err(ParseError::BadV2(_))));
        let mut udp = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
        udp[13] = 0x12;
        assert!(matches!(parse(&udp), Err(ParseError::BadV2(_))));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Err(ParseError::BadV2(_))));
    }
}
