"""``synth``: the toolkit's built-in dataset. Articulated SMPL-24 people, ray-cast exactly, with exact labels.

Each image is a pure function of ``(seed, split, index)`` and the :class:`SynthConfig`: its generator is seeded
from ``SeedSequence([seed, split code, index])``, so the output bytes do not depend on how many processes made
them, and train/val/test draw different streams. Labels are exact by construction:

* ``joints_cam``: the 3D joints that were rendered (rounded to float32 *before* rendering, so the stored value is
  the rendered one), metres, OpenCV camera frame;
* ``joints_2d``: their pinhole projections ``(fx X/Z + cx, fy Y/Z + cy)``, pixel centres at integers;
* ``joints_vis``: 1 when the projection lies inside the image ``[-0.5, W-0.5] x [-0.5, H-0.5]``, else 0
  (self-occlusion does not clear it; ``meta.occluded`` flags joints hidden behind another body part);
* ``bbox``: the exact tight box of the body volumes' silhouette, in continuous pixel coordinates and *not*
  clipped to the image (people may stand partly outside the frame);
* ``K`` exact (fx and fy differ slightly, principal point near the centre), ``dist`` empty;
* ``smpl``: the person as the synthetic SMPL-format body model (pipeline/synth_model.py, the ``synthetic`` body
  model of perspose-eval): betas, pose (axis-angle, root in the camera frame), transl, twist. Its mesh is the
  rendered surface: ``SMPL(betas, pose, transl)`` vertices lie on the drawn capsules and ellipsoids.

Frames are independent images; ``sequence`` (``seq{k:03d}``) only groups ``frames_per_sequence`` of them.
"""
from __future__ import annotations

import json
import os
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from .codec import encode_jpeg
from .errors import InputError
from .geometry import intrinsics, project
from .manifest import make_sample_id
from .synth_body import (add_twist_labels, body_primitives, contains, forward_kinematics, root_rotation, sample_body,
                         sample_pose, smpl_labels)
from .synth_render import Capsule, Ellipsoid, body_extent, finish_image, render_background, render_primitives

log = logging.getLogger(__name__)

__all__ = ["SynthConfig", "Camera", "Person", "SPLITS", "DEFAULT_IMAGE_SIZES", "SYNTH_VERSION", "image_rng",
           "sample_camera", "sample_person", "render_image", "synth_sample", "write_chunk", "fov_horizontal",
           "generate", "manifest_rows", "sample_location"]

SYNTH_VERSION = "3"  # 2: clothing, face, shoes, left/right cues, occluders, hemisphere shading; 3: bodies of the
                     # SMPL-format synthetic body model, with SMPL labels (betas, pose, transl, twist)
SKELETON = "smpl24"
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_IMAGE_SIZES = ((640, 480), (480, 640), (800, 600), (600, 800), (512, 512), (960, 540), (540, 960),
                       (400, 300), (300, 400))


@dataclass(frozen=True)
class SynthConfig:
    fov_range: tuple[float, float] = (30.0, 120.0)       # horizontal field of view, degrees, uniform
    image_size: tuple[int, int] | None = None             # (W, H); None: one of DEFAULT_IMAGE_SIZES per image
    distance_range: tuple[float, float] = (1.5, 12.0)     # pelvis depth Z, metres, log-uniform
    height_range: tuple[float, float] = (1.5, 2.0)        # standing height, metres, uniform
    second_person_prob: float = 0.2
    occluder_prob: float = 0.2                            # a pole or a ball in front of the first person
    frames_per_sequence: int = 50
    jpeg_quality: int = 95
    min_visible_joints: int = 12
    min_box_side: float = 16.0                            # pixels, the box's larger side
    min_box_inside: float = 0.4                           # fraction of the box area inside the image (1: whole)
    image_sizes: tuple = field(default=DEFAULT_IMAGE_SIZES)


@dataclass(frozen=True)
class Camera:
    K: np.ndarray
    width: int
    height: int


@dataclass(frozen=True)
class Person:
    joints: np.ndarray        # (24, 3) float64 values that are exactly representable in float32
    prims: list
    bbox: np.ndarray          # x, y, w, h (continuous pixels, unclipped)
    height: float
    smpl: dict | None = None  # SMPL-format labels of the synthetic body model (synth_body.smpl_labels)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


