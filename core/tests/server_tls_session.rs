//! `--server-tls` through a whole session (issue 16, towards servers): the proxy
//! secures the server's control connection itself (`AUTH TLS`, then
//! [`Action::StartTls`] for [`Side::Server`], `PBSZ 0`, `PROT P`), relays the
//! server's greeting at once, answers the client's own `AUTH`, `PBSZ` and `PROT`
//! meanwhile (so both sides' handshakes overlap), holds its other commands until
//! the server's side is secured, ends the session with `421` on any refusal or failure, and marks the
//! server's leg of every data connection as [`Security::TlsToServer`].

mod support;

use std::time::Instant;

use ftp_proxy_core::{
    Accept, Action, Bytes, ClientTls, CloseReason, Config, ConfigError, Input, Proxy, Rule,
    Security, ServerTls, Side, TlsPolicy,
};
use support::*;

fn config(server: ServerTls, client: ClientTls) -> Config {
    Config {
        fixed_server: Some(addr(SERVER)),
        relay: true,
        tls: TlsPolicy {
            client,
            server,
            ..TlsPolicy::default()
        },
        ..Config::default()
    }
}

/// A session whose server socket is connected; nothing read from it yet.
fn connected(cfg: Config) -> H {
    let mut p = Proxy::new(cfg, Box::new(Script([1295].into_iter().collect()))).unwrap();
    let now = Instant::now();
    let id = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    let mut h = H { p, now, id };
    let a = h.drain();
    assert!(matches!(a[..], [Action::ConnectServer { .. }]), "{a:?}");
    h.input(Input::ServerSocketOpened { proxy: addr(PROXY) });
    h.input(Input::ServerConnected);
    h
}

fn server_start_tls() -> Action {
    Action::StartTls {
        side: Side::Server,
        pending: Bytes::new(),
    }
}

/// Runs the explicit dialogue to its end: the greeting reaches the client at
/// once, its `USER` only once the server's side is secured.
fn secured_explicit() -> H {
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Off));
    assert_eq!(
        h.server(b"220-Welcome\r\n220 ready\r\n"),
        vec![
            send(Side::Server, b"AUTH TLS\r\n"),
            send(Side::Client, b"220-Welcome\r\n"),
            send(Side::Client, b"220 ready\r\n"),
        ]
    );
    // The client's USER waits for the server's side to be secured.
    assert_eq!(h.client(b"USER bob\r\n"), vec![]);
    assert_eq!(
        h.server(b"234 Proceed\r\n"),
        vec![server_start_tls(), send(Side::Server, b"PBSZ 0\r\n")]
    );
    assert_eq!(
        h.server(b"200 PBSZ=0\r\n"),
        vec![send(Side::Server, b"PROT P\r\n")]
    );
    assert_eq!(
        h.server(b"200 PROT now Private\r\n"),
        vec![send(Side::Server, b"USER bob\r\n")]
    );
    h
}

#[test]
fn explicit_secures_the_server_before_any_client_line_and_relays_none_of_it() {
    let mut h = secured_explicit();
    assert_eq!(
        h.server(b"331 Password\r\n"),
        vec![send(Side::Client, b"331 Password\r\n")]
    );
}

#[test]
fn implicit_sends_pbsz_and_prot_after_the_greeting_without_auth() {
    let mut h = connected(config(ServerTls::Implicit, ClientTls::Off));
    assert_eq!(
        h.server(b"220 ready\r\n"),
        vec![
            send(Side::Server, b"PBSZ 0\r\n"),
            send(Side::Client, b"220 ready\r\n")
        ]
    );
    assert_eq!(h.client(b"SYST\r\n"), vec![]);
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![send(Side::Server, b"PROT P\r\n")]
    );
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![send(Side::Server, b"SYST\r\n")]
    );
}

