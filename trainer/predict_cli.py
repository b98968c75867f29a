"""``perspose-predict``: 3D joints for your own photos, in the camera that took them.

    perspose-predict photos/*.jpg --ckpt runs/demo/best.pt --boxes detections.json --out predictions/
        [--fov DEG | --focal-px F | --K K.json] [--skeleton smpl24] [--batch-size 32] [--device auto]

``--boxes``: COCO-style detections, a JSON list of ``{"image": NAME, "bbox": [x, y, w, h], "score": s}`` in the
pixels of the image as it is meant to be seen (EXIF orientation applied); ``image`` is the file name or its path;
for a video (.mp4, .avi, .mov, .mkv, .webm) each detection also names its ``frame`` (0-based). Videos get per-frame
rows and an annotated ``videos/NAME.mp4``.
``--K``: a JSON 3x3 matrix for every image, or ``{NAME: 3x3}`` per image. Writes ``predictions.jsonl`` and
``predictions.parquet`` (one row per person: file, box, K and its source, joints in the original camera in
metres, their projection in pixels, skeleton) and ``overlays/NAME.png`` (2D skeleton and a small 3D view).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import cv2
import numpy as np

from pipeline.errors import InputError, InputErrorCommand

log = logging.getLogger(__name__)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def read_boxes(path: Path, min_score: float) -> dict[tuple[str, int], list[list[float]]]:
    """{(image name, frame): [box, ...]} from a detections JSON (frame 0 for photos); InputError naming the file
    and the entry otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable detections JSON ({e})") from None
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON list of {{image, bbox, score}} detections")
    out: dict[str, list] = {}
    for i, d in enumerate(doc):
        box = d.get("bbox") if isinstance(d, dict) else None
        if not (isinstance(d, dict) and isinstance(d.get("image"), str) and isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) for v in box) and isinstance(d.get("frame", 0), int)
                and isinstance(d.get("score", 1.0), (int, float))):
            raise InputError(f"{path}: detection {i} needs 'image' (a name), 'bbox' [x, y, w, h], a numeric 'score' "
                             f"(optional) and for videos an integer 'frame', got {d!r}")
        if float(d.get("score", 1.0)) >= min_score:
            out.setdefault((Path(d["image"]).name, int(d.get("frame", 0))), []).append([float(v) for v in box])
    return out


def read_K(path: Path | None) -> dict | np.ndarray | None:
    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable K JSON ({e})") from None

    def mat(v, where):
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (3, 3) or not np.isfinite(a).all() or a[0, 0] <= 0 or a[1, 1] <= 0:
            raise InputError(f"{path}: {where} must be a 3x3 matrix with positive focal lengths")
        return a
    if isinstance(doc, dict):
        return {Path(k).name: mat(v, k) for k, v in doc.items()}
    return mat(doc, "K")


def _overlay(image: np.ndarray, people: list[dict], skeleton: str, path: Path) -> None:
    """The image with each person's 2D skeleton, and a small 3D view of the joints (x right, z forward)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.fsutil import atomic_path
    from pipeline.skeleton import get_skeleton
    sk = get_skeleton(skeleton)
    fig = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.0, 0.0, 0.62, 1.0])
    ax.imshow(image)
    ax.axis("off")
    ax3 = fig.add_axes([0.65, 0.1, 0.33, 0.8], projection="3d")
    for p in people:
        uv, P = np.asarray(p["joints_2d"]), np.asarray(p["joints_cam"])
        for j, parent in enumerate(sk.parents):
            if parent >= 0:
                ax.plot(uv[[j, parent], 0], uv[[j, parent], 1], "-", lw=1.5, color="lime")
                ax3.plot(P[[j, parent], 0], P[[j, parent], 2], -P[[j, parent], 1], "-", color="tab:blue")
    ax3.set_xlabel("x (m)")
    ax3.set_ylabel("z (m)")
    ax3.set_zlabel("-y (m)")
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _draw(frame: np.ndarray, people: list[dict], skeleton: str) -> np.ndarray:
    """A video frame (RGB) with each person's 2D skeleton drawn (cv2: fast enough per frame)."""
    from pipeline.skeleton import get_skeleton
    out = frame.copy()
    for p in people:
        uv = np.asarray(p["joints_2d"])
        for j, parent in enumerate(get_skeleton(skeleton).parents):
            if parent >= 0 and np.isfinite(uv[[j, parent]]).all():
                a, b = (tuple(int(round(v)) for v in uv[k]) for k in (j, parent))
                cv2.line(out, a, b, (0, 255, 0), 2, cv2.LINE_AA)
    return out


