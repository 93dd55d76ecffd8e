#!/usr/bin/env bash
# Cross-check ringsocks-load against independent tools on the same proxies:
#   throughput: iperf3 through proxychains4  vs  ringsocks-load throughput (1 and 8 tunnels, up)
#   conn/s:     curl (one process, N URLs, HTTP/1.0 + Connection: close, so one tunnel per
#               request), sequential and --parallel-max 64  vs  ringsocks-load cps -c 1 / -c 64
# Each pair runs back to back, ROUNDS times, alternating; medians are printed.
#
# usage: bash loadtest/bench/crosscheck.sh [OUTDIR]
# env:   SECS (10) ROUNDS (3) CHECKS ("tput cps") RINGSOCKS=path (if built, also checked)
#        LOAD=path/to/ringsocks-load
# needs: iperf3, proxychains4, curl (apt-get install -y iperf3 proxychains4 curl)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results}
mkdir -p "$out"
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
CHECKS=${CHECKS:-"tput cps"}
LOAD=${LOAD:-$root/target-load/release/ringsocks-load}
peers=${PEERS:-$root/../shared/peers}
[ -d "$peers" ] || peers=/work/shared/peers
for t in iperf3 proxychains4 curl; do
    command -v $t >/dev/null || { echo "missing $t: apt-get install -y iperf3 proxychains4 curl" >&2; exit 2; }
done
started=()
tmp=$(mktemp -d /tmp/crosscheck.XXXX)
cleanup() { for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

tport=17000
iport=15201
"$LOAD" serve --target-bind 127.0.0.1:$tport -q >"$tmp/serve.log" 2>&1 &
started+=($!)
iperf3 -s -B 127.0.0.1 -p $iport >"$tmp/iperf3-server.log" 2>&1 &
started+=($!)
proxies=()
rs=${RINGSOCKS:-$root/target/release/ringsocks}
if [ -x "$rs" ]; then
    "$rs" serve --listen 127.0.0.1:11090 >"$tmp/ringsocks.log" 2>&1 &
    started+=($!)
    proxies+=("ringsocks:11090")
fi
mkdir -p "$tmp/dante"
started+=("$(bash "$peers/start-dante.sh" 11080 "$tmp/dante")")
started+=("$(bash "$peers/start-microsocks.sh" 11081)")
proxies+=("dante:11080" "microsocks:11081" "direct:0")
sleep 1

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.4g\n", (v[NR/2]+v[NR/2+1])/2}'; }

purl() { [ "$2" = 0 ] && echo direct || echo "socks5://127.0.0.1:$2"; }

iperf() { # port streams -> Gbit/s received
    local pc=()
    if [ "$1" != 0 ]; then
        printf 'strict_chain\nquiet_mode\n[ProxyList]\nsocks5 127.0.0.1 %s\n' "$1" >"$tmp/pc.conf"
        pc=(proxychains4 -q -f "$tmp/pc.conf")
    fi
    "${pc[@]}" iperf3 -c 127.0.0.1 -p $iport -t "$SECS" -P "$2" -J >"$tmp/iperf.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' "$tmp/iperf.json"
}

ours_tput() { # port tunnels
    "$LOAD" throughput -p "$(purl x "$1")" --target 127.0.0.1:$tport -c "$2" --direction up \
        -d "$SECS" -w 1 --json --no-progress |
        python3 -c 'import json,sys; print("%.3f" % json.loads(sys.stdin.readline())["throughput"]["gbps_total"])'
}

curl_cps() { # port parallel -> conn/s
    local n=$3 args=(-s --no-progress-meter -K "$tmp/urls")
    : >"$tmp/urls"
    for _ in $(seq "$n"); do printf 'url = "http://127.0.0.1:%s/64"\noutput = "/dev/null"\n' $tport >>"$tmp/urls"; done
    [ "$1" != 0 ] && args+=(--socks5 "127.0.0.1:$1")
    [ "$2" -gt 1 ] && args+=(-Z --parallel-max "$2" --parallel-immediate)
    # GNU time: elapsed seconds and CPU share of curl itself (100% = one core).
    /usr/bin/time -f '%e %P' -o "$tmp/time" curl "${args[@]}"
    read -r secs cpu <"$tmp/time"
    python3 -c "print('%.0f' % ($n / $secs))"
    echo "$cpu" >>"$tmp/curl-cpu"
}

ours_cps() { # port conc -> conn/s; also appends the kernel's count of accepted connections
    "$LOAD" cps -p "$(purl x "$1")" --target 127.0.0.1:$tport -c "$2" -d "$SECS" -w 1 --json --no-progress |
        python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())
hops = 1 if r["proxy"] == "direct" else 2
k = r["kernel_tcp"]["passive_opens"] / hops / r["measured_s"]
open(sys.argv[1], "a").write("%.0f\n" % k)
print("%.0f" % r["per_second"])' "$tmp/kernel"
}

report="$out/crosscheck-${CHECKS// /-}.txt"
{
    echo "date: $(date -u +%FT%TZ); load avg: $(cut -d' ' -f1-3 /proc/loadavg); ${SECS}s per measurement; medians of $ROUNDS"
    printf '%-11s %-22s %12s %12s %7s\n' proxy measurement independent ringsocks-load ratio
} | tee "$report"
for p in "${proxies[@]}"; do
    name=${p%%:*}
    port=${p##*:}
    for streams in 1 8; do
        [[ " $CHECKS " == *" tput "* ]] || continue
        a=()
        b=()
        for _ in $(seq "$ROUNDS"); do
            a+=("$(iperf "$port" "$streams")")
            b+=("$(ours_tput "$port" "$streams")")
        done
        ma=$(printf '%s\n' "${a[@]}" | median)
        mb=$(printf '%s\n' "${b[@]}" | median)
        printf '%-11s %-22s %12s %12s %7.2f   (iperf3: %s; ours: %s)\n' "$name" "Gbit/s up, $streams tunnel(s)" "$ma" "$mb" \
            "$(python3 -c "print($mb/$ma if $ma else 0)")" "${a[*]}" "${b[*]}" | tee -a "$report"
    done
    for conc in 1 64; do
        [[ " $CHECKS " == *" cps "* ]] || continue
        n=$((conc == 1 ? 3000 : 20000))
        a=()
        b=()
        : >"$tmp/kernel"
        : >"$tmp/curl-cpu"
        for _ in $(seq "$ROUNDS"); do
            a+=("$(curl_cps "$port" "$conc" "$n")")
            b+=("$(ours_cps "$port" "$conc")")
        done
        ma=$(printf '%s\n' "${a[@]}" | median)
        mb=$(printf '%s\n' "${b[@]}" | median)
        printf '%-11s %-22s %12s %12s %7.2f   (curl: %s at %s CPU; ours: %s; kernel count during ours: %s)\n' \
            "$name" "conn/s, concurrency $conc" "$ma" "$mb" "$(python3 -c "print($mb/$ma if $ma else 0)")" \
            "${a[*]}" "$(tr '\n' ' ' <"$tmp/curl-cpu" | sed 's/ $//')" "${b[*]}" "$(tr '\n' ' ' <"$tmp/kernel" | sed 's/ $//')" |
            tee -a "$report"
    done
done
