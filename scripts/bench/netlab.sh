#!/usr/bin/env bash
# NAT traversal benchmarks in the network lab (BENCHMARKS.md -> NAT
# traversal). Root only. Release build. The lab is the one of
# tests/netlab/mod.rs, built by scripts/netlab/lib.sh (same rules); all
# traffic stays inside this script's own namespaces (prefix pnb<pid>), which
# are removed on exit, on error and on Ctrl-C.
#
# 1. Per NAT cell (dialler a x listener b, each of none, fullcone, home,
#    symmetric) and per run: fresh daemons (new identities, so every connect
#    is cold), the routers' NAT state reset (rules reinstalled, conntrack
#    flushed); then
#    - the base RTT a -> b's public address (ICMP, median of 3; the far
#      router answers for a host behind it),
#    - time to first byte: `pilotctl ping B --control --count 1` from a; the
#      daemon's own measure (registry resolve, punch, key exchange, first
#      answer) and the wall time of the command (+ process start, IPC),
#    - time to direct: from the daemon's start of that dial (the command's
#      return less the daemon's measure, so pilotctl's own start-up is not
#      counted) until both sides report `path: direct` (the later of the two
#      path changes, from `path_since_ms`, and never earlier than the first
#      byte); "-" where the pair must stay relayed (symmetric x
#      home/symmetric, see tests/nat_matrix.rs).
# 2. Goodput of one stream over a link with netem `delay 20ms loss 1%` on
#    a's uplink (egress), next to iperf3 (kernel TCP, CUBIC) over the same
#    link in the same run, alternating, in the cells of GOODPUT_CELLS (b
#    must be `none`: iperf3 needs an address that accepts TCP). Without
#    sch_netem (these VMs have none), a's packets to b go through NFQUEUE
#    (iptables, as the kernel has the xtables NFQUEUE target but no nft
#    `queue`) to a small user-space delayer (delay.py below: 20 ms, 1%
#    dropped); without that either, the loss is made by nftables
#    (`numgen random mod 100 < 1 drop`, TCP and UDP alike) as
#    tests/netlab/mod.rs does, and no delay is applied. The output says
#    which, with the ICMP RTT measured under it.
#
# Goals (issue 9): cold connect within 3 RTT + 10 ms; direct within 1 s at
# p95; goodput under 1% loss at least that of kernel TCP.
#
# Usage: sudo scripts/bench/netlab.sh
#        scripts/bench/netlab.sh --summary DIR   (tables of earlier results)
# Env: RUNS (20), CELLS (all 16; e.g. "none:none,symmetric:home"),
#      GOODPUT_CELLS ("none:none"; "" skips), GOODPUT_RUNS (3),
#      GOODPUT_MB (32), OUT (raw results, default target/netlab-bench/<time>),
#      SKIP_BUILD=1 (use target/release as it is), BENCH_BIN_DIR (use the
#      binaries there instead, e.g. a copy of an earlier release build; a
#      debug build only to try the script out, not for figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/netlab/lib.sh
. scripts/netlab/lib.sh

RUNS=${RUNS:-20}
CELLS=${CELLS:-}
GOODPUT_CELLS=${GOODPUT_CELLS-none:none}
GOODPUT_RUNS=${GOODPUT_RUNS:-3}
GOODPUT_MB=${GOODPUT_MB:-32}
OUT=${OUT:-target/netlab-bench/$(date -u +%Y%m%dT%H%M%SZ)}
NATS=(none fullcone home symmetric)

# The tables of BENCHMARKS.md from the raw results in directory $1.
summary() {
python3 - "$1/runs.tsv" "$1/goodput.tsv" <<'PY'
import sys, statistics
runs, good = sys.argv[1:]

def pct(v, q):
    v = sorted(v)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]

cells = {}
for line in open(runs):
    if line.startswith("#") or line.startswith("cell\t"):
        continue
    f = line.rstrip("\n").split("\t")
    cells.setdefault(f[0], []).append(f)

