//! `unsafe` lives in one `sys` module per crate, as the crate docs say: every other
//! source file of the daemon, the runtime and the backends is free of it, and each
//! crate root denies `unsafe_code`, so a new block elsewhere fails to compile.

use std::fs;
use std::path::{Path, PathBuf};

/// The crates, their root file and the one module that may hold `unsafe`.
const CRATES: &[(&str, &str, &str)] = &[
    ("cli", "src/main.rs", "src/sys.rs"),
    ("runtime-mio", "src/lib.rs", "src/sys.rs"),
    ("pfctl-backend", "src/lib.rs", "src/sys.rs"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli has a parent")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of code (not comments) that use the `unsafe` keyword.
fn unsafe_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| {
            let code = l.split("//").next().unwrap_or("");
            [
                "unsafe {",
                "unsafe fn",
                "unsafe impl",
                "unsafe trait",
                "unsafe extern",
            ]
            .iter()
            .any(|k| code.contains(k))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn unsafe_only_in_sys_modules() {
    let root = workspace();
    let mut offenders = Vec::new();
    for (krate, _, allowed) in CRATES {
        let dir = root.join(krate);
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        assert!(!files.is_empty(), "no sources in {krate}");
        for f in files {
            if f == dir.join(allowed) {
                continue;
            }
            for l in unsafe_lines(&fs::read_to_string(&f).expect("read")) {
                offenders.push(format!("{}: {}", f.display(), l.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe outside sys:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn crate_roots_deny_unsafe_and_sys_allows_it() {
    let root = workspace();
    for (krate, lib, allowed) in CRATES {
        let text = fs::read_to_string(root.join(krate).join(lib)).expect("read root");
        assert!(
            text.contains("#![deny(unsafe_code)]"),
            "{krate}/{lib} does not deny unsafe_code"
        );
        let sys = fs::read_to_string(root.join(krate).join(allowed)).expect("read sys");
        assert!(sys.contains("#![allow(unsafe_code)]"), "{krate}/{allowed}");
        // Every block in the allowed module says why it is sound.
        let blocks = sys.matches("unsafe {").count() + sys.matches("unsafe impl").count();
        let reasons = sys.matches("SAFETY").count();
        assert!(
            reasons >= 1 && blocks > 0,
            "{krate}/{allowed}: {blocks} unsafe, {reasons} SAFETY comments"
        );
    }
}

#[test]
fn the_scan_finds_unsafe_code() {
    // The scan itself must see what it looks for, or the test above proves nothing.
    assert_eq!(
        unsafe_lines("    let x = unsafe { f() };\n// unsafe { }\n").len(),
        1
    );
    assert_eq!(unsafe_lines("unsafe impl Pod for X {}").len(), 1);
    assert!(unsafe_lines("/// All `unsafe` is in sys.").is_empty());
}
