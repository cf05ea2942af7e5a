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


# ---------------------------------------------------------------------------------------------- EMA
def test_package_initialiser_only_re_exports():
    """The logic lives in named modules; ``syncdreamer.checkpoints.<name>`` keeps working through re-exports."""
    import syncdreamer.checkpoints as pkg
    from syncdreamer.checkpoints import official, ours, safe_load

    assert pkg.load_model is ours.load_model and pkg.read_checkpoint is safe_load.read_checkpoint
    assert pkg.load_official_checkpoint is official.load_official_checkpoint
    assert pkg.CheckpointError is safe_load.CheckpointError
    source = pathlib.Path(pkg.__file__).read_text()
    assert "\ndef " not in source and "\nclass " not in source


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """A 2-step train.py run of the tiny model with an EMA (decay 0.5, lr 1e-2 so that EMA and raw differ)."""
    from test_datamodule import make_fake_renders
    from test_train_run import compose_cfg, tiny_overrides
    from syncdreamer.data import layout
    from syncdreamer.systems import train

    data = tmp_path_factory.mktemp("ema_renders")
    uids = make_fake_renders(data, 3, 64)
    layout.write_uid_list(data / "train.txt", uids[:2])
    layout.write_uid_list(data / "val.txt", uids[2:])
    run = tmp_path_factory.mktemp("ema_run")
    train(compose_cfg(tiny_overrides(run, data, steps=2, **{"system.ema.decay": 0.5, "system.optimizer.lr": 0.01,
                                                             "system.optimizer.warmup_steps": 0})))
    return run / "run" / "checkpoints" / "last.ckpt"


def _manual_weights(ckpt_path, use_ema: bool) -> dict:
    """The expected parameters, assembled by hand from the raw checkpoint dict (not through load_model)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if use_ema:
        sd.update(ckpt["ema"]["shadow"])
    return sd


def test_load_model_takes_the_ema_weights_by_default(ema_checkpoint):
    from syncdreamer.systems import load_model_from_checkpoint

    ema_model = load_model(ema_checkpoint)
    raw_model = load_model(ema_checkpoint, use_ema=False)
    assert ema_model.checkpoint_info["weights"] == "ema" and raw_model.checkpoint_info["weights"] == "raw"
    assert ema_model.checkpoint_info["ema_available"] and ema_model.checkpoint_info["global_step"] == 2
    for model, use_ema in ((ema_model, True), (raw_model, False)):
        expected = _manual_weights(ema_checkpoint, use_ema)
        got = model.state_dict()
        assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in expected.items())
    shadow = torch.load(ema_checkpoint, map_location="cpu", weights_only=False)["ema"]["shadow"]
    differ = [k for k in shadow if not torch.equal(ema_model.state_dict()[k], raw_model.state_dict()[k])]
    assert len(differ) > len(shadow) // 2  # the EMA really is another set of weights
    # training resume / evaluation go through the same loader
    resumed, config = load_model_from_checkpoint(ema_checkpoint)
    assert config["model"]["volume_resolution"] == 8
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in ema_model.state_dict().items())
    raw_again, _ = load_model_from_checkpoint(ema_checkpoint, use_ema=False)
    assert all(torch.equal(raw_again.state_dict()[k], v) for k, v in raw_model.state_dict().items())


def test_generate_cli_samples_with_the_ema_weights(ema_checkpoint, tmp_path):
    """generate.py's views equal those sampled by hand from the EMA weights, and differ from the raw weights'."""
    import json

    import numpy as np
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from syncdreamer.pipelines import generate as gen

    picture = np.full((64, 64, 4), 0, np.uint8)
    picture[16:52, 20:44] = (200, 60, 40, 255)
    src = tmp_path / "obj.png"
    Image.fromarray(picture).save(src)
    overrides = [f"checkpoint={ema_checkpoint}", f"input={src}", "elevation=20", "sample_steps=2", "device=cpu",
                 "precision=fp32",
                 f"output_dir={tmp_path / 'out'}"]
    with initialize_config_dir(str(pathlib.Path(gen.__file__).parents[3] / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=overrides)
    folder, = gen.run(cfg)
    cli_views = np.stack([np.asarray(Image.open(folder / f"{i:03d}.png")) for i in range(16)])
    assert json.loads((folder / "cameras.json").read_text())["model_weights"]["weights"] == "ema"

    def by_hand(use_ema):
        model = build_model(torch.load(ema_checkpoint, map_location="cpu", weights_only=False)["config"]["model"])
        model.load_state_dict(_manual_weights(ema_checkpoint, use_ema))
        item, = gen.collect_inputs(cfg, int(model.image_size), torch.device("cpu"))
        views = gen.generate_views(model.eval(), gen.build_sampler(cfg.sampler, model), item.image, 20.0, 1,
                                   int(cfg.seed), torch.device("cpu"))
        return gen.to_uint8(views)[0]

    assert np.array_equal(cli_views, by_hand(True))
    assert np.abs(cli_views.astype(int) - by_hand(False)).max() > 0
