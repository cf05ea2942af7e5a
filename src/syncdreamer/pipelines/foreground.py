"""Foreground extraction: an RGB(A) picture -> an RGBA picture whose alpha is the object mask.

Methods (``foreground=`` in ``conf/generate.yaml``):

* ``alpha``  - use the picture's alpha channel (fails on an RGB picture).
* ``sam``    - Segment Anything with a user-given checkpoint (``sam_checkpoint``, ``sam_model_type``);
  prompted with a box around the object found by the OpenCV method (or the whole picture). Needs the
  optional package ``segment_anything`` (extra ``[sam]``).

* ``rembg``  - the ``rembg`` package (extra ``[rembg]``) when installed; its model file must already be on disk
  (no download).
* ``opencv`` - offline fallback, no weights: a colour model of the picture border (median colour and spread
  of a ``border`` pixel wide frame), pixels far from it seed the foreground, then GrabCut refines the mask;
  the largest connected components are kept and holes filled.
* ``auto``   - ``alpha`` when the picture has a non-trivial alpha channel, else ``rembg`` when installed (and
  working), else ``opencv``.

Every method returns a :class:`Foreground` (RGBA uint8 (H, W, 4), mask bool (H, W), method name); an empty
mask raises :class:`~syncdreamer.pipelines.errors.InputError`.
SAM predictors and rembg sessions are loaded once per process (:func:`sam_predictor`, :func:`rembg_session`,
both ``functools.lru_cache``), not once per image.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

METHODS = ("alpha", "sam", "rembg", "opencv", "auto")


@dataclass
class ForegroundConfig:
    """Numbers of the foreground methods (``foreground_options`` in ``conf/generate.yaml``)."""

    alpha_threshold: int = 0          # alpha > threshold is foreground (for the mask file and checks)
    min_area_fraction: float = 0.001  # a mask smaller than this fraction of the picture counts as empty
    border: int = 8                   # opencv: width in pixels of the frame used as the background model
    color_threshold: float = 30.0     # opencv: min distance (0-255 RGB) to the border colour to seed foreground
    spread_factor: float = 3.0        # opencv: ... or this many times the border colour's spread, if larger
    grabcut_iters: int = 5            # opencv: GrabCut iterations (0 = threshold only)
    keep_component_fraction: float = 0.1  # opencv: keep components >= this fraction of the largest one
    morph_kernel: int = 3             # opencv: opening/closing kernel size (odd; 0 = none)
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_h"
    sam_box_margin: float = 0.05      # sam: margin around the prompt box, fraction of the picture size
    rembg_model: str = "u2net"
    extra: dict = field(default_factory=dict)


@dataclass
class Foreground:
    """rgba (H, W, 4) uint8 with the mask as alpha, mask (H, W) bool, method actually used."""

    rgba: np.ndarray
    mask: np.ndarray
    method: str


def has_useful_alpha(image: np.ndarray) -> bool:
    """True for an RGBA picture whose alpha is not constant (a real mask)."""
    return image.ndim == 3 and image.shape[2] == 4 and int(image[..., 3].min()) != int(image[..., 3].max())


def _finish(rgb: np.ndarray, alpha: np.ndarray, method: str, cfg: ForegroundConfig) -> Foreground:
    alpha = alpha.astype(np.uint8)
    mask = alpha > cfg.alpha_threshold
    if mask.sum() < max(1, cfg.min_area_fraction * mask.size):
        raise InputError(f"empty mask: foreground method '{method}' found no object "
                         f"({int(mask.sum())} of {mask.size} pixels)")
    return Foreground(np.dstack([rgb[..., :3], alpha]), mask, method)


def from_alpha(image: np.ndarray, cfg: ForegroundConfig) -> Foreground:
    """Use the alpha channel as it is."""
    if image.ndim != 3 or image.shape[2] != 4:
        raise InputError("foreground=alpha needs an RGBA picture; this one has no alpha channel "
                         "(use foreground=auto|opencv|rembg|sam)")
    return _finish(image[..., :3], image[..., 3], "alpha", cfg)


def _keep_main_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= fraction * areas.max()) + 1
    return np.isin(labels, keep)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes not connected to the picture border."""
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask.astype(np.uint8)
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    return (flood[1:-1, 1:-1] != 2)


