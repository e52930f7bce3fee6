//! Stand-in until pfctl_backend::mock lands.
use ftp_proxy_core::{Anchor, FilterError, Rule};
use std::collections::BTreeMap;
#[derive(Default)]
pub struct MockBackend {
    anchors: BTreeMap<Anchor, Vec<Rule>>,
}
impl MockBackend {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn anchors(&self) -> &BTreeMap<Anchor, Vec<Rule>> {
        &self.anchors
    }
    pub fn rules(&self, a: &Anchor) -> &[Rule] {
        self.anchors.get(a).map_or(&[], |v| v)
    }
    pub fn commit(&mut self, a: &Anchor, r: &[Rule]) -> Result<(), FilterError> {
        self.anchors.insert(*a, r.to_vec());
        Ok(())
    }
}
