"""The data module: rotated target order, input view / elevation, compositing, uid lists, validation inputs,
latent cache, and the errors for unusable data."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from syncdreamer import cameras
from syncdreamer.data import layout
from syncdreamer.data.datamodule import SyncDreamerDataModule
from syncdreamer.data.manifest import read_manifest
from syncdreamer.data.dataset import (DataError, RenderedObjectsDataset, ValidationImageFolder,
                                      parse_validation_name)

N = 16


def view_rgba(size: int, rig: str, uid_index: int, view: int) -> np.ndarray:
    """A view whose colour encodes (rig, object, view): R = 10 * view, G = 20 * object, B = 0 (target) or 200
    (input); a centred opaque square on a transparent background (so compositing on white shows)."""
    img = np.zeros((size, size, 4), np.uint8)
    q = size // 4
    img[q:-q, q:-q] = (10 * view, 20 * uid_index, 0 if rig == "target" else 200, 255)
    return img


def make_fake_renders(root: Path, n_objects: int = 3, size: int = 32, views: int = N, seed: int = 0,
                      uid_prefix: str = "obj") -> list[str]:
    """Write the official layout (no Blender): target/<uid>/NNN.png, input/<uid>/NNN.png + meta.pkl."""
    rng = np.random.default_rng(seed)
    uids = []
    focal = cameras.focal_from_lens(35.0, 32.0, size)
    for k in range(n_objects):
        uid = f"{uid_prefix}{k:02d}"
        uids.append(uid)
        for rig in layout.RIGS:
            for i in range(views):
                path = layout.view_path(root, rig, uid, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(view_rgba(size, rig, k, i)).save(path)
        elev = rng.uniform(-10, 40, size=views)
        layout.write_meta(layout.meta_path(root, "input", uid), cameras.make_rig(views, elev, 1.5, size, focal))
        layout.write_meta(layout.meta_path(root, "target", uid), cameras.make_rig(views, 30.0, 1.5, size, focal))
    return uids


def decode_view(img: torch.Tensor) -> tuple[int, int, int]:
    """(3, S, S) in [-1, 1] -> the (R, G, B) uint8 colour at the image centre."""
    c = ((img[:, img.shape[1] // 2, img.shape[2] // 2] + 1) * 127.5).round().to(torch.int64)
    return tuple(c.tolist())


@pytest.fixture()
def renders(tmp_path):
    root = tmp_path / "renders"
    uids = make_fake_renders(root, 3, 32)
    return root, uids


def test_item_rotates_targets_and_reads_input_view_and_elevation(renders):
    root, uids = renders
    ds = RenderedObjectsDataset(root, uids, N, 32)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        item = ds[1]
        s = int(item["input_index"])
        seen.add(s)
        assert item["target_image"].shape == (N, 3, 32, 32) and item["input_image"].shape == (3, 32, 32)
        # slot k holds target view (s + k) mod 16: R channel = 10 * view
        for k in range(N):
            assert decode_view(item["target_image"][k]) == (10 * ((s + k) % N), 20, 0)
        assert decode_view(item["input_image"]) == (10 * s, 20, 200)
        meta = layout.read_meta(layout.meta_path(root, "input", uids[1]))
        assert item["input_elevation"].item() == pytest.approx(meta["elevations"][s], abs=1e-6)
        assert item["input_elevation"].dtype == torch.float32
    assert len(seen) > 3  # the input index is random


def test_composite_on_white_and_range(renders):
    root, uids = renders
    item = RenderedObjectsDataset(root, uids, N, 32, input_index=0)[0]
    x = item["target_image"]
    assert x.min() >= -1 and x.max() <= 1
    assert torch.all(x[:, :, 0, 0] == 1.0)  # transparent corner -> white
    assert int(item["input_index"]) == 0


def test_resize_to_image_size(renders):
    root, uids = renders
    item = RenderedObjectsDataset(root, uids, N, 16)[0]
    assert item["target_image"].shape == (N, 3, 16, 16) and item["input_image"].shape == (3, 16, 16)


def test_datamodule_batches_and_uid_lists(renders):
    root, uids = renders
    layout.write_uid_list(root / "train.txt", uids[:2])
    layout.write_uid_list(root / "val.pkl", uids[2:])
    dm = SyncDreamerDataModule(root, train_list="train.txt", val_list="val.pkl", image_size=32, batch_size=2,
                               val_batch_size=1, num_workers=0, pin_memory=False)
    dm.check()
    dm.setup("fit")
    assert dm.train_uids == uids[:2] and dm.val_uids == uids[2:]
    batch = next(iter(dm.train_dataloader()))
    assert batch["target_image"].shape == (2, N, 3, 32, 32)
    assert batch["input_image"].shape == (2, 3, 32, 32)
    assert batch["input_elevation"].shape == (2,)
    vb = next(iter(dm.val_dataloader()))  # held-out objects: input view 0, with targets
    assert vb["uid"] == [uids[2]] and int(vb["input_index"][0]) == 0 and "target_image" in vb


def test_all_objects_minus_validation_when_no_train_list(renders):
    root, uids = renders
    layout.write_uid_list(root / "val.txt", uids[:1])
    dm = SyncDreamerDataModule(root, val_list="val.txt", image_size=32, batch_size=1, num_workers=0)
    dm.setup("fit")
    assert dm.train_uids == uids[1:]


def test_incomplete_objects_are_skipped(renders):
    root, uids = renders
    layout.view_path(root, "target", uids[0], 5).unlink()
    layout.meta_path(root, "input", uids[1]).unlink()
    layout.meta_path(root, "input", uids[1]).with_suffix(".json").unlink()
    dm = SyncDreamerDataModule(root, image_size=32, batch_size=1, num_workers=0)
    dm.setup("fit")  # no manifest yet: rank 0 indexes the folder once
    assert dm.train_uids == [uids[2]]
    rows = {r["uid"]: r for r in read_manifest(root).to_pylist()}
    assert rows[uids[0]]["status"] == "incomplete" and "target: 1 of 16 views missing (e.g. 005.png)" in rows[uids[0]]["reason"]
    assert rows[uids[1]]["status"] == "incomplete" and "input: meta.pkl missing" in rows[uids[1]]["reason"]
    assert rows[uids[2]]["status"] == "complete" and rows[uids[2]]["image_size"] == 32 and rows[uids[2]]["views"] == 16


def test_missing_folder_is_one_clear_error(tmp_path):
    dm = SyncDreamerDataModule(tmp_path / "nope", image_size=32, batch_size=1, num_workers=0)
    with pytest.raises(DataError, match="does not exist"):
        dm.check()


def test_no_valid_object_is_one_clear_error(tmp_path):
    (tmp_path / "target" / "a").mkdir(parents=True)
    dm = SyncDreamerDataModule(tmp_path, image_size=32, batch_size=1, num_workers=0)
    with pytest.raises(DataError, match="no valid training object"):
        dm.check()


def test_missing_uid_list_is_one_clear_error(renders):
    root, _ = renders
    dm = SyncDreamerDataModule(root, train_list="missing.pkl", image_size=32, batch_size=1, num_workers=0)
    with pytest.raises(DataError, match="uid list"):
        dm.check()


def test_validation_folder(tmp_path):
    folder = tmp_path / "validation_set"
    folder.mkdir()
    Image.fromarray(view_rgba(40, "input", 1, 3)).save(folder / "aircraft-30.png")
    Image.fromarray(view_rgba(40, "input", 2, 4)).save(folder / "teddy-bear-5.5.png")
    ds = ValidationImageFolder(folder, 32)
    assert len(ds) == 2
    item = ds[1]
    assert item["uid"] == "teddy-bear" and item["input_image"].shape == (3, 32, 32)
    assert item["input_elevation"].item() == pytest.approx(math.radians(5.5))
    assert parse_validation_name("x/chair--10.png") == ("chair", -10.0)
    with pytest.raises(DataError, match="<name>-<elevation deg>"):
        parse_validation_name("chair.png")
    dm = SyncDreamerDataModule(folder.parent / "missing", validation_dir=str(folder), image_size=32,
                               batch_size=1, num_workers=0)
    with pytest.raises(DataError):
        dm.check()  # training data missing


def tiny_encoder_model():
    """The tiny SyncDreamer at 64 px (seed 0, random weights): its VAE and CLIP build latent caches in tests."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).parents[1] / "conf" / "model"
    cfg = OmegaConf.load(conf / "syncdreamer_tiny.yaml")
    cfg.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.load(conf / "syncdreamer.yaml"), cfg,
                          {"image_size": 64, "volume_resolution": 8, "frustum_depth": 8, "focal": None})
    torch.manual_seed(0)
    return instantiate(cfg).eval()


