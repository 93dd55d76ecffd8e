#!/usr/bin/env bash
# Runs the TLS integration tests (tests/tls.rs) in a VM whose kernel has the tls module, so
# that TLS tunnels take the kernel TLS path (the tests then require tls="ktls" in the access
# log). The big transfers are scaled down: the VM runs under emulation where KVM is missing.
# usage: tests/ktls/run.sh            (as root; see tests/ktls/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --bin ringsocks
bin=$(cargo test --test tls --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tls" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "tls test binary not found" >&2; exit 1; }
RINGSOCKS_TEST_MIB=${RINGSOCKS_TEST_MIB:-8} VM_ENV="RINGSOCKS_TEST_MIB" \
  VM_FILES="$PWD/target/debug/ringsocks" \
  tests/ktls/run-vm.sh --timeout "${TIMEOUT:-900}" --mem 3072 -- "$bin" --test-threads 1
