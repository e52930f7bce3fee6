//! The RFC 4217 decisions (`core/src/ftps.rs`) under every policy, fed arbitrary
//! line sequences: no input panics, TLS starts at most once and only on `AUTH`,
//! data is never protected before the control connection is, and under
//! `--tls-required` no login or transfer passes unprotected.

#![no_main]

use ftp_proxy_core::ftps::{Answer, ClientTls, FtpsState, Prot, ServerTls, TlsPolicy};
use ftp_proxy_core::Security;
use libfuzzer_sys::fuzz_target;

fn word_is(line: &[u8], word: &[u8]) -> bool {
    let l = ftp_proxy_core::internals::ftp::command_start(line);
    let end = l
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(l.len());
    l[..end].eq_ignore_ascii_case(word)
}

fuzz_target!(|input: (u8, Vec<Vec<u8>>)| {
    let (mode, lines) = input;
    let policy = TlsPolicy {
        client: match mode % 3 {
            0 => ClientTls::Off,
            1 => ClientTls::Explicit,
            _ => ClientTls::Implicit,
        },
        required: mode & 4 != 0,
        server: match (mode >> 3) % 3 {
            0 => ServerTls::Off,
            1 => ServerTls::Explicit,
            _ => ServerTls::Implicit,
        },
    };
    let mut s = FtpsState::new(&policy);
    let mut started = 0;
    for line in lines.iter().take(64) {
        let was_protected = s.control_protected();
        let answer = s.command(&policy, line);
        if policy.client == ClientTls::Off {
            assert_eq!(answer, Answer::Pass);
            continue;
        }
        if let Answer::ReplyThenStartTls(r) = answer {
            started += 1;
            assert!(!was_protected && word_is(line, b"AUTH") && r.starts_with("234 "));
        }
        if s.prot() == Prot::Private {
            assert!(s.control_protected());
            assert_eq!(s.client_data_security(), Security::Tls);
        }
        if policy.required && answer == Answer::Pass {
            if word_is(line, b"USER") || word_is(line, b"PASS") {
                assert!(s.control_protected());
            }
            if word_is(line, b"RETR") || word_is(line, b"STOR") {
                assert_eq!(s.prot(), Prot::Private);
            }
        }
    }
    assert!(started <= 1);
    assert!(policy.client != ClientTls::Implicit || started == 0);
});
