//! Choosing the server after `USER`: forward mode (`--user-at-host`) and the
//! route table (`--route-file`).
//!
//! In transparent and reverse mode the server is known when the client connects,
//! and the session connects at once. In forward mode the client names it in its
//! login, the convention of forward FTP proxies: the proxy greets the client
//! itself, reads `USER name@host[:port]` ([`parse_user_target`]), has the driver
//! resolve a host name ([`Action::Resolve`]), checks the addresses against the
//! destination policy ([`DestPolicy`], default deny), connects, reads the server's
//! greeting (logged: the client saw the proxy's) and sends `USER name`. The
//! server's reply to that is the first one relayed, and from there on the session
//! is the one of the other modes.
//!
//! With a route table the steps are the same; only the target differs
//! ([`Choice`]): it is the table's entry for the plain `USER name`
//! ([`RouteTable::lookup`](crate::route::RouteTable::lookup)), no destination
//! policy applies (the table is the administrator's own list, as `-R` is), and
//! the name goes to the server unchanged.
//!
//! What the client is told on the way (docs/forward-proxy.md):
//! * a `USER` that names no usable target (or a name the table does not map), a
//!   name that does not resolve, a destination the policy refuses, a
//!   non-anonymous name under `-A`: `530` (or the `500` of `-A`) with the reason,
//!   and the client may try again;
//! * any other command before that: `530`; `QUIT`: `221`;
//! * a lookup that outlives `--resolve-timeout`, a failed connect, a server that
//!   closes or greets with anything but `220`: `421` with the reason, and the
//!   session ends.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use log::{debug, info, warn};

use crate::config::{Config, CONNECT_TIMEOUT};
use crate::event::{Action, CloseReason, Side};
use crate::ftp::{self, Command};
use crate::route::{parse_user_target, DestPolicy, Host, UserTarget};

use super::pairing::{Forwarded, Owed};
use super::timer::Timer;
use super::{Cx, Session};

/// The proxy's own greeting in forward mode: it says what the login must look like.
const GREETING_FORWARD: &str = "220 ftp-proxy ready: log in as USER name@host[:port]\r\n";
/// The greeting with a route table: the login is the server's own.
const GREETING_ROUTES: &str = "220 ftp-proxy ready\r\n";
const REPLY_LOGIN_FIRST_FORWARD: &str = "530 Log in with USER name@host[:port] first\r\n";
const REPLY_LOGIN_FIRST_ROUTES: &str = "530 Log in with USER first\r\n";
const REPLY_GOODBYE: &str = "221 Goodbye\r\n";
const REPLY_ANON_ONLY: &str = "500 Only anonymous FTP allowed\r\n";

/// How a session that chooses its server after `USER` finds it.
#[derive(Clone, Copy)]
enum Choice<'a> {
    /// `USER name@host`, checked against the destination policy.
    Forward(&'a DestPolicy),
    /// `USER name`, looked up in the route table; no policy.
    Routes(&'a crate::route::RouteTable),
}

impl<'a> Choice<'a> {
    /// The choice `cfg` makes; `None` when the server is known at the accept.
    fn of(cfg: &'a Config) -> Option<Choice<'a>> {
        match (&cfg.routes, &cfg.user_at_host) {
            (Some(t), _) => Some(Choice::Routes(t)),
            (None, Some(p)) => Some(Choice::Forward(p)),
            (None, None) => None,
        }
    }

    /// The target of a `USER` argument, or why there is none (the `530` text).
    fn target(self, arg: &str) -> Result<UserTarget, String> {
        match self {
            Choice::Forward(_) => parse_user_target(arg).map_err(|e| e.to_string()),
            Choice::Routes(_) if arg.is_empty() => Err("empty user name".into()),
            Choice::Routes(table) => match table.lookup(arg) {
                Some(r) => Ok(UserTarget {
                    user: arg.to_owned(),
                    host: r.host.clone(),
                    port: r.port,
                }),
                None => Err(format!("no server is configured for user {arg}")),
            },
        }
    }

    /// The destination policy, if one applies.
    fn policy(self) -> Option<&'a DestPolicy> {
        match self {
            Choice::Forward(p) => Some(p),
            Choice::Routes(_) => None,
        }
    }

    /// The word for the log lines.
    fn name(self) -> &'static str {
        match self {
            Choice::Forward(_) => "forward",
            Choice::Routes(_) => "routed",
        }
    }
}

