//! Issue 17 wired into the session: one transcript per pairing of the client's
//! data command (PASV, EPSV, PORT, EPRT), the server data mode and the families,
//! and the tolerance of servers that answer EPSV or PASV in the other form.

mod support;

use ftp_proxy_core::{Config, ConfigError, DataPathError, ServerDataMode, Side};
use support::*;

/// Proxy port of rng value `v`.
fn pp(v: u16) -> u16 {
    49152 + v
}

fn cfg(mode: ServerDataMode) -> Config {
    Config {
        relay: true,
        server_data_mode: mode,
        ..Config::default()
    }
}

/// Reverse mode from an IPv6 client on ::1 to an IPv4 server on 127.0.0.1.
fn v6_to_v4(mode: ServerDataMode, rng: &[u32]) -> H {
    let c = Config {
        ipv6: true,
        fixed_server: Some(addr("127.0.0.1:2121")),
        ..cfg(mode)
    };
    H::with_addrs(c, rng, "[::1]:40000", "[::1]:8021", "127.0.0.1:50000")
}

/// Reverse mode from an IPv4 client on 127.0.0.1 to an IPv6 server on ::1.
fn v4_to_v6(mode: ServerDataMode, rng: &[u32]) -> H {
    let c = Config {
        fixed_server: Some(addr("[::1]:2121")),
        ..cfg(mode)
    };
    H::with_addrs(c, rng, "127.0.0.1:40000", "127.0.0.1:8021", "[::1]:50000")
}

/// Every port a rule names (its destination and its translation's) is from 1024
/// up, and every address is one of the session's.
fn confined(rules: &[String], addrs: &[&str]) {
    for r in rules {
        for w in r.split(' ').collect::<Vec<_>>().windows(2) {
            if w[0] == "port" {
                let low: u16 = w[1].split(':').next().unwrap().parse().unwrap();
                assert!(low >= 1024, "{r}");
            }
            if matches!(
                w[0],
                "from" | "to" | "rdr-to" | "nat-to" | "join-with" | "bridge-with"
            ) {
                assert!(addrs.contains(&w[1]), "{} in {r}", w[1]);
            }
        }
    }
}

const V4_ADDRS: &[&str] = &["203.0.113.10", "198.51.100.10", "198.51.100.1"];

#[test]
fn epsv_refused_is_retried_as_pasv_answered_229_and_remembered() {
    for refusal in [
        &b"500 EPSV not understood\r\n"[..],
        b"502 Command not implemented\r\n",
        b"522 Network protocol not supported, use (1)\r\n",
    ] {
        let mut h = H::new(Config::default(), &[7, 8]);
        assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
        assert_eq!(
            h.server(refusal),
            vec![send(Side::Server, b"PASV\r\n")],
            "the refusal goes no further"
        );
        let a = h.server(b"227 Entering Passive Mode (198,51,100,10,117,76)\r\n");
        let (txn, rules) = commit(&a);
        assert!(
            rules[0].ends_with("rdr-to 198.51.100.10 port 30028"),
            "{rules:?}"
        );
        assert_eq!(
            h.ack(txn, Ok(())),
            vec![send(
                Side::Client,
                format!("229 Entering Extended Passive Mode (|||{}|)\r\n", pp(7)).as_bytes()
            )]
        );
        // Remembered: the next EPSV goes as PASV at once.
        assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"PASV\r\n")]);
        let (txn, _) = commit(&h.server(b"227 ok (198,51,100,10,117,77)\r\n"));
        assert_eq!(
            h.ack(txn, Ok(())),
            vec![send(
                Side::Client,
                format!("229 Entering Extended Passive Mode (|||{}|)\r\n", pp(8)).as_bytes()
            )]
        );
    }
}

