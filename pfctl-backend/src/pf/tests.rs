//! The transaction sequence of [`PfBackend`] against the kernel model: which ioctls in
//! which order with which arguments, and what the modelled kernel holds afterwards.

use super::abi::{PfiocStateKill, Pod};
use super::model::{Call, KernelModel, ModelState, PfOp};
use super::*;
use ftp_proxy_core::data_rules;
use ftp_proxy_core::{Mode, RuleOptions, SessionAddrs};

const PID: u32 = 4242;

fn anchor(session: u32) -> Anchor {
    Anchor { pid: PID, session }
}

fn addrs() -> SessionAddrs {
    SessionAddrs {
        client: "10.0.0.5".parse().unwrap(),
        server: "198.51.100.10".parse().unwrap(),
        orig_server: "198.51.100.10".parse().unwrap(),
        proxy: "198.51.100.1".parse().unwrap(),
        client_rdomain: 0,
    }
}

fn passive(port: u16, proxy_port: u16) -> [Rule; 2] {
    data_rules(
        Mode::Passive,
        &addrs(),
        port,
        proxy_port,
        &RuleOptions::default(),
    )
}

/// A backend on a fresh model, with the start-up calls forgotten.
fn backend(layout: Layout) -> PfBackend<KernelModel> {
    let mut pf = PfBackend::with_device(KernelModel::new(layout), layout, PID).expect("opens");
    pf.device_mut().clear_calls();
    pf
}

fn begin(anchor: &str) -> Call {
    Call::XBegin {
        size: 1,
        esize: 1032,
        array_ok: true,
        type_: 0,
        anchor: anchor.into(),
    }
}

fn commit(anchor: &str, ticket: u32) -> Call {
    Call::XCommit {
        size: 1,
        esize: 1032,
        anchor: anchor.into(),
        ticket,
    }
}

fn rollback(anchor: &str, ticket: u32) -> Call {
    Call::XRollback {
        anchor: anchor.into(),
        ticket,
    }
}

/// The calls with DIOCADDRULE reduced to (ticket, anchor, rule), for comparison.
fn add(ticket: u32, anchor: &str, rule: &Rule) -> (u32, String, PfRuleCommon) {
    (ticket, anchor.into(), encode_rule_body(rule).unwrap())
}

fn adds(calls: &[Call]) -> Vec<(u32, String, PfRuleCommon)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::AddRule {
                ticket,
                anchor,
                rule,
                ..
            } => Some((*ticket, anchor.clone(), **rule)),
            _ => None,
        })
        .collect()
}

fn kinds(calls: &[Call]) -> Vec<&'static str> {
    calls
        .iter()
        .map(|c| match c {
            Call::GetStatus => "status",
            Call::XBegin { .. } => "begin",
            Call::AddRule { .. } => "add",
            Call::XCommit { .. } => "commit",
            Call::XRollback { .. } => "rollback",
            Call::GetRulesets { .. } => "rulesets",
            Call::GetRuleset { .. } => "ruleset",
            Call::KillStates(_) => "kill",
        })
        .collect()
}

#[test]
fn commit_is_begin_two_adds_commit() {
    for layout in Layout::ALL {
        let mut pf = backend(layout);
        let rules = passive(5001, 55000);
        pf.commit(&anchor(1), &rules).expect("commits");
        let calls = pf.device().calls();
        assert_eq!(kinds(calls), ["begin", "add", "add", "commit"]);
        assert_eq!(calls[0], begin("ftp-proxy/4242.1"));
        assert_eq!(
            adds(calls),
            [
                add(1, "ftp-proxy/4242.1", &rules[0]),
                add(1, "ftp-proxy/4242.1", &rules[1])
            ]
        );
        // The full structure went out, in the chosen layout.
        for c in calls {
            if let Call::AddRule {
                layout: l, bytes, ..
            } = c
            {
                assert_eq!(*l, layout);
                assert_eq!(bytes.len(), layout.pfioc_rule_size());
            }
        }
        assert_eq!(calls[3], commit("ftp-proxy/4242.1", 1));
        let active = pf
            .device()
            .active("ftp-proxy/4242.1")
            .expect("anchor exists");
        assert_eq!(
            active,
            [
                encode_rule_body(&rules[0]).unwrap(),
                encode_rule_body(&rules[1]).unwrap()
            ]
        );
        assert!(!pf.device().any_open());
    }
}

