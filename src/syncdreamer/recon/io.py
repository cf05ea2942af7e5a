"""Inputs of reconstruction and evaluation: views (folder or strip), cameras, foreground masks.

* Views: a folder with ``000.png .. 015.png`` (RGBA or RGB), or one ``H x (N*H)`` strip (view i =
  azimuth ``i * 360/N`` deg), or a folder holding exactly one such strip.
* Cameras: ``None`` -> the fixed rig of :func:`syncdreamer.cameras.make_rig` (intrinsics scaled to the
  image size); a ``cameras.json`` (``{"poses": (N,3,4) w2c OpenCV, "Ks": (N,3,3) or (3,3),
  "image_size": optional}`` or the ``generate.py`` form with ``views[i].pose_w2c`` / ``views[i].K``); or a
  ``meta.pkl`` (``[K, azimuths, elevations, distances, poses]``, the official layout).
* Masks: pluggable ``mask_source``: ``"alpha"`` (needs RGBA), ``"threshold"`` (non-white pixels),
  ``"auto"`` (alpha when present, else threshold), or any callable ``rgb (N,H,W,3) in [0,1] -> (N,H,W)``
  (e.g. a learned foreground extractor).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from syncdreamer import cameras
from syncdreamer.imaging import composite_on_white

__all__ = ["load_views", "load_cameras", "compute_masks", "threshold_mask", "composite_white", "view_files"]

_VIEW_RE = re.compile(r"^(\d{3})\.png$")


def view_files(folder) -> list[Path]:
    """The numbered view files ``NNN.png`` of a folder, sorted by number (no gaps allowed)."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if _VIEW_RE.match(p.name)), key=lambda p: int(p.stem))
    for i, p in enumerate(files):
        if int(p.stem) != i:
            raise ValueError(f"{folder}: view files must be numbered 000..{len(files) - 1:03d}; {i:03d}.png is missing")
    return files


def _read_png(path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() or im.mode == "P" else "RGB")
            return np.asarray(im, dtype=np.float32) / 255.0
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def _split_strip(img: np.ndarray, n_views: int, path) -> np.ndarray:
    h, w = img.shape[:2]
    if w != n_views * h:
        raise ValueError(f"{path}: a strip of {n_views} square views must be {h}x{n_views * h}, got {h}x{w}")
    return np.stack(np.split(img, n_views, axis=1))


def load_views(path, n_views: int = 16) -> np.ndarray:
    """Views (N, H, W, C) float32 in [0, 1], C = 4 (RGBA) or 3 (RGB), from a folder or a strip.

    Raises ``ValueError`` (one line) for a missing path, a wrong number of views, or mixed sizes."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"views not found: {path}")
    if path.is_dir():
        files = view_files(path)
        if not files:
            pngs = sorted(path.glob("*.png"))
            if len(pngs) == 1:
                return _split_strip(_read_png(pngs[0]), n_views, pngs[0])
            raise ValueError(f"{path}: no 000.png..{n_views - 1:03d}.png views and no single strip PNG")
        if len(files) != n_views:
            raise ValueError(f"{path}: expected {n_views} views, found {len(files)}")
        imgs = [_read_png(f) for f in files]
        shapes = {im.shape for im in imgs}
        if len(shapes) != 1:
            raise ValueError(f"{path}: views have different sizes/channels {sorted(shapes)}")
        return np.stack(imgs)
    return _split_strip(_read_png(path), n_views, path)


def composite_white(views: np.ndarray) -> np.ndarray:
    """(N, H, W, 3|4) in [0, 1] -> RGB (N, H, W, 3) composited on white (:func:`syncdreamer.imaging.composite_on_white`)."""
    return composite_on_white(views)


def threshold_mask(rgb: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Foreground (N, H, W) float {0,1}: pixels whose darkest channel is below ``1 - threshold``
    (anything not white on a white background)."""
    return (rgb.min(-1) < 1.0 - threshold).astype(np.float32)


def compute_masks(views: np.ndarray, source: str | Callable = "auto", threshold: float = 0.05) -> np.ndarray:
    """Foreground masks (N, H, W) float in [0, 1] from views (N, H, W, 3|4); see module docstring."""
    if callable(source):
        m = np.asarray(source(composite_white(views)), np.float32)
        if m.shape != views.shape[:3]:
            raise ValueError(f"mask_source callable returned shape {m.shape}, expected {views.shape[:3]}")
        return m
    if source == "auto":
        source = "alpha" if views.shape[-1] == 4 else "threshold"
    if source == "alpha":
        if views.shape[-1] != 4:
            raise ValueError("mask_source='alpha' needs RGBA views; these are RGB (use 'threshold' or 'auto')")
        return views[..., 3].astype(np.float32)
    if source == "threshold":
        return threshold_mask(composite_white(views), threshold)
    raise ValueError(f"unknown mask_source {source!r}: use 'alpha', 'threshold', 'auto' or a callable")


def load_cameras(spec, n_views: int, image_size: int, rig_kwargs: dict | None = None):
    """Poses (N, 3, 4) w2c OpenCV and Ks (N, 3, 3) for views of ``image_size`` pixels.

    ``spec``: None (the fixed rig, built from ``rig_kwargs`` = :func:`cameras.make_rig` arguments, with
    K scaled from the rig's image size to ``image_size``), a path to ``cameras.json`` or ``meta.pkl``."""
    if spec is None:
        kw = dict(rig_kwargs or {})
        kw.setdefault("n_views", n_views)
        rig = cameras.make_rig(**kw)
        if len(rig) != n_views:
            raise ValueError(f"rig has {len(rig)} views but {n_views} images were given")
        Ks = cameras.scale_intrinsics(rig.Ks, image_size / rig.image_size)
        return rig.poses.astype(np.float64), np.asarray(Ks, np.float64)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"camera file not found: {path}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if "views" in data and isinstance(data["views"], list):  # generate.py's cameras.json
            try:
                poses = np.asarray([v["pose_w2c"] for v in data["views"]], np.float64)
                Ks = np.asarray([v["K"] for v in data["views"]], np.float64)
            except (KeyError, TypeError):
                raise ValueError(f"{path}: every entry of 'views' needs 'pose_w2c' and 'K'") from None
        elif "poses" in data and "Ks" in data:
            poses, Ks = np.asarray(data["poses"], np.float64), np.asarray(data["Ks"], np.float64)
        else:
            raise ValueError(f"{path}: cameras.json needs 'poses' (N,3,4) + 'Ks' (N,3,3 or 3,3), or 'views' "
                             "entries with 'pose_w2c' and 'K'")
        size = data.get("image_size")
    elif path.suffix == ".pkl":
        from ..data.meta import read_meta

        meta = read_meta(path)  # restricted unpickler: a data set file never runs code
        K, poses = meta["K"], meta["poses"]
        Ks, size = K, None
    else:
        raise ValueError(f"{path}: cameras must be a .json or .pkl (meta.pkl) file")
    poses = poses.reshape(-1, 3, 4)
    if Ks.shape == (3, 3):
        Ks = np.repeat(Ks[None], len(poses), 0)
    if len(poses) != n_views or Ks.shape != (n_views, 3, 3):
        raise ValueError(f"{path}: {len(poses)} poses / {len(Ks)} Ks for {n_views} views")
    if size is None:
        size = 2 * Ks[0, 0, 2]  # principal point at the image centre
    Ks = cameras.scale_intrinsics(Ks, image_size / float(size))
    return poses, np.asarray(Ks, np.float64)
