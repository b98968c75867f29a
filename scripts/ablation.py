#!/usr/bin/env python
"""The paper's Table 2 ablation (no PE, no PR -> PE -> PE + PR), reproduced on a synthetic perspective benchmark.

One command runs it end to end, with the toolkit's own console scripts, and resumes where it stopped:

1. ``perspose-build synth``: train / val / test sets of people anywhere in frame, horizontal FOV 30-120 deg;
2. ``perspose-build shards`` twice from the same manifests: with PR, and ``--no-pr`` (R = I, off-centre
   principal point); both verified;
3. ``perspose-train`` per arm and seed, identical except for the arm: ``baseline`` (no-PR shards, PE off),
   ``pe`` (no-PR shards, PE on), ``pe_pr`` (PR shards, PE on); best checkpoint chosen on val, never on test;
4. ``perspose-eval`` of each best checkpoint on the arm's test shards (flip test; Rᵀ back to the original camera, so
   the three arms are compared in the same frame, on the samples all of them have);
5. ``OUT/ablation.md`` and ``results.json``: depth error, PA-MPJPE, MPJPE per arm (mean +- std over seeds), the
   same per PR-angle bin; ``arms.png`` (the arms compared) and ``error_vs_pr_angle.png``.

Defaults (docs/ablation.md has why): the demo preset's light HRNet on 64 px crops, 50000 training images; a
shared start of 10000 steps of 64 (the model without PE on the PR and no-PR crops mixed, on both cores), then per
arm and seed 3500 steps of 64 from it at lr 1e-3, two runs at a time on 2 CPU cores (``--jobs``); about 80 minutes
on this project's 2-core machine. ``--pretrain-steps 0`` trains every arm from scratch; ``--full`` is the paper's
model (W48, 256 px) for a CUDA machine. Usage:
    .venv/bin/python scripts/ablation.py --out runs/ablation [--seeds 0 1] [--steps 3500] [--jobs 2] [--full]
"""
from __future__ import annotations

import argparse
import json
import os
import contextlib
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.fsutil import atomic_path, atomic_write_text

ARMS = {  # name: (shard variant, PE on, label)
    "baseline": ("nopr", False, "no PE, no PR"),
    "pe": ("nopr", True, "PE"),
    "pe_pr": ("pr", True, "PE + PR"),
}
COLORS = {"baseline": "#999999", "pe": "#4c78a8", "pe_pr": "#f58518"}  # the same arm, the same colour, in every plot
METRICS = (("depth_err_mm", "depth err"), ("pa_mpjpe_mm", "PA-MPJPE"), ("mpjpe_mm", "MPJPE"))
PAPER = {"baseline": (57.3, None, 80.1), "pe": (53.7, None, 76.6), "pe_pr": (51.0, None, 71.9)}  # Table 2, 3DHP


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run(cmd: list[str], log_file: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"command failed (exit {r.returncode}); see {log_file}")


def make_data(args, out: Path, log: Path) -> None:
    sizes = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    for i, (split, n) in enumerate(sizes.items()):
        d = out / "synth" / split
        if not (d / "manifest.parquet").is_file():
            run([bin_path("perspose-build"), "synth", "--out", str(d), "--split", split, "-n", str(n),
                 "--seed", str(args.data_seed + i), "--fov-range", *map(str, args.fov_range), "--no-progress",
                 *args.synth_args.split()], log)
        for variant in ("pr", "nopr"):
            s = out / "shards" / variant / split
            if not (s / "build.json").is_file():
                run([bin_path("perspose-build"), "shards", str(d / "manifest.parquet"), "--out", str(s),
                     "--crop", str(args.crop), "--shard-size", "500", "--no-progress",
                     *(["--no-pr"] if variant == "nopr" else [])], log)
                run([bin_path("perspose-build"), "verify", str(s)], log)


def _cpu_sets(args, jobs: int) -> list[str]:
    """CPU: the cores shared out between the parallel runs, decoding in the training process."""
    if args.full:
        return []
    return ["data.num_workers=0", f"threads={max(1, (os.cpu_count() or 1) // jobs)}"]


