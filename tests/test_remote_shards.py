"""Shards from URLs (issue 14, first part): a built shard set served by Python's http.server on 127.0.0.1 gives the
same training batches and the same evaluation as the local path; a 404 or a truncated transfer is an error naming
the URL (evaluation) or a logged, skipped shard (training)."""
from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import InputError
from trainer import evaluate as E
from trainer.data import DataSource, LoaderConfig, make_train_loader
from trainer.shards import resolve_shards
from test_evaluate import _ckpt
from train_shards import make_shards


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    make_shards(root / "train", n=24, per_shard=8)
    make_shards(root / "test", n=9, split="test", seed=4, per_shard=4)
    bad = root / "bad"
    shutil.copytree(root / "train", bad)
    tar = bad / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])      # a truncated transfer
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _truth(batch):
    return {"uvd": batch["uvd"], "scale": batch["scale"]}


def test_url_resolution_and_training_batches_equal_the_local_ones(served):
    root, url = served
    for spec in (f"{url}/train", f"{url}/train/", f"{url}/train/shard-{{000000..000002}}.tar"):
        ss = resolve_shards(spec, 64)
        assert ss.num_samples == resolve_shards(root / "train", 64).num_samples == 24 and len(ss.urls) == 3
    cfg = LoaderConfig(crop_size=64, skeletons=("smpl24",), batch_size=4, num_workers=0, shuffle_buffer=8, seed=5,
                       samples_per_epoch=16)
    local = list(make_train_loader([DataSource("t", (str(root / "train"),))], cfg))
    remote = list(make_train_loader([DataSource("t", (f"{url}/train",))], cfg))
    assert len(local) == len(remote) == 4
    for a, b in zip(local, remote):
        assert a["sample_id"] == b["sample_id"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["uvd"], b["uvd"])


def test_evaluation_from_a_url_is_the_local_evaluation(served, tmp_path):
    root, url = served
    a = E.evaluate(_truth, [root / "test"], progress=False)["records"]
    b = E.evaluate(_truth, [f"{url}/test"], progress=False, workers=2)["records"]
    assert a["sample_id"] == b["sample_id"] and len(a["sample_id"]) == 9
    np.testing.assert_array_equal(a["mpjpe"], b["mpjpe"])
    from trainer.eval_cli import main as eval_main
    ck = _ckpt(tmp_path)
    reports = []
    for spec, out in ((root / "test", tmp_path / "local"), (f"{url}/test", tmp_path / "remote")):
        r = CliRunner().invoke(eval_main, ["--ckpt", str(ck), "--shards", str(spec), "--out", str(out), "--device",
                                           "cpu", "--no-progress", "--workers", "0"])
        assert r.exit_code == 0, r.output
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["metrics"] == reports[1]["metrics"] and reports[1]["shards"][0]["path"].startswith(url)


def test_a_404_or_a_truncated_shard(served, caplog):
    root, url = served
    with pytest.raises(InputError, match=rf"{url}/nothing/build.json.*404"):
        resolve_shards(f"{url}/nothing")
    with pytest.raises(InputError, match=rf"{url}/train/shard-000009.tar.*404"):
        resolve_shards(f"{url}/train/shard-000009.tar", 64)
    with pytest.raises(InputError, match=rf"^{url}/bad/shard-000001.tar: not a readable tar shard"):
        E.evaluate(_truth, [f"{url}/bad"], progress=False)
    cfg = LoaderConfig(crop_size=64, skeletons=("smpl24",), batch_size=4, num_workers=0, shuffle_buffer=0, seed=1,
                       samples_per_epoch=40)
    with caplog.at_level(logging.WARNING):
        batches = list(make_train_loader([DataSource("bad", (f"{url}/bad",))], cfg))
    assert len(batches) == 10 and any("shard-000001.tar" in m for m in caplog.messages)