#[test]
fn a_refused_pasv_retry_is_the_clients_answer_and_a_late_line_is_out_of_step() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"EPSV\r\n");
    assert_eq!(
        h.server(b"522 use (1)\r\n"),
        vec![send(Side::Server, b"PASV\r\n")]
    );
    assert_eq!(
        h.server(b"425 no\r\n"),
        vec![send(Side::Client, b"425 no\r\n")]
    );
    // Bytes buffered behind the refusal were sent before the server saw the PASV.
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"EPSV\r\n");
    let a = h.server(b"522 use (1)\r\n227 forged (198,51,100,10,4,1)\r\n");
    assert_eq!(a[0], send(Side::Server, b"PASV\r\n"));
    assert!(
        a.iter().all(
            |x| !matches!(x, ftp_proxy_core::Action::CommitRules { rules, .. } if !rules.is_empty())
        ),
        "{a:?}"
    );
    assert!(a.contains(&close(ftp_proxy_core::CloseReason::ReplyDesync)));
}

#[test]
fn a_227_to_epsv_and_a_229_to_pasv_are_rewritten_into_the_clients_form() {
    let mut h = H::new(Config::default(), &[1, 2]);
    h.client(b"EPSV\r\n");
    let (txn, rules) = commit(&h.server(b"227 Entering Passive Mode (10,9,9,9,117,76)\r\n"));
    // The address is ignored: the data connection goes to the control's server.
    assert!(
        rules[0].ends_with("rdr-to 198.51.100.10 port 30028"),
        "{rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            format!("229 Entering Extended Passive Mode (|||{}|)\r\n", pp(1)).as_bytes()
        )]
    );
    h.client(b"PASV\r\n");
    let (txn, rules) = commit(&h.server(b"229 Entering Extended Passive Mode (|||30029|)\r\n"));
    assert!(
        rules[0].ends_with("rdr-to 198.51.100.10 port 30029"),
        "{rules:?}"
    );
    let port = pp(2);
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            format!(
                "227 Entering Passive Mode (198,51,100,10,{},{})\r\n",
                port >> 8,
                port & 0xff
            )
            .as_bytes()
        )]
    );
    // A low port in either form is refused.
    h.client(b"EPSV\r\n");
    let a = h.server(b"227 x (198,51,100,10,0,21)\r\n");
    assert_eq!(
        a,
        vec![send(
            Side::Client,
            b"425 Cannot open passive connection: bad port from server\r\n"
        )]
    );
}

#[test]
fn active_mode_serves_pasv_and_epsv_joined_and_leaves_port_and_eprt() {
    for (cmd, reply) in [
        (
            &b"PASV\r\n"[..],
            "227 Entering Passive Mode (198,51,100,10,192,0)\r\n",
        ),
        (
            b"EPSV\r\n",
            "229 Entering Extended Passive Mode (|||49152|)\r\n",
        ),
    ] {
        let mut h = H::new(cfg(ServerDataMode::Active), &[0, 1]);
        let a = h.client(cmd);
        let (txn, rules) = commit(&a);
        assert_eq!(
            rules,
            [
                "pass in quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 49152 flags S/SA keep state (max 1) join-with 198.51.100.1 port 49153",
                "pass in quick inet proto tcp from 198.51.100.10 to 198.51.100.1 port 49153 flags S/SA keep state (max 1) join-with 198.51.100.10 port 49152",
            ]
        );
        confined(&rules, V4_ADDRS);
        assert_eq!(
            h.ack(txn, Ok(())),
            vec![send(Side::Server, b"PORT 198,51,100,1,192,1\r\n")]
        );
        assert_eq!(
            h.server(b"200 PORT ok\r\n"),
            vec![send(Side::Client, reply.as_bytes())]
        );
        // A refusal of the proxy's PORT is a 425 to the client.
        let a = h.client(cmd);
        let (txn, _) = commit(&a);
        h.ack(txn, Ok(()));
        assert_eq!(
            h.server(b"500 no\r\n"),
            vec![send(
                Side::Client,
                b"425 Cannot open passive connection: the server refused the proxy's data port\r\n"
            )]
        );
    }
    let mut h = H::new(cfg(ServerDataMode::Active), &[0]);
    let (txn, rules) = commit(&h.client(b"EPRT |1|10.0.0.1|5000|\r\n"));
    assert!(
        rules[0].ends_with("rdr-to 203.0.113.10 port 5000"),
        "{rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"EPRT |1|198.51.100.1|49152|\r\n")]
    );
}

