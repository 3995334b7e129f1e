#!/usr/bin/env bash
# Message and trust benchmarks (BENCHMARKS.md -> Messages), two private
# daemons on loopback, release build:
#   1. send-message in a loop: one pilotctl process and one stream per
#      message (what a shell script that sends messages does),
#   2. a batch over one stream: `send-message --each-line` with BATCH lines,
#   3. trust latency over ROUNDS handshakes: handshake -> the request shows
#      in the other side's `pending`; approve -> the requester's `trust`
#      shows the peer (p50/p95 of each, polled every 10 ms).
#
# Usage: scripts/bench/messages.sh        (env: LOOP, BATCH, ROUNDS)
set -euo pipefail
cd "$(dirname "$0")/../.."

LOOP=${LOOP:-200}
BATCH=${BATCH:-10000}
ROUNDS=${ROUNDS:-20}

echo "== building (release)"
cargo build --release --quiet --bins
BIN=target/release

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
ms() { echo $(( $(date +%s%N) / 1000000 )); }

REG=127.0.0.1:$(free_port)
BEA=127.0.0.1:$(free_port)
"$BIN/pilot-rendezvous" --registry-addr "$REG" --beacon-addr "$BEA" --memory >"$work/rdv.log" 2>&1 &
pids+=($!)
sleep 0.3
for n in a b; do
  mkdir -p "$work/$n"
  ctl "$n" daemon start --registry "$REG" --beacon "$BEA" --private \
    --daemon-arg=--log-level=warn >/dev/null
done
A=$(ctl a --json info | json 'd["data"]["address"]')
B=$(ctl b --json info | json 'd["data"]["address"]')
A_ID=$(ctl a --json info | json 'd["data"]["node_id"]')
B_ID=$(ctl b --json info | json 'd["data"]["node_id"]')

pending_has() { ctl b --json pending | json "any(p['node_id']==$A_ID for p in d['data']['pending'])"; }
trusts() { ctl a --json trust | json "any(t['node_id']==$B_ID for t in d['data']['trusted'])"; }
wait_true() { local t0; t0=$(ms); until [ "$($1)" = True ]; do
  sleep 0.01; if (( $(ms) - t0 > 10000 )); then echo "error: $1 never held" >&2; exit 1; fi; done; }

echo "== trust latency, $ROUNDS rounds"
req=(); app=()
for _ in $(seq 1 "$ROUNDS"); do
  t0=$(ms); ctl a handshake "$B" bench >/dev/null; wait_true pending_has; t1=$(ms)
  ctl b approve "$A" >/dev/null; wait_true trusts; t2=$(ms)
  req+=($((t1 - t0))); app+=($((t2 - t1)))
  ctl a untrust "$B" >/dev/null; ctl b untrust "$A" >/dev/null 2>&1 || true
  sleep 0.2
done
pct() { printf '%s\n' "$@" | sort -n | python3 -c '
import sys; v=[int(x) for x in sys.stdin]; q=lambda p: v[min(len(v)-1, int(round(p*(len(v)-1))))]
print(f"p50 {q(0.5)} ms, p95 {q(0.95)} ms, max {v[-1]} ms")'; }
echo "request -> pending:   $(pct "${req[@]}")"
echo "approve -> trusted:   $(pct "${app[@]}")"

# Trust again for the message runs.
ctl a handshake "$B" bench >/dev/null; wait_true pending_has; ctl b approve "$A" >/dev/null; wait_true trusts

echo "== send-message in a loop, $LOOP messages (one process and stream each)"
t0=$(ms)
for i in $(seq 1 "$LOOP"); do ctl a send-message "$B" --data "loop message $i" >/dev/null; done
t1=$(ms)
loop_rate=$(python3 -c "print(f'{$LOOP/(($t1-$t0)/1000):.0f}')")
echo "loop: $LOOP in $((t1 - t0)) ms = $loop_rate messages/s"

echo "== a batch of $BATCH messages over one stream"
seq 1 "$BATCH" | sed 's/^/batch message /' >"$work/lines"
out=$(ctl a --json send-message "$B" --each-line --file "$work/lines")
secs=$(echo "$out" | json 'd["data"]["seconds"]')
batch_rate=$(python3 -c "print(f'{$BATCH/$secs:.0f}')")
echo "batch: $BATCH in $secs s = $batch_rate messages/s"
count=$(ctl b --json inbox --limit 1 | json 'd["data"]["total"]')
want=$((LOOP + BATCH))
echo "inbox holds $count messages (want $want)"
[ "$count" = "$want" ] || { echo "error: messages lost" >&2; exit 1; }
