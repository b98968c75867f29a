"""PersPose-HPS (issue 12): the heads, their labels through the loader (flip included), the losses, and evaluation:
IK mesh -> PVE in report.json/report.md equal to an independent float64 PVE, the constant-mean-mesh reference,
--save-vertices, the mesh overlay picture, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.body_model import load_smpl
from pipeline.cli import main as build_main
from trainer.hps_labels import LEAF_JOINTS, flip_hps_labels, hps_labels
from trainer.losses import LossConfig, pose_losses
from trainer.model import ModelConfig, build_model, flip_test, rotation_from_6d, unflip_predictions

S = 64


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory):
    """A tiny synthetic set with SMPL labels (train 10 images, test 6), built into 64 px shards."""
    root = tmp_path_factory.mktemp("hps")
    for split, n, seed in (("train", 10, 1), ("test", 6, 2)):
        r = CliRunner().invoke(build_main, ["synth", "--out", str(root / "synth" / split), "--split", split, "-n",
                                            str(n), "--seed", str(seed), "--min-box-inside", "1", "--jobs", "1",
                                            "--no-progress", "--image-size", "320", "240"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(build_main, ["shards", str(root / "synth" / split / "manifest.parquet"), "--out",
                                            str(root / "shards" / split), "--crop", str(S), "--jobs", "1",
                                            "--no-progress"])
        assert r.exit_code == 0, r.output
    return root


def _ckpt(tmp_path, hps=True, step=3):
    from trainer.checkpoint import save_checkpoint
    from trainer.configtools import config_to_dict
    cfg = ModelConfig.tiny(crop_size=S, hps=hps)
    torch.manual_seed(0)
    model = build_model(cfg)
    return save_checkpoint(tmp_path / "ck.pt", {"model": model.state_dict(), "config": {"model": config_to_dict(cfg)},
                                                 "step": step})


def test_heads_shapes_and_rotations():
    cfg = ModelConfig.tiny(crop_size=S, hps=True)
    model = build_model(cfg).eval()
    images = torch.randint(0, 255, (3, 3, S, S), dtype=torch.uint8)
    K = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]]).expand(3, 3, 3)
    with torch.no_grad():
        out = flip_test(model, images, K)
    assert out["betas"].shape == (3, 10) and out["twist"].shape == (3, 23, 2) and out["leaf_rot"].shape == (3, 5, 3, 3)
    assert torch.allclose(out["twist"].norm(dim=-1), torch.ones(3, 23), atol=1e-5)
    R = out["leaf_rot"]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(3, 5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3, 5), atol=1e-5)
    with pytest.raises(ValueError, match="smpl24"):
        ModelConfig.tiny(hps=True, skeletons=("h36m17",))
    x = torch.randn(4, 6, dtype=torch.float64)
    Q = rotation_from_6d(x)
    assert torch.allclose(Q[..., 0], x[:, :3] / x[:, :3].norm(dim=-1, keepdim=True))


def test_unflip_undoes_the_flip_of_the_labels(synth_shards):
    """A network that predicted the mirrored person's labels on the mirrored crop is un-flipped into the labels."""
    from pipeline.shard import decode_sample
    from pipeline.tario import iter_tar
    tar = sorted((synth_shards / "shards/train").glob("*.tar"))[0]
    lab = hps_labels(decode_sample(next(iter(iter_tar(str(tar)))))["arrays"])
    assert lab["has_smpl"] and lab["twist_mask"][:3].sum() == 0
    flipped = flip_hps_labels(lab)
    n = ModelConfig.tiny().num_joints
    pred = {"uv": torch.zeros(1, n, 2), "d": torch.zeros(1, n), "scale": torch.ones(1),
            "betas": torch.from_numpy(flipped["betas"])[None], "twist": torch.from_numpy(flipped["twist"])[None]}
    model = build_model(ModelConfig.tiny(crop_size=S, hps=True))
    back = unflip_predictions(pred, model.flip_perm, S)
    m = torch.from_numpy(lab["twist_mask"]).bool()
    assert torch.allclose(back["twist"][0][m], torch.from_numpy(lab["twist"])[m], atol=1e-6)
    assert torch.equal(back["betas"], pred["betas"])


