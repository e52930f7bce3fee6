#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (docs/fuzzing.md), each for a short while, starting
# from the small corpora kept in fuzz/corpus/:
#   scripts/fuzz.sh                          # every target, 15 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh proxy   # one target, longer
# Works on a stable toolchain: cargo-fuzz with `--sanitizer none` needs no nightly
# flag (libFuzzer's coverage comes from stable -C passes=sancov-module options).
# Installs cargo-fuzz if it is missing. New inputs go to a temporary directory, so
# the corpora in the repository never change. Exits non-zero on the first crash,
# hang (-timeout) or out-of-memory; the reproducer is left in fuzz/artifacts/<target>/.
set -euo pipefail
exec </dev/null

cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH=${FUZZ_SECONDS:-15}
ALL=(line_framing ftp_parse proxy nft_acks route_parse ftps)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${ALL[@]}"); fi

if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# Debug assertions and overflow checks stay on (cargo-fuzz's default without -O).
cargo fuzz build --sanitizer none

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "corpus/$t"
    log="$work/$t.log"
    if ! cargo fuzz run --sanitizer none "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz: $t FAILED:" >&2
        grep -E -A3 "panicked at|^==[0-9]+== ERROR|^SUMMARY|Test unit written" "$log" >&2 || tail -n 40 "$log" >&2
        echo "fuzz: reproduce with: (cd fuzz && cargo fuzz run --sanitizer none $t artifacts/$t/<file>)" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "fuzz: $t clean: ${runs:-?} executions in ${SECONDS_EACH} s (${rate:-?}/s)"
done
