"""Restricted unpickler and the chumpy-free SMPL converter."""
from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from fake_smpl import random_smpl_model
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.smpl_convert import SMPL_KEYS, read_smpl_model
from pipeline.unpickle import UnsafePickleError, restricted_load, restricted_loads


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"a": np.arange(3), "evil": _Evil(marker)}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|nt|os)\.system"):
        restricted_loads(data)
    assert not marker.exists()
    # the unrestricted loader WOULD have run it: make sure the test pickle really is malicious
    pickle.loads(data)
    assert marker.exists()


def test_restricted_unpickler_reads_numpy_data_protocols(tmp_path):
    obj = {"x": np.arange(12, dtype=np.float64).reshape(3, 4), "s": np.str_("seq"), "l": [np.uint8(1), 2.5],
           "b": b"bytes", "n": np.float32(1.5)}
    for proto in (2, 4, 5):
        p = tmp_path / f"p{proto}.pkl"
        p.write_bytes(pickle.dumps(obj, protocol=proto))
        back = restricted_load(p)
        np.testing.assert_array_equal(back["x"], obj["x"])
        assert str(back["s"]) == "seq" and back["b"] == b"bytes" and back["n"] == np.float32(1.5)


def _chumpy_pickle(model: dict, path) -> None:
    """Write a pickle shaped like the official SMPL files: chumpy Ch objects (fake classes registered as
    chumpy.ch.Ch for the dump only), a scipy csc J_regressor, protocol 2."""
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:  # state like chumpy's __getstate__: __dict__ minus caches, the array in 'x'
        def __init__(self, x):
            self.x = x
            self.label = None

        def __getstate__(self):
            return {"x": self.x, "label": self.label, "_dirty_vars": set()}

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_mod.Ch = Ch
    pkg = types.ModuleType("chumpy")
    pkg.ch = ch_mod
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch_mod
    try:
        d = {"v_template": Ch(model["v_template"]), "shapedirs": Ch(model["shapedirs"]),
             "posedirs": model["posedirs"], "J_regressor": sp.csc_matrix(model["J_regressor"]),
             "weights": Ch(model["weights"]), "kintree_table": model["kintree_table"], "f": model["f"],
             "J": Ch(np.zeros((24, 3))), "bs_style": "lbs", "bs_type": "lrotmin"}
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=2)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_smpl_convert_roundtrip_chumpy_pickle_to_npz_loaded_by_smplx(tmp_path):
    import smplx
    import torch
    from smplx.utils import Struct
    model = random_smpl_model(seed=3, num_betas=10)
    src, out = tmp_path / "SMPL_NEUTRAL.pkl", tmp_path / "SMPL_NEUTRAL.npz"
    _chumpy_pickle(model, src)
    assert "chumpy" not in sys.modules
    res = CliRunner().invoke(main, ["smpl-convert", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "chumpy" not in sys.modules  # never imported
    with np.load(out, allow_pickle=False) as z:  # pickle-free file
        assert set(z.files) == set(SMPL_KEYS)
        for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
            np.testing.assert_array_equal(z[k], model[k])
        np.testing.assert_array_equal(z["f"], model["f"].astype(np.int64))
        arrays = {k: z[k] for k in z.files}
    layer = smplx.SMPL(model_path=str(out), data_struct=Struct(**arrays), num_betas=10)
    o = layer(betas=torch.zeros(2, 10), body_pose=torch.zeros(2, 69), global_orient=torch.zeros(2, 3))
    assert tuple(o.vertices.shape) == (2, 6890, 3) and tuple(o.joints.shape[:2]) == (2, 45)
    np.testing.assert_allclose(o.vertices[0].detach().numpy(), model["v_template"], atol=1e-5)
    # the toolkit's own wrapper (float64, any beta count)
    from pipeline.body_model import load_smpl
    m = load_smpl(out, "neutral", num_betas=10)
    r = m(np.zeros((3, 10)), np.zeros((3, 72)), np.tile([0.0, 0.0, 3.0], (3, 1)))
    assert r.vertices.shape == (3, 6890, 3) and r.joints.shape == (3, 24, 3)
    # atol: smplx rounds the model arrays to float32 on load
    np.testing.assert_allclose(r.joints[0], model["J_regressor"] @ model["v_template"] + [0, 0, 3], atol=1e-6)
    # the pickle itself is accepted by the adapters too (converted in memory)
    np.testing.assert_array_equal(read_smpl_model(src)["J_regressor"], model["J_regressor"])


def test_smpl_convert_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "SMPL_NEUTRAL.pkl"
    src.write_bytes(pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    res = CliRunner().invoke(main, ["smpl-convert", str(src), "--out", str(tmp_path / "o.npz")])
    assert res.exit_code == 2
    assert "refusing to load global" in res.output and str(src) in res.output
    assert not marker.exists() and not (tmp_path / "o.npz").exists()


def test_smpl_convert_errors_name_the_file(tmp_path):
    res = CliRunner().invoke(main, ["smpl-convert", str(tmp_path / "nope.pkl"), "--out", str(tmp_path / "o.npz")])
    assert res.exit_code == 2 and "nope.pkl" in res.output
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"v_template": np.zeros((10, 3))}, protocol=2))
    with pytest.raises(InputError, match="missing"):
        read_smpl_model(bad)
