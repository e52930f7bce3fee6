#!/usr/bin/env python3
"""The measuring half of scripts/bench.sh (which starts and stops the servers).

Modes:
  bench.py measure --target NAME=PORT[:PID] ... [--raw NAME=PORT[:PID] ...]
      Times whole FTP sessions on 127.0.0.1 against each target, the same workload
      for each, and prints medians with min-max and the ratio to the first target.
      --ctl NAME=PORT[:PID] ... adds the control-flood figures against the control
      server below (the first --ctl is the server itself, "direct"): a victim's NOOP
      round trips beside a client flooding bare newlines, and the proxy's memory per
      session while clients flood a server that stopped reading.
      --xlate NAME=PORT[:PID] adds the translated-transfer figure against one proxy
      listening on 127.0.0.1 and ::1 in front of the IPv4 server: a 1 GiB EPSV
      download by an IPv6 client (translated) against the same download by an
      IPv4 client (untranslated), in turn, with the ratio.
  bench.py source PORT FILE     serve FILE raw (sendfile) to every connection
  bench.py relay PORT DEST [--both-ways]
                                a trivial one-thread relay: splice through 1 MiB pipes
                                (the client's bytes too, in a second thread, with
                                --both-ways)
  bench.py tls-source PORT FILE CERT KEY
                                serve FILE over TLS 1.3 (Python ssl) to every connection:
                                the source of the FTPS section's raw TLS stream
  bench.py tls-relay PORT DEST CERT KEY CA
                                a trivial TLS-terminating relay in Python (decrypt,
                                re-encrypt), a second opinion beside socat
  bench.py ctl PORT             a minimal FTP control server that reads as fast as it
                                is sent to (see ctl_session)
  bench.py flood PORT SECS LEN  one client sending LEN-byte blank lines for SECS

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
    """pid and all its descendants (a forking peer's sessions may be grandchildren)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [pid]
    while todo and len(pids) < 100_000:
        p = todo.pop()
        pids.append(p)
        todo.extend(children.get(p, []))
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


def big_download(port, big, size, host=HOST, epsv=False):
    """One PASV RETR (EPSV with `epsv`) of the big file with curl (Python's own loop
    when curl is missing, PASV only); bytes per second. `host` may be `[::1]`."""
    if shutil.which("curl"):
        mode = [] if epsv else ["--disable-epsv"]
        out = subprocess.run(
            ["curl", "-sS", "-g", *mode, "-o", "/dev/null", "--max-time", str(TIMEOUT),
             "-w", "%{size_download} %{time_total} %{time_pretransfer}",
             f"ftp://{host}:{port}/{big}"],
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


def read_reply(f, code):
    """Reads reply lines from the file `f` until the final one; returns it. Fails on
    another code."""
    for _ in range(1000):
        line = f.readline()
        if not line:
            raise RuntimeError(f"closed while waiting for {code!r}")
        if line[:3] != code[:3] and line[3:4] == b" ":
            raise RuntimeError(f"{line!r} instead of {code!r}")
        if line[:4] == code[:3] + b" ":
            return line
    raise RuntimeError(f"no final {code!r} line")


def control_login(port):
    """A logged-in control connection to the control server (through `port`)."""
    s = socket.create_connection((HOST, port), timeout=TIMEOUT)
    f = s.makefile("rb")
    read_reply(f, b"220")
    s.sendall(b"USER anonymous\r\n")
    read_reply(f, b"230")
    return s, f


def noop_rtts(port, seconds, limit=200_000):
    """NOOP round trips in ms, one at a time, for `seconds` (at most `limit`)."""
    s, f = control_login(port)
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(out) < limit:
        t = time.perf_counter()
        s.sendall(b"NOOP\r\n")
        read_reply(f, b"200")
        out.append((time.perf_counter() - t) * 1000)
    s.sendall(b"QUIT\r\n")
    s.close()
    return out


def flooder(port, seconds, line_len):
    """Sends `line_len`-byte blank lines (spaces, then LF) as fast as the path takes
    them, for `seconds`; prints the bytes sent."""
    s = socket.create_connection((HOST, port), timeout=TIMEOUT)
    read_reply(s.makefile("rb"), b"220")
    chunk = (b" " * (line_len - 1) + b"\n") * max(1, (64 << 10) // line_len)
    sent = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    s.close()
    print(sent, flush=True)


FLOOD_SECS = 5.0


def victim_beside_flooder(port, flood):
    """A victim's NOOP round trips (ms) while, if `flood`, another client floods bare
    newlines through the same port; and the flood's rate in MB/s (0 without)."""
    if not flood:
        return noop_rtts(port, FLOOD_SECS - 1), 0.0
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "flood", str(port),
                          str(FLOOD_SECS), "1"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        rtts = noop_rtts(port, FLOOD_SECS - 1)
        out, _ = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return rtts, int(out.split()[0]) / FLOOD_SECS / 1e6


def open_deaf(port, n):
    """n connections through `port` whose server was told to stop reading them."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=TIMEOUT)
        read_reply(s.makefile("rb"), b"220")
        s.sendall(b"SITE DEAF\r\n")
        # A small send buffer: what the client's kernel holds is nobody's RSS.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
        s.setblocking(False)
        socks.append(s)
    return socks


def flood_until_stalled(socks, line_len, limit=90.0):
    """Sends `line_len`-byte blank lines on every socket until none takes any more
    for half a second, or `limit` seconds have passed, or a socket took 32 MiB (a
    path that stalls takes a few MiB: what the kernel buffers); returns the bytes
    taken and whether the path stalled."""
    line = b" " * (line_len - 1) + b"\n"
    chunk = line * ((64 << 10) // line_len + 1)
    sent = [0] * len(socks)
    start = last = time.monotonic()
    while time.monotonic() - last < 0.5:
        if time.monotonic() - start > limit:
            return sum(sent), False
        moved = False
        for i, s in enumerate(socks):
            if sent[i] >= 32 << 20:
                return sum(sent), False
            try:
                n = s.send(chunk[sent[i] % line_len:])
            except BlockingIOError:
                continue
            sent[i] += n
            moved = True
        if moved:
            last = time.monotonic()
        else:
            time.sleep(0.002)
    return sum(sent), True


def flood_memory(port, pid, n, line_lens):
    """The proxy's (PSS, RSS) growth per session, in KiB, while n clients flood
    blank lines of each length in `line_lens` at a server that stopped reading, with
    the bytes each group had taken and whether it stalled (a proxy that answers
    blank lines itself and drops what its client does not read never does): a list,
    one entry per length. Each group floods on
    top of the ones before, all kept open to the end: memory freed by a closed
    session would be reused by the next group and hide its growth. One session floods
    1-byte lines first (and stays open, for the same reason), so that what the proxy
    keeps for all sessions after its first flood (the capacity of the core's action
    queue) is not counted per session."""
    warm = open_deaf(port, 1)
    groups = [warm]
    out = []
    try:
        flood_until_stalled(warm, 1, limit=10.0)
        for line_len in line_lens:
            socks = open_deaf(port, n)
            groups.append(socks)
            time.sleep(0.5)
            before = memory_kib(pid)
            taken, stalled = flood_until_stalled(socks, line_len)
            time.sleep(0.3)
            after = memory_kib(pid)
            out.append((((after[0] - before[0]) / n, (after[1] - before[1]) / n), taken, stalled))
    finally:
        for socks in groups:
            for s in socks:
                s.close()
    time.sleep(0.5)
    return out


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


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

    xlate = measure_xlate(args)

    ctls = [parse_target(t) for t in args.ctl]
    floods = {}
    for name, _, _ in ctls:
        floods[name] = {"alone": [], "beside": [], "rate": []}
    # Memory first, while the proxies have freed nothing that could hide growth.
    for name, port, pid in ctls:
        if pid:
            lens = (400, 1)
            for line_len, m in zip(lens, flood_memory(port, pid, args.flood_n, lens)):
                floods[name][line_len] = m
    for _ in range(args.runs):
        for name, port, _ in ctls:
            r = floods[name]
            r["alone"] += victim_beside_flooder(port, False)[0]
            rtts, rate = victim_beside_flooder(port, True)
            r["beside"] += rtts
            r["rate"].append(rate)
    if ctls:
        print("bench: control floods measured", file=sys.stderr, flush=True)

    if targets:
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
    if ctls:
        def rtt(xs, ref):
            ratio = f" ({p99(xs) / p99(ref):.1f}x)" if ref else ""
            return f"{med(xs):.3f} / {p99(xs):.3f} ms{ratio}"

        d = floods[ctls[0][0]]
        print()
        print("Control-connection floods, against the bench's control server (same run):")
        print()
        print("| figure | " + " | ".join(c[0] for c in ctls) + " |")
        print("|---|" + "---|" * len(ctls))
        print("| victim NOOP round trip alone, median / p99 | "
              + " | ".join(rtt(floods[c[0]]["alone"], d["alone"]) for c in ctls) + " |")
        print("| victim NOOP round trip beside a flooder, median / p99 | "
              + " | ".join(rtt(floods[c[0]]["beside"], d["beside"]) for c in ctls) + " |")
        print("| the flooder's bare newlines, MB/s | "
              + " | ".join(fmt(floods[c[0]]["rate"], "", 1) for c in ctls) + " |")
        for line_len in (1, 400):
            cells = []
            for c in ctls:
                m = floods[c[0]].get(line_len)
                if not m:
                    cells.append("-")
                    continue
                (pss, rss), taken, stalled = m
                took = f"{taken / args.flood_n / 1e6:.1f} MB taken each"
                if not stalled:
                    took += ", still taking at the end"
                cells.append(f"{pss:.0f} / {rss:.0f} KiB ({took})")
            print(f"| PSS / RSS per session, {args.flood_n} clients flooding {line_len}-byte lines "
                  f"at a server that stopped reading | " + " | ".join(cells) + " |")
        print()
        print(f"round trips pooled over {args.runs} runs of {FLOOD_SECS - 1:g} s; "
              f"p99 ratio to {ctls[0][0]}")
    if xlate:
        print_xlate(args, xlate)
    if targets:
        print()
        print(f"medians of {args.runs} runs (min-max); ratio to {targets[0][0]}")


# The translated download must keep this share of the untranslated one (issue 17).
XLATE_TARGET = 0.9


def measure_xlate(args):
    """The translated-transfer figure: through one proxy, a SIZE EPSV download by an
    IPv4 client (untranslated, the baseline) and by an IPv6 client from the same
    IPv4 server (translated), in turn in every run so that load falls on both.
    Returns {path: ([MB/s], [CPU s per GiB])}, or None without --xlate."""
    if not args.xlate:
        return None
    if not shutil.which("curl"):
        print("bench: curl is missing: no translated-transfer figure", file=sys.stderr)
        return None
    name, port, pid = parse_target(args.xlate)
    paths = (("IPv4 client, untranslated", HOST), ("IPv6 client to IPv4 server, translated", "[::1]"))
    out = {p: ([], []) for p, _ in paths}
    for p, host in paths:
        big_download(port, args.big, args.size, host, epsv=True)  # warm up
    for _ in range(args.runs):
        for p, host in paths:
            before = cpu_seconds(pid) if pid else None
            out[p][0].append(big_download(port, args.big, args.size, host, epsv=True) / 1e6)
            if pid:
                out[p][1].append((cpu_seconds(pid) - before) * (1 << 30) / args.size)
    print(f"bench: {name} translated transfers measured", file=sys.stderr, flush=True)
    return name, out


def print_xlate(args, xlate):
    name, out = xlate
    gib = args.size / (1 << 30)
    (base, (bs, _)), (_, (ts, _)) = list(out.items())
    ratio = med(ts) / med(bs)
    print()
    print(f"Translated transfer, {gib:g} GiB EPSV RETR through one {name} "
          f"(-b 127.0.0.1 -b ::1 -R 127.0.0.1, relay), same run:")
    print()
    print("| path | MB/s | proxy CPU s per GiB |")
    print("|---|---|---|")
    for path, (speeds, cpus) in out.items():
        cpu = fmt(cpus, "s") if cpus else "-"
        print(f"| {path} | {fmt(speeds, '', 0)} ({med(speeds) / med(bs):.2f}x) | {cpu} |")
    verdict = "met" if ratio >= XLATE_TARGET else "NOT met"
    print()
    print(f"translated / untranslated: {ratio:.2f}x (target >= {XLATE_TARGET:.2f}x: {verdict})")


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


def splice_all(src, dst, r, w):
    """src to dst through the pipe (r, w) until src's EOF (passed on as a half-close:
    a TLS peer waits for it after its close_notify) or an error."""
    try:
        while True:
            n = os.splice(src.fileno(), w, 1 << 20)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def relay(port, dest, both_ways=False):
    """One thread, one connection at a time, splice through a 1 MiB pipe per direction.
    Only the server's bytes are relayed unless both_ways (a TLS stream, whose client
    speaks first in the handshake): then a second thread splices the client's."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(16)
    F_SETPIPE_SZ = 1031
    import fcntl

    while True:
        a, _ = ls.accept()
        b = socket.create_connection((HOST, dest), timeout=TIMEOUT)
        pipes = []
        for _ in range(2 if both_ways else 1):
            r, w = os.pipe()
            fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
            pipes.append((r, w))
        b.setblocking(True)
        a.setblocking(True)
        up = None
        if both_ways:
            up = threading.Thread(target=splice_all, args=(a, b, *pipes[1]), daemon=True)
            up.start()
        splice_all(b, a, *pipes[0])
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)  # wakes the other direction's splice
            except OSError:
                pass
        if up:
            up.join(TIMEOUT)
        for x in (a, b):
            x.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def tls_source(port, path, cert, key):
    """One connection at a time: a TLS 1.3 handshake, FILE in 1 MiB writes, close_notify.
    Python's ssl encrypts with OpenSSL (AES-NI), as pure-ftpd does."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(16)
    while True:
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        try:
            t = ctx.wrap_socket(c, server_side=True)
            with open(path, "rb") as f:
                for _ in range(1 << 20):  # bounded: 1 TiB in 1 MiB writes
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    t.sendall(chunk)
            t.unwrap()
        except (OSError, ValueError):
            pass
        c.close()


def tls_relay(port, dest, cert, key, ca):
    """A trivial TLS-terminating relay in Python, one connection at a time: TLS in
    from the client, TLS out to dest (verified against ca), the plaintext copied by
    recv_into/sendall in a thread per direction. Python's cost per record makes it a
    poor limit; it stands beside socat as a second opinion."""
    import ssl

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sctx.load_cert_chain(cert, key)
    cctx = ftps_context(ca)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(16)

    def pump(src, dst):
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(view)
                if n == 0:
                    break
                dst.sendall(view[:n])
        except (OSError, ValueError):
            pass

    while True:
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        try:
            a = sctx.wrap_socket(c, server_side=True)
            b = cctx.wrap_socket(socket.create_connection((HOST, dest), timeout=TIMEOUT),
                                 server_hostname=HOST)
        except (OSError, ValueError):
            c.close()
            continue
        up = threading.Thread(target=pump, args=(a, b), daemon=True)
        up.start()
        pump(b, a)
        try:
            a.unwrap()  # close_notify to the client: the stream's end
        except (OSError, ValueError):
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        up.join(TIMEOUT)
        a.close()
        b.close()


def tls_raw_download(port, ctx, size, ciphers):
    """The raw TLS stream of tls_source, through whatever listens on port; MB/s."""
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
    t = time.perf_counter()
    s = ctx.wrap_socket(raw, server_hostname=HOST)
    ciphers.add(f"{s.version()} {s.cipher()[0]}")
    got = tls_recv_all(s)
    secs = time.perf_counter() - t
    s.close()
    if got != size:
        raise RuntimeError(f"raw TLS stream: {got} of {size} bytes")
    return size / secs


def ctl_session(c):
    """One control connection of the bench's control server: a greeting, 230 to
    USER, 200 to NOOP, 221 to QUIT, 502 to anything else; blank lines are skipped
    unanswered, as FTP servers do, read in 1 MiB at a time so that the server keeps
    up with any flood. After `SITE DEAF` it never reads the connection again (a
    server that stopped reading), and lets it go after TIMEOUT * 10 s."""
    c.settimeout(TIMEOUT * 10)
    try:
        c.sendall(b"220 bench control server\r\n")
        buf = b""
        while True:
            d = c.recv(1 << 20)
            if not d:
                return
            buf = (buf + d).lstrip(b" \r\n")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                buf = buf.lstrip(b" \r\n")
                cmd = line.strip().upper()
                if cmd.startswith(b"USER"):
                    c.sendall(b"230 logged in\r\n")
                elif cmd == b"NOOP":
                    c.sendall(b"200 NOOP ok\r\n")
                elif cmd == b"SITE DEAF":
                    # A small buffer from now on, so that the flood stalls sooner.
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    time.sleep(TIMEOUT * 10)
                    return
                elif cmd == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"502 not here\r\n")
    except OSError:
        pass
    finally:
        c.close()


def ctl(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(1024)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=ctl_session, args=(c,), daemon=True).start()


# --- FTPS (issue 16): the same kinds of figures over TLS, `bench.py ftps` -------------
#
# The client is Python's ssl module, pinned to TLS 1.3 and verifying the server's
# certificate against the bench's CA (for the address 127.0.0.1, an IP SAN). Each
# PROT P data connection offers the control connection's TLS session (`session=`),
# as curl and lftp do; whether the server resumed it is counted and printed.

FTPS_TARGETS = {"front": 0.9, "both": 0.75}  # download ratio to direct FTPS
FTPS_CONC_TARGET = 1.3  # sequential and concurrent sessions, against direct FTPS
FTPS_IDLE_TARGET_MIB = 48


def ftps_context(ca):
    import ssl

    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class FtpsSession:
    """One explicit-FTPS control connection (AUTH TLS, login, PBSZ 0, PROT P) with
    replies read one command at a time."""

    def __init__(self, port, ctx, prot_p=True):
        self.ctx = ctx
        raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
        # As curl and lftp do: without it the client's Nagle holds USER (written
        # right after the handshake's last flight) for a delayed ACK, 40 ms a
        # session, whoever the server is.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = raw.makefile("rb")
        read_reply(f, b"220")
        f.close()
        raw.sendall(b"AUTH TLS\r\n")
        f = raw.makefile("rb")
        read_reply(f, b"234")
        f.close()
        self.sock = ctx.wrap_socket(raw, server_hostname=HOST)
        self.f = self.sock.makefile("rb")
        self.sock.sendall(b"USER anonymous\r\n")
        line = self.f.readline()
        for _ in range(100):
            if re.match(rb"\d{3} ", line) or not line:
                break
            line = self.f.readline()
        if line[:3] == b"331":
            self.cmd(b"PASS bench@", b"230")
        elif line[:3] != b"230":
            raise RuntimeError(f"USER: {line!r}")
        if prot_p:
            self.cmd(b"PBSZ 0", b"200")
            self.cmd(b"PROT P", b"200")
        self.cmd(b"TYPE I", b"200")

    def cmd(self, line, code):
        self.sock.sendall(line + b"\r\n")
        return read_reply(self.f, code)

    def start_retr(self, name):
        """PASV, connect, RETR, then the TLS handshake on the data connection (after
        the 150, as ftplib does); returns the TLS data socket."""
        reply = self.cmd(b"PASV", b"227")
        nums = re.search(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply).groups()
        port = int(nums[4]) * 256 + int(nums[5])
        data = socket.create_connection((HOST, port), timeout=TIMEOUT)
        data.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"RETR " + name.encode() + b"\r\n")
        read_reply(self.f, b"150")
        return self.ctx.wrap_socket(data, server_hostname=HOST, session=self.sock.session)

    def finish_retr(self):
        read_reply(self.f, b"226")

    def quit(self):
        try:
            self.cmd(b"QUIT", b"221")
        except (OSError, RuntimeError):
            pass
        self.close()

    def close(self):
        self.f.close()
        self.sock.close()


def tls_recv_all(sock):
    """Bytes until the peer's close_notify (or a bare TCP close, which pure-ftpd
    may send after its last record)."""
    import ssl

    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    while True:
        try:
            n = sock.recv_into(view)
        except ssl.SSLEOFError:
            return got
        if n == 0:
            return got
        got += n


def ftps_retr(s, name):
    """One PROT P RETR on session s; (bytes, resumed)."""
    data = s.start_retr(name)
    got = tls_recv_all(data)
    resumed = data.session_reused
    data.close()
    s.finish_retr()
    return got, resumed


def ftps_session(port, ctx, small, stats):
    s = FtpsSession(port, ctx)
    got, resumed = ftps_retr(s, small)
    s.quit()
    if got != 1024:
        raise RuntimeError(f"short small file over FTPS: {got} bytes")
    stats["data"] += 1
    stats["resumed"] += bool(resumed)


def ftps_sequential(port, ctx, n, small, stats):
    t = time.perf_counter()
    for _ in range(n):
        ftps_session(port, ctx, small, stats)
    return (time.perf_counter() - t) * 1000 / n


def ftps_concurrent(port, ctx, n, small, stats):
    errors = []
    start = threading.Barrier(n + 1, timeout=TIMEOUT)

    def one():
        try:
            start.wait()
            ftps_session(port, ctx, small, stats)
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
        raise RuntimeError(f"{len(errors)} of {n} concurrent FTPS sessions failed: {errors[0]!r}")
    return wall


def ftps_download(port, ctx, big, size, stats):
    """One PROT P RETR of the big file; bytes per second from the RETR to the 226."""
    s = FtpsSession(port, ctx)
    t = time.perf_counter()
    got, resumed = ftps_retr(s, big)
    secs = time.perf_counter() - t
    s.quit()
    if got != size:
        raise RuntimeError(f"big file over FTPS: {got} of {size} bytes")
    stats["data"] += 1
    stats["resumed"] += bool(resumed)
    return size / secs


def ftps_idle(port, pid, ctx, n):
    """The proxy's (PSS, RSS) before and with n sessions logged in over TLS and held
    open (no PROT P: what an idle TLS control session costs)."""
    time.sleep(0.3)
    before = memory_kib(pid)
    sessions = []
    try:
        for _ in range(n):
            sessions.append(FtpsSession(port, ctx, prot_p=False))
        time.sleep(0.5)
        return before, memory_kib(pid)
    finally:
        for s in sessions:
            s.quit()


def ftps_transfers(port, pid, ctx, n, big):
    """The proxy's (PSS, RSS) before and with n PROT P downloads of the big file in
    flight, each read 1 MiB into and then left unread (so the relay's buffers on
    every path fill up: the most a transfer holds)."""
    time.sleep(0.3)
    before = memory_kib(pid)
    sessions, datas = [], []
    try:
        for _ in range(n):
            s = FtpsSession(port, ctx)
            sessions.append(s)
            d = s.start_retr(big)
            datas.append(d)
            got = 0
            while got < 1 << 20:
                got += len(d.recv(1 << 16))
        time.sleep(1.0)
        return before, memory_kib(pid)
    finally:
        for d in datas:
            d.close()
        for s in sessions:
            s.close()
        time.sleep(0.5)


def profile_download(kind, pid, port, fn, out_dir):
    """Runs fn() (one download through the proxy `pid`) under `perf record` (or, if
    perf is missing or cannot sample here, `strace -c`) and prints where the
    proxy's time went."""
    perf = shutil.which("perf")
    if perf:
        data = os.path.join(out_dir, f"perf-{port}.data")
        rec = subprocess.Popen([perf, "record", "-q", "-F", "997", "-g", "-p", str(pid), "-o", data],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        try:
            fn()
        finally:
            rec.send_signal(2)
            try:
                _, err = rec.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                rec.kill()
                _, err = rec.communicate()
        # perf exits 130 on the SIGINT that ends it; what counts is a usable report.
        if os.path.exists(data) and os.path.getsize(data) > 0:
            rep = subprocess.run([perf, "report", "-i", data, "--stdio", "--no-children",
                                  "-g", "none", "--percent-limit", "1.5", "--sort", "dso,symbol"],
                                 capture_output=True, text=True, timeout=120)
            lines = [re.sub(r"(\s+-)+\s*$", "", ln) for ln in rep.stdout.splitlines()
                     if ln.strip() and not ln.startswith("#")]
        else:
            lines = []
        if lines:
            print(f"\nwhere {kind}'s time goes during the download (perf record -g, self time, >= 1.5%):\n")
            print("```")
            print("\n".join(lines[:30]))
            print("```")
            return
        print(f"bench: perf record gave no samples (rc {rec.returncode}: {err.strip()[-200:]}); "
              "strace -c instead", file=sys.stderr)
    if not shutil.which("strace"):
        print(f"\n(no perf and no strace: no profile of {kind})")
        return
    out = os.path.join(out_dir, f"strace-{port}.txt")
    st = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        fn()
    finally:
        st.send_signal(2)
        st.wait(timeout=60)
    with open(out) as f:
        print(f"\n{kind}'s system calls during the download (strace -c -f):\n")
        print("```")
        print("".join(f.readlines()[:20]).rstrip())
        print("```")


def client_cpu():
    """CPU seconds of this process and its reaped children (curl)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def runqueue_wait(pid, tasks=None):
    """Seconds the threads of pid (or only `tasks`) have spent runnable but waiting
    for a CPU (/proc/PID/task/*/schedstat, second field): what a busy machine takes
    from it."""
    ns = 0
    try:
        tasks = tasks or os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                ns += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return ns / 1e9


def client_wait():
    """runqueue_wait of this process's main thread, the one that downloads (the
    session threads of the concurrent figure come and go)."""
    return runqueue_wait(os.getpid(), [str(threading.main_thread().native_id)])


def parse_server(spec):
    name, pid = spec.rsplit("=", 1)
    return name, int(pid)


def ftps_measure(args):
    """Columns: the first --target is the direct FTPS server; each further one is a
    proxy NAME=PORT:PID:KIND (KIND `front` or `both`, which picks its download
    target). --plain NAME=PORT[:PID] ... are plain FTP paths whose big download is
    measured in the same rounds, for reference."""
    ctx = ftps_context(args.ca)
    targets = []
    for spec in args.target:
        name, rest = spec.split("=", 1)
        parts = rest.split(":")
        targets.append((name, int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1] else None,
                        parts[2] if len(parts) > 2 else None))
    plains = [parse_target(t) for t in args.plain]
    res = {}
    for name, port, pid, _ in targets:
        res[name] = {"seq": [], "conc": [], "big": [], "cpu": [], "data": 0, "resumed": 0}
        # Memory growth is counted from the process as it started: after sessions
        # and transfers its allocator holds freed memory that later sessions reuse,
        # which would hide what they cost.
        if pid:
            res[name]["fresh"] = memory_kib(pid)
    for name, _, _ in plains:
        res[name] = {"big": [], "cpu": []}
    tls_raws = [parse_target(t) for t in args.tls_raw]
    for name, _, _ in tls_raws:
        res[name] = {"big": [], "cpu": []}
    ciphers = set()
    servers = dict(parse_server(x) for x in args.server_of)

    # Warm up; a proxy column whose session fails (say, a --server-tls build that
    # wants its CA under another option than bench.sh guessed) is left out with a
    # note rather than ending the run. Done before the memory figures: a failing
    # column would fail there first.
    for t in list(targets):
        name, port = t[0], t[1]
        try:
            ftps_session(port, ctx, args.small, res[name])
        except (OSError, RuntimeError) as e:
            if t is targets[0]:
                raise
            print(f"bench: {name}: an FTPS session fails ({e!r}): column left out "
                  f"(its log is in the bench's directory; KEEP=1 keeps it)", file=sys.stderr)
            print(f"(column \"{name}\" left out: an FTPS session through it fails: {e!r})")
            targets.remove(t)
            del res[name]

    # Memory first, on the process as it started: transfers (what one holds, exact,
    # against the fresh process), then idle sessions (against the same baseline: an
    # upper bound, since what the transfers freed may be counted again).
    for name, port, pid, _ in targets:
        if pid:
            if args.transfers:
                res[name]["xfer"] = ftps_transfers(port, pid, ctx, args.transfers, args.big)
            if args.idle:
                res[name]["idle"] = ftps_idle(port, pid, ctx, args.idle)
    print("bench: FTPS memory measured", file=sys.stderr, flush=True)

    def timed_download(name, pid, fn):
        """fn() under the CPU accounting of the whole path: the proxy `pid`, the
        server process serving this column (its session's child is counted once
        reaped) and the client (this process, or curl reaped as a child)."""
        r = res[name]
        spid = servers.get(name)
        before = (cpu_seconds(pid) if pid else None, cpu_seconds(spid) if spid else None, client_cpu(),
                  runqueue_wait(pid) if pid else None, client_wait())
        r["big"].append(fn() / 1e6)
        waits = (runqueue_wait(pid) if pid else None, client_wait())
        time.sleep(0.3)  # the server's session process must be reaped to be counted
        per_gib = (1 << 30) / args.size
        if pid:
            r["cpu"].append((cpu_seconds(pid) - before[0]) * per_gib)
        if spid:
            r.setdefault("server_cpu", []).append((cpu_seconds(spid) - before[1]) * per_gib)
        r.setdefault("client_cpu", []).append((client_cpu() - before[2]) * per_gib)
        if pid:
            r.setdefault("proxy_wait", []).append((waits[0] - before[3]) * per_gib)
        if name in [t[0] for t in targets]:  # the Python client itself (curl's is not seen)
            r.setdefault("client_wait", []).append((waits[1] - before[4]) * per_gib)

    for _ in range(args.runs):
        for name, port, pid, _ in targets:
            r = res[name]
            r["seq"].append(ftps_sequential(port, ctx, args.n, args.small, r))
            r["conc"].append(ftps_concurrent(port, ctx, args.n, args.small, r))
            timed_download(name, pid, lambda: ftps_download(port, ctx, args.big, args.size, r))
        for name, port, pid in plains:
            timed_download(name, pid, lambda: big_download(port, args.big, args.size))
        for name, port, pid in tls_raws:
            timed_download(name, pid, lambda: tls_raw_download(port, ctx, args.size, ciphers))
        print("bench: FTPS round measured", file=sys.stderr, flush=True)

    base = res[targets[0][0]]

    def ratio(key, name):
        return med(res[name][key]) / med(base[key])

    def cell(key, name, unit, digits, note=None):
        r = res[name]
        if not r.get(key):
            return "-"
        s = fmt(r[key], unit, digits)
        if key in ("seq", "conc", "big") and name in [t[0] for t in targets]:
            s += f" ({ratio(key, name):.2f}x)"
        return s + (note or "")

    names = [t[0] for t in targets] + [p[0] for p in plains]
    gib = args.size / (1 << 30)
    n = args.n
    rows = [("figure", *names)]
    rows.append((f"{n} sequential FTPS sessions (AUTH TLS, login, PROT P, RETR 1 KiB, QUIT), ms/session",
                 *[cell("seq", x, "ms", 2) for x in names]))
    rows.append((f"{n} concurrent FTPS sessions, wall s",
                 *[cell("conc", x, "s", 3) for x in names]))
    rows.append((f"{gib:g} GiB RETR (PROT P for FTPS columns, plain FTP for the plain ones), MB/s",
                 *[cell("big", x, "", 0) for x in names]))
    rows.append(("proxy CPU s per GiB", *[cell("cpu", x, "s", 2) for x in names]))
    rows.append(("server (pure-ftpd) CPU s per GiB", *[cell("server_cpu", x, "s", 2) for x in names]))
    rows.append(("client (Python ssl, or curl) CPU s per GiB",
                 *[cell("client_cpu", x, "s", 2) for x in names]))
    rows.append(("proxy waiting for a CPU (run queue), s per GiB",
                 *[cell("proxy_wait", x, "s", 2) for x in names]))
    rows.append(("Python client waiting for a CPU (run queue), s per GiB",
                 *[cell("client_wait", x, "s", 2) for x in names]))

    def mem(x, key, count):
        m = res.get(x, {}).get(key)
        if not m:
            return "-"
        (pb, rb), (pa, ra) = res[x]["fresh"], m[1]
        return (f"{pa / 1024:.1f} / {ra / 1024:.1f} MiB ({(pa - pb) / count:+.1f} / "
                f"{(ra - rb) / count:+.1f} KiB each)")

    if args.idle:
        rows.append((f"proxy PSS / RSS, {args.idle} idle TLS sessions, after the transfers (growth over the fresh process per session, at most)",
                     *[mem(x, "idle", args.idle) for x in names]))
    if args.transfers:
        rows.append((f"proxy PSS / RSS, {args.transfers} PROT P transfers in flight, measured first (growth over the fresh process per transfer)",
                     *[mem(x, "xfer", args.transfers) for x in names]))
    rows.append(("data handshakes that resumed the control session",
                 *[f"{res[x]['resumed']} of {res[x]['data']}" if "data" in res[x] else "-"
                   for x in names]))
    print()
    print("FTPS (explicit, TLS 1.3, Python ssl client), same run:")
    print()
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")
    print()
    print(f"medians of {args.runs} runs (min-max); ratio to {targets[0][0]}")

    print()
    print("Against the targets:")
    short = []
    for name, port, pid, kind in targets[1:]:
        want = FTPS_TARGETS.get(kind)
        if want is not None:
            got = ratio("big", name)
            ok = got >= want
            print(f"- {name}: download {got:.2f}x direct FTPS (target >= {want}x): "
                  f"{'met' if ok else 'SHORT'}")
            if not ok:
                short.append((name, port, pid))
        got = ratio("seq", name)
        print(f"- {name}: {n} sequential sessions {got:.2f}x direct FTPS (target <= {FTPS_CONC_TARGET}x): "
              f"{'met' if got <= FTPS_CONC_TARGET else 'SHORT'}")
        got = ratio("conc", name)
        print(f"- {name}: {n} concurrent sessions {got:.2f}x direct FTPS (target <= {FTPS_CONC_TARGET}x): "
              f"{'met' if got <= FTPS_CONC_TARGET else 'SHORT'}")
        if "idle" in res[name]:
            (_, rb), (_, ra) = res[name]["fresh"], res[name]["idle"][1]
            print(f"- {name}: RSS {ra / 1024:.1f} MiB with {args.idle} idle TLS sessions "
                  f"(target <= {FTPS_IDLE_TARGET_MIB} MiB at 500): "
                  f"{'met' if ra / 1024 <= FTPS_IDLE_TARGET_MIB else 'SHORT'}; "
                  f"one idle TLS session costs {(ra - rb) / args.idle:.1f} KiB RSS "
                  "(growth over the fresh process / sessions)")
        for p in plains:
            if p[2] == pid and res[p[0]]["cpu"] and res[name]["cpu"]:
                print(f"- {name}: {med(res[name]['cpu']) / med(res[p[0]]['cpu']):.1f}x the CPU per GiB "
                      f"of the plain relay (same process, {p[0]})")
    if tls_raws:
        print_tls_limit(args, res, tls_raws, targets, ciphers)
    if args.profile == "always":
        short = [(t[0], t[1], t[2]) for t in targets[1:] if t[2]]
    if args.profile != "never":
        for name, port, pid in short:
            profile_download(name, pid, port,
                             lambda port=port: ftps_download(port, ctx, args.big, args.size,
                                                             {"data": 0, "resumed": 0}),
                             args.out_dir)


def print_tls_limit(args, res, tls_raws, targets, ciphers):
    """This machine's limit for a TLS-terminating relay: the raw TLS stream directly,
    through a trivial relay that decrypts and re-encrypts, and through a plain relay
    of the TLS bytes; beside them our proxy's TLS-both-sides ratio from this run."""
    def cpu_cell(r, key):
        return fmt(r[key], "s", 2) if r.get(key) else "-"

    base = res[tls_raws[0][0]]
    gib = args.size / (1 << 30)
    print()
    print(f"This machine's limit for a TLS relay: a raw {gib:g} GiB TLS stream (Python ssl "
          f"source and client; {', '.join(sorted(ciphers)) or '?'}), same run:")
    print()
    print("| path | MB/s | × raw TLS direct | relay CPU s per GiB | source CPU s per GiB | client CPU s per GiB |")
    print("|---|---|---|---|---|---|")
    for name, _, pid in tls_raws:
        r = res[name]
        print(f"| {name} | {fmt(r['big'], '', 0)} | {med(r['big']) / med(base['big']):.2f}x | "
              f"{fmt(r['cpu'], 's', 2) if r['cpu'] else '-'} | {cpu_cell(r, 'server_cpu')} | "
              f"{fmt(r['client_cpu'], 's', 2)} |")
    direct = targets[0][0]
    for name, _, _, kind in targets[1:]:
        if kind == "both":
            r = res[name]
            print(f"| {name} (PROT P, × {direct}) | {fmt(r['big'], '', 0)} | "
                  f"{med(r['big']) / med(res[direct]['big']):.2f}x | {fmt(r['cpu'], 's', 2)} | "
                  f"{cpu_cell(r, 'server_cpu')} | {fmt(r['client_cpu'], 's', 2)} |")
    print()
    for name, _, pid in tls_raws[1:]:
        print(f"- {name} / {tls_raws[0][0]}: {med(res[name]['big']) / med(base['big']):.2f}x")
    for name, _, _, kind in targets[1:]:
        if kind == "both":
            print(f"- {name} / {direct} (PROT P download): "
                  f"{med(res[name]['big']) / med(res[direct]['big']):.2f}x "
                  f"(target >= {FTPS_TARGETS['both']}x)")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--target", action="append", default=[])
    m.add_argument("--raw", action="append", default=[])
    m.add_argument("--ctl", action="append", default=[])
    m.add_argument("--xlate", default=None)
    m.add_argument("--flood-n", type=int, default=50)
    m.add_argument("--n", type=int, default=200)
    m.add_argument("--idle", type=int, default=0)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--small", default="small")
    m.add_argument("--big", default="big")
    m.add_argument("--size", type=int, default=1 << 30)
    t = sub.add_parser("ftps")
    t.add_argument("--target", action="append", default=[])
    t.add_argument("--plain", action="append", default=[])
    t.add_argument("--ca", required=True)
    t.add_argument("--server-of", action="append", default=[])
    t.add_argument("--n", type=int, default=200)
    t.add_argument("--idle", type=int, default=0)
    t.add_argument("--transfers", type=int, default=50)
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--small", default="small")
    t.add_argument("--big", default="big")
    t.add_argument("--size", type=int, default=1 << 30)
    t.add_argument("--profile", choices=["short", "always", "never"], default="short")
    t.add_argument("--out-dir", default="/tmp")
    # NAME=PORT[:PID]: the raw TLS stream (the first is the direct one) and relays of it.
    t.add_argument("--tls-raw", action="append", default=[])
    tr = sub.add_parser("tls-relay")
    tr.add_argument("port", type=int)
    tr.add_argument("dest", type=int)
    tr.add_argument("cert")
    tr.add_argument("key")
    tr.add_argument("ca")
    ts = sub.add_parser("tls-source")
    ts.add_argument("port", type=int)
    ts.add_argument("path")
    ts.add_argument("cert")
    ts.add_argument("key")
    s = sub.add_parser("source")
    s.add_argument("port", type=int)
    s.add_argument("path")
    r = sub.add_parser("relay")
    r.add_argument("port", type=int)
    r.add_argument("dest", type=int)
    r.add_argument("--both-ways", action="store_true")
    c = sub.add_parser("ctl")
    c.add_argument("port", type=int)
    f = sub.add_parser("flood")
    f.add_argument("port", type=int)
    f.add_argument("seconds", type=float)
    f.add_argument("line_len", type=int)
    a = p.parse_args()
    if a.mode == "measure":
        measure(a)
    elif a.mode == "ftps":
        ftps_measure(a)
    elif a.mode == "source":
        source(a.port, a.path)
    elif a.mode == "ctl":
        ctl(a.port)
    elif a.mode == "tls-relay":
        tls_relay(a.port, a.dest, a.cert, a.key, a.ca)
    elif a.mode == "tls-source":
        tls_source(a.port, a.path, a.cert, a.key)
    elif a.mode == "flood":
        flooder(a.port, min(a.seconds, 60), a.line_len)
    else:
        relay(a.port, a.dest, a.both_ways)


if __name__ == "__main__":
    main()
