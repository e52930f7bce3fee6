//! Linux nftables backend: per-session data-connection NAT as elements of named maps.
//!
//! # Design (docs/linux.md)
//!
//! At start the backend creates one table, `inet ftp-proxy-<pid>-<pidns>`, with static
//! chains and empty maps, in one netlink batch over its own socket (`nft/ruleset.rs` shows
//! the table as `nft list` prints it). A session's rules never become nftables
//! rules: each [`Filter::commit`] turns the two pf-style rules of a negotiation into
//! three set elements and sends them in **one netlink batch** (one kernel
//! transaction, all or nothing) over a persistent `NETLINK_NETFILTER` socket, together
//! with the `NFT_MSG_DESTROYSETELEM` messages that remove the anchor's previous
//! elements. That is the anchor's replace semantics of pf.
//!
//! | rule from the core | elements |
//! | --- | --- |
//! | `pass in from A to B port P rdr-to C port Q` | `armN { A . B . P }`, `rdrN { A . B . P : C . Q }` |
//! | `pass out from A to C port Q nat-to D port L:H` | `natN { A . C . Q . P : D . n }` |
//!
//! The nat key ends with the proxy port `P` of the rdr rule that redirects to the nat
//! rule's destination, read in the packet path as `ct original proto-dst`: every
//! negotiation has its own nat element, even two sessions from one client address
//! that the server tells the same data port.
//!
//! `n` is the single port when `L == H` (20 with `-r` and PORT), otherwise a port the
//! backend draws uniformly from `L..=H` (50001-65535). A port range as map data would
//! be closer to pf, but nft 1.0.6 with kernel 6.18 fails IPv6 `addr . port-range` data
//! with ENODATA (docs/linux.md), and one code path for both families is worth
//! more than letting the kernel pick.
//!
//! The first SYN of the data connection (`flags S/SA`) that finds its key in `armN`
//! deletes it from the packet path, then is DNATed by `rdrN`; so, like pf's
//! `keep state (max 1)`, one negotiation lets exactly one connection through, and a
//! second connection to the same proxy port is not redirected. Conntrack keeps the
//! NAT binding, so removing elements mid-transfer does not disturb a transfer.
//!
//! # Ending a session's data connections
//!
//! [`Filter::kill_connections`] deletes the conntrack entries of the connections an
//! anchor's rdr elements redirected, over the same socket (ctnetlink): one dump of the
//! entries with the proxy's ct mark, then one delete per entry whose original tuple is
//! `peer → target:proxy port` and whose reply comes from the rdr target. The backend
//! remembers each anchor's redirects for that ([`crate::remembered`]), also for a
//! while after its last commit. Without its entry, the connection's next packet is
//! not translated and the connection ends (docs/linux.md, "Ending a session's data
//! connections").
//!
//! # Table lifetime: one table per process, owned by its socket
//!
//! The table carries `NFT_TABLE_F_OWNER` (Linux 5.12): it belongs to the netlink
//! socket that created it, only that socket may change it, and the kernel deletes it,
//! elements included, the moment the socket closes, whatever ended the process
//! (SIGKILL, a panic, the OOM killer). A crashed daemon leaves no armed elements
//! behind that could still DNAT a client into a server. Consequences:
//!
//! * the socket that creates the table is the one [`Filter::commit`] uses for the
//!   life of the backend, and it must be opened by the process that runs the proxy
//!   (after any `daemon(3)`/fork: a parent that exits would take the table with it);
//!   it is close-on-exec, so no child inherits it;
//! * other processes (`nft list`) can read the table but not change or delete it.
//!
//! The name carries the pid *and* the PID namespace's inode ([`table_name`](crate::nft::table_name)): daemons
//! in separate PID namespaces that share a network namespace are often all pid 1.
//!
//! At start the backend lists the `inet` tables and deletes only leftovers it can
//! judge ([`stale_tables`](crate::nft::stale_tables)): tables without the owner flag (from a kernel without it,
//! where the backend falls back to an unowned table) named for a pid of *its own* PID
//! namespace that no longer exists (`kill(pid, 0)` gives ESRCH). Owned tables are
//! never touched, and names of other PID namespaces are left alone.
//!
//! # Filtering
//!
//! nftables has no `pass` that overrides another base chain's `drop`, so the admin's
//! forward chain must accept the data connections: `ct status dnat accept` (every proxy
//! data connection is DNATed) or, more specific, `ct mark <mark> accept`, where
//! `<mark>` is [`NftBackend::mark`](crate::nft::NftBackend::mark) (0xf7f7 by default, derived from `-T tag` when
//! given; see [`tag_mark`](crate::nft::tag_mark)).
//!
//! # Privileges
//!
//! Every netlink request is checked for CAP_NET_ADMIN of the *sending process*, not
//! only the socket's opener: after a switch to an unprivileged user without keeping
//! CAP_NET_ADMIN, commits fail with `PermissionDenied` (docs/linux.md, "Privileges").

mod msg;
mod ruleset;
mod socket;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ftp_proxy_core::{Config, Direction, Family, RuleLog, Translate};

