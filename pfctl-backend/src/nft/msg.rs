//! Encoding of the few nf_tables netlink messages the backend sends.
//!
//! Hand-rolled rather than taken from `netlink-packet-netfilter`: the backend needs a
//! handful of message shapes (batch begin/end, new table/set/chain/rule, new/destroy set
//! element, delete table, the table dump and the kernel's ack), the crate's API was three months old and does not offer
//! `NFT_MSG_DESTROYSETELEM`, and the whole wire format fits in this file with unit
//! tests on its bytes. Constants are from `<linux/netfilter/nfnetlink.h>` and
//! `<linux/netfilter/nf_tables.h>`.

use std::net::IpAddr;

/// `NLMSG_ERROR`: the kernel's ack (error 0) or error for one request.
pub(crate) const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// `NLMSG_DONE`: the end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFPROTO_UNSPEC: u8 = 0;

pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
/// Idempotent element delete (Linux 6.3): deleting an absent element is not an error,
/// so a batch never aborts on an element that already timed out.
const NFT_MSG_DESTROYSETELEM: u16 = 30;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_OWNER: u16 = 7;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// Size of `struct nlmsghdr`.
pub(crate) const NLMSG_HDRLEN: usize = 16;

/// Rounds up to netlink's 4-byte alignment.
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One element of one of the backend's sets or maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Element {
    /// `rdr4`, `nat6`, `arm4`, ...
    pub set: &'static str,
    /// Concatenated key `addr . addr . port` (`. port` more for the nat maps), each
    /// field padded to 4 bytes.
    pub key: Vec<u8>,
    /// Concatenated map data `addr . port`; `None` for the arm sets.
    pub data: Option<Vec<u8>>,
}

/// Appends an address in network byte order (4 or 16 bytes, already 4-aligned).
fn put_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// Appends an `inet_service` field of a concatenation: the port in network byte order
/// and two bytes of padding, because every field of a concatenation occupies a
/// multiple of 4 bytes (`NFT_REG32_SIZE`).
fn put_port(out: &mut Vec<u8>, port: u16) {
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// The key `from . to . port` (12 bytes for IPv4, 36 for IPv6).
pub(crate) fn key(from: IpAddr, to: IpAddr, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(36);
    put_addr(&mut k, from);
    put_addr(&mut k, to);
    put_port(&mut k, port);
    k
}

/// The nat maps' key `from . to . port . orig_port`, where `orig_port` is the
/// destination port the connection had before DNAT (`ct original proto-dst`): the
/// proxy port of the negotiation that redirected it (16 bytes for IPv4, 40 for IPv6).
pub(crate) fn nat_key(from: IpAddr, to: IpAddr, port: u16, orig_port: u16) -> Vec<u8> {
    let mut k = key(from, to, port);
    put_port(&mut k, orig_port);
    k
}

/// The fields of a [`key`]: `(from, to, port)`; `None` for any other length.
pub(crate) fn key_parts(k: &[u8]) -> Option<(IpAddr, IpAddr, u16)> {
    let (from, to, port): (IpAddr, IpAddr, &[u8]) = match k.len() {
        12 => (
            <[u8; 4]>::try_from(&k[0..4]).ok()?.into(),
            <[u8; 4]>::try_from(&k[4..8]).ok()?.into(),
            &k[8..10],
        ),
        36 => (
            <[u8; 16]>::try_from(&k[0..16]).ok()?.into(),
            <[u8; 16]>::try_from(&k[16..32]).ok()?.into(),
            &k[32..34],
        ),
        _ => return None,
    };
    Some((from, to, u16::from_be_bytes([port[0], port[1]])))
}

/// The request whether one element is in its set (`NFT_MSG_GETSETELEM`, acked, not
/// part of a batch): the kernel answers with the element and an ack, or `ENOENT`.
pub(crate) fn get_elem_request(seq: u32, table: &str, e: &Element) -> Vec<u8> {
    let mut b = Batch {
        buf: Vec::with_capacity(128),
        next_seq: seq,
        first_seq: seq,
    };
    b.elem_msg(NFT_MSG_GETSETELEM, 0, table, e, None);
    b.buf
}

/// The map data `addr . port` (8 bytes for IPv4, 20 for IPv6).
pub(crate) fn addr_port(addr: IpAddr, port: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(20);
    put_addr(&mut d, addr);
    put_port(&mut d, port);
    d
}

/// Builds one batch: `BATCH_BEGIN`, the messages pushed, `BATCH_END`.
///
/// Every message between begin and end carries `NLM_F_ACK`, so the kernel answers each
/// with exactly one `NLMSG_ERROR` (0 for success) after the transaction committed or
/// aborted; [`Batch::acked_seqs`] lists the sequence numbers to wait for.
pub(crate) struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
    first_seq: u32,
}

