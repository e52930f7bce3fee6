#!/usr/bin/env bash
# A working ftp-proxy in one command, on loopback only:
#   sudo scripts/demo.sh
# Starts pure-ftpd on 127.0.0.1:$FTP_PORT serving a sample file, puts ftp-proxy in
# front of it on 127.0.0.1:$PROXY_PORT (reverse mode, userspace data relay), fetches
# the file through the proxy with curl in passive (EPSV) and active (EPRT) mode, and
# shows what the proxy logged. With a terminal it then waits so you can try your own
# clients; Ctrl-C (or Enter) stops everything. Without stdin it stops at the end.
# Nothing outside a temporary directory is changed, except: missing Debian packages
# (pure-ftpd, curl) are installed, and the proxy's account (_ftp_proxy, /var/empty)
# is created if missing, as for any deployment.
set -euo pipefail

FTP_PORT=${FTP_PORT:-2121}
PROXY_PORT=${PROXY_PORT:-8021}
cd "$(dirname "$0")/.."

die() { echo "demo: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (pure-ftpd runs in a private mount namespace; the proxy chroots): sudo $0"

missing=()
for tool in pure-ftpd curl openssl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "demo: installing pure-ftpd curl openssl"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pure-ftpd curl openssl </dev/null
fi
mkdir -p /var/empty
getent passwd _ftp_proxy >/dev/null ||
    useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin _ftp_proxy

for port in "$FTP_PORT" "$PROXY_PORT"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
        die "port $port is in use; choose others: FTP_PORT=... PROXY_PORT=... $0"
    fi
done

# sudo may drop ~/.cargo/bin from PATH.
if ! command -v cargo >/dev/null; then
    for d in "${HOME:-/root}/.cargo/bin" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}"; do
        if [ -n "$d" ] && [ -x "$d/cargo" ]; then
            PATH="$d:$PATH"
            break
        fi
    done
fi
command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
echo "demo: building ftp-proxy (cargo build -p ftp-proxy-cli)"
cargo build --quiet -p ftp-proxy-cli
target_dir=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
proxy_bin="$target_dir/debug/ftp-proxy"

dir=$(mktemp -d /tmp/ftp-proxy-demo.XXXXXX)
chmod 755 "$dir"
server_pid=""
proxy_pid=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$proxy_pid" ] && kill -TERM "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null || true
    # pure-ftpd forks per session: stop its whole process group.
    [ -n "$server_pid" ] && kill -TERM -- "-$server_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && wait "$server_pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "demo: kept $dir"; else rm -rf "$dir"; fi
    echo "demo: stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The files anonymous users get, and an `ftp` account pointing at them, visible only
# inside pure-ftpd's private mount namespace.
mkdir "$dir/pub"
chmod 755 "$dir/pub"
echo "Hello through ftp-proxy! $(date -u)" > "$dir/pub/hello.txt"
head -c 1048576 /dev/urandom > "$dir/pub/sample.bin"
chmod 644 "$dir/pub/"*
{ grep -v '^ftp:' /etc/passwd; echo "ftp:x:65534:65534:demo:$dir/pub:/usr/sbin/nologin"; } > "$dir/passwd"
chmod 644 "$dir/passwd"

setsid unshare -m --propagation private sh -c 'mount --bind "$0" /etc/passwd && exec "$@"' "$dir/passwd" \
    pure-ftpd -S "127.0.0.1,$FTP_PORT" -4 -H -A -i -f none -u 1 -p 30000:39999 -e \
    >"$dir/pure-ftpd.log" 2>&1 &
server_pid=$!

"$proxy_bin" -d -D 7 -b 127.0.0.1 -p "$PROXY_PORT" -R 127.0.0.1 -P "$FTP_PORT" >"$dir/ftp-proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do
    grep -q "listening on" "$dir/ftp-proxy.log" 2>/dev/null && break
    kill -0 "$proxy_pid" 2>/dev/null || { cat "$dir/ftp-proxy.log"; die "ftp-proxy exited"; }
    sleep 0.1
done
grep -q "listening on" "$dir/ftp-proxy.log" || { cat "$dir/ftp-proxy.log"; die "ftp-proxy did not start"; }
for _ in $(seq 100); do
    curl -s --max-time 2 "ftp://127.0.0.1:$FTP_PORT/" >/dev/null && break
    sleep 0.1
done

echo
echo "== pure-ftpd on 127.0.0.1:$FTP_PORT, ftp-proxy on 127.0.0.1:$PROXY_PORT in front of it"
echo "== curl ftp://127.0.0.1:$PROXY_PORT/hello.txt (passive, EPSV):"
curl -sS -v --max-time 30 "ftp://127.0.0.1:$PROXY_PORT/hello.txt" 2>"$dir/curl-epsv.log"
grep -E '^(> EPSV|< 229)' "$dir/curl-epsv.log" | sed 's/^/   curl: /'
echo "== curl -P - ftp://127.0.0.1:$PROXY_PORT/sample.bin (active, EPRT), 1 MiB:"
curl -sS -v --max-time 30 -P - "ftp://127.0.0.1:$PROXY_PORT/sample.bin" -o "$dir/sample.copy" 2>"$dir/curl-eprt.log"
grep -E '^(> EPRT|< 200 PORT)' "$dir/curl-eprt.log" | sed 's/^/   curl: /'
if cmp -s "$dir/pub/sample.bin" "$dir/sample.copy"; then
    echo "   identical to the original ($(sha256sum < "$dir/sample.copy" | cut -c1-16)...)"
else
    die "the copy differs from the original"
fi
echo "== what the proxy logged about the data connections:"
grep -E 'session .* started|passive:|active:|proxy: 229|relay: .*done' "$dir/ftp-proxy.log" | sed 's/^/   /'
echo
echo "Where to look:"
echo "   proxy log (-d -D7):  $dir/ftp-proxy.log"
echo "   server log:          $dir/pure-ftpd.log"
echo "   try:                 curl ftp://127.0.0.1:$PROXY_PORT/   or   lftp -p $PROXY_PORT 127.0.0.1"
if [ -t 0 ]; then
    echo
    echo "Running. Press Enter or Ctrl-C to stop (KEEP=1 $0 keeps the logs)."
    read -r _ || true
elif [ -z "${KEEP:-}" ]; then
    echo "   (no terminal: stopping now and removing $dir; KEEP=1 $0 keeps it)"
fi
