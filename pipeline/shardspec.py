"""Shard specs -> shard files: the one place that says what a user may pass where shards are read.

A spec is a shard directory (every ``*.tar`` in it, sorted), a ``.tar`` file, a quoted glob
(``'shards/test/*.tar'``) or a brace pattern (``shards/test/shard-{000000..000003}.tar``); brace patterns may hold
globs. A URL (``http(s)://``, ``pipe:``, ``s3://``, ``gs://``; :mod:`pipeline.remote`) names a ``.tar`` shard
(brace patterns expand) or, ending in anything else, a shard directory whose ``build.json`` lists its shards.
``perspose-train``, ``perspose-eval``, ``perspose-build verify`` / ``show`` and the recipes all resolve
their shard arguments here, so every form works everywhere and fails with the same words.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from braceexpand import braceexpand

from .errors import InputError

__all__ = ["ShardGroup", "expand_spec", "shard_groups"]


@dataclass(frozen=True)
class ShardGroup:
    """Shard files of one build directory (where its ``build.json`` and ``index.parquet`` live), in spec order;
    for URLs, ``directory`` and ``tars`` are URL strings."""
    directory: Path | str
    tars: tuple[Path | str, ...]


def expand_spec(spec: str) -> list[Path]:
    """One spec -> existing paths (directories or files), in order; InputError naming the spec otherwise."""
    spec = str(spec)
    if "{" in spec:
        return [p for part in braceexpand(spec) for p in expand_spec(part)]
    if any(c in spec for c in "*?["):
        hits = sorted(glob.glob(spec))
        if not hits:
            raise InputError(f"{spec}: the pattern matches no shard")
        return [Path(h) for h in hits]
    p = Path(spec)
    if not p.exists():
        raise InputError(f"{spec}: no such shard directory or file")
    return [p]


def shard_groups(specs: Iterable) -> list[ShardGroup]:
    """Specs -> shard files grouped by build directory, in the order given; a file passed twice is kept once.
    InputError for a missing path, a pattern without match, a file that is not a ``.tar``, a directory without
    shards, or no shard at all."""
    from .remote import is_url
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    groups: dict[str, tuple[Path, list[Path]]] = {}   # resolved directory -> (as given, its tars)
    seen: set[str] = set()
    for spec in specs:
        if is_url(str(spec)):
            for directory, tars in _url_groups(str(spec)):
                for t in tars:
                    if t not in seen:
                        seen.add(t)
                        groups.setdefault(directory, (directory, []))[1].append(t)
            continue
        for p in expand_spec(spec):
            if p.is_dir():
                tars = sorted(p.glob("*.tar"))
                if not tars:
                    raise InputError(f"{p}: no .tar shards in this directory (build them with perspose-build shards)")
                directory = p
            elif p.suffix != ".tar":
                raise InputError(f"{p}: not a .tar shard")
            else:
                tars, directory = [p], p.parent
            for t in tars:
                key = str(t.resolve())
                if key not in seen:
                    seen.add(key)
                    groups.setdefault(str(directory.resolve()), (directory, []))[1].append(t)
    if not groups:
        raise InputError(f"{', '.join(map(str, specs)) or 'no shard spec'}: no .tar shards given")
    return [ShardGroup(d, tuple(ts)) for d, ts in groups.values()]


def _url_groups(spec: str) -> list[tuple[str, list[str]]]:
    """A URL spec -> [(its directory URL, shard URLs)]; a directory URL is listed by its build.json."""
    from .remote import url_join, url_parent
    from .shard import read_build_json
    out = []
    for url in braceexpand(spec):
        if url.endswith(".tar"):
            out.append((url_parent(url), [url]))
            continue
        info = read_build_json(url_join(url, "build.json"))
        files = [s.get("file") for s in info.get("shards", []) if s.get("file")]
        if not files:
            raise InputError(f"{url_join(url, 'build.json')}: lists no shards")
        out.append((url.rstrip("/"), [url_join(url, f) for f in sorted(files)]))
    return out
