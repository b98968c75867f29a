"""Every adapter end to end: its manifest builds shards that pass ``perspose-build verify``; on the real fixtures
(COCO frames, Human3.6M frames) ``perspose-build show`` draws the skeletons on the people.

The datasets are the tiny real-schema ones the adapter tests generate (imported from those test modules); where a
generator writes no image files, a smooth noise image of the manifest's size is written at every image path.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fake_smpl import write_model_npz
from pipeline import geometry as g
from pipeline.adapters.common import image_size_from_header
from pipeline.adapters.registry import output_metadata, run_adapter
from pipeline.build import BuildConfig, build_shards
from pipeline.cli import main
from pipeline.manifest import read_manifest, rejected_path_for
from pipeline.manifest_cli import finish_manifest
from pipeline.shard import BuildOptions, decode_sample, iter_tar
from pipeline.show import LABEL_H, SIDE_COLOURS, pick_samples, read_samples, sheet_size
from pipeline.verify import verify_dir
from test_adapters_3dpw import make_3dpw
from test_adapters_bedlam import CLOSEUP, NORMAL, make_scene
from test_adapters_coco import link_real_coco, make_coco
from test_adapters_h36m import make_h36m
from test_adapters_mpi_inf_3dhp import make_json, make_native_test, make_native_train
from test_manifest import _good_jsonl

CROP = 64
CFG = BuildConfig(shard_size=4, jobs=1, opts=BuildOptions(crop_size=CROP))


def write_noise_images(root: Path, rows) -> int:
    """A smooth random image of the row's image_w x image_h at every image path that does not exist yet."""
    rng = np.random.default_rng(0)
    n = 0
    for r in rows:
        p = Path(r["image_path"])
        p = p if p.is_absolute() else Path(root) / p
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (r["image_w"], r["image_h"]), interpolation=cv2.INTER_LINEAR)
        assert cv2.imwrite(str(p), img)
        n += 1
    return n


def adapter_manifest(name: str, root: Path, split: str, out: Path, write_images: bool = False, **options) -> Path:
    """What ``perspose-build manifest NAME`` does; with ``write_images`` (for generators that write no image
    files) a noise image is written at every row's image path between reading and validating."""
    res = run_adapter(name, root, split, **options)
    if write_images:
        assert write_noise_images(res.image_root, res.rows) > 0
    finish_manifest(res.rows, res.rejected, out, output_metadata(res, {"split": split, **options}),
                    res.image_root, check_images=True)
    return out


def build_and_verify(manifest: Path, out: Path):
    """Build shards from one manifest, verify them; returns (manifest rows, build result, verify report)."""
    n_rows = read_manifest(manifest)[0].num_rows
    res = build_shards([manifest], out, CFG, progress=False)
    rep = verify_dir(out, progress=False)
    assert rep.failures == []
    assert rep.samples == len(res.index_rows) == res.build_json["counts"]["written"]
    assert len(res.index_rows) + len(res.rejected) == n_rows
    return n_rows, res, rep


# ------------------------------------------------------------------------------------ generated datasets
# each returns (adapter, split, options, write_images): the 3DPW and COCO generators write their own images
# (one deliberately missing); the others write none.
def _pw3d(root):
    make_3dpw(root, split="test")
    return "3dpw", "test", {}, False


def _h36m(root):
    make_h36m(root, 1, [(2, 1)], range(10))
    return "h36m", "train", {"subjects": [1]}, True


def _3dhp_json_train(root):
    make_json(root, "train")
    return "mpi_inf_3dhp", "train", {}, True


def _3dhp_json_test(root):  # TS5 carries lens distortion: the remap path of the builder
    make_json(root / "annotations", "test")
    return "mpi_inf_3dhp", "test", {}, True


def _3dhp_native_train(root):
    make_native_train(root)
    return "mpi_inf_3dhp", "train", {"source": "native", "interval": 20}, True


def _3dhp_native_test(root):
    make_native_test(root, 1)
    make_native_test(root, 5)
    return "mpi_inf_3dhp", "test", {"source": "native"}, True


def _bedlam(root):
    make_scene(root, NORMAL, False, 1)
    make_scene(root, CLOSEUP, True, 2)  # labels rotated into the on-disk frame
    smpl = root / "smpl"
    smpl.mkdir()
    write_model_npz(smpl / "SMPL_NEUTRAL.npz", seed=5, num_betas=11)
    return "bedlam", "train", {"smpl_dir": smpl}, True


