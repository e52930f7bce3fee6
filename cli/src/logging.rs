//! Logging: standard error with `-d`, syslog otherwise, filtered by `-D`.
//!
//! The original filters by syslog priority: `-D n` shows the messages of priority
//! `n` and the more important ones (0 EMERG ... 7 DEBUG, default 5 NOTICE). The
//! `log` crate has five levels and no CRIT or NOTICE, so every record carries a
//! [`Priority`]:
//!
//! * by default from its level: error → ERR, warn → NOTICE, info → INFO,
//!   debug and trace → DEBUG (the crates log the original's NOTICE messages,
//!   `listening on` and `server timeout`, at warn);
//! * or explicitly, with the key-value `priority` naming a syslog level, for the
//!   original's CRIT messages: `error!(priority = "crit"; "{id} bad port in ...")`.
//!
//! Both loggers filter on that priority alone, so `-D 2` shows the CRIT messages
//! and hides ERR ones, and `-D 4` hides NOTICE, as the original does; syslog gets
//! the same priority. The `log` max level only pre-filters (error for `-D 0..=3`).
//!
//! With `-d` under systemd, standard error is the journal (`JOURNAL_STREAM` names
//! it); each line then starts with `<n>`, the priority, which journald reads
//! (sd-daemon(3)), so `journalctl -p` works as syslog priorities do.

use std::ffi::CString;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// A syslog priority, most important first: the order and numbers of `-D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Priority {
    /// 0, LOG_EMERG.
    Emerg,
    /// 1, LOG_ALERT.
    Alert,
    /// 2, LOG_CRIT.
    Crit,
    /// 3, LOG_ERR.
    Err,
    /// 4, LOG_WARNING.
    Warning,
    /// 5, LOG_NOTICE.
    Notice,
    /// 6, LOG_INFO.
    Info,
    /// 7, LOG_DEBUG.
    Debug,
}

/// The key-value that sets a record's priority explicitly.
pub(crate) const PRIORITY_KEY: &str = "priority";

impl Priority {
    const ALL: [Priority; 8] = [
        Priority::Emerg,
        Priority::Alert,
        Priority::Crit,
        Priority::Err,
        Priority::Warning,
        Priority::Notice,
        Priority::Info,
        Priority::Debug,
    ];

    /// The priority of a `-D` level (0..=7; `args` has checked the range, larger
    /// values mean DEBUG).
    pub(crate) fn from_debug_level(level: u8) -> Priority {
        Priority::ALL[usize::from(level.min(7))]
    }

    /// The default priority of a record of `level` without a `priority` key.
    pub(crate) fn of_level(level: Level) -> Priority {
        match level {
            Level::Error => Priority::Err,
            Level::Warn => Priority::Notice,
            Level::Info => Priority::Info,
            Level::Debug | Level::Trace => Priority::Debug,
        }
    }

    /// The record's priority: its `priority` key-value if that names a syslog
    /// level, else the default of its level.
    pub(crate) fn of(record: &Record<'_>) -> Priority {
        record
            .key_values()
            .get(log::kv::Key::from_str(PRIORITY_KEY))
            .and_then(|v| match v.to_borrowed_str() {
                Some(s) => s.parse().ok(),
                None => v.to_string().parse().ok(),
            })
            .unwrap_or_else(|| Priority::of_level(record.level()))
    }

    /// The `LOG_*` value for syslog(3) (and the journal's `<n>` prefix).
    pub(crate) fn as_syslog(self) -> libc::c_int {
        match self {
            Priority::Emerg => libc::LOG_EMERG,
            Priority::Alert => libc::LOG_ALERT,
            Priority::Crit => libc::LOG_CRIT,
            Priority::Err => libc::LOG_ERR,
            Priority::Warning => libc::LOG_WARNING,
            Priority::Notice => libc::LOG_NOTICE,
            Priority::Info => libc::LOG_INFO,
            Priority::Debug => libc::LOG_DEBUG,
        }
    }

