//! `--nat64-prefix` in a session: a diverted IPv6 destination inside the prefix is
//! served by the IPv4 server it embeds, translated as a cross-family `-R` session;
//! one outside it is served as it is; and the start-up checks.

mod support;

use std::time::Instant;

use ftp_proxy_core::{
    Accept, Action, Config, ConfigError, DataPathError, Input, Proxy, ServerDataMode, Side,
    WELL_KNOWN_NAT64_PREFIX,
};
use support::*;

fn nat64() -> Config {
    Config {
        ipv6: true,
        relay: true,
        nat64_prefix: Some(WELL_KNOWN_NAT64_PREFIX),
        ..Config::default()
    }
}

/// Accepts `client` diverted from `orig_dst` and returns the session with the
/// server it was told to connect to, after the banner went through.
fn diverted(cfg: Config, rng: &[u32], orig_dst: &str, proxy: &str) -> (H, std::net::SocketAddr) {
    let mut p = Proxy::new(cfg, Box::new(Script(rng.iter().copied().collect()))).unwrap();
    let now = Instant::now();
    let id = p
        .accept(
            now,
            Accept::new(addr("[2001:db8:1::2]:40000"), addr(orig_dst)),
        )
        .unwrap();
    let mut h = H { p, now, id };
    let to = match h.drain()[..] {
        [Action::ConnectServer { to, bind: None }] => to,
        ref a => panic!("{a:?}"),
    };
    h.input(Input::ServerSocketOpened { proxy: addr(proxy) });
    h.input(Input::ServerConnected);
    assert_eq!(
        h.server(b"220 ready\r\n"),
        vec![send(Side::Client, b"220 ready\r\n")]
    );
    (h, to)
}

#[test]
fn a_destination_inside_the_prefix_is_its_ipv4_server_translated() {
    let (mut h, to) = diverted(
        nat64(),
        &[3, 4],
        "[64:ff9b::c633:6402]:21",
        "198.51.100.1:50000",
    );
    assert_eq!(
        to,
        addr("198.51.100.2:21"),
        "the embedded address, port kept"
    );
    // EPSV passes as EPSV to the IPv4 server (RFC 6384); the client's leg is
    // IPv6 to the address it reached, the server's IPv4.
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    let (txn, rules) = commit(&h.server(b"229 Entering Extended Passive Mode (|||30028|)\r\n"));
    assert_eq!(
        rules,
        [
            "pass in quick inet6 proto tcp from 2001:db8:1::2 to 64:ff9b::c633:6402 port 49155 flags S/SA keep state (max 1) rdr-to 198.51.100.2 port 30028",
            "pass out quick inet6 proto tcp from 2001:db8:1::2 to 198.51.100.2 port 30028 flags S/SA keep state (max 1) nat-to 198.51.100.1 port 50001:65535",
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            b"229 Entering Extended Passive Mode (|||49155|)\r\n"
        )]
    );
    // EPRT |2| becomes EPRT |1| with the proxy's IPv4 address.
    let (txn, rules) = commit(&h.client(b"EPRT |2|2001:db8:1::2|5000|\r\n"));
    assert!(
        rules[0].ends_with("rdr-to 2001:db8:1::2 port 5000"),
        "{rules:?}"
    );
    assert!(
        rules[1].contains("from 64:ff9b::c633:6402")
            || rules[1].contains("nat-to 64:ff9b::c633:6402"),
        "the client's leg comes from the address it reached: {rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"EPRT |1|198.51.100.1|49156|\r\n")]
    );
    // EPSV ALL is the proxy's to answer on a translated session.
    h.server(b"200 ok\r\n");
    assert_eq!(
        h.client(b"EPSV ALL\r\n"),
        vec![send(Side::Client, b"200 EPSV ALL command successful\r\n")]
    );
}

#[test]
fn an_ipv4_server_that_refuses_epsv_is_asked_pasv() {
    let (mut h, _) = diverted(
        nat64(),
        &[7],
        "[64:ff9b::c633:6402]:21",
        "198.51.100.1:50000",
    );
    h.client(b"EPSV\r\n");
    assert_eq!(
        h.server(b"500 EPSV not understood\r\n"),
        vec![send(Side::Server, b"PASV\r\n")]
    );
    let (txn, rules) = commit(&h.server(b"227 Entering Passive Mode (198,51,100,2,117,76)\r\n"));
    assert!(
        rules[0].ends_with("rdr-to 198.51.100.2 port 30028"),
        "{rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            b"229 Entering Extended Passive Mode (|||49159|)\r\n"
        )]
    );
}

#[test]
fn a_destination_outside_the_prefix_is_served_as_it_is() {
    let (mut h, to) = diverted(nat64(), &[3], "[2001:db8:2::2]:21", "[2001:db8:2::1]:50000");
    assert_eq!(to, addr("[2001:db8:2::2]:21"));
    // Untranslated IPv6: EPSV to the server, rules of one family.
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    let (_, rules) = commit(&h.server(b"229 Entering Extended Passive Mode (|||30028|)\r\n"));
    assert!(
        rules[0].ends_with("rdr-to 2001:db8:2::2 port 30028"),
        "{rules:?}"
    );
    // EPSV ALL is passed on: the session is not translated.
    h.ack(1, Ok(()));
    assert_eq!(
        h.client(b"EPSV ALL\r\n"),
        vec![send(Side::Server, b"EPSV ALL\r\n")]
    );
}

#[test]
fn start_up_refuses_nat64_without_the_relay_or_beside_a_fixed_server() {
    assert_eq!(nat64().validate(), Ok(()));
    assert_eq!(
        Config {
            relay: false,
            ..nat64()
        }
        .validate(),
        Err(ConfigError::DataPath(DataPathError::Nat64NeedsRelay))
    );
    assert!(Config {
        relay: false,
        ..nat64()
    }
    .validate()
    .unwrap_err()
    .to_string()
    .contains("use --backend relay"));
    for c in [
        Config {
            fixed_server: Some(addr("198.51.100.2:21")),
            ..nat64()
        },
        Config {
            source_addr: Some("198.51.100.1".parse().unwrap()),
            ..nat64()
        },
    ] {
        assert!(matches!(c.validate(), Err(ConfigError::Nat64(_))), "{c:?}");
    }
    // A server data mode of its own still works with it.
    assert_eq!(
        Config {
            server_data_mode: ServerDataMode::Passive,
            ..nat64()
        }
        .validate(),
        Ok(())
    );
}
