//! Forward mode (`--user-at-host`) transcripts: the proxy greets, reads
//! `USER name@host`, resolves, checks the destination policy, connects, reads
//! the server's greeting and logs in as `name`.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ftp_proxy_core::{
    Accept, Action, AllowDest, CloseReason, Config, DestPolicy, Input, Proxy, SessionId, Side,
    SocketError,
};
use support::{addr, blank, close, send, Script, CLIENT, PROXY};

/// The proxy's listener: the client's original destination in forward mode.
const LISTEN: &str = "203.0.113.1:2121";
const GREETING: &[u8] = b"220 ftp-proxy ready: log in as USER name@host[:port]\r\n";

fn cfg(allow: &[&str]) -> Config {
    Config {
        user_at_host: Some(DestPolicy {
            allow: allow.iter().map(|a| AllowDest::parse(a).unwrap()).collect(),
            own: vec![addr(LISTEN), addr("203.0.113.1:0")],
        }),
        ..Config::default()
    }
}

struct F {
    p: Proxy,
    now: Instant,
    id: SessionId,
}

impl F {
    /// A forward session that has been greeted by the proxy.
    fn new(cfg: Config) -> F {
        let mut p = Proxy::new(cfg, Box::new(Script([0].into_iter().collect()))).unwrap();
        let now = Instant::now();
        let id = p
            .accept(now, Accept::new(addr(CLIENT), addr(LISTEN)))
            .unwrap();
        let mut f = F { p, now, id };
        assert_eq!(
            f.drain(),
            vec![send(Side::Client, GREETING)],
            "no connect before USER"
        );
        f
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut v = Vec::new();
        while let Some((id, a)) = self.p.poll_action() {
            assert_eq!(id, self.id);
            v.push(blank(a));
        }
        v
    }

    fn input(&mut self, i: Input) -> Vec<Action> {
        self.p.handle(self.now, self.id, i);
        self.drain()
    }

    fn client(&mut self, b: &[u8]) -> Vec<Action> {
        self.input(Input::Data(Side::Client, b.to_vec().into()))
    }

    fn server(&mut self, b: &[u8]) -> Vec<Action> {
        self.input(Input::Data(Side::Server, b.to_vec().into()))
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.p.handle_timeout(self.now);
        self.drain()
    }

    /// Connected and greeted: the session has sent `USER user`.
    fn logged_in_at(&mut self, user: &str) {
        assert_eq!(
            self.input(Input::ServerSocketOpened { proxy: addr(PROXY) }),
            vec![]
        );
        assert_eq!(
            self.server(b"220-Welcome\r\n220-to the server\r\n220 ready\r\n"),
            vec![send(Side::Server, format!("USER {user}\r\n").as_bytes())],
            "the greeting is the proxy's to read; the login follows it"
        );
    }
}

fn connect(to: &str) -> Action {
    Action::ConnectServer {
        to: addr(to),
        bind: None,
    }
}

#[test]
fn an_address_literal_connects_logs_in_and_then_relays_as_ever() {
    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    assert_eq!(
        f.client(b"USER anonymous@198.51.100.10\r\n"),
        vec![connect("198.51.100.10:21")]
    );
    f.logged_in_at("anonymous");
    // The reply to that USER is the first one relayed.
    assert_eq!(
        f.server(b"331 Any password\r\n"),
        vec![send(Side::Client, b"331 Any password\r\n")]
    );
    assert_eq!(
        f.client(b"PASS x\r\n"),
        vec![send(Side::Server, b"PASS x\r\n")]
    );
    assert_eq!(
        f.server(b"230 Logged in\r\n"),
        vec![send(Side::Client, b"230 Logged in\r\n")]
    );
    // A passive negotiation is rewritten as in reverse mode: the proxy's address.
    assert_eq!(f.client(b"EPSV\r\n"), vec![send(Side::Server, b"EPSV\r\n")]);
    let a = f.server(b"229 Entering Extended Passive Mode (|||30001|)\r\n");
    assert!(
        matches!(&a[..], [Action::CommitRules { rules, .. }] if !rules.is_empty()),
        "{a:?}"
    );
}

