#!/usr/bin/env bash
# The kernel's floor under "server CPU per message at 1,000 messages/s" on this machine: a C
# relay that only moves each 300-byte message from one loopback TCP connection to another
# (epoll, read, write; no parsing, routing or storage), pinned like the harness pins servers
# (relay on core 0, driver on core 1). Prints the relay's CPU per message and per 10k.
#
#   bench/floor/run.sh [--nio] [RATE] [SECONDS] [PAIRS]  # defaults: 1000 messages/s, 20 s, 500 pairs
#
# --nio: the same job done by a SwiftNIO relay (bench/floor/nio-relay, one event loop, built here
# in release mode on first use): what NIO and the Swift runtime add to the kernel's part before
# any XMPP work.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NIO=0
if [ "${1:-}" = "--nio" ]; then NIO=1; shift; fi
RATE=${1:-1000}
SECONDS_=${2:-20}
PAIRS=${3:-500}
OUT="$(mktemp -d)"
trap 'kill "${RELAY:-0}" 2>/dev/null || true; rm -rf "$OUT"' EXIT
cc -O2 -std=gnu99 -o "$OUT/relay" "$HERE/relay.c"
SERVER=("$OUT/relay" relay)
if [ "$NIO" = 1 ]; then
    swift build -c release --package-path "$HERE/nio-relay" >&2
    SERVER=("$HERE/nio-relay/.build/release/nio-relay")
fi
PORT=$(( 20000 + RANDOM % 20000 ))
taskset -c 0 "${SERVER[@]}" "$PORT" "$PAIRS" &
RELAY=$!
sleep 0.3
# CPU time in seconds from the scheduler's own account (nanoseconds), all the relay's threads.
cpu() { cat /proc/$RELAY/task/*/schedstat | awk '{ns += $1} END {print ns / 1e9}'; }
taskset -c 1 "$OUT/relay" drive "$PORT" "$PAIRS" "$RATE" 2 # warm-up: connections made, caches warm
# (the relay serves one set of connections: start it again for the measured run)
kill "$RELAY" 2>/dev/null || true
wait "$RELAY" 2>/dev/null || true
taskset -c 0 "${SERVER[@]}" "$PORT" "$PAIRS" &
RELAY=$!
sleep 0.3
before=$(cpu)
start=$(date +%s.%N)
taskset -c 1 "$OUT/relay" drive "$PORT" "$PAIRS" "$RATE" "$SECONDS_"
after=$(cpu)
end=$(date +%s.%N)
awk -v k="$([ "$NIO" = 1 ] && echo floor-nio || echo floor)" -v b="$before" -v a="$after" -v r="$RATE" -v s="$SECONDS_" -v w0="$start" -v w1="$end" 'BEGIN {
    n = r * s; cpu = a - b
    printf "{\"scenario\": \"%s\", \"rate\": %d, \"messages\": %d, \"wall_s\": %.2f, \"relay_cpu_s\": %.3f, \"us_per_message\": %.1f, \"cpu_s_per_10k\": %.3f}\n", k, r, n, w1 - w0, cpu, cpu * 1e6 / n, cpu * 10000 / n
}'
