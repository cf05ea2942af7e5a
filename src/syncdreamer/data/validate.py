"""Validate a rendered data set and split it into train / val uid lists (``data_prep/validate.py`` wraps this).

Per object and rig (``target`` fixed, ``input`` random elevation):

* structure: views ``000..N-1.png`` (exactly N), their depth maps and ``meta.pkl`` are present;
* images: RGBA of the configured size, a non-empty alpha mask, and no foreground pixel within
  ``border_px`` of the image border (the object lies inside the frame);
* cameras: ``meta.pkl`` matches the rig (target: the fixed rig exactly; input: the configured
  azimuths, distance and intrinsics, elevations inside the configured range, poses equal to the
  look-at poses of the stored angles);
* silhouette / camera agreement (when the source mesh is given): the mesh is loaded in the render
  world frame and normalised the same way (:mod:`syncdreamer.data.mesh_io`), sampled surface points
  are projected with the stored cameras and (almost) all must land inside the alpha mask, and the
  projected mesh silhouette must cover the mask (coverage and IoU). A swapped view, a wrong pose or
  an importer axis mix-up fails this check.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cameras import camera_centers_from_angles, focal_from_lens, look_at, project
from . import layout
from .manifest import index_object, write_manifest
from .mesh_io import TRIMESH_SUFFIXES, load_normalized_mesh

__all__ = [
    "ValidationConfig",
    "ObjectReport",
    "mesh_silhouette",
    "points_silhouette",
    "silhouette_scores",
    "depth_consistency",
    "check_meta",
    "check_images",
    "validate_object",
    "find_source_meshes",
    "split_uids",
    "validate_dataset",
    "manifest_rows",
]


@dataclass
class ValidationConfig:
    """Thresholds and the rig the data set should have (defaults: the official rig)."""

    views: int = 16
    resolution: int = 256
    elevation: float = 30.0  # deg, fixed target rig
    input_elevation: tuple[float, float] = (-10.0, 40.0)  # deg
    distance: float = 1.5
    focal: float | None = None  # pixels; None = lens_mm / sensor_mm * resolution (280 at 256)
    lens_mm: float = 35.0
    sensor_mm: float = 32.0
    depth: bool = True  # depth maps required
    alpha_threshold: int = 127  # foreground = alpha > threshold
    min_foreground_px: int = 50  # fewer foreground pixels = empty render
    border_px: int = 1  # no foreground within this many pixels of the border
    pose_atol: float = 1e-4  # meta.pkl stores float32
    angle_atol_deg: float = 0.01
    silhouette_points: int = 4000  # surface points projected per view
    max_raster_faces: int = 200_000  # larger meshes: silhouette from dense_points splats instead of triangles
    dense_points: int = 200_000
    tolerance_px: float = 1.5  # points / silhouette may miss the mask by this much (anti-aliasing)
    min_inside: float = 0.98  # fraction of projected points inside the (dilated) mask
    min_coverage: float = 0.95  # fraction of mask pixels covered by the (dilated) projected silhouette
    min_iou: float = 0.85  # IoU of mask and projected silhouette
    normalization_rtol: float = 1e-3  # render.json normalisation vs trimesh's
    depth_tolerance: float = 0.02  # scene units; a depth map farther than a surface point by more is wrong
    min_depth_consistent: float = 0.95  # fraction of points not behind the depth map's surface
    seed: int = 0

    @classmethod
    def from_mapping(cls, cfg) -> "ValidationConfig":
        """Build from a mapping, ignoring keys that are not fields."""
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in dict(cfg).items() if k in names}
        if "input_elevation" in kw:
            kw["input_elevation"] = tuple(float(x) for x in kw["input_elevation"])
        return cls(**kw)


@dataclass
class ObjectReport:
    """Result for one uid: ``ok`` when ``errors`` is empty; ``scores`` per rig and view."""

    uid: str
    errors: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    checked_silhouette: bool = False

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.errors

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"uid": self.uid, "ok": self.ok, "errors": self.errors, "checked_silhouette": self.checked_silhouette,
                "scores": self.scores}


# ----------------------------------------------------------------------------------------------------------
# silhouettes
# ----------------------------------------------------------------------------------------------------------
def mesh_silhouette(vertices, faces, pose, K, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the projected mesh triangles (pixel i covers [i, i+1), as Blender).

    Each triangle is filled on its own (``cv2.fillConvexPoly``; filling them as one polygon set would
    cancel overlapping triangles); triangles behind the camera or off-image are skipped.
    """
    import cv2

    uv, z = project(np.asarray(vertices, np.float64), np.asarray(pose, np.float64), np.asarray(K, np.float64))
    faces = np.asarray(faces, np.int64)
    tri = uv[faces] - 0.5  # OpenCV fills pixels whose centre (integer coordinate) is inside
    keep = (z[faces] > 1e-6).all(1)
    lo, hi = tri.min(1), tri.max(1)
    keep &= (hi[:, 0] >= -1) & (hi[:, 1] >= -1) & (lo[:, 0] <= size) & (lo[:, 1] <= size)
    shift = 4
    pts = np.rint(np.clip(tri[keep], -4 * size, 5 * size) * (1 << shift)).astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    for t in pts:
        cv2.fillConvexPoly(mask, t, 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def points_silhouette(points, pose, K, size: int, radius_px: float) -> np.ndarray:
    """Boolean mask of projected points splatted with ``radius_px`` (silhouette of very large meshes)."""
    uv, z = project(np.asarray(points, np.float64), np.asarray(pose, np.float64), np.asarray(K, np.float64))
    px = np.floor(uv).astype(np.int64)
    ok = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0) & (px[:, 1] < size)
    mask = np.zeros((size, size), bool)
    mask[px[ok, 1], px[ok, 0]] = True
    return _dilate(mask, radius_px)