def iter_frames(path: Path):
    """(frame index, RGB frame) of a video; InputError when it cannot be opened or holds no frame."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: not a readable video")
    n = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield n, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise InputError(f"{path}: not a readable video (no frame)")


@click.command(cls=InputErrorCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path), help="Checkpoint (.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--boxes", type=click.Path(path_type=Path), default=None, help="COCO-style detections JSON.")
@click.option("--min-score", default=0.5, show_default=True, help="Detections below this score are ignored.")
@click.option("--detector-weights", type=click.Path(path_type=Path), default=None,
              help="An ONNX person detector (onnxruntime; trainer/detect.py has the interface), used without --boxes.")
@click.option("--detector-person-label", default=1, show_default=True,
              help="The detector's person class (torchvision COCO models: 1; YOLO-style: 0).")
@click.option("--K", "k_path", type=click.Path(path_type=Path), default=None, help="JSON 3x3 K, or {image: 3x3}.")
@click.option("--focal-px", type=float, default=None, help="Focal length in pixels (square pixels).")
@click.option("--fov", "fov_deg", type=float, default=None, help="Horizontal field of view in degrees.")
@click.option("--skeleton", default=None, help="Which of the model's skeletons to output (default: its first 3D one).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overlays/--no-overlays", default=True, show_default=True, help="Write overlays/NAME.png.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def main(images, ckpt_path, out_dir, boxes, min_score, detector_weights, detector_person_label, k_path, focal_px,
         fov_deg, skeleton, batch_size, device, overlays, progress):
    """Predict 3D joints (metres, in the original camera) for the people in IMAGES."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from tqdm import tqdm

    from pipeline.fsutil import atomic_path, atomic_write_text
    from pipeline.geometry import project
    from pipeline.report import print_table
    from pipeline.shard import Rejected
    from pipeline.skeleton import get_skeleton

    from .eval_cli import build_from_checkpoint, load_checkpoint
    from .evaluate import model_predict_fn
    from .predict import intrinsics_for, load_oriented, person_record, predict_people

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if boxes is None and detector_weights is None:
        raise InputError("no boxes: give --boxes FILE (COCO-style detections: image, bbox [x, y, w, h], score) or "
                         "--detector-weights DETECTOR.onnx")
    if focal_px is not None and focal_px <= 0 or fov_deg is not None and not 0 < fov_deg < 180:
        raise InputError("--focal-px must be > 0 and --fov in (0, 180) degrees")
    dets, Ks = (read_boxes(boxes, min_score) if boxes is not None else {}), read_K(k_path)
    detector = None
    if boxes is None:
        from .detect import detect_people, load_detector
        session = load_detector(detector_weights)

        def detector(image, path, frame):  # fills dets for this image / frame
            dets[(path.name, frame)] = detect_people(session, image, detector_person_label, min_score)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = build_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path, device)
    skeleton = skeleton or next((s for s in cfg.skeletons if get_skeleton(s).has_3d), None)
    if skeleton not in cfg.skeletons or not get_skeleton(skeleton).has_3d:
        raise InputError(f"--skeleton {skeleton}: the model predicts {', '.join(cfg.skeletons)} (3D ones only)")
    predict_fn = model_predict_fn(model, tuple(cfg.skeletons), device, flip_test=True)

    people, notes, files_ok, t_model = [], [], 0, 0.0

    pending: list[dict] = []   # images / frames waiting for the model: people of many images share a batch

    def flush():
        nonlocal t_model
        recs = [r for item in pending for _, _, r in item["recs"]]
        t0 = time.perf_counter()
        preds = iter(predict_people(predict_fn, recs, batch_size) if recs else [])
        t_model += time.perf_counter() - t0
        for item in pending:       # in the order they came: video frames are written in order
            K = item["K"]
            found = [{"file": str(item["path"]), "frame": item["frame"], "person": i, "box": box, "K": K.tolist(),
                      "K_source": item["source"], "skeleton": skeleton, "joints_cam": p["joints_cam"].tolist(),
                      "joints_2d": project(p["joints_cam"], K).tolist()}
                     for (i, box, _), p in zip(item["recs"], preds)]
            people.extend(found)
            item["sink"](found)
        pending.clear()

    def people_in(image, path, frame, K, source, sink):
        """Queue one image or frame; ``sink(found)`` gets its predicted people (rows of predictions.jsonl)."""
        if detector is not None:
            detector(image, path, frame)
        recs = []
        for i, box in enumerate(dets.get((path.name, frame), [])):
            try:
                recs.append((i, box, person_record(image, K, box, cfg.crop_size, skeleton, f"{path.name}#{frame}#{i}")))
            except Rejected as e:
                notes.append(f"{path}: frame {frame}: box {i} {box}: {e}")
        pending.append({"recs": recs, "path": path, "frame": frame, "K": K, "source": source, "sink": sink})
        if sum(len(item["recs"]) for item in pending) >= batch_size or len(pending) >= batch_size:
            flush()

    for path in tqdm(images, desc="predict", unit="file", disable=not progress):
        K_given = Ks.get(path.name) if isinstance(Ks, dict) else Ks
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                notes += _predict_video(path, out_dir, people_in, flush, K_given, focal_px, fov_deg, skeleton,
                                        intrinsics_for)
                files_ok += 1
                continue
            image, exif = load_oriented(path)
        except InputError as e:
            notes.append(str(e))
            continue
        H, W = image.shape[:2]
        K, source = intrinsics_for(W, H, K_given, focal_px, fov_deg, exif)
        if exif.error:
            notes.append(f"{path}: unreadable EXIF ({exif.error}); K from {source}")
        files_ok += 1
        if detector is None and (path.name, 0) not in dets:
            notes.append(f"{path}: no box in {boxes.name}")
            continue

        def overlay(found, image=image, path=path):
            if overlays and found:
                (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
                _overlay(image, found, skeleton, out_dir / "overlays" / f"{path.stem}.png")
        people_in(image, path, 0, K, source, overlay)
    flush()

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in people))
    flat = pa.list_(pa.float64())
    table = pa.table({"file": [p["file"] for p in people], "frame": pa.array([p["frame"] for p in people], pa.int32()),
                      "person": pa.array([p["person"] for p in people], pa.int32()),
                      "box": pa.array([p["box"] for p in people], flat),
                      "K": pa.array([np.ravel(p["K"]).tolist() for p in people], flat),
                      "K_source": [p["K_source"] for p in people], "skeleton": [p["skeleton"] for p in people],
                      "joints_cam": pa.array([np.ravel(p["joints_cam"]).tolist() for p in people], flat),
                      "joints_2d": pa.array([np.ravel(p["joints_2d"]).tolist() for p in people], flat)})
    with atomic_path(out_dir / "predictions.parquet", ".parquet") as tmp:
        pq.write_table(table, tmp)
    for n in notes:
        click.echo(f"note: {n}")
    ms = 1000 * t_model / max(len(people), 1)
    print_table(["", "value"], [("files", len(images)), ("files read", files_ok), ("people", len(people)),
                                ("ms per person (model)", round(ms, 2)), ("notes", len(notes))],
                title=f"perspose-predict: {out_dir}")


