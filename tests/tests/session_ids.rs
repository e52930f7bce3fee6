//! Session ids: they start at 1, never take 0, and when they wrap at `u32::MAX` they
//! skip every id still live, so a new session can never replace a live one. The
//! wrap is reached through the core's `internals` hook instead of 2^32 accepts.

use std::net::SocketAddr;
use std::time::Instant;

use ftp_proxy_core::{internals, Accept, Config, Input, Pcg32, Proxy, SessionId, Side};

#[test]
fn ids_wrap_around_live_sessions() {
    let mut p = Proxy::new(Config::default(), Box::new(Pcg32::new(1))).unwrap();
    let now = Instant::now();
    let client: SocketAddr = "203.0.113.10:40000".parse().unwrap();
    let server: SocketAddr = "198.51.100.10:21".parse().unwrap();
    let first = p.accept(now, Accept::new(client, server)).unwrap();
    let second = p.accept(now, Accept::new(client, server)).unwrap();
    assert_eq!((first, second), (SessionId(1), SessionId(2)));
    internals::set_next_session_id(&mut p, u32::MAX);
    let last = p.accept(now, Accept::new(client, server)).unwrap();
    assert_eq!(last, SessionId(u32::MAX));
    // 1 and 2 are live: the wrap skips them (and 0 is never used).
    assert_eq!(
        p.accept(now, Accept::new(client, server)).unwrap(),
        SessionId(3)
    );
    assert_eq!(p.len(), 4);
    assert!(p.is_open(first) && p.is_open(second));
    // An ended id becomes free again after the next wrap.
    p.handle(now, first, Input::Eof(Side::Client));
    assert!(!p.is_open(first));
    internals::set_next_session_id(&mut p, u32::MAX);
    // u32::MAX is live, so the next is 1 again.
    assert_eq!(
        p.accept(now, Accept::new(client, server)).unwrap(),
        SessionId(1)
    );
}
