#!/usr/bin/env bash
# Install narwhal-py into .venv and start a local 4-validator testnet on 127.0.0.1 with a
# light load client and a live table; Ctrl-C stops it and prints a summary.
# Extra arguments go to `narwhal testnet` (e.g. scripts/run.sh --duration 30 --rate 5000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m narwhal.node testnet "$@"
