"""Build webdataset shards from one or more manifests (DESIGN §6): plan, parallel per-shard work, resume, report.

The plan (which sample goes to which shard) is a pure function of the manifests and the options: the rows of
all manifests are concatenated and sorted by ``sample_id`` (a later row whose webdataset key duplicates an
earlier one is rejected as "duplicate sample key"), then cut into consecutive runs of ``shard_size``.
Shard ``n`` is ``{prefix}-{n:06d}.tar``; every shard of the plan exists after a build, also one whose samples
were all rejected (then it is a valid, empty tar), so brace patterns like ``shard-{000000..000041}.tar`` work.

Each shard is one joblib task. The worker receives only its rows, decodes the images, crops them with
:func:`pipeline.shard.process_row`, writes the tar atomically and then, also atomically, a sidecar
``{prefix}-{n:06d}.json`` holding the shard's plan hash, the tar's sha256, its index rows and its rejections.
A rerun reuses a shard when its sidecar exists, the plan hash matches and the tar's sha256 matches the
sidecar: so a build that was killed resumes where it stopped, and the result is byte-identical to an
uninterrupted build. The plan hash covers the format version, the crop options, the cv2/numpy versions (they
decide the encoded bytes), and the full content of every manifest row of the shard with its resolved image path
(not the image bytes: replace an image in place and you must delete the shard or its sidecar).

``rejected.parquet`` holds the build-time rejections only (duplicate keys, unreadable images, PR angle over the
limit, boxes outside the image, ...); rows an adapter rejected are in the manifest's own ``X.rejected.parquet``.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .fsutil import atomic_path, atomic_write_text, sha256_file
from .manifest import REJECTED_SCHEMA, image_root_of, read_manifest
from .provenance import software_versions
from .shard import FORMAT_VERSION, BuildOptions, Rejected, encode_sample, load_image, process_row, sample_key, \
    write_tar

log = logging.getLogger(__name__)

__all__ = ["ShardTask", "BuildConfig", "BuildResult", "load_rows", "plan_shards", "build_shard", "build_shards",
           "MALLOC_ENV", "INDEX_SCHEMA", "REJECTED_SCHEMA", "BACKENDS"]

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


@dataclass(frozen=True)
class ShardTask:
    index: int
    name: str           # file stem, e.g. shard-000003
    rows: tuple         # manifest rows (dicts) of this shard, sorted, with "_image" = resolved image path
    plan_hash: str


@dataclass
class BuildResult:
    out_dir: Path
    shards: list        # per-shard summaries (name, samples, sha256, bytes, reused, seconds)
    index_rows: list
    rejected: list      # (sample_id, reason)
    reused: int
    elapsed_s: float
    build_json: dict


# ------------------------------------------------------------------------------------------------ planning
def load_rows(manifests) -> tuple[list[dict], list[tuple[str, str]], list[dict]]:
    """Read manifests -> (rows sorted by sample_id, duplicate-key rejections, per-manifest info for build.json).
    Raises InputError for a missing manifest or a missing image root."""
    rows, infos = [], []
    for m_index, path in enumerate(manifests):
        path = Path(path)
        table, meta = read_manifest(path)
        root = image_root_of(meta, path)
        if not root.is_dir():
            raise InputError(f"{path}: image_root {root} does not exist (move the images there or rewrite the "
                             f"manifest)")
        part = table.to_pylist()
        for r in part:
            p = Path(r["image_path"])
            r["_image"] = str(p if p.is_absolute() else root / p)
            r["_manifest"] = m_index
        rows.extend(part)
        infos.append({"path": str(path.resolve()), "sha256": sha256_file(path), "rows": len(part),
                      "image_root": str(root), "adapter": meta.get("adapter", "")})
    rows.sort(key=lambda r: (r["sample_id"], r["_manifest"]))
    kept, rejected, seen = [], [], set()
    for r in rows:
        k = sample_key(r["sample_id"])
        if k in seen:
            rejected.append((r["sample_id"], "duplicate sample key"))
            continue
        seen.add(k)
        kept.append(r)
    return kept, rejected, infos


def _feed(h, v) -> None:
    """Hash a manifest value unambiguously (type tag + bytes); numeric lists go through numpy (fast, exact)."""
    if v is None:
        h.update(b"N")
    elif isinstance(v, str):
        b = v.encode()
        h.update(b"S%d:" % len(b) + b)
    elif isinstance(v, (bool, int, float)):
        h.update(b"V" + repr(v).encode() + b";")
    elif isinstance(v, dict):
        h.update(b"D%d:" % len(v))
        for k in sorted(v):
            _feed(h, k)
            _feed(h, v[k])
    else:
        a = np.asarray(v, dtype=np.float64)
        h.update(b"A%d:" % a.size + a.tobytes())


def plan_hash(rows, opts: BuildOptions) -> str:
    """sha256 of the format version, the crop options, the cv2 / numpy versions and every row's full content
    (with its resolved image path); the manifest a row came from does not matter."""
    h = hashlib.sha256()
    head = {"format_version": FORMAT_VERSION, "options": dataclasses.asdict(opts), "cv2": cv2.__version__,
            "numpy": np.__version__}
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in rows:
        _feed(h, {k: v for k, v in r.items() if k != "_manifest"})
    return h.hexdigest()


def plan_shards(rows: list[dict], cfg: BuildConfig) -> list[ShardTask]:
    """Cut sorted rows into consecutive shards of cfg.shard_size (a pure function of rows and options)."""
    n = cfg.shard_size
    tasks = []
    for i, start in enumerate(range(0, len(rows), n)):
        part = tuple(rows[start:start + n])
        tasks.append(ShardTask(i, f"{cfg.prefix}-{i:06d}", part, plan_hash(part, cfg.opts)))
    return tasks


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


def reusable_sidecar(task: ShardTask, out_dir) -> dict | None:
    """The sidecar of a finished shard identical to the plan, or None if the shard must be (re)built."""
    out_dir = Path(out_dir)
    side_path, tar = out_dir / f"{task.name}.json", out_dir / f"{task.name}.tar"
    try:
        side = json.loads(side_path.read_text())
        if side.get("plan_hash") != task.plan_hash or not tar.is_file():
            return None
        if tar.stat().st_size != side.get("bytes") or sha256_file(tar) != side.get("sha256"):
            return None
        return side
    except (OSError, ValueError):
        return None


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
            cluster = None if scheduler else stack.enter_context(LocalCluster(processes=True))
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
    from joblib import Parallel, delayed
    threads = cv2.getNumThreads()  # workers set 1; in-process (--jobs 1, threading) restore it afterwards
    try:
        with backend_context(cfg.backend, cfg.scheduler) as backend:
            n_jobs = _n_jobs(cfg.jobs, backend, len(tasks))
            par = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")
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
    rows, dup_rejected, infos = load_rows(manifests)
    tasks = plan_shards(rows, cfg)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
    _clean_stale(out_dir, cfg.prefix, len(tasks))

    sidecars, todo = {}, []
    for t in tasks:
        side = reusable_sidecar(t, out_dir)
        if side is None:
            todo.append(t)
        else:
            sidecars[t.index] = side
    reused = len(sidecars)
    log.info("planned %d samples in %d shards; reused %d shards, building %d", len(rows), len(tasks), reused,
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
