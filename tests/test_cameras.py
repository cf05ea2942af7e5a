import numpy as np
import pytest
import torch

from syncdreamer import cameras as C
from golden_utils import Golden, fixture_params


def test_focal_from_blender_lens():
    assert C.focal_from_lens(35, 32, 256) == pytest.approx(280.0)


@pytest.mark.parametrize("fixture", fixture_params("denoiser"))
def test_default_rig_equals_official_buffers(fixture):
    g = Golden(fixture)
    rig = C.make_rig().torch()
    torch.testing.assert_close(rig["poses"], g.weights["poses"], atol=1e-6, rtol=0)
    torch.testing.assert_close(rig["Ks"], g.weights["Ks"], atol=0, rtol=0)
    torch.testing.assert_close(rig["azimuth"], g.weights["azimuth"], atol=1e-6, rtol=0)


def test_rig_geometry():
    rig = C.make_rig(n_views=8, elevation_deg=20.0, distance=2.0)
    centers = C.camera_centers(rig.poses)
    np.testing.assert_allclose(np.linalg.norm(centers, axis=-1), 2.0, atol=1e-12)
    np.testing.assert_allclose(np.rad2deg(np.arcsin(centers[:, 2] / 2.0)), 20.0, atol=1e-9)
    # the origin projects to the principal point, in front of every camera
    uv, z = C.project(np.zeros((1, 3)), rig.poses, rig.Ks)
    np.testing.assert_allclose(uv[:, 0], 128.0, atol=1e-9)
    np.testing.assert_allclose(z[:, 0], 2.0, atol=1e-12)
    # world up (+z) points up in the image (smaller v)
    uv_up, _ = C.project(np.array([[0, 0, 0.3]]), rig.poses, rig.Ks)
    assert np.all(uv_up[:, 0, 1] < 128.0)
    # rotations are proper
    np.testing.assert_allclose(np.linalg.det(rig.poses[:, :, :3]), 1.0, atol=1e-12)


def test_project_unproject_roundtrip_numpy_and_torch():
    rng = np.random.default_rng(0)
    rig = C.make_rig(elevation_deg=rng.uniform(-10, 40, 16))
    pts = rng.uniform(-0.5, 0.5, (16, 100, 3))
    uv, z = C.project(pts, rig.poses, rig.Ks)
    np.testing.assert_allclose(C.unproject(uv, z, rig.poses, rig.Ks), pts, atol=1e-9)
    tp = torch.as_tensor(pts)
    tuv, tz = C.project(tp, torch.as_tensor(rig.poses), torch.as_tensor(rig.Ks))
    torch.testing.assert_close(C.unproject(tuv, tz, torch.as_tensor(rig.poses), torch.as_tensor(rig.Ks)), tp)


def test_converter_roundtrips():
    rig = C.make_rig(elevation_deg=np.linspace(-10, 40, 16))
    c2w = C.pose_to_blender_c2w(rig.poses)
    # Blender cameras look along their -z axis, towards the origin
    look = -c2w[:, :3, 2]
    np.testing.assert_allclose(look, -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=-1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(C.blender_c2w_to_pose(c2w), rig.poses, atol=1e-12)
    rt = C.pose_to_zero123_rt(rig.poses)
    np.testing.assert_allclose(C.zero123_rt_to_pose(rt), rig.poses, atol=1e-12)
    # Zero123's RT is the world-to-camera of the same Blender camera
    np.testing.assert_allclose(rt, C.invert_pose(c2w[:, :3]), atol=1e-12)
    np.testing.assert_allclose(C.invert_pose(C.invert_pose(rig.poses)), rig.poses, atol=1e-12)


def test_pixel_rays_hit_projection():
    rig = C.make_rig()
    pose, K = torch.as_tensor(rig.poses[3]), torch.as_tensor(rig.Ks[3])
    o, d = C.pixel_rays(pose, K, 256, 256)
    pts = o + 1.3 * d
    uv, _ = C.project(pts, pose, K)
    idx = torch.arange(256 * 256)
    expect = torch.stack([(idx % 256).double() + 0.5, (idx // 256).double() + 0.5], -1)
    torch.testing.assert_close(uv, expect)
