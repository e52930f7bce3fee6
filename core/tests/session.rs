//! Per-session behaviour, one transcript per rule of ftp-proxy.c's session
//! handling (`client_parse`, `server_parse`, `allow_data_connection`, timeouts) and our
//! documented differences (docs/behavior.md).

mod support;

use std::time::Duration;

use ftp_proxy_core::{
    Accept, Action, CloseReason, Config, FilterError, Input, Proxy, Refused, SessionId, Side,
    MAX_PIPELINED,
};
use support::*;

#[test]
fn relays_bytes_unchanged_in_both_directions() {
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(
        h.client(b"USER bob\r\nPASS s3cret\r\n"),
        vec![
            send(Side::Server, b"USER bob\r\n"),
            send(Side::Server, b"PASS s3cret\r\n")
        ]
    );
    assert_eq!(
        h.server(b"331 pw\r\n230 ok\r\n"),
        vec![
            send(Side::Client, b"331 pw\r\n"),
            send(Side::Client, b"230 ok\r\n")
        ]
    );
    // Bare LF, high bytes, a partial line that waits for its end.
    assert_eq!(
        h.client(b"CWD \xc3\xa9\n"),
        vec![send(Side::Server, b"CWD \xc3\xa9\n")]
    );
    assert_eq!(h.client(b"NO"), vec![]);
    assert_eq!(h.client(b"OP\r\n"), vec![send(Side::Server, b"NOOP\r\n")]);
}

#[test]
fn port_commits_rules_before_forwarding_the_rewritten_line() {
    let mut h = H::new(Config::default(), &[1295]); // proxy port 50447
    let a = h.client(b"port 10,9,8,7,19,136\r\n"); // port 5000, address ignored
    assert_eq!(a.len(), 1, "only the commit, the line waits: {a:?}");
    let (txn, rules) = commit(&a);
    assert_eq!(
        rules,
        [
            "pass in quick inet proto tcp from 198.51.100.10 to 198.51.100.1 port 50447 flags S/SA keep state (max 1) rdr-to 203.0.113.10 port 5000",
            "pass out quick inet proto tcp from 198.51.100.10 to 203.0.113.10 port 5000 flags S/SA keep state (max 1) nat-to 198.51.100.10 port 50001:65535",
        ]
    );
    // Server-side bytes wait too while the commit is in flight, keeping order.
    assert_eq!(h.server(b"200 x\r\n"), vec![]);
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![
            send(Side::Server, b"PORT 198,51,100,1,197,15\r\n"),
            send(Side::Client, b"200 x\r\n")
        ]
    );
}

#[test]
fn pasv_reply_is_held_until_its_rules_are_committed() {
    let mut h = H::new(Config::default(), &[1295]);
    assert_eq!(h.client(b"PASV\r\n"), vec![send(Side::Server, b"PASV\r\n")]);
    let a = h.server(b"227 Entering Passive Mode (198,51,100,10,117,76).\r\n"); // port 30028
    let (txn, rules) = commit(&a);
    assert_eq!(a.len(), 1);
    assert_eq!(
        rules,
        [
            "pass in quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 50447 flags S/SA keep state (max 1) rdr-to 198.51.100.10 port 30028",
            "pass out quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 30028 flags S/SA keep state (max 1) nat-to 198.51.100.1 port 50001:65535",
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            b"227 Entering Passive Mode (198,51,100,10,197,15)\r\n"
        )]
    );
}

#[test]
fn epsv_and_eprt_rewrites() {
    let mut h = H::new(Config::default(), &[1295, 1296]);
    h.client(b"EPSV\r\n");
    let (txn, _) = commit(&h.server(b"229 Entering Extended Passive Mode (|||30028|)\r\n"));
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            b"229 Entering Extended Passive Mode (|||50447|)\r\n"
        )]
    );
    let (txn, rules) = commit(&h.client(b"EPRT |1|10.0.0.1|5000|\r\n"));
    assert!(rules[1].ends_with("nat-to 198.51.100.10 port 50001:65535"));
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"EPRT |1|198.51.100.1|50448|\r\n")]
    );
}

#[test]
fn ipv6_mode_rewrites_and_refuses_pasv_and_port_with_a_reply() {
    let cfg = Config {
        ipv6: true,
        ..Config::default()
    };
    let mut h = H::with_addrs(
        cfg,
        &[1295],
        "[2001:db8:1::10]:40000",
        "[2001:db8:2::10]:21",
        "[2001:db8:2::1]:50000",
    );
    let (txn, rules) = commit(&h.client(b"EPRT |2|2001:db8:1::10|5000|\r\n"));
    assert_eq!(
        rules,
        [
            "pass in quick inet6 proto tcp from 2001:db8:2::10 to 2001:db8:2::1 port 50447 flags S/SA keep state (max 1) rdr-to 2001:db8:1::10 port 5000",
            "pass out quick inet6 proto tcp from 2001:db8:2::10 to 2001:db8:1::10 port 5000 flags S/SA keep state (max 1) nat-to 2001:db8:2::10 port 50001:65535",
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"EPRT |2|2001:db8:2::1|50447|\r\n")]
    );
    assert_eq!(h.server(b"200 ok\r\n").len(), 1);
    assert_eq!(
        h.client(b"PASV\r\n"),
        vec![send(
            Side::Client,
            b"500 PASV and PORT not allowed with IPv6\r\n"
        )]
    );
    assert_eq!(
        h.client(b"PORT 1,2,3,4,19,136\r\n"),
        vec![send(
            Side::Client,
            b"500 PASV and PORT not allowed with IPv6\r\n"
        )]
    );
    assert!(h.p.is_open(h.id));
}

