//! What can go wrong while setting up or driving an end-to-end scenario.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// A harness or assertion failure, with enough context to debug it from CI output.
pub enum E2eError {
    /// A program the tests need is not installed (tests fail rather than skip as root).
    MissingTool {
        /// The program looked for in `PATH`.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A program the tests need and .ci/run installs outside the package manager
    /// (vsftpd unpacked beside pure-ftpd, rclone from PyPI) is missing.
    MissingInstall {
        /// What it is, e.g. `vsftpd`.
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// How .ci/run installs it.
        how: &'static str,
    },
    /// An OS call failed.
    Io {
        /// What was being done, e.g. `write /tmp/x/big.bin`.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A program exited unsuccessfully.
    Command {
        /// The command line, shortened.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// Its captured output (stdout then stderr), the tail of it.
        output: String,
    },
    /// Something did not happen within its bound.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// Whatever helps: a log tail, the last reply.
        detail: String,
    },
    /// The scenario ran but an expectation did not hold.
    Check {
        /// What was expected and what was seen.
        what: String,
        /// Supporting evidence: a client transcript or the proxy log tail.
        detail: String,
    },
}

impl E2eError {
    /// An [`E2eError::Io`] with its context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> E2eError {
        let context = context.into();
        move |source| E2eError::Io { context, source }
    }

    /// An [`E2eError::Check`].
    pub fn check(what: impl Into<String>, detail: impl Into<String>) -> E2eError {
        E2eError::Check {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E2eError::MissingTool { tool, package } => {
                write!(
                    f,
                    "required program `{tool}` not found (apt-get install {package}); see .ci/run"
                )
            }
            E2eError::MissingInstall { what, path, how } => {
                write!(
                    f,
                    "required {what} not found at {path} ({how}); see .ci/run"
                )
            }
            E2eError::Io { context, source } => write!(f, "{context}: {source}"),
            E2eError::Command {
                what,
                status,
                output,
            } => {
                write!(f, "`{what}` failed ({status})\n--- output ---\n{output}")
            }
            E2eError::Timeout {
                what,
                waited,
                detail,
            } => {
                write!(
                    f,
                    "timed out after {waited:?} waiting for {what}\n--- detail ---\n{detail}"
                )
            }
            E2eError::Check { what, detail } => {
                write!(f, "check failed: {what}\n--- evidence ---\n{detail}")
            }
        }
    }
}

/// Test functions return `Result<(), E2eError>`; the test runner prints errors with
/// `Debug`, so `Debug` gives the readable `Display` text instead of a struct dump.
impl fmt::Debug for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for E2eError {}

/// Result of every harness call.
pub type Result<T, E = E2eError> = std::result::Result<T, E>;

/// The last `max` bytes of `text`, cut at a char boundary, for error messages.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &text[start..])
}