impl Batch {
    /// Starts a batch whose messages are numbered from `seq`.
    pub(crate) fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(1024),
            next_seq: seq,
            first_seq: seq,
        };
        let at = b.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        b.end_msg(at);
        b
    }

    /// Sequence number of the batch-begin message; an error for it (EPERM) means the
    /// kernel refused the whole batch without looking at its messages.
    pub(crate) fn begin_seq(&self) -> u32 {
        self.first_seq
    }

    /// The messages the kernel will ack: the first one's sequence number, and how
    /// many follow it (numbers wrap around at `u32::MAX`).
    pub(crate) fn acked_seqs(&self) -> (u32, u32) {
        let first = self.first_seq.wrapping_add(1);
        (first, self.next_seq.wrapping_sub(first))
    }

    /// Appends `NFT_MSG_NEWSETELEM` for one element with a timeout in milliseconds
    /// (0: no timeout).
    pub(crate) fn new_elem(&mut self, table: &str, e: &Element, timeout_ms: u64) {
        self.elem_msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, table, e, Some(timeout_ms));
    }

    /// Appends `NFT_MSG_DESTROYSETELEM` for one element (the key alone identifies it).
    pub(crate) fn destroy_elem(&mut self, table: &str, e: &Element) {
        self.elem_msg(NFT_MSG_DESTROYSETELEM, 0, table, e, None);
    }

    /// Starts an nf_tables message of type `msg` (family `inet`, acked) whose
    /// attributes the caller appends; close it with [`Batch::end_msg`].
    pub(crate) fn nft_msg(&mut self, msg: u16, flags: u16) -> usize {
        self.begin_msg(
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            0,
        )
    }

    /// A big-endian 32-bit attribute (`NLA_BE32`, how nf_tables takes numbers).
    pub(crate) fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// Appends `NFT_MSG_DELTABLE` for table `inet <table>`.
    pub(crate) fn del_table(&mut self, table: &str) {
        let at = self.begin_msg(
            nft_type(NFT_MSG_DELTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_INET,
            0,
        );
        self.attr_str(NFTA_TABLE_NAME, table);
        self.end_msg(at);
    }

    fn elem_msg(
        &mut self,
        msg: u16,
        flags: u16,
        table: &str,
        e: &Element,
        timeout_ms: Option<u64>,
    ) {
        let at = self.begin_msg(
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            0,
        );
        self.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        self.attr_str(NFTA_SET_ELEM_LIST_SET, e.set);
        let elems = self.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
        let elem = self.nest_start(NFTA_LIST_ELEM);
        let key = self.nest_start(NFTA_SET_ELEM_KEY);
        self.attr(NFTA_DATA_VALUE, &e.key);
        self.nest_end(key);
        if let Some(data) = e.data.as_ref().filter(|_| msg == NFT_MSG_NEWSETELEM) {
            let d = self.nest_start(NFTA_SET_ELEM_DATA);
            self.attr(NFTA_DATA_VALUE, data);
            self.nest_end(d);
        }
        if let Some(ms) = timeout_ms.filter(|&ms| ms > 0) {
            self.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        self.nest_end(elem);
        self.nest_end(elems);
        self.end_msg(at);
    }

    /// Closes the batch and returns its bytes, ready for one `send`.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let at = self.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.end_msg(at);
        self.buf
    }

    /// Writes `nlmsghdr` (length patched by [`Batch::end_msg`]) and `nfgenmsg`.
    pub(crate) fn begin_msg(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
                                                         // struct nfgenmsg { u8 family; u8 version = NFNETLINK_V0; be16 res_id; }
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    pub(crate) fn end_msg(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// One attribute: `nlattr { u16 len; u16 type }`, the payload, zero padding to 4.
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// A NUL-terminated string attribute (`NLA_STRING` as libnftnl sends it).
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    pub(crate) fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub(crate) fn nest_end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// The message type of an nf_tables message: subsystem in the high byte.
pub(crate) const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The request for a dump of every `inet` table (not part of a batch: the kernel
/// answers `GET` requests outside transactions).
pub(crate) fn table_dump_request(seq: u32) -> Vec<u8> {
    let mut b = Batch {
        buf: Vec::with_capacity(20),
        next_seq: seq,
        first_seq: seq,
    };
    let at = b.begin_msg(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_DUMP,
        NFPROTO_INET,
        0,
    );
    b.end_msg(at);
    b.buf
}

/// `NFT_TABLE_F_OWNER`: the table belongs to the netlink socket that created it and
/// the kernel deletes it when that socket closes (Linux 5.12).
pub(crate) const NFT_TABLE_F_OWNER: u32 = 0x2;

/// One table of a dump: its name, flags, and owning netlink port id if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// `NFTA_TABLE_FLAGS` (`NFT_TABLE_F_OWNER` = 0x2).
    pub flags: u32,
    /// `NFTA_TABLE_OWNER`: the port id of the owning socket.
    pub owner: Option<u32>,
}

impl TableInfo {
    /// Whether the kernel deletes this table with its creator's socket.
    pub fn owned(&self) -> bool {
        self.flags & NFT_TABLE_F_OWNER != 0
    }
}

/// What one datagram of a table dump held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpPart {
    /// The tables described in it.
    pub tables: Vec<TableInfo>,
    /// `Some(0)` when the dump ended (`NLMSG_DONE`), `Some(errno)` when the kernel
    /// refused it; `None` when more datagrams follow.
    pub end: Option<i32>,
}

/// Parses one datagram of the answer to `table_dump_request` for `seq`. Messages
/// for other sequence numbers, other types and unknown attributes are skipped;
/// a truncated message or attribute ends parsing (the part holds what came before).
/// Takes any bytes: it is the parser the fuzz target drives.
pub fn parse_table_dump(mut buf: &[u8], seq: u32) -> DumpPart {
    let mut part = DumpPart::default();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let mseq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        if mseq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => {
                part.end = Some(0);
                break;
            }
            NLMSG_ERROR if body.len() >= 4 => {
                let err = i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
                part.end = Some(err.saturating_neg());
                break;
            }
            t if t == nft_type(NFT_MSG_NEWTABLE) && body.len() >= 4 => {
                if let Some(t) = parse_table(&body[4..]) {
                    part.tables.push(t);
                }
            }
            _ => {}
        }
    }
    part
}

