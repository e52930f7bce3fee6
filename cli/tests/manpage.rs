//! The manual page, `docs/ftp-proxy.8`, against the binary: every option that
//! `ftp-proxy --help` lists must have its own entry in the page's OPTIONS list, and
//! the page must be clean for `mandoc -T lint` and render with `man -l`. And
//! `--version`, which the page documents, prints the version.
//!
//! Options are added in parallel to `cli/src/args.rs`; this test is what catches a
//! page that was not updated, and its message names the missing option.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ftp-proxy");

fn page_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/ftp-proxy.8")
}

fn page() -> String {
    std::fs::read_to_string(page_path()).expect("read docs/ftp-proxy.8")
}

fn help() -> String {
    let o = Command::new(BIN)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run ftp-proxy --help");
    assert!(o.status.success(), "--help failed: {o:?}");
    String::from_utf8(o.stdout).expect("--help is UTF-8")
}

/// The options `--help` lists: every `-x` and `--long` at the start of an entry of
/// its option list (`  -6, --ipv6   text`, `  --backend   text`).
fn help_options(help: &str) -> BTreeSet<String> {
    let list = help
        .split_once("\nOptions:\n")
        .map(|(_, l)| l)
        .expect("--help has an Options: list");
    let mut out = BTreeSet::new();
    for line in list.lines() {
        // Entries start with two spaces and a dash; wrapped descriptions are indented further.
        let Some(entry) = line.strip_prefix("  ").filter(|l| l.starts_with('-')) else {
            continue;
        };
        // The names come first (`-P, --server-port`), then the description, which
        // may start after a single space.
        let names = entry
            .split_whitespace()
            .map(|w| w.trim_end_matches(','))
            .take_while(|w| w.starts_with('-'));
        out.extend(names.map(str::to_owned));
    }
    out
}

/// The options the page documents: the `Fl` arguments of the `.It` lines in its
/// OPTIONS section (`.It Fl 6 , Fl \-ipv6`, `.It Fl a Ar addr , Fl \-source\-address Ar addr`).
fn page_options(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_options = false;
    for line in page.lines() {
        if let Some(section) = line.strip_prefix(".Sh ") {
            in_options = section.trim() == "OPTIONS";
            continue;
        }
        let Some(item) = line.strip_prefix(".It ").filter(|_| in_options) else {
            continue;
        };
        let words: Vec<&str> = item.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0] == "Fl" {
                let name = pair[1].replace("\\-", "-");
                out.insert(format!("-{name}"));
            }
        }
    }
    out
}

/// The options of `help` that `page` lacks.
fn missing(help: &str, page: &str) -> Vec<String> {
    let documented = page_options(page);
    help_options(help)
        .into_iter()
        .filter(|o| !documented.contains(o))
        .collect()
}

#[test]
fn every_option_of_help_is_in_the_manual_page() {
    let help = help();
    let options = help_options(&help);
    // The parser below must see the whole list, or the comparison proves nothing.
    for o in [
        "-6",
        "--ipv6",
        "-t",
        "--backend",
        "--chroot",
        "--help",
        "--version",
    ] {
        assert!(options.contains(o), "{o} not found in --help:\n{help}");
    }
    let missing = missing(&help, &page());
    assert!(
        missing.is_empty(),
        "docs/ftp-proxy.8 has no OPTIONS entry (.It Fl ...) for {}: add it to the page",
        missing.join(", ")
    );
}

#[test]
fn version_prints_the_name_and_the_package_version() {
    let o = Command::new(BIN)
        .args(["-d", "--version"])
        .stdin(Stdio::null())
        .output()
        .expect("run ftp-proxy --version");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("ftp-proxy {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(o.stderr.is_empty(), "{o:?}");
}

#[test]
fn a_missing_option_is_named() {
    let help = help();
    let without_divert: String = page()
        .lines()
        .filter(|l| !l.starts_with(".It Fl \\-divert"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(missing(&help, &without_divert), vec!["--divert".to_owned()]);
}

#[test]
fn manual_page_is_lint_clean() {
    // Warnings and worse; the STYLE level also reports cross-references to pages
    // this machine does not have installed (pf.conf(5) on Linux).
    let o = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning"])
        .arg(page_path())
        .stdin(Stdio::null())
        .output()
        .expect("mandoc not found (Debian package mandoc)");
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "mandoc -T lint:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn manual_page_renders_with_man() {
    let o = Command::new("man")
        .arg("-l")
        .arg(page_path())
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .stdin(Stdio::null())
        .output()
        .expect("man not found (Debian package man-db)");
    assert!(o.status.success(), "man -l: {o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "SIGNALS",
        "FILES",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(
            text.contains(want),
            "{want} missing from the rendered page:\n{text}"
        );
    }
    assert!(text.contains("--backend"), "{text}");
}