#[test]
fn reverse_mode_rfc_mode_tag_queue_and_logging_shape_the_rules() {
    use ftp_proxy_core::{RuleLog, RuleOptions};
    let cfg = Config {
        fixed_server: Some(addr("198.51.100.20:2121")),
        rules: RuleOptions {
            tag: Some("ftpdata".into()),
            queue: Some("bulk".into()),
            log: RuleLog::All,
            rfc_mode: true,
            proxy_rtable: 0,
        },
        ..Config::default()
    };
    let mut p = Proxy::new(cfg, Box::new(Script([1295].into()))).unwrap();
    let now = std::time::Instant::now();
    let id = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    let Some((_, Action::ConnectServer { to, bind: None })) = p.poll_action() else {
        panic!()
    };
    assert_eq!(
        to,
        addr("198.51.100.20:2121"),
        "-R wins over the diverted destination"
    );
    greet_and_port(&mut p, now, id);
    let mut acts = Vec::new();
    while let Some((_, a)) = p.poll_action() {
        acts.push(a);
    }
    let (_, rules) = commit(&acts);
    assert_eq!(
        rules,
        [
            "match in log (all) inet proto tcp from 198.51.100.20 to 198.51.100.1 port 50447 flags S/SA keep state (max 1) queue bulk tag ftpdata rdr-to 203.0.113.10 port 5000",
            "match out log (all) inet proto tcp from 198.51.100.20 to 203.0.113.10 port 5000 flags S/SA keep state (max 1) queue bulk tag ftpdata nat-to 198.51.100.10 port 20",
        ]
    );
}

#[test]
fn rfc_mode_does_not_apply_to_eprt_and_log_flag() {
    use ftp_proxy_core::{RuleLog, RuleOptions};
    let cfg = Config {
        rules: RuleOptions {
            rfc_mode: true,
            log: RuleLog::Log,
            ..RuleOptions::default()
        },
        ..Config::default()
    };
    let mut h = H::new(cfg, &[0]);
    let (_, rules) = commit(&h.client(b"EPRT |1|1.2.3.4|5000|\r\n"));
    assert!(rules[0].starts_with("pass in log quick inet"));
    assert!(rules[1].ends_with("nat-to 198.51.100.10 port 50001:65535"));
}

#[test]
fn pipelined_pasv_is_not_forgotten_and_later_commands_wait_for_its_reply() {
    let mut h = H::new(Config::default(), &[0]);
    // Only the PASV goes out: the NOOP waits until the 227 has been handled, so the
    // server owes nothing else while its answer is awaited.
    assert_eq!(
        h.client(b"PASV\r\nNOOP\r\n"),
        vec![send(Side::Server, b"PASV\r\n")]
    );
    let (txn, _) = commit(&h.server(b"227 Entering Passive Mode (198,51,100,10,117,76)\r\n"));
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![
            send(
                Side::Client,
                b"227 Entering Passive Mode (198,51,100,10,192,0)\r\n"
            ),
            send(Side::Server, b"NOOP\r\n")
        ]
    );
    assert_eq!(
        h.server(b"200 noop\r\n"),
        vec![send(Side::Client, b"200 noop\r\n")]
    );
}

#[test]
fn multi_line_227_and_rfc1123_form_are_rewritten() {
    let mut h = H::new(Config::default(), &[0, 1]);
    h.client(b"PASV\r\n");
    assert_eq!(h.server(b"227-Entering Passive Mode\r\n"), vec![]);
    let (txn, _) = commit(&h.server(b" here it is =198,51,100,10,117,76\r\n227 done\r\n"));
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(
            Side::Client,
            b"227 Entering Passive Mode (198,51,100,10,192,0)\r\n"
        )]
    );
    h.client(b"PASV\r\n");
    let (txn, rules) = commit(&h.server(b"227 =198,51,100,10,117,77\r\n"));
    assert!(rules[0].ends_with("rdr-to 198.51.100.10 port 30029"));
    assert_eq!(h.ack(txn, Ok(())).len(), 1);
}

#[test]
fn unrelated_multi_line_replies_pass_line_by_line() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"HELP\r\n");
    assert_eq!(
        h.server(b"214-The following\r\n"),
        vec![send(Side::Client, b"214-The following\r\n")]
    );
    assert_eq!(
        h.server(b"227 not an answer to PASV\r\n"),
        vec![send(Side::Client, b"227 not an answer to PASV\r\n")]
    );
    assert_eq!(
        h.server(b"214 end\r\n"),
        vec![send(Side::Client, b"214 end\r\n")]
    );
}

#[test]
fn a_reply_when_none_is_owed_ends_the_session() {
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(
        h.server(b"227 (1,2,3,4,5,6)\r\n"),
        vec![close(CloseReason::ReplyDesync)]
    );
    // So does text outside any reply.
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(
        h.server(b"just text\r\n"),
        vec![close(CloseReason::ReplyDesync)]
    );
    // Whereas a 421 may come unasked (a server's idle timeout): it is relayed and
    // ends the session.
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(
        h.server(b"421 Timeout\r\n"),
        vec![
            send(Side::Client, b"421 Timeout\r\n"),
            close(CloseReason::ServerClosing)
        ]
    );
}

#[test]
fn a_multi_line_421_reaches_the_client_whole_and_nothing_after_it() {
    let mut h = H::new(Config::default(), &[0]);
    // A PASV waits behind a NOOP whose answer never comes: the server times out.
    assert_eq!(
        h.client(b"NOOP\r\nPASV\r\n"),
        vec![send(Side::Server, b"NOOP\r\n")]
    );
    assert_eq!(
        h.server(b"421-Idle timeout\r\n"),
        vec![send(Side::Client, b"421-Idle timeout\r\n")]
    );
    assert_eq!(
        h.server(b"227 Entering Passive Mode (127,0,0,1,11,190)\r\n421 Closing\r\n200 late\r\n"),
        vec![
            send(
                Side::Client,
                b"227 Entering Passive Mode (127,0,0,1,11,190)\r\n"
            ),
            send(Side::Client, b"421 Closing\r\n"),
            close(CloseReason::ServerClosing)
        ]
    );
    assert_eq!(h.server(b"227 (127,0,0,1,11,190)\r\n"), vec![]);
    assert_eq!(h.client(b"PASV\r\n"), vec![]);
}

