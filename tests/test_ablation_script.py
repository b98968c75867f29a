"""scripts/ablation.py end to end at toy size: three arms, one seed, every stage through the real console scripts,
the table and plots written, and a rerun resumes without training again."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"


@pytest.mark.slow  # ~1 minute: synthesises data, builds 6 shard sets, trains and evaluates 3 tiny runs
def test_ablation_runs_end_to_end_and_resumes(tmp_path):
    args = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "abl"), "--n-train", "40", "--n-val", "12",
            "--n-test", "16", "--steps", "4", "--epochs", "2", "--batch", "4", "--seeds", "0", "--pretrain-steps", "4",
            "--pretrain-epochs", "2"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "abl"
    res = json.loads((out / "results.json").read_text())
    assert set(res["arms"]) == {"baseline", "pe", "pe_pr"}
    n = res["n_test_common"]
    assert n > 0
    for arm in res["arms"].values():
        assert set(arm["mean"]) == {"depth_err_mm", "pa_mpjpe_mm", "mpjpe_mm"}
        assert all(v > 0 for v in arm["mean"].values())
        assert sum(b["n"] for b in arm["pr_bins"].values()) == n
    # the PE-off arm really has no PE conv; the PR arm really trained on rotated crops
    cfg = (out / "runs" / "baseline_seed0" / "config.yaml").read_text()
    assert "use_pe: false" in cfg
    assert "shards/pr/train" in (out / "runs" / "pe_pr_seed0" / "config.yaml").read_text()
    # the shared start: no PE, both crop kinds; every arm starts from it (the PE arms add the PE conv)
    pre = (out / "runs" / "pretrain" / "config.yaml").read_text()
    assert "use_pe: false" in pre and "shards/pr/train" in pre and "shards/nopr/train" in pre
    for arm in ("baseline", "pe", "pe_pr"):
        assert "runs/pretrain/last.pt" in (out / "runs" / f"{arm}_seed0" / "config.yaml").read_text()
    assert "use_pe: true" in (out / "runs" / "pe_seed0" / "config.yaml").read_text()
    for f in ("ablation.md", "arms.png", "error_vs_pr_angle.png"):
        assert (out / f).stat().st_size > 0
    stamp = (out / "runs" / "pe_seed0" / "last.pt").stat().st_mtime_ns
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "runs" / "pe_seed0" / "last.pt").stat().st_mtime_ns == stamp  # resumed: nothing retrained


def test_seconds_clock_adds_up_over_invocations_and_survives_a_kill(tmp_path):
    """A run killed by a machine restart still has its seconds on disk (the clock rewrites them while it runs),
    and the next invocation adds to them."""
    import importlib.util
    import time
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "run.seconds.json"
    with mod.seconds_clock(path, every=0.05) as seconds:
        time.sleep(0.3)
        on_disk = json.loads(path.read_text())["seconds"]   # what a kill -9 here would leave
        assert 0.05 <= on_disk <= seconds()
    first = json.loads(path.read_text())["seconds"]
    assert 0.3 <= first < 5
    with mod.seconds_clock(path, every=0.05) as seconds:
        time.sleep(0.1)
    assert first + 0.1 <= json.loads(path.read_text())["seconds"] <= seconds()