print("| cell (a x b) | runs ok | path | base RTT p50 | TTFB p50 / p95 (wall p50) | goal 3 RTT + 10 ms | time to direct p50 / p95 | goal 1 s at p95 | load 1-min |")
print("|---|---|---|---|---|---|---|---|---|")
for cell, rows in cells.items():
    ok = [r for r in rows if r[4] not in ("FAIL",)]
    paths = sorted(set(r[6] for r in ok))
    rtt = [float(r[3]) for r in ok if r[3] not in ("-", "nan")]
    # A failed run counts as infinitely slow in the percentiles.
    fails = len(rows) - len(ok)
    ttfb = [float(r[4]) for r in ok] + [float("inf")] * fails
    wall = [float(r[5]) for r in ok]
    ttd = [float(r[7]) for r in ok if r[7] != "-"]
    loads = [float(r[2]) for r in rows]
    goal = 3 * statistics.median(rtt) + 10 if rtt else float("nan")
    relay = all(p == "relay" for p in paths)
    t50, t95 = pct(ttfb, 0.5), pct(ttfb, 0.95)
    verdict = ("met" if t95 <= goal else ("p50 met, p95 MISSED" if t50 <= goal else "MISSED")) if ttfb else "-"
    if relay:
        d = "- (relay)"
        dv = "n/a"
    else:
        missing = len(rows) - len(ttd)
        ttd += [float("inf")] * missing
        d = f"{pct(ttd, .5):.0f} / {pct(ttd, .95):.0f} ms"
        if missing:
            d += f" ({missing} runs never direct)"
        dv = "met" if pct(ttd, .95) <= 1000 else "MISSED"
    print(f"| {cell.replace(':', ' x ')} | {len(ok)}/{len(rows)} | {', '.join(paths)} | "
          f"{statistics.median(rtt) if rtt else float('nan'):.3f} ms | {t50:.1f} / {t95:.1f} ms ({pct(wall, .5):.0f}) | "
          f"{goal:.1f} ms: {verdict} | {d} | {dv} | {min(loads):.2f}-{max(loads):.2f} |")

g = {}
imp = {}
for line in open(good):
    f = line.rstrip("\n").split("\t")
    if f[1] == "impairment":
        imp[f[0]] = f[2]
        continue
    g.setdefault(f[0], {}).setdefault(f[2], []).append((f[3], f[4]))
for cell, tools in g.items():
    print()
    print(f"Goodput, {cell.replace(':', ' x ')}: {imp.get(cell, '')}")
    ov = [float(x) for x, _ in tools.get("overlay", []) if not x.startswith("FAIL")]
    ip = [float(x) for x, _ in tools.get("iperf3", []) if not x.startswith("FAIL")]
    print(f"| run | overlay MB/s | iperf3 (CUBIC) MB/s | load |")
    print(f"|---|---|---|---|")
    for i, ((o, lo), (k, _)) in enumerate(zip(tools.get("overlay", []), tools.get("iperf3", [])), 1):
        print(f"| {i} | {o} | {k} | {lo} |")
    if ov and ip:
        m_ov, m_ip = statistics.median(ov), statistics.median(ip)
        print(f"| median | {m_ov:.2f} | {m_ip:.2f} | overlay / TCP = {m_ov / m_ip:.2f}: {'met' if m_ov >= m_ip else 'MISSED'} |")
PY
}
if [ "${1:-}" = --summary ]; then
  summary "${2:?usage: netlab.sh --summary DIR}"
  exit 0
fi

if ! why=$(nl_available); then
  echo "netlab bench: $why" >&2
  exit 1
fi
for tool in iperf3 python3 ping; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (apt-get install $tool; ping: iputils-ping)" >&2; exit 1; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building (release)"
  cargo build --release --quiet --bins
fi
BIN=${BENCH_BIN_DIR:-$(pwd)/target/release}
export PILOT_BIN_DIR=$BIN

