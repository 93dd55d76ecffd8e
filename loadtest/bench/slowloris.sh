#!/usr/bin/env bash
# Good clients' handshake latency with and without a slowloris attack: ATTACK connections that
# send one byte of a SOCKS5 greeting and then nothing (each reopened as soon as the proxy's
# handshake timeout closes it), against ringsocks with default settings. Rounds alternate
# without / with the attack; good clients run `cps` open-loop at RATE new tunnels/s.
#
# usage: unshare -n bash -c 'ip link set lo up; bash loadtest/bench/slowloris.sh [OUTDIR]'
# env:   ATTACK (3000) RATE (2000) CONC (32) DURATION (10s) ROUNDS (3)
#        RINGSOCKS=path (default target/release/ringsocks), LOAD=path (built into target-load/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results/slowloris}
mkdir -p "$out"
ATTACK=${ATTACK:-3000}
RATE=${RATE:-2000}
CONC=${CONC:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
. "$here/common.sh"

port=11300
start_proxy "$port" "$tmp/ringsocks.log" --log-level warn
rs_pid=$proxy_pid

# The attacker: holds ATTACK half-greeting connections until killed.
cat >"$tmp/attack.py" <<'PY'
import asyncio, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = 0
async def one():
    global held
    while True:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(b"\x05")
            await w.drain()
            held += 1
            await r.read()          # until the proxy closes it (handshake timeout)
            held -= 1
            w.close()
        except OSError:
            await asyncio.sleep(0.05)
async def main():
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    while True:
        await asyncio.sleep(1)
        print(f"held {held}", flush=True)
asyncio.run(main())
PY

{
    machine_info
    echo "attack: $ATTACK half-greeting connections; good clients: cps -c $CONC -r $RATE -d $DURATION"
} >"$out/machine.txt"

summary="$out/summary.txt"
echo "round  attack  conn/s   hs_p50_ms  hs_p99_ms  hs_p999_ms  errors  proxy_fds" >"$summary"
rm -f "$out/cps.jsonl"
for r in $(seq "$ROUNDS"); do
    for attack in 0 "$ATTACK"; do
        apid=
        if [ "$attack" -gt 0 ]; then
            ulimit -n 20000
            python3 "$tmp/attack.py" 127.0.0.1 "$port" "$attack" >"$tmp/attack.out" 2>&1 &
            apid=$!
            started+=("$apid")
            for _ in $(seq 100); do
                tail -1 "$tmp/attack.out" 2>/dev/null | grep -q "held $attack" && break
                sleep 0.2
            done
            echo "attacker: $(tail -1 "$tmp/attack.out")"
        fi
        fds=$(ls /proc/$rs_pid/fd | wc -l)
        "$LOAD" cps -p "socks5://127.0.0.1:$port" -c "$CONC" -r "$RATE" -d "$DURATION" -w 2s \
            --json-file "$tmp/run.jsonl" --max-error-rate 1 --no-progress >"$tmp/run.txt"
        cat "$tmp/run.jsonl" >>"$out/cps.jsonl"
        python3 - "$tmp/run.jsonl" "$r" "$attack" "$fds" >>"$summary" <<'PY'
import json, sys
run = [json.loads(l) for l in open(sys.argv[1]) if '"type":"run"' in l][-1]
hs = run["latency_us"]["handshake"]
print(f'{sys.argv[2]:>5}  {sys.argv[3]:>6}  {run["per_second"]:7.0f}  {hs["p50"]/1000:9.3f}  {hs["p99"]/1000:9.3f}  {hs["p999"]/1000:10.3f}  {run["errors"]:6}  {sys.argv[4]:>9}')
PY
        rm -f "$tmp/run.jsonl"
        if [ -n "$apid" ]; then
            kill "$apid" 2>/dev/null || true
            wait "$apid" 2>/dev/null || true
            sleep 1
        fi
    done
done
cat "$summary"
