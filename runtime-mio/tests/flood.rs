//! Floods of control lines through the real event loop, driven turn by turn from the
//! test's own thread so that what is counted is deterministic:
//!
//! * memory: what one session holds on the heap while its client floods 1-byte lines
//!   (or commands the proxy answers itself) and nobody reads, counted by a
//!   per-thread allocator, must stay within a bound that does not depend on the line
//!   length;
//! * fairness: a session that sends one `NOOP` while another floods must have it
//!   forwarded within a bounded number of loop turns, before the flooder gets more
//!   than a bounded share of the loop.
//!
//! Real loopback sockets throughout; the "servers" are plain listeners the test
//! reads from (or, to stop reading, does not).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{connect_from, MockHandle};
use ftp_proxy_core::{Config, Proxy};
use ftp_proxy_runtime::{listen, DataPath, Divert, Options, OsRandom, Runtime};
use nix::sys::socket::{setsockopt, sockopt};

/// Counts the heap bytes live per thread: the runtime runs on the test's thread, so
/// that thread's count is the runtime's memory, whatever other tests do meanwhile.
struct PerThread;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // During thread teardown the slot may be gone; those frees are not ours to count.
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

fn live_heap() -> isize {
    LIVE.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting
// touches only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System` underneath.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `System` gets the block it handed out.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: PerThread = PerThread;

/// What one session may hold, whatever its client sends (docs/performance.md).
const SESSION_BOUND: isize = 128 << 10;
/// Flooding sessions measured together.
const MEASURED: usize = 4;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A runtime on this thread, in front of `server`, with the mock filter.
fn runtime(server: SocketAddr, listen_ip: &str) -> Runtime<MockHandle> {
    let cfg = Config {
        fixed_server: Some(server),
        ..Config::default()
    };
    let opts = Options {
        listen: SocketAddr::new(ip(listen_ip), 0),
        transparent: false,
        divert: Divert::Getsockname,
        max_sessions: cfg.max_sessions,
        relay: false,
    };
    let listener = listen(&opts).expect("listen");
    let proxy = Proxy::new(cfg, Box::new(OsRandom::new())).expect("config");
    Runtime::new(listener, &opts, proxy, DataPath::Kernel(MockHandle::new())).expect("runtime")
}

fn turn(rt: &mut Runtime<MockHandle>) {
    rt.turn(Some(Duration::ZERO)).expect("turn");
}

/// One session: the client's socket and the server side the proxy connected to.
struct Pair {
    client: TcpStream,
    server: TcpStream,
    /// Bytes of the flood pattern written so far (where the next write starts).
    sent: usize,
}

/// Connects a client from `from` and turns the loop until the proxy's connection
/// reaches `server` (bounded), then greets it. One at a time, so that the accepted
/// connection is this client's.
fn open(rt: &mut Runtime<MockHandle>, server: &TcpListener, from: &str) -> Pair {
    let client = connect_from(ip(from), rt.local_addr()).expect("connect to the proxy");
    server.set_nonblocking(true).unwrap();
    for _ in 0..10_000 {
        turn(rt);
        match server.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true).unwrap();
                (&s).write_all(b"220 test server\r\n").unwrap();
                turn(rt);
                return Pair {
                    client,
                    server: s,
                    sent: 0,
                };
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    panic!("the proxy never connected to the server");
}

/// Writes as much of the endless repetition of `line` as the socket takes now.
fn feed(p: &mut Pair, chunk: &[u8], line_len: usize) -> usize {
    let off = p.sent % line_len;
    match (&p.client).write(&chunk[off..]) {
        Ok(n) => {
            p.sent += n;
            n
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => panic!("flood write: {e}"),
    }
}

/// Floods every pair with `line` until the proxy takes no more (nothing written for
/// 300 ms and as many turns), bounded in turns and time.
fn flood_until_stalled(rt: &mut Runtime<MockHandle>, pairs: &mut [Pair], line: &[u8]) {
    let chunk = line.repeat((64 << 10) / line.len() + 1);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut idle_turns = 0;
    for _ in 0..1_000_000 {
        // Waits a little when nothing moves, so that a stall is not spun through.
        rt.turn(Some(Duration::from_millis(1))).expect("turn");
        let wrote: usize = pairs.iter_mut().map(|p| feed(p, &chunk, line.len())).sum();
        if wrote > 0 {
            last_progress = Instant::now();
            idle_turns = 0;
        } else {
            idle_turns += 1;
        }
        if idle_turns >= 300 && last_progress.elapsed() >= Duration::from_millis(300) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the flood never stalled"
        );
    }
    panic!("the flood never stalled");
}

/// Small kernel buffers on the flooding path, so that the stall comes soon and what
/// the kernel holds does not matter (it is not on the heap either way).
fn small_buffers(p: &Pair) {
    p.client.set_nonblocking(true).unwrap();
    setsockopt(&p.client, sockopt::SndBuf, &(16 << 10)).unwrap();
    setsockopt(&p.client, sockopt::RcvBuf, &(16 << 10)).unwrap();
}

/// The heap each flooding session holds once nothing is read: what is freed when
/// the sessions end. (What the loop shares between sessions and keeps, such as the
/// capacity of the core's action queue, is not any one session's.)
fn heap_per_flooding_session(line: &[u8], listen_ip: &str) -> isize {
    // The server accepts and greets, then never reads.
    let server = TcpListener::bind((ip("127.0.0.3"), 0)).unwrap();
    setsockopt(&server, sockopt::RcvBuf, &1).unwrap();
    let mut rt = runtime(server.local_addr().unwrap(), listen_ip);
    let mut pairs: Vec<Pair> = (0..MEASURED)
        .map(|_| open(&mut rt, &server, "127.0.0.2"))
        .collect();
    pairs.iter().for_each(small_buffers);
    flood_until_stalled(&mut rt, &mut pairs, line);
    assert_eq!(rt.proxy().len(), MEASURED, "every session is still open");
    let flooded = live_heap();
    let taken: usize = pairs.iter().map(|p| p.sent).sum();
    drop(pairs);
    for _ in 0..10_000 {
        if rt.proxy().is_empty() {
            break;
        }
        rt.turn(Some(Duration::from_millis(1))).expect("turn");
    }
    assert!(rt.proxy().is_empty(), "the sessions never ended");
    let per = (flooded - live_heap()) / MEASURED as isize;
    eprintln!(
        "flood of {}-byte lines ({:?}...): the proxy took {taken} bytes from {MEASURED} clients and held {} KiB per session",
        line.len(),
        String::from_utf8_lossy(&line[..line.len().min(4)]),
        per >> 10
    );
    per
}

#[test]
fn one_byte_lines_at_a_server_that_does_not_read_cost_a_bounded_heap() {
    let per = heap_per_flooding_session(b"\n", "127.0.0.61");
    assert!(
        per <= SESSION_BOUND,
        "a flood of 1-byte lines costs {} KiB per session (bound {} KiB)",
        per >> 10,
        SESSION_BOUND >> 10
    );
}

#[test]
fn what_a_flooding_session_holds_does_not_depend_on_the_line_length() {
    // Blanks: a line without a command word awaits no reply, so the session is not
    // ended for pipelining too many commands while the server reads none.
    let mut long = vec![b' '; 399];
    long.push(b'\n');
    let long = heap_per_flooding_session(&long, "127.0.0.62");
    let short = heap_per_flooding_session(b"\n", "127.0.0.65");
    assert!(
        long <= SESSION_BOUND && short <= long + (16 << 10),
        "a flood of 1-byte lines costs {} KiB per session, one of 400-byte lines {} KiB",
        short >> 10,
        long >> 10
    );
}

#[test]
fn commands_the_proxy_answers_itself_cost_a_bounded_heap() {
    // `AUTH` is refused by the proxy with an 80-byte reply: sixteen times the command.
    // The client reads none of it.
    let per = heap_per_flooding_session(b"AUTH\n", "127.0.0.63");
    assert!(
        per <= SESSION_BOUND,
        "a flood of AUTH at a client that does not read costs {} KiB per session (bound {} KiB)",
        per >> 10,
        SESSION_BOUND >> 10
    );
}

/// Reads what is there now; returns the byte count (and appends to `keep` if given).
fn drain_now(s: &TcpStream, keep: Option<&mut Vec<u8>>) -> usize {
    let mut buf = [0u8; 64 << 10];
    let mut total = 0;
    let mut keep = keep;
    for _ in 0..10_000 {
        match (&*s).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                if let Some(k) = keep.as_deref_mut() {
                    k.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    total
}

#[test]
fn a_flooding_session_does_not_hold_up_another() {
    // Large buffers on the flood's path: the flooder always has megabytes ready and
    // its server takes everything, so nothing but the loop's own budget limits how
    // much of it one turn handles.
    let server = TcpListener::bind((ip("127.0.0.3"), 0)).unwrap();
    setsockopt(&server, sockopt::RcvBuf, &(4 << 20)).unwrap();
    let mut rt = runtime(server.local_addr().unwrap(), "127.0.0.64");
    let flooder = open(&mut rt, &server, "127.0.0.2");
    let victim = open(&mut rt, &server, "127.0.0.2");
    setsockopt(&flooder.client, sockopt::SndBuf, &(4 << 20)).unwrap();
    flooder.client.set_nonblocking(true).unwrap();
    let flood = vec![b'\n'; 1 << 20];
    let mut ready = 0;
    for _ in 0..8 {
        match (&flooder.client).write(&flood) {
            Ok(n) => ready += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flood write: {e}"),
        }
    }
    assert!(ready >= 2 << 20, "only {ready} bytes of flood queued");
    // The flood is under way.
    for _ in 0..3 {
        turn(&mut rt);
    }
    drain_now(&flooder.server, None);
    (&victim.client).write_all(b"NOOP\r\n").unwrap();
    let mut got = Vec::new();
    let mut flooded = 0;
    let mut turns = 0;
    while !got.ends_with(b"NOOP\r\n") {
        assert!(turns < 100, "the victim's NOOP was never forwarded");
        turn(&mut rt);
        turns += 1;
        drain_now(&victim.server, Some(&mut got));
        flooded += drain_now(&flooder.server, None);
    }
    eprintln!("the victim's NOOP was forwarded after {turns} turns and {flooded} flood bytes");
    assert!(turns <= 2, "the victim waited {turns} turns");
    assert!(
        flooded <= 16 << 10,
        "the flooder had {flooded} bytes forwarded while the victim's NOOP waited"
    );
}
