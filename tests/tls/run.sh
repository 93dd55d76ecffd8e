#!/usr/bin/env bash
# TLS and chain interop suite: drives ringsocks's SOCKS-over-TLS listeners and its parent
# proxies with independent tools. TLS clients: openssl s_client (raw SOCKS5 bytes) and stunnel
# in client mode (with curl behind it), including mutual TLS with client certificates. Parents:
# a second ringsocks over TLS, Dante (SOCKS5) and tinyproxy (HTTP CONNECT), and [[route]] tables.
# usage: tests/tls/run.sh [PATH_TO_RINGSOCKS]   (default: target/release/ringsocks, built if missing)
# Needs openssl, stunnel4, danted (dante-server), tinyproxy, curl, ss (iproute2) and python3
# (.ci/run installs them). Loopback only, free ports, a temp directory; every wait is bounded
# and every process the script starts is killed by PID on exit. The work directory (certs,
# configs, logs) is kept after a failure, or always with KEEP=1.
# RINGSOCKS_ARGS adds flags to every ringsocks instance, e.g. RINGSOCKS_ARGS="--runtime epoll".
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/ringsocks}
[ -x "$bin" ] || cargo build --release --bin ringsocks
for tool in openssl stunnel4 danted tinyproxy curl ss python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is needed (see .ci/run for the packages)"; exit 1; }
done
# The test's own curl calls must not go through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY RINGSOCKS_UPSTREAM
read -r -a extra_args <<<"${RINGSOCKS_ARGS:-}"
work=$(mktemp -d /tmp/ringsocks-tls.XXXX)
chmod 755 "$work" # danted's and tinyproxy's unprivileged children read their files here
pids=()
pass=0 fail=0
cleanup() { # SIGTERM to every process started here, SIGKILL after 5 s; keeps $work on failure
  local rc=$? p alive
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$rc" -eq 0 ] && [ "$fail" -eq 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "work directory kept: $work"; fi
}
trap cleanup EXIT

