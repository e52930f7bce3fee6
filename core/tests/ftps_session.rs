//! RFC 4217 through a whole session (issue 16): with client TLS on, the proxy
//! answers `AUTH`, `PBSZ`, `PROT` and `CCC` itself, tells the driver when to start
//! TLS ([`Action::StartTls`]), never parses what follows an `AUTH` line as
//! commands, advertises its own security features in `FEAT`, and marks the
//! client's leg of each data connection negotiated after `PROT P` as TLS in the
//! rules it commits.

mod support;

use ftp_proxy_core::{
    Action, Bytes, ClientTls, CloseReason, Config, ConfigError, Input, Proxy, Rule, Security, Side,
    TlsPolicy,
};
use support::*;

fn tls_config(client: ClientTls, required: bool) -> Config {
    Config {
        fixed_server: Some(addr(SERVER)),
        relay: true,
        tls: TlsPolicy {
            client,
            required,
            ..TlsPolicy::default()
        },
        ..Config::default()
    }
}

fn explicit() -> H {
    H::new(tls_config(ClientTls::Explicit, false), &[1295])
}

fn start_tls(pending: &[u8]) -> Action {
    Action::StartTls {
        side: Side::Client,
        pending: Bytes::copy_from_slice(pending),
    }
}

/// The rules of the commit among `actions`, as values.
fn rules_of(actions: &[Action]) -> (u64, Vec<Rule>) {
    for a in actions {
        if let Action::CommitRules { txn, rules, .. } = a {
            return (*txn, rules.clone());
        }
    }
    panic!("no commit in {actions:?}")
}

/// Logs in over the (notionally) protected connection and sets `PROT` to `level`.
fn protected(h: &mut H, level: &[u8]) {
    let a = h.client(b"AUTH TLS\r\n");
    assert_eq!(a[1], start_tls(b""));
    assert_eq!(
        h.client(b"PBSZ 0\r\n"),
        vec![send(Side::Client, b"200 PBSZ=0\r\n")]
    );
    let mut prot = b"PROT ".to_vec();
    prot.extend_from_slice(level);
    prot.extend_from_slice(b"\r\n");
    assert_eq!(
        h.client(&prot),
        vec![send(Side::Client, b"200 PROT command ok\r\n")]
    );
}

#[test]
fn auth_tls_is_answered_234_then_start_tls_with_the_bytes_pipelined_after_it() {
    let mut h = explicit();
    // A ClientHello-like tail in the same read, with a line feed in it: it must go
    // to the TLS layer, never be taken for a command.
    let a = h.client(b"AUTH TLS\r\n\x16\x03\x01\x00\x05USER x\n");
    assert_eq!(
        a,
        vec![
            send(
                Side::Client,
                b"234 AUTH command ok; starting TLS connection\r\n"
            ),
            start_tls(b"\x16\x03\x01\x00\x05USER x\n"),
        ]
    );
    // After the switch the driver hands in plaintext: lines flow again.
    assert_eq!(
        h.client(b"USER bob\r\n"),
        vec![send(Side::Server, b"USER bob\r\n")]
    );
}

#[test]
fn the_234_waits_for_earlier_replies_and_nothing_read_meanwhile_is_parsed() {
    let mut h = explicit();
    assert_eq!(
        h.client(b"NOOP\r\nAUTH TLS\r\n"),
        vec![send(Side::Server, b"NOOP\r\n")]
    );
    // The client's handshake bytes arrive before the 234 went out.
    assert_eq!(h.client(b"\x16\x03\x01QUIT\r\n"), vec![]);
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![
            send(Side::Client, b"200 ok\r\n"),
            send(
                Side::Client,
                b"234 AUTH command ok; starting TLS connection\r\n"
            ),
            start_tls(b"\x16\x03\x01QUIT\r\n"),
        ]
    );
}

