#!/usr/bin/env bash
# The vendored Rocket is crates.io's rocket 0.5.2 plus rocket-0.5.2.patch, and nothing else
# (README.md here says why it is vendored; scripts/test runs this in its lint group).
#
#   rust-ws/vendor/check.sh       # exit 0 and one line if so; the diff and exit 1 if not
#
# The pristine crate comes from cargo's registry cache (~/.cargo/registry/cache/*/): the workspace
# never downloads it (its [patch.crates-io] points rocket here), so pristine/ is a manifest that
# does, pinned by its Cargo.lock. Offline, this works once that crate is in the cache (the first
# run, or `cargo fetch --manifest-path rust-ws/vendor/pristine/Cargo.toml`, downloads it). The
# .crate is checked against crates.io's checksum in pristine/Cargo.lock before it is trusted.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CRATE=rocket-0.5.2
CACHE="${CARGO_HOME:-$HOME/.cargo}/registry/cache"
fail() { echo "check.sh: $*" >&2; exit 1; }

find_crate() { compgen -G "$CACHE/*/$CRATE.crate" | head -n 1 || true; }
tarball=$(find_crate)
if [[ -z "$tarball" ]]; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  cargo fetch --locked --manifest-path "$HERE/pristine/Cargo.toml" --target "$host" >&2 ||
    fail "$CRATE.crate is not in $CACHE and cargo could not fetch it"
  tarball=$(find_crate)
  [[ -n "$tarball" ]] || fail "cargo fetched, but $CRATE.crate is not in $CACHE"
fi

want=$(awk '/^name = "rocket"$/ { r = 1 } r && /^checksum/ { gsub(/"/, "", $3); print $3; exit }' \
  "$HERE/pristine/Cargo.lock")
got=$(sha256sum "$tarball" | cut -d' ' -f1)
[[ -n "$want" && "$got" == "$want" ]] || fail "$tarball: sha256 $got, crates.io's is $want"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$tarball" -C "$WORK"
patch --batch --silent --no-backup-if-mismatch -p1 -d "$WORK/$CRATE" <"$HERE/$CRATE.patch" ||
  fail "$CRATE.patch does not apply cleanly to crates.io's $CRATE"
# .cargo-ok is cargo's own marker of an unpacked crate, not part of the release.
if ! diff -r -x .cargo-ok "$WORK/$CRATE" "$HERE/$CRATE"; then
  fail "rust-ws/vendor/$CRATE differs from crates.io's $CRATE + $CRATE.patch (diff above: < expected, > vendored)"
fi
echo "rust-ws/vendor/$CRATE is crates.io's $CRATE ($got) + $CRATE.patch ($(grep -c '^@@' "$HERE/$CRATE.patch") hunks)"
