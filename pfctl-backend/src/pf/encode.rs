//! [`Rule`] → `struct pfioc_rule`, exactly as ftp-proxy's filter.c fills it (`prepare_rule`, `add_filter`, `add_nat`, `add_rdr`).
//!
//! Pure functions with no IO: the byte images they produce are pinned by the tests
//! below on any host, and are what DIOCADDRULE sends on OpenBSD.

use std::net::IpAddr;

use ftp_proxy_core::{Anchor, FilterError, Rule};
use ftp_proxy_core::{Direction, RuleLog, Translate, Verdict};

use super::abi::*;

/// An encoded DIOCADDRULE argument in one of the two layouts.
///
/// Boxed because the structures are 3.4 kB and move through the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleIoc {
    /// pfvar.h 1.543 layout.
    V1543(Box<PfiocRule<PfRule1543>>),
    /// pfvar.h 1.548 layout.
    V1548(Box<PfiocRule<PfRule1548>>),
}

impl RuleIoc {
    /// The layout of this structure.
    pub fn layout(&self) -> Layout {
        match self {
            RuleIoc::V1543(_) => Layout::V1543,
            RuleIoc::V1548(_) => Layout::V1548,
        }
    }

    /// The structure's bytes as the kernel copies them in.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RuleIoc::V1543(r) => r.as_bytes(),
            RuleIoc::V1548(r) => r.as_bytes(),
        }
    }

    /// `pfioc_rule.ticket`.
    pub fn ticket(&self) -> u32 {
        match self {
            RuleIoc::V1543(r) => r.ticket,
            RuleIoc::V1548(r) => r.ticket,
        }
    }

    /// Sets `pfioc_rule.ticket` (to the one DIOCXBEGIN returned).
    pub fn set_ticket(&mut self, ticket: u32) {
        match self {
            RuleIoc::V1543(r) => r.ticket = ticket,
            RuleIoc::V1548(r) => r.ticket = ticket,
        }
    }

    /// `pfioc_rule.anchor` up to its NUL.
    pub fn anchor(&self) -> &[u8] {
        match self {
            RuleIoc::V1543(r) => c_str(&r.anchor),
            RuleIoc::V1548(r) => c_str(&r.anchor),
        }
    }

    /// The layout-independent part of `pfioc_rule.rule`.
    pub fn rule(&self) -> &PfRuleCommon {
        match self {
            RuleIoc::V1543(r) => r.rule.common(),
            RuleIoc::V1548(r) => r.rule.common(),
        }
    }
}

/// The bytes of a NUL-terminated C string field, without the NUL (all of it if none).
pub fn c_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Copies `s` into a zeroed C string field, leaving room for the NUL terminator.
/// `None` if it does not fit or holds a NUL (the kernel would read another name).
pub fn put_c_str(field: &mut [u8], s: &str) -> Option<()> {
    if s.len() >= field.len() || s.as_bytes().contains(&0) {
        return None;
    }
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()..].fill(0);
    Some(())
}

/// The full DIOCADDRULE argument for `rule` in `anchor`: `action` 0, `ticket`, `nr` 0,
/// `anchor` = `ftp-proxy/<pid>.<id>`, empty `anchor_call`, the rule of [`encode_rule_body`].
pub fn encode_rule(
    layout: Layout,
    anchor: &Anchor,
    ticket: u32,
    rule: &Rule,
) -> Result<RuleIoc, FilterError> {
    let body = encode_rule_body(rule)?;
    let name = anchor.to_string();
    Ok(match layout {
        Layout::V1543 => RuleIoc::V1543(Box::new(pfioc_rule::<PfRule1543>(&name, ticket, body)?)),
        Layout::V1548 => RuleIoc::V1548(Box::new(pfioc_rule::<PfRule1548>(&name, ticket, body)?)),
    })
}

