"""pipeline.provenance: the versions recorded in build.json and the evaluation report."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.provenance import software_versions


def test_versions_name_the_toolkit_python_and_the_asked_modules():
    v = software_versions(("numpy", "no_such_module_xyz"))
    assert v["numpy"] == np.__version__ and v["no_such_module_xyz"] == "not installed"
    assert v["perspose"] != "" and re.fullmatch(r"\d+\.\d+\.\d+", v["python"])
    assert v["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", v["git_sha"])
    assert "torch" not in v                                 # only what was asked for


def test_versions_import_nothing():
    code = ("import sys; from pipeline.provenance import software_versions; "
            "v = software_versions(('webdataset', 'torch', 'simplejpeg')); "
            "assert 'torch' not in sys.modules and 'webdataset' not in sys.modules, sorted(sys.modules); "
            "assert v['torch'] != 'not installed', v; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