/// The proxy's own greeting for a session that chooses its server after `USER`.
pub(super) fn greeting(cfg: &Config) -> &'static str {
    match Choice::of(cfg) {
        Some(Choice::Routes(_)) => GREETING_ROUTES,
        _ => GREETING_FORWARD,
    }
}

/// Where the session stands with its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upstream {
    /// The server is known and greeted (or being connected in transparent and
    /// reverse mode, whose greeting the pairing relays): lines are the session's.
    Ready,
    /// Forward mode or a route table: the proxy greeted the client and waits for
    /// `USER`.
    AwaitUser,
    /// The host name is being looked up.
    Resolving {
        /// The login, with the name being resolved.
        target: UserTarget,
    },
    /// Connecting to the chosen server, or reading its greeting; `user` is the
    /// `USER` line that follows it.
    Greeting {
        /// `USER name\r\n`.
        user: Bytes,
        /// The code of the multi-line greeting being read.
        multi: Option<u16>,
    },
}

impl Upstream {
    /// Whether the client's lines may be handled now: by the upstream while it
    /// waits for `USER`, by the session once ready; held while a server is being
    /// found, connected and greeted.
    pub(super) fn takes_client_lines(&self) -> bool {
        matches!(self, Upstream::Ready | Upstream::AwaitUser)
    }
}

/// The argument of a `USER` line, if it is one: the bytes after `USER ` up to the
/// line end.
fn user_argument(line: &[u8]) -> Option<&[u8]> {
    let s = ftp::command_start(line);
    if ftp::classify(s) != Command::User || !matches!(s.get(4), Some(b' ')) {
        return None;
    }
    let arg = &s[5..];
    let arg = arg.strip_suffix(b"\n").unwrap_or(arg);
    Some(arg.strip_suffix(b"\r").unwrap_or(arg))
}

impl Session {
    /// A client line while the proxy waits for `USER` (`name@host` in forward
    /// mode).
    pub(super) fn upstream_client_line(&mut self, cx: &mut Cx<'_>, line: Bytes) {
        debug!("{} client: {}", self.id, ftp::escape(&line));
        self.stats.command();
        let Some(choice) = Choice::of(cx.cfg) else {
            // Not reached: only these modes wait for USER.
            self.upstream = Upstream::Ready;
            return self.client_line(cx, line);
        };
        // Nothing is owed before a server is chosen, so the proxy's answers can go
        // at once, in order.
        debug_assert_eq!(self.pairing.owed(), 0);
        let Some(arg) = user_argument(&line) else {
            let word = ftp::command_start(&line);
            let quit = word.len() >= 4
                && word[..4].eq_ignore_ascii_case(b"QUIT")
                && word[4..].iter().all(|b| matches!(b, b' ' | b'\r' | b'\n'));
            let reply = match (quit, choice) {
                (true, _) => REPLY_GOODBYE,
                (false, Choice::Forward(_)) => REPLY_LOGIN_FIRST_FORWARD,
                (false, Choice::Routes(_)) => REPLY_LOGIN_FIRST_ROUTES,
            };
            return self.send(cx, Side::Client, Bytes::from_static(reply.as_bytes()));
        };
        let target = match std::str::from_utf8(arg)
            .map_err(|_| "the user name is not UTF-8".to_string())
            .and_then(|a| choice.target(a))
        {
            Ok(t) => t,
            Err(why) => {
                info!(
                    "{} refusing '{}': {why}",
                    self.id,
                    ftp::escape(line.trim_ascii_end())
                );
                return self.reply_530(cx, &why);
            }
        };
        if cx.cfg.anonymous_only && !target.is_anonymous() {
            info!(
                "{} refusing user '{}': -A allows anonymous only",
                self.id, target.user
            );
            return self.send(
                cx,
                Side::Client,
                Bytes::from_static(REPLY_ANON_ONLY.as_bytes()),
            );
        }
        match target.host.clone() {
            Host::Ip(ip) => self.choose_server(cx, choice, &target, &[ip]),
            Host::Name(name) => {
                debug!("{} resolving {name}", self.id);
                self.timers
                    .set(Timer::Resolve, cx.now + cx.cfg.resolve_timeout());
                self.upstream = Upstream::Resolving { target };
                self.emit(cx, Action::Resolve { name });
            }
        }
    }

