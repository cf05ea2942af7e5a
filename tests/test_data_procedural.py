"""Procedural test objects: deterministic, asymmetric, in frame, round-trip through the file formats."""
import numpy as np
import pytest

from syncdreamer.cameras import make_rig, project
from syncdreamer.data import mesh_io, procedural
from syncdreamer.data.validate import mesh_silhouette


@pytest.mark.parametrize("kind", procedural.KINDS)
def test_objects_are_deterministic_and_coloured(kind):
    a, b, c = procedural.make_object(kind, 3), procedural.make_object(kind, 3), procedural.make_object(kind, 4)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert not np.array_equal(a.vertices, c.vertices) or a.vertices.shape != c.vertices.shape
    colors = np.unique(np.asarray(a.visual.vertex_colors)[:, :3], axis=0)
    assert len(colors) >= 3  # several parts with distinct colours


@pytest.mark.parametrize("kind", procedural.KINDS)
def test_objects_are_asymmetric_and_fit_the_frame(kind):
    """Opposite views (az 0 / 180) are not mirror images, and no view of the official/input rigs crops."""
    m = procedural.make_object(kind, 0)
    scale, center = mesh_io.normalization(m.vertices)
    v = mesh_io.normalize_points(m.vertices, scale, center)
    rig = make_rig()
    s0 = mesh_silhouette(v, m.faces, rig.poses[0], rig.Ks[0], 256)
    s8 = mesh_silhouette(v, m.faces, rig.poses[8], rig.Ks[8], 256)
    mirrored = s8[:, ::-1]
    iou = (s0 & mirrored).sum() / (s0 | mirrored).sum()
    assert iou < 0.9, f"{kind}: view 0 and mirrored view 8 agree (IoU {iou:.3f})"
    s1 = mesh_silhouette(v, m.faces, rig.poses[1], rig.Ks[1], 256)
    assert (s0 & s1).sum() / (s0 | s1).sum() < 0.95  # neighbouring views differ too
    for seed in range(8):
        m = procedural.make_object(kind, seed)
        scale, center = mesh_io.normalization(m.vertices)
        v = mesh_io.normalize_points(m.vertices, scale, center)
        for elev in (-10.0, 30.0, 40.0):
            r = make_rig(elevation_deg=elev)
            uv, z = project(v, r.poses, r.Ks)
            assert (z > 0).all() and uv.min() > 2 and uv.max() < 254, (kind, seed, elev)


@pytest.mark.parametrize("fmt", procedural.FORMATS)
def test_export_roundtrip_lands_in_the_world_frame(tmp_path, fmt):
    m = procedural.make_object("toy", 1)
    p = procedural.export_mesh(m, tmp_path / f"toy.{fmt}")
    back = mesh_io.load_mesh_world(p)
    np.testing.assert_allclose(back.bounds, m.bounds, atol=1e-5)
    if fmt != "ply":  # y-up files really store y-up coordinates
        import trimesh

        raw = trimesh.load(str(p), force="mesh", process=False)
        np.testing.assert_allclose(raw.bounds[:, 1], m.bounds[:, 2], atol=1e-5)


def test_make_procedural_set(tmp_path):
    paths = procedural.make_procedural_set(tmp_path, 5, seed=2, formats=("glb", "ply"))
    assert [p.name for p in paths] == ["box_000.glb", "cone_001.ply", "torus_002.glb", "toy_003.ply", "box_004.glb"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="unknown procedural kind"):
        procedural.make_object("teapot")
    with pytest.raises(ValueError, match="cannot export"):
        procedural.export_mesh(procedural.make_object("box"), tmp_path / "x.fbx")


def test_normalization_matches_the_official_rule():
    v = np.array([[0, 0, 0], [2, 1, 0.5], [1, -1, 0]], float)
    scale, center = mesh_io.normalization(v)
    assert scale == pytest.approx(0.5)
    np.testing.assert_allclose(center, [1, 0, 0.25])
    n = mesh_io.normalize_points(v, scale, center)
    assert n.max(0).max() <= 0.5 + 1e-12 and (n.max(0) - n.min(0)).max() == pytest.approx(1)
    with pytest.raises(ValueError, match="zero"):
        mesh_io.normalization(np.zeros((3, 3)))
