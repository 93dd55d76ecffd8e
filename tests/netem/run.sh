#!/usr/bin/env bash
# Network-fault suite: ringsocks between a client and a target in three network namespaces,
# with latency, loss and reordering on the links, a blackholed target and a target that resets.
#
# usage: tests/netem/run.sh [PATH_TO_RINGSOCKS]   (default: target/release/ringsocks)
#
#   client ns  10.201.1.2 --link 1-- 10.201.1.1  proxy ns  10.201.2.1 --link 2-- 10.201.2.2  target ns
#                                     (ringsocks :1080, ip_forward off)       (+10.201.2.3, blackholed)
#
# Faults come from `tc netem` on veth pairs (a qdisc on each end: both directions). On a kernel
# without sch_netem (e.g. CI's VM) the links are instead TUN pairs joined by impair.py, which
# applies netem's model (delay+jitter, loss, reorder) in user space. NETEM_IMPL=tc|tun forces one
# (NETEM_IMPL=veth: veth links and no faults at all, to check the plumbing).
# The blackhole drops the target's SYN-ACKs (policy route to a blackhole for replies from
# 10.201.2.3), so ringsocks's SYNs go unanswered until its --connect-timeout fires.
#
# Needs root, iproute2 (ip, tc) and python3; prints "SKIP: ..." and exits 0 where the machine
# forbids namespaces or has neither netem nor TUN. Every wait and transfer is bounded.
# Environment: RUNTIMES (default "uring epoll"), NETEM_BIG_MIB (single transfer, default 4),
# NETEM_PAR (parallel transfers, default 4), NETEM_PAR_KIB (size of each, default 1024).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/ringsocks}
bin=$(realpath "$bin" 2>/dev/null || echo "$bin")
RUNTIMES=${RUNTIMES:-uring epoll}
BIG=$((${NETEM_BIG_MIB:-4} * 1048576))
PAR=${NETEM_PAR:-4}
PARB=$((${NETEM_PAR_KIB:-1024} * 1024))
IMPL=${NETEM_IMPL:-auto}
PY=${PYTHON:-python3}
tool=$here/nettool.py

skip() { echo "SKIP: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "netem suite needs root (network namespaces, tc)"
command -v ip >/dev/null && command -v tc >/dev/null || skip "iproute2 (ip, tc) not installed"
command -v "$PY" >/dev/null || skip "python3 not installed"
[ -x "$bin" ] || { echo "FAIL: no ringsocks binary at $bin"; exit 1; }

C=rsn-c-$$ P=rsn-p-$$ T=rsn-t-$$ S=rsn-s-$$
work=$(mktemp -d /tmp/ringsocks-netem.XXXX)
pids=() proxy_pid=""
t_start=$(date +%s)

cleanup() {
  local p
  for p in $proxy_pid "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in $proxy_pid "${pids[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  wait 2>/dev/null
  for ns in $C $P $T $S; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- can this machine do it?
ip netns add "$S" 2>/dev/null || skip "cannot create network namespaces (ip netns add failed)"
if [ "$IMPL" = auto ] || [ "$IMPL" = tc ]; then
  if ip -n "$S" link add vx0 type veth peer name vx1 2>/dev/null &&
     tc -n "$S" qdisc add dev vx0 root netem delay 1ms 2>/dev/null; then
    IMPL=tc
  elif [ "$IMPL" = tc ]; then
    skip "tc netem unavailable (no sch_netem in this kernel) and NETEM_IMPL=tc"
  else
    IMPL=tun
  fi
fi
ip netns del "$S" 2>/dev/null
if [ "$IMPL" = tun ]; then
  [ -c /dev/net/tun ] || skip "tc netem unavailable (no sch_netem) and no /dev/net/tun for the user-space fallback"
fi
case $IMPL in tc|tun|veth) ;; *) echo "FAIL: NETEM_IMPL must be tc, tun or veth"; exit 1 ;; esac

fails=0 passes=0
elapsed() { echo $(($(date +%s) - t_start)); }
pass() { passes=$((passes + 1)); echo "PASS [$(elapsed)s] $*"; }
fail() { fails=$((fails + 1)); echo "FAIL [$(elapsed)s] $*"; }

# --- topology
for ns in $C $P $T; do
  ip netns add "$ns" || { echo "FAIL: ip netns add $ns"; exit 1; }
  ip -n "$ns" link set lo up
done
ip netns exec "$P" sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'
params1=$work/link1.params params2=$work/link2.params
if [ "$IMPL" = tun ]; then
  echo "0 0 0 0 0" >"$params1"; echo "0 0 0 0 0" >"$params2"
  "$PY" "$here/impair.py" "$C" c0 "$P" p1 "$params1" >"$work/impair1.log" 2>&1 &
  pids+=($!)
  "$PY" "$here/impair.py" "$P" p2 "$T" t0 "$params2" >"$work/impair2.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q ready "$work/impair1.log" && grep -q ready "$work/impair2.log" && break; sleep 0.1
  done
  grep -q ready "$work/impair1.log" && grep -q ready "$work/impair2.log" ||
    { echo "FAIL: impair.py did not start:"; cat "$work"/impair*.log; exit 1; }
else
  ip -n "$C" link add c0 type veth peer name p1 netns "$P" || { echo "FAIL: veth"; exit 1; }
  ip -n "$P" link add p2 type veth peer name t0 netns "$T" || { echo "FAIL: veth"; exit 1; }
fi
ip -n "$C" addr add 10.201.1.2/24 dev c0
ip -n "$P" addr add 10.201.1.1/24 dev p1
ip -n "$P" addr add 10.201.2.1/24 dev p2
ip -n "$T" addr add 10.201.2.2/24 dev t0
ip -n "$T" addr add 10.201.2.3/24 dev t0
for l in "$C c0" "$P p1" "$P p2" "$T t0"; do set -- $l; ip -n "$1" link set "$2" up; done
echo "== links: $IMPL ($([ "$IMPL" = tun ] && echo "TUN pairs + tests/netem/impair.py, sch_netem unavailable" || echo "veth pairs"))"

# faults LINK DELAY_MS JITTER_MS LOSS_PCT REORDER_PCT REORDER_CORR_PCT (all 0: none)
faults() {
  local link=$1 d=$2 j=$3 l=$4 r=$5 rc=$6 a b
  if [ "$link" = 1 ]; then a="$C c0"; b="$P p1"; else a="$P p2"; b="$T t0"; fi
  case $IMPL in
    tc)
      for e in "$a" "$b"; do
        set -- $e
        if [ "$d" = 0 ] && [ "$l" = 0 ]; then tc -n "$1" qdisc del dev "$2" root 2>/dev/null
        else
          local args=(delay "${d}ms")
          [ "$j" != 0 ] && args+=("${j}ms")
          [ "$l" != 0 ] && args+=(loss "$l%")
          [ "$r" != 0 ] && args+=(reorder "$r%" "$rc%")
          tc -n "$1" qdisc replace dev "$2" root netem "${args[@]}" ||
            { echo "FAIL: tc netem on $2"; exit 1; }
        fi
      done ;;
    tun)
      local f; f=$([ "$link" = 1 ] && echo "$params1" || echo "$params2")
      echo "$d $j $l $r $rc" >"$f.new" && mv "$f.new" "$f"
      for _ in $(seq 40); do
        [ "$(cat "$f.ack" 2>/dev/null)" = "$d $j $l $r $rc" ] && return 0; sleep 0.05
      done
      echo "FAIL: impair.py did not take the new parameters"; exit 1 ;;
    veth) ;;
  esac
}

