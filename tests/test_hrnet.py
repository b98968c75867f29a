"""HRNet backbone: parameter counts against the published models, public checkpoint names, weight loading."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pipeline.errors import InputError
from trainer.hrnet import HighResolutionNet, load_pose_hrnet_weights
from trainer.model import ModelConfig, build_model


def _tiny():
    return build_model(ModelConfig.tiny(crop_size=64))


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _meta_count(width: int, multi_scale: bool) -> int:
    with torch.device("meta"):
        return _n_params(HighResolutionNet(width, multi_scale_output=multi_scale))


def test_pose_backbone_w48_has_the_published_63_6_M_parameters():
    """'Pose backbone' = conv1, bn1, conv2, bn2, layer1, transition1-3, stage2-4 with the last stage-4 module fused
    into the 48-ch branch only (pose_hrnet layout). pose_hrnet_w48 = that + the 1x1 final_layer 48->17 (+bias)."""
    n = _meta_count(48, multi_scale=False)
    assert n == 63_594_912
    assert abs(n + 48 * 17 + 17 - 63.6e6) < 0.1e6


def test_w32_counts():
    """pose_hrnet_w32 (pose layout) is the published 28.5 M; with the multi-scale last module (what PersPose uses)
    it is 29.3 M."""
    assert abs(_meta_count(32, multi_scale=False) + 32 * 17 + 17 - 28.5e6) < 0.1e6
    assert abs(_meta_count(32, multi_scale=True) - 29.3e6) < 0.1e6


def test_full_model_w48_count():
    with torch.device("meta"):
        model = build_model(ModelConfig())
    # backbone (multi-scale) 65.33 M + global head 10.10 M + PE 512 + heads (75 joints) 0.16 M
    assert _n_params(model.backbone) == 65_325_120
    assert abs(_n_params(model.global_head) - 10.1e6) < 0.01e6
    assert abs(_n_params(model) - 75.58e6) < 0.01e6


PUBLIC_POSE_HRNET_W48_KEYS = {  # names and shapes of tensors in pose_hrnet_w48_256x192.pth
    "conv1.weight": (64, 3, 3, 3),
    "bn2.running_var": (64,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.3.conv3.weight": (256, 64, 1, 1),
    "transition1.0.0.weight": (48, 256, 3, 3),
    "transition1.1.0.0.weight": (96, 256, 3, 3),
    "transition2.2.0.0.weight": (192, 96, 3, 3),
    "transition3.3.0.0.weight": (384, 192, 3, 3),
    "stage2.0.branches.0.0.conv1.weight": (48, 48, 3, 3),
    "stage2.0.branches.1.3.bn2.bias": (96,),
    "stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
    "stage2.0.fuse_layers.1.0.0.0.weight": (96, 48, 3, 3),
    "stage3.3.fuse_layers.2.0.0.0.weight": (48, 48, 3, 3),
    "stage3.3.fuse_layers.2.0.1.0.weight": (192, 48, 3, 3),
    "stage4.0.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
    "stage4.2.branches.3.3.conv2.weight": (384, 384, 3, 3),
    "stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
    "stage4.2.fuse_layers.0.3.1.running_mean": (48,),
}


def test_backbone_uses_the_public_checkpoint_names():
    with torch.device("meta"):
        pose = HighResolutionNet(48, multi_scale_output=False).state_dict()
        perspose = build_model(ModelConfig()).backbone.state_dict()
    for key, shape in PUBLIC_POSE_HRNET_W48_KEYS.items():
        assert tuple(pose[key].shape) == shape, key
        assert tuple(perspose[key].shape) == shape, key
    assert "stage4.2.fuse_layers.1.0.0.0.weight" not in pose  # pose layout: last module fuses into branch 0 only
    extra = set(perspose) - set(pose)
    assert extra and all(k.startswith(("stage4.2.fuse_layers.1.", "stage4.2.fuse_layers.2.",
                                       "stage4.2.fuse_layers.3.")) for k in extra)


def _pose_checkpoint(width: int) -> dict[str, torch.Tensor]:
    """A checkpoint as deep-high-resolution-net.pytorch saves it (pose layout + the 17-joint final_layer)."""
    sd = {k: torch.randn(v.shape) if v.is_floating_point() else v.clone()
          for k, v in HighResolutionNet(width, 8, 4, multi_scale_output=False).state_dict().items()}
    sd["final_layer.weight"] = torch.randn(17, width, 1, 1)
    sd["final_layer.bias"] = torch.randn(17)
    return sd


def test_load_pose_hrnet_weights_maps_keys_and_reports(tmp_path, caplog):
    ckpt = _pose_checkpoint(4)
    ckpt["stage4.9.bogus.weight"] = torch.zeros(3)
    path = tmp_path / "pose_hrnet.pth"
    torch.save(ckpt, path)
    model = _tiny()
    head_before = model.heatmap_head.weight.clone()
    with caplog.at_level(logging.INFO, logger="trainer.hrnet"):
        report = load_pose_hrnet_weights(model, path)
    own = model.backbone.state_dict()
    for k in report.loaded:
        assert torch.equal(own[k], ckpt[k]), k
    assert len(report.loaded) == len(ckpt) - 3
    assert report.unexpected == ("stage4.9.bogus.weight",)
    assert report.ignored == ("final_layer.bias", "final_layer.weight")
    assert report.missing and all(k.startswith("stage4.2.fuse_layers.") and k.split(".")[3] in "123"
                                  for k in report.missing)
    assert torch.equal(model.heatmap_head.weight, head_before)  # final_layer never lands anywhere
    assert "keep their initialisation" in caplog.text and "no place in the backbone" in caplog.text
    # DataParallel prefix and {"state_dict": ...} wrapper
    torch.save({"state_dict": {"module." + k: v for k, v in ckpt.items()}}, path)
    assert load_pose_hrnet_weights(_tiny(), path).loaded == report.loaded


def test_load_pose_hrnet_weights_errors(tmp_path):
    path = tmp_path / "w.pth"
    ckpt = _pose_checkpoint(4)
    ckpt["stage3.1.branches.2.0.conv1.weight"] = torch.zeros(5, 5, 3, 3)
    torch.save(ckpt, path)
    with pytest.raises(InputError, match=r"stage3\.1\.branches\.2\.0\.conv1\.weight"):
        load_pose_hrnet_weights(_tiny(), path)
    with pytest.raises(InputError, match="not found"):
        load_pose_hrnet_weights(_tiny(), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_pose_hrnet_weights(_tiny(), tmp_path / "junk.pth")
