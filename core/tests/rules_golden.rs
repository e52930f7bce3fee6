//! Golden pf.conf renderings of every rule the proxy makes: passive and active mode,
//! IPv4 and IPv6, with and without -R, -r, -T, -q, -v, -vv.

use std::net::IpAddr;

use ftp_proxy_core::{data_rules, Mode, RuleLog, RuleOptions, SessionAddrs};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(reverse: bool) -> SessionAddrs {
    SessionAddrs {
        client: ip("203.0.113.10"),
        server: ip(if reverse {
            "198.51.100.20"
        } else {
            "198.51.100.10"
        }),
        orig_server: ip("198.51.100.10"),
        proxy: ip("198.51.100.1"),
        client_rdomain: 0,
    }
}

fn v6(reverse: bool) -> SessionAddrs {
    SessionAddrs {
        client: ip("2001:db8:1::10"),
        server: ip(if reverse {
            "2001:db8:2::20"
        } else {
            "2001:db8:2::10"
        }),
        orig_server: ip("2001:db8:2::10"),
        proxy: ip("2001:db8:2::1"),
        client_rdomain: 0,
    }
}

fn render(mode: Mode, a: &SessionAddrs, opts: &RuleOptions) -> [String; 2] {
    data_rules(mode, a, 30028, 50447, opts).map(|r| r.to_string())
}

const KS: &str = "flags S/SA keep state (max 1)";

#[test]
fn passive_ipv4_plain_and_reverse() {
    let o = RuleOptions::default();
    assert_eq!(
        render(Mode::Passive, &v4(false), &o),
        [
            format!("pass in quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 50447 {KS} rdr-to 198.51.100.10 port 30028"),
            format!("pass out quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 30028 {KS} nat-to 198.51.100.1 port 50001:65535"),
        ]
    );
    assert_eq!(
        render(Mode::Passive, &v4(true), &o),
        [
            format!("pass in quick inet proto tcp from 203.0.113.10 to 198.51.100.10 port 50447 {KS} rdr-to 198.51.100.20 port 30028"),
            format!("pass out quick inet proto tcp from 203.0.113.10 to 198.51.100.20 port 30028 {KS} nat-to 198.51.100.1 port 50001:65535"),
        ]
    );
}

#[test]
fn passive_ipv6_with_log_all() {
    let o = RuleOptions {
        log: RuleLog::All,
        ..RuleOptions::default()
    };
    assert_eq!(
        render(Mode::Passive, &v6(false), &o),
        [
            format!("pass in log (all) quick inet6 proto tcp from 2001:db8:1::10 to 2001:db8:2::10 port 50447 {KS} rdr-to 2001:db8:2::10 port 30028"),
            format!("pass out log (all) quick inet6 proto tcp from 2001:db8:1::10 to 2001:db8:2::10 port 30028 {KS} nat-to 2001:db8:2::1 port 50001:65535"),
        ]
    );
}

#[test]
fn active_ipv4_port_with_and_without_rfc_mode() {
    let plain = RuleOptions::default();
    let rfc = RuleOptions {
        rfc_mode: true,
        ..RuleOptions::default()
    };
    let a1 = format!("pass in quick inet proto tcp from 198.51.100.10 to 198.51.100.1 port 50447 {KS} rdr-to 203.0.113.10 port 30028");
    assert_eq!(
        render(Mode::ActivePort, &v4(false), &plain),
        [a1.clone(), format!("pass out quick inet proto tcp from 198.51.100.10 to 203.0.113.10 port 30028 {KS} nat-to 198.51.100.10 port 50001:65535")]
    );
    assert_eq!(
        render(Mode::ActivePort, &v4(false), &rfc),
        [a1.clone(), format!("pass out quick inet proto tcp from 198.51.100.10 to 203.0.113.10 port 30028 {KS} nat-to 198.51.100.10 port 20")]
    );
    // -r applies to PORT only, as in the original.
    assert_eq!(
        render(Mode::ActiveEprt, &v4(false), &rfc),
        render(Mode::ActivePort, &v4(false), &plain)
    );
}

#[test]
fn active_reverse_mode_nats_to_the_original_server() {
    let o = RuleOptions {
        log: RuleLog::Log,
        ..RuleOptions::default()
    };
    assert_eq!(
        render(Mode::ActiveEprt, &v6(true), &o),
        [
            format!("pass in log quick inet6 proto tcp from 2001:db8:2::20 to 2001:db8:2::1 port 50447 {KS} rdr-to 2001:db8:1::10 port 30028"),
            format!("pass out log quick inet6 proto tcp from 2001:db8:2::20 to 2001:db8:1::10 port 30028 {KS} nat-to 2001:db8:2::10 port 50001:65535"),
        ]
    );
}

#[test]
fn tag_makes_match_rules_without_quick_and_queue_is_appended() {
    let o = RuleOptions {
        tag: Some("ftpdata".into()),
        queue: Some("bulk".into()),
        ..RuleOptions::default()
    };
    assert_eq!(
        render(Mode::Passive, &v4(false), &o),
        [
            format!("match in inet proto tcp from 203.0.113.10 to 198.51.100.10 port 50447 {KS} queue bulk tag ftpdata rdr-to 198.51.100.10 port 30028"),
            format!("match out inet proto tcp from 203.0.113.10 to 198.51.100.10 port 30028 {KS} queue bulk tag ftpdata nat-to 198.51.100.1 port 50001:65535"),
        ]
    );
    let q = RuleOptions {
        queue: Some("bulk".into()),
        ..RuleOptions::default()
    };
    assert!(render(Mode::ActivePort, &v4(false), &q)[0].starts_with("pass in quick inet"));
}

#[test]
fn routing_domains_follow_the_originals_table() {
    let mut a = v4(false);
    a.client_rdomain = 3;
    let o = RuleOptions {
        proxy_rtable: 5,
        ..RuleOptions::default()
    };
    let [p1, p2] = data_rules(Mode::Passive, &a, 30028, 50447, &o);
    assert_eq!((p1.on_rdomain, p1.rtable), (Some(3), Some(5)));
    assert_eq!((p2.on_rdomain, p2.rtable), (Some(5), None));
    let [a1, a2] = data_rules(Mode::ActivePort, &a, 30028, 50447, &o);
    assert_eq!((a1.on_rdomain, a1.rtable), (Some(5), Some(3)));
    assert_eq!((a2.on_rdomain, a2.rtable), (Some(3), None));
    assert_eq!(
        p1.to_string(),
        format!("pass in quick on rdomain 3 inet proto tcp from 203.0.113.10 to 198.51.100.10 port 50447 {KS} rtable 5 rdr-to 198.51.100.10 port 30028")
    );
}