#[test]
fn bad_data_ports_get_a_reply_and_the_session_continues() {
    let mut h = H::new(Config::default(), &[0]);
    let bad = b"501 Bad data port (below 1024 or malformed), refused by proxy\r\n";
    assert_eq!(
        h.client(b"PORT 10,0,0,5,3,255\r\n"),
        vec![send(Side::Client, bad)]
    );
    assert_eq!(
        h.client(b"PORT 127,0,0,1,0,80\r\n"),
        vec![send(Side::Client, bad)]
    );
    assert_eq!(
        h.client(b"EPRT |1|1.2.3.4|21|\r\n"),
        vec![send(Side::Client, bad)]
    );
    assert_eq!(
        h.client(b"EPRT |1|1.2.3|5000|\r\n"),
        vec![send(Side::Client, bad)]
    );
    h.client(b"PASV\r\n");
    assert_eq!(
        h.server(b"227 Entering Passive Mode (198,51,100,10,0,22)\r\n"),
        vec![send(
            Side::Client,
            b"425 Cannot open passive connection: bad port from server\r\n"
        )]
    );
    h.client(b"EPSV\r\n");
    assert_eq!(
        h.server(b"229 Entering Extended Passive Mode (|||x|)\r\n")
            .len(),
        1
    );
    assert!(h.p.is_open(h.id));
}

#[test]
fn local_replies_keep_reply_order_with_pipelining() {
    let cfg = Config {
        anonymous_only: true,
        ..Config::default()
    };
    let mut h = H::new(cfg, &[0]);
    // NOOP is forwarded; USER bob is answered by the proxy, but only after NOOP's reply.
    assert_eq!(
        h.client(b"NOOP\r\nUSER bob\r\n"),
        vec![send(Side::Server, b"NOOP\r\n")]
    );
    assert_eq!(
        h.server(b"200 noop\r\n"),
        vec![
            send(Side::Client, b"200 noop\r\n"),
            send(Side::Client, b"500 Only anonymous FTP allowed\r\n")
        ]
    );
    assert_eq!(
        h.client(b"USER anonymous\r\n"),
        vec![send(Side::Server, b"USER anonymous\r\n")]
    );
    assert_eq!(
        h.client(b"user FTP\n"),
        vec![send(Side::Server, b"user FTP\n")]
    );
}

#[test]
fn too_many_pipelined_commands_end_the_session_without_forwarding_the_last() {
    // Found by the proxy fuzz target: the command over the limit ended the session
    // and was still forwarded (a Send after Close), and a PORT over the limit still
    // committed rules for a closed session, rules nothing would ever remove.
    for last in [
        &b"NOOP\r\n"[..],
        b"PORT 1,2,3,4,19,136\r\n",
        b"EPRT |1|1.2.3.4|5000|\r\n",
    ] {
        let mut h = H::new(Config::default(), &[0]);
        assert_eq!(MAX_PIPELINED, 4096, "docs/behavior.md says so");
        let a = h.client(&b"NOOP\r\n".repeat(MAX_PIPELINED));
        assert_eq!(a.len(), MAX_PIPELINED, "every NOOP forwarded");
        assert_eq!(
            h.client(last),
            vec![close(CloseReason::TooManyPipelined)],
            "{}",
            String::from_utf8_lossy(last)
        );
        assert!(h.client(b"NOOP\r\n").is_empty());
    }
}

#[test]
fn anonymous_reply_waits_for_the_greeting() {
    let cfg = Config {
        anonymous_only: true,
        ..Config::default()
    };
    let mut p = Proxy::new(cfg, Box::new(Script([0].into()))).unwrap();
    let now = std::time::Instant::now();
    let id = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    p.handle(now, id, Input::ServerSocketOpened { proxy: addr(PROXY) });
    p.handle(now, id, Input::Data(Side::Client, "USER bob\r\n".into()));
    p.handle(
        now,
        id,
        Input::Data(Side::Server, "220-multi\r\n220 line\r\n".into()),
    );
    let sends: Vec<_> = std::iter::from_fn(|| p.poll_action())
        .map(|(_, a)| a)
        .skip(1)
        .collect();
    assert_eq!(
        sends,
        vec![
            send(Side::Client, b"220-multi\r\n"),
            send(Side::Client, b"220 line\r\n"),
            send(Side::Client, b"500 Only anonymous FTP allowed\r\n")
        ]
    );
}

#[test]
fn long_lines_and_nul_bytes_end_the_session_and_remove_its_rules() {
    let mut h = H::new(Config::default(), &[0]);
    let mut line = vec![b'A'; 498];
    line.extend_from_slice(b"\r\n");
    assert_eq!(h.client(&line).len(), 1, "500 bytes is fine");
    let (txn, _) = commit(&h.client(b"PORT 1,2,3,4,19,136\r\n"));
    assert_eq!(h.ack(txn, Ok(())).len(), 1);
    let a = h.client(&[b'B'; 501]);
    assert_eq!(a[0], close(CloseReason::NotClean(Side::Client)));
    assert_eq!(a[0].clone(), close(CloseReason::NotClean(Side::Client)));
    let Action::CommitRules { txn, rules, .. } = &a[1] else {
        panic!("{a:?}")
    };
    assert!(rules.is_empty());
    assert_eq!(h.p.len(), 1, "kept until the removal is acknowledged");
    h.ack(*txn, Ok(()));
    assert_eq!(h.p.len(), 0);

    let mut h = H::new(Config::default(), &[0]);
    let a = h.server(b"200 a\0b\r\n");
    assert_eq!(
        a,
        vec![close(CloseReason::NotClean(Side::Server))],
        "no rules were ever added: nothing to remove"
    );
    assert_eq!(h.p.len(), 0);
    assert_eq!(
        CloseReason::NotClean(Side::Server).to_string(),
        "server reply too long or not clean"
    );
    assert_eq!(
        CloseReason::NotClean(Side::Client).to_string(),
        "client command too long or not clean"
    );
}