#[test]
fn passive_mode_bridges_port_and_eprt_and_answers_200_itself() {
    for (cmd, asked, reply) in [
        (
            &b"PORT 10,9,8,7,19,136\r\n"[..],
            &b"PASV\r\n"[..],
            &b"200 PORT command successful\r\n"[..],
        ),
        (
            b"EPRT |1|10.9.8.7|5000|\r\n",
            b"PASV\r\n",
            b"200 EPRT command successful\r\n",
        ),
    ] {
        let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
        assert_eq!(h.client(cmd), vec![send(Side::Server, asked)]);
        // The client's next command waits for the server's answer.
        assert_eq!(h.client(b"RETR f\r\n"), vec![]);
        let a = h.server(b"227 Entering Passive Mode (198,51,100,10,117,76)\r\n");
        let (txn, rules) = commit(&a);
        assert_eq!(
            rules,
            [
                "pass out quick inet proto tcp from 198.51.100.1 to 198.51.100.10 port 30028 flags S/SA keep state (max 1) bridge-with 203.0.113.10 port 5000",
                "pass out quick inet proto tcp from 198.51.100.10 to 203.0.113.10 port 5000 flags S/SA keep state (max 1) bridge-with 198.51.100.10 port 30028",
            ]
        );
        confined(&rules, V4_ADDRS);
        assert_eq!(
            h.ack(txn, Ok(())),
            vec![send(Side::Client, reply), send(Side::Server, b"RETR f\r\n")]
        );
    }
    // PASV and EPSV go as the client sent them.
    let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    // A low port from the server: nothing is bridged.
    let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
    h.client(b"PORT 10,9,8,7,19,136\r\n");
    assert_eq!(
        h.server(b"227 x (198,51,100,10,3,255)\r\n"),
        vec![send(
            Side::Client,
            b"425 Cannot open passive connection: bad port from server\r\n"
        )]
    );
    // A server refusal of the PASV answers the PORT.
    let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
    h.client(b"PORT 10,9,8,7,19,136\r\n");
    assert_eq!(
        h.server(b"425 no passive\r\n"),
        vec![send(Side::Client, b"425 no passive\r\n")]
    );
    // An EPSV refusal on the way is retried as PASV here too.
    let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
    h.client(b"EPSV\r\n");
    assert_eq!(
        h.server(b"500 ?\r\n"),
        vec![send(Side::Server, b"PASV\r\n")]
    );
}

#[test]
fn passive_mode_after_a_multi_line_reply_sends_port_as_the_original() {
    let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
    h.client(b"STAT -1\r\n");
    h.server(b"213-STAT\r\n x\r\n213 end\r\n");
    let (txn, rules) = commit(&h.client(b"PORT 10,9,8,7,19,136\r\n"));
    assert!(
        rules[0].contains("rdr-to 203.0.113.10 port 5000"),
        "{rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"PORT 198,51,100,1,192,0\r\n")]
    );
}