    /// The driver's answer to the lookup.
    pub(super) fn on_resolved(&mut self, cx: &mut Cx<'_>, result: Result<Vec<IpAddr>, String>) {
        let Upstream::Resolving { target } = &self.upstream else {
            debug!(
                "{} ignoring a name lookup answer nothing waits for",
                self.id
            );
            return;
        };
        let target = target.clone();
        self.timers.stop(Timer::Resolve);
        self.upstream = Upstream::AwaitUser;
        let Some(choice) = Choice::of(cx.cfg) else {
            return;
        };
        match result {
            Ok(addrs) if !addrs.is_empty() => self.choose_server(cx, choice, &target, &addrs),
            Ok(_) | Err(_) => {
                let why = result.err().unwrap_or_else(|| "no address".into());
                warn!("{} cannot resolve {}: {why}", self.id, target.host);
                self.reply_530(cx, &format!("cannot resolve {}: {why}", target.host));
            }
        }
    }

    /// The lookup did not answer in time: the session ends.
    pub(super) fn resolve_timed_out(&mut self, cx: &mut Cx<'_>) {
        if let Upstream::Resolving { target } = &self.upstream {
            let line = format!("421 Lookup of {} timed out\r\n", target.host);
            self.send(cx, Side::Client, Bytes::from(line));
        }
        self.close(cx, CloseReason::ResolveTimeout);
    }

    /// Connects to the first of `addrs` the destination policy (if any) allows, or
    /// tells the client why none is.
    fn choose_server(
        &mut self,
        cx: &mut Cx<'_>,
        choice: Choice<'_>,
        target: &UserTarget,
        addrs: &[IpAddr],
    ) {
        let (to, refused) = pick(choice.policy(), self.ends.client, addrs, target.port);
        for (addr, why) in &refused {
            match choice {
                Choice::Forward(_) => warn!(
                    "{} destination {addr} (from USER ...@{}) refused: {why}",
                    self.id, target.host
                ),
                Choice::Routes(_) => warn!(
                    "{} destination {addr} (route of user '{}' to {}) refused: {why}",
                    self.id, target.user, target.host
                ),
            }
        }
        let Some(to) = to else {
            return self.reply_530(
                cx,
                &format!("destination {} refused by proxy policy", target.host),
            );
        };
        info!(
            "{} {} login of user '{}' to server {to}",
            self.id,
            choice.name(),
            target.user
        );
        self.ends.server = to;
        self.timers.set(Timer::ServerIdle, cx.now + CONNECT_TIMEOUT);
        self.upstream = Upstream::Greeting {
            user: Bytes::from(format!("USER {}\r\n", target.user)),
            multi: None,
        };
        self.emit(
            cx,
            Action::ConnectServer {
                to,
                bind: cx.cfg.source_addr,
            },
        );
    }

    /// One line of the server's greeting: logged; the final `220` sends the login.
    pub(super) fn greeting_line(&mut self, cx: &mut Cx<'_>, line: Bytes) {
        let Upstream::Greeting { user, multi } = &mut self.upstream else {
            return;
        };
        info!(
            "{} server greeting: {}",
            self.id,
            ftp::escape(line.trim_ascii_end())
        );
        let reply = ftp::reply_code(&line);
        let code = match (*multi, reply) {
            // Inside a multi-line greeting only `ddd ` with its code ends it.
            (Some(c), Some((r, false))) if r == c => c,
            (Some(_), _) => return,
            (None, Some((c, true))) => {
                *multi = Some(c);
                return;
            }
            (None, Some((c, false))) => c,
            (None, None) => {
                return self.upstream_failed(cx, "server greeting is not an FTP reply");
            }
        };
        *multi = None;
        match code {
            // "Service ready in nnn minutes": the 220 follows.
            120 => {}
            220 => {
                let user = user.clone();
                self.upstream = Upstream::Ready;
                if self.expect(cx, Owed::Reply(Forwarded::Other)) {
                    self.send(cx, Side::Server, user);
                }
            }
            _ => {
                let why = format!("server greeted with {code}");
                self.upstream_failed(cx, &why);
            }
        }
    }

