"""Manifest schema, validation, atomic writing and the `perspose-build manifest jsonl` command."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.manifest import (SCHEMA, image_root_of, make_sample_id, manifest_metadata, read_manifest,
                               rejected_path_for, validate_row, validate_rows, write_manifest)

J = 17
REPO = Path(__file__).resolve().parents[1]


def good_row(frame: int = 1, person: int = 0, image: str = "img.jpg") -> dict:
    """A valid h36m17 row as plain python values (the JSONL form)."""
    rng = np.random.default_rng(frame * 10 + person)
    joints = np.concatenate([rng.uniform(-0.8, 0.8, (J, 2)), rng.uniform(3.0, 5.0, (J, 1))], 1)
    uv = joints[:, :2] / joints[:, 2:] * 500.0 + [320.0, 240.0]
    return dict(sample_id=make_sample_id("ds", "train", "seq", frame, person), dataset="ds", split="train",
                sequence="seq", frame=frame, person=person, image_path=image, image_w=640, image_h=480,
                K=[500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0], dist=[-0.2, 0.1, 0.0, 0.0, 0.0],
                bbox=[100.0, 50.0, 200.0, 300.0], skeleton="h36m17", joints_cam=joints.reshape(-1).tolist(),
                joints_2d=uv.reshape(-1).tolist(), joints_vis=[1] * J)


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for name in ("img.jpg", "img2.jpg"):
        (root / name).write_bytes(b"\xff\xd8\xff\xd9")
    return root


def _with(**changes) -> dict:
    r = good_row()
    r.update(changes)
    return r


def _z_behind():
    r = good_row()
    r["joints_cam"][3 * 5 + 2] = 0.0
    return r


REJECTIONS = [
    (_with(image_path="nope.jpg"), "missing image"),
    (_with(K=[500.0, 0.0, math.nan, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]), "non-finite values in K"),
    (_with(bbox=[1.0, 2.0, math.inf, 3.0]), "non-finite values in bbox"),
    (_with(joints_cam=[math.nan] + good_row()["joints_cam"][1:]), "non-finite values in joints_cam"),
    (_with(joints_2d=[math.inf] + good_row()["joints_2d"][1:]), "non-finite values in joints_2d"),
    (_with(dist=[math.nan, 0.0, 0.0, 0.0]), "non-finite values in dist"),
    (_with(K=[0.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]), "focal length <= 0"),
    (_with(K=[500.0, 0.0, 320.0, 0.0, -5.0, 240.0, 0.0, 0.0, 1.0]), "focal length <= 0"),
    (_with(K=[500.0, 0.5, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]), "non-zero skew"),
    (_with(K=[500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 2.0]), "last row"),
    (_z_behind(), "joints behind the camera"),
    (_with(K=None), "3D joints without intrinsics"),
    (_with(bbox=[1.0, 2.0, 0.0, 30.0]), "degenerate bbox"),
    (_with(bbox=[1.0, 2.0, 30.0, -1.0]), "degenerate bbox"),
    (_with(K=[500.0] * 8), "K has 8 values"),
    (_with(dist=[0.1, 0.2, 0.3]), "dist has 3 values"),
    (_with(joints_cam=[1.0] * (3 * J - 3)), "joints_cam has 48 values"),
    (_with(joints_2d=[1.0] * (2 * J + 2)), "joints_2d has 36 values"),
    (_with(joints_vis=[1] * (J - 1)), "joints_vis has 16 values"),
    (_with(skeleton="h36m18"), "unknown skeleton 'h36m18'"),
    (_with(image_w=0), "image size <= 0"),
]


def test_good_row_is_accepted(image_root):
    assert validate_row(good_row(), image_root) is None
    assert validate_row(_with(joints_cam=None, K=None, dist=[]), image_root) is None      # 2D only (COCO)
    assert validate_row(_with(image_path="nope.jpg"), image_root, check_images=False) is None


@pytest.mark.parametrize("row,reason", REJECTIONS, ids=[r for _, r in REJECTIONS])
def test_each_rejection_reason(image_root, row, reason):
    got = validate_row(row, image_root)
    assert got is not None and reason in got, got


def test_validate_rows_rejects_duplicates_and_keeps_order(image_root):
    rows = [good_row(1), good_row(2), good_row(1), _with(image_path="nope.jpg", sample_id="x/y/z/9/0")]
    kept, rejected = validate_rows(rows, image_root)
    assert [r["sample_id"] for r in kept] == [good_row(1)["sample_id"], good_row(2)["sample_id"]]
    assert rejected == [(good_row(1)["sample_id"], "duplicate sample_id"), ("x/y/z/9/0", "missing image")]


def _meta(image_root):
    return manifest_metadata("jsonl", "1", image_root, source_checksums={"a.jsonl": "0" * 64}, extra={"note": "t"})


def test_write_read_roundtrip(tmp_path, image_root):
    rows = [good_row(3, 1), good_row(1, 0), _with(sample_id="ds/train/seq/2/0", frame=2, joints_cam=None,
                                                  joints_2d=None, K=None, dist=None, meta='{"a": 1}')]
    rows[0]["smpl"] = {"betas": np.arange(10.0), "pose": np.zeros(72), "transl": [0.0, 0.1, 4.0],
                       "gender": "female"}
    out = tmp_path / "sub" / "m.parquet"
    meta = _meta(image_root)
    write_manifest(rows, out, meta, rejected=[("bad/1", "missing image"), ("bad/2", "degenerate bbox (w or h <= 0)")])
    table, got_meta = read_manifest(out)
    assert table.schema.equals(SCHEMA)
    assert got_meta == json.loads(json.dumps(meta)) and got_meta["image_root"] == str(image_root.resolve())
    ids = table.column("sample_id").to_pylist()
    assert ids == sorted(ids) == ["ds/train/seq/1/0", "ds/train/seq/2/0", "ds/train/seq/3/1"]
    d = {r["sample_id"]: r for r in table.to_pylist()}
    src = good_row(1, 0)
    assert d["ds/train/seq/1/0"]["K"] == src["K"] and d["ds/train/seq/1/0"]["bbox"] == src["bbox"]
    np.testing.assert_allclose(d["ds/train/seq/1/0"]["joints_cam"], src["joints_cam"], rtol=1e-7)  # float32
    assert d["ds/train/seq/2/0"]["joints_cam"] is None and d["ds/train/seq/2/0"]["K"] is None
    assert d["ds/train/seq/2/0"]["dist"] == [] and d["ds/train/seq/2/0"]["meta"] == '{"a": 1}'
    assert d["ds/train/seq/3/1"]["smpl"]["gender"] == "female" and len(d["ds/train/seq/3/1"]["smpl"]["pose"]) == 72
    assert d["ds/train/seq/1/0"]["smpl"] is None
    rej = pq.read_table(rejected_path_for(out))
    assert rej.column_names == ["sample_id", "reason"] and rej.num_rows == 2
    assert rej.column("reason").to_pylist()[0] == "missing image"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.parquet", "m.rejected.parquet"]  # no temp files
    assert image_root_of(got_meta, out) == image_root.resolve()
    assert image_root_of({}, out) == out.resolve().parent


def test_read_manifest_fills_missing_optional_columns(tmp_path):
    t = pa.Table.from_pylist([good_row()]).drop_columns(["joints_2d"])
    pq.write_table(t, tmp_path / "m.parquet")
    table, meta = read_manifest(tmp_path / "m.parquet")
    assert table.schema.equals(SCHEMA) and meta == {}
    assert table.column("joints_2d").to_pylist() == [None] and table.column("smpl").null_count == 1


def test_manifest_written_before_the_twist_field_reads_with_twist_null(tmp_path):
    old_smpl = pa.struct([("betas", pa.list_(pa.float32())), ("pose", pa.list_(pa.float32())),
                          ("transl", pa.list_(pa.float32())), ("gender", pa.string())])
    rows = [good_row(1, 0), good_row(2, 0)]
    rows[0]["smpl"] = {"betas": [0.5] * 10, "pose": [0.0] * 72, "transl": [0.0, 0.0, 4.0], "gender": "male"}
    fields = [pa.field("smpl", old_smpl) if f.name == "smpl" else f for f in SCHEMA]
    t = pa.Table.from_pylist([{f.name: r.get(f.name) for f in fields} for r in rows], schema=pa.schema(fields))
    pq.write_table(t, tmp_path / "old.parquet")
    table, _ = read_manifest(tmp_path / "old.parquet")
    assert table.schema.equals(SCHEMA)
    got = table.column("smpl").to_pylist()
    assert got[0]["gender"] == "male" and got[0]["betas"] == [0.5] * 10 and got[0]["twist"] is None
    assert got[1] is None


def test_read_manifest_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.parquet"
    with pytest.raises(InputError, match=r"missing\.parquet.*not found"):
        read_manifest(missing)
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.parquet.*not a parquet"):
        read_manifest(not_parquet)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), wrong)
    with pytest.raises(InputError, match=r"wrong\.parquet.*missing columns.*sample_id"):
        read_manifest(wrong)
    for column, value in (("frame", "one"), ("K", "abc")):   # all columns present, one of the wrong type
        typed = tmp_path / f"typed_{column}.parquet"
        pq.write_table(pa.Table.from_pylist([{**good_row(), column: value}]), typed)
        with pytest.raises(InputError, match=rf"typed_{column}\.parquet.*column types"):
            read_manifest(typed)


# ---------------------------------------------------------------------------------------------- the CLI
def _write_jsonl(path: Path, rows, raw_lines=()) -> Path:
    lines = [json.dumps({k: v for k, v in r.items() if k != "sample_id"}) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _good_jsonl(tmp_path) -> Path:
    rows = [good_row(2), good_row(1, image="img2.jpg"), good_row(3, image="gone.jpg")]
    return _write_jsonl(tmp_path / "in.jsonl", rows, raw_lines=[""])   # a blank line is skipped


def _check_good_outputs(out: Path, text: str):
    table, meta = read_manifest(out)
    assert table.column("sample_id").to_pylist() == ["ds/train/seq/1/0", "ds/train/seq/2/0"]
    assert meta["adapter"] == "jsonl"
    rej = pq.read_table(rejected_path_for(out)).to_pylist()
    assert rej == [{"sample_id": "ds/train/seq/3/0", "reason": "missing image"}]
    assert "rows written" in text and "rejected: missing image" in text and str(rejected_path_for(out)) in text


def test_cli_jsonl_good_file(tmp_path, image_root):
    src, out = _good_jsonl(tmp_path), tmp_path / "out" / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "jsonl", str(src), "--image-root", str(image_root),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    _check_good_outputs(out, res.output)


_BAD_LINES = {
    "bad JSON": ('{"dataset": "ds", ', "invalid JSON"),
    "missing field": (json.dumps({k: v for k, v in good_row(5).items() if k not in ("sample_id", "bbox")}),
                      "missing field(s) bbox"),
    "wrong type": (json.dumps({**good_row(5), "frame": "5"}), "frame must be an integer"),
    "wrong K length": (json.dumps({**good_row(5), "K": [1.0] * 8}), "K must have 9 numbers"),
    "not an object": ("[1, 2, 3]", "expected a JSON object"),
    "unknown field": (json.dumps({**good_row(5), "colour": "red"}), "unknown field(s) colour"),
}


@pytest.mark.parametrize("case", sorted(_BAD_LINES))
def test_cli_jsonl_malformed_line_exits_2_and_writes_nothing(tmp_path, image_root, case):
    line, message = _BAD_LINES[case]
    src = _write_jsonl(tmp_path / "broken.jsonl", [good_row(1)], raw_lines=[line, json.dumps(good_row(6))])
    out = tmp_path / "out" / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "jsonl", str(src), "--image-root", str(image_root),
                                    "--out", str(out)])
    text = res.output + (res.stderr or "")
    assert res.exit_code == 2, text
    assert f"{src}:2:" in text and message in text and "Error:" in text
    assert not out.exists() and not rejected_path_for(out).exists() and not out.parent.exists()


def test_cli_jsonl_user_errors(tmp_path, image_root):
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(main, ["manifest", "jsonl", str(tmp_path / "none.jsonl"), "--image-root",
                                    str(image_root), "--out", str(out)])
    assert res.exit_code == 2 and "none.jsonl" in (res.output + (res.stderr or "")) and not out.exists()
    res = CliRunner().invoke(main, ["manifest", "jsonl", str(_good_jsonl(tmp_path)), "--image-root",
                                    str(tmp_path / "nodir"), "--out", str(out)])
    assert res.exit_code == 2 and "nodir" in (res.output + (res.stderr or "")) and not out.exists()


def test_console_script_end_to_end(tmp_path, image_root):
    exe = REPO / ".venv" / "bin" / "perspose-build"
    if not exe.is_file():
        exe = Path(sys.executable).with_name("perspose-build")
    if not exe.is_file():
        pytest.skip("perspose-build console script not installed")
    src, out = _good_jsonl(tmp_path), tmp_path / "m.parquet"
    p = subprocess.run([str(exe), "manifest", "jsonl", str(src), "--image-root", str(image_root), "--out",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    _check_good_outputs(out, p.stdout)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [good_row(1)], raw_lines=[_BAD_LINES["wrong K length"][0]])
    out2 = tmp_path / "m2.parquet"
    p = subprocess.run([str(exe), "manifest", "jsonl", str(bad), "--image-root", str(image_root), "--out",
                        str(out2)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("Error: ") and f"{bad}:2:" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out2.exists()
