//! The OpenBSD pf backend: the original's filter.c over `/dev/pf` ioctls.
//!
//! Each [`commit`](Filter::commit) is one pf transaction on the session's anchor,
//! exactly as ftp-proxy(8)'s filter.c does it (`prepare_commit`, `do_commit`): DIOCXBEGIN with a one-element
//! `pfioc_trans`, one DIOCADDRULE per rule with the ticket the begin returned, then
//! DIOCXCOMMIT, which swaps the new rules in atomically and drops the anchor's old ones.
//! Any failure after a successful begin is followed by DIOCXROLLBACK (its own result
//! ignored). An empty rule list is a begin and a commit, which removes the anchor.
//!
//! Errors: EBUSY from the commit is [`FilterError::Busy`], which the core retries once
//! after 5 ms — the original retries only the commit, so EBUSY from DIOCADDRULE (an
//! unknown `-q` queue, a missing routing table) stays a plain error and ends the
//! session at once, as there. EPERM (securelevel > 1) and EACCES are
//! [`FilterError::PermissionDenied`]. ENODEV from DIOCADDRULE means the request number,
//! which encodes `sizeof(struct pfioc_rule)`, is unknown to the kernel: the wrong
//! [`Layout`].
//!
//! [`Filter::kill_connections`] (ending a session's data connections, e.g. after a
//! reply desync) is one DIOCKILLSTATES per rdr-to rule the anchor committed: the states
//! from the rule's source host to its destination host and proxy port, in its routing
//! domain ([`encode_state_kill`]). Those are the states that carry the redirection; the
//! nat-to rule's state on the other interface cannot be named as exactly (it is keyed
//! by the server's data port) and is left to expire. The backend remembers the rules
//! for this ([`crate::remembered`]), also for a while after the anchor's last commit.
//!
//! Start-up ([`PfBackend::open`]): open `/dev/pf` read-write, DIOCGETSTATUS (`pf is
//! disabled` unless running), then two additions to the original:
//! * a layout probe — a DIOCADDRULE that cannot add anything (an anchor that does not
//!   exist and an impossible ticket). The kernel copies and checks the rule first, then
//!   answers EINVAL (no such anchor) or EBUSY (wrong ticket) when the layout is right,
//!   and ENODEV when it is not (inferred from pf_ioctl.c 1.416's order of checks);
//! * removal of stale anchors `ftp-proxy/<pid>.<id>` whose process no longer exists (the
//!   original leaves them behind after a crash; docs/behavior.md), found with
//!   DIOCGETRULESETS / DIOCGETRULESET on `ftp-proxy`.
//!
//! # What is tested where
//!
//! On every host (`cargo test -p pfctl-backend`, run on Linux in CI):
//! * [`abi`]: size, alignment and every field offset of both `struct pf_rule` layouts and
//!   of the other structures, against `<net/pfvar.h>`, and that no structure
//!   has implicit padding; the ioctl request numbers;
//! * `c_layout`: the same offsets and sizes against a C compiler, which lays out a
//!   replica of the structures written with natural C types (`testdata/pfvar_replica.h`);
//! * [`encode`]: the exact bytes of the rdr and nat rules of every negotiation kind
//!   (passive, PORT with and without `-r`, EPRT), IPv4 and IPv6, with `-T`, `-q`, `-v`,
//!   `-vv` and routing domains, built through `ftp_proxy_core::data_rules`, compared
//!   with images written at `struct pf_rule`'s literal offsets; the pre-checks' errnos;
//! * this module: the ioctl sequence of commits, removals, failures (rollback after any
//!   failure that follows a begin, EBUSY mapping), start-up checks, layout probing,
//!   stale-anchor removal and state killing (the request's bytes, which modelled states
//!   it removes), against [`model::KernelModel`], a model of the kernel's ticket and
//!   anchor rules and of DIOCKILLSTATES's matching.
//!
//! Only on OpenBSD (compiled there only; type-checked on Linux by building a scratch
//! copy with the `cfg` switched): the `ioctl(2)` calls in [`device`]; `c_layout`'s check
//! against the system's `<net/pfvar.h>`; `live_tests`, which commit, replace and remove
//! rules in the running kernel and read them back with `pfctl -sr` (root, pf enabled).
//! None of these has run on a real OpenBSD host yet.

pub mod abi;
pub mod device;
pub mod encode;
pub mod model;

use std::collections::BTreeSet;
use std::fmt;

use log::{info, warn};

use ftp_proxy_core::Filter;
use ftp_proxy_core::{Anchor, Direction, FilterError, Rule};

use crate::remembered::Remembered;

pub use abi::Layout;
pub use device::{process_alive, DevPf, Errno, PfDevice, Transaction};
pub use encode::{encode_rule, encode_rule_body, encode_state_kill, RuleIoc};

