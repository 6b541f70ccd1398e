#!/usr/bin/env bash
# What a newcomer's first `cargo run` costs: builds the local stack (`cargo build --bin
# outboxdemo`, the debug build `cargo run` makes) from a clean clone of REV (default HEAD) in
# a fresh target directory, and prints the wall and CPU time, the number of crates compiled
# and the binary's size. The registry cache is reused (nothing is downloaded twice), so this
# is compile time only. Usage: bench/first-build.sh [REV]
set -euo pipefail
rev=${1:-HEAD}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$repo" worktree add -q --detach "$work/src" "$rev"
trap 'git -C "$repo" worktree remove --force "$work/src"; rm -rf "$work"' EXIT
cd "$work/src"
/usr/bin/time -f '%e %U %S' -o "$work/time" \
  env CARGO_TARGET_DIR="$work/target" cargo build --locked --bin outboxdemo 2>"$work/log"
read -r wall user sys <"$work/time"
crates=$(grep -c '^ *Compiling ' "$work/log" || true)
aws=$(grep -cE '^ *Compiling (aws-|lambda_)' "$work/log" || true)
size=$(stat -c %s "$work/target/debug/outboxdemo")
printf '%s: %s s wall, %.0f s CPU, %s crates compiled (%s aws-*/lambda_*), debug binary %s bytes\n' \
  "$(git rev-parse --short HEAD)" "$wall" "$(echo "$user + $sys" | bc)" "$crates" "$aws" "$size"
