"""A non-editable install renders: build the wheel, install it (--no-deps) into a fresh venv outside the
checkout that borrows the main environment's packages through a .pth, and render one procedural object with
Blender there (render config and Blender script come from the package data, not the checkout)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.blender]

_RENDER = r"""
import json, sys
from pathlib import Path
import syncdreamer
from omegaconf import OmegaConf
from syncdreamer.data import layout
from syncdreamer.data.procedural import make_procedural_set
from syncdreamer.data.render_driver import BLENDER_SCRIPT, run_render
from syncdreamer.data.resources import render_config_path

out = Path(sys.argv[1])
make_procedural_set(out / "meshes", 1, seed=3)
cfg = OmegaConf.load(render_config_path())
cfg.pop("hydra")
cfg.merge_with({"input": str(out / "meshes"), "output_dir": str(out / "renders"), "preset": "fast",
                "resolution": 64, "workers": 1})
summary = run_render(cfg, log=lambda *a: None)
uid = layout.list_uids(out / "renders")[0]
print(json.dumps({"package": syncdreamer.__file__, "config": str(render_config_path()), "script": str(BLENDER_SCRIPT),
                  "rendered": summary["rendered"], "failed": summary["failed"],
                  "complete": layout.rig_complete(layout.object_dir(out / "renders", "input", uid), 16)}))
"""


def test_wheel_installed_outside_the_checkout_renders_with_blender(tmp_path):
    if shutil.which("blender") is None:
        if os.environ.get("CI"):
            pytest.fail("Blender is not installed but CI is set: install it (`make blender`)")
        pytest.skip("Blender not installed")
    src = tmp_path / "src_copy"  # build from a copy: no build/ or egg-info in the checkout
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "src", src / "src", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, text=True, timeout=600)
    wheel = next(wheels.glob("syncdreamer-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "main_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc., not re-downloaded
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(py), "-c", _RENDER, str(work)], cwd=work, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("package", "config", "script"):  # everything from the installed wheel, nothing from the checkout
        assert info[key].startswith(str(site)), info
    assert info["rendered"] == 1 and info["failed"] == 0 and info["complete"], info