fn pfioc_rule<R: PfRuleLayout>(
    anchor: &str,
    ticket: u32,
    body: PfRuleCommon,
) -> Result<PfiocRule<R>, FilterError> {
    let mut pr = PfiocRule::<R>::zeroed();
    pr.ticket = ticket;
    put_c_str(&mut pr.anchor, anchor)
        .ok_or_else(|| invalid(format!("anchor name '{anchor}' too long")))?;
    pr.rule = R::from_common(body);
    Ok(pr)
}

/// The `struct pf_rule` contents filter.c's `prepare_rule` sets (everything not set is zero), after
/// the original's pre-checks.
///
/// Pre-checks, in the original's order: a zero destination port, redirect port or NAT
/// port bound, or a translation address of another family than the source, is
/// `EINVAL`; a destination of another family than the source is `EPROTONOSUPPORT`.
/// Names that pf would truncate and routing ids that do not fit its `int` are `EINVAL`
/// too (the original cannot produce them: its option parser refuses them).
pub fn encode_rule_body(rule: &Rule) -> Result<PfRuleCommon, FilterError> {
    precheck(rule)?;
    let mut r = PfRuleCommon::zeroed();
    r.action = match rule.verdict {
        Verdict::Pass => PF_PASS,
        Verdict::Match => PF_MATCH,
    };
    r.direction = match rule.direction {
        Direction::In => PF_IN,
        Direction::Out => PF_OUT,
    };
    r.quick = u8::from(rule.quick);
    r.log = match rule.log {
        RuleLog::None => 0,
        RuleLog::Log => PF_LOG,
        RuleLog::All => PF_LOG_ALL,
    };
    r.keep_state = PF_STATE_NORMAL;
    r.af = af(rule.from);
    r.proto = IPPROTO_TCP;
    r.flags = TH_SYN;
    r.flagset = TH_SYN | TH_ACK;
    r.max_states = 1;

    r.src.addr = host(rule.from);
    r.dst.addr = host(rule.to);
    r.dst.port_op = PF_OP_EQ;
    r.dst.port[0] = rule.port.to_be();

    match rule.translate {
        Translate::RdrTo { addr, port } => {
            r.rdr.addr = host(addr);
            r.rdr.proxy_port[0] = port;
            r.nat.addr.type_ = PF_ADDR_NONE;
        }
        Translate::NatTo { addr, ports } => {
            r.nat.addr = host(addr);
            r.nat.proxy_port = [ports.low, ports.high];
            r.rdr.addr.type_ = PF_ADDR_NONE;
        }
        Translate::JoinWith { .. } | Translate::BridgeWith { .. } => {
            return Err(join_unsupported(rule))
        }
    }

    r.rtableid = routing_id("rtable", rule.rtable)?;
    r.onrdomain = routing_id("on rdomain", rule.on_rdomain)?;
    if let Some(q) = &rule.queue {
        put_c_str(&mut r.qname, q)
            .ok_or_else(|| invalid(format!("queue name '{q}' does not fit pf")))?;
    }
    if let Some(t) = &rule.tag {
        put_c_str(&mut r.tagname, t)
            .ok_or_else(|| invalid(format!("tag name '{t}' does not fit pf")))?;
    }
    Ok(r)
}

/// pf translates addresses; joining two connections that both end at the proxy is
/// the relay's alone (`Mode::Joined`, `Mode::Bridged`).
fn join_unsupported(rule: &Rule) -> FilterError {
    FilterError::Unsupported(format!("pf cannot join two connections: {rule}"))
}

