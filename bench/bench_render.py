"""Benchmark: seconds per object (16 target + 16 input views, RGBA + depth) for render presets.

    .venv/bin/python bench/bench_render.py [--objects 3] [--presets default fast] [--resolution 256]

Renders procedural objects (``syncdreamer.data.procedural``) with Blender through the normal driver and
prints a markdown table: the median / min / max of Blender's per-object time (import, normalise,
32 renders, depth encoding; from ``render.json``) and the wall time per object including Blender's
start-up (one process renders all objects of a preset).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=3, help="objects per preset (median over them)")
    parser.add_argument("--presets", nargs="+", default=["default", "fast"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--blender", default=None, help="blender executable (default: on PATH)")
    parser.add_argument("--keep", default=None, help="render into this folder and keep it")
    args = parser.parse_args(argv)

    from syncdreamer.data import layout, procedural
    from syncdreamer.data.render_driver import run_render

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_render_"))
    meshes = base / "meshes"
    procedural.make_procedural_set(meshes, args.objects, seed=0)
    rows = []
    for preset in args.presets:
        cfg = OmegaConf.load(REPO / "conf" / "render.yaml")
        cfg.pop("hydra")
        out = base / f"out_{preset}"
        cfg.merge_with({"input": str(meshes), "output_dir": str(out), "preset": preset, "resolution": args.resolution,
                        "workers": args.workers, "objects_per_process": args.objects, "blender": args.blender})
        t0 = time.time()
        summary = run_render(cfg, log=lambda *a: None)
        wall = time.time() - t0
        if summary["failed"]:
            print(f"{preset}: {summary['failed']} objects failed, see {out / 'failures.jsonl'}", file=sys.stderr)
        secs = [json.loads((layout.object_dir(out, "target", u) / "render.json").read_text())["seconds"]
                for u in layout.list_uids(out)]
        rendered = max(summary["rendered"], 1)
        s = summary["settings"] or {}
        rows.append((preset, s.get("samples"), s.get("denoise"), args.resolution, len(secs),
                     statistics.median(secs) if secs else float("nan"), min(secs, default=float("nan")),
                     max(secs, default=float("nan")), wall / rendered))
    info = summary.get("blender") or {}
    print(f"Blender {info.get('version', '?')}, Cycles CPU, {os.cpu_count()} CPU threads "
          f"({platform.processor() or platform.machine()}), {args.workers} worker(s), 1-min load average at start {load_start:.1f}\n")
    print("| preset | samples | denoise | resolution | objects | median s/object | min | max | wall s/object incl. start-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} | {r[8]:.1f} |")
    print("\n(one object = 16 target + 16 input views, RGBA PNG + 16-bit depth PNG)")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
