#!/usr/bin/env bash
# Mutation → subscriber latency on the rehearsal of the AWS deployment (moto, the six bootstraps,
# the stream mapping, EventBridge targets and API Gateway emulated): builds and starts
# target/debug/rehearsal on free ports, runs bench/latency.js against its HTTP and
# WebSocket APIs, and stops it. Usage: bench/rehearsal-latency.sh [mutations] [warm-up] [pause-ms]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d e2e/node_modules/graphql-ws ] || { echo "e2e/node_modules is missing: (cd e2e && npm ci)" >&2; exit 1; }
./scripts/python-tools
cargo build --locked --quiet -p api -p processor -p consumers -p rehearsal --bins
log=$(mktemp)
logdir=$(mktemp -d)
# PublicAccess=all: the bench's clients are anonymous (the authorizer's cost is not measured).
target/debug/rehearsal --port 0 --log-dir "$logdir" --parameter PublicAccess=all >"$log" 2>&1 &
rehearsal=$!
trap 'kill $rehearsal 2>/dev/null; wait $rehearsal 2>/dev/null || true; rm -rf "$log" "$logdir"' EXIT
for _ in $(seq 300); do
  grep -q '^Ctrl-C' "$log" && break
  kill -0 $rehearsal 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
# The URLs it prints, one line each: "GraphiQL (HTTP API)   http://127.0.0.1:…/" and so on.
url() { grep "^$1" "$log" | grep -oE '(http|ws)://[^ ]+' | head -1; }
http=$(url 'GraphiQL'); ws=$(url 'WebSocket API'); lambda=$(url 'Lambda API')
[ -n "$http" ] && [ -n "$ws" ] && [ -n "$lambda" ] || { cat "$log"; exit 1; }
if ! node bench/latency.js "${http%/}" "$ws" "$lambda/rehearsal/status" "$@"; then
  cat "$log"
  for f in "$logdir"/*.log; do echo "==> $f"; tail -30 "$f"; done
  exit 1
fi