/// The DIOCKILLSTATES request that removes the states an rdr-to rule created: TCP
/// from the rule's source host to its destination host and port (the proxy port), in
/// the routing domain the rule matched on. `None` for other rules.
///
/// pf keeps one state per interface a connection crosses. The one this request names,
/// on the interface the connection arrived on, is the one that carries the rdr-to
/// translation, and only it can be named exactly: the proxy port is unique to the
/// negotiation, whereas the nat-to rule's state is keyed by the server's data port,
/// which another session from the same client address may share at the same time.
pub fn encode_state_kill(rule: &Rule) -> Option<PfiocStateKill> {
    if rule.direction != Direction::In || !matches!(rule.translate, Translate::RdrTo { .. }) {
        return None;
    }
    let mut k = PfiocStateKill::zeroed();
    k.psk_af = af(rule.from);
    k.psk_proto = i32::from(IPPROTO_TCP);
    k.psk_src.addr = host(rule.from);
    k.psk_dst.addr = host(rule.to);
    k.psk_dst.port_op = PF_OP_EQ;
    k.psk_dst.port[0] = rule.port.to_be();
    k.psk_rdomain = u16::try_from(rule.on_rdomain.unwrap_or(0)).ok()?;
    Some(k)
}

fn precheck(rule: &Rule) -> Result<(), FilterError> {
    let fam = af(rule.from);
    let einval = match rule.translate {
        Translate::JoinWith { .. } | Translate::BridgeWith { .. } => {
            return Err(join_unsupported(rule))
        }
        Translate::RdrTo { addr, port } => rule.port == 0 || port == 0 || af(addr) != fam,
        Translate::NatTo { addr, ports } => {
            rule.port == 0 || ports.low == 0 || ports.high == 0 || af(addr) != fam
        }
    };
    if einval {
        return Err(errno_error(libc::EINVAL));
    }
    if af(rule.to) != fam {
        return Err(errno_error(libc::EPROTONOSUPPORT));
    }
    Ok(())
}

/// `Some(n)` → `n`, `None` → −1 ("not set"), as pf's `int` fields.
fn routing_id(what: &str, id: Option<u32>) -> Result<i32, FilterError> {
    match id {
        None => Ok(-1),
        Some(n) => i32::try_from(n).map_err(|_| invalid(format!("{what} {n} out of range"))),
    }
}

