//! A model of the pf kernel's side of the ioctls ftp-proxy uses, for tests on any host.
//!
//! It records every call with the arguments the kernel would see and applies the
//! transaction rules of pf_ioctl.c 1.416 (`pfioctl`) that matter here:
//! DIOCXBEGIN refuses a wrong `esize` with ENODEV, finds or creates the anchor, clears
//! its inactive rules and returns the next version as ticket; DIOCADDRULE needs the
//! layout the kernel was built with (else ENODEV: an unknown request number), an
//! existing anchor (else EINVAL) and the current ticket (else EBUSY); DIOCXCOMMIT needs
//! an open inactive set with that ticket (else EBUSY), swaps it in and removes an anchor
//! left empty; DIOCXROLLBACK discards a matching open set and ignores a mismatch.
//! DIOCKILLSTATES removes the modelled states ([`KernelModel::add_state`]) that match
//! the request as pf_ioctl.c's loop over all states does (family, protocol, routing
//! domain, masked addresses, port operators, label) and reports how many.
//! Faults (an errno for the next call, or for every call, of one kind) are injected on
//! top, before any of these rules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::abi::{
    Layout, PfAddr, PfRuleAddr, PfRuleCommon, PfStatus, PfiocRuleset, PfiocStateKill,
    PF_ANCHOR_NAME_SIZE, PF_OP_EQ,
};
use super::device::{Errno, PfDevice, Transaction};
use super::encode::{c_str, put_c_str, RuleIoc};

/// One kind of pf ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PfOp {
    /// DIOCGETSTATUS.
    GetStatus,
    /// DIOCXBEGIN.
    XBegin,
    /// DIOCADDRULE.
    AddRule,
    /// DIOCXCOMMIT.
    XCommit,
    /// DIOCXROLLBACK.
    XRollback,
    /// DIOCGETRULESETS.
    GetRulesets,
    /// DIOCGETRULESET.
    GetRuleset,
    /// DIOCKILLSTATES.
    KillStates,
}

/// A recorded ioctl, with the arguments as the kernel received them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// DIOCGETSTATUS.
    GetStatus,
    /// DIOCXBEGIN.
    XBegin {
        /// `pfioc_trans.size`.
        size: i32,
        /// `pfioc_trans.esize`.
        esize: i32,
        /// Whether `array` pointed at the transaction's element.
        array_ok: bool,
        /// `pfioc_trans_e.type`.
        type_: i32,
        /// `pfioc_trans_e.anchor`.
        anchor: String,
    },
    /// DIOCADDRULE.
    AddRule {
        /// The layout of the request.
        layout: Layout,
        /// `pfioc_rule.ticket`.
        ticket: u32,
        /// `pfioc_rule.anchor`.
        anchor: String,
        /// `pfioc_rule.rule` (common part).
        rule: Box<PfRuleCommon>,
        /// The whole structure's bytes.
        bytes: Vec<u8>,
    },
    /// DIOCXCOMMIT.
    XCommit {
        /// `pfioc_trans.size`.
        size: i32,
        /// `pfioc_trans.esize`.
        esize: i32,
        /// `pfioc_trans_e.anchor`.
        anchor: String,
        /// `pfioc_trans_e.ticket`.
        ticket: u32,
    },
    /// DIOCXROLLBACK.
    XRollback {
        /// `pfioc_trans_e.anchor`.
        anchor: String,
        /// `pfioc_trans_e.ticket`.
        ticket: u32,
    },
    /// DIOCGETRULESETS.
    GetRulesets {
        /// `pfioc_ruleset.path`.
        path: String,
    },
    /// DIOCGETRULESET.
    GetRuleset {
        /// `pfioc_ruleset.path`.
        path: String,
        /// `pfioc_ruleset.nr`.
        nr: u32,
    },
    /// DIOCKILLSTATES.
    KillStates(Box<PfiocStateKill>),
}

/// A state of the model, as DIOCKILLSTATES sees it: the source and destination of
/// the connection's first packet where the state was created (for an inbound state,
/// before any rdr-to), its routing domain, and the label of the rule that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelState {
    /// `AF_INET` or `AF_INET6` (OpenBSD's values).
    pub af: u8,
    /// `IPPROTO_*`.
    pub proto: u8,
    /// Routing domain of the state key.
    pub rdomain: u16,
    /// Source address and port (host order).
    pub src: (std::net::IpAddr, u16),
    /// Destination address and port (host order).
    pub dst: (std::net::IpAddr, u16),
    /// The creating rule's label.
    pub label: String,
}

#[derive(Debug, Default, Clone)]
struct Ruleset {
    active: Vec<PfRuleCommon>,
    inactive: Vec<PfRuleCommon>,
    version: u32,
    open: bool,
}

