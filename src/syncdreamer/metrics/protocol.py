"""The benchmark protocol: per-object evaluation of predicted views / meshes against ground truth.

Layouts (``experiments/protocol.md`` explains the choices)::

    <gt_dir>/target/<name>/000..015.png      GT views (RGBA), fixed rig; optional NNN_depth.png + meta.pkl
    <gt_dir>/meshes/<name>.{ply,obj,glb}     GT mesh (optional; needed for IoU, or for Chamfer without depth)

    <predictions_dir>/<name>/000..015.png    one sample                       (sample id "0")
    <predictions_dir>/<name>/<k>/000..015.png  samples in sub-folders           (sample id "<k>")
    <predictions_dir>/<name>/<k>.png         official 256x4096 strips        (sample id "<k>")
    <predictions_dir>/<name>_s<k>/           generate.py's extra samples      (sample id "<k>")
    predicted mesh: <sample folder>/mesh.{ply,obj,glb} or <predictions_dir>/<name>/<k>.{ply,obj,glb}

Per sample: PSNR / SSIM / LPIPS on the views composited on white; Chamfer / F-score on points
back-projected from depth at the fixed rig (GT: its depth PNGs when present, else ray-cast GT mesh;
prediction: ray-cast predicted mesh), voxel 0.01; Volume IoU on a 64^3 grid (official: mesh2sdf over [-1, 1]^3). A failing metric fills
``error`` with one line and marks the row ``failed``; the other metrics are still reported.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from syncdreamer.metrics import geometry as geo
from syncdreamer.metrics.image import LPIPSMetric, foreground_psnr, mask_iou, psnr, ssim
from syncdreamer.raycast import depth_to_points, mesh_points_from_rig

__all__ = ["GSO_OBJECTS", "GSO_ROTATIONS_DEG", "GSO_PREP_MARKER", "gso_canonical_mesh", "gt_rotation_deg", "Sample", "find_samples", "evaluate_sample",
           "METRICS", "HIGHER_IS_BETTER", "summarize", "write_csv", "markdown_summary"]

#: The 30 GSO evaluation objects (names as listed by later papers).
GSO_OBJECTS = ("alarm", "backpack", "bell", "blocks", "chicken", "cream", "elephant", "grandfather", "grandmother",
               "hat", "leather", "lion", "lunch_bag", "mario", "oil", "school_bus1", "school_bus2", "shoe", "shoe1",
               "shoe2", "shoe3", "soap", "sofa", "sorter", "sorting_board", "stucking_cups", "teapot", "toaster",
               "train", "turtle")

#: Per-object rotation about z (degrees) applied to the normalised GT mesh (official ``get_gt_rotate_angle``);
#: objects not listed are not rotated.
GSO_ROTATIONS_DEG = {
    "sofa": -90.0,
    **{k: 270.0 for k in ("blocks", "alarm", "backpack", "chicken", "soap", "grandfather", "grandmother", "lion",
                          "lunch_bag", "mario", "oil")},
    "elephant": 180.0, "school_bus1": 180.0,
    **{k: 225.0 for k in ("school_bus2", "shoe", "train", "turtle")},
    "sorter": 112.5,
}

METRICS = ("psnr", "ssim", "lpips", "chamfer", "iou", "fscore", "mask_iou", "fg_psnr")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "chamfer": False, "iou": True, "fscore": True,
                    "mask_iou": True, "fg_psnr": True}
MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".stl")
_VIEWS = re.compile(r"^\d{3}\.png$")


#: Written by ``data_prep/gso.py`` into its output folder: the GSO rotation is already in those meshes/renders.
GSO_PREP_MARKER = "gso_prep.json"


def gso_canonical_mesh(mesh, name: str, table="gso"):
    """The one place where the per-object GSO rotation is applied: ``mesh`` normalised (largest bbox side 1,
    centred) and rotated about z by :func:`gt_rotation_deg` (``table="gso"``: :data:`GSO_ROTATIONS_DEG`).

    ``data_prep/gso.py`` bakes it into the GT meshes and renders it writes (and leaves
    :data:`GSO_PREP_MARKER`); ``evaluate.py gt_rotation=gso`` applies it to raw official meshes instead."""
    return geo.rotate_z(geo.normalize_mesh(mesh), gt_rotation_deg(name, table))


def gt_rotation_deg(name: str, table) -> float:
    """Rotation of ``name``'s GT mesh: ``table`` is None/"none" (0), "gso" (official table) or a mapping."""
    if table in (None, "none", False):
        return 0.0
    if table == "gso":
        return GSO_ROTATIONS_DEG.get(name, 0.0)
    return float(dict(table).get(name, 0.0))


@dataclass
class Sample:
    """One predicted sample of an object: views (folder or strip file) and an optional mesh path."""

    object: str
    sample: str
    views: Path
    mesh: Path | None = None


