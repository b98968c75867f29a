"""Person boxes from a detector the user points to (``perspose-predict --detector-weights FILE.onnx``).

The detector runs in onnxruntime (the optional ``detect`` extra: ``pip install -e '.[detect]'``), so any
maintained detector exported to ONNX serves, with the weights the user has, once it is wrapped to the interface
below before export (a few lines: torchvision's detection models take a list of (3, H, W) images and return
boxes, labels, scores; COCO person label 1 there, 0 in YOLO-family exports). Outputs are matched by name when
they are named ``boxes``, ``scores``, ``labels``. Weights are never downloaded. (Only a random-weight detector of
this interface was run here: torchvision cannot be installed beside this project's torch.)

Interface: one input, a float32 RGB image (1, 3, H, W) in [0, 1]; outputs ``boxes`` (N, 4) as x1 y1 x2 y2 in the
input's pixels, ``scores`` (N,), ``labels`` (N,) integers (by name when the model names them so, else in this
order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputError

__all__ = ["load_detector", "detect_people"]


def load_detector(path):
    """An onnxruntime session of the detector at ``path``; InputError (one line) when onnxruntime is missing,
    the file is not an ONNX model, or its inputs and outputs are not the interface above."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("--detector-weights needs onnxruntime: pip install -e '.[detect]'") from None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: detector weights not found")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise InputError(f"{path}: not a loadable ONNX detector ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) < 3:
        raise InputError(f"{path}: a detector needs one (1, 3, H, W) image input and boxes, scores, labels "
                         f"outputs; this one has inputs {[i.name for i in inputs]}, outputs "
                         f"{[o.name for o in outputs]}")
    return session


def _outputs(session, result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    by_name = dict(zip(names, result))
    if {"boxes", "scores", "labels"} <= set(by_name):
        return by_name["boxes"], by_name["scores"], by_name["labels"]
    return result[0], result[1], result[2]


def detect_people(session, image: np.ndarray, person_label: int = 1, min_score: float = 0.5) -> list[list[float]]:
    """Person boxes [x, y, w, h] (the image's pixels, pixel centres at integers) with score >= min_score, best
    first, for an (H, W, 3) uint8 RGB image."""
    x = (np.ascontiguousarray(image.transpose(2, 0, 1))[None].astype(np.float32)) / 255.0
    boxes, scores, labels = _outputs(session, session.run(None, {session.get_inputs()[0].name: x}))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise InputError(f"the detector returned {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    keep = [i for i in np.argsort(-scores, kind="stable")
            if labels[i] == person_label and scores[i] >= min_score and np.isfinite(boxes[i]).all()]
    # x1 y1 x2 y2 in the pixel-edge convention of detectors -> x y w h of the box (edges at -0.5 .. W - 0.5)
    return [[float(boxes[i, 0] - 0.5), float(boxes[i, 1] - 0.5), float(boxes[i, 2] - boxes[i, 0]),
             float(boxes[i, 3] - boxes[i, 1])] for i in keep]
