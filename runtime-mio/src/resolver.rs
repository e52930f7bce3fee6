//! Host name lookups for forward mode (`--user-at-host`) that never block the event
//! loop and work from inside a chroot.
//!
//! `getaddrinfo(3)` blocks, and it reads `/etc/resolv.conf`, `/etc/hosts` and
//! `/etc/nsswitch.conf`, none of which exist in the daemon's chroot. So lookups
//! are made elsewhere: by [`serve`], run by a helper that keeps the real root
//! (the daemon forks it before the chroot; see docs/forward-proxy.md), and asked
//! over a datagram socket pair. The loop's side, [`Resolver`], only ever writes a
//! request and reads answers when the socket is readable. Each lookup is bounded
//! by the core's own deadline (`--resolve-timeout`); an answer that comes after
//! its session ended finds no session and is dropped.
//!
//! The wire format, one message each way per lookup, on a `SOCK_SEQPACKET` pair
//! (messages keep their boundaries and order, are not lost, and, unlike
//! datagrams, end with an end of file when the other side is gone, so the helper
//! exits with the daemon):
//! * request: request id (8 bytes, little-endian), then the name;
//! * answer: request id, then `0` and the addresses (a length byte, 4 or 16, and
//!   that many bytes, for each), or `1` and the resolver's error text.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::sync::Arc;

use ftp_proxy_core::SessionId;
use log::{debug, warn};
use mio::net::UnixDatagram;

/// Lookups the helper runs at once; more wait in the socket's queue.
pub const WORKERS: usize = 8;
/// The longest name sent (a DNS name has at most 253 characters).
const MAX_NAME: usize = 253;
/// Room for an answer: many addresses, or an error text.
const MAX_ANSWER: usize = 4096;

/// The loop's end of the socket pair: sends lookups, matches answers to sessions.
#[derive(Debug)]
pub struct Resolver {
    sock: UnixDatagram,
    next_id: u64,
    waiting: BTreeMap<u64, SessionId>,
}

/// One answer: the session that asked and what the helper found.
pub(crate) type Answer = (SessionId, Result<Vec<IpAddr>, String>);

impl Resolver {
    /// A socket pair: the loop's [`Resolver`] and the helper's end, for [`serve`].
    pub fn pair() -> io::Result<(Resolver, StdDatagram)> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // send(2) and recv(2) are the same calls on a seqpacket socket as on a
        // datagram one, which is all these types do with it.
        let (ours, theirs) = (StdDatagram::from(a), StdDatagram::from(b));
        ours.set_nonblocking(true)?;
        Ok((Resolver::from_std(ours), theirs))
    }

    /// Wraps the loop's end of a pair made elsewhere (non-blocking).
    pub fn from_std(sock: StdDatagram) -> Resolver {
        Resolver {
            sock: UnixDatagram::from_std(sock),
            next_id: 1,
            waiting: BTreeMap::new(),
        }
    }

    pub(crate) fn source(&mut self) -> &mut UnixDatagram {
        &mut self.sock
    }

    /// Asks for `name` on behalf of `session`. An error (the helper is gone, or
    /// its queue is full) is the answer at once.
    pub(crate) fn ask(&mut self, session: SessionId, name: &str) -> Result<(), String> {
        if name.len() > MAX_NAME {
            return Err("name too long".into());
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut req = Vec::with_capacity(8 + name.len());
        req.extend_from_slice(&id.to_le_bytes());
        req.extend_from_slice(name.as_bytes());
        match self.sock.send(&req) {
            Ok(_) => {
                self.waiting.insert(id, session);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                warn!("{session} resolver busy: lookup of {name} refused");
                Err("resolver busy".into())
            }
            Err(e) => {
                warn!("{session} resolver unavailable: {e}");
                Err(format!("resolver unavailable: {e}"))
            }
        }
    }

    /// The answers that have arrived, read until the socket would block.
    pub(crate) fn answers(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_ANSWER];
        loop {
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("resolver socket: {e}");
                    break;
                }
            };
            let Some((id, result)) = decode_answer(&buf[..n]) else {
                warn!("resolver sent a malformed answer ({n} bytes)");
                continue;
            };
            match self.waiting.remove(&id) {
                Some(session) => out.push((session, result)),
                None => debug!("resolver answer {id} matches no lookup"),
            }
        }
        out
    }

    /// Forgets the lookups of a session that ended.
    pub(crate) fn forget(&mut self, session: SessionId) {
        self.waiting.retain(|_, s| *s != session);
    }
}

fn decode_answer(b: &[u8]) -> Option<(u64, Result<Vec<IpAddr>, String>)> {
    let id = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let (&status, mut rest) = b.get(8..)?.split_first()?;
    match status {
        0 => {
            let mut addrs = Vec::new();
            while let Some((&len, tail)) = rest.split_first() {
                let raw = tail.get(..usize::from(len))?;
                addrs.push(match len {
                    4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw).ok()?)),
                    16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?)),
                    _ => return None,
                });
                rest = &tail[usize::from(len)..];
            }
            Some((id, Ok(addrs)))
        }
        1 => Some((id, Err(String::from_utf8_lossy(rest).into_owned()))),
        _ => None,
    }
}