def _has_views(folder: Path) -> bool:
    return folder.is_dir() and any(_VIEWS.match(p.name) for p in folder.iterdir())


def _mesh_in(folder: Path, stem: str = "mesh") -> Path | None:
    for s in MESH_SUFFIXES:
        if (folder / f"{stem}{s}").is_file():
            return folder / f"{stem}{s}"
    return None


def find_samples(predictions_dir, name: str) -> list[Sample]:
    """All predicted samples of object ``name`` (see module docstring for the layouts)."""
    root = Path(predictions_dir)
    d = root / name
    out: list[Sample] = []
    if d.is_dir():
        if _has_views(d):
            out.append(Sample(name, "0", d, _mesh_in(d)))
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if _has_views(sub):
                out.append(Sample(name, sub.name, sub, _mesh_in(sub)))
        for f in sorted(d.glob("*.png")):
            if not _VIEWS.match(f.name) and f.stem not in {s.sample for s in out} and f.stem not in ("strip", "input", "mask"):
                out.append(Sample(name, f.stem, f, _mesh_in(d, f.stem)))
    pat = re.compile(rf"^{re.escape(name)}_s(\d+)$")
    if root.is_dir():
        for sub in sorted(root.iterdir()):
            m = pat.match(sub.name)
            if m and _has_views(sub):
                out.append(Sample(name, m.group(1), sub, _mesh_in(sub)))
    return out


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg


def evaluate_sample(pred_views: np.ndarray | None, gt_views: np.ndarray, *, pred_mesh=None, gt_mesh=None,
                    gt_points: np.ndarray | None = None, poses=None, Ks=None, lpips_metric: LPIPSMetric | None = None,
                    metrics=METRICS, voxel: float = 0.01, fscore_threshold: float = 0.02, iou_resolution: int = 64,
                    iou_bound: float = 0.6, iou_fallback: bool = True, ssim_data_range: float | None = None,
                    depth_size: int = 256, iou_protocol: str = "official") -> dict:
    """Metrics of one sample. Views (N, H, W, 3|4) in [0, 1]; meshes are trimesh objects in the rig frame;
    ``gt_points`` (P, 3) replaces ray casting the GT mesh for Chamfer/F-score; poses/Ks (N,3,4)/(N,3,3) for
    ``depth_size`` pixels; ``iou_protocol``: official (mesh2sdf) or exact (see :func:`geometry.volume_iou`).
    Returns a row dict with the metrics computed and ``errors`` (list of one-liners)."""
    row: dict = {"errors": []}

    def guard(fn, label):
        try:
            fn()
        except Exception as e:  # one message per failure, the rest goes on
            row["errors"].append(f"{label}: {_one_line(e)}")

    want = set(metrics)
    if want & {"psnr", "ssim", "lpips", "mask_iou", "fg_psnr"}:
        def img():
            if pred_views is None:
                raise ValueError("no predicted views")
            if pred_views.shape[:3] != gt_views.shape[:3]:
                raise ValueError(f"predicted views {tuple(pred_views.shape[:3])} and GT {tuple(gt_views.shape[:3])} "
                                 "differ in number or size")
            if "psnr" in want:
                row["psnr"] = float(np.mean(psnr(pred_views, gt_views)))
            if "ssim" in want:
                row["ssim"] = float(np.mean(ssim(pred_views, gt_views, ssim_data_range)))
            if "lpips" in want and lpips_metric is not None:
                row["lpips"] = float(lpips_metric(pred_views, gt_views))
            if "mask_iou" in want:  # foreground of the views vs GT alpha (proxy benchmark)
                row["mask_iou"] = float(np.mean(mask_iou(pred_views, gt_views)))
            if "fg_psnr" in want:  # the object's colours only (inside the GT alpha)
                row["fg_psnr"] = float(np.nanmean(foreground_psnr(pred_views, gt_views)))
        guard(img, "views")
    if want & {"chamfer", "fscore"}:
        def pts():
            if pred_mesh is None:
                raise ValueError("no predicted mesh")
            g = gt_points
            if g is None:
                if gt_mesh is None:
                    raise ValueError("no GT depth maps and no GT mesh")
                g = mesh_points_from_rig(gt_mesh, poses, Ks, depth_size, depth_size)
            p = mesh_points_from_rig(pred_mesh, poses, Ks, depth_size, depth_size)
            row["n_pred_points"], row["n_gt_points"] = len(p), len(g)
            if "chamfer" in want:
                row["chamfer"] = geo.chamfer_distance(p, g, voxel)["chamfer"]
            if "fscore" in want:
                row["fscore"] = geo.fscore(p, g, fscore_threshold, voxel)["fscore"]
        guard(pts, "chamfer")
    if "iou" in want:
        def iou():
            if pred_mesh is None or gt_mesh is None:
                raise ValueError("needs both the predicted and the GT mesh")
            r = geo.volume_iou(pred_mesh, gt_mesh, iou_protocol, resolution=iou_resolution, bound=iou_bound,
                               allow_fallback=iou_fallback)
            row["iou"], row["iou_method"] = r["iou"], r["iou_method"]
        guard(iou, "iou")
    return row


