"""Image or text in, 16 consistent views out: the library behind ``generate.py``.

Flow per input: load (or synthesise from a prompt) -> foreground extraction -> official framing
(:mod:`.preprocess`) -> elevation (given, or estimated by :mod:`.elevation`) -> condition computed once ->
synchronized sampler (``conf/sampler/*.yaml``) -> VAE decode -> files.

Output layout (one self-contained folder per input and sample)::

    <output_dir>/<name>/            sample 0 (``<name>`` = the input file's stem, or ``prompt_<slug>``)
    <output_dir>/<name>_s<k>/       sample k >= 1 (when ``sample_num`` > 1)
        000.png ... 015.png         the N views (RGB, image_size^2), view i at azimuth i * 360 / N
        strip.png                   the N views left to right (image_size x N * image_size; 256 x 4096)
        turntable.gif               the N views as a looping animation
        input.png                   the framed RGBA picture the model was conditioned on
        mask.png                    the foreground mask at the input's own resolution
        cameras.json                rig (w2c OpenCV poses, K, azimuths, elevation), input elevation (given or
                                    estimated), foreground method, seed, cfg, steps, sampler
        transforms.json             the same cameras for nerfstudio / instant-ngp (OpenGL camera-to-world)
        colmap/                     the same cameras as a COLMAP text model (cameras.txt, images.txt, points3D.txt)

Every folder is written under ``.<name>.partial`` and renamed when complete, so a failed run never leaves a
folder that looks finished. All inputs are loaded and checked (image readable, foreground found, elevation
in range) before the model is loaded, so one bad input stops the run before anything is generated.

Reproducibility: each input uses a generator seeded with ``seed`` (the same for every input, so the result
for an input does not depend on the other inputs of the run); the ``sample_num`` samples of an input are one
batch, so they depend on ``(seed, sample_num, device)``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import write_camera_exports
from ..devices import DeviceError, pick_device
from .elevation import METHODS as ELEVATION_METHODS
from .elevation import ElevationConfig, estimate_elevation
from .errors import InputError
from .foreground import ForegroundConfig, extract_foreground
from .preprocess import list_inputs, load_image, prepare_input
from ..checkpoints import CheckpointError
from ..config import dataclass_from
from ..checkpoints import load_model as _project_load_model
from .text2image import TextToImageConfig, load_text2image, text_to_image

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
USER_ERRORS = (InputError, CheckpointError)


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class PreparedInput:
    """One conditioning picture, ready for the model.

    ``image`` (3, S, S) in [-1, 1] composited on white; ``framed`` (S, S, 4) uint8; ``mask`` (H, W) bool at the
    source resolution; ``elevation`` dict with ``elevation_deg`` and ``source`` (``given`` | ``estimated``).
    """

    name: str
    source: str
    image: torch.Tensor
    framed: np.ndarray
    mask: np.ndarray
    foreground: str
    elevation: dict = field(default_factory=dict)
    rgba: np.ndarray | None = None   # the picture with the foreground mask as alpha, source resolution


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()[:length] or "prompt"


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def validate_elevation(elevation, limits=(-90.0, 90.0)) -> float | None:
    """User elevation in degrees (or None) -> float; InputError outside ``limits``."""
    if elevation is None:
        return None
    try:
        value = float(elevation)
    except (TypeError, ValueError):
        raise InputError(f"elevation must be a number of degrees or null, got {elevation!r}") from None
    lo, hi = float(limits[0]), float(limits[1])
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"elevation={elevation} is outside [{lo:g}, {hi:g}] degrees")
    return value


def prepare_one(name: str, source: str, picture: np.ndarray, method: str, fg_cfg: ForegroundConfig,
                crop_size: int, image_size: int, elevation: float | None, elev_cfg: ElevationConfig) -> PreparedInput:
    """picture uint8 (H, W, 3|4) -> :class:`PreparedInput` (foreground, framing, elevation)."""
    fg = extract_foreground(picture, method, fg_cfg)
    item = PreparedInput(name, source, None, None, fg.mask, fg.method, rgba=fg.rgba)
    return frame_input(item, crop_size, image_size, elevation, elev_cfg, fg_cfg.alpha_threshold)


def frame_input(item: PreparedInput, crop_size: int, image_size: int, elevation: float | None,
                elev_cfg: ElevationConfig, alpha_threshold: int = 0) -> PreparedInput:
    """(Re)compute the framed picture, the model input and the elevation of ``item`` for ``image_size``."""
    item.image, item.framed = prepare_input(item.rgba, crop_size, image_size)
    if elevation is None:
        est = estimate_elevation(item.framed[..., 3] > alpha_threshold, elev_cfg)
        source = "fixed guess" if est.method == "fixed" else "estimated"
        item.elevation = {"elevation_deg": est.elevation_deg, "source": source, "estimate": est.to_json()}
    else:
        item.elevation = {"elevation_deg": float(elevation), "source": "given"}
    log.info("%s: input elevation %.1f deg (%s)", item.name, item.elevation["elevation_deg"], item.elevation["source"])
    return item


#: Top-level options checked before any work: key -> (type, description of the valid values).
OPTION_TYPES = {"sample_num": (int, "an integer >= 1"), "crop_size": (int, "-1 or a positive integer"),
                "seed": (int, "an integer"), "sample_steps": (int, "a positive integer"),
                "cfg_scale": (float, "a number"), "eta": (float, "a number >= 0"),
                "decode_batch": (int, "a positive integer"), "overwrite": (bool, "true or false"),
                "use_ema": (bool, "true or false")}


def check_options(cfg) -> dict:
    """The scalar options of ``conf/generate.yaml`` as Python values; InputError (one line) on a bad one."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.get("checkpoint"):
        raise InputError("checkpoint=<path to syncdreamer-pretrain.ckpt or one of our checkpoints> is required")
    out = {}
    for key, (kind, what) in OPTION_TYPES.items():
        value = cfg.get(key)
        try:
            ok = isinstance(value, bool) if kind is bool else not isinstance(value, bool)
            out[key] = value if kind is bool else kind(value)
            ok = ok and (kind is not int or float(value) == out[key])
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise InputError(f"{key}={value} is invalid: it must be {what}")
    checks = {"sample_num": out["sample_num"] >= 1, "sample_steps": out["sample_steps"] >= 1,
              "crop_size": out["crop_size"] == -1 or out["crop_size"] > 0, "eta": out["eta"] >= 0,
              "decode_batch": out["decode_batch"] >= 1}
    for key, ok in checks.items():
        if not ok:
            raise InputError(f"{key}={cfg.get(key)} is invalid: it must be {OPTION_TYPES[key][1]}")
    return out