#[test]
fn ipv6_client_to_ipv4_server_epsv_eprt_and_rfc_6384() {
    let mut h = v6_to_v4(ServerDataMode::Client, &[3, 4]);
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    let (txn, rules) = commit(&h.server(b"229 Entering Extended Passive Mode (|||30028|)\r\n"));
    assert_eq!(
        rules,
        [
            format!("pass in quick inet6 proto tcp from ::1 to ::1 port {} flags S/SA keep state (max 1) rdr-to 127.0.0.1 port 30028", pp(3)),
            "pass out quick inet6 proto tcp from ::1 to 127.0.0.1 port 30028 flags S/SA keep state (max 1) nat-to 127.0.0.1 port 50001:65535".to_string(),
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            format!("229 Entering Extended Passive Mode (|||{}|)\r\n", pp(3)).as_bytes()
        )]
    );
    // EPRT |2| becomes EPRT |1| with the proxy's IPv4 address.
    let (txn, rules) = commit(&h.client(b"EPRT |2|::1|5000|\r\n"));
    assert!(rules[0].ends_with("rdr-to ::1 port 5000"), "{rules:?}");
    assert!(
        rules[1].ends_with("nat-to ::1 port 50001:65535"),
        "{rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Server,
            format!("EPRT |1|127.0.0.1|{}|\r\n", pp(4)).as_bytes()
        )]
    );
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![send(Side::Client, b"200 ok\r\n")]
    );
    // RFC 6384: EPSV ALL is the proxy's to answer, LPSV/LPRT are refused, and
    // PASV/PORT cannot be answered over IPv6.
    assert_eq!(
        h.client(b"EPSV ALL\r\n"),
        vec![send(Side::Client, b"200 EPSV ALL command successful\r\n")]
    );
    assert_eq!(
        h.client(b"LPSV\r\n"),
        vec![send(
            Side::Client,
            b"502 LPSV and LPRT are not implemented by the proxy\r\n"
        )]
    );
    assert_eq!(
        h.client(b"PASV\r\n"),
        vec![send(
            Side::Client,
            b"500 PASV and PORT not allowed with IPv6\r\n"
        )]
    );
    // After EPSV ALL (not passed on), the PASV fallback still works.
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    assert_eq!(
        h.server(b"500 no\r\n"),
        vec![send(Side::Server, b"PASV\r\n")]
    );
    let a = h.server(b"227 ok (127,0,0,1,117,77)\r\n");
    let (txn, rules) = commit(&a);
    assert!(
        rules[0].ends_with("rdr-to 127.0.0.1 port 30029"),
        "{rules:?}"
    );
    let a = h.ack(txn, Ok(()));
    assert!(
        matches!(&a[..], [ftp_proxy_core::Action::Send(Side::Client, b)] if b.starts_with(b"229 ")),
        "{a:?}"
    );
}

#[test]
fn ipv4_client_to_ipv6_server_pasv_port_and_modes() {
    let mut h = v4_to_v6(ServerDataMode::Client, &[5, 6]);
    // Only EPSV/EPRT exist towards an IPv6 server.
    assert_eq!(h.client(b"PASV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    let (txn, rules) = commit(&h.server(b"229 Entering Extended Passive Mode (|||30028|)\r\n"));
    assert!(
        rules[0].contains("from 127.0.0.1 to 127.0.0.1 port"),
        "{rules:?}"
    );
    assert!(rules[0].ends_with("rdr-to ::1 port 30028"), "{rules:?}");
    let port = pp(5);
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            format!(
                "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                port >> 8,
                port & 0xff
            )
            .as_bytes()
        )]
    );
    let (txn, rules) = commit(&h.client(b"PORT 127,0,0,1,19,136\r\n"));
    assert!(
        rules[0].ends_with("rdr-to 127.0.0.1 port 5000"),
        "{rules:?}"
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Server,
            format!("EPRT |2|::1|{}|\r\n", pp(6)).as_bytes()
        )]
    );
    // An IPv6 server's EPSV refusal is not retried as PASV (there is none).
    h.server(b"200 ok\r\n");
    h.client(b"EPSV\r\n");
    assert_eq!(
        h.server(b"522 no\r\n"),
        vec![send(Side::Client, b"522 no\r\n")]
    );
    // EPSV ALL goes to an IPv6 server (which then refuses nothing the proxy needs).
    assert_eq!(
        h.client(b"EPSV ALL\r\n"),
        vec![send(Side::Server, b"EPSV ALL\r\n")]
    );

    // Passive mode: PORT bridged through the server's EPSV.
    let mut h = v4_to_v6(ServerDataMode::Passive, &[0]);
    assert_eq!(
        h.client(b"PORT 127,0,0,1,19,136\r\n"),
        vec![send(Side::Server, b"EPSV\r\n")]
    );
    let (txn, rules) = commit(&h.server(b"229 ok (|||30030|)\r\n"));
    assert_eq!(
        rules,
        [
            "pass out quick inet6 proto tcp from ::1 to ::1 port 30030 flags S/SA keep state (max 1) bridge-with 127.0.0.1 port 5000",
            "pass out quick inet proto tcp from 127.0.0.1 to 127.0.0.1 port 5000 flags S/SA keep state (max 1) bridge-with ::1 port 30030",
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Client, b"200 PORT command successful\r\n")]
    );

    // Active mode: EPSV joined through the proxy's EPRT |2|.
    let mut h = v4_to_v6(ServerDataMode::Active, &[0, 1]);
    let (txn, _) = commit(&h.client(b"EPSV\r\n"));
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"EPRT |2|::1|49153|\r\n")]
    );
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![send(
            Side::Client,
            b"229 Entering Extended Passive Mode (|||49152|)\r\n"
        )]
    );
}

