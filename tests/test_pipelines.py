"""Unit tests: official input framing, elevation estimate, alternative sampler, output helpers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from syncdreamer import cameras
from syncdreamer.pipelines.elevation import ElevationConfig, estimate_elevation
from syncdreamer.pipelines.errors import InputError
from syncdreamer.pipelines.generate import autocast_context, to_uint8, validate_elevation
from syncdreamer.pipelines.preprocess import composite_on_white, crop_and_center, list_inputs, load_image


def _rgba(h=100, w=60, box=(10, 20, 40, 70), color=(255, 0, 0)):
    img = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1, :3] = color
    img[y0:y1, x0:x1, 3] = 255
    return img


# ------------------------------------------------------------------------------------------------------
# preprocessing (spec 4.2)
# ------------------------------------------------------------------------------------------------------
def test_crop_resizes_longer_side_and_centres():
    framed = crop_and_center(_rgba(), crop_size=200, image_size=256)
    ys, xs = np.nonzero(framed[..., 3] > 127)
    # bbox 30 x 50 px with exclusive max (official): crop 29 x 49 -> scale 200/49 -> 118 x 200
    assert ys.max() - ys.min() + 1 == 200
    assert abs((xs.max() - xs.min() + 1) - int(29 * 200 / 49)) <= 1
    assert abs((ys.min() + ys.max()) / 2 - 127.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 127.5) <= 1


def test_pad_to_square_when_crop_is_minus_one():
    framed = crop_and_center(_rgba(), crop_size=-1, image_size=50)  # 100 x 60 -> padded 100 x 100 -> 50 x 50
    ys, xs = np.nonzero(framed[..., 3] > 127)
    assert (ys.min(), ys.max()) == (10, 34)
    assert (xs.min(), xs.max()) == (15, 29)  # box x 10..39, pad offset (100 - 60) / 2 = 20 -> 30..59, halved


def test_composite_on_white_range_and_values():
    x = composite_on_white(crop_and_center(_rgba(color=(0, 0, 255)), 200, 256))
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[:, 0, 0], torch.ones(3))                     # background white
    assert torch.allclose(x[:, 128, 128], torch.tensor([-1.0, -1.0, 1.0]))  # blue object


def test_bad_inputs(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="empty mask"):
        crop_and_center(np.zeros((10, 10, 4), np.uint8), 8, 16)
    with pytest.raises(InputError, match="crop_size"):
        crop_and_center(_rgba(), 300, 256)
    with pytest.raises(InputError, match="outside"):
        validate_elevation(-91)
    assert validate_elevation(None) is None and validate_elevation("12.5") == 12.5
    with pytest.raises(InputError, match="no image files"):
        list_inputs(str(tmp_path / "empty_dir") if (tmp_path / "empty_dir").mkdir() is None else None)
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        autocast_context(torch.device("cpu"), "fp16")


def test_load_image_modes(tmp_path):
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(_rgba(), "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "g.png").shape == (8, 8, 3)
    assert load_image(tmp_path / "a.png").shape == (100, 60, 4)
    assert [p.name for p in list_inputs(f"{tmp_path / 'g.png'},{tmp_path / 'a.png'}")] == ["g.png", "a.png"]
    assert [p.name for p in list_inputs(str(tmp_path))] == ["a.png", "g.png"]


def test_to_uint8():
    v = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1).expand(3, 4, 1)
    assert to_uint8(v)[:, 0].tolist() == [[0] * 3, [128] * 3, [255] * 3, [255] * 3]


# ------------------------------------------------------------------------------------------------------
# elevation estimate on analytic silhouettes rendered with the rig camera
# ------------------------------------------------------------------------------------------------------
def silhouette(elev_deg, radius, height, square=False, az_deg=0.0, size=256, focal=280.0):
    """Silhouette (size, size) bool of a cylinder / square prism standing on z = -height/2, seen by the rig."""
    rig = cameras.make_rig(1, elev_deg, 1.5, size, focal, azimuth_start_deg=az_deg)
    t = np.linspace(0, 2 * np.pi, 4 if square else 720, endpoint=False) + (np.pi / 4 if square else 0)
    ring = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    pts = np.concatenate([np.c_[ring, np.full(len(ring), z)] for z in (-height / 2, height / 2)])
    pix, _ = cameras.project(pts, rig.poses[0], rig.Ks[0])
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, cv2.convexHull(np.round(pix * 8).astype(np.int32)), 1, shift=3)
    return m.astype(bool)


@pytest.mark.parametrize("shape", [(0.3, 0.6), (0.4, 0.3), (0.2, 0.8)])
def test_elevation_estimate_on_cylinders(shape):
    errors = []
    for e in (0, 10, 20, 30):
        est = estimate_elevation(silhouette(e, *shape))
        assert est.method == "silhouette"
        errors.append(est.elevation_deg - e)
    assert max(abs(x) for x in errors) <= 4.0, errors


@pytest.mark.parametrize("az", [20, 30, 45, 60, 70])
def test_elevation_estimate_on_boxes(az):
    """Square prisms turned off face-on: the base outline is a corner, sin^2(elevation) = -k1 k2."""
    errors = []
    for e in (0, 10, 20, 30, 40):
        est = estimate_elevation(silhouette(e, 0.3, 0.4, square=True, az_deg=az))
        assert est.method == "silhouette" and est.details["fit"] == "corner", (e, est.details)
        errors.append(est.elevation_deg - e)
    assert max(abs(x) for x in errors) <= 3.0, errors  # the short edge at 20 deg turn spans few pixels


def test_elevation_estimate_on_a_rectangular_box():
    """A long flat box (a 3:1 footprint) at several turns: the corner relation does not need a square."""
    rig_e = 25.0
    for az in (25, 50, 115):
        est = estimate_elevation(box_silhouette(rig_e, (0.6, 0.2, 0.15), az))
        assert est.method == "silhouette" and abs(est.elevation_deg - rig_e) <= 1.0, (az, est.details)


def test_elevation_estimate_box_on_a_leg():
    """A leg under the box's near corner hides the corner: the fit skips the leg's segment of the outline."""
    for e in (10, 25, 40):
        m = box_silhouette(e, (0.5, 0.3, 0.2), 40)
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs[np.argmax(ys)]), int(ys.max())
        m[y0 - 10:y0 + 20, x0 - 4:x0 + 5] = True  # a leg 9 px wide, reaching 20 px below the corner
        est = estimate_elevation(m)
        assert est.method == "silhouette" and est.details["fit"] == "corner", (e, est.details)
        assert abs(est.elevation_deg - e) <= 3.0, (e, est.elevation_deg)


def box_silhouette(elev_deg, extents, az_deg, size=256, focal=280.0):
    """Silhouette of a box (x, y, z extents) standing on z = -z/2, turned by the rig azimuth ``az_deg``."""
    rig = cameras.make_rig(1, elev_deg, 1.5, size, focal, azimuth_start_deg=az_deg)
    hx, hy, hz = (0.5 * v for v in extents)
    pts = np.array([[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    pix, _ = cameras.project(pts, rig.poses[0], rig.Ks[0])
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, cv2.convexHull(np.round(pix * 8).astype(np.int32)), 1, shift=3)
    return m.astype(bool)


def test_elevation_estimate_clamps_and_falls_back():
    cfg = ElevationConfig(min_deg=-10, max_deg=25, fallback_deg=30)
    est = estimate_elevation(silhouette(40, 0.4, 0.3), cfg)
    assert est.elevation_deg == 25 and est.raw_deg > 25
    assert est.to_json()["elevation_deg"] == 25 and est.to_json()["fit"] == "ellipse"
    # a box seen face-on: its base outline is a straight horizontal edge, which any elevation gives
    # -> the configured fallback
    box = estimate_elevation(silhouette(20, 0.3, 0.6, square=True, az_deg=0), cfg)
    assert (box.method, box.elevation_deg, box.raw_deg) == ("fallback", 30.0, None)
    assert "straight horizontal outline" in box.details["reason"]
    assert estimate_elevation(np.zeros((32, 32), bool)).method == "fallback"
    assert estimate_elevation(np.zeros((32, 32), bool)).elevation_deg == 30.0


# ------------------------------------------------------------------------------------------------------
# alternative sampler: DPM-Solver++ over all views jointly
# ------------------------------------------------------------------------------------------------------
class _FakeModel:
    """Minimal stand-in with the SyncDreamer sampling interface: eps = 0.1 * x (+ a per-view offset)."""

    view_num, latent_channels, latent_size = 16, 4, 4

    def __init__(self):
        from syncdreamer.diffusion.schedule import register_schedule

        holder = torch.nn.Module()
        register_schedule(holder)
        self.betas, self.alphas_cumprod = holder.betas, holder.alphas_cumprod
        self.calls = []

    def complete(self, cond):
        return cond

    def predict_eps(self, x, t, cond, cfg_scale, batch_view_num):
        self.calls.append((tuple(x.shape), int(t[0]), cfg_scale, batch_view_num))
        return 0.1 * x + 0.01 * torch.arange(self.view_num, dtype=x.dtype).view(1, -1, 1, 1, 1)


class _Cond:
    batch_size = 2
    input_latent = torch.zeros(2, 4, 4, 4)


def test_dpmsolver_calls_all_views_once_per_step_and_order1_is_ddim():
    from syncdreamer.diffusion.diffusers_samplers import SyncDPMSolverSampler, sampler_name

    m = _FakeModel()
    s = SyncDPMSolverSampler(m, steps=5, cfg_scale=2.5, batch_view_num=4, solver_order=1)
    x_T = torch.randn(2, 16, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = s.sample(_Cond(), x_T=x_T)
    assert sampler_name(s) == "dpmsolver"
    assert len(m.calls) == 5 and all(c[0] == (2, 16, 4, 4, 4) and c[2:] == (2.5, 4) for c in m.calls)
    ts = [c[1] for c in m.calls]
    assert ts == sorted(ts, reverse=True)
    # first-order DPM-Solver++ == deterministic DDIM on the same timesteps (diffusers' final step goes to sigma 0)
    ac = m.alphas_cumprod.double()
    x = x_T.double()
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=ac.dtype)
        eps = m.predict_eps(x, torch.tensor([t]), None, 1, None)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert torch.allclose(out.double(), x, atol=1e-4, rtol=1e-4)


def test_ddim_sampler_name():
    from syncdreamer.diffusion.diffusers_samplers import sampler_name
    from syncdreamer.diffusion.sampler import SyncDDIMSampler

    assert sampler_name(SyncDDIMSampler(_FakeModel(), steps=4)) == "ddim"