def _prompts(cfg) -> list[str]:
    prompts = cfg.get("prompt")
    return [] if prompts is None else ([prompts] if isinstance(prompts, str) else [str(p) for p in prompts])


def input_names(paths, prompts) -> list[str]:
    """The output folder name of each input (file stem, ``prompt_<slug>``), made unique in order."""
    taken: set[str] = set()
    return [_unique(n, taken) for n in [p.stem for p in paths] + ["prompt_" + _slug(t) for t in prompts]]


def output_folders(out_dir: Path, names, sample_num: int) -> list[Path]:
    """Every folder a run writes: ``<name>`` for sample 0, ``<name>_s<k>`` for sample k >= 1."""
    return [Path(out_dir) / (n if k == 0 else f"{n}_s{k}") for n in names for k in range(sample_num)]


def check_outputs_free(cfg, sample_num: int) -> None:
    """With ``overwrite=false``, InputError when any output folder of the run exists (before any work)."""
    if bool(cfg.get("overwrite", True)):
        return
    names = input_names(list_inputs(cfg.get("input")), _prompts(cfg))
    taken = [f for f in output_folders(Path(str(cfg.output_dir)).expanduser(), names, sample_num) if f.exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise InputError(f"output folder exists: {taken[0]}{more}; set overwrite=true or choose another output_dir")


def collect_inputs(cfg, image_size: int, device: torch.device) -> list[PreparedInput]:
    """All inputs of the run (``input`` files/folders and ``prompt`` strings), checked and prepared."""
    fg_cfg = dataclass_from(ForegroundConfig, cfg.get("foreground_options"), InputError, section="foreground_options")
    elev_cfg = dataclass_from(ElevationConfig, cfg.get("elevation_estimate"), InputError, section="elevation_estimate")
    if elev_cfg.method not in ELEVATION_METHODS:
        raise InputError(f"elevation_estimate.method={elev_cfg.method} is invalid: use one of "
                         f"{', '.join(ELEVATION_METHODS)}")
    elevation = validate_elevation(cfg.get("elevation"), cfg.get("elevation_limits") or (-90.0, 90.0))
    paths, prompts = list_inputs(cfg.get("input")), _prompts(cfg)
    if not paths and not prompts:
        raise InputError("nothing to generate: give input=<image|folder> and/or prompt=\"...\"")
    names = input_names(paths, prompts)
    method = str(cfg.get("foreground", "auto"))
    crop_size = int(cfg.crop_size)
    out = []
    for name, path in zip(names, paths):
        picture = load_image(path)
        try:
            out.append(prepare_one(name, str(path), picture, method, fg_cfg, crop_size, image_size, elevation,
                                   elev_cfg))
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
    if prompts:
        t2i = dataclass_from(TextToImageConfig, cfg.get("text2image"), InputError, section="text2image")
        pipe = load_text2image(t2i, device)
        for name, prompt in zip(names[len(paths):], prompts):
            picture = text_to_image(prompt, t2i, device, int(cfg.seed), pipe=pipe)
            try:
                out.append(prepare_one(name, f"prompt: {prompt}", picture, "auto" if method == "alpha" else method,
                                       fg_cfg, crop_size, image_size, elevation, elev_cfg))
            except InputError as err:
                raise InputError(f"prompt {prompt!r}: {err}") from None
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------------------------
# model, sampler, precision
# ----------------------------------------------------------------------------------------------------------
def load_model(checkpoint: str | Path, model_cfg, use_ema: bool = True):
    """checkpoint path + model config -> SyncDreamer (eval) via :func:`syncdreamer.checkpoints.load_model`
    (official ckpt, or ours whose stored config and EMA weights win); CheckpointError (one line) on any problem.
    ``model.checkpoint_info["weights"]`` says whether the EMA (``ema``) or the trained (``raw``) weights are in."""
    try:
        model = _project_load_model(checkpoint, model_cfg, use_ema=use_ema)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint not found: {err.filename or checkpoint}") from None
    if model.first_stage_model is None or model.clip_image_encoder is None:
        raise CheckpointError("generation needs the VAE and CLIP: the model config must have `vae` and `clip`")
    return model.eval()


def weights_json(model) -> dict:
    """Which weights a loaded model holds, for ``cameras.json``: ``{"checkpoint", "weights", "ema_available",
    "global_step"}``."""
    info = dict(getattr(model, "checkpoint_info", None) or {})
    return {"checkpoint": info.get("path"), "weights": info.get("weights", "raw"),
            "ema_available": bool(info.get("ema_available", False)), "global_step": info.get("global_step")}


def build_sampler(sampler_cfg, model):
    """``conf/sampler/<name>.yaml`` (``_target_`` class, ``_partial_: true``) + model -> sampler instance."""
    from hydra.utils import instantiate

    factory = instantiate(sampler_cfg, _convert_="all")
    try:
        sampler = factory(model)
    except (ValueError, IndexError) as err:  # e.g. sample_steps outside [1, T]
        raise InputError(f"sampler {sampler_cfg.get('_target_', '?').rsplit('.', 1)[-1]} rejects these settings "
                         f"(sample_steps={sampler_cfg.get('steps')}): {err}") from None
    return sampler


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> ``bf16`` where the hardware runs it natively (AMX / avx512_bf16 CPU, bf16 GPU), else ``fp32``;
    any other value is checked and returned."""
    from ..models.precision import default_precision

    precision = str(precision)
    if precision == "auto":
        return default_precision(device)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    autocast_context(device, precision)
    return precision


def autocast_context(device: torch.device, precision: str):
    """fp32 -> no autocast; bf16 -> autocast on CPU or GPU; fp16 -> autocast on GPU only."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision=fp16 needs a GPU (use fp32 or bf16 on CPU)")
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def maybe_compile(model, enabled: bool):
    """torch.compile the networks called at every step: the UNet and the spatial / frustum volume nets."""
    if enabled:
        model.model.diffusion_model = torch.compile(model.model.diffusion_model)
        vol = model.spatial_volume
        vol.spatial_volume_feats = torch.compile(vol.spatial_volume_feats)
        vol.frustum_volume_feats = torch.compile(vol.frustum_volume_feats)
    return model


