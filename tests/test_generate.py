"""End-to-end tests of generate.py with a micro random SyncDreamer on CPU (and a tiny random SD pipeline)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# A micro SyncDreamer (64 px, 8^3 volume, 2-level-deep nets): the structure of the official model with the
# smallest numbers the code allows, so that a 2-step run of 16 views takes about a second on CPU.
MICRO_MODEL = {
    "_target_": "syncdreamer.models.SyncDreamer",
    "view_num": 16, "image_size": 64, "volume_resolution": 8, "frustum_depth": 8, "elevation_deg": 30.0,
    "camera_distance": 1.5, "focal": 70.0, "latent_channels": 4, "clip_dim": 32, "viewpoint_dim": 4,
    "time_embed_dim": 32, "scale_factor": 0.18215, "use_checkpoint": False, "attention_backend": "sdpa",
    "unet": {"model_channels": 32, "channel_mult": [1, 2, 2, 2], "num_res_blocks": 1,
             "attention_resolutions": [4, 2, 1], "num_heads": 2, "depth_attention_heads": 2,
             "depth_attention_blocks": [2, 3, 4, 5, 6, 7]},
    "volume": {"encoder_dim": 8, "spatial_dims": [8, 16, 16, 16], "frustum_dims": [8, 16, 16, 16]},
    "vae": {"ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1},
    "clip": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "heads": 2, "output_dim": 32,
             "transformer_width": 32, "vocab_size": 10, "context_length": 4},
}


def build_micro_model(seed: int = 0, **overrides):
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    return instantiate({**MICRO_MODEL, **overrides}, _convert_="all").eval()


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """(config search dir with model/micro.yaml, checkpoint path) for the micro model."""
    root = tmp_path_factory.mktemp("micro")
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "model" / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    ckpt = root / "micro.ckpt"
    torch.save({"state_dict": build_micro_model().state_dict()}, ckpt)
    return root / "conf", ckpt


def rgba_picture(size=96, with_alpha=True, empty=False) -> np.ndarray:
    """A red disc on a green square on a white (or transparent) background."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 4), 255, np.uint8)
    img[..., 3] = 0
    if not empty:
        obj = (np.abs(xx - size * 0.5) < size * 0.22) & (np.abs(yy - size * 0.55) < size * 0.3)
        disc = (xx - size * 0.5) ** 2 + (yy - size * 0.4) ** 2 < (size * 0.15) ** 2
        img[obj] = (40, 160, 60, 255)
        img[disc] = (200, 30, 30, 255)
    if not with_alpha:
        rgb = img[..., :3].copy()
        rgb[img[..., 3] == 0] = 255
        return rgb
    return img


def overrides(micro, out, *extra):
    conf_dir, ckpt = micro
    return [f"hydra.searchpath=[file://{conf_dir}]", "model=micro", f"checkpoint={ckpt}", f"output_dir={out}",
            "sample_steps=2", "device=cpu", "batch_view_num=8", *extra]


def run_inprocess(args):
    """Compose conf/generate.yaml with overrides and run the pipeline in this process -> (code, folders)."""
    from hydra import compose, initialize_config_dir

    from syncdreamer.pipelines.generate import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=list(args))
    return run(cfg)


