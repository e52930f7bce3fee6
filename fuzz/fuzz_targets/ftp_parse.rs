//! Command and reply parsing (`core/src/ftp.rs`): no input panics, recognition
//! agrees with the argument parsers, every line the proxy formats parses back to
//! the port it carries, and the log escaping leaves no control byte.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ftp_proxy_core::internals::ftp::{self, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    // Arbitrary bytes through every parser. Commands are recognised from their
    // command word on, after leading blanks and Telnet IAC sequences.
    let word = ftp::command_start(line);
    assert!(line.ends_with(word));
    match ftp::classify(line) {
        Command::Port(p) => {
            assert!(word[..5].eq_ignore_ascii_case(b"PORT "));
            assert_eq!(p, ftp::parse_port_args(&word[5..]));
        }
        Command::Eprt(p) => {
            assert!(word[..5].eq_ignore_ascii_case(b"EPRT "));
            assert_eq!(p, ftp::parse_eprt_args(&word[5..]));
        }
        Command::Pasv => assert!(word[..4].eq_ignore_ascii_case(b"PASV")),
        Command::Epsv => assert!(word[..4].eq_ignore_ascii_case(b"EPSV")),
        Command::User => assert!(word[..4].eq_ignore_ascii_case(b"USER")),
        Command::Auth => assert!(word[..4].eq_ignore_ascii_case(b"AUTH")),
        Command::Pbsz => assert!(word[..4].eq_ignore_ascii_case(b"PBSZ")),
        Command::Prot => assert!(word[..4].eq_ignore_ascii_case(b"PROT")),
        Command::Feat => assert!(word[..4].eq_ignore_ascii_case(b"FEAT")),
        Command::Other => {}
    }
    if ftp::is_anonymous_user(line) {
        assert_eq!(ftp::classify(line), Command::User);
    }
    let _ = ftp::is_pass(line);
    let _ = ftp::parse_227(line);
    let _ = ftp::parse_229(line);
    if let Some((code, _)) = ftp::reply_code(line) {
        assert!(code < 1000);
        assert!(line[..3].iter().all(u8::is_ascii_digit));
    }
    let escaped = ftp::escape(line);
    assert!(
        escaped.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{escaped:?}"
    );

    // The proxy's own lines parse back (addresses and port taken from the input).
    if line.len() >= 22 {
        let v4 = Ipv4Addr::new(line[0], line[1], line[2], line[3]);
        let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&line[4..20]).expect("16 bytes"));
        let port = u16::from_be_bytes([line[20], line[21]]);
        let port_line = ftp::format_port(v4, port);
        assert_eq!(
            ftp::classify(port_line.as_bytes()),
            Command::Port(Some(port))
        );
        for addr in [IpAddr::V4(v4), IpAddr::V6(v6)] {
            let eprt = ftp::format_eprt(addr, port);
            assert_eq!(
                ftp::classify(eprt.as_bytes()),
                Command::Eprt(Some(port)),
                "{eprt}"
            );
        }
        let r227 = ftp::format_227(v4, port);
        assert_eq!(ftp::parse_227(r227.as_bytes()), Some(port));
        assert_eq!(ftp::reply_code(r227.as_bytes()), Some((227, false)));
        let r229 = ftp::format_229(port);
        assert_eq!(ftp::parse_229(r229.as_bytes()), Some(port));
        assert_eq!(ftp::reply_code(r229.as_bytes()), Some((229, false)));
    }
});
