"""COCO keypoints adapter: generated json in the COCO keypoints format and the real 4-image fixture."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from pipeline.adapters.coco import keep_annotation, read_coco
from pipeline.cli import main
from pipeline.manifest import read_manifest, rejected_path_for

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
         "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
         "left_ankle", "right_ankle"]


def _kp(limbs_visible=True):
    kp = []
    for j in range(17):
        v = 2 if (limbs_visible or j < 7 or j in (11, 12)) else 0
        kp += [10.0 + j, 20.0 + 2 * j, v]
    return kp


def make_coco(root, split="train"):
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 100.0, "bbox": [1.5, 2.5, 30.25, 40.0],
         "num_keypoints": 17, "keypoints": _kp()},
        {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 100.0, "bbox": [0, 0, 5, 5],
         "num_keypoints": 17, "keypoints": _kp()},
        {"id": 3, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [0, 0, 5, 5],
         "num_keypoints": 17, "keypoints": _kp()},
        {"id": 4, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 50.0, "bbox": [0, 0, 5, 5],
         "num_keypoints": 9, "keypoints": _kp(limbs_visible=False)},
        {"id": 5, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 50.0, "bbox": [3, 4, 5, 6],
         "num_keypoints": 17, "keypoints": _kp()},  # its image file is missing -> rejection
    ]
    data = {"images": [{"id": 7, "file_name": "000000000007.jpg", "width": 64, "height": 48},
                       {"id": 9, "file_name": "000000000009.jpg", "width": 64, "height": 48}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": NAMES, "skeleton": []}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(data))
    (root / f"{split}2017").mkdir()
    cv2.imwrite(str(root / f"{split}2017" / "000000000007.jpg"), np.zeros((48, 64, 3), np.uint8))
    return data


def test_coco_filters_keypoints_and_rejections(tmp_path):
    data = make_coco(tmp_path)
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "coco", "--root", str(tmp_path), "--split", "train",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    table, _ = read_manifest(out)
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == ["coco/train/coco/7/0"]
    r = rows[0]
    assert r["bbox"] == data["annotations"][0]["bbox"]  # unchanged
    kp = np.reshape(data["annotations"][0]["keypoints"], (17, 3))
    np.testing.assert_array_equal(np.reshape(r["joints_2d"], (17, 2)), kp[:, :2])
    assert r["joints_vis"] == [1] * 17 and r["K"] is None and r["joints_cam"] is None
    assert r["skeleton"] == "coco17" and r["frame"] == 7 and (r["image_w"], r["image_h"]) == (64, 48)
    rej = pq.read_table(rejected_path_for(out)).to_pylist()
    assert rej == [{"sample_id": "coco/train/coco/9/2", "reason": "missing image"}]  # person = index in image
    assert [keep_annotation(a) for a in data["annotations"]] == [True, False, False, False, True]


def test_coco_wrong_layout(tmp_path):
    res = CliRunner().invoke(main, ["manifest", "coco", "--root", str(tmp_path), "--split", "val",
                                    "--out", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "person_keypoints_val2017.json" in res.output


def link_real_coco(src, root):
    """Lay the real fixture (``src`` = fixtures/real/coco) out as a COCO root with split ``val`` (symlinks)."""
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "person_keypoints_val2017.json").symlink_to(src / "test_coco.json")
    (root / "val2017").mkdir()
    for p in src.glob("*.jpg"):
        (root / "val2017" / p.name).symlink_to(p)
    return root


def test_coco_real_fixture(fixtures_dir, tmp_path):
    src = fixtures_dir / "coco"
    link_real_coco(src, tmp_path)
    data = json.loads((src / "test_coco.json").read_text())
    out = read_coco(tmp_path, "val", progress=False)
    # 14 annotations, the 2 without any keypoint fail the limb filter
    assert len(out.rows) == 12
    ids = {json.loads(r["meta"])["annotation_id"] for r in out.rows}
    assert ids == {a["id"] for a in data["annotations"] if a["num_keypoints"] > 0}
    by_id = {a["id"]: a for a in data["annotations"]}
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    for r in out.rows:
        a = by_id[json.loads(r["meta"])["annotation_id"]]
        kp = np.reshape(a["keypoints"], (17, 3))
        np.testing.assert_array_equal(np.reshape(r["joints_2d"], (17, 2)), kp[:, :2])
        assert r["joints_vis"] == (kp[:, 2] > 0).astype(int).tolist()
        assert r["bbox"] == a["bbox"]
        assert (r["image_w"], r["image_h"]) == sizes[r["frame"]]  # JPEG header agrees with the json
    r = next(r for r in out.rows if json.loads(r["meta"])["annotation_id"] == 198196)
    assert r["person"] == 0 and r["frame"] == 40083 and r["joints_vis"][3] == 0