/// The kernel model; see the module documentation.
#[derive(Debug)]
pub struct KernelModel {
    /// `pf_status.running`.
    pub running: bool,
    /// The `struct pf_rule` layout the modelled kernel was built with.
    pub layout: Layout,
    rulesets: BTreeMap<String, Ruleset>,
    persistent: BTreeSet<String>,
    calls: Vec<Call>,
    once: BTreeMap<PfOp, VecDeque<Errno>>,
    always: BTreeMap<PfOp, Errno>,
    states: Vec<ModelState>,
}

impl KernelModel {
    /// A running pf built with `layout`, with no anchors.
    pub fn new(layout: Layout) -> KernelModel {
        KernelModel {
            running: true,
            layout,
            rulesets: BTreeMap::new(),
            persistent: BTreeSet::new(),
            calls: Vec::new(),
            once: BTreeMap::new(),
            always: BTreeMap::new(),
            states: Vec::new(),
        }
    }

    /// Adds a state, as if a connection had created it.
    pub fn add_state(&mut self, s: ModelState) {
        self.states.push(s);
    }

    /// The states left.
    pub fn states(&self) -> &[ModelState] {
        &self.states
    }

    /// An anchor that is never removed when empty, like the admin's `anchor "ftp-proxy/*"`.
    pub fn add_persistent_anchor(&mut self, path: &str) {
        self.persistent.insert(path.to_string());
        self.rulesets.entry(path.to_string()).or_default();
    }

    /// Loads `rules` into `path` as if committed earlier (e.g. by a process since killed).
    pub fn preload(&mut self, path: &str, rules: Vec<PfRuleCommon>) {
        let rs = self.rulesets.entry(path.to_string()).or_default();
        rs.active = rules;
        rs.version += 1;
    }

    /// The next call of kind `op` fails with `errno` (queued per kind).
    pub fn fail_next(&mut self, op: PfOp, errno: i32) {
        self.once.entry(op).or_default().push_back(Errno(errno));
    }

    /// Every call of kind `op` fails with `errno` (e.g. EPERM at securelevel 2).
    pub fn fail_always(&mut self, op: PfOp, errno: i32) {
        self.always.insert(op, Errno(errno));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    /// The active rules of an anchor, `None` if the anchor does not exist.
    pub fn active(&self, path: &str) -> Option<&[PfRuleCommon]> {
        self.rulesets.get(path).map(|rs| rs.active.as_slice())
    }

    /// Paths of all existing anchors.
    pub fn anchors(&self) -> Vec<String> {
        self.rulesets.keys().cloned().collect()
    }

    /// Whether any anchor has an open (begun, not committed or rolled back) transaction.
    pub fn any_open(&self) -> bool {
        self.rulesets.values().any(|rs| rs.open)
    }

    fn fault(&mut self, op: PfOp) -> Result<(), Errno> {
        if let Some(e) = self.once.get_mut(&op).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        match self.always.get(&op) {
            Some(&e) => Err(e),
            None => Ok(()),
        }
    }

    fn remove_if_empty(&mut self, path: &str) {
        let has_children = self.children(path).next().is_some();
        if let Some(rs) = self.rulesets.get(path) {
            if rs.active.is_empty() && !rs.open && !has_children && !self.persistent.contains(path)
            {
                self.rulesets.remove(path);
            }
        }
    }

    /// Names of the direct children of `path`, in pf's (strcmp) order.
    fn children<'a>(&'a self, path: &'a str) -> impl Iterator<Item = String> + 'a {
        let prefix = format!("{path}/");
        let names: BTreeSet<String> = self
            .rulesets
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .collect();
        names.into_iter()
    }

    fn exists(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.rulesets.contains_key(path) || self.rulesets.keys().any(|k| k.starts_with(&prefix))
    }
}

/// Whether `addr` is in `a`/`m` (pf_match_addr without `neg`, which ftp-proxy never
/// sets).
fn addr_matches(a: &PfAddr, m: &PfAddr, addr: std::net::IpAddr) -> bool {
    let bytes: Vec<u8> = match addr {
        std::net::IpAddr::V4(v) => v.octets().to_vec(),
        std::net::IpAddr::V6(v) => v.octets().to_vec(),
    };
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| a.bytes[i] & m.bytes[i] == b & m.bytes[i])
}

/// pf_match_port for the operators the model knows: none (0) and `=`.
fn port_matches(ra: &PfRuleAddr, port: u16) -> bool {
    match ra.port_op {
        0 => true,
        PF_OP_EQ => u16::from_be(ra.port[0]) == port,
        _ => false,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_str(bytes)).into_owned()
}

impl PfDevice for KernelModel {
    fn get_status(&mut self, status: &mut PfStatus) -> Result<(), Errno> {
        self.calls.push(Call::GetStatus);
        self.fault(PfOp::GetStatus)?;
        status.running = u32::from(self.running);
        Ok(())
    }

