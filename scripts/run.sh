#!/usr/bin/env bash
# Install narwhal-py into .venv and start a local 4-validator network on 127.0.0.1.
# Extra arguments go to `narwhal demo` (e.g. scripts/run.sh --duration 30 --nodes 7).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m narwhal.node demo "$@"