use crate::remembered::Remembered;
use crate::{Anchor, Filter, FilterError, Rule};
use msg::{addr_port, addr_port_parts, key, key_parts, nat_key, CtEntry, Element};
pub use msg::{parse_table_dump, DumpPart, TableInfo};
use socket::{BatchError, NlSocket};

/// The netlink reply parser as `(seq, errno)` pairs, for the fuzz target in fuzz/
/// (docs/fuzzing.md). Not an API: it exists only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_parse_acks(datagram: &[u8]) -> Vec<(u32, i32)> {
    msg::parse_acks(datagram)
        .into_iter()
        .map(|a| (a.seq, a.errno))
        .collect()
}

/// Feeds one datagram to the table-listing parser and returns the table names and
/// the end code, for the fuzz target `nft_acks` (docs/fuzzing.md). Not an API: it
/// exists only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_parse_table_dump(datagram: &[u8], seq: u32) -> (Vec<String>, Option<i32>) {
    let part = msg::parse_table_dump(datagram, seq);
    (part.tables.into_iter().map(|t| t.name).collect(), part.end)
}

/// Conntrack mark set on every proxy data connection when `-T` is not given; the
/// admin may accept `ct mark 0x0000f7f7` instead of `ct status dnat`.
pub const DEFAULT_MARK: u32 = 0x0000_f7f7;

/// Prefix of the kernel log lines with `-v` (`log prefix "ftp-proxy: "`).
pub const LOG_PREFIX: &str = "ftp-proxy: ";

/// Table names are this prefix plus the daemon's pid.
pub const TABLE_PREFIX: &str = "ftp-proxy-";

/// Element capacity of each map and set (nft would give dynamic sets 65535 anyway;
/// stated so that the limit is visible in `nft list table`).
pub const SET_SIZE: u32 = 65535;

/// Settings of the nftables backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftOptions {
    /// Table name in family `inet`, normally [`table_name`]`(pid, pidns)`.
    pub table: String,
    /// Conntrack mark put on every data connection the proxy's elements NAT.
    pub mark: u32,
    /// `-v`: log the first packet of each data connection; `-vv`: every packet.
    pub log: RuleLog,
    /// Lifetime of each element, `None` for no timeout. Elements are removed
    /// explicitly at the next negotiation and at session end; the timeout only
    /// cleans up after a daemon that died without removing them.
    pub element_timeout: Option<Duration>,
}

impl NftOptions {
    /// The options for a daemon run with `config`, or the reason an option cannot be
    /// honoured with nftables.
    ///
    /// * `-q queue` is refused: nftables has no queue (ALTQ) concept a rule could name.
    /// * `-T tag` becomes the conntrack mark [`tag_mark`]`(tag)`.
    /// * `-t` becomes the element timeout: a negotiation cannot be needed longer than
    ///   the control connection may stay idle, and `-t 0` means no timeout.
    pub fn from_config(config: &Config) -> Result<NftOptions, FilterError> {
        if let Some(q) = &config.rules.queue {
            return Err(FilterError::Unsupported(format!(
                "-q {q}: -q has no nftables equivalent (there are no queues to assign); \
                 use tc or a mark-based rule of your own"
            )));
        }
        if config.rules.proxy_rtable != 0 {
            return Err(FilterError::Unsupported(
                "routing tables (rtable) with nftables".into(),
            ));
        }
        Ok(NftOptions {
            table: table_name(config.pid, own_pid_namespace()),
            mark: config.rules.tag.as_deref().map_or(DEFAULT_MARK, tag_mark),
            log: config.rules.log,
            element_timeout: config.idle_timeout(),
        })
    }
}

/// The conntrack mark for `-T tag`: the number itself when the tag is a non-zero
/// number (`0x1234` or `4660`), otherwise the 32-bit FNV-1a hash of the tag's bytes
/// (with 0, which means "no mark", replaced by 1). The daemon logs the value at start,
/// and `nft list table inet ftp-proxy-<pid>-<pidns>` shows it.
pub fn tag_mark(tag: &str) -> u32 {
    let parsed = match tag.strip_prefix("0x").or_else(|| tag.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => tag.parse::<u32>().ok(),
    };
    if let Some(n) = parsed.filter(|&n| n != 0) {
        return n;
    }
    let mut h: u32 = 0x811c_9dc5;
    for &b in tag.as_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

/// The nftables backend. See the module documentation.
pub struct NftBackend {
    opts: NftOptions,
    sock: NlSocket,
    /// Whether the table carries `NFT_TABLE_F_OWNER`.
    owner: bool,
    /// What each anchor holds now, to destroy it at the next commit.
    anchors: HashMap<Anchor, Vec<Element>>,
    /// What [`Filter::kill_connections`] looks for in conntrack.
    redirects: Remembered<Redirect>,
    /// xorshift64* state for NAT source ports.
    rng: u64,
}

/// One negotiation's redirect, from its rdr element: connections from `from` to
/// `to:proxy_port` DNATed to `target:target_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Redirect {
    from: IpAddr,
    to: IpAddr,
    proxy_port: u16,
    target: IpAddr,
    target_port: u16,
}

impl Redirect {
    /// The redirect of an rdr element; `None` for the other sets.
    fn of(e: &Element) -> Option<Redirect> {
        if !e.set.starts_with("rdr") {
            return None;
        }
        let (from, to, proxy_port) = key_parts(&e.key)?;
        let (target, target_port) = addr_port_parts(e.data.as_deref()?)?;
        Some(Redirect {
            from,
            to,
            proxy_port,
            target,
            target_port,
        })
    }

