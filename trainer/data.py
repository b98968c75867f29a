"""Shard loaders: webdataset streams per dataset, seeded mixing by ratios, exact augmentation, uint8 batches.

Batches follow the contract documented in :mod:`trainer.batch`.

Training stream (:func:`make_train_loader`): per source a ``wds.DataPipeline`` of ``wds.ResampledShards``
(deterministic, seeded by (seed, epoch, rank, worker): ``wds.WebDataset(resampled=True)`` seeds its resampler
from the pid and the clock, which would make runs irreproducible), ``wds.split_by_node``, ``wds.split_by_worker``,
tar reading by :func:`pipeline.tario.tar_samples` (a failing shard is logged and left, like webdataset's
``warn_and_continue``, at a fifth of the cost of its ``tarfile``-based reader) and a seeded sample shuffle
buffer; the sources are mixed per sample by a seeded ``np.random.Generator`` with the normalised ratios. Only
the jpg/npz/json members are decoded, by :func:`pipeline.shard.decode_sample` (the webdataset default decoders
unpickle). An epoch is ``samples_per_epoch`` global samples, split exactly over ranks and workers
(webdataset's ``with_epoch`` counts per worker). Call ``loader.set_epoch(e)`` before iterating: worker processes are re-created per epoch and their
seeds include ``e``. Resampled streams are infinite, so any number of workers works with any number of shards.

With ``augment.photometric_on_device`` the photometric chain and cutout are drawn here, from the same generator
and in the same order as without it, but applied on the training device (the batch's ``photo``; applied by
:func:`trainer.train.to_device`), so the loader's cost per sample drops to decoding and the geometric warp.

Shards are resolved by :func:`trainer.shards.resolve_shards`; held-out samples (validation, evaluation) are read
by the held-out stream of :mod:`trainer.shards`, not here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import webdataset as wds
from pipeline.errors import InputError
from pipeline.shard import decode_sample
from pipeline.skeleton import DEFAULT_SKELETONS, joint_slices
from pipeline.tario import tar_samples

from .augment import AugmentConfig, augment_sample
from .batch import collate, in_worker, pack_batch, unpack_batch
from .hps_labels import flip_hps_labels, hps_labels
from .photometric import TABLE_SIZE
from .shards import ShardSet, resolve_shards

log = logging.getLogger(__name__)

__all__ = ["DataSource", "LoaderConfig", "sample_to_record", "make_train_loader", "ShardLoader"]

_MAX_CONSECUTIVE_FAILURES = 1000


@dataclass(frozen=True)
class DataSource:
    """One dataset: shard directories, .tar files or globs; ``ratio`` is normalised over the sources.
    (trainer.config.SourceConfig has the same fields and can be passed instead.)"""
    name: str
    paths: tuple[str, ...]
    ratio: float = 1.0


@dataclass(frozen=True)
class LoaderConfig:
    crop_size: int = 256
    skeletons: tuple[str, ...] = DEFAULT_SKELETONS
    batch_size: int = 96                  # per rank
    num_workers: int = 4                  # per rank
    shuffle_buffer: int = 1000            # samples, per source and worker
    samples_per_epoch: int | None = None  # global (all ranks); None: the sources' sample count
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pin_memory: bool = False
    prefetch_factor: int = 2


# ------------------------------------------------------------------------------------------- samples -> batch
def sample_to_record(raw: dict, crop_size: int, layout: dict, aug: AugmentConfig, rng: np.random.Generator,
                     out: np.ndarray | None = None) -> dict:
    """Raw tar members {'jpg','npz','json',...} -> one augmented sample in the concatenated joint layout. ``out``:
    where the final image goes (a slot of the batch being built; :func:`trainer.augment.augment_sample`)."""
    s = decode_sample(raw, rgbx=True)            # jpg / npz / json only, never unpickles; RGBX warps faster
    meta = s["meta"]
    sl = layout.get(meta["skeleton"])
    if sl is None:
        raise ValueError(f"sample {meta.get('sample_id')}: skeleton {meta['skeleton']!r} is not configured")
    out = augment_sample(s, crop_size, aug, rng, out)
    J = max([v.stop for v in layout.values()])
    uvd = np.zeros((J, 3), np.float32)
    joints = np.zeros((J, 3), np.float32)
    mask_uv = np.zeros(J, np.float32)
    mask_d = np.zeros(J, np.float32)
    uvd[sl] = out["uvd"]
    joints[sl] = out["joints"]
    mask_uv[sl] = out["vis"] > 0  # joints outside the crop are the loss's business (loss.uv_inside_crop_only)
    has_3d = bool(meta["has_3d"])
    mask_d[sl] = float(has_3d)
    hps = hps_labels(s["arrays"])
    if out["flipped"]:
        hps = flip_hps_labels(hps)
    rec = {"image": out["image"], "K_crop": out["K_crop"].astype(np.float32), "R": out["R"], "uvd": uvd,
           "joints": joints, "mask_uv": mask_uv, "mask_d": mask_d, "scale": np.float32(out["scale"]),
           "has_3d": has_3d, "has_intrinsics": bool(meta["has_intrinsics"]), "flipped": bool(out["flipped"]),
           "dataset": str(meta["dataset"]), "sample_id": str(meta["sample_id"]), "skeleton": meta["skeleton"],
           "meta": meta, **hps}
    if aug.photometric_on_device:                # still to be applied, on the device (trainer.train.to_device)
        rec["photo"] = out["photo"]
    return rec


# ------------------------------------------------------------------------------------------- training stream
def _source_pipeline(shards: ShardSet, seed: int, buffer: int):
    stages = [wds.ResampledShards(list(shards.urls), seed=seed, deterministic=True),
              wds.split_by_node, wds.split_by_worker, partial(tar_samples, on_error="warn")]
    if buffer > 1:
        stages.append(wds.shuffle(buffer, initial=min(buffer, 100), seed=seed))
    return wds.DataPipeline(*stages)


def _split(n: int, parts: int, i: int) -> int:
    return n // parts + (i < n % parts)


class MixedStream(torch.utils.data.IterableDataset):
    """Infinite seeded mix of the sources, cut into epochs of ``batches_per_rank`` batches on this rank."""

    def __init__(self, sets: list[ShardSet], cfg: LoaderConfig, batches_per_rank: int):
        super().__init__()
        self.sets, self.cfg, self.batches_per_rank = sets, cfg, batches_per_rank
        self.layout = joint_slices(cfg.skeletons)
        p = np.array([s.ratio for s in sets], np.float64)
        self.probs = p / p.sum()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self):
        rank, _, worker, num_workers = wds.utils.pytorch_worker_info()
        seq = np.random.SeedSequence([self.cfg.seed, self.epoch, rank, worker])
        src_seeds = seq.generate_state(len(self.sets))
        rng = np.random.default_rng(seq.spawn(1)[0])
        streams = [iter(_source_pipeline(s, int(sd), self.cfg.shuffle_buffer)) for s, sd in zip(self.sets, src_seeds)]
        pack = pack_batch if in_worker() else (lambda batch: batch)
        for _ in range(_split(self.batches_per_rank, num_workers, worker)):
            S = self.cfg.crop_size
            images = np.empty((self.cfg.batch_size, S, S, 3), np.uint8)   # each sample writes its slot
            yield pack(collate(self._records(streams, rng, images), images))

    def _records(self, streams, rng, images: np.ndarray) -> list[dict]:
        out, failures = [], 0
        choices = rng.choice(len(streams), size=self.cfg.batch_size, p=self.probs)
        i = 0
        while len(out) < self.cfg.batch_size:
            k = int(choices[i]) if i < len(choices) else int(rng.choice(len(streams), p=self.probs))
            i += 1
            raw = next(streams[k])
            try:
                out.append(sample_to_record(raw, self.cfg.crop_size, self.layout, self.cfg.augment, rng,
                                            images[len(out)]))
                failures = 0
            except Exception as e:  # a bad sample must not stop training (warn_and_continue)
                failures += 1
                log.warning("skipping sample %s from %s: %s", raw.get("__key__"), raw.get("__url__"), e)
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} consecutive unreadable samples; last: {e}") from e
        return out


def _as_is(batch):
    """The streams yield finished batches; DataLoader's default_convert would walk every meta dict."""
    return batch


