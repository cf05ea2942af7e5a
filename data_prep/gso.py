"""Prepare the GSO-30 evaluation set (Hydra config ``conf/gso.yaml``).

    python data_prep/gso.py gso_dir=<folder with GSO meshes> output_dir=<dir> [objects=[alarm,teapot]]
                            [rotate=true] [render_views=true] [render.renderer=blender|cpu] [+render.samples=16]

Input: one mesh per object, found as ``<gso_dir>/<name>.{glb,obj,ply}``, ``<gso_dir>/<name>/meshes/model.obj``
(raw GSO download) or ``<gso_dir>/<name>/model.obj`` / ``<name>/<name>.obj``. For every object of
:data:`syncdreamer.metrics.protocol.GSO_OBJECTS` (or ``objects``) found: normalise and rotate it with
:func:`syncdreamer.metrics.protocol.gso_canonical_mesh` (the one place the official per-object rotation table
is applied), write ``<output_dir>/meshes/<name>.glb`` (textures kept; a y-up file that lands in the z-up world
on import), then render it with ``conf/render.yaml`` under the ``gso`` preset (even white light, no grey
world; spec 3.5) into ``<output_dir>/target/<name>/`` (000..015.png, depth, meta.pkl). ``gso_prep.json``
records what was done; ``evaluate.py`` refuses ``gt_rotation=gso`` on such a folder (the rotation is in
the meshes and the renders already). Missing objects are listed and skipped. Exit code 0 when everything
was written, 1 when some renders failed, 2 on a usage error (no mesh found, bad setting).
"""
import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf



def find_mesh(gso: Path, name: str):
    """The mesh file of ``name`` under ``gso`` (see module docstring), or None."""
    cands = [gso / f"{name}{s}" for s in (".glb", ".obj", ".ply")]
    cands += [gso / name / "meshes" / "model.obj", gso / name / "model.obj", gso / name / f"{name}.obj",
              gso / name / f"{name}.glb"]
    return next((c for c in cands if c.is_file()), None)


def prepare_meshes(gso, out, objects, rotate: bool = True, log=print) -> list[str]:
    """Write normalised (and rotated) meshes to ``<out>/meshes``; returns the names written."""
    from syncdreamer.data.procedural import export_mesh
    from syncdreamer.metrics.geometry import load_mesh
    from syncdreamer.metrics.protocol import gso_canonical_mesh, gt_rotation_deg

    done = []
    table = "gso" if rotate else None
    for name in objects:
        src = find_mesh(Path(gso), name)
        if src is None:
            log(f"[{name}] no mesh found under {gso}: skipped")
            continue
        export_mesh(gso_canonical_mesh(load_mesh(src), name, table), Path(out) / "meshes" / f"{name}.glb")
        log(f"[{name}] {src} -> meshes/{name}.glb (rotated {gt_rotation_deg(name, table)} deg)")
        done.append(name)
    return done


def render_config(cfg) -> dict:
    """``conf/render.yaml`` with this run's ``render`` overrides, input and output folders."""
    from syncdreamer.data.resources import render_config_path

    rcfg = OmegaConf.load(render_config_path())
    rcfg.pop("hydra", None)  # only meaningful under Hydra (uses ${now:...})
    out = Path(str(cfg.output_dir))
    rcfg.merge_with({"input": str(out / "meshes"), "output_dir": str(out)})
    rcfg.merge_with(OmegaConf.to_container(cfg.render, resolve=True) if cfg.get("render") else {})
    return OmegaConf.to_container(rcfg, resolve=True)


def prepare_gso(cfg, log=print) -> int:
    """Run a ``conf/gso.yaml`` config; returns the exit code (see module docstring)."""
    from syncdreamer.data.render_driver import run_render
    from syncdreamer.metrics.protocol import GSO_OBJECTS, GSO_PREP_MARKER

    objects = list(cfg.objects) if cfg.get("objects") else list(GSO_OBJECTS)
    out = Path(str(cfg.output_dir))
    names = prepare_meshes(Path(str(cfg.gso_dir)), out, objects, rotate=bool(cfg.rotate), log=log)
    if not names:
        raise ValueError(f"no GSO meshes found under {cfg.gso_dir} (looked for {', '.join(objects[:3])}, ...)")
    rcfg = render_config(cfg) if cfg.render_views else None
    (out / GSO_PREP_MARKER).write_text(json.dumps(
        {"objects": names, "rotation": "gso (baked into meshes and renders)" if cfg.rotate else "none",
         "render_preset": rcfg["preset"] if rcfg else None}, indent=1))
    if rcfg is None:
        return 0
    summary = run_render(rcfg, log=log)
    return 1 if summary.get("failed") else 0


@hydra.main(config_path="../conf", config_name="gso", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from syncdreamer.data.render_driver import RenderError

    try:
        code = prepare_gso(cfg)
    except (ValueError, RenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