use abi::{PfRuleCommon, PfStatus, Pod};
use encode::{c_str, errno_error, strerror};

/// The parent anchor of every session anchor (`FTP_PROXY_ANCHOR`).
pub const FTP_PROXY_ANCHOR: &str = "ftp-proxy";

/// Why pf cannot be used at start-up. `Display` gives the daemon's fatal message.
#[derive(Debug)]
pub enum PfOpenError {
    /// Not running on OpenBSD.
    NotOpenBsd,
    /// `/dev/pf` could not be opened read-write.
    Open(std::io::Error),
    /// DIOCGETSTATUS failed.
    Status(Errno),
    /// pf is not enabled (`pfctl -e`).
    Disabled,
    /// The kernel does not know DIOCADDRULE of this size.
    LayoutMismatch(Layout),
    /// No known layout matches the kernel ([`PfBackend::open_auto`]).
    NoLayoutMatches,
}

impl fmt::Display for PfOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PfOpenError::NotOpenBsd => f.write_str("pf is only available on OpenBSD"),
            PfOpenError::Open(e) => match e.raw_os_error() {
                Some(errno) => write!(f, "open /dev/pf: {}", strerror(errno)),
                None => write!(f, "open /dev/pf: {e}"),
            },
            PfOpenError::Status(e) => write!(f, "DIOCGETSTATUS: {e}"),
            PfOpenError::Disabled => f.write_str("pf is disabled"),
            PfOpenError::LayoutMismatch(l) => {
                write!(f, "pf rule layout does not match this kernel (tried {l})")
            }
            PfOpenError::NoLayoutMatches => f.write_str(
                "pf rule layout does not match this kernel (tried pfvar.h 1.548 and 1.543)",
            ),
        }
    }
}

impl std::error::Error for PfOpenError {}

/// Which ioctl of a transaction failed; decides how its errno maps to a [`FilterError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Begin,
    AddRule,
    Commit,
}

fn filter_error(step: Step, Errno(e): Errno) -> FilterError {
    match e {
        libc::EPERM | libc::EACCES => FilterError::PermissionDenied,
        libc::EBUSY if step == Step::Commit => FilterError::Busy,
        libc::ENODEV if step == Step::AddRule => FilterError::Other {
            errno: e,
            text: "pf rule layout does not match this kernel".into(),
        },
        _ => errno_error(e),
    }
}

/// The pf backend over a [`PfDevice`] (the real `/dev/pf` by default).
#[derive(Debug)]
pub struct PfBackend<D: PfDevice = DevPf> {
    dev: D,
    layout: Layout,
    /// Anchors this process may have rules in: begun and not since emptied.
    used: BTreeSet<Anchor>,
    /// The rdr-to rules each anchor committed, for [`Filter::kill_connections`].
    redirects: Remembered<Rule>,
}

impl PfBackend<DevPf> {
    /// Opens `/dev/pf` for `layout`, checks pf runs and the layout fits, and clears the
    /// anchors of dead ftp-proxy processes.
    pub fn open(layout: Layout) -> Result<PfBackend<DevPf>, PfOpenError> {
        let mut pf = PfBackend::with_device(open_dev()?, layout, std::process::id())?;
        pf.clear_stale_anchors_logged(std::process::id());
        Ok(pf)
    }

    /// As [`open`](Self::open), trying every known layout, newest first.
    pub fn open_auto() -> Result<PfBackend<DevPf>, PfOpenError> {
        let mut pf = PfBackend::with_device_auto(open_dev()?, std::process::id())?;
        pf.clear_stale_anchors_logged(std::process::id());
        Ok(pf)
    }
}

#[cfg(target_os = "openbsd")]
fn open_dev() -> Result<DevPf, PfOpenError> {
    DevPf::open().map_err(PfOpenError::Open)
}

#[cfg(not(target_os = "openbsd"))]
fn open_dev() -> Result<DevPf, PfOpenError> {
    Err(PfOpenError::NotOpenBsd)
}

impl<D: PfDevice> PfBackend<D> {
    /// Checks that pf runs (DIOCGETSTATUS) and that `layout` is the kernel's (probe);
    /// `pid` only names the probe's (never created) anchor.
    pub fn with_device(mut dev: D, layout: Layout, pid: u32) -> Result<PfBackend<D>, PfOpenError> {
        check_running(&mut dev)?;
        if !probe_layout(&mut dev, layout, pid) {
            return Err(PfOpenError::LayoutMismatch(layout));
        }
        Ok(PfBackend {
            dev,
            layout,
            used: BTreeSet::new(),
            redirects: Remembered::default(),
        })
    }

