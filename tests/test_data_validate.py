"""Render driver (with the CPU rasteriser) and data-set validation on synthetic data (no Blender)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from syncdreamer.cameras import make_rig
from syncdreamer.data import layout, procedural
from syncdreamer.data.manifest import read_manifest
from syncdreamer.data.render_driver import RenderError, discover_meshes, make_rigs, run_render, select_shard
from syncdreamer.data.validate import ValidationConfig, split_uids, validate_dataset, validate_object

CONF = str(Path(__file__).resolve().parents[1] / "conf")
QUIET = {"log": lambda *a: None}


def compose_cfg(name, overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def cpu_set(tmp_path_factory):
    """Two procedural objects (glb + obj) rendered by the CPU rasteriser into the official layout."""
    base = tmp_path_factory.mktemp("cpu")
    meshes = base / "meshes"
    procedural.make_procedural_set(meshes, 2, seed=0, kinds=("toy", "box"), formats=("glb", "obj"))
    cfg = compose_cfg("render", [f"input={meshes}", f"output_dir={base / 'out'}", "renderer=cpu"])
    summary = run_render(cfg, **QUIET)
    assert summary["rendered"] == 2 and summary["failed"] == 0
    return base / "meshes", base / "out"


def fresh_copy(cpu_set, tmp_path):
    meshes, out = cpu_set
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return meshes, dst


def test_layout_of_a_render(cpu_set):
    meshes, out = cpu_set
    assert layout.list_uids(out) == ["box_001", "toy_000"] == layout.list_uids(out, "input")
    for rig in layout.RIGS:
        d = layout.object_dir(out, rig, "toy_000")
        assert layout.rig_complete(d, 16) and (d / "render.json").is_file()
    t = layout.read_meta(layout.meta_path(out, "target", "toy_000"))
    np.testing.assert_allclose(t["poses"], make_rig().poses, atol=1e-6)
    i = layout.read_meta(layout.meta_path(out, "input", "toy_000"))
    el = np.rad2deg(i["elevations"])
    assert el.min() >= -10 and el.max() <= 40 and el.std() > 5  # random per view
    np.testing.assert_allclose(i["azimuths"], t["azimuths"], atol=1e-6)
    # same (seed, uid) -> same cameras; another uid -> others
    settings = {"resolution": 256, "views": 16, "lens_mm": 35, "sensor_mm": 32, "distance": 1.5,
                "elevation": 30, "input_elevation": [-10, 40], "seed": 0}
    np.testing.assert_allclose(make_rigs("toy_000", settings)["input"].elevations, i["elevations"], atol=1e-6)
    assert not np.allclose(make_rigs("box_001", settings)["input"].elevations, i["elevations"])
    d = layout.read_depth(layout.depth_path(out, "input", "toy_000", 0))
    a = layout.read_view_rgba(layout.view_path(out, "input", "toy_000", 0))[..., 3]
    assert ((d > 0) == (a > 0)).all() and 0.634 <= d[d > 0].min() and d.max() <= 2.366


def test_valid_set_passes_and_lists_are_written(cpu_set, tmp_path):
    meshes, out = cpu_set
    cfg = ValidationConfig()
    s = validate_dataset(out, cfg, meshes=meshes, out_dir=tmp_path, val_fraction=0.5, **QUIET)
    assert (s["valid"], s["invalid"], s["silhouette_checked"]) == (2, 0, 2)
    assert s["train"] == 1 and s["val"] == 1
    train = layout.read_uid_list(tmp_path / "train_uids.pkl")
    val = layout.read_uid_list(tmp_path / "val_uids.txt")
    assert sorted(train + val) == ["box_001", "toy_000"]
    rec = [json.loads(x) for x in (tmp_path / "validation.jsonl").read_text().splitlines()]
    for r in rec:
        for rig in ("target", "input"):
            sc = r["scores"][rig]
            assert sc["inside"] >= 0.99 and sc["coverage"] >= 0.99 and sc["iou"] > 0.9 and sc["depth_consistent"] > 0.99


def test_swapped_views_are_caught(cpu_set, tmp_path):
    meshes, out = fresh_copy(cpu_set, tmp_path)
    d = layout.object_dir(out, "target", "toy_000")
    for name in ("003.png", "003_depth.png"):
        shutil.copy(d / name, d / "tmp")
        shutil.copy(d / name.replace("003", "004"), d / name)
        shutil.copy(d / "tmp", d / name.replace("003", "004"))
    (d / "tmp").unlink()
    rep = validate_object(out, "toy_000", ValidationConfig(), meshes / "toy_000.glb")
    assert not rep.ok
    bad_views = {e.split("view ")[1][:3] for e in rep.errors if "silhouette disagrees" in e}
    assert bad_views == {"003", "004"}
    assert validate_object(out, "toy_000", ValidationConfig()).ok  # without the mesh, nothing can tell


def test_corrupted_pose_is_caught(cpu_set, tmp_path):
    """Pose and angles changed consistently (so only the silhouette can tell): view 5 rotated by 10 deg."""
    meshes, out = fresh_copy(cpu_set, tmp_path)
    p = layout.meta_path(out, "input", "box_001")
    meta = layout.read_meta(p)
    el = np.rad2deg(meta["elevations"])
    el[5] = min(el[5] + 12.0, 40.0) if el[5] < 28 else el[5] - 12.0
    wrong = make_rig(elevation_deg=el)
    meta["elevations"], meta["poses"] = wrong.elevations, wrong.poses
    layout.write_meta(p, meta)
    rep = validate_object(out, "box_001", ValidationConfig(), meshes / "box_001.obj")
    assert [e for e in rep.errors if e.startswith("input: view 005 silhouette")], rep.errors
    assert len(rep.errors) == 1, rep.errors
    # an inconsistent meta (pose does not match its angles) is caught without any mesh
    meta["azimuths"][2] += 0.2
    layout.write_meta(p, meta)
    rep = validate_object(out, "box_001", ValidationConfig())
    assert any("azimuths differ" in e for e in rep.errors)


def test_structural_failures(cpu_set, tmp_path):
    meshes, out = fresh_copy(cpu_set, tmp_path)
    cfg = ValidationConfig()
    d = layout.object_dir(out, "input", "toy_000")
    (d / "007.png").unlink()
    rgba = layout.read_view_rgba(d / "002.png")
    rgba[:, 0, 3] = 255  # touches the left border
    Image.fromarray(rgba, "RGBA").save(d / "002.png")
    rgba[..., 3] = 0  # empty
    Image.fromarray(rgba, "RGBA").save(d / "009.png")
    errs = validate_object(out, "toy_000", cfg).errors
    assert any("15 view images, expected 16" in e for e in errs)
    assert any("007.png missing" in e for e in errs)
    assert any("002.png touches the image border" in e for e in errs)
    assert any("009.png is empty" in e for e in errs)
    (layout.meta_path(out, "target", "box_001")).unlink()
    (layout.meta_path(out, "target", "box_001")).with_suffix(".json").unlink()
    assert any("meta.pkl not found" in e for e in validate_object(out, "box_001", cfg).errors)
    s = validate_dataset(out, cfg, meshes=meshes, out_dir=tmp_path / "rep", **QUIET)
    assert s["valid"] == 0 and layout.read_uid_list(tmp_path / "rep" / "train_uids.pkl") == []
    # the manifest keeps every object with its status and reason (none dropped)
    rows = {r["uid"]: r for r in read_manifest(tmp_path / "rep").to_pylist()}
    assert set(rows) == set(layout.list_uids(out))
    assert rows["toy_000"]["status"] == "incomplete" and "007.png" in rows["toy_000"]["reason"]
    assert rows["box_001"]["status"] == "invalid" and "meta.pkl not found" in rows["box_001"]["reason"]
    assert all(r["split"] is None for r in rows.values())


def test_split_uids():
    uids = [f"u{i:03d}" for i in range(100)]
    train, val = split_uids(uids, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert (train, val) == split_uids(list(reversed(uids)), 0.1, seed=3)  # order-independent, seeded
    assert split_uids(uids, 0.1, seed=4)[1] != val
    assert split_uids(["a", "b"], 0.02)[1] != [] and split_uids(["a"], 0.02) == (["a"], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_uids(uids, 1.0)


def test_driver_skips_finished_records_failures_and_shards(tmp_path):
    meshes = tmp_path / "meshes"
    procedural.make_procedural_set(meshes, 1, seed=0, kinds=("cone",), formats=("ply",))
    (meshes / "broken.glb").write_bytes(b"this is not a glb")
    out = tmp_path / "out"
    cfg = compose_cfg("render", [f"input={meshes}", f"output_dir={out}", "renderer=cpu", "views=4"])
    s = run_render(cfg, **QUIET)
    assert (s["rendered"], s["failed"]) == (1, 1)
    fails = layout.read_jsonl(out / "failures.jsonl")
    assert [f["uid"] for f in fails] == ["broken"] and fails[0]["reason"]
    stamp = (layout.view_path(out, "target", "cone_000", 0)).stat().st_mtime_ns
    s = run_render(cfg, **QUIET)  # finished skipped, the failed one not retried
    assert (s["rendered"], s["complete"], s["skipped_failed"]) == (0, 1, 1)
    assert layout.view_path(out, "target", "cone_000", 0).stat().st_mtime_ns == stamp
    # a half-present folder is never overwritten silently
    shutil.rmtree(layout.object_dir(out, "input", "cone_000"))
    layout.object_dir(out, "input", "cone_000").mkdir()
    s = run_render(cfg, **QUIET)
    assert s["blocked"] == 1 and "replace_incomplete" in layout.read_jsonl(out / "failures.jsonl")[-1]["reason"]
    cfg2 = compose_cfg("render", [f"input={meshes}", f"output_dir={out}", "renderer=cpu", "views=4",
                                  "replace_incomplete=true", "retry_failed=true", "uids=[cone_000]"])
    assert run_render(cfg2, **QUIET)["rendered"] == 1
    assert layout.rig_complete(layout.object_dir(out, "input", "cone_000"), 4)
    # shards partition the sorted uids
    uids = [f"u{i}" for i in range(10)]
    parts = [select_shard(uids, k, 3) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(uids) and parts[0] == ["u0", "u3", "u6", "u9"]


def test_driver_input_errors(tmp_path):
    with pytest.raises(RenderError, match="does not exist"):
        discover_meshes(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.glb").write_bytes(b"")
    (tmp_path / "b" / "x.obj").write_bytes(b"")
    with pytest.raises(RenderError, match="share the uid 'x'"):
        discover_meshes(tmp_path)
    with pytest.raises(RenderError, match="no mesh"):
        discover_meshes(tmp_path / "a", uids=["y"])
    cfg = compose_cfg("render", [f"input={tmp_path / 'a'}", f"output_dir={tmp_path / 'o'}", "preset=nope"])
    with pytest.raises(RenderError, match="unknown preset"):
        run_render(cfg, **QUIET)
    cfg = compose_cfg("render", [f"input={tmp_path / 'a'}", f"output_dir={tmp_path / 'o'}",
                                 "blender=/no/such/blender"])
    with pytest.raises(RenderError, match="Blender not found"):
        run_render(cfg, **QUIET)


def test_command_line_entry_points(tmp_path):
    """`data_prep/render.py` and `data_prep/validate.py` run as Hydra scripts (CPU rasteriser, no Blender)."""
    import subprocess
    import sys

    repo = Path(CONF).parent
    meshes = tmp_path / "m"
    procedural.make_procedural_set(meshes, 1, seed=1, kinds=("toy",))
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "data_prep/render.py", f"input={meshes}", f"output_dir={out}", "renderer=cpu",
                        "views=16"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert layout.rig_complete(layout.object_dir(out, "input", "toy_000"), 16)
    r = subprocess.run([sys.executable, "data_prep/validate.py", f"root={out}", f"meshes={meshes}", "val_fraction=0"],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert layout.read_uid_list(out / "train_uids.txt") == ["toy_000"]
    r = subprocess.run([sys.executable, "data_prep/render.py", f"input={tmp_path / 'none'}", f"output_dir={out}"],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stderr


FAKE_BLENDER = '''#!{python}
"""A stand-in for Blender: --probe works; a --job crashes (exit 139) on its first object, or at start-up."""
import json, os, sys
args = sys.argv[sys.argv.index("--") + 1:]
if args[0] == "--probe":
    json.dump({{"version": "fake", "numpy": True, "oidn": False, "python": "3"}}, open(args[1], "w"))
    sys.exit(0)
if os.environ.get("FAKE_BLENDER_DIE_AT_START"):
    sys.exit(3)
job = json.load(open(args[1]))
with open(job["status"], "a") as f:
    f.write(json.dumps({{"event": "start", "uid": job["objects"][0]["uid"]}}) + "\\n")
sys.exit(139)
'''


def test_driver_survives_blender_crashes(tmp_path, monkeypatch):
    import sys

    fake = tmp_path / "blender"
    fake.write_text(FAKE_BLENDER.format(python=sys.executable))
    fake.chmod(0o755)
    meshes = tmp_path / "m"
    procedural.make_procedural_set(meshes, 3, seed=0, formats=("ply",))
    out = tmp_path / "o"
    cfg = compose_cfg("render", [f"input={meshes}", f"output_dir={out}", f"blender={fake}", "objects_per_process=3"])
    s = run_render(cfg, **QUIET)  # each process crashes on its first object; the rest are re-queued
    assert (s["rendered"], s["failed"]) == (0, 3)
    reasons = [f["reason"] for f in layout.read_jsonl(out / "failures.jsonl")]
    assert reasons == ["Blender exited with code 139 while rendering this object"] * 3
    assert layout.list_uids(out) == []  # nothing half-written in place
    monkeypatch.setenv("FAKE_BLENDER_DIE_AT_START", "1")
    cfg = compose_cfg("render", [f"input={meshes}", f"output_dir={tmp_path / 'o2'}", f"blender={fake}"])
    s = run_render(cfg, **QUIET)
    assert s["failed"] == 3
    assert "before rendering any object" in layout.read_jsonl(tmp_path / "o2" / "failures.jsonl")[0]["reason"]
