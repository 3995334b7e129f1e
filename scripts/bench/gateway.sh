#!/usr/bin/env bash
# Gateway benchmarks in one sitting on one machine (BENCHMARKS.md -> Gateway).
# One HTTP server (Python, bodies sent with sendfile) serves a SIZE_MB file
# (random bytes in /dev/shm); the same bytes are fetched
#   1. by curl through pilot-gateway (http://10.4.0.1/, TUN + smoltcp +
#      overlay stream + `pilotctl expose` on the serving node),
#   2. by curl through `pilotctl forward` (no root; local TCP port),
#   3. by `pilotctl connect` (the overlay stream alone: a raw HTTP request on
#      stdin, the reply to /dev/null),
#   4. by curl straight to the server (no overlay),
#   5. by curl across userspace WireGuard (boringtun-cli with `wg`, two
#      network namespaces joined by a veth pair, MTU 1420),
# then the time to first byte of a small GET through each (median of TTFB_N
# fresh connections), then CONC concurrent connections through the gateway
# (all open at once, then each does one GET; every one must succeed).
#
# Release build. Needs root (TUN devices, network namespaces), curl,
# python3, ip, wg (Debian: wireguard-tools) and boringtun-cli
# (`cargo install --locked boringtun-cli`). Everything runs in three network
# namespaces of this run (pgb<pid>m: the overlay, gateway and direct
# server on its loopback; pgb<pid>a / pgb<pid>b: WireGuard), so no traffic
# leaves them and nothing collides with the host's routes; all of it is
# removed on exit and on Ctrl-C.
#
# Usage: sudo scripts/bench/gateway.sh     (env: SIZE_MB, TTFB_N, CONC)
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE_MB=${SIZE_MB:-1024}
TTFB_N=${TTFB_N:-200}
CONC=${CONC:-1000}

[ "$(id -u)" = 0 ] || { echo "error: needs root (TUN devices, network namespaces): sudo $0" >&2; exit 1; }
PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
for tool in curl python3 ip wg boringtun-cli; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is needed (apt-get install curl python3 iproute2 wireguard-tools; cargo install --locked boringtun-cli)" >&2
    exit 1
  }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release)"
cargo build --release --quiet --bins
BIN=$(realpath "${CARGO_TARGET_DIR:-target}")/release

