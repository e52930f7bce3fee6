#!/usr/bin/env bash
# Runs `.ci/run` the way a new machine does: from a fresh clone of a commit, inside a
# throwaway Debian 12 root that has nothing but a minimal base system and this
# machine's Rust toolchain. A package, account or file that `.ci/run` fails to
# install or create, and that a test only found because it was left on this machine,
# shows here before a submission rather than after.
#
#   sudo scripts/ci-fresh.sh            # the commit HEAD points to
#   sudo scripts/ci-fresh.sh REV        # any commit, branch or tag
#
# What the root is:
#   * `debootstrap --variant=minbase bookworm`, made once and kept in
#     $CI_FRESH_CACHE/base (default /var/cache/ftp-proxy-ci), copied afresh for
#     every run and deleted after it; apt uses the same Debian mirrors as this
#     machine, and the .deb files it downloads are kept in $CI_FRESH_CACHE/apt so
#     that later runs install them without downloading them again;
#   * a fresh `git clone` of REV in /root/ftp-proxy (committed files only: what is
#     not committed is not tested);
#   * the Rust toolchain of this machine: its rustup home bind-mounted read-only at
#     /root/.rustup, and a new CARGO_HOME (/root/.cargo) holding only the rustup
#     proxies (cargo, rustc, ...), as rustup-init leaves it, so that `cargo install
#     cargo-deb` and `cargo-fuzz` really run; its registry cache is seeded from this
#     machine's to save downloads (crates.io is still reached for what is missing);
#   * its own /proc, /sys, /dev (bound from this machine, with a new /dev/shm), and
#     empty tmpfs on /run and /tmp, in a private mount and PID namespace: every mount
#     disappears, and every process it started dies, when the run ends, however it
#     ends. It shares this machine's network namespace (apt and crates.io must be
#     reachable; the tests only use loopback and namespaces they create), and the
#     local certificate authorities of this machine (/usr/local/share/ca-certificates).
#     Maintainer scripts are not allowed to start services (policy-rc.d), so the
#     pure-ftpd package does not start a server on port 21 of this machine.
#
# Then, as root, with no stdin, a minimal environment (HOME, PATH without
# ~/.cargo/bin, as under sudo, CI=true, RUSTUP_HOME) and a time limit of
# $CI_FRESH_TIMEOUT (default 90m), it runs exactly `bash .ci/run` in the clone, and
# exits with its status (124 when the time ran out).
# CI_FRESH_KEEP=1 keeps the run's root for a look afterwards (its path is printed).
# Needs root, git, util-linux (unshare) and debootstrap (installed with apt-get when
# missing), and a rustup toolchain.
set -euo pipefail
exec </dev/null

say() { echo "ci-fresh: $*"; }
die() { echo "ci-fresh: FAILED: $*" >&2; exit 1; }

# Stage 2, in the private mount and PID namespace (PID 1 there): mount the root's
# file systems and run .ci/run in it.
if [ "${1:-}" = "--in-namespace" ]; then
    root=$2 rustup_home=$3 apt_cache=$4 limit=$5
    mount --make-rprivate /
    # The root is a mount point of its own, so that `/` is one inside it (the package
    # test and ip-netns change the propagation of mounts there).
    mount --bind "$root" "$root"
    mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
    mount -t sysfs -o nosuid,nodev,noexec sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
    mkdir -m 1777 "$root/run/lock"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
    mount --bind "$rustup_home" "$root/root/.rustup"
    mount -o remount,bind,ro "$root/root/.rustup"
    mount --bind "$apt_cache" "$root/var/cache/apt/archives"
    status=0
    timeout --kill-after=10s "$limit" \
        chroot "$root" /usr/bin/env -i \
        HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb CI=true \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
        /bin/bash -c 'cd /root/ftp-proxy && exec bash .ci/run' </dev/null || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "ci-fresh: .ci/run did not finish within $limit" >&2
    fi
    exit "$status"
fi

