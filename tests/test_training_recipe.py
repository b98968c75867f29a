"""The training recipe: one reader beside its writer (pipeline/training_recipe.py), used by perspose-train and
perspose-eval; every malformed recipe is one line naming the file and the key, exit code 2."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.errors import InputError
from pipeline.training_recipe import read_training_recipe, write_training_recipe
from trainer.config import load_config
from trainer.eval_cli import main as eval_main
from trainer.train_cli import main as train_main, recipe_data_section


def test_paths_are_relative_to_the_recipe_and_sections_are_read(tmp_path):
    r = tmp_path / "sub" / "mix.yaml"
    r.parent.mkdir()
    r.write_text("train:\n  - {name: a, shards: sa, ratio: 0.3}\n  - {name: b, shards: [sb1, 'sb/*.tar'], ratio: 0.7}\n"
                 "val: [sv]\ntest: [{name: t, paths: st}]\n")
    rec = read_training_recipe(r)
    base = r.parent.resolve()
    assert rec.train[1].shards == (str(base / "sb1"), str(base / "sb" / "*.tar"))   # globs stay patterns
    assert rec.val_shards() == [str(base / "sv")] and rec.eval_shards() == [str(base / "st")]
    d = recipe_data_section(r)
    assert [s.ratio for s in load_config("demo", (), d).data.train] == [0.3, 0.7]
    r.write_text("val: [v]\neval: [{name: a, shards: e1}, e2]\n")
    assert read_training_recipe(r).eval_shards() == [str(base / "e1"), str(base / "e2")]   # eval wins over val
    r.write_text("train: {a: sa, b: [sb]}\n")
    assert [(s.name, s.ratio) for s in read_training_recipe(r).train] == [("a", 1.0), ("b", 1.0)]


def test_round_trip_with_the_writer(tmp_path):
    dirs = [("h36m", "train", 0.3, tmp_path / "train" / "h36m"), ("coco", "train", None, tmp_path / "train" / "coco"),
            ("pw", "val", None, tmp_path / "val" / "pw"), ("pw_test", "test", None, tmp_path / "test" / "pw"),
            ("extra", "other", None, tmp_path / "other")]
    import yaml
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(write_training_recipe(dirs, tmp_path, "toy")))
    rec = read_training_recipe(tmp_path / "recipe.yaml")
    assert [(s.name, s.shards, s.ratio) for s in rec.train] == [
        ("h36m", (str(tmp_path / "train" / "h36m"),), 0.3), ("coco", (str(tmp_path / "train" / "coco"),), 1.0)]
    assert rec.val_shards() == [str(tmp_path / "val" / "pw")]
    assert rec.eval_shards() == [str(tmp_path / "test" / "pw")]             # 'other' splits are left out


MALFORMED = [
    ("training: []\n", "unknown recipe key 'training'"),
    ("- a\n- b\n", "a recipe is a mapping"),
    ("train: [sa]\n", "train[0]: expected a mapping"),
    ("train:\n  - {name: a, shards: sa, ratio: 0}\n", "train[0]: 'ratio' must be a number > 0"),
    ("train:\n  - {name: a, shards: sa, weight: 2}\n", "train[0]: unknown key 'weight'"),
    ("train:\n  - {name: a}\n", "train[0]: no 'shards'"),
    ("train:\n  - {name: a, shards: 3}\n", "train[0]: 'shards' must be a path or a list of paths"),
    ("train: [{name: a, shards: sa}]\ntest: [{name: t, shards: [1, 2]}]\n", "test[0]: 'shards' must be a path"),
    ("train: [{name: a, shards: sa}\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, needle", MALFORMED, ids=[m[1].split(":")[0][:24] for m in MALFORMED])
def test_malformed_recipes_are_one_line_errors_in_both_clis(tmp_path, text, needle):
    r = tmp_path / "bad.yaml"
    r.write_text(text)
    with pytest.raises(InputError, match="bad.yaml"):
        read_training_recipe(r)
    for main, args in ((train_main, ["--recipe", str(r), "--out", str(tmp_path / "run"), "--no-progress"]),
                       (eval_main, ["--ckpt", str(tmp_path / "none.pt"), "--recipe", str(r), "--out",
                                    str(tmp_path / "rep"), "--no-progress"])):
        res = CliRunner().invoke(main, args)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert str(r) in lines[0] and needle in lines[0], lines[0]


def test_recipe_without_the_section_a_cli_needs(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("val: []\n")
    with pytest.raises(InputError, match="no training sources"):
        recipe_data_section(r)
    with pytest.raises(InputError, match="no evaluation shards"):
        read_training_recipe(r).eval_shards()
    assert isinstance(read_training_recipe(r).path, Path)