def run_subprocess(args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_view_set(folder: Path, n=16, size=64):
    for i in range(n):
        im = Image.open(folder / f"{i:03d}.png")
        assert im.size == (size, size) and im.mode == "RGB"
    strip = Image.open(folder / "strip.png")
    assert strip.size == (n * size, size)
    gif = Image.open(folder / "turntable.gif")
    assert gif.n_frames == n
    assert Image.open(folder / "input.png").mode == "RGBA"
    assert Image.open(folder / "mask.png").mode == "L"
    meta = json.loads((folder / "cameras.json").read_text())
    assert len(meta["views"]) == n
    assert np.array(meta["views"][0]["pose_w2c"]).shape == (3, 4)
    assert np.array(meta["views"][0]["K"]).shape == (3, 3)
    assert [round(v["azimuth_deg"], 3) for v in meta["views"][:3]] == [0.0, 22.5, 45.0]
    assert not list(folder.parent.glob(".*.partial"))
    return meta


# ------------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------------
def test_rgba_image_subprocess(micro, tmp_path):
    """The documented command line on an RGBA image, through the Hydra entry point."""
    src = tmp_path / "teddy.png"
    Image.fromarray(rgba_picture()).save(src)
    out = tmp_path / "out"
    res = run_subprocess(overrides(micro, out, f"input={src}", "elevation=15", "crop_size=48"))
    assert res.returncode == 0, res.stderr[-2000:]
    meta = check_view_set(out / "teddy")
    assert meta["input_view"]["elevation_deg"] == 15.0 and meta["input_view"]["source"] == "given"
    assert meta["foreground"]["method"] == "alpha"
    assert meta["seed"] == 6033 and meta["cfg_scale"] == 2.0 and meta["sample_steps"] == 2
    assert meta["sampler"] == "ddim" and meta["eta"] == 1.0
    # the framed input: object's longer side 48 px (bbox height 0.6*96 = 58 -> scale 48/58) on a 64 canvas
    alpha = np.asarray(Image.open(out / "teddy" / "input.png"))[..., 3]
    ys, xs = np.nonzero(alpha)
    assert 46 <= ys.max() - ys.min() + 1 <= 49


def test_rgb_image_opencv_fallback_and_samples(micro, tmp_path):
    src = tmp_path / "photo.jpg"
    Image.fromarray(rgba_picture(with_alpha=False)).save(src, quality=95)
    out = tmp_path / "out"
    folders = run_inprocess(overrides(micro, out, f"input={src}", "elevation=null", "sample_num=2",
                                      "sampler=dpmsolver", "elevation_estimate.method=silhouette"))
    assert [f.name for f in folders] == ["photo", "photo_s1"]
    from syncdreamer.pipelines.elevation import ElevationConfig, estimate_elevation

    for f in folders:
        meta = check_view_set(f)
        assert meta["foreground"]["method"] == "opencv"
        assert meta["sampler"] == "dpmsolver"
        assert meta["input_view"]["source"] == "estimated"
        # the estimate is the silhouette estimator's on the framed mask, with conf/generate.yaml's numbers
        # and the model's focal length (the clamp alone would keep any number in [-10, 40])

        numbers = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "generate.yaml").elevation_estimate)
        expected = estimate_elevation(np.asarray(Image.open(f / "input.png"))[..., 3] > 0,
                                      ElevationConfig(**{**numbers, "focal": MICRO_MODEL["focal"],
                                                           "method": "silhouette"}))
        assert meta["input_view"]["elevation_deg"] == expected.elevation_deg
        assert meta["input_view"]["estimate"] == pytest.approx(expected.to_json())
    assert json.loads((folders[1] / "cameras.json").read_text())["sample_index"] == 1
    # the OpenCV mask covers the object (37 x 58 px box plus disc) and not the white border
    mask = np.asarray(Image.open(folders[0] / "mask.png")) > 0
    truth = rgba_picture()[..., 3] > 0
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    # the two samples differ (independent noise), the views are not constant
    a = np.asarray(Image.open(folders[0] / "strip.png")).astype(int)
    b = np.asarray(Image.open(folders[1] / "strip.png")).astype(int)
    assert np.abs(a - b).mean() > 0.5 and a.std() > 0


