# shellcheck shell=bash
# The network lab's topology in shell (../shared/design/NETLAB.md), sourced
# by scripts/netlab/up.sh, down.sh and scripts/bench/netlab.sh.
#
# MIRRORS tests/netlab/mod.rs EXACTLY: the same address plan, the same
# namespace and interface names (after the prefix), and the same nftables
# rules per NAT type (`Lab::set_nat`). When one changes, change the other.
#
#            ns <p>-pub: bridge br0 198.51.100.1/24, pilot-rendezvous
#              |                         |
#   ns <p>-r<i> wan0 198.51.100.(10+i)   (one router per host; "none" puts
#   ns <p>-r<i> lan0 10.<i>.0.1/24        the host straight on the bridge)
#              |
#   ns <p>-h<i> eth0 10.<i>.0.2/24
#
# Prefixes (so nothing collides with the Rust harness's `pnl<pid>x<n>`,
# whose sweep deletes any `pnl*` lab of a dead process):
#   pls<pid>r<rand>  labs made by up.sh, which outlive up.sh; state (pids,
#                    HOMEs, logs) in $NL_STATE/<prefix>/
#   pnb<pid>         labs of scripts/bench/netlab.sh, alive while it runs
# Veths are created inside their namespaces: no names in the root namespace,
# no rules outside the lab's namespaces.

NL_RDV_IP=198.51.100.1
NL_REGISTRY=198.51.100.1:9000
NL_BEACON=198.51.100.1:9001
NL_STATE=${NL_STATE:-/run/pilot-netlab}

nl_die() {
  echo "netlab: $*" >&2
  exit 1
}

# Prints why the lab cannot run here (and returns 1), like `available()`.
nl_available() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "the network lab needs root (network namespaces, nftables)"
    return 1
  fi
  local tool
  for tool in ip nft conntrack tc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "the network lab needs \`$tool\` (Debian: iproute2, nftables, conntrack)"
      return 1
    fi
  done
}

# none | full-cone | fullcone | home | symmetric -> the harness's names.
nl_nat_name() {
  case "$1" in
    none) echo none ;;
    full-cone | fullcone | full_cone) echo fullcone ;;
    home) echo home ;;
    symmetric | sym) echo symmetric ;;
    *) return 1 ;;
  esac
}

nl_eim() { [ "$1" != symmetric ]; }
nl_eif() { [ "$1" = none ] || [ "$1" = fullcone ]; }

# Finds pilotctl / pilot-rendezvous / pilot-daemon: $PILOT_BIN_DIR, then the
# release and debug builds of this checkout, then $PATH.
nl_bin_dir() {
  local root d
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  for d in "${PILOT_BIN_DIR:-}" "$root/target/release" "$root/target/debug"; do
    if [ -n "$d" ] && [ -x "$d/pilotctl" ] && [ -x "$d/pilot-rendezvous" ]; then
      echo "$d"
      return 0
    fi
  done
  if command -v pilotctl >/dev/null 2>&1 && command -v pilot-rendezvous >/dev/null 2>&1; then
    dirname "$(command -v pilotctl)"
    return 0
  fi
  return 1
}

# Kills every process in namespace $1 and deletes it (`destroy_ns`).
nl_destroy_ns() {
  local pid
  for pid in $(ip netns pids "$1" 2>/dev/null); do
    kill -9 "$pid" 2>/dev/null || true
  done
  ip netns del "$1" 2>/dev/null || true
}

# Every namespace whose name starts with "$1-".
nl_namespaces() {
  ip netns list 2>/dev/null | awk -v p="$1-" 'index($1, p) == 1 { print $1 }'
}

# Removes lab $1: its processes, namespaces and state.
nl_destroy_lab() {
  local ns
  for ns in $(nl_namespaces "$1" | sort -r); do
    nl_destroy_ns "$ns"
  done
  rm -rf "${NL_STATE:?}/$1"
}

# Prefixes of all script and bench labs present (namespaces or state).
nl_all_labs() {
  {
    ip netns list 2>/dev/null | awk '{ print $1 }' | sed -n 's/^\(pls[0-9]*r[0-9]*\)-.*/\1/p; s/^\(pnb[0-9]*\)-.*/\1/p'
    if [ -d "$NL_STATE" ]; then
      find "$NL_STATE" -mindepth 1 -maxdepth 1 -type d -name 'pls*' -printf '%f\n'
    fi
  } | sort -u
}

# Whether lab $1 is alive: a bench lab while its script runs, an up.sh lab
# while its rendezvous runs (anything else is a leftover of a crash or of a
# half-built lab).
nl_lab_alive() {
  local p=$1 pid
  case "$p" in
    pnb*)
      pid=${p#pnb}
      [ -n "$pid" ] && [ -d "/proc/$pid" ]
      ;;
    pls*)
      [ -f "$NL_STATE/$p/rendezvous.pid" ] || return 1
      pid=$(cat "$NL_STATE/$p/rendezvous.pid")
      [ -n "$pid" ] && [ -d "/proc/$pid" ] &&
        ip netns identify "$pid" 2>/dev/null | grep -qx "$p-pub"
      ;;
    *) return 1 ;;
  esac
}

# Deletes stale labs (see nl_lab_alive); prints what it removed.
nl_sweep_stale() {
  local p
  for p in $(nl_all_labs); do
    if ! nl_lab_alive "$p"; then
      echo "netlab: removing stale lab $p" >&2
      nl_destroy_lab "$p"
    fi
  done
}