#[test]
fn busy_is_retried_once_after_five_ms() {
    let mut h = H::new(Config::default(), &[0, 1]);
    let (txn, rules) = commit(&h.client(b"PORT 1,2,3,4,19,136\r\n"));
    assert_eq!(h.ack(txn, Err(FilterError::Busy)), vec![]);
    assert_eq!(h.p.poll_timeout(), Some(h.now + Duration::from_millis(5)));
    assert_eq!(h.advance(Duration::from_millis(4)), vec![]);
    let (txn2, rules2) = commit(&h.advance(Duration::from_millis(1)));
    assert_eq!((txn2, &rules2), (txn, &rules));
    assert_eq!(h.ack(txn, Ok(())).len(), 1);

    let (txn, _) = commit(&h.client(b"PORT 1,2,3,4,19,137\r\n"));
    h.ack(txn, Err(FilterError::Busy));
    commit(&h.advance(Duration::from_millis(5)));
    let a = h.ack(txn, Err(FilterError::Busy));
    assert_eq!(a[0], close(CloseReason::Filter(FilterError::Busy)));
    assert_eq!(
        CloseReason::Filter(FilterError::Busy).to_string(),
        "pf operation failed: Device busy"
    );
}

#[test]
fn a_failed_commit_ends_the_session_without_sending_the_line() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"PASV\r\n");
    let (txn, _) = commit(&h.server(b"227 (198,51,100,10,117,76)\r\n"));
    let a = h.ack(txn, Err(FilterError::PermissionDenied));
    assert_eq!(
        a[0],
        close(CloseReason::Filter(FilterError::PermissionDenied))
    );
    assert!(a.iter().all(|a| !matches!(a, Action::Send(..))));
    assert!(matches!(&a[1], Action::CommitRules { rules, .. } if rules.is_empty()));
}

#[test]
fn server_gets_thirty_seconds_then_the_idle_timeout_applies() {
    let cfg = Config {
        idle_timeout_secs: 100,
        ..Config::default()
    };
    let mut p = Proxy::new(cfg.clone(), Box::new(Script([0].into()))).unwrap();
    let t0 = std::time::Instant::now();
    let id = p
        .accept(t0, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    p.handle_timeout(t0 + Duration::from_secs(29));
    assert!(p.is_open(id));
    p.handle_timeout(t0 + Duration::from_secs(30));
    assert!(!p.is_open(id));
    let acts: Vec<_> = std::iter::from_fn(|| p.poll_action()).collect();
    assert!(acts
        .into_iter()
        .any(|(i, a)| i == id && blank(a) == close(CloseReason::Timeout(Side::Server))));

    let mut h = H::new(cfg, &[0]);
    assert_eq!(h.advance(Duration::from_secs(99)), vec![]);
    h.client(b"NOOP\r\n"); // re-arms the client timer only
    let a = h.advance(Duration::from_secs(1));
    assert_eq!(a, vec![close(CloseReason::Timeout(Side::Server))]);
}

#[test]
fn zero_timeout_means_none_after_the_banner() {
    let cfg = Config {
        idle_timeout_secs: 0,
        login_timeout_secs: 0,
        ..Config::default()
    };
    let h = H::new(cfg, &[0]);
    assert_eq!(h.p.poll_timeout(), None);
}

#[test]
fn a_client_that_never_logs_in_is_ended_at_the_login_timeout() {
    let cfg = Config {
        login_timeout_secs: 120,
        ..Config::default()
    };
    // Busy but never logged in: commands keep the idle timer fresh, not this one.
    let mut h = H::new(cfg.clone(), &[0]);
    for _ in 0..3 {
        assert_eq!(h.advance(Duration::from_secs(39)), vec![]);
        h.client(b"USER x\r\n");
        h.server(b"331 pw\r\n");
    }
    let a = h.advance(Duration::from_secs(3));
    assert_eq!(a, vec![close(CloseReason::LoginTimeout)]);
    assert_eq!(CloseReason::LoginTimeout.kind(), "login_timeout");

    // A 230 (here after PASS) ends the bound: only -t applies from then on.
    let mut h = H::new(cfg, &[0]);
    h.client(b"USER x\r\nPASS y\r\n");
    h.server(b"331 pw\r\n230-Welcome\r\n230 in\r\n");
    assert_eq!(h.advance(Duration::from_secs(3600)), vec![]);
}

#[test]
fn eof_reset_and_write_errors_end_the_session_with_the_originals_words() {
    for (input, text) in [
        (Input::Eof(Side::Client), "client close"),
        (Input::Eof(Side::Server), "server close"),
        (Input::Reset(Side::Client), "client reset connection"),
        (Input::Reset(Side::Server), "server refused connection"),
        (Input::WriteError(Side::Client), "client write error"),
    ] {
        let mut h = H::new(Config::default(), &[0]);
        let a = h.input(input);
        let [Action::Close { reason, .. }] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(reason.to_string(), text);
        assert!(h.p.is_empty());
    }
}

#[test]
fn session_limit_ids_and_anchors() {
    let cfg = Config {
        max_sessions: 2,
        pid: 4242,
        ..Config::default()
    };
    let mut p = Proxy::new(cfg, Box::new(Script([0, 1].into()))).unwrap();
    let now = std::time::Instant::now();
    let a = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    let b = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    assert_eq!((a, b), (SessionId(1), SessionId(2)));
    assert_eq!(
        p.accept(now, Accept::new(addr(CLIENT), addr(SERVER))),
        Err(Refused::Limit(2))
    );
    p.handle(now, a, Input::Eof(Side::Client));
    let c = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    assert_eq!(c, SessionId(3), "ids are never reused");
    greet_and_port(&mut p, now, c);
    let anchor = std::iter::from_fn(|| p.poll_action())
        .find_map(|(_, a)| match a {
            Action::CommitRules { anchor, .. } => Some(anchor),
            _ => None,
        })
        .unwrap();
    assert_eq!(anchor.to_string(), "ftp-proxy/4242.3");
}

#[test]
fn live_sessions_never_share_a_proxy_port() {
    // The generator offers 0 twice: the second session must draw again.
    let mut p = Proxy::new(Config::default(), Box::new(Script([0, 0, 7].into()))).unwrap();
    let now = std::time::Instant::now();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let id = p
            .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
            .unwrap();
        greet_and_port(&mut p, now, id);
        let txn = std::iter::from_fn(|| p.poll_action())
            .find_map(|(_, a)| {
                if let Action::CommitRules { txn, .. } = a {
                    Some(txn)
                } else {
                    None
                }
            })
            .unwrap();
        p.handle(
            now,
            id,
            Input::RulesCommitted {
                txn,
                result: Ok(()),
            },
        );
        let line = std::iter::from_fn(|| p.poll_action())
            .find_map(|(_, a)| {
                if let Action::Send(_, l) = a {
                    Some(l)
                } else {
                    None
                }
            })
            .unwrap();
        ports.push(line);
    }
    assert_eq!(ports[0], "PORT 198,51,100,1,192,0\r\n");
    assert_eq!(ports[1], "PORT 198,51,100,1,192,7\r\n");
}

