"""Shared pytest fixtures. Keep this generic: test-specific helpers live in their own test files."""
from __future__ import annotations

from pathlib import Path

import pytest

from _fixtures import require_real


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Path of the real-data fixtures (see tests/_fixtures.py); skips the test when they are not present."""
    return require_real()