# --- target services
ip netns exec "$T" "$PY" "$tool" servers 0.0.0.0:7000 0.0.0.0:7001 "$work/rst.log" \
  >"$work/servers.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "servers ready" "$work/servers.log" && break; sleep 0.1; done
grep -q "servers ready" "$work/servers.log" || { echo "FAIL: target servers:"; cat "$work/servers.log"; exit 1; }
# Blackhole: replies from 10.201.2.3 are routed to nowhere (the SYN-ACK never leaves).
ip -n "$T" route add blackhole default table 201
ip -n "$T" rule add from 10.201.2.3 lookup 201 pref 100

client() { ip netns exec "$C" timeout "$1" "$PY" "$tool" "${@:2}"; }
# check NAME TIMEOUT nettool-args...: one PASS/FAIL line with nettool's figures
check() {
  local name=$1 out; shift
  out=$(client "$@" 2>&1); local rc=$?
  out=$(echo "$out" | tail -1)
  if [ $rc = 0 ] && [ "${out#ok}" != "$out" ]; then pass "$name: ${out#ok }"
  else fail "$name: ${out#fail } (exit $rc)"; dump_log=1; fi
}

fdcount() { ls "/proc/$proxy_pid/fd" 2>/dev/null | wc -l; }
fdkinds() { # "N socket, N pipe, ..." for ringsocks's open fds
  find "/proc/$proxy_pid/fd" -mindepth 1 -printf '%l\n' 2>/dev/null |
    sed -E 's/:\[[0-9]+\]$//; s/^anon_inode:.*/anon_inode/; s#^/.*#file#' | sort | uniq -c |
    awk '{printf "%s%d %s", (NR > 1 ? ", " : ""), $1, $2}'
}
# fds_settle TIMEOUT_S TARGET: wait for the count to be <= TARGET; prints the last count
fds_settle() {
  local n
  for _ in $(seq $(($1 * 10))); do n=$(fdcount); [ "$n" -le "$2" ] && break; sleep 0.1; done
  echo "$n"
}
fds_stable() { # count once 5 reads 0.5 s apart agree (idle pipes leave the pools within ~2 s)
  local a b same=0
  a=$(fdcount)
  for _ in $(seq 20); do
    sleep 0.5; b=$(fdcount)
    if [ "$a" = "$b" ]; then same=$((same + 1)); [ $same -ge 4 ] && break; else same=0; fi
    a=$b
  done
  echo "$b"
}

