"""Package data of the data pipeline, found through :mod:`importlib.resources` so a plain (non-editable)
``pip install`` can render: ``render.yaml`` (the Hydra config of ``data_prep/render.py``, also reachable as
``conf/render.yaml`` in a checkout, a symlink to this file) and ``blender_render.py`` (the script Blender
runs; ``data_prep/blender_render.py`` links here). The files are the one source of truth.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["resource_path", "render_config_path", "blender_script_path"]


def resource_path(name: str) -> Path:
    """The file ``name`` of this package as a real path (packages are installed unzipped)."""
    path = Path(str(files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"package resource {name!r} missing at {path}: reinstall syncdreamer")
    return path


def render_config_path() -> Path:
    """``render.yaml``: the render settings (``data_prep/render.py``'s Hydra config)."""
    return resource_path("render.yaml")


def blender_script_path() -> Path:
    """``blender_render.py``: the script Blender runs (``blender -b --python <it> -- --job job.json``)."""
    return resource_path("blender_render.py")
