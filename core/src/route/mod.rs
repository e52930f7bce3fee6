//! Choosing the server after `USER` (issue 18): the `USER name@host[:port]`
//! convention of forward proxies ([`parse_user_target`]) and the destination
//! policy its resolved addresses are checked against ([`DestPolicy`]), and the
//! `--route-file` table of reverse mode ([`RouteTable`]).
//!
//! Pure and IO-free like the rest of the core: names are resolved by the driver.

mod policy;
mod table;
mod target;

pub use policy::{AllowDest, Cidr, DestPolicy, DestRefusal};
pub use table::{Route, RouteError, RouteTable, MAX_ROUTES};
pub use target::{parse_user_target, Host, TargetError, UserTarget};
