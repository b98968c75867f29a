"""Adapter names -> reader functions (imported lazily), and the metadata every adapter manifest carries."""
from __future__ import annotations

import importlib
import inspect

from ..errors import InputError
from ..manifest import manifest_metadata
from .common import AdapterOutput, checksums

__all__ = ["ADAPTERS", "get_reader", "run_adapter", "output_metadata"]

ADAPTERS = {
    "3dpw": "pipeline.adapters.pw3d:read_3dpw",
    "h36m": "pipeline.adapters.h36m:read_h36m",
    "mpi_inf_3dhp": "pipeline.adapters.mpi_inf_3dhp:read_mpi_inf_3dhp",
    "bedlam": "pipeline.adapters.bedlam:read_bedlam",
    "coco": "pipeline.adapters.coco:read_coco",
}


def get_reader(name: str):
    if name not in ADAPTERS:
        raise InputError(f"unknown adapter {name!r} (known: {', '.join(ADAPTERS)})")
    mod, attr = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(mod), attr)


def option_names(name: str) -> set[str]:
    sig = inspect.signature(get_reader(name))
    return {p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY}


def run_adapter(name: str, root, split: str, **options) -> AdapterOutput:
    """Run adapter ``name``; unknown option names are an InputError (not silently ignored)."""
    unknown = sorted(set(options) - option_names(name))
    if unknown:
        raise InputError(f"adapter {name}: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(option_names(name)))})")
    return get_reader(name)(root, split, **options)


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def output_metadata(out: AdapterOutput, options: dict | None = None) -> dict:
    """File metadata of an adapter manifest: adapter name/version, roots, sha256 of the sources, options."""
    extra = {"options": {k: _jsonable(v) for k, v in (options or {}).items()},
             **{k: _jsonable(v) for k, v in out.extra.items()}}
    return manifest_metadata(out.adapter, out.version, out.image_root, dataset_root=out.dataset_root,
                             source_checksums=checksums(out.sources, out.dataset_root), extra=extra)
