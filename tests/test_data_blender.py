"""End to end with Blender: two procedural objects rendered into the official layout, then validated.

Runs whenever Blender is available. Under CI (env ``CI`` set) a missing Blender is a failure, not a skip:
CI installs it (``make blender``).
"""
import os
import shutil

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from syncdreamer.data import layout, procedural
from syncdreamer.data.render_driver import run_render
from syncdreamer.data.validate import ValidationConfig, validate_dataset

from test_data_validate import CONF

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def blender():
    path = shutil.which("blender")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Blender is not installed but CI is set: install it (`make blender`, Debian: apt-get install "
                        "blender python3-numpy)")
        pytest.skip("Blender not installed (apt-get install blender python3-numpy)")
    return path


def test_blender_renders_two_objects_that_pass_the_silhouette_check(blender, tmp_path):
    meshes = tmp_path / "meshes"
    procedural.make_procedural_set(meshes, 2, seed=0, kinds=("toy", "torus"), formats=("glb", "obj"))
    (meshes / "broken.glb").write_bytes(b"not a glb at all")
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="render", overrides=[f"input={meshes}", f"output_dir={out}", "preset=fast",
                                                       f"blender={blender}", "objects_per_process=3"])
    summary = run_render(cfg, log=print)
    assert summary["rendered"] == 2 and summary["failed"] == 1, summary
    assert summary["settings"]["samples"] == 8 and summary["settings"]["resolution"] == 256
    fails = layout.read_jsonl(out / "failures.jsonl")
    assert [f["uid"] for f in fails] == ["broken"] and fails[0]["reason"]
    assert not (out / ".work").exists()

    for uid in ("toy_000", "torus_001"):
        for rig in layout.RIGS:
            d = layout.object_dir(out, rig, uid)
            assert layout.rig_complete(d, 16), d
            rgba = layout.read_view_rgba(d / "000.png")
            assert rgba.shape == (256, 256, 4)
            assert 0 < (rgba[..., 3] > 0).mean() < 0.6  # object present, background transparent
            fg = rgba[..., 3] == 255
            assert len(np.unique(rgba[fg][:, :3] // 32, axis=0)) >= 3  # the parts' colours show

    report = validate_dataset(out, ValidationConfig(), meshes=meshes, out_dir=out, val_fraction=0.5, log=print)
    assert report["valid"] == 2 and report["silhouette_checked"] == 2, report

    # rerun: everything is complete, nothing is rendered again
    again = run_render(cfg, log=print)
    assert again["rendered"] == 0 and again["complete"] == 2