def test_loader_batches_carry_the_labels_flipped_with_the_image(synth_shards):
    from trainer.augment import AugmentConfig
    from trainer.data import LoaderConfig, first_batch
    from trainer.shards import resolve_shards
    sets = resolve_shards([str(synth_shards / "shards/train")], S, "train", ModelConfig.tiny().skeletons)
    cfg = LoaderConfig(crop_size=S, augment=AugmentConfig(enabled=False), batch_size=4)
    b = first_batch(sets, cfg, 4)
    assert b["has_smpl"].all() and b["betas"].shape == (4, 10) and b["leaf_rot"].shape == (4, 5, 3, 3)
    assert (b["twist_mask"][:, :3] == 0).all() and (b["twist_mask"][:, 3:] == 1).all()
    assert torch.allclose(b["twist"].norm(dim=-1)[:, 3:], torch.ones(4, 20), atol=1e-6)


def test_losses_are_zero_at_the_labels_and_masked():
    rng = np.random.default_rng(0)
    aa = rng.normal(0, 0.4, (2, 24, 3))
    lab = [hps_labels({"smpl_betas": rng.normal(size=10), "smpl_pose": a.reshape(-1),
                       "smpl_twist": np.r_[np.nan, np.nan, np.nan, rng.uniform(-3, 3, 20)]}) for a in aa]
    batch = {k: torch.from_numpy(np.stack([x[k] for x in lab])) for k in ("betas", "twist", "twist_mask", "leaf_rot")}
    batch["has_smpl"] = torch.tensor([True, False])
    J = ModelConfig.tiny().num_joints
    batch.update({"uvd": torch.zeros(2, J, 3), "scale": torch.zeros(2), "mask_uv": torch.zeros(2, J),
                  "mask_d": torch.zeros(2, J), "has_3d": torch.zeros(2, dtype=torch.bool)})
    pred = {"uv": torch.zeros(2, J, 2), "d": torch.zeros(2, J), "scale": torch.zeros(2),
            "betas": batch["betas"].clone(), "twist": batch["twist"].clone(), "leaf_rot": batch["leaf_rot"].clone()}
    t = pose_losses(pred, batch, LossConfig(), S)
    assert t["beta"] == 0 and t["twist"] == 0 and t["leaf"] == 0
    pred["betas"][1] += 5.0                       # sample 1 has no SMPL labels: contributes nothing
    pred["twist"][0, :3] += 1.0                   # masked (undefined) twists contribute nothing
    t = pose_losses(pred, batch, LossConfig(), S)
    assert t["beta"] == 0 and t["twist"] == 0
    pred["betas"][0, 0] += 1.0
    pred["twist"][0, 5, 0] += 0.5
    t = pose_losses(pred, batch, LossConfig(beta_weight=0.01, twist_weight=0.1), S)
    assert t["beta"] == pytest.approx(0.1) and t["twist"] == pytest.approx(0.5 / 20)
    assert t["total"] == pytest.approx(0.01 * 0.1 + 0.1 * 0.5 / 20 + 0.01 * t["leaf"].item(), rel=1e-5)
    assert LEAF_JOINTS == (10, 11, 15, 22, 23)


def _independent_pve(vertices: np.ndarray, manifest_rows: dict, sample_ids) -> np.ndarray:
    """float64 PVE from the saved meshes and the manifest's SMPL labels, with the numpy SMPL wrapper (axis-angle
    pose, not the IK path): each mesh aligned at the pelvis regressed from its own vertices."""
    smpl = load_smpl("synthetic")
    reg = smpl.layer.J_regressor.numpy().astype(np.float64)
    out = []
    for sid, v in zip(sample_ids, vertices.astype(np.float64)):
        lab = manifest_rows[sid]
        g = smpl(np.asarray(lab["betas"])[None], np.asarray(lab["pose"])[None], np.asarray(lab["transl"])[None])
        gv = g.vertices[0]
        d = (v - reg[0] @ v) - (gv - reg[0] @ gv)
        out.append(1000.0 * np.linalg.norm(d, axis=1).mean())
    return np.asarray(out)


