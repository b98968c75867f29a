"""Training on generated shards: the loss goes down, every parameter learns, resume is exact, bad input exits 2."""
from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner

from trainer.checkpoint import load_checkpoint
from trainer.config import config_from_dict
from trainer.data import first_batch
from trainer.model import ModelConfig
from trainer.train import Dist, build, fit, loader_config, param_groups, resolve_data, to_device, train_step
from trainer.train_cli import main as train_main
from train_shards import make_shards

TINY = {"width": 4, "crop_size": 64, "global_dim": 32, "head_planes": [2, 4, 8, 16], "stem_channels": 8,
        "layer1_planes": 4, "skeletons": ["smpl24", "h36m17", "coco17"]}
CPU = Dist(0, 1, 0, torch.device("cpu"))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared; more threads only oversubscribe it
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return {"train": make_shards(root / "train", n=24, per_shard=8),
            "train2d": make_shards(root / "train2d", n=8, skeleton="coco17", seed=3),
            "val": make_shards(root / "val", n=8, split="val", seed=1, per_shard=4)}


def tiny_config(shards, **top):
    d = {"model": TINY, "batch_size": 4, "epoch_samples": 20, "epochs": 2, "checkpoint_every_steps": 3,
         "log_every_steps": 2, "deterministic": True, "seed": 3, "optim": {"lr": 1e-3, "warmup_epochs": 0.4},
         "data": {"train": [{"name": "gen", "paths": [str(shards["train"])], "ratio": 0.75},
                            {"name": "gen2d", "paths": [str(shards["train2d"])], "ratio": 0.25}],
                  "val": [str(shards["val"])], "num_workers": 0, "shuffle_buffer": 8, "val_batch_size": 4}}
    d.update(top)
    return config_from_dict(d)


