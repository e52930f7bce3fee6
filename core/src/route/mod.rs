//! Choosing the server after `USER` (issue 18): the `USER name@host[:port]`
//! convention of forward proxies ([`parse_user_target`]) and the destination
//! policy its resolved addresses are checked against ([`DestPolicy`]).
//!
//! Pure and IO-free like the rest of the core: names are resolved by the driver.

mod policy;
mod target;

pub use policy::{AllowDest, Cidr, DestPolicy, DestRefusal};
pub use target::{parse_user_target, Host, TargetError, UserTarget};