def _coco(root):
    make_coco(root, "train")
    return "coco", "train", {}, False


# case -> (generator, manifest rows, adapter-side rejections, samples written)
CASES = {
    "3dpw": (_pw3d, 7, 4, 7),
    "h36m": (_h36m, 4, 0, 4),
    "mpi_inf_3dhp-json-train": (_3dhp_json_train, 3, 0, 3),
    "mpi_inf_3dhp-json-test": (_3dhp_json_test, 3, 0, 3),
    "mpi_inf_3dhp-native-train": (_3dhp_native_train, 16, 0, 16),
    "mpi_inf_3dhp-native-test": (_3dhp_native_test, 12, 0, 12),
    "bedlam": (_bedlam, 6, 0, 6),
    "coco": (_coco, 1, 1, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_manifest_builds_verified_shards(tmp_path, case):
    gen, n_rows, n_rejected, n_written = CASES[case]
    root = tmp_path / "data"
    name, split, options, write_images = gen(root)
    m = adapter_manifest(name, root, split, tmp_path / "m.parquet", write_images, **options)
    assert pq.read_table(rejected_path_for(m)).num_rows == n_rejected
    got_rows, res, rep = build_and_verify(m, tmp_path / "shards")
    assert got_rows == n_rows
    assert len(res.index_rows) == n_written, res.rejected
    assert rep.by_dataset == {name: n_written}


def test_jsonl_manifest_builds_verified_shards(tmp_path):
    src = _good_jsonl(tmp_path)  # rows on img.jpg / img2.jpg (640 x 480) and one on a missing image
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    images = tmp_path / "images"
    write_noise_images(images, [r for r in rows if r["image_path"] != "gone.jpg"])
    m = tmp_path / "m.parquet"
    r = CliRunner().invoke(main, ["manifest", "jsonl", str(src), "--image-root", str(images), "--out", str(m)])
    assert r.exit_code == 0, r.output
    assert pq.read_table(rejected_path_for(m)).num_rows == 1
    n_rows, res, rep = build_and_verify(m, tmp_path / "shards")
    assert n_rows == 2 and len(res.index_rows) == 2 and rep.by_dataset == {"ds": 2}


# ------------------------------------------------------------------------------------ real fixtures
def h36m_real_jsonl(src: Path, path: Path) -> Path:
    """fixtures/real/h36m/labels.json as a bring-your-own-dataset JSONL: the 3D joints with K and the OpenCV
    distortion, the dataset's (distorted) 2D labels, the mmpose square box; image size from the file."""
    data = json.loads((src / "labels.json").read_text())
    lines = []
    for i, s in enumerate(data["samples"]):
        w, h = image_size_from_header(src / s["image"])
        lines.append(json.dumps({
            "dataset": "h36m_real", "split": "test", "sequence": Path(s["image"]).stem.rsplit("_", 1)[0],
            "frame": i, "person": 0, "image_path": s["image"], "image_w": w, "image_h": h,
            "K": np.asarray(s["K"], np.float64).reshape(-1).tolist(), "dist": s["dist_opencv"],
            "bbox": s["bbox_square_xywh"], "skeleton": "h36m17",
            "joints_cam": np.asarray(s["joints_cam_m"]).reshape(-1).tolist(),
            "joints_2d": np.asarray(s["joints_2d_px"]).reshape(-1).tolist(), "joints_vis": [1] * 17}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _samples(out: Path) -> list[dict]:
    return [decode_sample(m) for p in sorted(out.glob("shard-*.tar")) for m in iter_tar(p)]


def _show(out: Path, sheet: Path, n: int, tile: int = 96) -> np.ndarray:
    """``perspose-build show`` on OUT; checks the sheet's size and that every drawn joint is on its label."""
    r = CliRunner().invoke(main, ["show", str(out), "-n", str(n), "--tile", str(tile), "--out", str(sheet)])
    assert r.exit_code == 0, r.output
    assert sheet.is_file()
    img = cv2.cvtColor(cv2.imread(str(sheet)), cv2.COLOR_BGR2RGB)
    assert img.shape[1::-1] == sheet_size(n, tile)
    assert img.std() > 20  # real crops, not a blank or black sheet
    # the tiles are the samples show picks (seed 0), in order; at every joint it draws (all joints of a 3D sample,
    # the labelled ones of a 2D sample) the sheet has a disc of a joint colour
    colours = np.array([*SIDE_COLOURS.values()] + [[int(v * 0.35) for v in c] for c in SIDE_COLOURS.values()])
    picked = read_samples(out, pick_samples(pq.read_table(out / "index.parquet").to_pylist(), n, seed=0))
    assert len(picked) == n
    cols = img.shape[1] // tile
    drawn = 0
    for k, s in enumerate(picked):
        y0, x0 = divmod(k, cols)
        y0, x0 = y0 * (tile + LABEL_H), x0 * tile
        a = s["arrays"]
        uv = a["uvd"][:, :2] * (tile / s["image"].shape[1])
        known = np.ones(len(uv), bool) if s["meta"]["has_3d"] else a["vis"] > 0
        for u, v in np.round(uv[known]).astype(int):
            assert 1 <= u < tile - 1 and 1 <= v < tile - 1
            patch = img[y0 + v - 1:y0 + v + 2, x0 + u - 1:x0 + u + 2].reshape(-1, 1, 3)
            assert (patch == colours[None]).all(-1).any(), (s["key"], u, v)
            drawn += 1
    assert drawn >= 5 * n
    return img


def test_real_coco_shards_verify_and_show(fixtures_dir, tmp_path):
    root = link_real_coco(fixtures_dir / "coco", tmp_path / "coco")
    m = adapter_manifest("coco", root, "val", tmp_path / "m.parquet")
    n_rows, res, _ = build_and_verify(m, tmp_path / "shards")
    assert n_rows == 12 and len(res.index_rows) == 12
    anns = {a["id"]: a for a in json.loads((root / "annotations" / "person_keypoints_val2017.json").read_text())
            ["annotations"]}
    table = {r["sample_id"]: r for r in read_manifest(m)[0].to_pylist()}
    for s in _samples(tmp_path / "shards"):
        a = s["arrays"]
        kp = np.reshape(anns[json.loads(table[s["meta"]["sample_id"]]["meta"])["annotation_id"]]["keypoints"], (17, 3))
        vis = kp[:, 2] > 0
        np.testing.assert_array_equal(a["vis"], vis)
        # the stored labels are the json's keypoints mapped into the crop, and every labelled one lies inside it
        uv = g.apply_homography(a["H"], kp[:, :2])
        np.testing.assert_allclose(a["uvd"][vis, :2], uv[vis], atol=1e-3)
        assert ((a["uvd"][vis, :2] >= 0) & (a["uvd"][vis, :2] <= s["image"].shape[0] - 1)).all()
    _show(tmp_path / "shards", tmp_path / "coco.png", 12)


def test_real_h36m_shards_verify_and_show(fixtures_dir, tmp_path):
    src = fixtures_dir / "h36m"
    m = tmp_path / "m.parquet"
    r = CliRunner().invoke(main, ["manifest", "jsonl", str(h36m_real_jsonl(src, tmp_path / "h36m.jsonl")),
                                  "--image-root", str(src), "--out", str(m)])
    assert r.exit_code == 0, r.output
    n_rows, res, _ = build_and_verify(m, tmp_path / "shards")
    assert n_rows == 4 and len(res.index_rows) == 4
    labels = json.loads((src / "labels.json").read_text())["samples"]
    for s in _samples(tmp_path / "shards"):
        a, lab = s["arrays"], labels[s["meta"]["frame"]]
        # the stored labels (from the 3D joints) sit where the dataset's own distorted 2D labels map to
        uv = g.undistort_pixels(np.asarray(lab["joints_2d_px"]), np.asarray(lab["K"]), np.asarray(lab["dist_opencv"]))
        err = np.linalg.norm(g.apply_homography(a["H"], uv) - a["uvd"][:, :2], axis=-1)
        err_orig = err * lab["K"][0][0] / a["K_crop"][0, 0]  # in original-image pixels
        # README: 0.02-0.10 px; the 2D labels taken without undistortion would be 0.37-1.24 px off
        assert err_orig.mean() < 0.15, err_orig
        assert ((a["uvd"][:, :2] >= 0) & (a["uvd"][:, :2] <= s["image"].shape[0] - 1)).all()
    _show(tmp_path / "shards", tmp_path / "h36m.png", 4)
