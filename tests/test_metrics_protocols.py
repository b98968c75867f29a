"""Issue 16: the published PCK/AUC protocol (strict threshold, no zero-by-construction joint), a hand-computed case
per protocol, non-finite predictions that never crash the evaluator, and non-finite ground truth that never
reaches a shard."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import geometry as g
from pipeline.errors import InputError
from pipeline.manifest import validate_row
from pipeline.shard import BuildOptions, Rejected, process_row
from pipeline.skeleton import get_skeleton
from trainer import evaluate as E
from trainer import metrics as M
from test_evaluate import _build, _ckpt, _run, _truth  # noqa: F401


def _case(skeleton: str, seed: int = 0):
    """Ground truth and a prediction whose root-relative error per joint is known exactly: joint j is moved by
    err[j] mm along x (the root is not moved, so root alignment leaves the errors as they are)."""
    sk = get_skeleton(skeleton)
    rng = np.random.default_rng(seed)
    gt = rng.integers(-300, 300, (1, sk.num_joints, 3)).astype(np.float64) + [0, 0, 4000]   # integers: exact sums
    err = rng.choice([0.0, 50.0, 149.0, 150.0, 151.0, 400.0], sk.num_joints)
    err[sk.root] = 0.0                     # (integer millimetres and exact thresholds: no rounding anywhere)
    pred = gt.copy()
    pred[0, :, 0] += err
    return sk, gt, pred, err


@pytest.mark.parametrize("skeleton", ["h36m17", "mpi_inf_3dhp17", "mpi_inf_3dhp28", "smpl24"])
def test_hand_computed_case_per_protocol(skeleton):
    sk, gt, pred, err = _case(skeleton)
    p = E.protocol_for(skeleton)
    assert sk.root not in p.pck_joints                                   # never a zero-by-construction joint
    e = M.joint_errors(M.root_relative(pred, p.root), M.root_relative(gt, p.root))[:, list(p.pck_joints)]
    assert M.mpjpe(pred, gt, p.root, p.joints)[0] == pytest.approx(err[list(p.joints)].mean(), abs=1e-9)
    pck_by_hand = np.mean([err[j] < 150.0 for j in p.pck_joints])       # 150.0 itself is a miss
    assert M.pck(e)[0] == pytest.approx(pck_by_hand, abs=1e-12)
    auc_by_hand = np.mean([[err[j] < t for j in p.pck_joints] for t in range(0, 151, 5)])
    assert M.auc(e)[0] == pytest.approx(auc_by_hand, abs=1e-12)


def test_protocol_joint_sets_are_the_published_ones():
    assert E.protocol_for("smpl24").pck_joints == tuple(range(1, 24))    # the 23 non-root joints
    assert E.protocol_for("smpl24").joints == tuple(range(24))           # MPJPE over all 24, as before
    h = E.protocol_for("h36m17")
    assert 0 not in h.joints and h.pck_joints == h.joints and len(h.joints) == 14
    d = E.protocol_for("mpi_inf_3dhp17")
    assert d.root == 14 and 14 not in d.pck_joints and len(d.pck_joints) == 14 and len(d.joints) == 17


def test_a_perfect_prediction_scores_the_published_auc(tmp_path):
    rec = E.evaluate(_truth, [_build(tmp_path)[0]], progress=False)["records"]
    np.testing.assert_allclose(rec["auc"], 30 / 31, atol=1e-12)
    assert np.all(rec["pck150"] == 1.0)


def test_pa_mpjpe_of_a_nan_sample_is_nan_without_crashing_the_others():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(4, 14, 3))
    pred = gt + rng.normal(0, 0.01, gt.shape)
    pred[1, 3, 2] = np.nan
    pred[2, 0, 0] = np.inf
    out = M.pa_mpjpe(pred, gt)
    assert np.isnan(out[1]) and np.isnan(out[2]) and np.all(np.isfinite(out[[0, 3]]))
    np.testing.assert_allclose(out[[0, 3]], M.pa_mpjpe(pred[[0, 3]], gt[[0, 3]]), rtol=1e-12)
    e = M.joint_errors(pred, gt)
    assert np.isnan(M.pck(e)[1]) and np.isnan(M.auc(e)[2]) and np.isfinite(M.pck(e)[0])


def _nan_for(sample_ids):
    def predict(batch):
        out = _truth(batch)
        uvd = np.array(out["uvd"], dtype=np.float64)
        for i, m in enumerate(batch["meta"]):
            if m["sample_id"] in sample_ids:
                uvd[i, 2, 1] = np.nan                                    # joint 2's v
        return {"uvd": uvd, "scale": out["scale"]}
    return predict


def test_nonfinite_prediction_is_an_error_naming_the_sample_or_is_skipped_and_listed(tmp_path):
    out, rows = _build(tmp_path)
    victim = rows[5]
    with pytest.raises(InputError, match=r"^[^\n]*test-00000\d\.tar: sample \S+: the prediction is not finite "
                                         r"\(joint \w+ = [^\n]*--skip-nonfinite[^\n]*$"):
        E.evaluate(_nan_for({victim["sample_id"]}), [out], progress=False)
    res = E.evaluate(_nan_for({victim["sample_id"]}), [out], progress=False, skip_nonfinite=True)
    full = E.evaluate(_truth, [out], progress=False)
    assert res["counts"]["skipped_nonfinite"] == 1 and res["counts"]["evaluated"] == full["counts"]["evaluated"] - 1
    assert [b["sample_id"] for b in res["nonfinite"]] == [victim["sample_id"]]
    assert res["nonfinite"][0]["joint"] == get_skeleton(victim["skeleton"]).joint_names[2]
    assert victim["sample_id"] not in res["records"]["sample_id"]
    assert np.all(np.isfinite(res["records"]["pa_mpjpe"]))


def test_cli_with_a_nan_weight_one_line_or_a_complete_report(tmp_path):
    out, _ = _build(tmp_path)
    ck_path = _ckpt(tmp_path)
    ck = torch.load(ck_path, weights_only=True)
    name = next(k for k in ck["model"] if k.startswith("depth_head") and k.endswith("weight"))
    ck["model"][name].view(-1)[0] = float("nan")                       # one output-layer weight
    torch.save(ck, tmp_path / "nan.pt")
    r = _run(["--ckpt", tmp_path / "nan.pt", "--shards", out, "--out", tmp_path / "rep", "--device", "cpu",
              "--no-progress"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "not finite" in lines[0] and "sample" in lines[0], r.output
    r = _run(["--ckpt", tmp_path / "nan.pt", "--shards", out, "--out", tmp_path / "rep", "--device", "cpu",
              "--no-progress", "--skip-nonfinite"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    n = rep["counts"]["skipped_nonfinite"]       # the NaN row feeds one skeleton's joints: its samples go
    assert 0 < n < 12 and rep["counts"]["evaluated"] == 12 - n and len(rep["nonfinite"]) == n
    assert rep["metrics"]["datasets"] and all(np.isfinite(d["mpjpe_mm"]) for d in rep["metrics"]["datasets"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"skipped (non-finite prediction) {n}" in md and f"Left out: {n} sample(s)" in md
    assert f"left out {n} sample(s)" in r.output


def _row(**kw):
    K = g.intrinsics(500.0, 500.0, 320.0, 240.0)
    joints = np.array([[0.0, 0.0, 3.0]] * 17) + np.random.default_rng(0).normal(0, 0.2, (17, 3))
    uv = g.project(joints, K)
    lo, hi = uv.min(0), uv.max(0)
    row = {"sample_id": "t/test/s/0/0", "dataset": "t", "split": "test", "sequence": "s", "frame": 0, "person": 0,
           "image_path": "x.jpg", "image_w": 640, "image_h": 480, "K": K.reshape(-1).tolist(), "dist": [],
           "bbox": [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], "skeleton": "h36m17",
           "joints_cam": joints.reshape(-1).tolist(), "joints_2d": None, "joints_vis": [1] * 17}
    row.update(kw)
    return row


@pytest.mark.parametrize("what", ["nan", "inf", "z0", "zneg", "K_nan"])
def test_nonfinite_or_behind_camera_ground_truth_never_reaches_a_shard(what):
    """Every adapter writes through manifest validation (validate_row), and the builder re-checks each row
    (process_row), so a hand-edited manifest cannot slip one past either."""
    j = np.array(_row()["joints_cam"]).reshape(17, 3)
    K = _row()["K"]
    if what == "nan":
        j[4, 1] = np.nan
    elif what == "inf":
        j[7, 0] = np.inf
    elif what == "z0":
        j[3, 2] = 0.0
    elif what == "zneg":
        j[3, 2] = -1.0
    else:
        K = list(K)
        K[2] = np.nan
    row = _row(joints_cam=j.reshape(-1).tolist(), K=K)
    assert validate_row(row, None, check_images=False) is not None
    with pytest.raises(Rejected):
        process_row(row, np.zeros((480, 640, 3), np.uint8), BuildOptions(crop_size=64))
