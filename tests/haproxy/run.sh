#!/usr/bin/env bash
# End-to-end test of the scale-out setup in examples/haproxy/: HAProxy (TCP mode, leastconn,
# send-proxy-v2, health checks with check-send-proxy) in front of two ringsocks instances on
# --proxy-listen. Checks that the real client address from the PROXY header drives the access
# log, the access rules and --max-tunnels-per-client, that a crashed instance is taken out of
# rotation without failing a fetch, that --proxy-from is enforced, that a PROXY v1 header is
# understood, and that the metrics endpoint counts tunnels.
#
# usage: bash tests/haproxy/run.sh path/to/ringsocks
#
# Needs haproxy (prints SKIP and exits 0 without it; `apt-get install -y haproxy`), curl and
# python3 (stdlib only). Everything runs on loopback (curl --interface 127.0.0.N gives each
# "client" its own source address; all of 127/8 is local on Linux) with free ports and a temp
# directory. Every wait is bounded; every background process is killed on exit.
# The work directory (configs, logs) is kept after a failure, or always with KEEP=1.
# RINGSOCKS_ARGS adds flags to both instances, e.g. RINGSOCKS_ARGS="--runtime epoll".
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash tests/haproxy/run.sh path/to/ringsocks" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
template="$root/examples/haproxy/haproxy.cfg"

if ! command -v haproxy >/dev/null 2>&1; then
  echo "SKIP: haproxy is not installed (apt-get install -y haproxy); HAProxy end-to-end test not run"
  exit 0
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "FAIL: $tool is needed" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "FAIL: $bin is not an executable" >&2; exit 1; }
if ! "$bin" serve --help 2>/dev/null | grep -q -- '--proxy-listen'; then
  echo "FAIL: $bin has no --proxy-listen option (built without PROXY protocol support?)" >&2
  exit 1
fi
# The test's own curl calls must not go through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

work=$(mktemp -d "${TMPDIR:-/tmp}/ringsocks-haproxy.XXXXXX")
declare -A pid=()  # name -> PID of every background process this script started
failures=0
passes=0

# ---------------------------------------------------------------------------- helpers

