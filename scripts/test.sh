#!/usr/bin/env bash
# Install narwhal-py with its test extra into .venv, run ruff and mypy, then the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k noise, scripts/test.sh --long).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# static checks first (seconds): lint of the code, benchmarks, tools and tests; types of the package
.venv/bin/ruff check narwhal bench tools tests
.venv/bin/mypy narwhal
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$status"