/// The attributes of one `NFT_MSG_NEWTABLE` (after `nfgenmsg`); `None` without a name.
fn parse_table(mut attrs: &[u8]) -> Option<TableInfo> {
    let (mut name, mut flags, mut owner) = (None, 0, None);
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            break;
        }
        let v = &attrs[4..len];
        match ty {
            NFTA_TABLE_NAME => {
                let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                name = Some(String::from_utf8_lossy(&v[..end]).into_owned());
            }
            NFTA_TABLE_FLAGS if v.len() == 4 => {
                flags = u32::from_be_bytes(v.try_into().expect("4 bytes"));
            }
            NFTA_TABLE_OWNER if v.len() == 4 => {
                owner = Some(u32::from_be_bytes(v.try_into().expect("4 bytes")));
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(TableInfo {
        name: name?,
        flags,
        owner,
    })
}

/// One reply read from the socket: the sequence number it answers and its errno
/// (0 = ack), from an `NLMSG_ERROR` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ack {
    /// Sequence number of the request.
    pub seq: u32,
    /// Positive errno, 0 for success.
    pub errno: i32,
}

/// Parses a datagram from the kernel into the acks and errors it holds. Messages of
/// other types (there should be none) are skipped; a truncated message ends parsing.
pub(crate) fn parse_acks(mut buf: &[u8]) -> Vec<Ack> {
    let mut acks = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            // struct nlmsgerr { int error; struct nlmsghdr msg; ... }: error is -errno.
            // Saturating: a reply claiming i32::MIN must not panic the daemon.
            let err = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            acks.push(Ack {
                seq,
                errno: err.saturating_neg(),
            });
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    acks
}

// ---- ctnetlink: the conntrack entries of the data connections ------------------------
//
// Constants from `<linux/netfilter/nfnetlink_conntrack.h>` and `<linux/netfilter/nfnetlink.h>`.

/// `NFNL_SUBSYS_CTNETLINK`: conntrack messages on the same `NETLINK_NETFILTER` socket.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_MARK_MASK: u16 = 21;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `NLA_F_NET_BYTEORDER`: a flag bit of the attribute type, not part of it.
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// `AF_INET` and `AF_INET6` as `nfgenmsg` families.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The message type of a ctnetlink message.
const fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// One direction of a conntrack entry: who sent to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CtTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `IPPROTO_*`.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry as a dump describes it: enough to recognise a data connection
/// and to delete exactly this entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CtEntry {
    /// The original direction (the first packet's addresses, before any NAT).
    pub orig: CtTuple,
    /// The reply direction (after NAT: the DNAT target is its source).
    pub reply: CtTuple,
    /// `CTA_ID`: the entry's id, so a delete cannot hit a newer entry with the same tuple.
    pub id: Option<u32>,
    /// `CTA_ZONE`, when the entry has one.
    pub zone: Option<u16>,
}

