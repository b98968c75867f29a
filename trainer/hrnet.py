"""HRNet backbone (Sun et al. 2019) in plain torch, with the module names of the public pose checkpoints.

Layout (pose HRNet, deep-high-resolution-net.pytorch ``pose_hrnet.py``): stem (two stride-2 3x3 convs), ``layer1``
(4 Bottlenecks), then stages 2-4 of multi-resolution modules (BASIC blocks, 4 per branch) joined by transitions.
Stages 2-4 have 1, 4 and 3 modules (HRNet-W48); ``num_modules`` / ``num_blocks`` make lighter variants in the
style of HRNet-W18-small (fewer modules and blocks), whose key names are a prefix-subset of the full model's.
Attribute names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition1..3``, ``stage2..4`` with
``branches`` / ``fuse_layers`` inside) are chosen so that the keys of ``pose_hrnet_w48_256x192.pth`` map 1:1 onto
``HighResolutionNet.state_dict()``, e.g. ``stage2.0.branches.0.0.conv1.weight``, ``stage2.0.fuse_layers.0.1.0.weight``,
``transition1.1.0.0.weight``.

``multi_scale_output`` decides what the LAST module of stage 4 fuses:
- False: only the fusion into the highest-resolution branch (the pose-HRNet checkpoint layout). With width 48 the
  backbone then has 63,594,912 parameters; + the checkpoint's 1x1 ``final_layer`` (48 -> 17 joints, with bias,
  833 parameters) = 63.6 M, the published pose_hrnet_w48 count.
- True: all four branches are fused and returned (what the global vector needs; PersPose's ``generate_feat``).
  The extra fuse layers (``stage4.2.fuse_layers.1..3``) are not in the pose checkpoint and stay randomly initialised.
Every parameter of the variant in use takes part in the forward (DDP without ``find_unused_parameters``).

``GlobalHead`` is HRNet's classification head (HRNet-Image-Classification, as used by HybrIK/PersPose): one
Bottleneck per branch (planes 32/64/128/256 -> 128/256/512/1024 ch), strided 3x3 convs (with bias) + BN + ReLU
merging high -> low resolution, a 1x1 conv (with bias) to 2048 + BN + ReLU, global average pool.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import InputError

__all__ = ["BasicBlock", "Bottleneck", "HighResolutionModule", "HighResolutionNet", "GlobalHead",
           "init_hrnet_weights", "load_pose_hrnet_weights", "LoadReport", "PRETRAINED_PREFIXES"]

log = logging.getLogger(__name__)

BN_MOMENTUM = 0.1


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    conv = _conv3x3(cin, cout, stride) if kernel == 3 else nn.Conv2d(cin, cout, 1, stride, bias=False)
    layers = [conv, nn.BatchNorm2d(cout, momentum=BN_MOMENTUM)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


def _make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """ResNet-style layer; a 1x1 conv + BN shortcut on the first block when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOMENTUM))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _fuse_layer(channels: list[int], i: int, j: int) -> nn.Module | None:
    """Map branch j onto branch i's resolution and width (None for i == j)."""
    if j > i:  # lower resolution -> 1x1 conv + BN, nearest upsample
        return nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                             nn.BatchNorm2d(channels[i], momentum=BN_MOMENTUM),
                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
    if j == i:
        return None
    # higher resolution -> (i - j) strided 3x3 convs; ReLU after all but the last; width changes only at the last
    steps = [_conv_bn(channels[j], channels[j], 3, stride=2) for _ in range(i - j - 1)]
    steps.append(_conv_bn(channels[j], channels[i], 3, stride=2, relu=False))
    return nn.Sequential(*steps)


