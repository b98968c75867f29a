"""trainer.logging_utils.RunLogger: metrics.csv survives resumes, including a damaged one."""
from __future__ import annotations

import logging

import pytest

from pipeline.errors import InputError
from trainer.logging_utils import RunLogger


def test_rows_round_trip_and_truncate(tmp_path):
    a = RunLogger(tmp_path, use_tensorboard=False)
    for step in (10, 20, 30):
        a.log(step, {"train/total": step / 10, **({"val/mpjpe_mm": 99.5} if step == 20 else {})})
    a.close()
    b = RunLogger(tmp_path, use_tensorboard=False)
    assert b.rows == [{"step": 10, "train/total": 1.0}, {"step": 20, "train/total": 2.0, "val/mpjpe_mm": 99.5},
                      {"step": 30, "train/total": 3.0}]
    b.truncate_after(20)
    assert [r["step"] for r in b.rows] == [10, 20]


def test_damaged_metrics_csv_keeps_the_good_rows_and_warns(tmp_path, caplog):
    (tmp_path / "metrics.csv").write_bytes(
        b"step,train/total\n10,1.0\n20,abc\n,3.0\n30,3.0,extra\n\xff\xfe,1\n40,4.0\n50,")   # torn last line
    with caplog.at_level(logging.WARNING, logger="trainer.logging_utils"):
        r = RunLogger(tmp_path, use_tensorboard=False)
    assert r.rows == [{"step": 10, "train/total": 1.0}, {"step": 40, "train/total": 4.0}]   # "50," is torn
    assert "dropped 5 damaged row(s); kept 2" in caplog.text and "metrics.csv" in caplog.text
    r.truncate_after(45)
    r.close()
    assert (tmp_path / "metrics.csv").read_text() == "step,train/total\n10,1.0\n40,4.0\n"
    (tmp_path / "metrics.csv").write_text("step,train/total\n10,1.0\n30,3.0\n4")       # cut after one byte
    assert [x["step"] for x in RunLogger(tmp_path, use_tensorboard=False).rows] == [10, 30]


def test_unreadable_metrics_csv_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "metrics.csv").write_text("step\n1\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("pathlib.Path.read_bytes", refuse)
    with pytest.raises(InputError, match=r"metrics.csv: cannot read the run's metrics.csv \(Permission denied\)"):
        RunLogger(tmp_path, use_tensorboard=False)
