"""Render meshes into the official SyncDreamer 16-view layout with Blender (Hydra config ``conf/render.yaml``).

    python data_prep/render.py input=<mesh file or folder> output_dir=<dir> [preset=fast] [workers=2]

See :mod:`syncdreamer.data.render_driver` for what happens and ``data_prep/blender_render.py`` for the
Blender side. Exit code 0 when nothing failed in this run, 1 when some objects failed (see
``<output_dir>/failures.jsonl``), 2 on a configuration / environment error.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from syncdreamer.cli import check_missing, require_options
from syncdreamer.data.render_driver import RenderError, run_render


@hydra.main(config_path="../conf", config_name="render", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    check_missing(cfg)
    try:
        summary = run_render(cfg)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if summary["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    require_options(Path(__file__).resolve().parents[1] / "conf" / "render.yaml")
    main()
