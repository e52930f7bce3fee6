//! The backend's table, maps and chains, as nf_tables messages of one batch.
//!
//! The table is created over the backend's own netlink socket, not by `nft -f`: a
//! table with `NFT_TABLE_F_OWNER` belongs to the socket that created it, only that
//! socket may change it, and the kernel deletes it when the socket closes, however the
//! process ended (docs/linux.md, "Table lifetime"). So the socket that commits the
//! elements must be the one that made the table, and it must also write the rules.
//!
//! What the batch builds, as `nft list table` shows it (v4 shown; v6 is the same
//! with `ip6`, 16-byte addresses and `nfproto ipv6`):
//!
//! ```text
//! table inet ftp-proxy-<pid>-<pidns> {
//!     flags owner
//!     map rdr4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; size 65535; flags timeout; }
//!     map nat4 { type ipv4_addr . ipv4_addr . inet_service . inet_service : ipv4_addr . inet_service; size 65535; flags timeout; }
//!     set arm4 { type ipv4_addr . ipv4_addr . inet_service; size 65535; flags dynamic,timeout; }
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat - 10; policy accept;
//!         meta nfproto ipv4 tcp flags & (syn | ack) == syn ip saddr . ip daddr . tcp dport @arm4
//!             delete @arm4 { ip saddr . ip daddr . tcp dport } [log prefix "ftp-proxy: "]
//!             ct mark set <mark> dnat ip to ip saddr . ip daddr . tcp dport map @rdr4
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat - 10; policy accept;
//!         meta nfproto ipv4 snat ip to ip saddr . ip daddr . tcp dport . ct original proto-dst map @nat4
//!     }
//!     chain forward {   # only with -vv (pf's `log (all)`)
//!         type filter hook forward priority filter - 10; policy accept;
//!         ct mark <mark> log prefix "ftp-proxy: "
//!     }
//! }
//! ```
//!
//! Constants are from `<linux/netfilter/nf_tables.h>` and `<linux/netfilter.h>`.

use ftp_proxy_core::RuleLog;

use super::msg::{
    Batch, NFT_MSG_NEWTABLE, NFT_TABLE_F_OWNER, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
};
use super::{NftOptions, LOG_PREFIX, SET_SIZE};

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USERDATA: u16 = 6;
/// `NFTNL_UDATA_TABLE_COMMENT` in libnftnl's user-data TLVs, which nft reads back.
const UDATA_TABLE_COMMENT: u8 = 0;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_ACCEPT: u32 = 1;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// `NFT_CT_PROTO_DST` of `enum nft_ct_keys`, with `NFTA_CT_DIRECTION`
/// `IP_CT_DIR_ORIGINAL`: `ct original proto-dst`.
const NFT_CT_PROTO_DST: u32 = 12;
const IP_CT_DIR_ORIGINAL: u8 = 0;

/// nft's datatype numbers, which `nft list` uses to print keys (a concatenation is
/// the types shifted by 6 bits each, first type highest). The kernel ignores them.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

/// The first 32-bit register (`NFT_REG32_00`); registers are numbered in 4-byte units.
const REG: u32 = 8;
/// Where the map lookups put `addr . port`, clear of the longest key (the IPv6 nat
/// key, 10 registers).
const REG_DATA: u32 = 18;
/// Where the conntrack mark is staged for `ct mark set`, after the longest data (5).
const REG_MARK: u32 = 23;