def depth_consistency(depth: np.ndarray, points, pose, K, tolerance: float) -> float:
    """Fraction of surface points (projecting onto non-empty depth pixels) that are not in front of the
    depth map's surface: a point at camera depth z is fine when the smallest stored depth in its 3x3
    pixel neighbourhood is ``<= z + tolerance`` (occluded points see a smaller stored depth; the
    neighbourhood absorbs the steep depth change across a pixel on grazing surfaces). A wrong camera,
    a wrong encoding or radial instead of z-depth pushes the stored depth behind visible points.
    1.0 when no point lands on the map."""
    import cv2

    h, w = depth.shape
    uv, z = project(np.asarray(points, np.float64), np.asarray(pose, np.float64), np.asarray(K, np.float64))
    px = np.floor(uv).astype(np.int64)
    ok = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    d = np.zeros(len(z))
    d[ok] = depth[px[ok, 1], px[ok, 0]]
    ok &= d > 0
    if not ok.any():
        return 1.0
    local_min = cv2.erode(np.where(depth > 0, depth, np.inf).astype(np.float32), np.ones((3, 3), np.uint8))
    return float((local_min[px[ok, 1], px[ok, 0]] <= z[ok] + tolerance).mean())


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    import cv2

    r = int(np.ceil(radius))
    if r <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def silhouette_scores(mask: np.ndarray, points, pose, K, vertices=None, faces=None,
                      tolerance_px: float = 1.5, dense_points=None) -> dict:
    """How well a mesh seen through camera (pose, K) explains a foreground ``mask`` (H, W) bool.

    ``inside``: fraction of ``points`` (world, normalised) projecting into the mask dilated by
    ``tolerance_px`` (points outside the image count as outside). With ``vertices``/``faces`` (or, for
    meshes too large to rasterise, ``dense_points`` splatted with ``tolerance_px``) also ``coverage``
    (fraction of mask pixels inside the dilated projected silhouette) and ``iou`` (mask vs silhouette).
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    uv, z = project(np.asarray(points, np.float64), np.asarray(pose, np.float64), np.asarray(K, np.float64))
    px = np.floor(uv).astype(np.int64)
    valid = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    dil = _dilate(mask, tolerance_px)
    hit = np.zeros(len(px), bool)
    hit[valid] = dil[px[valid, 1], px[valid, 0]]
    out = {"inside": float(hit.mean()) if len(hit) else 0.0}
    sil = None
    if vertices is not None and faces is not None and len(faces):
        sil = mesh_silhouette(vertices, faces, pose, K, h)
    elif dense_points is not None:
        sil = points_silhouette(dense_points, pose, K, h, tolerance_px)
    if sil is not None:
        n_mask = max(int(mask.sum()), 1)
        out["coverage"] = float((mask & _dilate(sil, tolerance_px)).sum() / n_mask)
        union = max(int((mask | sil).sum()), 1)
        out["iou"] = float((mask & sil).sum() / union)
    return out


# ----------------------------------------------------------------------------------------------------------
# per-object checks
# ----------------------------------------------------------------------------------------------------------
def check_meta(meta: dict, rig: str, cfg: ValidationConfig) -> list[str]:
    """Errors (empty when fine) comparing a read ``meta.pkl`` dict with the configured rig."""
    errs = []
    n = cfg.views
    if len(meta["poses"]) != n:
        return [f"{rig}: meta.pkl has {len(meta['poses'])} cameras, expected {n}"]
    f = cfg.focal if cfg.focal is not None else focal_from_lens(cfg.lens_mm, cfg.sensor_mm, cfg.resolution)
    K = np.array([[f, 0, cfg.resolution / 2], [0, f, cfg.resolution / 2], [0, 0, 1]])
    if not np.allclose(meta["K"], K, atol=1e-3):
        errs.append(f"{rig}: K {meta['K'].round(3).tolist()} differs from the rig's {K.tolist()}")
    az = np.deg2rad(np.arange(n) * 360.0 / n)
    d_az = np.angle(np.exp(1j * (meta["azimuths"] - az)))
    tol = np.deg2rad(cfg.angle_atol_deg)
    if np.abs(d_az).max() > tol:
        errs.append(f"{rig}: azimuths differ from i*{360.0 / n} deg (max {np.rad2deg(np.abs(d_az).max()):.3f} deg)")
    if np.abs(meta["distances"] - cfg.distance).max() > 1e-4:
        errs.append(f"{rig}: distances differ from {cfg.distance}")
    el = meta["elevations"]
    if rig == "target":
        if np.abs(el - np.deg2rad(cfg.elevation)).max() > tol:
            errs.append(f"{rig}: elevations differ from {cfg.elevation} deg")
    else:
        lo, hi = np.deg2rad(cfg.input_elevation[0]) - tol, np.deg2rad(cfg.input_elevation[1]) + tol
        if el.min() < lo or el.max() > hi:
            errs.append(f"{rig}: elevations {np.rad2deg(el).round(2).tolist()} leave the range {cfg.input_elevation}")
    expected = look_at(camera_centers_from_angles(meta["azimuths"], el, meta["distances"]))
    bad = np.abs(meta["poses"] - expected).reshape(n, -1).max(1) > cfg.pose_atol
    if bad.any():
        errs.append(f"{rig}: poses of views {np.flatnonzero(bad).tolist()} disagree with their angles")
    return errs


def check_images(folder: Path, rig: str, cfg: ValidationConfig) -> tuple[list[str], list[np.ndarray]]:
    """Structural and image checks of one rig folder. Returns (errors, foreground masks per view)."""
    errs, masks = [], []
    n_found = layout.view_count(folder)
    if n_found != cfg.views:
        errs.append(f"{rig}: {n_found} view images, expected {cfg.views}")
    b = cfg.border_px
    for i in range(cfg.views):
        p = folder / layout.view_name(i)
        if not p.is_file():
            errs.append(f"{rig}: {p.name} missing")
            masks.append(None)
            continue
        if cfg.depth and not (folder / layout.depth_name(i)).is_file():
            errs.append(f"{rig}: {layout.depth_name(i)} missing")
        try:
            from PIL import Image

            with Image.open(p) as im:
                mode = im.mode
            rgba = layout.read_view_rgba(p)
        except Exception as exc:  # unreadable image
            errs.append(f"{rig}: {p.name} unreadable ({exc})")
            masks.append(None)
            continue
        if mode not in ("RGBA", "LA"):
            errs.append(f"{rig}: {p.name} has no alpha channel (mode {mode})")
        if rgba.shape[:2] != (cfg.resolution, cfg.resolution):
            errs.append(f"{rig}: {p.name} is {rgba.shape[1]}x{rgba.shape[0]}, expected {cfg.resolution}^2")
        mask = rgba[..., 3] > cfg.alpha_threshold
        masks.append(mask)
        if mask.sum() < cfg.min_foreground_px:
            errs.append(f"{rig}: {p.name} is empty ({int(mask.sum())} foreground pixels)")
            continue
        fg = rgba[..., 3] > 0
        if b > 0 and (fg[:b].any() or fg[-b:].any() or fg[:, :b].any() or fg[:, -b:].any()):
            errs.append(f"{rig}: {p.name} touches the image border (object not inside the frame)")
    return errs, masks


def _check_rigs(root, uid: str, cfg: ValidationConfig, report: ObjectReport) -> tuple[dict, dict]:
    """Structure, image and camera checks of both rigs. Returns (metas, foreground masks) per rig."""
    metas, all_masks = {}, {}
    for rig in layout.RIGS:
        folder = layout.object_dir(root, rig, uid)
        if not folder.is_dir():
            report.errors.append(f"{rig}: folder {folder} missing")
            continue
        errs, masks = check_images(folder, rig, cfg)
        report.errors += errs
        all_masks[rig] = masks
        try:
            metas[rig] = layout.read_meta(folder / "meta.pkl")
        except (FileNotFoundError, ValueError, EOFError) as exc:
            report.errors.append(f"{rig}: {exc}")
            continue
        report.errors += check_meta(metas[rig], rig, cfg)
    return metas, all_masks


def _load_source_mesh(mesh_path, cfg: ValidationConfig, report: ObjectReport):
    """The normalised source mesh and its sampled points: ``(mesh, scale, center, points, faces, dense)``, or
    None when it cannot be read here (recorded in ``report``)."""
    if Path(mesh_path).suffix.lower() not in TRIMESH_SUFFIXES:
        report.scores["silhouette_skipped"] = f"{Path(mesh_path).suffix} cannot be read outside Blender"
        return None
    try:
        mesh, scale, center = load_normalized_mesh(mesh_path)
    except ValueError as exc:
        report.errors.append(f"source mesh: {exc}")
        return None
    import trimesh

    faces = getattr(mesh, "faces", None)
    if faces is not None and len(faces):
        points = trimesh.sample.sample_surface(mesh, cfg.silhouette_points, seed=cfg.seed)[0]
    else:
        points = np.asarray(mesh.vertices)
    dense = None
    if faces is not None and len(faces) > cfg.max_raster_faces:
        dense = trimesh.sample.sample_surface(mesh, cfg.dense_points, seed=cfg.seed + 1)[0]
        faces = None
    return mesh, scale, center, points, faces, dense


def _silhouette_failures(s: dict, cfg: ValidationConfig) -> list[str]:
    """The thresholds one view's silhouette scores miss."""
    bad = []
    if s.get("depth_consistent", 1.0) < cfg.min_depth_consistent:
        bad.append(f"depth_consistent {s['depth_consistent']:.3f} < {cfg.min_depth_consistent}")
    if s["inside"] < cfg.min_inside:
        bad.append(f"inside {s['inside']:.3f} < {cfg.min_inside}")
    if "coverage" in s and s["coverage"] < cfg.min_coverage:
        bad.append(f"coverage {s['coverage']:.3f} < {cfg.min_coverage}")
    if "iou" in s and s["iou"] < cfg.min_iou:
        bad.append(f"iou {s['iou']:.3f} < {cfg.min_iou}")
    return bad