def test_eval_reports_pve_that_an_independent_routine_reproduces(synth_shards, tmp_path):
    import pyarrow.parquet as pq

    from trainer.eval_cli import main as eval_main
    ck = _ckpt(tmp_path)
    r = CliRunner().invoke(eval_main, ["--ckpt", str(ck), "--shards", str(synth_shards / "shards/test"), "--out",
                                       str(tmp_path / "ev"), "--workers", "0", "--save-vertices", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "PVE" in r.output and "constant mean mesh" in r.output
    rep = json.loads((tmp_path / "ev/report.json").read_text())
    (row,) = rep["metrics"]["mesh"]
    z = np.load(tmp_path / "ev/vertices.npz")
    assert z["vertices"].shape[0] == row["n"] == rep["counts"]["evaluated"] and z["vertices"].shape[2] == 3
    rows = {r["sample_id"]: r["smpl"] for r in pq.read_table(synth_shards / "synth/test/manifest.parquet").to_pylist()}
    pve = _independent_pve(z["vertices"], rows, z["sample_id"])
    # the saved vertices are float32 (~1e-7 m): 1e-3 mm covers their rounding
    assert row["pve_mm"] == pytest.approx(pve.mean(), abs=1e-3)
    preds = pq.read_table(tmp_path / "ev/predictions.parquet").to_pylist()
    assert len(preds) == row["n"]
    # the reference: the constant mean (pelvis-aligned) ground-truth mesh
    gts = []
    smpl = load_smpl("synthetic")
    for sid in z["sample_id"]:
        g = smpl(np.asarray(rows[sid]["betas"])[None], np.asarray(rows[sid]["pose"])[None],
                 np.asarray(rows[sid]["transl"])[None])
        gts.append(g.vertices[0] - g.joints[0, 0])
    gts = np.stack(gts)
    ref = 1000.0 * np.linalg.norm(gts - gts.mean(0), axis=-1).mean()
    assert row["ref_constant_pve_mm"] == pytest.approx(ref, abs=1e-3)
    assert row["model_over_ref_pve"] == pytest.approx(row["pve_mm"] / ref)
    md = (tmp_path / "ev/report.md").read_text()
    assert "## Meshes (HPS): PVE" in md
    import cv2
    img = cv2.imread(str(tmp_path / "ev/mesh_overlay.png"))
    assert img is not None and img.shape[1] == 4 * 192 and img.std() > 10


def test_ground_truth_prediction_gives_zero_pve(synth_shards):
    """The IK path fed the true joints, β, twists and leaf rotations rebuilds the true mesh (PVE ~ 0)."""
    from trainer.evaluate import evaluate
    from trainer.hps import MeshScorer
    from trainer.shards import resolve_shards

    def truth(batch):
        lab = [hps_labels({"smpl_betas": s["betas"], "smpl_pose": s["pose"],
                           "smpl_twist": _twists(s)}) for s in batch["smpl"]]
        return {"uvd": torch.from_numpy(batch["uvd"]), "scale": torch.from_numpy(batch["scale"]),
                **{k: torch.from_numpy(np.stack([x[k] for x in lab])) for k in ("betas", "twist", "leaf_rot")}}
    sets = resolve_shards([str(synth_shards / "shards/test")], S, "test")
    res = evaluate(truth, sets, batch_size=4, crop_size=S, progress=False, mesh=MeshScorer("synthetic"))
    pve = res["records"]["pve"]
    assert np.isfinite(pve).all() and pve.max() < 0.05          # mm: float32 labels through IK and smplx


def _twists(smpl_labels):
    """Twists of the shard's SMPL labels, as the synth wrote them (the eval record does not carry them)."""
    from pipeline.body_model import twist_labels_of
    tw = twist_labels_of(load_smpl("synthetic"), np.asarray(smpl_labels["betas"])[None],
                         np.asarray(smpl_labels["pose"])[None])[0]
    tw[:3] = 0.0        # unused by the IK (the pelvis is fitted by Kabsch)
    return tw


def test_hps_options_need_an_hps_checkpoint(synth_shards, tmp_path):
    from trainer.eval_cli import main as eval_main
    ck = _ckpt(tmp_path, hps=False)
    r = CliRunner().invoke(eval_main, ["--ckpt", str(ck), "--shards", str(synth_shards / "shards/test"), "--out",
                                       str(tmp_path / "ev"), "--workers", "0", "--save-vertices", "--no-progress"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "HPS checkpoint" in lines[0], r.output
    ck = _ckpt(tmp_path, hps=True)
    r = CliRunner().invoke(eval_main, ["--ckpt", str(ck), "--shards", str(synth_shards / "shards/test"), "--out",
                                       str(tmp_path / "ev"), "--workers", "0", "--body-model",
                                       str(tmp_path / "missing"), "--no-progress"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "missing" in lines[0], r.output
