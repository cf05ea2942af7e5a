"""Camera exports for 3D tools: nerfstudio transforms.json and a COLMAP text model.

The exported cameras are read back with each tool's own convention (written out here, independent of
``syncdreamer.cameras``) and must project a known mesh onto the silhouette our rasteriser renders.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from syncdreamer import cameras
from syncdreamer.data.procedural import make_object
from syncdreamer.data.raster import rasterize

SIZE = 96


def normalised_object(kind: str = "toy", seed: int = 3):
    """A procedural object (not symmetric under any image flip) scaled into [-0.5, 0.5]^3."""
    mesh = make_object(kind, seed)
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(0.9 / float((hi - lo).max()))
    return mesh


def irregular_rig():
    """8 views with different elevations and a principal point off the image centre in some views."""
    rig = cameras.make_rig(n_views=8, elevation_deg=np.array([-10, 0, 15, 30, 45, 20, 5, 60.0]), distance=1.6,
                           image_size=SIZE, focal=110.0, azimuth_start_deg=17.0)
    Ks = rig.Ks.copy()
    Ks[1::2, 0, 2] += 6.0
    Ks[1::2, 1, 2] -= 4.0
    Ks[2::2, 1, 1] *= 1.1  # fy != fx
    return rig.poses, Ks


# ------------------------------------------------------------------------------------------------------
# readers written from each tool's documentation (not through syncdreamer.cameras)
# ------------------------------------------------------------------------------------------------------
def project_nerfstudio(points, frame, top):
    """nerfstudio: transform_matrix is OpenGL camera-to-world (camera looks along -z, y up, x right);
    a camera point (x, y, z) lands on pixel (cx + fl_x * x / -z, cy - fl_y * y / -z)."""
    intr = {k: frame.get(k, top.get(k)) for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")}
    c2w = np.asarray(frame["transform_matrix"], np.float64)
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]
    u = intr["cx"] + intr["fl_x"] * cam[:, 0] / depth
    v = intr["cy"] - intr["fl_y"] * cam[:, 1] / depth
    return np.stack([u, v], 1), depth, (intr["w"], intr["h"])


def quaternion_matrix(w, x, y, z):
    """Rotation matrix of a unit Hamilton quaternion (COLMAP's qvec order w, x, y, z)."""
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def read_colmap(folder: Path):
    """cameras.txt + images.txt -> {name: (R, t, (fx, fy, cx, cy), (w, h))}; checks the file grammar."""
    cams = {}
    for line in (folder / "cameras.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            cid, model, w, h, *params = line.split()
            assert model == "PINHOLE" and len(params) == 4
            cams[cid] = (tuple(map(float, params)), (int(w), int(h)))
    lines = [ln for ln in (folder / "images.txt").read_text().split("\n") if not ln.startswith("#")]
    out = {}
    for first, points in zip(lines[0::2], lines[1::2]):
        iid, qw, qx, qy, qz, tx, ty, tz, cid, name = first.split()
        assert points == ""  # no 2D points
        q = np.array([qw, qx, qy, qz], np.float64)
        assert abs(np.linalg.norm(q) - 1) < 1e-9
        out[name] = (quaternion_matrix(*q), np.array([tx, ty, tz], np.float64), *cams[cid])
    assert (folder / "points3D.txt").read_text().strip().startswith("#")
    return out


def project_colmap(points, R, t, intr):
    """COLMAP: x_cam = R X + t (x right, y down, z forward); pixel = (fx x / z + cx, fy y / z + cy)."""
    cam = points @ R.T + t
    fx, fy, cx, cy = intr
    return np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], 1), cam[:, 2]


