"""The training loop: linear and readable (nanoGPT's train.py is the model), built from small functions.

One call, :func:`train`, runs the whole job on one process or under ``torchrun`` (DDP: nccl on CUDA, gloo on CPU;
SyncBatchNorm only on CUDA). On CUDA: bf16 autocast, channels_last, optional torch.compile, pinned memory and
non-blocking copies; on the CPU: fp32 (``precision: bf16`` opts in), channels_last, and torch threads that leave
the loader workers their cores (:func:`cpu_threads`). Images reach the device as uint8 and are normalised there (with
``augment.photometric_on_device`` also photometrically augmented there, :func:`to_device`); the model builds
the PE map from K_crop.

Exact resume. The data stream is cut into *segments* that end at every ``checkpoint_every_steps`` step, at every
epoch end and at the last step; each segment's loader is seeded from (seed, epoch, first step of the segment), and
checkpoints are written only at segment ends. Resuming from a checkpoint therefore restarts exactly the stream the
uninterrupted run would have read next; with the model, optimizer, step and RNG states restored, the continued run
is identical to the uninterrupted one (bit-identical on the CPU with ``deterministic``).

The learning rate is a pure function of the step (:func:`get_lr`); there is no scheduler object.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from pipeline.errors import InputError
from pipeline.fsutil import atomic_write_text
from trainer.checkpoint import load_checkpoint, model_state_dict, rng_state, save_checkpoint, set_rng_state
from trainer.config import TrainConfig, config_to_dict, dump_yaml
from trainer.data import LoaderConfig, make_train_loader
from trainer.ema import ema_decay_at, make_ema, update_ema
from trainer.evaluate import NonFinitePrediction, evaluate, model_predict_fn
from trainer.logging_utils import RunLogger, plot_loss_curve
from trainer.losses import pose_losses
from trainer.model import build_model, load_pose_hrnet_weights, normalize_images
from trainer.precision import amp_dtype, autocast
from trainer.photometric_torch import apply_photometric_torch
from trainer.shards import ShardSet, resolve_shards

__all__ = ["Dist", "setup_distributed", "get_lr", "param_groups", "segment_end", "segment_seed", "train"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def primary(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (MASTER_ADDR/PORT are read by init_process_group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, device)


def get_lr(step: int, cfg: TrainConfig, world_size: int = 1) -> float:
    """Learning rate before optimizer step ``step`` (0-based), from the fractional epoch e of the samples seen:
    warm-up lr * (e / W + 0.01) for e < W, then lr * 0.75 ** floor((e - W) / 6) (the reference, per step), or
    with ``schedule: cosine`` half a cosine from lr at e = W to lr * min_lr_ratio at the last step."""
    o = cfg.optim
    e = step * cfg.batch_size * world_size / cfg.epoch_samples
    if e < o.warmup_epochs:
        return o.lr * (e / o.warmup_epochs + o.warmup_floor)
    if o.schedule == "cosine":
        last = (cfg.total_steps(world_size) - 1) * cfg.batch_size * world_size / cfg.epoch_samples
        t = min(1.0, (e - o.warmup_epochs) / (last - o.warmup_epochs)) if last > o.warmup_epochs else 1.0
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    return o.lr * o.decay_factor ** math.floor((e - o.warmup_epochs) / o.decay_every_epochs)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: none for 1-D parameters (norm scales) and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def segment_end(step: int, cfg: TrainConfig, steps_per_epoch: int, total: int) -> int:
    """First step >= step + 1 that is a checkpoint step, an epoch end or the last step."""
    nxt = (step // cfg.checkpoint_every_steps + 1) * cfg.checkpoint_every_steps
    return min(nxt, (step // steps_per_epoch + 1) * steps_per_epoch, total)


def segment_seed(seed: int, epoch: int, step: int) -> int:
    """Loader seed of the data segment starting at ``step`` (the loader adds epoch, rank and worker itself)."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0])


def loader_config(cfg: TrainConfig, dist: Dist, seed: int, samples: int | None) -> LoaderConfig:
    return LoaderConfig(crop_size=cfg.model.crop_size, skeletons=cfg.model.skeletons, batch_size=cfg.batch_size,
                        num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
                        samples_per_epoch=samples, seed=seed, augment=cfg.augment,
                        pin_memory=dist.device.type == "cuda")


