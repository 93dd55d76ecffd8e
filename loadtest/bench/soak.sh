#!/usr/bin/env bash
# Soak: one ringsocks under a mixed load for DURATION: new tunnels (cps), request/response on
# persistent tunnels (rps), bulk streams with byte-exact end checks (throughput), UDP ASSOCIATE
# round trips (udp) and HOLD idle tunnels with keepalives (hold), all at once, each generator
# in its own process and cores shared. Passes when every generator finishes with no error (no
# tunnel lost, every byte accounted for), the proxy's descriptors return exactly to their
# baseline, and its RSS after the soak is within 10% + 2 MiB of its RSS after a short warm-up
# of the same mix (memory that stays is a leak, not a high-water mark).
#
# usage: unshare -n bash -c 'ip link set lo up; bash loadtest/bench/soak.sh [OUTDIR]'
# env:   DURATION (600s; CI uses 60s) WARMUP_RUN (10s) HOLD (500)
#        RINGSOCKS=path (default target/release/ringsocks), LOAD=path (built into target-load/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results/soak}
mkdir -p "$out"
DURATION=${DURATION:-600s}
WARMUP_RUN=${WARMUP_RUN:-10s}
HOLD=${HOLD:-500}
. "$here/common.sh"

port=11400
start_proxy "$port" "$out/ringsocks.log" --log-level warn
rs_pid=$proxy_pid
proxy="socks5://127.0.0.1:$port"

fds() { ls "/proc/$rs_pid/fd" | wc -l; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$rs_pid/status"; }
settle() { # wait up to 10 s for the descriptors to reach $1
    for _ in $(seq 100); do [ "$(fds)" -le "$1" ] && return 0; sleep 0.1; done
    return 1
}

# One run of the mix for $1; generator outputs go to $2.NAME.txt; returns non-zero on any error.
mix() {
    local d=$1 prefix=$2 pids=() names=() rc=0 i
    local common=(-p "$proxy" -d "$d" -w 0s --max-error-rate 0 --no-progress -t 1)
    "$LOAD" cps "${common[@]}" -c 8 >"$prefix.cps.txt" 2>&1 & pids+=($!); names+=(cps)
    "$LOAD" rps "${common[@]}" -c 8 >"$prefix.rps.txt" 2>&1 & pids+=($!); names+=(rps)
    "$LOAD" throughput "${common[@]}" -c 2 --direction both >"$prefix.throughput.txt" 2>&1 &
    pids+=($!); names+=(throughput)
    "$LOAD" udp "${common[@]}" -c 4 --timeout 2s >"$prefix.udp.txt" 2>&1 & pids+=($!); names+=(udp)
    "$LOAD" hold "${common[@]}" -c "$HOLD" --rate 500 >"$prefix.hold.txt" 2>&1 & pids+=($!); names+=(hold)
    started+=("${pids[@]}")
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            echo "FAIL: ${names[$i]} reported errors (see $prefix.${names[$i]}.txt)"
            tail -15 "$prefix.${names[$i]}.txt"
            rc=1
        fi
    done
    return $rc
}

base_fds=$(fds)
base_rss=$(rss_kib)
echo "== warm-up mix ($WARMUP_RUN)"
mix "$WARMUP_RUN" "$out/warmup"
settle "$base_fds" || { echo "FAIL: descriptors $(fds) after the warm-up, baseline $base_fds"; exit 1; }
sleep 3
warm_rss=$(rss_kib)
echo "== soak mix ($DURATION)"
soak_rc=0
mix "$DURATION" "$out/soak" || soak_rc=1
fds_ok=1
settle "$base_fds" || fds_ok=0
sleep 3
after_fds=$(fds)
after_rss=$(rss_kib)
limit=$((warm_rss * 110 / 100 + 2048))
{
    echo "date: $(date -u +%FT%TZ)  duration: $DURATION  ringsocks $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "descriptors: baseline $base_fds, after $after_fds"
    echo "RSS KiB: start $base_rss, after warm-up $warm_rss, after soak $after_rss (limit $limit)"
    for f in "$out"/soak.*.txt; do
        n=$(basename "$f" .txt)
        echo "$n: $(grep -m1 -E 'iterations|tunnels held|datagrams' "$f" | sed 's/^ *//')"
    done
} | tee "$out/summary.txt"
rc=$soak_rc
[ "$fds_ok" = 1 ] || { echo "FAIL: descriptors did not return to $base_fds (now $after_fds)"; rc=1; }
[ "$after_rss" -le "$limit" ] || { echo "FAIL: RSS grew from $warm_rss to $after_rss KiB"; rc=1; }
kill -0 "$rs_pid" 2>/dev/null || { echo "FAIL: ringsocks died"; rc=1; }
[ "$rc" = 0 ] && echo "PASS: soak"
exit $rc
