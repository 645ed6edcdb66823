#!/usr/bin/env bash
# Side-by-side benchmark: Switchboard vs Prosody 0.12 vs ejabberd 23.01 (Debian packages),
# same accounts, same load generator (switchboard-bench), server pinned to core 0, generator
# to core 1, loopback only. See bench/README.md.
#
#   bench/compare.sh                         # full run, all three servers
#   bench/compare.sh --quick --servers switchboard --no-build   # CI smoke run (< 60 s)
#   bench/compare.sh --help
#
# Python 3 standard library only (Debian's /usr/bin/python3 is preferred).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" "$HERE/compare.py" "$@"
