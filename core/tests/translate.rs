//! Issue 17: the server-side data command chosen independently of the client's,
//! and the server's passive answer turned into the client's form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ftp_proxy_core::{
    answered_by_proxy, client_reply, needs_relay, passive_answer, server_active_line,
    server_command, DataCommand as C, Family, PassiveAnswer, ReplyError, ServerDataMode as M,
    ServerSupport,
};

const V4: Family = Family::Inet;
const V6: Family = Family::Inet6;

#[test]
fn client_mode_keeps_the_original_commands_within_one_family() {
    let s = ServerSupport::default();
    for c in [C::Pasv, C::Epsv, C::Port, C::Eprt] {
        assert_eq!(server_command(c, V4, M::Client, s), c, "{c:?}");
        assert!(!needs_relay(c, V4, c, V4));
    }
}

#[test]
fn ipv6_client_to_ipv4_server_and_back() {
    let s = ServerSupport::default();
    // EPSV stays EPSV towards an IPv4 server (RFC 6384: the one mode that works
    // unchanged), EPRT |2| needs EPRT |1| or PORT: EPRT is kept.
    assert_eq!(server_command(C::Epsv, V4, M::Client, s), C::Epsv);
    assert_eq!(server_command(C::Eprt, V4, M::Client, s), C::Eprt);
    assert!(needs_relay(C::Epsv, V6, C::Epsv, V4));
    // An IPv4 client's PASV/PORT towards an IPv6-only server become EPSV/EPRT.
    assert_eq!(server_command(C::Pasv, V6, M::Client, s), C::Epsv);
    assert_eq!(server_command(C::Port, V6, M::Client, s), C::Eprt);
    assert!(needs_relay(C::Pasv, V4, C::Epsv, V6));
}

#[test]
fn epsv_refused_once_means_pasv_for_the_session() {
    let refused = ServerSupport { epsv_refused: true };
    assert_eq!(server_command(C::Epsv, V4, M::Client, refused), C::Pasv);
    assert_eq!(server_command(C::Port, V4, M::Passive, refused), C::Pasv);
    // An IPv6 server has nothing to fall back to.
    assert_eq!(server_command(C::Epsv, V6, M::Client, refused), C::Epsv);
    for code in ["500 what?\r\n", "502 no\r\n", "522 use (1)\r\n"] {
        assert_eq!(
            passive_answer(C::Epsv, V4, code.as_bytes()),
            PassiveAnswer::RetryPasv,
            "{code}"
        );
        assert_eq!(
            passive_answer(C::Epsv, V6, code.as_bytes()),
            PassiveAnswer::Other
        );
        assert_eq!(
            passive_answer(C::Pasv, V4, code.as_bytes()),
            PassiveAnswer::Other
        );
    }
}

#[test]
fn server_data_mode_overrides_the_client_towards_the_server_only() {
    let s = ServerSupport::default();
    assert_eq!(server_command(C::Port, V4, M::Passive, s), C::Pasv);
    assert_eq!(server_command(C::Eprt, V4, M::Passive, s), C::Pasv);
    assert_eq!(server_command(C::Eprt, V6, M::Passive, s), C::Epsv);
    assert_eq!(server_command(C::Pasv, V4, M::Active, s), C::Port);
    assert_eq!(server_command(C::Epsv, V4, M::Active, s), C::Port);
    assert_eq!(server_command(C::Epsv, V6, M::Active, s), C::Eprt);
    assert!(needs_relay(C::Port, V4, C::Pasv, V4));
    assert!(needs_relay(C::Epsv, V4, C::Port, V4));
    assert_eq!("passive".parse::<M>(), Ok(M::Passive));
    assert!("both".parse::<M>().is_err());
}

#[test]
fn either_passive_answer_is_understood_and_low_ports_refused() {
    let p227 = b"227 Entering Passive Mode (10,9,8,7,19,137)\r\n";
    let p229 = b"229 Entering Extended Passive Mode (|||5001|)\r\n";
    for asked in [C::Pasv, C::Epsv] {
        assert_eq!(
            passive_answer(asked, V4, p227),
            PassiveAnswer::Port(19 * 256 + 137)
        );
        assert_eq!(passive_answer(asked, V4, p229), PassiveAnswer::Port(5001));
    }
    assert_eq!(
        passive_answer(C::Pasv, V4, b"227 ok (127,0,0,1,0,21)\r\n"),
        PassiveAnswer::LowPort(21)
    );
    assert_eq!(
        passive_answer(C::Epsv, V4, b"229 ok (|||1023|)\r\n"),
        PassiveAnswer::LowPort(1023)
    );
    // A multi-line 227 is not taken apart here.
    assert_eq!(
        passive_answer(C::Pasv, V4, b"227-x (1,2,3,4,20,0)\r\n"),
        PassiveAnswer::Other
    );
    assert_eq!(
        passive_answer(C::Pasv, V4, b"425 no\r\n"),
        PassiveAnswer::Other
    );
}

