#!/usr/bin/env bash
# The kernel's floor under "server CPU per message at 1,000 messages/s" on this machine: a C
# relay that only moves each 300-byte message from one loopback TCP connection to another
# (epoll, read, write; no parsing, routing or storage), pinned like the harness pins servers
# (relay on core 0, driver on core 1). Prints the relay's CPU per message and per 10k.
#
#   bench/floor/run.sh [RATE] [SECONDS] [PAIRS]     # defaults: 1000 messages/s, 20 s, 500 pairs
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RATE=${1:-1000}
SECONDS_=${2:-20}
PAIRS=${3:-500}
OUT="$(mktemp -d)"
trap 'kill "${RELAY:-0}" 2>/dev/null || true; rm -rf "$OUT"' EXIT
cc -O2 -std=gnu99 -o "$OUT/relay" "$HERE/relay.c"
PORT=$(( 20000 + RANDOM % 20000 ))
taskset -c 0 "$OUT/relay" relay "$PORT" "$PAIRS" &
RELAY=$!
sleep 0.3
# CPU time in seconds from the scheduler's own account (nanoseconds; one thread).
cpu() { awk '{print $1 / 1e9}' "/proc/$RELAY/schedstat"; }
taskset -c 1 "$OUT/relay" drive "$PORT" "$PAIRS" "$RATE" 2 # warm-up: connections made, caches warm
# (the relay serves one set of connections: start it again for the measured run)
kill "$RELAY" 2>/dev/null || true
wait "$RELAY" 2>/dev/null || true
taskset -c 0 "$OUT/relay" relay "$PORT" "$PAIRS" &
RELAY=$!
sleep 0.3
before=$(cpu)
start=$(date +%s.%N)
taskset -c 1 "$OUT/relay" drive "$PORT" "$PAIRS" "$RATE" "$SECONDS_"
after=$(cpu)
end=$(date +%s.%N)
awk -v b="$before" -v a="$after" -v r="$RATE" -v s="$SECONDS_" -v w0="$start" -v w1="$end" 'BEGIN {
    n = r * s; cpu = a - b
    printf "{\"scenario\": \"floor\", \"rate\": %d, \"messages\": %d, \"wall_s\": %.2f, \"relay_cpu_s\": %.3f, \"us_per_message\": %.1f, \"cpu_s_per_10k\": %.3f}\n", r, n, w1 - w0, cpu, cpu * 1e6 / n, cpu * 10000 / n
}'
