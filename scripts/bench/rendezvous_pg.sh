#!/usr/bin/env bash
# Rendezvous benchmark over PostgreSQL (BENCHMARKS.md -> Rendezvous; issue
# 13 item 2): a throwaway PostgreSQL cluster (Debian's initdb/pg_ctl, run as
# the `postgres` user when we are root) and TWO pilot-rendezvous instances
# over it, the same load generator as scripts/bench/rendezvous.sh with its
# connections spread over both instances (lookups and resolves mostly name
# nodes registered with the other instance; each node heartbeats the
# instance it registered with). Figures: registrations/s, lookup p50/p99
# during the burst (on the second instance), lookups/s, resolves/s,
# heartbeats/s, RSS of each instance, the database's size.
#
# Usage: scripts/bench/rendezvous_pg.sh   (env: NODES (20,000), CONNS (64),
#        REG_CONNS (512), SECS (5), GEN_THREADS (1))
set -euo pipefail
cd "$(dirname "$0")/../.."

NODES=${NODES:-20000}
CONNS=${CONNS:-64}
REG_CONNS=${REG_CONNS:-512}
SECS=${SECS:-5}
GEN_THREADS=${GEN_THREADS:-1}

pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release)"
cargo build --release --quiet --bin pilot-rendezvous --example rendezvous_load
BIN=target/release/pilot-rendezvous
GEN=target/release/examples/rendezvous_load

work=$(mktemp -d)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done || true
  as_pg "$pgbin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$pgbin/initdb" -D "$work/data" -U pilot --auth=trust >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w start \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c max_connections=50" >/dev/null
url="postgres://pilot@127.0.0.1:$port/postgres"

registries=()
for n in a b; do
  ("$BIN" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 --store "$url" \
    --identity "$work/identity.json" --no-rate-limit --no-new-id-quota \
    --max-connections 8192 --max-connections-per-source 8192 --metrics 127.0.0.1:0 \
    --log-level warn,pilot_rendezvous=info 2>"$work/$n.log") &
  pids+=($!)
  for _ in $(seq 200); do
    grep -q listening "$work/$n.log" && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$n.log" >&2; exit 1; }
    sleep 0.05
  done
  registries+=(--registry "$(sed -n 's/.*listening registry=\([^ ]*\).*/\1/p' "$work/$n.log" | head -1)")
done

echo "== $NODES nodes, $CONNS connections, two instances over PostgreSQL $(basename "$(dirname "$pgbin")")"
"$GEN" "${registries[@]}" --nodes "$NODES" --conns "$CONNS" --reg-conns "$REG_CONNS" \
  --secs "$SECS" --threads "$GEN_THREADS" --hb-nodes "$NODES" --server-pid "${pids[0]}"
for i in 0 1; do
  echo "rss        instance $i: $(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/${pids[$i]}/status") MiB"
done
echo "database   $(psql -h 127.0.0.1 -p "$port" -U pilot -d postgres -tAc \
  "SELECT pg_size_pretty(pg_database_size('postgres'))")"
