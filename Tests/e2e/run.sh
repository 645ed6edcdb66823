#!/usr/bin/env bash
# Run the end-to-end suite: install what it needs, then pytest. Extra arguments go to pytest.
#   Tests/e2e/run.sh                      # against .build/debug/switchboard
#   E2E_SERVER=prosody Tests/e2e/run.sh   # against Prosody (proves the tests)
#   Tests/e2e/run.sh -k roster -x         # pytest options pass through
# Exit code: pytest's.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 1
scripts/e2e-deps.sh || exit $?
Tests/e2e/.venv/bin/pytest -q Tests/e2e "$@"
exit $?
