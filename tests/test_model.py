"""PersPose model: forward, gradients (DDP), PE, heads, soft-argmax, flip test, input layouts.

Backbone counts, checkpoint names and weight loading: tests/test_hrnet.py."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.geometry_torch import joints_from_uvd
from pipeline.skeleton import get_skeleton
from trainer.model import (ModelConfig, build_model, concat_flip_perm, flip_test, normalize_images, soft_argmax,
                           unflip_predictions)

S = 64


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def _K(b: int, f: float = 80.0, cx: float = (S - 1) / 2, cy: float = (S - 1) / 2) -> torch.Tensor:
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    return K.expand(b, 3, 3).clone()


def _images(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, S, S), dtype=torch.uint8, generator=g)


def _tiny(**kw):
    return build_model(ModelConfig.tiny(crop_size=S, **kw))


def _eval_tiny(**kw):
    """Tiny model in eval mode with BN statistics of real activations: with the reference init (convs N(0, 0.001))
    and the default running stats (mean 0, var 1) an eval-mode forward would be input-independent."""
    model = _tiny(**kw)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the batch statistics
    with torch.no_grad():
        model(_images(4, seed=99), _K(4))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------------------
# forward, gradients, batch independence


def test_forward_shapes_dtypes_and_decoding():
    model = _tiny()
    R = torch.linalg.qr(torch.randn(2, 3, 3, dtype=torch.float64))[0]
    out = model(_images(2), _K(2), torch.tensor([True, True]), R=R, return_heatmaps=True)
    J = model.cfg.num_joints
    assert J == 24 + 17 + 17 + 17
    shapes = {"uv": (2, J, 2), "d": (2, J), "uvd": (2, J, 3), "scale": (2,), "xyz_crop": (2, J, 3),
              "xyz_orig": (2, J, 3), "heatmaps": (2, J, S // 4, S // 4)}
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    for k in ("uv", "d", "uvd", "scale", "heatmaps"):
        assert out[k].dtype == torch.float32 and torch.isfinite(out[k]).all(), k
    assert torch.allclose(out["heatmaps"].sum(dim=(2, 3)), torch.ones(2, J))
    assert ((out["uv"] >= 1.5) & (out["uv"] <= S - 2.5)).all()  # convex combination of the cell centres
    # xyz follow from uvd, scale, K (docs/design.md §4.7), and R^T when R is given
    xyz_orig, xyz_crop = joints_from_uvd(out["uvd"], out["scale"], _K(2), R)
    assert torch.allclose(out["xyz_crop"], xyz_crop) and torch.allclose(out["xyz_orig"], xyz_orig)
    assert "xyz_orig" not in model(_images(2), _K(2))


def test_every_parameter_gets_a_gradient():
    model = _tiny()
    out = model(_images(2), _K(2), torch.tensor([True, True]), return_heatmaps=True)
    loss = (out["uvd"].abs().mean() + out["scale"].sum() + out["xyz_crop"].abs().mean()
            + out["heatmaps"].pow(2).sum())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_ddp_without_find_unused_parameters(tmp_path):
    """DDP raises on the 2nd step when a parameter took no part in the 1st (find_unused_parameters off)."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(_tiny())
        for step in range(2):
            out = ddp(_images(2, seed=step), _K(2))
            (out["uvd"].abs().mean() + out["scale"].mean()).backward()
        assert flip_test(ddp, _images(1), _K(1))["uv"].shape == (1, 75, 2)  # unwraps .module for its config
    finally:
        dist.destroy_process_group()


def test_batch_of_one_and_two_agree_in_eval_mode():
    model = _eval_tiny()
    imgs, K = _images(2), torch.cat([_K(1), _K(1, f=60.0, cx=30.0)])
    with torch.no_grad():
        both = model(imgs, K)
        first = model(imgs[:1], K[:1])
        second = model(imgs[1:], K[1:])
    # float32 rounding differs between batch sizes (~2e-4 px here); the samples differ by ~20 px
    for k, tol in (("uvd", 1e-3), ("scale", 1e-6), ("xyz_crop", 1e-4)):
        assert torch.allclose(both[k][:1], first[k], rtol=0, atol=tol), k
        assert torch.allclose(both[k][1:], second[k], rtol=0, atol=tol), k
    assert (first["uvd"] - second["uvd"]).abs().max() > 1.0


def test_bf16_autocast_keeps_float32_outputs():
    model = _eval_tiny()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images(2), _K(2))
    for k in ("uv", "d", "scale", "xyz_crop"):
        assert out[k].dtype == torch.float32 and torch.isfinite(out[k]).all(), k


