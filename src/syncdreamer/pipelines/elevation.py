"""Cheap elevation estimate of the input view from its silhouette (used when ``elevation=null``).

Method (geometric, no weights, a few milliseconds): objects in the training renders stand on the ground
plane, and the bottom outline of the silhouette is the projection of the object's base (a circle or a convex
footprint). A horizontal circle seen along a ray that meets the ground at angle ``phi`` projects to an
ellipse whose minor/major axis ratio is ``sin(phi)`` (the same sag/half-width ratio holds for a square base
seen corner-on). We

1. take the lowest foreground pixel of every column of the framed mask (the bottom contour),
2. keep the contour points within ``band_fraction`` of the silhouette height above its lowest point (the base),
3. fit an axis-aligned conic ``u^2 + B v^2 + C u + D v + E = 0`` by least squares (normalised coordinates),
   so ``sin(phi) = 1 / sqrt(B)``,
4. correct for perspective with the rig's pinhole (``focal`` px, principal point at the centre of the framed
   picture, which mimics the renders the model was trained on): the ray to the ellipse centre lies
   ``delta = atan((y_c - c) / f)`` below the optical axis, so the camera elevation is ``phi - delta``,
5. clamp to ``[min_deg, max_deg]`` (the author's advice: roughly -10..40 degrees is all the model needs).

Known limits: the sign of the elevation cannot be told from a silhouette (the estimate is >= 0 before
clamping); objects without a visible base (figures on thin legs, flat cards, pictures seen from below) give
poor fits; then ``fallback_deg`` is returned and ``method`` says ``fallback``. Why not model-based: SyncDreamer
only renders the fixed 30-degree rig, so re-rendering the input view at a candidate elevation needs the
candidate to be 30 degrees; a loss-ranking over candidates would cost several UNet passes per candidate
and still be biased toward 30 degrees. The geometric estimate is free, deterministic and testable against
analytic silhouettes (tests/test_pipelines_elevation.py: cylinders and boxes rendered with the rig camera).

Measured on Blender renders of the procedural objects (``bench/bench_elevation.py``, table in the README) the
estimate only holds for objects with a round, flat base (the torus class); on boxes, cones and the toy it is
no better than a guess, so ``conf/generate.yaml`` uses ``method: fixed`` (30 degrees, the elevation of the
target rig) by default and ``method: silhouette`` is the opt-in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ``elevation_estimate.method`` values: the silhouette estimate, or the fixed guess ``fallback_deg``.
METHODS = ("silhouette", "fixed")


@dataclass
class ElevationConfig:
    """Numbers of the estimator (``elevation_estimate`` in ``conf/generate.yaml``)."""

    band_fraction: float = 0.35   # bottom band height, fraction of the silhouette height
    min_points: int = 8           # fewer bottom-contour points than this -> fallback
    max_slope: float = 2.0        # drop contour points steeper than this (the silhouette's side lines)
    slope_window: int = 2         # half-width in pixels of the finite difference that measures the slope
    min_deg: float = -10.0
    max_deg: float = 40.0
    fallback_deg: float = 30.0    # returned when the fit is implausible, and the guess of method=fixed
    method: str = "silhouette"    # silhouette (the estimate above) | fixed (always fallback_deg)
    focal: float | None = 280.0   # pixels at the framed picture's size (None = no perspective correction)


@dataclass
class ElevationEstimate:
    """elevation_deg (clamped), raw_deg (before clamping), method ('silhouette' | 'fallback'), details."""

    elevation_deg: float
    raw_deg: float | None
    method: str
    details: dict

    def to_json(self) -> dict:
        return {"elevation_deg": self.elevation_deg, "raw_deg": self.raw_deg, "method": self.method,
                **self.details}


def bottom_contour(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool mask (H, W) -> (x, y) of the lowest foreground pixel of every non-empty column (pixel centres)."""
    cols = np.flatnonzero(mask.any(0))
    h = mask.shape[0]
    bottom = h - 1 - np.argmax(mask[::-1, cols], axis=0)
    return cols.astype(np.float64), bottom.astype(np.float64)