# Names unique to this run (interface names stay within 15 characters).
ID=pgb$$
NSM=${ID}m
NSA=${ID}a
NSB=${ID}b
work=$(mktemp -d)
src_dir=/dev/shm
[ -w "$src_dir" ] || src_dir=$work
SRC=$src_dir/$ID.bin
pids=()
cleanup() {
  trap - EXIT INT TERM
  set +e
  if [ -S "$work/gw.sock" ]; then
    HOME=$work/a "$BIN/pilot-gateway" --control "$work/gw.sock" stop >/dev/null 2>&1
  fi
  for n in a b; do
    [ -S "$work/$n.sock" ] && HOME=$work/$n "$BIN/pilotctl" --socket "$work/$n.sock" daemon stop >/dev/null 2>&1
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  # what ran through `inm ... &` is a subshell's child: end everything
  # left in the run's namespaces before removing them
  for ns in "$NSM" "$NSA" "$NSB"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -f "/var/run/wireguard/${ID}wa.sock" "/var/run/wireguard/${ID}wb.sock"
  rm -rf "$work" "$SRC"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

now() { date +%s.%N; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
inm() { ip netns exec "$NSM" "$@"; }
ctl() { local n=$1; shift; HOME="$work/$n" inm "$BIN/pilotctl" --socket "$work/$n.sock" "$@"; }
free_port() { inm python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_tcp() { # NS HOST PORT
  for _ in $(seq 100); do
    ip netns exec "$1" python3 -c "import socket,sys; socket.create_connection(('$2',$3),1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: nothing answers on $2:$3 in $1" >&2
  return 1
}

cat >"$work/server.py" <<'PY'
# HTTP/1.1 server: "/" is a small page, "/file/NAME" a file of ROOT sent
# with sendfile (so the server is never the slow part).
import os, sys, http.server, socketserver
root = sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/":
            body = b"hello from beta\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        path = os.path.join(root, os.path.basename(self.path))
        if not self.path.startswith("/file/") or not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            off = 0
            while off < size:
                n = os.sendfile(self.connection.fileno(), f.fileno(), off, size - off)
                if n == 0:
                    break
                off += n
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
PY

cat >"$work/conc.py" <<'PY'
# CONC connections to HOST:PORT, all open at once (each waits for the
# others before sending), then one GET each; prints "ok failed secs" and
# the first few errors on stderr.
import asyncio, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    opened = 0
    all_open = asyncio.Event()
    errors = []
    async def one(i):
        nonlocal opened
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 60)
        except Exception as e:
            errors.append(f"connect {i}: {e!r}")
            opened += 1
            if opened == n: all_open.set()
            return False
        opened += 1
        if opened == n: all_open.set()
        try:
            await asyncio.wait_for(all_open.wait(), 120)
            w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            data = await asyncio.wait_for(r.read(), 60)
            w.close()
            if data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n")[0] and data.endswith(b"hello from beta\n"):
                return True
            errors.append(f"reply {i}: {data[:80]!r}")
        except Exception as e:
            errors.append(f"request {i}: {e!r}")
        return False
    t0 = time.monotonic()
    res = await asyncio.gather(*(one(i) for i in range(n)))
    ok = sum(res)
    print(ok, n - ok, round(time.monotonic() - t0, 2))
    for e in errors[:5]: print(e, file=sys.stderr)
asyncio.run(main())
PY

cat >"$work/first_byte.py" <<'PY'
# Time to first byte of `pilotctl connect` (process start included): runs
# ARGV N times with an HTTP request as --message, prints the median in ms.
import subprocess, sys, time, statistics
n, cmd = int(sys.argv[1]), sys.argv[2:]
ts = []
for _ in range(n):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = p.stdout.read(1)
    t1 = time.monotonic()
    p.stdout.read()
    p.wait()
    if first == b"H":
        ts.append((t1 - t0) * 1e3)
print(round(statistics.median(ts), 3) if ts else "nan", len(ts))
PY

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== machine: $(nproc) cores, load average $(load)"
LOAD_START=$(load)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=
if git status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then DIRTY=+dirty; fi

echo "== namespaces $NSM (overlay), $NSA / $NSB (WireGuard)"
for ns in "$NSM" "$NSA" "$NSB"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done

echo "== data: ${SIZE_MB} MiB of random bytes in $src_dir"
head -c "${SIZE_MB}M" /dev/urandom >"$SRC"
SIZE=$((SIZE_MB * 1048576))

# --- the overlay: a rendezvous, two daemons, the server exposed on b:80 ---
HTTP_PORT=$(free_port)
inm python3 "$work/server.py" 127.0.0.1 "$HTTP_PORT" "$src_dir" >/dev/null 2>&1 &
pids+=($!)
REG=127.0.0.1:$(free_port)
BEA=127.0.0.1:$(free_port)
inm "$BIN/pilot-rendezvous" --registry-addr "$REG" --beacon-addr "$BEA" --memory >"$work/rdv.log" 2>&1 &
pids+=($!)
wait_tcp "$NSM" 127.0.0.1 "${REG#*:}"
wait_tcp "$NSM" 127.0.0.1 "$HTTP_PORT"
for n in a b; do
  mkdir -p "$work/$n"
  ctl "$n" daemon start --registry "$REG" --beacon "$BEA" --public --hostname "bench-$n" \
    --daemon-arg=--syn-rate-limit=1000000 --daemon-arg=--syn-rate-per-source=1000000 \
    --daemon-arg=--max-conns-per-port=1000000 --daemon-arg=--log-level=warn >/dev/null
done
B_ADDR=$(ctl b --json info | json 'd["data"]["address"]')
ctl b expose 80 --to "127.0.0.1:$HTTP_PORT" >/dev/null
ctl a ping "$B_ADDR" --count 1 >/dev/null

# --- the gateway (default subnet: b becomes 10.4.0.1) and forward ---
HOME=$work/a inm "$BIN/pilot-gateway" --socket "$work/a.sock" --control "$work/gw.sock" \
  start --device "${ID}g" --state "$work/gw.json" "$B_ADDR" >/dev/null
GW_IP=10.4.0.1
FWD_PORT=$(free_port)
ctl a forward "127.0.0.1:$FWD_PORT" "$B_ADDR:80" >"$work/forward.log" 2>&1 &
pids+=($!)
wait_tcp "$NSM" 127.0.0.1 "$FWD_PORT"

# --- userspace WireGuard between $NSA (client) and $NSB (server) ---
ip link add "${ID}va" netns "$NSA" type veth peer name "${ID}vb" netns "$NSB"
ip -n "$NSA" addr add 192.168.239.1/24 dev "${ID}va"
ip -n "$NSB" addr add 192.168.239.2/24 dev "${ID}vb"
ip -n "$NSA" link set "${ID}va" up
ip -n "$NSB" link set "${ID}vb" up
wg genkey >"$work/wa.key"
wg genkey >"$work/wb.key"
WA_PUB=$(wg pubkey <"$work/wa.key")
WB_PUB=$(wg pubkey <"$work/wb.key")
for side in a b; do
  ns=$NSA; [ "$side" = b ] && ns=$NSB
  WG_SUDO=1 ip netns exec "$ns" boringtun-cli --foreground --disable-drop-privileges \
    "${ID}w$side" >"$work/boringtun-$side.log" 2>&1 &
  pids+=($!)
done
for side in a b; do
  for _ in $(seq 100); do [ -S "/var/run/wireguard/${ID}w$side.sock" ] && break; sleep 0.1; done
done
ip netns exec "$NSA" wg set "${ID}wa" private-key "$work/wa.key" listen-port 51820 \
  peer "$WB_PUB" endpoint 192.168.239.2:51820 allowed-ips 10.239.0.2/32
ip netns exec "$NSB" wg set "${ID}wb" private-key "$work/wb.key" listen-port 51820 \
  peer "$WA_PUB" endpoint 192.168.239.1:51820 allowed-ips 10.239.0.1/32
ip -n "$NSA" addr add 10.239.0.1/24 dev "${ID}wa"
ip -n "$NSB" addr add 10.239.0.2/24 dev "${ID}wb"
ip -n "$NSA" link set "${ID}wa" mtu 1420 up
ip -n "$NSB" link set "${ID}wb" mtu 1420 up
ip netns exec "$NSB" python3 "$work/server.py" 10.239.0.2 8080 "$src_dir" >/dev/null 2>&1 &
pids+=($!)
wait_tcp "$NSA" 10.239.0.2 8080

# --- throughput: SIZE_MB one way, each path ---
NAME=$(basename "$SRC")
get() { # NS URL -> "MB/s" (checks the byte count)
  local out
  out=$(ip netns exec "$1" curl -sS --noproxy '*' -o /dev/null -m 600 -w '%{size_download} %{time_total}' "$2")
  read -r bytes secs <<<"$out"
  [ "$bytes" = "$SIZE" ] || { echo "error: $2 gave $bytes bytes, not $SIZE" >&2; exit 1; }
  python3 -c "print(round($bytes/$secs/1e6, 1))"
}
declare -A TP TTFB LOADS
for path in direct gateway forward connect wireguard; do
  echo "== ${SIZE_MB} MiB: $path"
  LOADS[$path]=$(load)
  case $path in
    direct) TP[$path]=$(get "$NSM" "http://127.0.0.1:$HTTP_PORT/file/$NAME") ;;
    gateway) TP[$path]=$(get "$NSM" "http://$GW_IP/file/$NAME") ;;
    forward) TP[$path]=$(get "$NSM" "http://127.0.0.1:$FWD_PORT/file/$NAME") ;;
    wireguard) TP[$path]=$(get "$NSA" "http://10.239.0.2:8080/file/$NAME") ;;
    connect)
      # Timed into /dev/null as curl's output is; the byte count is checked
      # by a second, untimed run through `wc -c`.
      req=$'GET /file/'"$NAME"$' HTTP/1.0\r\nHost: b\r\n\r\n'
      t0=$(now)
      ctl a connect "$B_ADDR" 80 --linger 5s --message "$req" >/dev/null
      t1=$(now)
      got=$(ctl a connect "$B_ADDR" 80 --linger 5s --message "$req" | wc -c)
      # The reply is the HTTP header, the body and the newline pilotctl adds.
      if [ "$got" -le "$SIZE" ] || [ "$got" -ge $((SIZE + 200)) ]; then
        echo "error: connect gave $got bytes for a $SIZE-byte body" >&2
        exit 1
      fi
      TP[$path]=$(python3 -c "print(round($SIZE/($t1-$t0)/1e6, 1))")
      ;;
  esac
  echo "   ${TP[$path]} MB/s (load ${LOADS[$path]})"