    /// Whether conntrack entry `e` is a connection this redirect DNATed: its first
    /// packet went from `from` to `to:proxy_port` (TCP), and the answers come from
    /// the target.
    fn redirected(&self, e: &CtEntry) -> bool {
        let (o, r) = (&e.orig, &e.reply);
        o.proto == libc::IPPROTO_TCP as u8
            && o.src == self.from
            && o.dst == self.to
            && o.dport == self.proxy_port
            && r.src == self.target
            && r.sport == self.target_port
    }
}

impl std::fmt::Debug for NftBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftBackend")
            .field("opts", &self.opts)
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl NftBackend {
    /// The `(from, to, port)` of the anchor's arm elements that are still in their
    /// set and not in `new`: negotiations whose data connection never arrived (its
    /// first SYN deletes the element). One query per element, before the batch that
    /// replaces them; a failed query is logged at debug and reports nothing.
    fn unused_arms(&mut self, anchor: &Anchor, new: &[Element]) -> Vec<(IpAddr, IpAddr, u16)> {
        let arms: Vec<Element> = self
            .anchors
            .get(anchor)
            .into_iter()
            .flatten()
            .filter(|e| e.set.starts_with("arm") && !new.contains(e))
            .cloned()
            .collect();
        let table = self.opts.table.clone();
        let mut unused = Vec::new();
        for e in &arms {
            match self.sock.has_elem(&table, e) {
                Ok(true) => unused.extend(key_parts(&e.key)),
                Ok(false) => {}
                Err(err) => {
                    log::debug!("cannot tell whether an {} element was used: {err:?}", e.set)
                }
            }
        }
        unused
    }
    /// Creates the table for a daemon run with `config` ([`NftOptions::from_config`])
    /// and opens the netlink socket that owns it. Call it with CAP_NET_ADMIN, in the
    /// process that will commit (the table dies with this backend's socket), before
    /// dropping privileges. Fails with `Unsupported` for options nftables cannot
    /// express (`-q`), `PermissionDenied` without CAP_NET_ADMIN, and `Other` when the
    /// kernel refuses the table (e.g. EEXIST: a table of that name owned by another
    /// socket).
    pub fn open(config: &Config) -> Result<NftBackend, FilterError> {
        NftBackend::with_options(NftOptions::from_config(config)?)
    }

    /// As [`NftBackend::open`], with explicit options (tests and benchmarks).
    pub fn with_options(opts: NftOptions) -> Result<NftBackend, FilterError> {
        let mut sock = NlSocket::open().map_err(|e| io_error("netlink socket", &e))?;
        let tables = sock
            .tables()
            .map_err(|e| batch_error(e, 0, &[], "(listing tables)"))?;
        let stale = stale_tables(&tables, &opts.table, own_pid_namespace(), process_alive);
        if !stale.is_empty() {
            let mut batch = sock.batch();
            for name in &stale {
                log::info!("removing table inet {name} of a process that no longer runs");
                batch.del_table(name);
            }
            let first = batch.acked_seqs().0;
            let what: Vec<String> = stale.iter().map(|n| format!("delete table {n}")).collect();
            match sock.execute(batch) {
                Ok(()) => {}
                // Another daemon swept it first.
                Err(BatchError::Kernel { errno, .. }) if errno == libc::ENOENT => {}
                Err(e) => return Err(batch_error(e, first, &what, &opts.table)),
            }
        }
        let owner = match create_table(&mut sock, &opts, true) {
            Ok(()) => true,
            // Before Linux 5.12 the kernel refuses unknown table flags.
            Err(BatchError::Kernel { errno, .. }) if errno == libc::EOPNOTSUPP => {
                log::warn!(
                    "this kernel cannot tie table inet {} to the daemon (no owner flag, \
                     Linux < 5.12): after a crash it stays until the next start sweeps it",
                    opts.table
                );
                create_table(&mut sock, &opts, false).map_err(|e| create_error(e, &opts.table))?;
                false
            }
            Err(e) => return Err(create_error(e, &opts.table)),
        };
        Ok(NftBackend {
            opts,
            sock,
            owner,
            anchors: HashMap::new(),
            redirects: Remembered::default(),
            rng: seed(),
        })
    }

    /// Whether the kernel deletes the table when this backend's socket closes
    /// (`NFT_TABLE_F_OWNER`, Linux 5.12).
    pub fn owned(&self) -> bool {
        self.owner
    }

    /// The table's name (`ftp-proxy-<pid>-<pidns>`), in family `inet`.
    pub fn table(&self) -> &str {
        &self.opts.table
    }

    /// The conntrack mark of the proxy's data connections, for the admin's
    /// `ct mark ... accept`.
    pub fn mark(&self) -> u32 {
        self.opts.mark
    }

    /// The options in force.
    pub fn options(&self) -> &NftOptions {
        &self.opts
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn timeout_ms(&self) -> u64 {
        self.opts
            .element_timeout
            .map_or(0, |d| d.as_millis().max(1) as u64)
    }
}

impl Filter for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        let mut new = Vec::with_capacity(rules.len() * 2);
        let mut random = || self.next_random();
        elements(rules, &mut random, &mut new)?;
        let old = self.anchors.get(anchor).map(Vec::as_slice).unwrap_or(&[]);
        if old.is_empty() && new.is_empty() {
            return Ok(()); // a session that never negotiated: nothing to do
        }
        let unused = self.unused_arms(anchor, &new);
        let old = self.anchors.get(anchor).map(Vec::as_slice).unwrap_or(&[]);
        let timeout = self.timeout_ms();
        let table = self.opts.table.clone();
        let mut what = Vec::with_capacity(old.len() + new.len());
        let mut batch = self.sock.batch();
        for e in old {
            batch.destroy_elem(&table, e);
            what.push(format!("remove {} element", e.set));
        }
        for e in &new {
            batch.new_elem(&table, e, timeout);
            what.push(format!("add {} element", e.set));
        }
        let first = batch.acked_seqs().0;
        match self.sock.execute(batch) {
            Ok(()) => {
                let why = if new.is_empty() {
                    "the session ended"
                } else {
                    "a new negotiation replaced the rules"
                };
                for (from, to, port) in unused {
                    log::warn!(
                        "#{} data connection failed: {from} never connected to {} before {why}",
                        anchor.session,
                        std::net::SocketAddr::new(to, port)
                    );
                }
                if new.is_empty() {
                    self.anchors.remove(anchor);
                    self.redirects.retire(anchor);
                } else {
                    self.redirects
                        .add(anchor, new.iter().filter_map(Redirect::of));
                    self.anchors.insert(*anchor, new);
                }
                Ok(())
            }
            Err(e @ BatchError::Kernel { .. }) => {
                // The kernel aborted the transaction: the anchor holds what it held.
                Err(batch_error(e, first, &what, &table))
            }
            Err(e @ BatchError::Io(_)) => {
                // No answer: the batch may or may not have been applied. Remember both
                // the old and the new elements, so the next commit's (idempotent)
                // destroys cover whichever is in force, and nothing leaks.
                self.redirects
                    .add(anchor, new.iter().filter_map(Redirect::of));
                let entry = self.anchors.entry(*anchor).or_default();
                for e in new {
                    if !entry.contains(&e) {
                        entry.push(e);
                    }
                }
                Err(batch_error(e, first, &what, &table))
            }
        }
    }

    fn remove_all(&mut self) -> Result<(), FilterError> {
        let table = self.opts.table.clone();
        let mut batch = self.sock.batch();
        batch.del_table(&table);
        let first = batch.acked_seqs().0;
        let res = match self.sock.execute(batch) {
            Ok(()) => Ok(()),
            Err(BatchError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(()),
            Err(e) => Err(batch_error(e, first, &["delete table".to_string()], &table)),
        };
        if res.is_ok() {
            self.anchors.clear();
            self.redirects.clear();
        }
        res
    }

    /// Deletes the conntrack entries of the connections `anchor`'s negotiations
    /// redirected (its last [`MAX_PER_ANCHOR`](crate::remembered::MAX_PER_ANCHOR)
    /// negotiations, while the session lives and for the
    /// [`MAX_ENDED`](crate::remembered::MAX_ENDED) sessions that ended last): one dump of the entries
    /// with the proxy's mark, then one `IPCTNL_MSG_CT_DELETE` per match, by original
    /// tuple and id. A connection whose entry is gone is no longer translated: its
    /// next packet goes to the untranslated address (and is refused or reset there),
    /// or the admin's forward policy drops it. An anchor with no redirects costs no
    /// system call. Errors: `PermissionDenied` without CAP_NET_ADMIN (the daemon keeps
    /// it for this backend); on a failed delete the others are still tried and the
    /// first error is returned.
    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        let list = self.redirects.of(anchor).to_vec();
        if list.is_empty() {
            return Ok(()); // nothing negotiated, or forgotten (see MAX_ENDED)
        }
        let entries = self
            .sock
            .conntrack(self.opts.mark)
            .map_err(|e| conntrack_error(e, "listing the entries"))?;
        let mut killed = 0usize;
        let mut first_error = None;
        for e in entries
            .iter()
            .filter(|e| list.iter().any(|r| r.redirected(e)))
        {
            match self.sock.delete_conntrack(e) {
                Ok(()) => killed += 1,
                Err(err) => {
                    first_error.get_or_insert(conntrack_error(err, "deleting an entry"));
                }
            }
        }
        if killed > 0 {
            log::info!(
                "#{} ended {killed} data connection(s) of the session (conntrack entries deleted)",
                anchor.session
            );
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let current: Vec<Redirect> = self
            .anchors
            .get(anchor)
            .into_iter()
            .flatten()
            .filter_map(Redirect::of)
            .collect();
        self.redirects.killed(anchor, &current);
        Ok(())
    }
}

