"""Official PersPose checkpoints -> checkpoints of this toolkit (issue 19).

The official model (github.com/KenAdamsJoseph/PersPose, ``src_PersPose/PersPose.py`` and
``common/model/HRNet/HRNet_hybrik.py`` at commit 1863de7) is the same network as :class:`trainer.model.PersPose`
with other module names:

=================================================  ==============================================
official                                           here
=================================================  ==============================================
``backbone.{conv1,bn1,...,stage4}.*``              ``backbone.*`` (the HRNet itself)
``backbone.incre_modules.*``                       ``global_head.incre_modules.*``
``backbone.downsamp_modules.*``                    ``global_head.downsamp_modules.*``
``backbone.final_feat_layer.*``                    ``global_head.final_layer.*``
``hm_layer.*`` (25 joint rows)                     ``heatmap_head.*`` (the smpl24 block: rows 0-23)
``depth_layer_global.*`` (25 rows)                 ``depth_head.*`` (rows 0-23)
``rho0_layer.*``                                   ``scale_head.*``
``cam_layer.weight``                               ``pe_conv.weight``
``twist_layer``, ``shape_layer``, ``leaf_rot_layer``  kept under ``official_heads`` (HPS branch; unused here)
``smpl.*`` (frozen body-model buffers)             dropped (the SMPL files are the user's)
=================================================  ==============================================

The official joint rows are the 24 SMPL joints and then the Human3.6M pelvis (row 24, used by its 3DHP losses);
the converted model predicts the ``smpl24`` skeleton only, exactly the official rows 0-23 (no randomly
initialised rows for skeletons the official model does not predict); row 24 is kept under ``official_extra``.

Pixel convention. The official code puts pixel centres at i + 0.5 (its PE grid and soft-argmax grid are
(j + 0.5)·4, its flip c_x -> W - c_x); this toolkit at i (grid 4j + 1.5, flip S - 1 - c_x). For the same crop
image the official K has a principal point 0.5 px larger. Both grids and both principal points move by the same
0.5 px, so K⁻¹ [grid] (the PE map), u - c_x (the decoding) and the flip are identical: the weights need no change,
and the converted model fed this toolkit's K predicts in this toolkit's pixels exactly what the official model
predicts in its own (tests/test_convert.py checks the joints to 0.1 mm). The official decoding uses
f = (fx + fy) / 2 where this toolkit uses fx and fy; under PR the crop has fx = fy.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from pipeline.errors import InputError

from .model import ModelConfig, build_model

log = logging.getLogger(__name__)

__all__ = ["OFFICIAL_JOINTS", "official_state_dict", "convert_official", "looks_official"]

OFFICIAL_JOINTS = 25            # 24 SMPL joints + the Human3.6M pelvis
_HEADS = {"hm_layer.": "heatmap_head.", "depth_layer_global.": "depth_head.", "rho0_layer.": "scale_head.",
          "cam_layer.": "pe_conv."}
_GLOBAL = {"backbone.incre_modules.": "global_head.incre_modules.",
           "backbone.downsamp_modules.": "global_head.downsamp_modules.",
           "backbone.final_feat_layer.": "global_head.final_layer."}
_HPS = ("twist_layer.", "shape_layer.", "leaf_rot_layer.")
_REQUIRED = ("hm_layer.weight", "depth_layer_global.weight", "rho0_layer.weight", "backbone.conv1.weight",
             "backbone.final_feat_layer.0.weight")


def looks_official(state: Mapping) -> bool:
    """Whether a state dict has the official PersPose layout (after any ``module.`` prefix)."""
    keys = {k.removeprefix("module.") for k in state}
    return "hm_layer.weight" in keys and "backbone.conv1.weight" in keys


def official_state_dict(obj, where) -> dict:
    """The official model's state dict from what ``torch.load`` returned: ``{'model': sd, ...}`` (the official
    trainer's format), ``{'state_dict': sd}``, or a plain state dict; ``module.`` prefixes removed. InputError
    naming ``where`` and what was expected otherwise."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{where}: not an official PersPose checkpoint (expected a state dict of tensors, or "
                         f"{{'model': state dict}} as the official trainer saves)")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        kind = "a perspose-train checkpoint" if "heatmap_head.weight" in sd else \
            "an MSRA pose_hrnet checkpoint" if "conv1.weight" in sd else "another layout"
        raise InputError(f"{where}: not an official PersPose checkpoint: no {missing[0]!r} (this looks like {kind}; "
                         f"expected hm_layer, depth_layer_global, rho0_layer, cam_layer and backbone.* tensors)")
    return sd


