"""The training loader's per-sample path as it was before its speed-up (issue 14, item 2; commit 9bbc6cd), kept
verbatim so that tests/test_loader_exact.py can show that the faster code gives the same batches, bit for bit, for
the same seed: npz parsing, decode, the geometric augmentation and its labels, the photometric draws, the HPS
labels, the record and the collate. Only what it shares with the current code and what the speed-up did not
touch is imported (pipeline.geometry, pipeline.codec.decode_jpeg_rgb, the photometric applies, the tar reader).
"""
from __future__ import annotations

import io
import json
import math
import re
import struct
from functools import lru_cache

import cv2
import numpy as np
import torch

from pipeline import geometry as g
from pipeline.codec import decode_jpeg_rgb
from pipeline.skeleton import get_skeleton
from trainer.augment import GeometricParams
from trainer.batch import in_worker, pack_batch
from trainer.data import _split
from trainer.hps_labels import LEAF_JOINTS, NUM_BETAS, NUM_TWISTS, mirror_bone_perm, mirror_leaf_perm
from trainer.photometric import (BLUR_KERNELS, COL, NUM_PARAMS, RESIZE_FACTORS, SHARPEN_KERNELS, TABLE_SIZE,
                                 apply_photometric)

_SEED_MAX = 1 << 53
_M = np.diag([-1.0, 1.0, 1.0])
IDENTITY = GeometricParams()


# ------------------------------------------------------------------------------------------- pipeline.codec
_HEADER = re.compile(r"\{'descr': '([<>|=]?[biuf]\d+)', 'fortran_order': (False|True), 'shape': \(([\d, ]*)\), *\}")
_ZIP_LOCAL = struct.Struct("<4sHHHHHIIIHH")


@lru_cache(maxsize=4096)
def _npy_header(raw: bytes):
    m = _HEADER.fullmatch(raw.decode("latin1").rstrip(" \n"))
    if m is None:
        return None
    shape = tuple(int(x) for x in m.group(3).split(",") if x.strip())
    n = 1
    for s in shape:
        n *= s
    return np.dtype(m.group(1)), shape, n, "F" if m.group(2) == "True" else "C"


def _fast_npz(b: bytes) -> dict | None:
    out, pos = {}, 0
    while b[pos:pos + 4] == b"PK\x03\x04":
        _, _, flags, method, _, _, _, csize, _, nlen, xlen = _ZIP_LOCAL.unpack_from(b, pos)
        start = pos + 30 + nlen + xlen
        if method != 0 or flags & 0x08 or b[start:start + 7] != b"\x93NUMPY\x01":
            return None
        name = b[pos + 30:pos + 30 + nlen].decode()
        (hlen,) = struct.unpack_from("<H", b, start + 8)
        head = _npy_header(b[start + 10:start + 10 + hlen])
        if head is None or not name.endswith(".npy"):
            return None
        dtype, shape, n, order = head
        if 10 + hlen + n * dtype.itemsize != csize:
            return None
        out[name[:-4]] = np.frombuffer(b, dtype, count=n, offset=start + 10 + hlen).reshape(shape, order=order)
        pos = start + csize
    if not out or b[pos:pos + 4] not in (b"PK\x01\x02", b"PK\x05\x06"):
        return None
    return out


def read_npz(b: bytes) -> dict:
    fast = _fast_npz(b)
    if fast is not None:
        return fast
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def decode_sample(members: dict, rgbx: bool = False) -> dict:
    img = decode_jpeg_rgb(members["jpg"], rgbx)
    if img is None:
        raise ValueError(f"sample {members.get('__key__')}: cannot decode jpg")
    return {"key": members.get("__key__"), "image": img, "arrays": read_npz(members["npz"]),
            "meta": json.loads(members["json"])}


# ------------------------------------------------------------------------------------------- trainer.photometric
def _draw_window(rng, p, n, off, seed):
    if n <= TABLE_SIZE:
        p[COL[off]] = rng.integers(TABLE_SIZE - n + 1)
    else:
        p[COL[off]], p[COL[seed]] = -1, rng.integers(_SEED_MAX)


def _draw_blur(rng, p, shape):
    mode = int(rng.integers(3))
    kinds = (RESIZE_FACTORS, BLUR_KERNELS, SHARPEN_KERNELS)[mode]
    p[COL["blur"]], p[COL["blur_mode"]] = 1, mode
    p[COL["blur_arg"]] = kinds[int(rng.integers(len(kinds)))]


def _draw_noise(rng, p, shape):
    p[COL["noise"]] = 1
    _draw_window(rng, p, int(np.prod(shape)), "noise_off", "noise_seed")
    p[COL["noise_sign"]] = -1.0 if rng.uniform() < 0.5 else 1.0


