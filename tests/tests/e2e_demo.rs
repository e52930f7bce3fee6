//! The README's first command, `scripts/demo.sh`, keeps working: run without stdin
//! on free ports, it fetches through the proxy, checks the copy and cleans up.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ftp_proxy_tests::e2e::*;

#[test]
fn demo_script_runs_and_cleans_up() -> Result<()> {
    if !preflight()? {
        return Ok(());
    }
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (ftp_port, proxy_port) = (free_port(lo)?, free_port(lo)?);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let out = run(
        "env",
        &[
            format!("FTP_PORT={ftp_port}"),
            format!("PROXY_PORT={proxy_port}"),
            script.display().to_string(),
        ],
        300,
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(E2eError::check(
            "scripts/demo.sh exits 0",
            tail(&text, 4000),
        ));
    }
    for needle in [
        "> EPSV",
        "> EPRT",
        "identical to the original",
        "passive: client to server port",
        "demo: stopped",
    ] {
        if !text.contains(needle) {
            return Err(E2eError::check(
                format!("demo output shows {needle:?}"),
                tail(&text, 4000),
            ));
        }
    }
    // Everything it started is gone: nothing listens on its ports any more.
    for port in [ftp_port, proxy_port] {
        if std::net::TcpStream::connect((lo, port)).is_ok() {
            return Err(E2eError::check(
                format!("port {port} is closed after the demo"),
                tail(&text, 2000),
            ));
        }
    }
    Ok(())
}
