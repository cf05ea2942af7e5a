"""The generate hook of the proxy benchmark (``python evaluate.py benchmark=proxy checkpoint=...``).

:func:`checkpoint_generator` loads one of our training checkpoints once and returns the
``generate_fn(name, input_png, out_dir, seed)`` that :func:`syncdreamer.metrics.benchmark.run_benchmark` calls
per held-out object: the input is the ground-truth view ``000.png`` of the fixed target rig (so its elevation is
the rig's), composited on white; the N sampled views go to ``out_dir/000..NNN.png``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["checkpoint_generator"]


def checkpoint_generator(checkpoint: str, sample_steps: int = 20, cfg_scale: float = 1.0, eta: float = 1.0,
                         batch_view_num: int | None = None, use_ema: bool = True, device: str = "cpu"):
    """-> ``generate_fn(name, input_png, out_dir, seed)`` sampling ``checkpoint`` (SyncDDIM, ``sample_steps``)."""
    import torch

    from ..data import layout
    from ..diffusion.sampler import SyncDDIMSampler
    from ..systems.runner import load_model_from_checkpoint
    from .generate import generate_views, to_uint8

    if checkpoint is None or not Path(str(checkpoint)).is_file():
        raise FileNotFoundError(f"checkpoint={checkpoint} not found: pass checkpoint=<run>/checkpoints/last.ckpt")
    model, _ = load_model_from_checkpoint(checkpoint, map_location=device, use_ema=use_ema)
    model = model.to(device)
    sampler = SyncDDIMSampler(model, int(sample_steps), float(eta), float(cfg_scale), batch_view_num)
    elevation_deg = math.degrees(model.elevation_target)

    def generate_fn(name: str, input_png: Path, out_dir: Path, seed: int) -> None:
        image = layout.read_view_tensor(Path(input_png), model.image_size)
        views = generate_views(model, sampler, image, elevation_deg, 1, int(seed), torch.device(device))[0]
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, view in enumerate(to_uint8(views)):
            Image.fromarray(np.ascontiguousarray(view)).save(out_dir / f"{i:03d}.png")

    return generate_fn