prefix="pnb$$"
work=$(mktemp -d)
cleanup() {
  trap - EXIT INT TERM
  nl_destroy_lab "$prefix"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "interrupted; cleaning up" >&2; exit 130' INT TERM
mkdir -p "$OUT"

nl_sweep_stale
nl_public "$prefix"
mkdir -p "$OUT/rendezvous"
nl_start_rendezvous "$prefix" "$BIN" "$OUT/rendezvous" >/dev/null
# The rendezvous must live through the whole run: a death is recorded (its
# log is kept in $OUT/rendezvous) and it is started again.
rdv_check() {
  if ! ip netns exec "$prefix-pub" ss -ltnH 'sport = :9000' | grep -q 9000; then
    echo "   the rendezvous died; restarting it (log: $OUT/rendezvous/rendezvous.log)" >&2
    echo "# the rendezvous died before run $2 of $1; restarted" >>"$OUT/runs.tsv"
    nl_start_rendezvous "$prefix" "$BIN" "$OUT/rendezvous" >/dev/null
  fi
}

# One run of one cell, timed from Python (monotonic clock, no shell between
# the measurements). Prints a TSV line.
cat >"$work/run.py" <<'PY'
import json, os, subprocess, sys, time

bin_dir, ns_a, home_a, ns_b, home_b, addr_a, addr_b, want, far_ip = sys.argv[1:]

def ctl(ns, home, *args, timeout=60):
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "env", f"HOME={home}", f"{bin_dir}/pilotctl",
         "--socket", f"{home}/pilot.sock", "--json", *args],
        capture_output=True, text=True, timeout=timeout)
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        return r.returncode, {"raw": r.stdout + r.stderr}

def base_rtt():
    r = subprocess.run(["ip", "netns", "exec", ns_a, "ping", "-n", "-c", "3", "-i", "0.2",
                        "-W", "2", far_ip], capture_output=True, text=True)
    v = sorted(float(l.split("time=")[1].split()[0])
               for l in r.stdout.splitlines() if "time=" in l)
    return v[len(v) // 2] if v else float("nan")

def path_of(ns, home, addr):
    t1 = time.monotonic()
    code, v = ctl(ns, home, "peers")
    t2 = time.monotonic()
    for p in (v.get("data") or {}).get("peers") or []:
        if p.get("address") == addr:
            since = p.get("path_since_ms")
            changed = (t1 + t2) / 2 - since / 1000 if since is not None else None
            return p.get("path"), changed
    return None, None

rtt = base_rtt()
t0 = time.monotonic()
code, v = ctl(ns_a, home_a, "ping", addr_b, "--control", "--count", "1", "--timeout", "30s")
t_back = time.monotonic()
wall = (t_back - t0) * 1000
if code != 0:
    print(f"{rtt:.3f}\tFAIL\t{wall:.1f}\tfailed\t-\t" + json.dumps(v).replace("\t", " "))
    sys.exit(0)
ttfb = v["data"]["min_us"] / 1000
# When the daemon started the dial: the command's end less the daemon's
# measure (pilotctl's start-up and IPC are not the daemon's doing).
dial = t_back - ttfb / 1000

ttd = "-"
deadline = time.monotonic() + (5 if want == "direct" else 3)
pa = pb = None
while time.monotonic() < deadline:
    pa, ca = path_of(ns_a, home_a, addr_b)
    pb, cb = path_of(ns_b, home_b, addr_a)
    if want == "direct" and pa == "direct" and pb == "direct":
        ttd = max((ca - dial) * 1000, (cb - dial) * 1000, ttfb)
        ttd = f"{ttd:.1f}"
        break
    if want == "relay" and pa == "relay" and pb == "relay":
        break
    time.sleep(0.02)
path = pa if pa == pb else f"{pa}/{pb}"
print(f"{rtt:.3f}\t{ttfb:.2f}\t{wall:.1f}\t{path}\t{ttd}\t")
PY

cat >"$work/delay.py" <<'PY'
"""netem's `delay D loss L%` for kernels without sch_netem: every packet of
NFQUEUE queue Q is accepted D ms after it arrived (in arrival order), or
dropped with probability L%. nfnetlink_queue over a raw netlink socket,
metadata only. Usage: delay.py Q D_MS LOSS_PCT"""
import heapq, random, select, socket, struct, sys, time

qnum, delay, loss = int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3]) / 100
NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2, 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NF_DROP, NF_ACCEPT = 0, 1