def test_folder_of_two_images_is_reproducible(micro, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(rgba_picture()).save(folder / "a.png")
    Image.fromarray(rgba_picture(with_alpha=False)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image, ignored inside a folder")
    out = tmp_path / "out"
    folders = run_inprocess(overrides(micro, out, f"input={folder}", "elevation=30"))
    assert sorted(f.name for f in folders) == ["a", "b"]
    for f in folders:
        check_view_set(f)
    first = np.asarray(Image.open(out / "a" / "strip.png"))
    run_inprocess(overrides(micro, out, f"input={folder / 'a.png'}", "elevation=30"))  # same seed, overwrite
    assert np.array_equal(first, np.asarray(Image.open(out / "a" / "strip.png")))


def cylinder_picture(elevation_deg: float) -> np.ndarray:
    """RGBA (256, 256) of an upright cylinder seen by the rig camera from ``elevation_deg``."""
    from test_pipelines import silhouette

    img = np.zeros((256, 256, 4), np.uint8)
    img[silhouette(elevation_deg, 0.3, 0.6)] = (90, 90, 200, 255)
    return img


def test_default_elevation_is_the_silhouette_estimate_and_is_printed(micro, tmp_path, caplog):
    """elevation=null uses elevation_estimate.method=silhouette by default (bench/bench_elevation.py: median
    error 5.7 vs 15.0 deg for a fixed 30): a cylinder seen from 20 deg is estimated near 20 (not the 30 guess),
    and the elevation used is logged. A default back on `fixed`, or an estimate that ignores the picture, fails."""
    import logging

    from hydra import compose, initialize_config_dir

    from syncdreamer.pipelines.generate import collect_inputs

    src = tmp_path / "obj.png"
    Image.fromarray(cylinder_picture(20.0)).save(src)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=overrides(micro, tmp_path / "out", f"input={src}",
                                                                   "elevation=null"))
    assert cfg.elevation_estimate.method == "silhouette"
    with caplog.at_level(logging.INFO, logger="syncdreamer.pipelines.generate"):
        item, = collect_inputs(cfg, 64, torch.device("cpu"))
    est = item.elevation
    assert est["source"] == "estimated" and est["estimate"]["method"] == "silhouette", est
    assert abs(est["elevation_deg"] - 20.0) < 5.0, est
    assert f"obj: input elevation {est['elevation_deg']:.1f} deg (estimated)" in caplog.text
    fixed = OmegaConf.merge(cfg, {"elevation_estimate": {"method": "fixed"}})
    item, = collect_inputs(fixed, 64, torch.device("cpu"))
    assert item.elevation["elevation_deg"] == 30.0 and item.elevation["source"] == "fixed guess"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random diffusers StableDiffusionPipeline saved to a local folder (no hub access)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_sd")
    tok_dir = root / "tok"
    tok_dir.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, layers_per_block=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def test_prompt_through_tiny_stable_diffusion(micro, tiny_sd, tmp_path):
    out = tmp_path / "out"
    folders = run_inprocess(overrides(micro, out, "prompt=a teddy toy", f"text2image.model={tiny_sd}",
                                      "text2image.steps=2", "text2image.height=32", "text2image.width=32",
                                      "elevation=20", "foreground=opencv",
                                      "text2image.prompt_suffix=", "text2image.negative_prompt=",
                                      # random SD weights paint noise: seed every pixel unlike the border colour
                                      "foreground_options.color_threshold=0", "foreground_options.spread_factor=0",
                                      "foreground_options.grabcut_iters=0", "foreground_options.min_area_fraction=0"))
    assert [f.name for f in folders] == ["prompt_a_teddy_toy"]
    meta = check_view_set(folders[0])
    assert meta["source"] == "prompt: a teddy toy" and meta["foreground"]["method"] == "opencv"
    assert Image.open(folders[0] / "mask.png").size == (32, 32)


# ------------------------------------------------------------------------------------------------------
# bad input: one line, exit code != 0, no traceback, no finished-looking folder
# ------------------------------------------------------------------------------------------------------
def _assert_clean_failure(res, out, needle):
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and needle in last, err[-1500:]
    assert not out.exists() or not [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.mark.parametrize("case", ["not_an_image", "empty_mask", "elevation_out_of_range", "checkpoint_mismatch",
                                  "not_a_checkpoint"])
def test_bad_input(case, micro, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(rgba_picture()).save(good)
    out = tmp_path / "out"
    args, needle = [f"input={good}", "elevation=30"], None
    extra = []
    if case == "not_an_image":
        bad = tmp_path / "fake.png"
        bad.write_text("this is text, not a PNG")
        args, needle = [f"input={bad}", "elevation=30"], "not a readable image"
    elif case == "empty_mask":
        empty = tmp_path / "empty.png"
        Image.fromarray(rgba_picture(empty=True)).save(empty)
        args, needle = [f"input={empty}", "elevation=30"], "empty mask"
    elif case == "elevation_out_of_range":
        args, needle = [f"input={good}", "elevation=95"], "outside [-90, 90]"
    elif case == "checkpoint_mismatch":
        other = tmp_path / "other.ckpt"
        torch.save({"state_dict": build_micro_model(clip_dim=16, clip={**MICRO_MODEL["clip"], "output_dim": 16})
                    .state_dict()}, other)
        extra, needle = [f"checkpoint={other}"], "does not match"
    elif case == "not_a_checkpoint":
        other = tmp_path / "junk.ckpt"
        other.write_bytes(b"\x00junk" * 10)
        extra, needle = [f"checkpoint={other}"], "junk.ckpt"
    res = run_subprocess(overrides(micro, out, *args) + extra)
    _assert_clean_failure(res, out, needle)


def test_empty_mask_rgb_and_mixed_folder_stop_before_generation(micro, tmp_path):
    """A blank RGB picture has no foreground for OpenCV; one bad file in a folder stops the whole run."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(rgba_picture()).save(folder / "a.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(folder / "blank.png")
    out = tmp_path / "out"
    from syncdreamer.pipelines.errors import InputError

    with pytest.raises(InputError, match="blank.png: empty mask"):
        run_inprocess(overrides(micro, out, f"input={folder}", "elevation=30"))
    assert not (out / "a").exists()


def test_condition_computed_once_and_one_volume_per_step():
    """Per object: VAE encode and CLIP once; per step: one spatial volume and 16 views through the UNet."""
    from syncdreamer.diffusion.sampler import SyncDDIMSampler
    from syncdreamer.pipelines.generate import generate_views

    model = build_micro_model()
    counts = {"encode": 0, "clip": 0, "proj": 0, "volume": 0, "unet_items": 0}

    def counter(name, fn, items=False):
        def wrapped(*a, **k):
            counts[name] += a[0].shape[0] if items else 1
            return fn(*a, **k)
        return wrapped

    model.encode_first_stage = counter("encode", model.encode_first_stage)
    model.encode_clip = counter("clip", model.encode_clip)
    model.project_clip = counter("proj", model.project_clip)
    model.spatial_volume.construct_spatial_volume = counter("volume", model.spatial_volume.construct_spatial_volume)
    model.model.diffusion_model.forward = counter("unet_items", model.model.diffusion_model.forward, items=True)
    sampler = SyncDDIMSampler(model, steps=4, cfg_scale=2.0, batch_view_num=8)
    views = generate_views(model, sampler, torch.zeros(3, 64, 64), 30.0, sample_num=2, seed=1,
                           device=torch.device("cpu"))
    assert views.shape == (2, 16, 3, 64, 64)
    assert counts == {"encode": 1, "clip": 1, "proj": 1, "volume": 4, "unet_items": 4 * 2 * 2 * 16}


def test_unsupported_step_count_is_a_clean_error(micro, tmp_path):
    from syncdreamer.pipelines.errors import InputError

    src = tmp_path / "a.png"
    Image.fromarray(rgba_picture()).save(src)
    with pytest.raises(InputError, match="sample_steps=0"):
        run_inprocess(overrides(micro, tmp_path / "out", f"input={src}", "elevation=30") + ["sample_steps=0"])


def test_bf16_autocast_on_cpu():
    from syncdreamer.diffusion.sampler import SyncDDIMSampler
    from syncdreamer.pipelines.generate import generate_views

    model = build_micro_model()
    views = generate_views(model, SyncDDIMSampler(model, steps=2, batch_view_num=8), torch.zeros(3, 64, 64), 30.0,
                           1, 0, torch.device("cpu"), precision="bf16")
    assert views.dtype == torch.float32 and views.shape == (1, 16, 3, 64, 64) and torch.isfinite(views).all()


@pytest.mark.slow
def test_compiled_unet_matches_eager():
    from syncdreamer.diffusion.sampler import SyncDDIMSampler
    from syncdreamer.pipelines.generate import generate_views, maybe_compile

    model = build_micro_model()
    sampler = SyncDDIMSampler(model, steps=2, eta=0.0, batch_view_num=16)
    args = (torch.zeros(3, 64, 64), 30.0, 1, 0, torch.device("cpu"))
    eager = generate_views(model, sampler, *args)
    compiled = generate_views(maybe_compile(model, True), sampler, *args)
    assert torch.allclose(eager, compiled, atol=1e-3)
