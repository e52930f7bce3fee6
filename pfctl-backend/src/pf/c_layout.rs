//! The Rust mirrors checked against a C compiler's `offsetof`/`sizeof`.
//!
//! A generated C program prints, for every mirrored member, its offset and size; the
//! test compares them with `offset_of!`/`size_of_val` of the Rust field. On OpenBSD the
//! program includes the system's `<net/pfvar.h>` (picking the layout by `sizeof(struct
//! pf_rule)`), which checks our mirror against the real header on a real target. Elsewhere
//! it includes `testdata/pfvar_replica.h`, the same structures written from the spec
//! with natural C types and no explicit padding, so the C compiler — not our hand-placed
//! `_pad` fields — decides the padding.

use std::mem::{offset_of, size_of, size_of_val};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::abi::*;

/// One member: the C struct tag, the C member designator, and the Rust offset and size.
struct Field {
    ctype: &'static str,
    cmember: &'static str,
    off: usize,
    size: usize,
}

macro_rules! fields {
    ($out:ident, $ctype:literal, $rt:ty, { $($rf:ident => $cf:literal),* $(,)? }) => {{
        let z = <$rt as Pod>::zeroed();
        $(
            $out.push(Field { ctype: $ctype, cmember: $cf, off: offset_of!($rt, $rf), size: size_of_val(&z.$rf) });
        )*
    }};
}

