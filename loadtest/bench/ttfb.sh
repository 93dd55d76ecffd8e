#!/usr/bin/env bash
# Time to first response byte over a 50 ms RTT client link: direct, SOCKS5 (no auth, user/pass)
# and SOCKS6 with the request sent as initial data (no auth, user/pass), one tunnel at a time.
#
#   client ns  10.202.1.2 --(25 ms each way)-- 10.202.1.1  proxy ns: ringsocks :1080 (no auth),
#                                                          :1081 (users file), target :9000
#
# The target (ringsocks-load serve) runs beside the proxies, so the proxy-target leg has no
# added delay: the proxies reach it on 127.0.0.1, direct clients on 10.202.1.1. The delay is
# `tc netem delay 25ms` on both ends of a veth pair; on a kernel without sch_netem the link is
# a TUN pair joined by tests/netem/impair.py (netem's delay in user space), NETEM_IMPL=tc|tun
# forces one. Each row is `ringsocks-load cps -c 1` for DURATION (sequential iterations); TTFB
# runs from the start of the TCP connect to the first byte of the target's response.
# A proxy that does not speak SOCKS6 (version mismatch reply, or closes) gets its socks6 rows
# marked "skipped: proxy refused socks6".
#
# usage: bash loadtest/bench/ttfb.sh [OUTDIR]       (root: network namespaces, tc)
# env:   DURATION (20s) WARMUP (1s) DELAY_MS (25, each way) NETEM_IMPL (auto|tc|tun)
#        RUN_TIMEOUT (300, seconds per run)
#        RINGSOCKS=path (default target/release/ringsocks), LOAD=path (built into target-load/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results/ttfb}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-1s}
DELAY_MS=${DELAY_MS:-25}
IMPL=${NETEM_IMPL:-auto}
RUN_TIMEOUT=${RUN_TIMEOUT:-300} # seconds, per run: a hung run is killed
PY=${PYTHON:-python3}
[ "$(id -u)" = 0 ] || { echo "ttfb.sh needs root (network namespaces, tc)"; exit 1; }
for t in ip jq timeout; do command -v "$t" >/dev/null || { echo "ttfb.sh needs $t"; exit 1; }; done
mkdir -p "$out"
. "$here/common.sh"

C=ttfb-c-$$ P=ttfb-p-$$
ttfb_cleanup() {
    cleanup
    ip netns del "$C" 2>/dev/null || true
    ip netns del "$P" 2>/dev/null || true
}
trap ttfb_cleanup EXIT
trap 'exit 130' INT TERM

# bg NS LOG CMD...: run CMD in namespace NS in the background; its PID goes to `started`.
bg() {
    local ns=$1 log=$2
    shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 &
    started+=("$!")
}

# wait_listen NS PORT: until something listens on PORT in NS (at most 5 s).
wait_listen() {
    for _ in $(seq 50); do
        ip netns exec "$1" ss -ltn "sport = :$2" | grep -q LISTEN && return 0
        sleep 0.1
    done
    echo "nothing listens on port $2 in $1"
    exit 1
}

# --- the link
for ns in $C $P; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
if [ "$IMPL" = auto ] || [ "$IMPL" = tc ]; then
    ip -n "$C" link add c0 type veth peer name p0 netns "$P"
    if tc -n "$C" qdisc add dev c0 root netem delay "${DELAY_MS}ms" 2>/dev/null &&
        tc -n "$P" qdisc add dev p0 root netem delay "${DELAY_MS}ms" 2>/dev/null; then
        IMPL=tc
    elif [ "$IMPL" = tc ]; then
        echo "tc netem unavailable (no sch_netem in this kernel) and NETEM_IMPL=tc"
        exit 1
    else
        ip -n "$C" link del c0
        IMPL=tun
    fi
fi
if [ "$IMPL" = tun ]; then
    [ -c /dev/net/tun ] || { echo "no sch_netem and no /dev/net/tun: cannot delay the link"; exit 1; }
    echo "$DELAY_MS 0 0 0 0" >"$tmp/link.params"
    "$PY" "$root/tests/netem/impair.py" "$C" c0 "$P" p0 "$tmp/link.params" >"$tmp/impair.log" 2>&1 &
    started+=("$!")
    for _ in $(seq 100); do grep -q ready "$tmp/impair.log" && break; sleep 0.1; done
    grep -q ready "$tmp/impair.log" || { echo "impair.py did not start:"; cat "$tmp/impair.log"; exit 1; }
fi
ip -n "$C" addr add 10.202.1.2/24 dev c0
ip -n "$P" addr add 10.202.1.1/24 dev p0
ip -n "$C" link set c0 up
ip -n "$P" link set p0 up

