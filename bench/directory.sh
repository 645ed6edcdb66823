#!/usr/bin/env bash
# Directory benchmark: LDAP sync of a 50,000-person company, search and department rosters.
# See bench/directory.py --help and docs/performance.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" "$HERE/directory.py" "$@"
