#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it with dpkg -i, runs the
# installed /usr/sbin/ftp-proxy the way the systemd unit does (its options from
# /etc/default/ftp-proxy, the unit's capability bounding set and descriptor
# limit) in front of a real pure-ftpd, downloads through it with curl in passive
# and active mode and compares the files, then purges the package and checks that
# the account, /var/empty and every file are gone.
#
#   sudo scripts/package-test.sh            # build, then test
#   sudo DEB=path/to.deb scripts/package-test.sh   # test a package built elsewhere
#
# Isolation: install, run and purge happen in a private mount, network and pid
# namespace whose root is an overlay over this machine's root file system. dpkg,
# its maintainer scripts, useradd and userdel are the real ones and change the
# overlay exactly as they would change the machine, but the machine itself (its
# dpkg database, users, /usr/sbin and Debian's own ftp-proxy package, which this
# package replaces) is left as it was, and the test can run next to others.
# Needs root, pure-ftpd, curl, man-db, util-linux (unshare, setpriv, prlimit),
# iproute2 and systemd (systemd-analyze); fails, never skips, when one is missing.
# Reads nothing from stdin. Exits non-zero on any failure.
set -euo pipefail
exec </dev/null

say() { echo "package-test: $*"; }
die() { echo "package-test: FAILED: $*" >&2; exit 1; }

