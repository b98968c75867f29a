"""Shards for every reader of this package: one resolver and one held-out stream.

Resolution (:func:`resolve_shards`): shard specs (:mod:`pipeline.shardspec`: directories, ``.tar`` files, globs,
brace patterns) -> a checked :class:`ShardSet` with the sample count of every shard (from ``build.json`` where the
build wrote one, else by reading the tar headers). The training stream (:mod:`trainer.data`), validation,
``perspose-eval`` and the scripts all resolve their shards here.

Shards may be URLs (``http(s)://``, ``pipe:``, ``s3://``, ``gs://``; :mod:`pipeline.remote`): the same
resolution, streams and errors, with ``build.json`` read from the same place.

The crop-size rule (docs/design.md §6), the one place it is decided: a shard built for crop C serves a model
whose crop is S when C >= S. C = S is the exact integer centre slice of the stored crop (no resampling, K
shifted); C > S is one resampling of the same field of view to S pixels (K scaled; :func:`trainer.augment.
augment_sample` with the augmentation off); C < S is an error, since the model would see less context than it
was built for.

The held-out stream (:func:`iter_heldout`, :func:`heldout_stream`): every sample of the shards exactly once, in
file order, un-augmented, as float64 labels in the model's S crop (:func:`heldout_record`). It is split into
disjoint parts over ranks x loader workers -- whole shards (shard k -> part k % parts) when there are at least as
many shards as parts, else every parts-th sample -- so that nothing is read twice and nothing is lost, with any
number of workers. Validation during training and ``perspose-eval`` both read it (through
:func:`trainer.evaluate.evaluate`), so the two cannot disagree.
"""
from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.remote import is_url, read_bytes, url_join
from pipeline.shard import decode_sample, parse_build_json, read_build_json
from pipeline.shardspec import shard_groups
from pipeline.skeleton import get_skeleton
from pipeline.tario import count_samples, iter_tar

from .augment import AugmentConfig, augment_sample

log = logging.getLogger(__name__)

__all__ = ["ShardSet", "check_crop_size", "resolve_shards", "as_shard_sets", "heldout_record", "iter_heldout",
           "heldout_stream"]

_NO_AUG = AugmentConfig(enabled=False)


@dataclass(frozen=True)
class ShardSet:
    name: str
    urls: tuple[str, ...]                 # non-empty shards only
    counts: tuple[int, ...]               # samples per shard
    ratio: float = 1.0

    @property
    def num_samples(self) -> int:
        return int(sum(self.counts))


def check_crop_size(built_for, where, crop_size: int | None) -> None:
    """The crop-size rule (module docstring): InputError naming ``where`` when shards built for ``built_for`` px
    cannot serve a model of ``crop_size`` px."""
    if crop_size is not None and built_for is not None and int(built_for) < crop_size:
        raise InputError(f"{where}: shards were built for crop_size {built_for}, smaller than the model's crop "
                         f"size {crop_size}; rebuild them with `perspose-build shards --crop {crop_size}`")


def _count_samples(tar: Path) -> int:
    try:
        return count_samples(tar)
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"{tar}: not a readable tar shard ({e})") from None


def _build_info(directory) -> tuple[dict | None, object]:
    """(the directory's build.json or None when it has none, where it is). A URL directory without a readable
    build.json is read without one (sample counts then come from the tar headers)."""
    if is_url(directory):
        where = url_join(directory, "build.json")
        try:
            data = read_bytes(where)
        except OSError:        # none there: counts come from the tars; a malformed one is still an error
            return None, where
        return parse_build_json(data, where), where
    where = Path(directory) / "build.json"
    return (read_build_json(where) if where.is_file() else None), where


def resolve_shards(specs, crop_size: int | None = None, name: str = "", skeletons=None,
                   ratio: float = 1.0) -> ShardSet:
    """Shard specs -> a checked :class:`ShardSet` (InputError for missing, empty or incompatible shards).
    ``crop_size`` / ``skeletons``: the model's; None skips that check."""
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    urls, counts = [], []
    for group in shard_groups(specs):
        info, where = _build_info(group.directory)
        if info is not None:
            check_crop_size(info.get("options", {}).get("crop_size"), where, crop_size)
        known = {s.get("file"): s.get("samples") for s in (info or {}).get("shards", [])}
        for t in group.tars:
            n = known.get(t.rsplit("/", 1)[-1] if isinstance(t, str) else t.name)
            urls.append(str(t))
            counts.append(int(n) if n is not None else _count_samples(t))
    label = name or ", ".join(map(str, specs))
    if sum(counts) == 0:
        raise InputError(f"{label}: the shards contain no samples")
    nonempty = [(u, c) for u, c in zip(urls, counts) if c > 0]
    first = nonempty[0][0]
    try:
        meta = json.loads(next(iter_tar(first))["json"])
    except (OSError, tarfile.TarError, StopIteration):
        raise InputError(f"{first}: not a readable tar shard (build.json lists samples in it)") from None
    except (KeyError, ValueError):
        raise InputError(f"{first}: first sample has no readable .json; not a PersPose shard") from None
    check_crop_size(meta.get("crop_size"), first, crop_size)
    if skeletons is not None and meta.get("skeleton") not in skeletons:
        raise InputError(f"{first}: skeleton {meta.get('skeleton')} is not predicted by the model "
                         f"(it predicts {', '.join(sorted(skeletons))})")
    return ShardSet(name or str(specs[0]).rstrip("/").rsplit("/", 1)[-1], tuple(u for u, _ in nonempty),
                    tuple(c for _, c in nonempty), float(ratio))


