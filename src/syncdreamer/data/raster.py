"""A small CPU z-buffer rasteriser: renders a mesh into the data set layout without Blender.

It is not a substitute for the Blender renders (flat per-face colours, simple head-light shading, no
anti-aliasing), but it uses exactly the same cameras, normalisation, file names, ``meta.pkl`` and
depth encoding, so tests and smoke runs of the data pipeline work where Blender is missing
(``python data_prep/render.py renderer=cpu ...``), and it gives the validator synthetic data with a
known-correct silhouette and depth.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..cameras import Rig, project
from . import layout
from .mesh_io import load_normalized_mesh

__all__ = ["rasterize", "render_object_cpu"]


def _face_colors(mesh) -> np.ndarray:
    """Per-face RGB in [0, 1] (vertex / face colours when present, else light grey)."""
    n = len(mesh.faces)
    try:
        kind = mesh.visual.kind
    except AttributeError:
        kind = None
    if kind == "vertex":
        vc = np.asarray(mesh.visual.vertex_colors, np.float64)[:, :3] / 255.0
        return vc[mesh.faces].mean(1)
    if kind == "face":
        return np.asarray(mesh.visual.face_colors, np.float64)[:, :3] / 255.0
    return np.full((n, 3), 0.8)


def rasterize(mesh, pose, K, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render ``mesh`` (world frame) with a pinhole camera: RGBA uint8 (size, size, 4) and z-depth
    float32 (size, size), 0 where empty. Pixel (x, y) samples the continuous point (x + 0.5, y + 0.5)."""
    verts = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    uv, z = project(verts, np.asarray(pose, np.float64), np.asarray(K, np.float64))
    cam_r = np.asarray(pose, np.float64)[:3, :3]
    normals = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    n_cam = normals @ cam_r.T
    shade = 0.35 + 0.65 * np.abs(n_cam[:, 2])  # head light, two-sided
    colors = _face_colors(mesh) * shade[:, None]
    zbuf = np.full((size, size), np.inf)
    rgb = np.zeros((size, size, 3))
    for f, (a, b, c) in enumerate(faces):
        za, zb, zc = z[a], z[b], z[c]
        if min(za, zb, zc) <= 1e-6:
            continue
        p = uv[[a, b, c]]
        x0, y0 = np.floor(p.min(0) - 0.5).astype(int)
        x1, y1 = np.ceil(p.max(0) - 0.5).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size - 1), min(y1, size - 1)
        if x0 > x1 or y0 > y1:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        d = (p[1, 1] - p[2, 1]) * (p[0, 0] - p[2, 0]) + (p[2, 0] - p[1, 0]) * (p[0, 1] - p[2, 1])
        if abs(d) < 1e-12:
            continue
        w0 = ((p[1, 1] - p[2, 1]) * (xs - p[2, 0]) + (p[2, 0] - p[1, 0]) * (ys - p[2, 1])) / d
        w1 = ((p[2, 1] - p[0, 1]) * (xs - p[2, 0]) + (p[0, 0] - p[2, 0]) * (ys - p[2, 1])) / d
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        depth = 1.0 / (w0 / za + w1 / zb + w2 / zc)  # perspective-correct z
        sub = zbuf[y0:y1 + 1, x0:x1 + 1]
        win = inside & (depth < sub)
        sub[win] = depth[win]
        rgb[y0:y1 + 1, x0:x1 + 1][win] = colors[f]
    hit = np.isfinite(zbuf)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(hit, 255, 0)
    return rgba, np.where(hit, zbuf, 0.0).astype(np.float32)


def render_object_cpu(mesh_path, output_dir, uid: str, rigs: dict[str, Rig], near: float = layout.DEPTH_NEAR,
                      far: float = layout.DEPTH_FAR) -> float:
    """Render ``rigs`` (``{"target": Rig, "input": Rig}``) of one mesh into the layout under ``output_dir``.

    Writes into ``<output_dir>/.work/<uid>/<rig>`` and moves each finished folder into place, like the
    Blender path. Returns the seconds taken; raises ``ValueError`` for an unreadable mesh.
    """
    from PIL import Image

    t0 = time.time()
    mesh, scale, center = load_normalized_mesh(mesh_path)
    if not len(getattr(mesh, "faces", [])):
        raise ValueError(f"{mesh_path}: no faces to rasterise")
    out = Path(output_dir)
    work = out / ".work" / uid
    if work.exists():
        shutil.rmtree(work)
    for name, rig in rigs.items():
        d = work / name
        layout.write_meta(d / "meta.pkl", rig)
        for i in range(len(rig)):
            rgba, depth = rasterize(mesh, rig.poses[i], rig.Ks[i], rig.image_size)
            Image.fromarray(rgba, "RGBA").save(d / layout.view_name(i))
            layout.write_depth(d / layout.depth_name(i), depth, near, far)
        info = {"uid": uid, "mesh": str(mesh_path), "renderer": "cpu-raster", "rig": name,
                "normalization": {"scale": scale, "center": np.asarray(center).tolist()},
                "seconds": time.time() - t0}
        (d / "render.json").write_text(json.dumps(info, indent=1))
    for name in rigs:
        final = layout.object_dir(out, name, uid)
        if final.exists():
            raise ValueError(f"{final} exists; not overwriting it")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / name, final)
    shutil.rmtree(work, ignore_errors=True)
    return time.time() - t0
