"""Views in, mesh out: the library behind ``reconstruct.py``.

``reconstruct(cfg)`` reads the views (folder or strip), the cameras and the masks, optimises NeuS with the
chosen preset, extracts the mesh and writes into ``output_dir``::

    mesh.ply, mesh.glb     marching-cubes mesh with vertex colours (ply: world z-up; glb: glTF y-up)
    turntable.gif          the mesh ray-cast around the object (elevation 30 deg)
    recon.json             resolved settings, timings, mesh statistics
    views/000.png ...      the views that were fitted (RGBA when they had alpha)
    transforms.json        their cameras for nerfstudio / instant-ngp (:func:`syncdreamer.cameras.write_camera_exports`)
    colmap/                their cameras as a COLMAP text model
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from syncdreamer.cameras import write_camera_exports
from syncdreamer.recon.export import extract_mesh, save_mesh, turntable
from syncdreamer.config import to_plain
from syncdreamer.recon.io import compute_masks, composite_white, load_cameras, load_views
from syncdreamer.devices import pick_device
from syncdreamer.recon.neus import estimate_fit_seconds, fit_neus
from syncdreamer.recon.presets import resolve_preset

__all__ = ["reconstruct", "reconstruct_views"]


def _mask_source(spec):
    if isinstance(spec, dict) and "_target_" in spec:
        from hydra.utils import instantiate
        return instantiate(spec)
    return spec


def reconstruct_views(views: np.ndarray, poses, Ks, recon_cfg: dict, output_dir, mask_source="auto",
                      mask_threshold: float = 0.05, device="auto", seed: int = 0, steps: int | None = None,
                      formats=("ply", "glb"), turntable_format: str | None = "gif", log=print,
                      callback=None) -> dict:
    """Reconstruct from views (N, H, W, 3|4) in [0, 1] with cameras; returns a summary dict (paths, timings).

    ``recon_cfg`` is a recon preset mapping (``conf/recon/*.yaml``; ``name: auto`` picks by device, see
    :func:`syncdreamer.recon.presets.resolve_preset`). ``summary["preset"]`` is the preset that ran.
    ``callback(step, model)`` is passed to :func:`~syncdreamer.recon.neus.fit_neus` (progress bars)."""
    dev = pick_device(device)
    cfg = resolve_preset(recon_cfg, dev, estimate_fit_seconds, log=log)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks = compute_masks(views, _mask_source(mask_source), mask_threshold)
    if (masks > 0.5).sum() == 0:
        raise ValueError("the views have no foreground (empty masks): nothing to reconstruct")
    rgb = composite_white(views)
    t0 = time.time()
    model = fit_neus(rgb, masks, poses, Ks, cfg, device=dev, seed=seed, steps=steps, log=log,
                     callback=callback)
    t_fit = time.time() - t0
    m = cfg["mesh"]
    t1 = time.time()
    mesh = extract_mesh(model, int(m["resolution"]), float(m["bound"]), int(m["chunk"]))
    t_mesh = time.time() - t1
    files = {}
    for fmt in formats or ():
        files[fmt] = str(save_mesh(mesh, out / f"mesh.{fmt}"))
    if turntable_format:
        t = cfg["turntable"]
        files["turntable"] = str(turntable(mesh, out / f"turntable.{turntable_format}", int(t["frames"]), int(t["size"]),
                                           float(t["elevation_deg"]), float(t["distance"]), float(t["focal"]),
                                           int(t["fps"])))
    files["cameras"] = [str(p) for p in write_views_and_cameras(out, views, poses, Ks)]
    summary = {"device": str(dev), "preset": cfg["name"], "fit_seconds": round(t_fit, 2),
               "mesh_seconds": round(t_mesh, 2),
               "steps": int(steps if steps is not None else cfg["train"]["steps"]),
               "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
               "watertight": bool(mesh.is_watertight), "files": files, "config": cfg}
    (out / "recon.json").write_text(json.dumps(summary, indent=1))
    summary["mesh"] = mesh
    summary["model"] = model
    return summary


def write_views_and_cameras(out: Path, views: np.ndarray, poses, Ks) -> list[Path]:
    """views (N, H, W, 3|4) in [0, 1] -> ``out/views/NNN.png`` + transforms.json + colmap/ for them."""
    (out / "views").mkdir(parents=True, exist_ok=True)
    files = [f"views/{i:03d}.png" for i in range(len(views))]
    for name, view in zip(files, views):
        Image.fromarray((np.clip(view, 0, 1) * 255).round().astype(np.uint8)).save(out / name)
    return write_camera_exports(out, poses, Ks, views.shape[2], views.shape[1], files)


def reconstruct(cfg, log=print) -> dict:
    """Run a ``conf/reconstruct.yaml`` config (DictConfig or dict); see the module docstring."""
    cfg = to_plain(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    n = int(cfg.get("n_views", 16))
    views = load_views(cfg["views"], n)
    poses, Ks = load_cameras(cfg.get("cameras"), n, views.shape[1], cfg.get("rig"))
    if views.shape[1] != views.shape[2]:
        raise ValueError(f"views must be square, got {views.shape[1]}x{views.shape[2]}")
    exp = cfg.get("export") or {}
    return reconstruct_views(views, poses, Ks, cfg["recon"], cfg["output_dir"], cfg.get("mask_source", "auto"),
                             float(cfg.get("mask_threshold", 0.05)), cfg.get("device", "auto"), int(cfg.get("seed", 0)),
                             cfg.get("steps"), tuple(exp.get("formats", ("ply", "glb"))), exp.get("turntable", "gif"),
                             log=log)
