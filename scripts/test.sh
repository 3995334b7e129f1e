#!/usr/bin/env bash
# The one command that runs every test of the project (README: "Testing").
#
# On a fresh Debian machine it installs what the tests need (as root: apt
# packages for the network lab and benchmarks), then runs the format check,
# clippy with warnings denied, and the whole test suite. Tests that need
# root (network namespaces, TUN) skip with a printed reason when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- system packages -------------------------------------------------------
declare -A pkg_for=(
  [ip]=iproute2 [tc]=iproute2 [nft]=nftables [curl]=curl
  [conntrack]=conntrack [iperf3]=iperf3
)
missing=()
for cmd in "${!pkg_for[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
    missing+=("${pkg_for[$cmd]}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  missing=($(printf '%s\n' "${missing[@]}" | sort -u))
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: missing ${missing[*]}; tests that need them will skip"
  fi
fi

# --- cargo tools -----------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

log "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet

log "tests"
cargo nextest run --lib --bins --tests --no-fail-fast
cargo test --doc --quiet
