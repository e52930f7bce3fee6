//! Throughput of a passive download through the userspace relay, against the same
//! transfer over a direct loopback connection and through a plain two-thread
//! `std::io::copy` forwarder; the relay both copying through user space and with
//! `splice(2)`. Run with
//! `cargo bench -p ftp-proxy-runtime --bench relay_throughput` (`RELAY_BENCH_MIB`
//! sets the size, default 1024).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ftp_proxy_core::{Config, Proxy};
use ftp_proxy_runtime::{listen, DataPath, Divert, Options, OsRandom, Runtime};

const CHUNK: usize = 256 * 1024;

/// Sends `total` bytes on `s`, then closes it.
fn send_zeros(mut s: TcpStream, total: u64) {
    let buf = vec![0x5au8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Reads until EOF and returns the byte count.
fn sink(mut s: TcpStream) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).unwrap() {
            0 => return n,
            k => n += k as u64,
        }
    }
}

fn direct(total: u64) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let t = std::thread::spawn(move || send_zeros(l.accept().unwrap().0, total));
    let start = Instant::now();
    let got = sink(TcpStream::connect(a).unwrap());
    let d = start.elapsed();
    t.join().unwrap();
    assert_eq!(got, total);
    d
}

fn std_forwarder(total: u64) -> Duration {
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let oa = origin.local_addr().unwrap();
    let fwd = TcpListener::bind("127.0.0.1:0").unwrap();
    let fa = fwd.local_addr().unwrap();
    let t1 = std::thread::spawn(move || send_zeros(origin.accept().unwrap().0, total));
    let t2 = std::thread::spawn(move || {
        let (mut c, _) = fwd.accept().unwrap();
        let mut up = TcpStream::connect(oa).unwrap();
        std::io::copy(&mut up, &mut c).unwrap();
        let _ = c.shutdown(Shutdown::Write);
    });
    let start = Instant::now();
    let got = sink(TcpStream::connect(fa).unwrap());
    let d = start.elapsed();
    t1.join().unwrap();
    t2.join().unwrap();
    assert_eq!(got, total);
    d
}

/// A one-command FTP server: banner, USER, PASS, PASV, RETR (zeros), QUIT.
fn ftp_server(total: u64) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        w.write_all(b"220 bench\r\n").unwrap();
        let mut data = None;
        let mut line = String::new();
        // The proxy may reset the control connection at the end: that ends the dialog too.
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            let cmd = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match cmd.as_str() {
                "PASV" => {
                    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
                    let p = dl.local_addr().unwrap().port();
                    w.write_all(
                        format!("227 ok (127,0,0,1,{},{})\r\n", p >> 8, p & 255).as_bytes(),
                    )
                    .unwrap();
                    data = Some(dl);
                }
                "RETR" => {
                    w.write_all(b"150 go\r\n").unwrap();
                    let (d, _) = data.take().unwrap().accept().unwrap();
                    send_zeros(d, total);
                    w.write_all(b"226 done\r\n").unwrap();
                }
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").unwrap();
                    return;
                }
                _ => w.write_all(b"230 ok\r\n").unwrap(),
            }
            line.clear();
        }
    });
    a
}

fn relay(total: u64, zero_copy: bool) -> Duration {
    let server = ftp_server(total);
    let (tx, rx) = std::sync::mpsc::channel();
    let rt_thread = std::thread::spawn(move || {
        let opts = Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            transparent: false,
            divert: Divert::Getsockname,
            max_sessions: 10,
            relay: true,
        };
        let cfg = Config {
            fixed_server: Some(server),
            ..Config::default()
        };
        let proxy = Proxy::new(cfg, Box::new(OsRandom::new())).unwrap();
        let mut rt = Runtime::<Box<dyn ftp_proxy_runtime::Filter>>::new(
            listen(&opts).unwrap(),
            &opts,
            proxy,
            DataPath::Relay,
        )
        .unwrap();
        rt.set_relay_zero_copy(zero_copy);
        tx.send((rt.local_addr(), rt.shutdown_handle())).unwrap();
        while !rt.is_finished() {
            rt.turn(None).unwrap();
        }
        rt.finish();
    });
    let (addr, stop) = rx.recv().unwrap();
    let c = TcpStream::connect(addr).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    let mut reply = |w: &mut TcpStream, cmd: &str| -> String {
        if !cmd.is_empty() {
            w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        }
        line.clear();
        r.read_line(&mut line).unwrap();
        line.clone()
    };
    reply(&mut w, "");
    reply(&mut w, "USER bench");
    let pasv = reply(&mut w, "PASV");
    let nums: Vec<u16> = pasv[pasv.find('(').unwrap() + 1..pasv.find(')').unwrap()]
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let data_addr = SocketAddr::from(([127, 0, 0, 1], nums[4] * 256 + nums[5]));
    let d = TcpStream::connect(data_addr).unwrap();
    let start = Instant::now();
    w.write_all(b"RETR x\r\n").unwrap();
    let got = sink(d);
    let dur = start.elapsed();
    assert_eq!(got, total);
    reply(&mut w, "");
    stop.shutdown();
    rt_thread.join().unwrap();
    dur
}

fn main() {
    let mib: u64 = std::env::var("RELAY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;
    let rate = |d: Duration| (total as f64 / (1 << 20) as f64) / d.as_secs_f64();
    println!("transfer of {mib} MiB over loopback, best of 3:");
    for (name, f) in [
        ("direct", direct as fn(u64) -> Duration),
        ("std::io::copy forwarder", std_forwarder),
        ("relay, copying", |t| relay(t, false)),
        ("relay, splice(2)", |t| relay(t, true)),
    ] {
        let best = (0..3).map(|_| f(total)).min().unwrap();
        println!("  {name:<24} {:>8.0} MiB/s  ({best:.2?})", rate(best));
    }
}
