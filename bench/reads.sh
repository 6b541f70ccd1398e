#!/usr/bin/env bash
# Read throughput over HTTP with wrk (Debian's `wrk`): starts the release build of the local
# stack on a temporary data directory, adds 100 books, then runs wrk against `books` (first
# page) and `book(name)`, and then durable `addBook`, each request a new book.
# Usage: bench/reads.sh [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-32}
seconds=${2:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin outboxdemo
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn target/release/outboxdemo --data-dir "$dir" --port "$port" &
server=$!
trap 'kill $server; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
until curl -fs "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
for i in $(seq 0 99); do
  curl -fs "http://127.0.0.1:$port/graphql" -H 'content-type: application/json' \
    -d "{\"query\":\"mutation { addBook(input: {name: \\\"Book $i\\\", authors: [\\\"An Author\\\", \\\"Another\\\"], publishedYear: 1999}) { name } }\"}" >/dev/null
done
for script in books-first-page book-by-name add-book; do
  echo "== $script: wrk -t2 -c$connections -d${seconds}s"
  wrk -t2 -c"$connections" -d"${seconds}s" -s "bench/$script.lua" "http://127.0.0.1:$port/graphql" | grep -E 'Requests/sec|Latency|requests in'
done