#[test]
fn the_client_gets_the_form_it_asked_for() {
    let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    assert_eq!(
        client_reply(C::Pasv, v4, 50000).unwrap(),
        "227 Entering Passive Mode (198,51,100,1,195,80)\r\n"
    );
    assert_eq!(client_reply(C::Pasv, v6, 50000), Err(ReplyError::NeedsIpv4));
    assert_eq!(
        client_reply(C::Epsv, v6, 50000).unwrap(),
        "229 Entering Extended Passive Mode (|||50000|)\r\n"
    );
    assert!(client_reply(C::Port, v4, 1).unwrap().starts_with("200 "));
    assert!(client_reply(C::Eprt, v6, 1).unwrap().starts_with("200 "));
    assert_eq!(
        server_active_line(C::Port, v4, 50000).unwrap(),
        "PORT 198,51,100,1,195,80\r\n"
    );
    assert_eq!(
        server_active_line(C::Eprt, v6, 50000).unwrap(),
        "EPRT |2|2001:db8::1|50000|\r\n"
    );
    assert_eq!(
        server_active_line(C::Port, v6, 50000),
        Err(ReplyError::NeedsIpv4)
    );
}

#[test]
fn rfc6384_commands_the_proxy_answers_itself_when_translating() {
    assert!(answered_by_proxy(b"EPSV ALL\r\n", V4, true)
        .unwrap()
        .starts_with("200 "));
    assert_eq!(answered_by_proxy(b"EPSV ALL\r\n", V6, true), None);
    assert_eq!(answered_by_proxy(b"EPSV ALL\r\n", V4, false), None);
    assert!(answered_by_proxy(b"LPSV\r\n", V4, true)
        .unwrap()
        .starts_with("502 "));
    assert!(answered_by_proxy(b"lprt 6,16,...\r\n", V4, true)
        .unwrap()
        .starts_with("502 "));
    assert_eq!(answered_by_proxy(b"LPSVX\r\n", V4, true), None);
    assert_eq!(answered_by_proxy(b"EPSV\r\n", V4, true), None);
}

#[test]
fn impossible_data_paths_are_start_up_errors() {
    use ftp_proxy_core::{check_data_path, DataPathError};
    assert_eq!(check_data_path(M::Client, false, false), Ok(()));
    assert_eq!(check_data_path(M::Passive, true, true), Ok(()));
    assert_eq!(
        check_data_path(M::Active, false, false),
        Err(DataPathError::ServerDataModeNeedsRelay(M::Active))
    );
    assert_eq!(
        check_data_path(M::Client, true, false),
        Err(DataPathError::FamiliesNeedRelay)
    );
    assert!(DataPathError::FamiliesNeedRelay
        .to_string()
        .contains("relay"));
}

/// Every pairing: an IPv6 server is never sent PASV/PORT, the proxy's mode wins
/// over the client's towards the server, and a pairing the packet filter could
/// join (same family, same direction) is never sent to the relay.
#[test]
fn every_pairing_is_consistent() {
    let cmds = [C::Pasv, C::Epsv, C::Port, C::Eprt];
    for c in cmds {
        for cf in [V4, V6] {
            for sf in [V4, V6] {
                for m in [M::Client, M::Passive, M::Active] {
                    for refused in [false, true] {
                        let s = server_command(
                            c,
                            sf,
                            m,
                            ServerSupport {
                                epsv_refused: refused,
                            },
                        );
                        let what = format!("{c:?} {cf:?}->{sf:?} {m:?} refused={refused}: {s:?}");
                        if sf == V6 {
                            assert!(matches!(s, C::Epsv | C::Eprt), "{what}");
                        }
                        if refused && sf == V4 {
                            assert_ne!(s, C::Epsv, "{what}");
                        }
                        match m {
                            M::Client => assert_eq!(s.is_passive(), c.is_passive(), "{what}"),
                            M::Passive => assert!(s.is_passive(), "{what}"),
                            M::Active => assert!(!s.is_passive(), "{what}"),
                            _ => unreachable!(),
                        }
                        let relay = needs_relay(c, cf, s, sf);
                        assert_eq!(
                            relay,
                            cf != sf || c.is_passive() != s.is_passive(),
                            "{what}"
                        );
                        if m == M::Client && cf == sf {
                            assert!(!relay, "{what}");
                        }
                    }
                }
            }
        }
    }
}
