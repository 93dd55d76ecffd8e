#!/usr/bin/env bash
# Builds the fuzz targets (libFuzzer via libfuzzer-sys, stable toolchain, no cargo-fuzz) and
# runs each one for SECONDS_PER_TARGET seconds against its corpus and its regression inputs.
# Exits non-zero if any target crashes, panics, times out or runs out of memory; the failing
# input is kept and printed (base64) so it can be recovered from a CI log.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]   default 20; 0 only replays the corpus and regressions
#
# Environment: FUZZ_TARGETS (space-separated subset), FUZZ_JOBS (targets run at once,
# default: CPUs), CARGO_TARGET_DIR (default: <repo>/target-fuzz), FUZZ_ARGS (extra libFuzzer
# flags, e.g. "-jobs=4 -workers=4" or "-use_value_profile=1").
set -euo pipefail

SECONDS_PER_TARGET=${1:-20}
FUZZ_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$FUZZ_DIR")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-fuzz}
TARGETS=${FUZZ_TARGETS:-handshake socks_codecs udp_header proxy_protocol config}
JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
FUZZ_ARGS=${FUZZ_ARGS:-}

# Longest input per target: room for the largest message plus slack.
max_len() {
    case $1 in
        handshake | socks_codecs) echo 1100 ;; # SOCKS4a with both fields at 255 bytes: 522
        udp_header) echo 512 ;;                # domain header: 262
        proxy_protocol) echo 1200 ;;           # MAX_HEADER_LEN: 1040
        config) echo 4096 ;;
    esac
}

# --- tools: a C++ compiler for libFuzzer's sources (libfuzzer-sys builds them) and cargo.
# shellcheck source=/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing g++"
        apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz/run.sh: needs a C++ compiler (c++) to build libFuzzer" >&2
        exit 2
    fi
fi
command -v cargo >/dev/null || { echo "fuzz/run.sh: needs cargo (rustup stable)" >&2; exit 2; }

# --- build: the instrumentation flags cargo-fuzz passes for `--sanitizer none`, which need no
# nightly feature. `--target` keeps them away from build scripts and proc macros.
HOST=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing ${RUSTFLAGS:-}"
case $HOST in *-linux-*) RUSTFLAGS="$RUSTFLAGS -Cllvm-args=-sanitizer-coverage-stack-depth" ;; esac
export RUSTFLAGS
echo "== building fuzz targets ($(rustc --version), $HOST)"
build_start=$(date +%s)
cargo build --manifest-path "$FUZZ_DIR/Cargo.toml" --release --bins --target "$HOST" --quiet
echo "   built in $(($(date +%s) - build_start))s"
BIN=$CARGO_TARGET_DIR/$HOST/release

# --- run
WORK=$CARGO_TARGET_DIR/fuzz-run
run_one() {
    local t=$1 work=$WORK/corpus/$1 art=$WORK/artifacts/$1 log=$WORK/$1.log
    local dict=() seconds=()
    rm -rf "$art" && mkdir -p "$work" "$art" "$FUZZ_DIR/regressions/$t"
    [ -f "$FUZZ_DIR/dict/$t.dict" ] && dict=("-dict=$FUZZ_DIR/dict/$t.dict")
    if [ "$SECONDS_PER_TARGET" = 0 ]; then seconds=(-runs=0); else seconds=("-max_total_time=$SECONDS_PER_TARGET"); fi
    # New inputs go to the first directory (scratch); the repo's seeds and regressions are
    # read only. Every regression input runs at start-up, so a known crash fails at once.
    # shellcheck disable=SC2086
    "$BIN/$t" "$work" "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/regressions/$t" \
        "${seconds[@]}" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$art/" -print_final_stats=1 "${dict[@]}" $FUZZ_ARGS \
        >"$log" 2>&1
}

summary() {
    local t=$1 rc=$2 log=$WORK/$1.log art=$WORK/artifacts/$1
    local execs rate cov ft corp new
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    new=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corp=$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    local found
    found=$(find "$art" -type f 2>/dev/null | head -1)
    if [ "$rc" = 0 ] && [ -z "$found" ]; then
        printf 'fuzz %-15s ok     %10s execs %7s/s  cov %5s  ft %6s  corpus %5s (+%s new)\n' \
            "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${new:-0}"
        return 0
    fi
    printf 'fuzz %-15s FAILED (exit %s) after %s execs\n' "$t" "$rc" "${execs:-?}"
    grep -E "panicked at|^(assertion|config error|the outcome)|  left:|  right:|ERROR: libFuzzer|SUMMARY" "$log" | head -12 | sed 's/^/    /'
    if [ -n "$found" ]; then
        echo "    input: $found"
        echo "    base64: $(base64 -w0 "$found")"
        echo "    replay: $BIN/$t $found"
    else
        tail -20 "$log" | sed 's/^/    /'
    fi
    return 1
}

echo "== fuzzing: ${SECONDS_PER_TARGET}s per target, $JOBS at a time (logs in $WORK)"
mkdir -p "$WORK"
rm -f "$WORK"/*.rc
for t in $TARGETS; do
    [ -x "$BIN/$t" ] || { echo "fuzz/run.sh: no target $t" >&2; exit 2; }
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    (
        rc=0
        run_one "$t" || rc=$?
        echo "$rc" >"$WORK/$t.rc"
    ) &
done
wait

failed=0
for t in $TARGETS; do summary "$t" "$(cat "$WORK/$t.rc" 2>/dev/null || echo "?")" || failed=1; done
if [ "$failed" != 0 ]; then
    echo "fuzz: FAILED. Minimise the input (see fuzz/README.md), add it under fuzz/regressions/<target>/, fix the bug."
    exit 1
fi
echo "fuzz: all targets ok"
