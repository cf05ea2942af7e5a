"""Cheap elevation estimate of the input view from its silhouette (used when ``elevation=null``).

Method (geometric, no weights, tens of milliseconds): objects stand on the ground plane, and the bottom outline
of the silhouette is the projection of the object's base. Two base shapes are fitted, both general:

* a horizontal circle seen along a ray that meets the ground at angle ``phi`` projects to an ellipse whose
  minor/major axis ratio is ``sin(phi)``: an axis-aligned conic ``u^2 + B v^2 + C u + D v + E = 0`` is fitted by
  least squares (refitted once without outlying points), ``sin(phi) = 1 / sqrt(B)``, and the camera elevation is
  ``phi - delta`` with ``delta = atan((y_c - c) / f)`` the angle of the ray to the ellipse centre below the axis;
* a horizontal rectangle corner (boxes, tables, bodies on legs): two straight edges meeting at the lowest
  point. Orthographically their image slopes satisfy ``sin(phi)^2 = -k1 k2`` whatever the turn of the box; with
  the pinhole it is solved exactly (:func:`corner_elevation`: the elevation at which both image lines are images
  of perpendicular horizontal lines), the root nearest the orthographic answer.

Steps: take the lowest foreground pixel of every column of the framed mask; keep the contiguous run of columns
within ``band_fraction`` of the silhouette height above the lowest point, without steep points (side lines);
split it into segments where it skips columns or jumps (another part in front: a fin, a leg); fit both shapes
to every contiguous run of segments (and each run without one inner segment, e.g. a leg hiding a corner);
keep, per shape, the fit that explains most points within ``max_rms_px``; of the two, the one explaining more
points. No fit within ``max_rms_px`` -> ``fallback_deg`` and ``method='fallback'``. A straight horizontal
outline (a face seen head-on: any elevation gives it) is ambiguous and not used. The result is clamped to
``[min_deg, max_deg]`` (the author's advice: roughly -10..40 degrees is all the model needs). The perspective
uses the rig's pinhole (``focal`` px, principal point at the centre of the framed picture, which mimics the
renders the model was trained on; exact for ``crop_size=-1`` framing of a rig render).

Known limits: the sign of ``phi`` cannot be told from a silhouette (the base seen from below looks the same);
only the perspective offset makes negative estimates possible (a base well below the image centre with a thin
ellipse). Round parts (a sphere's bottom arc fits an ellipse with ``b ~ a``) and small details can be taken for
the base. The top outline (a flat top seen from above) can be fitted too (``top_outline=true``, used only when
the bottom gives nothing): on the development renders it lowers the median error but raises the worst one, so
it is off. Why not model-based: SyncDreamer only renders the fixed 30-degree rig, so re-rendering the input view
at a candidate elevation needs the candidate to be 30 degrees; a loss-ranking over candidates would cost
several UNet passes per candidate and still be biased toward 30 degrees. The geometric estimate is free,
deterministic and testable against analytic silhouettes (tests/test_pipelines.py: cylinders, square and
rectangular boxes rendered with the rig camera).

Measured on Blender renders of the procedural objects (``bench/bench_elevation.py``, table in the README):
median error 5.7 degrees against 15.0 for the fixed 30-degree guess, lower in every object class; the worst
error is 42.8 against 40.0 (one view of 384: a cone at 40 degrees, a corner fitted to a short piece of outline
gave -2.8). Where no fit is good the estimate IS the fixed guess, so ``conf/generate.yaml`` uses
``method: silhouette`` by default; ``method: fixed`` (always 30 degrees, the target rig's elevation) is one
flag away.
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
    min_points: int = 8           # a fit needs at least this many outline points
    max_slope: float = 2.0        # drop contour points steeper than this (the silhouette's side lines)
    slope_window: int = 2         # half-width in pixels of the finite difference that measures the slope
    min_deg: float = -10.0
    max_deg: float = 40.0
    fallback_deg: float = 30.0    # returned when the fit is implausible, and the guess of method=fixed
    method: str = "silhouette"    # silhouette (the estimate above) | fixed (always fallback_deg)
    focal: float | None = 280.0   # pixels at the framed picture's size (None = no perspective correction)
    max_rms_px: float = 1.0       # a fit whose rms distance (px) to the outline exceeds this is not trusted
    top_outline: bool = False     # also fit the top outline (used only when the bottom gives no trusted fit)


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


def outline_band(mask: np.ndarray, cfg: ElevationConfig):
    """Bottom outline of ``mask`` near its lowest point -> (x, y) (y at the pixels' lower edges) or a reason.

    The contiguous run of columns around the lowest point whose bottom lies within ``band_fraction`` of the
    silhouette height, without the steep parts (the silhouette's side lines).
    """
    ys = np.flatnonzero(mask.any(1))
    height = ys.max() - ys.min() + 1
    x, y = bottom_contour(mask)
    band = max(2.0, cfg.band_fraction * height)
    inside = y >= y.max() - band
    lo = hi = int(np.argmax(y))
    while lo > 0 and inside[lo - 1] and x[lo - 1] == x[lo] - 1:
        lo -= 1
    while hi < len(x) - 1 and inside[hi + 1] and x[hi + 1] == x[hi] + 1:
        hi += 1
    px, py = x[lo:hi + 1], y[lo:hi + 1] + 0.5
    k = max(1, int(cfg.slope_window))
    if len(px) > 2 * k + 1:
        padded = np.pad(py, k, mode="edge")
        keep = np.abs(padded[2 * k:] - padded[:-2 * k]) / (2.0 * k) <= cfg.max_slope
        px, py = px[keep], py[keep]
    if len(px) < cfg.min_points:
        return f"only {len(px)} outline points"
    return px, py


def ellipse_candidate(px: np.ndarray, py: np.ndarray, trim: bool = True, keep_fraction: float = 0.7):
    """Lower half of an axis-aligned ellipse through the outline -> (sin_phi, y_ref, rms px) or a reason."""
    if np.ptp(py) < 1.0:  # a circle seen from its own plane, or any straight edge seen head-on: ambiguous
        return "straight horizontal outline"
    keep = np.ones(len(px), bool)
    for _ in range(2):  # fit, then refit once without the outliers (parts in front of the base)
        fit = fit_axis_conic(px[keep], py[keep])
        if fit is None:
            return "outline is not elliptic"
        xc, yc, a, b = fit
        half_width = np.ptp(px) / 2.0
        if not (0.5 * half_width <= a <= 2.0 * half_width + 2.0) or b > a:
            return f"implausible ellipse (a={a:.1f}, b={b:.1f}, half-width {half_width:.1f})"
        r = py - (yc + b * np.sqrt(np.clip(1.0 - ((px - xc) / a) ** 2, 0.0, None)))
        inlier = np.abs(r) <= max(1.0, 2.5 * float(np.median(np.abs(r))))
        if not (trim and keep_fraction * len(px) <= inlier.sum() < keep.sum()):
            break
        keep = inlier
    return b / a, float(yc), float(np.sqrt(np.mean(r[keep] ** 2)))


def robust_line(x: np.ndarray, y: np.ndarray, keep_fraction: float = 0.7):
    """Line fit that drops outlying points (parts in front of the edge) once -> (coef, residuals of kept points)."""
    coef = np.polyfit(x, y, 1)
    r = y - np.polyval(coef, x)
    inlier = np.abs(r) <= max(1.0, 2.5 * float(np.median(np.abs(r))))
    if keep_fraction * len(x) <= inlier.sum() < len(x) and np.ptp(x[inlier]) >= 2.0:
        coef = np.polyfit(x[inlier], y[inlier], 1)
        return coef, y[inlier] - np.polyval(coef, x[inlier])
    return coef, r


def corner_candidate(px: np.ndarray, py: np.ndarray, min_points: int):
    """Two lines meeting at the lowest point (the near corner of a rectangle) -> (sin_phi, y_ref, rms) or a reason.

    A horizontal rectangle seen orthographically along a ray at angle ``phi`` to the ground has image edge
    slopes ``k1 = -tan(t) sin(phi)`` and ``k2 = cot(t) sin(phi)``, so ``sin(phi)^2 = -k1 k2`` for any turn ``t``.
    """
    i = int(np.argmax(py))
    best = None
    # the lowest point is the corner (on both edges), or the end of one edge when the corner is hidden (a leg)
    splits = ((slice(0, i + 1), slice(i, None)), (slice(0, i), slice(i, None)), (slice(0, i + 1), slice(i + 1, None)))
    for sides in splits:
        fit = corner_lines(px, py, sides, min_points)
        if fit is not None and (best is None or fit[2] < best[2]):
            best = fit
    if best is None:
        return "no corner"
    fits, sides, rms = best
    k1, k2 = fits[0][0], fits[1][0]
    rise = min(k1 * np.ptp(px[sides[0]]), -k2 * np.ptp(px[sides[1]]))
    if rise < 2.0:  # an edge that climbs less than 2 px cannot be told from a horizontal one (a face head-on)
        return "no corner"
    s2 = -k1 * k2
    if s2 > 1.0:
        return f"implausible corner (slopes {k1:.2f}, {k2:.2f})"
    xc = (fits[1][1] - fits[0][1]) / (k1 - k2)
    yc = float(np.polyval(fits[0], xc))
    return math.sqrt(s2), yc, rms, (fits[0], fits[1], xc)


def corner_lines(px: np.ndarray, py: np.ndarray, sides, min_points: int):
    """Robust lines through the two ``sides`` (slices) of the outline -> (fits, sides, rms) or None."""
    fits, res = [], []
    for sl in sides:
        x, y = px[sl], py[sl]
        if len(x) < max(3, min_points // 2) or np.ptp(x) < 2.0:
            return None
        coef, r = robust_line(x, y)
        fits.append(coef)
        res.append(r)
    return fits, sides, float(np.sqrt(np.mean(np.concatenate(res) ** 2)))


def corner_elevation(lines, size: int, focal: float, guess_deg: float) -> float | None:
    """Pinhole-exact elevation (deg) at which the two image lines are images of perpendicular horizontal lines.

    ``lines``: two ``(k, m)`` (``y = k x + m``, pixels) and the corner's x. Each line and the camera centre span a
    plane with normal ``n`` (camera frame: x right, y down, z forward); the 3D horizontal direction in it is
    ``n x up(e)`` with ``up(e) = (0, -cos e, -sin e)``, and the two directions are perpendicular when
    ``g(e) = n1.n2 - (n1.up)(n2.up) = 0``. Of the roots in (-90, 90) the one nearest ``guess_deg`` (the
    orthographic answer) is returned; None when there is none.
    """
    (l1, l2, xc), c = lines, size / 2.0
    normals = []
    for k, m in (l1, l2):
        pts = [np.array([(x - c) / focal, (k * x + m - c) / focal, 1.0]) for x in (xc - 10.0, xc + 10.0)]
        n = np.cross(*pts)
        normals.append(n / np.linalg.norm(n))
    n1, n2 = normals
    e = np.radians(np.arange(-89.5, 89.5, 0.05))
    g = n1 @ n2 - (n1[1] * np.cos(e) + n1[2] * np.sin(e)) * (n2[1] * np.cos(e) + n2[2] * np.sin(e))
    roots = np.flatnonzero(np.sign(g[:-1]) != np.sign(g[1:]))
    if not len(roots):
        return None
    degs = np.degrees(e[roots] - g[roots] * (e[roots + 1] - e[roots]) / (g[roots + 1] - g[roots]))
    return float(degs[np.argmin(np.abs(degs - guess_deg))])


def outline_segments(px: np.ndarray, py: np.ndarray, max_jump: float = 2.0) -> list[np.ndarray]:
    """Split the outline where it skips columns or jumps (another part in front) -> index arrays, left to right."""
    breaks = np.flatnonzero((np.diff(px) > max_jump) | (np.abs(np.diff(py)) > max_jump)) + 1
    return [seg for seg in np.split(np.arange(len(px)), breaks) if len(seg) >= 2]


def point_sets(segments: list[np.ndarray], max_segments: int = 8):
    """Index sets to fit: every contiguous run of segments, and each run without one inner segment (a leg)."""
    segs = sorted(sorted(segments, key=len, reverse=True)[:max_segments], key=lambda s: s[0])
    for i in range(len(segs)):
        for j in range(i, len(segs)):
            yield np.concatenate(segs[i:j + 1])
            for k in range(i + 1, j):
                yield np.concatenate(segs[i:k] + segs[k + 1:j + 1])


def best_fit(px: np.ndarray, py: np.ndarray, fit: str, cfg: ElevationConfig):
    """Fit ``fit`` ('ellipse' | 'corner') to every point set of the outline -> (set, result) explaining most points.

    Only fits within ``max_rms_px`` compete; when none is, the fit to the whole outline is returned (its reason
    or rms says why it is not trusted).
    """
    def run(idx):
        if len(idx) < cfg.min_points:
            return f"only {len(idx)} outline points"
        if fit == "ellipse":
            return ellipse_candidate(px[idx], py[idx])
        return corner_candidate(px[idx], py[idx], cfg.min_points)

    whole = np.arange(len(px))
    best = (whole, run(whole))
    for idx in point_sets(outline_segments(px, py)):
        res = run(idx)
        if isinstance(res, str) or res[2] > cfg.max_rms_px:
            continue
        b = best[1]
        if isinstance(b, str) or b[2] > cfg.max_rms_px or (len(idx), -res[2]) > (len(best[0]), -b[2]):
            best = (idx, res)
    return best


def outline_candidates(mask: np.ndarray, cfg: ElevationConfig) -> list[dict]:
    """Elevation candidates from the bottom and the top outline of ``mask``, each fitted as ellipse and corner."""
    size = mask.shape[0]
    out = []
    for side, m in (("bottom", mask), ("top", mask[::-1])):
        if side == "top" and not cfg.top_outline:
            continue
        band = outline_band(m, cfg)
        if isinstance(band, str):
            out.append({"outline": side, "fit": "-", "reason": band})
            continue
        for fit in ("ellipse", "corner"):
            idx, cand = best_fit(*band, fit, cfg)
            if isinstance(cand, str):
                out.append({"outline": side, "fit": fit, "reason": cand})
                continue
            out.append(candidate_record(side, fit, cand, len(idx), size, cfg))
    return out


def candidate_record(side: str, fit: str, cand, points: int, size: int, cfg: ElevationConfig) -> dict:
    """A fit -> candidate dict with the elevation: ray angle minus the perspective offset (pinhole-exact corners)."""
    sin_phi, y_ref, rms = cand[:3]
    y_ref = y_ref if side == "bottom" else size - y_ref
    delta = math.degrees(math.atan((y_ref - size / 2.0) / float(cfg.focal))) if cfg.focal else 0.0
    phi = math.degrees(math.asin(min(1.0, sin_phi)))
    c = {"outline": side, "fit": fit, "ray_angle_deg": phi, "perspective_offset_deg": delta,
         "elevation_deg": phi - delta, "rms_px": rms, "points": int(points)}
    if fit == "corner" and cfg.focal:
        (k1, m1), (k2, m2), xc = cand[3]
        lines = cand[3] if side == "bottom" else ((-k1, size - m1), (-k2, size - m2), xc)
        exact = corner_elevation(lines, size, float(cfg.focal), phi - delta)
        if exact is None:
            return {"outline": side, "fit": fit, "reason": "no perpendicular corner at any elevation"}
        c["elevation_deg"] = exact
    return c


def estimate_elevation(mask: np.ndarray, cfg: ElevationConfig | None = None) -> ElevationEstimate:
    """Framed foreground mask (S, S) bool -> :class:`ElevationEstimate` in degrees (see module docstring)."""
    cfg = cfg or ElevationConfig()
    if cfg.method not in METHODS:
        raise ValueError(f"elevation_estimate.method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.method == "fixed":
        return ElevationEstimate(float(cfg.fallback_deg), None, "fixed", {})
    mask = np.asarray(mask, bool)
    if not mask.any():
        return ElevationEstimate(float(cfg.fallback_deg), None, "fallback", {"reason": "empty mask"})
    cands = outline_candidates(mask, cfg)
    good = [c for c in cands if "elevation_deg" in c and c["rms_px"] <= cfg.max_rms_px]
    if not good:
        reasons = "; ".join(f"{c['outline']} {c['fit']}: {c.get('reason', 'rms %.1f px' % c.get('rms_px', 0))}"
                            for c in cands)
        return ElevationEstimate(float(cfg.fallback_deg), None, "fallback", {"reason": reasons})
    best = select_candidate(good, cfg)
    raw = float(best["elevation_deg"])
    est = float(min(max(raw, cfg.min_deg), cfg.max_deg))
    return ElevationEstimate(est, raw, "silhouette", {k: v for k, v in best.items() if k != "elevation_deg"})


def select_candidate(good: list[dict], cfg: ElevationConfig) -> dict:
    """The candidate to trust: of the bottom outline's (else the top's), the one explaining most points."""
    bottom = [c for c in good if c["outline"] == "bottom"]
    pool = bottom if bottom else good
    return max(pool, key=lambda c: (c["points"], -c["rms_px"]))
