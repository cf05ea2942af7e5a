"""NeuS reconstruction tests: fields, sampling, IO, a fast CPU reconstruction, reconstruct.py end to end."""
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from syncdreamer import cameras
from syncdreamer.metrics import geometry as G
from syncdreamer import raycast as R
from syncdreamer.recon import fields, io
from syncdreamer.recon.renderer import sample_pdf, sphere_near_far

ROOT = Path(__file__).resolve().parents[1]


def preset(name):
    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "recon" / f"{name}.yaml"))


def test_presets_match_official_numbers():
    off, fast = preset("official"), preset("fast")
    assert off["sdf"]["hidden_dim"] == 256 and off["sdf"]["n_layers"] == 8 and off["sdf"]["skip_layers"] == [4]
    assert off["sdf"]["n_freqs"] == 6 and off["sdf"]["init_radius"] == 0.5
    assert (off["renderer"]["n_samples"], off["renderer"]["n_importance"]) == (64, 64)
    assert (off["train"]["batch_rays"], off["train"]["fg_rays"], off["train"]["steps"]) == (3584, 512, 2000)
    assert off["train"]["lr"] == 5e-4 and off["mesh"]["resolution"] == 512
    assert fast["sdf"]["kind"] == "hashgrid" and fast["occupancy"] is not None
    from syncdreamer.recon.presets import SECTIONS, load_preset
    for k in SECTIONS:  # presets are complete and share every key outside the field-specific sdf section
        assert k in off and k in fast, k
        if k not in ("sdf", "occupancy") and isinstance(off[k], dict):
            assert set(off[k]) == set(fast[k]), (k, set(off[k]) ^ set(fast[k]))
    assert load_preset("official") == off  # the library reads the same single source
    assert off["train"]["ray_chunk"] and off["renderer"]["point_chunk"]  # official memory is bounded


def test_recon_auto_picks_by_device_and_official_on_cpu_needs_allow_slow():
    from syncdreamer.recon.presets import SlowPresetError, load_preset, resolve_preset

    lines = []
    cfg = resolve_preset({"name": "auto", "allow_slow": False}, torch.device("cpu"), log=lines.append)
    assert cfg["name"] == "fast" and cfg["sdf"]["kind"] == "hashgrid"
    assert len(lines) == 1 and "fast" in lines[0]
    cfg = resolve_preset({"name": "auto", "allow_slow": False}, torch.device("cuda"), log=lines.append)
    assert cfg["name"] == "official" and cfg["sdf"]["kind"] == "mlp" and "official" in lines[-1]
    with pytest.raises(SlowPresetError, match=r"about 2\.0 h .*recon\.allow_slow=true"):
        resolve_preset(load_preset("official"), torch.device("cpu"), lambda c, d: 7200.0, log=None)
    ok = resolve_preset({**load_preset("official"), "allow_slow": True}, torch.device("cpu"), log=None)
    assert ok["name"] == "official"
    with pytest.raises(ValueError, match="lacks"):
        resolve_preset({"name": "custom", "sdf": {}}, torch.device("cpu"), log=None)


