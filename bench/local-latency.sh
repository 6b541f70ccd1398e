#!/usr/bin/env bash
# Mutation → subscriber latency at one external client against the local stack: starts the
# release build on a temporary data directory (durable, as `cargo run`), then runs
# bench/latency.js (a graphql-ws subscriber over `ws`, `fetch` mutations) against it, once with
# each mutation sent after the answer to the one before and once after the event of the one
# before. Usage: bench/local-latency.sh [mutations] [warm-up]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d e2e/node_modules/graphql-ws ] || { echo "e2e/node_modules is missing: (cd e2e && npm ci)" >&2; exit 1; }
count=${1:-1000}
warmup=${2:-100}
cargo build --release --locked --quiet --bin outboxdemo
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn target/release/outboxdemo --data-dir "$dir" --port "$port" &
server=$!
trap 'kill $server; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
until curl -fs "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
base="http://127.0.0.1:$port"
for mode in answer event; do
  echo "== mode $mode"
  node bench/latency.js "$base" "ws://127.0.0.1:$port/graphql/ws" "$base/health" "$count" "$warmup" 0 "$mode"
done