#[test]
fn shutdown_ends_everything_and_refuses_new_clients() {
    let mut p = Proxy::new(Config::default(), Box::new(Script([0, 1].into()))).unwrap();
    let now = std::time::Instant::now();
    let a = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    greet_and_port(&mut p, now, a);
    let _b = p
        .accept(now, Accept::new(addr(CLIENT), addr(SERVER)))
        .unwrap();
    while p.poll_action().is_some() {}
    p.shutdown(now);
    assert_eq!(
        p.accept(now, Accept::new(addr(CLIENT), addr(SERVER))),
        Err(Refused::ShuttingDown)
    );
    let acts: Vec<_> = std::iter::from_fn(|| p.poll_action()).collect();
    assert_eq!(
        acts.iter()
            .filter(|(_, a)| matches!(
                a,
                Action::Close {
                    reason: CloseReason::Shutdown,
                    ..
                }
            ))
            .count(),
        2
    );
    let removal: Vec<_> = acts
        .iter()
        .filter_map(|(id, a)| match a {
            Action::CommitRules { txn, rules, .. } if rules.is_empty() => Some((*id, *txn)),
            _ => None,
        })
        .collect();
    assert_eq!(
        removal.len(),
        1,
        "only the session with rules needs a removal"
    );
    assert_eq!(p.len(), 1);
    p.handle(
        now,
        removal[0].0,
        Input::RulesCommitted {
            txn: removal[0].1,
            result: Ok(()),
        },
    );
    assert!(p.is_empty());
}

#[test]
fn passwords_are_masked_and_config_ranges_checked() {
    use ftp_proxy_core::ConfigError;
    let bad = |cfg: Config| {
        Proxy::new(cfg, Box::new(Script([0].into())))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad(Config {
            max_sessions: 0,
            ..Config::default()
        }),
        "max sessions too small"
    );
    assert_eq!(
        bad(Config {
            max_sessions: 501,
            ..Config::default()
        }),
        "max sessions too large"
    );
    assert_eq!(
        bad(Config {
            idle_timeout_secs: 86401,
            ..Config::default()
        }),
        "timeout too large"
    );
    let mut c = Config::default();
    c.rules.tag = Some("x".repeat(64));
    assert_eq!(
        Proxy::new(c, Box::new(Script([0].into()))).unwrap_err(),
        ConfigError::TagTooLong
    );
}

#[test]
fn a_port_in_use_is_replaced_by_another_and_the_line_follows() {
    let mut h = H::new(Config::default(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    h.client(b"PASV\r\n");
    let (txn, rules) = commit(&h.server(b"227 (198,51,100,10,117,76)\r\n"));
    assert!(rules[0].contains(" port 49152 "));
    let (txn2, rules2) = commit(&h.ack(txn, Err(FilterError::AddrInUse)));
    assert_ne!(txn2, txn);
    assert!(rules2[0].contains(" port 49153 "), "{rules2:?}");
    assert_eq!(
        h.ack(txn2, Ok(())),
        vec![send(
            Side::Client,
            b"227 Entering Passive Mode (198,51,100,10,192,1)\r\n"
        )]
    );
    // Eight ports in use in a row: the session gives up.
    let mut a = h.client(b"PORT 1,2,3,4,19,136\r\n");
    for _ in 0..7 {
        let (txn, _) = commit(&a);
        a = h.ack(txn, Err(FilterError::AddrInUse));
    }
    let (txn, _) = commit(&a);
    let a = h.ack(txn, Err(FilterError::AddrInUse));
    assert_eq!(a[0], close(CloseReason::Filter(FilterError::AddrInUse)));
}

/// The STAT -1 listing of a directory holding files named `213 a` and
/// `227 Entering Passive Mode (127,0,0,1,11,190)`: the first ends the reply early
/// for anyone reading it line by line, the second looks like a PASV answer.
const STAT_HEAD: &[u8] = b"213-STAT\r\n213 a\r\n";
const FORGED: &[u8] = b"227 Entering Passive Mode (127,0,0,1,11,190)\r\n";
const STAT_TAIL: &[u8] = b"213 End.\r\n";

fn no_rules(actions: &[Action]) {
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CommitRules { rules, .. } if !rules.is_empty())),
        "{actions:?}"
    );
}