def test_ray_chunks_give_the_gradient_of_the_whole_batch():
    """train.ray_chunk only bounds memory: the accumulated gradient equals the unchunked one (same rays)."""
    from syncdreamer.recon.neus import NeuSModel, _train_step

    cfg = preset("official")
    cfg["sdf"].update(hidden_dim=64, n_layers=4, skip_layers=[2], feature_dim=16)
    cfg["color"]["hidden_dim"] = 32
    cfg["train"]["eikonal_weight"] = 0.0  # the eikonal term is a mean per chunk; the others add up exactly
    cfg["renderer"].update(n_samples=8, n_importance=8, up_sample_steps=2, perturb=False, point_chunk=37)
    rig = cameras.make_rig(n_views=2, image_size=16, focal=17.5)
    o, d = cameras.pixel_rays(torch.as_tensor(rig.poses[0], dtype=torch.float32),
                              torch.as_tensor(rig.Ks[0], dtype=torch.float32), 16, 16)
    rays = (o, d, torch.rand(len(o), 3), (torch.rand(len(o)) > 0.5).float())
    idx = torch.arange(0, 256, 3)
    grads = []
    for chunk in (None, 10):
        torch.manual_seed(0)
        model = NeuSModel({**cfg, "train": {**cfg["train"], "ray_chunk": chunk}})
        model.zero_grad()
        _train_step(model, rays, idx, 0.5, model.cfg["train"])
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_sdf_inits_are_spheres_with_unit_gradient():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(512, 3), dim=-1) * 0.3
    mlp = fields.SDFNetwork()
    s = mlp.sdf(x)
    assert s.mean() < -0.05  # inside the init sphere (radius ~0.5)
    grid = fields.HashGridSDF(n_levels=4, max_res=32, base_res=4)
    sdf, feat, grad = grid.sdf_and_gradient(x)
    assert torch.allclose(sdf, x.norm(dim=-1) - 0.5, atol=0.01)
    assert torch.allclose(grad.norm(dim=-1), torch.ones(512), atol=0.05)
    assert feat.shape == (512, grid.feature_dim)
    with pytest.raises(ValueError, match="unknown sdf field"):
        fields.build_sdf("voxels")