    /// Whether the session is still finding or greeting its server: a failure now
    /// owes the client a `421` with the reason, since it never saw the server.
    pub(super) fn upstream_pending(&self) -> bool {
        matches!(self.upstream, Upstream::Greeting { .. })
    }

    /// Tells the client of a forward session whose server is not yet greeted why
    /// it cannot be reached (`421`); the caller ends the session.
    pub(super) fn upstream_421(&mut self, cx: &mut Cx<'_>, why: &str) {
        if !self.upstream_pending() {
            return;
        }
        let why: String = why.chars().filter(|c| !c.is_control()).collect();
        let line = format!("421 Cannot log in to {}: {why}\r\n", self.ends.server.ip());
        self.send(cx, Side::Client, Bytes::from(line));
        self.upstream = Upstream::Ready;
    }

    /// Ends a forward session whose server refused it, with a `421` saying why.
    pub(super) fn upstream_failed(&mut self, cx: &mut Cx<'_>, why: &str) {
        self.upstream_421(cx, why);
        self.close(cx, CloseReason::ServerRefused);
    }

    fn reply_530(&mut self, cx: &mut Cx<'_>, why: &str) {
        let why: String = why.chars().filter(|c| !c.is_control()).collect();
        self.send(cx, Side::Client, Bytes::from(format!("530 {why}\r\n")));
    }
}

/// The first address the policy allows (any, without one), of the client's
/// family (a session crosses no address family: its data connections are not
/// translated), with the refusal of each one before it.
fn pick(
    policy: Option<&DestPolicy>,
    client: SocketAddr,
    addrs: &[IpAddr],
    port: u16,
) -> (Option<SocketAddr>, Vec<(SocketAddr, String)>) {
    let mut refused = Vec::new();
    for &ip in addrs {
        let to = SocketAddr::new(ip, port);
        if ip.is_ipv4() != client.is_ipv4() {
            refused.push((to, "not the client's address family".into()));
            continue;
        }
        match policy.map_or(Ok(()), |p| p.check(to)) {
            Ok(()) => return (Some(to), refused),
            Err(e) => refused.push((to, e.to_string())),
        }
    }
    (None, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_argument_takes_only_user_lines() {
        assert_eq!(user_argument(b"USER a@h\r\n"), Some(&b"a@h"[..]));
        assert_eq!(user_argument(b"user a@h\n"), Some(&b"a@h"[..]));
        assert_eq!(user_argument(b" USER a@h\r\n"), Some(&b"a@h"[..]));
        assert_eq!(user_argument(b"USERX a@h\r\n"), None);
        assert_eq!(user_argument(b"USER\r\n"), None);
        assert_eq!(user_argument(b"USER\ra@h\r\n"), None);
        assert_eq!(user_argument(b"PASS a@h\r\n"), None);
    }

    #[test]
    fn pick_skips_other_families_and_refusals() {
        let policy = DestPolicy {
            allow: vec![crate::route::AllowDest::parse("198.51.100.0/24").unwrap()],
            own: vec![],
        };
        let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let addrs: Vec<IpAddr> = ["2001:db8::1", "203.0.113.9", "198.51.100.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (to, refused) = pick(Some(&policy), client, &addrs, 21);
        assert_eq!(to, Some("198.51.100.7:21".parse().unwrap()));
        assert_eq!(refused.len(), 2);
        assert!(refused[0].1.contains("family"));
        assert!(refused[1].1.contains("--allow-dest"));
    }
}