/// The request for a dump of the conntrack entries with mark `mark`, every family
/// (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`, filtered in the kernel by
/// `CTA_MARK`/`CTA_MARK_MASK`).
pub(crate) fn ct_dump_request(seq: u32, mark: u32) -> Vec<u8> {
    let mut b = Batch {
        buf: Vec::with_capacity(40),
        next_seq: seq,
        first_seq: seq,
    };
    let at = b.begin_msg(
        ct_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        NFPROTO_UNSPEC,
        0,
    );
    b.attr_be32(CTA_MARK, mark);
    b.attr_be32(CTA_MARK_MASK, u32::MAX);
    b.end_msg(at);
    b.buf
}

/// The request to delete entry `e` (`IPCTNL_MSG_CT_DELETE`, acked): its original
/// tuple, zone and id. The kernel answers ENOENT when it is gone already.
pub(crate) fn ct_delete_request(seq: u32, e: &CtEntry) -> Vec<u8> {
    let mut b = Batch {
        buf: Vec::with_capacity(96),
        next_seq: seq,
        first_seq: seq,
    };
    let family = if e.orig.src.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    let at = b.begin_msg(
        ct_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        0,
    );
    let t = b.nest_start(CTA_TUPLE_ORIG);
    let ip = b.nest_start(CTA_TUPLE_IP);
    match (e.orig.src, e.orig.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.attr(CTA_IP_V4_SRC, &s.octets());
            b.attr(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            b.attr(CTA_IP_V6_SRC, &v6_octets(s));
            b.attr(CTA_IP_V6_DST, &v6_octets(d));
        }
    }
    b.nest_end(ip);
    let p = b.nest_start(CTA_TUPLE_PROTO);
    b.attr(CTA_PROTO_NUM, &[e.orig.proto]);
    b.attr(CTA_PROTO_SRC_PORT, &e.orig.sport.to_be_bytes());
    b.attr(CTA_PROTO_DST_PORT, &e.orig.dport.to_be_bytes());
    b.nest_end(p);
    b.nest_end(t);
    if let Some(zone) = e.zone {
        b.attr(CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = e.id {
        b.attr_be32(CTA_ID, id);
    }
    b.end_msg(at);
    b.buf
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// What one datagram of a conntrack dump held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CtDumpPart {
    /// The entries described in it (those with both tuples complete).
    pub entries: Vec<CtEntry>,
    /// As [`DumpPart::end`].
    pub end: Option<i32>,
}

/// Parses one datagram of the answer to [`ct_dump_request`] for `seq`, as
/// [`parse_table_dump`] does for tables: other sequence numbers and unknown
/// attributes are skipped, a truncated message ends parsing.
pub(crate) fn parse_ct_dump(mut buf: &[u8], seq: u32) -> CtDumpPart {
    let mut part = CtDumpPart::default();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let mseq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        if mseq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => {
                part.end = Some(0);
                break;
            }
            NLMSG_ERROR if body.len() >= 4 => {
                let err = i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
                part.end = Some(err.saturating_neg());
                break;
            }
            t if t == ct_type(IPCTNL_MSG_CT_NEW) && body.len() >= 4 => {
                if let Some(e) = parse_ct_entry(&body[4..]) {
                    part.entries.push(e);
                }
            }
            _ => {}
        }
    }
    part
}

/// The attributes of a nest (or of a message after its fixed header), as
/// `(type, payload)`; stops at the first truncated one.
fn nla_iter(mut attrs: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if attrs.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
        if len < 4 || len > attrs.len() {
            return None;
        }
        let v = &attrs[4..len];
        attrs = &attrs[align4(len).min(attrs.len())..];
        Some((ty, v))
    })
}

fn parse_ct_entry(attrs: &[u8]) -> Option<CtEntry> {
    let (mut orig, mut reply, mut id, mut zone) = (None, None, None, None);
    for (ty, v) in nla_iter(attrs) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_ct_tuple(v),
            CTA_TUPLE_REPLY => reply = parse_ct_tuple(v),
            CTA_ID if v.len() == 4 => id = Some(u32::from_be_bytes(v.try_into().ok()?)),
            CTA_ZONE if v.len() == 2 => zone = Some(u16::from_be_bytes(v.try_into().ok()?)),
            _ => {}
        }
    }
    Some(CtEntry {
        orig: orig?,
        reply: reply?,
        id,
        zone,
    })
}

