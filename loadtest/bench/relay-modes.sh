#!/usr/bin/env bash
# Relay modes side by side: ringsocks with --relay splice, copy and adaptive (io_uring runtime),
# splice and copy on the epoll runtime, and direct loopback, interleaved in each compare.
#
# usage: unshare -n bash -c 'ip link set lo up; bash loadtest/bench/relay-modes.sh [OUTDIR]'
# env:   DURATION (10s) WARMUP (2s) ROUNDS (3) ONLY ("up1 up8 both1 both8 rps1 rps64")
#        MODES (default: "splice copy adaptive epoll-splice epoll-copy")
#        RINGSOCKS=path (default target/release/ringsocks), LOAD=path (built into target-load/)
# Bulk: `throughput` upload-only and both ways, 1 and 8 tunnels, with proxy CPU seconds per GiB.
# Small messages: `rps` (64-byte request, 64-byte response on persistent tunnels), 1 and 64
# tunnels, for round-trip latency. Writes NAME.txt and NAME.jsonl per scenario.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results/relay-modes}
mkdir -p "$out"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-"up1 up8 both1 both8 rps1 rps64"}
MODES=${MODES:-"splice copy adaptive epoll-splice epoll-copy"}
LOAD=${LOAD:-$root/target-load/release/ringsocks-load}
if [ ! -x "$LOAD" ]; then
    (cd "$root" && CARGO_TARGET_DIR="$root/target-load" cargo build --release -p ringsocks-load)
fi
rs=${RINGSOCKS:-$root/target/release/ringsocks}
[ -x "$rs" ] || (cd "$root" && cargo build --release)

started=()
cleanup() { for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

entries=()
pids=()
port=11100
for m in $MODES; do
    case $m in
    epoll-*) args=(--runtime epoll --relay "${m#epoll-}") ;;
    *) args=(--runtime uring --relay "$m") ;;
    esac
    "$rs" serve --listen "127.0.0.1:$port" "${args[@]}" >"$out/ringsocks-$m.log" 2>&1 &
    started+=("$!")
    for _ in $(seq 50); do ss -ltn "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
    entries+=("$m=socks5://127.0.0.1:$port")
    pids+=("$!")
    port=$((port + 1))
done
entries+=("direct")
pids+=("-")
compare=$(IFS=,; echo "${entries[*]}")
proxy_pids=$(IFS=,; echo "${pids[*]}")
{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
    echo "ringsocks: $rs ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "compare: $compare"
} >"$out/machine.txt"

run() {
    local name=$1
    shift
    rm -f "$out/$name.jsonl"
    echo "### $name: ringsocks-load $* --compare $compare --rounds $ROUNDS" | tee "$out/$name.txt"
    "$LOAD" "$@" --compare "$compare" --proxy-pid "$proxy_pids" --rounds "$ROUNDS" \
        --json-file "$out/$name.jsonl" --max-error-rate 1 --no-progress | tee -a "$out/$name.txt"
}

for s in $ONLY; do
    case $s in
    up1) run up-c1 throughput -c 1 --direction up -d "$DURATION" -w "$WARMUP" ;;
    up8) run up-c8 throughput -c 8 --direction up -d "$DURATION" -w "$WARMUP" ;;
    both1) run both-c1 throughput -c 1 --direction both -d "$DURATION" -w "$WARMUP" ;;
    both8) run both-c8 throughput -c 8 --direction both -d "$DURATION" -w "$WARMUP" ;;
    rps1) run rps-c1 rps -c 1 -d "$DURATION" -w "$WARMUP" ;;
    rps64) run rps-c64 rps -c 64 -d "$DURATION" -w "$WARMUP" ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
done
