//! The `--route-file` table: which server a user name reaches in reverse mode.
//!
//! One mapping a line, `PATTERN HOST[:PORT]` separated by blanks; `#` starts a
//! comment, blank lines are skipped. A PATTERN is
//!
//! * an exact user name (`alice`), compared case-sensitively, as servers do;
//! * a prefix ending in `*` (`dev-*`): every name starting with `dev-`;
//! * `*` alone: the default, used when nothing else matches.
//!
//! An exact name wins over every prefix, the longest prefix over shorter ones,
//! and the default comes last. HOST is a name (resolved by the driver), an IPv4
//! literal or an IPv6 literal in brackets; PORT is 21 unless given. A name or
//! pattern given twice is an error, as is any malformed line: the error names
//! the file and the line, and a reload that fails keeps the table in force.

use std::collections::BTreeMap;
use std::fmt;

use super::target::{parse_host, Host};

/// Where one pattern leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The server.
    pub host: Host,
    /// Its port.
    pub port: u16,
}

/// A parsed route file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    exact: BTreeMap<String, Route>,
    /// Prefixes, longest first.
    prefixes: Vec<(String, Route)>,
    default: Option<Route>,
}

/// A malformed line of a route file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// The file, as given on the command line.
    pub file: String,
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for RouteError {}

/// At most this many lines in a route file.
pub const MAX_ROUTES: usize = 100_000;

impl RouteTable {
    /// Parses the text of the route file named `file` (the name is for errors).
    pub fn parse(file: &str, text: &str) -> Result<RouteTable, RouteError> {
        let mut t = RouteTable::default();
        let mut seen_prefix = std::collections::BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| RouteError {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            if i >= MAX_ROUTES {
                return Err(err(format!("more than {MAX_ROUTES} lines")));
            }
            let line = raw.split('#').next().unwrap_or("");
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            let (pattern, dest) = match words[..] {
                [] => continue,
                [p, d] => (p, d),
                [_] => return Err(err("a pattern without a destination".into())),
                _ => return Err(err("more than two fields (PATTERN HOST[:PORT])".into())),
            };
            if pattern.bytes().any(|b| b.is_ascii_control()) {
                return Err(err("control character in the pattern".into()));
            }
            let route = parse_dest(dest).map_err(|m| err(format!("{dest:?}: {m}")))?;
            let dup = if pattern == "*" {
                t.default.replace(route).is_some()
            } else if let Some(prefix) = pattern.strip_suffix('*') {
                if prefix.contains('*') {
                    return Err(err(format!("{pattern:?}: '*' only at the end")));
                }
                t.prefixes.push((prefix.to_owned(), route));
                !seen_prefix.insert(prefix.to_owned())
            } else if pattern.contains('*') {
                return Err(err(format!("{pattern:?}: '*' only at the end")));
            } else {
                t.exact.insert(pattern.to_owned(), route).is_some()
            };
            if dup {
                return Err(err(format!("{pattern:?} given twice")));
            }
        }
        t.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(t)
    }

    /// The route for `user`, if any pattern or the default matches.
    pub fn lookup(&self, user: &str) -> Option<&Route> {
        self.exact
            .get(user)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| user.starts_with(p.as_str()))
                    .map(|(_, r)| r)
            })
            .or(self.default.as_ref())
    }

    /// How many patterns (the default included) the table holds.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len() + usize::from(self.default.is_some())
    }

    /// Whether the table holds no pattern at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_dest(d: &str) -> Result<Route, &'static str> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (lit, after) = rest.split_once(']').ok_or("unterminated [")?;
        let ip: std::net::Ipv6Addr = lit.parse().map_err(|_| "bad IPv6 literal")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ]")?),
        };
        (Host::Ip(ip.into()), port)
    } else {
        let (h, p) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        (parse_host(h).map_err(|_| "bad host")?, p)
    };
    let port = match port {
        None => 21,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("bad port")?,
    };
    Ok(Route { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order() {
        let t = RouteTable::parse(
            "routes",
            "# users and their servers\n\
             alice   127.0.0.2\n\
             dev-*   127.0.0.3:2121   # the developers\n\
             dev-ops-* ftp.example.org\n\
             \n\
             *       [::1]:2100\n",
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        let s = |u: &str| t.lookup(u).map(|r| format!("{}:{}", r.host, r.port));
        assert_eq!(s("alice").as_deref(), Some("127.0.0.2:21"));
        assert_eq!(s("Alice").as_deref(), Some("[::1]:2100"));
        assert_eq!(s("dev-joe").as_deref(), Some("127.0.0.3:2121"));
        assert_eq!(s("dev-ops-kim").as_deref(), Some("ftp.example.org:21"));
        assert_eq!(s("bob").as_deref(), Some("[::1]:2100"));
        let no_default = RouteTable::parse("r", "alice 127.0.0.2\n").unwrap();
        assert_eq!(no_default.lookup("bob"), None);
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, line) in [
            ("alice 127.0.0.2\nbob\n", 2),
            ("alice 127.0.0.2 21\n", 1),
            ("\n\nalice 127.0.0.2:0\n", 3),
            ("alice [::1\n", 1),
            ("a*b 127.0.0.1\n", 1),
            ("*a* 127.0.0.1\n", 1),
            ("alice 127.0.0.2\nalice 127.0.0.3\n", 2),
            ("* 127.0.0.2\n* 127.0.0.3\n", 2),
            ("d* h\nd* h\n", 2),
            ("alice bad/host\n", 1),
        ] {
            let e = RouteTable::parse("/etc/ftp-proxy.routes", text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("/etc/ftp-proxy.routes:{line}: ")));
        }
    }
}