#[test]
fn forged_227_in_the_same_segment_as_an_early_reply_end_opens_nothing() {
    let mut h = H::new(Config::default(), &[0]);
    // The PASV is held while the STAT reply is owed.
    assert_eq!(
        h.client(b"STAT -1\r\nPASV\r\n"),
        vec![send(Side::Server, b"STAT -1\r\n")]
    );
    let mut seg = STAT_HEAD.to_vec();
    seg.extend_from_slice(FORGED);
    seg.extend_from_slice(STAT_TAIL);
    let a = h.server(&seg);
    no_rules(&a);
    assert!(!a.contains(&send(Side::Server, b"PASV\r\n")), "{a:?}");
    assert_eq!(a.last(), Some(&close(CloseReason::ReplyDesync)));
}

const REFUSED_PASSIVE: &[u8] =
    b"425 Passive mode refused by proxy after a multi-line reply; use active mode (PORT/EPRT)\r\n";

fn relay() -> Config {
    Config {
        relay: true,
        ..Config::default()
    }
}

#[test]
fn forged_227_in_a_later_segment_opens_nothing() {
    // A kernel filter cannot join: the PASV after the listing is refused.
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"STAT -1\r\nPASV\r\n");
    let a = h.server(STAT_HEAD);
    assert_eq!(
        a,
        vec![
            send(Side::Client, b"213-STAT\r\n"),
            send(Side::Client, b"213 a\r\n"),
            send(Side::Client, REFUSED_PASSIVE)
        ]
    );
    let mut seg = FORGED.to_vec();
    seg.extend_from_slice(STAT_TAIL);
    let a = h.server(&seg);
    no_rules(&a);
    assert_eq!(a, vec![close(CloseReason::ReplyDesync)]);
}

#[test]
fn forged_227_arriving_alone_after_an_early_end_is_never_a_passive_answer() {
    // The review's read-boundary case: the forged line is the whole of a read, after
    // the reply seemed to end. With a relay the PASV is served joined: the server
    // is told to connect to the proxy, and no server reply names a port.
    let mut h = H::new(relay(), &[0, 1]);
    h.client(b"STAT -1\r\nPASV\r\n");
    let a = h.server(STAT_HEAD);
    let (txn, rules) = commit(&a);
    assert_eq!(
        rules,
        [
            "pass in quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 49152 flags S/SA keep state (max 1) join-with 198.51.100.1 port 49153",
            "pass in quick inet proto tcp from 198.51.100.10 to 198.51.100.1 port 49153 flags S/SA keep state (max 1) join-with 198.51.100.10 port 49152",
        ]
    );
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"PORT 198,51,100,1,192,1\r\n")]
    );
    // The forged line alone is taken for the answer to the proxy's PORT, but it
    // names nothing that is used: the client gets the proxy's own port, which joins
    // only with a connection from the server's address, and nothing is committed.
    let a = h.server(FORGED);
    no_rules(&a);
    assert_eq!(
        a,
        vec![send(
            Side::Client,
            b"227 Entering Passive Mode (198,51,100,10,192,0)\r\n"
        )]
    );
    // The rest of the listing is out of step: the session and its data connections end.
    let a = h.server(STAT_TAIL);
    assert_eq!(
        a,
        vec![
            Action::EndDataConnections {
                anchor: ftp_proxy_core::Anchor {
                    pid: 0,
                    session: h.id.0
                }
            },
            close(CloseReason::ReplyDesync),
            Action::CommitRules {
                txn: txn + 1,
                anchor: ftp_proxy_core::Anchor {
                    pid: 0,
                    session: h.id.0
                },
                rules: vec![]
            }
        ]
    );
}

#[test]
fn a_forged_200_after_an_early_end_opens_only_the_proxys_own_ports() {
    // A sentinel answer the client can predict (200 to the proxy's PORT) is forged
    // too: the client learns the proxy's port, which joins only with a connection
    // from the server's own address; the rest of the listing ends the session.
    let mut h = H::new(relay(), &[0, 1]);
    h.client(b"STAT -1\r\nEPSV\r\n");
    let (txn, _) = commit(&h.server(STAT_HEAD));
    h.ack(txn, Ok(()));
    assert_eq!(
        h.server(b"200 PORT command successful\r\n"),
        vec![send(
            Side::Client,
            b"229 Entering Extended Passive Mode (|||49152|)\r\n"
        )]
    );
    let a = h.server(STAT_TAIL);
    assert!(a.contains(&close(CloseReason::ReplyDesync)), "{a:?}");
}

#[test]
fn forged_227_split_across_the_pasv_is_stale() {
    // The forged line had begun to arrive before the PASV went out (possible only
    // with --server-data-ports, under which a kernel filter still asks the server).
    let cfg = Config {
        server_data_ports: Some(ftp_proxy_core::PortRange {
            low: 1024,
            high: 65535,
        }),
        ..Config::default()
    };
    let mut h = H::new(cfg, &[0]);
    h.client(b"STAT -1\r\nPASV\r\n");
    let mut seg = STAT_HEAD.to_vec();
    seg.extend_from_slice(&FORGED[..10]);
    let a = h.server(&seg);
    assert_eq!(a.last(), Some(&send(Side::Server, b"PASV\r\n")));
    let a = h.server(&FORGED[10..]);
    no_rules(&a);
    assert_eq!(a, vec![close(CloseReason::ReplyDesync)]);
}

