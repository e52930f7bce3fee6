//! Route-table (`--route-file`) transcripts: the proxy greets, reads the plain
//! `USER name`, looks it up (exact, prefix, default), resolves a host name,
//! connects without a destination policy, reads the server's greeting and sends
//! `USER name` unchanged; `Proxy::set_routes` changes where the next `USER`
//! goes and nothing for a session that has chosen.

mod support;

use std::time::Instant;

use ftp_proxy_core::{
    Accept, Action, CloseReason, Config, ConfigError, Input, Proxy, RouteTable, SessionId, Side,
};
use support::{addr, blank, send, Script, CLIENT, PROXY};

const LISTEN: &str = "203.0.113.1:2121";
const GREETING: &[u8] = b"220 ftp-proxy ready\r\n";

const TABLE: &str = "\
alice     198.51.100.10
dev-*     198.51.100.20:2121
dev-ops-* files.example.org
# the loopback: no policy refuses the administrator's own list
local     127.0.0.2:2100
*         198.51.100.99
";

fn table(text: &str) -> RouteTable {
    RouteTable::parse("routes", text).unwrap()
}

fn cfg(text: &str) -> Config {
    Config {
        routes: Some(table(text)),
        ..Config::default()
    }
}

struct R {
    p: Proxy,
    now: Instant,
    id: SessionId,
}

impl R {
    fn new(cfg: Config) -> R {
        let p = Proxy::new(cfg, Box::new(Script([0].into_iter().collect()))).unwrap();
        let mut r = R {
            p,
            now: Instant::now(),
            id: SessionId(0),
        };
        r.accept();
        r
    }