/// One address family's names and sizes.
#[derive(Clone, Copy)]
struct Fam {
    v: &'static str,
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6`: `meta nfproto` and the nat family.
    nfproto: u8,
    addr_len: u32,
    saddr_off: u32,
    daddr_off: u32,
    addr_type: u32,
}

const V4: Fam = Fam {
    v: "4",
    nfproto: 2,
    addr_len: 4,
    saddr_off: 12,
    daddr_off: 16,
    addr_type: TYPE_IPV4_ADDR,
};
const V6: Fam = Fam {
    v: "6",
    nfproto: 10,
    addr_len: 16,
    saddr_off: 8,
    daddr_off: 24,
    addr_type: TYPE_IPV6_ADDR,
};

impl Fam {
    /// Bytes of the key `addr . addr . port` (each field padded to 4).
    fn key_len(self) -> u32 {
        2 * self.addr_len + 4
    }
    /// Bytes of the nat maps' key `addr . addr . port . proxy port`.
    fn nat_key_len(self) -> u32 {
        self.key_len() + 4
    }
    /// Register of the nat key's last field, the original destination port.
    fn reg_orig_port(self) -> u32 {
        self.reg_port() + 1
    }
    /// Bytes of the map data `addr . port`.
    fn data_len(self) -> u32 {
        self.addr_len + 4
    }
    /// Register of the key's port (after the two addresses).
    fn reg_port(self) -> u32 {
        REG + 2 * self.addr_len / 4
    }
    /// Register of the map data's port.
    fn reg_data_port(self) -> u32 {
        REG_DATA + self.addr_len / 4
    }
}

/// Appends the messages that create the table and everything in it. With `owner`
/// the table gets `NFT_TABLE_F_OWNER`. `NLM_F_EXCL`: an existing table of that name
/// is an error, never silently reused (it cannot be ours).
pub(crate) fn create(b: &mut Batch, opts: &NftOptions, owner: bool) {
    let t = opts.table.as_str();
    let at = b.nft_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL);
    b.attr_str(NFTA_TABLE_NAME, t);
    if owner {
        b.attr_be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
    }
    b.attr(NFTA_TABLE_USERDATA, &comment_udata(TABLE_COMMENT));
    b.end_msg(at);

    let mut id = 1;
    for f in [V4, V6] {
        for (m, kind) in [("rdr", SetKind::Rdr), ("nat", SetKind::Nat)] {
            set(b, t, &format!("{m}{}", f.v), f, kind, id);
            id += 1;
        }
        set(b, t, &format!("arm{}", f.v), f, SetKind::Arm, id);
        id += 1;
    }

    chain(b, t, "prerouting", "nat", NF_INET_PRE_ROUTING, -110);
    chain(b, t, "postrouting", "nat", NF_INET_POST_ROUTING, 90);
    for f in [V4, V6] {
        let r = rule(b, t, "prerouting");
        match_nfproto_tcp(b, f);
        // tcp flags & (syn | ack) == syn: only the first SYN consumes the arm element.
        payload(b, 2, 13, 1, REG);
        let at = expr(b, "bitwise");
        b.attr_be32(1, REG); // NFTA_BITWISE_SREG
        b.attr_be32(2, REG); // NFTA_BITWISE_DREG
        b.attr_be32(3, 1); // NFTA_BITWISE_LEN
        data(b, 4, &[0x12]); // NFTA_BITWISE_MASK: syn | ack
        data(b, 5, &[0]); // NFTA_BITWISE_XOR
        expr_end(b, at);
        cmp_eq(b, REG, &[0x02]);
        load_key(b, f);
        let arm = format!("arm{}", f.v);
        let at = expr(b, "lookup");
        b.attr_str(1, &arm); // NFTA_LOOKUP_SET
        b.attr_be32(2, REG); // NFTA_LOOKUP_SREG
        expr_end(b, at);
        let at = expr(b, "dynset");
        b.attr_str(1, &arm); // NFTA_DYNSET_SET_NAME
        b.attr_be32(3, 2); // NFTA_DYNSET_OP: NFT_DYNSET_OP_DELETE
        b.attr_be32(4, REG); // NFTA_DYNSET_SREG_KEY
        expr_end(b, at);
        if opts.log != RuleLog::None {
            log(b);
        }
        let at = expr(b, "immediate");
        b.attr_be32(1, REG_MARK); // NFTA_IMMEDIATE_DREG
        data(b, 2, &opts.mark.to_ne_bytes()); // NFTA_IMMEDIATE_DATA: host order, as ct mark
        expr_end(b, at);
        let at = expr(b, "ct");
        b.attr_be32(2, 3); // NFTA_CT_KEY: NFT_CT_MARK
        b.attr_be32(4, REG_MARK); // NFTA_CT_SREG
        expr_end(b, at);
        map_nat(b, f, "rdr", 1);
        rule_end(b, r);
    }
    for f in [V4, V6] {
        // The key ends with the destination port the connection had before any DNAT:
        // the proxy port of the negotiation whose rdr element redirected it. Without
        // it, two sessions from one client address told the same server data port
        // would need the same nat element (docs/linux.md, "Limits").
        let r = rule(b, t, "postrouting");
        match_nfproto_tcp(b, f);
        load_key(b, f);
        let at = expr(b, "ct");
        b.attr_be32(1, f.reg_orig_port()); // NFTA_CT_DREG
        b.attr_be32(2, NFT_CT_PROTO_DST); // NFTA_CT_KEY
        b.attr(3, &[IP_CT_DIR_ORIGINAL]); // NFTA_CT_DIRECTION (u8)
        expr_end(b, at);
        map_nat(b, f, "nat", 0);
        rule_end(b, r);
    }
    if opts.log == RuleLog::All {
        // pf's `log (all)`: every packet of the data connections, found by their mark.
        chain(b, t, "forward", "filter", NF_INET_FORWARD, -10);
        let r = rule(b, t, "forward");
        let at = expr(b, "ct");
        b.attr_be32(1, REG); // NFTA_CT_DREG
        b.attr_be32(2, 3); // NFTA_CT_KEY: NFT_CT_MARK
        expr_end(b, at);
        cmp_eq(b, REG, &opts.mark.to_ne_bytes());
        log(b);
        rule_end(b, r);
    }
}

/// The table's comment, shown by `nft list table`.
const TABLE_COMMENT: &str = "ftp-proxy(8) data connections; managed by the daemon, removed at exit";

/// libnftnl's user-data encoding of a comment: one TLV `{ u8 type, u8 len, value }`
/// with a NUL-terminated value.
fn comment_udata(text: &str) -> Vec<u8> {
    let text = &text.as_bytes()[..text.len().min(250)];
    let mut v = vec![UDATA_TABLE_COMMENT, (text.len() + 1) as u8];
    v.extend_from_slice(text);
    v.push(0);
    v
}

/// Which of the three kinds of set: they differ in flags, key and data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SetKind {
    /// `armN`: keys only, deleted from the packet path (dynamic).
    Arm,
    /// `rdrN`: `addr . addr . port : addr . port`.
    Rdr,
    /// `natN`: `addr . addr . port . port : addr . port`.
    Nat,
}

fn set(b: &mut Batch, table: &str, name: &str, f: Fam, kind: SetKind, id: u32) {
    let at = b.nft_msg(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL);
    b.attr_str(NFTA_SET_TABLE, table);
    b.attr_str(NFTA_SET_NAME, name);
    let map = kind != SetKind::Arm;
    let flags = if map {
        NFT_SET_MAP | NFT_SET_TIMEOUT
    } else {
        NFT_SET_TIMEOUT | NFT_SET_EVAL
    };
    b.attr_be32(NFTA_SET_FLAGS, flags);
    let mut key_type =
        (((f.addr_type << TYPE_BITS) | f.addr_type) << TYPE_BITS) | TYPE_INET_SERVICE;
    let mut key_len = f.key_len();
    if kind == SetKind::Nat {
        key_type = (key_type << TYPE_BITS) | TYPE_INET_SERVICE;
        key_len = f.nat_key_len();
    }
    b.attr_be32(NFTA_SET_KEY_TYPE, key_type);
    b.attr_be32(NFTA_SET_KEY_LEN, key_len);
    if map {
        b.attr_be32(
            NFTA_SET_DATA_TYPE,
            (f.addr_type << TYPE_BITS) | TYPE_INET_SERVICE,
        );
        b.attr_be32(NFTA_SET_DATA_LEN, f.data_len());
    }
    let d = b.nest_start(NFTA_SET_DESC);
    b.attr_be32(NFTA_SET_DESC_SIZE, SET_SIZE);
    b.nest_end(d);
    b.attr_be32(NFTA_SET_ID, id);
    b.end_msg(at);
}

fn chain(b: &mut Batch, table: &str, name: &str, ty: &str, hook: u32, priority: i32) {
    let at = b.nft_msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL);
    b.attr_str(NFTA_CHAIN_TABLE, table);
    b.attr_str(NFTA_CHAIN_NAME, name);
    let h = b.nest_start(NFTA_CHAIN_HOOK);
    b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
    b.attr_be32(NFTA_HOOK_PRIORITY, priority as u32);
    b.nest_end(h);
    b.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
    b.attr_str(NFTA_CHAIN_TYPE, ty);
    b.end_msg(at);
}

/// Starts a rule appended to `chain`; returns the offsets [`rule_end`] closes.
fn rule(b: &mut Batch, table: &str, chain: &str) -> (usize, usize) {
    let at = b.nft_msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    b.attr_str(NFTA_RULE_TABLE, table);
    b.attr_str(NFTA_RULE_CHAIN, chain);
    let exprs = b.nest_start(NFTA_RULE_EXPRESSIONS);
    (at, exprs)
}

fn rule_end(b: &mut Batch, (at, exprs): (usize, usize)) {
    b.nest_end(exprs);
    b.end_msg(at);
}

/// Starts expression `name`; its attributes follow; close with [`expr_end`].
fn expr(b: &mut Batch, name: &str) -> (usize, usize) {
    let elem = b.nest_start(NFTA_LIST_ELEM);
    b.attr_str(NFTA_EXPR_NAME, name);
    let d = b.nest_start(NFTA_EXPR_DATA);
    (elem, d)
}

fn expr_end(b: &mut Batch, (elem, d): (usize, usize)) {
    b.nest_end(d);
    b.nest_end(elem);
}

/// A nested `NFTA_DATA_VALUE` attribute of type `ty`.
fn data(b: &mut Batch, ty: u16, value: &[u8]) {
    let n = b.nest_start(ty);
    b.attr(NFTA_DATA_VALUE, value);
    b.nest_end(n);
}

fn meta(b: &mut Batch, key: u32, dreg: u32) {
    let at = expr(b, "meta");
    b.attr_be32(2, key); // NFTA_META_KEY
    b.attr_be32(1, dreg); // NFTA_META_DREG
    expr_end(b, at);
}

fn cmp_eq(b: &mut Batch, sreg: u32, value: &[u8]) {
    let at = expr(b, "cmp");
    b.attr_be32(1, sreg); // NFTA_CMP_SREG
    b.attr_be32(2, 0); // NFTA_CMP_OP: NFT_CMP_EQ
    data(b, 3, value); // NFTA_CMP_DATA
    expr_end(b, at);
}

/// `base`: 1 network header, 2 transport header.
fn payload(b: &mut Batch, base: u32, offset: u32, len: u32, dreg: u32) {
    let at = expr(b, "payload");
    b.attr_be32(1, dreg); // NFTA_PAYLOAD_DREG
    b.attr_be32(2, base); // NFTA_PAYLOAD_BASE
    b.attr_be32(3, offset); // NFTA_PAYLOAD_OFFSET
    b.attr_be32(4, len); // NFTA_PAYLOAD_LEN
    expr_end(b, at);
}

/// `meta nfproto ipvN meta l4proto tcp`: the family of the rule, and the protocol
/// check that makes reading TCP header fields meaningful.
fn match_nfproto_tcp(b: &mut Batch, f: Fam) {
    meta(b, 15, REG); // NFT_META_NFPROTO
    cmp_eq(b, REG, &[f.nfproto]);
    meta(b, 16, REG); // NFT_META_L4PROTO
    cmp_eq(b, REG, &[libc::IPPROTO_TCP as u8]);
}

/// `ip saddr . ip daddr . tcp dport` into consecutive registers from [`REG`].
fn load_key(b: &mut Batch, f: Fam) {
    payload(b, 1, f.saddr_off, f.addr_len, REG);
    payload(b, 1, f.daddr_off, f.addr_len, REG + f.addr_len / 4);
    payload(b, 2, 2, 2, f.reg_port());
}

/// `dnat|snat ipN to <key> map @<m>N`; `nat_type` 1 is DNAT, 0 SNAT.
fn map_nat(b: &mut Batch, f: Fam, m: &str, nat_type: u32) {
    let at = expr(b, "lookup");
    b.attr_str(1, &format!("{m}{}", f.v)); // NFTA_LOOKUP_SET
    b.attr_be32(2, REG); // NFTA_LOOKUP_SREG
    b.attr_be32(3, REG_DATA); // NFTA_LOOKUP_DREG
    expr_end(b, at);
    let at = expr(b, "nat");
    b.attr_be32(1, nat_type); // NFTA_NAT_TYPE
    b.attr_be32(2, u32::from(f.nfproto)); // NFTA_NAT_FAMILY
    b.attr_be32(3, REG_DATA); // NFTA_NAT_REG_ADDR_MIN
    b.attr_be32(5, f.reg_data_port()); // NFTA_NAT_REG_PROTO_MIN
    expr_end(b, at);
}

fn log(b: &mut Batch) {
    let at = expr(b, "log");
    b.attr_str(2, LOG_PREFIX); // NFTA_LOG_PREFIX
    expr_end(b, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(log: RuleLog) -> NftOptions {
        NftOptions {
            table: "ftp-proxy-9-4026531836".into(),
            mark: 0xf7f7,
            log,
            element_timeout: None,
        }
    }

    /// The (type, flags) of every message in a finished batch, begin and end included.
    fn messages(bytes: &[u8]) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert!(
                len >= 20 && len <= rest.len() && len.is_multiple_of(4),
                "bad length {len}"
            );
            out.push((
                u16::from_ne_bytes([rest[4], rest[5]]),
                u16::from_ne_bytes([rest[6], rest[7]]),
            ));
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
        out
    }

    /// The 8 bytes after the NFTA_TABLE_NAME attribute of the batch's NEWTABLE.
    fn after_table_name(bytes: &[u8]) -> &[u8] {
        // batch begin (20), table header (16 + 4), name attribute (aligned).
        let name_at = 40;
        let len = usize::from(u16::from_ne_bytes([bytes[name_at], bytes[name_at + 1]]));
        let next = name_at + ((len + 3) & !3);
        &bytes[next..next + 8]
    }

    #[test]
    fn owner_table_six_sets_two_chains_four_rules() {
        let mut b = Batch::new(1);
        create(&mut b, &opts(RuleLog::None), true);
        let (_, count) = b.acked_seqs();
        let bytes = b.finish();
        let m = messages(&bytes);
        let nft = |t: u16| (10 << 8) | t;
        let types: Vec<u16> = m.iter().map(|&(t, _)| t).collect();
        assert_eq!(types.first(), Some(&0x10));
        assert_eq!(types.last(), Some(&0x11));
        assert_eq!(types[1], nft(NFT_MSG_NEWTABLE));
        assert_eq!(
            types.iter().filter(|&&t| t == nft(NFT_MSG_NEWSET)).count(),
            6
        );
        assert_eq!(
            types
                .iter()
                .filter(|&&t| t == nft(NFT_MSG_NEWCHAIN))
                .count(),
            2
        );
        assert_eq!(
            types.iter().filter(|&&t| t == nft(NFT_MSG_NEWRULE)).count(),
            4
        );
        assert_eq!(count as usize, m.len() - 2);
        // The owner flag, big-endian, right after the name.
        assert_eq!(after_table_name(&bytes), [8u8, 0, 2, 0, 0, 0, 0, 2]);
        assert!(!bytes.windows(10).any(|w| w == b"ftp-proxy:"));
    }

    #[test]
    fn without_owner_no_flags_and_log_all_adds_forward_chain() {
        let mut b = Batch::new(1);
        create(&mut b, &opts(RuleLog::All), false);
        let bytes = b.finish();
        let m = messages(&bytes);
        // No NFTA_TABLE_FLAGS: the user data (type 6) follows the name.
        assert_eq!(&after_table_name(&bytes)[2..4], [6u8, 0]);
        let chains = m.iter().filter(|&&(t, _)| t == (10 << 8) | 3).count();
        assert_eq!(chains, 3);
        assert!(bytes.windows(6).any(|w| w == b"filter"));
        // The log prefix appears in both prerouting rules and the forward rule.
        assert_eq!(
            bytes.windows(11).filter(|w| *w == b"ftp-proxy: ").count(),
            3
        );
    }

    #[test]
    fn registers_fit_the_kernel_register_file() {
        // 16 x 32-bit registers from NFT_REG32_00 = 8: the last usable is 23.
        for f in [V4, V6] {
            assert!(f.reg_port() < REG_DATA);
            assert_eq!(f.reg_orig_port(), REG + f.key_len() / 4);
            assert!(f.reg_orig_port() < REG_DATA);
            assert!(REG_DATA + f.data_len() / 4 <= REG_MARK);
        }
        const { assert!(REG_MARK <= 23) };
        assert_eq!(V6.reg_port(), 16);
        assert_eq!(V6.reg_orig_port(), 17);
        assert_eq!(V4.reg_data_port(), 19);
        assert_eq!(V6.reg_data_port(), 22);
    }
}
