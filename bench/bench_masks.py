"""Mask ablation: which foreground mask should NeuS use for generated (RGB, white background) views?

    python bench/bench_masks.py [--seeds 2] [--size 256] [--views 16]

Set: every procedural kind (data pipeline) x ``--seeds`` seeds, each in its palette colours and as a
"white-ish" variant (albedo 0.86-1.0, the hard case for a white background), ray-cast on the official rig
with directional light, ambient 0.35 and **cast shadows**, supersampled 2x2 (soft edges). Truth: the
rendered alpha > 0.5. Methods, on the views as a generator delivers them (RGB composited on white, 8 bit):

* ``threshold@t`` -- ``syncdreamer.recon.io.threshold_mask``: foreground where min(rgb) < 1 - t.
* ``opencv`` -- ``syncdreamer.pipelines.foreground.opencv_mask``: border colour model + GrabCut (defaults).
* ``alpha`` -- the view's own alpha channel (8 bit) > 0.5: only when the views carry one (RGBA renders).

Prints a markdown table: IoU with the truth (mean and minimum over views) per method and subset, and
seconds per view.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from syncdreamer import cameras  # noqa: E402
from syncdreamer.data.mesh_io import normalization, normalize_points  # noqa: E402
from syncdreamer.data.procedural import KINDS, make_object  # noqa: E402
from syncdreamer.pipelines.foreground import ForegroundConfig, opencv_mask  # noqa: E402
from syncdreamer.raycast import render_mesh  # noqa: E402
from syncdreamer.recon.io import composite_white, threshold_mask  # noqa: E402

LIGHT = (0.5, -0.3, 1.0)


def render_set(seeds: int, size: int, n_views: int):
    """[(subset, name, rgba (N, H, W, 4) float)] for palette and white-ish variants of each object."""
    import trimesh

    rig = cameras.make_rig(n_views=n_views, image_size=size, focal=280.0 * size / 256)
    out = []
    for kind in KINDS:
        for seed in range(seeds):
            mesh = make_object(kind, seed)
            s, c = normalization(mesh.vertices)
            mesh.vertices = normalize_points(mesh.vertices, s, c)
            rng = np.random.default_rng(seed)
            white = mesh.copy()
            vc = np.full((len(white.vertices), 4), 255, np.uint8)
            vc[:, :3] = (255 * rng.uniform(0.86, 1.0, (len(white.vertices), 1))).round().astype(np.uint8)
            white.visual = trimesh.visual.ColorVisuals(white, vertex_colors=vc)
            for subset, m in (("palette", mesh), ("white-ish", white)):
                res = render_mesh(m, rig.poses, rig.Ks, size, size, light_dir=LIGHT, supersample=2, shadows=True)
                out.append((subset, f"{kind}{seed}", res.rgba))
    return out


def methods():
    fg = ForegroundConfig()
    return {
        "threshold@0.02": lambda rgb8, rgba8: threshold_mask(rgb8 / 255.0, 0.02) > 0.5,
        "threshold@0.05 (recon default for RGB)": lambda rgb8, rgba8: threshold_mask(rgb8 / 255.0, 0.05) > 0.5,
        "threshold@0.10": lambda rgb8, rgba8: threshold_mask(rgb8 / 255.0, 0.10) > 0.5,
        "opencv (GrabCut)": lambda rgb8, rgba8: np.stack([opencv_mask(v, fg) for v in rgb8]),
        "alpha (RGBA views only)": lambda rgb8, rgba8: rgba8[..., 3] > 127,
    }


def iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-view IoU (N,) of boolean masks (N, H, W)."""
    inter = (pred & truth).sum((1, 2))
    union = (pred | truth).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--views", type=int, default=16)
    args = ap.parse_args()
    t0 = time.time()
    data = render_set(args.seeds, args.size, args.views)
    print(f"rendered {len(data)} objects x {args.views} views in {time.time() - t0:.0f} s", flush=True)
    scores = {}  # (method, subset) -> list of per-view IoUs
    secs = {}
    for subset, _, rgba in data:
        truth = rgba[..., 3] > 0.5
        rgba8 = (rgba * 255).round().astype(np.uint8)
        rgb8 = (composite_white(rgba) * 255).round().astype(np.uint8)
        for name, fn in methods().items():
            t = time.time()
            pred = fn(rgb8, rgba8)
            secs.setdefault(name, []).append((time.time() - t) / len(rgba))
            v = iou(pred, truth)
            scores.setdefault((name, subset), []).extend(v)
            scores.setdefault((name, "all"), []).extend(v)
    subsets = ["palette", "white-ish", "all"]
    print(f"\nMask IoU against the true alpha ({len(data)} objects, {args.views} views, {args.size} px, "
          "shadows on; mean / min over views)\n")
    print("| method | " + " | ".join(subsets) + " | s / view |")
    print("|---|" + "---|" * (len(subsets) + 1))
    for name in methods():
        cells = [f"{np.mean(scores[(name, s)]):.4f} / {np.min(scores[(name, s)]):.3f}" for s in subsets]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.median(secs[name]):.3f} |")


if __name__ == "__main__":
    main()