def assert_latent_item_encodes(item: dict, model, images: dict) -> torch.Tensor:
    """A latent-cache item holds the posterior means (x scale) and CLIP embedding of the image item ``images``
    (same input index); returns the input's latent mean."""
    with torch.no_grad():
        mean = model.encode_first_stage(images["target_image"], sample=False)
        inp = model.encode_first_stage(images["input_image"][None], sample=False)[0]
        clip = model.encode_clip(images["input_image"][None])[0]
    torch.testing.assert_close(item["target_latent_mean"], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["input_latent_mean"], inp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["clip_embed"], clip, atol=1e-5, rtol=1e-5)
    return inp


def test_latent_cache_roundtrip(renders, tmp_path):
    from syncdreamer.data.latent_cache import LatentCacheDataset, build_latent_cache

    root = tmp_path / "renders64"
    uids = make_fake_renders(root, 2, 64)
    model = tiny_encoder_model()
    stats = build_latent_cache(model, root, uids[:1], tmp_path / "cache", N, 64)
    assert stats == {"encoded": 1, "cached": 0}
    assert build_latent_cache(model, root, uids, tmp_path / "cache", N, 64) == {"encoded": 1, "cached": 1}
    ds = LatentCacheDataset(tmp_path / "cache", uids, N, input_index=3)
    item = ds[0]
    assert item["target_latent_mean"].shape == (N, 4, 8, 8) and item["input_latent_mean"].shape == (4, 8, 8)
    assert item["clip_embed"].shape == (1, 768)
    # slot 0 is target view 3, the input is input view 3; means equal the VAE posterior mean x scale
    imgs = RenderedObjectsDataset(root, uids, N, 64, input_index=3)[0]
    assert_latent_item_encodes(item, model, imgs)
    meta = layout.read_meta(layout.meta_path(root, "input", uids[0]))
    assert item["input_elevation"].item() == pytest.approx(meta["elevations"][3], abs=1e-6)
    with pytest.raises(DataError, match="misses"):
        LatentCacheDataset(tmp_path / "cache", uids + ["other"], N)