def _check_rig_silhouettes(root, uid: str, rig: str, meta: dict, masks: list, source, cfg: ValidationConfig,
                           report: ObjectReport) -> dict:
    """Silhouette (and depth) agreement of every view of one rig; returns the worst score per metric."""
    mesh, _, _, points, faces, dense = source
    rows = []
    for i, mask in enumerate(masks):
        if mask is None or i >= len(meta["poses"]):
            continue
        s = silhouette_scores(mask, points, meta["poses"][i], meta["K"], mesh.vertices, faces,
                              tolerance_px=cfg.tolerance_px, dense_points=dense)
        dpath = layout.object_dir(root, rig, uid) / layout.depth_name(i)
        if cfg.depth and dpath.is_file():
            s["depth_consistent"] = depth_consistency(layout.read_depth(dpath), points, meta["poses"][i],
                                                      meta["K"], cfg.depth_tolerance)
        rows.append(s)
        bad = _silhouette_failures(s, cfg)
        if bad:
            report.errors.append(f"{rig}: view {i:03d} silhouette disagrees with its camera ({', '.join(bad)})")
    return {k: float(min(r[k] for r in rows)) for k in (rows[0] if rows else {})}


def validate_object(root, uid: str, cfg: ValidationConfig, mesh_path=None) -> ObjectReport:
    """All checks for one uid; the silhouette check runs when ``mesh_path`` is given and readable."""
    report = ObjectReport(uid)
    metas, all_masks = _check_rigs(root, uid, cfg, report)
    if mesh_path is None:
        return report
    source = _load_source_mesh(mesh_path, cfg, report)
    if source is None:
        return report
    report.checked_silhouette = True
    _check_normalization(root, uid, source[1], source[2], cfg, report)
    for rig, meta in metas.items():
        report.scores[rig] = _check_rig_silhouettes(root, uid, rig, meta, all_masks.get(rig, []), source, cfg, report)
    return report


