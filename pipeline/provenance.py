"""What software wrote a file: the toolkit's version and git commit, Python, the platform, and library versions.

build.json and the evaluation report record it, so a number can be traced to the code that produced it."""
from __future__ import annotations

import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

__all__ = ["software_versions"]

_DISTRIBUTIONS = {"cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                          "opencv-contrib-python")}


@lru_cache(maxsize=1)
def _toolkit() -> tuple[str, str | None]:
    try:
        pkg = metadata.version("perspose")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=5,
                             capture_output=True, text=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return pkg, sha


def _version(name: str) -> str:
    mod = sys.modules.get(name)
    if mod is not None:
        return str(getattr(mod, "__version__", "unknown"))
    for dist in _DISTRIBUTIONS.get(name, (name,)):   # without importing it (webdataset would import torch)
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def software_versions(modules=("numpy", "cv2")) -> dict:
    """{'perspose', 'git_sha', 'python', 'platform', module: version ...}: a loaded module's ``__version__``,
    else its installed distribution's version, else 'not installed'. Nothing is imported."""
    pkg, sha = _toolkit()
    out = {"perspose": pkg, "git_sha": sha, "python": platform.python_version(), "platform": sys.platform}
    out.update({name: _version(name) for name in modules})
    return out
