"""perspose-build verify (checksums, counts, invariants) and show (contact sheet, PR-angle histogram)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from _builddata import make_dataset, write
from pipeline.build import BuildConfig, build_shards
from pipeline.cli import main
from pipeline.fsutil import sha256_file
from pipeline.shard import iter_tar, npz_bytes, write_tar
from pipeline.show import draw_sample, pick_samples, read_samples, sheet_size
from pipeline.verify import verify_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vs")
    tr, img_dir = make_dataset(root, 7, seed=10, split="train")
    va, _ = make_dataset(root, 3, seed=11, split="val", dataset="toy2")
    m1, m2 = write(tr, root / "tr.parquet", img_dir), write(va, root / "va.parquet", img_dir)
    out = root / "out"
    build_shards([m1, m2], out, BuildConfig(shard_size=4, jobs=1), progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_verify_passes_on_a_good_build(built):
    r = CliRunner().invoke(main, ["verify", str(built), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "OK" in r.output and "samples: toy2" in r.output
    rep = verify_dir(built, progress=False, jobs=2)  # parallel shard checks give the same report
    assert rep.ok and rep.samples == 10 and rep.shards == 3 and rep.by_dataset == {"toy": 7, "toy2": 3}


def test_verify_detects_a_flipped_byte(built, tmp_path):
    d = _copy(built, tmp_path / "d")
    tar = d / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 3] ^= 0xFF
    tar.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["verify", str(d), "--no-progress"])
    assert r.exit_code == 1
    assert "shard-000001.tar: sha256 differs" in r.output and "shard-000000.tar" not in r.output


def test_verify_detects_a_wrong_label_with_a_matching_checksum(built, tmp_path):
    d = _copy(built, tmp_path / "d")
    tar = d / "shard-000000.tar"
    samples = list(iter_tar(tar))
    with np.load(io.BytesIO(samples[1]["npz"]), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["uvd"] = arrays["uvd"].copy()
    arrays["uvd"][5, 1] += 0.01  # 10x the tolerance
    samples[1] = {**samples[1], "npz": npz_bytes(arrays)}
    write_tar(tar, samples)
    info = json.loads((d / "build.json").read_text())
    info["shards"][0]["sha256"] = sha256_file(tar)
    (d / "build.json").write_text(json.dumps(info))
    r = CliRunner().invoke(main, ["verify", str(d), "--no-progress"])
    assert r.exit_code == 1
    key = samples[1]["__key__"]
    assert f"shard-000000.tar key {key}: uv differs" in r.output
    assert "sha256" not in r.output


def test_verify_detects_missing_shard_and_index_mismatch(built, tmp_path):
    d = _copy(built, tmp_path / "d")
    (d / "shard-000002.tar").unlink()
    r = CliRunner().invoke(main, ["verify", str(d), "--no-progress"])
    assert r.exit_code == 1 and "shard-000002.tar: missing" in r.output
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "nothing"), "--no-progress"])
    assert r.exit_code == 2


def test_show_writes_sheet_of_expected_size_and_histogram(built, tmp_path):
    sheet, hist = tmp_path / "sheet.png", tmp_path / "pr.png"
    r = CliRunner().invoke(main, ["show", str(built), "-n", "5", "--tile", "96", "--seed", "3", "--out", str(sheet),
                                  "--hist", str(hist)])
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(sheet))
    assert img.shape[1::-1] == sheet_size(5, 96) and img.shape[2] == 3
    assert img.std() > 10  # not blank: crops, skeletons and captions
    h = cv2.imread(str(hist))
    assert hist.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and h.shape[0] > 100 and h.shape[1] > 100
    # same seed -> same picture
    sheet2 = tmp_path / "sheet2.png"
    CliRunner().invoke(main, ["show", str(built), "-n", "5", "--tile", "96", "--seed", "3", "--out", str(sheet2)])
    assert sheet2.read_bytes() == sheet.read_bytes()


def test_show_split_filter_and_random_access(built, tmp_path):
    import pyarrow.parquet as pq
    index = pq.read_table(built / "index.parquet").to_pylist()
    picked = pick_samples(index, 10, seed=0, split="val")
    assert len(picked) == 3 and {r["split"] for r in picked} == {"val"}
    # only the shards of the picked samples are opened
    d = _copy(built, tmp_path / "d")
    needed = {r["shard"] for r in picked}
    for p in d.glob("*.tar"):
        if p.stem not in needed:
            p.unlink()
    got = read_samples(d, picked)
    assert [s["key"] for s in got] == [r["key"] for r in picked]
    assert all(s["image"].shape == (320, 320, 3) for s in got)
    r = CliRunner().invoke(main, ["show", str(built), "--split", "nope", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "nope" in r.output


def _coco_like_sample(has_3d: bool) -> dict:
    """A 64 px crop with coco17 joints on a vertical line at u = 40, the nose unlabelled (vis 0) at (5, 5)."""
    uvd = np.zeros((17, 3), np.float32)
    uvd[:, 0], uvd[:, 1] = 40.0, np.linspace(20, 50, 17)
    uvd[0, :2] = 5.0  # a COCO v = 0 keypoint is stored at (0, 0) of the image: somewhere meaningless in the crop
    vis = np.ones(17, np.uint8)
    vis[0] = 0
    return {"image": np.zeros((64, 64, 3), np.uint8), "arrays": {"uvd": uvd, "vis": vis},
            "meta": {"skeleton": "coco17", "has_3d": has_3d}}


def test_show_does_not_draw_unlabelled_2d_joints():
    tile = draw_sample(_coco_like_sample(has_3d=False), 64)
    assert tile[:, 36:45].max() > 0                       # the labelled joints and their bones are drawn
    assert tile[:12, :12].max() == 0                      # no disc at the unlabelled nose
    assert tile[:, 12:34].max() == 0                      # and no bone from it to the eyes / shoulders
    # with 3D labels a vis = 0 joint has its exact place: it is drawn (dimmer)
    tile3 = draw_sample(_coco_like_sample(has_3d=True), 64)
    assert tile3[3:8, 3:8].max() > 0 and tile3[:, 12:34].max() > 0


def test_caption_says_whether_the_crop_was_rotated():
    from pipeline.show import _angle_caption
    phi = np.radians(12.3)
    rot = {"pr_angle": phi, "R": np.array([[1.0, 0, 0], [0, np.cos(phi), -np.sin(phi)], [0, np.sin(phi), np.cos(phi)]])}
    assert _angle_caption({"meta": {"has_intrinsics": True}, "arrays": rot}) == "PR 12.3 deg"
    assert _angle_caption({"meta": {"has_intrinsics": True}, "arrays": {**rot, "R": np.eye(3)}}) == "no PR (12.3 deg)"
    assert _angle_caption({"meta": {"has_intrinsics": False}, "arrays": rot}) == "2D only, no PR"


def test_show_bad_index_and_shard_are_one_line_errors(built, tmp_path):
    bad = _copy(built, tmp_path / "bad")
    (bad / "index.parquet").write_bytes(b"not parquet")
    r = CliRunner().invoke(main, ["show", str(bad), "--hist", str(tmp_path / "h.png")])
    assert r.exit_code == 2 and "index.parquet" in r.output and "Traceback" not in r.output, r.output
    bad2 = _copy(built, tmp_path / "bad2")
    for t in bad2.glob("*.tar"):
        t.write_bytes(b"garbage")
    r = CliRunner().invoke(main, ["show", str(bad2), "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 2 and "unreadable shard" in r.output, r.output


def test_hist_uses_the_same_filter_as_the_sheet():
    from pipeline.show import select
    index = [{"split": "train", "dataset": "a"}, {"split": "test", "dataset": "a"}, {"split": "test", "dataset": "b"}]
    assert select(index, "test") == index[1:]
    assert select(index, "test", "b") == index[2:]
    assert [r["split"] for r in pick_samples(index, 5, 0, "test")] == ["test", "test"]


@pytest.mark.parametrize("content", ["[]", "{}", '{"format_version": 1, "shards": [1]}'])
def test_verify_wrong_shape_build_json_is_a_one_line_error(built, tmp_path, content):
    bad = _copy(built, tmp_path / "bad")
    (bad / "build.json").write_text(content)
    r = CliRunner().invoke(main, ["verify", str(bad)])
    assert r.exit_code == 2 and "build.json" in r.output and "Traceback" not in r.output, r.output


SPEC_FORMS = [lambda d: [str(d)], lambda d: [str(d / "*.tar")], lambda d: [str(d / "shard-{000000..000002}.tar")],
              lambda d: [str(p) for p in sorted(d.glob("*.tar"))]]


@pytest.mark.parametrize("form", range(len(SPEC_FORMS)), ids=["dir", "glob", "brace", "tars"])
def test_every_shard_spec_form_gives_the_same_samples_everywhere(built, tmp_path, form):
    """A directory, a quoted glob, a brace pattern and the .tar files: the same samples in verify, show, the
    training resolver and the held-out stream (the one resolver, pipeline/shardspec.py)."""
    from pipeline.show import read_index
    from trainer.shards import iter_heldout, resolve_shards
    specs = SPEC_FORMS[form](built)
    r = CliRunner().invoke(main, ["verify", *specs, "--no-progress"])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    from pipeline.verify import verify_specs
    rep = verify_specs(specs, progress=False)
    assert rep.ok and rep.samples == 10 and rep.shards == 3
    assert len(read_index(specs)) == 10
    sheet = tmp_path / "s.png"
    r = CliRunner().invoke(main, ["show", *specs, "-n", "4", "--tile", "64", "--out", str(sheet)])
    assert r.exit_code == 0 and sheet.is_file(), r.output
    ss = resolve_shards(specs)
    assert ss.num_samples == 10 and len(ss.urls) == 3
    ids = [rec["meta"]["sample_id"] for k, rec in iter_heldout(ss.urls) if k == "ok"]
    ref = [rec["meta"]["sample_id"] for k, rec in iter_heldout(resolve_shards(str(built)).urls) if k == "ok"]
    assert ids == ref and len(ids) == 10


def test_verify_of_some_shards_of_a_directory(built, tmp_path):
    from pipeline.verify import verify_specs
    rep = verify_specs([str(built / "shard-000001.tar")], progress=False)
    assert rep.ok and rep.shards == 1 and rep.samples == 4
    d = _copy(built, tmp_path / "d")
    data = bytearray((d / "shard-000002.tar").read_bytes())
    data[len(data) // 3] ^= 0xFF
    (d / "shard-000002.tar").write_bytes(bytes(data))
    assert verify_specs([str(d / "shard-00000[01].tar")], progress=False).ok     # the damaged one not named
    assert not verify_specs([str(d)], progress=False).ok
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "nothing*.tar"), "--no-progress"])
    assert r.exit_code == 2 and "matches no shard" in r.output
