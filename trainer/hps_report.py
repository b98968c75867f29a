"""The HPS part of an evaluation report (issue 12): PVE per dataset beside the constant-mean-mesh reference, the
vertices file (``--save-vertices``) and the mesh-overlay picture.

The reference row is what a model that learned nothing from the pixels scores on the same samples: every sample
gets the group's mean pelvis-relative ground-truth mesh (in the original camera), an oracle constant like the
constant mean pose of the joint table. PVE weighs samples equally.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from pipeline.fsutil import atomic_path, atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["mesh_rows", "MESH_HEADERS", "mesh_table_rows", "mesh_markdown", "write_vertices", "draw_mesh",
           "mesh_overlay_sheet"]

MESH_HEADERS = ("dataset", "protocol", "PVE", "constant mean mesh PVE", "model / ref PVE", "N", "N ref")


def mesh_rows(records: dict) -> list[dict]:
    """Per (dataset, protocol) with SMPL labels: mean PVE (mm) and the constant-mean-mesh reference."""
    if "pve" not in records:
        return []
    pve = np.asarray(records["pve"], np.float64)
    rows = []
    for ds, proto in sorted(set(zip(records["dataset"], records["protocol"]))):
        idx = [i for i, (d, p) in enumerate(zip(records["dataset"], records["protocol"]))
               if d == ds and p == proto and np.isfinite(pve[i])]
        if not idx:
            continue
        ref_idx = [i for i in idx if records["mesh_gt_rel"][i] is not None]
        ref = None
        if ref_idx:
            gt = np.stack([records["mesh_gt_rel"][i] for i in ref_idx]).astype(np.float64)
            ref = float(1000.0 * np.sqrt(((gt - gt.mean(0)) ** 2).sum(-1)).mean())
        model = float(pve[idx].mean())
        rows.append({"dataset": ds, "protocol": proto, "pve_mm": model, "ref_constant_pve_mm": ref,
                     "model_over_ref_pve": model / ref if ref else None, "n": len(idx), "n_ref": len(ref_idx)})
    return rows


def mesh_table_rows(rows: list[dict]) -> list[list]:
    return [[r["dataset"], r["protocol"], r["pve_mm"], "-" if r["ref_constant_pve_mm"] is None
             else r["ref_constant_pve_mm"], "-" if r["model_over_ref_pve"] is None else f"x{r['model_over_ref_pve']:.2f}",
             r["n"], r["n_ref"]] for r in rows]


def mesh_markdown(rows: list[dict], md_table) -> list[str]:
    if not rows:
        return []
    return ["## Meshes (HPS): PVE", "",
            "PVE = mean per-vertex error (mm) of the IK mesh against the ground-truth mesh of the sample's SMPL "
            "labels, each aligned at its own SMPL pelvis, in the original camera; beside it the same for the "
            "group's constant mean mesh (what learning nothing scores). The PVE of this SMPL-24 protocol aligns "
            "at the SMPL pelvis (3DPW's published protocol aligns at the H36M-regressed pelvis: docs/metrics.md).",
            "", md_table(MESH_HEADERS, mesh_table_rows(rows)), ""]


def write_vertices(path, records: dict) -> Path | None:
    """vertices.npz: ``sample_id`` (N,), ``vertices`` (N, V, 3) float32, the predicted meshes in the original
    camera (metres), for the samples that have one; written atomically. None when there are none."""
    keep = [i for i, v in enumerate(records.get("mesh_pred", [])) if v is not None]
    if not keep:
        return None
    path = Path(path)
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, sample_id=np.asarray([records["sample_id"][i] for i in keep]),
                     vertices=np.stack([records["mesh_pred"][i] for i in keep]).astype(np.float32))
    return path


def draw_mesh(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
              color=(80, 200, 255), alpha: float = 0.55) -> np.ndarray:
    """The mesh (vertices in the image's camera, metres) projected with K and painted over the RGB image, far
    faces first, shaded by the face normal's facing ratio; pixel centres at integers (docs/design.md §2)."""
    v = np.asarray(vertices, np.float64)
    tri = v[faces]                                                           # (F, 3, 3)
    z = tri[..., 2]
    ok = (z > 1e-6).all(1)
    uv = (tri @ np.asarray(K, np.float64).T)
    uv = uv[..., :2] / uv[..., 2:3]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centre = tri.mean(1)
    facing = np.abs((n * centre).sum(1)) / (np.linalg.norm(n, axis=1) * np.linalg.norm(centre, axis=1) + 1e-12)
    layer, mask = image.copy(), np.zeros(image.shape[:2], np.uint8)
    shift = 4                                                                # sub-pixel vertices for fillPoly
    for f in np.argsort(-z.mean(1)):
        if not ok[f]:
            continue
        pts = np.round(uv[f] * (1 << shift)).astype(np.int32)               # fixed point, pixel centres at integers
        shade = 0.35 + 0.65 * facing[f]
        cv2.fillPoly(layer, [pts], tuple(int(c * shade) for c in color), cv2.LINE_AA, shift)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_8, shift)
    out = image.copy()
    m = mask > 0
    out[m] = (alpha * layer[m] + (1 - alpha) * image[m]).astype(np.uint8)
    return out


def mesh_overlay_sheet(path, tiles: list[np.ndarray], captions: list[str], tile: int = 192, cols: int = 4) -> Path:
    """A contact sheet of RGB tiles (resized to ``tile``) with a caption each, written atomically as PNG."""
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (tile + 18), cols * tile, 3), 255, np.uint8)
    for k, (img, cap) in enumerate(zip(tiles, captions)):
        r, c = divmod(k, cols)
        y, x = r * (tile + 18), c * tile
        sheet[y:y + tile, x:x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_NEAREST)
        cv2.putText(sheet, cap[:30], (x + 3, y + tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
    path = Path(path)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: could not encode the PNG")
    atomic_write_bytes(path, png.tobytes())
    return path
