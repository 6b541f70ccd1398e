#!/usr/bin/env bash
# Instructions per durable addBook (#17): the release build of the local stack under valgrind's
# callgrind, on a temporary data directory, driven by wrk (one thread, four connections) with
# bench/add-book.lua for the given seconds, then stopped with SIGINT. Prints the mutations, the
# instructions of the whole run, and (after a run with no request, for start and stop) the
# instructions per mutation. A count, not a clock: two runs of one build agree within a fraction
# of a percent where the wall clock of a shared machine does not.
# Usage: bench/instructions.sh [binary] [seconds]   (needs valgrind and wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/outboxdemo}
seconds=${2:-20}
for tool in valgrind wrk; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Runs the binary under callgrind for `$1` seconds of load; prints "<mutations> <instructions>".
count() {
  local dir port server out mutations=0
  dir=$(mktemp -d); port=$(free_port); out="$dir/callgrind.out"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$binary" --data-dir "$dir/data" --port "$port" 2>/dev/null &
  server=$!
  until curl -fs "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.5; done
  if [ "$1" -gt 0 ]; then
    mutations=$(wrk -t1 -c4 -d"$1s" -s bench/add-book.lua "http://127.0.0.1:$port/graphql" \
      | awk '/requests in/ {print $1}')
  fi
  sleep 3
  kill -INT "$server"; wait "$server" || true
  echo "$mutations $(awk '/^summary:/ {print $2}' "$out")"
  rm -rf "$dir"
}

read -r idle_mutations idle <<<"$(count 0)"
read -r mutations total <<<"$(count "$seconds")"
echo "start and stop: $idle instructions"
echo "$mutations mutations: $total instructions"
awk -v t="$total" -v i="$idle" -v n="$mutations" \
  'BEGIN { printf "per durable mutation: %.0f instructions\n", (t - i) / n }'
