#!/usr/bin/env bash
# What users see, side by side in one run, on loopback only:
#   sudo scripts/bench.sh            # N=200 sessions, 1 GiB, 3 runs, 500 idle sessions
#   N=50 SIZE_MIB=256 RUNS=3 IDLE=0 sudo scripts/bench.sh    # a quicker run
# Starts pure-ftpd on 127.0.0.1 serving a 1 KiB and a SIZE_MIB file, then measures
# the same workload directly, through ftp-proxy (release build, userspace relay) and,
# when Debian's `ftp-proxy` (SuSE proxy-suite) is installed, through it as the peer:
#   - N sequential sessions (login, PASV, RETR 1 KiB, QUIT): ms per session
#   - N concurrent sessions: wall time
#   - a SIZE_MIB PASV download: MB/s, and the proxy's CPU seconds per GiB
#   - the proxy's PSS/RSS with N (and IDLE) logged-in sessions open
# and, as this machine's limit for a relay, a raw TCP stream of the same size
# directly and through a trivial one-thread splice relay; and the translated
# transfer (issue 17): one more ftp-proxy listening on 127.0.0.1 and ::1 in front
# of the IPv4 server, a SIZE_MIB EPSV download by an IPv6 client (translated)
# against the same by an IPv4 client (untranslated), target >= 0.9x. Then, against a minimal
# control server of bench.py's that keeps up with any flood (one more instance of
# each proxy in front of it):
#   - the proxy's PSS/RSS growth per session while FLOOD_N clients (default 50)
#     flood 400-byte and then 1-byte lines at a server that stopped reading
#   - a victim's NOOP round trip (median / p99) alone and beside one client that
#     floods bare newlines, directly and through each proxy
# Prints medians of RUNS
# (min-max) and the ratio to direct; the columns are measured in turn, one round
# per run, so load changes fall on all of them. BASELINE_BIN=/path/to/an/older/ftp-proxy adds
# that build as one more column, measured in the same run (to catch a regression
# between two builds). Everything it starts it stops by PID; the
# whole run is bounded by BENCH_TIMEOUT seconds (default 900).
# Then FTPS (issue 16; FTPS=0 turns it off, PLAIN=0 runs it alone): against a TLS
# pure-ftpd (direct FTPS), ftp-proxy with TLS in front of the plain pure-ftpd and,
# when the binary has --server-tls, ftp-proxy with TLS on both sides, with Python's
# ssl (TLS 1.3, a CA made in the temp dir): N sequential and N concurrent FTPS
# sessions, a SIZE_MIB PROT P download (MB/s, proxy CPU s/GiB) beside the plain one,
# the proxy's PSS/RSS with IDLE idle TLS sessions and FTPS_XFERS (50) transfers in
# flight, the ratios against the targets, and a perf (or strace -c) profile of a
# proxy whose download falls short (FTPS_PROFILE=always|never); and, as this
# machine's limit for a TLS relay, a raw SIZE_MIB TLS stream from a Python ssl
# source directly, through socat decrypting and re-encrypting, and through the
# splice relay passing the TLS bytes on (socat installed when missing).
set -euo pipefail

N=${N:-200}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
IDLE=${IDLE:-500}
FLOOD_N=${FLOOD_N:-50}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
cd "$(dirname "$0")/.."

die() { echo "bench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (pure-ftpd runs in a private mount namespace): sudo $0"

missing=()
for tool in pure-ftpd python3 unshare ss; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing pure-ftpd python3 util-linux iproute2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pure-ftpd python3 util-linux iproute2 </dev/null
fi
suse=/usr/sbin/ftp-proxy
[ -x "$suse" ] || { echo "bench: Debian's ftp-proxy is not installed (apt-get install ftp-proxy): no peer column" >&2; suse=""; }
mkdir -p /var/empty
getent passwd _ftp_proxy >/dev/null ||
    useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin _ftp_proxy

if ! command -v cargo >/dev/null; then
    for d in "${HOME:-/root}/.cargo/bin" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}"; do
        if [ -n "$d" ] && [ -x "$d/cargo" ]; then PATH="$d:$PATH"; break; fi
    done
