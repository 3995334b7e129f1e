#!/usr/bin/env bash
# Discovery benchmark (BENCHMARKS.md -> Discovery; issue 12): `find --tag`
# over NODES (default 100,000) registered nodes with TAGS (10) tags each,
# embedded SQLite store, one machine, loopback only.
#   setup: NODES fresh keys register, each sets TAGS tags from a vocabulary
#          of VOCAB (1,000: a tag is carried by ~1,000 nodes) and every
#          third node turns public (signed requests, as daemons send them);
#   find1: QUERIES single-tag find_nodes back to back on one connection,
#          each from a random registered requester: p50/p95/p99/max;
#   find2: the same with two tags;
#   find xQCONNS: single-tag finds over QCONNS connections for SECS s.
# Goal: find --tag p95 < 10 ms. The server is pinned to SERVER_CPU (0),
# the generator to GEN_CPUS (1). Prints the load average before and after,
# the generator's lines and a final JSON line. Runs the release build.
#
# Usage: scripts/bench/discovery.sh   (env: NODES, TAGS, VOCAB, QUERIES,
#        QCONNS, SECS, SERVER_CPU, GEN_CPUS, KEEP=1 keeps the store dir)
set -euo pipefail
cd "$(dirname "$0")/../.."

NODES=${NODES:-100000}
TAGS=${TAGS:-10}
VOCAB=${VOCAB:-1000}
QUERIES=${QUERIES:-5000}
QCONNS=${QCONNS:-8}
SECS=${SECS:-5}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPUS=${GEN_CPUS:-1}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
pin() {
  local cpus=$1; shift
  if command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

echo "== building (release)"
cargo build --release --quiet --bin pilot-rendezvous --example discovery_load
BIN=target/release/pilot-rendezvous
GEN=target/release/examples/discovery_load

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; fi || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
store=$work/rendezvous.db
(pin "$SERVER_CPU" "$BIN" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 \
  --store "$store" --no-rate-limit --no-new-id-quota --max-connections 8192 \
  --max-connections-per-source 8192 \
  --log-level warn,pilot_rendezvous=info 2>"$work/server.log") &
pid=$!
for _ in $(seq 200); do
  grep -q listening "$work/server.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.05
done
registry=$(sed -n 's/.*listening registry=\([^ ]*\).*/\1/p' "$work/server.log" | head -1)
[ -n "$registry" ] || { cat "$work/server.log" >&2; exit 1; }

echo "== $NODES nodes x $TAGS tags, server on cpu $SERVER_CPU, generator on cpu $GEN_CPUS"
(pin "$GEN_CPUS" "$GEN" --registry "$registry" --nodes "$NODES" --tags "$TAGS" \
  --vocab "$VOCAB" --queries "$QUERIES" --qconns "$QCONNS" --secs "$SECS")
rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
echo "server RSS $rss MiB"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