# Stage 1, on this machine.
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, namespaces, chroot): sudo $0"
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
rev=$(git -C "$repo" rev-parse --verify --quiet "${1:-HEAD}^{commit}") || die "no commit '${1:-HEAD}'"
cache=${CI_FRESH_CACHE:-/var/cache/ftp-proxy-ci}
limit=${CI_FRESH_TIMEOUT:-90m}
case "$cache" in /*) ;; *) die "CI_FRESH_CACHE must be an absolute path" ;; esac
case "$cache/" in "$repo"/*) git -C "$repo" check-ignore -q "$cache" || die "$cache is in the repository and not ignored" ;; esac

# The toolchain: where rustup keeps it, and the rustup proxies next to cargo.
cargo=$(command -v cargo || true)
if [ -z "$cargo" ]; then
    for d in "${HOME:-/root}/.cargo/bin" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}"; do
        if [ -n "$d" ] && [ -x "$d/cargo" ]; then cargo=$d/cargo; break; fi
    done
fi
[ -n "$cargo" ] || die "cargo not found (install Rust: https://rustup.rs)"
bin=$(dirname "$cargo")
[ -x "$bin/rustup" ] && [ "$cargo" -ef "$bin/rustup" ] || die "$cargo is not a rustup proxy (the root gets the toolchain from rustup)"
rustup_home=$("$bin/rustup" show home 2>/dev/null || true)
[ -d "$rustup_home/toolchains" ] || rustup_home=$(dirname "$(dirname "$bin")")/.rustup
[ -d "$rustup_home/toolchains" ] || die "no rustup home with toolchains (set RUSTUP_HOME)"
rustup_home=$(readlink -f "$rustup_home")
registry=$(dirname "$bin")/registry

for tool in git unshare chroot timeout; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
fi

mkdir -p "$cache/apt/partial"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    say "note: uncommitted changes in $repo are not part of the run (it tests $rev)"
fi

start=$(date +%s)
# The base system, once. Serialised, so that two runs never build it together.
exec 9>"$cache/lock"
flock 9
if [ ! -e "$cache/base/.ci-fresh-complete" ]; then
    say "debootstrap --variant=minbase bookworm into $cache/base (once)"
    rm -rf --one-file-system "$cache/base.new"
    t0=$(date +%s)
    debootstrap --variant=minbase bookworm "$cache/base.new" http://deb.debian.org/debian
    rm -rf --one-file-system "$cache/base"
    touch "$cache/base.new/.ci-fresh-complete"
    mv "$cache/base.new" "$cache/base"
    say "debootstrap took $(( $(date +%s) - t0 )) s"
fi
run=$(mktemp -d "$cache/run.XXXXXX")
flock -u 9

cleanup() {
    status=$?
    if [ -n "${CI_FRESH_KEEP:-}" ]; then
        say "kept the root: $run/root"
    elif grep -q " $run/" /proc/self/mountinfo; then
        echo "ci-fresh: something is still mounted under $run; not removing it" >&2
    else
        rm -rf --one-file-system "$run"
    fi
    say "exit status $status after $(( $(date +%s) - start )) s"
}
trap cleanup EXIT

root=$run/root
say "fresh root $root from $cache/base"
cp -a "$cache/base" "$root"
rm -f "$root/.ci-fresh-complete"

# apt: this machine's Debian mirrors (security and updates included), downloads kept.
rm -f "$root/etc/apt/sources.list"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
else
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
# Keep what apt downloads (in $cache/apt, mounted on the archives directory).
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$root/etc/apt/apt.conf.d/01keep-debs"
# No service is started by a maintainer script in this root.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cat /etc/resolv.conf >"$root/etc/resolv.conf"
# The network's own certificate authorities, if this machine has any (a TLS proxy
# in front of crates.io, say): the ca-certificates package that .ci/run installs
# adds them to the root's store, as it did here.
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
echo ci-fresh >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"

# Rust: rustup's home is bind-mounted; a new CARGO_HOME with the proxies alone.
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin"
for f in "$bin"/*; do
    if [ "$f" -ef "$bin/rustup" ]; then cp -a "$f" "$root/root/.cargo/bin/"; fi
done
if [ -d "$registry" ]; then
    cp -a "$registry" "$root/root/.cargo/registry"
fi

say "git clone $repo at $rev"
git clone --quiet --no-checkout "$repo" "$root/root/ftp-proxy"
if ! git -C "$root/root/ftp-proxy" cat-file -e "$rev^{commit}" 2>/dev/null; then
    git -C "$root/root/ftp-proxy" fetch --quiet "$repo" "$rev"
fi
git -C "$root/root/ftp-proxy" checkout --quiet --detach "$rev"

say "running bash .ci/run in the root (time limit $limit)"
# --kill-child: when this script ends (or is killed), so does everything inside.
unshare --mount --pid --fork --kill-child -- \
    bash "$(readlink -f "$0")" --in-namespace "$root" "$rustup_home" "$cache/apt" "$limit" &
ns=$!
trap 'kill -KILL "$ns" 2>/dev/null; exit 130' INT TERM HUP
status=0
wait "$ns" || status=$?
if [ "$status" -eq 0 ]; then say "passed"; else say ".ci/run FAILED with status $status"; fi
exit "$status"