fi
command -v cargo >/dev/null || die "cargo not found"
echo "bench: building ftp-proxy (cargo build --release -p ftp-proxy-cli)" >&2
cargo build --quiet --release -p ftp-proxy-cli
target_dir=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
ours="$target_dir/release/ftp-proxy"

# Free loopback ports, chosen by the kernel.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FTP_PORT=$(free_port); OUR_PORT=$(free_port); SUSE_PORT=$(free_port); BASE_PORT=$(free_port)
RAW_PORT=$(free_port); RELAY_PORT=$(free_port); XLATE_PORT=$(free_port)
CTL_PORT=$(free_port); OUR_CTL_PORT=$(free_port); BASE_CTL_PORT=$(free_port); SUSE_CTL_PORT=$(free_port)

dir=$(mktemp -d /var/tmp/ftp-proxy-bench.XXXXXX)
chmod 755 "$dir"
pids=()
server_pid=""
cleanup() {
    trap - EXIT INT TERM
    # pure-ftpd forks per session: its whole process group (setsid made it a leader).
    [ -n "$server_pid" ] && kill -TERM -- "-$server_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && wait "$server_pid" 2>/dev/null || true
    [ -n "${ftps_server_pid:-}" ] && kill -TERM -- "-$ftps_server_pid" 2>/dev/null || true
    [ -n "${ftps_server_pid:-}" ] && wait "$ftps_server_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "bench: kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$dir/ftp"
head -c 1024 /dev/urandom >"$dir/ftp/small"
dd if=/dev/zero of="$dir/ftp/big" bs=1M count="$SIZE_MIB" status=none
chmod 644 "$dir/ftp/small" "$dir/ftp/big"

wait_port() {
    for _ in $(seq 100); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    tail -n 5 "$dir"/*.log "$dir"/*.out 2>/dev/null >&2 || true
    die "nothing listens on port $1"
}

# pure-ftpd serves anonymous users from the home of user `ftp`: an `ftp` account
# pointing at our files, visible only inside pure-ftpd's private mount namespace.
# A 10,000-port passive range: pure-ftpd caps clients at half the range.
{ grep -v '^ftp:' /etc/passwd; echo "ftp:x:65534:65534:bench:$dir/ftp:/usr/sbin/nologin"; } >"$dir/passwd"
chmod 644 "$dir/passwd"
setsid unshare -m --propagation private sh -c 'mount --bind "$0" /etc/passwd && exec "$@"' "$dir/passwd" \
    pure-ftpd -S "127.0.0.1,$FTP_PORT" -4 -H -A -i -f none -u 1 \
    -c 4000 -C 4000 -p 30000:39999 -I 300 >"$dir/pure-ftpd.log" 2>&1 &
server_pid=$!
wait_port "$FTP_PORT"

python3 scripts/bench.py ctl "$CTL_PORT" &
pids+=($!)
wait_port "$CTL_PORT"

# One instance of a proxy binary in front of pure-ftpd and one in front of the
# control server: start_proxy NAME BIN PORT CTL_PORT; sets started_pid and ctl_pid.
start_proxy() {
    "$2" -d -D5 -m 500 -R 127.0.0.1 -P "$FTP_PORT" -b 127.0.0.1 -p "$3" >"$dir/$1.log" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
    "$2" -d -D5 -m 500 -R 127.0.0.1 -P "$CTL_PORT" -b 127.0.0.1 -p "$4" >"$dir/$1-ctl.log" 2>&1 &
    ctl_pid=$!
    pids+=("$ctl_pid")
    wait_port "$3"
    wait_port "$4"
}

start_proxy ours "$ours" "$OUR_PORT" "$OUR_CTL_PORT"
ours_pid=$started_pid
targets=(--target "direct=$FTP_PORT" --target "ftp-proxy=$OUR_PORT:$started_pid")
ctls=(--ctl "direct=$CTL_PORT" --ctl "ftp-proxy=$OUR_CTL_PORT:$ctl_pid")
if [ -n "${BASELINE_BIN:-}" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not executable"
    start_proxy baseline "$BASELINE_BIN" "$BASE_PORT" "$BASE_CTL_PORT"
    targets+=(--target "baseline build=$BASE_PORT:$started_pid")
    ctls+=(--ctl "baseline build=$BASE_CTL_PORT:$ctl_pid")
fi
if [ -n "$suse" ]; then
    # It (re)creates its logs after dropping to nobody.
    mkdir "$dir/suse" && chown nobody "$dir/suse"
    # Two instances: in front of pure-ftpd, and in front of the control server.
    for which in main ctl; do
        if [ "$which" = main ]; then port=$SUSE_PORT dest=$FTP_PORT; else port=$SUSE_CTL_PORT dest=$CTL_PORT; fi
        cat >"$dir/suse-$which.conf" <<EOF
[-Global-]
ServerType standalone
Listen 127.0.0.1
Port $port
DestinationAddress 127.0.0.1
DestinationPort $dest
MaxClients 512
ForkLimit 100000
TimeOut 300
LogDestination $dir/suse/suse-$which.log
LogLevel ERR
PidFile $dir/suse-$which.pid
User nobody
Group nogroup
EOF
        "$suse" -d -n -f "$dir/suse-$which.conf" >"$dir/suse-$which.out" 2>&1 &
        suse_pid=$!
        pids+=("$suse_pid")
        wait_port "$port"
        if [ "$which" = main ]; then
            targets+=(--target "SuSE ftp-proxy=$SUSE_PORT:$suse_pid")
        else
            ctls+=(--ctl "SuSE ftp-proxy=$SUSE_CTL_PORT:$suse_pid")
        fi
    done
fi

# The translated-transfer figure: one proxy, IPv4 clients untranslated and IPv6
# clients translated to the same IPv4 server (cross-family -R needs the relay).
"$ours" -d -D5 -m 500 --backend relay -R 127.0.0.1 -P "$FTP_PORT" -b 127.0.0.1 -b ::1 \
    -p "$XLATE_PORT" >"$dir/xlate.log" 2>&1 &
xlate_pid=$!
pids+=("$xlate_pid")
wait_port "$XLATE_PORT"

python3 scripts/bench.py source "$RAW_PORT" "$dir/ftp/big" &
pids+=($!)
python3 scripts/bench.py relay "$RELAY_PORT" "$RAW_PORT" &
relay_pid=$!
pids+=("$relay_pid")
wait_port "$RAW_PORT"
wait_port "$RELAY_PORT"

echo "bench: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); N=$N SIZE_MIB=$SIZE_MIB RUNS=$RUNS IDLE=$IDLE FLOOD_N=$FLOOD_N" >&2
# PLAIN=0 skips the sections above (e.g. to run the FTPS one alone).
[ "${PLAIN:-1}" = 0 ] ||
timeout "$BENCH_TIMEOUT" python3 scripts/bench.py measure "${targets[@]}" "${ctls[@]}" \
    --raw "raw TCP direct=$RAW_PORT" --raw "trivial splice relay=$RELAY_PORT:$relay_pid" \
    --xlate "ftp-proxy=$XLATE_PORT:$xlate_pid" \
    --n "$N" --idle "$IDLE" --runs "$RUNS" --size $((SIZE_MIB << 20)) --flood-n "$FLOOD_N"

# --- FTPS (issue 16), FTPS=0 turns it off -------------------------------------------
# A CA made here with openssl, a TLS pure-ftpd (-Y 1) beside the plain one as the
# direct FTPS server, ftp-proxy with TLS in front of the plain pure-ftpd and, when
# the binary knows --server-tls, ftp-proxy with TLS on both sides in front of the
# TLS pure-ftpd. Measured by `bench.py ftps` (Python ssl, TLS 1.3): sequential and
# concurrent FTPS sessions, a SIZE_MIB PROT P download next to the plain one, the
# proxy's memory with IDLE idle TLS sessions and FTPS_XFERS (50) transfers in
# flight; a perf (or strace -c) profile of a proxy whose download falls short.
# Bounded by BENCH_TIMEOUT of its own.
FTPS_XFERS=${FTPS_XFERS:-50}

ftps_pki() {
    local d=$dir/pki
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=ftp-proxy bench CA" -addext basicConstraints=critical,CA:TRUE \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$d/ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext" -out "$d/server.pem" 2>/dev/null
    chmod 644 "$d"/*.pem "$d/server.key"
}

ftps_bench() {
    command -v openssl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y openssl </dev/null
    if ! command -v perf >/dev/null; then
        echo "bench: installing linux-perf (for the FTPS profile)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y linux-perf </dev/null >/dev/null 2>&1 ||
            echo "bench: no linux-perf; an FTPS figure that falls short gets strace -c" >&2
    fi
    ftps_pki
    local pki=$dir/pki
    FTPS_PORT=$(free_port); OUR_TLS_PORT=$(free_port); OUR_TLS2_PORT=$(free_port)
    # The same passwd mount as the plain server's; its own passive range, clear of
    # the plain one's and of the e2e tests' (20000-29999: other engineers' tests may
    # run beside the bench) and below the proxy's (49152 up); the certificate and
    # key as -2 CERT,KEY (as tests/src/e2e/server.rs does).
    setsid unshare -m --propagation private sh -c 'mount --bind "$0" /etc/passwd && exec "$@"' "$dir/passwd" \
        pure-ftpd -S "127.0.0.1,$FTPS_PORT" -4 -H -A -i -f none -u 1 \
        -c 4000 -C 4000 -p 40000:49151 -I 300 -Y 1 -2 "$pki/server.pem,$pki/server.key" \
        >"$dir/pure-ftpd-tls.log" 2>&1 &
    ftps_server_pid=$!
    wait_port "$FTPS_PORT"

    # FTPS_BIN: another build for these columns (e.g. one with --server-tls).
    local bin=${FTPS_BIN:-$ours}
    [ -x "$bin" ] || die "FTPS_BIN=$bin is not executable"
    local tls=(--tls-cert "$pki/server.pem" --tls-key "$pki/server.key")
    "$bin" -d -D5 -m 500 "${tls[@]}" -R 127.0.0.1 -P "$FTP_PORT" -b 127.0.0.1 -p "$OUR_TLS_PORT" \
        >"$dir/ours-tls.log" 2>&1 &
    local front_pid=$!
    pids+=("$front_pid")
    wait_port "$OUR_TLS_PORT"
    local ftargets=(--target "direct FTPS=$FTPS_PORT"
        --target "ftp-proxy TLS front, plain behind=$OUR_TLS_PORT:$front_pid:front")
    if "$bin" --help 2>&1 | grep -q -- '--server-tls'; then
        # TLS towards the server, verified against the bench's CA when the binary has
        # an option for one (FTPS_SERVER_TLS_ARGS overrides the guess).
        local stls=(--server-tls explicit)
        if [ -n "${FTPS_SERVER_TLS_ARGS:-}" ]; then
            read -r -a stls <<<"$FTPS_SERVER_TLS_ARGS"
        else
            for opt in --server-tls-ca --server-ca --server-tls-cafile; do
                if "$bin" --help 2>&1 | grep -q -- "$opt\b"; then stls+=("$opt" "$pki/ca.pem"); break; fi
            done
        fi
        "$bin" -d -D5 -m 500 "${tls[@]}" "${stls[@]}" -R 127.0.0.1 -P "$FTPS_PORT" -b 127.0.0.1 \
            -p "$OUR_TLS2_PORT" >"$dir/ours-tls2.log" 2>&1 &
        local both_pid=$! up=""
        pids+=("$both_pid")
        # A build still in the making may refuse these options: a note, not the end.
        for _ in $(seq 50); do
            if ss -Hltn "sport = :$OUR_TLS2_PORT" | grep -q .; then up=1; break; fi
            kill -0 "$both_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ -n "$up" ]; then
            ftargets+=(--target "ftp-proxy TLS both sides=$OUR_TLS2_PORT:$both_pid:both")
        else
            echo "(no \"TLS both sides\" column: $bin ${stls[*]} did not start: $(head -n 2 "$dir/ours-tls2.log" | tr '\n' ' '))"
        fi
    else
        echo "bench: this ftp-proxy has no --server-tls: no \"TLS both sides\" column" >&2
        echo "(no \"TLS both sides\" column: $bin has no --server-tls)"
    fi
    # This machine's limit for a TLS-terminating relay: a raw SIZE_MIB TLS stream from
    # a Python ssl source (TLS 1.3, the bench's certificate) directly, through socat
    # decrypting and re-encrypting (OpenSSL's AES-NI code, 64 KiB reads, one forked
    # child per connection, counted once reaped) and through the trivial splice relay
    # passing the TLS bytes on untouched (the lower bound); bench.py's Python ssl relay
    # (a thread per direction) as a second opinion beside socat.
    local tls_raw=()
    if ! command -v socat >/dev/null; then
        echo "bench: installing socat (the trivial TLS relay)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y socat </dev/null >/dev/null 2>&1 ||
            echo "bench: no socat: no trivial TLS relay row" >&2
    fi
    TLS_SRC_PORT=$(free_port); TLS_RELAY_PORT=$(free_port); TLS_SPLICE_PORT=$(free_port)
    python3 scripts/bench.py tls-source "$TLS_SRC_PORT" "$dir/ftp/big" "$pki/server.pem" "$pki/server.key" &
    local tls_src_pid=$!
    pids+=("$tls_src_pid")
    wait_port "$TLS_SRC_PORT"
    tls_raw+=(--tls-raw "raw TLS direct=$TLS_SRC_PORT" --server-of "raw TLS direct=$tls_src_pid")
    if command -v socat >/dev/null; then
        socat -b 65536 "OPENSSL-LISTEN:$TLS_RELAY_PORT,bind=127.0.0.1,fork,reuseaddr,cert=$pki/server.pem,key=$pki/server.key,verify=0" \
            "OPENSSL:127.0.0.1:$TLS_SRC_PORT,verify=0" >"$dir/socat.log" 2>&1 &
        local socat_pid=$!
        pids+=("$socat_pid")
        wait_port "$TLS_RELAY_PORT"
        tls_raw+=(--tls-raw "trivial TLS relay (socat, decrypt + re-encrypt)=$TLS_RELAY_PORT:$socat_pid"
            --server-of "trivial TLS relay (socat, decrypt + re-encrypt)=$tls_src_pid")
    fi
    TLS_PYRELAY_PORT=$(free_port)
    python3 scripts/bench.py tls-relay "$TLS_PYRELAY_PORT" "$TLS_SRC_PORT" "$pki/server.pem" \
        "$pki/server.key" "$pki/ca.pem" &
    local tls_pyrelay_pid=$!
    pids+=("$tls_pyrelay_pid")
    wait_port "$TLS_PYRELAY_PORT"
    tls_raw+=(--tls-raw "trivial TLS relay (Python ssl, decrypt + re-encrypt)=$TLS_PYRELAY_PORT:$tls_pyrelay_pid"
        --server-of "trivial TLS relay (Python ssl, decrypt + re-encrypt)=$tls_src_pid")
    python3 scripts/bench.py relay --both-ways "$TLS_SPLICE_PORT" "$TLS_SRC_PORT" &
    local tls_splice_pid=$!
    pids+=("$tls_splice_pid")
    wait_port "$TLS_SPLICE_PORT"
    tls_raw+=(--tls-raw "trivial splice relay of the TLS bytes=$TLS_SPLICE_PORT:$tls_splice_pid"
        --server-of "trivial splice relay of the TLS bytes=$tls_src_pid")

    echo "bench: FTPS: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); N=$N SIZE_MIB=$SIZE_MIB RUNS=$RUNS IDLE=$IDLE FTPS_XFERS=$FTPS_XFERS" >&2
    echo "FTPS run: load $(cut -d' ' -f1-3 /proc/loadavg) at the start"
    timeout "$BENCH_TIMEOUT" python3 scripts/bench.py ftps "${ftargets[@]}" \
        --plain "direct (plain FTP)=$FTP_PORT" --plain "ftp-proxy plain relay=$OUR_PORT:$ours_pid" \
        --server-of "direct FTPS=$ftps_server_pid" --server-of "ftp-proxy TLS front, plain behind=$server_pid" \
        --server-of "ftp-proxy TLS both sides=$ftps_server_pid" \
        --server-of "direct (plain FTP)=$server_pid" --server-of "ftp-proxy plain relay=$server_pid" \
        --ca "$pki/ca.pem" --n "$N" --idle "$IDLE" --transfers "$FTPS_XFERS" --runs "$RUNS" \
        "${tls_raw[@]}" \
        --size $((SIZE_MIB << 20)) --profile "${FTPS_PROFILE:-short}" --out-dir "$dir"
    echo "FTPS run: load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
}

if [ "${FTPS:-1}" != 0 ]; then ftps_bench; fi
