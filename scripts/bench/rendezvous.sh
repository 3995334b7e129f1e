#!/usr/bin/env bash
# Rendezvous benchmark, embedded SQLite store, one machine, loopback only
# (BENCHMARKS.md -> Rendezvous; issue 13):
#   1. NODES (default 100,000) fresh nodes register (signed, as daemons
#      sign) over CONNS connections; one more connection looks up
#      registered ids meanwhile: registrations/s, lookup p50/p99/max;
#      then the server's RSS and the store's size on disk;
#   2. lookups/s, 3. resolves/s (signed), 4. heartbeats/s (signed), each
#      for SECS seconds against the registered nodes.
# The server is pinned to one core (SERVER_CPU, default 0) and the load
# generator to the others, so the read figures are "on one core". Runs the
# release build; prints the generator's lines and a final JSON line.
#
# Usage: scripts/bench/rendezvous.sh            (env: NODES, CONNS, SECS,
#        SERVER_CPU, GEN_CPUS, GEN_THREADS, KEEP=1 keeps the store dir)
set -euo pipefail
cd "$(dirname "$0")/../.."

NODES=${NODES:-100000}
CONNS=${CONNS:-64}
SECS=${SECS:-5}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPUS=${GEN_CPUS:-1}
GEN_THREADS=${GEN_THREADS:-1}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
pin() { # pin CPUS cmd...: taskset when there is one
  local cpus=$1; shift
  if command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

echo "== building (release)"
cargo build --release --quiet --bin pilot-rendezvous --example rendezvous_load
BIN=target/release/pilot-rendezvous
GEN=target/release/examples/rendezvous_load

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

store=$work/rendezvous.db
pin "$SERVER_CPU" "$BIN" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 \
  --store "$store" --no-rate-limit --no-new-id-quota --max-connections 4096 \
  --log-level warn,pilot_rendezvous=info 2>"$work/server.log" &
pid=$!
for _ in $(seq 200); do
  grep -q listening "$work/server.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.05
done
registry=$(sed -n 's/.*listening registry=\([^ ]*\).*/\1/p' "$work/server.log" | head -1)
[ -n "$registry" ] || { cat "$work/server.log" >&2; exit 1; }

echo "== $NODES nodes, $CONNS connections, server on cpu $SERVER_CPU, generator on cpu $GEN_CPUS"
pin "$GEN_CPUS" "$GEN" --registry "$registry" --nodes "$NODES" --conns "$CONNS" \
  --secs "$SECS" --threads "$GEN_THREADS" --hb-nodes "$NODES" \
  --server-pid "$pid" --store "$store"

# Restart time with the store in place (load into memory).
kill "$pid"; wait "$pid" 2>/dev/null || true
start=$(date +%s.%N)
pin "$SERVER_CPU" "$BIN" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 \
  --store "$store" --log-level warn,pilot_rendezvous=info 2>"$work/server2.log" &
pid=$!
until grep -q listening "$work/server2.log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/server2.log" >&2; exit 1; }
  sleep 0.05
done
end=$(date +%s.%N)
rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
took=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
echo "restart    $took s to load $NODES nodes; RSS $rss MiB after load"
