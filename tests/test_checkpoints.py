"""Checkpoint loading: official layout (strict), Zero123 init, our own checkpoints, safety and clear errors."""
import os
import pathlib

import pytest
import torch

from golden_utils import Golden, fixtures_of_kind, assert_close
from syncdreamer.checkpoints import (CheckpointError, build_model, init_from_zero123, load_model,
                                     load_official_checkpoint, read_checkpoint)
from test_config import model_cfg


def _golden(kind):
    dirs = fixtures_of_kind(kind)
    return Golden(dirs[0] if dirs else None)


@pytest.fixture(scope="module")
def official_tiny_sd():
    """A complete tiny checkpoint in the official key layout, assembled from the three golden fixtures."""
    sd = {}
    for kind in ("denoiser", "vae", "clip"):
        sd.update(_golden(kind).weights)
    return sd


@pytest.fixture(scope="module")
def tiny_cfg():
    return model_cfg("syncdreamer_tiny")


def _lightning_ckpt(path, sd, **extra):
    # Lightning 1.9 checkpoints carry non-tensor objects such as paths: they must not block loading
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 80000, "hparams_path": pathlib.PosixPath("/x/y"),
                **extra}, path)
    return path


def test_official_checkpoint_loads_strictly_and_computes_the_golden_vae(tmp_path, official_tiny_sd, tiny_cfg):
    path = _lightning_ckpt(tmp_path / "syncdreamer-pretrain.ckpt", official_tiny_sd)
    model = build_model(tiny_cfg)
    info = load_official_checkpoint(model, path)
    assert info["loaded"] == len(model.state_dict()) and not info["missing"] and not info["unexpected"]
    vae = _golden("vae")
    T = vae.tensors
    with torch.no_grad():
        latent = model.encode_first_stage(T["input_image"], noise=T["posterior_noise"])
    assert_close(latent, T["latent_scaled_sample"], 1e-4, 1e-4, "latent_scaled_sample")
    clip = _golden("clip")
    with torch.no_grad():
        emb = model.encode_clip(clip.tensors["input_image"])
    assert_close(emb, clip.tensors["clip_embedding"], 1e-4, 1e-4, "clip_embedding")
    # buffers come from the file
    assert torch.equal(model.poses, official_tiny_sd["poses"])


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, official_tiny_sd, tiny_cfg):
    model = build_model(tiny_cfg)
    sd = dict(official_tiny_sd)
    sd.pop("model.diffusion_model.out.2.bias")
    sd["model.diffusion_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: model\.diffusion_model\.out\.2\.bias.*unexpected keys: "
                                              r"model\.diffusion_model\.extra\.weight"):
        load_official_checkpoint(model, _lightning_ckpt(tmp_path / "a.ckpt", sd))
    sd = dict(official_tiny_sd)
    sd["cc_projection.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"shape mismatches: cc_projection\.bias \(5,\)"):
        load_official_checkpoint(model, _lightning_ckpt(tmp_path / "b.ckpt", sd))


def test_bad_paths_and_files_give_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(junk)
    assert "\n" not in str(err.value)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_checkpoint(tmp_path / "list.pt")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_malicious_checkpoint_cannot_run_code(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Evil(target)}, path)
    with pytest.raises(CheckpointError, match=r"refused.*posix\.system"):
        read_checkpoint(path)
    assert not target.exists()


def test_init_from_zero123_loads_base_parts_and_keeps_new_modules(tmp_path, official_tiny_sd, tiny_cfg):
    new = ("model.diffusion_model.middle_conditions.", "model.diffusion_model.output_conditions.",
           "spatial_volume.", "time_embed.", "clip_image_encoder.")
    z123 = {k: v for k, v in official_tiny_sd.items() if not k.startswith(new) and k not in ("poses", "Ks", "azimuth")}
    z123["cond_stage_model.transformer.weight"] = torch.zeros(3)  # Zero123's own CLIP: ignored
    # a 4-channel input conv is zero-padded to 8 channels
    key = "model.diffusion_model.input_blocks.0.0.weight"
    z123[key] = official_tiny_sd[key][:, :4].clone()
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(new)}
    info = init_from_zero123(model, _lightning_ckpt(tmp_path / "zero123-xl.ckpt", z123))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())
    assert torch.equal(sd[key][:, :4], official_tiny_sd[key][:, :4]) and sd[key][:, 4:].abs().sum() == 0
    assert torch.equal(sd["cc_projection.weight"], official_tiny_sd["cc_projection.weight"])
    assert info["loaded"] > 0
    # a Zero123 file without the UNet is an error that names what is missing
    bad = {k: v for k, v in z123.items() if not k.startswith("model.diffusion_model.out.")}
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model\.out\.0\.bias"):
        init_from_zero123(build_model(tiny_cfg), _lightning_ckpt(tmp_path / "bad.ckpt", bad))


def test_load_model_reads_official_and_our_checkpoints(tmp_path, official_tiny_sd, tiny_cfg):
    official = _lightning_ckpt(tmp_path / "official.ckpt", official_tiny_sd)
    m1 = load_model(official, tiny_cfg)
    # ours: a Lightning checkpoint of a system holding the network as `model`, with the resolved config inside
    ours = tmp_path / "ours.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in m1.state_dict().items()},
                "config": {"model": tiny_cfg}, "global_step": 7}, ours)
    m2 = load_model(ours, model_cfg=None)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    # an official checkpoint with the wrong config is one clear error
    with pytest.raises(CheckpointError, match="does not match the model config"):
        load_model(official, {**tiny_cfg, "unet": {**tiny_cfg["unet"], "model_channels": 64}})
    with pytest.raises(CheckpointError, match="holds no model config"):
        load_model(official, None)


def test_lightning_checkpoints_with_omegaconf_hparams_load_without_running_their_classes(tmp_path):
    from omegaconf import OmegaConf

    path = tmp_path / "pl.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "hyper_parameters": OmegaConf.create({"a": {"b": [1, 2]}}),
                "callbacks": {"ModelCheckpoint": {"best": pathlib.PosixPath("/x")}}}, path)
    sd, extras = read_checkpoint(path)
    assert torch.equal(sd["w"], torch.arange(3.0))
    assert type(extras["hyper_parameters"]).__name__.startswith("Stub[")  # an inert stand-in, not omegaconf's class