done

# --- time to first byte of a small GET (median of TTFB_N) ---
ttfb() { # NS URL -> median ms
  local ns=$1 url=$2
  for _ in $(seq "$TTFB_N"); do
    ip netns exec "$ns" curl -sS --noproxy '*' -o /dev/null -m 20 -w '%{time_starttransfer}\n' "$url"
  done | python3 -c "import sys,statistics; v=[float(x)*1e3 for x in sys.stdin]; print(round(statistics.median(v),3))"
}
for path in direct gateway forward connect wireguard; do
  echo "== first byte of a small GET, median of $TTFB_N: $path"
  case $path in
    direct) TTFB[$path]=$(ttfb "$NSM" "http://127.0.0.1:$HTTP_PORT/") ;;
    gateway) TTFB[$path]=$(ttfb "$NSM" "http://$GW_IP/") ;;
    forward) TTFB[$path]=$(ttfb "$NSM" "http://127.0.0.1:$FWD_PORT/") ;;
    wireguard) TTFB[$path]=$(ttfb "$NSA" "http://10.239.0.2:8080/") ;;
    connect)
      read -r TTFB[$path] _ < <(HOME=$work/a inm python3 "$work/first_byte.py" "$TTFB_N" \
        "$BIN/pilotctl" --socket "$work/a.sock" connect "$B_ADDR" 80 --linger 100ms \
        --message $'GET / HTTP/1.0\r\nHost: b\r\n\r\n')
      ;;
  esac
  echo "   ${TTFB[$path]} ms"