/// The elements for the rules of one commit: `armN` and `rdrN` for each rdr-to rule,
/// and one `natN` element for each nat-to rule and each rdr-to rule of the commit that
/// redirects to the nat rule's destination (in practice one: the core commits a
/// negotiation's rdr-to and nat-to rules together). The nat key ends with that
/// redirect's proxy port, the connection's original destination port, so two
/// negotiations never share a nat element. IPv4-mapped IPv6 addresses (from a
/// dual-stack listener) are unmapped first, or the elements would land in the IPv6
/// maps and never match an IPv4 packet. `random` draws NAT ports.
fn elements(
    rules: &[Rule],
    random: &mut dyn FnMut() -> u64,
    out: &mut Vec<Element>,
) -> Result<(), FilterError> {
    // (from, redirect address, redirect port, proxy port) of every rdr-to rule.
    let mut redirects = Vec::new();
    for r in rules {
        let (from, _, _) = checked(r)?;
        if let (Direction::In, Translate::RdrTo { addr, port }) = (r.direction, r.translate) {
            redirects.push((from, addr.to_canonical(), port, r.port));
        }
    }
    for r in rules {
        let (from, to, fam) = checked(r)?;
        let (arm, rdr, nat) = match fam {
            Family::Inet => ("arm4", "rdr4", "nat4"),
            Family::Inet6 => ("arm6", "rdr6", "nat6"),
        };
        match (r.direction, r.translate) {
            (Direction::In, Translate::RdrTo { addr, port }) => {
                let addr = addr.to_canonical();
                if Family::of(addr) != fam || port == 0 || addr.is_unspecified() {
                    return Err(einval(libc::EINVAL, "bad rdr-to target", r));
                }
                let k = key(from, to, r.port);
                out.push(Element {
                    set: arm,
                    key: k.clone(),
                    data: None,
                });
                out.push(Element {
                    set: rdr,
                    key: k,
                    data: Some(addr_port(addr, port)),
                });
            }
            (Direction::Out, Translate::NatTo { addr, ports }) => {
                let addr = addr.to_canonical();
                if Family::of(addr) != fam || ports.low == 0 || ports.high < ports.low {
                    return Err(einval(libc::EINVAL, "bad nat-to target", r));
                }
                let proxy_ports: Vec<u16> = redirects
                    .iter()
                    .filter(|&&(f, a, p, _)| f == from && a == to && p == r.port)
                    .map(|&(_, _, _, pp)| pp)
                    .collect();
                if proxy_ports.is_empty() {
                    return Err(FilterError::Unsupported(format!(
                        "a nat-to rule without the rdr-to rule that redirects to it \
                         (the nftables backend keys NAT by the proxy port): {r}"
                    )));
                }
                let port = if ports.low == ports.high {
                    ports.low
                } else {
                    let span = u64::from(ports.high - ports.low) + 1;
                    ports.low + (random() % span) as u16
                };
                for pp in proxy_ports {
                    out.push(Element {
                        set: nat,
                        key: nat_key(from, to, r.port, pp),
                        data: Some(addr_port(addr, port)),
                    });
                }
            }
            _ => {
                return Err(FilterError::Unsupported(format!(
                    "rule shape the nftables backend does not know: {r}"
                )))
            }
        }
    }
    Ok(())
}

