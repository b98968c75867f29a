"""Dataset recipes (``manifests/*.yaml``): which sources, splits, adapter options and mix ratios make a training
set, with dataset roots as ``${VARIABLES}``.

Format::

    name: 3dpw                      # required
    description: free text          # optional
    vars: {SMPL_DIR: ./data/smpl}   # optional defaults; values passed to load_recipe override them
    splits:                         # recipe split -> list of sources
      train:
        - name: h36m_train          # unique within the recipe; the manifest is <name>.parquet
          adapter: h36m             # 3dpw | h36m | mpi_inf_3dhp | bedlam | coco | manifest (a built parquet)
          root: ${DATA}/h36m        # dataset root (for 'manifest': the parquet file)
          split: train              # the dataset's own split
          ratio: 0.3                # mix weight (optional; normalised by the split's sum when mixing)
          options: {interval: 5}    # adapter keyword options (checked against the adapter)

Unknown keys, unknown adapters or options, and unresolved ``${VARS}`` are InputErrors naming the recipe file.
``$$`` writes a literal ``$``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Source", "Recipe", "load_recipe", "recipe_source_manifests", "PASS_THROUGH"]

PASS_THROUGH = "manifest"
_TOP_KEYS = {"name", "description", "vars", "splits"}
_SOURCE_KEYS = {"name", "adapter", "root", "split", "ratio", "options"}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Source:
    name: str
    adapter: str
    root: Path
    split: str
    options: Mapping[str, Any]
    ratio: float | None
    target: str  # the recipe split it belongs to


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    splits: Mapping[str, tuple[Source, ...]]
    description: str = ""

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(s for srcs in self.splits.values() for s in srcs)

    def ratios(self, split: str) -> dict[str, float]:
        """Mix weights of a split normalised to sum 1 (sources without a ratio count as 1; ratio 0 drops it)."""
        raw = {s.name: (1.0 if s.ratio is None else s.ratio) for s in self.splits[split]}
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items() if v > 0} if total > 0 else {}


def _substitute(value, variables: Mapping[str, str], where: str):
    if isinstance(value, str):
        def repl(m):
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            if name not in variables:
                raise InputError(f"{where}: variable ${{{name}}} is not set (pass --var {name}=VALUE)")
            return str(variables[name])
        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    return value


def _check_keys(obj, allowed, where):
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _source(raw, target: str, path: Path, variables) -> Source:
    where = f"{path}: splits.{target}"
    _check_keys(raw, _SOURCE_KEYS, where)
    missing = [k for k in ("name", "adapter", "root", "split") if k not in raw]
    if missing:
        raise InputError(f"{where}: source {raw.get('name', '?')!r} is missing {', '.join(missing)}")
    raw = _substitute(raw, variables, f"{where}.{raw['name']}")
    where = f"{where}.{raw['name']}"
    for part, value in (("split", target), ("source name", raw["name"])):
        if not _NAME.fullmatch(str(value)):  # they become directory names under OUT
            raise InputError(f"{where}: {part} {value!r}: use only letters, digits, '_' and '-'")
    adapter = str(raw["adapter"])
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise InputError(f"{where}: options must be a mapping")
    if adapter == PASS_THROUGH:
        if options:
            raise InputError(f"{where}: adapter 'manifest' takes no options")
    else:
        from .adapters.registry import ADAPTERS, option_names
        if adapter not in ADAPTERS:
            raise InputError(f"{where}: unknown adapter {adapter!r} (known: {', '.join(ADAPTERS)}, {PASS_THROUGH})")
        bad = sorted(set(options) - option_names(adapter) - {"progress"})
        if bad:
            raise InputError(f"{where}: unknown option(s) {', '.join(bad)} for adapter {adapter}")
    ratio = raw.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 0):
        raise InputError(f"{where}: ratio must be a number >= 0, got {ratio!r}")
    return Source(name=str(raw["name"]), adapter=adapter, root=Path(str(raw["root"])), split=str(raw["split"]),
                  options=MappingProxyType(dict(options)), ratio=None if ratio is None else float(ratio),
                  target=target)


def load_recipe(path, variables: Mapping[str, str] | None = None) -> Recipe:
    """Parse and check a recipe; ``variables`` fill ``${NAME}`` (over the recipe's own ``vars`` defaults)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    _check_keys(raw, _TOP_KEYS, str(path))
    if "name" not in raw or "splits" not in raw:
        raise InputError(f"{path}: a recipe needs 'name' and 'splits'")
    defaults = raw.get("vars") or {}
    if not isinstance(defaults, dict):
        raise InputError(f"{path}: vars must be a mapping")
    variables = {**{str(k): str(v) for k, v in defaults.items()}, **dict(variables or {})}
    splits_raw = raw["splits"]
    if not isinstance(splits_raw, dict) or not splits_raw:
        raise InputError(f"{path}: splits must be a non-empty mapping of split -> list of sources")
    splits, names = {}, set()
    for target, items in splits_raw.items():
        if not isinstance(items, list) or not items:
            raise InputError(f"{path}: splits.{target} must be a non-empty list of sources")
        srcs = tuple(_source(it, str(target), path, variables) for it in items)
        for s in srcs:
            if s.name in names:
                raise InputError(f"{path}: duplicate source name {s.name!r}")
            names.add(s.name)
        splits[str(target)] = srcs
    return Recipe(name=str(raw["name"]), path=path, splits=MappingProxyType(splits),
                  description=str(raw.get("description") or ""))


def recipe_source_manifests(recipe: Recipe, out_dir, check_images: bool = True,
                            progress: bool = True) -> list[tuple[Source, Path]]:
    """Run every source's adapter into ``out_dir/<split>/<source>.parquet`` (validated, atomic, with a summary
    table) and return (source, manifest path) in recipe order. Sources with ratio 0 are skipped. A ``manifest``
    source is used in place (its file is checked, not copied)."""
    from .adapters.registry import output_metadata, run_adapter
    from .manifest import read_manifest
    from .manifest_cli import finish_manifest
    out_dir = Path(out_dir)
    result: list[tuple[Source, Path]] = []
    for split, srcs in recipe.splits.items():
        for s in srcs:
            if s.ratio == 0:
                log.info("recipe %s: skipping %s (ratio 0)", recipe.name, s.name)
                continue
            if s.adapter == PASS_THROUGH:
                read_manifest(s.root)  # fails with InputError naming the file
                result.append((s, s.root))
                continue
            opts = {"progress": progress, **s.options}
            res = run_adapter(s.adapter, s.root, s.split, **opts)
            out = out_dir / split / f"{s.name}.parquet"
            meta = output_metadata(res, {"split": s.split, **s.options})
            meta["recipe"] = {"name": recipe.name, "source": s.name, "ratio": s.ratio, "split": split}
            finish_manifest(res.rows, res.rejected, out, meta, res.image_root, check_images)
            result.append((s, out))
    return result
