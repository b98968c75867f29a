#!/usr/bin/env bash
# Set up .venv (if missing) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# the extras some tests exercise (the demo does not need them): dask (a build on a local dask cluster),
# onnxruntime (perspose-predict's detector) and onnx (to export the tests' random-weight detector)
.venv/bin/python -c "import dask.distributed, onnxruntime, onnx" 2>/dev/null \
    || .venv/bin/python -m pip install --quiet -e ".[dev,dask,detect]" "onnx>=1.15"
exec .venv/bin/python -m pytest "$@"
