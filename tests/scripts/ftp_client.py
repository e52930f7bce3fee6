#!/usr/bin/env python3
"""Scripted FTP client for the end-to-end tests, built on Python's ftplib.

Each data connection is opened by hand (PASV, EPSV, PORT or EPRT sent with
``sendcmd``) so that the test knows exactly which mode was used: ftplib alone
picks PASV/PORT or EPSV/EPRT from the address family and would hide a proxy
that silently breaks one of them.

Usage: ftp_client.py [OPTION...] HOST PORT OP...   where OP is one of
  login:USER:PASS              USER/PASS (anonymous: login:anonymous:x@)
  prot:P or prot:C             PBSZ 0 and PROT P (data connections in TLS) or C
  cmd:CODE:TEXT                send TEXT, require a reply starting with CODE
  MODE:retr:REMOTE:LOCAL       download REMOTE into LOCAL
  MODE:stor:LOCAL:REMOTE       upload LOCAL as REMOTE
  MODE:list                    LIST, each line printed as "| line"
  wait                         print READY, block until a line arrives on stdin
  quit                         QUIT
MODE is pasv, epsv, port or eprt. Every command is printed as "> CMD" and every
reply line as "< LINE" (PASS hidden), so the caller can prove what was exchanged.
Exit status: 0 when every step succeeded, 1 otherwise (reason on stderr).

FTPS (ftplib.FTP_TLS), with OPTIONs before HOST:
  --tls=explicit        AUTH TLS after the banner, before any other command
  --tls=implicit        TLS from the first byte (the port-990 convention)
  --ca=FILE             the CA that must have signed the server's certificate
                        (required with --tls; the certificate is always verified)
  --name=NAME           the name the certificate must match (default HOST)
  --tls-version=1.2|1.3 that version only (default: whatever both sides agree)
  --reuse=yes|no        whether data connections resume the control connection's
                        TLS session (default no, as FTP_TLS.ntransfercmd does)
With prot:P, each data connection is wrapped in TLS after the 1xx reply, as
FTP_TLS.ntransfercmd does, and "= tls data VERSION reused=True|False" printed
(Python's SSLSocket.session_reused: whether the server resumed the session).
The control connection prints "= tls control VERSION" after its handshake.
"""

import ftplib
import socket
import ssl
import sys

TIMEOUT = 30


def say(line):
    print(line, flush=True)


def say_reply(text):
    """Prints a reply, every line of a multi-line one prefixed with "< "."""
    for line in str(text).split("\n"):
        say("< " + line)


def send(ftp, text):
    """Sends one command and returns its reply (1xx/2xx/3xx), logging both."""
    say("> " + ("PASS ****" if text.upper().startswith("PASS ") else text))
    try:
        resp = ftp.sendcmd(text)
    except ftplib.Error as e:
        say_reply(e)
        raise
    say_reply(resp)
    return resp


def open_data(ftp, mode, command):
    """Opens the data connection in MODE for COMMAND; returns the socket."""
    local_ip, peer = ftp.sock.getsockname()[0], ftp.sock.getpeername()
    if mode in ("pasv", "epsv"):
        if mode == "pasv":
            host, port = ftplib.parse227(send(ftp, "PASV"))
        else:
            host, port = ftplib.parse229(send(ftp, "EPSV"), peer)
        conn = socket.create_connection((host, port), timeout=TIMEOUT)
        resp = send(ftp, command)
        if not resp.startswith("1"):
            raise ftplib.error_reply(resp)
        return wrap_data(ftp, conn)
    family = ftp.sock.family
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((local_ip, 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]
    if mode == "port":
        octets = local_ip.split(".")
        send(ftp, "PORT " + ",".join(octets + [str(port >> 8), str(port & 255)]))
    else:
        proto = 1 if family == socket.AF_INET else 2
        send(ftp, "EPRT |%d|%s|%d|" % (proto, local_ip, port))
    resp = send(ftp, command)
    if not resp.startswith("1"):
        raise ftplib.error_reply(resp)
    conn, _ = listener.accept()
    listener.close()
    conn.settimeout(TIMEOUT)
    return wrap_data(ftp, conn)


class TlsClient(ftplib.FTP_TLS):
    """FTP_TLS with the choices the tests make explicit: the name checked, and
    whether data connections resume the control connection's TLS session."""

    def __init__(self, context, name, reuse, implicit):
        super().__init__(context=context, timeout=TIMEOUT)
        self.tls_name = name
        self.reuse = reuse
        self.implicit = implicit

    def connect(self, host, port):
        if not self.implicit:
            return super().connect(host, port)
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=self.tls_name)
        say("= tls control " + self.sock.version())
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def auth(self):
        resp = send(self, "AUTH TLS")
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.tls_name)
        self.file = self.sock.makefile(mode="r", encoding=self.encoding)
        say("= tls control " + self.sock.version())
        return resp

    def wrap(self, conn):
        """What FTP_TLS.ntransfercmd does to a data connection under PROT P, with
        the control connection's session offered for resumption if asked."""
        session = self.sock.session if self.reuse else None
        conn = self.context.wrap_socket(
            conn, server_hostname=self.tls_name, session=session
        )
        say("= tls data %s reused=%s" % (conn.version(), conn.session_reused))
        return conn