# Stage 3, inside the overlay root: the test itself.
if [ "${1:-}" = "--in-root" ]; then
    deb=$2
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
    export DEBIAN_FRONTEND=noninteractive
    # This private network namespace has only lo, so no port is taken.
    ftp_port=2121
    proxy_port=21

    # A fresh machine has neither the account nor the package (this overlay may
    # have both from the machine below: .ci/run creates the account for the tests).
    if dpkg-query -W -f='${Status}' ftp-proxy-rs 2>/dev/null | grep -q installed; then
        dpkg --purge ftp-proxy-rs >/dev/null
    fi
    if getent passwd _ftp_proxy >/dev/null; then userdel _ftp_proxy; fi
    if getent group _ftp_proxy >/dev/null; then groupdel _ftp_proxy; fi
    rmdir /var/empty 2>/dev/null || true
    [ ! -e /var/empty ] || die "/var/empty exists and is not empty below the overlay"

    say "dpkg -i $(basename "$deb")"
    # Debian's ftp-proxy (a different program with the same /usr/sbin/ftp-proxy)
    # is removed by dpkg if installed: the package conflicts with and replaces it.
    dpkg -i --force-confnew "$deb"
    dpkg-query -W -f='${Status}\n' ftp-proxy-rs | grep -qx "install ok installed" \
        || die "ftp-proxy-rs is not installed"

    say "checking what the package installed"
    bin=/usr/sbin/ftp-proxy
    unit=/usr/lib/systemd/system/ftp-proxy.service
    for f in $bin /usr/share/man/man8/ftp-proxy.8.gz $unit /etc/default/ftp-proxy; do
        [ -f "$f" ] || die "$f missing after install"
    done
    dpkg -L ftp-proxy-rs | grep -qx $bin || die "$bin is not the package's"
    version=$($bin --version)
    [ "$version" = "ftp-proxy $(dpkg-query -W -f='${Version}' ftp-proxy-rs | sed 's/-[^-]*$//')" ] \
        || die "--version says '$version'"
    MANPAGER=cat MANWIDTH=80 man ftp-proxy 2>/dev/null | grep -q -- "--backend" \
        || die "man ftp-proxy does not show the installed page"
    [ "$(getent passwd _ftp_proxy | cut -d: -f6,7)" = "/var/empty:/usr/sbin/nologin" ] \
        || die "_ftp_proxy not created as documented: $(getent passwd _ftp_proxy || echo none)"
    getent group _ftp_proxy >/dev/null || die "group _ftp_proxy not created"
    [ -d /var/empty ] && [ "$(stat -c %U:%a /var/empty)" = "root:755" ] \
        || die "/var/empty not created root-owned 755"
    # The unit as installed, with the binary it names present.
    systemd-analyze verify $unit || die "systemd-analyze verify $unit"

    say "pure-ftpd on 127.0.0.1:$ftp_port"
    mkdir -m 755 /srv/pkgtest
    head -c 2097152 /dev/urandom >/srv/pkgtest/sample.bin
    chmod 644 /srv/pkgtest/sample.bin
    # Anonymous FTP serves the home of the user ftp (this overlay's /etc/passwd).
    { grep -v '^ftp:' /etc/passwd; echo "ftp:x:65534:65534:ftp:/srv/pkgtest:/usr/sbin/nologin"; } >/etc/passwd.new
    mv /etc/passwd.new /etc/passwd
    pure-ftpd -S "127.0.0.1,$ftp_port" -4 -H -A -i -f none -u 1 -p 30000:39999 >/tmp/pure-ftpd.log 2>&1 &
    for _ in $(seq 100); do
        curl -s --max-time 2 "ftp://127.0.0.1:$ftp_port/" >/dev/null && break
        sleep 0.1
    done
    curl -s --max-time 2 "ftp://127.0.0.1:$ftp_port/" >/dev/null || die "pure-ftpd did not start: $(cat /tmp/pure-ftpd.log)"

    # The unit's ExecStart, EnvironmentFile, CapabilityBoundingSet and LimitNOFILE,
    # read from the installed unit so that this checks what admins get.
    unit_value() { sed -n "s/^$1=//p" $unit | tail -1; }
    exec_start=$(unit_value ExecStart)
    [ "$exec_start" = '/usr/sbin/ftp-proxy -d $FTP_PROXY_OPTS' ] || die "unexpected ExecStart=$exec_start"
    bounding=$(unit_value CapabilityBoundingSet | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
    nofile=$(unit_value LimitNOFILE)
    sed -i "s/^FTP_PROXY_OPTS=.*/FTP_PROXY_OPTS=\"-R 127.0.0.1 -P $ftp_port -p $proxy_port -b 127.0.0.1 -D 6\"/" /etc/default/ftp-proxy
    # shellcheck disable=SC1091
    . /etc/default/ftp-proxy
    say "starting $bin -d $FTP_PROXY_OPTS (bounding set ${bounding#,}, nofile $nofile, no_new_privs)"
    # shellcheck disable=SC2086
    prlimit --nofile="$nofile:$nofile" -- \
        setpriv --bounding-set "-all,${bounding#,}" --inh-caps -all --no-new-privs -- \
        $bin -d $FTP_PROXY_OPTS >/tmp/ftp-proxy.log 2>&1 &
    proxy_pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" /tmp/ftp-proxy.log && break
        kill -0 $proxy_pid 2>/dev/null || die "ftp-proxy exited: $(cat /tmp/ftp-proxy.log)"
        sleep 0.1
    done
    grep -q "listening on 127.0.0.1 port $proxy_port" /tmp/ftp-proxy.log || die "ftp-proxy did not start: $(cat /tmp/ftp-proxy.log)"
    uid=$(awk '/^Uid:/ {print $3}' /proc/$proxy_pid/status)
    [ "$uid" = "$(id -u _ftp_proxy)" ] || die "the daemon runs as uid $uid, not _ftp_proxy"
    [ "$(readlink /proc/$proxy_pid/root)" = /var/empty ] || die "the daemon is not chrooted to /var/empty"
    [ "$(awk '/^CapEff:/ {print $2}' /proc/$proxy_pid/status)" = 0000000000000000 ] \
        || die "the relay daemon kept capabilities"

    for mode in passive active; do
        rm -f /tmp/copy.bin
        opt=""
        [ $mode = active ] && opt="-P -"
        # shellcheck disable=SC2086
        curl -sS --max-time 30 $opt -v "ftp://127.0.0.1:$proxy_port/sample.bin" -o /tmp/copy.bin 2>/tmp/curl-$mode.log \
            || die "curl ($mode) through the proxy: $(cat /tmp/curl-$mode.log)"
        cmp -s /srv/pkgtest/sample.bin /tmp/copy.bin || die "$mode download differs from the original"
        if [ $mode = passive ]; then grep -q '^> EPSV' /tmp/curl-$mode.log || die "curl did not use EPSV"; fi
        if [ $mode = active ]; then grep -q '^> EPRT' /tmp/curl-$mode.log || die "curl did not use EPRT"; fi
        say "$mode download of 2 MiB through the installed proxy: identical"
    done

    kill -TERM $proxy_pid
    status=0
    wait $proxy_pid || status=$?
    [ $status -eq 0 ] || die "ftp-proxy exited $status on SIGTERM: $(cat /tmp/ftp-proxy.log)"
    grep -q "exiting on signal 15" /tmp/ftp-proxy.log || die "no 'exiting on signal 15' in the log"

    say "dpkg --purge ftp-proxy-rs"
    dpkg --purge ftp-proxy-rs
    ! dpkg-query -W -f='${Status}' ftp-proxy-rs 2>/dev/null | grep -q installed || die "still installed"
    for f in $bin /usr/share/man/man8/ftp-proxy.8.gz $unit /etc/default/ftp-proxy /var/lib/ftp-proxy-rs /var/empty; do
        [ ! -e "$f" ] || die "$f still there after purge"
    done
    ! getent passwd _ftp_proxy >/dev/null || die "user _ftp_proxy still there after purge"
    ! getent group _ftp_proxy >/dev/null || die "group _ftp_proxy still there after purge"
    say "purged: no binary, page, unit, defaults, user, group or /var/empty left"
    exit 0
fi

# Stage 2, in the new namespaces: build the overlay root and enter it.
if [ "${1:-}" = "--in-namespace" ]; then
    deb=$2
    script=$3
    base=$4
    mount --make-rprivate /
    ip link set lo up
    mount -t tmpfs -o mode=755 tmpfs "$base"
    mkdir "$base/upper" "$base/work" "$base/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
    root=$base/root
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount -t tmpfs -o mode=755 tmpfs "$root/run"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    cp "$deb" "$script" "$root/tmp/"
    exec chroot "$root" /bin/bash "/tmp/$(basename "$script")" --in-root "/tmp/$(basename "$deb")"
fi

# Stage 1, on the machine: build the package and start stage 2.
[ "$(id -u)" -eq 0 ] || die "must run as root (dpkg -i, namespaces, chroot): sudo $0"
cd "$(dirname "$0")/.."
for tool in unshare setpriv prlimit pure-ftpd curl man systemd-analyze ip dpkg; do
    command -v "$tool" >/dev/null || die "$tool not found (see the apt-get line in .ci/run)"
done

if [ -z "${DEB:-}" ]; then
    if ! command -v cargo >/dev/null; then
        for d in "${HOME:-/root}/.cargo/bin" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}"; do
            if [ -n "$d" ] && [ -x "$d/cargo" ]; then PATH="$d:$PATH"; break; fi
        done
    fi
    command -v cargo >/dev/null || die "cargo not found"
    if ! cargo deb --version >/dev/null 2>&1; then
        say "installing cargo-deb from crates.io"
        cargo install --locked cargo-deb
    fi
    say "cargo deb -p ftp-proxy-cli"
    DEB=$(cargo deb -p ftp-proxy-cli --strip | tail -1)
fi
[ -f "$DEB" ] || die "no package at '$DEB'"
DEB=$(readlink -f "$DEB")
say "package $DEB ($(stat -c %s "$DEB") bytes)"

# The overlay's mount point; what is mounted on it lives and dies with the namespace.
base=$(mktemp -d /tmp/package-test.XXXXXX)
trap 'rmdir "$base"' EXIT
# --kill-child: nothing started inside outlives the test.
unshare --mount --net --pid --fork --kill-child -- \
    bash "$(readlink -f "$0")" --in-namespace "$DEB" "$(readlink -f "$0")" "$base"
say "passed"