def resolve_data(cfg: TrainConfig) -> tuple[list[ShardSet], list[ShardSet]]:
    """Check and index the train / val shards once (InputError for missing, empty or incompatible shards)."""
    m = cfg.model
    train = [resolve_shards(s.paths, m.crop_size, s.name, m.skeletons, s.ratio) for s in cfg.data.train]
    if not train:
        raise InputError("no training shards configured (data.train is empty)")
    val = [resolve_shards(p, m.crop_size, Path(p).name, m.skeletons) for p in cfg.data.val]
    return train, val


def train_batches(cfg: TrainConfig, dist: Dist, sets: list[ShardSet], epoch: int, step: int, n_steps: int):
    """The ``n_steps`` batches of the data segment starting at ``step``, on this rank (workers split them
    exactly and the loader interleaves them in a fixed order, so the stream is a function of the seed)."""
    samples = n_steps * cfg.batch_size * dist.world_size
    loader = make_train_loader(sets, loader_config(cfg, dist, segment_seed(cfg.seed, epoch, step), samples))
    loader.set_epoch(epoch)
    return islice(iter(loader), n_steps)


def build(cfg: TrainConfig, dist: Dist):
    """(raw model, training model): the raw module is what checkpoints and validation use."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    raw = build_model(cfg.model)
    if cfg.pretrained:
        load_pose_hrnet_weights(raw, cfg.pretrained)
    if cfg.init:  # the whole model, e.g. a converted official checkpoint
        load_init(raw, cfg.init)
    cuda = dist.device.type == "cuda"
    raw = raw.to(dist.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    model = raw
    if dist.world_size > 1:
        if cuda and cfg.sync_bn:
            model = raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[dist.local_rank] if cuda else None)
    if cfg.compile:
        model = torch.compile(model)
    return raw, model


# Modules a run may add to an --init checkpoint's model (``--set model.use_pe=true`` / ``model.hps=true``): they
# start from their own initialisation, as the paper adds PE to a pretrained backbone.
ADDABLE_MODULES = ("pe_conv.", "beta_head.", "twist_head.", "leaf_head.")


def load_init(raw: torch.nn.Module, path) -> list[str]:
    """Load a perspose checkpoint's weights into ``raw``; every weight must fit, and only ADDABLE_MODULES may be
    missing from the file (they keep their fresh initialisation). Returns the added keys."""
    ck = load_checkpoint(path, require=("model", "config"))
    try:
        missing, unexpected = raw.load_state_dict(ck["model"], strict=False)
    except RuntimeError as e:
        raise InputError(f"{path}: its weights do not fit this run's model config "
                         f"({str(e).splitlines()[0][:200]})") from None
    bad = [k for k in missing if not k.startswith(ADDABLE_MODULES)]
    if unexpected or bad:
        raise InputError(f"{path}: its weights do not fit this run's model config (missing: "
                         f"{', '.join(bad[:3]) or '-'}; unexpected: {', '.join(unexpected[:3]) or '-'})")
    if missing:
        log.info("--init %s: %d new tensors keep their initialisation (%s)", path, len(missing),
                 ", ".join(sorted({k.split(".")[0] for k in missing})))
    return list(missing)


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """Copy a loader batch to ``device``; there, apply the photometric chain the loader drew but left undone
    (``photo``: augment.photometric_on_device) and normalise the images."""
    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    image = out["image"]
    if batch.get("photo") is not None:        # the host copy decides which samples each op touches: no sync
        image = apply_photometric_torch(image, batch["photo"])
    out["image"] = normalize_images(image, channels_last=channels_last)
    return out


def train_step(model, optimizer, batch: dict, cfg: TrainConfig, lr: float) -> dict:
    """One optimizer step; returns the loss terms and the gradient norm as detached tensors."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    with autocast(cfg, batch["image"].device):
        out = model(batch["image"], batch["K_crop"], batch["has_intrinsics"],
                    return_heatmaps=cfg.loss.heatmap_weight > 0)
    terms = pose_losses(out, batch, cfg.loss, cfg.model.crop_size)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