def test_sphere_near_far_and_sample_pdf():
    o = torch.tensor([[0.0, 0.0, -2.0], [0.0, 3.0, -2.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = sphere_near_far(o, d, 0.5)
    assert hit.tolist() == [True, False] and near[0] == pytest.approx(1.5) and far[0] == pytest.approx(2.5)
    bins = torch.linspace(0, 1, 11)[None]
    w = torch.zeros(1, 10)
    w[0, 3] = 1.0
    s = sample_pdf(bins, w, 16)
    assert ((s >= 0.3 - 1e-3) & (s <= 0.4 + 1e-3)).float().mean() > 0.95


def test_views_folder_strip_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    views = (rng.uniform(0, 1, (16, 8, 8, 4)) * 255).astype(np.uint8)
    views[..., 3] = np.where(views[..., 3] > 128, 255, 0)
    (tmp_path / "f").mkdir()
    for i, v in enumerate(views):
        Image.fromarray(v, "RGBA").save(tmp_path / "f" / f"{i:03d}.png")
    Image.fromarray(np.concatenate(list(views), 1), "RGBA").save(tmp_path / "strip.png")
    a, b = io.load_views(tmp_path / "f"), io.load_views(tmp_path / "strip.png")
    assert a.shape == (16, 8, 8, 4) and np.array_equal(a, b)
    assert np.array_equal(io.compute_masks(a, "alpha"), views[..., 3] / 255.0)
    rgb = io.composite_white(a)
    assert io.compute_masks(rgb, "auto").shape == (16, 8, 8)
    custom = io.compute_masks(a, lambda x: np.ones(x.shape[:3]))
    assert custom.min() == 1.0
    with pytest.raises(ValueError, match="needs RGBA"):
        io.compute_masks(rgb, "alpha")
    with pytest.raises(ValueError, match="strip of 4 square views"):
        io.load_views(tmp_path / "strip.png", n_views=4)
    (tmp_path / "f" / "003.png").unlink()
    with pytest.raises(ValueError, match="003.png is missing"):
        io.load_views(tmp_path / "f")


def test_cameras_rig_json_and_meta(tmp_path):
    rig = cameras.make_rig()
    poses, Ks = io.load_cameras(None, 16, 128)
    assert np.allclose(poses, rig.poses) and np.allclose(Ks[0, 0, 0], 140.0) and np.allclose(Ks[0, 0, 2], 64.0)
    (tmp_path / "c.json").write_text(json.dumps({"poses": rig.poses.tolist(), "Ks": rig.Ks[0].tolist()}))
    p2, K2 = io.load_cameras(tmp_path / "c.json", 16, 256)
    assert np.allclose(p2, rig.poses) and np.allclose(K2, rig.Ks)
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(rig.to_meta(), f)
    p3, K3 = io.load_cameras(tmp_path / "meta.pkl", 16, 256)
    assert np.allclose(p3, rig.poses, atol=1e-6) and np.allclose(K3, rig.Ks, atol=1e-4)
    with pytest.raises(ValueError, match="16 poses .* for 8 views"):
        io.load_cameras(tmp_path / "c.json", 8, 256)


def _procedural_views(size=256, kind="toy", seed=0):
    """A procedural object (data pipeline), normalised the official way, ray-cast on the fixed rig."""
    from syncdreamer.data.mesh_io import normalization, normalize_points
    from syncdreamer.data.procedural import make_object

    mesh = make_object(kind, seed)
    scale, center = normalization(mesh.vertices)
    mesh.vertices = normalize_points(mesh.vertices, scale, center)
    rig = cameras.make_rig(image_size=size, focal=280.0 * size / 256)
    res = R.render_mesh(mesh, rig.poses, rig.Ks, size, size, supersample=2)
    return mesh, rig, res


def _accuracy(model, gt_mesh, rig, size, mesh_res=128):
    from syncdreamer.recon.export import extract_mesh

    pred = extract_mesh(model, mesh_res, 0.6, colors=False)
    gt_pts = R.mesh_points_from_rig(gt_mesh, rig.poses, rig.Ks, size, size)
    pr_pts = R.mesh_points_from_rig(pred, rig.poses, rig.Ks, size, size)
    return G.chamfer_distance(pr_pts, gt_pts)["chamfer"], G.volume_iou(pred, gt_mesh, "exact")["iou"]


def _fit(steps, threads=1, **train):
    from syncdreamer.recon.neus import fit_neus

    mesh, rig, res = _procedural_views()
    cfg = preset("fast")
    cfg["train"].update(train)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # robust timing on a shared machine
    try:
        rgb = io.composite_white(res.rgba)
        model = fit_neus(rgb, res.rgba[..., 3], rig.poses, rig.Ks, cfg, device="cpu", steps=steps, log=None)
    finally:
        torch.set_num_threads(old)
    return model, mesh, rig


def test_fast_neus_quick_cpu():
    """Short run of the fast preset: coarse thresholds that the initial sphere fails (chamfer ~0.07, IoU ~0.3)."""
    from syncdreamer.recon.neus import NeuSModel

    mesh, rig, _ = _procedural_views()
    torch.manual_seed(0)
    cd0, iou0 = _accuracy(NeuSModel(preset("fast")), mesh, rig, 256, 64)
    assert cd0 > 0.04 and iou0 < 0.5
    model, mesh, rig = _fit(60, batch_rays=384, fg_rays=128)
    cd, iou = _accuracy(model, mesh, rig, 256, 96)
    assert cd < 0.03 and iou > 0.6, (cd, iou)


@pytest.mark.slow
def test_fast_neus_reaches_target_accuracy():
    model, mesh, rig = _fit(preset("fast")["train"]["steps"])
    cd, iou = _accuracy(model, mesh, rig, 256, preset("fast")["mesh"]["resolution"])
    assert cd < 0.02 and iou > 0.7, (cd, iou)


def test_reconstruct_cli_end_to_end(tmp_path):
    _, rig, res = _procedural_views(size=64)
    strip = (np.concatenate(list(res.rgba), 1) * 255).round().astype(np.uint8)
    Image.fromarray(strip, "RGBA").save(tmp_path / "strip.png")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "reconstruct.py"), f"views={tmp_path / 'strip.png'}", f"output_dir={out}",
           "recon=fast", "steps=3", "num_threads=1", "recon.mesh.resolution=32", "recon.turntable.frames=3",
           "recon.turntable.size=24", "recon.train.batch_rays=64", "recon.train.fg_rays=32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("mesh.ply", "mesh.glb", "turntable.gif", "recon.json"):
        assert (out / f).is_file(), f
    from syncdreamer.data.mesh_io import load_mesh_world
    ply, glb = load_mesh_world(out / "mesh.ply"), load_mesh_world(out / "mesh.glb")
    assert np.allclose(ply.bounds, glb.bounds, atol=1e-5)  # glb written y-up, read back in the world frame
    assert ply.visual.vertex_colors.shape[0] == len(ply.vertices)
    info = json.loads((out / "recon.json").read_text())
    assert info["steps"] == 3 and info["device"] == "cpu"
    # bad input: one clear line, exit code 2
    r = subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), f"views={tmp_path / 'nope'}",
                        f"output_dir={out}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "views not found" in r.stderr
    strip = f"views={tmp_path / 'strip.png'}"
    if not torch.cuda.is_available():  # device=cuda without a GPU: one line, no traceback
        r = subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), strip, f"output_dir={out}", "device=cuda"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
        # the official preset on a CPU: one line with the estimated time, nothing trained
        r = subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), strip, f"output_dir={tmp_path / 'o2'}",
                            "recon=official", "num_threads=1"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 2 and "recon.allow_slow=true" in r.stderr and " h (" in r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "o2" / "mesh.ply").exists()


