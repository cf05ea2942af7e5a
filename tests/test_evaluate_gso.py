"""GSO-30 preparation: normalisation + official rotation baked into mesh and renders."""
import importlib.util
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]


def _gso_module():
    spec = importlib.util.spec_from_file_location("gso_prep", ROOT / "data_prep" / "gso.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gso_prepare_rotates_normalises_and_renders(tmp_path):
    gso = _gso_module()
    src = tmp_path / "gso" / "sofa" / "meshes"
    src.mkdir(parents=True)
    trimesh.creation.box((4.0, 2.0, 1.0)).export(src / "model.obj")
    rc = gso.main(["--gso", str(tmp_path / "gso"), "--out", str(tmp_path / "out"), "--objects", "sofa", "teapot",
                   "--renderer", "cpu", "--render-preset", "fast"])
    assert rc == 0
    from syncdreamer.metrics.geometry import load_mesh
    m = load_mesh(tmp_path / "out" / "meshes" / "sofa.glb")
    # OBJ is y-up: file (4, 2, 1) -> world x 4, z 2, y 1; normalised and rotated by -90 deg about z
    assert np.allclose(m.extents, [0.25, 1.0, 0.5], atol=1e-6)
    views = sorted((tmp_path / "out" / "target" / "sofa").glob("[0-9][0-9][0-9].png"))
    assert len(views) == 16 and (tmp_path / "out" / "target" / "sofa" / "meta.pkl").is_file()
    assert not (tmp_path / "out" / "meshes" / "teapot.glb").exists()