# Stops every recorded process: SIGTERM, up to 5 s, then SIGKILL. Keeps $work on failure.
cleanup() {
  local rc=$? name p alive
  trap - EXIT
  for name in hold haproxy rs1 rs2 http; do
    if [ -n "${pid[$name]:-}" ]; then kill "${pid[$name]}" 2>/dev/null || true; fi
  done
  for _ in $(seq 50); do
    alive=0
    for p in ${pid[@]+"${pid[@]}"}; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in ${pid[@]+"${pid[@]}"}; do kill -9 "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ] || [ "$failures" -ne 0 ] || [ -n "${KEEP:-}" ]; then
    echo "work directory kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT

# log_tail FILE [LINES]: the end of one log, indented.
log_tail() {
  local f=$1 n=${2:-25}
  echo "----- last $n lines of $f"
  if [ -s "$f" ]; then tail -n "$n" "$f" | sed 's/^/  | /'; else echo "  | (empty or missing)"; fi
}
dump_logs() {
  local f
  for f in "$work"/rs1.log "$work"/rs2.log "$work"/haproxy.log "$work"/http.log; do
    log_tail "$f"
  done
  if [ -S "$work/haproxy.sock" ]; then
    echo "----- haproxy server states (name status last-check)"
    hastat 2>&1 | sed 's/^/  | /' || true
  fi
}
die() {
  echo "FAIL: $*"
  failures=$((failures + 1))
  dump_logs
  exit 1
}
pass() { passes=$((passes + 1)); echo "PASS $*"; }
fail() { failures=$((failures + 1)); echo "FAIL $*"; }
note() { echo "     $*" >&2; }

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s; 1 (with a message) on timeout.
wait_until() {
  local secs=$1 what=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$end" ]; then
      note "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

# count FILE REGEX: matching lines (0 if none or no file).
count() { [ -f "$1" ] || { echo 0; return; }; grep -cE -- "$2" "$1" || true; }
# at_least FILE REGEX N
at_least() { [ "$(count "$1" "$2")" -ge "$3" ]; }

alive() { kill -0 "$1" 2>/dev/null; }
exited() { ! kill -0 "$1" 2>/dev/null; }
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
sha() { sha256sum <"$1" | cut -d' ' -f1; }

# Python helpers (stdlib only): free ports, HAProxy stats, raw SOCKS and PROXY clients.
cat >"$work/helpers.py" <<'PY'
import csv, hashlib, io, re, socket, struct, sys, time

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise RuntimeError(f"connection closed after {len(b)} of {n} bytes")
        b += d
    return b

def socks5_connect(s, ip, port):
    """SOCKS5, no authentication, CONNECT to an IPv4 address; raises with the reply code."""
    s.sendall(b"\x05\x01\x00")
    r = recv_exact(s, 2)
    if r != b"\x05\x00":
        raise RuntimeError(f"greeting answered {r.hex()}")
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(ip) + struct.pack(">H", port))
    r = recv_exact(s, 4)
    if r[1] != 0:
        raise RuntimeError(f"CONNECT answered reply code {r[1]}")
    n = {1: 4, 4: 16}.get(r[3]) or recv_exact(s, 1)[0]
    recv_exact(s, n + 2)

def client(src):
    s = socket.socket()
    s.settimeout(10)
    s.bind((src, 0))
    return s

def ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(*[s.getsockname()[1] for s in socks])

def hastat(path, server=None):
    """One line per server of backend ringsocks: name, status, last check."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(path)
    s.sendall(b"show stat\n")
    data = b""
    while (d := s.recv(65536)):
        data += d
    rows = list(csv.reader(io.StringIO(data.decode().lstrip("# "))))
    h = rows[0]
    px, sv, st, ck = (h.index(k) for k in ("pxname", "svname", "status", "check_status"))
    for r in rows[1:]:
        if len(r) > ck and r[px] == "ringsocks" and r[sv] not in ("FRONTEND", "BACKEND"):
            if server is None or r[sv] == server:
                print(r[sv], r[st].replace(" ", "_"), r[ck] or "-")

def hold(front, src, target, n):
    """Opens n tunnels through the front and keeps them open (at most 60 s, or until killed)."""
    held = []
    for i in range(int(n)):
        s = client(src)
        s.connect(("127.0.0.1", int(front)))
        socks5_connect(s, "127.0.0.1", int(target))
        held.append(s)
    print(f"held {len(held)}", flush=True)
    time.sleep(60)

def proxy_from(port, src):
    """From a source outside --proxy-from, a valid PROXY header must get no SOCKS answer."""
    s = client(src)
    s.connect(("127.0.0.1", int(port)))
    try:
        s.sendall(f"PROXY TCP4 127.0.0.5 127.0.0.1 40000 {port}\r\n".encode() + b"\x05\x01\x00")
        got = s.recv(2)
    except (ConnectionResetError, BrokenPipeError):
        got = b""
    except socket.timeout:
        sys.exit("not closed within 10 s")
    if got:
        sys.exit(f"answered {got.hex()} instead of closing")

def v1(port, src, claimed_ip, claimed_port, target, want_sha):
    """A PROXY v1 header, then SOCKS5 CONNECT and an HTTP/1.0 GET; checks the body's SHA-256."""
    s = client(src)
    s.connect(("127.0.0.1", int(port)))
    s.sendall(f"PROXY TCP4 {claimed_ip} 127.0.0.1 {claimed_port} {port}\r\n".encode())
    socks5_connect(s, "127.0.0.1", int(target))
    s.sendall(b"GET /file.bin HTTP/1.0\r\nHost: t\r\n\r\n")
    data = b""
    while (d := s.recv(65536)):
        data += d
    body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    if hashlib.sha256(body).hexdigest() != want_sha:
        sys.exit(f"wrong body ({len(body)} bytes; response starts {data[:60]!r})")

def metric(path, name, minimum):
    """Sum of NAME's samples (those with command="connect" if any has a command label)."""
    samples = []
    for line in open(path):
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+-]+)\s*$", line)
        if m:
            samples.append((m.group(1) or "", float(m.group(2))))
    if not samples:
        sys.exit(f"no {name} sample in the metrics")
    if any("command=" in l for l, _ in samples):
        samples = [(l, v) for l, v in samples if 'command="connect"' in l]
    total = sum(v for _, v in samples)
    print(f"{name} (connect) = {total:g}, need >= {minimum}")
    if total < float(minimum):
        sys.exit(1)

