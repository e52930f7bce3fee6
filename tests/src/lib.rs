//! Shared test support: the deterministic simulation, and harnesses for the
//! end-to-end tests with real servers, clients and network namespaces.

pub mod e2e;
pub mod invariants;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod sim;
