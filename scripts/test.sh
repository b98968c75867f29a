#!/usr/bin/env bash
# Set up .venv (if missing) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