def test_samples_without_intrinsics_give_no_nan():
    model = _tiny()
    K = _K(2)
    K[1] = 0.0  # COCO: no intrinsics
    out = model(_images(2), K, torch.tensor([True, False]))
    assert all(torch.isfinite(v).all() for v in out.values())
    out["xyz_crop"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------------------------
# Perspective Encoding


def test_pe_conv_exists_only_with_use_pe():
    on, off = _tiny(), _tiny(use_pe=False)
    assert on.pe_conv.weight.shape == (4 * on.cfg.layer1_planes, 2, 1, 1) and on.pe_conv.bias is None
    assert off.pe_conv is None
    assert not any(k.startswith("pe_conv") for k in off.state_dict())
    assert _n_params(on) - _n_params(off) == 2 * 4 * on.cfg.layer1_planes
    w48 = ModelConfig()
    with torch.device("meta"):
        full = build_model(w48)
    assert full.pe_conv.weight.shape == (256, 2, 1, 1)


def test_pe_init_std():
    big = build_model(ModelConfig.tiny(crop_size=S, layer1_planes=64))  # 256 x 2 weights
    assert abs(big.pe_conv.weight.std().item() - 0.01) < 0.002


def test_backbone_init_switch():
    """'hrnet': every backbone conv N(0, 0.001), as the reference; 'torch': PyTorch's Kaiming-uniform default,
    whose std for a 3x3 conv with fan_in n is 1/sqrt(3 n) (gain sqrt(5) -> bound 1/sqrt(n))."""
    torch.manual_seed(0)
    ref = build_model(ModelConfig.tiny(crop_size=S, stem_channels=64)).backbone.conv2.weight  # 64x64x3x3
    torch.manual_seed(0)
    default = build_model(ModelConfig.tiny(crop_size=S, stem_channels=64, backbone_init="torch")).backbone.conv2.weight
    assert abs(ref.std().item() - 0.001) < 1e-4
    expected = 1.0 / math.sqrt(3 * 64 * 9)
    assert abs(default.std().item() - expected) < 0.05 * expected
    with pytest.raises(ValueError, match="backbone_init"):
        ModelConfig.tiny(backbone_init="xavier")


def test_changing_K_changes_the_prediction_only_with_pe():
    imgs = _images(1)
    K_a, K_b = _K(1, f=80.0), _K(1, f=40.0)
    with torch.no_grad():
        on = _eval_tiny()
        a, b = on(imgs, K_a), on(imgs, K_b)
        assert (a["uvd"] - b["uvd"]).abs().max() > 1e-2 and (a["scale"] - b["scale"]).abs().max() > 1e-5
        # has_intrinsics=False zeroes the map: K is then irrelevant, same as an all-zero K
        na, nb = on(imgs, K_a, torch.tensor([False])), on(imgs, K_b, torch.tensor([False]))
        nz = on(imgs, torch.zeros(1, 3, 3), torch.tensor([True]))
        assert torch.equal(na["uvd"], nb["uvd"]) and torch.equal(na["uvd"], nz["uvd"])
        off = _eval_tiny(use_pe=False)
        a, b = off(imgs, K_a), off(imgs, K_b)
        assert torch.equal(a["uvd"], b["uvd"]) and torch.equal(a["scale"], b["scale"])
        assert not torch.allclose(a["xyz_crop"], b["xyz_crop"])  # decoding still uses K


# ---------------------------------------------------------------------------------------------------------------
# heads


@pytest.mark.parametrize("i,j", [(0, 0), (3, 7), (15, 15), (15, 0), (0, 15)])
def test_soft_argmax_of_a_delta_is_the_cell_centre(i, j):
    logits = torch.full((1, 1, S // 4, S // 4), -1e4)
    logits[0, 0, i, j] = 0.0
    uv, prob = soft_argmax(logits, S)
    assert uv[0, 0].tolist() == [4 * j + 1.5, 4 * i + 1.5]
    assert prob[0, 0, i, j] == 1.0


def test_soft_argmax_of_a_flat_map_is_the_crop_centre():
    uv, _ = soft_argmax(torch.zeros(2, 3, S // 4, S // 4), S)
    assert torch.allclose(uv, torch.full_like(uv, (S - 1) / 2), atol=1e-5)
    with pytest.raises(ValueError):
        soft_argmax(torch.zeros(1, 1, 8, 8), S)


def test_relative_depth_is_zero_at_each_root_and_bounded():
    model = _tiny()
    with torch.no_grad():
        model.depth_head.bias.normal_(std=3.0)
        out = model(_images(2), _K(2))
    d = out["d"]
    for name, sl in model.joint_slices.items():
        root = get_skeleton(name).root
        if root is None:
            assert (d[:, sl] != 0).all()  # 2D-only skeleton: nothing forced
            continue
        assert (d[:, sl.start + root] == 0).all(), name
        others = [sl.start + k for k in range(sl.stop - sl.start) if k != root]
        assert (d[:, others] != 0).all(), name
    assert (d.abs() < 1.1).all() and d.abs().max() > 0.5
    assert torch.equal(out["uvd"][..., 2], d)


@pytest.mark.parametrize("crop", [64, 256])
def test_scale_bounds_follow_the_reference_scaled_by_256_over_S(crop):
    model = build_model(ModelConfig.tiny(crop_size=crop))
    lo, hi = model.scale_bounds
    k = 256 / crop
    assert math.isclose(lo, 0.007 * math.exp(-1.5) * k, rel_tol=1e-6)  # reference: 1.56e-3 m/px at S = 256
    assert math.isclose(hi, 0.007 * math.exp(1.5) * k, rel_tol=1e-6)   # reference: 3.14e-2 m/px
    imgs = torch.randint(0, 256, (1, 3, crop, crop), dtype=torch.uint8)
    K = torch.tensor([[[crop * 1.2, 0, (crop - 1) / 2], [0, crop * 1.2, (crop - 1) / 2], [0, 0, 1]]])
    with torch.no_grad():
        for bias, target in ((-50.0, lo), (0.0, 0.007 * k), (50.0, hi)):
            model.scale_head.weight.zero_()
            model.scale_head.bias.fill_(bias)
            s = model(imgs, K)["scale"].item()
            assert math.isclose(s, target, rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# flip


def test_flip_permutation_is_an_involution_that_swaps_sides():
    names = ModelConfig().skeletons
    perm = torch.tensor(concat_flip_perm(names))
    assert torch.equal(perm[perm], torch.arange(len(perm)))
    smpl = get_skeleton("smpl24")
    assert perm[smpl.index("l_hip")] == smpl.index("r_hip") and perm[smpl.index("pelvis")] == smpl.index("pelvis")
    h36m = get_skeleton("h36m17")
    assert perm[24 + h36m.index("l_wrist")] == 24 + h36m.index("r_wrist")  # permuted inside its own slice
    out = {"uv": torch.rand(2, len(perm), 2) * 60, "d": torch.rand(2, len(perm)), "scale": torch.rand(2),
           "heatmaps": torch.rand(2, len(perm), 16, 16)}
    twice = unflip_predictions(unflip_predictions(out, perm, S), perm, S)
    for k in out:
        assert torch.allclose(twice[k], out[k]), k


def test_unflip_mirrors_u_about_S_minus_1_and_swaps_joints_and_depths():
    perm = torch.tensor(concat_flip_perm(("smpl24",)))
    smpl = get_skeleton("smpl24")
    l_hip, r_hip, pelvis = smpl.index("l_hip"), smpl.index("r_hip"), smpl.index("pelvis")
    uv, d = torch.zeros(1, 24, 2), torch.zeros(1, 24)
    uv[0, l_hip], d[0, l_hip] = torch.tensor([10.0, 20.0]), 0.3
    uv[0, pelvis], d[0, pelvis] = torch.tensor([31.5, 5.0]), 0.0
    back = unflip_predictions({"uv": uv, "d": d, "scale": torch.tensor([0.02])}, perm, S)
    assert back["uv"][0, r_hip].tolist() == [S - 1 - 10.0, 20.0] and back["d"][0, r_hip].item() == pytest.approx(0.3)
    assert back["uv"][0, pelvis].tolist() == [31.5, 5.0]  # the crop centre is its own mirror
    assert back["d"][0, l_hip] == 0.0 and back["scale"].item() == pytest.approx(0.02)


@pytest.mark.parametrize("i,j", [(2, 0), (5, 9), (15, 15)])
def test_mirroring_a_heatmap_mirrors_its_soft_argmax_exactly(i, j):
    """The stride-4 grid is symmetric under u -> S-1-u: flipping heatmap columns is the exact pixel mirror."""
    logits = torch.full((1, 1, S // 4, S // 4), -1e4)
    logits[0, 0, i, j] = 0.0
    uv, prob = soft_argmax(logits, S)
    uv_m, prob_m = soft_argmax(logits.flip(-1), S)
    back = unflip_predictions({"uv": uv_m, "d": torch.zeros(1, 1), "scale": torch.ones(1), "heatmaps": prob_m},
                              torch.tensor([0]), S)
    assert torch.equal(back["uv"], uv) and torch.equal(back["heatmaps"], prob)


def test_flip_test_on_a_mirror_symmetric_input_is_mirror_symmetric():
    model = _eval_tiny()
    half = _images(1)
    imgs = torch.cat([half[..., : S // 2], half[..., : S // 2].flip(-1)], dim=-1)  # left/right symmetric
    assert torch.equal(imgs, imgs.flip(-1))
    with torch.no_grad():
        out = flip_test(model, imgs, _K(1), return_heatmaps=True)
    mirrored = unflip_predictions(out, model.flip_perm, S)
    for k in ("uv", "d", "scale", "heatmaps"):
        assert torch.allclose(mirrored[k], out[k], atol=1e-4), k
    assert torch.allclose(out["xyz_crop"], joints_from_uvd(out["uvd"], out["scale"], _K(1))[1])


def test_flip_test_is_equivariant_to_mirroring_the_input():
    """flip_test(mirror(image), K with c_x -> S-1-c_x) == mirror of flip_test(image, K); also off-centre K."""
    model = _eval_tiny()
    imgs, K = _images(2), torch.cat([_K(1), _K(1, f=70.0, cx=25.0, cy=35.0)])
    K_m = K.clone()
    K_m[:, 0, 2] = (S - 1) - K[:, 0, 2]
    with torch.no_grad():
        out = flip_test(model, imgs, K)
        out_m = flip_test(model, imgs.flip(-1), K_m)
        plain = model(imgs, K)
    back = unflip_predictions(out_m, model.flip_perm, S)
    for k in ("uv", "d", "scale"):
        assert torch.allclose(back[k], out[k], atol=1e-4), k
    assert not torch.allclose(plain["uv"], out["uv"], atol=1e-3)  # the average really includes the flipped pass


def test_flip_test_accepts_nhwc_uint8():
    model = _eval_tiny()
    imgs = _images(2)
    with torch.no_grad():
        a = flip_test(model, imgs, _K(2))
        b = flip_test(model, imgs.permute(0, 2, 3, 1).contiguous(), _K(2))
    assert torch.allclose(a["uvd"], b["uvd"], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# input normalisation and memory layouts


def test_normalize_images_values_and_layouts():
    mean = torch.tensor([0.485, 0.456, 0.406]) * 255
    img = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    img[:, 0], img[:, 1], img[:, 2] = 255, 0, 116
    x = normalize_images(img)
    assert x.dtype == torch.float32
    assert torch.allclose(x[0, :, 0, 0], (torch.tensor([255.0, 0.0, 116.0]) - mean) / (torch.tensor([0.229, 0.224, 0.225]) * 255))
    nhwc = img.permute(0, 2, 3, 1).contiguous()
    y = normalize_images(nhwc)
    assert y.shape == (1, 3, 4, 4) and torch.equal(x, y) and y.is_contiguous(memory_format=torch.channels_last)
    assert normalize_images(nhwc, channels_last=False).is_contiguous()
    assert normalize_images(img, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        normalize_images(torch.zeros(1, 4, 5, 5, dtype=torch.uint8))


def test_channels_last_model_and_input_give_the_same_output():
    model = _eval_tiny()
    imgs = _images(2)
    with torch.no_grad():
        ref = model(imgs, _K(2))
        from_nhwc = model(imgs.permute(0, 2, 3, 1).contiguous(), _K(2))
        model = model.to(memory_format=torch.channels_last)
        cl = model(normalize_images(imgs, channels_last=True), _K(2))
    for out in (from_nhwc, cl):
        assert torch.allclose(out["uvd"], ref["uvd"], atol=1e-4) and torch.allclose(out["scale"], ref["scale"])


def test_wrong_input_size_and_bad_config_are_errors():
    with pytest.raises(ValueError, match="expected images"):
        _tiny()(torch.zeros(1, 3, 96, 96, dtype=torch.uint8), _K(1))
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(crop_size=200)
    with pytest.raises(ValueError, match="unknown skeleton"):
        ModelConfig(skeletons=("smpl24", "nope"))
    cfg = ModelConfig(skeletons=["h36m17"], head_planes=[1, 2, 3, 4])  # lists from YAML become tuples
    assert cfg.skeletons == ("h36m17",) and cfg.head_planes == (1, 2, 3, 4) and hash(cfg)
    model = build_model(ModelConfig.tiny(crop_size=S, skeletons=("h36m17",)))
    assert model(_images(1), _K(1))["uv"].shape == (1, 17, 2)


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_w48_forward_at_256():
    model = build_model(ModelConfig()).eval()
    imgs = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8)
    K = torch.tensor([[[300.0, 0, 127.5], [0, 300.0, 127.5], [0, 0, 1]]])
    with torch.no_grad():
        out = model(imgs, K, return_heatmaps=True)
    assert out["uvd"].shape == (1, 75, 3) and out["heatmaps"].shape == (1, 75, 64, 64)
    assert all(torch.isfinite(v).all() for v in out.values())