globals()[sys.argv[1]](*sys.argv[2:])
PY
helper() { python3 "$work/helpers.py" "$@"; }
hastat() { helper hastat "$work/haproxy.sock" "$@"; }
# server_state NAME: HAProxy's status of one server (UP, DOWN, UP_1/2 ...).
server_state() { hastat "$1" 2>/dev/null | cut -d' ' -f2; }
server_is() { [ "$(server_state "$1")" = "$2" ]; }
checks_ok() { [ "$(hastat "$1" 2>/dev/null | cut -d' ' -f3)" = "L4OK" ]; }

# fetch SOURCE_IP OUT: the test file through HAProxy, from SOURCE_IP.
fetch() {
  curl -sS --max-time 10 --socks5-hostname "127.0.0.1:$front" --interface "$1" \
    -o "$2" "http://127.0.0.1:$http_port/file.bin" 2>"$2.err"
}
fetch_ok() { fetch "$1" "$work/out" && [ "$(sha "$work/out")" = "$want" ]; }
# fetches N SOURCE_IP: N sequential fetches, prints how many succeeded with the right content.
fetches() {
  local ok=0 i
  for i in $(seq "$1"); do
    if fetch_ok "$2"; then ok=$((ok + 1)); else note "fetch $i from $2 failed: $(cat "$work/out.err" 2>/dev/null)"; fi
  done
  echo "$ok"
}

# Access-log lines: a finished tunnel, a refusal.
closed_re() { echo "access: closed.*[ ]client=${1//./\\.}:"; }
refused_re() { echo "access: refused.*[ ]client=${1//./\\.}:"; }
total_closed() { echo $(($(count "$work/rs1.log" "$(closed_re "$1")") + $(count "$work/rs2.log" "$(closed_re "$1")"))); }
closed_at_least() { [ "$(total_closed "$1")" -ge "$2" ]; }
logged_anywhere() { at_least "$work/rs1.log" "$1" 1 || at_least "$work/rs2.log" "$1" 1; }

# ---------------------------------------------------------------------------- setup

read -r http_port front p1 p2 q1 q2 m1 m2 < <(helper ports 8) || true
[ -n "${m2:-}" ] || die "could not pick free ports"
echo "ports: http $http_port, haproxy $front, proxy-listen $p1 $p2, listen $q1 $q2, metrics $m1 $m2; work $work"

# The destination: a file of random bytes behind Python's HTTP server.
mkdir "$work/www"
python3 -c 'import os, sys; open(sys.argv[1], "wb").write(os.urandom(300000))' "$work/www/file.bin"
want=$(sha "$work/www/file.bin")
python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/www" >"$work/http.log" 2>&1 &
pid[http]=$!
wait_until 10 "the HTTP target" curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$http_port/file.bin" ||
  die "HTTP target did not start"

# Both instances share one config: a rule blocking client 127.0.0.66, and at most 2 tunnels
# per client (the real client, from the PROXY header, not HAProxy's address).
cat >"$work/ringsocks.toml" <<'EOF'
max_tunnels_per_client = 2

[access]
default = "pass"

[[access.rule]]
name = "no-66"
action = "block"
client = ["127.0.0.66"]
EOF
"$bin" check-config "$work/ringsocks.toml" >"$work/check-config.out" 2>&1 ||
  die "check-config rejects the test config: $(cat "$work/check-config.out")"