PROXY=10.201.1.1:1080 ECHO=10.201.2.2:7000 RESET=10.201.2.2:7001 HOLE=10.201.2.3:7000
seed=1
transfers() { # label
  local lbl=$1; [ "$IMPL" = veth ] && lbl="$lbl [NETEM_IMPL=veth: not applied]"; set -- "$lbl"
  seed=$((seed + 1))
  check "$1: 1x$((BIG / 1048576)) MiB echo byte-exact" 125 transfer $PROXY $ECHO $BIG 1 $seed 120
  seed=$((seed + 1))
  check "$1: ${PAR}x$((PARB / 1024)) KiB concurrent echo byte-exact" 125 transfer $PROXY $ECHO $PARB "$PAR" $seed 120
}
resets() { # label count
  local i lbl=$1; [ "$IMPL" = veth ] && lbl="$lbl [NETEM_IMPL=veth: not applied]"; set -- "$lbl" "$2"
  for i in $(seq "$2"); do
    check "$1: target RST mid-stream #$i, client sees the close within 2 s" 20 \
      reset $PROXY $RESET "$work/rst.log" "r$RANDOM$i$seed" 2
    seed=$((seed + 1))
  done
}

for rt in $RUNTIMES; do
  dump_log=0
  log=$work/ringsocks-$rt.log
  echo "== runtime $rt"
  ip netns exec "$P" "$bin" serve --listen 10.201.1.1:1080 --allow-open --connect-timeout 3s \
    --log-level info --threads 2 --runtime "$rt" >"$log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do grep -qs "listening" "$log" && break; kill -0 $proxy_pid 2>/dev/null || break; sleep 0.1; done
  if ! grep -q "listening" "$log"; then
    fail "ringsocks --runtime $rt did not start:"; tail -20 "$log"; proxy_pid=""; continue
  fi
  grep -iE "runtime|io_uring|epoll" "$log" | head -2 | sed 's/^/   log: /'

  faults 1 0 0 0 0 0; faults 2 0 0 0 0 0
  check "no faults: client cannot reach the target directly" 10 direct $ECHO
  check "no faults: 1x8 MiB echo byte-exact" 65 transfer $PROXY $ECHO 8388608 1 1 60
  resets "no faults" 3

  faults 1 50 10 1 25 50
  transfers "A client<->proxy 50ms+-10ms loss 1% reorder 25%"
  faults 1 0 0 0 0 0; faults 2 50 10 1 25 50
  transfers "B proxy<->target 50ms+-10ms loss 1% reorder 25%"
  faults 1 20 0 0.5 10 0; faults 2 20 0 0.5 10 0
  transfers "C both links 20ms loss 0.5% reorder 10%"
  # An RST is never retransmitted, so the reset check runs on lossless links (delay + reorder).
  faults 1 20 5 0 10 0; faults 2 20 5 0 10 0
  resets "D both links 20ms+-5ms reorder 10%, no loss" 2

  faults 1 0 0 0 0 0; faults 2 0 0 0 0 0
  base=$(fds_stable)
  echo "   ringsocks fds before the blackhole checks: $base ($(fdkinds))"
  check "blackhole: CONNECT gets 0x04/0x03 after the 3 s connect timeout" 20 blackhole $PROXY $HOLE 1 2.5 6
  n=$(fds_settle 5 "$base")
  if [ "$n" -le "$base" ]; then pass "blackhole: ringsocks fds back to baseline ($n, baseline $base: $(fdkinds))"
  else fail "blackhole: ringsocks holds $n fds 5 s later, baseline $base"; ls -l "/proc/$proxy_pid/fd" | tail -n +2 | sed 's/^/   /' | tail -30; dump_log=1; fi
  check "blackhole: 20 concurrent CONNECTs all get 0x04/0x03 after ~3 s" 25 blackhole $PROXY $HOLE 20 2.5 6
  n=$(fds_settle 5 "$base")
  if [ "$n" -le "$base" ]; then pass "blackhole x20: ringsocks fds back to baseline ($n, baseline $base)"
  else fail "blackhole x20: ringsocks holds $n fds 5 s later, baseline $base"; ls -l "/proc/$proxy_pid/fd" | tail -n +2 | sed 's/^/   /' | tail -30; dump_log=1; fi
  check "after blackhole: 1x1 MiB echo byte-exact" 35 transfer $PROXY $ECHO 1048576 1 99 30

  if grep -qiE "panick|panic" "$log"; then fail "ringsocks $rt log shows a panic"; dump_log=1; fi
  kill "$proxy_pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$proxy_pid" 2>/dev/null; then fail "ringsocks $rt did not exit within 5 s of SIGTERM"; kill -9 "$proxy_pid"; dump_log=1; fi
  wait "$proxy_pid" 2>/dev/null
  proxy_pid=""
  if [ "$dump_log" = 1 ]; then echo "--- tail of the ringsocks $rt log"; tail -40 "$log" | sed 's/^/   /'; fi
  echo "   ($(elapsed) s so far)"
done

if [ "$IMPL" = tun ]; then
  for f in "$work"/impair*.log; do tail -1 "$f" | sed 's/^/   impair: /'; done
fi
echo "== netem suite: $passes passed, $fails failed, $(elapsed) s (links: $IMPL)"
[ "$fails" = 0 ]
