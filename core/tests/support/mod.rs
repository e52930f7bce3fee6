//! A tiny harness that drives one Proxy by hand, in the transcript style of smoltcp's tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ftp_proxy_core::{
    Accept, Action, CloseReason, Config, FilterError, Input, Proxy, RandomSource, Rule, SessionId,
    Side, Summary,
};

/// Returns the queued values in turn (then the last one forever): proxy port = 49152 + value.
pub struct Script(pub VecDeque<u32>);

impl RandomSource for Script {
    fn next_u32(&mut self) -> u32 {
        unreachable!("the proxy draws through uniform")
    }

    fn uniform(&mut self, upper: u32) -> u32 {
        let v = if self.0.len() > 1 {
            self.0.pop_front().unwrap()
        } else {
            *self.0.front().unwrap()
        };
        v % upper
    }
}

pub const CLIENT: &str = "203.0.113.10:40000";
pub const SERVER: &str = "198.51.100.10:21";
pub const PROXY: &str = "198.51.100.1:50000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub struct H {
    pub p: Proxy,
    pub now: Instant,
    pub id: SessionId,
}

impl H {
    /// A session that has connected and relayed the server's banner.
    pub fn new(cfg: Config, rng: &[u32]) -> H {
        Self::with_addrs(cfg, rng, CLIENT, SERVER, PROXY)
    }

    pub fn with_addrs(cfg: Config, rng: &[u32], client: &str, server: &str, proxy: &str) -> H {
        let mut p = Proxy::new(cfg, Box::new(Script(rng.iter().copied().collect()))).unwrap();
        let now = Instant::now();
        let id = p
            .accept(now, Accept::new(addr(client), addr(server)))
            .unwrap();
        let mut h = H { p, now, id };
        let a = h.drain();
        assert!(matches!(a[..], [Action::ConnectServer { .. }]), "{a:?}");
        h.input(Input::ServerSocketOpened { proxy: addr(proxy) });
        h.input(Input::ServerConnected);
        assert_eq!(
            h.server(b"220 ready\r\n"),
            vec![send(Side::Client, b"220 ready\r\n")]
        );
        h
    }

    pub fn drain(&mut self) -> Vec<Action> {
        let mut v = Vec::new();
        while let Some((id, a)) = self.p.poll_action() {
            assert_eq!(id, self.id);
            v.push(blank(a));
        }
        v
    }

    pub fn input(&mut self, i: Input) -> Vec<Action> {
        self.p.handle(self.now, self.id, i);
        self.drain()
    }

    pub fn client(&mut self, b: &[u8]) -> Vec<Action> {
        self.input(Input::Data(Side::Client, Bytes::copy_from_slice(b)))
    }

    pub fn server(&mut self, b: &[u8]) -> Vec<Action> {
        self.input(Input::Data(Side::Server, Bytes::copy_from_slice(b)))
    }

    pub fn ack(&mut self, txn: u64, result: Result<(), FilterError>) -> Vec<Action> {
        self.input(Input::RulesCommitted { txn, result })
    }

    pub fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.p.handle_timeout(self.now);
        self.drain()
    }
}

pub fn send(side: Side, b: &[u8]) -> Action {
    Action::Send(side, Bytes::copy_from_slice(b))
}

/// The commit in a list of actions: (txn, rules as pf.conf text).
pub fn commit(actions: &[Action]) -> (u64, Vec<String>) {
    for a in actions {
        if let Action::CommitRules { txn, rules, .. } = a {
            return (*txn, rules.iter().map(Rule::to_string).collect());
        }
    }
    panic!("no commit in {actions:?}")
}

/// Opens the server side of session `id`, relays a banner, and sends a PORT
/// (port 5000), leaving the proxy's actions undrained.
pub fn greet_and_port(p: &mut Proxy, now: Instant, id: SessionId) {
    p.handle(now, id, Input::ServerSocketOpened { proxy: addr(PROXY) });
    p.handle(now, id, Input::Data(Side::Server, "220 x\r\n".into()));
    p.handle(
        now,
        id,
        Input::Data(Side::Client, "PORT 1,2,3,4,19,136\r\n".into()),
    );
}

/// `Close` with its summary blanked, so that action lists compare by reason alone
/// (the summary has tests of its own).
pub fn close(reason: CloseReason) -> Action {
    Action::Close {
        reason,
        summary: Box::new(blank_summary()),
    }
}

fn blank_summary() -> Summary {
    Summary {
        client: addr("0.0.0.0:0"),
        server: addr("0.0.0.0:0"),
        duration: Duration::ZERO,
        commands: 0,
        data: Default::default(),
        rules_committed: 0,
        client_bytes: 0,
        server_bytes: 0,
    }
}

/// The action with a `Close`'s summary blanked (see [`close`]).
pub fn blank(a: Action) -> Action {
    match a {
        Action::Close { reason, .. } => close(reason),
        a => a,
    }
}