class ShardLoader:
    """A torch DataLoader over a stream with ``set_epoch`` and ``len`` (batches per epoch on this rank)."""

    def __init__(self, dataset, cfg: LoaderConfig, num_workers: int):
        self.dataset = dataset
        self.num_workers = num_workers
        kw = {"prefetch_factor": cfg.prefetch_factor} if num_workers > 0 else {}
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                                  collate_fn=_as_is, pin_memory=cfg.pin_memory,
                                                  persistent_workers=False, **kw)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        return map(unpack_batch, self.loader)


def _as_sets(sources, cfg: LoaderConfig) -> list[ShardSet]:
    if not sources:
        raise InputError("no training sources given (a recipe or --train)")
    sets = []
    for s in sources:
        if isinstance(s, ShardSet):
            sets.append(s)
        else:
            sets.append(resolve_shards(s.paths, cfg.crop_size, s.name, cfg.skeletons, s.ratio))
    if not all(s.ratio > 0 for s in sets):
        raise InputError("every source ratio must be > 0")
    return sets


def make_train_loader(sources, cfg: LoaderConfig) -> ShardLoader:
    """Sources (DataSource / SourceConfig / ShardSet) -> an infinite, resampled, augmented, mixed loader whose
    epochs have ``samples_per_epoch // (batch_size * world_size)`` batches per rank."""
    if cfg.augment.photometric_on_device and 3 * cfg.crop_size ** 2 > TABLE_SIZE:
        raise InputError(f"augment.photometric_on_device needs crops of at most 836 px (the noise table holds "
                         f"{TABLE_SIZE} values); crop_size is {cfg.crop_size}: switch it off")
    sets = _as_sets(sources, cfg)
    _, world, _, _ = wds.utils.pytorch_worker_info()
    total = cfg.samples_per_epoch or sum(s.num_samples for s in sets)
    batches = max(1, total // (cfg.batch_size * world))
    log.info("training mix: %s; %d batches of %d per rank and epoch",
             ", ".join(f"{s.name} {p:.3f} ({s.num_samples} samples, {len(s.urls)} shards)"
                       for s, p in zip(sets, np.array([s.ratio for s in sets]) / sum(s.ratio for s in sets))),
             batches, cfg.batch_size)
    return ShardLoader(MixedStream(sets, cfg, batches), cfg, cfg.num_workers)


def first_batch(shards: ShardSet, cfg: LoaderConfig, n: int) -> dict:
    """The first ``n`` samples of the shards in file order, un-augmented, as one training batch (the batch
    contract): the fixed batch of overfit checks."""
    from itertools import islice

    from pipeline.tario import iter_tar

    layout, off = joint_slices(cfg.skeletons), AugmentConfig(enabled=False)
    raws = (raw for url in shards.urls for raw in iter_tar(url))
    records = [sample_to_record(raw, cfg.crop_size, layout, off, np.random.default_rng(0)) for raw in islice(raws, n)]
    if len(records) < n:
        raise InputError(f"{shards.name}: only {len(records)} samples, need {n}")
    return collate(records)
