//! The per-session summary line and `--proxy-ports`, through the real binary, a
//! real pure-ftpd and Python's ftplib.

use ftp_proxy_tests::e2e::*;

/// The `key=value` fields of the first `session summary:` line of the log.
fn summary_fields(log: &str) -> Option<Vec<(String, String)>> {
    let line = log.lines().find(|l| l.contains(" session summary: "))?;
    let rest = line.split(" session summary: ").nth(1)?;
    let (plain, reason) = rest.split_once(" reason=")?;
    let mut fields: Vec<(String, String)> = plain
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    fields.push(("reason".into(), reason.to_string()));
    Some(fields)
}

#[test]
fn one_summary_line_per_session_and_ports_from_the_range() -> Result<()> {
    let Some(fx) = Fixture::start("summary", false, &["--proxy-ports", "40100:40103"])? else {
        return Ok(());
    };
    fx.proxy()?;
    let local = fx.work.local();
    let ops = [
        format!("login:{USER}:{PASSWORD}"),
        format!("pasv:retr:{SMALL}:{}", local.join("a").display()),
        format!("epsv:retr:{SMALL}:{}", local.join("b").display()),
        format!("eprt:retr:{SMALL}:{}", local.join("c").display()),
        "quit".into(),
    ];
    let transcript = ftplib(fx.target(), &ops)?;
    let size = std::fs::metadata(fx.work.original(SMALL))
        .map_err(|e| E2eError::check("the test file exists", e.to_string()))?
        .len();

    // The passive replies the client saw name ports of the range.
    let ports: Vec<u16> = transcript
        .lines()
        .filter_map(|l| {
            if let Some(r) = l.strip_prefix("< 229 ") {
                r.split("|||").nth(1)?.split('|').next()?.parse().ok()
            } else if let Some(r) = l.strip_prefix("< 227 ") {
                let inner = r.split('(').nth(1)?.split(')').next()?;
                let n: Vec<u16> = inner.split(',').filter_map(|x| x.parse().ok()).collect();
                (n.len() == 6).then(|| n[4] * 256 + n[5])
            } else {
                None
            }
        })
        .collect();
    if ports.len() != 2 || !ports.iter().all(|p| (40100..=40103).contains(p)) {
        return Err(E2eError::check(
            "the 227 and 229 name ports of --proxy-ports 40100:40103",
            transcript,
        ));
    }

    let proxy = fx.proxy()?;
    let log = wait_for_log(proxy, " session summary: ")?;
    let count = log
        .lines()
        .filter(|l| l.contains(" session summary: "))
        .count();
    let fields = summary_fields(&log)
        .ok_or_else(|| E2eError::check("a session summary line", tail(&log, 3000)))?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let num = |k: &str| get(k).parse::<u64>().unwrap_or(u64::MAX);
    let ok = count == 1
        && get("client").starts_with("127.0.0.1:")
        && get("server") == fx.server.addr().to_string()
        && get("duration").ends_with('s')
        && num("commands") >= 5
        && (num("pasv"), num("epsv"), num("port"), num("eprt")) == (1, 1, 0, 1)
        && num("rules") == 3
        && num("ctl_in") > 0
        && num("ctl_out") > 0
        && num("data_up") + num("data_down") == 3 * size
        && ["client_close", "server_close"].contains(&get("reason").as_str());
    if !ok {
        return Err(E2eError::check(
            "one summary line with client, server, duration, commands, pasv=1 epsv=1 port=0 eprt=1, rules=3, control and data bytes, reason",
            format!("{fields:?}\n{}", tail(&log, 3000)),
        ));
    }
    Ok(())
}

/// The proxy's log once it holds `needle` (the summary follows the session's end,
/// which follows the client's QUIT by a moment), or the log as it is after 10 s.
fn wait_for_log(proxy: &ProxyProcess, needle: &str) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = proxy.log();
        if log.contains(needle) || std::time::Instant::now() >= deadline {
            return Ok(log);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
