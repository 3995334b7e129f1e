#!/usr/bin/env bash
# Pilot Protocol's main job in one command: two agents find each other through
# a rendezvous, trust each other, and one reaches a plain HTTP service of the
# other through the overlay; then a message lands in the other's inbox.
#
#   scripts/quickstart.sh            as root: network namespaces behind NATs,
#                                    the gateway on alpha (curl http://10.4.0.1/);
#                                    otherwise: loopback, with `pilotctl forward`
#   scripts/quickstart.sh --loopback force the no-root variant
#   scripts/quickstart.sh --keep     leave everything running (Ctrl-C cleans up)
#
# It builds what it needs (cargo build --bins; set PILOT_BIN_DIR to use
# binaries built elsewhere), prints each command as it runs it, and removes
# every process, namespace and temporary file it made on exit, Ctrl-C
# included. Needs python3 (the demo HTTP service) and curl.
#
# PILOT_QUICKSTART_ALLOW_MISSING=1 skips, with a note, the steps whose
# commands this build does not have yet (trust handshake, send-message,
# expose, forward, gateway) instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=auto
keep=0
for a in "$@"; do
  case "$a" in
    --loopback) mode=loopback ;;
    --netns) mode=netns ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$mode" = auto ]; then
  if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1; then
    mode=netns
  else
    mode=loopback
  fi
fi
allow_missing="${PILOT_QUICKSTART_ALLOW_MISSING:-0}"