# start_instance N PROXY_PORT LISTEN_PORT METRICS_PORT
read -r -a extra_args <<<"${RINGSOCKS_ARGS:-}"
start_instance() {
  "$bin" serve --proxy-listen "127.0.0.1:$2" --proxy-from 127.0.0.1/32 --listen "127.0.0.1:$3" \
    --threads 1 --log-level info --config "$work/ringsocks.toml" --metrics "127.0.0.1:$4" \
    ${extra_args[@]+"${extra_args[@]}"} >"$work/rs$1.out" 2>"$work/rs$1.log" &
  pid[rs$1]=$!
}
# instance_ready N PROXY_PORT LISTEN_PORT METRICS_PORT (dies if the instance exited)
instance_ready() {
  alive "${pid[rs$1]}" || die "ringsocks instance $1 exited at start"
  port_open "$2" && port_open "$3" && curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$4/metrics"
}
start_instance 1 "$p1" "$q1" "$m1"
start_instance 2 "$p2" "$q2" "$m2"
wait_until 10 "instance 1 (proxy, listen and metrics ports)" instance_ready 1 "$p1" "$q1" "$m1" ||
  die "instance 1 did not start"
wait_until 10 "instance 2 (proxy, listen and metrics ports)" instance_ready 2 "$p2" "$q2" "$m2" ||
  die "instance 2 did not start"

# HAProxy: the example config with this run's addresses and stats socket, and maxconn values
# that fit any descriptor limit (HAProxy will not start if it cannot raise its own to 2 x maxconn).
sed -e "s/127\.0\.0\.1:1090\b/127.0.0.1:$front/" \
  -e "s/maxconn [0-9][0-9]*/maxconn 1000/" \
  -e "s/127\.0\.0\.1:1181\b/127.0.0.1:$p1/" \
  -e "s/127\.0\.0\.1:1182\b/127.0.0.1:$p2/" \
  -e "s#/run/haproxy/admin\.sock#$work/haproxy.sock#" \
  "$template" >"$work/haproxy.cfg"
for want_line in "bind 127.0.0.1:$front" "server rs1 127.0.0.1:$p1" "server rs2 127.0.0.1:$p2" "stats socket $work/haproxy.sock"; do
  grep -q "$want_line" "$work/haproxy.cfg" || die "haproxy.cfg template: no '$want_line' after substitution (was $template changed?)"
done
haproxy -c -f "$work/haproxy.cfg" >"$work/haproxy-check.out" 2>&1 ||
  die "haproxy -c rejects the config: $(cat "$work/haproxy-check.out")"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pid[haproxy]=$!
haproxy_ready() { alive "${pid[haproxy]}" || die "haproxy exited at start"; port_open "$front" && [ -S "$work/haproxy.sock" ]; }
wait_until 10 "haproxy" haproxy_ready || die "haproxy did not start"

# ---------------------------------------------------------------------------- checks

# Each instance on its own, without HAProxy (if this fails, the rest will: look at rsN.log).
direct_ok() {
  curl -sS --max-time 10 --socks5-hostname "127.0.0.1:$1" --interface 127.0.0.9 \
    -o "$work/direct" "http://127.0.0.1:$http_port/file.bin" 2>"$work/direct.err" &&
    [ "$(sha "$work/direct")" = "$want" ]
}
if direct_ok "$q1" && direct_ok "$q2"; then pass "each instance serves SOCKS on its --listen port"
else fail "each instance serves SOCKS on its --listen port: $(cat "$work/direct.err")"; fi

# HAProxy's health checks (a PROXY v2 LOCAL header, then close) succeed on both.
both_healthy() { checks_ok rs1 && checks_ok rs2 && server_is rs1 UP && server_is rs2 UP; }
if wait_until 15 "L4OK health checks on rs1 and rs2" both_healthy; then
  pass "haproxy health checks (check-send-proxy) pass on both instances"
else
  fail "haproxy health checks (check-send-proxy) pass on both instances"; hastat | sed 's/^/     /' || true
fi

# (a) 10 fetches from client 127.0.0.5 through HAProxy, content checked.
ok=$(fetches 10 127.0.0.5)
if [ "$ok" = 10 ]; then pass "(a) 10/10 fetches through haproxy from 127.0.0.5, sha256 ok"
else fail "(a) $ok/10 fetches through haproxy from 127.0.0.5"; fi

