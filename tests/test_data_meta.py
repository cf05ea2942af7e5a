"""The restricted metadata reader: data set pickles never run code (syncdreamer.data.meta)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from syncdreamer import cameras
from syncdreamer.data import layout, meta

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs ``os.system(cmd)`` (pickled as ``posix.system``)."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _evil_pickle(path: Path, marker: Path) -> Path:
    data = pickle.dumps([_Payload(f"touch {marker}"), 1, 2, 3, 4])
    assert b"system" in data  # the payload really is os.system
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated_pickle(path: Path) -> Path:
    data = pickle.dumps(cameras.make_rig().to_meta())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def test_restricted_reader_round_trips_the_official_meta(tmp_path):
    rig = cameras.make_rig()
    official = [np.asarray(v, np.float32) for v in rig.to_meta()]
    for proto in (2, 4, 5):
        p = tmp_path / f"p{proto}" / "meta.pkl"
        p.parent.mkdir()
        p.write_bytes(pickle.dumps(official, protocol=proto))
        m = meta.read_meta(p)
        np.testing.assert_allclose(m["poses"], official[4], atol=0)
        np.testing.assert_allclose(m["elevations"], official[2], atol=0)
    # our writer adds the JSON twin and the reader takes it (pickle never opened: corrupt it to prove it)
    p = meta.write_meta(tmp_path / "ours" / "meta.pkl", rig)
    assert meta.meta_json_path(p).is_file()
    p.write_bytes(b"garbage")
    np.testing.assert_allclose(meta.read_meta(p)["K"], official[0], atol=1e-6)


def test_unsafe_and_truncated_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_pickle(tmp_path / "a" / "meta.pkl", marker)
    with pytest.raises(meta.MetaError, match="refusing to load global posix.system") as err:
        meta.read_meta(evil)
    assert str(evil) in str(err.value) and "\n" not in str(err.value)
    trunc = _truncated_pickle(tmp_path / "b" / "meta.pkl")
    with pytest.raises(meta.MetaError, match="truncated or corrupt") as err:
        meta.read_meta(trunc)
    assert str(trunc) in str(err.value)
    uid_list = tmp_path / "uids.pkl"
    uid_list.write_bytes(pickle.dumps([_Payload(f"touch {marker}")]))
    with pytest.raises(meta.MetaError):
        layout.read_uid_list(uid_list)
    assert not marker.exists()


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def _views(folder: Path, size: int = 32) -> Path:
    folder.mkdir(parents=True)
    img = np.zeros((size, size, 4), np.uint8)
    img[8:24, 8:24] = 200
    for i in range(16):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("kind", ["evil", "truncated"])
def test_reconstruct_cli_refuses_bad_cameras_in_one_line(tmp_path, kind):
    marker = tmp_path / "pwned"
    bad = tmp_path / "meta.pkl"
    _evil_pickle(bad, marker) if kind == "evil" else _truncated_pickle(bad)
    views = _views(tmp_path / "views")
    r = _run([str(REPO / "reconstruct.py"), f"views={views}", f"cameras={bad}", f"output_dir={tmp_path / 'out'}",
              "recon=fast"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(bad) in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "mesh.ply").exists()


@pytest.mark.parametrize("kind", ["evil", "truncated"])
def test_index_cli_marks_a_bad_meta_pkl_and_runs_nothing(tmp_path, kind):
    """A data set whose meta.pkl is malicious / truncated: index.py exits non-zero with one line per bad
    object naming the file, records status + reason in the manifest, and the payload never runs."""
    from syncdreamer.data.manifest import read_manifest

    marker = tmp_path / "pwned"
    root = tmp_path / "ds"
    for rig in layout.RIGS:
        _views(root / rig / "obj")
    (_evil_pickle if kind == "evil" else lambda p, m: _truncated_pickle(p))(root / "input" / "obj" / "meta.pkl", marker)
    r = _run([str(REPO / "data_prep" / "index.py"), f"root={root}", "views=16"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    bad_lines = [ln[ln.index("INVALID"):] for ln in r.stderr.splitlines() if "INVALID" in ln]
    assert len(bad_lines) == 1 and str(root / "input" / "obj" / "meta.pkl") in bad_lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    rows = read_manifest(root / "manifest.parquet").to_pylist()
    assert [(x["uid"], x["status"]) for x in rows] == [("obj", "invalid")]
    assert "meta.pkl" in rows[0]["reason"]