def _schedule(args, steps: int, epochs: int, seed: int, procs: int = 1) -> list[str]:
    """Steps of ``args.batch`` samples (global: ``procs`` processes of batch / procs), lr x0.4 each quarter."""
    steps_per_epoch = max(1, steps // epochs)
    return [f"seed={seed}", f"batch_size={args.batch // procs}", f"epoch_samples={steps_per_epoch * args.batch}",
            f"epochs={epochs}", f"max_steps={steps}", f"optim.decay_every_epochs={epochs / 4:g}",
            f"checkpoint_every_steps={steps_per_epoch}", "data.val_max_samples=0"]


def _model_sets(args) -> list[str]:
    return [f"model.crop_size={args.crop}"] + ([f"model.width={args.width}"] if args.width and not args.full else [])


@contextlib.contextmanager
def seconds_clock(path: Path, every: float = 10.0):
    """Adds this block's wall time to the seconds in ``path`` (JSON), rewritten every ``every`` s and at the end,
    so that a run killed and resumed (even by a machine restart) reports what all its invocations cost, to within
    ``every``. Yields a function giving the total so far."""
    start = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
    t0, stop = time.time(), threading.Event()

    def total() -> float:
        return start + time.time() - t0

    def tick() -> None:
        while not stop.wait(every):
            atomic_write_text(path, json.dumps({"seconds": total()}))

    path.parent.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield total
    finally:
        stop.set()
        thread.join()
        atomic_write_text(path, json.dumps({"seconds": total()}))


def _train(cmd_base: list[str], run_dir: Path, data: list[str], sets: list[str], log: Path) -> None:
    """One perspose-train run, resumed where it stopped; ``train.done`` records its seconds over all invocations."""
    done = run_dir / "train.done"
    if done.is_file():
        return
    cmd = cmd_base + ["--no-progress", "--out", str(run_dir)]
    cmd += ["--resume"] if (run_dir / "last.pt").is_file() else data
    with seconds_clock(run_dir.with_name(run_dir.name + ".seconds.json")) as seconds:
        run(cmd + sum((["--set", s] for s in sets), []), log)
    atomic_write_text(done, json.dumps({"train_seconds": seconds()}))


def pretrain(args, out: Path) -> Path | None:
    """The shared start of every arm (--pretrain-steps > 0): the preset's model WITHOUT PE trained on the PR and
    the no-PR training crops mixed 1:1, on all cores (torchrun). Like the paper's pretrained backbone, it favours
    no arm: each arm then trains on its own crops, and the PE arms add the PE conv (N(0, 0.01)) to it."""
    if args.pretrain_steps <= 0:
        return None
    run_dir = out / "runs" / "pretrain"
    preset = "paper" if args.full and args.preset == "demo" else args.preset
    procs = 1 if args.full else max(1, args.jobs)
    sets = ["model.use_pe=false", *_schedule(args, args.pretrain_steps, args.pretrain_epochs, 1000, procs)]
    sets += _cpu_sets(args, procs) + _model_sets(args) + args.overrides
    base = [bin_path("torchrun"), "--standalone", f"--nproc_per_node={procs}", bin_path("perspose-train"),
            "--config", preset] if procs > 1 else [bin_path("perspose-train"), "--config", preset]
    data = ["--train", str(out / "shards" / "pr" / "train"), "--train", str(out / "shards" / "nopr" / "train"),
            "--val", str(out / "shards" / "pr" / "val")]
    _train(base, run_dir, data, sets, out / "runs" / "pretrain.log")
    return run_dir / "last.pt"


def train_and_eval(args, out: Path, arm: str, seed: int, init: Path | None = None) -> Path:
    variant, use_pe, _ = ARMS[arm]
    run_dir = out / "runs" / f"{arm}_seed{seed}"
    log = out / "runs" / f"{arm}_seed{seed}.log"      # one log per run: runs go in parallel (--jobs)
    sets = [f"model.use_pe={str(use_pe).lower()}", *_schedule(args, args.steps, args.epochs, seed)]
    sets += _model_sets(args) + _cpu_sets(args, args.jobs) + args.overrides + (args.finetune_overrides if init else [])
    preset = "paper" if args.full and args.preset == "demo" else args.preset
    data = ["--train", str(out / "shards" / variant / "train"), "--val", str(out / "shards" / variant / "val")]
    if init is not None:
        data += ["--init", str(init)]
    _train([bin_path("perspose-train"), "--config", preset], run_dir, data, sets, log)
    ev = run_dir / "eval"
    if not (ev / "predictions.parquet").is_file():
        run([bin_path("perspose-eval"), "--ckpt", str(run_dir / "best.pt"), "--shards",
             str(out / "shards" / variant / "test"), "--out", str(ev), "--workers", "0", "--no-progress"], log)
    return ev / "predictions.parquet"


def load_predictions(paths: dict) -> tuple[dict, int]:
    """({(arm, seed): {sample_id: row with pr_angle_deg and the metrics}}, n): every run restricted to the n
    samples all runs have (a PR angle over the builder's limit rejects a sample in the PR build only)."""
    tables = {k: pq.read_table(p, columns=["sample_id", "pr_angle_deg", *(m for m, _ in METRICS)]).to_pylist()
              for k, p in paths.items()}
    common = set.intersection(*({r["sample_id"] for r in t} for t in tables.values()))
    return {k: {r["sample_id"]: r for r in t if r["sample_id"] in common} for k, t in tables.items()}, len(common)


def reference_errors(path: Path, ids: set) -> dict:
    """What a model that learned nothing from the image scores on the same samples: the test set's mean
    root-relative pose (an oracle constant, in the original camera) for MPJPE / PA-MPJPE, and relative depth 0
    for the depth error. Arms near these numbers have not yet learned much from the pixels."""
    from trainer.metrics import pa_mpjpe
    rows = [r for r in pq.read_table(path, columns=["sample_id", "gt_rel"]).to_pylist() if r["sample_id"] in ids]
    gt = np.array([np.asarray(r["gt_rel"], np.float64).reshape(-1, 3) for r in rows]) * 1000.0
    mean = np.broadcast_to(gt.mean(axis=0), gt.shape)
    return {"mpjpe_mm": float(np.linalg.norm(mean - gt, axis=-1).mean()),
            "pa_mpjpe_mm": float(pa_mpjpe(mean, gt).mean()), "depth_err_mm": float(np.abs(gt[..., 2]).mean())}


def summarize(preds: dict, seeds: list[int], bin_deg: float = 10.0) -> dict:
    res = {}
    for arm in ARMS:
        runs = [preds[(arm, s)] for s in seeds if (arm, s) in preds]
        if not runs:
            continue
        per_seed = {m: [float(np.mean([r[m] for r in run.values()])) for run in runs] for m, _ in METRICS}
        ids = sorted(runs[0])
        angle = np.array([runs[0][i]["pr_angle_deg"] for i in ids])
        bins = np.floor(angle / bin_deg) * bin_deg
        by_bin = {}
        for b in np.unique(bins):
            sel = [i for i, bb in zip(ids, bins) if bb == b]
            vals = [float(np.mean([run[i]["mpjpe_mm"] for i in sel])) for run in runs]
            by_bin[f"{b:g}-{b + bin_deg:g}"] = {"lo": float(b), "n": len(sel), "mpjpe_mean": float(np.mean(vals)),
                                                "mpjpe_std": float(np.std(vals))}
        res[arm] = {"seeds": len(runs), "per_seed": per_seed,
                    "mean": {m: float(np.mean(v)) for m, v in per_seed.items()},
                    "std": {m: float(np.std(v)) for m, v in per_seed.items()}, "pr_bins": by_bin}
    return res


def markdown(res: dict, n: int, args, compute: dict, ref: dict) -> str:
    lines = [f"Synthetic perspective benchmark: {n} test samples common to every run, seeds {args.seeds}, "
             f"{'W48' if args.full else f'width {args.width}' if args.width else f'the {args.preset} model'}, {args.crop} px crops, {args.steps} steps of batch "
             f"{args.batch}. Errors in mm, mean ± std over seeds (std over seeds, population).", "",
             "| arm | " + " | ".join(h for _, h in METRICS) + " | MPJPE / constant | paper (3DHP) depth / MPJPE |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for arm, r in res.items():
        p = PAPER[arm]
        cells = [f"{r['mean'][m]:.1f} ± {r['std'][m]:.1f}" for m, _ in METRICS]
        ratio = r["mean"]["mpjpe_mm"] / ref["mpjpe_mm"]
        lines.append(f"| {ARMS[arm][2]} | " + " | ".join(cells) + f" | x{ratio:.2f} | {p[0]} / {p[2]} |")
    lines.append("| *reference: test-set mean pose, zero relative depth* | "
                 + " | ".join(f"{ref[m]:.1f}" for m, _ in METRICS) + " | x1.00 | |")
    lines += ["", "MPJPE (mm) per PR-angle bin (angle between the optical axis and the ray to the box centre):", "",
              "| PR angle (deg) | N | " + " | ".join(ARMS[a][2] for a in res) + " |",
              "|---|---|" + "---|" * len(res)]
    first = next(iter(res.values()))["pr_bins"]
    for b, info in first.items():
        cells = [f"{res[a]['pr_bins'][b]['mpjpe_mean']:.1f} ± {res[a]['pr_bins'][b]['mpjpe_std']:.1f}" for a in res]
        lines.append(f"| {b} | {info['n']} | " + " | ".join(cells) + " |")
    pre = (f"a shared start of {args.pretrain_steps} steps (no PE, PR and no-PR crops mixed; "
           f"{compute.get('pretrain_minutes', 0):.1f} min on all cores), then " if args.pretrain_steps > 0 else "")
    lines += ["", f"Compute: {compute['device']}; {pre}training {compute['train_minutes']:.1f} min per run on average "
              f"({compute['total_minutes']:.0f} min wall time over the script's completed invocations)."]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plots(res: dict, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    for k, (m, title) in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), k + 1)
        names = [ARMS[a][2] for a in res]
        ax.bar(names, [res[a]["mean"][m] for a in res], yerr=[res[a]["std"][m] for a in res], capsize=4,
               color=[COLORS[a] for a in res])
        ax.set_title(f"{title} (mm)")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    _save(fig, out / "arms.png")
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for a, r in res.items():
        bins = sorted(r["pr_bins"].values(), key=lambda b: b["lo"])
        x = [b["lo"] + 5 for b in bins]
        ax.errorbar(x, [b["mpjpe_mean"] for b in bins], yerr=[b["mpjpe_std"] for b in bins], marker="o",
                    capsize=3, label=ARMS[a][2], color=COLORS[a])
    ax.set_xlabel("PR angle (deg, bin centre)")
    ax.set_ylabel("MPJPE (mm)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out / "error_vs_pr_angle.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (the data stay the same)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--data-seed", type=int, default=100)
    ap.add_argument("--fov-range", type=float, nargs=2, default=(30.0, 120.0))
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--width", type=int, default=0, help="HRNet width of the small model (0: the preset's)")
    ap.add_argument("--steps", type=int, default=3500, help="optimizer steps per run")
    ap.add_argument("--epochs", type=int, default=4, help="the steps are split into this many epochs (lr x0.4 "
                    "after each quarter)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--preset", default="demo", help="trainer preset name or YAML file the arms start from")
    ap.add_argument("--full", action="store_true", help="the paper preset (W48); pair with --crop 256 --batch 96 on CUDA")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once (CPU: the cores are split between them)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="trainer override for every arm (repeatable)")
    ap.add_argument("--pretrain-steps", type=int, default=10000,
                    help="steps of the shared start (no PE, PR and no-PR crops mixed; 0: every arm from scratch)")
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--finetune-set", dest="finetune_overrides", action="append", default=None, metavar="KEY=VALUE",
                    help="trainer override for the arms when they start from the shared start (repeatable; "
                         "default: optim.lr=1e-3)")
    ap.add_argument("--synth-args", default="--min-box-inside 1", help="extra perspose-build synth options, e.g. '--min-box-inside 1'")
    args = ap.parse_args()
    if args.finetune_overrides is None:   # half the preset's peak: measured better than 5e-4 and 2.5e-4 (docs)
        args.finetune_overrides = ["optim.lr=1e-3"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    # wall time accumulates over invocations, so a resumed or re-summarised run still reports what it cost
    with seconds_clock(out / "elapsed.json") as elapsed_seconds:
        make_data(args, out, log)
        init = pretrain(args, out)
        keys = [(a, s) for s in args.seeds for a in args.arms]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:   # each run is a subprocess; threads only wait
            paths = dict(zip(keys, pool.map(lambda k: train_and_eval(args, out, *k, init=init), keys)))
    preds, n = load_predictions(paths)
    res = summarize(preds, args.seeds)
    ref = reference_errors(next(iter(paths.values())), set(next(iter(preds.values()))))
    secs = [json.loads((out / "runs" / f"{a}_seed{s}" / "train.done").read_text())["train_seconds"]
            for a, s in paths]
    import torch
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU only, {torch.get_num_threads()} threads")
    elapsed = elapsed_seconds()
    pre = out / "runs" / "pretrain" / "train.done"
    pre_min = json.loads(pre.read_text())["train_seconds"] / 60 if init is not None and pre.is_file() else 0.0
    compute = {"device": device, "train_minutes": float(np.mean(secs)) / 60, "total_minutes": elapsed / 60,
               "pretrain_minutes": pre_min}
    atomic_write_text(out / "results.json", json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in vars(args).items()},
                                                  "n_test_common": n, "compute": compute, "arms": res,
                                                  "reference": ref}, indent=1))
    md = markdown(res, n, args, compute, ref)
    atomic_write_text(out / "ablation.md", md)
    plots(res, out)
    print(md)
    print(f"wrote {out / 'ablation.md'}, results.json, arms.png, error_vs_pr_angle.png")


if __name__ == "__main__":
    main()
