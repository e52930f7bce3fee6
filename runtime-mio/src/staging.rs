//! TLS records read ahead of rustls: one `recv` carries several records.
//!
//! rustls reads its records itself ([`rustls::Connection::read_tls`]) into a
//! deframing buffer of at most one record's size (about 16 KiB): relayed that
//! way, a bulk transfer costs one `recv(2)` per record. A [`Staging`] buffer
//! takes [`STAGING_CAPACITY`] bytes off the socket at once, and rustls is fed
//! from it, record by record, with [`process_new_packets`] in between (the
//! relay does that, [`crate::relay`]). Records are cut wherever the socket
//! cut them: rustls keeps a partial record's head and waits for the rest,
//! which the next `recv` brings.
//!
//! The buffer exists only while its data connection does: it is allocated by
//! the first read and freed with the leg.
//!
//! [`process_new_packets`]: rustls::Connection::process_new_packets

use std::io::{self, Read};

use rustls::Connection;

/// Bytes one `recv` may take off a TLS leg's socket: four full records.
pub(crate) const STAGING_CAPACITY: usize = 64 * 1024;

/// Ciphertext read from a TLS leg's socket that rustls has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    /// Allocated by the first [`recv`](Self::recv).
    buf: Option<Box<[u8]>>,
    /// `buf[start..end]` is waiting for rustls.
    start: usize,
    end: usize,
}

impl Staging {
    /// Whether rustls has taken everything read.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// One read from `src` into the (empty) buffer; `Ok(0)` is end of file.
    pub(crate) fn recv(&mut self, src: &mut impl Read) -> io::Result<usize> {
        debug_assert!(self.is_empty());
        let buf = self
            .buf
            .get_or_insert_with(|| vec![0; STAGING_CAPACITY].into_boxed_slice());
        let n = src.read(buf)?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }

    /// Hands rustls what it takes of the waiting bytes (at most a record's
    /// worth per call); the caller runs `process_new_packets` next. `Ok(0)`
    /// with bytes waiting: rustls has had a close_notify and takes nothing more,
    /// so the rest is dropped. Never called empty: rustls takes an empty read
    /// for the end of the TCP stream.
    pub(crate) fn feed(&mut self, conn: &mut Connection) -> io::Result<usize> {
        debug_assert!(!self.is_empty());
        let Some(buf) = self.buf.as_deref() else {
            return Ok(0);
        };
        let mut waiting = &buf[self.start..self.end];
        let n = conn.read_tls(&mut waiting)?;
        if n == 0 {
            self.end = self.start;
        }
        self.start += n;
        Ok(n)
    }

    /// Gives the buffer back (the source has ended).
    pub(crate) fn release(&mut self) {
        *self = Staging::default();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, ErrorKind, Read, Write};
    use std::path::PathBuf;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    /// A self-signed certificate for "localhost" made by openssl(1), and its key.
    fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let dir = std::env::temp_dir().join(format!("ftp-proxy-staging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key): (PathBuf, PathBuf) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl made a certificate");
        let chain = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (chain, key)
    }

    /// A client and a server connection with their handshake done in memory.
    fn connected() -> (ClientConnection, ServerConnection) {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = certificate();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        // Bounded: a TLS 1.3 handshake takes a few flights.
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (c, s)
    }

    /// A socket stand-in that hands out its bytes in the given cuts, then
    /// says end of file.
    struct Cuts<'a> {
        wire: &'a [u8],
        cuts: std::iter::Cycle<std::slice::Iter<'a, usize>>,
    }

    impl Read for Cuts<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let want = *self.cuts.next().expect("cycled");
            let n = want.min(buf.len()).min(self.wire.len());
            buf[..n].copy_from_slice(&self.wire[..n]);
            self.wire = &self.wire[n..];
            Ok(n)
        }
    }

    /// Several MiB of records, read in cuts that split records anywhere (one
    /// byte, a header's worth, a record and a bit, a full staging buffer, whose
    /// 64 KiB never end on a record boundary), fed to rustls through the
    /// staging buffer with the plaintext taken after every record as the
    /// relay does: every byte comes out once, in order, then the close_notify.
    #[test]
    fn records_cut_anywhere_come_out_whole() {
        let (client, mut server) = connected();
        let mut client = Connection::from(client);
        let data: Vec<u8> = (0..(3 << 20) + 12_345u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut wire = Vec::new();
        for chunk in data.chunks(40_000) {
            server.writer().write_all(chunk).unwrap();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
        }
        server.send_close_notify();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let cuts = [1, 4, 16_405, STAGING_CAPACITY, 3, 70_000, 5, STAGING_CAPACITY, 999];
        let mut socket = Cuts {
            wire: &wire,
            cuts: cuts.iter().cycle(),
        };
        let mut staging = Staging::default();
        let mut got = Vec::new();
        let mut ended = false;
        // Bounded: every round feeds rustls or reads a byte or more.
        for _ in 0..4 * wire.len() {
            // The plaintext first, as the relay delivers it before feeding more.
            let mut reader = client.reader();
            match reader.fill_buf() {
                Ok([]) => {
                    ended = true;
                    break;
                }
                Ok(chunk) => {
                    let n = chunk.len();
                    got.extend_from_slice(chunk);
                    reader.consume(n);
                    continue;
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
            }
            if staging.is_empty() {
                if staging.recv(&mut socket).unwrap() == 0 {
                    client.read_tls(&mut io::empty()).unwrap();
                }
            } else {
                staging.feed(&mut client).unwrap();
            }
            client.process_new_packets().unwrap();
        }
        assert!(ended, "the close_notify was seen");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the plaintext is the sent bytes, in order");
        staging.release();
        assert!(staging.buf.is_none(), "released");
    }
}
