"""The invariant that ties training to evaluation (issue 18): the validation MPJPE a run logs for a checkpoint is
the MPJPE ``perspose-eval --no-flip-test`` reports for that checkpoint on the same shards, to 1e-6 mm, whatever
the number of loader workers on either side and the number of training ranks. Both read the one held-out stream
(trainer/shards.py) and score with trainer/metrics.py, so this holds by construction; the test keeps it so."""
from __future__ import annotations

import csv

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from trainer.checkpoint import load_checkpoint
from trainer.eval_cli import main as eval_main
from trainer.train import fit
from test_train import CPU, _ddp_worker, _free_port, shards, tiny_config  # noqa: F401  (shards: fixture)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def eval_mpjpe(ckpt, val, out, workers: int) -> float:
    """perspose-eval's mean MPJPE (mm) over the samples, from its predictions.parquet."""
    r = CliRunner().invoke(eval_main, ["--ckpt", str(ckpt), "--shards", str(val), "--out", str(out), "--device",
                                       "cpu", "--no-flip-test", "--no-progress", "--workers", str(workers)])
    assert r.exit_code == 0, r.output
    col = pq.read_table(out / "predictions.parquet")["mpjpe_mm"].to_pylist()
    return sum(col) / len(col)


def _logged(run) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["val/mpjpe_mm"]) for r in csv.DictReader(f) if r.get("val/mpjpe_mm")]


@pytest.mark.parametrize("workers", [1, 2])
def test_logged_validation_mpjpe_equals_perspose_eval(shards, tmp_path, workers):  # noqa: F811
    # precision fp32 on both sides (perspose-eval autocasts only with --amp on CUDA); all val samples
    cfg = tiny_config(shards, max_steps=5, precision="fp32",
                      data={"train": [{"name": "gen", "paths": [str(shards["train"])]}],
                            "val": [str(shards["val"])], "num_workers": workers, "shuffle_buffer": 8,
                            "val_batch_size": 3, "val_max_samples": 0})
    run = tmp_path / "run"
    fit(cfg, run, CPU, progress=False)
    ck = load_checkpoint(run / "best.pt")
    assert _logged(run) == [ck["best"]]                                  # one validation, at the epoch end
    for w in (0, 1, 2):
        assert abs(eval_mpjpe(run / "best.pt", shards["val"], tmp_path / f"eval{w}", w) - ck["best"]) < 1e-6, w


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_rank_validation_mpjpe_equals_perspose_eval(shards, tmp_path):  # noqa: F811
    import torch.multiprocessing as mp

    cfg = tiny_config(shards, max_steps=3, precision="fp32",
                      data={"train": [{"name": "gen", "paths": [str(shards["train"])]}],
                            "val": [str(shards["val"])], "num_workers": 0, "val_max_samples": 0})
    run = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(run), str(tmp_path)), nprocs=2, join=True)
    ck = load_checkpoint(run / "best.pt")
    assert abs(eval_mpjpe(run / "best.pt", shards["val"], tmp_path / "eval", 0) - ck["best"]) < 1e-6
