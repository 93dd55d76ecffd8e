#!/usr/bin/env bash
# Reproduce the compare runs of loadtest/README.md ("Benchmark report").
#
# usage: bash loadtest/bench/run.sh [OUTDIR]
# env:   DURATION (10s) WARMUP (2s) ROUNDS (3) HOLD (9000) ONLY ("cps1 cps64 tput1 tput8 hold udp")
#        RINGSOCKS=path/to/ringsocks (default target/release/ringsocks; left out if missing)
#        LOAD=path/to/ringsocks-load (default: built into target-load/)
# Starts Dante (11080) and microsocks (11081) with ../shared/peers, and ringsocks (11090) if
# built, runs each scenario against all of them and direct, interleaved over ROUNDS, and writes
# NAME.txt (tables), NAME.jsonl, NAME.svg and NAME.*.hgrm per scenario. Stops what it started.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results}
mkdir -p "$out"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
HOLD=${HOLD:-9000}
ONLY=${ONLY:-"cps1 cps64 tput1 tput8 hold udp"}
LOAD=${LOAD:-$root/target-load/release/ringsocks-load}
if [ ! -x "$LOAD" ]; then
    (cd "$root" && CARGO_TARGET_DIR="$root/target-load" cargo build --release -p ringsocks-load)
fi
peers=${PEERS:-$root/../shared/peers}
[ -d "$peers" ] || peers=/work/shared/peers

started=()
cleanup() { for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

entries=()
pids=()
rs=${RINGSOCKS:-$root/target/release/ringsocks}
if [ -x "$rs" ]; then
    "$rs" serve --listen 127.0.0.1:11090 >"$out/ringsocks.log" 2>&1 &
    rspid=$!
    started+=("$rspid")
    for _ in $(seq 50); do ss -ltn "sport = :11090" | grep -q LISTEN && break; sleep 0.1; done
    entries+=("ringsocks=socks5://127.0.0.1:11090")
    pids+=("$rspid")
fi
dante=$(bash "$peers/start-dante.sh" 11080 "$(mktemp -d /tmp/dante.XXXX)")
started+=("$dante")
micro=$(bash "$peers/start-microsocks.sh" 11081)
started+=("$micro")
entries+=("dante=socks5://127.0.0.1:11080" "microsocks=socks5://127.0.0.1:11081" "direct")
pids+=("$dante" "$micro" "-")
compare=$(IFS=,; echo "${entries[*]}")
proxy_pids=$(IFS=,; echo "${pids[*]}")

{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "fd limit: $(ulimit -Hn)"
    echo "dante: $(danted -v 2>&1 | head -1)"
    echo "microsocks: $(dpkg-query -W -f='${Version}' microsocks 2>/dev/null)"
    echo "ringsocks: $([ -x "$rs" ] && echo "$rs" || echo 'not built')"
    echo "compare: $compare"
} >"$out/machine.txt"

run() {
    local name=$1
    shift
    rm -f "$out/$name.jsonl"
    echo "### $name: ringsocks-load $* --compare $compare --rounds $ROUNDS" | tee "$out/$name.txt"
    "$LOAD" "$@" --compare "$compare" --proxy-pid "$proxy_pids" --rounds "$ROUNDS" \
        --json-file "$out/$name.jsonl" --plot "$out/$name.svg" --hgrm "$out/$name.hgrm" \
        --max-error-rate 1 --no-progress | tee -a "$out/$name.txt"
}

for s in $ONLY; do
    case $s in
    cps1) run cps-c1 cps -c 1 -d "$DURATION" -w "$WARMUP" ;;
    cps64) run cps-c64 cps -c 64 -d "$DURATION" -w "$WARMUP" ;;
    tput1) run throughput-c1 throughput -c 1 -d "$DURATION" -w "$WARMUP" ;;
    tput8) run throughput-c8 throughput -c 8 -d "$DURATION" -w "$WARMUP" ;;
    hold) ROUNDS=1 run hold-"$HOLD" hold -c "$HOLD" -d "$DURATION" --keepalive 5s --pause 3s ;;
    udp) ROUNDS=1 run udp-c8 udp -c 8 -d "$DURATION" -w "$WARMUP" --timeout 500ms ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
done
