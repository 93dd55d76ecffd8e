#!/usr/bin/env bash
# SOCKS5 over TLS side by side: one ringsocks-load compare per scenario, entries interleaved in
# every round:
#   direct              no proxy
#   plain               one ringsocks, plain SOCKS5
#   plain-chain         ringsocks edge --upstream socks5://   -> ringsocks parent (two plain hops)
#   tls-chain           ringsocks edge --upstream socks5+tls:// -> ringsocks parent with a TLS
#                       listener (rustls in user space on both ends; kernel TLS where the kernel
#                       has the tls module, see the tls= field of the access lines)
#   stunnel-ringsocks   stunnel client (plain in, TLS out) -> ringsocks TLS listener
#   stunnel-dante       stunnel client -> stunnel server (TLS in, plain out) -> Dante
# Scenarios (ONLY): up1 (throughput --direction up, 1 tunnel), up8 (8 tunnels), both8 (both
# ways, 8 tunnels), cps (new tunnel per iteration, CPS_CONC slots: every proxied tunnel is a new
# TLS handshake between the hops), then hold (HOLD tunnels held through plain-chain and
# tls-chain by fresh processes: memory and descriptors of the parents, per tunnel).
#
# usage: unshare -n bash -c 'ip link set lo up; bash loadtest/bench/tls.sh [OUTDIR]'
# env:   DURATION (8s) WARMUP (2s) ROUNDS (3) PAUSE (1s) CPS_CONC (16) HOLD (1000)
#        ONLY ("up1 up8 both8 cps hold")
#        SUMMARY_ONLY=1: only rewrite OUTDIR/summary.md from the files of an earlier run
#        RINGSOCKS=path (default target/release/ringsocks), LOAD=path (built into target-load/)
# Needs stunnel4, danted (dante-server), openssl, python3, ss. The run takes about
# 4 x 6 x 3 x (DURATION + WARMUP + PAUSE + 0.3 s) + 20 s: ~14 min with the defaults, 6 min with
# DURATION=3s WARMUP=1s PAUSE=0.5s (results/tls/ was made so).
#
# CPU: --proxy-pid takes one PID per entry and sums it with its live descendants, so the
# processes of each entry are started as children of one wrapper shell and that shell's PID is
# given: an entry is charged every proxy process on its path (both ringsocks of a chain; stunnel
# client + ringsocks; stunnel client + stunnel server + Dante). Each process serves one entry
# only, so its CPU over a whole scenario (read from /proc before and after, warm-ups included)
# splits the entry's figure by process: procs-SCENARIO.json and the split tables of summary.md.
#
# TLS: ECDSA P-256 certificates from tests/tls/make-certs.sh. ringsocks neither offers nor
# uses session resumption; the stunnel clients are set to `sessionResume = no` so every TLS
# entry does a full handshake per tunnel (stunnel's default would resume with its own server).
# Chains name their parent by IP (127.0.0.1, with sni=localhost for the certificate) so no
# entry resolves a host name per tunnel.
#
# Writes machine.txt, NAME.txt and NAME.jsonl per scenario, procs-NAME.json (per-process CPU,
# RSS, peak RSS, PSS, fds before and after each scenario), hold-peaks.json (peaks sampled during
# the hold), logs.txt (WARN/ERROR lines of every log) and summary.md. Every process is started
# here and killed by PID on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results/tls}
mkdir -p "$out"
out=$(cd "$out" && pwd)
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
PAUSE=${PAUSE:-1s}
CPS_CONC=${CPS_CONC:-16}
HOLD=${HOLD:-1000}
ONLY=${ONLY:-"up1 up8 both8 cps hold"}