def wrap_data(ftp, conn):
    """The data connection as the transfer uses it: in TLS after PROT P."""
    if isinstance(ftp, TlsClient) and ftp._prot_p:
        return ftp.wrap(conn)
    return conn


def finish_data(conn):
    """Ends a data connection; in TLS with close_notify, as ftplib does."""
    if isinstance(conn, ssl.SSLSocket):
        conn.unwrap()
    conn.close()


def end_transfer(ftp):
    """Reads and prints the transfer's final reply, also when it is an error."""
    try:
        resp = ftp.voidresp()
    except ftplib.Error as e:
        say_reply(e)
        raise
    say_reply(resp)


def retr(ftp, mode, remote, local):
    send(ftp, "TYPE I")
    conn = open_data(ftp, mode, "RETR " + remote)
    total = 0
    with open(local, "wb") as out:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            out.write(chunk)
            total += len(chunk)
    finish_data(conn)
    end_transfer(ftp)
    say("= retr %s %d bytes" % (remote, total))


def stor(ftp, mode, local, remote):
    send(ftp, "TYPE I")
    conn = open_data(ftp, mode, "STOR " + remote)
    total = 0
    with open(local, "rb") as src:
        while True:
            chunk = src.read(65536)
            if not chunk:
                break
            conn.sendall(chunk)
            total += len(chunk)
    finish_data(conn)
    end_transfer(ftp)
    say("= stor %s %d bytes" % (remote, total))


def listing(ftp, mode):
    send(ftp, "TYPE A")
    conn = open_data(ftp, mode, "LIST")
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    finish_data(conn)
    end_transfer(ftp)
    for line in data.decode("utf-8", "replace").splitlines():
        say("| " + line)


def tls_client(opts, host):
    """The FTP_TLS client the options ask for, or None for plain FTP."""
    mode = opts.pop("tls", None)
    ca = opts.pop("ca", None)
    name = opts.pop("name", host)
    version = opts.pop("tls-version", None)
    reuse = opts.pop("reuse", "no")
    if opts:
        raise ValueError("unknown options %s" % sorted(opts))
    if mode is None:
        return None
    if mode not in ("explicit", "implicit") or ca is None or reuse not in ("yes", "no"):
        raise ValueError("--tls=explicit|implicit needs --ca=FILE; --reuse=yes|no")
    context = ssl.create_default_context(cafile=ca)
    if version is not None:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
        context.minimum_version = context.maximum_version = v
    return TlsClient(context, name, reuse == "yes", mode == "implicit")


def main(argv):
    opts = {}
    while len(argv) > 1 and argv[1].startswith("--"):
        key, _, value = argv.pop(1)[2:].partition("=")
        opts[key] = value
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    host, port, ops = argv[1], int(argv[2]), argv[3:]
    ftp = tls_client(opts, host) or ftplib.FTP(timeout=TIMEOUT)
    say_reply(ftp.connect(host, port))
    if isinstance(ftp, TlsClient) and not ftp.implicit:
        ftp.auth()
    for op in ops:
        if op == "wait":
            say("READY")
            if not sys.stdin.readline():
                raise RuntimeError("stdin closed while waiting")
        elif op == "quit":
            send(ftp, "QUIT")
        elif op.startswith("login:"):
            _, user, password = op.split(":", 2)
            resp = send(ftp, "USER " + user)
            if resp.startswith("3"):
                send(ftp, "PASS " + password)
        elif op in ("prot:P", "prot:C"):
            if not isinstance(ftp, TlsClient):
                raise ValueError(op + " needs --tls")
            send(ftp, "PBSZ 0")
            send(ftp, "PROT " + op[-1])
            ftp._prot_p = op == "prot:P"
        elif op.startswith("cmd:"):
            _, code, text = op.split(":", 2)
            try:
                resp = send(ftp, text)
            except ftplib.Error as e:
                resp = str(e)
            if not resp.startswith(code):
                raise RuntimeError("%r: expected %s, got %r" % (text, code, resp))
        else:
            mode, verb, *rest = op.split(":", 3)
            if mode not in ("pasv", "epsv", "port", "eprt"):
                raise ValueError("bad operation " + op)
            if verb == "retr":
                retr(ftp, mode, rest[0], rest[1])
            elif verb == "stor":
                stor(ftp, mode, rest[0], rest[1])
            elif verb == "list":
                listing(ftp, mode)
            else:
                raise ValueError("bad operation " + op)
    say("DONE")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # noqa: BLE001 - any failure is a test failure with its reason
        sys.stderr.write("ftp_client.py: %s: %s\n" % (type(e).__name__, e))
        sys.exit(1)