#[test]
fn a_421_in_a_listing_ends_the_session_and_releases_nothing() {
    // The review's second forgery: `421-zzz` after an early end, then a later STAT
    // whose listing holds `421 y` and a forged 227.
    let mut h = H::new(relay(), &[0, 1]);
    h.client(b"STAT -1 a\r\n");
    let a = h.server(b"213-STAT\r\n213 a\r\n421-zzz\r\n");
    assert_eq!(
        a,
        vec![
            send(Side::Client, b"213-STAT\r\n"),
            send(Side::Client, b"213 a\r\n"),
            send(Side::Client, b"421-zzz\r\n")
        ]
    );
    let a = h.client(b"STAT -1 b\r\nPASV\r\n");
    assert_eq!(a, vec![]);
    let a = h.server(b"213 End.\r\n421 y\r\n");
    assert_eq!(
        a,
        vec![
            send(Side::Client, b"213 End.\r\n"),
            send(Side::Client, b"421 y\r\n"),
            close(CloseReason::ServerClosing)
        ]
    );
    assert_eq!(h.server(FORGED), vec![]);
}

#[test]
fn lowercase_verbs_and_other_listings_are_treated_alike() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"stat -1 dir\r\nepsv\r\n");
    let a = h.server(b"211-Status\r\n211 a\r\n");
    assert_eq!(a.last(), Some(&send(Side::Client, REFUSED_PASSIVE)));
    let a = h.server(b"229 Entering Extended Passive Mode (|||3006|)\r\n");
    no_rules(&a);
    assert_eq!(a, vec![close(CloseReason::ReplyDesync)]);
}

#[test]
fn feat_and_the_greeting_leave_passive_mode_as_it_was() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"FEAT\r\n");
    h.server(b"211-Features:\r\n EPSV\r\n211 End\r\n");
    assert_eq!(h.client(b"PASV\r\n"), vec![send(Side::Server, b"PASV\r\n")]);
}

#[test]
fn transfer_statistics_leave_passive_mode_as_it_was_and_a_directory_message_does_not() {
    // pure-ftpd's multi-line 150/226 are its own text: the next PASV goes to it.
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"RETR f\r\n");
    h.server(b"150-Accepted data connection\r\n150 1.0 kbytes to download\r\n");
    h.server(b"226-File successfully transferred\r\n226 0.000 seconds\r\n");
    assert_eq!(h.client(b"PASV\r\n"), vec![send(Side::Server, b"PASV\r\n")]);
    // A multi-line reply to CWD may show a file the client uploaded (.message).
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"CWD up\r\n");
    h.server(b"250-Welcome\r\n250 OK\r\n");
    assert_eq!(
        h.client(b"EPSV\r\n"),
        vec![send(Side::Client, REFUSED_PASSIVE)]
    );
    // A bare STAT is the server's status, not a listing.
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"STAT\r\n");
    h.server(b"211-status\r\n logged in\r\n211 End\r\n");
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
}

#[test]
fn epsv_all_is_forwarded_and_then_no_join_is_tried() {
    // After EPSV ALL the server refuses PORT (RFC 2428), so a join would fail.
    let mut h = H::new(relay(), &[0, 1]);
    assert_eq!(
        h.client(b"EPSV ALL\r\n"),
        vec![send(Side::Server, b"EPSV ALL\r\n")]
    );
    assert_eq!(
        h.server(b"200 EPSV ALL ok\r\n"),
        vec![send(Side::Client, b"200 EPSV ALL ok\r\n")]
    );
    h.client(b"STAT -1 d\r\n");
    h.server(b"213-STAT\r\n a\r\n213 End\r\n");
    assert_eq!(
        h.client(b"EPSV\r\n"),
        vec![send(Side::Client, REFUSED_PASSIVE)]
    );
    // Before a listing, EPSV after EPSV ALL goes to the server as usual.
    let mut h = H::new(relay(), &[0]);
    h.client(b"epsv all\r\n");
    h.server(b"200 ok\r\n");
    assert_eq!(h.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
}

#[test]
fn active_mode_still_works_after_a_listing() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"STAT -1\r\n");
    h.server(b"213-STAT\r\n 213 a\r\n213 End.\r\n");
    let (txn, _) = commit(&h.client(b"PORT 10,9,8,7,19,136\r\n"));
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"PORT 198,51,100,1,192,0\r\n")]
    );
}

#[test]
fn forged_epsv_answer_is_refused_too() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"STAT -1\r\nEPSV\r\n");
    let a = h.server(b"213-STAT\r\n213 a\r\n229 Entering Extended Passive Mode (|||3006|)\r\n");
    no_rules(&a);
    assert_eq!(a.last(), Some(&close(CloseReason::ReplyDesync)));
}

#[test]
fn a_pasv_after_an_honest_multi_line_reply_is_served_joined() {
    let mut h = H::new(relay(), &[0, 1]);
    assert_eq!(h.client(b"STAT -1\r\nPASV\r\n").len(), 1);
    let a = h.server(b"213-STAT\r\n 213 a\r\n213 End.\r\n");
    let (txn, rules) = commit(&a);
    assert!(rules.iter().all(|r| r.contains("join-with")), "{rules:?}");
    assert_eq!(
        h.ack(txn, Ok(())),
        vec![send(Side::Server, b"PORT 198,51,100,1,192,1\r\n")]
    );
    assert_eq!(
        h.server(b"200 PORT command successful\r\n"),
        vec![send(
            Side::Client,
            b"227 Entering Passive Mode (198,51,100,10,192,0)\r\n"
        )]
    );
    // The session goes on: a transfer command is relayed, its replies too.
    assert_eq!(
        h.client(b"RETR f\r\n"),
        vec![send(Side::Server, b"RETR f\r\n")]
    );
    assert_eq!(
        h.server(b"150 ok\r\n226 done\r\n"),
        vec![
            send(Side::Client, b"150 ok\r\n"),
            send(Side::Client, b"226 done\r\n"),
            Action::TransferDone {
                anchor: ftp_proxy_core::Anchor {
                    pid: 0,
                    session: h.id.0
                }
            }
        ]
    );
}

