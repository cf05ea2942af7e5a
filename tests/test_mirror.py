"""Mirror augmentation (``data.mirror_prob``): a mirrored item is exactly what the rig sees of the mirrored object
(checked by rendering both), the image, latent-cache and shard paths agree, and bad settings are one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_datamodule import N, assert_latent_item_encodes, decode_view, make_fake_renders, tiny_encoder_model
from syncdreamer import cameras
from syncdreamer.data import layout
from syncdreamer.data.dataset import (DataError, RenderedObjectsDataset, check_mirror_prob, draw_mirror,
                                      object_item, target_order)


def test_mirrored_target_order_runs_the_other_way_round():
    assert target_order(3, 8) == [3, 4, 5, 6, 7, 0, 1, 2]
    assert target_order(3, 8, mirror=True) == [3, 2, 1, 0, 7, 6, 5, 4]


def _asymmetric_mesh():
    """An L of two coloured boxes plus a small off-axis cube: no mirror symmetry for any camera plane."""
    import trimesh

    parts = [(trimesh.creation.box((0.8, 0.2, 0.2)), (0.0, 0.0, 0.0), (220, 40, 40)),
             (trimesh.creation.box((0.2, 0.5, 0.2)), (0.3, 0.35, 0.0), (40, 200, 60)),
             (trimesh.creation.box((0.15, 0.15, 0.3)), (-0.25, -0.1, 0.2), (30, 60, 230))]
    meshes = []
    for m, offset, colour in parts:
        m.apply_translation(offset)
        m.visual.face_colors = np.array([*colour, 255], np.uint8)
        meshes.append(m)
    return trimesh.util.concatenate(meshes)


def test_mirrored_item_is_what_the_rig_sees_of_the_mirrored_object():
    """Render an asymmetric object and its reflection in the vertical plane through input camera s (CPU
    rasteriser, the data set's cameras): the mirrored item of the object equals the plain item of the
    reflection, target for target and the input too (input rig at another elevation)."""
    from syncdreamer.data.raster import rasterize

    size, s = 48, 5
    focal = cameras.focal_from_lens(35.0, 32.0, size)
    target_rig = cameras.make_rig(N, 30.0, 1.5, size, focal)
    input_rig = cameras.make_rig(N, 10.0, 1.5, size, focal)
    mesh = _asymmetric_mesh()
    a = target_rig.azimuths[s]
    normal = np.array([-np.sin(a), np.cos(a), 0.0])  # the plane holds the z axis and camera s
    mirrored = mesh.copy()
    mirrored.vertices = mesh.vertices - 2.0 * (mesh.vertices @ normal)[:, None] * normal[None]

    def reader(m):
        views = {rig: [rasterize(m, p, K, size)[0] for p, K in zip(r.poses, r.Ks)]
                 for rig, r in (("target", target_rig), ("input", input_rig))}
        return lambda rig, i: views[rig][i]

    flipped = object_item("x", s, N, size, reader(mesh), input_rig.elevations, mirror=True)
    reference = object_item("x", s, N, size, reader(mirrored), input_rig.elevations)
    plain = object_item("x", s, N, size, reader(mesh), input_rig.elevations)
    for key in ("target_image", "input_image"):
        err = (flipped[key] - reference[key]).abs()
        assert err.mean() < 2e-3 and (err > 0.1).float().mean() < 2e-3, (key, err.mean())  # edge pixels at most
        assert (plain[key] - reference[key]).abs().mean() > 20 * err.mean()  # the object is not symmetric
    assert flipped["input_elevation"] == reference["input_elevation"]


def test_image_dataset_mirrors_with_its_probability(tmp_path):
    root = tmp_path / "renders"
    uids = make_fake_renders(root, 2, 32)
    ds = RenderedObjectsDataset(root, uids, N, 32, input_index=4, mirror_prob=1.0)
    item = ds[1]
    for k in range(N):  # fake views encode their index in R (a centred square: flip-invariant)
        assert decode_view(item["target_image"][k]) == (10 * ((4 - k) % N), 20, 0)
    assert decode_view(item["input_image"]) == (40, 20, 200)
    torch.manual_seed(0)
    draws = [draw_mirror(0.25) for _ in range(2000)]
    assert 0.22 < np.mean(draws) < 0.28
    state = torch.get_rng_state()
    assert not draw_mirror(0.0) and torch.equal(state, torch.get_rng_state())  # off: the official RNG stream
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(DataError, match="mirror_prob"):
            check_mirror_prob(bad)


def _mark_left_edge(root: Path) -> None:
    """Give every fake view a bar on its left so that a left-right flip changes it."""
    for png in root.glob("*/*/*.png"):
        img = np.asarray(Image.open(png)).copy()
        img[4:-4, 1:4] = (250, 250, 0, 255)
        Image.fromarray(img).save(png)


def test_mirrored_latents_encode_the_flipped_images(tmp_path):
    """The cache encodes the flipped views (the VAE is not flip-equivariant), its mirrored item equals the
    encoding of the image dataset's mirrored item, a cache without flips is refused for mirror_prob > 0, and
    the data module keeps the two caches in different folders."""
    from syncdreamer.data.latent_cache import LatentCacheDataset, build_latent_cache, cache_key, latent_item

    root = tmp_path / "renders64"
    uids = make_fake_renders(root, 1, 64)
    _mark_left_edge(root)
    model = tiny_encoder_model()
    assert cache_key(model, 64, N) != cache_key(model, 64, N, mirror=True)
    build_latent_cache(model, root, uids, tmp_path / "mirror", N, 64, mirror=True)
    item = LatentCacheDataset(tmp_path / "mirror", uids, N, input_index=3, mirror_prob=1.0)[0]
    images = RenderedObjectsDataset(root, uids, N, 64, input_index=3, mirror_prob=1.0)[0]
    inp = assert_latent_item_encodes(item, model, images)
    plain = LatentCacheDataset(tmp_path / "mirror", uids, N, input_index=3)[0]  # the same cache, unmirrored
    assert (plain["input_latent_mean"] - inp).abs().mean() > 0.01
    build_latent_cache(model, root, uids, tmp_path / "plain", N, 64)
    with pytest.raises(DataError, match="holds no mirrored views"):
        LatentCacheDataset(tmp_path / "plain", uids, N, mirror_prob=0.5)
    from safetensors.torch import load_file

    with pytest.raises(DataError, match="holds no mirrored views"):  # e.g. latent shards packed from such a cache
        latent_item(uids[0], load_file(str(tmp_path / "plain" / f"{uids[0]}.safetensors")), 0, N, mirror=True)
    from syncdreamer.data.shards import ShardStream, pack_shards

    for cache in ("plain", "mirror"):  # latent shards say which cache they came from: refused before training
        pack_shards(root, uids, tmp_path / f"shards_{cache}", N, 64, 1, kind="latents", cache_dir=tmp_path / cache,
                    progress=False)
    with pytest.raises(DataError, match="without mirrored views but data.mirror_prob=0.5"):
        ShardStream(tmp_path / "shards_plain", N, 64, batch_size=1, mirror_prob=0.5)
    ShardStream(tmp_path / "shards_plain", N, 64, batch_size=1)
    stream = ShardStream(tmp_path / "shards_mirror", N, 64, batch_size=1, input_index=3, mirror_prob=1.0)
    assert torch.equal(next(iter(stream))["input_latent_mean"], item["input_latent_mean"])
    from syncdreamer.data.datamodule import SyncDreamerDataModule

    def module(mirror_prob):  # training from the plain pack, with a latent cache configured
        return SyncDreamerDataModule(root, image_size=64, batch_size=1, num_workers=0, format="shards",
                                     shards=str(tmp_path / "shards_plain"), latent_cache=str(tmp_path / "unused"),
                                     mirror_prob=mirror_prob)

    with pytest.raises(DataError, match="without mirrored views but data.mirror_prob=0.5"):
        module(0.5).check()  # the run's first check, before any model or VAE fit
    dm = module(0.0)
    dm.check()
    dm.attach_encoder(model)
    dm.prepare_data()  # the pack holds the training items: no latent cache is encoded for it
    assert not (tmp_path / "unused").exists()