fn af(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// An exact host match: the address and a full-length mask (`PF_ADDR_ADDRMASK`).
fn host(ip: IpAddr) -> PfAddrWrap {
    let mut w = PfAddrWrap::zeroed();
    w.type_ = PF_ADDR_ADDRMASK;
    match ip {
        IpAddr::V4(a) => {
            w.addr.bytes[..4].copy_from_slice(&a.octets());
            w.mask.bytes[..4].fill(0xFF);
        }
        IpAddr::V6(a) => {
            w.addr.bytes = a.octets();
            w.mask.bytes = [0xFF; 16];
        }
    }
    w
}

/// A [`FilterError`] for an errno, with the C library's text for it.
pub fn errno_error(errno: i32) -> FilterError {
    FilterError::Other {
        errno,
        text: strerror(errno),
    }
}

fn invalid(why: String) -> FilterError {
    FilterError::Other {
        errno: libc::EINVAL,
        text: format!("{}: {why}", strerror(libc::EINVAL)),
    }
}

/// `strerror(errno)`: the OS text without std's " (os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let full = std::io::Error::from_raw_os_error(errno).to_string();
    match full.rfind(" (os error ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftp_proxy_core::data_rules;
    use ftp_proxy_core::{Mode, PortRange, RuleOptions, SessionAddrs};

    const ANCHOR: Anchor = Anchor {
        pid: 28913,
        session: 7,
    };

    fn v4() -> SessionAddrs {
        SessionAddrs {
            client: "10.0.0.5".parse().unwrap(),
            server: "198.51.100.10".parse().unwrap(),
            orig_server: "203.0.113.10".parse().unwrap(),
            proxy: "198.51.100.1".parse().unwrap(),
            client_rdomain: 0,
        }
    }

    fn v6() -> SessionAddrs {
        SessionAddrs {
            client: "2001:db8::5".parse().unwrap(),
            server: "2001:db8:1::10".parse().unwrap(),
            orig_server: "2001:db8:2::10".parse().unwrap(),
            proxy: "2001:db8:1::1".parse().unwrap(),
            client_rdomain: 0,
        }
    }

    /// The expected rule image, written byte by byte at the literal offsets of
    /// `<net/pfvar.h>`'s `struct pf_rule` from the values filter.c sets — independent of the
    /// Rust mirror.
    struct Image(Vec<u8>);

    /// What one expected rule holds; the rest of the image stays zero.
    struct Want {
        action: u8,
        direction: u8,
        quick: u8,
        log: u8,
        src: IpAddr,
        dst: IpAddr,
        dport: u16,
        /// (pool offset, address, low, high): the pool in use.
        pool: (usize, IpAddr, u16, u16),
        /// Offset of the unused pool (gets `PF_ADDR_NONE`).
        none_pool: usize,
        rtableid: i32,
        onrdomain: i32,
        qname: &'static str,
        tagname: &'static str,
    }

    const NAT: usize = 584;
    const RDR: usize = 720;

    impl Image {
        fn new(size: usize) -> Image {
            Image(vec![0; size])
        }
        fn put(&mut self, off: usize, bytes: &[u8]) {
            self.0[off..off + bytes.len()].copy_from_slice(bytes);
        }
        /// A `pf_addr_wrap` at `off`: address at +0, mask at +16, type at +40 (ADDRMASK = 0).
        fn addr(&mut self, off: usize, ip: IpAddr) {
            match ip {
                IpAddr::V4(a) => {
                    self.put(off, &a.octets());
                    self.put(off + 16, &[0xFF; 4]);
                }
                IpAddr::V6(a) => {
                    self.put(off, &a.octets());
                    self.put(off + 16, &[0xFF; 16]);
                }
            }
        }
        fn rule(size: usize, w: &Want) -> Image {
            let mut m = Image::new(size);
            m.addr(0, w.src); // src.addr
            m.addr(56, w.dst); // dst.addr
            m.put(56 + 48, &w.dport.to_be_bytes()); // dst.port[0], network order
            m.put(56 + 53, &[PF_OP_EQ]); // dst.port_op
            if !w.qname.is_empty() {
                m.put(280, w.qname.as_bytes());
            }
            if !w.tagname.is_empty() {
                m.put(408, w.tagname.as_bytes());
            }
            let (pool, addr, low, high) = w.pool;
            m.addr(pool, addr);
            m.put(pool + 126, &low.to_ne_bytes()); // proxy_port[0], host order
            m.put(pool + 128, &high.to_ne_bytes()); // proxy_port[1]
            m.put(w.none_pool + 40, &[PF_ADDR_NONE]);
            m.put(1084, &w.rtableid.to_ne_bytes());
            m.put(1088, &w.onrdomain.to_ne_bytes());
            m.put(1180, &1u32.to_ne_bytes()); // max_states
            m.put(
                1280,
                &[
                    w.action,
                    w.direction,
                    w.log,
                    0,
                    w.quick,
                    0,
                    0,
                    PF_STATE_NORMAL,
                ],
            );
            let af = if w.src.is_ipv4() { 2 } else { 24 };
            m.put(1288, &[af, 6]); // af, proto
            m.put(1294, &[0x02, 0x12]); // flags S / flagset SA
            m
        }
        /// Wrapped in `struct pfioc_rule`: ticket at 4, anchor at 12, rule at 2064.
        fn pfioc(layout: Layout, ticket: u32, anchor: &str, rule: &Image) -> Image {
            let mut m = Image::new(layout.pfioc_rule_size());
            m.put(4, &ticket.to_ne_bytes());
            m.put(12, anchor.as_bytes());
            m.put(2064, &rule.0[..1312]);
            m
        }
    }

    /// Compares two images and names the first differing offsets on failure.
    fn assert_image(got: &[u8], want: &Image, what: &str) {
        assert_eq!(got.len(), want.0.len(), "{what}: size");
        let diffs: Vec<String> = got
            .iter()
            .zip(&want.0)
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .take(8)
            .map(|(i, (g, w))| format!("@{i}: got {g:#04x} want {w:#04x}"))
            .collect();
        assert!(
            diffs.is_empty(),
            "{what}: bytes differ: {}",
            diffs.join(", ")
        );
    }

    /// Encodes both rules with both layouts and compares them with the expected images.
    fn check(rules: &[Rule; 2], want: [Want; 2]) {
        for layout in Layout::ALL {
            for (i, (rule, w)) in rules.iter().zip(&want).enumerate() {
                let ticket = 0x0102_0304 + i as u32;
                let ioc = encode_rule(layout, &ANCHOR, ticket, rule).expect("encodes");
                assert_eq!(ioc.layout(), layout);
                assert_eq!(ioc.ticket(), ticket);
                assert_eq!(ioc.anchor(), b"ftp-proxy/28913.7");
                let img = Image::rule(1312, w);
                assert_image(
                    ioc.rule().as_bytes(),
                    &img,
                    &format!("{layout} rule {i} ({rule})"),
                );
                let full = Image::pfioc(layout, ticket, "ftp-proxy/28913.7", &img);
                assert_image(ioc.as_bytes(), &full, &format!("{layout} pfioc_rule {i}"));
            }
        }
    }

    fn opts() -> RuleOptions {
        RuleOptions::default()
    }

    #[test]
    fn passive_ipv4() {
        let a = v4();
        let rules = data_rules(Mode::Passive, &a, 5001, 55000, &opts());
        check(
            &rules,
            [
                // P1: pass in quick from client to orig_server port 55000 rdr-to server port 5001
                Want {
                    action: PF_PASS,
                    direction: PF_IN,
                    quick: 1,
                    log: 0,
                    src: a.client,
                    dst: a.orig_server,
                    dport: 55000,
                    pool: (RDR, a.server, 5001, 0),
                    none_pool: NAT,
                    rtableid: 0,
                    onrdomain: 0,
                    qname: "",
                    tagname: "",
                },
                // P2: pass out quick from client to server port 5001 nat-to proxy port 50001:65535
                Want {
                    action: PF_PASS,
                    direction: PF_OUT,
                    quick: 1,
                    log: 0,
                    src: a.client,
                    dst: a.server,
                    dport: 5001,
                    pool: (NAT, a.proxy, 50001, 65535),
                    none_pool: RDR,
                    rtableid: -1,
                    onrdomain: 0,
                    qname: "",
                    tagname: "",
                },
            ],
        );
    }

    #[test]
    fn active_ipv4_with_rfc_mode_and_routing_domains() {
        let mut a = v4();
        a.client_rdomain = 3;
        let o = RuleOptions {
            rfc_mode: true,
            proxy_rtable: 2,
            ..opts()
        };
        let rules = data_rules(Mode::ActivePort, &a, 1025, 61234, &o);
        check(
            &rules,
            [
                // A1: pass in quick on rdomain 2 from server to proxy port 61234 rtable 3 rdr-to client port 1025
                Want {
                    action: PF_PASS,
                    direction: PF_IN,
                    quick: 1,
                    log: 0,
                    src: a.server,
                    dst: a.proxy,
                    dport: 61234,
                    pool: (RDR, a.client, 1025, 0),
                    none_pool: NAT,
                    rtableid: 3,
                    onrdomain: 2,
                    qname: "",
                    tagname: "",
                },
                // A2: pass out quick on rdomain 3 from server to client port 1025 nat-to orig_server port 20
                Want {
                    action: PF_PASS,
                    direction: PF_OUT,
                    quick: 1,
                    log: 0,
                    src: a.server,
                    dst: a.client,
                    dport: 1025,
                    pool: (NAT, a.orig_server, 20, 20),
                    none_pool: RDR,
                    rtableid: -1,
                    onrdomain: 3,
                    qname: "",
                    tagname: "",
                },
            ],
        );
    }

    #[test]
    fn active_eprt_ipv6_keeps_nat_range_with_rfc_mode() {
        let a = v6();
        let o = RuleOptions {
            rfc_mode: true,
            ..opts()
        };
        let rules = data_rules(Mode::ActiveEprt, &a, 40000, 49152, &o);
        check(
            &rules,
            [
                Want {
                    action: PF_PASS,
                    direction: PF_IN,
                    quick: 1,
                    log: 0,
                    src: a.server,
                    dst: a.proxy,
                    dport: 49152,
                    pool: (RDR, a.client, 40000, 0),
                    none_pool: NAT,
                    rtableid: 0,
                    onrdomain: 0,
                    qname: "",
                    tagname: "",
                },
                Want {
                    action: PF_PASS,
                    direction: PF_OUT,
                    quick: 1,
                    log: 0,
                    src: a.server,
                    dst: a.client,
                    dport: 40000,
                    pool: (NAT, a.orig_server, 50001, 65535),
                    none_pool: RDR,
                    rtableid: -1,
                    onrdomain: 0,
                    qname: "",
                    tagname: "",
                },
            ],
        );
    }

    /// `-T`, `-q`, `-vv` on IPv6 passive rules: `match`, not quick, named, `PF_LOG_ALL`.
    #[test]
    fn passive_ipv6_tag_queue_log_all() {
        let a = v6();
        let o = RuleOptions {
            tag: Some("ftpdata".into()),
            queue: Some("bulk".into()),
            log: RuleLog::All,
            ..opts()
        };
        let rules = data_rules(Mode::Passive, &a, 2121, 65534, &o);
        check(
            &rules,
            [
                Want {
                    action: PF_MATCH,
                    direction: PF_IN,
                    quick: 0,
                    log: 0x02,
                    src: a.client,
                    dst: a.orig_server,
                    dport: 65534,
                    pool: (RDR, a.server, 2121, 0),
                    none_pool: NAT,
                    rtableid: 0,
                    onrdomain: 0,
                    qname: "bulk",
                    tagname: "ftpdata",
                },
                Want {
                    action: PF_MATCH,
                    direction: PF_OUT,
                    quick: 0,
                    log: 0x02,
                    src: a.client,
                    dst: a.server,
                    dport: 2121,
                    pool: (NAT, a.proxy, 50001, 65535),
                    none_pool: RDR,
                    rtableid: -1,
                    onrdomain: 0,
                    qname: "bulk",
                    tagname: "ftpdata",
                },
            ],
        );
    }

    /// `-v` on IPv4 active PORT without `-r`: `PF_LOG` and the default NAT range.
    #[test]
    fn active_ipv4_log() {
        let a = v4();
        let o = RuleOptions {
            log: RuleLog::Log,
            ..opts()
        };
        let rules = data_rules(Mode::ActivePort, &a, 3000, 50000, &o);
        check(
            &rules,
            [
                Want {
                    action: PF_PASS,
                    direction: PF_IN,
                    quick: 1,
                    log: 0x01,
                    src: a.server,
                    dst: a.proxy,
                    dport: 50000,
                    pool: (RDR, a.client, 3000, 0),
                    none_pool: NAT,
                    rtableid: 0,
                    onrdomain: 0,
                    qname: "",
                    tagname: "",
                },
                Want {
                    action: PF_PASS,
                    direction: PF_OUT,
                    quick: 1,
                    log: 0x01,
                    src: a.server,
                    dst: a.client,
                    dport: 3000,
                    pool: (NAT, a.orig_server, 50001, 65535),
                    none_pool: RDR,
                    rtableid: -1,
                    onrdomain: 0,
                    qname: "",
                    tagname: "",
                },
            ],
        );
    }

    /// A few fields read back through the mirror, as a cross-check of the byte images
    /// (network-order destination port, host-order proxy ports, AF_INET6 = 24).
    #[test]
    fn fields_through_the_mirror() {
        let a = v6();
        let [p1, p2] = data_rules(Mode::Passive, &a, 0x1389, 0xC350, &opts());
        let r1 = encode_rule_body(&p1).unwrap();
        assert_eq!(r1.dst.port, [0xC350u16.to_be(), 0]);
        assert_eq!(r1.rdr.proxy_port, [0x1389, 0]);
        assert_eq!(r1.af, 24);
        assert_eq!(r1.nat.addr.type_, PF_ADDR_NONE);
        assert_eq!(r1.route, PfPool::zeroed());
        let r2 = encode_rule_body(&p2).unwrap();
        assert_eq!(r2.nat.proxy_port, [50001, 65535]);
        assert_eq!(r2.rdr.addr.type_, PF_ADDR_NONE);
        assert_eq!(r2.rtableid, -1);
    }

    fn errno_of(e: FilterError) -> i32 {
        match e {
            FilterError::Other { errno, .. } => errno,
            other => panic!("expected Other, got {other:?}"),
        }
    }

    /// The pre-checks of filter.c's `add_nat`/`add_rdr`: EINVAL for missing ports and translation family
    /// mismatches, EPROTONOSUPPORT for source/destination family mismatches.
    #[test]
    fn prechecks() {
        let [rdr, nat] = data_rules(Mode::Passive, &v4(), 5001, 55000, &opts());
        let v6addr: IpAddr = "2001:db8::1".parse().unwrap();

        let mut r = rdr.clone();
        r.port = 0;
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);
        let mut r = rdr.clone();
        r.translate = Translate::RdrTo {
            addr: v6addr,
            port: 5001,
        };
        let e = encode_rule_body(&r).unwrap_err();
        assert_eq!(
            e,
            FilterError::Other {
                errno: libc::EINVAL,
                text: "Invalid argument".into()
            }
        );
        let mut r = rdr.clone();
        r.translate = Translate::RdrTo {
            addr: "10.1.1.1".parse().unwrap(),
            port: 0,
        };
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);

        let mut r = nat.clone();
        r.translate = Translate::NatTo {
            addr: v6addr,
            ports: PortRange {
                low: 50001,
                high: 65535,
            },
        };
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);
        let mut r = nat.clone();
        r.translate = Translate::NatTo {
            addr: "10.1.1.1".parse().unwrap(),
            ports: PortRange {
                low: 0,
                high: 65535,
            },
        };
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);

        // Destination of another family: EPROTONOSUPPORT, checked after the EINVAL ones.
        let mut r = nat.clone();
        r.to = v6addr;
        let e = encode_rule_body(&r).unwrap_err();
        assert_eq!(
            e,
            FilterError::Other {
                errno: libc::EPROTONOSUPPORT,
                text: "Protocol not supported".into()
            }
        );
        r.port = 0;
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);

        // Names pf would truncate, routing ids beyond its int.
        let mut r = rdr.clone();
        r.queue = Some("q".repeat(64));
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);
        r.queue = Some("q".repeat(63));
        assert!(encode_rule_body(&r).is_ok());
        let mut r = rdr.clone();
        r.tag = Some("a\0b".into());
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);
        let mut r = rdr;
        r.rtable = Some(u32::MAX);
        assert_eq!(errno_of(encode_rule_body(&r).unwrap_err()), libc::EINVAL);
    }

    #[test]
    fn c_strings() {
        let mut f = [0xAAu8; 8];
        assert_eq!(put_c_str(&mut f, "abc"), Some(()));
        assert_eq!(f, *b"abc\0\0\0\0\0");
        assert_eq!(c_str(&f), b"abc");
        assert_eq!(put_c_str(&mut f, "12345678"), None);
        assert_eq!(put_c_str(&mut f, "1234567"), Some(()));
        assert_eq!(c_str(&f), b"1234567");
    }
}
