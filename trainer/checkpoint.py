"""Checkpoints: atomic, unwrapped (no DDP ``module.`` / torch.compile ``_orig_mod.`` prefixes), loadable with
``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain python values only:
``model`` (state dict of the bare model: the weights to evaluate, i.e. the moving average when the run keeps one,
whose trained weights are then under ``model_train``), ``optimizer`` (its state dict), ``step`` (optimizer steps done; the
learning rate is a pure function of it, so there is no scheduler object to save), ``epoch``, ``samples_seen``
(global), ``data`` (the data-stream position the loader restarts from), ``rng`` (torch, CUDA, numpy and python
generator states as tensors / lists), ``best`` (best validation MPJPE so far, mm), ``config`` (the resolved config
as a nested dict), ``versions``.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.fsutil import atomic_path

from .model import unwrap_model

__all__ = ["unwrap_model", "model_state_dict", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint"]

log = logging.getLogger(__name__)


def model_state_dict(model: torch.nn.Module) -> dict:
    """State dict of the unwrapped model, tensors detached and on the CPU."""
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def rng_state() -> dict:
    """Every global generator the training step may touch, in weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [int(version), [int(x) for x in internal], gauss_next],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(path, state: dict) -> Path:
    """torch.save to a temporary file in the same directory, fsync, os.replace: never half a checkpoint."""
    path = Path(path)
    bad = [k for k in state.get("model", {}) if k.startswith(("module.", "_orig_mod."))]
    if bad:
        raise ValueError(f"checkpoint model state has wrapper prefixes (e.g. {bad[0]!r}); pass the unwrapped model")
    with atomic_path(path, ".pt") as tmp:
        torch.save(state, tmp)
    log.debug("saved checkpoint %s (step %s)", path, state.get("step"))
    return path


def load_checkpoint(path, map_location="cpu", require: tuple[str, ...] = ()) -> dict:
    """Load with weights_only=True; InputError naming the file when it is missing, unreadable, or lacks one of the
    ``require`` keys (``config`` must hold a ``model`` section)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip failure is a bad file for the user
        raise InputError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    missing = [k for k in require if k not in ck] if isinstance(ck, dict) else list(require)
    if not missing and "config" in require:
        c = ck["config"]
        if not (isinstance(c, dict) and isinstance(c.get("model"), dict)):
            missing = ["config.model"]
    if missing:
        raise InputError(f"{path}: not a perspose checkpoint (missing {missing[0]!r}; needs {', '.join(require)})")
    return ck
