#!/usr/bin/env bash
# One command for docs/ablation.md: set up .venv (if needed) and run the three-arm ablation; arguments go to
# scripts/ablation.py (default: --out runs/ablation --seeds 0 1, about 80 minutes on 2 CPU cores, resumable).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec .venv/bin/python scripts/ablation.py "$@"
