"""The build runner: executes the plan of :mod:`pipeline.build_plan` (docs/design.md §7) with joblib, resumes,
and writes the report files.

Each shard of the plan is one joblib task (loky, threading, dask or ray). The worker receives only its rows,
decodes the images, crops them with :func:`pipeline.shard.process_row`, writes the tar atomically and then,
also atomically, a sidecar ``{prefix}-{n:06d}.json`` holding the shard's plan hash, the tar's sha256, its index
rows and its rejections; so a build that was killed resumes where it stopped (the plan reuses finished shards),
and the result is byte-identical to an uninterrupted build, with any number of jobs. Every shard of the plan
exists after a build, also one whose samples were all rejected (then it is a valid, empty tar), so brace
patterns like ``shard-{000000..000041}.tar`` work. Temporaries of interrupted writes and shards beyond the plan
are removed before the work starts.

``rejected.parquet`` holds the build-time rejections only (duplicate keys, unreadable images, PR angle over the
limit, boxes outside the image, ...); rows an adapter rejected are in the manifest's own ``X.rejected.parquet``.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from .build_plan import ShardTask, load_rows, plan_build, plan_shards
from .errors import InputError
from .fsutil import atomic_path, atomic_write_text, sha256_file
from .manifest import REJECTED_SCHEMA
from .provenance import software_versions
from .shard import FORMAT_VERSION, BuildOptions, Rejected, encode_sample, load_image, process_row, write_tar

log = logging.getLogger(__name__)

__all__ = ["ShardTask", "BuildConfig", "BuildResult", "load_rows", "plan_shards", "build_shard", "build_shards",
           "MALLOC_ENV", "INDEX_SCHEMA", "REJECTED_SCHEMA", "BACKENDS"]   # (ShardTask..plan_shards: build_plan's)

BACKENDS = ("loky", "threading", "dask", "ray")
# glibc: with both set, decoding large JPEGs is nearly twice as fast (platform notes); one alone does nothing
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}

INDEX_SCHEMA = pa.schema([
    ("shard", pa.string()), ("shard_index", pa.int32()), ("key", pa.string()), ("sample_id", pa.string()),
    ("dataset", pa.string()), ("split", pa.string()), ("sequence", pa.string()), ("frame", pa.int32()),
    ("person", pa.int16()), ("skeleton", pa.string()), ("pr_angle", pa.float64()), ("f_crop", pa.float64()),
    ("scale", pa.float64()), ("has_3d", pa.bool_()), ("has_intrinsics", pa.bool_()), ("pr", pa.bool_()),
])


@dataclass(frozen=True)
class BuildConfig:
    shard_size: int = 1000
    prefix: str = "shard"
    opts: BuildOptions = field(default_factory=BuildOptions)
    jobs: int = -1
    backend: str = "loky"
    scheduler: str | None = None   # address of an existing dask / ray cluster


@dataclass
class BuildResult:
    out_dir: Path
    shards: list        # per-shard summaries (name, samples, sha256, bytes, reused, seconds)
    index_rows: list
    rejected: list      # (sample_id, reason)
    reused: int
    elapsed_s: float
    build_json: dict


# ------------------------------------------------------------------------------------------------ workers
def _tune_malloc() -> None:
    """mallopt equivalent of MALLOC_ENV for the current process (glibc only; harmless elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
        libc.mallopt(-1, int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]))  # M_TRIM_THRESHOLD


def _index_row(task: ShardTask, sample: dict) -> dict:
    m, a = sample["meta"], sample["arrays"]
    return {"shard": task.name, "shard_index": task.index, "key": sample["key"], "sample_id": m["sample_id"],
            "dataset": m["dataset"], "split": m["split"], "sequence": m["sequence"], "frame": m["frame"],
            "person": m["person"], "skeleton": m["skeleton"], "pr_angle": float(a["pr_angle"]),
            "f_crop": float(a["K_crop"][0, 0]), "scale": float(a["scale"]), "has_3d": bool(m["has_3d"]),
            "has_intrinsics": bool(m["has_intrinsics"]), "pr": bool(m["pr"])}


def _encoded_samples(task: ShardTask, opts: BuildOptions, index_rows: list, rejected: list):
    for row in task.rows:
        try:
            sample = process_row(row, load_image(row["_image"], rgb=False), opts)
            # the warp works per channel, so warping BGR and converting the small crop is bit-identical to
            # converting the full frame first (and saves a full-frame colour conversion per sample)
            sample["image"] = cv2.cvtColor(sample["image"], cv2.COLOR_BGR2RGB)
            enc = encode_sample(sample, opts.jpeg_quality)
        except Rejected as e:
            rejected.append((row["sample_id"], str(e)))
            continue
        except Exception as e:  # a bad sample must never abort the build: record it with the error
            log.debug("sample %s failed", row["sample_id"], exc_info=True)
            rejected.append((row["sample_id"], f"error: {type(e).__name__}: {e}"))
            continue
        index_rows.append(_index_row(task, sample))
        yield enc


