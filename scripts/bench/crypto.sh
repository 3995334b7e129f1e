#!/usr/bin/env bash
# PILS seal/open vs OpenSSL's AES-256-GCM, in one sitting (BENCHMARKS.md → Crypto).
#
# Runs `openssl speed -evp aes-256-gcm -bytes 1024` before and after the
# criterion benches of benches/wire_crypto.rs (groups `pils` and
# `aead_backend`), averages the two OpenSSL figures, and prints:
#   goal = 1.3 × (2 × 1400 B / OpenSSL rate)   (seal + open of a 1400-byte payload)
#   ours = pils/seal+open/1400 (criterion median estimate)
# Exit status 0 whether or not the goal is met; the verdict is printed.
#
# Usage: scripts/bench/crypto.sh [extra criterion args, e.g. --measurement-time 10]
set -euo pipefail
cd "$(dirname "$0")/../.."

OPENSSL_SECONDS=${OPENSSL_SECONDS:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

openssl_rate() { # bytes per second at 1024-byte blocks
  openssl speed -evp aes-256-gcm -bytes 1024 -seconds "$OPENSSL_SECONDS" 2>/dev/null |
    awk '/^AES-256-GCM/ { v = $2; sub(/k$/, "", v); printf "%.0f\n", v * 1000 }'
}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "== date: $(date -u +%Y-%m-%dT%H:%M:%SZ); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(openssl version)"
r1=$(openssl_rate)
echo "openssl speed -evp aes-256-gcm -bytes 1024 (before): $r1 B/s"

cargo bench --bench wire_crypto -- --warm-up-time 1 --measurement-time 5 "$@" 'pils/|aead_backend/' | tee "$out"

r2=$(openssl_rate)
echo "openssl speed -evp aes-256-gcm -bytes 1024 (after):  $r2 B/s"

# Median estimate (middle of the three `time:` figures) per benchmark, in ns.
awk -v r1="$r1" -v r2="$r2" '
  function ns(v, u) { return u == "ps" ? v / 1000 : u == "ns" ? v : (u == "µs" || u == "us") ? v * 1000 : u == "ms" ? v * 1e6 : v * 1e9 }
  /^[a-z_]+\// { name = $1 }
  /time:/ && name != "" && !(name in t) {
    for (i = 1; i <= NF; i++) if ($i ~ /^\[/) { start = i; break }
    t[name] = ns($(start + 2), $(start + 3)); order[++n] = name
  }
  END {
    rate = (r1 + r2) / 2
    openssl_ns = 2 * 1400 / rate * 1e9
    goal = 1.3 * openssl_ns
    print ""
    print "== summary (median estimates)"
    for (i = 1; i <= n; i++) {
      b = order[i]; split(b, p, "/"); bytes = p[length(p)]
      printf "  %-38s %9.1f ns  %6.2f GB/s\n", b, t[b], bytes / t[b]
    }
    printf "  openssl AES-256-GCM 1024 B (mean)      %9.2f GB/s -> 2 x 1400 B = %.1f ns\n", rate / 1e9, openssl_ns
    ours = t["pils/seal+open/1400"]
    if (ours == "") { print "pils/seal+open/1400 missing"; exit 1 }
    printf "  goal (1.3 x openssl) for seal+open/1400   %9.1f ns\n", goal
    printf "  ours: pils/seal+open/1400                 %9.1f ns = %.2f x openssl (%.2f x goal): %s\n",
      ours, ours / openssl_ns, ours / goal, ours <= goal ? "GOAL MET" : "GOAL MISSED"
    if ("aead_backend/aes-gcm/seal+open/1400" in t)
      printf "  RustCrypto aes-gcm raw seal+open/1400     %9.1f ns = %.2f x openssl\n",
        t["aead_backend/aes-gcm/seal+open/1400"], t["aead_backend/aes-gcm/seal+open/1400"] / openssl_ns
    if ("aead_backend/ring/seal+open/1400" in t)
      printf "  ring raw seal+open/1400                   %9.1f ns = %.2f x openssl\n",
        t["aead_backend/ring/seal+open/1400"], t["aead_backend/ring/seal+open/1400"] / openssl_ns
  }' "$out"
