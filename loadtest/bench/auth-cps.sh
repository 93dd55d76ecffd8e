#!/usr/bin/env bash
# Cost of authentication on new tunnels: connections/s with no auth, with a plaintext user and
# with an argon2id-hashed user (verified once per credential, then from each worker's memory),
# and with a per-user bandwidth limit set high enough never to bite (the bucket's own cost),
# each with waiting and with pipelining clients, interleaved in one compare.
#
# usage: unshare -n bash -c 'ip link set lo up; bash loadtest/bench/auth-cps.sh [OUTDIR]'
# env:   DURATION (10s) WARMUP (2s) ROUNDS (3) CONC (64)
#        RINGSOCKS=path (default target/release/ringsocks), LOAD=path (built into target-load/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results/auth-cps}
mkdir -p "$out"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-64}
. "$here/common.sh"

echo "plain:pw" >"$tmp/users"
echo "pw" | "$rs" passwd --stdin --file "$tmp/users" hashed 2>/dev/null
echo "pw" | "$rs" passwd --stdin --file "$tmp/users" limited 2>/dev/null
printf '[user_bandwidth]\nlimited = "10G"\n' >"$tmp/limits.toml"

start_proxy 11200 "$tmp/ringsocks-11200.log"
noauth_pid=$proxy_pid
start_proxy 11201 "$tmp/ringsocks-11201.log" --users "$tmp/users" --config "$tmp/limits.toml"
auth_pid=$proxy_pid

# socks5:// clients wait for each answer, as curl does (RFC 1929 costs one more round trip);
# socks5+pipe:// clients send greeting, login and request at once, so the difference left is
# the proxy's own work for the login.
a=127.0.0.1:11201
compare="noauth=socks5://127.0.0.1:11200,plain=socks5://plain:pw@$a,hashed=socks5://hashed:pw@$a"
compare+=",limited=socks5://limited:pw@$a"
compare+=",noauth-pipe=socks5+pipe://127.0.0.1:11200,plain-pipe=socks5+pipe://plain:pw@$a"
compare+=",hashed-pipe=socks5+pipe://hashed:pw@$a"
pids="$noauth_pid,$auth_pid,$auth_pid,$auth_pid,$noauth_pid,$auth_pid,$auth_pid"
{
    machine_info
    echo "compare: $compare"
} >"$out/machine.txt"

name=cps-c$CONC
rm -f "$out/$name.jsonl"
echo "### $name: ringsocks-load cps -c $CONC --compare $compare --rounds $ROUNDS" | tee "$out/$name.txt"
"$LOAD" cps -c "$CONC" -d "$DURATION" -w "$WARMUP" --compare "$compare" --proxy-pid "$pids" \
    --rounds "$ROUNDS" --json-file "$out/$name.jsonl" --max-error-rate 1 --no-progress |
    tee -a "$out/$name.txt"