#[test]
fn server_data_ports_bound_what_a_227_may_name() {
    let cfg = Config {
        server_data_ports: Some(ftp_proxy_core::PortRange {
            low: 30000,
            high: 30100,
        }),
        ..Config::default()
    };
    let mut h = H::new(cfg, &[0]);
    h.client(b"PASV\r\n");
    assert_eq!(
        h.server(b"227 Entering Passive Mode (198,51,100,10,11,190)\r\n"),
        vec![send(
            Side::Client,
            b"425 Cannot open passive connection: bad port from server\r\n"
        )]
    );
    h.client(b"EPSV\r\n");
    assert_eq!(
        h.server(b"229 x (|||30101|)\r\n"),
        vec![send(
            Side::Client,
            b"425 Cannot open passive connection: bad port from server\r\n"
        )]
    );
    h.client(b"EPSV\r\n");
    let (_, rules) = commit(&h.server(b"229 x (|||30100|)\r\n"));
    assert!(rules[0].ends_with("port 30100"), "{rules:?}");
    let bad = Config {
        server_data_ports: Some(ftp_proxy_core::PortRange {
            low: 2000,
            high: 1999,
        }),
        ..Config::default()
    };
    assert!(Proxy::new(bad, Box::new(Script([0].into()))).is_err());
    let low = Config {
        server_data_ports: Some(ftp_proxy_core::PortRange {
            low: 21,
            high: 2000,
        }),
        ..Config::default()
    };
    assert!(Proxy::new(low, Box::new(Script([0].into()))).is_err());
}

#[test]
fn auth_pbsz_and_prot_are_answered_by_the_proxy() {
    let mut h = H::new(Config::default(), &[0]);
    for l in [
        &b"AUTH TLS\r\n"[..],
        b"AUTH SSL\r\n",
        b"auth tls-c\r\n",
        b"AUTH TLS-P\r\n",
        b"PBSZ 0\r\n",
        b"PROT P\r\n",
    ] {
        assert_eq!(
            h.client(l),
            vec![send(
                Side::Client,
                b"534 Request denied for policy reasons: this proxy carries plain-text FTP only\r\n"
            )],
            "{}",
            String::from_utf8_lossy(l)
        );
    }
    // In order behind a pipelined command.
    assert_eq!(
        h.client(b"NOOP\r\nAUTH TLS\r\n"),
        vec![send(Side::Server, b"NOOP\r\n")]
    );
    let a = h.server(b"200 ok\r\n");
    assert_eq!(a[0], send(Side::Client, b"200 ok\r\n"));
    assert!(
        a[1] == send(
            Side::Client,
            b"534 Request denied for policy reasons: this proxy carries plain-text FTP only\r\n"
        )
    );
}

#[test]
fn feat_replies_lose_their_security_lines() {
    let mut h = H::new(Config::default(), &[0]);
    h.client(b"FEAT\r\n");
    let a = h.server(
        b"211-Extensions supported:\r\n EPRT\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPSV\r\n211 End.\r\n",
    );
    assert_eq!(
        a,
        vec![
            send(Side::Client, b"211-Extensions supported:\r\n"),
            send(Side::Client, b" EPRT\r\n"),
            send(Side::Client, b" EPSV\r\n"),
            send(Side::Client, b"211 End.\r\n"),
        ]
    );
    // Other multi-line replies keep such lines.
    h.client(b"HELP\r\n");
    assert_eq!(h.server(b"214-x\r\n AUTH TLS\r\n214 y\r\n").len(), 3);
}

#[test]
fn anonymous_only_judges_user_after_blanks_and_telnet_commands() {
    let cfg = Config {
        anonymous_only: true,
        ..Config::default()
    };
    let mut h = H::new(cfg, &[0]);
    for l in [
        &b" USER bob\r\n"[..],
        b"\t USER bob\r\n",
        b"\xff\xf4\xff\xf2USER bob\r\n",
        b"\xff\xfd\x03 user bob\r\n",
    ] {
        assert_eq!(
            h.client(l),
            vec![send(Side::Client, b"500 Only anonymous FTP allowed\r\n")],
            "{l:?}"
        );
    }
    assert_eq!(
        h.client(b" USER ftp\r\n"),
        vec![send(Side::Server, b" USER ftp\r\n")]
    );
}

/// Whether a line is owed a reply depends on its text, not on its length: pure-ftpd
/// answers `A` with `500 Unknown command` (ending the session as a stray reply when
/// the line was not counted) and ignores a line of blanks (holding a pipelined PASV
/// forever when the line was counted).
#[test]
fn one_letter_commands_are_owed_a_reply_and_blank_lines_are_not() {
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(h.client(b"A\r\n"), vec![send(Side::Server, b"A\r\n")]);
    assert_eq!(
        h.server(b"500 Unknown command\r\n"),
        vec![send(Side::Client, b"500 Unknown command\r\n")]
    );
    let mut h = H::new(Config::default(), &[0]);
    assert_eq!(
        h.client(b"  \r\nPASV\r\n"),
        vec![
            send(Side::Server, b"  \r\n"),
            send(Side::Server, b"PASV\r\n")
        ]
    );
}