#[test]
fn ports_and_ipv6_literals_and_the_port_after_a_space() {
    let mut f = F::new(cfg(&["198.51.100.0/24:2121"]));
    assert_eq!(
        f.client(b"USER bob@198.51.100.10:2121\r\n"),
        vec![connect("198.51.100.10:2121")]
    );
    let mut f = F::new(cfg(&["198.51.100.0/24:2121"]));
    assert_eq!(
        f.client(b"USER bob@198.51.100.10 2121\r\n"),
        vec![connect("198.51.100.10:2121")]
    );
    // Port 21 is not in the entry's list.
    let mut f = F::new(cfg(&["198.51.100.0/24:2121"]));
    let a = f.client(b"USER bob@198.51.100.10\r\n");
    assert_eq!(
        a,
        vec![send(
            Side::Client,
            b"530 destination 198.51.100.10 refused by proxy policy\r\n"
        )]
    );
}

#[test]
fn a_name_is_resolved_by_the_driver_and_its_addresses_checked_in_order() {
    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    assert_eq!(
        f.client(b"USER ftp@files.example\r\n"),
        vec![Action::Resolve {
            name: "files.example".into()
        }]
    );
    // Client lines wait while the server is found.
    assert_eq!(f.client(b"PASS secret\r\n"), vec![]);
    let addrs: Vec<IpAddr> = ["2001:db8::5", "127.0.0.1", "198.51.100.20"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(
        f.input(Input::Resolved { result: Ok(addrs) }),
        vec![connect("198.51.100.20:21")],
        "the other family and the unlisted loopback are skipped"
    );
    // The PASS that waited is pipelined behind the login, as the client sent it.
    assert_eq!(
        f.input(Input::ServerSocketOpened { proxy: addr(PROXY) }),
        vec![]
    );
    assert_eq!(
        f.server(b"220 ready\r\n"),
        vec![
            send(Side::Server, b"USER ftp\r\n"),
            send(Side::Server, b"PASS secret\r\n")
        ]
    );
    assert_eq!(
        f.server(b"331 Password\r\n"),
        vec![send(Side::Client, b"331 Password\r\n")]
    );
}

#[test]
fn refusals_answer_530_and_the_client_may_try_again() {
    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    for (line, reply) in [
        (
            &b"USER bob\r\n"[..],
            &b"530 no @host in the user name\r\n"[..],
        ),
        (b"USER bob@\r\n", b"530 malformed host after @\r\n"),
        (
            b"USER bob@203.0.113.1:2121\r\n",
            b"530 destination 203.0.113.1 refused by proxy policy\r\n",
        ),
        (
            b"USER bob@127.0.0.1\r\n",
            b"530 destination 127.0.0.1 refused by proxy policy\r\n",
        ),
        (
            b"LIST\r\n",
            b"530 Log in with USER name@host[:port] first\r\n",
        ),
        (
            b"PASS x\r\n",
            b"530 Log in with USER name@host[:port] first\r\n",
        ),
    ] {
        assert_eq!(f.client(line), vec![send(Side::Client, reply)], "{line:?}");
    }
    assert_eq!(
        f.client(b"USER bob@nowhere.invalid\r\n"),
        vec![Action::Resolve {
            name: "nowhere.invalid".into()
        }]
    );
    assert_eq!(
        f.input(Input::Resolved {
            result: Err("Name or service not known".into())
        }),
        vec![send(
            Side::Client,
            b"530 cannot resolve nowhere.invalid: Name or service not known\r\n"
        )]
    );
    // A late or stray answer changes nothing.
    assert_eq!(f.input(Input::Resolved { result: Ok(vec![]) }), vec![]);
    assert_eq!(
        f.client(b"USER bob@198.51.100.9\r\n"),
        vec![connect("198.51.100.9:21")]
    );
}

#[test]
fn anonymous_only_applies_to_the_user_part() {
    let mut f = F::new(Config {
        anonymous_only: true,
        ..cfg(&["198.51.100.0/24"])
    });
    assert_eq!(
        f.client(b"USER bob@198.51.100.9\r\n"),
        vec![send(Side::Client, b"500 Only anonymous FTP allowed\r\n")]
    );
    assert_eq!(
        f.client(b"USER anonymous@198.51.100.9\r\n"),
        vec![connect("198.51.100.9:21")]
    );
}

#[test]
fn no_allow_dest_allows_nothing() {
    let mut f = F::new(cfg(&[]));
    assert_eq!(
        f.client(b"USER bob@198.51.100.9\r\n"),
        vec![send(
            Side::Client,
            b"530 destination 198.51.100.9 refused by proxy policy\r\n"
        )]
    );
}

#[test]
fn a_slow_lookup_ends_the_session_with_421() {
    let mut f = F::new(Config {
        resolve_timeout_secs: 3,
        ..cfg(&["198.51.100.0/24"])
    });
    f.client(b"USER bob@slow.example\r\n");
    assert_eq!(f.advance(Duration::from_secs(2)), vec![]);
    assert_eq!(
        f.advance(Duration::from_secs(1)),
        vec![
            send(Side::Client, b"421 Lookup of slow.example timed out\r\n"),
            close(CloseReason::ResolveTimeout)
        ]
    );
}

#[test]
fn a_failed_connect_or_a_bad_greeting_tells_the_client_why() {
    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    f.client(b"USER bob@198.51.100.9\r\n");
    let error = SocketError::from_errno(111);
    assert_eq!(
        f.input(Input::ServerConnectFailed { error }),
        vec![
            send(
                Side::Client,
                format!("421 Cannot log in to 198.51.100.9: cannot connect: {error}\r\n")
                    .as_bytes()
            ),
            close(CloseReason::ConnectFailed {
                server: addr("198.51.100.9:21"),
                error
            })
        ]
    );

    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    f.client(b"USER bob@198.51.100.9\r\n");
    f.input(Input::ServerSocketOpened { proxy: addr(PROXY) });
    assert_eq!(
        f.server(b"421 Too many users\r\n"),
        vec![
            send(
                Side::Client,
                b"421 Cannot log in to 198.51.100.9: server greeted with 421\r\n"
            ),
            close(CloseReason::ServerRefused)
        ]
    );

    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    f.client(b"USER bob@198.51.100.9\r\n");
    f.input(Input::ServerSocketOpened { proxy: addr(PROXY) });
    assert_eq!(
        f.input(Input::Eof(Side::Server)),
        vec![
            send(
                Side::Client,
                b"421 Cannot log in to 198.51.100.9: the server closed the connection before its greeting\r\n"
            ),
            close(CloseReason::Eof(Side::Server))
        ]
    );

    // A server that never greets: the connect timeout, with a 421.
    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    f.client(b"USER bob@198.51.100.9\r\n");
    f.input(Input::ServerSocketOpened { proxy: addr(PROXY) });
    assert_eq!(
        f.advance(Duration::from_secs(30)),
        vec![
            send(
                Side::Client,
                b"421 Cannot log in to 198.51.100.9: the server did not greet in time\r\n"
            ),
            close(CloseReason::Timeout(Side::Server))
        ]
    );
}

#[test]
fn quit_before_login_is_answered() {
    let mut f = F::new(cfg(&["198.51.100.0/24"]));
    assert_eq!(
        f.client(b"QUIT\r\n"),
        vec![send(Side::Client, b"221 Goodbye\r\n")]
    );
    assert_eq!(
        f.input(Input::Eof(Side::Client)),
        vec![close(CloseReason::Eof(Side::Client))]
    );
}

#[test]
fn forward_mode_and_a_fixed_server_exclude_each_other() {
    let c = Config {
        fixed_server: Some(addr("198.51.100.10:21")),
        ..cfg(&["198.51.100.0/24"])
    };
    assert!(c.validate().is_err());
}