def validate(raw, cfg: TrainConfig, dist: Dist, val_sets: list[ShardSet]) -> float:
    """Mean root-aligned MPJPE (mm) of the 3D samples of the validation shards (the first val_max_samples; 0:
    all), computed by perspose-eval's own code (:func:`trainer.evaluate.evaluate`, no flip test), so the number
    logged here is the number ``perspose-eval --no-flip-test`` reports for the same checkpoint and shards."""
    predict = model_predict_fn(raw, tuple(cfg.model.skeletons), dist.device, flip_test=False,
                               amp_dtype=amp_dtype(cfg, dist.device))
    if dist.world_size > 1:  # score the model rank 0 saves: BN statistics are rank-local on the CPU (no SyncBN)
        for b in raw.buffers():
            tdist.broadcast(b, 0)
    was_training = raw.training
    raw.eval()
    try:
        res = evaluate(predict, val_sets, batch_size=cfg.data.val_batch_size, crop_size=cfg.model.crop_size,
                       skeletons=cfg.model.skeletons, progress=False, workers=cfg.data.num_workers,
                       max_samples=cfg.data.val_max_samples)
    finally:
        raw.train(was_training)
    mpjpe = res["records"].get("mpjpe")
    return float(np.mean(mpjpe)) if mpjpe is not None and len(mpjpe) else float("nan")


def checkpoint_state(raw, optimizer, cfg: TrainConfig, dist: Dist, step: int, best: float, ema=None) -> dict:
    """``model`` holds the weights to evaluate (the average when ``optim.ema_decay`` > 0, with the trained
    weights under ``model_train`` for resuming)."""
    epoch = step // cfg.steps_per_epoch(dist.world_size)
    extra = {"model_train": model_state_dict(raw)} if ema is not None else {}
    return {"model": model_state_dict(ema if ema is not None else raw), **extra, "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
            "samples_seen": step * cfg.batch_size * dist.world_size,
            "data": {"epoch": epoch, "segment_start": step, "loader_seed": segment_seed(cfg.seed, epoch, step)},
            "rng": rng_state(), "best": best, "world_size": dist.world_size,
            "config": config_to_dict(cfg), "versions": {"torch": str(torch.__version__), "format": 1}}


def _reduce_mean(values: dict, dist: Dist) -> dict:
    keys = sorted(values)
    t = torch.stack([values[k].float() for k in keys])
    if dist.world_size > 1:
        tdist.all_reduce(t)
        t /= dist.world_size
    return dict(zip(keys, t.tolist()))


def configure_backends(cfg: TrainConfig, dist: Dist) -> None:
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def cpu_threads(cfg: TrainConfig, world_size: int = 1) -> int:
    """torch threads for a CPU training process: ``cfg.threads``, or this process's share of the usable cores
    minus its loader workers (at least 1), so that loader workers and torch's threads do not fight over cores
    (a parallel op waits for its slowest thread; a thread preempted by a worker stalls it)."""
    if cfg.threads:
        return cfg.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // world_size - cfg.data.num_workers)


def train(cfg: TrainConfig, run_dir, resume: bool = False, progress: bool = True) -> dict:
    """Set up the process (group), run :func:`fit`, tear down; returns the summary dict."""
    dist = setup_distributed()
    if dist.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg, dist.world_size))
    try:
        return fit(cfg, run_dir, dist, resume, progress)[1]
    finally:
        if dist.world_size > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