#[test]
fn next_commit_replaces_rules_with_a_new_ticket() {
    let mut pf = backend(Layout::V1543);
    pf.commit(&anchor(1), &passive(5001, 55000)).unwrap();
    let second = passive(6001, 56000);
    pf.commit(&anchor(1), &second).unwrap();
    let calls = pf.device().calls();
    assert_eq!(calls[4], begin("ftp-proxy/4242.1"));
    assert_eq!(
        adds(&calls[4..]),
        [
            add(2, "ftp-proxy/4242.1", &second[0]),
            add(2, "ftp-proxy/4242.1", &second[1])
        ]
    );
    assert_eq!(calls[7], commit("ftp-proxy/4242.1", 2));
    assert_eq!(
        pf.device().active("ftp-proxy/4242.1").unwrap(),
        [
            encode_rule_body(&second[0]).unwrap(),
            encode_rule_body(&second[1]).unwrap()
        ]
    );
}

#[test]
fn empty_commit_is_begin_commit_and_removes_the_anchor() {
    let mut pf = backend(Layout::V1548);
    pf.commit(&anchor(3), &passive(5001, 55000)).unwrap();
    pf.device_mut().clear_calls();
    pf.commit(&anchor(3), &[]).unwrap();
    assert_eq!(
        pf.device().calls(),
        [begin("ftp-proxy/4242.3"), commit("ftp-proxy/4242.3", 2)]
    );
    assert_eq!(pf.device().active("ftp-proxy/4242.3"), None);
    assert_eq!(pf.used_anchors().count(), 0);
}

#[test]
fn busy_commit_rolls_back_keeps_old_rules_and_retry_succeeds() {
    let mut pf = backend(Layout::V1543);
    let old = passive(5001, 55000);
    pf.commit(&anchor(1), &old).unwrap();
    pf.device_mut().clear_calls();
    pf.device_mut().fail_next(PfOp::XCommit, libc::EBUSY);
    let new = passive(6001, 56000);
    assert_eq!(pf.commit(&anchor(1), &new), Err(FilterError::Busy));
    let calls = pf.device().calls();
    assert_eq!(kinds(calls), ["begin", "add", "add", "commit", "rollback"]);
    assert_eq!(calls[4], rollback("ftp-proxy/4242.1", 2));
    assert_eq!(
        pf.device().active("ftp-proxy/4242.1").unwrap()[0],
        encode_rule_body(&old[0]).unwrap()
    );
    assert!(!pf.device().any_open());

    // The core's retry: a whole new transaction, which goes through.
    pf.commit(&anchor(1), &new).unwrap();
    assert_eq!(
        pf.device().active("ftp-proxy/4242.1").unwrap()[0],
        encode_rule_body(&new[0]).unwrap()
    );
}

#[test]
fn busy_twice_is_busy_twice() {
    let mut pf = backend(Layout::V1543);
    pf.device_mut().fail_next(PfOp::XCommit, libc::EBUSY);
    pf.device_mut().fail_next(PfOp::XCommit, libc::EBUSY);
    assert_eq!(
        pf.commit(&anchor(1), &passive(5001, 55000)),
        Err(FilterError::Busy)
    );
    assert_eq!(
        pf.commit(&anchor(1), &passive(5001, 55000)),
        Err(FilterError::Busy)
    );
    assert_eq!(
        kinds(pf.device().calls())
            .iter()
            .filter(|k| **k == "rollback")
            .count(),
        2
    );
    // Nothing was ever active, so the rollbacks left no anchor behind.
    assert_eq!(pf.device().anchors(), Vec::<String>::new());
}

