"""Layout IO: meta.pkl, views, depth encoding, uid lists (no Blender)."""
import pickle

import numpy as np
import pytest
from PIL import Image

from syncdreamer.cameras import make_rig
from syncdreamer.data import layout
from syncdreamer.data import meta as meta_io


def test_meta_roundtrip_is_the_official_list(tmp_path):
    rig = make_rig(elevation_deg=np.linspace(-10, 40, 16))
    p = layout.write_meta(tmp_path / "input" / "u" / "meta.pkl", rig)
    raw = meta_io.safe_load_pickle(p)  # the pickle itself is the official list (read without running code)
    assert isinstance(raw, list) and len(raw) == 5
    assert raw[0].shape == (3, 3) and raw[4].shape == (16, 3, 4)
    meta = layout.read_meta(p)
    np.testing.assert_allclose(meta["K"], [[280, 0, 128], [0, 280, 128], [0, 0, 1]])
    np.testing.assert_allclose(meta["poses"], rig.poses, atol=1e-6)
    np.testing.assert_allclose(np.rad2deg(meta["elevations"]), np.linspace(-10, 40, 16), atol=1e-4)
    np.testing.assert_allclose(np.rad2deg(meta["azimuths"]), np.arange(16) * 22.5, atol=1e-4)
    assert meta["distances"].tolist() == [1.5] * 16


def test_read_meta_rejects_bad_files(tmp_path):
    bad = tmp_path / "meta.pkl"
    bad.write_bytes(pickle.dumps({"K": 1}))
    with pytest.raises(ValueError, match="official list"):
        layout.read_meta(bad)
    with pytest.raises(FileNotFoundError, match="meta.pkl not found"):
        layout.read_meta(tmp_path / "missing.pkl")


def test_depth_encoding_roundtrip_and_empty(tmp_path):
    d = np.zeros((8, 8), np.float32)
    d[2:6, 2:6] = np.linspace(0.634, 2.366, 16).reshape(4, 4)
    d[0, 0] = np.inf
    p = layout.write_depth(tmp_path / "000_depth.png", d)
    with Image.open(p) as im:
        assert np.asarray(im).dtype == np.uint16  # 16-bit grey PNG
    back = layout.read_depth(p)
    assert back.dtype == np.float32 and back.shape == (8, 8)
    assert (back[d == 0] == 0).all() and back[0, 0] == 0  # empty -> 0
    step = (layout.DEPTH_FAR - layout.DEPTH_NEAR) / 65535
    np.testing.assert_allclose(back[2:6, 2:6], d[2:6, 2:6], atol=step)
    # the official decoding formula for a raw value
    assert layout.decode_depth(np.array([65535], np.uint16))[0] == pytest.approx(2.4)
    assert layout.decode_depth(np.array([32768], np.uint16))[0] == pytest.approx(32768 / 65535 * 1.8 + 0.6)
    np.save(tmp_path / "d.npy", np.where(d > 0, d, np.inf))
    np.testing.assert_allclose(layout.read_depth(tmp_path / "d.npy"), np.where(np.isfinite(d), d, 0))


def test_view_tensor_composites_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[1, 1] = [0, 0, 0, 128]  # half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "000.png")
    assert layout.read_view_rgba(tmp_path / "000.png").shape == (4, 4, 4)
    x = layout.read_view_tensor(tmp_path / "000.png")
    assert tuple(x.shape) == (3, 4, 4) and float(x.min()) >= -1 and float(x.max()) <= 1
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(x[:, 3, 3].numpy(), [1, 1, 1], atol=1e-6)  # transparent -> white
    np.testing.assert_allclose(x[:, 1, 1].numpy(), [1 - 2 * 128 / 255] * 3, atol=1e-5)
    assert tuple(layout.read_view_tensor(tmp_path / "000.png", image_size=8).shape) == (3, 8, 8)


def test_uid_lists_and_listing(tmp_path):
    uids = ["b", "a", "c"]
    layout.write_uid_list(tmp_path / "l.pkl", uids)
    layout.write_uid_list(tmp_path / "l.txt", uids)
    assert layout.read_uid_list(tmp_path / "l.pkl") == uids
    assert layout.read_uid_list(tmp_path / "l.txt") == uids
    with pytest.raises(ValueError, match=".pkl or .txt"):
        layout.write_uid_list(tmp_path / "l.csv", uids)
    for u in ["x", "y", ".work"]:
        (tmp_path / "target" / u).mkdir(parents=True)
    assert layout.list_uids(tmp_path) == ["x", "y"]
    assert layout.list_uids(tmp_path, "input") == []


def test_rig_complete_needs_views_depth_and_meta(tmp_path):
    d = tmp_path / "target" / "u"
    d.mkdir(parents=True)
    for i in range(3):
        (d / layout.view_name(i)).write_bytes(b"x")
    assert not layout.rig_complete(d, 3)
    layout.write_meta(d / "meta.pkl", make_rig(n_views=3))
    assert layout.rig_complete(d, 3, depth=False) and not layout.rig_complete(d, 3)
    for i in range(3):
        (d / layout.depth_name(i)).write_bytes(b"x")
    assert layout.rig_complete(d, 3) and layout.view_count(d) == 3