def gt_points_from_depth(folder: Path, poses, Ks, valid_range=(0.63, 2.37)) -> np.ndarray | None:
    """Points from ``NNN_depth.png`` maps of a GT folder (None when any is missing)."""
    from syncdreamer.data.layout import depth_name, read_depth

    n = len(poses)
    if not all((folder / depth_name(i)).is_file() for i in range(n)):
        return None
    depth = np.stack([read_depth(folder / depth_name(i)) for i in range(n)])
    return depth_to_points(depth, poses, Ks, valid_range)


# ----------------------------------------------------------------------------------------------------------
# aggregation and reports
# ----------------------------------------------------------------------------------------------------------
CSV_COLUMNS = ["object", "sample", "status", *METRICS, "iou_method", "n_pred_points", "n_gt_points", "seconds",
               "error"]


def write_csv(rows: list[dict], path) -> Path:
    """Rows -> CSV with :data:`CSV_COLUMNS` (missing values empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return path


def _finite(v):
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def summarize(rows: list[dict], metrics=METRICS) -> dict:
    """Aggregates over objects: ``mean``/``std`` over sample indices (the j-th sample of every object forms
    run j; each run is averaged over objects, then mean and std over runs), ``best`` = best-of-n per object
    then averaged over objects (the paper's numbers are best-of-4), ``per_object`` means, counts."""
    objects = sorted({r["object"] for r in rows})
    per_obj: dict[str, dict[str, list]] = {o: {m: [] for m in metrics} for o in objects}
    for r in rows:
        for m in metrics:
            if _finite(r.get(m)):
                per_obj[r["object"]][m].append(float(r[m]))
    out = {"objects": len(objects), "samples": len(rows),
           "failed_rows": sum(r.get("status") == "failed" for r in rows), "mean": {}, "std": {}, "best": {},
           "per_object": {o: {m: (float(np.mean(v)) if v else None) for m, v in d.items()} for o, d in per_obj.items()},
           "n": {}}
    for m in metrics:
        runs = []
        n_max = max((len(per_obj[o][m]) for o in objects), default=0)
        for j in range(n_max):
            vals = [per_obj[o][m][j] for o in objects if len(per_obj[o][m]) > j]
            if vals:
                runs.append(float(np.mean(vals)))
        if runs:
            out["mean"][m] = float(np.mean(runs))
            out["std"][m] = float(np.std(runs))
        best = [(max if HIGHER_IS_BETTER[m] else min)(per_obj[o][m]) for o in objects if per_obj[o][m]]
        if best:
            out["best"][m] = float(np.mean(best))
        out["n"][m] = sum(len(per_obj[o][m]) for o in objects)
    return out


def _fmt(m, v):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.2f}" if m == "psnr" else f"{v:.4f}"


def _flat(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_flat(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_flat(x) for x in v) or "-"
    return "-" if v is None else str(v)


def markdown_summary(summary: dict, rows: list[dict], metrics=METRICS, title: str = "Benchmark",
                     provenance: dict | None = None) -> str:
    """A markdown report: overall mean +- std over runs, best-of-n, per-object means, failures, and a
    provenance table (protocol, NeuS preset, generation settings, package versions) when given."""
    arrows = {m: ("↑" if HIGHER_IS_BETTER[m] else "↓") for m in metrics}
    lines = [f"# {title}", "", f"{summary['objects']} objects, {summary['samples']} samples, "
             f"{summary['failed_rows']} rows with a failure.", "",
             "| | " + " | ".join(f"{m.upper() if m != 'fscore' else 'F-score'} {arrows[m]}" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    lines.append("| mean ± std over runs | " + " | ".join(
        (f"{_fmt(m, summary['mean'][m])} ± {_fmt(m, summary['std'][m])}" if m in summary["mean"] else "-")
        for m in metrics) + " |")
    lines.append("| best-of-n | " + " | ".join(_fmt(m, summary["best"].get(m)) for m in metrics) + " |")
    lines += ["", "## Per object (mean over samples)", "",
              "| object | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for o, d in summary["per_object"].items():
        lines.append(f"| {o} | " + " | ".join(_fmt(m, d.get(m)) for m in metrics) + " |")
    if provenance:
        lines += ["", "## Provenance", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {_flat(v)} |" for k, v in provenance.items()]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- {r['object']} / {r['sample']}: {r.get('error', '')}" for r in failed]
    return "\n".join(lines) + "\n"