    /// A new session on the same proxy, greeted by the proxy.
    fn accept(&mut self) {
        self.id = self
            .p
            .accept(self.now, Accept::new(addr(CLIENT), addr(LISTEN)))
            .unwrap();
        assert_eq!(
            self.drain(),
            vec![send(Side::Client, GREETING)],
            "no connect before USER"
        );
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

    /// Connected and greeted: the session sends `USER user`, unchanged.
    fn logged_in_as(&mut self, user: &str) {
        assert_eq!(
            self.input(Input::ServerSocketOpened { proxy: addr(PROXY) }),
            vec![]
        );
        assert_eq!(
            self.server(b"220-Welcome\r\n220 ready\r\n"),
            vec![send(Side::Server, format!("USER {user}\r\n").as_bytes())],
            "the greeting is the proxy's to read; the login follows it"
        );
        assert_eq!(
            self.server(b"331 Password\r\n"),
            vec![send(Side::Client, b"331 Password\r\n")],
            "the reply to that USER is the first one relayed"
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
fn an_exact_name_reaches_its_server_and_logs_in_unchanged() {
    let mut r = R::new(cfg(TABLE));
    assert_eq!(
        r.client(b"USER alice\r\n"),
        vec![connect("198.51.100.10:21")]
    );
    r.logged_in_as("alice");
    assert_eq!(
        r.client(b"PASS secret\r\n"),
        vec![send(Side::Server, b"PASS secret\r\n")]
    );
}

#[test]
fn the_longest_prefix_wins_and_a_name_is_resolved() {
    let mut r = R::new(cfg(TABLE));
    assert_eq!(
        r.client(b"USER dev-joe\r\n"),
        vec![connect("198.51.100.20:2121")]
    );
    r.logged_in_as("dev-joe");

    r.accept();
    assert_eq!(
        r.client(b"USER dev-ops-kim\r\n"),
        vec![Action::Resolve {
            name: "files.example.org".into()
        }]
    );
    // The resolver's order is kept; an address of the other family is skipped.
    assert_eq!(
        r.input(Input::Resolved {
            result: Ok(vec![
                "2001:db8::7".parse().unwrap(),
                "198.51.100.30".parse().unwrap()
            ])
        }),
        vec![connect("198.51.100.30:21")]
    );
    r.logged_in_as("dev-ops-kim");
}

#[test]
fn the_default_takes_the_rest_and_no_policy_applies() {
    let mut r = R::new(cfg(TABLE));
    assert_eq!(
        r.client(b"USER anonymous\r\n"),
        vec![connect("198.51.100.99:21")]
    );
    r.logged_in_as("anonymous");
    // Exact names are case-sensitive: `Alice` is not `alice`.
    r.accept();
    assert_eq!(
        r.client(b"USER Alice\r\n"),
        vec![connect("198.51.100.99:21")]
    );
    // The loopback, which forward mode refuses unless named: the table is the
    // administrator's own list.
    r.accept();
    assert_eq!(r.client(b"USER local\r\n"), vec![connect("127.0.0.2:2100")]);
}

#[test]
fn an_unmapped_name_is_refused_and_the_client_may_try_again() {
    let mut r = R::new(cfg("alice 198.51.100.10\n"));
    assert_eq!(
        r.client(b"USER bob\r\n"),
        vec![send(
            Side::Client,
            b"530 no server is configured for user bob\r\n"
        )]
    );
    assert_eq!(
        r.client(b"PASS x\r\n"),
        vec![send(Side::Client, b"530 Log in with USER first\r\n")]
    );
    assert_eq!(
        r.client(b"USER \r\n"),
        vec![send(Side::Client, b"530 empty user name\r\n")]
    );
    assert_eq!(
        r.client(b"USER alice\r\n"),
        vec![connect("198.51.100.10:21")]
    );
    r.logged_in_as("alice");
}

#[test]
fn a_failed_lookup_is_a_530_and_quit_a_221() {
    let mut r = R::new(cfg("* files.example.org:2121\n"));
    assert_eq!(
        r.client(b"USER carol\r\n"),
        vec![Action::Resolve {
            name: "files.example.org".into()
        }]
    );
    // Lines wait while the server is being found.
    assert_eq!(r.client(b"QUIT\r\n"), vec![]);
    assert_eq!(
        r.input(Input::Resolved {
            result: Err("Name or service not known".into())
        }),
        vec![
            send(
                Side::Client,
                b"530 cannot resolve files.example.org: Name or service not known\r\n"
            ),
            send(Side::Client, b"221 Goodbye\r\n"),
        ]
    );
}

#[test]
fn anonymous_only_refuses_other_names_before_the_table() {
    let mut r = R::new(Config {
        anonymous_only: true,
        ..cfg(TABLE)
    });
    assert_eq!(
        r.client(b"USER alice\r\n"),
        vec![send(Side::Client, b"500 Only anonymous FTP allowed\r\n")]
    );
    assert_eq!(r.client(b"USER ftp\r\n"), vec![connect("198.51.100.99:21")]);
}

#[test]
fn a_new_table_serves_the_next_user_and_not_a_session_that_chose() {
    let mut r = R::new(cfg(TABLE));
    let first = r.id;
    assert_eq!(
        r.client(b"USER alice\r\n"),
        vec![connect("198.51.100.10:21")]
    );
    r.logged_in_as("alice");
    // A second session greeted before the reload, its USER after it.
    r.accept();
    r.p.set_routes(table("alice 198.51.100.11:2121\n")).unwrap();
    assert_eq!(
        r.client(b"USER alice\r\n"),
        vec![connect("198.51.100.11:2121")]
    );
    assert_eq!(
        r.client(b"USER\r\n"),
        vec![],
        "lines wait while the server is connected"
    );
    // The first session is where it was: its lines go to its server.
    r.id = first;
    assert_eq!(
        r.client(b"PASS secret\r\n"),
        vec![send(Side::Server, b"PASS secret\r\n")]
    );
    assert_eq!(r.p.len(), 2);
    // Without a table from the start, none can be set.
    let mut plain = Proxy::new(
        Config::default(),
        Box::new(Script([0].into_iter().collect())),
    )
    .unwrap();
    assert_eq!(
        plain.set_routes(table("* 198.51.100.1\n")),
        Err(ConfigError::NoRoutes)
    );
}

#[test]
fn a_table_excludes_a_fixed_server_and_forward_mode() {
    let fixed = Config {
        fixed_server: Some(addr("198.51.100.1:21")),
        ..cfg(TABLE)
    };
    assert_eq!(fixed.validate(), Err(ConfigError::RoutesExclusive));
    let forward = Config {
        user_at_host: Some(Default::default()),
        ..cfg(TABLE)
    };
    assert_eq!(forward.validate(), Err(ConfigError::RoutesExclusive));
}

#[test]
fn a_server_that_does_not_greet_with_220_ends_the_session_with_421() {
    let mut r = R::new(cfg(TABLE));
    assert_eq!(
        r.client(b"USER alice\r\n"),
        vec![connect("198.51.100.10:21")]
    );
    r.input(Input::ServerSocketOpened { proxy: addr(PROXY) });
    let a = r.server(b"530 go away\r\n");
    assert_eq!(
        a[0],
        send(
            Side::Client,
            b"421 Cannot log in to 198.51.100.10: server greeted with 530\r\n"
        )
    );
    assert!(
        matches!(
            &a[1],
            Action::Close {
                reason: CloseReason::ServerRefused,
                ..
            }
        ),
        "{a:?}"
    );
}
