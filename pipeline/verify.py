"""``perspose-build verify DIR``: re-read a shard directory and check it against build.json and index.parquet.

Per shard: the file exists and its sha256 equals build.json's; its samples are exactly the index rows of that
shard, in order. Per sample (decoded with :func:`pipeline.shard.decode_sample`): all three members present,
image of store_size², all arrays finite, R orthonormal with det +1 (|R Rᵀ − I| < 1e-9), H = K_crop R K_orig⁻¹,
square crop pixels, principal point at ((S_store − 1)/2, (S_store − 1)/2) under PR, and for 3D samples
uv = π(K_crop · joints_rot) within 1e-3 px, d = z' − z'_root and ŝ = z'_root / f_crop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import pyarrow.parquet as pq

from . import geometry as g
from .errors import InputError
from .fsutil import sha256_file
from .shard import decode_sample, iter_tar, read_build_json
from .skeleton import SKELETONS

log = logging.getLogger(__name__)

__all__ = ["VerifyReport", "verify_dir", "verify_shard", "check_sample", "verify_cmd", "UV_TOL_PX"]

UV_TOL_PX = 1e-3
ROT_TOL = 1e-9


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    failures: list = field(default_factory=list)   # "shard-000001.tar key X: what is wrong"
    by_dataset: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_sample(s: dict) -> list[str]:
    """Invariant violations of one decoded sample (empty list if it is fine)."""
    a, m = s["arrays"], s["meta"]
    errs = []
    need = ("K_crop", "K_orig", "R", "H", "bbox", "joints_rot", "uvd", "scale", "vis", "pr_angle")
    missing = [k for k in need if k not in a]
    if missing:
        return [f"missing arrays {', '.join(missing)}"]
    Ss = int(m.get("store_size", -1))
    if s["image"].shape != (Ss, Ss, 3):
        errs.append(f"image {s['image'].shape} is not store_size {Ss}x{Ss}x3")
    # NaN in smpl_twist marks an undefined twist label (pipeline/ik.py:twist_labels), not damage
    bad = [k for k, v in a.items() if np.issubdtype(v.dtype, np.number) and k != "smpl_twist"
           and not np.all(np.isfinite(v))]
    if bad:
        return errs + [f"non-finite values in {', '.join(sorted(bad))}"]
    R, K, Ko, H = (a[k].astype(np.float64) for k in ("R", "K_crop", "K_orig", "H"))
    if np.abs(R @ R.T - np.eye(3)).max() >= ROT_TOL or abs(np.linalg.det(R) - 1.0) >= ROT_TOL:
        errs.append("R is not a rotation")
    if K[0, 0] <= 0 or K[0, 0] != K[1, 1] or K[0, 1] != 0:
        errs.append("K_crop has non-square pixels or skew")
    if m.get("pr") and np.abs(K[:2, 2] - 0.5 * (Ss - 1)).max() > 1e-9:
        errs.append(f"principal point {K[:2, 2].tolist()} is not the crop centre {(Ss - 1) / 2} under PR")
    H2 = g.crop_from_image(Ko, R, K)
    if np.abs(H / H[2, 2] - H2 / H2[2, 2]).max() > 1e-6 * max(1.0, np.abs(H2 / H2[2, 2]).max()):
        errs.append("H is not K_crop R K_orig^-1")
    sk = SKELETONS.get(m.get("skeleton"))
    if sk is None:
        return errs + [f"unknown skeleton {m.get('skeleton')!r}"]
    J = sk.num_joints
    if a["uvd"].shape != (J, 3) or a["joints_rot"].shape != (J, 3) or a["vis"].shape != (J,):
        return errs + [f"label shapes do not match skeleton {sk.name} ({J} joints)"]
    if m.get("has_3d"):
        rot = a["joints_rot"].astype(np.float64)
        uv = g.project(rot, K)
        err = np.abs(uv - a["uvd"][:, :2]).max()
        if not err <= UV_TOL_PX:
            errs.append(f"uv differs from pi(K_crop joints_rot) by {err:.4g} px")
        d = rot[:, 2] - rot[sk.root, 2]
        if np.abs(d - a["uvd"][:, 2]).max() > 1e-5:
            errs.append("d differs from z' - z'_root")
        if abs(float(a["scale"]) * K[0, 0] - rot[sk.root, 2]) > 1e-5 * max(1.0, rot[sk.root, 2]):
            errs.append("scale differs from z'_root / f_crop")
        if np.any(rot[:, 2] <= 0):
            errs.append("joints behind the camera")
    return errs


def _shard_samples(path: Path, failures: list, name: str):
    try:
        yield from iter_tar(path)
    except Exception as e:  # a truncated or corrupt tar
        failures.append(f"{name}: cannot read ({type(e).__name__}: {e})")


def verify_shard(out_dir, s: dict, exp_keys: list) -> dict:
    """Check one shard (build.json entry ``s``) against its expected keys (index order). Runs in a worker."""
    fname, path = s["file"], Path(out_dir) / s["file"]
    res = {"samples": 0, "bytes": 0, "failures": [], "by_dataset": {}}
    fails = res["failures"]
    if not path.is_file():
        fails.append(f"{fname}: missing")
        return res
    res["bytes"] = path.stat().st_size
    if sha256_file(path) != s["sha256"]:
        fails.append(f"{fname}: sha256 differs from build.json")
    got_keys = []
    for members in _shard_samples(path, fails, fname):
        key = members["__key__"]
        got_keys.append(key)
        res["samples"] += 1
        if any(e not in members for e in ("jpg", "npz", "json")):
            fails.append(f"{fname} key {key}: members {sorted(members)} (need jpg, npz, json)")
            continue
        try:
            sample = decode_sample(members)
        except Exception as e:
            fails.append(f"{fname} key {key}: cannot decode ({type(e).__name__}: {e})")
            continue
        ds = sample["meta"].get("dataset", "?")
        res["by_dataset"][ds] = res["by_dataset"].get(ds, 0) + 1
        fails.extend(f"{fname} key {key}: {e}" for e in check_sample(sample))
    if len(got_keys) != s["samples"]:
        fails.append(f"{fname}: {len(got_keys)} samples, build.json says {s['samples']}")
    if got_keys != exp_keys:
        extra = sorted(set(got_keys) - set(exp_keys))
        fails.append(f"{fname}: keys differ from index.parquet"
                     + (f" (not in index: {', '.join(extra[:5])})" if extra else ""))
    return res


def verify_dir(out_dir, progress: bool = True, jobs: int = 1, only=None) -> VerifyReport:
    """Check everything in a shard directory (or, with ``only``, the shard files of those names and the
    directory's build.json / index.parquet); failures name the shard (and key)."""
    out_dir = Path(out_dir)
    bj = out_dir / "build.json"
    if not bj.is_file():
        raise InputError(f"{bj}: not found (is {out_dir} a shard directory?)")
    info = read_build_json(bj)
    try:
        index = pq.read_table(out_dir / "index.parquet", columns=["shard", "key"]).to_pylist()
    except (ValueError, OSError, KeyError) as e:
        raise InputError(f"{out_dir / 'index.parquet'}: unreadable or without shard/key columns ({e})") from None
    if any("name" not in s for s in info["shards"]) or not isinstance(info.get("counts"), dict):
        raise InputError(f"{bj}: its shards have no names or it has no counts; not written by perspose-build")
    by_shard: dict[str, list] = {}
    for r in index:
        by_shard.setdefault(r["shard"], []).append(r)
    rep = VerifyReport()
    shard_names = {s["name"] for s in info["shards"]}
    for name in sorted(set(by_shard) - shard_names):
        rep.failures.append(f"index.parquet names shard {name}, which build.json does not list")
    if info["counts"].get("written") != len(index):
        rep.failures.append(f"build.json counts {info['counts']['written']} samples, index.parquet has {len(index)}")

    from joblib import Parallel, delayed
    from tqdm import tqdm
    par = Parallel(n_jobs=jobs, return_as="generator")
    shards = [s for s in info["shards"] if only is None or s["file"] in only]
    for name in sorted(set(only or ()) - {s["file"] for s in info["shards"]}):
        rep.failures.append(f"{name}: not listed in {bj}")
    work = (delayed(verify_shard)(out_dir, s, [r["key"] for r in by_shard.get(s["name"], [])]) for s in shards)
    for res in tqdm(par(work), total=len(shards), unit="shard", desc="verify", disable=not progress,
                    dynamic_ncols=True):
        rep.shards += 1
        rep.samples += res["samples"]
        rep.bytes += res["bytes"]
        rep.failures.extend(res["failures"])
        for ds, n in res["by_dataset"].items():
            rep.by_dataset[ds] = rep.by_dataset.get(ds, 0) + n
    return rep


def verify_specs(specs, progress: bool = True, jobs: int = 1) -> VerifyReport:
    """:func:`verify_dir` over shard specs (:mod:`pipeline.shardspec`): whole directories, or the named shard
    files of their directories."""
    from .remote import is_url
    from .shardspec import shard_groups
    remote = [s for s in ([specs] if isinstance(specs, (str, Path)) else specs) if is_url(str(s))]
    if remote:
        raise InputError(f"{remote[0]}: verify reads local shard directories (copy the shards here first)")
    total = VerifyReport()
    for group in shard_groups(specs):
        everything = {t.name for t in group.directory.glob("*.tar")} == {t.name for t in group.tars}
        rep = verify_dir(group.directory, progress, jobs, None if everything else {t.name for t in group.tars})
        total.shards += rep.shards
        total.samples += rep.samples
        total.bytes += rep.bytes
        total.failures.extend(rep.failures)
        for ds, n in rep.by_dataset.items():
            total.by_dataset[ds] = total.by_dataset.get(ds, 0) + n
    return total


@click.command("verify")
@click.argument("shards", nargs=-1, required=True)
@click.option("--jobs", default=1, show_default=True, help="Parallel shard checks (-1: all cores).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def verify_cmd(shards, jobs: int, no_progress: bool):
    """Re-read shards: checksums, counts, decoding and label invariants. Exit 1 on failure.

    SHARDS: shard directories (everything in them), .tar files, quoted globs or brace patterns."""
    from .report import print_table
    if jobs == 0:
        raise InputError("--jobs 0: use a positive number or -1 (all cores)")
    rep = verify_specs(shards, progress=not no_progress, jobs=jobs)
    out_dir = " ".join(shards)
    rows = [("shards", rep.shards), ("samples", rep.samples), ("MB", round(rep.bytes / 1e6, 3))]
    rows += [(f"samples: {d}", n) for d, n in sorted(rep.by_dataset.items())]
    rows.append(("failures", len(rep.failures)))
    print_table(["", "value"], rows, title=f"verify {out_dir}")
    if rep.failures:
        for f in rep.failures[:50]:
            click.echo(f"FAIL {f}", err=True)
        if len(rep.failures) > 50:
            click.echo(f"... and {len(rep.failures) - 50} more", err=True)
        raise SystemExit(1)
    click.echo("OK")
