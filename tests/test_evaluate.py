"""evaluate.py / benchmark driver: layouts, per-object failures, summaries, generate hook, W&B offline."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from syncdreamer import cameras
from syncdreamer.metrics.benchmark import run_benchmark
from syncdreamer.raycast import render_mesh

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def _rig():
    return cameras.make_rig(image_size=SIZE, focal=280.0 * SIZE / 256)


def _save_views(folder: Path, rgba: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(rgba):
        Image.fromarray((v * 255).round().astype(np.uint8), "RGBA").save(folder / f"{i:03d}.png")


def _box(shift=0.0):
    m = trimesh.creation.box((1.0, 0.6, 0.8))  # normalised: largest side 1.subdivide_to_size(0.1)
    m.apply_translation([shift, 0, 0])
    m.visual.face_colors = [200, 80, 40, 255]
    return m


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    gt, pred = root / "gt", root / "pred"
    rig = _rig()
    gt_mesh = _box()
    gt_views = render_mesh(gt_mesh, rig.poses, rig.Ks, SIZE, SIZE).rgba
    shifted = _box(0.1)
    for name in ("good", "badsize", "nopred", "emptygt"):
        _save_views(gt / "target" / name, gt_views if name != "emptygt" else np.zeros_like(gt_views))
        (gt / "meshes").mkdir(parents=True, exist_ok=True)
        gt_mesh.export(gt / "meshes" / f"{name}.ply")
    # good: sample 0 = exact GT (views + mesh), sample 1 = shifted box, sample 2 = unreadable mesh
    _save_views(pred / "good" / "0", gt_views)
    gt_mesh.export(pred / "good" / "0" / "mesh.ply")
    _save_views(pred / "good" / "1", render_mesh(shifted, rig.poses, rig.Ks, SIZE, SIZE).rgba)
    shifted.export(pred / "good" / "1" / "mesh.ply")
    _save_views(pred / "good" / "2", gt_views)
    (pred / "good" / "2" / "mesh.ply").write_text("garbage")
    # badsize: views of another size
    small = render_mesh(gt_mesh, rig.poses, cameras.scale_intrinsics(rig.Ks, 0.5), 32, 32).rgba
    _save_views(pred / "badsize", small)
    gt_mesh.export(pred / "badsize" / "mesh.ply")
    (pred / "emptygt").mkdir()
    return gt, pred


def _cfg(gt, pred, out, **kw):
    cfg = {"gt_dir": str(gt), "predictions_dir": str(pred), "output_dir": str(out),
           "rig": {"image_size": SIZE, "focal": 280.0 * SIZE / 256}, "lpips": {"pretrained": False},
           "metrics": ["psnr", "ssim", "lpips", "chamfer", "iou", "fscore"], "title": "test"}
    cfg.update(kw)
    return cfg


def test_benchmark_rows_failures_and_summary(bench_dirs, tmp_path):
    gt, pred = bench_dirs
    res = run_benchmark(_cfg(gt, pred, tmp_path), log=lambda *_: None)
    rows = {(r["object"], r["sample"]): r for r in res["rows"]}
    exact, shifted, broken = rows[("good", "0")], rows[("good", "1")], rows[("good", "2")]
    assert exact["status"] == "ok" and np.isinf(exact["psnr"]) and exact["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert exact["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert exact["chamfer"] == 0.0 and exact["iou"] == 1.0 and exact["fscore"] == 1.0
    assert shifted["status"] == "ok" and 0.02 < shifted["chamfer"] < 0.08 and 0.75 < shifted["iou"] < 0.88
    assert broken["status"] == "failed" and "cannot read mesh" in broken["error"] and np.isinf(broken["psnr"])
    assert rows[("badsize", "0")]["status"] == "failed" and "differ" in rows[("badsize", "0")]["error"]
    assert rows[("nopred", "-")]["status"] == "failed" and "no predicted views" in rows[("nopred", "-")]["error"]
    assert "no foreground" in rows[("emptygt", "-")]["error"]
    s = res["summary"]
    assert s["best"]["chamfer"] == 0.0 and s["best"]["iou"] == pytest.approx(1.0)
    assert set(s["failed_objects"]) == {"good", "badsize", "nopred", "emptygt"}
    with open(res["files"]["csv"]) as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(res["rows"]) and {r["status"] for r in csv_rows} == {"ok", "failed"}
    md = Path(res["files"]["markdown"]).read_text()
    assert "best-of-n" in md and "mean ± std" in md and "## Failures" in md


def test_benchmark_generate_hook_and_reconstruct_hook(bench_dirs, tmp_path):
    gt, _ = bench_dirs
    calls = []

    def generate_fn(name, input_png, out_dir, seed):
        calls.append((name, input_png.name, seed))
        for f in (gt / "target" / name).glob("*.png"):
            (out_dir / f.name).write_bytes(f.read_bytes())

    def reconstruct_fn(views, poses, Ks, out_dir):
        assert views.shape == (16, SIZE, SIZE, 4) and poses.shape == (16, 3, 4)
        return _box()

    cfg = _cfg(gt, None, tmp_path, objects=["good"], seeds=[0, 7], reconstruct=True)
    res = run_benchmark(cfg, generate_fn=generate_fn, reconstruct_fn=reconstruct_fn, log=lambda *_: None)
    assert sorted(calls) == [("good", "000.png", 0), ("good", "000.png", 7)]
    assert [r["status"] for r in res["rows"]] == ["ok", "ok"]
    assert all(np.isinf(r["psnr"]) and r["iou"] == 1.0 for r in res["rows"])
    assert res["summary"]["std"]["iou"] == 0.0


def test_benchmark_needs_predictions(tmp_path):
    with pytest.raises(ValueError, match="predictions_dir"):
        run_benchmark({"gt_dir": str(tmp_path), "output_dir": str(tmp_path / "o"), "metrics": ["psnr"]})


def test_evaluate_cli_with_wandb_offline(bench_dirs, tmp_path):
    gt, pred = bench_dirs
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"gt_dir={gt}", f"predictions_dir={pred}", f"output_dir={out}",
           "objects=[good]", "metrics=[psnr,ssim,chamfer,iou]", f"rig.image_size={SIZE}",
           f"rig.focal={280.0 * SIZE / 256}", "logger=wandb", "logger.wandb.offline=true"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stdout[-1500:] + r.stderr[-2000:]  # sample 2 has an unreadable mesh
    assert (out / "metrics.csv").is_file() and (out / "summary.md").is_file()
    assert "best-of-n" in r.stdout
    assert any((out / "wandb").glob("offline-run-*"))