def _predict_video(path: Path, out_dir: Path, people_in, flush, K_given, focal_px, fov_deg, skeleton,
                   intrinsics_for) -> list[str]:
    """Per-frame rows (through ``people_in``'s queue) and ``videos/NAME.mp4`` with the skeletons drawn (written to a
    temporary name, then renamed); returns notes."""
    import os
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    final = out_dir / "videos" / f"{path.stem}.mp4"
    tmp = final.with_name(f".{final.stem}.tmp.mp4")
    writer, n_people = None, 0

    def write(found, image):
        nonlocal n_people
        n_people += len(found)
        writer.write(cv2.cvtColor(_draw(image, found, skeleton), cv2.COLOR_RGB2BGR))
    try:
        for frame, image in iter_frames(path):
            H, W = image.shape[:2]
            K, source = intrinsics_for(W, H, K_given, focal_px, fov_deg, None)
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (W, H))
            people_in(image, path, frame, K, source, lambda found, image=image: write(found, image))
        flush()                    # every frame of this video written before the file is closed
    except BaseException:
        if writer is not None:
            try:
                flush()            # the frames read so far keep their rows; the half video is dropped
            finally:
                writer.release()
        tmp.unlink(missing_ok=True)       # nothing half-written
        raise
    if writer is not None:
        writer.release()
    os.replace(tmp, final)
    return [] if n_people else [f"{path}: no person predicted in any frame"]


if __name__ == "__main__":
    main()
