#!/usr/bin/env python3
"""The measuring half of scripts/bench.sh (which starts and stops the servers).

Modes:
  bench.py measure --target NAME=PORT[:PID] ... [--raw NAME=PORT[:PID] ...]
      Times whole FTP sessions on 127.0.0.1 against each target, the same workload
      for each, and prints medians with min-max and the ratio to the first target.
  bench.py source PORT FILE     serve FILE raw (sendfile) to every connection
  bench.py relay PORT DEST      a trivial one-thread relay: splice through 1 MiB pipes

Every socket operation has a timeout; every loop is bounded by its count.
"""

import argparse
import ftplib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
TIMEOUT = 60


def cpu_seconds(pid):
    """utime+stime of a process, its threads and its reaped children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree(pid):
    """pid and its descendants (one level of forking suffices for the peers here)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == pid:
            pids.append(int(entry))
    return pids


def memory_kib(pid):
    """(PSS, RSS) in KiB summed over pid and its children."""
    pss = rss = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return pss, rss


def session(port, small):
    """login, PASV, RETR the small file, QUIT; returns the bytes received."""
    got = bytearray()
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=TIMEOUT)
    ftp.login("anonymous", "bench@")
    ftp.set_pasv(True)
    ftp.retrbinary(f"RETR {small}", got.extend)
    ftp.quit()
    return len(got)


def sequential(port, n, small):
    t = time.perf_counter()
    for _ in range(n):
        if session(port, small) != 1024:
            raise RuntimeError("short small file")
    return (time.perf_counter() - t) * 1000 / n


def concurrent(port, n, small):
    errors = []
    start = threading.Barrier(n + 1, timeout=TIMEOUT)

    def one():
        try:
            start.wait()
            session(port, small)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join(TIMEOUT)
    wall = time.perf_counter() - t
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} concurrent sessions failed: {errors[0]!r}")
    return wall


def big_download(port, big, size):
    """One PASV RETR of the big file with curl (Python's own loop when curl is
    missing); bytes per second."""
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-sS", "--disable-epsv", "-o", "/dev/null", "--max-time", str(TIMEOUT),
             "-w", "%{size_download} %{time_total} %{time_pretransfer}",
             f"ftp://{HOST}:{port}/{big}"],
            check=True, capture_output=True, text=True, timeout=TIMEOUT + 5).stdout.split()
        got, total, pre = int(out[0]), float(out[1]), float(out[2])
        if got != size:
            raise RuntimeError(f"big file: {got} of {size} bytes")
        return size / (total - pre)
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=TIMEOUT)
    ftp.login("anonymous", "bench@")
    ftp.voidcmd("TYPE I")
    t = time.perf_counter()
    conn = ftp.transfercmd(f"RETR {big}")
    got = recv_all(conn)
    conn.close()
    ftp.voidresp()
    secs = time.perf_counter() - t
    ftp.quit()
    if got != size:
        raise RuntimeError(f"big file: {got} of {size} bytes")
    return size / secs


def recv_all(sock):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    while True:
        n = sock.recv_into(view)
        if n == 0:
            return got
        got += n


def raw_download(port, size):
    s = socket.create_connection((HOST, port), timeout=TIMEOUT)
    t = time.perf_counter()
    got = recv_all(s)
    secs = time.perf_counter() - t
    s.close()
    if got != size:
        raise RuntimeError(f"raw stream: {got} of {size} bytes")
    return size / secs


def expect(sock, *codes):
    """Reads until a final reply line with one of these codes; returns it. (One
    command at a time: the peer breaks on pipelined commands.)"""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while True:
        m = re.search(rb"(?:^|\n)(" + b"|".join(codes) + rb") ", data)
        if m:
            return m.group(1)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {codes!r} reply")
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed while waiting for {codes!r}")
        data += chunk


def idle_sessions(port, pid, n):
    """Opens n logged-in sessions, returns the proxy's (PSS, RSS) with them open."""
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection((HOST, port), timeout=TIMEOUT))
        for s in socks:
            expect(s, b"220")
            s.sendall(b"USER anonymous\r\n")
        # pure-ftpd logs anonymous users in on USER alone.
        asked = [s for s in socks if expect(s, b"331", b"230") == b"331"]
        for s in asked:
            s.sendall(b"PASS bench@\r\n")
        for s in asked:
            expect(s, b"230")
        time.sleep(0.5)
        return memory_kib(pid)
    finally:
        for s in socks:
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
            s.close()


def med(xs):
    return statistics.median(xs)


def fmt(xs, unit, digits=2):
    m = med(xs)
    unit = f" {unit}" if unit else ""
    return f"{m:.{digits}f}{unit} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def parse_target(spec):
    name, rest = spec.split("=", 1)
    port, _, pid = rest.partition(":")
    return name, int(port), int(pid) if pid else None


