#!/usr/bin/env python3
"""Scripted FTP client for the end-to-end tests, built on Python's ftplib.

Each data connection is opened by hand (PASV, EPSV, PORT or EPRT sent with
``sendcmd``) so that the test knows exactly which mode was used: ftplib alone
picks PASV/PORT or EPSV/EPRT from the address family and would hide a proxy
that silently breaks one of them.

Usage: ftp_client.py HOST PORT OP...   where OP is one of
  login:USER:PASS              USER/PASS (anonymous: login:anonymous:x@)
  cmd:CODE:TEXT                send TEXT, require a reply starting with CODE
  MODE:retr:REMOTE:LOCAL       download REMOTE into LOCAL
  MODE:stor:LOCAL:REMOTE       upload LOCAL as REMOTE
  MODE:list                    LIST, each line printed as "| line"
  wait                         print READY, block until a line arrives on stdin
  quit                         QUIT
MODE is pasv, epsv, port or eprt. Every command is printed as "> CMD" and every
reply line as "< LINE" (PASS hidden), so the caller can prove what was exchanged.
Exit status: 0 when every step succeeded, 1 otherwise (reason on stderr).
"""

import ftplib
import socket
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
        return conn
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
    return conn


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
    conn.close()
    say_reply(ftp.voidresp())
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
    conn.close()
    say_reply(ftp.voidresp())
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
    conn.close()
    say_reply(ftp.voidresp())
    for line in data.decode("utf-8", "replace").splitlines():
        say("| " + line)


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    host, port, ops = argv[1], int(argv[2]), argv[3:]
    ftp = ftplib.FTP(timeout=TIMEOUT)
    say_reply(ftp.connect(host, port))
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
