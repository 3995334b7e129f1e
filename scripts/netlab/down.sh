#!/usr/bin/env bash
# Removes network labs made by scripts/netlab/up.sh: every process inside
# their namespaces (daemons, rendezvous), the namespaces (and with them the
# veths, bridges and nftables rules, which exist nowhere else) and their
# state under /run/pilot-netlab.
#
# Usage: scripts/netlab/down.sh [PREFIX...]
#   without a prefix: every up.sh lab, and stale labs of dead bench runs
# (labs of a running scripts/bench/netlab.sh are left alone; it removes its
# own on exit).
set -euo pipefail
# shellcheck source=scripts/netlab/lib.sh
. "$(dirname "$0")/lib.sh"

if ! why=$(nl_available); then
  nl_die "$why"
fi

if [ $# -gt 0 ]; then
  labs=("$@")
else
  mapfile -t labs < <(nl_all_labs)
fi
for p in "${labs[@]}"; do
  case "$p" in
    pls* | pnb*) ;;
    *) nl_die "not a lab prefix: $p (pls... or pnb...)" ;;
  esac
  if [ $# -eq 0 ] && [[ "$p" == pnb* ]] && nl_lab_alive "$p"; then
    continue
  fi
  nl_destroy_lab "$p"
  echo "removed $p"
done
