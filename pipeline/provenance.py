"""What software wrote a file: the toolkit's version and git commit, Python, the platform, and library versions.

build.json and the evaluation report record it, so a number can be traced to the code that produced it."""
from __future__ import annotations

import importlib
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

__all__ = ["software_versions"]


@lru_cache(maxsize=1)
def _toolkit() -> tuple[str, str | None]:
    try:
        from importlib.metadata import version
        pkg = version("perspose")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        pkg = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=5,
                             capture_output=True, text=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return pkg, sha


def software_versions(modules=("numpy", "cv2")) -> dict:
    """{'perspose', 'git_sha', 'python', 'platform', module: version ...}; a module that is not installed is
    'not installed' (modules are imported here, so list only those the caller has reason to load)."""
    pkg, sha = _toolkit()
    out = {"perspose": pkg, "git_sha": sha, "python": platform.python_version(), "platform": sys.platform}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            out[name] = "not installed"
    return out
