#!/usr/bin/env bash
# The one command that runs every test of the project (README: "Testing").
#
# On a fresh Debian machine it first installs what the tests need (as root:
# apt packages for the network lab, the quickstart and the packaging tests;
# cargo-nextest, cargo-deb and cargo-generate-rpm with `cargo install
# --locked`, only when missing, so later runs reuse them), then runs the
# format check, clippy with warnings denied, the docs, and every test.
# Tests that need root (network namespaces, TUN) skip with a printed reason
# when not root.
#
# Time: clippy does not get a build of its own. The test build runs with
# clippy-driver as the workspace's compiler (what `cargo clippy` does, but
# compiling for real), so the dependencies are compiled once and the lints
# of every target (lib, bins, tests, examples, benches) come from the same
# compiler runs that produce the test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s  [%ss]\n' "$*" "$SECONDS"; }

# --- system packages -------------------------------------------------------
declare -A pkg_for=(
  [ip]=iproute2 [tc]=iproute2 [nft]=nftables [curl]=curl
  [conntrack]=conntrack [iperf3]=iperf3 [python3]=python3
  [shellcheck]=shellcheck [rpm]=rpm [ruby]=ruby [dpkg-deb]=dpkg [ping]=iputils-ping
)
missing=()
for cmd in "${!pkg_for[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
    missing+=("${pkg_for[$cmd]}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: missing ${missing[*]}; tests that need them will skip"
  fi
fi

# PostgreSQL for tests/rendezvous_postgres.rs (a throwaway cluster made with
# initdb/pg_ctl; the package's own cluster is not used).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "note: no PostgreSQL server binaries; tests/rendezvous_postgres.rs will skip"
  fi
fi

# --- cargo tools (built once per machine, then reused) ----------------------
cargo_tools=()
command -v cargo-nextest >/dev/null 2>&1 || cargo_tools+=(cargo-nextest)
command -v cargo-deb >/dev/null 2>&1 || cargo_tools+=(cargo-deb)
command -v cargo-generate-rpm >/dev/null 2>&1 || cargo_tools+=(cargo-generate-rpm)
if [ ${#cargo_tools[@]} -gt 0 ]; then
  log "cargo install --locked ${cargo_tools[*]}"
  # Tools, not products: a cheaper optimisation level (O1, no LTO, parallel
  # codegen) compiles them in far less time and they still run fast.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install --locked --quiet "${cargo_tools[@]}"
fi

export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

log "cargo fmt --check"
cargo fmt --all -- --check

# clippy-driver compiles like rustc and lints like `cargo clippy`; cargo
# applies the wrapper to this workspace's crates only, so dependencies are
# built once, as for any test build. CLIPPY_ARGS is how cargo-clippy passes
# `-- -D warnings` to it.
clippy_driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

log "build + clippy (warnings denied): lib, bins, tests, examples, benches"
cargo nextest run --lib --bins --tests --no-run
cargo build --examples --quiet
# bench targets built as tests (dev profile): linted without a release build
cargo test --benches --no-run --quiet

log "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet

log "tests"
# One retry: the end-to-end tests run real processes side by side on a
# shared (in CI, 2-core) host, where a loopback datagram can be dropped or a
# process starved for seconds. A test that fails twice fails the run; one
# that passes only on its retry is listed as FLAKY in nextest's summary, and
# each such flake is chased down (see the notes of the stops).
cargo nextest run --lib --bins --tests --no-fail-fast --retries 1
cargo test --doc --quiet
log "all done"
