//! The `USER name@host[:port]` convention of forward FTP proxies.
//!
//! The client names the server inside its `USER` argument: `name@host`,
//! `name@host:port`, `name@host port` (a space before the port, as some clients
//! send it) and `name@[v6]:port` for IPv6 literals (the bracket form of RFC 3986,
//! section 3.2.2). The user part may itself hold `@` (mail addresses as FTP user
//! names): the host is what follows the *last* `@`.

use std::fmt;

/// The host part of a target: a name the driver must resolve, or a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name (or a name in the hosts file); the driver resolves it.
    Name(String),
    /// An IPv4 or IPv6 literal; no lookup needed.
    Ip(std::net::IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(std::net::IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Where the client asked to go, and the name to log in with there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTarget {
    /// The user name sent to the server in its own `USER` line.
    pub user: String,
    /// The server.
    pub host: Host,
    /// The port, 21 unless given.
    pub port: u16,
}

impl UserTarget {
    /// Whether the user part is `ftp` or `anonymous` (any case), the names `-A`
    /// admits: with `-A` a forward session must still log in anonymously.
    pub fn is_anonymous(&self) -> bool {
        self.user.eq_ignore_ascii_case("ftp") || self.user.eq_ignore_ascii_case("anonymous")
    }
}

/// Why a `USER` argument names no usable target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// No `@` in the argument.
    NoHost,
    /// Nothing before the `@`.
    EmptyUser,
    /// The host part is empty, has characters no host name has, or an
    /// unterminated bracket.
    BadHost,
    /// The port is not a number in 1..=65535.
    BadPort,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::NoHost => "no @host in the user name",
            TargetError::EmptyUser => "empty user name before @",
            TargetError::BadHost => "malformed host after @",
            TargetError::BadPort => "malformed port",
        })
    }
}

impl std::error::Error for TargetError {}

/// The longest host name accepted (RFC 1035, section 2.3.4: 255 octets).
const MAX_HOST: usize = 253;

/// Parses the argument of `USER` (without the command word and line end).
pub fn parse_user_target(arg: &str) -> Result<UserTarget, TargetError> {
    let arg = arg.trim_matches(|c| c == ' ' || c == '\t');
    let (user, rest) = arg.rsplit_once('@').ok_or(TargetError::NoHost)?;
    if user.is_empty() {
        return Err(TargetError::EmptyUser);
    }
    if user.bytes().any(|b| b.is_ascii_control()) {
        return Err(TargetError::EmptyUser);
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (lit, after) = v6.split_once(']').ok_or(TargetError::BadHost)?;
        let ip: std::net::Ipv6Addr = lit.parse().map_err(|_| TargetError::BadHost)?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .or_else(|| p.strip_prefix(' '))
                    .ok_or(TargetError::BadPort)?,
            ),
        };
        (Host::Ip(ip.into()), port)
    } else {
        let (h, p) = match rest.split_once([':', ' ']) {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        (parse_host(h)?, p)
    };
    let port = match port {
        None => 21,
        Some(p) => parse_port(p.trim_start_matches(' '))?,
    };
    Ok(UserTarget {
        user: user.to_owned(),
        host,
        port,
    })
}

fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::BadPort);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::BadPort),
        Ok(n) => Ok(n),
    }
}

/// A host name or IPv4 literal (an IPv6 literal must come in brackets, since its
/// colons would read as a port).
pub(crate) fn parse_host(h: &str) -> Result<Host, TargetError> {
    if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
        return Ok(Host::Ip(ip.into()));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() || name.len() > MAX_HOST || !name.split('.').all(ok_label) {
        return Err(TargetError::BadHost);
    }
    // All-numeric dotted names that are not valid IPv4 (e.g. 1.2.3.999) would be
    // read differently by resolvers (inet_aton): refuse them.
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(TargetError::BadHost);
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(arg: &str) -> (String, String, u16) {
        let t = parse_user_target(arg).unwrap_or_else(|e| panic!("{arg}: {e}"));
        (t.user, t.host.to_string(), t.port)
    }

    #[test]
    fn forms() {
        assert_eq!(
            ok("anonymous@127.0.0.2"),
            ("anonymous".into(), "127.0.0.2".into(), 21)
        );
        assert_eq!(
            ok("bench@127.0.0.1:2121"),
            ("bench".into(), "127.0.0.1".into(), 2121)
        );
        assert_eq!(
            ok("bench@127.0.0.1 2121"),
            ("bench".into(), "127.0.0.1".into(), 2121)
        );
        assert_eq!(ok("u@[::1]:2121"), ("u".into(), "[::1]".into(), 2121));
        assert_eq!(
            ok("u@[2001:db8::1]"),
            ("u".into(), "[2001:db8::1]".into(), 21)
        );
        assert_eq!(
            ok("u@[2001:db8::1] 990"),
            ("u".into(), "[2001:db8::1]".into(), 990)
        );
        assert_eq!(
            ok("me@example.org@ftp.Example.ORG."),
            ("me@example.org".into(), "ftp.example.org".into(), 21)
        );
        assert_eq!(ok("  u@h  "), ("u".into(), "h".into(), 21));
    }

    #[test]
    fn anonymous_only() {
        let a = |arg: &str| parse_user_target(arg).unwrap().is_anonymous();
        assert!(a("anonymous@127.0.0.2"));
        assert!(a("FTP@127.0.0.2:2121"));
        assert!(!a("bench@127.0.0.1"));
        assert!(!a("anonymous@x@127.0.0.2"));
    }

    #[test]
    fn refusals() {
        use TargetError::*;
        for (arg, e) in [
            ("anonymous", NoHost),
            ("@host", EmptyUser),
            ("u@", BadHost),
            ("u@::1", BadHost),
            ("u@[::1", BadHost),
            ("u@[::1]x", BadPort),
            ("u@[1.2.3.4]", BadHost),
            ("u@h:", BadPort),
            ("u@h:0", BadPort),
            ("u@h:65536", BadPort),
            ("u@h:+21", BadPort),
            ("u@h:21 22", BadPort),
            ("u@-h", BadHost),
            ("u@a..b", BadHost),
            ("u@h/x", BadHost),
            ("u@1.2.3.999", BadHost),
            ("u\x01@h", EmptyUser),
        ] {
            assert_eq!(parse_user_target(arg), Err(e), "{arg}");
        }
        let long = format!("u@{}", "a.".repeat(130));
        assert_eq!(parse_user_target(&long), Err(BadHost));
    }
}
