# Shared by the benchmark scripts that start their own ringsocks (auth-cps.sh, slowloris.sh,
# soak.sh): sourced after `set -euo pipefail` with $root set to the repository.
#
# Sets LOAD (ringsocks-load, built into target-load/ if missing; env LOAD overrides) and rs
# (ringsocks, built if missing; env RINGSOCKS overrides), a temp dir $tmp, and an EXIT trap that
# kills every PID appended to the `started` array and removes $tmp.

LOAD=${LOAD:-$root/target-load/release/ringsocks-load}
if [ ! -x "$LOAD" ]; then
    (cd "$root" && CARGO_TARGET_DIR="$root/target-load" cargo build --release -p ringsocks-load)
fi
rs=${RINGSOCKS:-$root/target/release/ringsocks}
[ -x "$rs" ] || (cd "$root" && cargo build --release)

started=()
tmp=$(mktemp -d)
cleanup() {
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# start_proxy PORT LOG ARGS...: ringsocks on 127.0.0.1:PORT logging to LOG; waits until it
# listens; its PID is appended to `started` and left in $proxy_pid.
start_proxy() {
    local port=$1 log=$2
    shift 2
    "$rs" serve --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
    proxy_pid=$!
    started+=("$proxy_pid")
    for _ in $(seq 50); do ss -ltn "sport = :$port" | grep -q LISTEN && break; sleep 0.1; done
}

# machine_info: date, kernel, CPU and the ringsocks build, one per line.
machine_info() {
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
    echo "ringsocks: $rs ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
}