summarize() { # writes summary.md from the files in $out (settings from machine.txt)
    python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name + ".jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
def fmt(v, d=2):
    return "-" if v is None else f"{v:,.{d}f}".replace(",", " ")
groups = {"plain": ["rs-plain"], "plain-chain": ["pc-edge", "pc-parent"],
          "tls-chain": ["tc-edge", "tc-parent"], "stunnel-ringsocks": ["sr-stunnel", "sr-ringsocks"],
          "stunnel-dante": ["sd-stunnel-client", "sd-stunnel-server", "sd-dante"]}
# The side after the TLS link (or the last hop): its share of the entry's CPU gives the
# "server side" figures.
server = {"plain": ["rs-plain"], "plain-chain": ["pc-parent"], "tls-chain": ["tc-parent"],
          "stunnel-ringsocks": ["sr-ringsocks"], "stunnel-dante": ["sd-stunnel-server", "sd-dante"]}
settings = next((l.split(":", 1)[1].strip() for l in open(os.path.join(out, "machine.txt"))
                 if l.startswith("settings:")), "?")
env = dict(kv.split("=", 1) for kv in settings.split() if "=" in kv)
cps_conc, hold = env.get("CPS_CONC", "16"), env.get("HOLD", "1000")
names = {"up-c1": "Upload, 1 tunnel", "up-c8": "Upload, 8 tunnels", "both-c8": "Both directions, 8 tunnels",
         f"cps-c{cps_conc}": f"New tunnels per second (cps, {cps_conc} slots)"}
md = ["# SOCKS5 over TLS: side by side", "",
      "`loadtest/bench/tls.sh`; machine and settings in [`machine.txt`](machine.txt), raw tables in",
      "`NAME.txt`, every run in `NAME.jsonl`. Medians of interleaved rounds. `proxy cpu` is the sum",
      "over every proxy process of the entry's path (100% = one core); `busy` is the whole machine",
      "(% of all cores), shared with the generator and its targets. Ratios: to `plain` (one hop) and",
      "to `plain-chain` (two hops). `server side` is the entry's figure times the CPU share of the",
      "processes after the TLS link (tls-chain: the parent; stunnel-ringsocks: ringsocks;",
      "stunnel-dante: stunnel server + Dante; plain-chain: the parent), from the per-process split",
      "below each table.", "", f"Settings: {settings}.", ""]
for scen, title in names.items():
    rows = [l for l in lines(scen) if l["type"] == "compare"]
    runs = [l for l in lines(scen) if l["type"] == "run"]
    if not rows: continue
    rows = rows[-1]["rows"]
    by = {r["name"]: r for r in rows}
    cps = scen.startswith("cps")
    share = {}
    pj = os.path.join(out, f"procs-{scen}.json")
    if os.path.exists(pj):
        p = json.load(open(pj))
        b, a = p["before"]["procs"], p["after"]["procs"]
        for e, roles in groups.items():
            cpu = {ro: a[ro]["cpu_s"] - b[ro]["cpu_s"] for ro in roles if ro in a and ro in b}
            if sum(cpu.values()) > 0:
                share[e] = sum(cpu.get(ro, 0) for ro in server[e]) / sum(cpu.values())
    md += [f"## {title}", ""]
    unit = "conn/s" if cps else "Gbit/s"
    if cps:
        md += [f"| entry | conn/s | per round | vs plain | vs plain-chain | handshake p50 ms | p99 ms | iteration p50 ms | p99 ms | proxy cpu | proxy CPU µs/conn | server side µs/conn | busy | errors |",
               "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        md += [f"| entry | Gbit/s | per round | vs plain | vs plain-chain | proxy cpu | CPU-s/GiB | server side CPU-s/GiB | busy | byte-exact | errors |",
               "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        mine = [x for x in runs if x["name"] == r["name"]]
        errs = sum(x["errors"] for x in mine)
        vp = r["headline"] / by["plain"]["headline"] if by.get("plain") else None
        vc = r["headline"] / by["plain-chain"]["headline"] if by.get("plain-chain") else None
        per = " / ".join(fmt(h, 0 if cps else 2) for h in r["headline_all"])
        pc = None if r["proxy_cpu_pct"] is None else f'{r["proxy_cpu_pct"]:.0f}%'
        busy = None if r["machine_busy_pct"] is None else f'{r["machine_busy_pct"]:.0f}%'
        if cps:
            us = None if r["proxy_cpu_pct"] is None or not r["headline"] else r["proxy_cpu_pct"] / 100 / r["headline"] * 1e6
            md.append(f'| {r["name"]} | {fmt(r["headline"], 0)} | {per} | {fmt(vp)} | {fmt(vc)} | {r["handshake_p50_us"]/1000:.3f} | {r["handshake_p99_us"]/1000:.3f} | {r["iteration_p50_us"]/1000:.3f} | {r["iteration_p99_us"]/1000:.3f} | {pc or "-"} | {fmt(us, 0)} | {fmt(None if us is None or r["name"] not in share else us * share[r["name"]], 0)} | {busy or "-"} | {errs} |')
        else:
            exact = "OK" if all((x.get("throughput") or {}).get("byte_exact") for x in mine) else "NO"
            md.append(f'| {r["name"]} | {fmt(r["headline"])} | {per} | {fmt(vp)} | {fmt(vc)} | {pc or "-"} | {fmt(r["proxy_cpu_s_per_gib"], 3)} | {fmt(None if r["proxy_cpu_s_per_gib"] is None or r["name"] not in share else r["proxy_cpu_s_per_gib"] * share[r["name"]], 3)} | {busy or "-"} | {exact} | {errs} |')
    notes = sorted({n for x in runs for n in x.get("notes", [])})
    firsts = {k: v for x in runs for k, v in (x.get("first_errors") or {}).items()}
    if firsts:
        md += ["", "Errors (first of each kind): " + "; ".join(f"`{k}`: {v}" for k, v in firsts.items())]
    if notes:
        md += ["", "Generator notes: " + " ".join(notes)]
    # Per-process split of each entry's CPU over the whole scenario (warm-ups and pauses included).
    pj = os.path.join(out, f"procs-{scen}.json")
    if os.path.exists(pj):
        p = json.load(open(pj))
        b, a = p["before"]["procs"], p["after"]["procs"]
        md += ["", "CPU per process over the whole scenario (all rounds, warm-ups included), share of its entry; memory at the end:", "",
               "| entry | process | CPU s | share | RSS MiB at end | peak RSS MiB (since start) | PSS MiB | fds | threads |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e, roles in groups.items():
            cpu = {ro: a[ro]["cpu_s"] - b[ro]["cpu_s"] for ro in roles if ro in a}
            tot = sum(cpu.values()) or 1
            for ro in roles:
                if ro not in a: continue
                x = a[ro]
                md.append(f'| {e} | {ro} | {cpu[ro]:.1f} | {cpu[ro]/tot*100:.0f}% | {x["rss_kib"]/1024:.1f} | {x["hwm_kib"]/1024:.1f} | {x["pss_kib"]/1024:.1f} | {x["fds"]} | {x["threads"]} |')
    md.append("")

h = [l for l in lines(f"hold-{hold}") if l["type"] == "run"]
if h:
    md += [f"## Holding {hold} tunnels: TLS parent vs plain parent", "",
           f"`hold -c {hold} -d 5s --keepalive 2s`, fresh processes, `--proxy-pid` = the parent alone"
           " (ringsocks-load's readings before the ramp, at full hold, 1 s and 3 s after the close).", "",
           "| chain | held | errors | ramp s | parent RSS before → full hold MiB | parent PSS before → full MiB | PSS 3 s after MiB | RSS KiB/tunnel | PSS KiB/tunnel | fds before → full | fds/tunnel | keepalive p99 ms |",
           "|---|---:|---:|---:|---|---|---:|---:|---:|---|---:|---:|"]
    for x in h:
        ho = x["hold"]; b, f = ho["proxy_before"], ho["proxy_full"]; s = ho.get("proxy_settled") or ho.get("proxy_after") or {}
        md.append(f'| {x["name"]} | {ho["held"]} | {x["errors"]} | {ho["ramp_s"]:.2f} | {b["rss_kib"]/1024:.1f} → {f["rss_kib"]/1024:.1f} | {b["pss_kib"]/1024:.1f} → {f["pss_kib"]/1024:.1f} | {s.get("pss_kib", 0)/1024:.1f} | {fmt(ho["rss_kib_per_tunnel"], 1)} | {fmt(ho["pss_kib_per_tunnel"], 1)} | {b["fds"]} → {f["fds"]} | {fmt(ho["fds_per_tunnel"])} | {x["latency_us"]["iteration"]["p99"]/1000:.3f} |')
    pk = os.path.join(out, "hold-peaks.json")
    pj = os.path.join(out, f"procs-hold-{hold}.json")
    if os.path.exists(pk) and os.path.exists(pj):
        peaks = json.load(open(pk)); b = json.load(open(pj))["before"]["procs"]
        md += ["", "Sampled every 0.2 s during the hold (edges and parents; peak minus the reading before the hold, per tunnel):", "",
               "| process | RSS before MiB | peak RSS MiB | peak PSS MiB | peak fds | RSS KiB/tunnel | PSS KiB/tunnel | fds/tunnel |",
               "|---|---:|---:|---:|---:|---:|---:|---:|"]
        label = {"hp-edge": "plain-chain edge", "hp-parent": "plain-chain parent (plain)",
                 "ht-edge": "tls-chain edge (TLS client)", "ht-parent": "tls-chain parent (TLS server)"}
        for ro in ["hp-edge", "hp-parent", "ht-edge", "ht-parent"]:
            if ro not in peaks or ro not in b: continue
            k, z = peaks[ro], b[ro]
            n = int(hold)
            md.append(f'| {label[ro]} | {z["rss_kib"]/1024:.1f} | {k["rss_kib"]/1024:.1f} | {k["pss_kib"]/1024:.1f} | {k["fds"]} | {(k["rss_kib"]-z["rss_kib"])/n:.1f} | {(k["pss_kib"]-z["pss_kib"])/n:.1f} | {(k["fds"]-z["fds"])/n:.2f} |')
    md.append("")
md += ["## Logs", "", "WARN/ERROR lines and `tls=` fields of every log: [`logs.txt`](logs.txt).", ""]
open(os.path.join(out, "summary.md"), "w").write("\n".join(md))
print("\n".join(md))
PY
}
if [ -n "${SUMMARY_ONLY:-}" ]; then summarize; exit 0; fi

LOAD=${LOAD:-$root/target-load/release/ringsocks-load}
if [ ! -x "$LOAD" ]; then
    (cd "$root" && CARGO_TARGET_DIR="$root/target-load" cargo build --release -p ringsocks-load)
fi
rs=${RINGSOCKS:-$root/target/release/ringsocks}
[ -x "$rs" ] || (cd "$root" && cargo build --release --bin ringsocks)
for tool in stunnel4 danted openssl python3 ss; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install stunnel4 dante-server)" >&2; exit 2; }
done
unset RINGSOCKS_UPSTREAM

tmp=$(mktemp -d /tmp/ringsocks-bench-tls.XXXX)
chmod 755 "$tmp" # Dante's unprivileged children read their configuration here
logs=$tmp/logs
mkdir -p "$logs"
started=() # every PID started here: the proxies, then the wrapper shells
cleanup() {
    local p alive
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${started[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${started[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_listen() { # port
    for _ in $(seq 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.05; done
    echo "nothing listens on port $1; logs:" >&2
    tail -n 5 "$logs"/*.log >&2
    exit 2
}

# spawn ROLE COMMAND...: runs COMMAND in the background, output to $logs/ROLE.log, and leaves
# its PID in $tmp/ROLE.pid. Called inside a group's wrapper shell.
spawn() {
    local role=$1
    shift
    "$@" >"$logs/$role.log" 2>&1 &
    echo $! >"$tmp/$role.pid"
}
pid_of() { # role: waits for the pid file
    for _ in $(seq 100); do [ -s "$tmp/$1.pid" ] && { cat "$tmp/$1.pid"; return 0; }; sleep 0.05; done
    echo "no pid for $1" >&2
    exit 2
}
declare -A pid role_entry
roles=() # in start order
# group ENTRY ROLE... -- runs the function start_ENTRY in a wrapper shell (the entry's PID for
# --proxy-pid), then records the PIDs of the roles it spawned.
group() {
    local entry=$1 r
    shift
    (
        trap - EXIT
        "start_$entry"
        wait
    ) &
    pid[$entry]=$!
    started+=("$!")
    for r in "$@"; do
        pid[$r]=$(pid_of "$r")
        [ -n "${pid[$r]}" ] || exit 2
        role_entry[$r]=$entry
        roles+=("$r")
        started=("${pid[$r]}" "${started[@]}") # proxies are stopped before the wrapper shells
    done
}

certs=$tmp/certs
bash "$root/tests/tls/make-certs.sh" "$certs" >/dev/null
rsserve=("$rs" serve --drain-timeout 1s)
tlsargs=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key")
tlsup() { echo "socks5+tls://127.0.0.1:$1?ca=$certs/ca.pem&sni=localhost"; }

stunnel_client() { # role accept-port connect-port
    cat >"$tmp/$1.conf" <<CONF
foreground = yes
pid =
debug = warning
[socks]
client = yes
accept = 127.0.0.1:$2
connect = 127.0.0.1:$3
verifyChain = yes
CAfile = $certs/ca.pem
checkHost = localhost
sessionResume = no
CONF
    spawn "$1" stunnel4 "$tmp/$1.conf"
}
stunnel_server() { # role accept-port connect-port
    cat >"$tmp/$1.conf" <<CONF
foreground = yes
pid =
debug = warning
[socks-tls]
accept = 127.0.0.1:$2
connect = 127.0.0.1:$3
cert = $certs/server.pem
key = $certs/server.key
CONF
    spawn "$1" stunnel4 "$tmp/$1.conf"
}
dante() { # role port
    mkdir -p "$tmp/$1"
    cat >"$tmp/$1/danted.conf" <<CONF
logoutput: $logs/$1-danted.log
internal: 127.0.0.1 port = $2
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: error
}
socks pass {
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: error
}
CONF
    spawn "$1" danted -f "$tmp/$1/danted.conf" -p "$tmp/$1/danted.pid"
}

# Ports 11300-11399. Parents first, so edges find them listening.
start_plain() { spawn rs-plain "${rsserve[@]}" --listen 127.0.0.1:11300; }
start_plain-chain() {
    spawn pc-parent "${rsserve[@]}" --listen 127.0.0.1:11311
    spawn pc-edge "${rsserve[@]}" --listen 127.0.0.1:11310 --upstream socks5://127.0.0.1:11311
}
start_tls-chain() {
    spawn tc-parent "${rsserve[@]}" --listen 127.0.0.1:11321 "${tlsargs[@]}"
    spawn tc-edge "${rsserve[@]}" --listen 127.0.0.1:11320 --upstream "$(tlsup 11321)"
}
start_stunnel-ringsocks() {
    spawn sr-ringsocks "${rsserve[@]}" --listen 127.0.0.1:11331 "${tlsargs[@]}"
    stunnel_client sr-stunnel 11330 11331
}
start_stunnel-dante() {
    dante sd-dante 11342
    stunnel_server sd-stunnel-server 11341 11342
    stunnel_client sd-stunnel-client 11340 11341
}
group plain rs-plain
group plain-chain pc-parent pc-edge
group tls-chain tc-parent tc-edge
group stunnel-ringsocks sr-ringsocks sr-stunnel
group stunnel-dante sd-dante sd-stunnel-server sd-stunnel-client
for p in 11300 11311 11310 11321 11320 11331 11330 11342 11341 11340; do wait_listen "$p"; done

compare="plain=socks5://127.0.0.1:11300,plain-chain=socks5://127.0.0.1:11310"
compare+=",tls-chain=socks5://127.0.0.1:11320,stunnel-ringsocks=socks5://127.0.0.1:11330"
compare+=",stunnel-dante=socks5://127.0.0.1:11340,direct"
proxy_pids="${pid[plain]},${pid[plain-chain]},${pid[tls-chain]},${pid[stunnel-ringsocks]},${pid[stunnel-dante]},-"

# procs.py: per-process readings (CPU ticks, RSS, peak RSS, PSS, fds, threads), each role
# summed over the process and its live descendants (Dante's children), as ringsocks-load does.
cat >"$tmp/procs.py" <<'PY'
import json, os, sys, time, signal
def stat(p):
    s = open(f"/proc/{p}/stat").read()
    return s[s.rindex(")") + 2:].split()
def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try: kids.setdefault(int(stat(d)[1]), []).append(int(d))
            except OSError: pass
    out, i = [root], 0
    while i < len(out):
        out += kids.get(out[i], []); i += 1
    return out
def field(text, key):
    for l in text.splitlines():
        if l.startswith(key): return int(l.split()[1])
    return 0
def sample(root):
    r = dict(processes=0, threads=0, cpu_s=0.0, rss_kib=0, hwm_kib=0, pss_kib=0, fds=0)
    tck = os.sysconf("SC_CLK_TCK")
    for p in tree(root):
        try:
            f = stat(p); st = open(f"/proc/{p}/status").read()
            r["cpu_s"] += sum(int(x) for x in f[11:15]) / tck  # utime stime cutime cstime
            r["rss_kib"] += field(st, "VmRSS:"); r["hwm_kib"] += field(st, "VmHWM:")
            r["threads"] += field(st, "Threads:")
            r["pss_kib"] += field(open(f"/proc/{p}/smaps_rollup").read(), "Pss:")
            r["fds"] += len(os.listdir(f"/proc/{p}/fd")); r["processes"] += 1
        except OSError: pass
    return r
roles = [a.split("=", 1) for a in sys.argv[2:]]
if sys.argv[1] == "snap":   # snap role=pid...: one JSON object on stdout
    print(json.dumps({"t": time.time(), "procs": {r: sample(int(p)) for r, p in roles}}))
else:                       # peaks FILE role=pid...: maxima every 0.2 s until SIGTERM
    path = sys.argv[1][len("peaks="):]
    peak = {r: {} for r, _ in roles}
    def dump(*_):
        json.dump(peak, open(path, "w")); sys.exit(0)
    signal.signal(signal.SIGTERM, dump)
    while True:
        for r, p in roles:
            for k, v in sample(int(p)).items():
                if k != "cpu_s": peak[r][k] = max(v, peak[r].get(k, 0))
        time.sleep(0.2)
PY
# others: the three busiest processes over one second (other work on the machine shows here).
others() {
    top -bn2 -d1 -w 200 | awk '/^top -/ {n++} n == 2 && $1 ~ /^[0-9]+$/ {print $9 "% " $12}' | head -3 | paste -sd, -
}
role_args() { local r; for r in "${roles[@]}"; do printf '%s=%s ' "$r" "${pid[$r]}"; done; }
snap() { python3 "$tmp/procs.py" snap $(role_args); }

{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "kernel tls module: $(if [ -d /sys/module/tls ]; then echo loaded; elif modinfo tls >/dev/null 2>&1; then echo available; else echo absent; fi)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "ringsocks: $rs ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "ringsocks-load: $LOAD"
    echo "stunnel: $(stunnel4 -version 2>&1 | grep -m1 '^stunnel')"
    echo "stunnel openssl: $(stunnel4 -version 2>&1 | grep -m1 'Compiled with')"
    echo "dante: $(danted -v 2>&1 | head -1)"
    echo "settings: DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS PAUSE=$PAUSE CPS_CONC=$CPS_CONC HOLD=$HOLD"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "busiest processes at start (top, 1 s): $(others)"
    echo "compare: $compare"
    echo "proxy-pid (wrapper shells): $proxy_pids"
    for r in "${roles[@]}"; do echo "process: ${role_entry[$r]} $r pid ${pid[$r]}"; done
} >"$out/machine.txt"
cat "$out/machine.txt"

snap >"$out/procs-start.json"
run() { # NAME ringsocks-load arguments...
    local name=$1
    shift
    rm -f "$out/$name.jsonl"
    echo "### $name: ringsocks-load $* --compare $compare --proxy-pid $proxy_pids --rounds $ROUNDS --pause $PAUSE" | tee "$out/$name.txt"
    local before after
    before=$(snap)
    "$LOAD" "$@" --compare "$compare" --proxy-pid "$proxy_pids" --rounds "$ROUNDS" --pause "$PAUSE" \
        --json-file "$out/$name.jsonl" --max-error-rate 1 --no-progress 2>&1 | tee -a "$out/$name.txt"
    after=$(snap)
    printf '{"before":%s,"after":%s}\n' "$before" "$after" >"$out/procs-$name.json"
}

t0=$(date +%s)
for s in $ONLY; do
    case $s in
    up1) run up-c1 throughput -c 1 --direction up -d "$DURATION" -w "$WARMUP" ;;
    up8) run up-c8 throughput -c 8 --direction up -d "$DURATION" -w "$WARMUP" ;;
    both8) run both-c8 throughput -c 8 --direction both -d "$DURATION" -w "$WARMUP" ;;
    cps) run cps-c"$CPS_CONC" cps -c "$CPS_CONC" -d "$DURATION" -w "$WARMUP" ;;
    hold) ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
done

# Hold: fresh chains (so peak RSS is the hold's own), HOLD tunnels each, the parents' memory
# and descriptors read by ringsocks-load (--proxy-pid = the parent alone) and, for edges and
# parents, peaks sampled every 0.2 s.
if [[ " $ONLY " == *" hold "* ]]; then
    start_hold-plain() {
        spawn hp-parent "${rsserve[@]}" --listen 127.0.0.1:11361
        spawn hp-edge "${rsserve[@]}" --listen 127.0.0.1:11360 --upstream socks5://127.0.0.1:11361
    }
    start_hold-tls() {
        spawn ht-parent "${rsserve[@]}" --listen 127.0.0.1:11371 "${tlsargs[@]}"
        spawn ht-edge "${rsserve[@]}" --listen 127.0.0.1:11370 --upstream "$(tlsup 11371)"
    }
    roles=()
    group hold-plain hp-parent hp-edge
    group hold-tls ht-parent ht-edge
    for p in 11361 11360 11371 11370; do wait_listen "$p"; done
    python3 "$tmp/procs.py" peaks="$out/hold-peaks.json" $(role_args) &
    sampler=$!
    started+=("$sampler")
    hold_compare="plain-chain=socks5://127.0.0.1:11360,tls-chain=socks5://127.0.0.1:11370"
    name=hold-$HOLD
    rm -f "$out/$name.jsonl"
    before=$(snap)
    echo "### $name: ringsocks-load hold -c $HOLD -d 5s --keepalive 2s --compare $hold_compare --proxy-pid ${pid[hp-parent]},${pid[ht-parent]} --rounds 1 --pause 3s" | tee "$out/$name.txt"
    "$LOAD" hold -c "$HOLD" -d 5s --keepalive 2s --compare "$hold_compare" \
        --proxy-pid "${pid[hp-parent]},${pid[ht-parent]}" --rounds 1 --pause 3s \
        --json-file "$out/$name.jsonl" --max-error-rate 1 --no-progress 2>&1 | tee -a "$out/$name.txt"
    after=$(snap)
    kill "$sampler"
    wait "$sampler" 2>/dev/null || true
    printf '{"before":%s,"after":%s}\n' "$before" "$after" >"$out/procs-$name.json"
fi
elapsed=$(($(date +%s) - t0))
{
    echo "load runs took ${elapsed}s"
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "busiest processes at end (top, 1 s): $(others)"
} | tee -a "$out/machine.txt"

# Per log: line count, the tls=/via_tls= fields of ringsocks's access lines, tunnels that ended
# with an error (error="..."), and WARN/ERROR lines (ringsocks), warnings and errors (stunnel at
# debug = warning: LOG0-LOG4), everything Dante logged (log: error).
{
    for f in "$logs"/*.log; do
        b=$(basename "$f")
        case $b in
        sd-dante.log) continue ;; # Dante's stdout; its log is sd-dante-danted.log
        *stunnel*) pat='LOG[0-4]\[' ;;
        *danted*) pat='.' ;;
        *) pat=' (WARN|ERROR) ' ;;
        esac
        echo "== $b: $(wc -l <"$f") lines, $(grep -cE "$pat" "$f" || true) warning/error lines"
        grep -oE ' (via_)?tls="[^"]*"' "$f" | sort | uniq -c || true
        n=$(grep -c 'error="' "$f" || true)
        if [ "$n" -gt 0 ]; then
            echo "  access lines with an error: $n"
            grep -oE 'reply="[^"]*".*error_side="[^"]*" error="[^"]*"' "$f" | sed -E 's/ up=[0-9]+ down=[0-9]+ ms=[0-9]+//' |
                sort | uniq -c | sort -rn | head -10 || true
        fi
        grep -E "$pat" "$f" | sed -E 's/^[0-9]{4}[-.][0-9.:T -]+Z? *//; s/\([0-9.]+\) //; s/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/ADDR/g' |
            sort | uniq -c | sort -rn | head -20 || true
    done
} >"$out/logs.txt"

summarize