/// TLS on both sides: the client's `AUTH TLS`, handshake, `PBSZ` and `PROT` run
/// while the proxy secures the server's side; `USER` waits for it, and a command
/// the proxy would answer itself waits too once an ordinary one is queued before
/// it (replies keep the commands' order).
#[test]
fn the_clients_handshake_overlaps_the_servers() {
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Explicit));
    assert_eq!(
        h.server(b"220 ready\r\n"),
        vec![
            send(Side::Server, b"AUTH TLS\r\n"),
            send(Side::Client, b"220 ready\r\n"),
        ]
    );
    let a = h.client(b"AUTH TLS\r\n\x16\x03\x01hello");
    assert_eq!(
        a,
        vec![
            send(
                Side::Client,
                b"234 AUTH command ok; starting TLS connection\r\n"
            ),
            Action::StartTls {
                side: Side::Client,
                pending: Bytes::from_static(b"\x16\x03\x01hello"),
            },
        ]
    );
    assert_eq!(
        h.client(b"PBSZ 0\r\nPROT P\r\nUSER bob\r\nPBSZ 0\r\n"),
        vec![
            send(Side::Client, b"200 PBSZ=0\r\n"),
            send(Side::Client, b"200 PROT command ok\r\n"),
        ]
    );
    assert_eq!(
        h.server(b"234 Proceed\r\n"),
        vec![server_start_tls(), send(Side::Server, b"PBSZ 0\r\n")]
    );
    h.server(b"200 PBSZ=0\r\n");
    assert_eq!(
        h.server(b"200 PROT now Private\r\n"),
        vec![send(Side::Server, b"USER bob\r\n")]
    );
    // The second PBSZ is answered in its turn, after USER's reply.
    assert_eq!(
        h.server(b"331 Password\r\n"),
        vec![
            send(Side::Client, b"331 Password\r\n"),
            send(Side::Client, b"200 PBSZ=0\r\n"),
        ]
    );
}

/// A failure after the greeting was relayed still ends with a `421`.
#[test]
fn a_failure_after_the_greeting_went_out_ends_with_421() {
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Explicit));
    h.server(b"220 ready\r\n");
    h.client(b"PBSZ 0\r\n");
    h.server(b"234 go\r\n");
    ends_with_421_as(
        &h.input(Input::TlsFailed(Side::Server)),
        "TLS handshake",
        CloseReason::TlsFailed(Side::Server),
    );
}

/// The client is told 421 with the reason, and the session ends as the server's
/// refusal.
fn ends_with_421(a: &[Action], reason: &str) {
    ends_with_421_as(a, reason, CloseReason::ServerRefused)
}

/// The client is told 421 with the reason, and the session ends as `close`.
fn ends_with_421_as(a: &[Action], reason: &str, close: CloseReason) {
    let Some(Action::Send(Side::Client, line)) = a.first() else {
        panic!("no reply to the client in {a:?}");
    };
    let line = String::from_utf8_lossy(line);
    assert!(
        line.starts_with("421 ") && line.contains(reason),
        "{line:?} should be a 421 naming {reason:?}"
    );
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Close { reason, .. } if *reason == close)),
        "the session should close as {close:?}: {a:?}"
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::Send(Side::Server, _))),
        "nothing more goes to the server in plain text: {a:?}"
    );
}

#[test]
fn a_refused_auth_tls_ends_the_session_with_421_never_plain() {
    for refusal in [&b"500 AUTH not understood\r\n"[..], b"534 not here\r\n"] {
        let mut h = connected(config(ServerTls::Explicit, ClientTls::Off));
        h.server(b"220 ready\r\n");
        let a = h.server(refusal);
        ends_with_421(&a, "refused AUTH TLS");
    }
}