done

echo "== $CONC concurrent connections through the gateway"
LOAD_CONC=$(load)
read -r C_OK C_FAIL C_SECS < <(inm python3 "$work/conc.py" "$GW_IP" 80 "$CONC" 2>"$work/conc.err")
cat "$work/conc.err" >&2
LOAD_END=$(load)

python3 - "$SIZE_MB" "$COMMIT$DIRTY" "$LOAD_START" "$LOAD_END" "$LOAD_CONC" "$TTFB_N" \
  "$C_OK" "$C_FAIL" "$C_SECS" \
  "${TP[direct]}" "${TP[gateway]}" "${TP[forward]}" "${TP[connect]}" "${TP[wireguard]}" \
  "${TTFB[direct]}" "${TTFB[gateway]}" "${TTFB[forward]}" "${TTFB[connect]}" "${TTFB[wireguard]}" \
  "${LOADS[direct]}" "${LOADS[gateway]}" "${LOADS[forward]}" "${LOADS[connect]}" "${LOADS[wireguard]}" <<'PY'
import sys, datetime
a = sys.argv[1:]
size, commit, l0, l1, lc, n = a[0], a[1], a[2], a[3], a[4], a[5]
ok, fail, secs = int(a[6]), int(a[7]), a[8]
paths = ["direct", "gateway", "forward", "connect", "wireguard"]
tp = dict(zip(paths, map(float, a[9:14])))
fb = dict(zip(paths, map(float, a[14:19])))
ld = dict(zip(paths, a[19:24]))
label = {
    "direct": "direct curl, no overlay",
    "gateway": "curl through pilot-gateway (10.4.0.1)",
    "forward": "curl through `pilotctl forward`",
    "connect": "`pilotctl connect` (stream alone)",
    "wireguard": "curl across boringtun (WireGuard, MTU 1420)",
}
print()
print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
      f"load average {l0} at start, {l1} at end")
print()
print(f"| path | {size} MiB | load (1/5/15 min) | first byte, median of {n} |")
print("|---|---|---|---|")
for p in paths:
    extra = " (process start included)" if p == "connect" else ""
    print(f"| {label[p]} | {tp[p]:.1f} MB/s | {ld[p]} | {fb[p]:.3f} ms{extra} |")
print()
g, s, w = tp["gateway"], tp["connect"], tp["wireguard"]
d = fb["gateway"] - fb["direct"]
yes = lambda c: "met" if c else "MISSED"
print("| goal | figure | |")
print("|---|---|---|")
print(f"| gateway >= 60 % of the stream (connect) | {100*g/s:.1f} % | {yes(g >= 0.6*s)} |")
print(f"| gateway above boringtun | {g:.1f} vs {w:.1f} MB/s ({g/w:.2f}x) | {yes(g > w)} |")
print(f"| gateway first byte within 1 ms of direct | +{d:.3f} ms | {yes(d <= 1.0)} |")
print(f"| {ok+fail} concurrent connections through the gateway, zero failures | {ok} ok, {fail} failed in {secs} s (load {lc}) | {yes(fail == 0 and ok > 0)} |")
PY