def _check_normalization(root, uid, scale, center, cfg: ValidationConfig, report: ObjectReport) -> None:
    """Compare the normalisation Blender recorded in render.json with the one computed from the mesh."""
    info_path = layout.object_dir(root, "target", uid) / "render.json"
    if not info_path.is_file():
        return
    try:
        norm = json.loads(info_path.read_text())["normalization"]
    except (ValueError, KeyError):
        return
    size = 1.0 / scale
    if abs(norm["scale"] - scale) > cfg.normalization_rtol * scale or \
            np.abs(np.asarray(norm["center"]) - center).max() > cfg.normalization_rtol * size:
        report.errors.append(f"normalisation differs from Blender's (scale {norm['scale']:.6g} vs {scale:.6g}, "
                             f"center {np.round(norm['center'], 4).tolist()} vs {np.round(center, 4).tolist()}): "
                             "the importer's axis convention or the mesh differs")


# ----------------------------------------------------------------------------------------------------------
# data set
# ----------------------------------------------------------------------------------------------------------
def find_source_meshes(meshes) -> dict[str, Path]:
    """``{uid: path}`` for the source meshes (a folder searched recursively, or a single file); {} for None."""
    if meshes is None:
        return {}
    from .render_driver import discover_meshes

    return discover_meshes(meshes)


