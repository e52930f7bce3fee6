//! Logging: standard error with `-d`, syslog otherwise, filtered by `-D`.
//!
//! The original filters by syslog priority (`-D 0..7`, default 5 = LOG_NOTICE). The
//! `log` crate has five levels, so the priorities map onto them as follows
//! (documented in docs/cli.md):
//!
//! | `-D`  | emitted `log` levels       | syslog priority used   |
//! |-------|----------------------------|------------------------|
//! | 0-3   | error                      | error → LOG_ERR        |
//! | 4-5   | error, warn                | warn → LOG_NOTICE      |
//! | 6     | error, warn, info          | info → LOG_INFO        |
//! | 7     | everything                 | debug, trace → LOG_DEBUG |
//!
//! The crates log the original's NOTICE messages (`listening on ...`, `server timeout`)
//! at warn level, so the default `-D 5` shows exactly what the original shows.

use std::ffi::CString;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The `log` filter for a `-D` level.
pub fn level_filter(debug_level: u8) -> LevelFilter {
    match debug_level {
        0..=3 => LevelFilter::Error,
        4 | 5 => LevelFilter::Warn,
        6 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    }
}

/// The syslog priority a `log` level is sent with.
pub fn syslog_priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_NOTICE,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

/// `-d`: plain messages on standard error, one per line, like the original's
/// foreground mode (no timestamp, no level, no program name). `rust_log`, the value
/// of `RUST_LOG` if set, replaces the `-D` filter (module-level filters included).
pub fn init_stderr(debug_level: u8, rust_log: Option<&str>) -> Result<(), log::SetLoggerError> {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level_filter(debug_level))
        .target(env_logger::Target::Stderr)
        .format(|buf, record| writeln!(buf, "{}", record.args()));
    if let Some(spec) = rust_log {
        builder.parse_filters(spec);
    }
    builder.try_init()
}

/// Daemon mode: `openlog("ftp-proxy", LOG_PID | LOG_NDELAY, LOG_DAEMON)` and route
/// every record through `syslog(3)`.
///
/// `LOG_NDELAY` connects to the log socket now, before the chroot makes `/dev/log`
/// unreachable; the descriptor survives the chroot and the fork, and glibc puts the
/// current (child's) pid into each message.
pub fn init_syslog(debug_level: u8) -> Result<(), log::SetLoggerError> {
    // SAFETY: the ident is a static C string, as openlog keeps the pointer.
    unsafe {
        libc::openlog(
            c"ftp-proxy".as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    };
    let level = level_filter(debug_level);
    log::set_boxed_logger(Box::new(Syslog { level }))?;
    log::set_max_level(level);
    Ok(())
}

/// A `log::Log` over `syslog(3)`.
struct Syslog {
    level: LevelFilter,
}

impl Log for Syslog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string().replace('\0', "\\0");
        let Ok(msg) = CString::new(text) else { return };
        // SAFETY: both strings are NUL-terminated; "%s" keeps the message from being
        // read as a format string.
        unsafe {
            libc::syslog(
                syslog_priority(record.level()),
                c"%s".as_ptr(),
                msg.as_ptr(),
            )
        };
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_levels_map_like_syslog_priorities() {
        for d in 0..=3 {
            assert_eq!(level_filter(d), LevelFilter::Error, "-D {d}");
        }
        assert_eq!(level_filter(4), LevelFilter::Warn);
        assert_eq!(level_filter(5), LevelFilter::Warn);
        assert_eq!(level_filter(6), LevelFilter::Info);
        assert_eq!(level_filter(7), LevelFilter::Debug);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(Level::Error), libc::LOG_ERR);
        assert_eq!(syslog_priority(Level::Warn), libc::LOG_NOTICE);
        assert_eq!(syslog_priority(Level::Info), libc::LOG_INFO);
        assert_eq!(syslog_priority(Level::Debug), libc::LOG_DEBUG);
        assert_eq!(syslog_priority(Level::Trace), libc::LOG_DEBUG);
    }

    #[test]
    fn default_level_shows_notice_but_not_info() {
        let f = level_filter(5);
        assert!(Level::Warn <= f);
        assert!(Level::Info > f);
    }
}
