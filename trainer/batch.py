"""The batch contract of the shard loaders, and how a batch travels from a loader worker.

Batch contract (a dict; B samples, J = joints of the configured skeletons concatenated in
:func:`pipeline.skeleton.joint_slices` order):

* ``image``          torch.uint8 (B, 3, S, S) RGB, channels_last strides, NOT normalised (done on the device)
* ``K_crop``         torch.float32 (B, 3, 3) intrinsics of the final S crop (after zoom / roll / flip)
* ``R``              torch.float64 (B, 3, 3) R_total: P'' = R_total P (original camera -> final crop camera);
                     det -1 for flipped samples (R_totalᵀ still maps back; then un-permute by flip_perm)
* ``uvd``            torch.float32 (B, J, 3) u, v final-crop pixels, d = z'' - z''_root (m); 0 outside own slice
* ``joints``         torch.float32 (B, J, 3) P'' in metres (0 for 2D-only samples and outside the own slice)
* ``mask_uv``        torch.float32 (B, J) own joints with vis > 0 (the loss drops those outside the crop)
* ``mask_d``         torch.float32 (B, J) own joints of 3D samples
* ``scale``          torch.float32 (B,) z''_root / f_final (m/px); 0 for 2D-only
* ``has_3d``, ``has_intrinsics``, ``flipped``  torch.bool (B,)
* ``betas`` (B, 10), ``twist`` (B, 23, 2), ``twist_mask`` (B, 23), ``leaf_rot`` (B, 5, 3, 3) torch.float32 and
  ``has_smpl`` torch.bool (B,): the HPS labels (:mod:`trainer.hps_labels`; zeros where has_smpl is False)
* ``photo``          torch.float64 (B, P), only with ``AugmentConfig.photometric_on_device``: the photometric
                     and cutout parameters drawn for each sample (columns: :data:`trainer.photometric.COLUMNS`;
                     zeros: nothing to do), NOT yet applied to ``image``; ``to_device`` applies them with
                     :func:`trainer.photometric_torch.apply_photometric_torch` before the normalisation
* ``dataset``, ``sample_id``, ``skeleton``     list[str];  ``meta`` list[dict] (the shard json)
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["collate", "pack_batch", "unpack_batch", "in_worker"]


def collate(records: list[dict], images: np.ndarray | None = None) -> dict:
    """Stack records into the batch contract (module docstring). ``images``: the (B, S, S, 3) uint8 array that
    already holds the records' images in order (the training stream writes each sample's final image into its
    slot: one copy of every image less), or None to stack them."""
    def stack(k, dtype=None):
        # np.array (with the dtype, or the records' own): the values of np.stack + the cast (the records of one key
        # share their dtype), ragged shapes still raise, and it costs half as much per key
        return torch.from_numpy(np.array([r[k] for r in records], dtype))
    if images is None:
        images = np.stack([r["image"] for r in records])                      # (B, S, S, 3)
    return {"image": torch.from_numpy(images).permute(0, 3, 1, 2),              # channels_last view, no copy
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


# Sending a batch from a loader worker costs per tensor (a shared-memory segment and a file descriptor each):
# the ten small tensors of a batch of 32 cost ~8 ms here, as much as its 6 MB image. Workers send them as one
# float64 tensor (exact for float32, float64 and bool) and ShardLoader unpacks it into the batch contract.
# ``photo`` is optional (present only when the photometric chain runs on the device).
_SMALL = {"K_crop": torch.float32, "R": torch.float64, "uvd": torch.float32, "joints": torch.float32,
          "mask_uv": torch.float32, "mask_d": torch.float32, "scale": torch.float32, "has_3d": torch.bool,
          "has_intrinsics": torch.bool, "flipped": torch.bool, "betas": torch.float32, "twist": torch.float32,
          "twist_mask": torch.float32, "leaf_rot": torch.float32, "has_smpl": torch.bool, "photo": torch.float64}


def pack_batch(batch: dict) -> dict:
    """The batch with its small tensors concatenated into ``_packed`` (B, N) float64, and their layout."""
    B = len(batch["sample_id"])
    keys = [k for k in _SMALL if k in batch]
    out = {k: v for k, v in batch.items() if k not in _SMALL}
    out["_packed"] = torch.cat([batch[k].reshape(B, -1).to(torch.float64) for k in keys], 1)
    out["_layout"] = tuple((k, tuple(batch[k].shape[1:])) for k in keys)
    return out


def unpack_batch(batch: dict) -> dict:
    """Inverse of :func:`pack_batch` (a no-op for batches that are not packed)."""
    if "_packed" not in batch:
        return batch
    blob, layout = batch.pop("_packed"), batch.pop("_layout")
    B, o, pinned = blob.shape[0], 0, blob.is_pinned()
    for k, shape in layout:
        dtype = _SMALL[k]
        shape = tuple(shape)          # torch < 2.10's pin_memory turns the layout's tuples into lists
        n = int(np.prod(shape)) if shape else 1
        t = blob[:, o:o + n].reshape((B,) + shape).to(dtype).contiguous()
        batch[k] = t.pin_memory() if pinned and not t.is_pinned() else t   # keep non_blocking copies async
        o += n
    return batch


def in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None