nl_add_ns() {
  ip netns add "$1"
  ip -n "$1" link set lo up
}

# The public segment: namespace <p>-pub with bridge br0.
nl_public() {
  local pub="$1-pub"
  nl_add_ns "$pub"
  # A fixed address: an unset one follows the lowest port address and
  # changes as hosts are plugged in, which breaks the hosts' ARP entries.
  ip -n "$pub" link add br0 address 02:00:5e:10:00:01 type bridge
  ip -n "$pub" addr add "$NL_RDV_IP/24" dev br0
  ip -n "$pub" link set br0 up
}

# Connects namespace $2's new veth $3 to the public bridge of lab $1, as
# port p<index $4> (`plug_public`).
nl_plug_public() {
  local pub="$1-pub" ns=$2 inner=$3 outer="p$4"
  ip -n "$pub" link add "$outer" type veth peer name "$inner" netns "$ns"
  ip -n "$pub" link set "$outer" master br0
  ip -n "$pub" link set "$outer" up
  ip -n "$ns" link set "$inner" up
}

# nl_host PREFIX INDEX NAT: host <p>-h<i> behind router <p>-r<i> (`host`).
nl_host() {
  local p=$1 i=$2 nat=$3
  local public_ip="198.51.100.$((10 + i))" ns="$p-h$i" router="$p-r$i"
  nl_add_ns "$ns"
  if [ "$nat" = none ]; then
    nl_plug_public "$p" "$ns" eth0 "$i"
    ip -n "$ns" addr add "$public_ip/24" dev eth0
    return 0
  fi
  nl_add_ns "$router"
  nl_plug_public "$p" "$router" wan0 "$i"
  ip -n "$router" addr add "$public_ip/24" dev wan0
  ip -n "$router" link add lan0 type veth peer name eth0 netns "$ns"
  ip -n "$router" addr add "10.$i.0.1/24" dev lan0
  ip -n "$router" link set lan0 up
  ip -n "$ns" addr add "10.$i.0.2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "10.$i.0.1"
  ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
  nl_set_nat "$p" "$i" "$nat"
}

# Host i's own address and its public one.
nl_host_ip() { if [ "$2" = none ]; then echo "198.51.100.$((10 + $1))"; else echo "10.$1.0.2"; fi; }
nl_public_ip() { echo "198.51.100.$((10 + $1))"; }

# nl_set_nat PREFIX INDEX NAT: (re)installs the NAT on router <p>-r<i> and
# flushes its conntrack. The rule text is `Lab::set_nat`'s, character for
# character.
nl_set_nat() {
  local router="$1-r$2" nat=$3 wan_ip filter nat_rules
  wan_ip=$(nl_public_ip "$2")
  ip netns exec "$router" nft flush ruleset 2>/dev/null || true
  if nl_eif "$nat"; then
    filter=""
  else
    filter='table ip filter {
  chain forward { type filter hook forward priority filter; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" drop
  }
}'
  fi
  if nl_eim "$nat"; then
    nat_rules="table ip nat {
  map eim { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 10m; size 65535; }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept;
    iifname \"wan0\" meta l4proto udp dnat ip to udp dport map @eim
  }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan0\" meta l4proto udp update @eim { udp sport timeout 10m : ip saddr . udp sport }
    oifname \"wan0\" snat ip to $wan_ip
  }
}"
  else
    nat_rules='table ip nat {
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade random
  }
}'
  fi
  printf '%s\n%s\n' "$nat_rules" "$filter" | ip netns exec "$router" nft -f -
  ip netns exec "$router" conntrack -F >/dev/null 2>&1 || true
}

# nl_start_rendezvous PREFIX BINDIR DIR: starts pilot-rendezvous in
# <p>-pub (store and log in DIR), waits until it listens; prints its pid.
nl_start_rendezvous() {
  local pub="$1-pub" bin=$2 dir=$3 pid _
  ip netns exec "$pub" "$bin/pilot-rendezvous" --registry-addr "$NL_REGISTRY" \
    --beacon-addr "$NL_BEACON" --store "$dir/store.json" \
    </dev/null >>"$dir/rendezvous.log" 2>&1 &
  pid=$!
  disown "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    if ip netns exec "$pub" ss -ltnH 'sport = :9000' | grep -q 9000; then
      echo "$pid"
      return 0
    fi
    sleep 0.1
  done
  echo "netlab: the rendezvous did not start:" >&2
  cat "$dir/rendezvous.log" >&2
  return 1
}

# nl_ctl NS HOME BINDIR ARGS...: pilotctl as the node living in HOME.
nl_ctl() {
  local ns=$1 home=$2 bin=$3
  shift 3
  ip netns exec "$ns" env HOME="$home" "$bin/pilotctl" --socket "$home/pilot.sock" "$@"
}

# nl_daemon_start NS HOME BINDIR [extra args]: `Lab::start`'s daemon start
# (socket HOME/pilot.sock).
nl_daemon_start() {
  local ns=$1 home=$2 bin=$3
  shift 3
  mkdir -p "$home"
  ip netns exec "$ns" env HOME="$home" "$bin/pilotctl" --socket "$home/pilot.sock" \
    --json daemon start \
    --registry "$NL_REGISTRY" --beacon "$NL_BEACON" --heartbeat 1s \
    --email lab@example.invalid --public "$@"
}
