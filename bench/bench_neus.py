"""NeuS wall time to reach the test accuracy (Chamfer < 0.02, Volume IoU > 0.7) for both presets.

    python bench/bench_neus.py [--presets fast official] [--max-steps 400] [--check-every 50] [--threads 1]
                               [--official-probe-steps 5]
    flock /tmp/bigmem.lock python bench/bench_neus.py --memory [--ray-chunks 128 256 512 1024] [--steps 1]

``--memory``: peak memory of the ``official`` preset per ``train.ray_chunk`` (each size in a fresh process:
peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on a GPU), ``--steps`` steps of two chunks each (the
peak is set by the chunk, not by the batch: gradients accumulate between chunks), plus the up-sampling
queries in ``renderer.point_chunk`` points. Prints a markdown table.

Object: the procedural "toy" (data pipeline), normalised, ray-cast on the official rig at 256 px. For each
preset the accuracy is checked every ``--check-every`` steps (mesh at 128^3; checking time excluded) and the
first step count meeting both thresholds is reported. Where a preset is too slow for the device (the
official 8x256 MLP on CPU), ``--official-probe-steps`` steps with ``--official-probe-ray-fraction`` of the
rays are timed, scaled to the full ray batch (cost is linear in rays) and to 2000 steps (marked
"extrapolated"; the accuracy of the official preset is then not measured). Prints a markdown table.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from syncdreamer import cameras  # noqa: E402
from syncdreamer.data.mesh_io import normalization, normalize_points  # noqa: E402
from syncdreamer.data.procedural import make_object  # noqa: E402
from syncdreamer.metrics import geometry as G  # noqa: E402
from syncdreamer import raycast as R  # noqa: E402
from syncdreamer.recon.export import extract_mesh  # noqa: E402
from syncdreamer.recon.io import composite_white  # noqa: E402
from syncdreamer.devices import pick_device  # noqa: E402
from syncdreamer.recon.neus import fit_neus  # noqa: E402
from syncdreamer.recon.presets import load_preset  # noqa: E402


def toy_views():
    """The procedural toy, normalised, ray-cast on the official rig: rgb, masks, rig, mesh."""
    mesh = make_object("toy", 0)
    s, c = normalization(mesh.vertices)
    mesh.vertices = normalize_points(mesh.vertices, s, c)
    rig = cameras.make_rig()
    res = R.render_mesh(mesh, rig.poses, rig.Ks, 256, 256, supersample=2)
    return composite_white(res.rgba), res.rgba[..., 3], rig, mesh


def memory_worker(chunk: int, steps: int, device: str) -> dict:
    """Fit the official preset with ``ray_chunk=chunk`` and two chunks per step; returns the peak memory."""
    dev = pick_device(device)
    rgb, masks, rig, _ = toy_views()
    cfg = load_preset("official")
    cfg["train"].update(ray_chunk=chunk, batch_rays=2 * chunk, fg_rays=0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()
    fit_neus(rgb, masks, rig.poses, rig.Ks, cfg, device=dev, steps=steps, log=None)
    out = {"chunk": chunk, "device": str(dev), "s_per_step": (time.time() - t0) / steps,
           "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    if dev.type == "cuda":
        out["cuda_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    return out


def memory_table(chunks, steps: int, device: str):
    rows = []
    for c in chunks:
        r = subprocess.run([sys.executable, __file__, "--memory-worker", str(c), "--steps", str(steps),
                            "--device", device], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"chunk {c}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"  chunk {c}: {rows[-1]}", flush=True)
    pts = load_preset("official")["renderer"]["point_chunk"]
    print(f"\nNeuS official preset: peak memory per train.ray_chunk (renderer.point_chunk {pts}, "
          f"{torch.get_num_threads()} threads, {steps} step(s) of 2 chunks)\n")
    print("| ray_chunk | points / chunk (128 per ray) | device | peak memory | s / chunk |")
    print("|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['cuda_gib']:.2f} GiB (CUDA)" if "cuda_gib" in r else f"{r['rss_gib']:.2f} GiB RSS"
        print(f"| {r['chunk']} | {128 * r['chunk']} | {r['device']} | {mem} | {r['s_per_step'] / 2:.1f} |")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", action="store_true", help="peak memory of the official preset per ray chunk")
    ap.add_argument("--ray-chunks", nargs="+", type=int, default=[128, 256, 512, 1024])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--presets", nargs="+", default=["fast", "official"])
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--official-probe-steps", type=int, default=3)
    ap.add_argument("--official-probe-ray-fraction", type=float, default=0.125,
                    help="CPU probe: run this fraction of the official rays per step and scale the time up")
    return ap.parse_args()


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args.memory_worker, args.steps, args.device)))
        return
    if args.memory:
        memory_table(args.ray_chunks, args.steps, args.device)
        return
    dev = pick_device(args.device)
    rgb, masks, rig, mesh = toy_views()
    gt_pts = R.mesh_points_from_rig(mesh, rig.poses, rig.Ks, 256, 256)
    rows = []
    for name in args.presets:
        cfg = load_preset(name)
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
                state["iou"] = G.volume_iou(m, mesh, "exact")["iou"]
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