def _draw_contrast(rng, p, shape):
    p[COL["contrast"]] = 1
    p[COL["contrast_a"]] = 1.1 + 0.6 * rng.uniform(-1.0, 1.0)
    p[COL["contrast_u"]] = rng.uniform(-1.0, 1.0)


def _draw_hue(rng, p, shape):
    p[COL["hue"]] = 1
    p[COL["hue_shift"]] = int(rng.uniform(-1.0, 1.0) * 40)
    p[COL["hue_k"]] = rng.uniform(0.0, 1.0)


def _draw_channel(rng, p, shape):
    p[COL["channel"]] = 1
    if rng.uniform() < 0.5:
        p[COL["channel_c"]] = int(rng.integers(3))
        return
    w = rng.uniform(0.0, 1.0, 3) + 1e-6
    p[COL["channel_c"]] = -1
    p[COL["channel_w0"]:COL["channel_w2"] + 1] = (w / w.sum()).astype(np.float32)


def _draw_cutout(rng, p, shape):
    h, w = shape[:2]
    area = h * w * (0.2 + 0.8 * rng.uniform()) * 0.4
    aspect = rng.uniform(0.3, 1.0 / 0.3)
    ch, cw = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
    cy, cx = int(rng.integers(2, h - 1)), int(rng.integers(2, w - 1))
    y0, y1 = max(0, cy - ch // 2), min(h, cy - ch // 2 + ch)
    x0, x1 = max(0, cx - cw // 2), min(w, cx - cw // 2 + cw)
    p[COL["cutout"]] = 1
    p[COL["cut_y0"]:COL["cut_x1"] + 1] = y0, y1, x0, x1
    if y1 > y0 and x1 > x0:
        if rng.uniform() < 0.5:
            p[COL["cut_fill"]] = 1
            _draw_window(rng, p, (y1 - y0) * (x1 - x0) * 3, "cut_off", "cut_seed")
        else:
            p[COL["cut_fill"]] = 2
            p[COL["cut_r"]:COL["cut_b"] + 1] = rng.integers(0, 256, 3, dtype=np.uint8)


def draw_photometric(rng, shape, cfg, cutout: bool = True) -> np.ndarray:
    p = np.zeros(NUM_PARAMS, np.float64)
    for prob, draw in ((cfg.blur_prob, _draw_blur), (cfg.noise_prob, _draw_noise),
                       (cfg.contrast_prob, _draw_contrast), (cfg.hue_prob, _draw_hue),
                       (cfg.channel_prob, _draw_channel)):
        if rng.uniform() < prob:
            draw(rng, p, shape)
    if cutout and rng.uniform() < cfg.cutout_prob:
        _draw_cutout(rng, p, shape)
    return p


# ------------------------------------------------------------------------------------------- trainer.augment
def sample_geometric(cfg, rng, focal: float):
    if not cfg.enabled:
        return IDENTITY, False
    do_aug = rng.uniform() >= cfg.p_no_aug
    roll, zoom, tilt = 0.0, 1.0, (0.0, 0.0)
    if do_aug:
        if rng.uniform() < cfg.rot_prob:
            roll = float(np.radians(rng.uniform(-cfg.rot_max_deg, cfg.rot_max_deg)))
        if rng.uniform() < cfg.zoom_prob:
            zoom = float(rng.uniform(cfg.zoom_min, cfg.zoom_max))
        if cfg.jitter_px > 0:
            tx, ty = rng.uniform(-cfg.jitter_px, cfg.jitter_px, 2) / focal
            tilt = (float(np.arctan(ty)), float(np.arctan(tx)))
    flip = bool(rng.uniform() < cfg.flip_prob)
    return GeometricParams(roll, zoom, tilt, flip), do_aug


def _tilt_rotation(tilt) -> np.ndarray:
    ax, ay = tilt
    cx, sx, cy, sy = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rx @ ry


def augmentation_homography(K_store, store_size, crop_size, params, base_zoom=1.0):
    K_store = g.as_f64(K_store)
    zoom = params.zoom * base_zoom
    fx, fy, cx, cy = (float(K_store[0, 0]), float(K_store[1, 1]), float(K_store[0, 2]), float(K_store[1, 2]))
    c, s = math.cos(params.roll), math.sin(params.roll)
    R_roll = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    R_aug = R_roll if params.tilt == (0.0, 0.0) else _tilt_rotation(params.tilt) @ R_roll
    c0, half = 0.5 * (store_size - 1), 0.5 * (crop_size - 1)
    dx, dy = cx - c0, cy - c0
    K_final = np.array([[fx * zoom, 0.0, half + zoom * (c * dx - s * dy)],
                        [0.0, fy * zoom, half + zoom * (s * dx + c * dy)], [0.0, 0.0, 1.0]])
    K_store_inv = np.array([[1.0 / fx, 0.0, -cx / fx], [0.0, 1.0 / fy, -cy / fy], [0.0, 0.0, 1.0]])
    H = K_final @ R_aug @ K_store_inv
    return H / H[2, 2], K_final, R_aug


def transform_labels(joints_rot, uv_store, has_3d, R, R_aug, K_final, H, root):
    R_total = g.as_f64(R_aug) @ g.as_f64(R)
    if has_3d:
        P, uvd, scale = g.labels_from_joints(joints_rot, R_aug, K_final, root)
        return P, uvd, float(scale), R_total
    n = len(uv_store)
    uvd = np.concatenate([g.apply_homography(H, g.as_f64(uv_store)), np.zeros((n, 1))], axis=1)
    return np.zeros((n, 3)), uvd, 0.0, R_total


def _flip(image, K, P, uvd, vis, R_total, crop_size, perm):
    image = cv2.flip(image, 1)
    K = g.flip_intrinsics(K, crop_size)
    P = g.flip_points(P, perm)
    uvd = g.flip_uvd(uvd, crop_size, perm)
    vis = np.asarray(vis)[list(perm)]
    R_total = np.diag([-1.0, 1.0, 1.0]) @ R_total
    return image, K, P, uvd, vis, R_total


def augment_sample(sample, crop_size, cfg, rng) -> dict:
    arrays, meta = sample["arrays"], sample["meta"]
    image = sample["image"]
    store_size = int(image.shape[0])
    built_for = int(meta.get("crop_size", crop_size))
    if built_for < crop_size:
        raise ValueError(f"sample {meta.get('sample_id')}: built for crop {built_for} < configured {crop_size}")
    base_zoom = crop_size / built_for
    K_store = g.as_f64(arrays["K_crop"])
    params, do_aug = sample_geometric(cfg, rng, float(K_store[0, 0]) * base_zoom)
    H, K_final, R_aug = augmentation_homography(K_store, store_size, crop_size, params, base_zoom)
    if params.is_identity and base_zoom == 1.0 and (store_size - crop_size) % 2 == 0:
        off = g.center_slice_offset(store_size, crop_size)
        crop = image[off:off + crop_size, off:off + crop_size]
    else:
        crop = cv2.warpPerspective(image, H, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    if crop.shape[2] == 4:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGBA2RGB)
    sk = get_skeleton(meta["skeleton"])
    P, uvd, scale, R_total = transform_labels(arrays["joints_rot"], arrays["uvd"][:, :2], bool(meta["has_3d"]),
                                              arrays["R"], R_aug, K_final, H, sk.root)
    vis = np.asarray(arrays["vis"], np.uint8)
    photo = draw_photometric(rng, crop.shape, cfg) if do_aug else np.zeros(NUM_PARAMS)
    photo[COL["flip"]] = params.flip
    if do_aug and not cfg.photometric_on_device:
        crop = apply_photometric(crop, photo)
    K = K_final
    if params.flip:
        crop, K, P, uvd, vis, R_total = _flip(crop, K, P, uvd, vis, R_total, crop_size, sk.flip_perm)
    return {"image": crop, "K_crop": K, "R": R_total, "joints": P, "uvd": uvd,
            "scale": scale, "vis": vis, "flipped": params.flip, "do_aug": do_aug, "params": params, "photo": photo}


# ------------------------------------------------------------------------------------------- trainer.hps_labels
def empty_hps_labels() -> dict:
    return {"betas": np.zeros(NUM_BETAS, np.float32), "twist": np.zeros((NUM_TWISTS, 2), np.float32),
            "twist_mask": np.zeros(NUM_TWISTS, np.float32), "leaf_rot": np.zeros((len(LEAF_JOINTS), 3, 3), np.float32),
            "has_smpl": False}


def hps_labels(arrays: dict) -> dict:
    if "smpl_betas" not in arrays or "smpl_pose" not in arrays:
        return empty_hps_labels()
    out = empty_hps_labels()
    betas = np.asarray(arrays["smpl_betas"], np.float64).reshape(-1)
    n = min(NUM_BETAS, betas.size)
    out["betas"][:n] = betas[:n]
    pose = np.asarray(arrays["smpl_pose"], np.float64).reshape(24, 3)
    out["leaf_rot"] = np.stack([cv2.Rodrigues(pose[j])[0] for j in LEAF_JOINTS]).astype(np.float32)
    if "smpl_twist" in arrays:
        phi = np.asarray(arrays["smpl_twist"], np.float64).reshape(NUM_TWISTS)
        ok = np.isfinite(phi)
        phi = np.where(ok, phi, 0.0)
        out["twist"] = np.stack([np.cos(phi), np.sin(phi)], -1).astype(np.float32) * ok[:, None]
        out["twist_mask"] = ok.astype(np.float32)
    out["has_smpl"] = True
    return out


def flip_hps_labels(labels: dict) -> dict:
    if not labels["has_smpl"]:
        return labels
    bones, leaves = list(mirror_bone_perm()), list(mirror_leaf_perm())
    twist = labels["twist"][bones].copy()
    twist[:, 1] *= -1.0
    leaf = (_M @ labels["leaf_rot"][leaves].astype(np.float64) @ _M).astype(np.float32)
    return {**labels, "twist": twist, "twist_mask": labels["twist_mask"][bones].copy(), "leaf_rot": leaf}


# ------------------------------------------------------------------------------------------- trainer.data / batch
def sample_to_record(raw, crop_size, layout, aug, rng) -> dict:
    s = decode_sample(raw, rgbx=True)
    meta = s["meta"]
    sl = layout.get(meta["skeleton"])
    if sl is None:
        raise ValueError(f"sample {meta.get('sample_id')}: skeleton {meta['skeleton']!r} is not configured")
    out = augment_sample(s, crop_size, aug, rng)
    J = max(v.stop for v in layout.values())
    uvd = np.zeros((J, 3), np.float32)
    joints = np.zeros((J, 3), np.float32)
    mask_uv = np.zeros(J, np.float32)
    mask_d = np.zeros(J, np.float32)
    uvd[sl] = out["uvd"]
    joints[sl] = out["joints"]
    mask_uv[sl] = out["vis"] > 0
    has_3d = bool(meta["has_3d"])
    mask_d[sl] = float(has_3d)
    hps = hps_labels(s["arrays"])
    if out["flipped"]:
        hps = flip_hps_labels(hps)
    rec = {"image": out["image"], "K_crop": out["K_crop"].astype(np.float32), "R": out["R"], "uvd": uvd,
           "joints": joints, "mask_uv": mask_uv, "mask_d": mask_d, "scale": np.float32(out["scale"]),
           "has_3d": has_3d, "has_intrinsics": bool(meta["has_intrinsics"]), "flipped": bool(out["flipped"]),
           "dataset": str(meta["dataset"]), "sample_id": str(meta["sample_id"]), "skeleton": meta["skeleton"],
           "meta": meta, **hps}
    if aug.photometric_on_device:
        rec["photo"] = out["photo"]
    return rec


def collate(records: list[dict]) -> dict:
    def stack(k, dtype=None):
        return torch.from_numpy(np.ascontiguousarray(np.stack([r[k] for r in records]), dtype=dtype))
    images = torch.from_numpy(np.stack([r["image"] for r in records]))
    return {"image": images.permute(0, 3, 1, 2),
            "K_crop": stack("K_crop", np.float32), "R": stack("R", np.float64), "uvd": stack("uvd"),
            "joints": stack("joints"), "mask_uv": stack("mask_uv"), "mask_d": stack("mask_d"),
            "scale": stack("scale", np.float32),
            "has_3d": torch.tensor([r["has_3d"] for r in records]),
            "has_intrinsics": torch.tensor([r["has_intrinsics"] for r in records]),
            "flipped": torch.tensor([r["flipped"] for r in records]),
            "betas": stack("betas", np.float32), "twist": stack("twist", np.float32),
            "twist_mask": stack("twist_mask", np.float32), "leaf_rot": stack("leaf_rot", np.float32),
            "has_smpl": torch.tensor([r["has_smpl"] for r in records]),
            "dataset": [r["dataset"] for r in records], "sample_id": [r["sample_id"] for r in records],
            "skeleton": [r["skeleton"] for r in records], "meta": [r["meta"] for r in records],
            **({"photo": stack("photo", np.float64)} if "photo" in records[0] else {})}


def stream_iter(self):
    """MixedStream.__iter__ as it was (with its _records inlined)."""
    import webdataset as wds

    from trainer.data import _source_pipeline
    rank, _, worker, num_workers = wds.utils.pytorch_worker_info()
    seq = np.random.SeedSequence([self.cfg.seed, self.epoch, rank, worker])
    src_seeds = seq.generate_state(len(self.sets))
    rng = np.random.default_rng(seq.spawn(1)[0])
    streams = [iter(_source_pipeline(s, int(sd), self.cfg.shuffle_buffer)) for s, sd in zip(self.sets, src_seeds)]
    pack = pack_batch if in_worker() else (lambda batch: batch)
    for _ in range(_split(self.batches_per_rank, num_workers, worker)):
        out, i = [], 0
        choices = rng.choice(len(streams), size=self.cfg.batch_size, p=self.probs)
        while len(out) < self.cfg.batch_size:
            k = int(choices[i]) if i < len(choices) else int(rng.choice(len(streams), p=self.probs))
            i += 1
            raw = next(streams[k])
            try:
                out.append(sample_to_record(raw, self.cfg.crop_size, self.layout, self.cfg.augment, rng))
            except Exception:
                pass
        yield pack(collate(out))