s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
s.bind((0, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
seq = 0

def attr(t, data):
    a = struct.pack("=HH", 4 + len(data), t) + data
    return a + b"\0" * ((4 - len(a) % 4) % 4)

def msg(mtype, res_id, attrs, flags=NLM_F_REQUEST):
    global seq
    seq += 1
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | mtype, flags, seq, 0) + body

# bind the queue: cmd NFQNL_CFG_CMD_BIND (1), pf AF_INET; copy mode META (1)
s.send(msg(NFQNL_MSG_CONFIG, qnum, attr(NFQA_CFG_CMD, struct.pack("!BxH", 1, socket.AF_INET))))
s.send(msg(NFQNL_MSG_CONFIG, qnum, attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, 1))))
print("ready", flush=True)

due = []  # (time, packet id)
while True:
    timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
    r, _, _ = select.select([s], [], [], timeout)
    if r:
        data = s.recv(1 << 16)
        now = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            ln, mtype, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if ln < 16:
                break
            if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                while a + 4 <= off + ln:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype & 0x7FFF == NFQA_PACKET_HDR:
                        (pid,) = struct.unpack_from("!I", data, a + 4)
                        if random.random() < loss:
                            s.send(msg(NFQNL_MSG_VERDICT, qnum,
                                       attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_DROP, pid))))
                        else:
                            heapq.heappush(due, (now + delay, pid))
                    a += (alen + 3) & ~3
            off += (ln + 3) & ~3
    now = time.monotonic()
    while due and due[0][0] <= now:
        _, pid = heapq.heappop(due)
        s.send(msg(NFQNL_MSG_VERDICT, qnum, attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))))
PY

punchable() { # the matrix's rule: symmetric against an APD filter is not
  ! { [ "$1" = symmetric ] && ! nl_eif "$2"; } && ! { [ "$2" = symmetric ] && ! nl_eif "$1"; }
}
wanted() { [ -z "$CELLS" ] || [[ ",$CELLS," == *",$1:$2,"* ]]; }
load1() { cut -d' ' -f1 /proc/loadavg; }
host_ns() { echo "$prefix-h$1"; }
uplink() { if [ "$2" = none ]; then echo "$prefix-h$1 eth0"; else echo "$prefix-r$1 wan0"; fi; }

