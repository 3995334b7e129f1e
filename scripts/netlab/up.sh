#!/usr/bin/env bash
# Brings the network lab up by hand: a public segment with pilot-rendezvous
# (198.51.100.1, registry :9000, beacon :9001) and two hosts, a and b, each
# behind its own router of the given NAT type. The topology and the
# nftables rules are those of tests/netlab/mod.rs, mirrored exactly (see
# scripts/netlab/lib.sh). Root only.
#
# Usage: scripts/netlab/up.sh [--nat-a none|full-cone|home|symmetric]
#                             [--nat-b none|full-cone|home|symmetric]
#                             [--daemons]
#   --daemons  also start a pilot daemon on each host (and print addresses)
#
# Prints the lab's prefix, its namespaces and how to run pilotctl inside
# them; the last line is `PREFIX=<prefix>` for scripts. Each run gets a
# unique prefix (several labs can be up at once); stale leftovers of earlier
# runs (a dead rendezvous, a half-built lab) are swept first. Remove with
# scripts/netlab/down.sh [PREFIX] (all labs when no prefix is given).
# Binaries: $PILOT_BIN_DIR, else target/release, target/debug, $PATH.
set -euo pipefail
# shellcheck source=scripts/netlab/lib.sh
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

nat_a=home
nat_b=home
daemons=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nat-a) [ $# -ge 2 ] || usage; nat_a=$(nl_nat_name "$2") || usage; shift 2 ;;
    --nat-b) [ $# -ge 2 ] || usage; nat_b=$(nl_nat_name "$2") || usage; shift 2 ;;
    --daemons) daemons=1; shift ;;
    -h | --help) usage ;;
    *) echo "up.sh: unknown argument: $1" >&2; usage ;;
  esac
done

if ! why=$(nl_available); then
  nl_die "$why"
fi
bin=$(nl_bin_dir) || nl_die "no pilotctl/pilot-rendezvous found (cargo build --release, or set PILOT_BIN_DIR)"

nl_sweep_stale

prefix="pls$$r$RANDOM"
state="$NL_STATE/$prefix"
mkdir -p "$state"
# A failure half-way removes what was built.
built=0
trap '[ "$built" = 1 ] || nl_destroy_lab "$prefix"' EXIT

nl_public "$prefix"
rdv_pid=$(nl_start_rendezvous "$prefix" "$bin" "$state")
echo "$rdv_pid" >"$state/rendezvous.pid"
nl_host "$prefix" 0 "$nat_a"
nl_host "$prefix" 1 "$nat_b"

i=0
for n in a b; do
  nat=$nat_a
  [ "$n" = b ] && nat=$nat_b
  mkdir -p "$state/$n"
  cat >"$state/$n/pilotctl" <<EOF
#!/bin/sh
# pilotctl as node $n of lab $prefix (namespace $prefix-h$i).
exec ip netns exec $prefix-h$i env HOME=$state/$n $bin/pilotctl --socket $state/$n/pilot.sock "\$@"
EOF
  chmod +x "$state/$n/pilotctl"
  if [ "$daemons" = 1 ]; then
    nl_daemon_start "$prefix-h$i" "$state/$n" "$bin" >"$state/$n/start.json"
  fi
  i=$((i + 1))
done
built=1

echo "lab $prefix is up (state in $state)"
echo "  $prefix-pub   rendezvous $NL_REGISTRY (registry), $NL_BEACON (beacon), pid $rdv_pid"
i=0
for n in a b; do
  nat=$nat_a
  [ "$n" = b ] && nat=$nat_b
  line="  $prefix-h$i    host $n $(nl_host_ip "$i" "$nat"), NAT $nat"
  if [ "$nat" != none ]; then
    line="$line behind router $prefix-r$i (public $(nl_public_ip "$i"))"
  fi
  echo "$line"
  if [ "$daemons" = 1 ]; then
    addr=$(sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' "$state/$n/start.json" | head -n 1)
    echo "    daemon up, address $addr"
  fi
  i=$((i + 1))
done
cat <<EOF
pilotctl as node a / b (HOME and socket in $state/a, $state/b):
  $state/a/pilotctl info
  $state/b/pilotctl info
EOF
if [ "$daemons" = 0 ]; then
  cat <<EOF
start the daemons with
  $state/a/pilotctl daemon start --registry $NL_REGISTRY --beacon $NL_BEACON --heartbeat 1s --email lab@example.invalid --public
  (the same with b), then e.g. $state/a/pilotctl ping <b's address>
EOF
fi
echo "any command inside a namespace: ip netns exec $prefix-h0 <command>"
echo "remove: $(dirname "$0")/down.sh $prefix"
echo "PREFIX=$prefix"