def _model_config(sd: dict, where) -> ModelConfig:
    joints = sd["hm_layer.weight"].shape[0]
    if joints != OFFICIAL_JOINTS:
        raise InputError(f"{where}: hm_layer has {joints} joint rows; the official model has {OFFICIAL_JOINTS} "
                         f"(24 SMPL joints + the H36M pelvis)")
    def count(prefix: str) -> int:  # distinct indices right after the prefix
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
    try:  # the official network is W48; the layout is read from the shapes so that any width converts
        return ModelConfig(
            width=sd["hm_layer.weight"].shape[1], crop_size=256, skeletons=("smpl24",),
            use_pe="cam_layer.weight" in sd, global_dim=sd["depth_layer_global.weight"].shape[1],
            head_planes=tuple(sd[f"backbone.incre_modules.{i}.0.conv3.weight"].shape[0] // 4 for i in range(4)),
            stem_channels=sd["backbone.conv1.weight"].shape[0],
            layer1_planes=sd["backbone.layer1.0.conv1.weight"].shape[0],
            stage_modules=tuple(count(f"backbone.stage{k}.") for k in (2, 3, 4)),
            stage_blocks=count("backbone.stage2.0.branches.0."))
    except (KeyError, ValueError) as e:
        raise InputError(f"{where}: the official backbone layout is incomplete ({type(e).__name__}: {e})") from None


def convert_official(sd: dict, where="checkpoint") -> tuple[dict, ModelConfig, dict, list[str]]:
    """Official state dict -> (our state dict, its ModelConfig, extras kept aside, notes). Every official tensor
    is mapped, kept aside or dropped with a note; our model must load the result strictly."""
    cfg = _model_config(sd, where)
    ours, extra, notes = {}, {"official_heads": {}, "official_extra": {}}, []
    dropped = []
    for key, value in sd.items():
        if key.startswith("smpl."):
            dropped.append(key)
            continue
        if key.startswith(_HPS):
            extra["official_heads"][key] = value
            continue
        new = next((n + key[len(o):] for o, n in {**_HEADS, **_GLOBAL}.items() if key.startswith(o)), None)
        if new is None and key.startswith("backbone."):
            new = key
        if new is None:
            raise InputError(f"{where}: unexpected tensor {key!r} in an official PersPose checkpoint")
        if key.startswith(("hm_layer.", "depth_layer_global.")):
            extra["official_extra"][key + "[24]"] = value[24:].clone()   # the H36M pelvis row
            value = value[:24]
        ours[new] = value.clone()
    if dropped:
        notes.append(f"dropped {len(dropped)} smpl.* body-model buffers (the SMPL files are yours to provide)")
    if extra["official_heads"]:
        notes.append(f"kept {len(extra['official_heads'])} twist/shape/leaf-rotation head tensors under "
                     f"official_heads (the HPS branch; this model does not use them)")
    notes.append("official joint row 24 (the Human3.6M pelvis) kept under official_extra; the converted model "
                 "predicts the 24 SMPL joints (skeleton smpl24)")
    model = build_model(cfg)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as e:
        raise InputError(f"{where}: the official tensors do not fit the network "
                         f"({str(e).splitlines()[0][:200]})") from None
    return ours, cfg, extra, notes
