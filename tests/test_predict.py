"""perspose-predict (issue 13, images with boxes): the intrinsics' order of precedence, EXIF orientation and
focal length, the chain's consistency on a real frame with its known K, outputs and bad input."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from _fixtures import require_real
from pipeline import geometry as g
from trainer.predict import DEFAULT_FOV_DEG, ExifInfo, apply_orientation, intrinsics_for, load_oriented
from trainer.predict_cli import main as predict_main
from test_evaluate import _ckpt


def _jpeg(path, w=640, h=480, orientation=None, f35=None, focal_mm=None):
    """A JPEG stored w x h with a red top-left corner, and the EXIF tags asked for."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:10, :20] = (255, 0, 0)
    im, exif = Image.fromarray(a), Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    if f35 is not None:
        sub[0xA405] = f35
    if focal_mm is not None:
        sub[0x920A] = focal_mm
    im.save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("orientation, oriented_wh", [(None, (640, 480)), (1, (640, 480)), (6, (480, 640)),
                                                      (8, (480, 640))])
def test_exif_focal_and_orientation_give_the_exact_K(tmp_path, orientation, oriented_wh):
    p = _jpeg(tmp_path / "a.jpg", orientation=orientation, f35=28)
    image, exif = load_oriented(p)
    W, H = oriented_wh
    assert image.shape[:2] == (H, W) and exif.focal_35mm == 28
    K, source = intrinsics_for(W, H, exif=exif)
    f = 28 / 36 * max(W, H)                                   # the long side of the oriented image: 640 always
    np.testing.assert_array_equal(K, [[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    assert source == "EXIF FocalLengthIn35mmFilm"
    red = np.argwhere((image[..., 0] > 200) & (image[..., 1] < 50))
    corner = {None: (0, 0), 1: (0, 0), 6: (0, W - 1), 8: (H - 1, 0)}[orientation]   # where the stored (0, 0) goes
    assert np.min(np.abs(red - corner).sum(axis=1)) <= 1


def test_no_exif_and_the_order_of_precedence(tmp_path):
    image, exif = load_oriented(_jpeg(tmp_path / "plain.jpg"))
    assert exif == ExifInfo()
    K, source = intrinsics_for(640, 480, exif=exif)
    assert K[0, 0] == pytest.approx(320 / math.tan(math.radians(DEFAULT_FOV_DEG / 2))) and "default" in source
    e = ExifInfo(focal_35mm=50.0, focal_mm=6.0)
    given = np.array([[700.0, 0, 300], [0, 710, 250], [0, 0, 1]])
    assert intrinsics_for(640, 480, given, 900.0, 60.0, e)[1] == "--K"
    assert intrinsics_for(640, 480, None, 900.0, 60.0, e)[0][0, 0] == 900.0
    assert intrinsics_for(640, 480, None, None, 90.0, e)[0][0, 0] == pytest.approx(320.0)
    assert intrinsics_for(640, 480, None, None, None, e)[0][0, 0] == pytest.approx(50 / 36 * 640)
    only_mm = intrinsics_for(640, 480, None, None, None, ExifInfo(focal_mm=6.0))
    assert "without a sensor width" in only_mm[1]


def test_orientation_tags_are_the_eight_exif_transforms():
    a = np.arange(6).reshape(2, 3)
    assert apply_orientation(a, 6).tolist() == np.rot90(a, -1).tolist()    # 90 deg clockwise
    assert apply_orientation(a, 8).tolist() == np.rot90(a, 1).tolist()
    assert apply_orientation(a, 3).tolist() == a[::-1, ::-1].tolist()
    assert apply_orientation(a, 5).tolist() == a.T.tolist() and apply_orientation(a, 2).tolist() == a[:, ::-1].tolist()
    assert apply_orientation(a, 7).tolist() == a[::-1, ::-1].T.tolist()


def _run(args):
    return CliRunner().invoke(predict_main, [str(a) for a in args])


def test_real_frame_joints_reproject_onto_the_models_own_2d_output(tmp_path):
    """A real Human3.6M frame with its known K and the labelled box through the demo model (random weights: a
    trained checkpoint cannot be made inside the suite, and the weights do not enter this): the joints in the
    original camera, projected with K, land on the model's uv taken back through the crop homography."""
    from pipeline.skeleton import get_skeleton
    from trainer.eval_cli import build_from_checkpoint, load_checkpoint
    from trainer.evaluate import model_predict_fn
    from trainer.predict import person_record, predict_people
    real = require_real("h36m")
    s = json.loads((real / "labels.json").read_text())["samples"][0]
    image, _ = load_oriented(real / s["image"])
    K = np.asarray(s["K"], np.float64)
    from trainer.checkpoint import save_checkpoint
    from trainer.config import load_config
    from trainer.configtools import config_to_dict
    from trainer.model import build_model
    demo = load_config("demo").model              # the demo model (its weights do not enter the consistency)
    __import__("torch").manual_seed(0)
    ck = save_checkpoint(tmp_path / "demo.pt", {"model": build_model(demo).state_dict(),
                                                "config": {"model": config_to_dict(demo)}})
    model, cfg = build_from_checkpoint(load_checkpoint(ck), ck, "cpu")
    rec = person_record(image, K, s["bbox_square_xywh"], cfg.crop_size, "smpl24", "x")
    (p,) = predict_people(model_predict_fn(model, tuple(cfg.skeletons), "cpu"), [rec], 4)
    off = (rec["meta"]["store_size"] - cfg.crop_size) / 2            # S crop -> stored crop -> original pixels
    uv_orig = g.apply_homography(np.linalg.inv(rec["H"]), p["uv_crop"] + off)
    err = np.linalg.norm(g.project(p["joints_cam"], K) - uv_orig, axis=1)
    assert err.max() <= 0.5 and p["joints_cam"].shape == (get_skeleton("smpl24").num_joints, 3), err.max()
    assert np.all(p["joints_cam"][:, 2] > 0)


def test_cli_writes_rows_overlays_and_reports_bad_input(tmp_path):
    ck = _ckpt(tmp_path)
    a = _jpeg(tmp_path / "a.jpg", orientation=6, f35=28)
    b = _jpeg(tmp_path / "b.jpg")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image": "a.jpg", "bbox": [100, 150, 200, 300], "score": 0.9},
                                 {"image": "a.jpg", "bbox": [5000, 5000, 10, 10], "score": 0.9},
                                 {"image": "b.jpg", "bbox": [200, 100, 150, 250], "score": 0.95},
                                 {"image": "b.jpg", "bbox": [0, 0, 50, 50], "score": 0.1}]))
    out = tmp_path / "out"
    r = _run([a, b, tmp_path / "c.jpg", "--ckpt", ck, "--boxes", boxes, "--out", out, "--device", "cpu",
              "--no-progress", "--fov", "70"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {row["file"].split("/")[-1] for row in rows} == {"a.jpg", "b.jpg"}
    assert all(row["K_source"] == "--fov" and len(row["joints_cam"]) == 24 for row in rows)
    ka = next(row["K"] for row in rows if row["file"].endswith("a.jpg"))
    assert ka[0][2] == (480 - 1) / 2                                   # the oriented (portrait) image's centre
    assert pq.read_table(out / "predictions.parquet").num_rows == 2
    assert (out / "overlays" / "a.png").is_file() and (out / "overlays" / "b.png").is_file()
    assert "c.jpg: not a readable image" in r.output and "box 1" in r.output and "outside the image" in r.output
    (tmp_path / "s.json").write_text(json.dumps([{"image": "a.jpg", "bbox": [1, 2, 3, 4], "score": "high"}]))
    for args, needle in (([a, "--ckpt", ck, "--out", out], "no boxes"),
                         ([a, "--ckpt", ck, "--out", out, "--boxes", tmp_path / "s.json"], "numeric 'score'"),
                         ([a, "--ckpt", ck, "--out", out, "--boxes", tmp_path / "c.jpg"], "detections JSON"),
                         ([a, "--ckpt", tmp_path / "c.jpg", "--out", out, "--boxes", boxes], "checkpoint")):
        r = _run(args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.output


def test_video_gives_per_frame_rows_and_an_annotated_mp4(tmp_path):
    ck = _ckpt(tmp_path)
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image": "clip.mp4", "frame": f, "bbox": [100, 40, 80, 160], "score": 1.0}
                                 for f in (0, 2)]))
    out = tmp_path / "out"
    r = _run([video, "--ckpt", ck, "--boxes", boxes, "--out", out, "--device", "cpu", "--no-progress",
              "--focal-px", "300"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["frame"] for row in rows] == [0, 2] and all(row["K_source"] == "--focal-px" for row in rows)
    assert rows[0]["K"] == [[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]]
    cap = cv2.VideoCapture(str(out / "videos" / "clip.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 3 and not list((out / "videos").glob(".*tmp*"))


def _random_detector(path):
    """A detector with random weights and the ONNX interface of trainer/detect.py: boxes (5, 4) x1 y1 x2 y2 inside
    the image from a random conv net, fixed scores and labels (so the test knows which boxes are people)."""
    import torch
    onnx = pytest.importorskip("onnx", reason="onnx exports the random detector (scripts/test.sh installs it)")
    del onnx

    class Det(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.Linear(8, 20)

        def forward(self, x):
            o = self.head(self.conv(x).mean((2, 3))).reshape(5, 4)
            h, w = x.shape[2], x.shape[3]
            size = torch.stack([torch.ones(()) * w, torch.ones(()) * h]).to(x.dtype)
            xy = torch.sigmoid(o[:, :2]) * 0.5 * size
            wh = (0.2 + 0.2 * torch.sigmoid(o[:, 2:])) * size
            scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3]) + 0 * o[:, 0]
            return torch.cat([xy, xy + wh], 1), scores, torch.tensor([1, 1, 0, 1, 1])
    torch.manual_seed(0)
    torch.onnx.export(Det().eval(), (torch.rand(1, 3, 240, 320),), str(path), input_names=["images"],
                      output_names=["boxes", "scores", "labels"], dynamic_axes={"images": {2: "h", 3: "w"}},
                      dynamo=False)
    return path


@pytest.mark.filterwarnings("ignore")
def test_a_detector_with_random_weights_gives_the_boxes_its_structure_says(tmp_path):
    pytest.importorskip("onnxruntime", reason="the detect extra (scripts/test.sh installs it)")
    from trainer.detect import detect_people, load_detector
    det = _random_detector(tmp_path / "det.onnx")
    image, _ = load_oriented(_jpeg(tmp_path / "a.jpg"))
    session = load_detector(det)
    found = detect_people(session, image, person_label=1, min_score=0.5)
    assert len(found) == 3 and all(len(b) == 4 and b[2] > 0 and b[3] > 0 for b in found)    # labels 1, score >= 0.5
    raw, _, _ = session.run(None, {"images": image.transpose(2, 0, 1)[None].astype(np.float32) / 255})
    for b, (x1, y1, x2, y2) in zip(found, raw[[0, 1, 3]]):   # pixel edges -> our pixel centres: -0.5, sizes kept
        np.testing.assert_allclose(b, [x1 - 0.5, y1 - 0.5, x2 - x1, y2 - y1], rtol=0, atol=1e-4)
    assert len(detect_people(load_detector(det), image, person_label=0, min_score=0.5)) == 1
    ck = _ckpt(tmp_path)
    out = tmp_path / "out"
    r = _run([tmp_path / "a.jpg", "--ckpt", ck, "--detector-weights", det, "--out", out, "--device", "cpu",
              "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["box"] for row in rows] == found and all(len(row["joints_cam"]) == 24 for row in rows)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    r = _run([tmp_path / "a.jpg", "--ckpt", ck, "--detector-weights", tmp_path / "bad.onnx", "--out", out])
    assert r.exit_code == 2 and "not a loadable ONNX detector" in r.output


def test_a_corrupt_exif_block_is_a_note_and_the_default_K(tmp_path):
    ok, enc = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    seg = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40          # an IFD that runs off the end
    data = enc.tobytes()
    (tmp_path / "bad.jpg").write_bytes(data[:2] + b"\xff\xe1" + (len(seg) + 2).to_bytes(2, "big") + seg + data[2:])
    image, exif = load_oriented(tmp_path / "bad.jpg")
    assert image.shape == (48, 64, 3) and "Corrupt EXIF" in exif.error
    assert "default" in intrinsics_for(64, 48, exif=exif)[1]
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps([{"image": "bad.jpg", "bbox": [10, 5, 20, 30]}]))
    r = _run([tmp_path / "bad.jpg", "--ckpt", _ckpt(tmp_path), "--boxes", boxes, "--out", tmp_path / "o",
              "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0 and "unreadable EXIF" in r.output, r.output


def test_people_of_many_images_share_a_batch(tmp_path, monkeypatch):
    import trainer.predict as P
    calls, real = [], P.predict_people

    def counting(fn, records, batch_size):
        calls.append(len(records))
        return real(fn, records, batch_size)
    monkeypatch.setattr(P, "predict_people", counting)
    names = [_jpeg(tmp_path / f"{k}.jpg").name for k in range(3)]
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps([{"image": n, "bbox": [100, 100, 120, 200]} for n in names]))
    r = _run([*(tmp_path / n for n in names), "--ckpt", _ckpt(tmp_path), "--boxes", boxes, "--out", tmp_path / "o",
              "--device", "cpu", "--no-progress", "--batch-size", "8", "--no-overlays"])
    assert r.exit_code == 0, r.output
    assert calls == [3]                                  # one model pass for the three photos' people
    assert len((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()) == 3
