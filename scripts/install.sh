#!/usr/bin/env bash
# Installs Pilot Protocol from this checkout for the current user.
#
#   scripts/install.sh                 build (release) and install into ~/.pilot/bin
#   scripts/install.sh --prefix DIR    install into DIR/bin (e.g. --prefix ~/.local)
#   scripts/install.sh --enable        also enable and start the user service now
#
# Other options: --no-build (use what is already in target/), --profile NAME
# (default release), --no-service (skip the user service file).
#
# It installs the binaries, pilotctl's shell completions, and the daemon's
# user service (systemd on Linux, launchd on macOS) pointing at the
# installed pilotctl; it starts nothing unless --enable is given. Running it
# again replaces the binaries in place (a running daemon keeps its old
# binary until restarted) and leaves exactly one install.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="$HOME/.pilot"
build=1
profile=release
service=1
enable=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --no-build) build=0; shift ;;
    --profile) profile="$2"; shift 2 ;;
    --no-service) service=0; shift ;;
    --enable) enable=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
bindir="$prefix/bin"

log() { printf '==> %s\n' "$*"; }

if [ "$build" = 1 ]; then
  command -v cargo >/dev/null 2>&1 || {
    echo "install.sh: cargo is missing: install Rust (https://rustup.rs) or use a .deb/.rpm package" >&2
    exit 1
  }
  log "cargo build --profile $profile --bins (a few minutes the first time)"
  cargo build --locked --profile "$profile" --bins
fi
target_dir="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  dev|test) from="$target_dir/debug" ;;
  *) from="$target_dir/$profile" ;;
esac

mapfile -t bins < <(awk '
  /^\[\[bin\]\]/ { inbin = 1; next }
  /^\[/ { inbin = 0 }
  inbin && $1 == "name" { gsub(/"/, "", $3); print $3 }
' Cargo.toml)

# Copies $1 to $2 atomically (temp file + rename), so a running binary or a
# second install never sees a half-written file.
put() {
  local src="$1" dst="$2" mode="$3" tmp
  tmp="$(dirname "$dst")/.$(basename "$dst").tmp.$$"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dst"
}

log "installing ${bins[*]} into $bindir"
mkdir -p "$bindir"
for b in "${bins[@]}"; do
  [ -x "$from/$b" ] || { echo "install.sh: $from/$b is missing (build first, or drop --no-build)" >&2; exit 1; }
  put "$from/$b" "$bindir/$b" 755
done

log "shell completions"
comp="$prefix/share/pilot/completions"
mkdir -p "$comp"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
for sh in bash zsh fish; do
  "$bindir/pilotctl" completions "$sh" > "$tmp"
  case "$sh" in
    bash) put "$tmp" "$comp/pilotctl.bash" 644 ;;
    zsh) put "$tmp" "$comp/_pilotctl" 644 ;;
    fish) put "$tmp" "$comp/pilotctl.fish" 644 ;;
  esac
done

if [ "$service" = 1 ]; then
  case "$(uname -s)" in
    Darwin)
      agents="$HOME/Library/LaunchAgents"
      plist="$agents/com.pilotprotocol.daemon.plist"
      mkdir -p "$agents"
      sed -e "s|/usr/local/bin/pilotctl|$bindir/pilotctl|" \
          -e "s|/tmp/pilot-daemon.log|$HOME/.pilot/pilot.log|g" \
          platform/macos/com.pilotprotocol.daemon.plist > "$tmp"
      put "$tmp" "$plist" 644
      log "launchd agent: $plist"
      if [ "$enable" = 1 ]; then
        launchctl unload "$plist" 2>/dev/null || true
        launchctl load -w "$plist"
      fi
      ;;
    *)
      units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
      unit="$units/pilot-daemon.service"
      mkdir -p "$units"
      sed -e "s|^ExecStart=/usr/bin/pilotctl|ExecStart=$bindir/pilotctl|" \
          -e "s|^# Installed by the .deb/.rpm.*|# Written by scripts/install.sh (prefix $prefix).|" \
          platform/linux/pilot-daemon.service > "$tmp"
      put "$tmp" "$unit" 644
      log "systemd user unit: $unit"
      if command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then
        systemctl --user daemon-reload
        if [ "$enable" = 1 ]; then
          systemctl --user enable --now pilot-daemon.service
        fi
      elif [ "$enable" = 1 ]; then
        echo "install.sh: no systemd user session here; start the node with: $bindir/pilotctl daemon start" >&2
      fi
      ;;
  esac
fi

log "installed: $("$bindir/pilotctl" --version)"
case ":$PATH:" in
  *":$bindir:"*) ;;
  *) echo "    add it to your PATH:  export PATH=\"$bindir:\$PATH\"" ;;
esac
echo "    completions: source $comp/pilotctl.bash   (zsh: $comp/_pilotctl, fish: $comp/pilotctl.fish)"
if [ "$service" = 1 ] && [ "$enable" = 0 ]; then
  case "$(uname -s)" in
    Darwin) echo "    run the node as a service: launchctl load -w ~/Library/LaunchAgents/com.pilotprotocol.daemon.plist" ;;
    *) echo "    run the node as a service: systemctl --user enable --now pilot-daemon" ;;
  esac
fi
echo "    or by hand: pilotctl daemon start --registry HOST:9000"
