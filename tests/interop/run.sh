#!/usr/bin/env bash
# Interop suite: drives a running ringsocks with independent SOCKS clients (curl, ncat, PySocks).
# usage: tests/interop/run.sh [PATH_TO_RINGSOCKS]   (default: target/release/ringsocks, built if missing)
# Needs curl, ncat and python3 with PySocks (.ci/run installs them). Loopback only; bounded.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/ringsocks}
[ -x "$bin" ] || cargo build --release --bin ringsocks
work=$(mktemp -d /tmp/ringsocks-interop.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

pass=0 fail=0
check() { # name, command...
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then pass=$((pass + 1)); echo "ok   $name"
  else fail=$((fail + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out" | tail -5; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_proxy() { # logfile, args...
  local log=$1; shift
  "$bin" serve "$@" 2>"$log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$log" && return 0; sleep 0.05; done
  echo "ringsocks did not start:"; cat "$log"; exit 1
}

# Targets: an HTTP server and a TCP echo server on loopback.
mkdir -p "$work/www" && echo "hello from the target" >"$work/www/index.html"
http_port=$(free_port)
python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
echo_port=$(free_port)
python3 tests/common/echo_server.py "$echo_port" >/dev/null 2>&1 &
pids+=($!)

open_port=$(free_port); auth_port=$(free_port)
start_proxy "$work/open.log" --listen "127.0.0.1:$open_port"
start_proxy "$work/auth.log" --listen "127.0.0.1:$auth_port" --user "alice:s3cr3t pass"
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$http_port/" && break; sleep 0.1; done

url="http://127.0.0.1:$http_port/index.html"
host_url="http://localhost:$http_port/index.html"
body() { grep -q "hello from the target" "$work/out.body"; }
curl_ok() { curl -sS --max-time 10 -o "$work/out.body" "$@" && body; }

check "curl --socks4"                   curl_ok --socks4 "127.0.0.1:$open_port" "$url"
check "curl --socks4a"                  curl_ok --socks4a "127.0.0.1:$open_port" "$host_url"
check "curl --socks5"                   curl_ok --socks5 "127.0.0.1:$open_port" "$url"
check "curl --socks5-hostname"          curl_ok --socks5-hostname "127.0.0.1:$open_port" "$host_url"
check "curl --socks5 -U user:pass"      curl_ok --socks5 "127.0.0.1:$auth_port" -U "alice:s3cr3t pass" "$url"
check "curl --socks5-hostname -U"       curl_ok --socks5-hostname "127.0.0.1:$auth_port" -U "alice:s3cr3t pass" "$host_url"
check "curl wrong password fails"       bash -c "! curl -sS --max-time 10 --socks5 127.0.0.1:$auth_port -U alice:nope $url"
check "curl without auth refused"       bash -c "! curl -sS --max-time 10 --socks5 127.0.0.1:$auth_port $url"
check "curl socks4 refused when users"  bash -c "! curl -sS --max-time 10 --socks4 127.0.0.1:$auth_port $url"

ncat_echo() { # proxy-type port [auth]
  local msg="ncat via $1 $$"
  local extra=()
  [ $# -ge 3 ] && extra=(--proxy-auth "$3")
  [ "$(printf '%s' "$msg" | timeout 10 ncat --proxy "127.0.0.1:$2" --proxy-type "$1" "${extra[@]}" 127.0.0.1 "$echo_port")" = "$msg" ]
}
check "ncat --proxy-type socks4"        ncat_echo socks4 "$open_port"
check "ncat --proxy-type socks5"        ncat_echo socks5 "$open_port"
check "ncat socks5 --proxy-auth"        ncat_echo socks5 "$auth_port" "alice:s3cr3t pass"

check "PySocks suite"                   python3 tests/interop/pysocks_check.py "$open_port" "$auth_port" "$echo_port" alice "s3cr3t pass"

check "access log has one line per tunnel" grep -q 'cmd="connect"' "$work/open.log"
check "password never logged"           bash -c "! grep -q 's3cr3t' $work/auth.log"
check "proxies still running"           kill -0 "${pids[2]}" "${pids[3]}"

echo "interop: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
