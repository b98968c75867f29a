"""An exponential moving average of the weights (timm's ModelEmaV2, in two functions).

Short runs end while the weights still move a lot from step to step; the average over the last ~1/(1 - decay)
steps is a better model than the last iterate (measured on the demo: docs/learning.md). Every floating-point
entry of the state dict is averaged, BatchNorm running statistics included, so the averaged weights and their
statistics belong together; integer buffers (``num_batches_tracked``) are copied.
"""
from __future__ import annotations

import copy

import torch

__all__ = ["make_ema", "ema_decay_at", "update_ema"]


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` (same device and memory format) to hold the average."""
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used after optimizer step ``step`` (1-based count of steps done): ramped in as
    (1 + step) / (10 + step), so the first steps are not dominated by the random initialisation."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, entry by entry of the state dicts."""
    src = model.state_dict()
    for name, e in ema.state_dict().items():
        v = src[name]
        if e.is_floating_point():
            e.lerp_(v.to(e.dtype), 1.0 - decay)
        else:
            e.copy_(v)
