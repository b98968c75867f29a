"""Where the real-data fixtures are: the one place that decides it (conftest.py and the tests import this).

They are never committed (dataset licences): a checkout of the project has them at <repo>/../shared/fixtures/real,
a user's fresh clone usually has nothing there. PERSPOSE_REAL_FIXTURES=DIR points the tests at another copy (or,
set to a missing path, shows what a fresh clone sees). Tests that need them skip with the reason below.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "PERSPOSE_REAL_FIXTURES"
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


def real_fixtures() -> Path:
    """The real-fixtures directory (it may not exist): $PERSPOSE_REAL_FIXTURES, else <repo>/../shared/fixtures/real.
    Read on every call, so a test (or a monkeypatched environment) never sees a stale value."""
    return Path(os.environ[ENV]) if os.environ.get(ENV) else DEFAULT


def require_real(sub: str = "") -> Path:
    """real_fixtures() / sub, or skip the calling test with where it looked and how to point it elsewhere."""
    path = real_fixtures() / sub
    if not path.exists():
        pytest.skip(f"real fixtures not found at {path} (set {ENV})")
    return path
