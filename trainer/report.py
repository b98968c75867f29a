"""Evaluation report: breakdowns of per-sample records, and report.json / report.md / predictions.parquet / plots.

Every mean weighs samples equally (the per-sample metric averaged over the samples of a group). PCK and AUC are
reported in percent, every distance in millimetres. All files are written atomically (pipeline.fsutil).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fsutil import atomic_path, atomic_write_text
from pipeline.skeleton import get_skeleton

from .evaluate import SCALAR_METRICS, protocol_for
from .hps_report import mesh_markdown, mesh_rows

log = logging.getLogger(__name__)

__all__ = ["summarize", "group_table", "reference_rows", "REFERENCE_HEADERS", "reference_table_rows", "pr_bin_labels", "markdown_report", "write_predictions", "write_plots",
           "write_report", "TABLE_HEADERS", "table_rows"]

# metric key in the records -> (report key, factor)
_REPORT_KEYS = {"mpjpe": ("mpjpe_mm", 1.0), "pa_mpjpe": ("pa_mpjpe_mm", 1.0), "pck150": ("pck150_pct", 100.0),
                "auc": ("auc_pct", 100.0), "depth_err": ("depth_err_mm", 1.0), "root_err": ("root_err_mm", 1.0)}
TABLE_HEADERS = ("dataset", "protocol", "MPJPE", "PA-MPJPE", "PCK@150", "AUC", "depth err", "root err", "N")
PR_BIN_DEG = 10.0


def pr_bin_labels(angles_deg: np.ndarray, width: float = PR_BIN_DEG) -> list[str]:
    """'0-10', '10-20', ... (degrees, lower edge inclusive)."""
    lo = np.floor(np.asarray(angles_deg, np.float64) / width).astype(int) * width
    return [f"{a:g}-{a + width:g}" for a in lo]


def group_table(records: dict, keys: tuple[str, ...], mask: np.ndarray | None = None) -> list[dict]:
    """Mean of every scalar metric per group of equal ``keys`` columns, sorted by the keys."""
    n = len(records.get("sample_id", []))
    cols = [records[k] if not isinstance(records[k], np.ndarray) else records[k].tolist() for k in keys]
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        if mask is None or mask[i]:
            groups.setdefault(tuple(c[i] for c in cols), []).append(i)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(x) for x in k)):
        idx = np.asarray(groups[key])
        row = dict(zip(keys, key))
        for m in SCALAR_METRICS:
            rk, f = _REPORT_KEYS[m]
            row[rk] = float(np.mean(records[m][idx]) * f)
        row["n"] = int(idx.size)
        rows.append(row)
    return rows


def _sort_key(x):
    if isinstance(x, str) and "-" in x and x.split("-")[0].replace(".", "").isdigit():
        return (0, float(x.split("-")[0]), "")  # PR-angle bins numerically
    return (1, 0.0, str(x))


def _per_joint(records: dict) -> list[dict]:
    out = []
    for ds, proto in sorted(set(zip(records["dataset"], records["protocol"]))):
        idx = [i for i, (d, p) in enumerate(zip(records["dataset"], records["protocol"])) if d == ds and p == proto]
        sk_name = records["skeleton"][idx[0]]
        sk, p = get_skeleton(sk_name), protocol_for(sk_name)
        err = np.stack([records["joint_err"][i] for i in idx]).mean(axis=0)
        out.append({"dataset": ds, "protocol": proto, "skeleton": sk_name, "n": len(idx), "joints": [
            {"index": j, "name": sk.joint_names[j], "mpjpe_mm": float(err[j]), "in_protocol": j in p.joints,
             "in_pck": j in p.pck_joints, "is_root": j == p.root} for j in range(sk.num_joints)]})
    return out


def summarize(records: dict) -> dict:
    """All breakdowns: per dataset (+protocol), per sequence, per H36M action, per PR-angle bin, per joint."""
    if not records:
        return {"datasets": [], "references": [], "sequences": [], "actions": [], "pr_angle_bins": [],
                "per_joint": [], "mesh": []}
    recs = dict(records, pr_bin=pr_bin_labels(records["pr_angle_deg"]))
    has_action = np.array([bool(a) for a in recs["action"]])
    datasets = group_table(recs, ("dataset", "protocol"))
    return {
        "datasets": datasets,
        "references": reference_rows(recs, datasets) if "gt_crop" in recs else [],
        "sequences": group_table(recs, ("dataset", "protocol", "sequence")),
        "actions": group_table(recs, ("dataset", "protocol", "action"), has_action) if has_action.any() else [],
        "pr_angle_bins": group_table(recs, ("dataset", "protocol", "pr_bin")),
        "per_joint": _per_joint(recs),
        "mesh": mesh_rows(recs),
    }


REFERENCE_CONSTANT = "constant mean pose"
REFERENCE_ZERO_DEPTH = "zero relative depth"
REFERENCE_HEADERS = ("dataset", "protocol", "reference", "MPJPE", "PA-MPJPE", "PCK@150", "AUC", "depth err",
                     "model / ref MPJPE", "model / ref depth")


def reference_rows(records: dict, model_rows: list[dict]) -> list[dict]:
    """What a model that learned nothing from the pixels scores, per dataset and protocol, on the same samples:

    * *constant mean pose* -- every sample gets the group's mean root-relative pose (an oracle constant: the
      mean of the evaluated set itself, in the original camera; in the crop camera for the depth error);
    * *zero relative depth* -- every joint at the root's depth (the depth error of a flat prediction).

    ``model / ref`` is the model's MPJPE (depth error) over the reference's: below 1 the model has learned
    something from the image; the demo aims at <= 0.6 (docs/learning.md). None where a metric does not apply
    (report.json stays strict JSON)."""
    from . import metrics as M
    model = {(r["dataset"], r["protocol"]): r for r in model_rows}
    rows = []
    for ds, proto in sorted(set(zip(records["dataset"], records["protocol"]))):
        idx = [i for i, (d, p) in enumerate(zip(records["dataset"], records["protocol"])) if d == ds and p == proto]
        p = protocol_for(records["skeleton"][idx[0]])
        go = np.stack([records["gt_cam"][i] for i in idx]) * 1000.0
        gc = np.stack([records["gt_crop"][i] for i in idx]) * 1000.0
        const = go[:, p.root:p.root + 1] + M.root_relative(go, p.root).mean(axis=0)
        const_crop = gc[:, p.root:p.root + 1] + M.root_relative(gc, p.root).mean(axis=0)
        flat = gc.copy()
        flat[..., 2] = gc[:, p.root:p.root + 1, 2]
        err = M.joint_errors(M.root_relative(const, p.root), M.root_relative(go, p.root))[:, list(p.pck_joints)]
        m = model.get((ds, proto), {})

        def over(key, ref):
            return m[key] / ref if key in m and ref > 0 else None
        c_mpjpe = float(M.mpjpe(const, go, p.root, p.joints).mean())
        c_depth = float(M.depth_error(const_crop, gc, p.root, p.joints).mean())
        z_depth = float(M.depth_error(flat, gc, p.root, p.joints).mean())
        rows.append({"dataset": ds, "protocol": proto, "reference": REFERENCE_CONSTANT, "mpjpe_mm": c_mpjpe,
                     "pa_mpjpe_mm": float(M.pa_mpjpe(const, go, p.joints).mean()),
                     "pck150_pct": float(M.pck(err).mean() * 100), "auc_pct": float(M.auc(err).mean() * 100),
                     "depth_err_mm": c_depth, "n": len(idx),
                     "model_over_ref_mpjpe": over("mpjpe_mm", c_mpjpe),
                     "model_over_ref_depth": over("depth_err_mm", c_depth)})
        rows.append({"dataset": ds, "protocol": proto, "reference": REFERENCE_ZERO_DEPTH, "mpjpe_mm": None,
                     "pa_mpjpe_mm": None, "pck150_pct": None, "auc_pct": None, "depth_err_mm": z_depth, "n": len(idx),
                     "model_over_ref_mpjpe": None, "model_over_ref_depth": over("depth_err_mm", z_depth)})
    return rows


def reference_table_rows(rows: list[dict]) -> list[list]:
    def ratio(x):
        return "-" if x is None else f"x{x:.2f}"
    return [[r["dataset"], r["protocol"], r["reference"],
             *("-" if r[k] is None else r[k] for k in ("mpjpe_mm", "pa_mpjpe_mm", "pck150_pct", "auc_pct",
                                                              "depth_err_mm")),
             ratio(r["model_over_ref_mpjpe"]), ratio(r["model_over_ref_depth"])] for r in rows]


def table_rows(rows: list[dict], first: tuple[str, ...] = ("dataset", "protocol")) -> list[list]:
    return [[*(r[k] for k in first), *(r[_REPORT_KEYS[m][0]] for m in SCALAR_METRICS), r["n"]] for r in rows]


def _md_table(headers, rows) -> str:
    def cell(c):
        return f"{c:.1f}" if isinstance(c, float) and math.isfinite(c) else str(c)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    s = report["metrics"]
    ck = report.get("checkpoint") or {}
    out = ["# PersPose evaluation", "",
           f"- checkpoint: `{ck.get('path')}` (sha256 `{str(ck.get('sha256'))[:16]}…`, step {ck.get('step')})",
           f"- shards: {len(report['shards'])} file(s); samples {report['counts']['samples']}, evaluated "
           f"{report['counts']['evaluated']}, skipped (2D only) {report['counts']['skipped_2d_only']}, skipped "
           f"(non-finite prediction) {report['counts'].get('skipped_nonfinite', 0)}",
           f"- flip test: {report['options'].get('flip_test')}; joints returned to the ORIGINAL camera (R^T)", "",
           "Distances in mm (MPJPE root-aligned; PA-MPJPE after per-sample similarity Procrustes; depth err = "
           "mean |d_pred - d_gt| of root-relative depths in the crop camera; root err = absolute root position). "
           "PCK@150 mm and AUC (thresholds 0:5:150 mm, a joint counts when its error < threshold; a perfect "
           "prediction scores AUC 30/31 = 96.8 %) in %. The `protocol` column names each row's protocol: its joint "
           "sets are listed under Protocols below, and compared with the published definitions in the toolkit's "
           "docs/metrics.md.", "",
           "## Results", "", _md_table(TABLE_HEADERS, table_rows(s["datasets"])), "",
           "## Reference: what learning nothing scores on these samples", "",
           "The constant mean pose (each group's own mean root-relative pose given to every sample) and a flat "
           "pose at the root's depth; `model / ref` below 1 means the model read something from the pixels.", "",
           _md_table(REFERENCE_HEADERS, reference_table_rows(s.get("references", []))), ""]
    out += mesh_markdown(s.get("mesh", []), _md_table) + ["## Protocols", ""]
    for p in report["protocols"].values():
        out.append(f"- **{p['name']}** ({p['skeleton']}): {p['description']}. Root: {p['root']}. "
                   f"MPJPE/PA/depth joints: {', '.join(p['joints'])}. PCK/AUC joints: {', '.join(p['pck_joints'])}.")
    if report.get("nonfinite"):
        out += ["", f"## Left out: {len(report['nonfinite'])} sample(s) with a non-finite prediction "
                "(--skip-nonfinite)", "", _md_table(("sample", "shard", "key", "first non-finite joint", "value"),
                [[b["sample_id"], b["shard"], b["key"], b["joint"], b["value"]] for b in report["nonfinite"]])]
    if s["actions"]:
        out += ["", "## Per action", "", _md_table(("dataset", "protocol", "action") + TABLE_HEADERS[2:],
                                                    table_rows(s["actions"], ("dataset", "protocol", "action")))]
    out += ["", "## Per PR angle (degrees)", "",
            _md_table(("dataset", "protocol", "PR angle") + TABLE_HEADERS[2:],
                      table_rows(s["pr_angle_bins"], ("dataset", "protocol", "pr_bin"))),
            "", "## Per joint (root-aligned error, mm)", ""]
    for pj in s["per_joint"]:
        rows = [[j["name"], j["mpjpe_mm"], "yes" if j["in_protocol"] else "", "yes" if j["in_pck"] else ""]
                for j in pj["joints"]]
        out += [f"### {pj['dataset']} ({pj['protocol']}, n={pj['n']})", "",
                _md_table(("joint", "error", "MPJPE set", "PCK set"), rows), ""]
    out += ["## Per sequence", "", _md_table(("dataset", "protocol", "sequence") + TABLE_HEADERS[2:],
                                              table_rows(s["sequences"], ("dataset", "protocol", "sequence"))), ""]
    return "\n".join(out)


def write_predictions(path, records: dict) -> None:
    """predictions.parquet: one row per sample, joints flat (J*3, metres, original camera), absolute and
    root-relative (at the protocol root), prediction and ground truth, plus the per-sample metrics (mm)."""
    f64 = pa.list_(pa.float64())
    n = len(records.get("sample_id", []))
    roots = [protocol_for(s).root for s in records.get("skeleton", [])]

    def flat(key, rel):
        return [(records[key][i] - (records[key][i][roots[i]] if rel else 0.0)).reshape(-1).tolist()
                for i in range(n)]
    cols = {k: records.get(k, []) for k in ("sample_id", "dataset", "split", "sequence", "action", "skeleton",
                                              "protocol")}
    table = pa.table({
        **{k: pa.array(v, pa.string()) for k, v in cols.items()},
        "frame": pa.array(records.get("frame", []), pa.int32()),
        "person": pa.array(records.get("person", []), pa.int16()),
        "num_joints": pa.array([len(records["pred_cam"][i]) for i in range(n)], pa.int32()),
        "pr_angle_deg": pa.array(np.asarray(records.get("pr_angle_deg", []), np.float64)),
        "pred_scale": pa.array(np.asarray(records.get("pred_scale", []), np.float64)),
        "pred_cam": pa.array(flat("pred_cam", False) if n else [], f64),
        "pred_rel": pa.array(flat("pred_cam", True) if n else [], f64),
        "gt_cam": pa.array(flat("gt_cam", False) if n else [], f64),
        "gt_rel": pa.array(flat("gt_cam", True) if n else [], f64),
        **{_REPORT_KEYS[m][0]: pa.array(np.asarray(records.get(m, []), np.float64) * _REPORT_KEYS[m][1])
           for m in SCALAR_METRICS},
    })
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp)


def write_plots(out_dir, summary: dict) -> list[Path]:
    """per_joint_error.png and error_vs_pr_angle.png (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    written = []
    pj = summary["per_joint"]
    if pj:
        fig = Figure(figsize=(10, 3.2 * len(pj)))  # fixed margins: constrained layout costs seconds per figure
        FigureCanvasAgg(fig)
        for ax, g in zip(np.atleast_1d(fig.subplots(len(pj), 1)), pj):
            names = [j["name"] for j in g["joints"]]
            err = [j["mpjpe_mm"] for j in g["joints"]]
            colors = ["tab:blue" if j["in_protocol"] else "lightgray" for j in g["joints"]]
            ax.bar(range(len(names)), err, color=colors)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("root-aligned error (mm)")
            ax.set_title(f"{g['dataset']} ({g['protocol']}, n={g['n']}; grey: outside the protocol)", fontsize=9)
        fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.35 / (3.2 * len(pj)), bottom=1.0 / (3.2 * len(pj)),
                            hspace=0.9)
        written.append(_save(fig, out_dir / "per_joint_error.png"))
    bins = summary["pr_angle_bins"]
    if bins:
        fig = Figure(figsize=(7, 4))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for ds, proto in sorted({(b["dataset"], b["protocol"]) for b in bins}):
            rows = [b for b in bins if b["dataset"] == ds and b["protocol"] == proto]
            x = [float(r["pr_bin"].split("-")[0]) + PR_BIN_DEG / 2 for r in rows]
            ax.plot(x, [r["mpjpe_mm"] for r in rows], "o-", label=f"{ds} MPJPE")
            ax.plot(x, [r["pa_mpjpe_mm"] for r in rows], "s--", label=f"{ds} PA-MPJPE")
        ax.set_xlabel("PR angle (degrees, bin centre)")
        ax.set_ylabel("error (mm)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.subplots_adjust(left=0.11, right=0.98, top=0.96, bottom=0.13)
        written.append(_save(fig, out_dir / "error_vs_pr_angle.png"))
    return written


def _save(fig, path: Path) -> Path:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_report(out_dir, report: dict, records: dict) -> list[Path]:
    """report.json, report.md, predictions.parquet and the plots into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, sort_keys=False, allow_nan=True) + "\n")
    atomic_write_text(out_dir / "report.md", markdown_report(report))
    write_predictions(out_dir / "predictions.parquet", records)
    return [out_dir / "report.json", out_dir / "report.md", out_dir / "predictions.parquet",
            *write_plots(out_dir, report["metrics"])]
