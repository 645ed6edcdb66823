#!/usr/bin/env bash
# Installs everything the end-to-end tests (Tests/e2e) need on a fresh Debian 12 machine.
# Idempotent: apt-get runs only when a package is missing, the virtualenv is rebuilt only
# when Tests/e2e/requirements.txt changed. Safe to run any number of times.
#
#   scripts/e2e-deps.sh            # deps for the default backend (our switchboard binary)
#   E2E_SERVER=prosody scripts/e2e-deps.sh   # also installs Prosody (reference server)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
E2E="$ROOT/Tests/e2e"
VENV="$E2E/.venv"
REQ="$E2E/requirements.txt"
PY=/usr/bin/python3

log() { echo "[e2e-deps] $*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# ---- Debian packages ---------------------------------------------------------------
pkgs=(profanity tmux python3 python3-venv openssl ca-certificates)
if [ "${E2E_SERVER:-switchboard}" = "prosody" ]; then
    pkgs+=(prosody)
fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "missing Debian packages: ${missing[*]}"
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    log "apt-get install -y ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
    log "Debian packages present: ${pkgs[*]}"
fi

# ---- Python virtualenv ---------------------------------------------------------------
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
stamp="$VENV/.requirements.sha256"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$VENV/bin/python" -c 'import slixmpp, pytest, websockets' 2>/dev/null; then
    log "virtualenv up to date: $VENV"
else
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtualenv $VENV"
        "$PY" -m venv "$VENV"
    fi
    log "pip install -r $REQ into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$stamp"
fi
log "done"