/// EBUSY from DIOCADDRULE (e.g. `-q` names no queue) is not retried by the original:
/// a plain error, so the core ends the session at once.
#[test]
fn busy_add_rule_is_not_retryable() {
    let mut pf = backend(Layout::V1543);
    pf.device_mut().fail_next(PfOp::AddRule, libc::EBUSY);
    let e = pf.commit(&anchor(1), &passive(5001, 55000)).unwrap_err();
    assert_eq!(
        e,
        FilterError::Other {
            errno: libc::EBUSY,
            text: strerror(libc::EBUSY)
        }
    );
    assert_eq!(kinds(pf.device().calls()), ["begin", "add", "rollback"]);
    assert_eq!(pf.device().calls()[2], rollback("ftp-proxy/4242.1", 1));
}

#[test]
fn failing_first_rule_rolls_back() {
    let mut pf = backend(Layout::V1548);
    pf.device_mut().fail_always(PfOp::AddRule, libc::EINVAL);
    let e = pf.commit(&anchor(1), &passive(5001, 55000)).unwrap_err();
    assert_eq!(
        e,
        FilterError::Other {
            errno: libc::EINVAL,
            text: "Invalid argument".into()
        }
    );
    assert_eq!(kinds(pf.device().calls()), ["begin", "add", "rollback"]);
}