def opencv_mask(rgb: np.ndarray, cfg: ForegroundConfig) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> bool mask (H, W): border colour model + GrabCut (no weights, offline).

    Returns an all-False mask when no pixel differs from the border colour model (e.g. a blank picture).
    """
    rgb = np.ascontiguousarray(rgb[..., :3])
    h, w = rgb.shape[:2]
    b = int(max(1, min(cfg.border, h // 4, w // 4)))
    frame = np.zeros((h, w), bool)
    frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = True, True, True, True
    px = rgb.astype(np.float32)
    border_px = px[frame]
    ref = np.median(border_px, 0)
    dist = np.linalg.norm(px - ref, axis=-1)
    spread = float(np.percentile(dist[frame], 95))
    seed = (dist > max(cfg.color_threshold, cfg.spread_factor * spread)) & ~frame
    if seed.sum() == 0:
        return np.zeros((h, w), bool)
    if cfg.grabcut_iters > 0:
        gc = np.where(seed, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        gc[frame] = cv2.GC_BGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, int(cfg.grabcut_iters),
                        cv2.GC_INIT_WITH_MASK)
            mask = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        except cv2.error:  # degenerate colour statistics: keep the threshold mask
            mask = seed
    else:
        mask = seed
    if cfg.morph_kernel > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.morph_kernel, cfg.morph_kernel))
        m = mask.astype(np.uint8)
        m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
        mask = m.astype(bool)
    if mask.any():
        mask = _fill_holes(_keep_main_components(mask, cfg.keep_component_fraction))
    return mask


def from_opencv(image: np.ndarray, cfg: ForegroundConfig) -> Foreground:
    mask = opencv_mask(image[..., :3], cfg)
    return _finish(image[..., :3], mask.astype(np.uint8) * 255, "opencv", cfg)


def rembg_available() -> bool:
    return importlib.util.find_spec("rembg") is not None


def rembg_model_on_disk(model_name: str) -> bool | None:
    """Whether rembg's model file for ``model_name`` is already on disk (rembg would otherwise download it,
    which hangs on an offline machine); None when this rembg version cannot tell."""
    try:
        from rembg import sessions  # lazy: optional extra
    except ImportError:  # a rembg without the sessions module: cannot tell
        return None

    cls = getattr(sessions, "sessions", {}).get(model_name)
    if cls is None:
        return None
    fname = f"{cls.name()}.onnx"
    if hasattr(cls, "resolve_existing"):
        return cls.resolve_existing(fname) is not None
    if hasattr(cls, "u2net_home_dir"):
        return (Path(cls.u2net_home_dir()) / fname).is_file()
    return None


@functools.lru_cache(maxsize=4)
def rembg_session(model_name: str):
    """The rembg session of ``model_name``, created once per process (a failed load is not cached)."""
    import rembg  # lazy: optional extra

    if rembg_model_on_disk(model_name) is False:
        raise InputError(f"rembg's model file for {model_name!r} is not on disk and this run does not download it: "
                         f"run `python -c \"import rembg; rembg.new_session('{model_name}')\"` once online, "
                         "or use foreground=opencv")
    try:
        return rembg.new_session(model_name)
    except Exception as err:  # noqa: BLE001 - rembg raises many kinds (unknown model, broken file, ...)
        raise InputError(f"rembg could not load {model_name!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); or use foreground=opencv") from None


def from_rembg(image: np.ndarray, cfg: ForegroundConfig) -> Foreground:
    if not rembg_available():
        raise InputError("foreground=rembg needs the optional package rembg: pip install 'syncdreamer[rembg]'; "
                         "or use foreground=opencv")
    import rembg  # lazy: optional extra

    session = rembg_session(cfg.rembg_model)
    try:
        out = np.asarray(rembg.remove(np.ascontiguousarray(image[..., :3]), session=session))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"rembg failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         "or use foreground=opencv") from None
    return _finish(image[..., :3], out[..., 3], "rembg", cfg)


@functools.lru_cache(maxsize=2)
def sam_predictor(model_type: str, checkpoint: str):
    """A ``SamPredictor`` for (model type, checkpoint file), loaded once per process (failures not cached)."""
    from segment_anything import SamPredictor, sam_model_registry  # lazy: optional extra

    if model_type not in sam_model_registry:
        raise InputError(f"unknown sam_model_type {model_type!r}; one of {sorted(sam_model_registry)}")
    try:
        sam = sam_model_registry[model_type](checkpoint=checkpoint)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"could not load SAM checkpoint {checkpoint} as {model_type} ({type(err).__name__})") \
            from None
    return SamPredictor(sam)


def _sam_prompt_box(rgb: np.ndarray, cfg: ForegroundConfig) -> np.ndarray:
    """The box prompt: the OpenCV method's rough mask (or the whole picture) plus ``sam_box_margin``."""
    h, w = rgb.shape[:2]
    rough = opencv_mask(rgb, cfg)
    if rough.any():
        ys, xs = np.nonzero(rough)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    else:
        box = np.array([0, 0, w - 1, h - 1], np.float32)
    m = cfg.sam_box_margin * max(h, w)
    return np.clip(box + np.array([-m, -m, m, m]), 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)


def from_sam(image: np.ndarray, cfg: ForegroundConfig) -> Foreground:
    if not cfg.sam_checkpoint:
        raise InputError("foreground=sam needs foreground_options.sam_checkpoint=<path to a SAM .pth file>")
    ckpt = Path(cfg.sam_checkpoint).expanduser()
    if not ckpt.is_file():
        raise InputError(f"SAM checkpoint not found: {ckpt}")
    if importlib.util.find_spec("segment_anything") is None:
        raise InputError("foreground=sam needs the optional package segment_anything: pip install 'syncdreamer[sam]'")
    predictor = sam_predictor(str(cfg.sam_model_type), str(ckpt.resolve()))
    rgb = np.ascontiguousarray(image[..., :3])
    predictor.set_image(rgb)
    masks, scores, _ = predictor.predict(box=_sam_prompt_box(rgb, cfg), multimask_output=True)
    mask = masks[int(np.argmax(scores))]
    return _finish(rgb, mask.astype(np.uint8) * 255, "sam", cfg)


def extract_foreground(image: np.ndarray, method: str = "auto", cfg: ForegroundConfig | None = None) -> Foreground:
    """image uint8 (H, W, 3|4) -> :class:`Foreground` with the chosen ``method`` (see module docstring)."""
    cfg = cfg or ForegroundConfig()
    if method not in METHODS:
        raise InputError(f"unknown foreground method {method!r}; one of {', '.join(METHODS)}")
    if method == "auto":
        if has_useful_alpha(image):
            method = "alpha"
        elif rembg_available():
            try:
                return from_rembg(image, cfg)
            except InputError:  # rembg without its model file (offline): fall back to OpenCV
                method = "opencv"
        else:
            method = "opencv"
    return {"alpha": from_alpha, "sam": from_sam, "rembg": from_rembg, "opencv": from_opencv}[method](image, cfg)