check() { # name, command...
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then pass=$((pass + 1)); echo "ok   $name"
  else fail=$((fail + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out" | tail -5; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_listen() { # port: up to 5 s for a listening socket on 127.0.0.1:port (no connection made)
  for _ in $(seq 100); do
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  return 1
}

start_proxy() { # logfile, port to wait for, args...
  local log=$1 port=$2; shift 2
  : >"$log"
  "$bin" serve --threads 2 --drain-timeout 1s ${extra_args[@]+"${extra_args[@]}"} "$@" 2>"$log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on 127.0.0.1:$port" "$log" && return 0; sleep 0.05; done
  echo "ringsocks did not start:"; cat "$log"; exit 1
}

# ------------------------------------------------------------------ certificates and targets
bash tests/tls/make-certs.sh "$work/certs" || { echo "FAIL: make-certs.sh"; exit 1; }
certs=$work/certs

mkdir -p "$work/www" && echo "hello from the target" >"$work/www/index.html"
head -c 64M /dev/urandom >"$work/www/big.bin"
big_sum=$(sha256sum <"$work/www/big.bin" | cut -d' ' -f1)
http_port=$(free_port)
python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
echo_port=$(free_port)
python3 tests/common/echo_server.py "$echo_port" >/dev/null 2>&1 &
pids+=($!)
closed_port=$(free_port) # nothing listens here

# ------------------------------------------------------------------ parents: Dante, tinyproxy
dante_port=$(free_port)
mkdir -p "$work/dante"
{
  echo "logoutput: $work/dante/danted.log"
  echo "internal: 127.0.0.1 port = $dante_port"
  echo "external: 127.0.0.1"
  echo "socksmethod: none"
  echo "clientmethod: none"
  if [ "$(id -u)" = 0 ]; then echo "user.privileged: root"; echo "user.unprivileged: nobody"; fi
  cat <<'CONF'
client pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: error
}
socks pass {
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect error
}
CONF
} >"$work/dante/danted.conf"
danted -f "$work/dante/danted.conf" -p "$work/dante/danted.pid" >"$work/dante/danted.out" 2>&1 &
pids+=($!)
wait_listen "$dante_port" || { echo "FAIL: danted did not start:"; cat "$work/dante/danted.out" "$work/dante/danted.log"; exit 1; }

tp_port=$(free_port)
mkdir -p "$work/tinyproxy"
{
  if [ "$(id -u)" = 0 ]; then echo "User nobody"; echo "Group $(id -gn nobody)"; fi
  cat <<CONF
Port $tp_port
Listen 127.0.0.1
Timeout 30
MaxClients 50
Allow 127.0.0.1
LogLevel Info
ConnectPort $http_port
ConnectPort $echo_port
CONF
} >"$work/tinyproxy/tinyproxy.conf"
# -d: foreground; without LogFile/Syslog it logs to stdout.
tinyproxy -d -c "$work/tinyproxy/tinyproxy.conf" >"$work/tinyproxy/tinyproxy.log" 2>&1 &
pids+=($!)
wait_listen "$tp_port" || { echo "FAIL: tinyproxy did not start:"; cat "$work/tinyproxy/tinyproxy.log"; exit 1; }

# ------------------------------------------------------------------ ringsocks instances
tls=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key")
# A: a plain and a TLS listener (--tls-listen), no users.
a_plain=$(free_port); a_tls=$(free_port)
start_proxy "$work/a.log" "$a_tls" --listen "127.0.0.1:$a_plain" --tls-listen "127.0.0.1:$a_tls" "${tls[@]}"
# B: TLS only (--listen plus a certificate makes the address TLS), user bob.
b_tls=$(free_port)
start_proxy "$work/b.log" "$b_tls" --listen "127.0.0.1:$b_tls" "${tls[@]}" --user bob:pw
# M: mutual TLS; the client certificate's CN is the user, so no SOCKS password is needed.
m_tls=$(free_port)
start_proxy "$work/m.log" "$m_tls" --listen "127.0.0.1:$m_tls" "${tls[@]}" \
  --tls-client-ca "$certs/ca.pem" --user someone:pw
# C: plain and TLS listeners, parent B over TLS (chain C -> B -> target).
c_plain=$(free_port); c_tls=$(free_port)
start_proxy "$work/c.log" "$c_tls" --listen "127.0.0.1:$c_plain" --tls-listen "127.0.0.1:$c_tls" "${tls[@]}" \
  --upstream "socks5+tls://bob:pw@localhost:$b_tls?ca=$certs/ca.pem"
# D: parent Dante.
d_plain=$(free_port)
start_proxy "$work/d.log" "$d_plain" --listen "127.0.0.1:$d_plain" --upstream "socks5://127.0.0.1:$dante_port"
# T: parent tinyproxy (HTTP CONNECT).
t_plain=$(free_port)
start_proxy "$work/t.log" "$t_plain" --listen "127.0.0.1:$t_plain" --upstream "http://127.0.0.1:$tp_port"
# R: routes: localhost via Dante, 127/8 on the echo port via tinyproxy, the rest direct.
r_plain=$(free_port)
cat >"$work/routes.toml" <<TOML
[[route]]
name = "names via dante"
dest = ["localhost"]
via = "socks5://127.0.0.1:$dante_port"

[[route]]
dest = ["127.0.0.0/8"]
port = ["$echo_port"]
via = "http://127.0.0.1:$tp_port"
TOML
start_proxy "$work/r.log" "$r_plain" --listen "127.0.0.1:$r_plain" --config "$work/routes.toml"

# ------------------------------------------------------------------ stunnel (client mode)
# One stunnel, one service per case: plain on a local port in, TLS to a ringsocks out.
declare -A st=()
for svc in a b c m_carol m_none m_mallory; do st[$svc]=$(free_port); done
service() { # name, ringsocks TLS port, [client cert name]
  echo "[$1]"
  echo "client = yes"
  echo "accept = 127.0.0.1:${st[$1]}"
  echo "connect = 127.0.0.1:$2"
  echo "verifyChain = yes"
  echo "CAfile = $certs/ca.pem"
  echo "checkHost = localhost"
  if [ $# -ge 3 ]; then echo "cert = $certs/$3.pem"; echo "key = $certs/$3.key"; fi
}
{
  echo "foreground = yes"
  echo "pid ="
  echo "output = $work/stunnel.log"
  service a "$a_tls"
  service b "$b_tls"
  service c "$c_tls"
  service m_carol "$m_tls" carol
  service m_none "$m_tls"
  service m_mallory "$m_tls" mallory
} >"$work/stunnel.conf"
stunnel4 "$work/stunnel.conf" >"$work/stunnel.out" 2>&1 &
pids+=($!)
for svc in "${!st[@]}"; do
  wait_listen "${st[$svc]}" || { echo "FAIL: stunnel did not start:"; cat "$work/stunnel.out" "$work/stunnel.log"; exit 1; }
done
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$http_port/" && break; sleep 0.1; done

url="http://127.0.0.1:$http_port/index.html"
host_url="http://localhost:$http_port/index.html"
body() { grep -q "hello from the target" "$work/out.body"; }
curl_ok() { rm -f "$work/out.body"; curl -sS --max-time 10 -o "$work/out.body" "$@" && body; }
curl_fails() { ! curl -sS --max-time 10 -o /dev/null "$@"; }
# Waits up to 2 s for a log line matching a pattern (access lines follow the tunnel's close).
log_has() { # file, extended regex
  for _ in $(seq 40); do grep -Eq "$2" "$1" && return 0; sleep 0.05; done
  echo "no line matching /$2/ in $1:"; tail -5 "$1"; return 1
}
log_count() { # file, fixed string -> number of lines
  grep -cF -- "$2" "$1"
}
tls_failures() { log_count "$1" "handshake failed: TLS handshake"; }
tls_failure_logged() { # file, count before: waits up to 2 s for one more TLS handshake failure line
  for _ in $(seq 40); do [ "$(tls_failures "$1")" -gt "$2" ] && { grep -F "handshake failed: TLS handshake" "$1" | tail -1; return 0; }; sleep 0.05; done
  echo "no new TLS handshake failure line in $1:"; tail -3 "$1"; return 1
}

# 1. stunnel client -> ringsocks TLS listener, curl behind it.
check "stunnel: curl --socks5-hostname"        curl_ok --socks5-hostname "127.0.0.1:${st[a]}" "$host_url"
check "stunnel: curl --socks5"                 curl_ok --socks5 "127.0.0.1:${st[a]}" "$url"
check "stunnel: curl --socks4a"                curl_ok --socks4a "127.0.0.1:${st[a]}" "$host_url"
check "stunnel: access log tls=\"user-space\"" log_has "$work/a.log" "access: .*dst=localhost:$http_port .*tls=\"user-space\""
check "stunnel: curl --socks5 -U bob:pw"       curl_ok --socks5 "127.0.0.1:${st[b]}" -U bob:pw "$url"
check "stunnel: curl -x socks5h://bob:pw@"     curl_ok -x "socks5h://bob:pw@127.0.0.1:${st[b]}" "$host_url"
check "stunnel: wrong password fails"          curl_fails --socks5 "127.0.0.1:${st[b]}" -U bob:nope "$url"
check "stunnel: access log user=\"bob\""       log_has "$work/b.log" "access: .*user=\"bob\" .*tls=\"user-space\""
check "plain listener next to TLS still plain" curl_ok --socks5 "127.0.0.1:$a_plain" "$url"

# 2. openssl s_client with raw SOCKS5 bytes: greeting, CONNECT 127.0.0.1:echo_port, payload.
# -quiet implies -ign_eof (s_client would wait for the server to close); -no_ign_eof makes it
# leave when its stdin ends, so stdin is held open 1 s for the replies to arrive.
s_client_socks() { # CA file -> SOCKS replies and echoed payload on stdout
  { printf '\x05\x01\x00'; sleep 0.2
    python3 -c 'import struct,sys; sys.stdout.buffer.write(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", int(sys.argv[1])))' "$echo_port"
    sleep 0.2; printf 'ping over TLS\n'; sleep 1; } |
    timeout 10 openssl s_client -connect "127.0.0.1:$a_tls" -CAfile "$1" -verify_return_error \
      -servername localhost -quiet -no_ign_eof 2>"$work/s_client.err"
}
s_client_ok() {
  s_client_socks "$certs/ca.pem" >"$work/s_client.bin" || { cat "$work/s_client.err"; return 1; }
  python3 - "$work/s_client.bin" <<'PY'
import sys
b = open(sys.argv[1], "rb").read()
print("reply bytes:", b.hex(" "))
assert b[:2] == b"\x05\x00", "method selection is not 05 00"
assert b[2:6] == b"\x05\x00\x00\x01", "CONNECT reply is not 05 00 00 01 (IPv4 bound address)"
assert b[12:] == b"ping over TLS\n", "payload not echoed"
PY
}
check "s_client: raw SOCKS5 05 00 / 05 00 00 01 / echo" s_client_ok

# 3. Wrong CA: the client refuses the certificate; ringsocks logs it and keeps serving.
n=$(tls_failures "$work/a.log")
s_client_bad_ca() {
  if s_client_socks "$certs/other-ca.pem" >/dev/null; then echo "s_client succeeded with the wrong CA"; return 1; fi
  grep -i "verify error" "$work/s_client.err"
}
check "s_client: wrong CA fails verification"  s_client_bad_ca
check "wrong CA: ringsocks logs TLS handshake failure" tls_failure_logged "$work/a.log" "$n"
several_ok() { # five fetches (both workers of the instance) after the failure
  for _ in 1 2 3 4 5; do curl_ok --socks5-hostname "127.0.0.1:${st[a]}" "$host_url" || return 1; done
}
check "wrong CA: good connections still work"  several_ok

# 4. Plain SOCKS5 to the TLS port: refused, logged, server stays up.
n=$(tls_failures "$work/a.log")
check "plain SOCKS5 to the TLS port fails"     curl_fails --socks5 "127.0.0.1:$a_tls" "$url"
check "plain SOCKS5 to TLS port: logged"       tls_failure_logged "$work/a.log" "$n"
check "plain to TLS port: server stays up"     several_ok

# 5. Mutual TLS: carol's certificate is her login; no certificate or another CA's: refused.
check "mTLS: carol's cert, no SOCKS password"  curl_ok --socks5-hostname "127.0.0.1:${st[m_carol]}" "$host_url"
check "mTLS: access log user=\"carol\""        log_has "$work/m.log" "access: .*user=\"carol\" .*reply=\"succeeded\""
n=$(tls_failures "$work/m.log")
check "mTLS: no client cert fails"             curl_fails --socks5-hostname "127.0.0.1:${st[m_none]}" "$host_url"
check "mTLS: no client cert: logged"           tls_failure_logged "$work/m.log" "$n"
n=$(tls_failures "$work/m.log")
check "mTLS: mallory's cert (other CA) fails"  curl_fails --socks5-hostname "127.0.0.1:${st[m_mallory]}" "$host_url"
check "mTLS: mallory's cert: logged"           tls_failure_logged "$work/m.log" "$n"
check "mTLS: no tunnel for refused clients"    bash -c "! grep -E 'access: .*user=\"(mallory|-)\"' '$work/m.log'"

# 6. Chain: ringsocks C (plain) -> ringsocks B (TLS, user bob) -> target.
check "chain C->B(TLS): curl --socks5-hostname" curl_ok --socks5-hostname "127.0.0.1:$c_plain" "$host_url"
check "chain C->B(TLS): curl --socks4a"        curl_ok --socks4a "127.0.0.1:$c_plain" "$host_url"
check "chain C->B(TLS): C logs via=socks5+tls://bob:***@" \
  log_has "$work/c.log" "access: .*reply=\"succeeded\".* via=\"socks5\\+tls://bob:\\*\\*\\*@localhost:$b_tls"
check "chain C->B(TLS): B logs user=\"bob\" over TLS" \
  log_has "$work/b.log" "access: .*dst=localhost:$http_port .*user=\"bob\"|access: .*user=\"bob\" .*dst=localhost:$http_port"
check "chain: password never logged (C)"       test "$(log_count "$work/c.log" ':pw@')" = 0
check "chain: password never logged (B)"       test "$(log_count "$work/b.log" ':pw@')" = 0

# 7. Chain: ringsocks D -> Dante -> target.
check "chain D->Dante: curl --socks5-hostname" curl_ok --socks5-hostname "127.0.0.1:$d_plain" "$host_url"
check "chain D->Dante: curl --socks5"          curl_ok --socks5 "127.0.0.1:$d_plain" "$url"
check "chain D->Dante: D logs via=socks5://"   log_has "$work/d.log" "access: .*reply=\"succeeded\".* via=\"socks5://127.0.0.1:$dante_port\""
check "chain D->Dante: Dante saw the tunnel"   log_has "$work/dante/danted.log" "pass\\(.*127.0.0.1.$http_port"
dante_refused() { # curl fails with a SOCKS error (e.g. "Can't complete SOCKS5 connection ... (5)")
  local err
  if err=$(curl -sS --max-time 10 --socks5 "127.0.0.1:$d_plain" "http://127.0.0.1:$closed_port/" 2>&1); then return 1; fi
  echo "$err"
  grep -q SOCKS <<<"$err"
}
check "chain D->Dante: closed port -> SOCKS error" dante_refused
check "chain D->Dante: refusal passed back"    log_has "$work/d.log" "access: .*dst=127.0.0.1:$closed_port reply=\"connection-refused\""
check "chain D->Dante: reply not succeeded"    bash -c "! grep -E 'dst=127.0.0.1:$closed_port .*reply=\"succeeded\"' '$work/d.log'"

# 8. Chain: ringsocks T -> tinyproxy (HTTP CONNECT) -> target.
check "chain T->tinyproxy: curl --socks5-hostname" curl_ok --socks5-hostname "127.0.0.1:$t_plain" "$host_url"
check "chain T->tinyproxy: curl --socks5"      curl_ok --socks5 "127.0.0.1:$t_plain" "$url"
check "chain T->tinyproxy: T logs via=http://" log_has "$work/t.log" "access: .*reply=\"succeeded\".* via=\"http://127.0.0.1:$tp_port\""
check "chain T->tinyproxy: tinyproxy saw CONNECT" log_has "$work/tinyproxy/tinyproxy.log" "CONNECT localhost:$http_port"
check "chain T->tinyproxy: 403 -> not succeeded" curl_fails --socks5-hostname "127.0.0.1:$t_plain" "http://localhost:$closed_port/"
check "chain T->tinyproxy: 403 logged as refusal" log_has "$work/t.log" "dst=localhost:$closed_port reply=\"not-allowed\""

# 9. Routes: localhost via Dante, 127/8:echo_port via tinyproxy, everything else direct.
check "route: localhost via Dante"             curl_ok --socks5-hostname "127.0.0.1:$r_plain" "$host_url"
check "route: localhost logged via Dante"      log_has "$work/r.log" "access: .*dst=localhost:$http_port .*reply=\"succeeded\".* via=\"socks5://127.0.0.1:$dante_port\""
check "route: 127.0.0.1 direct"                curl_ok --socks5 "127.0.0.1:$r_plain" "$url"
check "route: 127.0.0.1 logged direct"         log_has "$work/r.log" "access: .*dst=127.0.0.1:$http_port .*reply=\"succeeded\".* via=\"direct\""
route_echo() {
  local msg="route to the echo port $$"
  [ "$(python3 - "$r_plain" "$echo_port" "$msg" <<'PY'
import socket, struct, sys
proxy, port, msg = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
s = socket.create_connection(("127.0.0.1", proxy), timeout=10)
s.sendall(b"\x05\x01\x00")
assert s.recv(2) == b"\x05\x00"
s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", port))
def recv_exact(n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        assert d, "closed early after %r" % b
        b += d
    return b
r = recv_exact(4)
assert r[:3] == b"\x05\x00\x00", r.hex()
recv_exact({1: 4, 4: 16}.get(r[3]) or recv_exact(1)[0])  # bound address
recv_exact(2)  # bound port
# tinyproxy closes both ways on the first EOF (no half-close): read the echo before closing.
s.sendall(msg)
print(recv_exact(len(msg)).decode())
PY
)" = "$msg" ]
}
check "route: 127.0.0.1:echo port via tinyproxy" route_echo
check "route: echo port logged via http://"    log_has "$work/r.log" "access: .*dst=127.0.0.1:$echo_port .*reply=\"succeeded\".* via=\"http://127.0.0.1:$tp_port\""

# 10. 64 MiB through stunnel -> C (TLS) -> B (TLS) -> target: same hash.
big_ok() {
  local sum
  sum=$(curl -sS --max-time 30 --socks5-hostname "127.0.0.1:${st[c]}" "http://localhost:$http_port/big.bin" | sha256sum | cut -d' ' -f1)
  echo "got $sum, want $big_sum"
  [ "$sum" = "$big_sum" ]
}
check "64 MiB via TLS -> C -> TLS -> B: sha256" big_ok
check "64 MiB: C's listener was TLS"           log_has "$work/c.log" "access: .*dst=localhost:$http_port .*down=67[0-9]{6} .*tls=\"user-space\" via=\"socks5\\+tls://bob:\\*\\*\\*@"
check "chain: password never logged (C, end)"  test "$(log_count "$work/c.log" ':pw@')" = 0
check "chain: password never logged (B, end)"  test "$(log_count "$work/b.log" ':pw@')" = 0

alive() { local p; for p in "${pids[@]}"; do kill -0 "$p" || return 1; done; }
check "every process still running"            alive

echo "tls: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
