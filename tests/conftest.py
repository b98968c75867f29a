"""Shared pytest fixtures. Keep this generic: test-specific helpers live in their own test files."""
from __future__ import annotations

from pathlib import Path

import pytest

# The real fixtures live outside the repository (never committed): <repo>/../shared/fixtures/real
REAL_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Path of the real-data fixtures; skips the test when they are not present on this machine."""
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real fixtures not found at {REAL_FIXTURES}")
    return REAL_FIXTURES
