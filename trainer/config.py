"""The training configuration: frozen dataclasses whose defaults are the paper's recipe (docs/design.md §8, §11).

Sections: ``model`` (:class:`trainer.model.ModelConfig`), ``augment`` (:class:`trainer.augment.AugmentConfig`),
``data`` (shard sources and loader options, below), ``optim``, ``loss`` (:class:`trainer.losses.LossConfig`), and
top-level run options. A YAML file (``trainer/configs/paper.yaml``, ``demo.yaml``) overrides the defaults, a
recipe / ``--train`` / ``--val`` fill ``data``, and ``--set a.b=v`` overrides come last. Unknown keys and wrong
types are :class:`pipeline.errors.InputError` naming the key (the CLI exits 2).

Units and counts: ``batch_size`` is per process (per GPU); ``epoch_samples`` is global (all ranks together), so
an epoch has ``epoch_samples // (batch_size * world_size)`` optimizer steps; the learning rate is a function of
the fractional epoch ``samples_seen / epoch_samples`` (:func:`trainer.train.get_lr`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pipeline.errors import InputError
from trainer.augment import AugmentConfig
from trainer.configtools import apply_overrides, config_to_dict, dump_yaml, from_dict, read_yaml
from trainer.losses import LossConfig
from trainer.model import ModelConfig

__all__ = ["SourceConfig", "DataConfig", "OptimConfig", "TrainConfig", "load_config", "config_from_dict",
           "config_to_dict", "dump_yaml", "preset_path", "LossConfig", "ModelConfig", "AugmentConfig"]


@dataclass(frozen=True)
class SourceConfig:
    """One training dataset: shard directories / .tar files / globs, mixed by ``ratio`` (normalised over sources)."""
    name: str
    paths: tuple[str, ...]
    ratio: float = 1.0

    def __post_init__(self):
        if not self.paths:
            raise ValueError(f"source {self.name!r} has no paths")
        if not self.ratio > 0:
            raise ValueError(f"source {self.name!r}: ratio must be > 0, got {self.ratio}")


@dataclass(frozen=True)
class DataConfig:
    train: tuple[SourceConfig, ...] = ()   # filled by --recipe or --train
    val: tuple[str, ...] = ()              # validation shards (a val split; never test sets), --val
    num_workers: int = 4                   # loader processes per rank (the reference uses 4)
    shuffle_buffer: int = 1000             # samples in the streaming shuffle buffer
    val_max_samples: int = 2000            # quick validation MPJPE on the first N val samples (0: all)
    val_batch_size: int = 96

    def __post_init__(self):
        if self.num_workers < 0 or self.shuffle_buffer < 0 or self.val_max_samples < 0 or self.val_batch_size <= 0:
            raise ValueError("num_workers, shuffle_buffer and val_max_samples must be >= 0, val_batch_size > 0")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-4                        # AdamW
    weight_decay: float = 5e-4              # on weights only: no decay for 1-D parameters (norms) and biases
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 1.0              # lr * (e / warmup_epochs + warmup_floor) while e < warmup_epochs
    warmup_floor: float = 0.01
    decay_every_epochs: float = 6.0         # then lr * decay_factor ** floor((e - warmup_epochs) / decay_every_epochs)
    decay_factor: float = 0.75
    schedule: Literal["step", "cosine"] = "step"   # cosine: after the warm-up, half a cosine from lr down to
    min_lr_ratio: float = 0.0               # lr * min_lr_ratio at the last step (decay_* are then unused)
    ema_decay: float = 0.0                  # > 0: keep an exponential moving average of the weights (decay per
                                            # step); validation and the checkpoints' ``model`` use it
    grad_clip: float = 100.0                # global L2 norm of all gradients; 0 disables

    def __post_init__(self):
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.decay_every_epochs <= 0:
            raise ValueError("lr and decay_every_epochs must be > 0; weight_decay and warmup_epochs >= 0")
        if not 0 < self.decay_factor <= 1 or self.grad_clip < 0:
            raise ValueError("decay_factor must be in (0, 1] and grad_clip >= 0")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("min_lr_ratio must be in [0, 1] and ema_decay in [0, 1)")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', not {self.schedule!r}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 96                    # per process
    epochs: int = 70
    epoch_samples: int = 300_000            # global samples per epoch (the reference's MixDataset length)
    max_steps: int = 0                      # stop after this many optimizer steps in total (0: epochs decide)
    seed: int = 7
    precision: Literal["auto", "bf16", "fp32", "fast"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU;
                                            # fast: bf16 also on a CPU with AMX or AVX512-BF16 (1.2x on the demo)
    channels_last: bool = True              # NHWC model and batches; on CPU too (oneDNN: 1.1-1.3x measured)
    compile: bool = False                   # torch.compile the model (CUDA)
    sync_bn: bool = True                    # SyncBatchNorm under multi-GPU DDP (never on CPU: it raises there)
    deterministic: bool = False             # torch.use_deterministic_algorithms (tests; slower on CUDA)
    threads: int = 0                        # CPU: torch threads of the training process; 0 = the cores this
                                            # process may use minus the loader workers (at least 1): a loader
                                            # worker competing with torch's threads stalls every parallel op
    pretrained: str = ""                    # pose_hrnet_w48_256x192.pth for the backbone ("" = from scratch)
    init: str = ""                          # a perspose checkpoint for the whole model (perspose-train --init)
    checkpoint_every_steps: int = 2000      # also at every epoch end; the data stream restarts at these points
    log_every_steps: int = 20
    val_every_epochs: int = 1               # 0: no validation

    def __post_init__(self):
        if self.batch_size <= 0 or self.epochs <= 0 or self.epoch_samples <= 0:
            raise ValueError("batch_size, epochs and epoch_samples must be positive")
        if self.max_steps < 0 or self.checkpoint_every_steps <= 0 or self.log_every_steps <= 0:
            raise ValueError("max_steps >= 0, checkpoint_every_steps and log_every_steps > 0")
        if self.val_every_epochs < 0 or self.threads < 0:
            raise ValueError("val_every_epochs and threads must be >= 0")

    def steps_per_epoch(self, world_size: int = 1) -> int:
        n = self.epoch_samples // (self.batch_size * world_size)
        if n < 1:
            raise InputError(f"epoch_samples {self.epoch_samples} is smaller than one global batch "
                             f"({self.batch_size} x {world_size} ranks)")
        return n

    def total_steps(self, world_size: int = 1) -> int:
        n = self.epochs * self.steps_per_epoch(world_size)
        return min(n, self.max_steps) if self.max_steps else n


def preset_path(name_or_path) -> Path:
    """A config file path, or the name of a packaged preset ('paper', 'demo')."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    packaged = Path(str(resources.files("trainer") / "configs" / f"{name_or_path}.yaml"))
    if packaged.is_file():
        return packaged
    raise InputError(f"{name_or_path}: no such config file or preset (presets: paper, demo, demo_hps)")


def config_from_dict(data: dict) -> TrainConfig:
    return from_dict(TrainConfig, data)


def load_config(config=None, overrides=(), data_section: dict | None = None,
                model_section: dict | None = None) -> TrainConfig:
    """defaults <- YAML file ``config`` <- ``data_section`` (recipe / --train / --val) and ``model_section`` (an
    --init checkpoint's, replacing the file's) <- ``overrides`` ('a.b=v')."""
    data = read_yaml(preset_path(config)) if config else {}
    if model_section is not None:
        data = {**data, "model": dict(model_section)}
    if data_section:
        section = data.get("data", {})
        if not isinstance(section, dict):
            raise InputError(f"{preset_path(config)}: config key 'data': expected a mapping of DataConfig fields, "
                             f"got {type(section).__name__}")
        data = dict(data)
        data["data"] = {**section, **data_section}
    return config_from_dict(apply_overrides(data, overrides))

