"""DDPM noise schedule buffers (SD / Zero123 "scaled linear" betas, eps-prediction).

The buffers are part of the official state dict, so they live with the model; the forward process
(:func:`syncdreamer.diffusion.schedule.q_sample`) and the samplers read them from there.
"""
from __future__ import annotations

import torch
import torch.nn as nn

SCHEDULE_BUFFERS = ("betas", "alphas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                    "posterior_variance", "posterior_log_variance_clipped")


def make_betas(num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012,
               kind: str = "scaled_linear") -> torch.Tensor:
    """(T,) float32 betas. ``scaled_linear``: ``linspace(sqrt(start), sqrt(end), T) ** 2`` (computed in float32)."""
    if kind == "scaled_linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float32) ** 2
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float32)
    raise ValueError(f"unknown beta schedule {kind!r}; use 'scaled_linear' or 'linear'")


def schedule_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 7 schedule buffers of the official model, all float32 (T,)."""
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=alphas_cumprod.dtype), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    log_var = torch.log(posterior_variance.clamp(min=1e-20)).clamp(min=-10)
    return {
        "betas": betas.float(),
        "alphas": alphas.float(),
        "alphas_cumprod": alphas_cumprod.float(),
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt().float(),
        "posterior_variance": posterior_variance.float(),
        "posterior_log_variance_clipped": log_var.float(),
    }


def register_schedule(module: nn.Module, **kwargs) -> None:
    """Register the schedule buffers on ``module`` (persistent: they are part of the official state dict)."""
    for name, value in schedule_buffers(make_betas(**kwargs)).items():
        module.register_buffer(name, value)

