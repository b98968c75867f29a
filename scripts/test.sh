#!/usr/bin/env bash
# Set up .venv (if missing) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# the dask extra, for the test that builds shards on a local dask cluster (the demo does not need it)
.venv/bin/python -c "import dask.distributed" 2>/dev/null || .venv/bin/python -m pip install --quiet -e ".[dev,dask]"
exec .venv/bin/python -m pytest "$@"
