"""NeuS wall time to reach the test accuracy (Chamfer < 0.02, Volume IoU > 0.7) for both presets.

    python bench/bench_neus.py [--presets fast official] [--max-steps 400] [--check-every 50] [--threads 1]
                               [--official-probe-steps 5]

Object: the procedural "toy" (data pipeline), normalised, ray-cast on the official rig at 256 px. For each
preset the accuracy is checked every ``--check-every`` steps (mesh at 128^3; checking time excluded) and the
first step count meeting both thresholds is reported. Where a preset is too slow for the device (the
official 8x256 MLP on CPU), ``--official-probe-steps`` steps with ``--official-probe-ray-fraction`` of the
rays are timed, scaled to the full ray batch (cost is linear in rays) and to 2000 steps (marked
"extrapolated"; the accuracy of the official preset is then not measured). Prints a markdown table.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from syncdreamer import cameras  # noqa: E402
from syncdreamer.data.mesh_io import normalization, normalize_points  # noqa: E402
from syncdreamer.data.procedural import make_object  # noqa: E402
from syncdreamer.metrics import geometry as G  # noqa: E402
from syncdreamer import raycast as R  # noqa: E402
from syncdreamer.recon.export import extract_mesh  # noqa: E402
from syncdreamer.recon.io import composite_white  # noqa: E402
from syncdreamer.recon.neus import fit_neus, pick_device  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["fast", "official"])
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--official-probe-steps", type=int, default=3)
    ap.add_argument("--official-probe-ray-fraction", type=float, default=0.125,
                    help="CPU probe: run this fraction of the official rays per step and scale the time up")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    mesh = make_object("toy", 0)
    s, c = normalization(mesh.vertices)
    mesh.vertices = normalize_points(mesh.vertices, s, c)
    rig = cameras.make_rig()
    res = R.render_mesh(mesh, rig.poses, rig.Ks, 256, 256, supersample=2)
    rgb, masks = composite_white(res.rgba), res.rgba[..., 3]
    gt_pts = R.mesh_points_from_rig(mesh, rig.poses, rig.Ks, 256, 256)
    rows = []
    for name in args.presets:
        cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "recon" / f"{name}.yaml"))
        full = int(cfg["train"]["steps"])
        probe = dev.type == "cpu" and name == "official"
        state = {"train": 0.0, "last": None, "hit": None, "cd": None, "iou": None}

        def cb(step, model):
            now = time.time()
            state["train"] += now - state["last"]
            done = step + 1
            if not probe and (done % args.check_every == 0 or done == args.max_steps):
                m = extract_mesh(model, 128, 0.6, colors=False)
                pts = R.mesh_points_from_rig(m, rig.poses, rig.Ks, 256, 256)
                state["cd"] = G.chamfer_distance(pts, gt_pts)["chamfer"]
                state["iou"] = G.volume_iou(m, mesh)["iou"]
                print(f"  {name} step {done}: {state['train']:.1f} s  chamfer {state['cd']:.4f}  iou {state['iou']:.3f}",
                      flush=True)
                if state["cd"] < 0.02 and state["iou"] > 0.7:
                    state["hit"] = (done, state["train"])
                    raise StopIteration
            state["last"] = time.time()

        scale = 1.0
        if probe:  # cost per step is linear in the number of rays
            f = args.official_probe_ray_fraction
            cfg["train"]["batch_rays"] = max(1, int(cfg["train"]["batch_rays"] * f))
            cfg["train"]["fg_rays"] = max(1, int(cfg["train"]["fg_rays"] * f))
            scale = 1.0 / f
        steps = args.official_probe_steps if probe else min(args.max_steps, full)
        state["last"] = time.time()
        fit_neus(rgb, masks, rig.poses, rig.Ks, cfg, device=dev, steps=steps, callback=cb, log=None)
        per_step = scale * state["train"] / (state["hit"][0] if state["hit"] else steps)
        if probe:
            rows.append((name, "-", f"{per_step:.2f} (extrapolated)",
                         f"{per_step * full:.0f} (extrapolated: {full} steps, accuracy not measured)", "-", "-"))
        elif state["hit"]:
            rows.append((name, str(state["hit"][0]), f"{per_step:.2f}", f"{state['hit'][1]:.1f}",
                         f"{state['cd']:.4f}", f"{state['iou']:.3f}"))
        else:
            rows.append((name, f">{steps}", f"{per_step:.2f}", "not reached", f"{state['cd']:.4f}", f"{state['iou']:.3f}"))
    print(f"\nNeuS to Chamfer < 0.02 and IoU > 0.7 on the procedural toy ({dev}, {torch.get_num_threads()} threads)\n")
    print("| preset | steps | s/step | wall time to accuracy (s) | Chamfer | IoU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