def test_fixed_batch_overfits_and_every_parameter_learns(shards):
    # PyTorch's init, as the demo: with the reference N(0, 0.001) init a width-4 HRNet needs far more than 50
    # steps to start moving uv (113.7 -> 63.4 measured), which made this a test of the init, not of learning
    cfg = tiny_config(shards, augment={"enabled": False}, model={**TINY, "backbone_init": "torch"})
    torch.manual_seed(0)
    raw, model = build(cfg, CPU)
    opt = torch.optim.AdamW(param_groups(raw, cfg.optim.weight_decay), lr=cfg.optim.lr)
    _, val = resolve_data(cfg)
    batch = to_device(first_batch(val[0], loader_config(cfg, CPU, 0, None), 8), CPU.device, False)
    first = train_step(model, opt, batch, cfg, 2e-3)
    no_grad = [n for n, p in raw.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"no (finite) gradient for {no_grad[:5]}"
    zero = [n for n, p in raw.named_parameters() if float(p.grad.abs().sum()) == 0]
    assert not zero, f"zero gradient for {zero[:5]}"
    for _ in range(49):
        last = train_step(model, opt, batch, cfg, 2e-3)
    assert all(torch.isfinite(v) for v in last.values())
    assert float(last["total"]) < 0.5 * float(first["total"]), (float(first["total"]), float(last["total"]))


def _weights(path):
    ck = load_checkpoint(path)
    return ck, {**{f"model.{k}": v for k, v in ck["model"].items()},
                **{f"opt.{i}.{k}": v for i, s in ck["optimizer"]["state"].items() for k, v in s.items()}}


# (the cosine schedule depends on the total step count, so a run cut short by max_steps is another schedule;
# resuming a crashed run keeps its config, and get_lr is a pure function of the step: tests/test_config.py)
@pytest.mark.parametrize("optim", [{}, {"ema_decay": 0.9}], ids=["plain", "ema"])
def test_resume_continues_exactly(shards, tmp_path, optim):
    # 5 steps per epoch, checkpoints every 3: the resumed run restarts mid-epoch 0 and crosses an epoch end
    o = {"lr": 1e-3, "warmup_epochs": 0.4, **optim}
    cfg6 = tiny_config(shards, max_steps=6, optim=o)
    cfg3 = tiny_config(shards, max_steps=3, optim=o)
    fit(cfg6, tmp_path / "straight", CPU, progress=False)
    fit(cfg3, tmp_path / "split", CPU, progress=False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 3
    fit(cfg6, tmp_path / "split", CPU, resume=True, progress=False)
    a, wa = _weights(tmp_path / "straight" / "last.pt")
    b, wb = _weights(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 6 and a["samples_seen"] == 24 and a["data"] == b["data"]
    assert set(wa) == set(wb)
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"
    assert a["best"] == b["best"] and a["best"] < float("inf")   # validated at the epoch end (step 5)
    assert (tmp_path / "straight" / "best.pt").is_file()
    assert not [k for k in a["model"] if k.startswith(("module.", "_orig_mod."))]
    if optim:  # the averaged weights are what is evaluated; the trained ones resume the run
        assert set(a["model_train"]) == set(a["model"])
        assert all(torch.equal(a["model_train"][k], b["model_train"][k]) for k in a["model"])
        assert any(not torch.equal(a["model_train"][k], a["model"][k]) for k in a["model"])
    with open(tmp_path / "split" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/total")]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def _cli(args):
    return CliRunner().invoke(train_main, ["--no-progress", *map(str, args)])


def _tiny_sets():
    return [f"model.{k}={v}" for k, v in TINY.items()]


def test_cli_trains_writes_outputs_and_resumes(shards, tmp_path):
    run = tmp_path / "run"
    sets = [*_tiny_sets(), "batch_size=4", "epoch_samples=8", "epochs=2", "data.num_workers=0",
            "max_steps=2", "log_every_steps=1"]
    args = ["--config", "demo", "--train", shards["train"], "--val", shards["val"], "--out", run]
    r = _cli([*args, *sum([["--set", s] for s in sets], [])])
    assert r.exit_code == 0, r.output
    for f in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "loss_curve.png"):
        assert (run / f).is_file(), f
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == 2 and ck["config"]["model"]["width"] == 4
    assert config_from_dict(ck["config"]).model == ModelConfig(**{**TINY, "head_planes": (2, 4, 8, 16),
                                                                   "skeletons": tuple(TINY["skeletons"]),
                                                                   "backbone_init": "torch", "stage_modules": (1, 1, 1),
                                                                   "stage_blocks": 1})  # demo preset
    r = _cli([*args, "--set", "max_steps=2"])
    assert r.exit_code == 2 and "already holds a run" in r.output
    r = _cli(["--out", run, "--resume", "--set", "max_steps=4"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "last.pt")["step"] == 4
    r = _cli(["--out", run, "--resume", "--set", "model.width=8"])
    assert r.exit_code == 2 and "model keys cannot change" in r.output


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in r.output, r.output
    for w in words:
        assert w in lines[-1], (w, lines[-1])


def test_bad_input_is_a_one_line_error(shards, tmp_path):
    base = ["--config", "demo", "--set", "data.num_workers=0", "--out", tmp_path / "run"]
    _one_line_error(_cli([*base, "--train", tmp_path / "nope"]), "nope", "no such")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli([*base, "--train", tmp_path / "empty"]), "empty", "no .tar shards")
    old = make_shards(tmp_path / "old", n=4, format_version=0)
    _one_line_error(_cli([*base, "--train", old]), "build.json", "format_version")
    small = make_shards(tmp_path / "small", n=4, crop_size=32)
    _one_line_error(_cli([*base, "--train", small]), "crop_size")
    _one_line_error(_cli([*base, "--train", shards["train"], "--set", "optim.lrr=1"]), "optim.lrr")
    _one_line_error(_cli([*base]), "no training data")
    _one_line_error(_cli(["--out", tmp_path / "fresh", "--resume"]), "nothing to resume")
    assert not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg, run_dir: str, out_dir: str):
    """One torchrun-like rank: env:// rendezvous through setup_distributed, then fit; dumps what it ended with."""
    import os

    import torch.distributed as tdist

    import trainer.train as T

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    seen, batches = [], T.train_batches

    def recording(*a, **k):  # the sample ids this rank trained on, batch by batch
        for b in batches(*a, **k):
            seen.append(list(b["sample_id"]))
            yield b

    T.train_batches = recording
    dist = T.setup_distributed()
    try:
        raw, summary = T.fit(cfg, run_dir, dist, progress=False)
        torch.save({"world_size": dist.world_size, "backend": tdist.get_backend(), "summary": summary,
                    "seen": seen, "params": {n: p.detach().clone() for n, p in raw.named_parameters()},
                    "buffers": {n: b.detach().clone() for n, b in raw.named_buffers()}},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_ddp_two_gloo_ranks_end_with_identical_parameters(shards, tmp_path):
    """2 CPU ranks (gloo), 3 optimizer steps crossing an epoch end (validation all-reduce, barrier, checkpoint):
    gradients are averaged, so both ranks end with bit-identical parameters while reading different samples."""
    import torch.multiprocessing as mp

    cfg = tiny_config(shards, max_steps=3)  # 20 samples / (4 x 2 ranks): 2 steps per epoch
    run = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(run), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["backend"] == "gloo"
    assert set(r0["params"]) == set(r1["params"])
    # parameters only: BN running stats are rank-local on the CPU (no SyncBN; DDP broadcasts rank 0's buffers
    # at the start of each forward, so after the last forward they differ by one local update)
    diff = [n for n in r0["params"] if not torch.equal(r0["params"][n], r1["params"][n])]
    assert not diff, f"ranks disagree on {len(diff)} parameters, e.g. {diff[:5]}"
    assert len(r0["seen"]) == len(r1["seen"]) == 3 and all(len(b) == 4 for b in r0["seen"] + r1["seen"])
    assert r0["seen"] != r1["seen"], "both ranks trained on the same samples"
    ck = load_checkpoint(run / "last.pt")  # written by rank 0 only, from rank 0's model
    assert ck["step"] == 3 and ck["world_size"] == 2 and ck["samples_seen"] == 24
    assert all(torch.equal(ck["model"][n], p) for n, p in r0["params"].items())
    assert (run / "best.pt").is_file() and r0["summary"]["steps"] == r1["summary"]["steps"] == 3
    init = build(cfg, CPU)[0].state_dict()
    assert any(not torch.equal(init[n], p) for n, p in r0["params"].items()), "the parameters never changed"


def test_resume_refuses_what_would_break_exactness(shards, tmp_path):
    run = tmp_path / "run"
    args = ["--config", "demo", "--train", shards["train"], "--val", shards["val"], "--out", run,
            *sum([["--set", s] for s in [*_tiny_sets(), "batch_size=4", "epoch_samples=8", "data.num_workers=0",
                                         "max_steps=1"]], [])]
    assert _cli(args).exit_code == 0
    _one_line_error(_cli(["--out", run, "--resume", "--set", "batch_size=2"]), "batch_size", "--resume")
    _one_line_error(_cli(["--out", run, "--resume", "--set", "seed=9"]), "seed")
    torch.save({"step": 1}, run / "last.pt")                       # not a perspose checkpoint
    _one_line_error(_cli(["--out", run, "--resume"]), "last.pt", "not a perspose checkpoint")


def test_a_nonfinite_validation_stops_the_run_naming_the_step(shards, tmp_path, monkeypatch):
    import trainer.train as T
    from trainer.evaluate import NonFinitePrediction

    cfg = tiny_config(shards, max_steps=5)
    raw, _ = build(cfg, CPU)
    name = next(k for k, _ in raw.named_parameters() if k.startswith("depth_head") and k.endswith("weight"))
    with torch.no_grad():
        dict(raw.named_parameters())[name].view(-1)[0] = float("nan")
    with pytest.raises(NonFinitePrediction, match="not finite"):           # names the shard, key and joint
        T.validate(raw, cfg, CPU, resolve_data(cfg)[1])

    def nan_validation(*a, **k):
        raise NonFinitePrediction("val-000000.tar: sample k: the prediction is not finite (joint x = nan)")
    monkeypatch.setattr(T, "validate", nan_validation)
    with pytest.raises(FloatingPointError, match=r"^step 5: validation: val-000000.tar: sample k"):
        fit(cfg, tmp_path / "run", CPU, progress=False)
    assert not (tmp_path / "run" / "best.pt").exists()                     # never a NaN "best"


def test_precision_fast_follows_the_cpus_bf16_support(monkeypatch):
    """'fast' is bf16 on a CPU that multiplies bf16 in hardware (AMX or AVX512-BF16 in /proc/cpuinfo), fp32 else."""
    import builtins
    import io

    from trainer import precision
    from trainer.config import TrainConfig
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    real_open = builtins.open
    for flags, want in (("fpu avx512f avx512_bf16 sse", torch.bfloat16), ("fpu avx512f sse", None),
                        ("fpu amx_bf16 amx_tile", torch.bfloat16)):
        monkeypatch.setattr(builtins, "open", lambda p, *a, _f=flags, **k: io.StringIO(f"processor: 0\nflags\t: {_f}\n")
                            if p == "/proc/cpuinfo" else real_open(p, *a, **k))
        assert precision.amp_dtype(TrainConfig(precision="fast"), cpu) == want, flags
        assert precision.amp_dtype(TrainConfig(precision="fp32"), cpu) is None
        assert precision.amp_dtype(TrainConfig(precision="bf16"), cpu) == torch.bfloat16