def split_uids(uids, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle ``uids`` with ``seed`` and split off ``round(val_fraction * n)`` (at least 1 when
    ``0 < val_fraction`` and n >= 2) validation uids. Both lists come back sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    uids = sorted(set(uids))
    n_val = int(round(val_fraction * len(uids)))
    if val_fraction > 0 and n_val == 0 and len(uids) >= 2:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(uids))
    val = sorted(uids[i] for i in order[:n_val])
    train = sorted(uids[i] for i in order[n_val:])
    return train, val


def manifest_rows(root, reports: list[ObjectReport], views: int, train, val) -> list[dict]:
    """Manifest rows of validated objects: the index row (files, elevations, size, settings) with the
    validation verdict (``valid`` / ``invalid`` + first error, or ``incomplete``), split and worst scores."""
    split = {**{u: "train" for u in train}, **{u: "val" for u in val}}
    rows = []
    for rep in reports:
        row = index_object(root, rep.uid, views)
        if row["status"] == "complete" or rep.errors:
            row["status"] = "valid" if rep.ok else ("incomplete" if row["status"] == "incomplete" else "invalid")
            row["reason"] = None if rep.ok else "; ".join(rep.errors[:3]) + (
                f" (+{len(rep.errors) - 3} more)" if len(rep.errors) > 3 else "")
        row["split"], row["checked_silhouette"] = split.get(rep.uid), rep.checked_silhouette
        rigs = [v for v in rep.scores.values() if isinstance(v, dict)]
        for col, key in (("sil_inside", "inside"), ("sil_coverage", "coverage"), ("sil_iou", "iou"),
                         ("depth_consistent", "depth_consistent")):
            vals = [r[key] for r in rigs if key in r]
            row[col] = min(vals) if vals else None
        rows.append(row)
    return rows


