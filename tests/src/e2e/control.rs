//! A raw FTP control connection, for what real clients refuse to do: over-long lines,
//! NUL bytes, commands sent without waiting, and watching a connection get closed.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::error::{tail, E2eError, Result};

/// A TCP connection to `to` from the IPv4 address `from` (any port), for scenarios
/// with clients on distinct loopback addresses: std cannot bind before connecting.
/// Loopback connects at once, so the connect blocks without a timeout.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let (IpAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        return Err(io::Error::new(ErrorKind::Unsupported, "IPv4 only"));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns, so OwnedFd may close it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let (local, remote) = (sockaddr(from, 0), sockaddr(*to.ip(), to.port()));
    let as_ptr = |a: &libc::sockaddr_in| (a as *const libc::sockaddr_in).cast::<libc::sockaddr>();
    // SAFETY: the pointer is to a live sockaddr_in of `len` bytes for the call.
    if unsafe { libc::bind(raw, as_ptr(&local), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as for bind.
    if unsafe { libc::connect(raw, as_ptr(&remote), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(fd))
}

/// One complete FTP reply (multi-line replies joined).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Every line, CRLF removed.
    pub lines: Vec<String>,
}

impl Reply {
    /// The last line, the one with the code and a space.
    pub fn last(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }
}

/// A control connection with a transcript of everything seen, for error messages.
pub struct Control {
    stream: TcpStream,
    buf: Vec<u8>,
    transcript: String,
}

impl Control {
    /// Connects with a 5 s connect timeout; reads time out after `read_timeout`.
    pub fn connect(addr: SocketAddr, read_timeout: Duration) -> Result<Control> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(E2eError::io(format!("connect to {addr}")))?;
        Control::over(stream, read_timeout)
    }

    /// Like [`connect`](Self::connect), from the local address `from` ([`connect_from`]).
    pub fn connect_from(from: IpAddr, addr: SocketAddr, read_timeout: Duration) -> Result<Control> {
        let stream = connect_from(from, addr)
            .map_err(E2eError::io(format!("connect from {from} to {addr}")))?;
        Control::over(stream, read_timeout)
    }

    fn over(stream: TcpStream, read_timeout: Duration) -> Result<Control> {
        stream
            .set_read_timeout(Some(read_timeout))
            .map_err(E2eError::io("set read timeout"))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(E2eError::io("set write timeout"))?;
        Ok(Control {
            stream,
            buf: Vec::new(),
            transcript: String::new(),
        })
    }

    /// Everything sent (`> `) and received (`< `) so far.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Sends bytes exactly as given (no CRLF added).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.transcript.push_str(&format!(
            "> {}\n",
            String::from_utf8_lossy(bytes).escape_debug()
        ));
        self.stream
            .write_all(bytes)
            .map_err(E2eError::io("write control connection"))
    }

    /// Sends `line` plus CRLF and reads the reply.
    pub fn command(&mut self, line: &str) -> Result<Reply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Reads one full reply; EOF before it is an error.
    pub fn read_reply(&mut self) -> Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            self.transcript.push_str(&format!("< {line}\n"));
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let sep = line.as_bytes().get(3).copied();
            let first = lines.is_empty();
            lines.push(line);
            match (code, sep) {
                (Some(code), Some(b' ')) | (Some(code), None) => {
                    let opening = lines[0].get(..3).and_then(|c| c.parse::<u16>().ok());
                    if first || opening == Some(code) {
                        return Ok(Reply { code, lines });
                    }
                }
                _ if first && code.is_none() => {
                    return Err(E2eError::check(
                        "a reply line starting with a code",
                        self.transcript.clone(),
                    ))
                }
                _ => {}
            }
        }
    }

    fn read_line(&mut self) -> Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(E2eError::check(
                        "a reply, but the connection was closed",
                        tail(&self.transcript, 3000),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(E2eError::Timeout {
                        what: "a reply line".into(),
                        waited: self
                            .stream
                            .read_timeout()
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        detail: tail(&self.transcript, 3000),
                    })
                }
                Err(e) => return Err(E2eError::io("read control connection")(e)),
            }
        }
    }

    /// Waits up to `limit` for the peer to close (EOF or reset). Returns the bytes that
    /// arrived before the close (beyond what replies consumed) and how long it took.
    pub fn expect_closed(&mut self, limit: Duration) -> Result<(Vec<u8>, Duration)> {
        let start = Instant::now();
        let mut got = std::mem::take(&mut self.buf);
        loop {
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(E2eError::Timeout {
                    what: "the connection to be closed".into(),
                    waited: limit,
                    detail: format!(
                        "{}received: {:?}",
                        tail(&self.transcript, 3000),
                        String::from_utf8_lossy(&got)
                    ),
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(E2eError::io("set read timeout"))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok((got, start.elapsed())),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok((got, start.elapsed()))
                }
                Err(e) => return Err(E2eError::io("read control connection")(e)),
            }
        }
    }
}