#[test]
fn second_rule_refused_by_the_kernel_rolls_back_the_first() {
    let mut rules = passive(5001, 55000).to_vec();
    // A queue the kernel does not know: modelled as EBUSY on that add only.
    rules[1].queue = Some("nosuchq".into());
    struct QueueCheck(KernelModel);
    impl PfDevice for QueueCheck {
        fn get_status(&mut self, s: &mut PfStatus) -> Result<(), Errno> {
            self.0.get_status(s)
        }
        fn xbegin(&mut self, t: &mut Transaction) -> Result<(), Errno> {
            self.0.xbegin(t)
        }
        fn add_rule(&mut self, r: &mut RuleIoc) -> Result<(), Errno> {
            if c_str(&r.rule().qname) == b"nosuchq" {
                self.0.fail_next(PfOp::AddRule, libc::EBUSY);
            }
            self.0.add_rule(r)
        }
        fn xcommit(&mut self, t: &mut Transaction) -> Result<(), Errno> {
            self.0.xcommit(t)
        }
        fn xrollback(&mut self, t: &mut Transaction) -> Result<(), Errno> {
            self.0.xrollback(t)
        }
        fn get_rulesets(&mut self, r: &mut abi::PfiocRuleset) -> Result<(), Errno> {
            self.0.get_rulesets(r)
        }
        fn get_ruleset(&mut self, r: &mut abi::PfiocRuleset) -> Result<(), Errno> {
            self.0.get_ruleset(r)
        }
        fn kill_states(&mut self, k: &mut PfiocStateKill) -> Result<(), Errno> {
            self.0.kill_states(k)
        }
    }
    let mut pf = PfBackend::with_device(
        QueueCheck(KernelModel::new(Layout::V1543)),
        Layout::V1543,
        PID,
    )
    .unwrap();
    pf.device_mut().0.clear_calls();
    let e = pf.commit(&anchor(9), &rules).unwrap_err();
    assert!(
        matches!(
            e,
            FilterError::Other {
                errno: libc::EBUSY,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        kinds(pf.device().0.calls()),
        ["begin", "add", "add", "rollback"]
    );
    assert_eq!(
        pf.device().0.anchors(),
        Vec::<String>::new(),
        "the first rule never became active"
    );
}

#[test]
fn permission_errors() {
    for errno in [libc::EPERM, libc::EACCES] {
        let mut pf = backend(Layout::V1543);
        pf.device_mut().fail_next(PfOp::XBegin, errno);
        assert_eq!(
            pf.commit(&anchor(1), &passive(5001, 55000)),
            Err(FilterError::PermissionDenied)
        );
        // No begin, so no rollback.
        assert_eq!(kinds(pf.device().calls()), ["begin"]);
    }
}

#[test]
fn precheck_failure_after_begin_rolls_back_before_any_add() {
    let mut pf = backend(Layout::V1543);
    let mut rules = passive(5001, 55000);
    rules[0].to = "2001:db8::1".parse().unwrap();
    let e = pf.commit(&anchor(1), &rules).unwrap_err();
    assert_eq!(
        e,
        FilterError::Other {
            errno: libc::EPROTONOSUPPORT,
            text: "Protocol not supported".into()
        }
    );
    assert_eq!(kinds(pf.device().calls()), ["begin", "rollback"]);
}

#[test]
fn wrong_layout_at_commit_names_the_cause() {
    // Bypass the start-up probe to see what a commit would report.
    let mut pf = PfBackend {
        dev: KernelModel::new(Layout::V1548),
        layout: Layout::V1543,
        used: BTreeSet::new(),
        redirects: Default::default(),
    };
    let e = pf.commit(&anchor(1), &passive(5001, 55000)).unwrap_err();
    assert_eq!(e.to_string(), "pf rule layout does not match this kernel");
    assert_eq!(kinds(pf.device().calls()), ["begin", "add", "rollback"]);
}

#[test]
fn teardown_failures() {
    let mut pf = backend(Layout::V1543);
    pf.commit(&anchor(1), &passive(5001, 55000)).unwrap();
    pf.device_mut().clear_calls();
    pf.device_mut().fail_next(PfOp::XCommit, libc::EINVAL);
    let e = pf.commit(&anchor(1), &[]).unwrap_err();
    assert_eq!(
        e,
        FilterError::Other {
            errno: libc::EINVAL,
            text: "Invalid argument".into()
        }
    );
    assert_eq!(kinds(pf.device().calls()), ["begin", "commit", "rollback"]);
    // The rules are still loaded, and the anchor is still ours to clean up.
    assert_eq!(
        pf.device().active("ftp-proxy/4242.1").map(<[_]>::len),
        Some(2)
    );
    assert_eq!(pf.used_anchors().copied().collect::<Vec<_>>(), [anchor(1)]);
    pf.remove_all().unwrap();
    assert_eq!(pf.device().anchors(), Vec::<String>::new());
}

#[test]
fn remove_all_clears_every_anchor_used() {
    let mut pf = backend(Layout::V1548);
    for s in 1..=3 {
        pf.commit(&anchor(s), &passive(5000 + s as u16, 55000 + s as u16))
            .unwrap();
    }
    pf.commit(&anchor(2), &[]).unwrap();
    pf.device_mut().clear_calls();
    pf.remove_all().unwrap();
    assert_eq!(
        pf.device().calls(),
        [
            begin("ftp-proxy/4242.1"),
            commit("ftp-proxy/4242.1", 2),
            begin("ftp-proxy/4242.3"),
            commit("ftp-proxy/4242.3", 2)
        ]
    );
    assert_eq!(pf.device().anchors(), Vec::<String>::new());
    assert_eq!(pf.used_anchors().count(), 0);
    // Nothing left: a second call does nothing.
    pf.device_mut().clear_calls();
    pf.remove_all().unwrap();
    assert!(pf.device().calls().is_empty());
}

#[test]
fn remove_all_continues_past_a_failure_and_reports_it() {
    let mut pf = backend(Layout::V1543);
    pf.commit(&anchor(1), &passive(5001, 55000)).unwrap();
    pf.commit(&anchor(2), &passive(5002, 55002)).unwrap();
    pf.device_mut().fail_next(PfOp::XBegin, libc::EPERM);
    assert_eq!(pf.remove_all(), Err(FilterError::PermissionDenied));
    assert_eq!(pf.device().anchors(), ["ftp-proxy/4242.1"]);
    assert_eq!(pf.used_anchors().copied().collect::<Vec<_>>(), [anchor(1)]);
}

#[test]
fn open_checks_status_and_layout() {
    let mut off = KernelModel::new(Layout::V1543);
    off.running = false;
    let e = PfBackend::with_device(off, Layout::V1543, PID).unwrap_err();
    assert_eq!(e.to_string(), "pf is disabled");

    let mut broken = KernelModel::new(Layout::V1543);
    broken.fail_next(PfOp::GetStatus, libc::ENXIO);
    let e = PfBackend::with_device(broken, Layout::V1543, PID).unwrap_err();
    assert!(
        matches!(e, PfOpenError::Status(Errno(libc::ENXIO))),
        "{e:?}"
    );

    let e =
        PfBackend::with_device(KernelModel::new(Layout::V1548), Layout::V1543, PID).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pf rule layout does not match this kernel (tried pfvar.h 1.543 (struct pf_rule of 1344 bytes))"
    );

    // The probe: one DIOCADDRULE to a nonexistent anchor with an impossible ticket,
    // which leaves nothing behind.
    let pf = PfBackend::with_device(KernelModel::new(Layout::V1543), Layout::V1543, PID).unwrap();
    let calls = pf.device().calls();
    assert_eq!(kinds(calls), ["status", "add"]);
    let Call::AddRule {
        ticket,
        anchor,
        rule,
        ..
    } = &calls[1]
    else {
        unreachable!()
    };
    assert_eq!(
        (*ticket, anchor.as_str()),
        (u32::MAX, "ftp-proxy/layout-probe.4242")
    );
    assert_eq!((rule.rtableid, rule.onrdomain), (-1, -1));
    assert!(pf.device().anchors().is_empty());

    // At securelevel 2 every change is EPERM: the layout cannot be told, start anyway.
    let mut locked = KernelModel::new(Layout::V1543);
    locked.fail_always(PfOp::AddRule, libc::EPERM);
    assert!(PfBackend::with_device(locked, Layout::V1543, PID).is_ok());
}

#[test]
fn auto_layout_picks_the_kernels() {
    for layout in Layout::ALL {
        let pf = PfBackend::with_device_auto(KernelModel::new(layout), PID).unwrap();
        assert_eq!(pf.layout(), layout);
    }
    // A kernel that knows neither (e.g. an older release).
    let mut old = KernelModel::new(Layout::V1543);
    old.fail_always(PfOp::AddRule, libc::ENODEV);
    let e = PfBackend::with_device_auto(old, PID).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pf rule layout does not match this kernel (tried pfvar.h 1.548 and 1.543)"
    );
}

