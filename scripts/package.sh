#!/usr/bin/env bash
# Builds the .deb and .rpm packages (metadata: Cargo.toml,
# [package.metadata.deb] and [package.metadata.generate-rpm]).
#
#   scripts/package.sh                    release build, packages in target/dist/
#   scripts/package.sh --profile dev --no-build
#                                         package the binaries the tests built
#   scripts/package.sh --bin-dir DIR      package the binaries in DIR (no build)
#   scripts/package.sh --source           also a source tarball for Homebrew
#
# One build feeds both formats: the binaries, man pages made from each
# binary's --help, and pilotctl's shell completions are staged in
# target/pkgstage/, which the metadata points at. Needs cargo-deb and
# cargo-generate-rpm (scripts/test.sh installs them; or `cargo install
# --locked cargo-deb cargo-generate-rpm`).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
source_tarball=0
out=target/dist
bin_dir_opt=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --source) source_tarball=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --bin-dir) bin_dir_opt="$2"; build=0; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '==> %s\n' "$*"; }
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "package.sh: $1 is missing: $2" >&2
    exit 1
  fi
}
need cargo-deb "cargo install --locked cargo-deb (or run scripts/test.sh once)"
need cargo-generate-rpm "cargo install --locked cargo-generate-rpm"

target_dir="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  dev|test) bin_dir="$target_dir/debug" ;;
  *) bin_dir="$target_dir/$profile" ;;
esac
[ -z "$bin_dir_opt" ] || bin_dir="$bin_dir_opt"

# Every [[bin]] of Cargo.toml, so a new binary is packaged without edits here.
mapfile -t bins < <(awk '
  /^\[\[bin\]\]/ { inbin = 1; next }
  /^\[/ { inbin = 0 }
  inbin && $1 == "name" { gsub(/"/, "", $3); print $3 }
' Cargo.toml)
[ ${#bins[@]} -gt 0 ] || { echo "package.sh: no [[bin]] in Cargo.toml" >&2; exit 1; }

if [ "$build" = 1 ]; then
  log "cargo build --profile $profile --bins"
  cargo build --locked --profile "$profile" --bins
fi

stage=target/pkgstage
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/man" "$stage/completions" "$out"

log "staging ${bins[*]} from $bin_dir"
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "package.sh: $bin_dir/$b is missing (build first, or drop --no-build)" >&2; exit 1; }
  cp "$bin_dir/$b" "$stage/bin/$b"
  # debug info stays in the build tree; packages carry lean binaries
  if command -v strip >/dev/null 2>&1; then strip --strip-debug "$stage/bin/$b"; fi
done

version="$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)"

# A man page from --help: NAME from the first line, the rest verbatim.
man_page() {
  local b="$1" help first
  help="$("$stage/bin/$b" --help)"
  first="$(printf '%s\n' "$help" | head -n1)"
  printf '.TH %s 1 "" "pilot %s" "Pilot Protocol"\n' "$(printf '%s' "$b" | tr '[:lower:]' '[:upper:]')" "$version"
  printf '.SH NAME\n%s \\- %s\n' "$b" "$(printf '%s' "${first#*: }" | sed 's/\.$//')"
  printf '.SH DESCRIPTION\n.nf\n'
  printf '%s\n' "$help" | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"
  printf '.fi\n'
  if [ "$b" = pilotctl ]; then
    # one section per command, from its own --help
    local cmd
    for cmd in $("$stage/bin/$b" --help | awk '/^Commands:/ { on = 1; next } on && NF == 0 { exit } on { print $1 }'); do
      [ "$cmd" = help ] && continue
      printf '.SH "COMMAND: %s"\n.nf\n' "$cmd"
      "$stage/bin/$b" "$cmd" --help | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"
      printf '.fi\n'
    done
  fi
  printf '.SH SEE ALSO\npilotctl(1), pilot-daemon(1), pilot-rendezvous(1)\n'
}
log "man pages from --help"
for b in "${bins[@]}"; do
  man_page "$b" | gzip -9n > "$stage/man/$b.1.gz"
done

log "shell completions"
"$stage/bin/pilotctl" completions bash > "$stage/completions/pilotctl.bash"
"$stage/bin/pilotctl" completions zsh > "$stage/completions/_pilotctl"
"$stage/bin/pilotctl" completions fish > "$stage/completions/pilotctl.fish"

log "cargo deb"
cargo deb --no-build --no-strip --fast --output "$out" >/dev/null
log "cargo generate-rpm"
cargo generate-rpm --output "$out" --payload-compress gzip >/dev/null

if [ "$source_tarball" = 1 ]; then
  log "source tarball"
  tarball="$out/pilot-$version.tar.gz"
  git archive --format=tar.gz --prefix="pilot-$version/" -o "$tarball" HEAD
  echo "sha256 $(sha256sum "$tarball" | cut -d' ' -f1)  $tarball"
fi

ls -1 "$out"/*.deb "$out"/*.rpm