#[test]
fn pbsz_prot_ccc_are_answered_by_the_proxy_and_never_forwarded() {
    let mut h = explicit();
    assert_eq!(
        h.client(b"PBSZ 0\r\n"),
        vec![send(
            Side::Client,
            b"503 PBSZ needs a completed AUTH first\r\n"
        )]
    );
    assert_eq!(
        h.client(b"AUTH GSSAPI\r\n"),
        vec![send(
            Side::Client,
            b"504 Unsupported security mechanism; use AUTH TLS\r\n"
        )]
    );
    protected(&mut h, b"P");
    assert_eq!(
        h.client(b"PROT E\r\n"),
        vec![send(
            Side::Client,
            b"536 Only PROT P and PROT C are supported\r\n"
        )]
    );
    assert_eq!(
        h.client(b"CCC\r\n"),
        vec![send(
            Side::Client,
            b"534 CCC refused by policy: the control connection stays protected\r\n"
        )]
    );
    assert_eq!(
        h.client(b"AUTH TLS\r\n"),
        vec![send(Side::Client, b"503 Already protected by TLS\r\n")]
    );
}

#[test]
fn without_client_tls_auth_keeps_its_534() {
    let mut h = H::new(Config::default(), &[0]);
    let a = h.client(b"AUTH TLS\r\n");
    assert_eq!(a.len(), 1);
    let Action::Send(Side::Client, line) = &a[0] else {
        panic!("{a:?}")
    };
    assert!(line.starts_with(b"534 "), "{line:?}");
}