if [ -t 1 ]; then bold=$'\033[1m'; plain=$'\033[0m'; else bold=""; plain=""; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
say() { printf '    %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (Debian: apt-get install $tool)"
done

# --- binaries ---------------------------------------------------------------
if [ -n "${PILOT_BIN_DIR:-}" ]; then
  bin="$(cd "$PILOT_BIN_DIR" && pwd)"
else
  step "building (cargo build --bins; a few minutes the first time)"
  cargo build --bins --quiet
  bin="$(pwd)/${CARGO_TARGET_DIR:-target}/debug"
fi
for b in pilotctl pilot-daemon pilot-rendezvous; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing"
done

# --- cleanup, also on Ctrl-C --------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/pilot-quickstart.XXXXXX")"
ns_prefix="pq$$"
namespaces=()
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  step "cleaning up"
  for n in alpha beta; do
    if [ -S "$work/$n/pilot.sock" ]; then
      "$bin/pilotctl" --socket "$work/$n/pilot.sock" daemon stop >/dev/null 2>&1 || true
    fi
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do
    # only processes this script started live in its namespaces
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
  say "done"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in a node's namespace (netns mode) or here (loopback).
in_ns() {
  local ns="$1"; shift
  if [ "$mode" = netns ]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

# The same in the background, remembering the process for cleanup. (Not
# `in_ns ... &`: that backgrounds a subshell, and killing the subshell
# leaves the command itself running.)
bg_in_ns() {
  local ns="$1"; shift
  if [ "$mode" = netns ]; then ip netns exec "$ns" "$@" & else "$@" & fi
  pids+=($!)
}

# `pilotctl` for node $1 (alpha|beta): its own HOME and socket, shown as run.
ctl() {
  local n="$1"; shift
  printf '    $ %s: pilotctl %s\n' "$n" "$*"
  HOME="$work/$n" in_ns "${node_ns[$n]}" "$bin/pilotctl" --socket "$work/$n/pilot.sock" "$@"
}
ctl_quiet() {
  local n="$1"; shift
  HOME="$work/$n" in_ns "${node_ns[$n]}" "$bin/pilotctl" --socket "$work/$n/pilot.sock" "$@"
}

# True when node $1's `pilotctl $2` prints a line containing $3.
ctl_shows() { ctl_quiet "$1" "$2" | grep -qF -- "$3"; }

# True when this build's pilotctl has the command (clap exits 2 otherwise).
have() { "$bin/pilotctl" "$1" --help >/dev/null 2>&1; }
missing() {
  local what="$1" issue="$2"
  if [ "$allow_missing" = 1 ]; then
    say "SKIPPED: $what is not in this build yet (issue $issue)"
    return 0
  fi
  die "$what is not in this build yet (issue $issue); PILOT_QUICKSTART_ALLOW_MISSING=1 skips it"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Polls "$@" every 0.2 s for up to $1 seconds.
wait_for() {
  local secs="$1"; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.2
  done
}

# --- the network ----------------------------------------------------------------
declare -A node_ns=([alpha]="" [beta]="")
if [ "$mode" = netns ]; then
  step "building a small internet: a public segment and two home routers doing NAT"
  pub="${ns_prefix}pub"; ra="${ns_prefix}ra"; rb="${ns_prefix}rb"; ha="${ns_prefix}ha"; hb="${ns_prefix}hb"
  for ns in "$pub" "$ra" "$rb" "$ha" "$hb"; do ip netns add "$ns"; namespaces+=("$ns"); done
  node_ns=([alpha]="$ha" [beta]="$hb")
  link() { # link NS1 IF1 ADDR1 NS2 IF2 ADDR2
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3" dev "$2"; ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
  }
  link "$pub" pa 198.51.100.1/30 "$ra" wan 198.51.100.2/30
  link "$pub" pb 198.51.100.5/30 "$rb" wan 198.51.100.6/30
  link "$ra" lan 192.168.1.1/24 "$ha" eth0 192.168.1.2/24
  link "$rb" lan 192.168.2.1/24 "$hb" eth0 192.168.2.2/24
  for ns in "$pub" "$ra" "$rb" "$ha" "$hb"; do ip -n "$ns" link set lo up; done
  for ns in "$pub" "$ra" "$rb"; do ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1; done
  ip -n "$ra" route add default via 198.51.100.1
  ip -n "$rb" route add default via 198.51.100.5
  ip -n "$ha" route add default via 192.168.1.1
  ip -n "$hb" route add default via 192.168.2.1
  for r in "$ra" "$rb"; do
    ip netns exec "$r" nft -f - <<'NFT'
table ip nat {
  chain prerouting { type nat hook prerouting priority dstnat; }
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" masquerade; }
}
NFT
  done
  say "alpha 192.168.1.2 behind NAT 198.51.100.2; beta 192.168.2.2 behind NAT 198.51.100.6"
  say "rendezvous on the public segment at 198.51.100.1"
  registry=198.51.100.1:9000
  beacon=198.51.100.1:9001
  rdv_ns="$pub"
else
  step "running everything on this machine's loopback (no root needed)"
  registry="127.0.0.1:$(free_port)"
  beacon="127.0.0.1:$(free_port)"
  rdv_ns=""
fi

# --- rendezvous and two nodes ------------------------------------------------------
step "starting a rendezvous server (registry $registry, beacon $beacon)"
say "\$ pilot-rendezvous --registry-addr $registry --beacon-addr $beacon --memory"
bg_in_ns "$rdv_ns" "$bin/pilot-rendezvous" --registry-addr "$registry" --beacon-addr "$beacon" \
  --memory >"$work/rendezvous.log" 2>&1
wait_for 10 in_ns "$rdv_ns" bash -c "exec 3<>/dev/tcp/${registry%:*}/${registry#*:}" ||
  die "the rendezvous did not start: $(cat "$work/rendezvous.log")"

declare -A addr
for n in alpha beta; do
  step "starting node $n (its own HOME and socket: $work/$n)"
  mkdir -p "$work/$n"
  ctl "$n" daemon start --registry "$registry" --beacon "$beacon" --hostname "$n"
  addr[$n]="$(ctl_quiet "$n" --json info | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["address"])')"
done
say "alpha is ${addr[alpha]}, beta is ${addr[beta]}"

# --- trust ------------------------------------------------------------------------------
step "alpha asks beta for trust; beta approves (nodes are private by default)"
if have handshake && have approve && have trust; then
  ctl alpha handshake "${addr[beta]}" "quickstart demo"
  wait_for 10 ctl_shows beta pending "${addr[alpha]}" ||
    die "beta never saw alpha's request"
  ctl beta pending
  ctl beta approve "${addr[alpha]}"
  wait_for 10 ctl_shows alpha trust "${addr[beta]}" ||
    die "alpha never learned that beta trusts it"
  ctl alpha trust
else
  missing "the trust handshake (pilotctl handshake/pending/approve/trust)" 7
  # Without trust, private nodes refuse each other: go public for the rest.
  for n in alpha beta; do
    ctl_quiet "$n" daemon stop >/dev/null
    ctl "$n" daemon start --public >/dev/null
  done
  say "(both nodes restarted with --public instead)"
fi

step "alpha pings beta through the overlay"
ctl alpha ping "${addr[beta]}" --count 3 --interval 200ms
ctl alpha peers

# --- an HTTP service on beta, reached from alpha ----------------------------------------
step "beta runs a plain HTTP service on its own machine (python3 -m http.server)"
mkdir -p "$work/site"
echo "hello from beta, through Pilot Protocol" >"$work/site/index.html"
http_port="$(free_port)"
say "\$ beta: python3 -m http.server $http_port --bind 127.0.0.1"
bg_in_ns "${node_ns[beta]}" python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/site" \
  >"$work/http.log" 2>&1
wait_for 10 in_ns "${node_ns[beta]}" curl -sf "http://127.0.0.1:$http_port/" || die "the HTTP service did not start"

step "beta exposes it on its virtual port 80"
if have expose; then
  ctl beta expose 80 --to "127.0.0.1:$http_port"
  exposed=1
else
  missing "pilotctl expose" 8
  exposed=0
fi

url=""
if [ "$exposed" = 1 ]; then
  if [ "$mode" = netns ] && [ -x "$bin/pilot-gateway" ]; then
    step "alpha runs the gateway: beta becomes 10.4.0.1 on alpha's machine"
    say "\$ alpha: pilot-gateway start --ports 80 ${addr[beta]}"
    # in the foreground under this script, so cleanup stops it like the rest
    HOME="$work/alpha" bg_in_ns "${node_ns[alpha]}" \
      "$bin/pilot-gateway" --socket "$work/alpha/pilot.sock" start --foreground \
      --device "pqgw$$" --ports 80 "${addr[beta]}" >"$work/gateway.log" 2>&1
    url="http://10.4.0.1/"
    wait_for 15 in_ns "${node_ns[alpha]}" curl -sf --max-time 3 "$url" ||
      die "the gateway did not come up: $(tail -n 5 "$work/gateway.log")"
  elif have forward; then
    step "alpha forwards a local TCP port to beta's port 80 (no root needed)"
    lport="$(free_port)"
    say "\$ alpha: pilotctl forward 127.0.0.1:$lport ${addr[beta]}:80"
    HOME="$work/alpha" bg_in_ns "${node_ns[alpha]}" "$bin/pilotctl" --socket "$work/alpha/pilot.sock" \
      forward "127.0.0.1:$lport" "${addr[beta]}:80" >"$work/forward.log" 2>&1
    url="http://127.0.0.1:$lport/"
    wait_for 15 in_ns "${node_ns[alpha]}" curl -sf --max-time 3 "$url" ||
      die "forward did not come up: $(tail -n 5 "$work/forward.log")"
  else
    if [ "$mode" = netns ]; then missing "pilot-gateway" 8; else missing "pilotctl forward" 8; fi
  fi
fi
if [ -n "$url" ]; then
  step "alpha fetches beta's page with plain curl"
  say "\$ alpha: curl $url"
  in_ns "${node_ns[alpha]}" curl -sS --max-time 10 "$url" | sed 's/^/    /'
else
  step "alpha talks to beta's echo service over a stream instead"
  ctl alpha connect "${addr[beta]}" 7 --message "hello from alpha, through Pilot Protocol"
fi

# --- a message into beta's inbox -----------------------------------------------------------
step "alpha sends beta a message; it lands in beta's inbox"
if have send-message && have inbox; then
  ctl alpha send-message "${addr[beta]}" --data "hi beta, this is alpha"
  wait_for 10 ctl_shows beta inbox "hi beta" ||
    die "the message did not reach beta's inbox"
  ctl beta inbox
else
  missing "pilotctl send-message/inbox" 7
fi

step "quickstart complete"
say "every step above was a plain pilotctl command; see README.md for the tour"
if [ "$keep" = 1 ]; then
  say "--keep: everything stays up; Ctrl-C cleans up. Try:"
  say "  HOME=$work/alpha pilotctl --socket $work/alpha/pilot.sock peers"
  # `wait` (unlike a foreground sleep) lets the INT/TERM trap run at once
  sleep infinity &
  pids+=($!)
  wait $!
fi
