//! The packet filter as the core's users see it.

use crate::error::FilterError;
use crate::rules::{Anchor, Rule};
#[cfg(doc)]
use crate::{Action, Input};

/// A packet filter that holds one rule set per session anchor: what executes
/// [`Action::CommitRules`].
///
/// It lives in the core, not with the kernel backends, so that a driver (and the
/// userspace relay, a filter in all but the kernel) can name and implement it
/// without linking any ioctl or netlink code.
pub trait Filter {
    /// Short name for logs and the command line (`pf`, `nftables`, `mock`, `relay`).
    fn name(&self) -> &'static str;

    /// Replaces everything `anchor` holds with `rules`, atomically: afterwards either
    /// exactly `rules` are in force or, on error, what was there before. An empty
    /// slice removes the anchor's rules. The result is what the driver reports as
    /// [`Input::RulesCommitted`].
    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError>;

    /// Removes every rule this filter installed for this process (at exit, and the
    /// backstop after [`Action::RulesMayRemain`]).
    fn remove_all(&mut self) -> Result<(), FilterError>;

    /// Ends the data connections this anchor's rules let through (connection-tracking
    /// state, or the relay's pairs), so that nothing a session negotiated outlives it.
    /// Filters that cannot (pf without state killing) return Ok(()) and say so in their docs.
    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        let _ = anchor;
        Ok(())
    }
}

impl<F: Filter + ?Sized> Filter for Box<F> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn commit(&mut self, anchor: &Anchor, rules: &[Rule]) -> Result<(), FilterError> {
        (**self).commit(anchor, rules)
    }
    fn remove_all(&mut self) -> Result<(), FilterError> {
        (**self).remove_all()
    }
    fn kill_connections(&mut self, anchor: &Anchor) -> Result<(), FilterError> {
        (**self).kill_connections(anchor)
    }
}
