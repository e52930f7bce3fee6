//! Shared test support.

pub mod e2e;