# ----------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_views(model, sampler, image: torch.Tensor, elevation_deg: float, sample_num: int, seed: int,
                   device: torch.device, precision: str = "fp32", decode_batch: int = 16,
                   callback=None) -> torch.Tensor:
    """image (3, S, S) in [-1, 1] -> views (sample_num, N, 3, S, S) in [-1, 1] (float32, CPU).

    The condition (VAE latent with its own posterior noise per sample, CLIP embedding, view embeddings,
    projected tokens) is computed once; the sampler then calls ``predict_eps`` once per step on all views
    (and ``callback(i, total, x)`` after each step, e.g. a progress bar).
    """
    g = torch.Generator(device=device).manual_seed(int(seed))
    images = image.to(device).unsqueeze(0).expand(sample_num, -1, -1, -1).contiguous()
    elev = torch.full((sample_num,), math.radians(elevation_deg), device=device)
    h = model.latent_size
    noise = torch.randn((sample_num, model.latent_channels, h, h), generator=g, device=device)
    with autocast_context(device, precision):
        cond = model.prepare_condition(images, elev, noise=noise)
        latents = sampler.sample(cond, generator=g, callback=callback)
        flat = latents.reshape(-1, *latents.shape[2:])
        step = max(1, int(decode_batch))
        decoded = torch.cat([model.decode_first_stage(flat[i:i + step]).float() for i in range(0, len(flat), step)])
    return decoded.reshape(sample_num, model.view_num, *decoded.shape[1:]).clamp(-1, 1).cpu()