# (b) Both instances carried tunnels, and logged the real client, not HAProxy's 127.0.0.1.
wait_until 5 "10 access lines for 127.0.0.5" closed_at_least 127.0.0.5 10 || true
n1=$(count "$work/rs1.log" "$(closed_re 127.0.0.5)")
n2=$(count "$work/rs2.log" "$(closed_re 127.0.0.5)")
if [ "$n1" -ge 1 ] && [ "$n2" -ge 1 ] && [ $((n1 + n2)) -eq 10 ]; then
  pass "(b) access lines with client=127.0.0.5 on both instances (rs1 $n1, rs2 $n2)"
else
  fail "(b) access lines with client=127.0.0.5 on both instances: rs1 $n1, rs2 $n2 (want >= 1 each, 10 in all)"
fi

# (c) The access rule sees the real client: 127.0.0.66 is refused, by rule "no-66".
if fetch 127.0.0.66 "$work/out66"; then
  fail "(c) fetch from 127.0.0.66 should have been refused, but succeeded"
else
  re="$(refused_re 127.0.0.66)"
  if wait_until 5 "a refusal of 127.0.0.66" logged_anywhere "$re" &&
    grep -hE -- "$re" "$work/rs1.log" "$work/rs2.log" | grep -q 'no-66'; then
    pass "(c) 127.0.0.66 refused by access rule \"no-66\" (curl: $(cat "$work/out66.err"))"
  else
    fail "(c) no 'refused ... no-66 ... client=127.0.0.66:' access line"
  fi
fi

# (d) Crash instance 1. Fetches right away succeed (HAProxy retries, redispatched to rs2);
# once the health checks mark rs1 down, fetches go to rs2 only.
disown "${pid[rs1]}"  # no "Killed" notice from bash; it still reaps the process
kill -9 "${pid[rs1]}"
wait_until 5 "instance 1 to exit" exited "${pid[rs1]}" || die "instance 1 survived SIGKILL"
unset 'pid[rs1]'
# A killed io_uring process's listening socket can outlive it by a few milliseconds (the
# kernel tears the ring down asynchronously, and pending accepts hold the socket): a
# connection accepted then is reset, which no retry can save. Wait until the port refuses.
port_closed() { ! port_open "$1"; }
wait_until 5 "instance 1's proxy port to refuse connections" port_closed "$p1" ||
  die "instance 1's proxy port $p1 still accepts connections after it was killed"
before2=$(count "$work/rs2.log" "$(closed_re 127.0.0.5)")
ok=$(fetches 3 127.0.0.5)
if [ "$ok" = 3 ]; then pass "(d) 3/3 fetches right after instance 1 crashed (retries, option redispatch)"
else fail "(d) $ok/3 fetches right after instance 1 crashed (state of rs1 then: $(server_state rs1))"; fi
if wait_until 15 "haproxy to mark rs1 DOWN" server_is rs1 DOWN; then
  pass "(d) haproxy marked the crashed instance DOWN ($(hastat rs1))"
else
  fail "(d) haproxy marked the crashed instance DOWN: $(hastat rs1 2>&1)"
fi
size1=$(wc -c <"$work/rs1.log")
ok=$(fetches 10 127.0.0.5)
wait_until 5 "13 new access lines on rs2" at_least "$work/rs2.log" "$(closed_re 127.0.0.5)" $((before2 + 13)) || true
gained2=$(($(count "$work/rs2.log" "$(closed_re 127.0.0.5)") - before2))
if [ "$ok" = 10 ] && [ "$gained2" -eq 13 ] && [ "$(wc -c <"$work/rs1.log")" = "$size1" ]; then
  pass "(d) 10/10 fetches with rs1 down, all on rs2 (rs2 gained $gained2 access lines for the 13 fetches since the crash)"
else
  fail "(d) with rs1 down: $ok/10 fetches ok; rs2 gained $gained2 access lines (want 13)"
fi