def as_shard_sets(shards, crop_size: int | None = None, skeletons=None) -> list[ShardSet]:
    """A ShardSet, a list of them, or shard specs -> a list of ShardSets."""
    if isinstance(shards, ShardSet):
        return [shards]
    shards = [shards] if isinstance(shards, (str, Path)) else list(shards)
    if shards and all(isinstance(s, ShardSet) for s in shards):
        return shards
    return [resolve_shards(shards, crop_size, skeletons=skeletons)]


# ------------------------------------------------------------------------------------------- held-out stream
def heldout_record(sample: dict, crop_size: int | None = None) -> dict:
    """Decoded shard sample -> the model's S crop (the crop-size rule; S = the build's crop when None) and its
    labels in float64: image (S, S, 3) uint8 RGB, K_crop, R, uvd (own skeleton, S-crop pixels / metres), scale,
    joints_rot (P' in the crop camera), pr_angle, has_intrinsics, meta, crop_size, shard and key (where it was
    read, for error messages), and smpl ({betas, pose, transl, gender} of the original camera, or None)."""
    meta, a = sample["meta"], sample["arrays"]
    S = int(meta["crop_size"]) if crop_size is None else int(crop_size)
    if sample["image"].shape[:2] != (int(meta["store_size"]),) * 2:
        raise InputError(f"{sample.get('shard')}: sample {sample['key']} image is {sample['image'].shape[1]}x"
                         f"{sample['image'].shape[0]}, its json says store_size {meta['store_size']}")
    check_crop_size(meta["crop_size"], f"{sample.get('shard')}: sample {sample['key']}", S)
    out = augment_sample(sample, S, _NO_AUG, np.random.default_rng(0))   # draws nothing with augmentation off
    return {"image": np.ascontiguousarray(out["image"]), "K_crop": out["K_crop"], "R": out["R"],
            "uvd": out["uvd"], "scale": float(out["scale"]), "joints_rot": out["joints"],
            "pr_angle": float(a["pr_angle"]), "has_intrinsics": bool(meta["has_intrinsics"]), "meta": meta,
            "crop_size": S, "shard": str(sample.get("shard", "")), "key": str(sample.get("key", "")),
            "smpl": _smpl_labels(a, meta)}


def _smpl_labels(arrays: dict, meta: dict) -> dict | None:
    if not all(f"smpl_{k}" in arrays for k in ("betas", "pose", "transl")):
        return None
    return {"betas": arrays["smpl_betas"], "pose": arrays["smpl_pose"], "transl": arrays["smpl_transl"],
            "gender": str(meta.get("smpl_gender") or "neutral")}


def _decoded(path: str, members: dict) -> dict:
    missing = [e for e in ("jpg", "npz", "json") if e not in members]
    if missing:
        raise InputError(f"{path}: sample {members.get('__key__')} lacks {', '.join(missing)}")
    try:
        s = decode_sample(members)
    except (ValueError, OSError, KeyError) as e:
        raise InputError(f"{path}: cannot decode sample {members.get('__key__')}: {e}") from None
    s["shard"] = str(path)
    return s


def iter_heldout(urls: Iterable[str], crop_size: int | None = None, skeletons=None, part: int = 0,
                 parts: int = 1) -> Iterator[tuple[str, dict | None]]:
    """("ok", :func:`heldout_record`) per 3D sample of part ``part`` of ``parts`` (module docstring), ("skip",
    None) per 2D-only sample, in stream order; a bad shard or sample ends the stream with ("error", message),
    so that an error raised in a loader worker reaches the user as one line."""
    urls = list(urls)
    allowed = None if skeletons is None else set(skeletons)
    by_shard = len(urls) >= parts
    i = 0
    try:
        for k, path in enumerate(urls):
            if by_shard and k % parts != part:
                continue
            try:
                for members in iter_tar(path):
                    mine = by_shard or i % parts == part
                    i += 1
                    if not mine:
                        continue
                    s = _decoded(path, members)
                    m = s["meta"]
                    if not m.get("has_3d") or not get_skeleton(m["skeleton"]).has_3d:
                        yield "skip", None
                        continue
                    if allowed is not None and m["skeleton"] not in allowed:
                        raise InputError(f"{path}: skeleton {m['skeleton']} is not predicted by the model "
                                         f"(it predicts {', '.join(sorted(allowed))})")
                    yield "ok", heldout_record(s, crop_size)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise InputError(f"{path}: not a readable tar shard ({e})") from None
    except InputError as e:
        yield "error", str(e)


class _HeldOutParts(torch.utils.data.IterableDataset):
    """Loader-worker wrapper of :func:`iter_heldout`: worker w of rank r reads part r * workers + w."""

    def __init__(self, urls, crop_size, skeletons, rank: int, world: int, workers: int):
        super().__init__()
        self.args = (list(urls), crop_size, skeletons, rank, world, workers)

    def __iter__(self):
        urls, crop_size, skeletons, rank, world, workers = self.args
        info = torch.utils.data.get_worker_info()
        w = 0 if info is None else info.id
        return iter_heldout(urls, crop_size, skeletons, rank * workers + w, world * workers)


def _identity(x):
    return x


def heldout_stream(urls, crop_size: int | None = None, skeletons=None, rank: int = 0, world: int = 1,
                   workers: int = 0) -> Iterator[tuple[str, dict | None]]:
    """This rank's part of the held-out stream, decoded in the calling process (``workers`` 0) or in that many
    DataLoader processes; which samples a rank gets does not depend on ``workers``."""
    if workers <= 0:
        return iter_heldout(urls, crop_size, skeletons, rank, world)
    return iter(torch.utils.data.DataLoader(_HeldOutParts(urls, crop_size, skeletons, rank, world, workers),
                                            batch_size=None, num_workers=workers, collate_fn=_identity))