# --- target and proxies
echo "bench:pw" >"$tmp/users"
bg "$P" "$tmp/target.log" "$LOAD" serve --target-bind 0.0.0.0:9000 --threads 1 --no-pin -q
bg "$P" "$tmp/rs-1080.log" "$rs" serve --listen 10.202.1.1:1080 --threads 1 --allow-open
bg "$P" "$tmp/rs-1081.log" "$rs" serve --listen 10.202.1.1:1081 --threads 1 --users "$tmp/users"
wait_listen "$P" 9000
wait_listen "$P" 1080
wait_listen "$P" 1081
for _ in $(seq 20); do ip netns exec "$C" timeout 2 bash -c '</dev/tcp/10.202.1.1/9000' 2>/dev/null && break; sleep 0.2; done

{
    machine_info
    echo "link: $IMPL, ${DELAY_MS} ms each way (nominal RTT $((2 * DELAY_MS)) ms)"
    echo "runs: ringsocks-load cps -c 1 -d $DURATION -w $WARMUP (target closes first)"
} >"$out/machine.txt"

rtt_ms=$((2 * DELAY_MS))
jsonl=$out/ttfb.jsonl
rm -f "$jsonl"
rows=()

# measure NAME URL TARGET MODEL_RTTS
measure() {
    local name=$1 url=$2 target=$3 model=$4 line kinds
    echo "### $name: $url" >&2
    if [[ $url == socks6://* ]]; then
        # Probe (1 s) first, so that a proxy without SOCKS6 costs no full run.
        line=$(ip netns exec "$C" timeout 30 "$LOAD" cps -c 1 -d 1s -w 0 -p "$url" \
            --target "$target" --threads 1 --no-pin --no-progress --json --max-error-rate 1 |
            jq -c 'select(.type == "run")' || true)
        if [ "$(jq -r '.successes' <<<"$line")" = 0 ]; then
            kinds=$(jq -r '.errors_by_kind | keys | join(",")' <<<"$line")
            if [[ $kinds == *socks6_refused* ]]; then
                rows+=("| $name | \`$url\` | skipped: proxy refused socks6 | | | | | | $model |")
            else
                rows+=("| $name | \`$url\` | failed: $kinds | | | | | | $model |")
            fi
            echo "    skipped ($kinds)" >&2
            return 0
        fi
    fi
    line=$(ip netns exec "$C" timeout "$RUN_TIMEOUT" "$LOAD" cps -c 1 -d "$DURATION" \
        -w "$WARMUP" -p "$url" --target "$target" --threads 1 --no-pin --no-progress --json \
        --max-error-rate 1 | jq -c 'select(.type == "run")' || true)
    [ -n "$line" ] || { rows+=("| $name | \`$url\` | failed: no result | | | | | | $model |"); return 0; }
    jq -c --arg name "$name" '. + {bench_name: $name}' <<<"$line" >>"$jsonl"
    rows+=("$(jq -r --arg name "$name" --arg url "$url" --argjson rtt "$rtt_ms" --arg model "$model" '
        def ms: . / 1000 | (. * 10 | round) / 10;
        .latency_us.ttfb as $t
        | "| \($name) | `\($url)` | \($t.count) (\(.errors) errors) | \($t.p50 | ms) | \($t.p90 | ms)"
          + " | \($t.p99 | ms) | \($t.mean | ms) | \(($t.p50 / 1000 / $rtt) * 100 | round / 100) | \($model) |"
    ' <<<"$line")")
}

p=10.202.1.1
measure direct direct "$p:9000" 2
measure socks5 "socks5://$p:1080" 127.0.0.1:9000 4
measure socks5-userpass "socks5://bench:pw@$p:1081" 127.0.0.1:9000 5
measure socks6-initial-data "socks6://$p:1080" 127.0.0.1:9000 2
measure socks6-userpass-initial-data "socks6://bench:pw@$p:1081" 127.0.0.1:9000 2

{
    echo "# Time to first response byte, ${rtt_ms} ms RTT client link"
    echo
    echo "ringsocks-load cps -c 1 (one tunnel at a time) for $DURATION each, after $WARMUP of warmup;"
    echo "TTFB = from the start of the TCP connect to the first byte of the target's response"
    echo "(a 64-byte request, a 64-byte response). Link: $IMPL, ${DELAY_MS} ms each way on the"
    echo "client-proxy link, none between proxy and target. TTFB/RTT is p50 / ${rtt_ms} ms; the last"
    echo "column is the round trips the protocol needs before the first response byte (TCP"
    echo "handshake included): SOCKS5 adds method selection (and RFC 1929) round trips, SOCKS6"
    echo "carries the request as initial data."
    echo
    echo "| mode | proxy | iterations | p50 ms | p90 ms | p99 ms | mean ms | TTFB/RTT (p50) | RTTs (model) |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    sed 's/^/    /' "$out/machine.txt"
} >"$out/ttfb.md"
cat "$out/ttfb.md"
