"""Held-out evaluation in the ORIGINAL camera frame (docs/design.md §4.7, §9).

Flow: the held-out stream of :mod:`trainer.shards` (ordered, finite, no augmentation; the model's S crop) ->
``predict_fn(batch) -> {"uvd", "scale"}`` (the model with flip test, or a stub in tests) -> joints in the crop
camera (z' = d + s f_crop, P' = z' K_crop^-1 [u, v, 1]) -> P = R^T P' in the original camera -> per-sample
metrics (:mod:`trainer.metrics`) against the ground truth R^T joints_rot (= the manifest's joints_cam).

Protocols (:func:`protocol_for`) are chosen by the sample's skeleton:

* ``h36m17`` -> "h36m14": MPJPE, PA-MPJPE, PCK, AUC and depth error over the 14 LSP-order joints
  ``eval_subsets["h36m14"]`` (3DPW / Human3.6M with the H36M regressor), root-aligned at the pelvis (joint 0).
* ``mpi_inf_3dhp17`` -> "3dhp17": MPJPE, PA-MPJPE and depth error over all 17 test joints; PCK@150 and AUC over
  the 14 joints ``eval_subsets["pck14"]`` (head-top, neck, shoulders, elbows, wrists, hips, knees, ankles);
  root = pelvis (joint 14).
* ``mpi_inf_3dhp28`` -> "3dhp28to17": the 17 test joints picked by ``eval_subsets["to_17"]``, as above.
* ``smpl24`` (synthetic data, 3DPW without a body model) -> "smpl24": MPJPE, PA-MPJPE and depth error over all 24
  joints, root = pelvis; PCK@150 and AUC over the 23 non-root joints.
* any other 3D skeleton -> "all": all joints at the skeleton's root, PCK/AUC without the root. 2D-only samples
  are skipped and counted.

PCK and AUC are strict (error < threshold) and never count a joint whose error is zero by construction;
docs/metrics.md has the table of every protocol and the published code each one matches.

Visibility flags do not mask 3D joints (the benchmarks score every joint of every valid frame). The depth error
compares d = z' - z'_root in the crop (rotated) camera, the network's own output, as in the paper's Table 2.
The absolute root error compares the root joint in the original camera (it depends on s-hat and f_crop).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from pipeline.errors import InputError
from trainer.geometry_torch import joints_from_uvd
from pipeline.skeleton import get_skeleton

from . import metrics as M
from .shards import as_shard_sets, heldout_stream

log = logging.getLogger(__name__)

__all__ = ["Protocol", "protocol_for", "iter_batches", "evaluate", "nonfinite_samples", "NonFinitePrediction",
           "model_predict_fn", "action_of", "H36M_ACTIONS",
           "SCALAR_METRICS"]

PredictFn = Callable[[dict], dict]


class NonFinitePrediction(InputError):
    """A model predicted NaN or inf for a sample (the message names the shard, the key and the joint)."""
SCALAR_METRICS = ("mpjpe", "pa_mpjpe", "pck150", "auc", "depth_err", "root_err")
H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases", "Sitting",
                "SittingDown", "Smoking", "Photo", "Waiting", "Walking", "WalkDog", "WalkTogether")  # act 2..16
_ACTION_ALIASES = {"takingphoto": "Photo", "walkingdog": "WalkDog", "walkingtogether": "WalkTogether"}


@dataclass(frozen=True)
class Protocol:
    name: str
    skeleton: str
    root: int                        # index in the skeleton
    joints: tuple[int, ...]          # MPJPE, PA-MPJPE, depth error
    pck_joints: tuple[int, ...]      # PCK@150, AUC
    description: str

    def as_dict(self) -> dict:
        sk = get_skeleton(self.skeleton)
        return {"name": self.name, "skeleton": self.skeleton, "root": sk.joint_names[self.root],
                "joints": [sk.joint_names[i] for i in self.joints],
                "pck_joints": [sk.joint_names[i] for i in self.pck_joints], "description": self.description}


def protocol_for(skeleton: str) -> Protocol:
    sk = get_skeleton(skeleton)
    if not sk.has_3d or sk.root is None:
        raise ValueError(f"skeleton {skeleton} has no 3D joints to evaluate")
    if skeleton == "h36m17":
        j = sk.eval_subsets["h36m14"]
        return Protocol("h36m14", skeleton, sk.root, j, j, "H36M-14 (LSP order) joints, root-aligned at the pelvis")
    if skeleton == "mpi_inf_3dhp17":
        return Protocol("3dhp17", skeleton, sk.root, sk.eval_subsets["all"], sk.eval_subsets["pck14"],
                        "MPJPE/PA/depth over all 17 test joints; PCK@150/AUC over the 14 pck14 joints; root pelvis")
    if skeleton == "mpi_inf_3dhp28":
        j = sk.eval_subsets["to_17"]
        return Protocol("3dhp28to17", skeleton, sk.root, j, j[:14],
                        "the 17 test joints of the 28 (to_17); PCK/AUC over their first 14; root pelvis")
    j = tuple(range(sk.num_joints))
    pck = tuple(i for i in j if i != sk.root)   # the root's error is zero by construction: never counted
    name = "smpl24" if skeleton == "smpl24" else "all"
    return Protocol(name, skeleton, sk.root, j, pck, f"MPJPE/PA/depth over all {sk.num_joints} {skeleton} joints, "
                    f"root-aligned at {sk.joint_names[sk.root]}; PCK@150/AUC over the {len(pck)} others")


def action_of(meta: dict) -> str:
    """Human3.6M action name from the shard meta ('action' key) or the sequence name ('s_09_act_05_...' or
    'S9_Eating_1'); '' for other datasets or when no action can be read."""
    if meta.get("action"):
        return str(meta["action"])
    ds, seq = str(meta.get("dataset", "")).lower(), str(meta.get("sequence", ""))
    if "h36m" not in ds and "human3" not in ds and not re.search(r"s_?\d+_act_?\d+", seq, re.I):
        return ""
    m = re.search(r"act_?(\d{1,2})(?!\d)", seq, re.I)
    if m and 2 <= int(m.group(1)) <= 16:
        return H36M_ACTIONS[int(m.group(1)) - 2]
    names = {a.lower(): a for a in H36M_ACTIONS} | _ACTION_ALIASES
    for tok in re.split(r"[^A-Za-z]+", seq):
        if tok.lower() in names:
            return names[tok.lower()]
    return ""


# ------------------------------------------------------------------------------------------- batching
def _collate(items: list[dict]) -> dict:
    return {"image": np.stack([it["image"] for it in items]), "K_crop": np.stack([it["K_crop"] for it in items]),
            "R": np.stack([it["R"] for it in items]), "uvd": np.stack([it["uvd"] for it in items]),
            "scale": np.array([it["scale"] for it in items]),
            "joints_rot": np.stack([it["joints_rot"] for it in items]),
            "pr_angle": np.array([it["pr_angle"] for it in items]),
            "has_intrinsics": np.array([it["has_intrinsics"] for it in items]),
            "meta": [it["meta"] for it in items], "skeleton": items[0]["meta"]["skeleton"],
            "crop_size": items[0]["crop_size"], "shard": [it["shard"] for it in items],
            "key": [it["key"] for it in items], "smpl": [it.get("smpl") for it in items]}


def _take(batch: dict, keep: list[int]) -> dict:
    """The samples ``keep`` of a collated batch."""
    return {k: (v[keep] if isinstance(v, np.ndarray) else [v[i] for i in keep] if isinstance(v, list) else v)
            for k, v in batch.items()}


def nonfinite_samples(batch: dict, out: dict) -> list[dict]:
    """The samples of a batch whose prediction has a NaN or inf: [{sample_id, shard, key, joint, value}] with the
    first non-finite joint (by name; "scale" when only the scale is)."""
    uvd = torch.as_tensor(out["uvd"]).detach().to("cpu", torch.float64).numpy()
    scale = torch.as_tensor(out["scale"]).detach().to("cpu", torch.float64).reshape(-1).numpy()
    bad_joint = ~np.isfinite(uvd).all(axis=-1)                       # (B, J)
    bad = bad_joint.any(axis=-1) | ~np.isfinite(scale)
    names = get_skeleton(batch["skeleton"]).joint_names
    found = []
    for i in np.flatnonzero(bad):
        if bad_joint[i].any():
            j = int(np.argmax(bad_joint[i]))
            joint, value = names[j], uvd[i, j].tolist()
        else:
            joint, value = "scale", float(scale[i])
        found.append({"sample_id": batch["meta"][i]["sample_id"], "shard": batch["shard"][i], "key": batch["key"][i],
                      "joint": joint, "value": str(value)})
    return found


def iter_batches(prepared: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Batches homogeneous in (skeleton, crop size), so one predict call returns one joint set. Order within a
    group follows the input; partial batches are flushed at the end."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buffers: dict[tuple, list] = {}
    for it in prepared:
        k = (it["meta"]["skeleton"], it["crop_size"])
        buf = buffers.setdefault(k, [])
        buf.append(it)
        if len(buf) == batch_size:
            yield _collate(buf)
            buffers[k] = []
    for buf in buffers.values():
        if buf:
            yield _collate(buf)


# ------------------------------------------------------------------------------------------- metrics
def _batch_records(batch: dict, out: dict, mesh=None) -> dict:
    """Predictions of one batch -> per-sample arrays (metrics in mm, joints in metres); with ``mesh`` (a
    :class:`trainer.hps.MeshScorer`) the HPS records too (PVE, ...)."""
    sk = get_skeleton(batch["skeleton"])
    p = protocol_for(sk.name)
    B, J = len(batch["meta"]), sk.num_joints
    uvd = torch.as_tensor(out["uvd"]).detach().to("cpu", torch.float64)
    scale = torch.as_tensor(out["scale"]).detach().to("cpu", torch.float64).reshape(-1)
    if tuple(uvd.shape) != (B, J, 3) or tuple(scale.shape) != (B,):
        raise ValueError(f"predict_fn returned uvd {tuple(uvd.shape)} and scale {tuple(scale.shape)}; "
                         f"expected ({B}, {J}, 3) and ({B},) for skeleton {sk.name}")
    K = torch.as_tensor(batch["K_crop"], dtype=torch.float64)
    R = torch.as_tensor(batch["R"], dtype=torch.float64)
    pred_orig, pred_crop = (t.numpy() for t in joints_from_uvd(uvd, scale, K, R))
    gt_crop = batch["joints_rot"]
    gt_orig = gt_crop @ batch["R"]  # row form of R^T P'
    mm = 1000.0
    po, go, pc, gc = pred_orig * mm, gt_orig * mm, pred_crop * mm, gt_crop * mm
    rel_err = M.joint_errors(M.root_relative(po, p.root), M.root_relative(go, p.root))  # (B, J)
    meta = batch["meta"]
    return {
        "sample_id": [m["sample_id"] for m in meta], "dataset": [m["dataset"] for m in meta],
        "split": [m.get("split", "") for m in meta], "sequence": [m.get("sequence", "") for m in meta],
        "frame": [int(m.get("frame", -1)) for m in meta], "person": [int(m.get("person", 0)) for m in meta],
        "action": [action_of(m) for m in meta], "skeleton": [sk.name] * B, "protocol": [p.name] * B,
        "pr_angle_deg": np.degrees(batch["pr_angle"]), "pred_scale": scale.numpy(),
        "mpjpe": M.mpjpe(po, go, p.root, p.joints), "pa_mpjpe": M.pa_mpjpe(po, go, p.joints),
        "pck150": M.pck(rel_err[:, list(p.pck_joints)]), "auc": M.auc(rel_err[:, list(p.pck_joints)]),
        "depth_err": M.depth_error(pc, gc, p.root, p.joints), "root_err": M.root_error(po, go, p.root),
        "joint_err": list(rel_err), "pred_cam": list(pred_orig), "gt_cam": list(gt_orig),
        "gt_crop": list(gt_crop),  # for the reference rows' depth error, which lives in the crop camera
        **({} if mesh is None else mesh.score(batch, out, pred_crop)),
    }


def _merge(parts: list[dict]) -> dict:
    if not parts:
        return {}
    out = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        out[k] = np.concatenate(vals) if isinstance(vals[0], np.ndarray) else [v for p in vals for v in p]
    order = np.argsort(np.asarray(out["sample_id"], dtype=object), kind="stable")
    ids = [out["sample_id"][i] for i in order]
    dup = next((a for a, b in zip(ids, ids[1:]) if a == b), None)
    if dup is not None:
        raise InputError(f"sample {dup} occurs more than once in the given shards (a shard passed twice?)")
    return {k: (v[order] if isinstance(v, np.ndarray) else [v[i] for i in order]) for k, v in out.items()}


def _dist_info() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def evaluate(predict_fn: PredictFn, shards, batch_size: int = 64, crop_size: int | None = None,
             skeletons: Iterable[str] | None = None, progress: bool = True, total: int | None = None,
             workers: int = 0, max_samples: int = 0, skip_nonfinite: bool = False, mesh=None) -> dict:
    """Run ``predict_fn`` over every 3D sample of ``shards`` (shard specs, a :class:`trainer.shards.ShardSet` or
    a list of them) and return per-sample records (sorted by sample_id) plus counts. The samples come from the
    held-out stream (:mod:`trainer.shards`), the one that training's validation reads too. Under
    torch.distributed each rank predicts its share and the records are all-gathered, so every rank returns the
    full result. ``workers`` > 0 decodes in that many DataLoader processes (per rank); the result does not
    depend on it. ``max_samples`` > 0 stops each rank after its share (ceil(max_samples / ranks)) of 3D samples.

    ``predict_fn(batch)`` gets a dict: image uint8 (B, S, S, 3) RGB, K_crop (B, 3, 3) of the S crop, R, has_intrinsics,
    skeleton (one per batch), crop_size, meta, plus the labels (uvd, scale, joints_rot; for tests only), and must
    return {"uvd": (B, J_skeleton, 3) in S-crop pixels / metres, "scale": (B,) metres per pixel}.
    ``crop_size`` / ``skeletons``: what the model takes; shards that cannot serve it are an InputError.
    A prediction with a NaN or inf is an InputError naming the shard, the sample key and the first non-finite
    joint, unless ``skip_nonfinite``: then such samples are left out of every metric and listed under
    ``nonfinite`` (counted in ``counts["skipped_nonfinite"]``). ``mesh`` (a :class:`trainer.hps.MeshScorer`)
    adds the HPS records (PVE and the meshes) for the predictions that carry the HPS heads' outputs.
    """
    from tqdm import tqdm

    rank, world = _dist_info()
    sets = as_shard_sets(shards, crop_size, skeletons)
    urls = [u for s in sets for u in s.urls]
    counts = {"samples": 0, "evaluated": 0, "skipped_2d_only": 0, "skipped_nonfinite": 0}
    nonfinite: list[dict] = []
    limit = -(-max_samples // world) if max_samples > 0 else None
    parts = []
    stream = heldout_stream(urls, crop_size, None if skeletons is None else tuple(skeletons), rank, world, workers)

    def prepared():
        for kind, item in stream:
            if kind == "error":
                raise InputError(item)
            counts["samples"] += 1
            bar.update(1)
            if kind == "skip":
                counts["skipped_2d_only"] += 1
                continue
            yield item
            if limit is not None and counts["samples"] - counts["skipped_2d_only"] >= limit:
                return

    error = None
    with tqdm(total=None if total is None else -(-total // world), disable=not progress or rank != 0,
              desc="eval", unit="sample") as bar:
        try:
            for batch in iter_batches(prepared(), batch_size):
                with torch.inference_mode():
                    out = predict_fn(batch)
                bad = nonfinite_samples(batch, out)
                if bad and not skip_nonfinite:
                    b = bad[0]
                    raise NonFinitePrediction(f"{b['shard']}: sample {b['key']}: the prediction is not finite (joint "
                                     f"{b['joint']} = {b['value']}); pass --skip-nonfinite to leave such samples out")
                if bad:
                    nonfinite += bad
                    counts["skipped_nonfinite"] += len(bad)
                    gone = {b["sample_id"] for b in bad}
                    keep = [i for i, m in enumerate(batch["meta"]) if m["sample_id"] not in gone]
                    if not keep:
                        continue
                    batch = _take(batch, keep)
                    out = {k: torch.as_tensor(v)[keep] for k, v in out.items()}
                parts.append(_batch_records(batch, out, mesh))
                counts["evaluated"] += len(batch["meta"])
        except (InputError, ValueError) as e:
            if world == 1:
                raise
            error = e  # still reach the collective below, so the other ranks do not hang
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, (parts, counts, None if error is None else str(error),
                                                       nonfinite))
        if error is not None:
            raise error
        remote = [(r, g[2]) for r, g in enumerate(gathered) if g[2]]
        if remote:
            raise InputError(f"rank {remote[0][0]}: {remote[0][1]}")
        parts = [p for g in gathered for p in g[0]]
        counts = {k: sum(g[1][k] for g in gathered) for k in counts}
        nonfinite = [b for g in gathered for b in g[3]]
    return {"records": _merge(parts), "counts": counts,
            "nonfinite": sorted(nonfinite, key=lambda b: b["sample_id"])}


# ------------------------------------------------------------------------------------------- model
def model_predict_fn(model: torch.nn.Module, skeletons: tuple[str, ...], device, flip_test: bool = True,
                     amp_dtype: torch.dtype | None = None) -> PredictFn:
    """Wrap a trainer.model PersPose module: uint8 images -> device, (flip-test) forward, slice the batch's
    skeleton out of the concatenated joint set. ``amp_dtype`` (e.g. bf16 on CUDA) autocasts the backbone."""
    from pipeline.skeleton import joint_slices

    from .model import flip_test as _flip_test

    slices = joint_slices(skeletons)
    device = torch.device(device)

    def predict(batch: dict) -> dict:
        images = torch.from_numpy(batch["image"]).to(device, non_blocking=True)
        K = torch.from_numpy(batch["K_crop"]).to(device, torch.float32)
        has_k = torch.from_numpy(batch["has_intrinsics"]).to(device)
        ctx = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
               else torch.autocast(device.type, enabled=False))
        with ctx:
            out = _flip_test(model, images, K, has_k) if flip_test else model(images, K, has_k)
        sl = slices[batch["skeleton"]]
        res = {"uvd": out["uvd"][:, sl].float().cpu(), "scale": out["scale"].float().cpu()}
        for k in ("betas", "twist", "leaf_rot"):   # the HPS heads (model.hps)
            if k in out:
                res[k] = out[k].float().cpu()
        return res

    return predict