/// Every mirrored member except padding, and every structure's size, for `layout`.
fn rust_side(layout: Layout) -> (Vec<Field>, Vec<(&'static str, usize)>) {
    let mut f = Vec::new();
    fields!(f, "pf_addr_wrap", PfAddrWrap, {
        addr => "v.a.addr", mask => "v.a.mask", p => "p", type_ => "type", iflags => "iflags",
    });
    fields!(f, "pf_rule_addr", PfRuleAddr, {
        addr => "addr", port => "port", neg => "neg", port_op => "port_op", weight => "weight",
    });
    fields!(f, "pf_pool", PfPool, {
        addr => "addr", key => "key", counter => "counter", ifname => "ifname", kif => "kif",
        tblidx => "tblidx", states => "states", curweight => "curweight", weight => "weight",
        proxy_port => "proxy_port", port_op => "port_op", opts => "opts",
    });
    fields!(f, "pf_rule", PfRuleCommon, {
        src => "src", dst => "dst", skip => "skip", label => "label", ifname => "ifname",
        rcv_ifname => "rcv_ifname", qname => "qname", pqname => "pqname", tagname => "tagname",
        match_tagname => "match_tagname", overload_tblname => "overload_tblname",
        entries => "entries", nat => "nat", rdr => "rdr", route => "route",
        pktrate => "pktrate", evaluations => "evaluations", packets => "packets",
        bytes => "bytes", kif => "kif", rcv_kif => "rcv_kif", anchor => "anchor",
        overload_tbl => "overload_tbl", os_fingerprint => "os_fingerprint",
        rtableid => "rtableid", onrdomain => "onrdomain", timeout => "timeout",
        states_cur => "states_cur", states_tot => "states_tot", max_states => "max_states",
        src_nodes => "src_nodes", max_src_nodes => "max_src_nodes",
        max_src_states => "max_src_states", max_src_conn => "max_src_conn",
        max_src_conn_rate => "max_src_conn_rate", qid => "qid", pqid => "pqid",
        rt_listid => "rt_listid", nr => "nr", prob => "prob", cuid => "cuid", cpid => "cpid",
        return_icmp => "return_icmp", return_icmp6 => "return_icmp6", max_mss => "max_mss",
        tag => "tag", match_tag => "match_tag", scrub_flags => "scrub_flags", delay => "delay",
        uid => "uid", gid => "gid", rule_flag => "rule_flag", action => "action",
        direction => "direction", log => "log", logif => "logif", quick => "quick",
        ifnot => "ifnot", match_tag_not => "match_tag_not", keep_state => "keep_state",
        af => "af", proto => "proto", type_ => "type", code => "code", flags => "flags",
        flagset => "flagset", min_ttl => "min_ttl", allow_opts => "allow_opts", rt => "rt",
        return_ttl => "return_ttl", tos => "tos", set_tos => "set_tos",
        anchor_relative => "anchor_relative", anchor_wildcard => "anchor_wildcard",
        flush => "flush", prio => "prio", set_prio => "set_prio", naf => "naf",
        rcvifnot => "rcvifnot",
    });
    match layout {
        Layout::V1543 => {
            fields!(f, "pf_rule", PfRule1543, { divert => "divert", exptime => "exptime" });
            fields!(f, "pfioc_rule", PfiocRule<PfRule1543>, {
                action => "action", ticket => "ticket", nr => "nr", anchor => "anchor",
                anchor_call => "anchor_call", rule => "rule",
            });
        }
        Layout::V1548 => {
            fields!(f, "pf_rule", PfRule1548, {
                statelim => "statelim", sourcelim => "sourcelim", divert => "divert", exptime => "exptime",
            });
            fields!(f, "pfioc_rule", PfiocRule<PfRule1548>, {
                action => "action", ticket => "ticket", nr => "nr", anchor => "anchor",
                anchor_call => "anchor_call", rule => "rule",
            });
        }
    }
    fields!(f, "pfioc_trans", PfiocTrans, { size => "size", esize => "esize", array => "array" });
    fields!(f, "pfioc_trans_e", PfiocTransE, { type_ => "type", anchor => "anchor", ticket => "ticket" });
    fields!(f, "pfioc_ruleset", PfiocRuleset, { nr => "nr", path => "path", name => "name" });
    fields!(f, "pf_state_cmp", PfStateCmp, {
        id => "id", creatorid => "creatorid", direction => "direction", pad => "pad",
    });
    fields!(f, "pfioc_state_kill", PfiocStateKill, {
        psk_pfcmp => "psk_pfcmp", psk_af => "psk_af", psk_proto => "psk_proto",
        psk_src => "psk_src", psk_dst => "psk_dst", psk_ifname => "psk_ifname",
        psk_label => "psk_label", psk_killed => "psk_killed", psk_rdomain => "psk_rdomain",
    });
    fields!(f, "pf_status", PfStatus, {
        since => "since", running => "running", ifname => "ifname", pf_chksum => "pf_chksum",
    });
    let sizes = vec![
        ("pf_addr", size_of::<PfAddr>()),
        ("pf_addr_wrap", size_of::<PfAddrWrap>()),
        ("pf_rule_addr", size_of::<PfRuleAddr>()),
        ("pf_pool", size_of::<PfPool>()),
        ("pf_rule", layout.rule_size()),
        ("pfioc_rule", layout.pfioc_rule_size()),
        ("pfioc_trans", size_of::<PfiocTrans>()),
        ("pfioc_trans_e", size_of::<PfiocTransE>()),
        ("pfioc_ruleset", size_of::<PfiocRuleset>()),
        ("pf_status", size_of::<PfStatus>()),
        ("pf_state_cmp", size_of::<PfStateCmp>()),
        ("pfioc_state_kill", size_of::<PfiocStateKill>()),
    ];
    (f, sizes)
}

/// A scratch directory removed on drop, also when an assertion fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pf-c-layout-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles and runs `prelude` + a `main` printing `lines`; returns its stdout.
fn run_c(dir: &Path, name: &str, prelude: &str, defines: &[&str], lines: &[String]) -> String {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    let mut text =
        format!("{prelude}\n#include <stdio.h>\n#include <stddef.h>\nint main(void) {{\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("return 0;\n}\n");
    std::fs::write(&src, text).expect("write C source");
    let out = Command::new("cc")
        .args(defines)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc must be installed to check the pf layouts");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin)
        .output()
        .expect("run compiled layout program");
    assert!(run.status.success(), "layout program failed");
    String::from_utf8(run.stdout).expect("ASCII output")
}

/// Compares every Rust field and size of `layout` with what the C compiler says.
fn compare(dir: &Path, prelude: &str, defines: &[&str], layout: Layout) {
    let (fields, sizes) = rust_side(layout);
    let mut lines = Vec::new();
    for f in &fields {
        lines.push(format!(
            "printf(\"{t}.{m} %zu %zu\\n\", offsetof(struct {t}, {m}), sizeof(((struct {t} *)0)->{m}));",
            t = f.ctype,
            m = f.cmember
        ));
    }
    for (t, _) in &sizes {
        lines.push(format!("printf(\"{t} %zu\\n\", sizeof(struct {t}));"));
    }
    let out = run_c(dir, "layout", prelude, defines, &lines);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got.len(),
        fields.len() + sizes.len(),
        "one line per member and struct"
    );
    let mut wrong = Vec::new();
    for (f, line) in fields.iter().zip(&got) {
        let want = format!("{}.{} {} {}", f.ctype, f.cmember, f.off, f.size);
        if *line != want {
            wrong.push(format!("C says '{line}', Rust '{want}'"));
        }
    }
    for ((t, size), line) in sizes.iter().zip(&got[fields.len()..]) {
        let want = format!("{t} {size}");
        if *line != want {
            wrong.push(format!("C says '{line}', Rust '{want}'"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{layout}: {} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[cfg(not(target_os = "openbsd"))]
#[test]
fn mirrors_match_a_c_compiler_on_the_spec_replica() {
    let scratch = Scratch::new("replica");
    let header = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/pf/testdata/pfvar_replica.h"
    );
    let prelude = format!("#include \"{header}\"");
    compare(&scratch.0, &prelude, &[], Layout::V1543);
    compare(&scratch.0, &prelude, &["-DPF_1548"], Layout::V1548);
}

/// The check against the running system's `<net/pfvar.h>`. Fails if the
/// header's `struct pf_rule` is neither known size: a new layout to add.
#[cfg(target_os = "openbsd")]
#[test]
fn mirrors_match_the_system_pfvar_h() {
    let scratch = Scratch::new("system");
    let prelude = "#include <sys/types.h>\n#include <sys/ioctl.h>\n#include <sys/socket.h>\n\
                   #include <net/if.h>\n#include <netinet/in.h>\n#include <net/pfvar.h>";
    let size = run_c(
        &scratch.0,
        "size",
        prelude,
        &[],
        &["printf(\"%zu\\n\", sizeof(struct pf_rule));".to_string()],
    );
    let size: usize = size.trim().parse().expect("a number");
    let layout = Layout::ALL
        .into_iter()
        .find(|l| l.rule_size() == size)
        .unwrap_or_else(|| {
            panic!("this system's struct pf_rule has {size} bytes: no mirrored layout")
        });
    compare(&scratch.0, prelude, &[], layout);
}