#[test]
fn refused_pbsz_or_prot_and_a_non_220_greeting_end_with_421() {
    let mut h = connected(config(ServerTls::Implicit, ClientTls::Off));
    h.server(b"220 ready\r\n");
    ends_with_421(&h.server(b"502 no\r\n"), "refused PBSZ");
    let mut h = connected(config(ServerTls::Implicit, ClientTls::Off));
    h.server(b"220 ready\r\n");
    h.server(b"200 ok\r\n");
    ends_with_421(&h.server(b"536 no\r\n"), "refused PROT");
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Off));
    ends_with_421(&h.server(b"554 go away\r\n"), "greeted with");
}

#[test]
fn a_failed_handshake_or_a_close_while_securing_ends_with_421() {
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Off));
    h.server(b"220 ready\r\n");
    h.server(b"234 go\r\n");
    // The driver's TLS failed (a certificate that does not verify): the same
    // 421 and log text as a reset, but the summary names TLS.
    let a = h.input(Input::TlsFailed(Side::Server));
    ends_with_421_as(&a, "TLS handshake", CloseReason::TlsFailed(Side::Server));
    assert!(
        a.iter().any(|x| matches!(x, Action::Close { reason, .. }
            if reason.kind() == "server_tls_failed")),
        "{a:?}"
    );
    // A reset connection while securing is still the server's refusal.
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Off));
    h.server(b"220 ready\r\n");
    h.server(b"234 go\r\n");
    ends_with_421(&h.input(Input::Reset(Side::Server)), "TLS handshake");
    let mut h = connected(config(ServerTls::Explicit, ClientTls::Off));
    h.server(b"220 ready\r\n");
    ends_with_421(&h.input(Input::Eof(Side::Server)), "closed");
}

/// A server that answers `234` and then never completes its handshake: the
/// client, which has not even seen the greeting yet, is not the idle one. Its
/// idle timer (armed at the accept, so due a moment before the server's) and
/// the login timer end the session as the server's failure, with a `421`.
#[test]
fn a_handshake_the_server_never_completes_ends_with_421_whichever_timer_is_first() {
    use std::time::Duration;
    for (idle, login) in [(3, 0), (0, 3)] {
        let mut cfg = config(ServerTls::Explicit, ClientTls::Off);
        cfg.idle_timeout_secs = idle;
        cfg.login_timeout_secs = login;
        let mut h = connected(cfg);
        // The server's bytes come a little after the accept, as on a network.
        assert_eq!(h.advance(Duration::from_millis(10)), vec![]);
        h.server(b"220 ready\r\n");
        assert_eq!(h.server(b"234 go\r\n")[0], server_start_tls());
        let a = h.advance(Duration::from_millis(2990));
        ends_with_421(&a, "in time");
    }
}

fn rules_of(actions: &[Action]) -> Vec<Rule> {
    for a in actions {
        if let Action::CommitRules { rules, .. } = a {
            return rules.clone();
        }
    }
    panic!("no commit in {actions:?}")
}

#[test]
fn the_server_leg_of_every_data_connection_is_tls_to_the_server() {
    let mut h = secured_explicit();
    h.server(b"331 Password\r\n");
    // Passive: the proxy connects to the server.
    let a = h.client(b"PASV\r\n");
    assert_eq!(a, vec![send(Side::Server, b"PASV\r\n")]);
    let a = h.server(b"227 Entering Passive Mode (198,51,100,10,78,32)\r\n");
    let rules = rules_of(&a);
    assert_eq!(rules[0].legs.connected, Security::TlsToServer);
    assert_eq!(rules[0].legs.accepted, Security::Plain);
}

#[test]
fn validate_needs_reverse_mode_and_the_relay() {
    let mut c = config(ServerTls::Explicit, ClientTls::Off);
    assert!(c.validate().is_ok());
    c.relay = false;
    assert!(matches!(c.validate(), Err(ConfigError::Tls(_))));
    let mut c = config(ServerTls::Implicit, ClientTls::Explicit);
    assert!(c.validate().is_ok());
    c.fixed_server = None;
    assert!(matches!(c.validate(), Err(ConfigError::Tls(_))));
}