def fov_horizontal(K: np.ndarray, width: int) -> float:
    """Horizontal FOV in degrees, defined by the image's full width: 2 atan(W / (2 fx))."""
    return float(np.degrees(2 * np.arctan(width / (2 * K[0, 0]))))


def sample_camera(rng: np.random.Generator, cfg: SynthConfig) -> Camera:
    if cfg.image_size is not None:
        width, height = cfg.image_size
    else:
        width, height = cfg.image_sizes[int(rng.integers(len(cfg.image_sizes)))]
    fov = np.radians(rng.uniform(*cfg.fov_range))
    fx = (width / 2) / np.tan(fov / 2)
    fy = fx * rng.uniform(0.98, 1.02)                    # slightly non-square pixels
    cx = (width - 1) / 2 + rng.uniform(-0.03, 0.03) * width
    cy = (height - 1) / 2 + rng.uniform(-0.03, 0.03) * height
    return Camera(intrinsics(fx, fy, cx, cy), int(width), int(height))


def _in_image(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    return (uv[:, 0] >= -0.5) & (uv[:, 0] <= width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= height - 0.5)


def _box_overlap_fraction(bbox, width, height) -> float:
    x, y, w, h = bbox
    iw = max(0.0, min(x + w, width - 0.5) - max(x, -0.5))
    ih = max(0.0, min(y + h, height - 0.5) - max(y, -0.5))
    return iw * ih / (w * h)


def sample_person(rng: np.random.Generator, cam: Camera, cfg: SynthConfig, part_base: int = 1,
                  avoid: tuple = (), max_tries: int = 200) -> Person | None:
    """A posed person anywhere in the frame (edges and corners included): the pelvis' pixel is uniform over the
    image grown by 10 % per side, its depth log-uniform in ``distance_range``. Placements with too few joints in
    the image, less than ``min_box_inside`` of the box inside it, a box smaller than ``min_box_side``, a body part closer than
    0.3 m, or within 1 m (floor plane) of a pelvis in ``avoid`` are redrawn."""
    K, W, H = cam.K, cam.width, cam.height
    lo, hi = np.log(cfg.distance_range[0]), np.log(cfg.distance_range[1])
    for _ in range(max_tries):
        body = sample_body(rng, cfg.height_range)
        local = sample_pose(rng)
        root_rot = root_rotation(rng)
        z = np.exp(rng.uniform(lo, hi))
        u, v = rng.uniform(-0.1 * W, 1.1 * W), rng.uniform(-0.1 * H, 1.1 * H)
        root = z * np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
        if any(np.hypot(*(root - a)[[0, 2]]) < 1.0 for a in avoid):
            continue
        joints, G = forward_kinematics(body.offsets, local, root_rot, root)
        joints = joints.astype(np.float32).astype(np.float64)  # render exactly what is stored
        if joints[:, 2].min() < 0.3:
            continue
        prims = body_primitives(body, joints, G, part_base)
        ext = body_extent(prims, K)
        if ext is None:
            continue
        bbox = np.array([ext[0], ext[2], ext[1] - ext[0], ext[3] - ext[2]])
        uv = project(joints, K)
        if (max(bbox[2], bbox[3]) < cfg.min_box_side or _in_image(uv, W, H).sum() < cfg.min_visible_joints
                or _box_overlap_fraction(bbox, W, H) < cfg.min_box_inside - 1e-9):
            continue
        return Person(joints, prims, bbox, body.height, smpl_labels(body, local, root_rot, root))
    return None


OCCLUDER_PART = 255  # part-map id of a foreground occluder (people use 1..63 and 64..127)


def sample_occluder(rng: np.random.Generator, cam: Camera, person: Person):
    """A vertical pole (capsule) or a ball (sphere) between the camera and ``person``, at 50-90 % of the
    pelvis depth, over a random point of the person's box, at most ~30 % of the box wide; None if it would
    reach behind the camera. Joints it hides are flagged in ``meta.occluded``; the labels are unchanged."""
    K = cam.K
    x, y, w, h = person.bbox
    z = float(person.joints[0, 2]) * rng.uniform(0.5, 0.9)
    u, v = x + rng.uniform(0.1, 0.9) * w, y + rng.uniform(0.1, 0.9) * h
    px_m = z / K[0, 0]                                  # metres per pixel at the occluder's depth
    color = rng.integers(20, 236, 3).astype(float)

    def point(uu, vv):
        return z * np.array([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], 1.0])
    if rng.random() < 0.5:
        r = rng.uniform(0.06, 0.15) * w * px_m
        occ = Capsule(point(u, -0.2 * cam.height), point(u + rng.uniform(-0.2, 0.2) * w, 1.2 * cam.height), r,
                      color, OCCLUDER_PART)
    else:
        r = rng.uniform(0.12, 0.3) * max(w, h) * px_m
        occ = Ellipsoid(point(u, v), np.eye(3), np.full(3, r), color, OCCLUDER_PART)
    return occ if z - r > 0.1 and body_extent([occ], K) is not None else None


