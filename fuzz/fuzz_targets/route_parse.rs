//! Issue 18's pure parsers: the PROXY protocol header (`core/src/proxy_protocol.rs`),
//! `USER name@host[:port]`, `--allow-dest` and `--route-file` (`core/src/route/`). No input panics;
//! a header's length stays within the input and re-reads the same from exactly
//! those bytes; a proxied header re-encodes to one that parses back the same; a
//! parsed target prints back to an argument that parses to itself.

#![no_main]

use ftp_proxy_core::proxy_protocol::{self, Header};
use ftp_proxy_core::{parse_user_target, AllowDest, DestPolicy, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, len))) = proxy_protocol::parse(data) {
        assert!(len <= data.len());
        assert_eq!(proxy_protocol::parse(&data[..len]), Ok(Some((header, len))));
        if let Header::Proxied { src, dst } = header {
            for enc in [
                proxy_protocol::encode_v1(src, dst),
                proxy_protocol::encode_v2(src, dst),
            ] {
                let (again, n) = proxy_protocol::parse(&enc).unwrap().unwrap();
                assert_eq!((again, n), (header, enc.len()));
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = parse_user_target(s) {
            let printed = format!("{}@{}:{}", t.user, t.host, t.port);
            assert_eq!(parse_user_target(&printed), Ok(t.clone()));
        }
        if let Ok(a) = AllowDest::parse(s) {
            let policy = DestPolicy {
                allow: vec![a.clone()],
                own: Vec::new(),
            };
            let _ = policy.check(std::net::SocketAddr::new(a.net.addr, 21));
        }
        if let Ok(t) = RouteTable::parse("fuzz", s) {
            assert!(t.len() <= s.lines().count());
            let _ = t.lookup(s.lines().next().unwrap_or(""));
        }
    }
});
