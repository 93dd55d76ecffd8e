#!/usr/bin/env bash
# One 1 GiB transfer (iperf3 -n 1G) through ringsocks, through microsocks, and direct, three
# rounds interleaved; prints Gbit/s per transfer. Run it in a private netns:
#   unshare -n bash -c 'ip link set lo up; bash loadtest/bench/one-gib.sh'
# Needs iperf3, proxychains4 and microsocks (apt-get install -y iperf3 proxychains4 microsocks).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
R=${RINGSOCKS:-$root/target/release/ringsocks}
work=$(mktemp -d /tmp/one-gib.XXXX)
"$R" serve --listen 127.0.0.1:11090 --log-level warn 2>/dev/null & A=$!
microsocks -i 127.0.0.1 -p 11081 >/dev/null 2>&1 & M=$!
iperf3 -s -B 127.0.0.1 -p 15201 >/dev/null 2>&1 & I=$!
trap 'kill $A $M $I 2>/dev/null; rm -rf "$work"' EXIT
sleep 0.7
for port in 11090 11081; do
  printf 'strict_chain\nquiet_mode\n[ProxyList]\nsocks5 127.0.0.1 %s\n' "$port" >"$work/pc_$port.conf"
done
run() { # name, command prefix...
  local name=$1; shift
  "$@" iperf3 -c 127.0.0.1 -p 15201 -n 1G -l 128K -J >"$work/$name.json" 2>/dev/null
  python3 - "$name" "$work/$name.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))["end"]["sum_sent"]
print(f"{sys.argv[1]:10s} sent={s['bytes']} seconds={s['seconds']:.3f} gbit/s={s['bits_per_second'] / 1e9:.2f}")
PY
}
for _ in 1 2 3; do
  run ringsocks proxychains4 -q -f "$work/pc_11090.conf"
  run microsocks proxychains4 -q -f "$work/pc_11081.conf"
  run direct env
done