fn encode_answer(id: u64, result: &Result<Vec<IpAddr>, String>) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    match result {
        Ok(addrs) => {
            b.push(0);
            // As many as fit; getaddrinfo's first ones are the preferred.
            for a in addrs.iter().take((MAX_ANSWER - 9) / 17) {
                match a {
                    IpAddr::V4(v4) => {
                        b.push(4);
                        b.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        b.push(16);
                        b.extend_from_slice(&v6.octets());
                    }
                }
            }
        }
        Err(e) => {
            b.push(1);
            let e = e.as_bytes();
            b.extend_from_slice(&e[..e.len().min(MAX_ANSWER - 9)]);
        }
    }
    b
}

/// One lookup, as `getaddrinfo(3)` orders the results (RFC 6724), each address
/// once.
fn lookup(name: &str) -> Result<Vec<IpAddr>, String> {
    let mut addrs: Vec<IpAddr> = Vec::new();
    for sa in (name, 0).to_socket_addrs().map_err(|e| {
        // std prefixes "failed to lookup address information: ".
        let text = e.to_string();
        text.rsplit_once(": ")
            .map_or(text.clone(), |(_, t)| t.to_string())
    })? {
        if !addrs.contains(&sa.ip()) {
            addrs.push(sa.ip());
        }
    }
    Ok(addrs)
}

/// Serves lookups on `sock` until the other end is gone, with [`WORKERS`] threads
/// (so one slow name does not hold up the others). Blocks; the daemon's helper
/// process runs it, a driver without a chroot may run it on a thread.
pub fn serve(sock: StdDatagram) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    let sock = Arc::new(sock);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let sock = Arc::clone(&sock);
            std::thread::spawn(move || worker(&sock))
        })
        .collect();
    let mut first_error = Ok(());
    for w in workers {
        let r = w
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("worker panicked")));
        if first_error.is_ok() {
            first_error = r;
        }
    }
    first_error
}

fn worker(sock: &StdDatagram) -> io::Result<()> {
    let mut buf = [0u8; 8 + MAX_NAME];
    loop {
        let n = match sock.recv(&mut buf) {
            // The loop's end closed: the daemon is gone.
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n < 8 {
            continue;
        }
        let id = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let result = match std::str::from_utf8(&buf[8..n]) {
            Ok(name) => lookup(name),
            Err(_) => Err("name is not UTF-8".into()),
        };
        match sock.send(&encode_answer(id, &result)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The loop's end closed.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits (bounded) for `n` answers.
    fn wait_answers(r: &mut Resolver, n: usize) -> Vec<Answer> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(r.answers());
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn answers_round_trip() {
        let addrs: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        let b = encode_answer(7, &Ok(addrs.clone()));
        assert_eq!(decode_answer(&b), Some((7, Ok(addrs))));
        let b = encode_answer(9, &Err("Name or service not known".into()));
        assert_eq!(
            decode_answer(&b),
            Some((9, Err("Name or service not known".into())))
        );
        assert_eq!(decode_answer(&b[..5]), None);
        let mut bad = encode_answer(1, &Ok(vec!["127.0.0.1".parse().unwrap()]));
        bad[9] = 5;
        assert_eq!(decode_answer(&bad), None);
    }

    #[test]
    fn a_helper_thread_answers_each_session_its_own_lookup() {
        let (mut r, theirs) = Resolver::pair().unwrap();
        let helper = std::thread::spawn(move || serve(theirs));
        r.ask(SessionId(1), "localhost").unwrap();
        r.ask(SessionId(2), "no-such-host.invalid").unwrap();
        r.ask(SessionId(3), "127.0.0.9").unwrap();
        r.ask(SessionId(4), "gone.invalid").unwrap();
        r.forget(SessionId(4));
        let mut got = wait_answers(&mut r, 3);
        got.sort_by_key(|(s, _)| s.0);
        assert_eq!(got.len(), 3, "{got:?}");
        let local = got[0].1.as_ref().unwrap();
        assert!(
            local.iter().all(|a| a.is_loopback()) && !local.is_empty(),
            "{local:?}"
        );
        assert!(got[1].1.is_err(), "{:?}", got[1]);
        assert_eq!(got[2].1, Ok(vec!["127.0.0.9".parse::<IpAddr>().unwrap()]));
        assert_eq!(got[2].0, SessionId(3));
        // The loop's end gone: the helper returns.
        drop(r);
        helper.join().unwrap().unwrap();
    }

    #[test]
    fn a_gone_helper_is_an_immediate_answer() {
        let (mut r, theirs) = Resolver::pair().unwrap();
        drop(theirs);
        assert!(r.ask(SessionId(1), "localhost").is_err());
        assert!(r.ask(SessionId(1), &"a".repeat(300)).is_err());
    }
}