/// The checks every rule must pass: `(from, to, family)` with mapped addresses
/// unmapped, or why nftables cannot hold the rule.
fn checked(r: &Rule) -> Result<(IpAddr, IpAddr, Family), FilterError> {
    let (from, to) = (r.from.to_canonical(), r.to.to_canonical());
    let fam = Family::of(from);
    if Family::of(to) != fam {
        return Err(einval(
            libc::EPROTONOSUPPORT,
            "source and destination families differ",
            r,
        ));
    }
    if r.on_rdomain.is_some_and(|d| d != 0) || r.rtable.is_some_and(|t| t != 0) {
        return Err(FilterError::Unsupported(format!(
            "routing domains/tables with nftables: {r}"
        )));
    }
    if r.queue.is_some() {
        return Err(FilterError::Unsupported(
            "-q has no nftables equivalent".into(),
        ));
    }
    if r.port == 0 || from.is_unspecified() || to.is_unspecified() {
        return Err(einval(libc::EINVAL, "zero address or port", r));
    }
    Ok((from, to, fam))
}

/// Maps a failed batch to the core's error: EBUSY is `Busy` (the core retries once),
/// EPERM/EACCES `PermissionDenied`, anything else `Other` with the errno and which
/// message failed.
fn batch_error(e: BatchError, first_seq: u32, what: &[String], table: &str) -> FilterError {
    match e {
        BatchError::Kernel { errno, .. } if errno == libc::EBUSY => FilterError::Busy,
        BatchError::Kernel { errno, .. } if errno == libc::EPERM || errno == libc::EACCES => {
            FilterError::PermissionDenied
        }
        BatchError::Kernel { errno, seq } => {
            let op = what
                .get(seq.wrapping_sub(first_seq) as usize)
                .map_or("batch", String::as_str);
            FilterError::Other {
                errno,
                text: format!(
                    "{} (nftables: {op} in table inet {table})",
                    std::io::Error::from_raw_os_error(errno)
                ),
            }
        }
        BatchError::Io(e) => io_error("netlink", &e),
    }
}

