"""Text front end: a prompt -> an RGB picture with Stable Diffusion (diffusers), local weights only.

``text_to_image(prompt, cfg)`` loads ``StableDiffusionPipeline.from_pretrained(cfg.model, local_files_only=True)``
(a local folder or an id already in the Hugging Face cache), appends ``prompt_suffix`` (asks for a single,
whole object on a plain background so that foreground extraction works) and returns an RGB uint8 array.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError


@dataclass
class TextToImageConfig:
    """``text2image`` block of ``conf/generate.yaml``."""

    model: str | None = None          # local diffusers folder (or a cached hub id)
    prompt_suffix: str = ", a single whole object centered, plain white background, product photo"
    negative_prompt: str = "cropped, multiple objects, text, watermark, cluttered background"
    steps: int = 30
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    safety_checker: bool = False      # keep the pipeline's checker if the folder has one


def load_text2image(cfg: TextToImageConfig, device: torch.device, dtype: torch.dtype = torch.float32):
    """Load the diffusers Stable Diffusion pipeline from local files; one clear InputError if impossible."""
    if not cfg.model:
        raise InputError("prompt=... needs text2image.model=<local Stable Diffusion folder (diffusers layout)>")
    from diffusers import StableDiffusionPipeline

    kwargs = {} if cfg.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(Path(cfg.model).expanduser()) if Path(cfg.model).expanduser()
                                                       .exists() else cfg.model, local_files_only=True,
                                                       torch_dtype=dtype, **kwargs)
    except Exception as err:  # noqa: BLE001 - diffusers raises OSError / ValueError / EnvironmentError ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"could not load the Stable Diffusion pipeline {cfg.model!r} from local files: {first}") \
            from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def text_to_image(prompt: str, cfg: TextToImageConfig, device: torch.device, seed: int = 0, pipe=None,
                  dtype: torch.dtype = torch.float32) -> np.ndarray:
    """prompt -> RGB uint8 (height, width, 3)."""
    if not prompt or not str(prompt).strip():
        raise InputError("prompt is empty")
    pipe = pipe or load_text2image(cfg, device, dtype)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    out = pipe(prompt=str(prompt) + (cfg.prompt_suffix or ""), negative_prompt=cfg.negative_prompt or None,
               num_inference_steps=int(cfg.steps), guidance_scale=float(cfg.guidance_scale),
               height=int(cfg.height), width=int(cfg.width), generator=generator, output_type="np")
    img = np.asarray(out.images[0], dtype=np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
