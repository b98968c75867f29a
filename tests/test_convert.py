"""perspose-convert official (issue 19): an official-layout PersPose state dict -> a checkpoint of this toolkit
that predicts, through perspose-eval's own path (our K, our decoding, Rᵀ), the joints the official network
predicts for the same crops (its K, its decoding, then Rᵀ), to 0.1 mm.

The official layout is written down here from the official code (src_PersPose/PersPose.py and
common/model/HRNet/HRNet_hybrik.py at commit 1863de7), in our own words: module names, 25 joint rows (24 SMPL +
the H36M pelvis), its pixel grid (j + 0.5)·4, its K with pixel centres at i + 0.5, its flip (c_x -> W - c_x,
u -> W - u), its decoding with f = (fx + fy) / 2 and "density" = d / f + rho0.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import InputError
from pipeline.skeleton import get_skeleton
from trainer import evaluate as E
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.convert import convert_official, official_state_dict
from trainer.convert_cli import main as convert_main
from trainer.hrnet import GlobalHead, HighResolutionNet
from trainer.model import ModelConfig, build_model, normalize_images
from test_evaluate import _rows

S = 256          # the official crop
TINY = dict(width=4, crop_size=S, global_dim=32, head_planes=(2, 4, 8, 16), stem_channels=8, layer1_planes=4,
            stage_modules=(1, 2, 1), stage_blocks=2, skeletons=("smpl24",))


def official_layout(seed: int = 0) -> dict:
    """A randomly initialised PersPose in the official key layout (tiny width; the layout does not depend on it)."""
    torch.manual_seed(seed)
    ours = build_model(ModelConfig(**TINY)).state_dict()
    rename = {"heatmap_head.": "hm_layer.", "depth_head.": "depth_layer_global.", "scale_head.": "rho0_layer.",
              "pe_conv.": "cam_layer.", "global_head.incre_modules.": "backbone.incre_modules.",
              "global_head.downsamp_modules.": "backbone.downsamp_modules.",
              "global_head.final_layer.": "backbone.final_feat_layer."}
    sd = {}
    for k, v in ours.items():
        new = next((n + k[len(o):] for o, n in rename.items() if k.startswith(o)), k)
        if k.startswith(("heatmap_head.", "depth_head.")):          # a 25th row: the H36M pelvis
            v = torch.cat([v, torch.randn_like(v[:1])])
        sd[new] = v
    for k, v in sd.items():                                          # non-trivial BN statistics
        if k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    g = TINY["global_dim"]
    sd.update({"twist_layer.weight": torch.randn(75, g), "twist_layer.bias": torch.randn(75),
               "shape_layer.weight": torch.randn(11, g), "shape_layer.bias": torch.randn(11),
               "leaf_rot_layer.weight": torch.randn(30, g), "leaf_rot_layer.bias": torch.randn(30),
               "smpl.shapedirs": torch.randn(6890, 3, 11), "smpl.J_regressor": torch.rand(24, 6890)})
    return sd


def _official_backbone(sd: dict):
    """The official backbone (HRNet_hybrik with its classification head), weights loaded by the official names.
    It is the same network as ours (issue 19 measured 1752 tensors bit-exact on the W48 file)."""
    cfg = ModelConfig(**TINY)
    hr = HighResolutionNet(cfg.width, cfg.stem_channels, cfg.layer1_planes, cfg.stage_blocks, multi_scale_output=True,
                           num_modules=cfg.stage_modules)
    head = GlobalHead(hr.branch_channels, cfg.head_planes, cfg.global_dim)
    hr.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("backbone.") and not
                        k.startswith(("backbone.incre", "backbone.downsamp", "backbone.final_feat"))})
    head.load_state_dict({k.replace("backbone.final_feat_layer.", "final_layer.").replace("backbone.", ""): v
                          for k, v in sd.items() if k.startswith(("backbone.incre", "backbone.downsamp",
                                                                  "backbone.final_feat"))})
    return hr.eval(), head.eval()


@torch.no_grad()
def official_joints(sd: dict, images: np.ndarray, K_ours: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The official network's 24 SMPL joints in the original camera (metres): its inner() twice (plain and
    mirrored: the flip test), averaged, decoded its way, then Rᵀ (which the official code never applies)."""
    hr, head = _official_backbone(sd)
    x = normalize_images(torch.from_numpy(images), channels_last=False)
    K = torch.from_numpy(K_ours).double().clone()
    K[:, 0, 2] += 0.5                                 # its pixel centres are at i + 0.5
    K[:, 1, 2] += 0.5
    B, W = x.shape[0], S
    flip_idx = torch.arange(25)
    for a, b in get_skeleton("smpl24").flip_pairs:
        flip_idx[a], flip_idx[b] = b, a

    def inner(img, Kc, flip):
        if flip:
            img = img.flip(-1)
            Kc = Kc.clone()
            Kc[:, 0, 2] = W - Kc[:, 0, 2]
        j, i = torch.meshgrid(torch.arange(W // 4, dtype=torch.float64), torch.arange(W // 4, dtype=torch.float64),
                              indexing="xy")                          # j: column, i: row
        grid = torch.stack([(j + 0.5) * 4, (i + 0.5) * 4, torch.ones_like(j)], -1)
        normed = (torch.inverse(Kc)[:, None, None] @ grid[None, ..., None])[..., :2, 0]     # B, 64, 64, 2
        cam = torch.nn.functional.conv2d(normed.permute(0, 3, 1, 2).float(), sd["cam_layer.weight"])
        feats = hr(img, cam)
        gfeat = head(feats)
        hm = torch.nn.functional.conv2d(feats[0], sd["hm_layer.weight"], sd["hm_layer.bias"])
        hm = hm.reshape(B, 25, -1).softmax(-1).reshape(B, 25, W // 4, W // 4)
        cells = (torch.arange(W // 4) + 0.5) * 4
        uv = torch.stack([(hm.sum(2) * cells).sum(-1), (hm.sum(3) * cells).sum(-1)], -1)
        depth = 2.2 * (torch.sigmoid(gfeat @ sd["depth_layer_global.weight"].T + sd["depth_layer_global.bias"]) - 0.5)
        depth = torch.cat([0 * depth[:, :1], depth[:, 1:]], 1)
        rho0 = 7e-3 * torch.exp((torch.sigmoid(gfeat @ sd["rho0_layer.weight"].T + sd["rho0_layer.bias"]) - 0.5) * 3)
        if flip:
            depth, uv = depth[:, flip_idx], uv[:, flip_idx]
            uv = torch.cat([W - uv[..., :1], uv[..., 1:]], -1)
        return depth.double(), uv.double(), rho0.double()

    (d1, uv1, r1), (d2, uv2, r2) = inner(x, K, False), inner(x, K, True)
    depth, uv, rho0 = (d1 + d2) / 2, (uv1 + uv2) / 2, (r1 + r2) / 2
    f = (K[:, 0, 0] + K[:, 1, 1])[:, None] / 2
    density = depth / f + rho0
    xy = (uv - K[:, None, :2, 2]) * density[..., None]
    xyz = torch.cat([xy, (f * density)[..., None]], -1)[:, :24]     # the crop camera, absolute
    return (xyz @ torch.from_numpy(R).double()).numpy()             # row form of R^T P'


def _shards(tmp_path):
    from pipeline.shard import BuildOptions, encode_sample, process_row, write_tar
    rows, images = _rows(5, n_per_skeleton=3)
    keep = [(r, im) for r, im in zip(rows, images) if r["skeleton"] == "smpl24"]
    out = tmp_path / "shards"
    out.mkdir()
    write_tar(out / "test-000000.tar", [encode_sample(process_row(r, im, BuildOptions(crop_size=S)))
                                        for r, im in keep])
    return out


def test_converted_model_predicts_the_official_networks_joints(tmp_path):
    sd = official_layout()
    ours, cfg, extra, notes = convert_official(sd)
    assert cfg.skeletons == ("smpl24",) and cfg.crop_size == S and cfg.width == 4
    assert set(extra["official_heads"]) == {f"{m}.{p}" for m in ("twist_layer", "shape_layer", "leaf_rot_layer")
                                            for p in ("weight", "bias")}
    assert any("smpl.*" in n for n in notes) and set(extra["official_extra"]) == {"hm_layer.weight[24]",
                                                                                 "hm_layer.bias[24]",
                                                                                 "depth_layer_global.weight[24]",
                                                                                 "depth_layer_global.bias[24]"}
    model = build_model(cfg)
    model.load_state_dict(ours)
    model.eval()
    shards = _shards(tmp_path)
    got = {}

    def capture(batch):
        out = predict(batch)
        theirs = official_joints(sd, batch["image"], batch["K_crop"], batch["R"])
        for m, t in zip(batch["meta"], theirs):
            got[m["sample_id"]] = t
        return out
    predict = E.model_predict_fn(model, cfg.skeletons, "cpu", flip_test=True)
    rec = E.evaluate(capture, [shards], crop_size=S, skeletons=cfg.skeletons, progress=False)["records"]
    assert len(rec["sample_id"]) == 3
    for sid, ours_cam in zip(rec["sample_id"], rec["pred_cam"]):
        diff_mm = np.abs(ours_cam - got[sid]).max() * 1000
        assert diff_mm < 0.1, (sid, diff_mm)


def test_cli_converts_records_the_source_and_refuses_other_layouts(tmp_path):
    sd = official_layout(1)
    src = tmp_path / "ckpt_official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 16}, src)
    out = tmp_path / "ours.pt"
    r = CliRunner().invoke(convert_main, ["official", str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "mapped into the model" in r.output and "note: dropped 2 smpl.*" in r.output
    ck = load_checkpoint(out, require=("model", "config"))
    assert ck["converted_from"]["file"] == src.name and len(ck["converted_from"]["sha256"]) == 64
    assert ck["converted_from"]["epoch"] == 16 and "pixel centres" in ck["pixel_convention"]
    json.dumps(ck["config"])                                            # plain values
    for bad, needle in ((build_model(ModelConfig.tiny()).state_dict(), "perspose-train checkpoint"),
                        ({"conv1.weight": torch.zeros(1)}, "MSRA pose_hrnet"), ([1, 2], "state dict of tensors")):
        torch.save(bad, tmp_path / "bad.pth")
        r = CliRunner().invoke(convert_main, ["official", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "x.pt")])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.output
    with pytest.raises(InputError, match="25"):
        convert_official({**sd, "hm_layer.weight": sd["hm_layer.weight"][:24]})


def test_converted_checkpoint_refuses_skeletons_it_does_not_predict(tmp_path):
    ours, cfg, _, _ = convert_official(official_state_dict({"model": official_layout()}, "x"))
    from test_evaluate import _build
    shards, _ = _build(tmp_path)                                        # h36m17, 3dhp17 and smpl24 samples
    model = build_model(cfg)
    model.load_state_dict(ours)
    with pytest.raises(InputError, match="not predicted by the model"):
        E.evaluate(E.model_predict_fn(model.eval(), cfg.skeletons, "cpu"), [shards], crop_size=64,
                   skeletons=cfg.skeletons, progress=False)


def test_official_checkpoint_given_as_msra_weights_fails_loudly(tmp_path):
    from trainer.hrnet import load_pose_hrnet_weights
    torch.save({"model": official_layout()}, tmp_path / "official.pth")
    model = build_model(ModelConfig(**TINY))
    with pytest.raises(InputError, match="official PersPose checkpoint.*perspose-convert official"):
        load_pose_hrnet_weights(model, tmp_path / "official.pth")
    torch.save({"conv1.weight": model.backbone.conv1.weight.detach()}, tmp_path / "few.pth")
    with pytest.raises(InputError, match=r"only 1 of the backbone's \d+ tensors load"):
        load_pose_hrnet_weights(model, tmp_path / "few.pth")


def test_train_init_starts_from_a_converted_checkpoint(tmp_path):
    from trainer.train_cli import resolve_config
    from trainer.train import Dist, build
    ours, cfg, _, _ = convert_official(official_layout(2))
    from trainer.configtools import config_to_dict
    save_checkpoint(tmp_path / "conv.pt", {"model": ours, "config": {"model": config_to_dict(cfg)}})
    run_cfg = resolve_config("demo", None, ["/nonexistent"], (), [], tmp_path / "run", False, tmp_path / "conv.pt")
    assert run_cfg.model == cfg and run_cfg.init.endswith("conv.pt")
    raw, _ = build(run_cfg, Dist(0, 1, 0, torch.device("cpu")))
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in ours.items())
    bad = resolve_config("demo", None, ["/x"], (), ["model.width=8"], tmp_path / "run2", False, tmp_path / "conv.pt")
    with pytest.raises(InputError, match="do not fit"):
        build(bad, Dist(0, 1, 0, torch.device("cpu")))
    # heads a run adds (the HPS heads here) keep their own initialisation; everything else loads
    hps = resolve_config("demo", None, ["/x"], (), ["model.hps=true"], tmp_path / "run3", False, tmp_path / "conv.pt")
    raw, _ = build(hps, Dist(0, 1, 0, torch.device("cpu")))
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in ours.items())
    assert {k.split(".")[0] for k in raw.state_dict()} - {k.split(".")[0] for k in ours} == \
        {"beta_head", "twist_head", "leaf_head"}