def validate_dataset(root, cfg: ValidationConfig, meshes=None, out_dir=None, val_fraction: float = 0.02,
                     split_seed: int = 0, require_mesh: bool = False, log=print) -> dict:
    """Validate every uid under ``root/target`` (and ``root/input``), write the report and the uid lists.

    Writes ``<out_dir>/validation.jsonl`` (one record per uid), ``<out_dir>/manifest.parquet`` (every uid
    with status, reason, split and silhouette scores, :mod:`syncdreamer.data.manifest`), ``train_uids.{pkl,txt}``
    and ``val_uids.{pkl,txt}`` with the uids that passed. Returns counts and the paths.
    """
    t0 = time.time()
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root
    uids = sorted(set(layout.list_uids(root, "target")) | set(layout.list_uids(root, "input")))
    if not uids:
        raise ValueError(f"{root}: no objects found under target/ or input/; is this a rendered data set?")
    sources = find_source_meshes(meshes)
    good, reports = [], []
    from tqdm import tqdm

    for uid in tqdm(uids, desc=f"validating {root.name}", unit="obj", mininterval=2.0, disable=len(uids) < 100):
        mesh = sources.get(uid)
        rep = validate_object(root, uid, cfg, mesh)
        if require_mesh and mesh is None:
            rep.errors.append("no source mesh found for the silhouette check")
        reports.append(rep)
        if rep.ok:
            good.append(uid)
        else:
            log(f"INVALID {uid}: {rep.errors[0]}" + (f" (+{len(rep.errors) - 1} more)" if len(rep.errors) > 1 else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "validation.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in reports))
    tmp.replace(out_dir / "validation.jsonl")
    train, val = split_uids(good, val_fraction, split_seed)
    paths = {"manifest": str(write_manifest(out_dir, manifest_rows(root, reports, cfg.views, train, val)))}
    for name, lst in (("train", train), ("val", val)):
        for ext in ("pkl", "txt"):
            paths[f"{name}_{ext}"] = str(layout.write_uid_list(out_dir / f"{name}_uids.{ext}", lst))
    summary = {"total": len(uids), "valid": len(good), "invalid": len(uids) - len(good),
               "silhouette_checked": sum(r.checked_silhouette for r in reports), "train": len(train),
               "val": len(val), "seconds": time.time() - t0, **paths}
    log(f"{summary['valid']}/{summary['total']} objects valid ({summary['silhouette_checked']} silhouette-checked); "
        f"train {len(train)}, val {len(val)} -> {out_dir}")
    return summary