#[test]
fn ipv6_client_to_ipv4_server_in_each_server_mode() {
    // Passive: EPRT |2| bridged through the server's PASV (after EPSV, the client's
    // kind, is not what a PORT asks: an IPv4 server is asked PASV).
    let mut h = v6_to_v4(ServerDataMode::Passive, &[0]);
    assert_eq!(
        h.client(b"EPRT |2|::1|5000|\r\n"),
        vec![send(Side::Server, b"PASV\r\n")]
    );
    let (txn, rules) = commit(&h.server(b"227 ok (127,0,0,1,117,76)\r\n"));
    assert_eq!(
        rules,
        [
            "pass out quick inet proto tcp from 127.0.0.1 to 127.0.0.1 port 30028 flags S/SA keep state (max 1) bridge-with ::1 port 5000",
            "pass out quick inet6 proto tcp from ::1 to ::1 port 5000 flags S/SA keep state (max 1) bridge-with 127.0.0.1 port 30028",
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Client, b"200 EPRT command successful\r\n")]
    );
    // Active: EPSV joined through the proxy's PORT.
    let mut h = v6_to_v4(ServerDataMode::Active, &[0, 1]);
    let (txn, rules) = commit(&h.client(b"EPSV\r\n"));
    assert!(rules.iter().all(|r| r.contains("join-with")), "{rules:?}");
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"PORT 127,0,0,1,192,1\r\n")]
    );
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![send(
            Side::Client,
            b"229 Entering Extended Passive Mode (|||49152|)\r\n"
        )]
    );
}

#[test]
fn untranslated_sessions_leave_lpsv_and_epsv_all_to_the_server() {
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(h.client(b"LPSV\r\n"), vec![send(Side::Server, b"LPSV\r\n")]);
    h.server(b"500 no\r\n");
    assert_eq!(
        h.client(b"EPSV ALL\r\n"),
        vec![send(Side::Server, b"EPSV ALL\r\n")]
    );
    // A translated IPv4 session answers them itself.
    let mut h = H::new(cfg(ServerDataMode::Passive), &[0]);
    assert_eq!(
        h.client(b"lprt 4,4,1,2,3,4,2,19,136\r\n"),
        vec![send(
            Side::Client,
            b"502 LPSV and LPRT are not implemented by the proxy\r\n"
        )]
    );
}

#[test]
fn start_up_refuses_what_only_the_relay_can_carry() {
    for mode in [ServerDataMode::Passive, ServerDataMode::Active] {
        let c = Config {
            relay: false,
            ..cfg(mode)
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::DataPath(
                DataPathError::ServerDataModeNeedsRelay(mode)
            ))
        );
        assert_eq!(cfg(mode).validate(), Ok(()));
    }
    let cross = Config {
        ipv6: true,
        fixed_server: Some(addr("127.0.0.1:21")),
        ..Config::default()
    };
    assert_eq!(
        cross.validate(),
        Err(ConfigError::DataPath(DataPathError::FamiliesNeedRelay))
    );
    assert_eq!(
        Config {
            relay: true,
            ..cross.clone()
        }
        .validate(),
        Ok(())
    );
    // The source address (-a) must be of the server's family.
    let bad_source = Config {
        relay: true,
        source_addr: Some("::1".parse().unwrap()),
        ..cross
    };
    assert_eq!(bad_source.validate(), Err(ConfigError::Family("source")));
}