start_pair() { # INDEX_A NAT_A INDEX_B NAT_B DIR -> sets ADDR_A ADDR_B
  local ia=$1 ib=$3 dir=$5
  [ "$2" = none ] || nl_set_nat "$prefix" "$ia" "$2"
  [ "$4" = none ] || nl_set_nat "$prefix" "$ib" "$4"
  rm -rf "$dir"
  mkdir -p "$dir"
  ADDR_A=$(nl_daemon_start "$(host_ns "$ia")" "$dir/a" "$BIN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["address"])')
  ADDR_B=$(nl_daemon_start "$(host_ns "$ib")" "$dir/b" "$BIN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["address"])')
}
stop_pair() { # INDEX_A INDEX_B DIR
  nl_ctl "$(host_ns "$1")" "$3/a" "$BIN" daemon stop >/dev/null 2>&1 || true
  nl_ctl "$(host_ns "$2")" "$3/b" "$BIN" daemon stop >/dev/null 2>&1 || true
  local ns pid
  for ns in "$(host_ns "$1")" "$(host_ns "$2")"; do
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
  done
}

# Goodput in cell (a, b) whose hosts are INDEX_A, INDEX_B; appends to
# $OUT/goodput.tsv: run, tool, MB/s, load.
goodput() {
  local ia=$1 nat_a=$2 ib=$3 nat_b=$4 dir="$work/goodput"
  local ns_a ns_b b_ip up_ns up_dev impair g t0 t1 mbs ipt="" delay_pid=""
  ns_a=$(host_ns "$ia")
  ns_b=$(host_ns "$ib")
  b_ip=$(nl_public_ip "$ib")
  read -r up_ns up_dev < <(uplink "$ia" "$nat_a")
  start_pair "$ia" "$nat_a" "$ib" "$nat_b" "$dir"
  nl_ctl "$ns_a" "$dir/a" "$BIN" ping "$ADDR_B" --control --count 3 >/dev/null
  if ip netns exec "$up_ns" tc qdisc add dev "$up_dev" root netem delay 20ms loss 1% 2>/dev/null; then
    impair="netem delay 20ms loss 1% on a's uplink egress ($up_dev)"
  elif ipt=$(command -v iptables-legacy || command -v iptables) &&
    [ -e /proc/net/netfilter/nfnetlink_queue ]; then
    # No sch_netem: the same impairment from user space. a's packets to b
    # go through NFQUEUE to delay.py (20 ms, 1% dropped at random).
    local chain=OUTPUT
    [ "$nat_a" = none ] || chain=FORWARD
    ip netns exec "$up_ns" nice -n -5 python3 "$work/delay.py" 7 20 1 >"$dir/delay.out" 2>&1 &
    delay_pid=$!
    for _ in $(seq 50); do grep -q ready "$dir/delay.out" 2>/dev/null && break; sleep 0.1; done
    ip netns exec "$up_ns" "$ipt" -A "$chain" -d "$b_ip" -j NFQUEUE --queue-num 7
    impair="delay 20ms loss 1% on a's packets to b by NFQUEUE in user space ($(basename "$ipt") + delay.py: this kernel has no sch_netem)"
  else
    local hook=output
    [ "$nat_a" = none ] || hook=forward
    ip netns exec "$up_ns" nft -f - <<EOF
table inet impair {
  chain lossy {
    type filter hook $hook priority -10; policy accept;
    ip daddr $b_ip meta l4proto { tcp, udp } numgen random mod 100 < 1 drop
  }
}
EOF
    impair="nftables loss 1% on a's packets to b (TCP and UDP); NO DELAY: this kernel has no sch_netem (and no iptables NFQUEUE)"
  fi
  local rtt
  rtt=$(ip netns exec "$ns_a" ping -n -c 5 -i 0.2 "$b_ip" | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
  impair="$impair; ICMP RTT a -> b now ${rtt:-?} ms avg"
  echo "   impairment: $impair"
  echo "$nat_a:$nat_b	impairment	$impair" >>"$OUT/goodput.tsv"
  local src=/dev/shm
  [ -w "$src" ] || src=$work
  src="$src/pilot-netlab-src.$$"
  head -c "${GOODPUT_MB}M" /dev/urandom >"$src"
  for g in $(seq "$GOODPUT_RUNS"); do
    # Overlay: one stream a -> b, port 1000, until the listener has it all.
    nl_ctl "$ns_b" "$dir/b" "$BIN" listen 1000 >/dev/null 2>"$dir/listen.err" &
    local lp=$!
    for _ in $(seq 50); do grep -q listening "$dir/listen.err" 2>/dev/null && break; sleep 0.1; done
    t0=$(date +%s.%N)
    nl_ctl "$ns_a" "$dir/a" "$BIN" connect "$ADDR_B" 1000 --linger 100ms <"$src" >/dev/null
    wait "$lp" || true
    t1=$(date +%s.%N)
    if grep -q "after $((GOODPUT_MB * 1048576)) bytes" "$dir/listen.err"; then
      mbs=$(python3 -c "print(round($GOODPUT_MB*1048576/($t1-$t0)/1e6, 2))")
    else
      mbs="FAIL($(tr '\n' ' ' <"$dir/listen.err"))"
    fi
    echo "   run $g overlay: $mbs MB/s (load $(load1))"
    printf '%s\t%s\toverlay\t%s\t%s\n' "$nat_a:$nat_b" "$g" "$mbs" "$(load1)" >>"$OUT/goodput.tsv"
    # Kernel TCP over the same link.
    ip netns exec "$ns_b" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    local ip_pid=$!
    sleep 0.3
    mbs=$(ip netns exec "$ns_a" iperf3 -c "$b_ip" -p 5201 -n "${GOODPUT_MB}M" -C cubic -J |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["end"]["sum_received"]["bits_per_second"]/8/1e6, 2))') || mbs=FAIL
    wait "$ip_pid" || true
    echo "   run $g iperf3 (CUBIC): $mbs MB/s (load $(load1))"
    printf '%s\t%s\tiperf3\t%s\t%s\n' "$nat_a:$nat_b" "$g" "$mbs" "$(load1)" >>"$OUT/goodput.tsv"
  done
  rm -f "$src"
  ip netns exec "$up_ns" tc qdisc del dev "$up_dev" root 2>/dev/null || true
  ip netns exec "$up_ns" nft delete table inet impair 2>/dev/null || true
  if [ -n "${ipt:-}" ]; then
    ip netns exec "$up_ns" "$ipt" -F 2>/dev/null || true
    kill "$delay_pid" 2>/dev/null || true
  fi
  stop_pair "$ia" "$ib" "$dir"
}

{
  echo "# netlab bench, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty)"
  echo "# $(nproc) cores, $(uname -r), RUNS=$RUNS, binaries $BIN"
  printf 'cell\trun\tload1\tbase_rtt_ms\tttfb_ms\tttfb_wall_ms\tpath\tttd_ms\tnote\n'
} >"$OUT/runs.tsv"
: >"$OUT/goodput.tsv"

index=0
for a in "${NATS[@]}"; do
  for b in "${NATS[@]}"; do
    wanted "$a" "$b" || { [[ ",$GOODPUT_CELLS," == *",$a:$b,"* ]] || continue; }
    ia=$index
    ib=$((index + 1))
    index=$((index + 2))
    nl_host "$prefix" "$ia" "$a"
    nl_host "$prefix" "$ib" "$b"
    want=relay
    punchable "$a" "$b" && want=direct
    if wanted "$a" "$b"; then
      echo "== $a x $b (expect $want), $RUNS runs"
      for r in $(seq "$RUNS"); do
        dir="$work/run"
        rdv_check "$a:$b" "$r"
        if ! start_pair "$ia" "$a" "$ib" "$b" "$dir" 2>"$work/start.err"; then
          printf '%s\t%s\t%s\t-\tFAIL\t-\tdaemon-start-failed\t-\t%s\n' "$a:$b" "$r" "$(load1)" "$(tr '\n\t' '  ' <"$work/start.err")" >>"$OUT/runs.tsv"
          stop_pair "$ia" "$ib" "$dir"
          continue
        fi
        line=$(python3 "$work/run.py" "$BIN" "$(host_ns "$ia")" "$dir/a" "$(host_ns "$ib")" "$dir/b" \
          "$ADDR_A" "$ADDR_B" "$want" "$(nl_public_ip "$ib")")
        printf '%s\t%s\t%s\t%s\n' "$a:$b" "$r" "$(load1)" "$line" >>"$OUT/runs.tsv"
        echo "   run $r: $(echo "$line" | cut -f1-5 | tr '\t' ' ')  (rtt ttfb wall path ttd, ms; load $(load1))"
        stop_pair "$ia" "$ib" "$dir"
      done
    fi
    if [[ ",$GOODPUT_CELLS," == *",$a:$b,"* ]]; then
      if [ "$b" != none ]; then
        echo "   goodput skipped for $a:$b (b must be none for iperf3)"
      else
        echo "== goodput $a x $b: ${GOODPUT_MB} MiB, $GOODPUT_RUNS runs each"
        goodput "$ia" "$a" "$ib" "$b"
      fi
    fi
    for ns in "$prefix-h$ia" "$prefix-r$ia" "$prefix-h$ib" "$prefix-r$ib"; do
      nl_destroy_ns "$ns"
    done
  done
done

summary "$OUT" | tee "$OUT/summary.md"
echo "raw results: $OUT/runs.tsv, $OUT/goodput.tsv"
