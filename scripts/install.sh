#!/usr/bin/env bash
# Create .venv (if missing) and install narwhal-py with the given extras into it.
# Usage: scripts/install.sh [extras]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "narwhal-py needs Python >= 3.11 (found $("$PY" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extras="${1:-}"
spec="."
if [ -n "$extras" ]; then spec=".[${extras}]"; fi
set +e
log=$(.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" 2>&1)
status=$?
set -e
# This machine's pip config names optional local mirrors that may be absent; hide that noise.
printf '%s\n' "$log" | grep -v "is ignored: it is neither a file nor a directory" | grep -v '^$' || true
if [ "$status" -ne 0 ]; then
    echo "pip install failed (exit $status)" >&2
    exit "$status"
fi
.venv/bin/python -c 'import narwhal, uvloop, noise, cbor2' # fail loudly if the install did not work
