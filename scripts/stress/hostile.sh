#!/usr/bin/env bash
# Hostile-traffic stress (issue 10): a rendezvous and two honest daemons on
# loopback keep pinging and streaming while examples/hostile.rs attacks
# them for DURATION seconds from 127.0.0.10-89: spoofed PILAs, forged PILS,
# beacon garbage and spoofed discovers, fresh-key registration and lookup
# floods, 200 idle registry connections.
#
# Reports, against a quiet run in the same sitting:
#   * honest throughput (pilotctl bench through the echo service),
#   * honest control pings every 200 ms (lost = no reply within 1 s) and the
#     longest gap between two answered pings,
#   * peak RSS (VmHWM) of the rendezvous and both daemons.
# Goals: >= 80% of the quiet throughput, no gap between answered pings
# above 1 s (+ one interval), RSS bounded (BENCHMARKS.md -> Hostile traffic).
#
# Usage: scripts/stress/hostile.sh    (env: DURATION=60 QUIET=30 BENCH_MB=64 PROFILE=release|debug)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-60}
BENCH_MB=${BENCH_MB:-64}
PROFILE=${PROFILE:-release}
command -v python3 >/dev/null || { echo "error: python3 is needed" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --bins --example hostile
else
  cargo build --quiet --bins --example hostile
fi
BIN=target/$PROFILE

work=$(mktemp -d)
pids=()
cleanup() {
  for n in a b; do
    HOME="$work/$n" "$BIN/pilotctl" --socket "$work/$n.sock" daemon stop >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
ctl() { local n=$1; shift; HOME="$work/$n" "$BIN/pilotctl" --socket "$work/$n.sock" "$@"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

REG=127.0.0.1:$(free_port)
BEA=127.0.0.1:$(free_port)
"$BIN/pilot-rendezvous" --registry-addr "$REG" --beacon-addr "$BEA" --store "$work/store.json" \
  --log-level warn >"$work/rdv.log" 2>&1 &
RDV_PID=$!
pids+=("$RDV_PID")
sleep 0.3
for n in a b; do
  mkdir -p "$work/$n"
  ctl "$n" daemon start --registry "$REG" --beacon "$BEA" --public --heartbeat 5s \
    --daemon-arg=--log-level=info >/dev/null
done
A_ID=$(ctl a --json info | json 'd["data"]["node_id"]')
B_ID=$(ctl b --json info | json 'd["data"]["node_id"]')
B_ADDR=$(ctl b --json info | json 'd["data"]["address"]')
A_EP=$(ctl a --json info | json 'd["data"]["endpoint"]')
B_EP=$(ctl b --json info | json 'd["data"]["endpoint"]')
A_PID=$(ctl a --json info | json 'd["data"]["pid"]')
B_PID=$(ctl b --json info | json 'd["data"]["pid"]')
ctl a ping "$B_ADDR" --control --count 1 >/dev/null

bench() { ctl a --json bench "$B_ADDR" "$BENCH_MB" | json 'd["data"]["mb_per_s"]'; }

# Pings every 200 ms for $1 seconds; prints "answered lost max_gap_s".
pings() {
  local n=$(( $1 * 5 ))
  ctl a ping "$B_ADDR" --control --count "$n" --interval 200ms --timeout 1s 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done |
    python3 -c '
import sys
ok, lost, last, gap = 0, 0, None, 0.0
for l in sys.stdin:
    t, rest = l.split(" ", 1)
    t = float(t)
    if "seq=" in rest and "time=" in rest:
        ok += 1
        if last is not None: gap = max(gap, t - last)
        last = t
    elif "no reply" in rest:
        lost += 1
print(ok, lost, round(gap, 2))'
}

# One phase: pings every 200 ms and back-to-back benches for $1 seconds.
# Writes "$work/$2.pings" (answered lost max_gap) and "$work/$2.rates".
phase() {
  local secs=$1 name=$2
  pings $((secs - 4)) >"$work/$name.pings" &
  local pp=$!
  : >"$work/$name.rates"
  local end=$(( $(date +%s) + secs - 6 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    bench >>"$work/$name.rates" || echo 0 >>"$work/$name.rates"
  done
  wait "$pp"
}
mean() { python3 -c "import sys; v=[float(x) for x in open(sys.argv[1])]; print(round(sum(v)/len(v), 1), min(v), len(v))" "$1"; }

echo "== quiet run (${QUIET:-30}s)"
phase "${QUIET:-30}" quiet
read -r QOK QLOST QGAP <"$work/quiet.pings"
read -r QUIET_MB _QMIN QRUNS < <(mean "$work/quiet.rates")

echo "== hostile run (${DURATION}s)"
"$BIN/examples/hostile" "$REG" "$BEA" "$DURATION" "$A_EP,$B_EP" "$A_ID,$B_ID" >"$work/hostile.json" &
HP=$!
sleep 1
phase "$((DURATION - 1))" hostile
wait "$HP"
read -r HOK HLOST HGAP <"$work/hostile.pings"
read -r HOSTILE HMIN HRUNS < <(mean "$work/hostile.rates")
STATS=$(ctl b --json info | json 'json.dumps(d["data"]["stats"])')
REGISTERED=$(ctl a --json info | json 'd["data"]["registered"]')
LOGSZ=$(stat -c %s "$work/a/.pilot/pilot.log")

python3 - "$QUIET_MB" "$HOSTILE" "$HMIN" "$QRUNS/$HRUNS" "$QOK" "$QLOST" "$QGAP" "$HOK" "$HLOST" "$HGAP" \
  "$(hwm_kib "$RDV_PID")" "$(hwm_kib "$A_PID")" "$(hwm_kib "$B_PID")" "$(cat "$work/hostile.json")" \
  "$STATS" "$REGISTERED" "$LOGSZ" "$BENCH_MB" <<'PY'
import sys, json
q, h, mn, runs, qok, qlost, qgap, hok, hlost, hgap, rr, ra, rb, sent, stats, reg, logsz, mb = sys.argv[1:]
q, h, mn = float(q), float(h), float(mn)
pct = 100 * h / q if q else 0
print()
print("| measure | quiet | hostile | goal |")
print("|---|---|---|---|")
print(f"| honest throughput ({mb} MiB echo bench, mean of {runs} runs) | {q:.1f} MB/s | {h:.1f} MB/s (min {mn:.1f}) | >= 80% of quiet: {pct:.0f}% {'met' if pct >= 80 else 'MISSED'} |")
print(f"| honest pings answered / lost (1 s timeout) | {qok} / {qlost} | {hok} / {hlost} | 0 lost: {'met' if int(hlost) == 0 else 'MISSED'} |")
print(f"| longest gap between answered pings (200 ms interval) | {qgap} s | {hgap} s | <= 1.2 s: {'met' if float(hgap) <= 1.2 else 'MISSED'} |")
print(f"| peak RSS rendezvous / daemon a / daemon b | | {int(rr)/1024:.1f} / {int(ra)/1024:.1f} / {int(rb)/1024:.1f} MB | bounded (see BENCHMARKS.md) |")
print(f"| node a still registered, pilot.log size | | {reg}, {int(logsz)/1024:.0f} KiB | |")
print()
print("attacker sent:", sent)
print("daemon b counters:", stats)
PY
