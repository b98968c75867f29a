"""perspose-build shards: plan, rejections, determinism, resume after kill -9, CLI errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from _builddata import bbox_of, dot_image, make_dataset, make_row, write
from pipeline import geometry as g
from pipeline.build import BuildConfig, _n_jobs, build_shards, load_rows, plan_shards
from pipeline.cli import main
from pipeline.fsutil import sha256_file
from pipeline.shard import BuildOptions, decode_sample, iter_tar, load_image, process_row
from pipeline.verify import check_sample, verify_dir

REPO = Path(__file__).resolve().parents[1]
EXE = REPO / ".venv" / "bin" / "perspose-build"


def _digests(d: Path) -> dict:
    return {p.name: sha256_file(p) for p in sorted(d.glob("*.tar"))} | {"index": sha256_file(d / "index.parquet")}


@pytest.fixture()
def toy(tmp_path):
    rows, img_dir = make_dataset(tmp_path, 10, seed=1)
    return write(rows, tmp_path / "toy.parquet", img_dir), rows, img_dir


def test_build_writes_outputs_and_verifies(toy, tmp_path):
    manifest, rows, _ = toy
    out = tmp_path / "out"
    res = build_shards([manifest], out, BuildConfig(shard_size=4, jobs=1), progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["sample_id"] for r in index] == sorted(r["sample_id"] for r in rows)
    assert {r["shard"] for r in index} == {"shard-000000", "shard-000001", "shard-000002"}
    info = json.loads((out / "build.json").read_text())
    assert info["counts"]["written"] == 10 and info["counts"]["rejected"] == 0
    assert {s["file"]: s["sha256"] for s in info["shards"]} == {p.name: sha256_file(p) for p in out.glob("*.tar")}
    assert info["versions"]["numpy"] == np.__version__ and info["manifests"][0]["sha256"] == sha256_file(manifest)
    assert res.reused == 0 and verify_dir(out, progress=False).ok
    # the builder's BGR fast path gives exactly the bytes of the plain load_image + process_row path
    first = next(iter_tar(out / "shard-000000.tar"))
    row = next(r for r in load_rows([manifest])[0] if r["sample_id"] == index[0]["sample_id"])
    ref = process_row(row, load_image(row["_image"]), BuildOptions())
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(ref["image"], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert jpg.tobytes() == first["jpg"]


def _bad_rows(tmp_path, img_dir):
    """One row per rejection reason, plus one box partly outside the image (kept)."""
    w, h = 320, 240
    K = g.intrinsics(288.0, 288.0, 159.5, 119.5)
    joints = np.array([[0.0, 0.0, 4.0]]) + np.random.default_rng(5).uniform(-0.4, 0.4, (17, 3))
    uv = g.project(joints, K)
    grey = np.full((h, w), 120, np.uint8)
    cv2.imwrite(str(img_dir / "grey.jpg"), cv2.cvtColor(dot_image(w, h, uv, background=grey), cv2.COLOR_RGB2BGR))
    (img_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    def row(name, image="grey.jpg", K_=K, j=joints, bbox=None, **kw):
        return make_row(("bad", "train", name, 0, 0), image, w, h, K_, j, bbox or bbox_of(uv), **kw)
    nan = joints.copy()
    nan[3, 0] = np.nan
    behind = joints.copy()
    behind[:, 2] *= -1
    wide = g.intrinsics(30.0, 30.0, 159.5, 119.5)  # ~80 deg off-axis in the top-right corner
    return [row("missing", image="nope.jpg"), row("corrupt", image="corrupt.jpg"), row("nan", j=nan),
            row("behind", j=behind), row("wideangle", K_=wide, j=None, bbox=[280, 10, 30, 30]),
            row("outside", bbox=[400, 300, 50, 50]), row("partly", bbox=[-120, 40, 200, 150])]


def test_bad_samples_are_rejected_with_reasons_and_build_goes_on(toy, tmp_path):
    manifest, rows, img_dir = toy
    bad = write(_bad_rows(tmp_path, img_dir), tmp_path / "bad.parquet", img_dir, validate=False)
    out = tmp_path / "out"
    res = build_shards([manifest, bad], out, BuildConfig(shard_size=3, jobs=1), progress=False)
    rej = dict(zip(*pq.read_table(out / "rejected.parquet").to_pydict().values()))
    sid = lambda n: f"bad/train/{n}/0/0"  # noqa: E731
    assert rej[sid("missing")] == "missing image"
    assert rej[sid("corrupt")].startswith("corrupt image")
    assert "non-finite" in rej[sid("nan")]
    assert "behind" in rej[sid("behind")]
    assert rej[sid("wideangle")].startswith("PR angle") and "over the limit 75" in rej[sid("wideangle")]
    assert rej[sid("outside")] == "bbox entirely outside the image"
    assert sid("partly") not in rej and len(rej) == 6 and len(res.index_rows) == 11
    info = json.loads((out / "build.json").read_text())
    assert info["rejected_by_reason"]["PR angle over the limit"] == 1 and info["counts"]["rejected"] == 6
    assert verify_dir(out, progress=False).ok
    # the box partly outside the image is kept; its crop is black where it sees beyond the image edge
    key = "bad_train_partly_0_0"
    shard = next(r["shard"] for r in res.index_rows if r["key"] == key)
    s = decode_sample(next(m for m in iter_tar(out / f"{shard}.tar") if m["__key__"] == key))
    Ss = s["image"].shape[0]
    src = g.apply_homography(np.linalg.inv(s["arrays"]["H"]), g.pixel_grid_points(Ss, Ss).reshape(-1, 2))
    grey = s["image"].mean(-1).reshape(-1)
    outside, inside = src[:, 0] < -3, (src[:, 0] > 3) & (src[:, 1] > 3) & (src[:, 1] < 236) & (src[:, 0] < 316)
    assert outside.sum() > 1000 and inside.sum() > 1000
    assert grey[outside].mean() < 3 and grey[inside].mean() > 90


def test_same_input_same_bytes_and_jobs_do_not_matter(toy, tmp_path):
    manifest, _, _ = toy
    a = build_shards([manifest], tmp_path / "a", BuildConfig(shard_size=3, jobs=1), progress=False)
    b = build_shards([manifest], tmp_path / "b", BuildConfig(shard_size=3, jobs=1), progress=False)
    c = build_shards([manifest], tmp_path / "c", BuildConfig(shard_size=3, jobs=2), progress=False)
    d = build_shards([manifest], tmp_path / "d", BuildConfig(shard_size=3, jobs=2, backend="threading"),
                     progress=False)
    da = _digests(a.out_dir)
    assert len(da) == 5 and da == _digests(b.out_dir) == _digests(c.out_dir) == _digests(d.out_dir)
    assert len({sha256_file(r.out_dir / "rejected.parquet") for r in (a, b, c, d)}) == 1   # (index: in _digests)


def test_plan_is_pure_and_rerun_reuses_or_rebuilds(toy, tmp_path):
    manifest, rows, img_dir = toy
    cfg = BuildConfig(shard_size=4, jobs=1)
    r1, _, _ = load_rows([manifest])
    plan = (cfg.shard_size, cfg.prefix, cfg.opts)
    again = load_rows([manifest])[0]
    assert [t.plan_hash for t in plan_shards(r1, *plan)] == [t.plan_hash for t in plan_shards(again, *plan)]
    out = tmp_path / "out"
    build_shards([manifest], out, cfg, progress=False)
    before = _digests(out)
    ino = {p.name: p.stat().st_ino for p in out.glob("*.tar")}
    assert build_shards([manifest], out, cfg, progress=False).reused == 3
    assert {p.name: p.stat().st_ino for p in out.glob("*.tar")} == ino
    # a damaged shard is rebuilt, the others are reused
    with open(out / "shard-000001.tar", "r+b") as f:
        f.seek(700)
        f.write(b"X")
    res = build_shards([manifest], out, cfg, progress=False)
    assert res.reused == 2 and _digests(out) == before
    # other options -> a different plan hash -> everything rebuilt
    res = build_shards([manifest], out, BuildConfig(shard_size=4, jobs=1, opts=BuildOptions(jpeg_quality=80)),
                       progress=False)
    assert res.reused == 0 and _digests(out)["shard-000000.tar"] != before["shard-000000.tar"]
    # a smaller plan removes our own shards beyond it, also a tar whose sidecar was never written (a kill)
    (out / "shard-000009.tar").write_bytes(b"orphan")
    res = build_shards([manifest], out, BuildConfig(shard_size=8, jobs=1), progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.json", "shard-000000.tar",
                                                           "shard-000001.json", "shard-000001.tar"]
    assert verify_dir(out, progress=False).ok


def test_several_manifests_one_output_and_duplicate_keys(tmp_path):
    tr, img_dir = make_dataset(tmp_path, 4, seed=2, split="train")
    va, _ = make_dataset(tmp_path, 3, seed=3, split="val")
    dup = dict(va[0])
    dup["sample_id"] = dup["sample_id"].replace("/", "_")  # different id, same webdataset key
    m1 = write(tr, tmp_path / "train.parquet", img_dir)
    m2 = write(va + [dup], tmp_path / "val.parquet", img_dir)
    res = build_shards([m1, m2], tmp_path / "out", BuildConfig(shard_size=100, jobs=1), progress=False)
    assert sorted({(r["dataset"], r["split"]) for r in res.index_rows}) == [("toy", "train"), ("toy", "val")]
    assert res.rejected == [(dup["sample_id"], "duplicate sample key")] or \
        res.rejected == [(va[0]["sample_id"], "duplicate sample key")]
    assert len(res.index_rows) == 7


def test_all_rejected_shard_is_an_empty_tar(tmp_path):
    rows, img_dir = make_dataset(tmp_path, 2, seed=4)
    for r in rows:
        r["image_path"] = "gone.jpg"
    m = write(rows, tmp_path / "m.parquet", img_dir, validate=False)
    res = build_shards([m], tmp_path / "out", BuildConfig(shard_size=5, jobs=1), progress=False)
    tar = tmp_path / "out" / "shard-000000.tar"
    assert tar.is_file() and tarfile.open(tar).getmembers() == [] and len(res.rejected) == 2
    assert verify_dir(tmp_path / "out", progress=False).ok
    assert build_shards([m], tmp_path / "out", BuildConfig(shard_size=5, jobs=1), progress=False).reused == 1


def test_cli_errors_exit_2(toy, tmp_path):
    manifest, rows, img_dir = toy
    runner = CliRunner()
    r = runner.invoke(main, ["shards", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nope.parquet" in r.output
    lost = write(rows, tmp_path / "lost.parquet", tmp_path / "no" / "such" / "dir")
    r = runner.invoke(main, ["shards", str(lost), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and str(tmp_path / "no" / "such" / "dir") in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1
    r = runner.invoke(main, ["shards", str(manifest), "--out", str(tmp_path / "o"), "--backend", "dask"])
    if r.exit_code == 2:  # dask not installed: a one-line hint
        assert "perspose[dask]" in r.output
    r = runner.invoke(main, ["shards", str(manifest), "--out", str(tmp_path / "o"), "--var", "a=b"])
    assert r.exit_code == 2


def test_cli_strict_and_summary(toy, tmp_path):
    manifest, rows, img_dir = toy
    bad = write(_bad_rows(tmp_path, img_dir)[:1], tmp_path / "bad.parquet", img_dir, validate=False)
    runner = CliRunner()
    args = ["shards", str(manifest), str(bad), "--out", str(tmp_path / "o"), "--jobs", "1", "--no-progress",
            "--shard-size", "4", "--prefix", "toy"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "samples written" in r.output and "rejected: missing image" in r.output
    assert (tmp_path / "o" / "toy-000002.tar").is_file()
    r = runner.invoke(main, args + ["--strict"])
    assert r.exit_code == 1 and "reused 3 shards" in r.output


def test_cli_recipe_builds_then_verifies(tmp_path):
    pytest.importorskip("pipeline.recipe")
    tr, img_dir = make_dataset(tmp_path, 3, seed=7, split="train")
    te, _ = make_dataset(tmp_path, 2, seed=8, split="test")
    write(tr, tmp_path / "d" / "train.parquet", img_dir)
    write(te, tmp_path / "d" / "test.parquet", img_dir)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: toy\nsplits:\n"
                      "  train:\n    - name: a\n      adapter: manifest\n      root: ${D}/train.parquet\n"
                      "      split: train\n"
                      "  test:\n    - name: b\n      adapter: manifest\n      root: ${D}/test.parquet\n"
                      "      split: test\n")
    runner = CliRunner()
    out = tmp_path / "o"
    r = runner.invoke(main, ["shards", "--recipe", str(recipe), "--var", f"D={tmp_path / 'd'}", "--out", str(out),
                             "--jobs", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "verified 3 samples in 1 shards" in r.output and "verified 2 samples in 1 shards" in r.output
    # one shard set per source, each keeping its split
    assert pq.read_table(out / "train" / "a" / "index.parquet").column("split").to_pylist() == ["train"] * 3
    assert pq.read_table(out / "test" / "b" / "index.parquet").column("split").to_pylist() == ["test"] * 2
    # the written recipe is what perspose-train and perspose-eval read: train with ratios, test for evaluation
    from pipeline.training_recipe import RecipeSource, read_training_recipe
    from trainer.train_cli import recipe_data_section
    back = read_training_recipe(out / "recipe.yaml")
    assert back.train == (RecipeSource("a", (str((out / "train" / "a").resolve()),), 1.0),) and not back.val
    assert back.eval_shards() == [str((out / "test" / "b").resolve())]
    assert recipe_data_section(out / "recipe.yaml") == {
        "train": [{"name": "a", "paths": [str((out / "train" / "a").resolve())], "ratio": 1.0}]}
    r = runner.invoke(main, ["shards", "--recipe", str(recipe), "--var", f"D={tmp_path / 'd'}", "--out", str(out),
                             "--jobs", "1", "--no-progress"])
    assert r.exit_code == 0 and r.output.count("reused 1 shards") == 2, r.output
    r = runner.invoke(main, ["shards", str(tmp_path / "d" / "train.parquet"), "--recipe", str(recipe), "--out",
                             str(out), "--no-progress"])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(main, ["shards", "--recipe", str(recipe), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2  # ${D} unresolved: a one-line error


def _check_tar_complete(tar: Path):
    """A shard under its final name must be a whole, valid tar whose samples pass the invariants."""
    n = 0
    for m in iter_tar(tar):
        assert {"jpg", "npz", "json"} <= set(m), m.keys()
        assert check_sample(decode_sample(m)) == []
        n += 1
    side = tar.with_suffix(".json")
    if side.is_file():
        meta = json.loads(side.read_text())
        assert meta["samples"] == n and meta["sha256"] == sha256_file(tar)
    return n


def test_kill_9_then_resume_is_byte_identical(tmp_path):
    rows, img_dir = make_dataset(tmp_path, 60, seed=6, size=(800, 600), shared_image=True)
    m = write(rows, tmp_path / "m.parquet", img_dir)
    args = [str(EXE), "shards", str(m), "--jobs", "1", "--shard-size", "2", "--no-progress"]
    ref = tmp_path / "ref"
    build_shards([m], ref, BuildConfig(shard_size=2, jobs=1), progress=False)  # uninterrupted, in-process
    out = tmp_path / "out"
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not list(out.glob("shard-*.json")) and proc.poll() is None and time.monotonic() - t0 < 60:
        time.sleep(0.002)  # the first shard is complete once its sidecar appears
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("shard-*.tar"))
    finished = [p for p in done if p.with_suffix(".json").is_file()]
    assert finished, "no shard appeared before the kill"
    interrupted = len(done) < 30
    for tar in done:
        _check_tar_complete(tar)
    assert not (out / "build.json").exists() or not interrupted
    inodes = {p.name: p.stat().st_ino for p in finished}
    r = subprocess.run(args + ["--out", str(out)], check=True, capture_output=True, text=True)
    if interrupted:
        assert f"reused {len(finished)} shards" in r.stdout
        assert {p.name: p.stat().st_ino for p in finished} == inodes
    assert _digests(out) == _digests(ref) and len(_digests(ref)) == 31
    assert not list(out.glob(".*.tmp"))
    assert verify_dir(out, progress=False).ok


@pytest.mark.slow
def test_build_synthetic_renderer_output(tmp_path):
    """End to end on the synthetic renderer's output (perspose-build synth), when it is installed."""
    pytest.importorskip("pipeline.synth_cli")
    runner = CliRunner()
    r = runner.invoke(main, ["synth", "--out", str(tmp_path / "syn"), "-n", "12", "--seed", "1", "--jobs", "1",
                             "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "shards"
    r = runner.invoke(main, ["shards", str(tmp_path / "syn" / "manifest.parquet"), "--out", str(out), "--jobs", "1",
                             "--shard-size", "5", "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = verify_dir(out, progress=False)
    assert rep.ok, rep.failures[:5]
    assert rep.samples >= 10


def test_jobs_mean_cores_locally_and_the_cluster_for_dask_and_ray(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert [_n_jobs(-1, b, 100) for b in ("loky", "threading", "dask", "ray")] == [6, 6, -1, -1]
    assert _n_jobs(-1, "loky", 4) == 4 and _n_jobs(8, "dask", 3) == 3 and _n_jobs(8, "loky", 50) == 8
    assert _n_jobs(1, "ray", 50) == 1


@pytest.mark.filterwarnings("ignore")
def test_a_local_dask_cluster_builds_byte_identical_shards(toy, tmp_path):
    """One shard = one idempotent task on any joblib backend: 2 dask workers write the loky build's bytes."""
    pytest.importorskip("dask.distributed", reason="the dask extra (scripts/test.sh installs it)")
    manifest, _, _ = toy
    loky = build_shards([manifest], tmp_path / "loky", BuildConfig(shard_size=3, jobs=2), progress=False)
    dask = build_shards([manifest], tmp_path / "dask", BuildConfig(shard_size=3, jobs=2, backend="dask"),
                        progress=False)
    assert dask.build_json["run"]["backend"] == "dask" and len(_digests(loky.out_dir)) == 5
    assert _digests(loky.out_dir) == _digests(dask.out_dir)
