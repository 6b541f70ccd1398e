#!/usr/bin/env bash
# What telemetry costs durable writes (#17): a release build of the local stack on a temporary
# data directory under wrk's addBook (each request a new book, bench/add-book.lua), once with
# export off (the default: every hop's span made, nothing exported) and once with export on
# (OTLP/HTTP to a sink on 127.0.0.1 that reads and discards each request). Prints wrk's addBook/s
# and request latency, and the mean mutation → consumer latency from /metrics' histogram.
# Usage: bench/telemetry.sh [binary] [connections] [seconds]
# (binary: target/release/outboxdemo by default; pass an older build to compare)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/outboxdemo}
connections=${2:-32}
seconds=${3:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

sink_port=$(free_port)
python3 - "$sink_port" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
sink=$!
trap 'kill $sink 2>/dev/null' EXIT

run() {
  local label=$1; shift
  local dir port server
  dir=$(mktemp -d)
  port=$(free_port)
  env RUST_LOG=warn "$@" "$binary" --data-dir "$dir" --port "$port" &
  server=$!
  until curl -fs "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
  echo "== $label: wrk -t2 -c$connections -d${seconds}s addBook"
  wrk -t2 -c"$connections" -d"${seconds}s" -s bench/add-book.lua "http://127.0.0.1:$port/graphql" \
    | grep -E 'Requests/sec|Latency|requests in'
  sleep 1
  curl -fs "http://127.0.0.1:$port/metrics" | awk '
    /^outboxdemo_mutation_to_consumer_seconds_sum/ { sum = $2 }
    /^outboxdemo_mutation_to_consumer_seconds_count/ { count = $2 }
    END { if (count > 0) printf "mutation -> consumer: mean %.2f ms over %d\n", 1000 * sum / count, count }'
  kill "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$dir"
}

run "export off"
run "export on" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port"
