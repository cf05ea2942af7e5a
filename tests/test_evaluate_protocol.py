"""evaluate.py under protocol=official on procedural objects: provenance in summary.md / summary.json, recon=auto."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from syncdreamer import cameras
from syncdreamer.data.mesh_io import normalization, normalize_points
from syncdreamer.data.procedural import make_object
from syncdreamer.raycast import render_mesh

ROOT = Path(__file__).resolve().parents[1]
SIZE = 48
GENERATION = {"sampler": "ddim", "sample_steps": 50, "cfg_scale": 2.0, "seed": 6033, "sample_num": 1}


def _save_views(folder: Path, rgba: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(rgba):
        Image.fromarray((v * 255).round().astype(np.uint8), "RGBA").save(folder / f"{i:03d}.png")


def _procedural_benchmark(root: Path):
    rig = cameras.make_rig(image_size=SIZE, focal=280.0 * SIZE / 256)
    for kind in ("box", "torus"):
        mesh = make_object(kind, 1)
        s, c = normalization(mesh.vertices)
        mesh.vertices = normalize_points(mesh.vertices, s, c)
        rgba = render_mesh(mesh, rig.poses, rig.Ks, SIZE, SIZE).rgba
        _save_views(root / "gt" / "target" / kind, rgba)
        (root / "gt" / "meshes").mkdir(parents=True, exist_ok=True)
        mesh.export(root / "gt" / "meshes" / f"{kind}.ply")
        _save_views(root / "pred" / kind, rgba)  # predictions: the GT views, NeuS makes the meshes
        (root / "pred" / kind / "cameras.json").write_text(json.dumps(GENERATION))
    return rig


def test_evaluate_official_protocol_records_provenance(tmp_path):
    _procedural_benchmark(tmp_path)
    out = tmp_path / "eval"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"gt_dir={tmp_path / 'gt'}",
           f"predictions_dir={tmp_path / 'pred'}", f"output_dir={out}", "reconstruct=true",
           "metrics=[psnr,ssim,chamfer,iou]", f"rig.image_size={SIZE}", f"rig.focal={280.0 * SIZE / 256}",
           "+recon.train.steps=3", "+recon.train.batch_rays=64", "+recon.train.fg_rays=32",
           "+recon.mesh.resolution=48", "device=cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    assert "recon=auto: using the fast NeuS preset on cpu" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    prov = summary["provenance"]
    assert prov["protocol"] == "official" and "mesh2sdf" in prov["volume_iou"]
    assert prov["neus_preset"] == "fast" and prov["neus_steps"] == 3
    assert prov["sampler"] == ["ddim"] and prov["sample_steps"] == [50] and prov["cfg_scale"] == [2.0]
    assert prov["seeds"] == [6033] and prov["sample_num"] == [1]
    assert prov["versions"]["mesh2sdf"].startswith("1.") and prov["versions"]["torch"]
    md = (out / "summary.md").read_text()
    for key in ("protocol", "volume_iou", "neus_preset", "neus_steps", "sampler", "sample_steps", "cfg_scale",
                "seeds", "sample_num", "versions"):
        assert f"| {key} |" in md, key
    assert "| neus_preset | fast |" in md and "| cfg_scale | 2.0 |" in md and "mesh2sdf 1." in md
    assert summary["objects"] == 2 and summary["n"]["iou"] == 2  # both reconstructed and measured


def test_given_meshes_report_the_neus_preset_of_their_recon_json(tmp_path):
    """Meshes made by reconstruct.py (as `make demo` hands them to evaluate.py) carry recon.json beside them:
    the summary names their preset and steps instead of "none"."""
    _procedural_benchmark(tmp_path)
    for kind in ("box", "torus"):
        mesh = tmp_path / "pred" / kind / "mesh.ply"
        mesh.write_bytes((tmp_path / "gt" / "meshes" / f"{kind}.ply").read_bytes())
        (mesh.parent / "recon.json").write_text(json.dumps({"preset": "fast", "steps": 60, "device": "cpu"}))
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"gt_dir={tmp_path / 'gt'}",
                        f"predictions_dir={tmp_path / 'pred'}", f"output_dir={out}", "metrics=[psnr]",
                        f"rig.image_size={SIZE}", f"rig.focal={280.0 * SIZE / 256}", "device=cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    prov = json.loads((out / "summary.json").read_text())["provenance"]
    assert prov["neus_preset"] == "fast (meshes given)" and prov["neus_steps"] == 60, prov
    assert prov["sampler"] == ["ddim"] and prov["seeds"] == [6033]


def test_evaluate_bad_protocol_and_device_are_one_line(tmp_path):
    _procedural_benchmark(tmp_path)
    base = [sys.executable, str(ROOT / "evaluate.py"), f"gt_dir={tmp_path / 'gt'}",
            f"predictions_dir={tmp_path / 'pred'}", f"output_dir={tmp_path / 'o'}"]
    r = subprocess.run(base + ["protocol=paper"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "protocol must be one of ['official', 'exact']" in r.stderr
    assert "Traceback" not in r.stderr
    import torch
    if not torch.cuda.is_available():
        r = subprocess.run(base + ["reconstruct=true", "device=cuda"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