def fit(cfg: TrainConfig, run_dir, dist: Dist, resume: bool = False, progress: bool = True):
    """The whole training run on this rank -> (trained raw model, summary dict)."""
    run_dir = Path(run_dir)
    configure_backends(cfg, dist)
    train_sets, val_sets = resolve_data(cfg)      # fail fast on bad shards, before building anything heavy
    raw, model = build(cfg, dist)
    optimizer = torch.optim.AdamW(param_groups(raw, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas, eps=cfg.optim.eps)
    steps_per_epoch, total = cfg.steps_per_epoch(dist.world_size), cfg.total_steps(dist.world_size)
    ema = make_ema(raw) if cfg.optim.ema_decay > 0 else None
    step, best = 0, float("inf")
    if resume:
        ck = load_checkpoint(run_dir / "last.pt", map_location=dist.device,
                             require=("model", "optimizer", "step", "rng", "config", "world_size"))
        if int(ck["world_size"]) != dist.world_size:  # the step <-> sample mapping and the data split would change
            raise InputError(f"{run_dir / 'last.pt'}: trained on {ck['world_size']} processes; resume it on the "
                             f"same number (this run has {dist.world_size})")
        raw.load_state_dict(ck.get("model_train", ck["model"]))
        if ema is not None:
            ema.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        step, best = int(ck["step"]), float(ck["best"])
        set_rng_state(ck["rng"])
        log.info("resumed %s at step %d (epoch %d)", run_dir, step, step // steps_per_epoch)
    logger = bar = None
    if dist.primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        logger = RunLogger(run_dir)
        logger.truncate_after(step)
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)
    log.info("training to step %d (%d per epoch, batch %d x %d ranks) on %s", total, steps_per_epoch,
             cfg.batch_size, dist.world_size, dist.device)

    t_start = t_log = time.perf_counter()
    acc, n_acc, t_wait = {}, 0, 0.0
    while step < total:
        epoch = step // steps_per_epoch
        end = segment_end(step, cfg, steps_per_epoch, total)
        batches = train_batches(cfg, dist, train_sets, epoch, step, end - step)
        while step < end:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"the training stream ended at step {step} (expected {end})")
            batch = to_device(batch, dist.device, cfg.channels_last)
            t_wait += time.perf_counter() - t0
            terms = train_step(model, optimizer, batch, cfg, get_lr(step, cfg, dist.world_size))
            acc = {k: acc.get(k, 0) + v for k, v in terms.items()}
            n_acc, step = n_acc + 1, step + 1
            if ema is not None:
                update_ema(ema, raw, ema_decay_at(step, cfg.optim.ema_decay))
            if step % cfg.log_every_steps == 0 or step == end:
                dt = time.perf_counter() - t_log
                row = {f"train/{k}": v for k, v in _reduce_mean({k: v / n_acc for k, v in acc.items()}, dist).items()}
                if not math.isfinite(row["train/total"]):
                    raise FloatingPointError(f"non-finite loss at step {step}: {row}")
                row.update({"lr": get_lr(step - 1, cfg, dist.world_size), "epoch": step / steps_per_epoch,
                            "samples_per_s": n_acc * cfg.batch_size * dist.world_size / dt,
                            "data_wait_frac": t_wait / dt})
                if logger:
                    logger.log(step, row)
                if bar:
                    bar.set_postfix(loss=f"{row['train/total']:.3f}", lr=f"{row['lr']:.2e}",
                                    img_s=f"{row['samples_per_s']:.1f}", wait=f"{row['data_wait_frac']:.2f}")
                acc, n_acc, t_wait, t_log = {}, 0, 0.0, time.perf_counter()
            if bar:
                bar.update(1)
        del batches  # ends this segment's loader workers

        val = float("nan")
        n_epochs = math.ceil(step / steps_per_epoch)
        if val_sets and cfg.val_every_epochs and (step % steps_per_epoch == 0 or step == total) \
                and (n_epochs % cfg.val_every_epochs == 0 or step == total):
            try:
                val = validate(ema if ema is not None else raw, cfg, dist, val_sets)
            except NonFinitePrediction as e:  # a diverged model: stop, do not keep training on a NaN "best"
                raise FloatingPointError(f"step {step}: validation: {e}") from None
            if logger:
                logger.log(step, {"val/mpjpe_mm": val})
            log.info("step %d: validation MPJPE %.1f mm (best before: %.1f)", step, val, best)
        improved = math.isfinite(val) and val < best
        best = val if improved else best
        if dist.primary:
            state = checkpoint_state(raw, optimizer, cfg, dist, step, best, ema)
            save_checkpoint(run_dir / "last.pt", state)
            if improved:
                save_checkpoint(run_dir / "best.pt", state)
            logger.flush()
        if dist.world_size > 1:
            tdist.barrier()  # every rank sees the checkpoint before the next segment starts

    summary = {"steps": step, "epochs": round(step / steps_per_epoch, 3),
               "wall_time_s": round(time.perf_counter() - t_start, 1),
               "best_val_mpjpe_mm": round(best, 2) if math.isfinite(best) else "n/a",
               "last_checkpoint": str(run_dir / "last.pt")}
    if bar:
        bar.close()
    if logger:
        logger.close()
        png = plot_loss_curve(logger.rows, run_dir / "loss_curve.png")
        summary["loss_curve"] = str(png) if png else "n/a"
        last = [r for r in logger.rows if "train/total" in r]
        if last:
            summary["final_train_loss"] = round(last[-1]["train/total"], 4)
    return raw, summary
