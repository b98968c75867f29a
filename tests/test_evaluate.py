"""perspose-eval end to end: generated rows -> real shards (pipeline.shard) -> evaluate -> report / CLI.

The ground-truth stub (predict_fn returning the stored labels of the centre-sliced crop) is used ONLY here: it
proves the UVD -> crop camera -> R^T -> original camera path is exact (every error ~0), with PR and without.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from pipeline import geometry as g
from pipeline.errors import InputError
from pipeline.manifest import make_sample_id
from pipeline.shard import BuildOptions, decode_sample, encode_sample, iter_tar, process_row, write_tar
from pipeline.skeleton import get_skeleton
from trainer import evaluate as E
from trainer.report import reference_rows, summarize, write_report

S = 64
# float32 storage of uvd / joints_rot bounds the round trip: measured max ~2e-4 mm; asserted with margin
TOL_MM = 2e-3


def _rows(seed: int, n_per_skeleton: int = 4):
    """Manifest rows (real schema) and their images: 3 skeletons, off-centre people (PR angles up to ~30 deg),
    fx != fy, an off-centre principal point, plus one 2D-only row."""
    rng = np.random.default_rng(seed)
    W, H = 200, 150
    K = g.intrinsics(180.0, 185.0, 97.3, 80.1)
    rows, images = [], []
    specs = [("h36m", "h36m17", "s_09_act_05_subact_02_ca_01"), ("3dhp", "mpi_inf_3dhp17", "TS1"),
             ("synth", "smpl24", "seq0")]
    for ds, sk_name, seq in specs:
        J = get_skeleton(sk_name).num_joints
        for i in range(n_per_skeleton):
            z = rng.uniform(3.0, 5.0)
            c = np.array([rng.uniform(-0.5, 0.5) * z, rng.uniform(-0.35, 0.35) * z, z])
            joints = c + rng.normal(0.0, 0.3, (J, 3)) * np.array([1.0, 2.0, 0.6])
            uv = g.project(joints, K)
            lo, hi = uv.min(0), uv.max(0)
            bbox = [lo[0] - 5, lo[1] - 5, hi[0] - lo[0] + 10, hi[1] - lo[1] + 10]
            seq_i = seq if ds != "h36m" or i < 2 else "s_11_act_13_subact_01_ca_02"
            rows.append({"sample_id": make_sample_id(ds, "test", seq_i, i, 0), "dataset": ds, "split": "test",
                         "sequence": seq_i, "frame": i, "person": 0, "image_path": f"{ds}_{i}.jpg", "image_w": W,
                         "image_h": H, "K": K.reshape(-1).tolist(), "dist": [], "bbox": bbox, "skeleton": sk_name,
                         "joints_cam": joints.astype(np.float32).reshape(-1).tolist(), "joints_2d": None,
                         "joints_vis": [1] * J, "smpl": None, "meta": None})
            images.append(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    uv = rng.uniform([20, 20], [180, 130], (17, 2))
    rows.append({**rows[0], "sample_id": make_sample_id("h36m", "test", "twod", 0, 0), "sequence": "twod",
                 "joints_cam": None, "joints_2d": uv.reshape(-1).tolist(), "bbox": [20, 20, 160, 110]})
    images.append(images[0])
    return rows, images


def _build(tmp_path, pr: bool = True, seed: int = 0):
    rows, images = _rows(seed)
    opts = BuildOptions(crop_size=S, context=1.25, pr=pr)
    enc = [encode_sample(process_row(r, im, opts)) for r, im in zip(rows, images)]
    out = tmp_path / ("pr" if pr else "nopr")
    out.mkdir()
    write_tar(out / "test-000000.tar", enc[:7])
    write_tar(out / "test-000001.tar", enc[7:])
    return out, rows


def _truth(batch):
    return {"uvd": batch["uvd"], "scale": batch["scale"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("shards"), pr=True)


@pytest.mark.parametrize("pr", [True, False])
def test_ground_truth_predictions_give_zero_error_in_original_frame(tmp_path, pr):
    out, rows = _build(tmp_path, pr=pr)
    res = E.evaluate(_truth, [out], batch_size=3, progress=False)
    rec = res["records"]
    assert res["counts"] == {"samples": 13, "evaluated": 12, "skipped_2d_only": 1, "skipped_nonfinite": 0}
    for m in ("mpjpe", "pa_mpjpe", "depth_err", "root_err"):
        assert np.max(rec[m]) < TOL_MM, (m, np.max(rec[m]))
    assert np.all(rec["pck150"] == 1)
    # strict AUC (error < threshold): nothing is below the 0 mm threshold, so a perfect prediction scores 30/31
    np.testing.assert_allclose(rec["auc"], 30 / 31, rtol=0, atol=1e-12)
    # the ground truth R^T joints_rot is the manifest's joints_cam (original camera)
    by_id = {r["sample_id"]: np.asarray(r["joints_cam"], np.float64).reshape(-1, 3) for r in rows if r["joints_cam"]}
    for sid, gt, pred in zip(rec["sample_id"], rec["gt_cam"], rec["pred_cam"]):
        np.testing.assert_allclose(gt, by_id[sid], atol=2e-6)
        np.testing.assert_allclose(pred, by_id[sid], atol=2e-6)
    first = decode_sample(next(iter_tar(out / "test-000000.tar")))
    if pr:  # the test is only meaningful with real rotations
        assert np.max(rec["pr_angle_deg"]) > 20
        np.testing.assert_allclose(first["arrays"]["K_crop"][:2, 2], [(S * 1.25 - 1) / 2] * 2, atol=1e-9)
    else:  # R = I, principal point off the crop centre
        assert np.all(first["arrays"]["R"] == np.eye(3))
        assert np.abs(first["arrays"]["K_crop"][:2, 2] - (S * 1.25 - 1) / 2).max() > 1.0


def test_missing_rotation_back_is_caught(built, monkeypatch):
    """A pipeline that forgets R^T (joints left in the rotated crop camera) must show up in the metrics."""
    out, rows = built
    real = E.joints_from_uvd
    monkeypatch.setattr(E, "joints_from_uvd", lambda uvd, s, K, R=None: real(uvd, s, K, None))
    rec = E.evaluate(_truth, [out], batch_size=4, progress=False)["records"]
    big = rec["pr_angle_deg"] > 10
    assert big.sum() >= 6
    assert np.all(rec["root_err"][big] > 100.0)   # metres off at 3-5 m depth and 10-30 deg
    assert np.all(rec["mpjpe"][big] > 5.0)        # root-aligned MPJPE is rotation-sensitive too
    assert np.max(rec["pa_mpjpe"]) < TOL_MM        # a pure rotation: Procrustes undoes it
    assert np.max(rec["depth_err"]) < TOL_MM       # depth is measured in the crop camera
    # the root error equals |R P_root - P_root| computed independently from the manifest rows
    by_id = {r["sample_id"]: r for r in rows}
    for sid, err, ang in zip(rec["sample_id"], rec["root_err"], rec["pr_angle_deg"]):
        r = by_id[sid]
        sk = get_skeleton(r["skeleton"])
        P = np.asarray(r["joints_cam"], np.float64).reshape(-1, 3)
        K = np.asarray(r["K"]).reshape(3, 3)
        R = g.rotation_to_optical_axis(g.center_ray(np.asarray(r["bbox"]), K))
        assert np.isclose(np.degrees(g.pr_angle(g.center_ray(np.asarray(r["bbox"]), K))), ang)
        np.testing.assert_allclose(err, 1000 * np.linalg.norm(R @ P[sk.root] - P[sk.root]), atol=TOL_MM)


def test_known_perturbations(built):
    out, rows = built

    def deeper(b):  # +10 mm on every relative depth except the root's, scale x 1.01
        uvd = b["uvd"].copy()
        root = get_skeleton(b["skeleton"]).root
        uvd[:, :, 2] += 0.010
        uvd[:, root, 2] -= 0.010
        return {"uvd": uvd, "scale": b["scale"] * 1.01}
    rec = E.evaluate(deeper, [out], batch_size=5, progress=False)["records"]
    by_id = {r["sample_id"]: r for r in rows}
    for i, sid in enumerate(rec["sample_id"]):
        r = by_id[sid]
        P = np.asarray(r["joints_cam"], np.float64).reshape(-1, 3)
        root = get_skeleton(r["skeleton"]).root
        # scaling s scales z'_root, and the root point moves along its own ray: |dP| = 0.01 |P_root|
        np.testing.assert_allclose(rec["root_err"][i], 10.0 * np.linalg.norm(P[root]), rtol=1e-4)
        # every protocol joint's depth moved by 10 mm (the root is excluded in h36m14; averaged in otherwise)
        p = E.protocol_for(r["skeleton"])
        expect = 10.0 * sum(j != root for j in p.joints) / len(p.joints)
        np.testing.assert_allclose(rec["depth_err"][i], expect, atol=TOL_MM)


def test_batch_size_and_order_invariance(built):
    out, _ = built
    shards = [out]
    a = E.evaluate(_truth, shards, batch_size=1, progress=False)["records"]
    b = E.evaluate(_truth, shards, batch_size=64, progress=False)["records"]
    assert a["sample_id"] == b["sample_id"] == sorted(a["sample_id"])
    for k in ("mpjpe", "pa_mpjpe", "root_err"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-9)  # batched BLAS rounding only (mm)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loader_workers_give_the_same_result(built):
    out, _ = built
    shards = [out]  # 2 shards: 2 workers split by shard, 3 workers by sample
    ref = E.evaluate(_truth, shards, batch_size=4, progress=False)
    for w in (2, 3):
        got = E.evaluate(_truth, shards, batch_size=4, progress=False, workers=w)
        assert got["counts"] == ref["counts"] and got["records"]["sample_id"] == ref["records"]["sample_id"]
        np.testing.assert_allclose(got["records"]["root_err"], ref["records"]["root_err"], atol=1e-9)
    with pytest.raises(InputError, match="^[^\\n]*not predicted by the model[^\\n]*$"):  # one line from a worker
        # the first sample is h36m17 (the resolver's check passes); the others fail in the workers
        E.evaluate(_truth, shards, skeletons=("h36m17",), progress=False, workers=2)


def test_protocols_and_actions():
    p = E.protocol_for("h36m17")
    assert p.name == "h36m14" and len(p.joints) == 14 and p.root == 0 and p.pck_joints == p.joints
    p = E.protocol_for("mpi_inf_3dhp17")
    assert len(p.joints) == 17 and p.pck_joints == tuple(range(14)) and p.root == 14
    assert E.protocol_for("smpl24").joints == tuple(range(24))
    p = E.protocol_for("mpi_inf_3dhp28")
    assert p.root == 4 and get_skeleton("mpi_inf_3dhp28").joint_names[p.joints[14]] == "pelvis"
    with pytest.raises(ValueError):
        E.protocol_for("coco17")
    assert E.action_of({"dataset": "h36m", "sequence": "s_09_act_05_subact_02_ca_01"}) == "Greeting"
    assert E.action_of({"dataset": "whatever", "sequence": "s_11_act_16_subact_01_ca_01"}) == "WalkTogether"
    assert E.action_of({"dataset": "h36m", "sequence": "S9_TakingPhoto_1"}) == "Photo"
    assert E.action_of({"dataset": "3dpw", "sequence": "downtown_walking_00"}) == ""
    assert E.action_of({"dataset": "x", "sequence": "y", "action": "Jump"}) == "Jump"


def test_report_files(built, tmp_path):
    out, _ = built
    res = E.evaluate(_truth, [out], batch_size=4, progress=False)
    s = summarize(res["records"])
    assert [(r["dataset"], r["protocol"], r["n"]) for r in s["datasets"]] == \
        [("3dhp", "3dhp17", 4), ("h36m", "h36m14", 4), ("synth", "smpl24", 4)]
    assert {r["action"] for r in s["actions"]} == {"Greeting", "Waiting"}
    assert sum(r["n"] for r in s["pr_angle_bins"]) == 12
    assert all(r["pr_bin"].endswith(("0", "5")) for r in s["pr_angle_bins"])
    pj = {x["protocol"]: x for x in s["per_joint"]}
    assert len(pj["3dhp17"]["joints"]) == 17 and sum(j["in_pck"] for j in pj["3dhp17"]["joints"]) == 14
    report = {"checkpoint": {"path": "x.pt", "sha256": "0" * 64, "step": 1}, "shards": [], "options": {},
              "counts": res["counts"], "protocols": {p: E.protocol_for(sk).as_dict() for p, sk in
                                                     (("h36m14", "h36m17"), ("3dhp17", "mpi_inf_3dhp17"))},
              "metrics": s}
    files = write_report(tmp_path / "rep", report, res["records"])
    names = sorted(f.name for f in files)
    assert names == ["error_vs_pr_angle.png", "per_joint_error.png", "predictions.parquet", "report.json",
                     "report.md"]
    assert json.loads((tmp_path / "rep/report.json").read_text())["metrics"]["datasets"][0]["n"] == 4
    md = (tmp_path / "rep/report.md").read_text()
    assert "| dataset | protocol | MPJPE | PA-MPJPE | PCK@150 | AUC | depth err | root err | N |" in md
    assert "| synth | smpl24 | constant mean pose |" in md and "| synth | smpl24 | zero relative depth |" in md
    refs = json.loads((tmp_path / "rep/report.json").read_text())["metrics"]["references"]
    assert len(refs) == 6 and refs[1]["mpjpe_mm"] is None
    for png in ("per_joint_error.png", "error_vs_pr_angle.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = pq.read_table(tmp_path / "rep/predictions.parquet")
    assert t.num_rows == 12 and t.column("sample_id").to_pylist() == sorted(t.column("sample_id").to_pylist())
    row = t.slice(0, 1).to_pylist()[0]
    pred = np.asarray(row["pred_cam"]).reshape(-1, 3)
    rel = np.asarray(row["pred_rel"]).reshape(-1, 3)
    root = E.protocol_for(row["skeleton"]).root
    np.testing.assert_allclose(rel, pred - pred[root], atol=1e-12)
    np.testing.assert_allclose(pred, np.asarray(row["gt_cam"]).reshape(-1, 3), atol=2e-6)
    assert not list((tmp_path / "rep").glob(".*tmp"))  # atomic writes left no temporaries


def test_reference_rows_are_what_learning_nothing_scores(built):
    """The constant-mean-pose row equals a direct computation per protocol; a model that predicts that constant
    scores x1.00 against it, the perfect model x0.00; the zero-depth row is the mean |relative depth|."""
    out, _ = built
    rec = E.evaluate(_truth, [out], batch_size=4, progress=False)["records"]
    s = summarize(rec)
    refs = {(r["dataset"], r["reference"]): r for r in s["references"]}
    assert len(refs) == 6
    for ds in ("3dhp", "h36m", "synth"):
        idx = [i for i, d in enumerate(rec["dataset"]) if d == ds]
        p = E.protocol_for(rec["skeleton"][idx[0]])
        rel = np.stack([rec["gt_cam"][i] - rec["gt_cam"][i][p.root] for i in idx])[:, list(p.joints)] * 1000
        direct = np.mean([np.linalg.norm(rel.mean(0) - r, axis=-1).mean() for r in rel])
        const = refs[(ds, "constant mean pose")]
        assert const["mpjpe_mm"] == pytest.approx(direct, rel=1e-12) and direct > 50
        assert const["model_over_ref_mpjpe"] < 1e-6                      # the ground truth as the model
        crop = np.stack([rec["gt_crop"][i] - rec["gt_crop"][i][p.root] for i in idx])[:, list(p.joints)] * 1000
        zero = refs[(ds, "zero relative depth")]
        assert zero["depth_err_mm"] == pytest.approx(np.abs(crop[..., 2]).mean(), rel=1e-12)
        assert zero["mpjpe_mm"] is None and zero["model_over_ref_depth"] < 1e-6
    # the constant itself as the model: its MPJPE over the reference is exactly 1
    model = [{"dataset": r["dataset"], "protocol": r["protocol"], "mpjpe_mm": r["mpjpe_mm"],
              "depth_err_mm": r["depth_err_mm"]} for r in s["references"] if r["reference"] == "constant mean pose"]
    again = [r for r in reference_rows(rec, model) if r["reference"] == "constant mean pose"]
    assert all(r["model_over_ref_mpjpe"] == pytest.approx(1.0, abs=1e-12) for r in again)


def test_bad_shard_inputs(tmp_path):
    with pytest.raises(InputError, match="no such shard"):
        E.evaluate(_truth, [tmp_path / "nope"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tar shards"):
        E.evaluate(_truth, [tmp_path / "empty"], progress=False)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(InputError, match="not a readable tar"):
        E.evaluate(_truth, [bad], progress=False)
    built_dir = _build(tmp_path)[0]
    once = E.evaluate(_truth, [built_dir], progress=False)["counts"]   # a shard named twice is read once
    assert E.evaluate(_truth, [built_dir, built_dir / "test-000000.tar"], progress=False)["counts"] == once
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "again.tar").write_bytes((built_dir / "test-000000.tar").read_bytes())
    with pytest.raises(InputError, match="more than once"):                # the same samples in another file
        E.evaluate(_truth, [built_dir, copy], progress=False)
    with pytest.raises(InputError, match="not predicted by the model"):          # the first sample's, at once
        E.evaluate(_truth, [built_dir], skeletons=("smpl24",), progress=False)
    with pytest.raises(InputError, match="not predicted by the model"):          # a later sample's
        E.evaluate(_truth, [built_dir], skeletons=("h36m17",), progress=False)


def test_predict_fn_shape_mismatch_is_reported(built):
    out, _ = built
    with pytest.raises(ValueError, match="expected"):
        E.evaluate(lambda b: {"uvd": b["uvd"][:, :3], "scale": b["scale"]}, [out], progress=False)


# ------------------------------------------------------------------------------------------- CLI
def _ckpt(tmp_path, name="ck.pt", **overrides):
    from trainer.checkpoint import save_checkpoint
    from trainer.configtools import config_to_dict
    from trainer.model import ModelConfig, build_model

    cfg = ModelConfig.tiny(crop_size=S, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    return save_checkpoint(tmp_path / name, {"model": model.state_dict(), "config": {"model": config_to_dict(cfg)},
                                              "step": 5})


def _run(args):
    from trainer.eval_cli import main
    if "--workers" not in args:
        args = [*args, "--workers", 0]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_end_to_end(built, tmp_path):
    out, _ = built
    ck = _ckpt(tmp_path)
    r = _run(["--ckpt", ck, "--shards", out / "test-000000.tar", out / "test-000001.tar",  # --shards A B
              "--out", tmp_path / "rep", "--batch-size", 5, "--device", "cpu", "--no-progress", "--workers", 2])
    assert r.exit_code == 0, r.output
    assert "MPJPE" in r.output and "h36m14" in r.output
    rep = json.loads((tmp_path / "rep/report.json").read_text())
    assert rep["checkpoint"]["step"] == 5 and len(rep["checkpoint"]["sha256"]) == 64
    assert rep["versions"]["torch"] == str(torch.__version__) and "perspose" in rep["versions"]
    assert rep["counts"]["evaluated"] == 12 and rep["options"]["flip_test"] is True
    assert len(rep["shards"]) == 2 and set(rep["protocols"]) == {"h36m14", "3dhp17", "smpl24"}
    assert all(np.isfinite(d["mpjpe_mm"]) and d["mpjpe_mm"] > 0 for d in rep["metrics"]["datasets"])
    # flip test changes the numbers (an untrained model is not mirror-symmetric); both run
    r2 = _run(["--ckpt", ck, "--shards", out, "--out", tmp_path / "rep2", "--device", "cpu", "--no-flip-test",
               "--no-progress", "--workers", 0])
    assert r2.exit_code == 0, r2.output
    rep2 = json.loads((tmp_path / "rep2/report.json").read_text())
    assert rep2["metrics"]["datasets"][0]["mpjpe_mm"] != rep["metrics"]["datasets"][0]["mpjpe_mm"]


def _one_line_error(r, needle):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.output


def test_cli_bad_inputs(built, tmp_path):
    out, _ = built
    ck = _ckpt(tmp_path)
    rep = tmp_path / "rep"
    _one_line_error(_run(["--ckpt", tmp_path / "missing.pt", "--shards", out, "--out", rep]), "not found")
    _one_line_error(_run(["--ckpt", ck, "--shards", tmp_path / "nodir", "--out", rep]), "no such shard")
    _one_line_error(_run(["--ckpt", ck, "--out", rep]), "no shards given")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    _one_line_error(_run(["--ckpt", junk, "--shards", out, "--out", rep]), "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    _one_line_error(_run(["--ckpt", tmp_path / "other.pt", "--shards", out, "--out", rep]),
                    "not a perspose checkpoint")
    wrong_sk = _ckpt(tmp_path, "sk.pt", skeletons=("smpl24", "coco17"))
    _one_line_error(_run(["--ckpt", wrong_sk, "--shards", out, "--out", rep, "--device", "cpu", "--no-progress"]),
                    "not predicted by the model")
    from trainer.checkpoint import save_checkpoint
    from trainer.configtools import config_to_dict
    from trainer.model import ModelConfig, build_model
    cfg96 = ModelConfig.tiny(crop_size=96)
    save_checkpoint(tmp_path / "c96.pt", {"model": build_model(cfg96).state_dict(),
                                          "config": {"model": config_to_dict(cfg96)}})
    _one_line_error(_run(["--ckpt", tmp_path / "c96.pt", "--shards", out, "--out", rep, "--device", "cpu",
                          "--no-progress"]), "smaller than the model's crop size 96")
    cfg32 = ModelConfig.tiny(crop_size=32)     # the crop-size rule: 64 px shards serve a 32 px model
    save_checkpoint(tmp_path / "c32.pt", {"model": build_model(cfg32).state_dict(),
                                          "config": {"model": config_to_dict(cfg32)}})
    r32 = _run(["--ckpt", tmp_path / "c32.pt", "--shards", str(out / "*.tar"), "--out", tmp_path / "rep32",
                "--device", "cpu", "--no-progress", "--workers", 0])
    assert r32.exit_code == 0, r32.output
    assert json.loads((tmp_path / "rep32/report.json").read_text())["counts"]["evaluated"] == 12
    ck_bad = torch.load(ck, weights_only=True)
    ck_bad["config"]["model"]["width"] = 8  # config no longer matches the weights
    torch.save(ck_bad, tmp_path / "mismatch.pt")
    _one_line_error(_run(["--ckpt", tmp_path / "mismatch.pt", "--shards", out, "--out", rep]), "do not fit")
    ck_bad["config"]["model"]["colour"] = 1
    torch.save(ck_bad, tmp_path / "unknown.pt")
    _one_line_error(_run(["--ckpt", tmp_path / "unknown.pt", "--shards", out, "--out", rep]), "colour")
    (tmp_path / "r.yaml").write_text("train: [{name: a, paths: [x]}]\n")
    _one_line_error(_run(["--ckpt", ck, "--recipe", tmp_path / "r.yaml", "--out", rep]), "'test'")
    assert not rep.exists()


def test_cli_recipe(built, tmp_path):
    out, _ = built
    (tmp_path / "r.yaml").write_text(f"train: [{{name: a, paths: [x]}}]\ntest:\n  - {{name: mix, paths: [{out}]}}\n")
    r = _run(["--ckpt", _ckpt(tmp_path), "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "rep",
              "--device", "cpu", "--no-progress", "--no-flip-test"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rep/report.json").read_text())["counts"]["evaluated"] == 12


# ------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, tmp: str, shard_dir: str):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        res = E.evaluate(_truth, [shard_dir], batch_size=2, progress=False)
        rec = res["records"]
        with open(f"{tmp}/out{rank}.json", "w") as f:
            json.dump({"ids": rec["sample_id"], "mpjpe": rec["mpjpe"].tolist(), "counts": res["counts"]}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch: ~10 s
def test_ddp_gathers_every_sample_once(built, tmp_path):
    """Two gloo ranks split the samples (i % world) and all-gather: each rank returns the full, sorted result,
    identical to a single-process run."""
    import torch.multiprocessing as mp

    out, _ = built
    single = E.evaluate(_truth, [out], batch_size=2, progress=False)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), str(out)), nprocs=2, join=True)
    for r in range(2):
        got = json.loads((tmp_path / f"out{r}.json").read_text())
        assert got["ids"] == single["records"]["sample_id"]
        assert got["counts"] == single["counts"]
        np.testing.assert_allclose(got["mpjpe"], single["records"]["mpjpe"], atol=1e-9)
