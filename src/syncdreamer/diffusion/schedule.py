"""The forward diffusion process on the model's schedule buffers (:mod:`syncdreamer.models.schedule`)."""
from __future__ import annotations

import torch

from ..models.schedule import SCHEDULE_BUFFERS, make_betas, register_schedule, schedule_buffers

__all__ = ["SCHEDULE_BUFFERS", "make_betas", "register_schedule", "schedule_buffers", "q_sample"]


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sqrt_ac: torch.Tensor,
             sqrt_1m_ac: torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``sqrt(ac[t]) x0 + sqrt(1 - ac[t]) noise`` with t (B,) broadcast over x0 (B, ...)."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    return sqrt_ac[t].view(shape) * x0 + sqrt_1m_ac[t].view(shape) * noise
