#!/usr/bin/env bash
# Rendezvous benchmark, embedded SQLite store, one machine, loopback only
# (BENCHMARKS.md -> Rendezvous; issue 13):
#   1. NODES (default 100,000) fresh nodes register (signed, as daemons
#      sign) over REG_CONNS (512) connections, as many daemons at once
#      share one store commit (group commit); one more connection looks up
#      registered ids meanwhile: registrations/s, lookup p50/p99/max;
#      then the server's RSS and the store's size on disk;
#   2. lookups/s, 3. resolves/s (signed), 4. heartbeats/s (signed), each
#      for SECS seconds over CONNS (64) connections against the registered
#      nodes; the store's batch count and latency from /metrics;
#   5. the time to restart with the store in place, and RSS after it.
# The server is pinned to one core (SERVER_CPU, default 0) and the load
# generator to the others, so the read figures are "on one core". Runs the
# release build; prints the generator's lines and a final JSON line.
#
# Usage: scripts/bench/rendezvous.sh            (env: NODES, CONNS, REG_CONNS, SECS,
#        SERVER_CPU, GEN_CPUS, GEN_THREADS, REG_RATE, PROBE_RATE (lookups/s of
#        the latency probe, default 1000; 0 = back to back), KEEP=1 keeps the store dir)
set -euo pipefail
cd "$(dirname "$0")/../.."

NODES=${NODES:-100000}
CONNS=${CONNS:-64}
REG_CONNS=${REG_CONNS:-512}
SECS=${SECS:-5}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPUS=${GEN_CPUS:-1}
GEN_THREADS=${GEN_THREADS:-1}
# Registrations/s in the burst, evenly spread (0: closed loop, as fast as
# the server answers).
REG_RATE=${REG_RATE:-0}
PROBE_RATE=${PROBE_RATE:-1000}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# pin CPUS cmd...: run cmd on CPUS (taskset, when there is one). It execs,
# so that `pin ... &` leaves $! the pid of cmd itself.
pin() {
  local cpus=$1; shift
  if command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

echo "== building (release)"
cargo build --release --quiet --bin pilot-rendezvous --example rendezvous_load
BIN=target/release/pilot-rendezvous
GEN=target/release/examples/rendezvous_load

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; fi || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

store=$work/rendezvous.db
(pin "$SERVER_CPU" "$BIN" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 \
  --store "$store" --no-rate-limit --no-new-id-quota --max-connections 8192 \
  --max-connections-per-source 8192 --metrics 127.0.0.1:0 \
  --log-level warn,pilot_rendezvous=info 2>"$work/server.log") &
pid=$!
for _ in $(seq 200); do
  grep -q listening "$work/server.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.05
done
registry=$(sed -n 's/.*listening registry=\([^ ]*\).*/\1/p' "$work/server.log" | head -1)
metrics=$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' "$work/server.log" | head -1)
[ -n "$registry" ] || { cat "$work/server.log" >&2; exit 1; }

echo "== $NODES nodes, $CONNS connections, server on cpu $SERVER_CPU, generator on cpu $GEN_CPUS"
(pin "$GEN_CPUS" "$GEN" --registry "$registry" --nodes "$NODES" --conns "$CONNS" \
  --reg-conns "$REG_CONNS" --reg-rate "$REG_RATE" --probe-rate "$PROBE_RATE" --secs "$SECS" --threads "$GEN_THREADS" --hb-nodes "$NODES" \
  --server-pid "$pid" --store "$store")

# Store batches, from the server's own metrics.
curl -s "http://$metrics/metrics" | awk '
  /^pilot_rendezvous_store_batch_seconds_sum/ { s = $2 }
  /^pilot_rendezvous_store_batch_seconds_count/ { n = $2 }
  /^pilot_rendezvous_store_batch_rows_sum/ { r = $2 }
  END { if (n > 0) printf "store      %d batches, mean %.2f ms, mean %.0f rows per batch\n", n, 1000 * s / n, r / n }'

# Restart time with the store in place (load into memory).
kill "$pid"; wait "$pid" 2>/dev/null || true
start=$(date +%s.%N)
(pin "$SERVER_CPU" "$BIN" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 \
  --store "$store" --log-level warn,pilot_rendezvous=info 2>"$work/server2.log") &
pid=$!
until grep -q listening "$work/server2.log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/server2.log" >&2; exit 1; }
  sleep 0.05
done
end=$(date +%s.%N)
rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
took=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
echo "restart    $took s to load $NODES nodes; RSS $rss MiB after load"