#[test]
fn stale_anchors_of_dead_processes_are_cleared() {
    let mut k = KernelModel::new(Layout::V1543);
    k.add_persistent_anchor("ftp-proxy");
    let some = vec![encode_rule_body(&passive(5001, 55000)[0]).unwrap()];
    for path in [
        "ftp-proxy/100.1",
        "ftp-proxy/100.7",
        "ftp-proxy/200.1",
        "ftp-proxy/4242.1",
        "ftp-proxy/admin",
        "ftp-proxy/1x.2",
    ] {
        k.preload(path, some.clone());
    }
    k.preload("other/100.1", some.clone());
    let mut pf = PfBackend::with_device(k, Layout::V1543, PID).unwrap();
    pf.device_mut().clear_calls();
    let removed = pf.clear_stale_anchors(PID, |pid| pid == 200).unwrap();
    assert_eq!(removed, ["ftp-proxy/100.1", "ftp-proxy/100.7"]);
    assert_eq!(
        pf.device().anchors(),
        [
            "ftp-proxy",
            "ftp-proxy/1x.2",
            "ftp-proxy/200.1",
            "ftp-proxy/4242.1",
            "ftp-proxy/admin",
            "other/100.1"
        ]
    );
    let calls = pf.device().calls();
    assert_eq!(
        calls[0],
        Call::GetRulesets {
            path: "ftp-proxy".into()
        }
    );
    assert_eq!(
        calls[1],
        Call::GetRuleset {
            path: "ftp-proxy".into(),
            nr: 0
        }
    );
    assert_eq!(
        kinds(calls),
        [
            "rulesets", "ruleset", "ruleset", "ruleset", "ruleset", "ruleset", "ruleset", "begin",
            "commit", "begin", "commit"
        ]
    );
    // Stale anchors are not this process's: remove_all does not touch them.
    assert_eq!(pf.used_anchors().count(), 0);
}