/// Maps a failed conntrack request as [`batch_error`] does, saying what was asked.
fn conntrack_error(e: BatchError, what: &str) -> FilterError {
    match e {
        BatchError::Kernel { errno, .. } if errno == libc::EPERM || errno == libc::EACCES => {
            FilterError::PermissionDenied
        }
        BatchError::Kernel { errno, .. } => FilterError::Other {
            errno,
            text: format!(
                "{} (conntrack: {what})",
                std::io::Error::from_raw_os_error(errno)
            ),
        },
        BatchError::Io(e) => io_error(&format!("conntrack: {what}"), &e),
    }
}

fn io_error(what: &str, e: &std::io::Error) -> FilterError {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => FilterError::PermissionDenied,
        Some(libc::EBUSY) => FilterError::Busy,
        errno => FilterError::Other {
            errno: errno.unwrap_or(0),
            text: format!("{what}: {e}"),
        },
    }
}

fn einval(errno: i32, why: &str, r: &Rule) -> FilterError {
    FilterError::Other {
        errno,
        text: format!("{} ({why}: {r})", std::io::Error::from_raw_os_error(errno)),
    }
}

/// Seeds the NAT-port generator from the kernel's random pool.
fn seed() -> u64 {
    let s = crate::sys::random_u64().unwrap_or(0);
    // xorshift must not start at zero; mix in the pid and time for the fallback.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (s ^ t ^ u64::from(std::process::id())) | 1
}

/// The error for a failed table creation, saying what was being created.
fn create_error(e: BatchError, table: &str) -> FilterError {
    match e {
        BatchError::Kernel { errno, .. }
            if errno != libc::EPERM && errno != libc::EACCES && errno != libc::EBUSY =>
        {
            FilterError::Other {
                errno,
                text: format!(
                    "creating table inet {table}: {}",
                    std::io::Error::from_raw_os_error(errno)
                ),
            }
        }
        e => batch_error(e, 0, &[], table),
    }
}

/// Creates the table, its maps and chains in one transaction over `sock`, which then
/// owns it when `owner` is set.
fn create_table(sock: &mut NlSocket, opts: &NftOptions, owner: bool) -> Result<(), BatchError> {
    let mut batch = sock.batch();
    ruleset::create(&mut batch, opts, owner);
    sock.execute(batch)
}

/// The table name for process `pid` in the PID namespace with inode `pidns`:
/// `ftp-proxy-<pid>-<pidns>`, or `ftp-proxy-<pid>` when the namespace is unknown.
///
/// The pid alone does not name an instance: daemons in different PID namespaces that
/// share a network namespace are often all pid 1. The namespace's inode number (what
/// `readlink /proc/self/ns/pid` shows) tells them apart, and tells a sweeping daemon
/// whether a pid in a name is one it can check.
pub fn table_name(pid: u32, pidns: Option<u64>) -> String {
    match pidns {
        Some(ns) => format!("{TABLE_PREFIX}{pid}-{ns}"),
        None => format!("{TABLE_PREFIX}{pid}"),
    }
}

/// The inode number of this process's PID namespace, from `/proc/self/ns/pid`
/// (`pid:[4026531836]`); `None` without `/proc`.
pub fn own_pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether process `pid` of this PID namespace exists (`kill(pid, 0)`: only ESRCH
/// means gone; EPERM is a live process of another user).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 performs only the existence and permission checks.
    let r = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
    r != Err(nix::errno::Errno::ESRCH)
}

