#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian 12 machine with Swift 6.3:
#   1. installs the system libraries the build links (libexpat, libsqlite3), the OpenLDAP
#      server and tools the LDAP tests start (slapd, ldap-utils), Python 3 for the benchmark
#      harnesses and openssl (`switchboard ca issue` writes PKCS#12 with it) if missing,
#   2. builds the server (debug) and runs the Swift test suites (unit + in-process server),
#   3. runs the benchmark harnesses (bench/compare.sh, bench/directory.sh) in their seconds-long
#      smoke modes (no timing assertions),
#   4. runs the end-to-end suite: the real server process driven by slixmpp, a WebSocket
#      client, raw sockets and two Profanity clients under tmux (Tests/e2e/run.sh installs
#      its own Debian and PyPI dependencies into Tests/e2e/.venv).
# Extra arguments are passed to pytest (e.g. scripts/test.sh -k roster).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\n==> %s\n' "$*"; }

say "system libraries and test servers"
missing=()
for package in libexpat1-dev libsqlite3-dev slapd ldap-utils python3 openssl; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

say "swift build (server and load generator for the end-to-end tests and the benchmark smoke run)"
swift build --product switchboard
swift build --product switchboard-bench

say "swift test (unit tests and the in-process server)"
swift test

if [ -x bench/compare.sh ]; then
    say "benchmark smoke run (seconds, debug build; figures are printed, nothing is asserted on timing)"
    SWITCHBOARD_BIN="$ROOT/.build/debug/switchboard" SWITCHBOARD_BENCH_BIN="$ROOT/.build/debug/switchboard-bench" \
        bench/compare.sh --quick --no-build --servers switchboard
    say "storage benchmark smoke run (switchboard bench store, debug build)"
    "$ROOT/.build/debug/switchboard" bench store --users 50 --apply 300 --rounds 2
    say "directory benchmark smoke run (2,000 LDAP users, debug build)"
    bench/directory.sh --users 2000 --department 50 --searchers 20 --quick --debug
fi

say "end-to-end tests (real server process, slixmpp, WebSocket, raw sockets, Profanity)"
Tests/e2e/run.sh "$@"