def _occluded(person: Person, uv: np.ndarray, inside: np.ndarray, part_map: np.ndarray) -> list[int]:
    """1 for an in-image joint whose pixel shows a part that does not contain the joint (hidden behind it)."""
    owners = np.stack([contains(p, person.joints) for p in person.prims], axis=1)        # (24, parts)
    ids = np.array([p.part for p in person.prims])
    px = np.clip(np.floor(uv + 0.5).astype(int), 0, [part_map.shape[1] - 1, part_map.shape[0] - 1])
    shown = part_map[px[:, 1], px[:, 0]]
    visible = (owners & (ids[None, :] == shown[:, None])).any(1)
    return (inside & ~visible).astype(int).tolist()


def render_image(rng: np.random.Generator, cam: Camera, persons: list[Person], finish: bool = True,
                 occluders: tuple = ()):
    """Background + people (+ occluders). Returns (RGB uint8 image, part map, depth map, background kind)."""
    img, kind = render_background(rng, cam.width, cam.height)
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1.2, 0.3), -rng.uniform(0.6, 1.5)])
    light /= np.linalg.norm(light)
    prims = [p for person in persons for p in person.prims] + list(occluders)
    part, depth = render_primitives(img, prims, cam.K, light, float(rng.uniform(0.25, 0.5)))
    if finish:
        img = finish_image(rng, img)
    return img, part, depth, kind


def synth_sample(seed: int, split: str, index: int, cfg: SynthConfig, finish: bool = True) -> dict:
    """Everything about image ``index``: camera, people, the rendered image, part map and per-person labels."""
    rng = image_rng(seed, split, index)
    cam = sample_camera(rng, cfg)
    persons = []
    first = sample_person(rng, cam, cfg)
    if first is None:  # practically impossible with sensible options; retry at the nearest allowed distance
        near = replace(cfg, distance_range=(cfg.distance_range[0],) * 2)
        first = sample_person(rng, cam, near, max_tries=2000)
    if first is None:
        raise InputError(f"synth image {index}: cannot place a person of at least {cfg.min_box_side:g} px with "
                         f"{fov_horizontal(cam.K, cam.width):.0f} deg FOV in {cam.width}x{cam.height} px; "
                         "use a larger --image-size or a narrower --fov-range")
    persons.append(first)
    if rng.random() < cfg.second_person_prob:
        second = sample_person(rng, cam, cfg, part_base=64, avoid=(first.joints[0],), max_tries=20)
        if second is not None:
            persons.append(second)
    occluders = ()
    if rng.random() < cfg.occluder_prob:
        occ = sample_occluder(rng, cam, first)
        occluders = () if occ is None else (occ,)
    img, part, depth, kind = render_image(rng, cam, persons, finish, occluders)
    labels = []
    for person in persons:
        uv = project(person.joints, cam.K)
        inside = _in_image(uv, cam.width, cam.height)
        labels.append({"joints_cam": person.joints, "joints_2d": uv, "joints_vis": inside.astype(np.uint8),
                       "bbox": person.bbox, "occluded": _occluded(person, uv, inside, part),
                       "height": person.height, "smpl": person.smpl})
    return {"camera": cam, "persons": persons, "image": img, "part": part, "depth": depth, "background": kind,
            "labels": labels, "occluders": occluders}