/// The tables of `tables` to delete before creating `own`: leftovers of daemons of
/// this PID namespace (`pidns`) that no longer run, as `alive` says.
///
/// * Tables with the owner flag are never touched: they live exactly as long as
///   their daemon's socket, and only that socket may change them anyway.
/// * A table named `own` without the owner flag cannot be ours (we have not
///   created it yet): a leftover of an earlier process with our pid.
/// * Names with another PID namespace, or none (`ftp-proxy-<pid>`, as earlier
///   versions named them), are left alone: their pid means nothing here. Their
///   elements expire with `-t`; an admin removes such tables by hand.
pub fn stale_tables(
    tables: &[TableInfo],
    own: &str,
    pidns: Option<u64>,
    alive: impl Fn(u32) -> bool,
) -> Vec<String> {
    let Some(ns) = pidns else {
        return Vec::new();
    };
    tables
        .iter()
        .filter(|t| !t.owned())
        .filter(|t| {
            if t.name == own {
                return true;
            }
            let Some((pid, tns)) = t
                .name
                .strip_prefix(TABLE_PREFIX)
                .and_then(|rest| rest.split_once('-'))
            else {
                return false;
            };
            match (pid.parse::<u32>(), tns.parse::<u64>()) {
                (Ok(pid), Ok(tns)) => tns == ns && !alive(pid),
                _ => false,
            }
        })
        .map(|t| t.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftp_proxy_core::RuleOptions;
    use std::net::IpAddr;

    #[test]
    fn tag_marks_are_numbers_or_fnv1a() {
        assert_eq!(tag_mark("0x1234"), 0x1234);
        assert_eq!(tag_mark("4660"), 4660);
        // FNV-1a("ftp") computed by hand from the published constants.
        let mut h: u32 = 0x811c9dc5;
        for b in *b"ftp" {
            h = (h ^ u32::from(b)).wrapping_mul(16777619);
        }
        assert_eq!(tag_mark("ftp"), h);
        assert_ne!(tag_mark("0"), 0);
        assert_ne!(tag_mark("FTPDATA"), tag_mark("ftpdata"));
        // The example in docs/linux.md.
        assert_eq!(tag_mark("ftpdata"), 0x4586_de05);
    }

    #[test]
    fn queue_is_refused_and_tag_sets_mark() {
        let mut c = Config {
            pid: 42,
            ..Config::default()
        };
        c.rules = RuleOptions {
            queue: Some("q".into()),
            ..RuleOptions::default()
        };
        match NftOptions::from_config(&c) {
            Err(FilterError::Unsupported(m)) => {
                assert!(m.contains("-q has no nftables equivalent"))
            }
            other => panic!("{other:?}"),
        }
        c.rules = RuleOptions {
            tag: Some("0xbeef".into()),
            ..RuleOptions::default()
        };
        let o = NftOptions::from_config(&c).unwrap();
        assert_eq!(o.table, table_name(42, own_pid_namespace()));
        assert_eq!(o.mark, 0xbeef);
        assert_eq!(o.element_timeout, Some(Duration::from_secs(86400)));
        c.idle_timeout_secs = 0;
        assert_eq!(NftOptions::from_config(&c).unwrap().element_timeout, None);
    }

    fn info(name: &str, flags: u32) -> TableInfo {
        TableInfo {
            name: name.into(),
            flags,
            owner: None,
        }
    }

    #[test]
    fn sweep_only_unowned_dead_tables_of_this_pid_namespace() {
        let ns = 4026531836;
        let tables = [
            info("ftp-proxy-7-4026531836", 0), // dead, ours: swept
            info("ftp-proxy-8-4026531836", 0), // alive: kept
            info("ftp-proxy-9-4026531836", 2), // owner flag: never
            info("ftp-proxy-7-4026532000", 0), // other PID namespace
            info("ftp-proxy-7", 0),            // old bare-pid name
            info("ftp-proxy-1-4026531836", 0), // our own name, unowned leftover
            info("ftp-proxy-x-4026531836", 0), // not a pid
            info("other-7-4026531836", 0),     // not ours at all
        ];
        let alive = |pid: u32| pid == 8 || pid == 1;
        assert_eq!(
            stale_tables(&tables, "ftp-proxy-1-4026531836", Some(ns), alive),
            ["ftp-proxy-7-4026531836", "ftp-proxy-1-4026531836"]
        );
        assert!(stale_tables(&tables, "ftp-proxy-1", None, alive).is_empty());
    }

    #[test]
    fn table_names_carry_the_pid_namespace() {
        assert_eq!(
            table_name(1809, Some(4026532201)),
            "ftp-proxy-1809-4026532201"
        );
        assert_eq!(table_name(1809, None), "ftp-proxy-1809");
        let ns = own_pid_namespace().expect("/proc/self/ns/pid on Linux");
        assert!(ns > 0);
        assert!(process_alive(std::process::id()));
    }

    fn addrs(client: &str, server: &str, proxy: &str) -> ftp_proxy_core::SessionAddrs {
        ftp_proxy_core::SessionAddrs {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            orig_server: server.parse().unwrap(),
            proxy: proxy.parse().unwrap(),
            client_rdomain: 0,
        }
    }

    fn all_elements(rules: &[Rule], random: u64) -> Result<Vec<Element>, FilterError> {
        let mut out = Vec::new();
        let mut rng = || random;
        elements(rules, &mut rng, &mut out)?;
        Ok(out)
    }

    #[test]
    fn passive_rules_become_arm_rdr_nat() {
        use ftp_proxy_core::{data_rules, Mode};
        let a = addrs("203.0.113.10", "198.51.100.10", "198.51.100.1");
        let rules = data_rules(Mode::Passive, &a, 30028, 50447, &RuleOptions::default());
        let e = all_elements(&rules, 7).unwrap();
        let sets: Vec<_> = e.iter().map(|e| e.set).collect();
        assert_eq!(sets, ["arm4", "rdr4", "nat4"]);
        let client: IpAddr = "203.0.113.10".parse().unwrap();
        let server: IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(e[0].key, key(client, server, 50447));
        assert_eq!(e[0].data, None);
        assert_eq!(e[1].key, e[0].key);
        assert_eq!(e[1].data, Some(addr_port(server, 30028)));
        assert_eq!(e[2].key, nat_key(client, server, 30028, 50447));
        // 50001 + 7 % 15535: the drawn port lies in pfctl's NAT range.
        assert_eq!(
            e[2].data,
            Some(addr_port("198.51.100.1".parse().unwrap(), 50008))
        );
        let last = all_elements(&rules, 15534).unwrap();
        assert_eq!(
            last[2].data,
            Some(addr_port("198.51.100.1".parse().unwrap(), 65535))
        );
    }

    #[test]
    fn rfc_port_gets_port_20_and_eprt_does_not() {
        use ftp_proxy_core::{data_rules, Mode};
        let a = addrs("2001:db8:1::10", "2001:db8:2::10", "2001:db8:2::1");
        let rfc = RuleOptions {
            rfc_mode: true,
            ..RuleOptions::default()
        };
        let server: IpAddr = "2001:db8:2::10".parse().unwrap();
        let e = all_elements(&data_rules(Mode::ActivePort, &a, 40000, 50500, &rfc), 0).unwrap();
        assert_eq!(
            e.iter().map(|e| e.set).collect::<Vec<_>>(),
            ["arm6", "rdr6", "nat6"]
        );
        assert_eq!(e[0].key.len(), 36);
        assert_eq!(e[2].data, Some(addr_port(server, 20)));
        let e = all_elements(&data_rules(Mode::ActiveEprt, &a, 40000, 50500, &rfc), 0).unwrap();
        assert_eq!(e[2].data, Some(addr_port(server, 50001)));
    }

    #[test]
    fn mapped_addresses_are_unmapped_and_bad_rules_refused() {
        use ftp_proxy_core::{data_rules, Mode};
        let a = addrs(
            "::ffff:203.0.113.10",
            "::ffff:198.51.100.10",
            "198.51.100.1",
        );
        let e = all_elements(
            &data_rules(Mode::Passive, &a, 30028, 50447, &RuleOptions::default()),
            0,
        )
        .unwrap();
        assert_eq!(e[0].set, "arm4");
        assert_eq!(e[0].key.len(), 12);

        let mixed = addrs("203.0.113.10", "2001:db8:2::10", "198.51.100.1");
        match all_elements(
            &data_rules(Mode::Passive, &mixed, 30028, 50447, &RuleOptions::default()),
            0,
        ) {
            Err(FilterError::Other { errno, .. }) => assert_eq!(errno, libc::EPROTONOSUPPORT),
            other => panic!("{other:?}"),
        }
        let mut r = data_rules(
            Mode::Passive,
            &addrs("203.0.113.10", "198.51.100.10", "198.51.100.1"),
            1,
            2,
            &RuleOptions::default(),
        );
        r[0].rtable = Some(3);
        assert!(matches!(
            all_elements(&r[..1], 0),
            Err(FilterError::Unsupported(_))
        ));
        r[1].port = 0;
        match all_elements(&r[1..], 0) {
            Err(FilterError::Other { errno, .. }) => assert_eq!(errno, libc::EINVAL),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nat_keys_carry_the_proxy_port_and_need_their_redirect() {
        use ftp_proxy_core::{data_rules, Mode};
        let a = addrs("203.0.113.10", "198.51.100.10", "198.51.100.1");
        let o = RuleOptions::default();
        // Two negotiations from one client to the same server data port: their nat
        // elements differ by the proxy port, so they can coexist.
        let one = all_elements(&data_rules(Mode::Passive, &a, 30028, 50447, &o), 0).unwrap();
        let two = all_elements(&data_rules(Mode::Passive, &a, 30028, 50448, &o), 0).unwrap();
        assert_eq!(one[2].set, "nat4");
        assert_ne!(one[2].key, two[2].key);
        assert_eq!(&one[2].key[..12], &two[2].key[..12]);
        // Active: the nat key is server . client . client port . proxy port.
        let act = all_elements(&data_rules(Mode::ActiveEprt, &a, 40000, 50500, &o), 0).unwrap();
        let (server, client): (IpAddr, IpAddr) = (
            "198.51.100.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        );
        assert_eq!(act[2].key, nat_key(server, client, 40000, 50500));
        // A nat-to rule alone has no proxy port to key on.
        let r = data_rules(Mode::Passive, &a, 30028, 50447, &o);
        assert!(matches!(
            all_elements(&r[1..], 0),
            Err(FilterError::Unsupported(m)) if m.contains("without the rdr-to rule")
        ));
    }

    fn ct(orig: (&str, &str, u16, u16), reply: (&str, &str, u16, u16)) -> CtEntry {
        let t = |(s, d, sp, dp): (&str, &str, u16, u16)| msg::CtTuple {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            proto: 6,
            sport: sp,
            dport: dp,
        };
        CtEntry {
            orig: t(orig),
            reply: t(reply),
            id: Some(1),
            zone: None,
        }
    }

    #[test]
    fn a_redirect_recognises_the_connections_it_dnated() {
        use ftp_proxy_core::{data_rules, Mode};
        let a = addrs("203.0.113.10", "198.51.100.10", "198.51.100.1");
        let e = all_elements(
            &data_rules(Mode::Passive, &a, 30028, 50447, &RuleOptions::default()),
            0,
        )
        .unwrap();
        let rs: Vec<Redirect> = e.iter().filter_map(Redirect::of).collect();
        assert_eq!(rs.len(), 1, "only the rdr element describes a redirect");
        let r = rs[0];
        let c = ("203.0.113.10", "198.51.100.10", 37544, 50447);
        let answer = ("198.51.100.10", "198.51.100.1", 30028, 63155);
        assert!(r.redirected(&ct(c, answer)));
        // Another session's proxy port, a connection that was not DNATed, another
        // client, UDP: not this redirect's.
        assert!(!r.redirected(&ct((c.0, c.1, c.2, 50448), answer)));
        assert!(!r.redirected(&ct(c, ("198.51.100.10", "203.0.113.10", 50447, 37544))));
        assert!(!r.redirected(&ct(("203.0.113.11", c.1, c.2, c.3), answer)));
        let mut udp = ct(c, answer);
        udp.orig.proto = 17;
        assert!(!r.redirected(&udp));
    }
}