def build_shard(task: ShardTask, opts: BuildOptions, out_dir) -> dict:
    """Build one shard (runs in a worker): tar first, then its sidecar; both atomic. Returns the sidecar dict."""
    t0 = time.perf_counter()
    _tune_malloc()
    cv2.setNumThreads(1)  # one worker per core: cv2's own threads would only oversubscribe
    out_dir = Path(out_dir)
    index_rows, rejected = [], []
    tar = out_dir / f"{task.name}.tar"
    n = write_tar(tar, _encoded_samples(task, opts, index_rows, rejected))
    side = {"format_version": FORMAT_VERSION, "name": task.name, "index": task.index, "plan_hash": task.plan_hash,
            "samples": n, "sha256": sha256_file(tar), "bytes": tar.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 4), "index_rows": index_rows,
            "rejected": [list(r) for r in rejected]}
    atomic_write_text(out_dir / f"{task.name}.json", json.dumps(side, sort_keys=True))
    return side


def _clean_stale(out_dir: Path, prefix: str, n_planned: int) -> None:
    """Remove temporaries of interrupted writes and our own shards beyond the plan (from an earlier, larger
    build), so that a glob over the directory sees exactly this build. One build writes one directory at a time
    (build several manifests together instead of several builds into one directory)."""
    for p in out_dir.glob(f".{prefix}-*.tmp"):
        p.unlink(missing_ok=True)
    for pattern in (".index.parquet.*.tmp", ".rejected.parquet.*.tmp", ".build.json.*.tmp"):
        for p in out_dir.glob(pattern):
            p.unlink(missing_ok=True)
    pat = re.compile(rf"{re.escape(prefix)}-(\d{{6}})\.(tar|json)")
    for f in sorted(out_dir.glob(f"{prefix}-*")):  # a tar without its sidecar too (killed between the two)
        m = pat.fullmatch(f.name)
        if m and int(m.group(1)) >= n_planned:
            log.info("removing stale %s (beyond the plan)", f.name)
            f.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ backends
