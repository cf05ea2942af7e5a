"""Synchronized DDIM sampler: all N views are denoised jointly, one spatial volume per step.

Official rules (pinned by the golden test): timesteps ``range(0, T, T // S) + 1`` visited in descending
order; ``alpha_prev`` of the last step is ``alphas_cumprod[0]`` (not 1); ``sigma = eta * sqrt((1 - a_prev) /
(1 - a) * (1 - a / a_prev))``; no noise is added at the last step; eta = 1 by default.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..models.syncdreamer import Condition, SyncDreamer


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Uniform DDIM timesteps, ascending: ``i * (T // S) + 1`` for ``i < S`` (S=50: 1, 21, ..., 981).

    For every S that divides T this is the official ``range(0, T, T // S) + 1``; for other S the official rule
    yields more than S steps or the out-of-range timestep T, so we keep exactly S steps instead.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"sample_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    return np.arange(num_steps, dtype=np.int64) * (num_train_timesteps // num_steps) + 1


def initial_latents(model: SyncDreamer, cond: Condition, x_T: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Start latents (B, N, 4, h, w): ``x_T`` when given, else standard normal noise from ``generator``."""
    dev = cond.input_latent.device
    if x_T is not None:
        return x_T.to(dev)
    shape = (cond.batch_size, model.view_num, model.latent_channels, model.latent_size, model.latent_size)
    return torch.randn(shape, generator=generator, device=dev)


def start_sampling(model: SyncDreamer, cond: Condition, x_T: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Condition, torch.Tensor]:
    """What every synchronized sampler does first: the completed condition and the start latents (B, N, 4, h, w)."""
    cond = model.complete(cond)
    return cond, initial_latents(model, cond, x_T, generator)


def timestep_batch(step, cond: Condition) -> torch.Tensor:
    """One diffusion timestep as a (B,) long tensor for the B objects of ``cond``."""
    return torch.full((cond.batch_size,), int(step), device=cond.input_latent.device, dtype=torch.long)


class SyncDDIMSampler:
    """DDIM over (B, N, 4, h, w) latents with classifier-free guidance and view chunking.

    ``sample(cond)`` returns the final latents (B, N, 4, h, w) (scaled; decode with the model's VAE).
    """

    def __init__(self, model: SyncDreamer, steps: int = 50, eta: float = 1.0, cfg_scale: float = 2.0,
                 batch_view_num: int | None = None):
        self.model, self.eta, self.cfg_scale, self.batch_view_num = model, float(eta), float(cfg_scale), batch_view_num
        ac = model.alphas_cumprod.detach().cpu()
        self.timesteps = ddim_timesteps(steps, ac.shape[0])
        ts = torch.from_numpy(self.timesteps.astype(np.int64))
        self.alphas = ac[ts].double()
        self.alphas_prev = torch.cat([ac[0:1], ac[ts[:-1]]]).double()
        self.sigmas = (self.eta * torch.sqrt((1 - self.alphas_prev) / (1 - self.alphas)
                                             * (1 - self.alphas / self.alphas_prev))).float()
        self.alphas, self.alphas_prev = self.alphas.float(), self.alphas_prev.float()
        self.sqrt_one_minus_alphas = torch.sqrt(1.0 - self.alphas).float()

    def step(self, x: torch.Tensor, eps: torch.Tensor, index: int, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DDIM update of all views from state ``index`` (``index == 0`` is the last step, no noise)."""
        # 0-dim float32 CPU tensors broadcast onto any device, like the official (1,1,1,1,1) buffers
        a_t, a_prev = self.alphas[index], self.alphas_prev[index]
        sigma, s1m = self.sigmas[index], self.sqrt_one_minus_alphas[index]
        pred_x0 = (x - s1m * eps) / a_t.sqrt()
        dir_xt = torch.clamp(1.0 - a_prev - sigma ** 2, min=1e-7).sqrt() * eps
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        if index > 0 and sigma > 0:
            if noise is None:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_prev = x_prev + sigma * noise
        return x_prev

    @torch.no_grad()
    def sample(self, cond: Condition, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
               callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """cond (B objects) -> latents (B, N, 4, h, w). ``callback(i, total, x)`` after every step."""
        cond, x = start_sampling(self.model, cond, x_T, generator)
        total = len(self.timesteps)
        for i, step in enumerate(self.timesteps[::-1]):
            eps = self.model.predict_eps(x, timestep_batch(step, cond), cond, self.cfg_scale, self.batch_view_num)
            x = self.step(x, eps, total - i - 1, generator)
            if callback is not None:
                callback(i, total, x)
        return x