def sample_location(split: str, index: int, frames_per_sequence: int) -> tuple[str, int, str]:
    """(sequence, frame, image path relative to the output directory) of image ``index``."""
    seq, frame = f"seq{index // frames_per_sequence:03d}", index % frames_per_sequence
    return seq, frame, f"images/{split}/{seq}/{frame:06d}.jpg"


def manifest_rows(sample: dict, split: str, index: int, cfg: SynthConfig) -> list[dict]:
    cam = sample["camera"]
    seq, frame, rel = sample_location(split, index, cfg.frames_per_sequence)
    rows = []
    for p, lab in enumerate(sample["labels"]):
        meta = {"fov_h_deg": round(fov_horizontal(cam.K, cam.width), 6), "height_m": round(lab["height"], 6),
                "occluded": lab["occluded"], "background": sample["background"], "people": len(sample["labels"]),
                "occluders": len(sample["occluders"])}
        rows.append({
            "sample_id": make_sample_id("synth", split, seq, frame, p), "dataset": "synth", "split": split,
            "sequence": seq, "frame": frame, "person": p, "image_path": rel, "image_w": cam.width,
            "image_h": cam.height, "K": cam.K.reshape(-1).tolist(), "dist": [], "bbox": lab["bbox"].tolist(),
            "skeleton": SKELETON, "joints_cam": lab["joints_cam"].astype(np.float32).reshape(-1).tolist(),
            "joints_2d": lab["joints_2d"].astype(np.float32).reshape(-1).tolist(),
            "joints_vis": lab["joints_vis"].tolist(),
            "smpl": lab["smpl"], "meta": json.dumps(meta, sort_keys=True, separators=(",", ":")),
        })
    return rows


def write_replace(path: Path, data: bytes) -> None:
    """Atomic against interruption (temporary file + ``os.replace``: never a torn image) but without a per-file
    fsync, which costs ~6 ms per image here; :func:`generate`'s caller syncs once before the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_chunk(out_dir, seed: int, split: str, indices, cfg: SynthConfig) -> list[dict]:
    """Render, encode and atomically write the images ``indices``; return their manifest rows."""
    out_dir = Path(out_dir)
    rows = []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallelism is across images; per-call threads only contend on small images
    try:
        for i in indices:
            sample = synth_sample(seed, split, i, cfg)
            _, _, rel = sample_location(split, i, cfg.frames_per_sequence)
            write_replace(out_dir / rel, encode_jpeg(sample["image"], cfg.jpeg_quality))
            rows += manifest_rows(sample, split, i, cfg)
    finally:
        cv2.setNumThreads(threads)
    add_twist_labels([r["smpl"] for r in rows if r["smpl"] is not None])
    return rows


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def generate(out_dir, n: int, seed: int, split: str, cfg: SynthConfig, jobs: int = -1,
             progress: bool = False) -> list[dict]:
    """Render images ``0..n-1`` into ``out_dir/images/{split}/...`` with joblib (loky) and return their manifest
    rows in index order. The rows and bytes are independent of ``jobs`` and of the chunking."""
    from joblib import Parallel, delayed
    from tqdm import tqdm

    n_workers = jobs if jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + jobs)
    size = max(1, min(cfg.frames_per_sequence, -(-n // (4 * n_workers))))
    chunks = _chunks(n, size)
    log.info("synth %s: %d images in %d chunks, jobs=%d -> %s", split, n, len(chunks), jobs, out_dir)
    rows = []
    with tqdm(total=n, unit="img", desc=f"synth {split}", disable=not progress) as bar:
        results = Parallel(n_jobs=jobs, backend="loky", return_as="generator")(
            delayed(write_chunk)(str(out_dir), seed, split, chunk, cfg) for chunk in chunks)
        for chunk, chunk_rows in zip(chunks, results):
            rows += chunk_rows
            bar.update(len(chunk))
    return rows