def assert_on_silhouette(pixels, depth, silhouette, tolerance_px: float = 1.5):
    """Every vertex lands within ``tolerance_px`` of a silhouette pixel (thin parts may fall between pixel
    centres) and the vertices span the silhouette's bounding box."""
    assert np.all(depth > 0)
    distance = ndimage.distance_transform_edt(~silhouette)  # 0 on the silhouette, pixels to it elsewhere
    ix, iy = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
    inside = (ix >= 0) & (iy >= 0) & (ix < silhouette.shape[1]) & (iy < silhouette.shape[0])
    assert inside.all()
    assert distance[iy, ix].max() <= tolerance_px, distance[iy, ix].max()
    ys, xs = np.nonzero(silhouette)
    assert np.allclose(pixels.min(0), [xs.min(), ys.min()], atol=1.0)
    assert np.allclose(pixels.max(0), [xs.max() + 1, ys.max() + 1], atol=1.0)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(mesh, poses, Ks, silhouettes, export folder) for the irregular rig."""
    mesh = normalised_object()
    poses, Ks = irregular_rig()
    sil = np.stack([rasterize(mesh, p, K, SIZE)[0][..., 3] > 0 for p, K in zip(poses, Ks)])
    folder = tmp_path_factory.mktemp("exports")
    files = [f"{i:03d}.png" for i in range(len(poses))]
    for f, s in zip(files, sil):
        Image.fromarray(s.astype(np.uint8) * 255).save(folder / f)
    cameras.write_camera_exports(folder, poses, Ks, SIZE, SIZE, files)
    return mesh, poses, Ks, sil, folder


def test_nerfstudio_transforms_project_onto_silhouettes(rendered):
    mesh, poses, Ks, sil, folder = rendered
    data = json.loads((folder / "transforms.json").read_text())
    assert data["camera_model"] == "OPENCV" and len(data["frames"]) == len(poses)
    assert "fl_x" not in data  # the intrinsics differ per view here, so they are per frame
    verts = np.asarray(mesh.vertices, np.float64)
    for i, frame in enumerate(data["frames"]):
        assert (folder / frame["file_path"]).is_file()
        pix, depth, (w, h) = project_nerfstudio(verts, frame, data)
        assert (w, h) == (SIZE, SIZE)
        assert_on_silhouette(pix, depth, sil[i])


def test_colmap_model_projects_onto_silhouettes_and_reproduces_poses(rendered):
    mesh, poses, Ks, sil, folder = rendered
    model = read_colmap(folder / "colmap")
    assert sorted(model) == [f"{i:03d}.png" for i in range(len(poses))]
    verts = np.asarray(mesh.vertices, np.float64)
    for i in range(len(poses)):
        R, t, intr, (w, h) = model[f"{i:03d}.png"]
        assert (w, h) == (SIZE, SIZE) and (folder / f"{i:03d}.png").is_file()
        assert np.allclose(np.concatenate([R, t[:, None]], 1), poses[i], atol=1e-12)
        assert np.allclose(intr, [Ks[i][0, 0], Ks[i][1, 1], Ks[i][0, 2], Ks[i][1, 2]], atol=1e-12)
        assert_on_silhouette(*project_colmap(verts, R, t, intr), sil[i])
    # 3 distinct intrinsics (plain, shifted principal point, taller fy) -> 3 COLMAP cameras
    cams = [ln for ln in (folder / "colmap" / "cameras.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(cams) == 3


def test_shared_intrinsics_go_to_the_top_level_and_quaternions_round_trip():
    rig = cameras.make_rig()
    data = cameras.nerfstudio_transforms(rig.poses, rig.Ks, 256, 256, [f"{i:03d}.png" for i in range(16)])
    assert (data["fl_x"], data["fl_y"], data["cx"], data["cy"], data["w"], data["h"]) == (280, 280, 128, 128, 256, 256)
    assert all(set(f) == {"file_path", "transform_matrix"} for f in data["frames"])
    for pose in rig.poses:
        q, t = cameras.pose_to_colmap(pose)
        assert q[0] >= 0 and np.allclose(quaternion_matrix(*q), pose[:, :3], atol=1e-12)
        assert np.allclose(cameras.colmap_to_pose(q, t), pose, atol=1e-12)
    with pytest.raises(ValueError, match="must match"):
        cameras.colmap_text_model(rig.poses, rig.Ks, 256, 256, ["000.png"])


def test_generation_and_reconstruction_folders_carry_the_exports(tmp_path):
    """write_view_set (generate.py) and the reconstruction's output writer both leave the exports."""
    from syncdreamer.pipelines.generate import PreparedInput, write_view_set
    from syncdreamer.recon.pipeline import write_views_and_cameras

    rig = cameras.make_rig(n_views=4, image_size=32, focal=35.0)
    views = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    item = PreparedInput("x", "x.png", None, np.zeros((32, 32, 4), np.uint8), np.zeros((8, 8), bool), "alpha")
    meta = {"views": [{"file": f"{i:03d}.png", "pose_w2c": rig.poses[i].tolist(), "K": rig.Ks[i].tolist()}
                      for i in range(4)]}
    gen = write_view_set(tmp_path / "gen", views, item, meta, gif_frame_ms=50)
    write_views_and_cameras(tmp_path / "rec", views / 255.0, rig.poses, rig.Ks)
    for folder, prefix in ((gen, ""), (tmp_path / "rec", "views/")):
        data = json.loads((folder / "transforms.json").read_text())
        assert [f["file_path"] for f in data["frames"]] == [f"{prefix}{i:03d}.png" for i in range(4)]
        assert all((folder / f["file_path"]).is_file() for f in data["frames"])
        assert np.allclose([cameras.blender_c2w_to_pose(f["transform_matrix"]) for f in data["frames"]], rig.poses)
        model = read_colmap(folder / "colmap")
        assert sorted(model) == [f"{prefix}{i:03d}.png" for i in range(4)]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rec" / "views" / "002.png")), views[2])
