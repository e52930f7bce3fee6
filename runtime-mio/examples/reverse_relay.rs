//! A minimal reverse-mode proxy with the userspace relay, for manual runs and the
//! benchmark: `reverse_relay LISTEN SERVER [MAX_SESSIONS]`, e.g.
//! `RUST_LOG=debug cargo run -p ftp-proxy-runtime --example reverse_relay 127.0.0.1:2121 127.0.0.1:21`.
//! Ends on SIGHUP/SIGINT/SIGTERM like the daemon. With `REVERSE_RELAY_KEEP_RLIMIT=1`
//! the descriptor limit is left as inherited (the EMFILE test runs it under a tiny one).

use std::net::SocketAddr;

use ftp_proxy_core::{Config, Proxy};
use ftp_proxy_runtime::{listen, raise_nofile_limit, run, DataPath, Divert, Options, OsRandom};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: reverse_relay LISTEN SERVER [MAX_SESSIONS]");
        std::process::exit(2);
    }
    let listen_addr: SocketAddr = args[1].parse().expect("LISTEN address:port");
    let server: SocketAddr = args[2].parse().expect("SERVER address:port");
    let max_sessions: u32 = args
        .get(3)
        .map_or(100, |m| m.parse().expect("MAX_SESSIONS"));
    let opts = Options {
        listen: listen_addr,
        transparent: false,
        divert: Divert::Getsockname,
        max_sessions,
        relay: true,
    };
    let fail = |msg: String| -> ! {
        eprintln!("reverse_relay: {msg}");
        std::process::exit(1)
    };
    if std::env::var_os("REVERSE_RELAY_KEEP_RLIMIT").is_none() {
        raise_nofile_limit(max_sessions, true).unwrap_or_else(|e| fail(e.to_string()));
    }
    let listener = listen(&opts).unwrap_or_else(|e| fail(e.to_string()));
    let cfg = Config {
        fixed_server: Some(server),
        ipv6: server.is_ipv6(),
        max_sessions,
        pid: std::process::id(),
        ..Config::default()
    };
    let proxy = Proxy::new(cfg, Box::new(OsRandom::new())).unwrap_or_else(|e| fail(e.to_string()));
    log::info!(
        "listening on {} port {}",
        listen_addr.ip(),
        listener.local_addr().map_or(0, |a| a.port())
    );
    run(listener, &opts, proxy, DataPath::relay()).unwrap_or_else(|e| fail(e.to_string()));
}