@pytest.mark.slow
@pytest.mark.blender
def test_blender_render_then_reconstruct_cli_auto_preset_reaches_target_accuracy(tmp_path):
    """The issue's acceptance run: the data pipeline renders a procedural object with Blender (official layout);
    ``reconstruct.py views=<the 16 target renders>`` with no other flag (recon=auto: fast on this CPU machine)
    makes a mesh within Chamfer 0.02 (and exact Volume IoU 0.7) of the true (normalised) mesh. The wall time is
    printed (README: under 3 minutes on the 2-core CPU machine), never asserted."""
    import os
    import time

    from hydra import compose, initialize_config_dir

    from syncdreamer.data import layout, procedural
    from syncdreamer.data.mesh_io import load_normalized_mesh
    from syncdreamer.data.render_driver import run_render

    if shutil.which("blender") is None:
        if os.environ.get("CI"):
            pytest.fail("Blender is not installed but CI is set (make blender)")
        pytest.skip("Blender not installed")
    meshes = procedural.make_procedural_set(tmp_path / "meshes", 1, seed=0, kinds=("toy",), formats=("glb",))
    out = tmp_path / "renders"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="render", overrides=[f"input={meshes[0]}", f"output_dir={out}", "preset=fast"])
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg.pop("hydra", None)
    summary = run_render(cfg, log=lambda *a: None)
    assert not summary.get("failed"), summary
    views = layout.view_path(out, "target", meshes[0].stem, 0).parent
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), f"views={views}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert "recon=auto: using the fast NeuS preset on cpu" in r.stdout
    print(f"reconstruct.py (recon=auto -> fast, CPU) wall time {wall:.0f} s")
    ply = sorted((tmp_path / "outputs" / "reconstruct").glob("*/mesh.ply"))
    assert len(ply) == 1
    info = json.loads((ply[0].parent / "recon.json").read_text())
    assert info["preset"] == "fast" and info["device"] == "cpu"
    pred = G.load_mesh(ply[0])
    gt = load_normalized_mesh(meshes[0])[0]
    rig = cameras.make_rig()
    gt_pts = R.mesh_points_from_rig(gt, rig.poses, rig.Ks, 256, 256)
    pr_pts = R.mesh_points_from_rig(pred, rig.poses, rig.Ks, 256, 256)
    cd = G.chamfer_distance(pr_pts, gt_pts)["chamfer"]
    iou = G.volume_iou(pred, gt, "exact")["iou"]
    print(f"Chamfer {cd:.4f}  IoU(exact) {iou:.3f}  IoU(official) {G.volume_iou(pred, gt)['iou']:.3f}")
    assert cd < 0.02 and iou > 0.7, (cd, iou)