@contextlib.contextmanager
def backend_context(backend: str, scheduler: str | None):
    """joblib backend name to use inside the block; dask/ray are imported only here."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "dask":
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise InputError("--backend dask needs the dask extra: pip install 'perspose[dask]'") from None
        with contextlib.ExitStack() as stack:
            cluster = None if scheduler else stack.enter_context(LocalCluster(processes=True,
                                                                               dashboard_address=None))
            stack.enter_context(Client(scheduler or cluster))
            yield "dask"
        return
    if backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise InputError("--backend ray needs the ray extra: pip install 'perspose[ray]'") from None
        register_ray()
        ray.init(address=scheduler, ignore_reinit_error=True)
        try:
            yield "ray"
        finally:
            ray.shutdown()
        return
    if scheduler:
        raise InputError(f"--scheduler is only used with --backend dask or ray, not {backend}")
    yield backend


def _n_jobs(jobs: int, backend: str, n_tasks: int) -> int:
    """joblib n_jobs: --jobs N as given (at most one per shard); -1 means this machine's cores for loky and
    threading, but the whole cluster for dask and ray (joblib asks the scheduler for its worker count)."""
    if jobs == 1:
        return 1
    if jobs < 0:
        return -1 if backend in ("dask", "ray") else min(os.cpu_count() or 1, n_tasks)
    return min(jobs, n_tasks)


def _run_tasks(tasks, cfg: BuildConfig, out_dir: Path):
    """Yield sidecars as shards finish (any order)."""
    if not tasks:
        return
    from joblib import Parallel, delayed, parallel_config
    threads = cv2.getNumThreads()  # workers set 1; in-process (--jobs 1, threading) restore it afterwards
    try:
        with backend_context(cfg.backend, cfg.scheduler) as backend:
            n_jobs = _n_jobs(cfg.jobs, backend, len(tasks))
            # parallel_config, not Parallel(backend=...): joblib 1.6 sets up its dask backend only this way
            with parallel_config(backend=backend):
                par = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
                yield from par(delayed(build_shard)(t, cfg.opts, out_dir) for t in tasks)
    finally:
        cv2.setNumThreads(threads)


# ------------------------------------------------------------------------------------------------ build
def build_shards(manifests, out_dir, cfg: BuildConfig = BuildConfig(), progress: bool = True) -> BuildResult:
    """Plan, build (resuming), and write index.parquet, rejected.parquet and build.json atomically."""
    if cfg.shard_size < 1:
        raise InputError(f"--shard-size {cfg.shard_size}: must be >= 1")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    plan = plan_build(manifests, out_dir, cfg.shard_size, cfg.prefix, cfg.opts)
    tasks, todo, infos, dup_rejected = plan.tasks, plan.todo, list(plan.manifests), list(plan.rejected)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
    _clean_stale(out_dir, cfg.prefix, len(tasks))
    sidecars = dict(plan.reused)
    reused = len(sidecars)
    log.info("planned %d samples in %d shards; reused %d shards, building %d", plan.rows, len(tasks), reused,
             len(todo))

    from tqdm import tqdm
    bar = tqdm(total=len(tasks), initial=reused, unit="shard", disable=not progress, desc="shards",
               dynamic_ncols=True)
    done_samples, t_build = 0, time.perf_counter()
    try:
        for side in _run_tasks(todo, cfg, out_dir):
            sidecars[side["index"]] = side
            done_samples += side["samples"] + len(side["rejected"])
            bar.set_postfix_str(f"{done_samples / max(time.perf_counter() - t_build, 1e-9):.1f} samples/s")
            bar.update(1)
    finally:
        bar.close()
    build_s = time.perf_counter() - t_build

    ordered = [sidecars[t.index] for t in tasks]
    index_rows = [r for s in ordered for r in s["index_rows"]]
    rejected = sorted(dup_rejected + [tuple(r) for s in ordered for r in s["rejected"]])
    with atomic_path(out_dir / "index.parquet", ".parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA), tmp)
    with atomic_path(out_dir / "rejected.parquet", ".parquet") as tmp:
        pq.write_table(pa.Table.from_pydict({"sample_id": [s for s, _ in rejected],
                                             "reason": [r for _, r in rejected]}, schema=REJECTED_SCHEMA), tmp)
    elapsed = time.perf_counter() - t0
    info = _build_json(cfg, infos, ordered, index_rows, rejected, reused, len(todo), done_samples, build_s, elapsed)
    atomic_write_text(out_dir / "build.json", json.dumps(info, indent=1, sort_keys=True))
    built = {t.index for t in todo}
    shards = [{k: s[k] for k in ("name", "samples", "sha256", "bytes", "seconds")} | {"reused": s["index"] not in built}
              for s in ordered]
    return BuildResult(out_dir, shards, index_rows, rejected, reused, elapsed, info)


def _build_json(cfg, infos, ordered, index_rows, rejected, reused, built, processed, build_s, elapsed) -> dict:
    total_bytes = sum(s["bytes"] for s in ordered)
    return {
        "format_version": FORMAT_VERSION,
        "options": {"shard_size": cfg.shard_size, "prefix": cfg.prefix, **dataclasses.asdict(cfg.opts),
                    "store_size": cfg.opts.store_size},
        "run": {"jobs": cfg.jobs, "backend": cfg.backend},
        "versions": software_versions(("numpy", "cv2", "pyarrow", "joblib", "webdataset", "simplejpeg")),
        "manifests": infos,
        "counts": {"planned": sum(i["rows"] for i in infos), "written": len(index_rows), "rejected": len(rejected),
                   "shards": len(ordered), "shards_reused": reused, "shards_built": built},
        "rejected_by_reason": dict(sorted(Counter(_reason_kind(r) for _, r in rejected).items())),
        "mb": round(total_bytes / 1e6, 3),
        "timings": {"elapsed_s": round(elapsed, 3), "build_s": round(build_s, 3),
                    "samples_per_s": round(processed / build_s, 2) if processed and build_s > 0 else None},
        "shards": [{"name": s["name"], "file": s["name"] + ".tar", "samples": s["samples"], "sha256": s["sha256"],
                    "bytes": s["bytes"], "plan_hash": s["plan_hash"]} for s in ordered],
    }


def _reason_kind(reason: str) -> str:
    """Group reasons that carry numbers ("PR angle 80.1 deg over ...") under one heading."""
    if reason.startswith("PR angle"):
        return "PR angle over the limit"
    if reason.startswith("image is "):
        return "image size differs from the manifest"
    if reason.startswith("error: "):
        return reason.split(":")[0] + ": " + reason.split(":")[1].strip()
    return reason
