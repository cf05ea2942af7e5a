"""Prepare the GSO-30 evaluation set: normalised + rotated GT meshes and Blender renders of the fixed rig.

    python data_prep/gso.py --gso <folder with GSO meshes> --out <dir> [--objects alarm teapot ...]
                            [--no-rotate] [--render-preset default|fast] [--workers 1] [--no-render]
                            [--renderer blender|cpu]

Input: one mesh per object, found as ``<gso>/<name>.{glb,obj,ply}``, ``<gso>/<name>/meshes/model.obj``
(raw GSO download) or ``<gso>/<name>/model.obj`` / ``<name>/<name>.obj``. For every object of
:data:`syncdreamer.metrics.protocol.GSO_OBJECTS` found: normalise (largest bbox side 1, centred), rotate
about z by the official per-object angle (:data:`GSO_ROTATIONS_DEG`, spec 5.2), write
``<out>/meshes/<name>.glb`` (textures kept; y-up file, lands in the z-up world on import), then render
it with ``data_prep/render.py``'s driver into ``<out>/target/<name>/`` (000..015.png, depth, meta.pkl).
The rotation is baked into both the mesh and the renders, so evaluate with ``gt_rotation=none``.
Missing objects are listed and skipped.
"""
import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf



def find_mesh(gso: Path, name: str):
    """The mesh file of ``name`` under ``gso`` (see module docstring), or None."""
    cands = [gso / f"{name}{s}" for s in (".glb", ".obj", ".ply")]
    cands += [gso / name / "meshes" / "model.obj", gso / name / "model.obj", gso / name / f"{name}.obj",
              gso / name / f"{name}.glb"]
    return next((c for c in cands if c.is_file()), None)


def prepare_meshes(gso, out, objects, rotate: bool = True, log=print) -> list[str]:
    """Write normalised, rotated meshes to ``<out>/meshes``; returns the names written."""
    from syncdreamer.data.procedural import export_mesh
    from syncdreamer.metrics.geometry import load_mesh, normalize_mesh, rotate_z
    from syncdreamer.metrics.protocol import gt_rotation_deg

    done = []
    for name in objects:
        src = find_mesh(Path(gso), name)
        if src is None:
            log(f"[{name}] no mesh found under {gso}: skipped")
            continue
        mesh = normalize_mesh(load_mesh(src))
        angle = gt_rotation_deg(name, "gso") if rotate else 0.0
        mesh = rotate_z(mesh, angle)
        export_mesh(mesh, Path(out) / "meshes" / f"{name}.glb")
        log(f"[{name}] {src} -> meshes/{name}.glb (rotated {angle} deg)")
        done.append(name)
    return done


def main(argv=None):
    from syncdreamer.metrics.protocol import GSO_OBJECTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gso", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--objects", nargs="+", default=list(GSO_OBJECTS))
    ap.add_argument("--no-rotate", action="store_true")
    ap.add_argument("--no-render", action="store_true")
    ap.add_argument("--render-preset", default="default")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--renderer", default="blender", help="blender | cpu (z-buffer rasteriser, tests)")
    args = ap.parse_args(argv)
    names = prepare_meshes(args.gso, args.out, args.objects, rotate=not args.no_rotate)
    if not names:
        print("error: no GSO meshes found", file=sys.stderr)
        return 2
    if args.no_render:
        return 0
    from syncdreamer.data.render_driver import run_render
    from syncdreamer.data.resources import render_config_path

    cfg = OmegaConf.load(render_config_path())
    cfg.pop("hydra", None)  # only meaningful under Hydra (uses ${now:...})
    cfg.merge_with({"input": str(args.out / "meshes"), "output_dir": str(args.out), "preset": args.render_preset,
                    "workers": args.workers, "renderer": args.renderer})
    summary = run_render(cfg)
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