#[test]
fn feat_drops_the_servers_security_lines_and_adds_the_proxys() {
    let mut h = explicit();
    assert_eq!(h.client(b"FEAT\r\n"), vec![send(Side::Server, b"FEAT\r\n")]);
    let a = h.server(b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n MDTM\r\n211 End\r\n");
    assert_eq!(
        a,
        vec![
            send(Side::Client, b"211-Features:\r\n"),
            send(Side::Client, b" MDTM\r\n"),
            send(Side::Client, b" AUTH TLS\r\n"),
            send(Side::Client, b" PBSZ\r\n"),
            send(Side::Client, b" PROT\r\n"),
            send(Side::Client, b"211 End\r\n"),
        ]
    );
    // Without TLS the server's lines are dropped and none are added.
    let mut plain = H::new(Config::default(), &[0]);
    plain.client(b"FEAT\r\n");
    let a = plain.server(b"211-Features:\r\n AUTH TLS\r\n MDTM\r\n211 End\r\n");
    assert_eq!(
        a,
        vec![
            send(Side::Client, b"211-Features:\r\n"),
            send(Side::Client, b" MDTM\r\n"),
            send(Side::Client, b"211 End\r\n"),
        ]
    );
}

#[test]
fn prot_p_makes_the_clients_data_leg_tls_and_prot_c_plain_again() {
    let mut h = H::new(tls_config(ClientTls::Explicit, false), &[1295, 1296, 1297]);
    protected(&mut h, b"P");
    // Passive: the client connects, so the accepted leg is the client's.
    h.client(b"PASV\r\n");
    let (txn, rules) =
        rules_of(&h.server(b"227 Entering Passive Mode (198,51,100,10,117,76).\r\n"));
    assert_eq!(rules[0].legs.accepted, Security::Tls);
    assert_eq!(rules[0].legs.connected, Security::Plain);
    h.ack(txn, Ok(()));
    // Active: the proxy connects to the client, so the connected leg is.
    let (txn, rules) = rules_of(&h.client(b"PORT 203,0,113,10,19,136\r\n"));
    assert_eq!(rules[0].legs.accepted, Security::Plain);
    assert_eq!(rules[0].legs.connected, Security::Tls);
    h.ack(txn, Ok(()));
    h.server(b"200 ok\r\n");
    assert_eq!(
        h.client(b"PROT C\r\n"),
        vec![send(Side::Client, b"200 PROT command ok\r\n")]
    );
    h.client(b"EPSV\r\n");
    let (_, rules) = rules_of(&h.server(b"229 Entering Extended Passive Mode (|||30028|)\r\n"));
    assert_eq!(rules[0].legs.accepted, Security::Plain);
    assert_eq!(rules[0].legs.connected, Security::Plain);
}

#[test]
fn tls_required_refuses_a_plain_login_and_an_unprotected_transfer() {
    let mut h = H::new(tls_config(ClientTls::Explicit, true), &[0]);
    assert_eq!(
        h.client(b"USER bob\r\n"),
        vec![send(
            Side::Client,
            b"530 This proxy requires AUTH TLS before login\r\n"
        )]
    );
    let a = h.client(b"AUTH TLS\r\n");
    assert_eq!(a[1], start_tls(b""));
    assert_eq!(
        h.client(b"USER bob\r\n"),
        vec![send(Side::Server, b"USER bob\r\n")]
    );
    h.server(b"331 pw\r\n");
    assert_eq!(
        h.client(b"RETR f\r\n"),
        vec![send(
            Side::Client,
            b"521 Data connections must be protected: send PBSZ 0 and PROT P\r\n"
        )]
    );
}

#[test]
fn implicit_starts_protected_without_start_tls() {
    let mut h = H::new(tls_config(ClientTls::Implicit, false), &[0]);
    assert_eq!(
        h.client(b"PBSZ 0\r\n"),
        vec![send(Side::Client, b"200 PBSZ=0\r\n")]
    );
    assert_eq!(
        h.client(b"AUTH TLS\r\n"),
        vec![send(Side::Client, b"503 Already protected by TLS\r\n")]
    );
}

/// A failed client handshake (explicit, after the `234`, or implicit, from the
/// first byte) ends the session as a TLS failure, not as a reset: the summary's
/// `reason=` tells an admin which.
#[test]
fn a_failed_client_handshake_ends_as_client_tls_failed_not_a_reset() {
    let mut h = explicit();
    let a = h.client(b"AUTH TLS\r\n");
    assert_eq!(a[1], start_tls(b""));
    let a = h.input(Input::TlsFailed(Side::Client));
    let [Action::Close { reason, .. }] = &a[..] else {
        panic!("only the close: {a:?}")
    };
    assert_eq!(*reason, CloseReason::TlsFailed(Side::Client));
    assert_eq!(reason.kind(), "client_tls_failed");
    assert_eq!(
        reason.to_string(),
        "TLS on the client control connection failed"
    );
    assert!(reason.is_error());
    assert!(h.p.is_empty());

    let mut h = H::new(tls_config(ClientTls::Implicit, false), &[0]);
    let a = h.input(Input::TlsFailed(Side::Client));
    assert!(
        matches!(&a[..], [Action::Close { reason, .. }] if reason.kind() == "client_tls_failed"),
        "{a:?}"
    );
    // A plain reset is still the original's reset.
    let mut h = explicit();
    let a = h.input(Input::Reset(Side::Client));
    assert!(
        matches!(&a[..], [Action::Close { reason, .. }] if reason.kind() == "client_reset"),
        "{a:?}"
    );
}

#[test]
fn client_tls_needs_reverse_mode_and_the_relay() {
    let no_relay = Config {
        relay: false,
        ..tls_config(ClientTls::Explicit, false)
    };
    let e = Proxy::new(no_relay, Box::new(Script([0].into()))).unwrap_err();
    assert!(matches!(e, ConfigError::Tls(_)), "{e}");
    assert!(e.to_string().contains("packet filter"), "{e}");
    let no_reverse = Config {
        fixed_server: None,
        ..tls_config(ClientTls::Explicit, false)
    };
    let e = Proxy::new(no_reverse, Box::new(Script([0].into()))).unwrap_err();
    assert!(e.to_string().contains("-R"), "{e}");
    let required_alone = Config {
        tls: TlsPolicy {
            required: true,
            ..TlsPolicy::default()
        },
        ..Config::default()
    };
    assert!(Proxy::new(required_alone, Box::new(Script([0].into()))).is_err());
}

#[test]
fn a_handshake_where_a_command_is_due_ends_the_session_as_not_clean() {
    let mut h = explicit();
    let a = h.client(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1");
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::Close { .. }))
            .collect::<Vec<_>>(),
        [&close(CloseReason::NotClean(Side::Client))],
        "{a:?}"
    );
}
