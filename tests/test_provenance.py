"""pipeline.provenance: the versions recorded in build.json and the evaluation report."""
from __future__ import annotations

import re

import numpy as np

from pipeline.provenance import software_versions


def test_versions_name_the_toolkit_python_and_the_asked_modules():
    v = software_versions(("numpy", "no_such_module_xyz"))
    assert v["numpy"] == np.__version__ and v["no_such_module_xyz"] == "not installed"
    assert v["perspose"] != "" and re.fullmatch(r"\d+\.\d+\.\d+", v["python"])
    assert v["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", v["git_sha"])
    assert "torch" not in v                                 # only what was asked for
