"""Dataset recipes: the checked-in YAMLs parse, errors are InputErrors, and a recipe runs its adapters."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.manifest import read_manifest
from pipeline.recipe import load_recipe, recipe_source_manifests
from test_adapters_coco import make_coco
from test_adapters_h36m import make_h36m

REPO = Path(__file__).resolve().parents[1]
VARS = {"DATA": "/data", "SMPL_DIR": "/models/smpl"}


@pytest.mark.parametrize("name", ["3dpw", "3dhp", "h36m", "synth"])
def test_checked_in_recipes_parse(name):
    rec = load_recipe(REPO / "manifests" / f"{name}.yaml", VARS)
    assert rec.name == name and set(rec.splits) == {"train", "test"}
    for s in rec.sources:
        assert "${" not in str(s.root)


def test_paper_mix_ratios():
    r = load_recipe(REPO / "manifests" / "3dpw.yaml", VARS)
    assert {s.name: s.ratio for s in r.splits["train"]} == {"h36m_train": 0.3, "coco_train": 0.4,
                                                           "3dhp_train": 0.2, "3dpw_train": 0.1}
    assert r.splits["test"][0].root == Path("/data/3dpw") and r.splits["test"][0].split == "test"
    assert r.splits["test"][0].options["regressor"] == "/models/smpl/J_regressor_h36m_correct.npy"
    r = load_recipe(REPO / "manifests" / "3dhp.yaml", VARS)
    assert r.ratios("train")["coco_train"] == pytest.approx(0.4 / 1.1)
    r = load_recipe(REPO / "manifests" / "h36m.yaml", VARS)
    assert r.ratios("train") == pytest.approx({"h36m_train": 0.4, "coco_train": 0.5, "3dhp_train": 0.1})
    assert load_recipe(REPO / "manifests" / "synth.yaml").splits["train"][0].root == \
        Path("./data/synth/train/manifest.parquet")  # default var


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = """name: t
splits:
  train:
    - {name: c, adapter: coco, root: "${DATA}/coco", split: train%s}
"""


def test_recipe_errors(tmp_path):
    with pytest.raises(InputError, match=r"\$\{DATA\} is not set"):
        load_recipe(_write(tmp_path, BASE % ""), {})
    with pytest.raises(InputError, match="unknown key.*colour"):
        load_recipe(_write(tmp_path, BASE % ", colour: red"), VARS)
    with pytest.raises(InputError, match="unknown option.*intervl"):
        load_recipe(_write(tmp_path, BASE % ", options: {intervl: 3}"), VARS)
    with pytest.raises(InputError, match="unknown adapter"):
        load_recipe(_write(tmp_path, BASE.replace("coco,", "kitti,") % ""), VARS)
    with pytest.raises(InputError, match="ratio"):
        load_recipe(_write(tmp_path, BASE % ", ratio: -1"), VARS)
    with pytest.raises(InputError, match="unknown key.*stuff"):
        load_recipe(_write(tmp_path, "name: t\nstuff: 1\nsplits: {}\n"), VARS)
    with pytest.raises(InputError, match="not found"):
        load_recipe(tmp_path / "missing.yaml", VARS)
    assert load_recipe(_write(tmp_path, BASE.replace("${DATA}", "$$HOME") % ""), {}).sources[0].root == \
        Path("$HOME/coco")
    with pytest.raises(InputError, match="use only letters"):
        load_recipe(_write(tmp_path, BASE.replace("name: c,", "name: ../escape,") % ""), VARS)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(InputError, match="UTF-8"):
        load_recipe(tmp_path / "bin.yaml", VARS)


def test_recipe_manifests_runs_adapters(tmp_path):
    make_coco(tmp_path / "data" / "coco")
    make_h36m(tmp_path / "data" / "h36m", 9, [(2, 1)], range(10))
    make_h36m(tmp_path / "data" / "h36m", 11, [(3, 1)], range(10))
    text = """name: mini
splits:
  train:
    - {name: coco_train, adapter: coco, root: "${DATA}/coco", split: train, ratio: 0.5}
    - {name: h36m_skip, adapter: h36m, root: "${DATA}/h36m", split: test, ratio: 0}
  test:
    - {name: h36m_test, adapter: h36m, root: "${DATA}/h36m", split: test, options: {test_stride: 1}}
"""
    rec = load_recipe(_write(tmp_path, text), {"DATA": str(tmp_path / "data")})
    built = recipe_source_manifests(rec, tmp_path / "out", check_images=False, progress=False)
    by_split = {}
    for source, path in built:
        by_split.setdefault(source.target, []).append(path)
    assert by_split == {"train": [tmp_path / "out/train/coco_train.parquet"],
                        "test": [tmp_path / "out/test/h36m_test.parquet"]}
    table, meta = read_manifest(by_split["test"][0])
    assert table.num_rows == 8 and meta["recipe"]["source"] == "h36m_test" and meta["adapter"] == "h36m"
    # a built manifest can be used in place
    text2 = f"""name: reuse
splits:
  train:
    - {{name: prebuilt, adapter: manifest, root: "{by_split['train'][0]}", split: train}}
"""
    paths = [p for _, p in recipe_source_manifests(load_recipe(_write(tmp_path, text2)), tmp_path / "out2",
                                                   progress=False)]
    assert paths == [by_split["train"][0]]