class HighResolutionModule(nn.Module):
    """Parallel branches of BASIC blocks followed by the all-to-all fusion."""

    def __init__(self, channels: list[int], num_blocks: int, multi_scale_output: bool = True):
        super().__init__()
        self.num_branches = len(channels)
        self.multi_scale_output = multi_scale_output
        self.branches = nn.ModuleList(_make_layer(BasicBlock, c, c, num_blocks) for c in channels)
        n_out = self.num_branches if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_layer(channels, i, j) for j in range(self.num_branches)) for i in range(n_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            y = xs[i] if i == 0 else fuse[0](xs[0])
            for j in range(1, self.num_branches):
                y = y + (xs[j] if i == j else fuse[j](xs[j]))
            out.append(self.relu(y))
        return out


def _make_transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
    """Keep existing branches (None when the width is unchanged) and open each new branch from the lowest one."""
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(None if c == pre[i] else _conv_bn(pre[i], c, 3))
        else:
            n_down = i + 1 - len(pre)
            layers.append(nn.Sequential(*(_conv_bn(pre[-1], c if k == n_down - 1 else pre[-1], 3, stride=2)
                                          for k in range(n_down))))
    return nn.ModuleList(layers)


class HighResolutionNet(nn.Module):
    """HRNet-W{width} backbone. ``forward(x, stage1_add=None)`` -> list of branch features, highest resolution
    first: 4 maps (C, 2C, 4C, 8C channels at strides 4, 8, 16, 32) with ``multi_scale_output``, else 1 map.

    ``stage1_add`` (B, 4*layer1_planes, H/4, W/4) is added to layer1's output before transition1 (the PE hook).
    """

    def __init__(self, width: int = 48, stem_channels: int = 64, layer1_planes: int = 64,
                 num_blocks: int = 4, multi_scale_output: bool = True, num_modules=(1, 4, 3)):
        super().__init__()
        self.width = width
        self.multi_scale_output = multi_scale_output
        self.conv1 = _conv3x3(3, stem_channels, stride=2)
        self.bn1 = nn.BatchNorm2d(stem_channels, momentum=BN_MOMENTUM)
        self.conv2 = _conv3x3(stem_channels, stem_channels, stride=2)
        self.bn2 = nn.BatchNorm2d(stem_channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_layer(Bottleneck, stem_channels, layer1_planes, 4)
        self.layer1_channels = layer1_planes * Bottleneck.expansion

        widths = [width * 2 ** k for k in range(4)]
        self.branch_channels = widths if multi_scale_output else widths[:1]
        self.transition1 = _make_transition([self.layer1_channels], widths[:2])
        if len(num_modules) != 3 or min(num_modules) < 1 or num_blocks < 1:
            raise ValueError(f"num_modules needs 3 positive counts (stages 2-4) and num_blocks >= 1, got "
                             f"{tuple(num_modules)} and {num_blocks}")
        self.stage2 = self._make_stage(widths[:2], num_modules[0], num_blocks, True)
        self.transition2 = _make_transition(widths[:2], widths[:3])
        self.stage3 = self._make_stage(widths[:3], num_modules[1], num_blocks, True)
        self.transition3 = _make_transition(widths[:3], widths)
        self.stage4 = self._make_stage(widths, num_modules[2], num_blocks, multi_scale_output)

    @staticmethod
    def _make_stage(channels: list[int], num_modules: int, num_blocks: int, multi_scale_output: bool):
        return nn.Sequential(*(HighResolutionModule(channels, num_blocks,
                                                    multi_scale_output or k < num_modules - 1)
                               for k in range(num_modules)))

    @staticmethod
    def _transition(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, t in enumerate(transition):
            src = xs[i] if i < len(xs) else xs[-1]
            out.append(src if t is None else t(src))
        return out

    def forward(self, x: torch.Tensor, stage1_add: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        if stage1_add is not None:
            x = x + stage1_add
        xs = self.stage2(self._transition(self.transition1, [x]))
        xs = self.stage3(self._transition(self.transition2, xs))
        return self.stage4(self._transition(self.transition3, xs))


class GlobalHead(nn.Module):
    """HRNet classification head: 4 branch maps -> (B, global_dim) vector."""

    def __init__(self, branch_channels: list[int], head_planes=(32, 64, 128, 256), global_dim: int = 2048):
        super().__init__()
        if len(branch_channels) != len(head_planes):
            raise ValueError(f"{len(branch_channels)} branches but {len(head_planes)} head_planes")
        out_ch = [p * Bottleneck.expansion for p in head_planes]
        self.incre_modules = nn.ModuleList(
            _make_layer(Bottleneck, c, p, 1) for c, p in zip(branch_channels, head_planes))
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(_conv3x3(out_ch[k], out_ch[k + 1], stride=2, bias=True),
                          nn.BatchNorm2d(out_ch[k + 1], momentum=BN_MOMENTUM), nn.ReLU(inplace=True))
            for k in range(len(out_ch) - 1))
        self.final_layer = nn.Sequential(nn.Conv2d(out_ch[-1], global_dim, kernel_size=1),
                                         nn.BatchNorm2d(global_dim, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        y = self.incre_modules[0](xs[0])
        for k, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[k + 1](xs[k + 1]) + down(y)
        y = self.final_layer(y)
        return y.mean(dim=(2, 3))


def init_hrnet_weights(module: nn.Module, std: float = 0.001) -> None:
    """The reference's HRNet init: every conv N(0, std) (bias 0), every BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------------
# Loading the public pose checkpoint (pose_hrnet_w48_256x192.pth of deep-high-resolution-net.pytorch)

PRETRAINED_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition1.", "transition2.", "transition3.",
                       "stage2.", "stage3.", "stage4.")


@dataclass(frozen=True)
class LoadReport:
    loaded: tuple[str, ...]      # backbone keys taken from the checkpoint
    missing: tuple[str, ...]     # backbone keys the checkpoint lacks (stay as initialised)
    unexpected: tuple[str, ...]  # backbone-named checkpoint keys the model does not have
    ignored: tuple[str, ...]     # checkpoint keys outside the backbone (final_layer.* etc.)


def _short(names, n: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")


def load_pose_hrnet_weights(model: nn.Module, path) -> LoadReport:
    """Load a pose-HRNet checkpoint into ``model.backbone`` (or ``model`` itself when it is the backbone).

    Only conv1/bn1/conv2/bn2/layer1/transition1-3/stage2-4 are taken (the reference loads exactly these);
    ``final_layer.*`` (the 17-joint COCO head) and anything else is ignored. A ``module.`` prefix (DataParallel)
    and a ``{"state_dict": ...}`` wrapper are accepted. A shape mismatch is an InputError naming the key.
    """
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, HighResolutionNet):
        raise TypeError(f"expected a HighResolutionNet or a model with .backbone, got {type(model).__name__}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pretrained HRNet checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with non-tensor objects, ...
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {first})") from None
    for wrapper in ("state_dict", "model"):   # MSRA / timm-style, and the official PersPose trainer's
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    from .convert import looks_official   # (convert imports the model, which imports this module)
    if looks_official(state):
        raise InputError(f"{path}: this is an official PersPose checkpoint, not MSRA pose_hrnet weights; convert it "
                         f"(perspose-convert official {path.name} --out OURS.pt) and start from it with --init OURS.pt")

    own = backbone.state_dict()
    selected, unexpected, ignored = {}, [], []
    for key, value in state.items():
        if not key.startswith(PRETRAINED_PREFIXES):
            ignored.append(key)
        elif key not in own:
            unexpected.append(key)
        elif value.shape != own[key].shape:
            raise InputError(f"{path}: {key} has shape {tuple(value.shape)} but the model (width {backbone.width}) "
                             f"expects {tuple(own[key].shape)}; use the checkpoint of the same HRNet width")
        else:
            selected[key] = value
    missing = sorted(k for k in own if k not in selected and not k.endswith("num_batches_tracked"))
    counted = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(selected) < 0.9 * len(counted):   # a wrong file must not silently leave a random backbone
        layout = ("keys under 'backbone.'" if any(k.startswith("backbone.") for k in state) else
                  f"keys such as {next(iter(state))!r}")
        raise InputError(f"{path}: only {len(selected)} of the backbone's {len(counted)} tensors load (it has "
                         f"{layout}); expected MSRA pose_hrnet_w{backbone.width} keys conv1.*, layer1.*, stage2-4.*")
    backbone.load_state_dict(selected, strict=False)
    log.info("loaded %d backbone tensors from %s (%d ignored, e.g. final_layer)", len(selected), path, len(ignored))
    if missing:
        # with multi_scale_output the last stage-4 module's fusions into branches 1-3 are expected here
        log.warning("%d backbone tensors not in %s keep their initialisation: %s", len(missing), path, _short(missing))
    if unexpected:
        log.warning("%d tensors of %s have no place in the backbone: %s", len(unexpected), path, _short(unexpected))
    return LoadReport(tuple(sorted(selected)), tuple(missing), tuple(sorted(unexpected)), tuple(sorted(ignored)))