#[test]
fn no_ftp_proxy_anchor_means_nothing_stale() {
    let mut pf = backend(Layout::V1543);
    assert_eq!(pf.clear_stale_anchors(PID, |_| false), Ok(vec![]));
    assert_eq!(kinds(pf.device().calls()), ["rulesets"]);
}

#[test]
fn session_anchor_names() {
    assert_eq!(session_anchor_pid("28913.7"), Some(28913));
    assert_eq!(session_anchor_pid("1.0"), Some(1));
    for bad in [
        "28913",
        "28913.",
        ".7",
        "a.7",
        "1.2.3",
        "-1.2",
        "99999999999.1",
        "layout-probe.5",
    ] {
        assert_eq!(session_anchor_pid(bad), None, "{bad}");
    }
}

#[cfg(not(target_os = "openbsd"))]
#[test]
fn open_off_openbsd_says_why() {
    let e = PfBackend::open(Layout::V1543).unwrap_err();
    assert_eq!(e.to_string(), "pf is only available on OpenBSD");
    assert_eq!(
        PfBackend::open_auto().unwrap_err().to_string(),
        "pf is only available on OpenBSD"
    );
}

#[test]
fn backend_name() {
    assert_eq!(backend(Layout::V1543).name(), "pf");
}

fn state(src: (&str, u16), dst: (&str, u16), rdomain: u16) -> ModelState {
    ModelState {
        af: abi::AF_INET,
        proto: abi::IPPROTO_TCP,
        rdomain,
        src: (src.0.parse().unwrap(), src.1),
        dst: (dst.0.parse().unwrap(), dst.1),
        label: String::new(),
    }
}

/// The DIOCKILLSTATES requests made, in order.
fn kills(calls: &[Call]) -> Vec<PfiocStateKill> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::KillStates(psk) => Some(**psk),
            _ => None,
        })
        .collect()
}

#[test]
fn state_kill_request_bytes() {
    let [rdr, nat] = passive(30028, 50447);
    assert!(
        encode_state_kill(&nat).is_none(),
        "nat-to rules name no state to kill"
    );
    let psk = encode_state_kill(&rdr).expect("an rdr-to rule");
    let b = psk.as_bytes();
    assert_eq!(b.len(), 224);
    // The image at pfvar.h's offsets: af, proto, the source host (address and mask,
    // no port operator), the destination host with `port = 50447`, rdomain 0.
    let mut want = [0u8; 224];
    want[16] = abi::AF_INET;
    want[20..24].copy_from_slice(&6i32.to_ne_bytes());
    want[24..28].copy_from_slice(&[10, 0, 0, 5]);
    want[40..44].fill(0xff);
    want[80..84].copy_from_slice(&[198, 51, 100, 10]);
    want[96..100].fill(0xff);
    want[128..130].copy_from_slice(&50447u16.to_be_bytes());
    want[133] = abi::PF_OP_EQ;
    assert_eq!(b, &want[..]);

    // Active with routing domains: the rule's `on rdomain` is the state's.
    let mut a = addrs();
    a.client_rdomain = 3;
    let opts = RuleOptions {
        proxy_rtable: 5,
        ..RuleOptions::default()
    };
    let [rdr, _] = data_rules(Mode::ActiveEprt, &a, 40000, 50500, &opts);
    let psk = encode_state_kill(&rdr).unwrap();
    assert_eq!(psk.psk_rdomain, 5);
    assert_eq!(u16::from_be(psk.psk_dst.port[0]), 50500);
    assert_eq!(psk.psk_dst.addr.addr.bytes[..4], [198, 51, 100, 1]);
}