    fn xbegin(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        let anchor = text(t.anchor());
        self.calls.push(Call::XBegin {
            size: t.header().size,
            esize: t.header().esize,
            array_ok: t.array_points_at_element(),
            type_: t.element().type_,
            anchor: anchor.clone(),
        });
        self.fault(PfOp::XBegin)?;
        if t.header().esize != 1032 {
            return Err(Errno(libc::ENODEV));
        }
        let rs = self.rulesets.entry(anchor).or_default();
        rs.inactive.clear();
        rs.version = rs.version.wrapping_add(1);
        rs.open = true;
        t.element_mut().ticket = rs.version;
        Ok(())
    }

    fn add_rule(&mut self, rule: &mut RuleIoc) -> Result<(), Errno> {
        let anchor = text(rule.anchor());
        self.calls.push(Call::AddRule {
            layout: rule.layout(),
            ticket: rule.ticket(),
            anchor: anchor.clone(),
            rule: Box::new(*rule.rule()),
            bytes: rule.as_bytes().to_vec(),
        });
        if rule.layout() != self.layout {
            return Err(Errno(libc::ENODEV));
        }
        self.fault(PfOp::AddRule)?;
        let Some(rs) = self.rulesets.get_mut(&anchor) else {
            return Err(Errno(libc::EINVAL));
        };
        if !rs.open || rule.ticket() != rs.version {
            return Err(Errno(libc::EBUSY));
        }
        rs.inactive.push(*rule.rule());
        Ok(())
    }

    fn xcommit(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        let anchor = text(t.anchor());
        self.calls.push(Call::XCommit {
            size: t.header().size,
            esize: t.header().esize,
            anchor: anchor.clone(),
            ticket: t.ticket(),
        });
        self.fault(PfOp::XCommit)?;
        if t.header().esize != 1032 {
            return Err(Errno(libc::ENODEV));
        }
        match self.rulesets.get_mut(&anchor) {
            Some(rs) if rs.open && rs.version == t.ticket() => {
                rs.active = std::mem::take(&mut rs.inactive);
                rs.open = false;
            }
            _ => return Err(Errno(libc::EBUSY)),
        }
        self.remove_if_empty(&anchor);
        Ok(())
    }

    fn xrollback(&mut self, t: &mut Transaction) -> Result<(), Errno> {
        let anchor = text(t.anchor());
        self.calls.push(Call::XRollback {
            anchor: anchor.clone(),
            ticket: t.ticket(),
        });
        self.fault(PfOp::XRollback)?;
        if let Some(rs) = self.rulesets.get_mut(&anchor) {
            if rs.open && rs.version == t.ticket() {
                rs.inactive.clear();
                rs.open = false;
            }
        }
        self.remove_if_empty(&anchor);
        Ok(())
    }

    fn get_rulesets(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno> {
        let path = text(&rs.path);
        self.calls.push(Call::GetRulesets { path: path.clone() });
        self.fault(PfOp::GetRulesets)?;
        if !self.exists(&path) {
            return Err(Errno(libc::EINVAL));
        }
        rs.nr = self.children(&path).count() as u32;
        Ok(())
    }

    fn get_ruleset(&mut self, rs: &mut PfiocRuleset) -> Result<(), Errno> {
        let path = text(&rs.path);
        self.calls.push(Call::GetRuleset {
            path: path.clone(),
            nr: rs.nr,
        });
        self.fault(PfOp::GetRuleset)?;
        if !self.exists(&path) {
            return Err(Errno(libc::EINVAL));
        }
        let Some(name) = self.children(&path).nth(rs.nr as usize) else {
            return Err(Errno(libc::EBUSY));
        };
        rs.name = [0; PF_ANCHOR_NAME_SIZE];
        // Names longer than a pf anchor component cannot be created by the kernel.
        put_c_str(&mut rs.name, &name).ok_or(Errno(libc::ENAMETOOLONG))?;
        Ok(())
    }

    fn kill_states(&mut self, psk: &mut PfiocStateKill) -> Result<(), Errno> {
        self.calls.push(Call::KillStates(Box::new(*psk)));
        self.fault(PfOp::KillStates)?;
        let label = text(&psk.psk_label);
        let before = self.states.len();
        let p = *psk;
        self.states.retain(|s| {
            let hit = (p.psk_af == 0 || p.psk_af == s.af)
                && (p.psk_proto == 0 || p.psk_proto == i32::from(s.proto))
                && p.psk_rdomain == s.rdomain
                && addr_matches(&p.psk_src.addr.addr, &p.psk_src.addr.mask, s.src.0)
                && addr_matches(&p.psk_dst.addr.addr, &p.psk_dst.addr.mask, s.dst.0)
                && port_matches(&p.psk_src, s.src.1)
                && port_matches(&p.psk_dst, s.dst.1)
                && (label.is_empty() || label == s.label);
            !hit
        });
        psk.psk_killed = (before - self.states.len()) as u32;
        Ok(())
    }
}
