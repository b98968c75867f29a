"""The training recipe (``recipe.yaml``): which shards train, validate and evaluate a model.

Written by ``perspose-build shards --recipe`` (:func:`write_training_recipe`), read by ``perspose-train --recipe``
and ``perspose-eval --recipe`` (:func:`read_training_recipe`): one contract, its writer beside its reader.
Format (YAML; shard specs relative to the recipe file, any form :mod:`pipeline.shardspec` takes)::

    train:                                  # sources mixed by ratio (normalised over the list)
      - {name: h36m, shards: shards/h36m_train, ratio: 0.3}
      - {name: coco, shards: [shards/coco_a, shards/coco_b], ratio: 0.4}
    val: [shards/h36m_val]                  # optional: validation during training, never a test set
    test: [{name: 3dpw, shards: shards/3dpw_test}]   # what perspose-eval scores
    eval: [...]                             # optional: overrides test for perspose-eval

``train`` may also be a mapping name -> shards (ratio 1 each); ``val``, ``test`` and ``eval`` entries are specs or
``{name, shards}`` mappings (``paths`` is accepted for ``shards``). perspose-eval reads ``eval``, else ``test``,
else ``val``. Any other key, or an entry of the wrong shape, is an InputError naming the file and the key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["RecipeSource", "TrainingRecipe", "read_training_recipe", "write_training_recipe"]

_KEYS = ("train", "val", "test", "eval")


@dataclass(frozen=True)
class RecipeSource:
    name: str
    shards: tuple[str, ...]     # shard specs, absolute (resolved against the recipe's directory)
    ratio: float = 1.0


@dataclass(frozen=True)
class TrainingRecipe:
    path: Path
    train: tuple[RecipeSource, ...]
    val: tuple[RecipeSource, ...]
    test: tuple[RecipeSource, ...]
    eval: tuple[RecipeSource, ...]

    def eval_shards(self) -> list[str]:
        """What perspose-eval scores: ``eval``, else ``test``, else ``val``."""
        chosen = self.eval or self.test or self.val
        if not chosen:
            raise InputError(f"{self.path}: the recipe lists no evaluation shards under 'eval', 'test' (or 'val')")
        return [p for s in chosen for p in s.shards]

    def val_shards(self) -> list[str]:
        return [p for s in self.val for p in s.shards]


def _specs(path: Path, value, where: str) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise InputError(f"{path}: {where}: 'shards' must be a path or a list of paths, got {value!r}")
    return tuple(str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in value)


def _entry(path: Path, raw, key: str, i: int) -> RecipeSource:
    where = f"{key}[{i}]"
    if isinstance(raw, str) and key != "train":
        return RecipeSource(Path(raw).name, _specs(path, raw, where))
    if not isinstance(raw, dict):
        raise InputError(f"{path}: {where}: expected a mapping with name, shards{' and ratio' * (key == 'train')}"
                         f", got {raw!r}")
    allowed = {"name", "shards", "paths"} | ({"ratio"} if key == "train" else set())
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InputError(f"{path}: {where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    shards = raw.get("shards", raw.get("paths"))
    if shards is None:
        raise InputError(f"{path}: {where}: no 'shards'")
    ratio = raw.get("ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise InputError(f"{path}: {where}: 'ratio' must be a number > 0, got {ratio!r}")
    return RecipeSource(str(raw.get("name", f"{key}{i}")), _specs(path, shards, where), float(ratio))


def read_training_recipe(path) -> TrainingRecipe:
    """Read and check a training recipe (module docstring); InputError naming the file and key otherwise."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise InputError(f"{path}: cannot read the recipe ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a recipe is a mapping with {', '.join(_KEYS)}")
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown recipe key {unknown[0]!r} (a recipe has {', '.join(_KEYS)})")
    sections = {}
    for key in _KEYS:
        raw = doc.get(key) or []
        if key == "train" and isinstance(raw, dict):
            raw = [{"name": k, "shards": v} for k, v in raw.items()]
        raw = raw if isinstance(raw, list) else [raw]
        sections[key] = tuple(_entry(path, e, key, i) for i, e in enumerate(raw))
    return TrainingRecipe(path, **sections)


def write_training_recipe(shard_dirs, base: Path, recipe_name: str = "") -> dict:
    """The recipe document for shards built one directory per source: ``shard_dirs`` is [(source name, recipe
    split, ratio or None, directory)]; ``train`` sources keep their mix ratios, ``val`` and ``test`` their
    names (other recipe splits have no role in training or evaluation and are left out). Paths are relative to
    ``base``, the directory the recipe file is written to, so the shard tree can be moved as a whole."""
    doc: dict = {}
    for name, split, ratio, d in shard_dirs:
        rel = str(Path(d).relative_to(base))
        if split == "train":
            doc.setdefault("train", []).append({"name": name, "shards": rel, "ratio": 1.0 if ratio is None else ratio})
        elif split in ("val", "test"):
            doc.setdefault(split, []).append({"name": name, "shards": rel})
        else:
            log.info("recipe %s: split %r is not train, val or test; not listed in the training recipe",
                     recipe_name, split)
    return doc
