# Sourced by scripts/test.sh and scripts/demo.sh: create .venv once and install the package with dev extras.
# torch is pinned to the CPU wheel available here; pyproject.toml declares a range so other machines get their own build.
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.perspose-installed ] || [ pyproject.toml -nt .venv/.perspose-installed ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    touch .venv/.perspose-installed
fi
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-67108864}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-268435456}