    /// As [`with_device`](Self::with_device), with the first of [`Layout::ALL`] that fits.
    /// At securelevel > 1 every probe gets EPERM and the newest layout is taken; no
    /// rule can be added there anyway, and a lower securelevel needs a reboot.
    pub fn with_device_auto(mut dev: D, pid: u32) -> Result<PfBackend<D>, PfOpenError> {
        check_running(&mut dev)?;
        let layout = Layout::ALL
            .into_iter()
            .find(|&l| probe_layout(&mut dev, l, pid))
            .ok_or(PfOpenError::NoLayoutMatches)?;
        info!("pf rule layout: {layout}");
        Ok(PfBackend {
            dev,
            layout,
            used: BTreeSet::new(),
            redirects: Remembered::default(),
        })
    }

    /// The layout in use.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The device (for tests to inspect a model).
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (for tests to inject faults).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Anchors that may hold rules of this process.
    pub fn used_anchors(&self) -> impl Iterator<Item = &Anchor> {
        self.used.iter()
    }

    /// Removes the rules of `ftp-proxy/<pid>.<id>` anchors whose `pid` is neither `own_pid`
    /// nor alive according to `alive`. Other children of `ftp-proxy` (not of that form)
    /// are left alone. Returns the anchors removed; an anchor whose removal fails is
    /// logged and skipped. Fails only if the anchors cannot be listed; no `ftp-proxy`
    /// anchor at all (EINVAL) is an empty list. A dead proxy's pid that was reused by a
    /// live process keeps its anchors: removing too little is the safe mistake.
    pub fn clear_stale_anchors(
        &mut self,
        own_pid: u32,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Vec<String>, FilterError> {
        let mut q = device::ruleset_query(FTP_PROXY_ANCHOR, 0).expect("short path");
        match self.dev.get_rulesets(&mut q) {
            Ok(()) => {}
            Err(Errno(libc::EINVAL)) => return Ok(Vec::new()),
            Err(e) => return Err(filter_error(Step::Begin, e)),
        }
        let count = q.nr;
        let mut stale = Vec::new();
        for nr in 0..count {
            let mut q = device::ruleset_query(FTP_PROXY_ANCHOR, nr).expect("short path");
            match self.dev.get_ruleset(&mut q) {
                Ok(()) => {}
                // The list shrank meanwhile (another process ended a session).
                Err(Errno(libc::EBUSY)) => break,
                Err(e) => return Err(filter_error(Step::Begin, e)),
            }
            let name = String::from_utf8_lossy(c_str(&q.name)).into_owned();
            if let Some(pid) = session_anchor_pid(&name) {
                if pid != own_pid && !alive(pid) {
                    stale.push(format!("{FTP_PROXY_ANCHOR}/{name}"));
                }
            }
        }
        let mut removed = Vec::new();
        for path in stale {
            match self.transaction(&path, None, &[]) {
                Ok(()) => removed.push(path),
                Err(e) => warn!("cannot remove stale anchor {path}: {e}"),
            }
        }
        Ok(removed)
    }

    fn clear_stale_anchors_logged(&mut self, own_pid: u32) {
        match self.clear_stale_anchors(own_pid, process_alive) {
            Ok(removed) => {
                for path in removed {
                    info!("removed stale anchor {path}");
                }
            }
            Err(e) => warn!("cannot list stale ftp-proxy anchors: {e}"),
        }
    }

    /// One transaction on `path`: begin, add each rule, commit; roll back after a failure
    /// that follows a successful begin. `anchor` is given when `rules` is not empty.
    fn transaction(
        &mut self,
        path: &str,
        anchor: Option<&Anchor>,
        rules: &[Rule],
    ) -> Result<(), FilterError> {
        let mut t = Transaction::new(path).ok_or_else(|| errno_error(libc::ENAMETOOLONG))?;
        self.dev
            .xbegin(&mut t)
            .map_err(|e| filter_error(Step::Begin, e))?;
        if let Some(anchor) = anchor {
            self.used.insert(*anchor);
        }
        for rule in rules {
            let anchor = anchor.expect("rules come with their anchor");
            let added = encode_rule(self.layout, anchor, t.ticket(), rule).and_then(|mut ioc| {
                self.dev
                    .add_rule(&mut ioc)
                    .map_err(|e| filter_error(Step::AddRule, e))
            });
            if let Err(e) = added {
                let _ = self.dev.xrollback(&mut t);
                return Err(e);
            }
        }
        if let Err(e) = self.dev.xcommit(&mut t) {
            let _ = self.dev.xrollback(&mut t);
            return Err(filter_error(Step::Commit, e));
        }
        Ok(())
    }
}

impl<D: PfDevice> Filter for PfBackend<D> {
    fn name(&self) -> &'static str {
        "pf"
    }

    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        let path = anchor.to_string();
        let result = self.transaction(&path, Some(anchor), rules);
        if result.is_ok() {
            if rules.is_empty() {
                self.used.remove(anchor);
                self.redirects.retire(anchor);
            } else {
                let rdr = rules.iter().filter(|r| r.direction == Direction::In);
                self.redirects.add(anchor, rdr.cloned());
            }
        }
        result
    }

    /// DIOCKILLSTATES for each rdr-to rule `anchor` committed (its last
    /// [`MAX_PER_ANCHOR`](crate::remembered::MAX_PER_ANCHOR), kept for the
    /// [`MAX_ENDED`](crate::remembered::MAX_ENDED) sessions that ended last): the
    /// states from the rule's peer to its proxy port ([`encode_state_kill`]). The
    /// nat-to rule's state on the other interface is left to expire; without the
    /// redirecting state the connection's packets are no longer translated, so it
    /// carries nothing more. With `-T` the rules are `match` rules and the states
    /// belong to the admin's `pass ... tagged` rule, but they still match these
    /// addresses. EPERM (securelevel) is `PermissionDenied`; after a failure the
    /// other requests are still made and the first error is returned.
    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        let rules = self.redirects.of(anchor).to_vec();
        let mut killed = 0u32;
        let mut first = None;
        for rule in &rules {
            let Some(mut psk) = encode_state_kill(rule) else {
                continue;
            };
            match self.dev.kill_states(&mut psk) {
                Ok(()) => killed = killed.saturating_add(psk.psk_killed),
                Err(e) => {
                    warn!("{anchor}: cannot kill the states of `{rule}`: {e}");
                    first.get_or_insert(filter_error(Step::Begin, e));
                }
            }
        }
        if killed > 0 {
            info!("{anchor}: ended {killed} data connection state(s) of the session");
        }
        if let Some(e) = first {
            return Err(e);
        }
        // A live anchor's rules may still let a connection through: keep looking for
        // them (a repeated kill of the same addresses is harmless). An ended one is done.
        if !self.used.contains(anchor) {
            self.redirects.killed(anchor, &[]);
        }
        Ok(())
    }

    fn remove_all(&mut self) -> Result<(), FilterError> {
        let mut first = None;
        for anchor in self.used.clone() {
            if let Err(e) = self.commit(&anchor, &[]) {
                warn!("{anchor}: pf rule removal failed: {e}");
                first.get_or_insert(e);
            }
        }
        if first.is_none() {
            self.redirects.clear();
        }
        first.map_or(Ok(()), Err)
    }
}