    /// The syslog name, as `priority = "..."` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Priority::Emerg => "emerg",
            Priority::Alert => "alert",
            Priority::Crit => "crit",
            Priority::Err => "err",
            Priority::Warning => "warning",
            Priority::Notice => "notice",
            Priority::Info => "info",
            Priority::Debug => "debug",
        }
    }
}

impl FromStr for Priority {
    type Err = UnknownPriority;
    fn from_str(s: &str) -> Result<Priority, UnknownPriority> {
        Priority::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or(UnknownPriority)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `priority` value that is not a syslog level name; the record then keeps the
/// default priority of its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownPriority;

/// The `log` pre-filter for a `-D` level: the least important level any record
/// shown at that level can have.
pub(crate) fn level_filter(debug_level: u8) -> LevelFilter {
    match Priority::from_debug_level(debug_level) {
        Priority::Emerg | Priority::Alert | Priority::Crit | Priority::Err => LevelFilter::Error,
        // A warn record is NOTICE unless it says `priority = "warning"`.
        Priority::Warning | Priority::Notice => LevelFilter::Warn,
        Priority::Info => LevelFilter::Info,
        Priority::Debug => LevelFilter::Debug,
    }
}

/// Whether `-D debug_level` shows `record`: its priority is at most the level.
pub(crate) fn shows(debug_level: u8, record: &Record<'_>) -> bool {
    Priority::of(record) <= Priority::from_debug_level(debug_level)
}

/// `-d`: plain messages on standard error, one per line, like the original's
/// foreground mode (no timestamp, no level, no program name), each prefixed with
/// `<n>` when standard error is the journal. `rust_log`, the value of `RUST_LOG`
/// if set, replaces the `-D` filter (module-level filters included).
pub(crate) fn init_stderr(
    debug_level: u8,
    rust_log: Option<&str>,
) -> Result<(), log::SetLoggerError> {
    let journal = stderr_is_journal();
    let mut builder = env_logger::Builder::new();
    builder
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| {
            if journal {
                writeln!(
                    buf,
                    "<{}>{}",
                    Priority::of(record).as_syslog(),
                    record.args()
                )
            } else {
                writeln!(buf, "{}", record.args())
            }
        });
    let by_priority = match rust_log {
        Some(spec) => {
            builder.parse_filters(spec);
            None
        }
        None => {
            builder.filter_level(level_filter(debug_level));
            Some(debug_level)
        }
    };
    let inner = builder.build();
    let max = inner.filter();
    log::set_boxed_logger(Box::new(Stderr { inner, by_priority }))?;
    log::set_max_level(max);
    Ok(())
}

/// Whether standard error is the systemd journal: `JOURNAL_STREAM` holds the
/// device and inode of the stream systemd connected (systemd.exec(5)); a child
/// whose stderr was redirected elsewhere inherits the variable but not the stream.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // Compared as decimal text: the integer types of st_dev and st_ino vary by
    // platform, and systemd writes them in decimal.
    match nix::sys::stat::fstat(libc::STDERR_FILENO) {
        Ok(st) => st.st_dev.to_string() == dev && st.st_ino.to_string() == ino,
        Err(_) => false,
    }
}