#[test]
fn kill_connections_removes_the_sessions_redirect_states_only() {
    let mut pf = backend(Layout::V1548);
    let (s1, s2) = (anchor(1), anchor(2));
    // Session 1 negotiates twice, session 2 once, all from one client to the same
    // server data port; each data connection leaves its inbound (rdr) state and its
    // outbound (nat) state.
    pf.commit(&s1, &passive(30028, 50447)).unwrap();
    pf.commit(&s2, &passive(30028, 50448)).unwrap();
    pf.commit(&s1, &passive(30028, 50449)).unwrap();
    let m = pf.device_mut();
    for (sport, pp) in [(40001, 50447), (40002, 50448), (40003, 50449)] {
        m.add_state(state(("10.0.0.5", sport), ("198.51.100.10", pp), 0));
        m.add_state(state(("10.0.0.5", sport), ("198.51.100.10", 30028), 0));
    }
    // The same addresses in another routing domain are another connection.
    m.add_state(state(("10.0.0.5", 40009), ("198.51.100.10", 50447), 1));
    m.clear_calls();

    pf.kill_connections(&s1).unwrap();
    let sent = kills(pf.device().calls());
    let ports: Vec<u16> = sent
        .iter()
        .map(|k| u16::from_be(k.psk_dst.port[0]))
        .collect();
    assert_eq!(
        ports,
        [50447, 50449],
        "one request per negotiation of session 1"
    );
    let left: Vec<(u16, u16)> = pf
        .device()
        .states()
        .iter()
        .map(|s| (s.src.1, s.dst.1))
        .collect();
    assert_eq!(
        left,
        [
            (40001, 30028),
            (40002, 50448),
            (40002, 30028),
            (40003, 30028),
            (40009, 50447)
        ],
        "session 1's redirect states are gone, session 2's and the nat states stay"
    );
    // The session's rules are still in force: a second kill asks again.
    pf.device_mut().clear_calls();
    pf.kill_connections(&s1).unwrap();
    assert_eq!(kills(pf.device().calls()).len(), 2);
}

#[test]
fn kill_after_the_last_commit_and_errors() {
    let mut pf = backend(Layout::V1543);
    let s1 = anchor(1);
    pf.kill_connections(&s1).unwrap();
    assert!(
        pf.device().calls().is_empty(),
        "nothing negotiated: no ioctl"
    );

    pf.commit(&s1, &passive(30028, 50447)).unwrap();
    pf.commit(&s1, &[]).unwrap();
    pf.device_mut()
        .add_state(state(("10.0.0.5", 40001), ("198.51.100.10", 50447), 0));
    pf.device_mut().clear_calls();
    // Refused at securelevel 2: PermissionDenied, and a retry is still possible.
    pf.device_mut().fail_next(PfOp::KillStates, libc::EPERM);
    assert_eq!(pf.kill_connections(&s1), Err(FilterError::PermissionDenied));
    assert_eq!(pf.device().states().len(), 1);
    // After the session's last (empty) commit the kill still knows its negotiations.
    pf.kill_connections(&s1).unwrap();
    assert!(pf.device().states().is_empty());
    // Then the session is forgotten.
    pf.device_mut().clear_calls();
    pf.kill_connections(&s1).unwrap();
    assert!(pf.device().calls().is_empty());
}
