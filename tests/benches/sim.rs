//! Simulated sessions per second: `cargo bench -p ftp-proxy-tests --bench sim`.
//!
//! Every invariant check and oracle stays on, so this is the rate the soak runs at
//! (one core, release build). It sets no target; it tells how many seeds fit in a
//! given test budget.

use std::time::Instant;

use ftp_proxy_tests::sim::run_seed;

fn main() {
    let seeds: u64 = std::env::var("FTP_SIM_BENCH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let start = Instant::now();
    let (mut sessions, mut events) = (0u64, 0u64);
    for seed in 0..seeds {
        let r = run_seed(seed).unwrap_or_else(|f| panic!("{f}"));
        sessions += u64::from(r.sessions);
        events += r.events;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds in {secs:.2} s: {:.0} seeds/s, {:.0} simulated sessions/s, {:.0} events/s",
        seeds as f64 / secs,
        sessions as f64 / secs,
        events as f64 / secs
    );
}