fn check_running<D: PfDevice>(dev: &mut D) -> Result<(), PfOpenError> {
    let mut status = PfStatus::zeroed();
    dev.get_status(&mut status).map_err(PfOpenError::Status)?;
    if status.running == 0 {
        return Err(PfOpenError::Disabled);
    }
    Ok(())
}

/// The probe's anchor: a name under `ftp-proxy` that no session anchor can have.
fn probe_anchor(pid: u32) -> String {
    format!("{FTP_PROXY_ANCHOR}/layout-probe.{pid}")
}

/// Whether the kernel takes DIOCADDRULE in `layout` (see the module documentation).
/// Answers other than ENODEV cannot tell a wrong layout (EPERM at securelevel > 1
/// comes before any decoding), so they count as a match and are logged; the original
/// starts in that case too and fails each negotiation.
fn probe_layout<D: PfDevice>(dev: &mut D, layout: Layout, pid: u32) -> bool {
    let anchor = probe_anchor(pid);
    let mut body = PfRuleCommon::zeroed();
    body.rtableid = -1;
    body.onrdomain = -1;
    let mut ioc = match layout {
        Layout::V1543 => RuleIoc::V1543(Box::new(probe_ioc(&anchor, body))),
        Layout::V1548 => RuleIoc::V1548(Box::new(probe_ioc(&anchor, body))),
    };
    match dev.add_rule(&mut ioc) {
        Err(Errno(libc::ENODEV)) => false,
        Err(Errno(libc::EINVAL | libc::EBUSY)) => true,
        Err(e) => {
            warn!("cannot verify the pf rule layout ({layout}): {e}");
            true
        }
        Ok(()) => {
            warn!("pf accepted the layout probe into {anchor}; it is not active and goes with the next begin");
            true
        }
    }
}

fn probe_ioc<R: abi::PfRuleLayout>(anchor: &str, body: PfRuleCommon) -> abi::PfiocRule<R> {
    let mut pr = abi::PfiocRule::<R>::zeroed();
    pr.ticket = u32::MAX;
    encode::put_c_str(&mut pr.anchor, anchor).expect("short anchor");
    pr.rule = R::from_common(body);
    pr
}

/// The pid of a session anchor's name `<pid>.<id>` (both decimal), `None` otherwise.
fn session_anchor_pid(name: &str) -> Option<u32> {
    let (pid, id) = name.split_once('.')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !decimal(pid) || !decimal(id) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod c_layout;
#[cfg(all(test, target_os = "openbsd"))]
mod live_tests;
#[cfg(test)]
mod tests;