fn parse_ct_tuple(attrs: &[u8]) -> Option<CtTuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (ty, v) in nla_iter(attrs) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in nla_iter(v) {
                    let addr = match a.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(a).ok()?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(a).ok()?),
                        _ => continue,
                    };
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(addr),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(addr),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in nla_iter(v) {
                    match (ty, p.len()) {
                        (CTA_PROTO_NUM, 1) => proto = Some(p[0]),
                        (CTA_PROTO_SRC_PORT, 2) => sport = Some(u16::from_be_bytes([p[0], p[1]])),
                        (CTA_PROTO_DST_PORT, 2) => dport = Some(u16::from_be_bytes([p[0], p[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(CtTuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        sport: sport.unwrap_or(0),
        dport: dport.unwrap_or(0),
    })
}

/// The fields of map data `addr . port` ([`addr_port`]); `None` for any other length.
pub(crate) fn addr_port_parts(d: &[u8]) -> Option<(IpAddr, u16)> {
    match d.len() {
        8 => Some((
            IpAddr::from(<[u8; 4]>::try_from(&d[0..4]).ok()?),
            u16::from_be_bytes([d[4], d[5]]),
        )),
        20 => Some((
            IpAddr::from(<[u8; 16]>::try_from(&d[0..16]).ok()?),
            u16::from_be_bytes([d[16], d[17]]),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn key_parts_reverse_key() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let k = key(v4("203.0.113.10"), v4("198.51.100.10"), 50123);
        assert_eq!(
            key_parts(&k),
            Some((v4("203.0.113.10"), v4("198.51.100.10"), 50123))
        );
        assert_eq!(key_parts(&key(v6, v6, 21)), Some((v6, v6, 21)));
        assert_eq!(key_parts(&k[..11]), None);
    }

    #[test]
    fn get_elem_request_is_acked_and_carries_the_key_only() {
        let e = Element {
            set: "arm4",
            key: key(v4("203.0.113.10"), v4("198.51.100.10"), 50123),
            data: None,
        };
        let m = get_elem_request(7, "t", &e);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), nft_type(NFT_MSG_GETSETELEM));
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert!(m.windows(e.key.len()).any(|w| w == e.key.as_slice()));
    }

    #[test]
    fn ipv4_key_is_twelve_bytes_with_padded_port() {
        let k = key(v4("203.0.113.10"), v4("198.51.100.10"), 50447);
        assert_eq!(k, [203, 0, 113, 10, 198, 51, 100, 10, 0xc5, 0x0f, 0, 0]);
    }

    #[test]
    fn nat_key_appends_the_original_destination_port() {
        let k = nat_key(v4("203.0.113.10"), v4("198.51.100.10"), 30028, 50447);
        assert_eq!(
            k,
            [203, 0, 113, 10, 198, 51, 100, 10, 0x75, 0x4c, 0, 0, 0xc5, 0x0f, 0, 0]
        );
        let v6 = v4("2001:db8::1");
        assert_eq!(nat_key(v6, v6, 21, 50000).len(), 40);
        // Not an arm/rdr key: key_parts refuses it.
        assert_eq!(key_parts(&k), None);
    }

    #[test]
    fn ipv6_key_and_data_lengths() {
        let k = key(v4("2001:db8:1::10"), v4("2001:db8:2::10"), 21);
        assert_eq!(k.len(), 36);
        assert_eq!(&k[32..], &[0, 21, 0, 0]);
        assert_eq!(&k[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        let d = addr_port(v4("2001:db8:2::1"), 65535);
        assert_eq!(d.len(), 20);
        assert_eq!(&d[16..], &[0xff, 0xff, 0, 0]);
    }

    #[test]
    fn ipv4_data_is_eight_bytes() {
        assert_eq!(
            addr_port(v4("198.51.100.1"), 20),
            [198, 51, 100, 1, 0, 20, 0, 0]
        );
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn new_elem_message_bytes() {
        let e = Element {
            set: "rdr4",
            key: key(v4("203.0.113.10"), v4("198.51.100.10"), 50447),
            data: Some(addr_port(v4("198.51.100.10"), 30028)),
        };
        let mut b = Batch::new(100);
        b.new_elem("ftp-proxy-7", &e, 86_400_000);
        assert_eq!(b.acked_seqs(), (101, 1));
        let bytes = b.finish();

        // Batch begin: 16-byte header + 4-byte nfgenmsg, res_id = NFNL_SUBSYS_NFTABLES (be).
        assert_eq!(u32_at(&bytes, 0), 20);
        assert_eq!(u16_at(&bytes, 4), 0x10);
        assert_eq!(u32_at(&bytes, 8), 100);
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);

        let m = &bytes[20..];
        let len = u32_at(m, 0) as usize;
        assert_eq!(u16_at(m, 4), (10 << 8) | 12);
        assert_eq!(u16_at(m, 6), 0x1 | 0x4 | 0x400);
        assert_eq!(u32_at(m, 8), 101);
        assert_eq!(
            &m[16..20],
            &[1, 0, 0, 0],
            "nfgenmsg: NFPROTO_INET, v0, res_id 0"
        );
        let body = &m[20..len];
        let expected: Vec<u8> = [
            // NFTA_SET_ELEM_LIST_TABLE "ftp-proxy-7\0": 4 + 12 = 16
            &[16u8, 0, 1, 0][..],
            b"ftp-proxy-7\0",
            // NFTA_SET_ELEM_LIST_SET "rdr4\0": 4 + 5 = 9, padded to 12
            &[9, 0, 2, 0],
            b"rdr4\0\0\0\0",
            // ELEMENTS (nested): 4 + LIST_ELEM(4 + KEY(4+16) + DATA(4+12) + TIMEOUT(12)) = 56
            &[56, 0, 3, 0x80],
            &[52, 0, 1, 0x80],
            &[20, 0, 1, 0x80],
            &[16, 0, 1, 0],
            &[203, 0, 113, 10, 198, 51, 100, 10, 0xc5, 0x0f, 0, 0],
            &[16, 0, 2, 0x80],
            &[12, 0, 1, 0],
            &[198, 51, 100, 10, 0x75, 0x4c, 0, 0],
            &[12, 0, 4, 0],
            &86_400_000u64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(body, &expected[..]);

        // Batch end follows.
        let end = &m[len..];
        assert_eq!(end.len(), 20);
        assert_eq!(u16_at(end, 4), 0x11);
        assert_eq!(u32_at(end, 8), 102);
    }

    #[test]
    fn destroy_elem_has_key_only_and_type_30() {
        let e = Element {
            set: "nat4",
            key: key(v4("203.0.113.10"), v4("198.51.100.10"), 30028),
            data: Some(addr_port(v4("198.51.100.1"), 50001)),
        };
        let mut b = Batch::new(1);
        b.destroy_elem("t", &e);
        let bytes = b.finish();
        let m = &bytes[20..];
        let len = u32_at(m, 0) as usize;
        assert_eq!(u16_at(m, 4), (10 << 8) | 30);
        assert_eq!(u16_at(m, 6), 0x1 | 0x4);
        // table "t\0" (8), set "nat4\0" (12), ELEMENTS(4 + LIST(4 + KEY(4 + 16))) = 28
        assert_eq!(len, 20 + 8 + 12 + 28);
        assert_eq!(len % 4, 0);
    }

    #[test]
    fn del_table_message() {
        let mut b = Batch::new(5);
        b.del_table("ftp-proxy-1");
        assert_eq!(b.acked_seqs(), (6, 1));
        let bytes = b.finish();
        let m = &bytes[20..];
        assert_eq!(u16_at(m, 4), (10 << 8) | 2);
        assert_eq!(u32_at(m, 0), 20 + 16);
        assert_eq!(&m[20..36], b"\x10\x00\x01\x00ftp-proxy-1\0");
    }

    #[test]
    fn parses_acks_and_errors() {
        let mut buf = Vec::new();
        for (seq, err) in [(7u32, 0i32), (8, -17)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&err.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 16]);
        }
        assert_eq!(
            parse_acks(&buf),
            vec![Ack { seq: 7, errno: 0 }, Ack { seq: 8, errno: 17 }]
        );
        assert_eq!(parse_acks(&buf[..30]), vec![]);
    }

    /// One netlink message: header, then `body` (already padded).
    fn nlmsg(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn table_msg(seq: u32, name: &str, flags: Option<u32>, owner: Option<u32>) -> Vec<u8> {
        let mut b = Batch::new(0);
        b.buf.clear();
        b.buf.extend_from_slice(&[1, 0, 0, 0]); // nfgenmsg
        b.attr_str(NFTA_TABLE_NAME, name);
        if let Some(f) = flags {
            b.attr_be32(NFTA_TABLE_FLAGS, f);
        }
        b.attr(3, &1u32.to_be_bytes()); // NFTA_TABLE_USE: skipped
        if let Some(o) = owner {
            b.attr_be32(NFTA_TABLE_OWNER, o);
        }
        nlmsg(nft_type(NFT_MSG_NEWTABLE), seq, &b.buf)
    }

    #[test]
    fn table_dump_request_is_a_get_dump() {
        let r = table_dump_request(9);
        assert_eq!(r.len(), 20);
        assert_eq!(u16_at(&r, 4), (10 << 8) | 1);
        assert_eq!(u16_at(&r, 6), 0x1 | 0x300);
        assert_eq!(u32_at(&r, 8), 9);
        assert_eq!(r[16], 1);
    }

    #[test]
    fn parses_a_table_dump() {
        let mut d = table_msg(9, "ftp-proxy-1-4026531836", Some(2), Some(3141));
        d.extend(table_msg(9, "other", Some(0), None));
        d.extend(table_msg(8, "late-answer", None, None));
        let part = parse_table_dump(&d, 9);
        assert_eq!(part.end, None);
        assert_eq!(
            part.tables,
            [
                TableInfo {
                    name: "ftp-proxy-1-4026531836".into(),
                    flags: 2,
                    owner: Some(3141)
                },
                TableInfo {
                    name: "other".into(),
                    flags: 0,
                    owner: None
                }
            ]
        );
        assert!(part.tables[0].owned() && !part.tables[1].owned());
        d.extend(nlmsg(NLMSG_DONE, 9, &0i32.to_ne_bytes()));
        assert_eq!(parse_table_dump(&d, 9).end, Some(0));
        let err = nlmsg(NLMSG_ERROR, 9, &(-1i32).to_ne_bytes());
        assert_eq!(parse_table_dump(&err, 9).end, Some(1));
        // Truncations never panic and keep what was complete.
        for cut in 0..d.len() {
            let p = parse_table_dump(&d[..cut], 9);
            assert!(p.tables.len() <= 2);
        }
    }

    #[test]
    fn table_dump_error_code_that_cannot_be_negated_does_not_panic() {
        // The same overflow as in parse_acks: `-i32::MIN`.
        let err = nlmsg(NLMSG_ERROR, 9, &i32::MIN.to_ne_bytes());
        assert_eq!(parse_table_dump(&err, 9).end, Some(i32::MAX));
    }

    #[test]
    fn error_code_that_cannot_be_negated_does_not_panic() {
        // Found by fuzz/ (nft_acks): `-i32::MIN` overflowed.
        let mut buf = Vec::new();
        buf.extend_from_slice(&20u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(
            parse_acks(&buf),
            vec![Ack {
                seq: 9,
                errno: i32::MAX
            }]
        );
    }

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> CtTuple {
        CtTuple {
            src: v4(src),
            dst: v4(dst),
            proto: 6,
            sport,
            dport,
        }
    }

    /// A conntrack entry message as the kernel sends it in a dump (the attributes the
    /// parser reads, plus ones it skips).
    fn ct_msg(seq: u32, e: &CtEntry) -> Vec<u8> {
        let mut b = Batch::new(0);
        b.buf.clear();
        b.buf
            .extend_from_slice(&[if e.orig.src.is_ipv4() { 2 } else { 10 }, 0, 0, 0]);
        for (ty, t) in [(CTA_TUPLE_ORIG, e.orig), (CTA_TUPLE_REPLY, e.reply)] {
            let n = b.nest_start(ty);
            let ip = b.nest_start(CTA_TUPLE_IP);
            match (t.src, t.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    b.attr(CTA_IP_V4_SRC, &s.octets());
                    b.attr(CTA_IP_V4_DST, &d.octets());
                }
                (s, d) => {
                    b.attr(CTA_IP_V6_SRC, &v6_octets(s));
                    b.attr(CTA_IP_V6_DST, &v6_octets(d));
                }
            }
            b.nest_end(ip);
            let p = b.nest_start(CTA_TUPLE_PROTO);
            b.attr(CTA_PROTO_NUM, &[t.proto]);
            b.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            b.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
            b.nest_end(p);
            b.nest_end(n);
        }
        b.attr_be32(3, 0x1b8); // CTA_STATUS: skipped
        b.attr_be32(CTA_MARK, 0xf7f7);
        if let Some(id) = e.id {
            b.attr_be32(CTA_ID, id);
        }
        if let Some(z) = e.zone {
            b.attr(CTA_ZONE, &z.to_be_bytes());
        }
        nlmsg(ct_type(IPCTNL_MSG_CT_NEW), seq, &b.buf)
    }

    #[test]
    fn ct_dump_request_filters_by_mark() {
        let r = ct_dump_request(9, 0xf7f7);
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        assert_eq!(u16_at(&r, 4), (1 << 8) | 1, "ctnetlink IPCTNL_MSG_CT_GET");
        assert_eq!(u16_at(&r, 6), 0x1 | 0x300);
        assert_eq!(u32_at(&r, 8), 9);
        assert_eq!(&r[16..20], &[0, 0, 0, 0], "every family");
        // CTA_MARK then CTA_MARK_MASK, big-endian.
        assert_eq!(&r[20..28], &[8, 0, 8, 0, 0, 0, 0xf7, 0xf7]);
        assert_eq!(&r[28..36], &[8, 0, 21, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.len(), 36);
    }

    #[test]
    fn ct_delete_request_names_tuple_zone_and_id() {
        let e = CtEntry {
            orig: tuple("203.0.113.10", "198.51.100.10", 37544, 50447),
            reply: tuple("198.51.100.10", "198.51.100.1", 30028, 63155),
            id: Some(0xdead_beef),
            zone: Some(7),
        };
        let m = ct_delete_request(5, &e);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(
            u16_at(&m, 4),
            (1 << 8) | 2,
            "ctnetlink IPCTNL_MSG_CT_DELETE"
        );
        assert_eq!(u16_at(&m, 6), 0x1 | 0x4);
        assert_eq!(m[16], 2, "AF_INET");
        let expected: Vec<u8> = [
            // CTA_TUPLE_ORIG (nested): 4 + IP(4 + 8 + 8) + PROTO(4 + 8 + 8 + 8) = 52
            &[52u8, 0, 1, 0x80][..],
            &[20, 0, 1, 0x80],
            &[8, 0, 1, 0, 203, 0, 113, 10],
            &[8, 0, 2, 0, 198, 51, 100, 10],
            &[28, 0, 2, 0x80],
            &[5, 0, 1, 0, 6, 0, 0, 0],
            &[6, 0, 2, 0, 0x92, 0xa8, 0, 0],
            &[6, 0, 3, 0, 0xc5, 0x0f, 0, 0],
            // CTA_ZONE, CTA_ID
            &[6, 0, 18, 0, 0, 7, 0, 0],
            &[8, 0, 12, 0, 0xde, 0xad, 0xbe, 0xef],
        ]
        .concat();
        assert_eq!(&m[20..], &expected[..]);
        let v6 = CtEntry {
            orig: CtTuple {
                src: v4("2001:db8:2::10"),
                dst: v4("2001:db8:2::1"),
                ..e.orig
            },
            id: None,
            zone: None,
            ..e
        };
        let m = ct_delete_request(6, &v6);
        assert_eq!(m[16], 10, "AF_INET6");
        assert_eq!(m.len(), 20 + 4 + (4 + 20 + 20) + 28);
    }

    #[test]
    fn parses_a_conntrack_dump() {
        let a = CtEntry {
            orig: tuple("203.0.113.10", "198.51.100.10", 37544, 50447),
            reply: tuple("198.51.100.10", "198.51.100.1", 30028, 63155),
            id: Some(42),
            zone: None,
        };
        let b6 = CtEntry {
            orig: CtTuple {
                src: v4("2001:db8:2::10"),
                dst: v4("2001:db8:2::1"),
                proto: 6,
                sport: 41000,
                dport: 50500,
            },
            reply: CtTuple {
                src: v4("2001:db8:1::10"),
                dst: v4("2001:db8:2::10"),
                proto: 6,
                sport: 40000,
                dport: 61000,
            },
            id: Some(43),
            zone: Some(3),
        };
        let mut d = ct_msg(9, &a);
        d.extend(ct_msg(9, &b6));
        d.extend(ct_msg(8, &a)); // another request's answer
        let part = parse_ct_dump(&d, 9);
        assert_eq!(part.entries, [a, b6]);
        assert_eq!(part.end, None);
        d.extend(nlmsg(NLMSG_DONE, 9, &0i32.to_ne_bytes()));
        assert_eq!(parse_ct_dump(&d, 9).end, Some(0));
        let err = nlmsg(NLMSG_ERROR, 9, &(-1i32).to_ne_bytes());
        assert_eq!(parse_ct_dump(&err, 9).end, Some(1));
        // Truncations never panic and keep what was complete.
        for cut in 0..d.len() {
            assert!(parse_ct_dump(&d[..cut], 9).entries.len() <= 2);
        }
        // Garbage inside a message: no panic, no half-read entry.
        let mut bad = ct_msg(9, &a);
        for i in 20..bad.len() {
            bad[i] ^= 0x5a;
            let p = parse_ct_dump(&bad, 9);
            assert!(p.entries.len() <= 1);
            bad[i] ^= 0x5a;
        }
    }

    #[test]
    fn addr_port_parts_reverse_addr_port() {
        let v6 = v4("2001:db8:2::10");
        assert_eq!(addr_port_parts(&addr_port(v6, 31000)), Some((v6, 31000)));
        assert_eq!(
            addr_port_parts(&addr_port(v4("198.51.100.10"), 30028)),
            Some((v4("198.51.100.10"), 30028))
        );
        assert_eq!(addr_port_parts(&[0; 7]), None);
    }
}