# (e) --max-tunnels-per-client 2 counts the real client: only rs2 is up, so every tunnel
# lands there. Client 127.0.0.7 holds 2 tunnels; its third is refused, while 127.0.0.8 (same
# HAProxy address underneath) still gets one; once 127.0.0.7's tunnels close it gets one again.
# (python3 started directly, not through the helper function, so that $! is its PID)
python3 "$work/helpers.py" hold "$front" 127.0.0.7 "$http_port" 2 >"$work/hold.out" 2>&1 &
pid[hold]=$!
if wait_until 10 "127.0.0.7 to hold 2 tunnels" grep -qs "held 2" "$work/hold.out"; then
  limit_ok=1
  if fetch 127.0.0.7 "$work/out7"; then
    limit_ok=0; note "a third tunnel from 127.0.0.7 was let through"
  elif ! wait_until 5 "a refusal of 127.0.0.7" at_least "$work/rs2.log" "$(refused_re 127.0.0.7)" 1; then
    limit_ok=0
  fi
  if ! fetch_ok 127.0.0.8; then limit_ok=0; note "127.0.0.8 was refused too: the limit counted HAProxy's address"; fi
  kill "${pid[hold]}" 2>/dev/null || true
  wait_until 5 "the holder to exit" exited "${pid[hold]}" || true
  unset 'pid[hold]'
  if ! wait_until 5 "127.0.0.7 to get a tunnel again" fetch_ok 127.0.0.7; then limit_ok=0; fi
  if [ "$limit_ok" = 1 ]; then
    pass "(e) per-client limit by real client: 3rd tunnel of 127.0.0.7 refused, 127.0.0.8 served, slots released"
    note "$(grep -hE -- "$(refused_re 127.0.0.7)" "$work/rs2.log" | tail -n 1)"
  else
    fail "(e) per-client limit by real client (max_tunnels_per_client = 2)"
    grep -hE -- "client=127\.0\.0\.[78]:" "$work/rs2.log" | tail -n 5 | sed 's/^/     /' || true
  fi
else
  fail "(e) could not open 2 tunnels from 127.0.0.7: $(cat "$work/hold.out")"
fi

# (f) --proxy-from: a PROXY header from an address outside it (127.0.0.2) is not honoured.
out=""
if out=$(helper proxy_from "$p2" 127.0.0.2 2>&1); then
  pass "(f) connection from outside --proxy-from closed without a SOCKS answer"
else
  fail "(f) connection from outside --proxy-from: $out"
fi

# (g) A PROXY v1 header (HAProxy send-proxy) works too: the claimed client and port are logged.
out=""
if out=$(helper v1 "$p2" 127.0.0.1 127.0.0.77 40077 "$http_port" "$want" 2>&1) &&
  wait_until 5 "an access line for 127.0.0.77:40077" at_least "$work/rs2.log" "access: closed.*[ ]client=127\.0\.0\.77:40077 " 1; then
  pass "(g) PROXY v1 header: tunnel served, logged as client=127.0.0.77:40077"
else
  fail "(g) PROXY v1 header: ${out:-no 'closed ... client=127.0.0.77:40077' access line}"
fi

# (h) Metrics of instance 2 count at least the tunnels it carried.
served2=$(count "$work/rs2.log" "access: closed")
out=""
if curl -sf --max-time 5 -o "$work/metrics2.txt" "http://127.0.0.1:$m2/metrics" &&
  out=$(helper metric "$work/metrics2.txt" ringsocks_tunnels_total "$served2" 2>&1); then
  pass "(h) metrics: $out"
else
  fail "(h) metrics at http://127.0.0.1:$m2/metrics: ${out:-no answer}"
  grep '^ringsocks_tunnels' "$work/metrics2.txt" 2>/dev/null | sed 's/^/     /' || true
fi

# (i) No tunnel was ever attributed to HAProxy's own address (health checks are quiet too).
if grep -hE -- "access: .*[ ]client=127\.0\.0\.1:" "$work/rs1.log" "$work/rs2.log" >"$work/as-haproxy" 2>/dev/null; then
  fail "(i) access lines name HAProxy's address as the client:"
  sed 's/^/     /' "$work/as-haproxy" | head -n 5
else
  pass "(i) no access line names HAProxy's address (127.0.0.1) as the client"
fi

if ! { alive "${pid[rs2]}" && alive "${pid[haproxy]}"; }; then
  fail "instance 2 or haproxy exited during the test"
fi

echo "haproxy: $passes passed, $failures failed"
if [ "$failures" -ne 0 ]; then
  dump_logs
  exit 1
fi