def measure(args):
    targets = [parse_target(t) for t in args.target]
    raws = [parse_target(t) for t in args.raw]
    rows = []
    results = {}
    # Rounds: every target once per round, in turn, so that a change of machine load
    # during the run falls on all columns alike instead of on one.
    for name, port, _ in targets:
        session(port, args.small)  # warm up
        results[name] = {"seq": [], "conc": [], "big": [], "cpu": []}
    for _ in range(args.runs):
        for name, port, pid in targets:
            r = results[name]
            r["seq"].append(sequential(port, args.n, args.small))
            r["conc"].append(concurrent(port, args.n, args.small))
            before = cpu_seconds(pid) if pid else None
            r["big"].append(big_download(port, args.big, args.size) / 1e6)
            if pid:
                time.sleep(0.3)  # a forked peer's child must be reaped to be counted
                r["cpu"].append((cpu_seconds(pid) - before) * (1 << 30) / args.size)
    for name, port, pid in targets:
        r = results[name]
        if pid:
            r["mem"] = idle_sessions(port, pid, args.n)
            if args.idle:
                r["idle"] = idle_sessions(port, pid, args.idle)
        print(f"bench: {name} measured", file=sys.stderr, flush=True)
    for name, port, pid in raws:
        r = results.setdefault(name, {})
        speeds, cpus = [], []
        for _ in range(args.runs):
            before = cpu_seconds(pid) if pid else None
            speeds.append(raw_download(port, args.size) / 1e6)
            if pid:
                cpus.append((cpu_seconds(pid) - before) * (1 << 30) / args.size)
        r["raw"] = speeds
        r["cpu"] = cpus
        print(f"bench: {name} measured", file=sys.stderr, flush=True)

    base = results[targets[0][0]]

    def ratio(key, name, inverse=False):
        b = med(base[key])
        v = med(results[name][key])
        return f" ({(b / v if inverse else v / b):.2f}x)"

    n = args.n
    gib = args.size / (1 << 30)
    rows.append(("figure", *[t[0] for t in targets]))
    rows.append((f"{n} sequential sessions, ms/session",
                 *[fmt(results[t[0]]["seq"], "ms") + ratio("seq", t[0]) for t in targets]))
    rows.append((f"{n} concurrent sessions, wall s",
                 *[fmt(results[t[0]]["conc"], "s", 3) + ratio("conc", t[0]) for t in targets]))
    rows.append((f"{gib:g} GiB PASV RETR, MB/s",
                 *[fmt(results[t[0]]["big"], "", 0) + ratio("big", t[0]) for t in targets]))
    rows.append(("proxy CPU s per GiB",
                 *[fmt(results[t[0]]["cpu"], "s") if results[t[0]]["cpu"] else "-"
                   for t in targets]))
    rows.append((f"proxy PSS / RSS, {n} sessions open",
                 *[f"{results[t[0]]['mem'][0] / 1024:.1f} / {results[t[0]]['mem'][1] / 1024:.1f} MiB"
                   if "mem" in results[t[0]] else "-" for t in targets]))
    if args.idle:
        rows.append((f"proxy PSS / RSS, {args.idle} idle sessions",
                     *[f"{results[t[0]]['idle'][0] / 1024:.1f} / {results[t[0]]['idle'][1] / 1024:.1f} MiB"
                       if "idle" in results[t[0]] else "-" for t in targets]))
    print()
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")
    if raws:
        print()
        print(f"Raw TCP, {gib:g} GiB, same run (machine limit):")
        print()
        print("| path | MB/s | relay CPU s per GiB |")
        print("|---|---|---|")
        for name, _, pid in raws:
            r = results[name]
            cpu = fmt(r["cpu"], "s") if r["cpu"] else "-"
            print(f"| {name} | {fmt(r['raw'], '', 0)} | {cpu} |")
    print()
    print(f"medians of {args.runs} runs (min-max); ratio to {targets[0][0]}")


def source(port, path):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(16)
    while True:
        c, _ = ls.accept()
        with open(path, "rb") as f:
            try:
                c.sendfile(f)
            except OSError:
                pass
        c.close()


def relay(port, dest):
    """One thread, one connection at a time, splice through a 1 MiB pipe per direction."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(16)
    F_SETPIPE_SZ = 1031
    import fcntl

    while True:
        a, _ = ls.accept()
        b = socket.create_connection((HOST, dest), timeout=TIMEOUT)
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        b.setblocking(True)
        a.setblocking(True)
        try:
            while True:
                n = os.splice(b.fileno(), w, 1 << 20)
                if n == 0:
                    break
                while n:
                    n -= os.splice(r, a.fileno(), n)
        except OSError:
            pass
        for x in (a, b):
            x.close()
        os.close(r)
        os.close(w)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--target", action="append", default=[])
    m.add_argument("--raw", action="append", default=[])
    m.add_argument("--n", type=int, default=200)
    m.add_argument("--idle", type=int, default=0)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--small", default="small")
    m.add_argument("--big", default="big")
    m.add_argument("--size", type=int, default=1 << 30)
    s = sub.add_parser("source")
    s.add_argument("port", type=int)
    s.add_argument("path")
    r = sub.add_parser("relay")
    r.add_argument("port", type=int)
    r.add_argument("dest", type=int)
    a = p.parse_args()
    if a.mode == "measure":
        measure(a)
    elif a.mode == "source":
        source(a.port, a.path)
    else:
        relay(a.port, a.dest)


if __name__ == "__main__":
    main()