def fit_axis_conic(x: np.ndarray, y: np.ndarray):
    """Least-squares axis-aligned ellipse through points -> (xc, yc, a, b) or None if not an ellipse."""
    mx, my = x.mean(), y.mean()
    s = max(np.ptp(x), np.ptp(y), 1.0)
    u, v = (x - mx) / s, (y - my) / s
    A = np.stack([v * v, u, v, np.ones_like(u)], 1)
    coef, *_ = np.linalg.lstsq(A, -u * u, rcond=None)
    B, C, D, E = coef
    if not np.isfinite(coef).all() or B <= 0:
        return None
    u0, v0 = -C / 2.0, -D / (2.0 * B)
    a2 = u0 * u0 + B * v0 * v0 - E
    if a2 <= 0:
        return None
    a = math.sqrt(a2)
    return mx + u0 * s, my + v0 * s, a * s, a / math.sqrt(B) * s


def estimate_elevation(mask: np.ndarray, cfg: ElevationConfig | None = None) -> ElevationEstimate:
    """Framed foreground mask (S, S) bool -> :class:`ElevationEstimate` in degrees (see module docstring)."""
    cfg = cfg or ElevationConfig()
    if cfg.method not in METHODS:
        raise ValueError(f"elevation_estimate.method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.method == "fixed":
        return ElevationEstimate(float(cfg.fallback_deg), None, "fixed", {})
    mask = np.asarray(mask, bool)

    def fallback(reason: str) -> ElevationEstimate:
        return ElevationEstimate(float(cfg.fallback_deg), None, "fallback", {"reason": reason})

    if not mask.any():
        return fallback("empty mask")
    ys = np.flatnonzero(mask.any(1))
    height = ys.max() - ys.min() + 1
    x, y = bottom_contour(mask)
    y_low = y.max()
    band = max(2.0, cfg.band_fraction * height)
    # the contiguous run of columns around the lowest point whose bottom lies inside the band
    inside = y >= y_low - band
    lowest = int(np.argmax(y))
    lo = hi = lowest
    while lo > 0 and inside[lo - 1] and x[lo - 1] == x[lo] - 1:
        lo -= 1
    while hi < len(x) - 1 and inside[hi + 1] and x[hi + 1] == x[hi] + 1:
        hi += 1
    px, py = x[lo:hi + 1], y[lo:hi + 1] + 0.5  # the pixel's lower edge is the outline
    k = max(1, int(cfg.slope_window))
    if len(px) > 2 * k + 1:  # side lines of the silhouette are steep; the base arc is not (away from its ends)
        padded = np.pad(py, k, mode="edge")
        slope = np.abs(padded[2 * k:] - padded[:-2 * k]) / (2.0 * k)
        keep = slope <= cfg.max_slope
        px, py = px[keep], py[keep]
    if len(px) < cfg.min_points:
        return fallback(f"only {len(px)} base points")
    sag = float(py.max() - py.min())
    fit = None if sag < 1.0 else fit_axis_conic(px, py)
    if sag < 1.0:
        phi = 0.0
        yc = float(py.max())
    else:
        if fit is None:
            return fallback("bottom outline is not elliptic")
        xc, yc, a, b = fit
        half_width = (px.max() - px.min()) / 2.0
        if not (0.5 * half_width <= a <= 2.0 * half_width + 2.0) or b > a:
            return fallback(f"implausible base ellipse (a={a:.1f}, b={b:.1f}, base half-width {half_width:.1f})")
        phi = math.degrees(math.asin(min(1.0, b / a)))
    delta = 0.0
    if cfg.focal:
        delta = math.degrees(math.atan((yc - mask.shape[0] / 2.0) / float(cfg.focal)))
    raw = phi - delta
    est = float(min(max(raw, cfg.min_deg), cfg.max_deg))
    return ElevationEstimate(est, float(raw), "silhouette",
                             {"base_ray_angle_deg": float(phi), "perspective_offset_deg": float(delta),
                              "base_points": int(len(px))})