/// env_logger's writer and `RUST_LOG` filter, behind the priority filter of `-D`.
struct Stderr {
    inner: env_logger::Logger,
    /// `Some(-D)` unless `RUST_LOG` replaced the filter.
    by_priority: Option<u8>,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if let Some(level) = self.by_priority {
            if !shows(level, record) {
                return;
            }
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Daemon mode: `openlog("ftp-proxy", LOG_PID | LOG_NDELAY, LOG_DAEMON)` and route
/// every record through `syslog(3)` with its priority.
///
/// `LOG_NDELAY` connects to the log socket now, before the chroot makes `/dev/log`
/// unreachable; the descriptor survives the chroot and the fork, and glibc puts the
/// current (child's) pid into each message.
pub(crate) fn init_syslog(debug_level: u8) -> Result<(), log::SetLoggerError> {
    crate::sys::openlog(
        c"ftp-proxy",
        libc::LOG_PID | libc::LOG_NDELAY,
        libc::LOG_DAEMON,
    );
    let level = level_filter(debug_level);
    log::set_boxed_logger(Box::new(Syslog { debug_level, level }))?;
    log::set_max_level(level);
    Ok(())
}

/// A `log::Log` over `syslog(3)`.
struct Syslog {
    /// `-D`.
    debug_level: u8,
    /// Its pre-filter.
    level: LevelFilter,
}

impl Log for Syslog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) || !shows(self.debug_level, record) {
            return;
        }
        let text = record.args().to_string().replace('\0', "\\0");
        let Ok(msg) = CString::new(text) else { return };
        crate::sys::syslog(Priority::of(record).as_syslog(), &msg);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `f` against a record of `level` with an optional `priority` key.
    fn with_record<R>(level: Level, priority: Option<&str>, f: impl FnOnce(&Record<'_>) -> R) -> R {
        let kvs: Vec<(&str, &str)> = priority.map(|p| (PRIORITY_KEY, p)).into_iter().collect();
        let args = format_args!("message");
        let record = Record::builder()
            .level(level)
            .args(args)
            .key_values(&kvs)
            .build();
        f(&record)
    }

    #[test]
    fn priorities_have_the_syslog_numbers() {
        for (n, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p.as_syslog(), n as libc::c_int, "{p}");
            assert_eq!(Priority::from_debug_level(n as u8), p);
            assert_eq!(p.name().parse::<Priority>(), Ok(p));
        }
        assert_eq!("critical".parse::<Priority>(), Err(UnknownPriority));
    }

    #[test]
    fn a_records_priority_comes_from_its_key_or_its_level() {
        let of = |level, key| with_record(level, key, Priority::of);
        assert_eq!(of(Level::Error, None), Priority::Err);
        assert_eq!(of(Level::Warn, None), Priority::Notice);
        assert_eq!(of(Level::Info, None), Priority::Info);
        assert_eq!(of(Level::Debug, None), Priority::Debug);
        assert_eq!(of(Level::Trace, None), Priority::Debug);
        assert_eq!(of(Level::Error, Some("crit")), Priority::Crit);
        assert_eq!(of(Level::Error, Some("emerg")), Priority::Emerg);
        assert_eq!(of(Level::Warn, Some("warning")), Priority::Warning);
        // An unknown name keeps the level's default.
        assert_eq!(of(Level::Error, Some("fatal")), Priority::Err);
    }

    /// Each `-D` level shows exactly the priorities at or above it: the original's
    /// filter. Before, `-D 0..=2` showed ERR messages and `-D 4` NOTICE ones.
    #[test]
    fn each_debug_level_shows_exactly_the_priorities_at_or_above_it() {
        let records: [(Level, Option<&str>, Priority); 6] = [
            (Level::Error, Some("crit"), Priority::Crit),
            (Level::Error, None, Priority::Err),
            (Level::Warn, Some("warning"), Priority::Warning),
            (Level::Warn, None, Priority::Notice),
            (Level::Info, None, Priority::Info),
            (Level::Debug, None, Priority::Debug),
        ];
        for d in 0..=7u8 {
            for (level, key, prio) in records {
                let shown =
                    with_record(level, key, |r| shows(d, r) && level_filter(d) >= r.level());
                assert_eq!(shown, prio as u8 <= d, "-D {d}, {prio}");
            }
        }
    }

    #[test]
    fn the_level_pre_filter_lets_every_shown_record_through() {
        assert_eq!(level_filter(0), LevelFilter::Error);
        assert_eq!(level_filter(3), LevelFilter::Error);
        assert_eq!(level_filter(4), LevelFilter::Warn);
        assert_eq!(level_filter(5), LevelFilter::Warn);
        assert_eq!(level_filter(6), LevelFilter::Info);
        assert_eq!(level_filter(7), LevelFilter::Debug);
    }
}