def to_uint8(views: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    x = ((views.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def rig_json(model, elevation: dict) -> dict:
    """The model's rig (its buffers, i.e. what the checkpoint holds) as JSON."""
    poses, Ks = model.poses.detach().cpu().double(), model.Ks.detach().cpu().double()
    az = np.degrees(model.azimuth.detach().cpu().double().numpy()) % 360.0
    return {
        "convention": "world z-up, objects in [-0.5, 0.5]^3; poses are world-to-camera 3x4 [R|t], OpenCV camera "
                      "axes (x right, y down, z forward); K in pixels",
        "image_size": int(model.image_size),
        "target_elevation_deg": math.degrees(model.elevation_target),
        "views": [{"index": i, "file": f"{i:03d}.png", "azimuth_deg": float(az[i]),
                   "elevation_deg": math.degrees(model.elevation_target),
                   "pose_w2c": poses[i].tolist(), "K": Ks[i].tolist()} for i in range(poses.shape[0])],
        "input_view": {"azimuth_deg": float(az[0]), **elevation},
    }


def view_set_meta(cfg, model, sampler, item: PreparedInput, sample_index: int = 0, sample_num: int = 1,
                  precision: str | None = None) -> dict:
    """The ``cameras.json`` of one generated sample: rig, input elevation and the settings that made it
    (``precision``: the one that ran, default ``cfg.precision``)."""
    from ..diffusion.diffusers_samplers import sampler_name

    return {
        **rig_json(model, item.elevation),
        "source": item.source,
        "sample_index": sample_index, "sample_num": sample_num, "seed": int(cfg.seed),
        "cfg_scale": float(cfg.cfg_scale),
        "sample_steps": len(getattr(sampler, "timesteps", [])) or int(cfg.sample_steps),
        "sampler": sampler_name(sampler), "eta": float(cfg.eta),
        "crop_size": int(cfg.crop_size), "precision": str(precision or cfg.precision),
        "foreground": {"method": item.foreground, "mask": "mask.png"},
        "checkpoint": str(cfg.checkpoint), "model_weights": weights_json(model),
    }


def write_view_set(folder: Path, views: np.ndarray, item: PreparedInput, meta: dict, gif_frame_ms: int,
                   overwrite: bool = True) -> Path:
    """views uint8 (N, S, S, 3) -> the files of one folder (see module docstring), written atomically."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    if folder.exists() and not overwrite:
        raise InputError(f"output folder exists: {folder} (set overwrite=true)")
    tmp.mkdir(parents=True)
    frames = [Image.fromarray(v) for v in views]
    for i, im in enumerate(frames):
        im.save(tmp / f"{i:03d}.png")
    Image.fromarray(np.concatenate(list(views), axis=1)).save(tmp / "strip.png")
    frames[0].save(tmp / "turntable.gif", save_all=True, append_images=frames[1:], duration=int(gif_frame_ms),
                   loop=0)
    Image.fromarray(item.framed, "RGBA").save(tmp / "input.png")
    Image.fromarray(item.mask.astype(np.uint8) * 255, "L").save(tmp / "mask.png")
    (tmp / "cameras.json").write_text(json.dumps(meta, indent=1))
    if "views" in meta:  # nerfstudio transforms.json + COLMAP text model of the same cameras
        write_camera_exports(tmp, [v["pose_w2c"] for v in meta["views"]], [v["K"] for v in meta["views"]],
                             views.shape[2], views.shape[1], [v["file"] for v in meta["views"]])
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def run(cfg) -> list[Path]:
    """Run a whole ``conf/generate.yaml`` config; returns the written folders. Raises USER_ERRORS on bad input."""
    options = check_options(cfg)
    sample_num = options["sample_num"]
    check_outputs_free(cfg, sample_num)
    try:
        device = pick_device(cfg.get("device", "auto"))
    except DeviceError as err:
        raise InputError(str(err)) from None
    precision = resolve_precision(device, cfg.get("precision", "auto"))  # validate before any work
    image_size = int(cfg.model.get("image_size", 256))
    items = collect_inputs(cfg, image_size, device)

    t0 = time.perf_counter()
    model = load_model(cfg.checkpoint, cfg.model, use_ema=options["use_ema"]).to(device)
    if int(model.image_size) != image_size:  # our checkpoints carry their own config: frame for the model's size
        elev_cfg = dataclass_from(ElevationConfig, cfg.get("elevation_estimate"), InputError,
                                  section="elevation_estimate")
        threshold = int((cfg.get("foreground_options") or {}).get("alpha_threshold", 0))
        given = validate_elevation(cfg.get("elevation"), cfg.get("elevation_limits") or (-90.0, 90.0))
        for item in items:
            frame_input(item, int(cfg.crop_size), int(model.image_size), given, elev_cfg, threshold)
    model.set_precision(precision)  # denoiser weights cast once; VAE / CLIP run under autocast
    maybe_compile(model, bool(cfg.get("compile", False)))
    sampler = build_sampler(cfg.sampler, model)
    log.info("model loaded in %.1f s on %s", time.perf_counter() - t0, device)
    out_dir = Path(str(cfg.output_dir)).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in items:
        t1 = time.perf_counter()
        views = to_uint8(generate_views(model, sampler, item.image, item.elevation["elevation_deg"], sample_num,
                                        int(cfg.seed), device, precision, int(cfg.get("decode_batch", 16))))
        for k in range(sample_num):
            meta = view_set_meta(cfg, model, sampler, item, k, sample_num, precision)
            name = item.name if k == 0 else f"{item.name}_s{k}"
            written.append(write_view_set(out_dir / name, views[k], item, meta, int(cfg.output.gif_frame_ms),
                                          bool(cfg.get("overwrite", True))))
        log.info("%s: %d sample(s) in %.1f s", item.name, sample_num, time.perf_counter() - t1)
    return written


def run_cli(cfg) -> int:
    """``run`` with user errors reported as one line on stderr; returns the exit code."""
    try:
        folders = run(cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for f in folders:
        elevation = json.loads((f / "cameras.json").read_text())["input_view"]
        print(f"{f}  (input elevation {elevation['elevation_deg']:.1f} deg, {elevation['source']})")
    return 0
