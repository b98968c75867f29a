"""Run logging: metrics.csv (always), TensorBoard scalars (when the ``tensorboard`` package is installed), and a
loss-curve PNG at the end. Only the primary rank creates a :class:`RunLogger`; other ranks get ``None`` and log
nothing (rank gating by a helper, never by patching ``print``).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import logging
import os
from pathlib import Path

from pipeline.errors import InputError
from pipeline.fsutil import atomic_path

__all__ = ["RunLogger", "is_primary", "plot_loss_curve"]

log = logging.getLogger(__name__)


def is_primary() -> bool:
    """True on global rank 0 (and in a single-process run)."""
    return int(os.environ.get("RANK", "0")) == 0


class RunLogger:
    """Append rows to RUN/metrics.csv (columns grow as new keys appear) and mirror them to TensorBoard."""

    def __init__(self, run_dir, use_tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.csv"
        self.rows: list[dict] = self._read_existing()
        self.tb = None
        if use_tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tb"))
        elif use_tensorboard:
            log.info("tensorboard is not installed (pip install tensorboard); logging to metrics.csv only")

    def _read_existing(self) -> list[dict]:
        """Rows of an earlier metrics.csv (a resumed run appends to it). A log is not worth stopping a run for:
        rows that do not parse (a torn last line, hand edits, binary junk) are dropped with one warning."""
        if not self.path.is_file():
            return []
        rows, bad = [], 0
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise InputError(f"{self.path}: cannot read the run's metrics.csv ({e.strerror or e})") from None
        if text and not text.endswith("\n"):             # cut short (flush writes whole files, so not by us)
            text, bad = text[:text.rfind("\n") + 1], 1
        try:
            for r in csv.DictReader(io.StringIO(text, newline="")):
                try:
                    row = {k: _num(v) for k, v in r.items() if v not in ("", None)}
                    if None in row or not isinstance(row.get("step"), int):
                        raise ValueError("no integer step")
                    rows.append(row)
                except (ValueError, TypeError):
                    bad += 1
        except csv.Error as e:
            log.warning("%s: unreadable after %d rows (%s); keeping those", self.path, len(rows), e)
        if bad:
            log.warning("%s: dropped %d damaged row(s); kept %d", self.path, bad, len(rows))
        return rows

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a run resumed from an earlier checkpoint logs them again)."""
        self.rows = [r for r in self.rows if r["step"] <= step]

    def log(self, step: int, values: dict) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self.rows.append(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)

    def flush(self) -> None:
        """Rewrite metrics.csv atomically (small: one row per log interval)."""
        keys = ["step"] + sorted({k for r in self.rows for k in r} - {"step"})
        with atomic_path(self.path, ".csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()


def _num(v: str):
    try:
        return int(v)
    except ValueError:
        return float(v)


def plot_loss_curve(rows: list[dict], path, keys=("train/total", "train/uv", "train/d", "train/scale"),
                    val_key: str = "val/mpjpe_mm") -> Path | None:
    """Loss terms against step (log y), validation MPJPE on a second axis when present; None without data."""
    pts = {k: [(r["step"], r[k]) for r in rows if k in r] for k in (*keys, val_key)}
    if not any(pts[k] for k in keys):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for k in keys:
        if pts[k]:
            ax.plot(*zip(*pts[k]), label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for k in keys for _, v in pts[k]):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    if pts[val_key]:
        ax2 = ax.twinx()
        ax2.plot(*zip(*pts[val_key]), "ko--", label=val_key)
        ax2.set_ylabel("val MPJPE (mm)")
        l2, lb2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lb2
    ax.legend(lines, labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
